"""Qwen2-VL-2B-Instruct through transformers' native Qwen2VLForConditionalGeneration.

Chat-template messages (one image + the task prompt per page), left-padded batches, an
explicit pixel budget per model (`GenerationParams.min_pixels/max_pixels` override it),
stop on <|im_end|> / <|endoftext|>. The Qwen3-VL backend reuses this class.
"""

from __future__ import annotations

from typing import Optional

from ..config import GenerationParams
from ..errors import UsageError
from ..i18n import _
from ..records import Page, PageResult, RawOutput
from ..textnorm import markdown_to_text
from .hf import HFBackend, strip_code_fence

QWEN_STOP_TOKENS = ("<|im_end|>", "<|endoftext|>")


class Qwen2VLBackend(HFBackend):
    auto_class = "Qwen2VLForConditionalGeneration"
    attn_support = ("flash_attention_2", "sdpa", "eager")
    can_chat = True

    # ------------------------------------------------------------------ prompts
    def prompt_for(self, task: str) -> str:
        prompts = self.spec.prompts
        if task in prompts:
            return prompts[task]
        if task == "layout" and "markdown" in prompts:
            return prompts["markdown"]
        raise UsageError(_("model '{name}' has no prompt for task '{task}'").format(name=self.spec.name, task=task))

    def pixel_budget(self, params: Optional[GenerationParams]) -> dict[str, int]:
        """size={"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS} (both are areas)."""
        max_px = (params.max_pixels if params and params.max_pixels else None) or self.spec.max_pixels
        min_px = (params.min_pixels if params and params.min_pixels else None) or self.spec.min_pixels
        size = dict(getattr(self.processor.image_processor, "size", None) or {})
        if max_px:
            size["longest_edge"] = int(max_px)
        if min_px:
            size["shortest_edge"] = int(min_px)
        if "longest_edge" in size and "shortest_edge" in size and size["shortest_edge"] > size["longest_edge"]:
            size["shortest_edge"] = size["longest_edge"]
        return size

    def messages(self, image, prompt: str, history=None) -> list[dict]:
        """One conversation: the image goes with the first user turn."""
        history = list(history or [])
        msgs: list[dict] = []
        for i, (question, answer) in enumerate(history):
            content = [{"type": "text", "text": question}]
            if i == 0:
                content.insert(0, {"type": "image", "image": image})
            msgs.append({"role": "user", "content": content})
            msgs.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
        content = [{"type": "text", "text": prompt}]
        if not history:
            content.insert(0, {"type": "image", "image": image})
        msgs.append({"role": "user", "content": content})
        return msgs

    def render_prompt(self, prompt: str) -> str:
        """The templated prompt text for one page (image placeholder not yet expanded)."""
        return self.processor.apply_chat_template([self.messages(None, prompt)], add_generation_prompt=True,
                                                  tokenize=False)[0]

    def _apply(self, conversations: list[list[dict]], params: Optional[GenerationParams]) -> dict:
        return self.processor.apply_chat_template(
            conversations, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
            processor_kwargs={"padding": True, "padding_side": "left", "size": self.pixel_budget(params)},
        )

    def build_inputs(self, pages: list[Page], task: str, params: GenerationParams) -> dict:
        prompt = self.prompt_for(task)
        return self._apply([self.messages(p.image, prompt) for p in pages], params)

    # ------------------------------------------------------------------ generation facts
    def stop_token_ids(self) -> list[int]:
        ids = []
        for token in QWEN_STOP_TOKENS:
            tid = self.tokenizer.convert_tokens_to_ids(token)
            if isinstance(tid, int) and tid >= 0 and tid != getattr(self.tokenizer, "unk_token_id", None):
                ids.append(tid)
        return ids or super().stop_token_ids()

    def pad_token_id(self) -> int:
        tid = self.tokenizer.convert_tokens_to_ids("<|endoftext|>")
        return int(tid) if isinstance(tid, int) and tid >= 0 else super().pad_token_id()

    def after_load(self) -> None:
        size = self.pixel_budget(None)
        self.processor.image_processor.size = size
        self._facts["pixel_budget"] = {"min_pixels": size.get("shortest_edge"), "max_pixels": size.get("longest_edge")}

    # ------------------------------------------------------------------ chat
    def ask(self, image, question: str, history=None, params: Optional[GenerationParams] = None) -> str:
        if self.model is None:
            self.load()
        params = params or GenerationParams()
        inputs = self._apply([self.messages(image, question, history)], params)
        return self.generate_inputs(inputs, "chat", params)[0].text.strip()

    # ------------------------------------------------------------------ postprocess (pure)
    def postprocess(self, page: Page, raw: RawOutput, task: str) -> PageResult:
        text = strip_code_fence(raw.text).strip()
        if task == "text":
            return self.page_result(page, raw, text=text)
        return self.page_result(page, raw, markdown=text, text=markdown_to_text(text))

"""Phi-3.5-vision-instruct (microsoft/Phi-3.5-vision-instruct) through our own port
(chatvlm/models/phi3_vision), no remote code.

Prompt: the official chat format `<|user|>\\n<|image_1|>\\n{prompt}<|end|>\\n<|assistant|>\\n`
with our OCR prompts (no official OCR prompt exists; see the port's OCR_PROMPTS). Each page
is one conversation; pages of different sizes give different crop grids and so different
placeholder counts, and the port's processor left-pads the batch (pad = `<|endoftext|>`).

num_crops: `BackendOptions.extra["num_crops"]`, else the spec's `extra["num_crops"]`, else 16.
The model card advises num_crops=16 for a single frame (4 for multi-frame); a dense page
needs 16 (an A4 page: 4x4 crops of 336 px, ~2.5k image tokens; with 4 it is read at 672 px).

Generation: greedy; stop on `<|end|>` (what the model emits to end its turn), plus
`<|endoftext|>` and `</s>` (the shipped generation_config lists only `</s>`, which lets
generation run on). Loops are caught by the shared loop guard.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..config import BackendOptions, GenerationParams
from ..errors import ModelUnavailableError, UsageError
from ..i18n import _
from ..records import Page, PageResult, RawOutput
from ..registry import ModelSpec
from ..weights import load_port_model
from ..textnorm import markdown_to_text
from .hf import HFBackend, strip_code_fence

# The model card: "for best performance, use num_crops=4 for multi-frame, num_crops=16 for
# single-frame". A page is a single frame, so OCR uses 16 unless told otherwise.
DEFAULT_OCR_NUM_CROPS = 16


def chat_prompt(question: str, history: Optional[list[tuple[str, str]]] = None, with_image: bool = True) -> str:
    """The official multi-turn format: the image tag goes in the first user turn, every
    turn ends with `<|end|>\\n`, and the prompt ends on `<|assistant|>\\n` for the next answer.

        <|user|>\\n<|image_1|>\\nQ1<|end|>\\n<|assistant|>\\nA1<|end|>\\n<|user|>\\nQ2<|end|>\\n<|assistant|>\\n
    """
    turns = list(history or []) + [(question, None)]
    parts = []
    for i, (q, a) in enumerate(turns):
        tag = "<|image_1|>\n" if (i == 0 and with_image) else ""
        parts.append(f"<|user|>\n{tag}{q}<|end|>\n<|assistant|>\n")
        if a is not None:
            parts.append(f"{a}<|end|>\n")
    return "".join(parts)


class Phi3VisionBackend(HFBackend):
    # The port runs transformers' Phi3 attention and CLIP with the same kernel name; only
    # sdpa and eager are verified against the fixture (flash-attn is never required).
    attn_support = ("sdpa", "eager")
    default_gpu_batch = 8
    can_chat = True
    option_keys = HFBackend.option_keys | {"num_crops"}

    def __init__(self, spec: ModelSpec, options: Optional[BackendOptions] = None):
        super().__init__(spec, options)
        raw = self.options.extra.get("num_crops", spec.extra.get("num_crops", DEFAULT_OCR_NUM_CROPS))
        try:
            self.num_crops = int(raw)
        except (TypeError, ValueError):
            self.num_crops = 0
        if self.num_crops < 1:
            raise UsageError(_("phi3_vision num_crops must be a whole number, at least 1; got {value}").format(
                value=repr(raw)))

    # ------------------------------------------------------------------ loading
    def load_processor(self, path: Path):
        from ..models.phi3_vision import load_tokenizer, processor_from_pretrained

        if not (path / "tokenizer.json").is_file():
            raise ModelUnavailableError(_(
                "model '{name}': {path} has no tokenizer files (tokenizer.json); "
                "expected a full copy of {repo}").format(name=self.spec.name, path=path, repo=self.spec.repo_id))
        tokenizer = load_tokenizer(path)
        return processor_from_pretrained(path, num_crops=self.num_crops, tokenizer=tokenizer)

    def load_model(self, path: Path, dtype, attn: str):
        from ..models import phi3_vision

        return load_port_model(phi3_vision, path, dtype=dtype, device=self.device, attn_implementation=attn)

    def after_load(self) -> None:
        self._facts["num_crops"] = self.processor.num_crops
        report = getattr(self.model, "load_report", None)
        if report is not None:
            self._facts["load_report"] = {k: len(v) for k, v in report.items()}

    # ------------------------------------------------------------------ prompts and inputs
    def prompt_for(self, task: str) -> str:
        from ..models.phi3_vision import OCR_PROMPTS

        prompt = self.spec.prompts.get(task) or OCR_PROMPTS.get(task)
        if prompt is None and task == "layout":
            prompt = self.spec.prompts.get("markdown") or OCR_PROMPTS["markdown"]
        if prompt is None:
            raise UsageError(_("model '{name}' has no prompt for task '{task}'").format(name=self.spec.name, task=task))
        return prompt

    def render_prompt(self, task: str) -> str:
        """The full chat-format prompt text of one page (image tag not yet expanded)."""
        from ..models.phi3_vision import format_prompt

        return format_prompt(self.prompt_for(task))

    def build_inputs(self, pages: list[Page], task: str, params: GenerationParams) -> dict:
        prompt = self.render_prompt(task)
        return self.processor.build_batch([prompt] * len(pages), [p.image for p in pages],
                                          pad_token_id=self.pad_token_id())

    def page_cost(self, page: Page) -> float:
        """Image placeholder tokens of the page at this num_crops (what dominates the sequence)."""
        from ..models.phi3_vision import num_image_tokens
        from ..models.phi3_vision.processing import hd_grid

        width, height = page.size
        if not width or not height:
            return 0.0
        _, _, pad_w, pad_h = hd_grid(int(width), int(height), self.num_crops)
        return float(num_image_tokens(pad_h // 336, pad_w // 336))

    def prompt_tokens_estimate(self) -> int:
        """For --batch-size auto: the longest prompt a page can give at this num_crops (the
        crop grid with the most placeholders, e.g. 2,653 tokens for a 1x16 strip at 16 crops;
        an A4 page gives 2,509) plus the chat text."""
        from ..models.phi3_vision import num_image_tokens

        n = self.num_crops
        return max(num_image_tokens(h, n // h) for h in range(1, n + 1)) + 64

    # ------------------------------------------------------------------ generation facts
    def stop_token_ids(self) -> list[int]:
        return self.processor.stop_token_ids() or super().stop_token_ids()

    def pad_token_id(self) -> int:
        # <|endoftext|> (32000 at full size): the tokenizer's pad. It must be a row of the
        # embedding, since finished rows are fed it.
        vocab = int(getattr(self.model.config, "vocab_size", 0) or 0) if self.model is not None else 0
        for pad in (getattr(self.tokenizer, "pad_token_id", None), self.generation_config_value("pad_token_id")):
            if pad is not None and (not vocab or 0 <= int(pad) < vocab):
                return int(pad)
        return 0

    def decode(self, ids: list[int]) -> str:
        return self.processor.decode(ids)

    # ------------------------------------------------------------------ chat
    def ask(self, image, question: str, history: Optional[list[tuple[str, str]]] = None,
            params: Optional[GenerationParams] = None) -> str:
        """Answer a question about one page; `history` holds earlier (question, answer) turns."""
        if self.model is None:
            self.load()
        params = params or GenerationParams()
        prompt = chat_prompt(question, history, with_image=image is not None)
        images = [image.convert("RGB")] if image is not None else []
        inputs = self.processor.build_batch([prompt], [images], pad_token_id=self.pad_token_id())
        return self.generate_inputs(inputs, "chat", params)[0].text.strip()

    # ------------------------------------------------------------------ postprocess (pure)
    def postprocess(self, page: Page, raw: RawOutput, task: str) -> PageResult:
        result = self.page_result(page, raw)
        if result.status == "error":
            return result
        text = strip_code_fence(raw.text).strip()
        if task == "text":
            result.text = text + "\n" if text else ""
            return result
        result.markdown = text + "\n" if text else ""
        result.text = markdown_to_text(text)
        return result

"""GOT-OCR 2.0 through transformers' native GotOcr2ForConditionalGeneration.

The processor writes GOT's prompt itself: plain OCR (" OCR: ") for the text task and
format mode (" OCR with format: ", markdown/LaTeX-style output) for markdown. Pages far
from square (long strips, two-page spreads) are tiled with `crop_to_patches` (1024-px
tiles plus a thumbnail, " ... upon the patch reference: "); `extra["crop"]` = "auto" |
"always" | "never" and `extra["max_patches"]` control it. Format mode answers in
Mathpix-style LaTeX, converted for .md (math kept as `$…$`) and .txt by chatvlm.latex. Each page is processed on its
own (the crop decision is per page) and the batch is left-padded here. Stops on
<|im_end|> (the official stop string) and <|endoftext|>.

Anti-repetition: the authors generate single-view pages with `no_repeat_ngram_size=20`
(GOT-OCR2.0 `chat()`) and tiled pages with none (`chat_crop()`); chatvlm does the same,
per row of a batch (the model spec's `extra["no_repeat_ngram_size"]`, `-O
no_repeat_ngram_size=0` turns it off), and records it in report.json (`no_repeat_ngram`).

Prompt: transformers' GotOcr2Processor writes the query as "\n OCR: " (its box slot is
empty, and a space follows it), where the authors' code writes "\nOCR: ". chatvlm keeps the
processor's prompt: it is the one the transformers port of the checkpoint was validated
with, and changing model input without a measurement on real weights is a guess.
"""

from __future__ import annotations

from ..collate import collate_left
from ..config import GenerationParams
from ..latex import latex_markdown, latex_text
from ..records import Page, PageResult, RawOutput
from ..textnorm import markdown_to_text
from .hf import HFBackend

GOT_STOP_STRING = "<|im_end|>"
NO_REPEAT_NGRAM_SIZE = 20       # the authors' setting for single-view pages


class GotOcrBackend(HFBackend):
    auto_class = "GotOcr2ForConditionalGeneration"
    # The top-level model declares no SDPA support (SAM relative-position attention); its
    # Qwen2 language model does: "sdpa" here means sdpa for the LM, eager for the vision tower.
    attn_support = ("sdpa", "eager")
    option_keys = HFBackend.option_keys | {"crop", "max_patches", "no_repeat_ngram_size"}

    def attn_argument(self, kind: str):
        if kind == "sdpa":
            return {"text_config": "sdpa", "vision_config": "eager", "": "eager"}
        return kind

    def after_load(self) -> None:
        vision = self.model.config.vision_config
        # 1024 px / 16 px patches -> 64x64, two stride-2 convs -> 16x16 = 256 tokens per view
        self.num_image_tokens = int((vision.image_size // vision.patch_size // 4) ** 2)
        if self.attn == "sdpa":
            self._facts["attention_detail"] = "sdpa (language model), eager (vision encoder)"
        self._facts["num_image_tokens_per_view"] = self.num_image_tokens

    # ------------------------------------------------------------------ inputs
    def use_crops(self, width: int, height: int) -> bool:
        mode = str(self.options.extra.get("crop", self.spec.extra.get("crop", "auto"))).lower()
        if mode in ("always", "true", "yes", "1"):
            return True
        if mode in ("never", "false", "no", "0"):
            return False
        if not width or not height:
            return False
        ratio = max(width, height) / min(width, height)
        return ratio >= float(self.spec.extra.get("crop_min_aspect", 1.8))

    def max_patches(self) -> int:
        return int(self.options.extra.get("max_patches", self.spec.extra.get("max_patches", 6)))

    def page_inputs(self, image, task: str) -> dict:
        width, height = image.size
        crop = self.use_crops(width, height)
        kwargs = dict(format=task != "text", return_tensors="pt", num_image_tokens=self.num_image_tokens)
        if crop:
            kwargs.update(crop_to_patches=True, max_patches=self.max_patches())
        return dict(self.processor(image, **kwargs))

    def render_prompt(self, task: str, width: int = 1024, height: int = 1024) -> str:
        from PIL import Image

        feats = self.page_inputs(Image.new("RGB", (width, height), "white"), task)
        return self.tokenizer.decode(feats["input_ids"][0], skip_special_tokens=False)

    def build_inputs(self, pages: list[Page], task: str, params: GenerationParams) -> dict:
        features = [self.page_inputs(p.image, task) for p in pages]
        return collate_left(features, self.pad_token_id())

    # ------------------------------------------------------------------ anti-repetition
    def no_repeat_ngram_size(self) -> int:
        value = self.options.extra.get("no_repeat_ngram_size",
                                       self.spec.extra.get("no_repeat_ngram_size", NO_REPEAT_NGRAM_SIZE))
        return max(0, int(value))

    def single_view_rows(self, inputs: dict) -> list[bool]:
        """Which rows hold one 1024-px view (not tiles): exactly one view's image tokens."""
        image_id = int(self.model.config.image_token_index)
        counts = (inputs["input_ids"] == image_id).sum(dim=1).tolist()
        return [int(c) == self.num_image_tokens for c in counts]

    def logits_processors(self, task: str, params: GenerationParams, inputs: dict) -> list:
        from ..loop_guard import NoRepeatNGramRows

        size = self.no_repeat_ngram_size()
        self._facts["no_repeat_ngram"] = {"ngram_size": size or None, "pages": "single-view (none when tiled)"}
        if not size:
            return []
        rows = self.single_view_rows(inputs)
        return [NoRepeatNGramRows(size, rows)] if any(rows) else []

    # ------------------------------------------------------------------ stops
    def stop_token_ids(self) -> list[int]:
        ids = []
        for token in (GOT_STOP_STRING, "<|endoftext|>"):
            tid = self.tokenizer.convert_tokens_to_ids(token)
            if isinstance(tid, int) and tid >= 0 and tid not in ids:
                ids.append(tid)
        return ids or super().stop_token_ids()

    def stop_strings(self) -> list[str]:
        return [GOT_STOP_STRING]

    def pad_token_id(self) -> int:
        pad = getattr(self.tokenizer, "pad_token_id", None)
        if pad is None:
            pad = self.tokenizer.convert_tokens_to_ids("<|endoftext|>")
        return int(pad)

    # ------------------------------------------------------------------ postprocess (pure)
    def postprocess(self, page: Page, raw: RawOutput, task: str) -> PageResult:
        text = raw.text.replace(GOT_STOP_STRING, "").strip()
        if task == "text":
            return self.page_result(page, raw, text=text)
        # Format mode writes Mathpix-style LaTeX: markdown keeps the math as $…$ and turns
        # tables, \title, \section, lists and emphasis into markdown; text writes it all out.
        return self.page_result(page, raw, markdown=latex_markdown(text), text=markdown_to_text(latex_text(text)))

"""Facts of the official checkpoints that several layers name: image normalisation, special
tokens and prompts.

The ports (chatvlm/models), the tokenizers and checkpoints chatvlm writes itself
(byte_tokenizer, synthetic, testing), the backends and the model table all need some of
them; they live here, below all of those, so each is written once. Plain data only.
"""

from __future__ import annotations

# Per-channel pixel normalisation of the vision preprocessors.
# OpenAI CLIP's: Qwen2-VL, dots.ocr, Phi-3.5-vision.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# Mean and std 0.5 (pixels scaled to [-1, 1]): Qwen3-VL, DeepSeek-OCR.
HALF_MEAN = (0.5, 0.5, 0.5)
HALF_STD = (0.5, 0.5, 0.5)

# DeepSeek-OCR and DeepSeek-OCR-2 share a tokenizer; these sit at ids 0, 1, 2 of the real vocab.
DEEPSEEK_BOS = "<｜begin▁of▁sentence｜>"
DEEPSEEK_EOS = "<｜end▁of▁sentence｜>"
DEEPSEEK_PAD = "<｜▁pad▁｜>"
# Its other special tokens, in id order (128815 to 128826 in the real vocab).
DEEPSEEK_SPECIALS = (
    "<image>", "<|ref|>", "<|/ref|>", "<|det|>", "<|/det|>", "<|grounding|>",
    "<td>", "</td>", "<tr>", "</tr>", "<|User|>", "<|Assistant|>",
)
DEEPSEEK_FIRST_SPECIAL_ID = 128815

# DeepSeek-OCR's official prompts (both versions), in the "plain" format: no chat roles.
DEEPSEEK_PROMPT_MARKDOWN = "<image>\n<|grounding|>Convert the document to markdown."
DEEPSEEK_PROMPT_FREE_OCR = "<image>\nFree OCR."

# No official OCR prompt exists for Phi-3.5-vision; these two are ours.
PHI3_VISION_OCR_PROMPTS = {
    "text": "Extract all the text in this image exactly as it appears. Output only the text.",
    "markdown": "Convert this document image to Markdown. Keep headings, lists and tables; output only the Markdown.",
}

"""Built-in model specs. Facts and prompts come from ../shared/reference/.

Each VLM's full-size config (its hub config.json, for `bench --synthetic`) is data, not
code: chatvlm/data/<name>.json, read by `full_config(name)`.

Revisions: the hub cannot be reached from where chatvlm is built, so each pin is the
snapshot commit that public projects record for the checkpoint (the folder name under
models--ORG--NAME/snapshots/ in their Hugging Face caches). For DeepSeek-OCR-2 no such
record was found; it follows the branch "main" until verified (report.json records the
commit a run loaded).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .model_constants import DEEPSEEK_PROMPT_FREE_OCR, DEEPSEEK_PROMPT_MARKDOWN, PHI3_VISION_OCR_PROMPTS
from .model_spec import ModelSpec

DATA = Path(__file__).with_name("data")


def full_config(name: str) -> dict[str, Any]:
    """The full-size config.json of model `name` (chatvlm/data/<name>.json)."""
    return json.loads((DATA / f"{name}.json").read_text(encoding="utf-8"))


# The built-in models, in the order `chatvlm models` lists them; the registry registers them.
BUILTIN_SPECS: list[ModelSpec] = []
add = BUILTIN_SPECS.append

add(ModelSpec(
    name="tesseract",
    backend="chatvlm.backends.tesseract:TesseractBackend",
    description="Tesseract 5 (offline CPU engine, eng+rus)",
    tasks=("text", "markdown", "layout"),
    dtype="n/a",
    auto_rank=100,   # the fallback when no VLM weights are present
))

# --- qwen_vl_2b -------------------------------------------------------------
# Pixel budget: 256..2048 merged 28-px patches (image tokens) per page. The checkpoint's
# own max (12.8 MP = 16384 tokens) would turn an A4 page at 200 DPI into 4,819 tokens;
# 2048 tokens keep body text legible (~1,120 x 1,430 px for A4) at a bounded cost.
# repetition_penalty 1.05 = the checkpoint's generation_config.json (applied padding-safe).
add(ModelSpec(
    name="qwen_vl_2b",
    backend="chatvlm.backends.qwen2_vl:Qwen2VLBackend",
    description="Qwen2-VL-2B-Instruct (transformers native)",
    repo_id="Qwen/Qwen2-VL-2B-Instruct",
    revision="895c3a49bc3fa70a340399125c650a463535e71c",
    download_gb=4.4,
    tasks=("text", "markdown"),
    prompts={
        "text": "Read all the text in the image.",
        "markdown": "Convert the content of this image to Markdown. Output only the Markdown, without any explanations.",
    },
    min_pixels=256 * 28 * 28,
    max_pixels=2048 * 28 * 28,
    max_new_tokens=4096,
    dtype="bfloat16",
    can_chat=True,
    auto_rank=1,
    extra={"repetition_penalty": 1.05},
    full_config=full_config("qwen_vl_2b"),
))

# --- qwen3_vl_2b ------------------------------------------------------------
# Pixel budget: 512..2048 merged 32-px patches, the budget of Qwen's document-parsing
# cookbook (min_pixels=512*32*32, max_pixels=2048*32*32), used by the text task too (an A4
# page: 2,014 tokens, ~145 DPI; `chatvlm models` and README say so; --max-pixels raises it). No penalty: the checkpoint ships none
# for greedy decoding (its presence_penalty 1.5 is a vLLM sampling setting).
add(ModelSpec(
    name="qwen3_vl_2b",
    backend="chatvlm.backends.qwen3_vl:Qwen3VLBackend",
    description="Qwen3-VL-2B-Instruct (transformers native)",
    repo_id="Qwen/Qwen3-VL-2B-Instruct",
    revision="89644892e4d85e24eaac8bacfd4f463576704203",
    download_gb=4.3,
    tasks=("text", "markdown"),
    prompts={
        "text": "Read all the text in the image.",
        "markdown": "qwenvl markdown",
    },
    min_pixels=512 * 32 * 32,
    max_pixels=2048 * 32 * 32,
    max_new_tokens=4096,
    dtype="bfloat16",
    can_chat=True,
    auto_rank=2,
    full_config=full_config("qwen3_vl_2b"),
))

# --- got_ocr_hf -------------------------------------------------------------
# The processor writes GOT's own prompt (plain " OCR: " for text, " OCR with format: "
# for markdown); pages with aspect ratio >= 1.8 are tiled (crop_to_patches, <= 6 tiles).
# no_repeat_ngram_size 20: the authors' generate() setting for single-view pages (none on
# tiled pages, as in their chat_crop()).
add(ModelSpec(
    name="got_ocr_hf",
    backend="chatvlm.backends.got_ocr:GotOcrBackend",
    description="GOT-OCR 2.0 (transformers native)",
    repo_id="stepfun-ai/GOT-OCR-2.0-hf",
    revision="d3017ef2c2c1395888c8d635c5e0508bcb0ac78d",   # "Update preprocessor_config.json", the bf16 upload
    download_gb=1.4,
    tasks=("text", "markdown"),
    prompts={"text": "OCR: ", "markdown": "OCR with format: "},   # informational: the processor builds them
    max_new_tokens=4096,
    dtype="bfloat16",
    auto_rank=5,
    extra={"crop": "auto", "crop_min_aspect": 1.8, "max_patches": 6, "no_repeat_ngram_size": 20},
    full_config=full_config("got_ocr_hf"),
))

# --- deepseek_ocr2 ----------------------------------------------------------
# Official prompts (no trailing space, as in the vLLM config and the transformers docs);
# anti-loop: the official image runner's windowed no-repeat n-gram (20 within 90 tokens,
# <td>/</td> whitelisted). full_config: the LM is DeepSeek-OCR v1's DeepSeek3B-MoE decoder
# and the encoder Qwen2-0.5B-shaped (paper); derived, not checked against the hub file.
add(ModelSpec(
    name="deepseek_ocr2",
    backend="chatvlm.backends.deepseek_ocr2:DeepseekOcr2Backend",
    description="DeepSeek-OCR-2 (transformers native)",
    repo_id="deepseek-community/DeepSeek-OCR-2",
    # Follows main: no commit of this conversion is known to us to pin (see README, Models).
    revision="main",
    download_gb=6.8,
    tasks=("text", "markdown", "layout"),
    prompts={
        "text": DEEPSEEK_PROMPT_FREE_OCR,
        "markdown": DEEPSEEK_PROMPT_MARKDOWN,
        "layout": DEEPSEEK_PROMPT_MARKDOWN,
    },
    max_new_tokens=8192,             # capped at the 8192-token context minus the prompt
    dtype="bfloat16",
    auto_rank=4,
    extra={"ngram_size": 20, "ngram_window": 90, "ngram_whitelist": ["<td>", "</td>"]},
    full_config=full_config("deepseek_ocr2"),
))

# --- dots_ocr ---------------------------------------------------------------
# Prompts are official prompt-mode names (chatvlm.models.dots_ocr.PROMPTS holds the verbatim
# text, checked by SHA-256): one layout pass serves layout and markdown; `--mode layout-only`
# -> prompt_layout_only_en; text -> prompt_ocr. Pixel budget: dots_ocr/utils/consts.py (the
# checkpoint's preprocessor_config.json says the same and is what load() reads).
# max_new_tokens: the official vLLM parser's 16384 (a dense page can need >10k tokens; the
# loop guard stops runaway pages early). Greedy, no repetition penalty (reference §11).
add(ModelSpec(
    name="dots_ocr",
    backend="chatvlm.backends.dots_ocr:DotsOcrBackend",
    description="dots.ocr (own port; layout + text in one pass)",
    repo_id="rednote-hilab/dots.ocr",
    revision="c0111ce6bc07803dbc267932ffef0ae3a51dc951",
    download_gb=6.1,
    tasks=("text", "markdown", "layout"),
    prompts={
        "layout": "prompt_layout_all_en",
        "markdown": "prompt_layout_all_en",
        "text": "prompt_ocr",
        "layout-only": "prompt_layout_only_en",
    },
    min_pixels=3136,
    max_pixels=11289600,
    max_new_tokens=16384,
    dtype="bfloat16",
    auto_rank=3,
    extra={"framing": "string"},   # vLLM/string chat framing (published scores); "hf" = demo_hf.py
    full_config=full_config("dots_ocr"),
))

# --- phi3_vision ------------------------------------------------------------
# Own port (chatvlm/models/phi3_vision), no remote code. Prompts: no official OCR prompt
# exists for Phi-3.5-vision; these are ours (= the port's OCR_PROMPTS), in the official chat
# format. num_crops 16: the model card's advice for a single frame (4 is for multi-frame);
# an A4 page -> 4x4 crops of 336 px, ~2.5k image tokens (with 4 it is read at 672 px).
# max_new_tokens 4096: a dense page's markdown; the loop guard stops runaway pages.
# Stop on <|end|> (+ <|endoftext|>, </s>): the shipped generation_config lists only </s>.
# full_config: fixtures/phi3_vision/full_config.json verbatim (its flash_attention_2 is ignored).
add(ModelSpec(
    name="phi3_vision",
    backend="chatvlm.backends.phi3_vision:Phi3VisionBackend",
    description="Phi-3.5-vision-instruct (own port)",
    repo_id="microsoft/Phi-3.5-vision-instruct",
    revision="12b77fb40b63a2c73c68243d3f767aab688a1b2a",
    download_gb=8.3,
    tasks=("text", "markdown"),
    prompts=dict(PHI3_VISION_OCR_PROMPTS),
    max_new_tokens=4096,
    dtype="bfloat16",
    can_chat=True,
    auto_rank=7,
    extra={"num_crops": 16},
    full_config=full_config("phi3_vision"),
))

# --- deepseek_ocr -----------------------------------------------------------
# Own port (chatvlm/models/deepseek_ocr), no remote code. Official prompts in the "plain"
# format (BOS + prompt, no chat roles; the processor strips the HF scripts' trailing space).
# max_new_tokens: the official runners' max_tokens 8192 (capped at the 8192-token context
# minus the prompt). extra["mode"]: resolution mode (gundam = 1024 global view + 2-9 640-px
# tiles, the official default for documents; tiny/small/base/large selectable). Anti-loop:
# the official windowed no-repeat n-gram (30 within 90 generated tokens, <td>/</td> exempt;
# extra ngram_size / ngram_window override) plus chatvlm's loop guard.
# full_config: the hub config.json verbatim (../shared/fixtures/deepseek_ocr/full_config.json).
add(ModelSpec(
    name="deepseek_ocr",
    backend="chatvlm.backends.deepseek_ocr:DeepseekOcrBackend",
    description="DeepSeek-OCR v1 (own port)",
    repo_id="deepseek-ai/DeepSeek-OCR",
    revision="9f30c71f441d010e5429c532364a86705536c53a",
    download_gb=6.7,
    tasks=("text", "markdown", "layout"),
    prompts={
        "text": DEEPSEEK_PROMPT_FREE_OCR,
        "markdown": DEEPSEEK_PROMPT_MARKDOWN,
        "layout": DEEPSEEK_PROMPT_MARKDOWN,
    },
    max_new_tokens=8192,
    dtype="bfloat16",
    auto_rank=6,
    extra={"mode": "gundam"},
    full_config=full_config("deepseek_ocr"),
))

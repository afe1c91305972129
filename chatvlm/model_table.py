"""Built-in model specs. Facts and prompts come from ../shared/reference/.

Revisions: the hub could not be reached when these were written, so each spec pins
the branch "main"; replace with a commit hash once verified against the hub.
"""

from __future__ import annotations

from .registry import ModelSpec, register

register(ModelSpec(
    name="tesseract",
    backend="chatvlm.backends.tesseract:TesseractBackend",
    description="Tesseract 5 (offline CPU engine, eng+rus)",
    tasks=("text", "markdown", "layout"),
    dtype="n/a",
    auto_rank=100,   # the fallback when no VLM weights are present
))

# --- qwen_vl_2b -------------------------------------------------------------
register(ModelSpec(
    name="qwen_vl_2b",
    backend="chatvlm.backends.qwen2_vl:Qwen2VLBackend",
    description="Qwen2-VL-2B-Instruct (transformers native)",
    repo_id="Qwen/Qwen2-VL-2B-Instruct",
    revision="main",
    download_gb=4.4,
    tasks=("text", "markdown"),
    prompts={
        "text": "Read all the text in the image.",
        "markdown": "Convert the content of this image to Markdown. Output only the Markdown, without any explanations.",
    },
    can_chat=True,
    auto_rank=1,
))

# --- qwen3_vl_2b ------------------------------------------------------------
register(ModelSpec(
    name="qwen3_vl_2b",
    backend="chatvlm.backends.qwen3_vl:Qwen3VLBackend",
    description="Qwen3-VL-2B-Instruct (transformers native)",
    repo_id="Qwen/Qwen3-VL-2B-Instruct",
    revision="main",
    download_gb=4.3,
    tasks=("text", "markdown"),
    prompts={
        "text": "Read all the text in the image.",
        "markdown": "qwenvl markdown",
    },
    can_chat=True,
    auto_rank=2,
))

# --- got_ocr_hf -------------------------------------------------------------
register(ModelSpec(
    name="got_ocr_hf",
    backend="chatvlm.backends.got_ocr:GotOcrBackend",
    description="GOT-OCR 2.0 (transformers native)",
    repo_id="stepfun-ai/GOT-OCR-2.0-hf",
    revision="main",
    download_gb=1.4,
    tasks=("text", "markdown"),
    auto_rank=5,
))

# --- deepseek_ocr2 ----------------------------------------------------------
register(ModelSpec(
    name="deepseek_ocr2",
    backend="chatvlm.backends.deepseek_ocr2:DeepseekOcr2Backend",
    description="DeepSeek-OCR-2 (transformers native)",
    repo_id="deepseek-community/DeepSeek-OCR-2",
    revision="main",
    download_gb=6.8,
    tasks=("text", "markdown", "layout"),
    prompts={
        "text": "<image>\nFree OCR.",
        "markdown": "<image>\n<|grounding|>Convert the document to markdown.",
        "layout": "<image>\n<|grounding|>Convert the document to markdown.",
    },
    auto_rank=4,
))

# --- dots_ocr ---------------------------------------------------------------
register(ModelSpec(
    name="dots_ocr",
    backend="chatvlm.backends.dots_ocr:DotsOcrBackend",
    description="dots.ocr (own port; layout + text in one pass)",
    repo_id="rednote-hilab/dots.ocr",
    revision="main",
    download_gb=6.1,
    tasks=("text", "markdown", "layout"),
    auto_rank=3,
))

# --- phi3_vision ------------------------------------------------------------
register(ModelSpec(
    name="phi3_vision",
    backend="chatvlm.backends.phi3_vision:Phi3VisionBackend",
    description="Phi-3.5-vision-instruct (own port)",
    repo_id="microsoft/Phi-3.5-vision-instruct",
    revision="main",
    download_gb=8.3,
    tasks=("text", "markdown"),
    can_chat=True,
    auto_rank=7,
))

# --- deepseek_ocr -----------------------------------------------------------
register(ModelSpec(
    name="deepseek_ocr",
    backend="chatvlm.backends.deepseek_ocr:DeepseekOcrBackend",
    description="DeepSeek-OCR v1 (own port)",
    repo_id="deepseek-ai/DeepSeek-OCR",
    revision="main",
    download_gb=6.7,
    tasks=("text", "markdown", "layout"),
    prompts={
        "text": "<image>\nFree OCR.",
        "markdown": "<image>\n<|grounding|>Convert the document to markdown.",
        "layout": "<image>\n<|grounding|>Convert the document to markdown.",
    },
    auto_rank=6,
))

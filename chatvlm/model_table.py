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
# Prompts are official prompt-mode names (chatvlm.models.dots_ocr.PROMPTS holds the verbatim
# text, checked by SHA-256): one layout pass serves layout and markdown; `--mode layout-only`
# -> prompt_layout_only_en; text -> prompt_ocr. Pixel budget: dots_ocr/utils/consts.py (the
# checkpoint's preprocessor_config.json says the same and is what load() reads).
# max_new_tokens: the official vLLM parser's 16384 (a dense page can need >10k tokens; the
# loop guard stops runaway pages early). Greedy, no repetition penalty (reference §11).
register(ModelSpec(
    name="dots_ocr",
    backend="chatvlm.backends.dots_ocr:DotsOcrBackend",
    description="dots.ocr (own port; layout + text in one pass)",
    repo_id="rednote-hilab/dots.ocr",
    revision="main",
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
    full_config={
        "architectures": ["DotsOCRForCausalLM"], "model_type": "dots_ocr",
        "auto_map": {"AutoConfig": "configuration_dots.DotsOCRConfig",
                     "AutoModelForCausalLM": "modeling_dots_ocr.DotsOCRForCausalLM"},
        "attention_bias": True, "attention_dropout": 0.0, "hidden_act": "silu",
        "hidden_size": 1536, "initializer_range": 0.02, "intermediate_size": 8960,
        "max_position_embeddings": 131072, "max_window_layers": 28,
        "num_attention_heads": 12, "num_hidden_layers": 28, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000,
        "sliding_window": 131072, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "transformers_version": "4.51.0", "use_cache": True, "use_sliding_window": False,
        "vocab_size": 151936, "image_token_id": 151665, "video_token_id": 151656,
        "vision_config": {
            "embed_dim": 1536, "hidden_size": 1536, "intermediate_size": 4224,
            "num_hidden_layers": 42, "num_attention_heads": 12, "num_channels": 3,
            "patch_size": 14, "post_norm": True, "rms_norm_eps": 1e-05,
            "spatial_merge_size": 2, "temporal_patch_size": 1, "use_bias": False,
            "attn_implementation": "flash_attention_2", "init_merger_std": 0.02,
            "initializer_range": 0.02, "is_causal": False,
        },
    },
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

"""Built-in model specs. Facts and prompts come from ../shared/reference/.

Revisions: the hub cannot be reached from where chatvlm is built, so each pin is the
snapshot commit that public projects record for the checkpoint (the folder name under
models--ORG--NAME/snapshots/ in their Hugging Face caches). For GOT-OCR-2.0-hf and
DeepSeek-OCR-2 no such record was found; they follow the branch "main" until verified.
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
# Pixel budget: 256..2048 merged 28-px patches (image tokens) per page. The checkpoint's
# own max (12.8 MP = 16384 tokens) would turn an A4 page at 200 DPI into 4,819 tokens;
# 2048 tokens keep body text legible (~1,120 x 1,430 px for A4) at a bounded cost.
# repetition_penalty 1.05 = the checkpoint's generation_config.json (applied padding-safe).
register(ModelSpec(
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
    full_config={
        "architectures": ["Qwen2VLForConditionalGeneration"], "model_type": "qwen2_vl",
        "bos_token_id": 151643, "eos_token_id": 151645,
        "vision_start_token_id": 151652, "vision_end_token_id": 151653, "vision_token_id": 151654,
        "image_token_id": 151655, "video_token_id": 151656,
        "hidden_act": "silu", "hidden_size": 1536, "intermediate_size": 8960,
        "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2,
        "max_position_embeddings": 32768, "max_window_layers": 28,
        "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
        "sliding_window": 32768, "use_sliding_window": False,
        "tie_word_embeddings": True, "torch_dtype": "bfloat16", "use_cache": True,
        "vocab_size": 151936, "initializer_range": 0.02, "attention_dropout": 0.0,
        "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
        "vision_config": {
            "depth": 32, "embed_dim": 1280, "mlp_ratio": 4, "num_heads": 16, "in_chans": 3,
            "hidden_size": 1536, "patch_size": 14, "spatial_patch_size": 14,
            "spatial_merge_size": 2, "temporal_patch_size": 2,
        },
    },
))

# --- qwen3_vl_2b ------------------------------------------------------------
# Pixel budget: 512..2048 merged 32-px patches, the budget of Qwen's document-parsing
# cookbook (min_pixels=512*32*32, max_pixels=2048*32*32), used by the text task too (an A4
# page: 2,014 tokens, ~145 DPI; `chatvlm models` and README say so; --max-pixels raises it). No penalty: the checkpoint ships none
# for greedy decoding (its presence_penalty 1.5 is a vLLM sampling setting).
register(ModelSpec(
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
    full_config={
        "architectures": ["Qwen3VLForConditionalGeneration"], "model_type": "qwen3_vl",
        "image_token_id": 151655, "video_token_id": 151656,
        "vision_start_token_id": 151652, "vision_end_token_id": 151653,
        "tie_word_embeddings": True,
        "text_config": {
            "model_type": "qwen3_vl_text", "vocab_size": 151936, "hidden_size": 2048,
            "intermediate_size": 6144, "num_hidden_layers": 28, "num_attention_heads": 16,
            "num_key_value_heads": 8, "head_dim": 128, "max_position_embeddings": 262144,
            "rms_norm_eps": 1e-06, "rope_theta": 5000000, "hidden_act": "silu",
            "attention_bias": False, "attention_dropout": 0.0, "dtype": "bfloat16",
            "tie_word_embeddings": True, "bos_token_id": 151643, "eos_token_id": 151645,
            "rope_scaling": {"mrope_interleaved": True, "mrope_section": [24, 20, 20], "rope_type": "default"},
        },
        "vision_config": {
            "model_type": "qwen3_vl", "depth": 24, "hidden_size": 1024,
            "hidden_act": "gelu_pytorch_tanh", "intermediate_size": 4096, "num_heads": 16,
            "in_channels": 3, "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2,
            "out_hidden_size": 2048, "num_position_embeddings": 2304,
            "deepstack_visual_indexes": [5, 11, 17], "initializer_range": 0.02,
        },
    },
))

# --- got_ocr_hf -------------------------------------------------------------
# The processor writes GOT's own prompt (plain " OCR: " for text, " OCR with format: "
# for markdown); pages with aspect ratio >= 1.8 are tiled (crop_to_patches, <= 6 tiles).
# no_repeat_ngram_size 20: the authors' generate() setting for single-view pages (none on
# tiled pages, as in their chat_crop()).
register(ModelSpec(
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
    full_config={
        "architectures": ["GotOcr2ForConditionalGeneration"], "model_type": "got_ocr2",
        "image_token_index": 151859, "image_seq_length": 576, "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "text_config": {
            "model_type": "qwen2", "vocab_size": 151860, "hidden_size": 1024, "intermediate_size": 2816,
            "num_hidden_layers": 24, "num_attention_heads": 16, "num_key_value_heads": 16,
            "max_position_embeddings": 32768, "max_window_layers": 21, "rms_norm_eps": 1e-06,
            "rope_theta": 1000000.0, "tie_word_embeddings": True, "use_sliding_window": False,
            "hidden_act": "silu",
        },
        "vision_config": {
            "model_type": "got_ocr2_vision", "hidden_size": 768, "output_channels": 256,
            "num_hidden_layers": 12, "num_attention_heads": 12, "num_channels": 3, "image_size": 1024,
            "patch_size": 16, "hidden_act": "gelu", "layer_norm_eps": 1e-06, "qkv_bias": True,
            "use_abs_pos": True, "use_rel_pos": True, "window_size": 14,
            "global_attn_indexes": [2, 5, 8, 11], "mlp_dim": 3072,
        },
    },
))

# --- deepseek_ocr2 ----------------------------------------------------------
# Official prompts (no trailing space, as in the vLLM config and the transformers docs);
# anti-loop: the official image runner's windowed no-repeat n-gram (20 within 90 tokens,
# <td>/</td> whitelisted). full_config: the LM is DeepSeek-OCR v1's DeepSeek3B-MoE decoder
# and the encoder Qwen2-0.5B-shaped (paper); derived, not checked against the hub file.
register(ModelSpec(
    name="deepseek_ocr2",
    backend="chatvlm.backends.deepseek_ocr2:DeepseekOcr2Backend",
    description="DeepSeek-OCR-2 (transformers native)",
    repo_id="deepseek-community/DeepSeek-OCR-2",
    # Follows main: no commit of this conversion is known to us to pin (see README, Models).
    revision="main",
    download_gb=6.8,
    tasks=("text", "markdown", "layout"),
    prompts={
        "text": "<image>\nFree OCR.",
        "markdown": "<image>\n<|grounding|>Convert the document to markdown.",
        "layout": "<image>\n<|grounding|>Convert the document to markdown.",
    },
    max_new_tokens=8192,             # capped at the 8192-token context minus the prompt
    dtype="bfloat16",
    auto_rank=4,
    extra={"ngram_size": 20, "ngram_window": 90, "ngram_whitelist": ["<td>", "</td>"]},
    full_config={
        "model_type": "deepseek_ocr2", "image_token_id": 128815, "tie_word_embeddings": False,
        "text_config": {
            "vocab_size": 129280, "hidden_size": 1280, "intermediate_size": 6848,
            "num_hidden_layers": 12, "num_attention_heads": 10, "num_key_value_heads": 10,
            "max_position_embeddings": 8192, "n_routed_experts": 64, "num_experts_per_tok": 6,
            "n_shared_experts": 2, "moe_intermediate_size": 896, "topk_method": "greedy",
            "mlp_layer_types": ["dense"] + ["sparse"] * 11,
            "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 2,
        },
        "vision_config": {
            "sam_config": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                           "image_size": 1024, "patch_size": 16, "global_attn_indexes": [2, 5, 8, 11],
                           "downsample_channels": [512, 896]},
            "encoder_config": {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
                               "num_attention_heads": 14, "num_key_value_heads": 2,
                               "max_position_embeddings": 32768},
        },
    },
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
# Own port (chatvlm/models/phi3_vision), no remote code. Prompts: no official OCR prompt
# exists for Phi-3.5-vision; these are ours (= the port's OCR_PROMPTS), in the official chat
# format. num_crops 16: the model card's advice for a single frame (4 is for multi-frame);
# an A4 page -> 4x4 crops of 336 px, ~2.5k image tokens (with 4 it is read at 672 px).
# max_new_tokens 4096: a dense page's markdown; the loop guard stops runaway pages.
# Stop on <|end|> (+ <|endoftext|>, </s>): the shipped generation_config lists only </s>.
# full_config: fixtures/phi3_vision/full_config.json verbatim (its flash_attention_2 is ignored).
register(ModelSpec(
    name="phi3_vision",
    backend="chatvlm.backends.phi3_vision:Phi3VisionBackend",
    description="Phi-3.5-vision-instruct (own port)",
    repo_id="microsoft/Phi-3.5-vision-instruct",
    revision="12b77fb40b63a2c73c68243d3f767aab688a1b2a",
    download_gb=8.3,
    tasks=("text", "markdown"),
    prompts={
        "text": "Extract all the text in this image exactly as it appears. Output only the text.",
        "markdown": "Convert this document image to Markdown. Keep headings, lists and tables; output only the Markdown.",
    },
    max_new_tokens=4096,
    dtype="bfloat16",
    can_chat=True,
    auto_rank=7,
    extra={"num_crops": 16},
    full_config={
        "_name_or_path": "Phi-3.5-vision-instruct", "architectures": ["Phi3VForCausalLM"], "model_type": "phi3_v",
        "auto_map": {"AutoConfig": "configuration_phi3_v.Phi3VConfig",
                     "AutoModelForCausalLM": "modeling_phi3_v.Phi3VForCausalLM"},
        "attention_dropout": 0.0, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 32000,
        "embd_layer": {"embedding_cls": "image", "hd_transform_order": "sub_glb", "projection_cls": "mlp",
                       "use_hd_transform": True, "with_learnable_separator": True},
        "embd_pdrop": 0.0, "hidden_act": "silu", "hidden_size": 3072,
        "img_processor": {"image_dim_out": 1024, "model_name": "openai/clip-vit-large-patch14-336",
                          "name": "clip_vision_model", "num_img_tokens": 144},
        "initializer_range": 0.02, "intermediate_size": 8192, "max_position_embeddings": 131072,
        "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 32,
        "original_max_position_embeddings": 4096, "resid_pdrop": 0.0, "rms_norm_eps": 1e-05,
        "rope_scaling": {
            "type": "su",
            "long_factor": [
                1.0800000429153442, 1.1100000143051147, 1.1399999856948853, 1.340000033378601,
                1.5899999141693115, 1.600000023841858, 1.6200000047683716, 2.620000123977661,
                3.2300000190734863, 3.2300000190734863, 4.789999961853027, 7.400000095367432,
                7.700000286102295, 9.09000015258789, 12.199999809265137, 17.670000076293945, 24.46000099182129,
                28.57000160217285, 30.420001983642578, 30.840002059936523, 32.590003967285156,
                32.93000411987305, 42.320003509521484, 44.96000289916992, 50.340003967285156,
                50.45000457763672, 57.55000305175781, 57.93000411987305, 58.21000289916992, 60.1400032043457,
                62.61000442504883, 62.62000274658203, 62.71000289916992, 63.1400032043457, 63.1400032043457,
                63.77000427246094, 63.93000411987305, 63.96000289916992, 63.970001220703125, 64.02999877929688,
                64.06999969482422, 64.08000183105469, 64.12000274658203, 64.41000366210938, 64.4800033569336,
                64.51000213623047, 64.52999877929688, 64.83999633789062,
            ],
            "short_factor": [
                1.08, 1.1, 1.1300000000000001, 1.2800000000000002, 1.3100000000000003, 1.4500000000000004,
                1.4500000000000004, 1.9500000000000008, 2.030000000000001, 2.4299999999999926,
                2.5699999999999896, 2.9499999999999815, 3.729999999999965, 3.869999999999962,
                4.189999999999955, 4.43999999999995, 4.6399999999999455, 4.979999999999938, 5.159999999999934,
                5.279999999999932, 5.759999999999922, 5.889999999999919, 5.889999999999919, 5.969999999999917,
                6.089999999999915, 6.2799999999999105, 6.7699999999999, 6.8899999999998975, 7.109999999999893,
                7.129999999999892, 7.179999999999891, 7.289999999999889, 7.339999999999888, 7.559999999999883,
                7.619999999999882, 7.69999999999988, 7.879999999999876, 7.879999999999876, 7.879999999999876,
                7.939999999999875, 7.949999999999875, 7.979999999999874, 8.19999999999987, 8.439999999999864,
                8.469999999999864, 8.589999999999861, 8.809999999999857, 8.999999999999853,
            ],
        },
        "rope_theta": 10000.0, "sliding_window": 262144, "tie_word_embeddings": False,
        "torch_dtype": "bfloat16", "transformers_version": "4.38.1", "use_cache": True, "vocab_size": 32064,
        "_attn_implementation": "flash_attention_2",
    },
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
register(ModelSpec(
    name="deepseek_ocr",
    backend="chatvlm.backends.deepseek_ocr:DeepseekOcrBackend",
    description="DeepSeek-OCR v1 (own port)",
    repo_id="deepseek-ai/DeepSeek-OCR",
    revision="9f30c71f441d010e5429c532364a86705536c53a",
    download_gb=6.7,
    tasks=("text", "markdown", "layout"),
    prompts={
        "text": "<image>\nFree OCR.",
        "markdown": "<image>\n<|grounding|>Convert the document to markdown.",
        "layout": "<image>\n<|grounding|>Convert the document to markdown.",
    },
    max_new_tokens=8192,
    dtype="bfloat16",
    auto_rank=6,
    extra={"mode": "gundam"},
    full_config={
        "_name_or_path": "deepseek-ai/DeepSeek-OCR", "candidate_resolutions": [[1024, 1024]],
        "global_view_pos": "head", "architectures": ["DeepseekOCRForCausalLM"],
        "auto_map": {
            "AutoConfig": "modeling_deepseekocr.DeepseekOCRConfig",
            "AutoModel": "modeling_deepseekocr.DeepseekOCRForCausalLM",
        },
        "language_config": {
            "architectures": ["DeepseekV2ForCausalLM"],
            "auto_map": {
                "AutoConfig": "configuration_deepseekv2.DeepseekV2Config",
                "AutoModel": "modeling_deepseek.DeepseekV2Model",
                "AutoModelForCausalLM": "modeling_deepseek.DeepseekV2ForCausalLM",
            },
            "bos_token_id": 0, "eos_token_id": 1, "first_k_dense_replace": 1, "hidden_size": 1280,
            "intermediate_size": 6848, "kv_lora_rank": None, "lm_head": True, "max_position_embeddings": 8192,
            "moe_intermediate_size": 896, "n_group": 1, "n_routed_experts": 64, "n_shared_experts": 2,
            "num_attention_heads": 10, "num_experts_per_tok": 6, "num_hidden_layers": 12,
            "num_key_value_heads": 10, "q_lora_rank": None, "qk_nope_head_dim": 0, "qk_rope_head_dim": 0,
            "rm_head": False, "topk_group": 1, "topk_method": "greedy", "torch_dtype": "bfloat16",
            "use_mla": False, "v_head_dim": 0, "vocab_size": 129280,
        },
        "model_type": "deepseek_vl_v2",
        "projector_config": {
            "input_dim": 2048, "model_type": "mlp_projector", "n_embed": 1280, "projector_type": "linear",
        },
        "tile_tag": "2D", "torch_dtype": "bfloat16", "transformers_version": "4.46.3",
        "vision_config": {
            "image_size": 1024, "mlp_ratio": 3.7362, "model_name": "deeplip_b_l", "model_type": "vision",
            "width": {
                "clip-l-14-224": {"heads": 16, "image_size": 224, "layers": 24, "patch_size": 14, "width": 1024},
                "sam_vit_b": {
                    "downsample_channels": [512, 1024], "global_attn_indexes": [2, 5, 8, 11], "heads": 12,
                    "layers": 12, "width": 768,
                },
            },
        },
        "bos_token_id": 0, "eos_token_id": 1, "first_k_dense_replace": 1, "hidden_size": 1280,
        "intermediate_size": 6848, "kv_lora_rank": None, "lm_head": True, "max_position_embeddings": 8192,
        "moe_intermediate_size": 896, "n_group": 1, "n_routed_experts": 64, "n_shared_experts": 2,
        "num_attention_heads": 10, "num_experts_per_tok": 6, "num_hidden_layers": 12,
        "num_key_value_heads": 10, "q_lora_rank": None, "qk_nope_head_dim": 0, "qk_rope_head_dim": 0,
        "rm_head": False, "topk_group": 1, "topk_method": "greedy", "use_mla": False, "v_head_dim": 0,
        "vocab_size": 129280,
    },
))

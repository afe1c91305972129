"""Reduced configs of the seven VLMs, for CPU runs of the synthetic recipes.

`bench --synthetic` builds each model from its full config; on a CPU that takes minutes and
gigabytes. These configs keep every model's architecture and special tokens (so the recipe,
processor, backend and decoder code is the full-size run's) at a few thousand parameters.
The GPU check's dry run (`scripts/gpu_check.sh --dry-run`) and the recipe tests use them.
Importing the ports' helpers imports torch, so they are imported only when asked for.
"""

from __future__ import annotations

from typing import Any

# Options a model needs beside its tiny config to stay fast on a CPU: DeepSeek-OCR's
# "small" mode reads one 640-px view instead of tiles.
CPU_OPTIONS: dict[str, dict[str, Any]] = {"deepseek_ocr": {"mode": "small"}}


def tiny_configs() -> dict[str, dict[str, Any]]:
    """{model name: config.json dict} for the seven VLMs."""
    from .models.deepseek_ocr import official_config_dict
    from .models.dots_ocr.testing import config_dict as dots_config
    from .models.phi3_vision.testing import tiny_config as phi3_config

    small_text = dict(vocab_size=400, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)
    return {
        "qwen_vl_2b": {
            "model_type": "qwen2_vl", "tie_word_embeddings": True,
            "text_config": {**small_text, "tie_word_embeddings": True,
                            "rope_parameters": {"rope_type": "default", "mrope_section": [2, 1, 1],
                                                "rope_theta": 1000000.0}},
            "vision_config": {"depth": 1, "embed_dim": 32, "hidden_size": 32, "num_heads": 2, "mlp_ratio": 2,
                              "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2},
        },
        "qwen3_vl_2b": {
            "model_type": "qwen3_vl", "tie_word_embeddings": True,
            "text_config": {**small_text, "model_type": "qwen3_vl_text", "head_dim": 8, "tie_word_embeddings": True,
                            "rope_parameters": {"rope_type": "default", "mrope_section": [2, 1, 1],
                                                "mrope_interleaved": True, "rope_theta": 5000000.0}},
            "vision_config": {"model_type": "qwen3_vl", "depth": 2, "hidden_size": 32, "intermediate_size": 64,
                              "num_heads": 2, "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2,
                              "out_hidden_size": 32, "num_position_embeddings": 64,
                              "deepstack_visual_indexes": [0]},
        },
        "got_ocr_hf": {   # 256-px SAM view: 16 image tokens (the recipe's processor follows image_size)
            "model_type": "got_ocr2", "image_seq_length": 16, "tie_word_embeddings": True,
            "text_config": {**small_text, "model_type": "qwen2", "tie_word_embeddings": True},
            "vision_config": {"model_type": "got_ocr2_vision", "hidden_size": 16, "output_channels": 16,
                              "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 256,
                              "patch_size": 16, "window_size": 4, "global_attn_indexes": [], "mlp_dim": 32},
        },
        "deepseek_ocr2": {
            "model_type": "deepseek_ocr2",
            "text_config": {**small_text, "num_key_value_heads": 4, "max_position_embeddings": 8192,
                            "n_routed_experts": 4, "num_experts_per_tok": 2, "n_shared_experts": 1,
                            "moe_intermediate_size": 16, "mlp_layer_types": ["dense", "sparse"],
                            "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 2},
            "vision_config": {
                "sam_config": {"hidden_size": 16, "output_channels": 16, "num_hidden_layers": 1,
                               "num_attention_heads": 2, "image_size": 1024, "patch_size": 16, "window_size": 8,
                               "global_attn_indexes": [], "mlp_dim": 32, "downsample_channels": [16, 32]},
                "encoder_config": {"vocab_size": 16, "hidden_size": 32, "intermediate_size": 64,
                                   "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
                                   "max_position_embeddings": 2048},
            },
        },
        "dots_ocr": dots_config(vocab_size=1000),
        "phi3_vision": phi3_config(),
        "deepseek_ocr": official_config_dict(
            vocab_size=129280, hidden_size=32, intermediate_size=64, moe_intermediate_size=16, num_hidden_layers=2,
            num_attention_heads=2, n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1, sam_width=16,
            sam_layers=2, sam_heads=1, sam_global_attn_indexes=(1,), sam_downsample_channels=(16, 32),
            clip_layers=1, clip_heads=2),
    }

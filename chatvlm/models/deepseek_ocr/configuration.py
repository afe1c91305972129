"""Configuration for the DeepSeek-OCR (v1) port.

The official ``config.json`` (``model_type: deepseek_vl_v2``) keeps the language-model
fields twice: at the top level (what the official code actually reads, because its config
class subclasses DeepseekV2Config) and mirrored under ``language_config``. Vision and
projector sizes live under ``vision_config.width`` and ``projector_config``; the official
code hard-codes them, but they hold exactly the hard-coded values, so reading them lets the
same code build the real model and tiny test checkpoints.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from transformers import PretrainedConfig

SAM_KEY = "sam_vit_b"
CLIP_KEY = "clip-l-14-224"

# Geometry the official code hard-codes (not in config.json); the token layout depends on it.
SAM_IMAGE_SIZE = 1024  # pos_embed is a 64x64 grid
SAM_PATCH_SIZE = 16
SAM_WINDOW_SIZE = 14
SAM_MLP_RATIO = 4
SAM_NECK_CHANNELS = 256  # "prompt_embed_dim"
SAM_LN_EPS = 1e-6
CLIP_LN_EPS = 1e-5

# Language-model fields read from the top level of config.json, with the official defaults
# (the DeepseekV2Config defaults where the official config.json leaves a key out).
_LM_DEFAULTS: dict[str, Any] = {
    "vocab_size": 129280,
    "hidden_size": 1280,
    "intermediate_size": 6848,
    "moe_intermediate_size": 896,
    "num_hidden_layers": 12,
    "num_attention_heads": 10,
    "num_key_value_heads": 10,
    "n_routed_experts": 64,
    "n_shared_experts": 2,
    "num_experts_per_tok": 6,
    "first_k_dense_replace": 1,
    "moe_layer_freq": 1,
    "routed_scaling_factor": 1.0,
    "norm_topk_prob": False,
    "topk_method": "greedy",
    "scoring_func": "softmax",
    "n_group": 1,
    "topk_group": 1,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "max_position_embeddings": 8192,
    "hidden_act": "silu",
    "attention_bias": False,
    "mlp_bias": False,
    "use_mla": False,
}

_SAM_DEFAULTS = {"width": 768, "layers": 12, "heads": 12, "global_attn_indexes": [2, 5, 8, 11],
                 "downsample_channels": [512, 1024]}
_CLIP_DEFAULTS = {"width": 1024, "layers": 24, "heads": 16, "image_size": 224, "patch_size": 14}
_PROJECTOR_DEFAULTS = {"projector_type": "linear", "input_dim": 2048, "n_embed": 1280,
                       "model_type": "mlp_projector"}


class DeepseekOCRConfig(PretrainedConfig):
    """Config in the official layout; unknown keys are kept so a re-save round-trips."""

    model_type = "deepseek_vl_v2"

    def __init__(self, vision_config: dict | None = None, projector_config: dict | None = None,
                 language_config: dict | None = None, tie_word_embeddings: bool = False,
                 bos_token_id: int = 0, eos_token_id: int = 1, pad_token_id: int | None = None,
                 **kwargs: Any) -> None:
        language_config = dict(language_config or {})
        # Not stored: transformers maps `rope_scaling` onto its own rope_parameters machinery.
        rope_scaling = kwargs.pop("rope_scaling", None) or language_config.get("rope_scaling")
        if rope_scaling:
            raise ValueError("DeepSeek-OCR port does not support rope_scaling (the official model has none)")
        for key, default in _LM_DEFAULTS.items():
            # Top level wins (that is what the official code reads); the mirror is a fallback.
            value = kwargs.pop(key, language_config.get(key, default))
            setattr(self, key, value)
        self.language_config = language_config
        self.vision_config = copy.deepcopy(vision_config) if vision_config else {
            "width": {SAM_KEY: dict(_SAM_DEFAULTS), CLIP_KEY: dict(_CLIP_DEFAULTS)}}
        self.projector_config = dict(_PROJECTOR_DEFAULTS, **(projector_config or {}))
        super().__init__(tie_word_embeddings=tie_word_embeddings, bos_token_id=bos_token_id,
                         eos_token_id=eos_token_id, pad_token_id=pad_token_id, **kwargs)
        self._validate()

    # --- sub-configs as plain dicts -------------------------------------------------------
    @property
    def sam(self) -> dict[str, Any]:
        return dict(_SAM_DEFAULTS, **self.vision_config.get("width", {}).get(SAM_KEY, {}))

    @property
    def clip(self) -> dict[str, Any]:
        return dict(_CLIP_DEFAULTS, **self.vision_config.get("width", {}).get(CLIP_KEY, {}))

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def is_moe_layer(self, idx: int) -> bool:
        # Same rule as the official DeepseekV2DecoderLayer.
        return (self.n_routed_experts is not None and idx >= self.first_k_dense_replace
                and idx % self.moe_layer_freq == 0)

    def _validate(self) -> None:
        unsupported = []
        if self.use_mla:
            unsupported.append("use_mla=true (DeepSeek-OCR v1 uses plain MHA)")
        if self.topk_method != "greedy":
            unsupported.append(f"topk_method={self.topk_method!r}")
        if self.scoring_func != "softmax":
            unsupported.append(f"scoring_func={self.scoring_func!r}")
        if self.projector_config.get("projector_type") != "linear":
            unsupported.append(f"projector_type={self.projector_config.get('projector_type')!r}")
        if unsupported:
            raise ValueError("DeepSeek-OCR port does not support: " + ", ".join(unsupported))
        sam, clip = self.sam, self.clip
        if clip["width"] != sam["downsample_channels"][1]:
            raise ValueError("CLIP width must equal SAM downsample_channels[1] (SAM features are its patch tokens)")
        if self.projector_config["input_dim"] != clip["width"] + sam["downsample_channels"][1]:
            raise ValueError("projector input_dim must be CLIP width + SAM downsample_channels[1]")
        if self.projector_config["n_embed"] != self.hidden_size:
            raise ValueError("projector n_embed must equal hidden_size")


def load_config(path: str | Path) -> DeepseekOCRConfig:
    """Read ``config.json`` from a checkpoint folder (or the file itself)."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    return DeepseekOCRConfig(**json.loads(path.read_text(encoding="utf-8")))


def official_config_dict(*, vocab_size: int = 129280, hidden_size: int = 1280,
                         intermediate_size: int = 6848, moe_intermediate_size: int = 896,
                         num_hidden_layers: int = 12, num_attention_heads: int = 10,
                         n_routed_experts: int = 64, num_experts_per_tok: int = 6,
                         n_shared_experts: int = 2, first_k_dense_replace: int = 1,
                         sam_width: int = 768, sam_layers: int = 12, sam_heads: int = 12,
                         sam_global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11),
                         sam_downsample_channels: tuple[int, int] = (512, 1024),
                         clip_layers: int = 24, clip_heads: int = 16,
                         torch_dtype: str = "bfloat16") -> dict[str, Any]:
    """A config.json dict in the official format; defaults give the real model.

    CLIP width is tied to ``sam_downsample_channels[1]`` and the projector to the LM width,
    as the architecture requires.
    """
    lm = {
        "bos_token_id": 0, "eos_token_id": 1, "first_k_dense_replace": first_k_dense_replace,
        "hidden_size": hidden_size, "intermediate_size": intermediate_size, "kv_lora_rank": None,
        "lm_head": True, "max_position_embeddings": 8192, "moe_intermediate_size": moe_intermediate_size,
        "n_group": 1, "n_routed_experts": n_routed_experts, "n_shared_experts": n_shared_experts,
        "num_attention_heads": num_attention_heads, "num_experts_per_tok": num_experts_per_tok,
        "num_hidden_layers": num_hidden_layers, "num_key_value_heads": num_attention_heads,
        "q_lora_rank": None, "qk_nope_head_dim": 0, "qk_rope_head_dim": 0, "rm_head": False,
        "topk_group": 1, "topk_method": "greedy", "torch_dtype": torch_dtype, "use_mla": False,
        "v_head_dim": 0, "vocab_size": vocab_size,
    }
    clip_width = sam_downsample_channels[1]
    return {
        "candidate_resolutions": [[1024, 1024]],
        "global_view_pos": "head",
        "architectures": ["DeepseekOCRForCausalLM"],
        "language_config": {"architectures": ["DeepseekV2ForCausalLM"], **lm},
        "model_type": "deepseek_vl_v2",
        "projector_config": {"input_dim": clip_width + sam_downsample_channels[1],
                             "model_type": "mlp_projector", "n_embed": hidden_size,
                             "projector_type": "linear"},
        "tile_tag": "2D",
        "torch_dtype": torch_dtype,
        "vision_config": {
            "image_size": 1024, "mlp_ratio": 3.7362, "model_name": "deeplip_b_l", "model_type": "vision",
            "width": {
                CLIP_KEY: {"heads": clip_heads, "image_size": 224, "layers": clip_layers,
                           "patch_size": 14, "width": clip_width},
                SAM_KEY: {"downsample_channels": list(sam_downsample_channels),
                          "global_attn_indexes": list(sam_global_attn_indexes),
                          "heads": sam_heads, "layers": sam_layers, "width": sam_width},
            },
        },
        **{k: v for k, v in lm.items() if k != "torch_dtype"},
    }

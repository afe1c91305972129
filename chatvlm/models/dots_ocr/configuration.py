"""dots.ocr configuration, read from the official ``config.json`` (``model_type: dots_ocr``).

The official file is a Qwen2 LM config with extra keys (``image_token_id``,
``video_token_id``) and a nested ``vision_config``. We keep the LM half as a real
transformers ``Qwen2Config`` (so ``Qwen2ForCausalLM`` can be built from it unchanged) and
parse the vision half into a small dataclass of our own.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import Qwen2Config

MODEL_TYPE = "dots_ocr"

# Official token ids (tokenizer_config.json of rednote-hilab/dots.ocr); the checkpoint's
# config.json repeats image/video ids, the rest are only needed for prompt building.
IMAGE_TOKEN_ID = 151665  # <|imgpad|>
VIDEO_TOKEN_ID = 151656  # <|video_pad|>
EOS_TOKEN_IDS = (151643, 151673)  # <|endoftext|>, <|endofassistant|> (generation_config.json)


@dataclass
class DotsVisionConfig:
    """The ``vision_config`` block. Defaults are the official full-size values."""

    embed_dim: int = 1536
    hidden_size: int = 1536  # merger output width == LM hidden size
    intermediate_size: int = 4224
    num_hidden_layers: int = 42
    num_attention_heads: int = 12
    num_channels: int = 3
    patch_size: int = 14
    post_norm: bool = True
    rms_norm_eps: float = 1e-5
    spatial_merge_size: int = 2
    temporal_patch_size: int = 1
    use_bias: bool = False
    # Upstream picks its attention class from this field; we always run our own
    # per-image SDPA / flash-attn varlen path, so it is kept only for round-tripping.
    attn_implementation: str = "flash_attention_2"
    init_merger_std: float = 0.02
    initializer_range: float = 0.02
    is_causal: bool = False

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DotsVisionConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_attention_heads


def load_config_dict(path_or_dict: str | Path | dict) -> dict[str, Any]:
    """A config dict from a checkpoint folder, a config.json path or a dict (copied)."""
    if isinstance(path_or_dict, dict):
        return json.loads(json.dumps(path_or_dict))
    p = Path(path_or_dict)
    if p.is_dir():
        p = p / "config.json"
    return json.loads(p.read_text())


def make_config(path_or_dict: str | Path | dict) -> Qwen2Config:
    """Build the model config: a ``Qwen2Config`` for the LM, with ``vision_config`` (a plain
    dict, so transformers can still serialise the config; parse it with
    ``DotsVisionConfig.from_dict``), ``image_token_id`` and ``video_token_id`` attached."""
    d = load_config_dict(path_or_dict)
    if d.get("model_type", MODEL_TYPE) != MODEL_TYPE:
        raise ValueError(f"not a dots.ocr config: model_type={d.get('model_type')!r}")
    vision = DotsVisionConfig.from_dict(d.pop("vision_config", {}))
    # Keys that describe the remote code, not the model; transformers would carry them
    # around and possibly act on them (auto_map), so drop them here.
    for key in ("auto_map", "architectures", "model_type", "transformers_version"):
        d.pop(key, None)
    # Older configs say torch_dtype, newer transformers says dtype; we pick the dtype at
    # load time anyway, so the stored one is informational only.
    stored_dtype = d.pop("torch_dtype", None) or d.pop("dtype", None)
    cfg = Qwen2Config(**d)
    cfg.vision_config = vision.to_dict()
    cfg.image_token_id = int(d.get("image_token_id", IMAGE_TOKEN_ID))
    cfg.video_token_id = int(d.get("video_token_id", VIDEO_TOKEN_ID))
    cfg.checkpoint_dtype = stored_dtype
    if vision.hidden_size != cfg.hidden_size:
        raise ValueError(
            f"vision_config.hidden_size ({vision.hidden_size}) must equal the LM hidden_size "
            f"({cfg.hidden_size}): the merger writes straight into the LM embedding space"
        )
    return cfg

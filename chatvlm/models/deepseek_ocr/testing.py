"""Test helpers: a tiny tokenizer with the official special tokens, and random checkpoints
in the official on-disk format (config.json + model.safetensors with official names)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from .configuration import official_config_dict
from .loading import build_from_config
from .processing import OFFICIAL_TOKEN_IDS, REAL_VOCAB_SIZE

BOS, EOS, PAD = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>"
_LETTERS = "etaoinsrhldcumfpgwybvkxjqz"


def tiny_token_id(token: str, vocab_size: int) -> int:
    """Where an official special token lives in a tiny vocabulary (real id % vocab size, the
    convention of the reference fixture; bos/eos/pad keep 0/1/2)."""
    real = OFFICIAL_TOKEN_IDS[token]
    return real % vocab_size if vocab_size < REAL_VOCAB_SIZE else real


def build_tiny_tokenizer(folder: str | Path, vocab_size: int = 1024):
    """Write (and return) a byte-level BPE ``PreTrainedTokenizerFast`` whose ids all fit in
    `vocab_size`, with the official special tokens (bos/eos/pad, ``<image>``, grounding,
    ref/det, table tags, User/Assistant) at their tiny-vocabulary ids."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = {tok: tiny_token_id(tok, vocab_size) for tok in OFFICIAL_TOKEN_IDS}
    if len(set(specials.values())) != len(specials):
        raise ValueError(f"vocab_size {vocab_size} makes special-token ids collide")
    taken = set(specials.values())
    free = (i for i in range(vocab_size) if i not in taken)
    vocab = dict(specials)
    # sorted: alphabet() comes in a different order in every process (a hash set), which gave
    # the byte symbols different ids, and so different prompts and outputs, run to run.
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = next(free)
    merges: list[tuple[str, str]] = []
    # Fill the rest with merges ("Ġ" = a leading space in byte-level BPE) so every id decodes.
    pairs = [("Ġ", c) for c in _LETTERS + _LETTERS.upper()] + [(a, b) for a in _LETTERS for b in _LETTERS]
    for left, right in pairs:
        token_id = next(free, None)
        if token_id is None:
            break
        vocab[left + right] = token_id
        merges.append((left, right))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B",
                                                       special_tokens=[(BOS, specials[BOS])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   padding_side="left")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(folder))
    return fast


def write_random_checkpoint(folder: str | Path, *, seed: int = 0, dtype: torch.dtype = torch.float32,
                            with_tokenizer: bool = True, **sizes: Any) -> dict[str, Any]:
    """Write a random-weight checkpoint in the official format; returns its config dict.

    `sizes` go to :func:`official_config_dict` (hidden_size, num_hidden_layers,
    n_routed_experts, sam_width, sam_global_attn_indexes, ...). Defaults are small.
    """
    small = dict(vocab_size=1024, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
                 num_hidden_layers=2, num_attention_heads=4, n_routed_experts=8, num_experts_per_tok=3,
                 n_shared_experts=2, sam_width=32, sam_layers=6, sam_heads=2, sam_global_attn_indexes=(2, 5),
                 sam_downsample_channels=(32, 64), clip_layers=2, clip_heads=4)
    small.update(sizes)
    config = official_config_dict(torch_dtype=str(dtype).removeprefix("torch."), **small)
    model = build_from_config(config, dtype=dtype, device="cpu", seed=seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (folder / "processor_config.json").write_text(json.dumps({
        "add_special_token": False, "candidate_resolutions": [[1024, 1024]], "downsample_ratio": 4,
        "ignore_id": -100, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
        "image_token": "<image>", "mask_prompt": False, "normalize": True, "pad_token": PAD,
        "patch_size": 16, "processor_class": "DeepseekVLV2Processor", "sft_format": "deepseek"}, indent=2),
        encoding="utf-8")
    if with_tokenizer:
        build_tiny_tokenizer(folder, vocab_size=small["vocab_size"])
    return config

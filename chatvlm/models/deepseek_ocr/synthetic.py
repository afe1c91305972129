"""The files of a DeepSeek-OCR checkpoint folder that chatvlm writes itself when the hub's are
not here: the processor settings and a tokenizer with the official special tokens.

`bench --synthetic` (chatvlm.synthetic) writes them beside the full-size config to build the
real architecture with random weights; the test checkpoints (testing.py) write them at small
sizes.
"""

from __future__ import annotations

from pathlib import Path

from ...model_constants import DEEPSEEK_BOS as BOS, DEEPSEEK_EOS as EOS, DEEPSEEK_PAD as PAD, HALF_MEAN, HALF_STD
from .processing import IMAGE_TOKEN, OFFICIAL_TOKEN_IDS, REAL_VOCAB_SIZE

_LETTERS = "etaoinsrhldcumfpgwybvkxjqz"

# processor_config.json as the checkpoint ships it (16-px patches, 4x downsampling, mean/std 0.5).
PROCESSOR_CONFIG = {
    "add_special_token": False, "candidate_resolutions": [[1024, 1024]], "downsample_ratio": 4,
    "ignore_id": -100, "image_mean": list(HALF_MEAN), "image_std": list(HALF_STD),
    "image_token": IMAGE_TOKEN, "mask_prompt": False, "normalize": True, "pad_token": PAD,
    "patch_size": 16, "processor_class": "DeepseekVLV2Processor", "sft_format": "deepseek",
}


def special_token_id(token: str, vocab_size: int) -> int:
    """Where an official special token lives in a vocabulary of `vocab_size`: its real id at
    full size; in a smaller (test) vocabulary real id % vocab size, the convention of the
    reference fixture (bos/eos/pad keep 0/1/2)."""
    real = OFFICIAL_TOKEN_IDS[token]
    return real % vocab_size if vocab_size < REAL_VOCAB_SIZE else real


def build_byte_tokenizer(folder: str | Path, vocab_size: int = 1024):
    """Write (and return) a byte-level BPE ``PreTrainedTokenizerFast`` whose ids all fit in
    `vocab_size`, with the official special tokens (bos/eos/pad, ``<image>``, grounding,
    ref/det, table tags, User/Assistant) at `special_token_id`'s ids (the official ones at full size)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = {tok: special_token_id(tok, vocab_size) for tok in OFFICIAL_TOKEN_IDS}
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

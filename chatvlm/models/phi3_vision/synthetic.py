"""A Phi-3.5-vision tokenizer chatvlm writes itself when the hub's is not here.

`bench --synthetic` (chatvlm.synthetic) writes it beside the full-size config (at vocab
32064 the special ids are the official ones); the test checkpoints use it at small sizes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .modeling import ADDED_TOKENS

# The 64 added tokens sit at the end of the vocab, as in the official tokenizer
# (offset from vocab_size - 64; at full size 32000 + offset). Unnamed slots are placeholders.
SPECIAL_OFFSETS = {
    "<|endoftext|>": 0,
    "<|assistant|>": 1,
    "<|system|>": 6,
    "<|end|>": 7,
    "<|user|>": 10,
    "<|image|>": 44,
}
# `<|assistant|>` swallows the newline after it (rstrip), so a prompt ends on that token.
RSTRIP_TOKENS = {"<|assistant|>"}
BASE_TOKENS = ["<unk>", "<s>", "</s>"]  # ids 0, 1, 2 as in the Llama vocab
BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]  # ids 3..258 as in the Llama vocab ("\n" = 13)
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


def special_token_ids(vocab_size: int) -> dict[str, int]:
    base = vocab_size - ADDED_TOKENS
    return {tok: base + off for tok, off in SPECIAL_OFFSETS.items()}


def build_byte_tokenizer(folder: str | Path, vocab_size: int = 32064) -> Any:
    """Write a small byte-level tokenizer with the official special tokens to `folder`.

    Text is encoded byte by byte (Llama's `<0xNN>` byte tokens, so "\\n" is 13 as upstream);
    each call adds BOS `<s>` (1) like the Llama tokenizer; `<|endoftext|>` is eos and pad;
    padding is on the left. With vocab_size 32064 the special ids equal the official ones.
    Returns the loaded tokenizer.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

    n_fixed = len(BASE_TOKENS) + len(BYTE_TOKENS)
    if vocab_size < n_fixed + ADDED_TOKENS:
        raise ValueError(f"vocab_size must be at least {n_fixed + ADDED_TOKENS}")
    specials = special_token_ids(vocab_size)
    names = {i: tok for tok, i in specials.items()}
    base = vocab_size - ADDED_TOKENS
    vocab: dict[str, int] = {}
    for i, tok in enumerate(BASE_TOKENS + BYTE_TOKENS):
        vocab[tok] = i
    for i in range(n_fixed, base):
        vocab[f"t{i}"] = i  # filler pieces so every id the model may emit decodes to something
    for i in range(base, vocab_size):
        vocab[names.get(i, f"<|placeholder{i - base}|>")] = i

    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    added = [AddedToken(t, special=True, normalized=False, rstrip=t in RSTRIP_TOKENS) for t in BASE_TOKENS]
    added += [
        AddedToken(names.get(i, f"<|placeholder{i - base}|>"), special=True, normalized=False, rstrip=names.get(i) in RSTRIP_TOKENS)
        for i in range(base, vocab_size)
    ]
    tok.add_special_tokens(added)

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="<|endoftext|>",
        unk_token="<unk>",
        pad_token="<|endoftext|>",
        padding_side="left",
        chat_template=CHAT_TEMPLATE,
    )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(folder))
    return PreTrainedTokenizerFast.from_pretrained(str(folder), padding_side="left")

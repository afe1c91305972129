"""A tokenizer for checkpoints whose real tokenizer is not here, with the models' special tokens.

`bench --synthetic` (chatvlm.synthetic) builds the real architectures with random weights
and cannot download the real tokenizers; the tiny test checkpoints (chatvlm.testing) need
one too. Both use the tokenizers at the end (`qwen_vl_tokenizer`, `got_ocr_tokenizer`,
`deepseek_tokenizer`), built by `byte_level_tokenizer`: the 256 byte symbols plus a model's
special tokens, so any text round-trips and special tokens keep ids of their own. The
special tokens and chat templates are the transformers-native models' own (Qwen2-VL,
Qwen3-VL, GOT-OCR2 here; DeepSeek-OCR-2's, shared with the DeepSeek-OCR port, in
chatvlm.model_constants); the ported models keep theirs beside their port
(chatvlm/models/*/synthetic.py).
"""

from __future__ import annotations

from typing import Optional

from .model_constants import DEEPSEEK_BOS, DEEPSEEK_EOS, DEEPSEEK_PAD, DEEPSEEK_SPECIALS

# Qwen2-VL's chat template as shipped with the checkpoint (default system turn).
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen3-VL's template reduced to what OCR and chat use: no default system turn.
QWEN3_VL_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}"
    "{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

QWEN_SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>",
    "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]
GOT_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<imgpad>"]


def byte_level_tokenizer(head: list[str], tail: list[str], *, bos: Optional[str] = None,
                         eos: Optional[str] = None, pad: Optional[str] = None,
                         add_bos: bool = False, extra_special: Optional[dict] = None):
    """A byte-level BPE tokenizer: `head` specials, the 256 byte symbols, then `tail` specials.

    Any text round-trips through it (one token per byte), so decoded outputs are real
    strings; special tokens keep their own ids and survive `skip_special_tokens=False`.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab: dict[str, int] = {}
    for token in head:
        vocab[token] = len(vocab)
    for symbol in sorted(alphabet):
        vocab[symbol] = len(vocab)
    for token in tail:
        vocab[token] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in head + tail])
    if add_bos and bos is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, vocab[bos])])
    kwargs = dict(extra_special or {})
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad, **kwargs)


def qwen_vl_tokenizer():
    """Qwen2-VL's and Qwen3-VL's tokenizer (the same specials) and its special-token ids by name."""
    tokenizer = byte_level_tokenizer([], QWEN_SPECIALS, eos="<|im_end|>", pad="<|endoftext|>")
    return tokenizer, {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}


def got_ocr_tokenizer():
    """GOT-OCR2's specials; <|endoftext|> ends and pads."""
    return byte_level_tokenizer([], GOT_SPECIALS, eos="<|endoftext|>", pad="<|endoftext|>")


def deepseek_tokenizer():
    """DeepSeek-OCR-2's specials, BOS/EOS/pad at ids 0, 1, 2 as in the real vocab; BOS leads every text."""
    return byte_level_tokenizer([DEEPSEEK_BOS, DEEPSEEK_EOS, DEEPSEEK_PAD], list(DEEPSEEK_SPECIALS), bos=DEEPSEEK_BOS,
                                eos=DEEPSEEK_EOS, pad=DEEPSEEK_PAD, add_bos=True)

"""Qwen3-VL-2B-Instruct through transformers' native Qwen3VLForConditionalGeneration.

Same mechanics as Qwen2-VL (chat template, left padding, explicit pixel budget, stop on
<|im_end|> / <|endoftext|>); 32-px merged patches, no default system turn, and the
official "qwenvl markdown" document-parsing prompt for markdown.
"""

from __future__ import annotations

from .qwen2_vl import Qwen2VLBackend


class Qwen3VLBackend(Qwen2VLBackend):
    auto_class = "Qwen3VLForConditionalGeneration"

"""dots.ocr (rednote-hilab/dots.ocr) as our own port: vision tower + transformers Qwen2 LM.

    model = from_pretrained(folder, device="cuda")          # bf16 on CUDA, fp32 on CPU by default
    proc = processor_from_pretrained(folder)               # folder's preprocessor_config + tokenizer
    batch = proc.build_batch(pages, "prompt_layout_all_en")  # framed, left-padded, one image per row
    ids = model.generate(**{k: v.to("cuda") for k, v in batch.items()}, max_new_tokens=..., do_sample=False)
    new = ids[:, batch["input_ids"].shape[1]:]              # generate returns prompt + new ids

Boxes in the model's output live in ``proc.resized_size(page_w, page_h)`` pixels.
"""

from ..checkpoint import CheckpointMismatchError, check_keys, read_checkpoint
from .configuration import EOS_TOKEN_IDS, IMAGE_TOKEN_ID, DotsVisionConfig, make_config
from .modeling import DotsOCRForCausalLM, build_from_config, from_pretrained
from .processing import PROMPTS, DotsOCRProcessor, processor_from_pretrained, smart_resize

__all__ = [
    "CheckpointMismatchError",
    "DotsOCRForCausalLM",
    "DotsOCRProcessor",
    "DotsVisionConfig",
    "EOS_TOKEN_IDS",
    "IMAGE_TOKEN_ID",
    "PROMPTS",
    "build_from_config",
    "check_keys",
    "from_pretrained",
    "make_config",
    "processor_from_pretrained",
    "read_checkpoint",
    "smart_resize",
]

"""dots.ocr (rednote-hilab/dots.ocr) as our own port: vision tower + transformers Qwen2 LM.

    model = from_pretrained(folder, dtype=torch.float32, device="cpu")
    proc = processor_from_pretrained(folder)
    batch = proc(images=[img], text=[proc.render_prompt(PROMPTS["prompt_ocr"])])
    ids = model.generate(**batch, max_new_tokens=..., do_sample=False)
"""

from .configuration import EOS_TOKEN_IDS, IMAGE_TOKEN_ID, DotsVisionConfig, make_config
from .modeling import DotsOCRForCausalLM, build_from_config, check_keys, from_pretrained, read_checkpoint
from .processing import PROMPTS, DotsOCRProcessor, processor_from_pretrained, smart_resize

__all__ = [
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

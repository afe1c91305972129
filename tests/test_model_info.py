"""`chatvlm models`: what each model reads of an A4 page, checked against the processors
that do the resizing and tiling."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from chatvlm.model_info import A4_PAGE, FIXED_VIEWS, a4_reading, smart_resize
from chatvlm.registry import get_spec

W, H = A4_PAGE


def test_pixel_budgets_follow_the_processors_resize_rule():
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize as hf_smart_resize

    from chatvlm.models.dots_ocr.processing import smart_resize as dots_smart_resize

    for name, patch in (("qwen_vl_2b", 28), ("qwen3_vl_2b", 32)):
        spec = get_spec(name)
        h, w = hf_smart_resize(H, W, patch, spec.min_pixels, spec.max_pixels)
        assert a4_reading(spec)["size"] == (w, h) and a4_reading(spec)["tokens"] == w * h // patch ** 2
    assert smart_resize(H, W, 28, 3136, 11_289_600) == dots_smart_resize(H, W)
    # The defaults the README and `chatvlm models` state: ~2,000 tokens, ~130 / ~145 DPI.
    q2, q3, dots = (a4_reading(get_spec(n)) for n in ("qwen_vl_2b", "qwen3_vl_2b", "dots_ocr"))
    assert (q2["tokens"], q2["dpi"]) == (2014, 127) and (q3["tokens"], q3["dpi"]) == (2014, 145)
    assert dots["dpi"] == 200 and dots["tokens"] == 4956
    raised = a4_reading(get_spec("qwen_vl_2b"), max_pixels=4_000_000)     # --max-pixels 4000000
    assert raised["dpi"] >= 195 and raised["tokens"] > 4000


def test_fixed_views_match_the_ports_and_processors():
    from chatvlm.models.deepseek_ocr.processing import DeepseekOCRProcessor, choose_grid
    from chatvlm.models.phi3_vision.image_embedding import num_image_tokens
    from chatvlm.models.phi3_vision.processing import hd_grid

    new_w, new_h, pad_w, pad_h = hd_grid(W, H, get_spec("phi3_vision").extra["num_crops"])
    assert FIXED_VIEWS["phi3_vision"] == ((new_w, new_h), num_image_tokens(pad_h // 336, pad_w // 336))
    gw, gh = choose_grid(W, H)
    assert FIXED_VIEWS["deepseek_ocr"] == ((640 * gw, 640 * gh),
                                           DeepseekOCRProcessor(vocab_size=200_000).num_image_tokens(W, H))
    from transformers import DeepseekOcr2ImageProcessor

    views = DeepseekOcr2ImageProcessor().get_number_of_image_patches(H, W, {})
    assert FIXED_VIEWS["deepseek_ocr2"][1] == 256 + 1 + 144 * (views - 1)
    got = get_spec("got_ocr_hf")
    assert max(W, H) / min(W, H) < got.extra["crop_min_aspect"]            # one view, not tiled
    assert FIXED_VIEWS["got_ocr_hf"] == ((1024, 1024), 256)
    assert a4_reading(get_spec("tesseract")) is None


@pytest.mark.parametrize("lang", ["en", "ru"])
def test_models_command_shows_the_page_budgets(lang):
    from chatvlm.cli import app

    result = CliRunner().invoke(app, ["--ui-lang", lang, "models"])
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "1064 x 1484" in out and "2,014" in out and "--max-pixels" in out
    assert ("A4" in out) and ("4000000" in out)

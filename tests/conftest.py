"""Shared test helpers: where ../shared is, and pages rendered from known text."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CORPUS = SHARED / "corpus"
FIXTURES = SHARED / "fixtures"
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"


def need_corpus() -> Path:
    if not (CORPUS / "MANIFEST.md").exists():
        pytest.skip(f"../shared/corpus is absent (looked in {CORPUS}); CI provides it beside the clone")
    return CORPUS


def text_page(text: str, size=(600, 300), font_size: int = 28):
    """A white page with `text` in black, drawn with a system font."""
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    try:
        font = ImageFont.truetype(FONT, font_size)
    except OSError:
        pytest.skip(f"system font {FONT} missing (apt-get install fonts-dejavu-core)")
    y = 20
    for line in text.splitlines():
        draw.text((20, y), line, font=font, fill="black")
        y += int(font_size * 1.5)
    return img


@pytest.fixture
def corpus() -> Path:
    return need_corpus()

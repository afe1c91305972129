"""Shared by the API, ask and i18n tests: pages rendered from known text, tiny chat checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFont

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"

ENGLISH = ["Invoice 2024-117", "Total due 1250 EUR", "Thank you for your order"]
RUSSIAN = ["Счёт номер 42", "Итого к оплате 980 рублей", "Спасибо за покупку"]


def render_page(lines: list[str], size: int = 34, width: int = 900) -> Image.Image:
    """A clean page with `lines` of text in DejaVu Sans: the ground truth is known."""
    font = ImageFont.truetype(FONT, size)
    height = 60 + len(lines) * int(size * 1.8)
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(lines):
        draw.text((40, 30 + i * int(size * 1.8)), line, font=font, fill="black")
    return image


def cer(reference: str, hypothesis: str) -> float:
    """Character error rate, whitespace-normalised."""
    ref, hyp = " ".join(reference.split()), " ".join(hypothesis.split())
    previous = list(range(len(hyp) + 1))
    for i, a in enumerate(ref, 1):
        current = [i]
        for j, b in enumerate(hyp, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a != b)))
        previous = current
    return previous[-1] / max(1, len(ref))


_BUILT: dict[str, Path] = {}


def tiny_checkpoint(name: str, folder: Path) -> Path:
    """A tiny random-weight checkpoint of `name`, built once per test process (the API and
    ask tests share it). A name without a builder is an error, not a skip."""
    from chatvlm import testing

    if name not in _BUILT:
        _BUILT[name] = testing.build_tiny_checkpoint(name, folder)
    return _BUILT[name]


@pytest.fixture(autouse=True)
def english_interface():
    """Start (and end) each test with the English interface, whatever the machine's locale.
    Test modules opt in with `from tests.api_helpers import english_interface`."""
    from chatvlm.i18n import set_language

    set_language("en")
    yield
    set_language("en")

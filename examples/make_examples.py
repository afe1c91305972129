"""Build the example pages from known text, so the demo's output can be checked by eye.

Run from the repository root: python examples/make_examples.py
Writes, next to this script:
  english_letter.png        a clean English page
  russian_poem.png          a clean Russian page
  noisy_scan.jpg            the English text as a skewed, noisy, grey "scan"
  two_pages.pdf             a two-page PDF (English page 1, Russian page 2)
  *.txt                     the text each page holds (two_pages.txt: both pages)
Everything is deterministic (fixed seed, the DejaVu font shipped with Debian).
"""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter, ImageFont

HERE = Path(__file__).resolve().parent
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
FONT_BOLD = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"

ENGLISH = """Batch OCR with chatvlm

chatvlm reads folders of scans and PDFs
and writes one text file per page.
Every page is listed in a manifest,
so an interrupted run can resume
exactly where it stopped.

Invoice 2024-117: total due 1,250.00 EUR"""

RUSSIAN = """Пакетное распознавание текста

Программа читает папки со сканами
и сохраняет текст каждой страницы.
Прерванный запуск продолжается
с того места, где он остановился.

Счёт № 117: к оплате 1 250,00 руб."""


def render_page(text: str, width: int = 1240, height: int = 1754, size: int = 38) -> Image.Image:
    """An A4-shaped page at 150 DPI; the first line is a bold title."""
    page = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(page)
    body = ImageFont.truetype(FONT, size)
    title = ImageFont.truetype(FONT_BOLD, int(size * 1.4))
    y = 140
    for i, line in enumerate(text.splitlines()):
        font = title if i == 0 else body
        if line:
            draw.text((120, y), line, font=font, fill="black")
        y += int((size * 1.4 if i == 0 else size) * 1.6)
    return page


def scanify(page: Image.Image, seed: int = 7) -> Image.Image:
    """Grey paper, a slight skew, blur and salt-and-pepper noise, like a cheap scan."""
    rng = random.Random(seed)
    grey = page.convert("L").rotate(1.2, resample=Image.BICUBIC, expand=False, fillcolor=255)
    grey = grey.filter(ImageFilter.GaussianBlur(0.8))
    pixels = grey.load()
    w, h = grey.size
    for _ in range(w * h // 60):
        x, y = rng.randrange(w), rng.randrange(h)
        pixels[x, y] = rng.choice((0, 60, 200, 235))
    return grey.point(lambda v: int(v * 0.85 + 25))


def main() -> None:
    english = render_page(ENGLISH)
    russian = render_page(RUSSIAN)
    english.save(HERE / "english_letter.png", optimize=True)
    (HERE / "english_letter.txt").write_text(ENGLISH + "\n", encoding="utf-8")
    russian.save(HERE / "russian_poem.png", optimize=True)
    (HERE / "russian_poem.txt").write_text(RUSSIAN + "\n", encoding="utf-8")
    scanify(english).save(HERE / "noisy_scan.jpg", quality=70)
    (HERE / "noisy_scan.txt").write_text(ENGLISH + "\n", encoding="utf-8")
    english.convert("L").save(HERE / "two_pages.pdf", save_all=True, append_images=[russian.convert("L")], resolution=150)
    (HERE / "two_pages.txt").write_text(ENGLISH + "\n\f" + RUSSIAN + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

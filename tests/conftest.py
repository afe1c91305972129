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


@pytest.fixture
def fake_backend():
    """The fake backend (tests/fake_backend.py) in the real registry for one test; its name.
    Removed afterwards, so no other test sees a model it did not ask for."""
    from tests.fake_backend import registered

    with registered() as name:
        yield name


def noise_page(width: int, height: int, seed: int):
    """A page of random pixels: random-weight models only need pixels of a known size."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def noise_page_records(sizes, seed: int):
    """Page records p0.png, p1.png, ... of random pixels of the given (width, height) sizes,
    drawn from one generator seeded with `seed` (different sizes: different image-token counts)."""
    import numpy as np
    from PIL import Image

    from chatvlm.records import Page

    rng = np.random.default_rng(seed)
    return [Page(source=Path(f"p{i}.png"), doc_key="d", page=1, index=i,
                 image=Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)))
            for i, (w, h) in enumerate(sizes)]


def write_noise_pages(folder: Path, sizes) -> list[Path]:
    """scan1.png, scan2.png, ... of the given (width, height) sizes, seeds 0, 1, ..."""
    paths = []
    for i, size in enumerate(sizes):
        path = folder / f"scan{i + 1}.png"
        noise_page(*size, seed=i).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny matrices: thread hand-offs cost more than the maths on a busy 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

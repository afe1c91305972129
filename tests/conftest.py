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


# --------------------------------------------------------------------------- markers

ALL = "every test in the module"
# The slowest tests: over ~5 s each on a busy 2-core machine, 1.5 s or more on an idle one
# (`pytest --durations=30`), by module and test function (all its parameter sets).
# `pytest -m "not slow"` leaves them out for a quick run (about half the time);
# tests/test_markers.py keeps every name here pointing at a test that exists.
SLOW: dict[str, object] = {
    "test_gpucheck.py": {"test_smoke_run_of_the_script_on_cpu"},
    "test_distributed.py": ALL,   # each test starts or uses a local Ray cluster
    "test_interrupt.py": {"test_workers_die_with_a_killed_parent", "test_a_signal_stops_the_run_cleanly"},
    "test_tesseract_corpus.py": {"test_clean_pages_under_measured_cer"},
    "test_webui.py": {"test_running_page_in_headless_chromium"},
    "test_hf_core.py": {"test_cli_missing_weights_exits_3_without_a_stack_trace"},
    "test_deepseek_ocr_port.py": {"test_random_checkpoint_of_other_sizes_round_trips_and_runs"},
    "test_decode.py": {"test_one_decoder_many_batches_of_every_size"},
    "test_decode_moe.py": {"test_deepseek_ocr_backend_uses_the_static_decoder"},
    "test_engine_continuous.py": {"test_pipeline_hands_a_whole_window_to_the_continuous_decoder"},
    "test_bench.py": {"test_tiny_checkpoint_and_broken_checkpoint_rows", "test_bench_cli_max_pages_repeats_and_table"},
    "test_oom_recovery.py": {"test_auto_batch_size_comes_from_a_measured_probe"},
}
# Modules that run only on a CUDA GPU (they skip elsewhere).
GPU: set[str] = {"test_decode_cuda.py"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        module, name = item.path.name, getattr(item, "originalname", None) or item.name
        slow = SLOW.get(module)
        if slow is ALL or (slow and name in slow):
            item.add_marker(pytest.mark.slow)
        if module in GPU:
            item.add_marker(pytest.mark.gpu)


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


def tiny_backends(tmp_path_factory, eos_boost=None):
    """`get(name)`: a loaded backend on a tiny random-weight checkpoint of model `name`
    (CPU), built once per module; `eos_boost` maps a name to a push towards EOS, so pages
    stop at different points within the budget."""
    from chatvlm.config import BackendOptions
    from chatvlm.registry import get_spec
    from chatvlm.testing import build_tiny_checkpoint

    cache = {}

    def get(name):
        if name not in cache:
            kwargs = {"eos_boost": eos_boost[name]} if eos_boost else {}
            folder = build_tiny_checkpoint(name, tmp_path_factory.mktemp(name), **kwargs)
            spec = get_spec(name)
            be = spec.backend_class()(spec, BackendOptions(model_path=folder, device="cpu", extra={}))
            be.load()
            cache[name] = be
        return cache[name]

    return get

"""The slow/gpu lists in conftest.py name tests that exist (a renamed test would silently
drop out of the quick run's exclusions otherwise)."""

import re

from tests.conftest import ALL, GPU, ROOT, SLOW


def test_every_slow_or_gpu_entry_names_an_existing_test():
    for module, names in SLOW.items():
        source = (ROOT / "tests" / module).read_text(encoding="utf-8")
        if names is ALL:
            assert re.search(r"^def test_", source, re.M), module
            continue
        for name in names:
            assert re.search(rf"^(async )?def {name}\(", source, re.M), f"{module}: no test {name}"
    for module in GPU:
        assert (ROOT / "tests" / module).is_file(), module


def test_slow_and_gpu_are_registered_markers(pytestconfig):
    """pyproject registers them (`--strict-markers` refuses unregistered ones)."""
    registered = " ".join(pytestconfig.getini("markers"))
    assert "slow:" in registered and "gpu:" in registered

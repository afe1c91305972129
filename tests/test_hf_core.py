"""Shared transformers mechanics: weights resolution and its errors, device/dtype/attention choice, collation."""

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from chatvlm import devices, weights
from chatvlm.backends import hf
from chatvlm.config import BackendOptions
from chatvlm.errors import ChatVLMError, ModelUnavailableError
from chatvlm.registry import get_spec
from tests.conftest import ROOT, text_page


# ----------------------------------------------------------------- weights

def test_model_path_errors_are_one_clear_message(tmp_path):
    spec = get_spec("qwen_vl_2b")
    with pytest.raises(ModelUnavailableError, match="does not exist"):
        weights.resolve_weights(spec, BackendOptions(model_path=tmp_path / "nope"))
    with pytest.raises(ModelUnavailableError, match="no config.json.*Qwen/Qwen2-VL-2B-Instruct"):
        weights.resolve_weights(spec, BackendOptions(model_path=tmp_path))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelUnavailableError, match="no weight files"):
        weights.resolve_weights(spec, BackendOptions(model_path=tmp_path))
    (tmp_path / "model.safetensors").write_bytes(b"x" * 10)
    assert weights.resolve_weights(spec, BackendOptions(model_path=tmp_path)) == tmp_path


def _fake_cache(root: Path, repo: str, files: dict[str, bytes], revision="main",
                commit="0123456789abcdef0123456789abcdef01234567") -> Path:
    folder = root / "hub" / ("models--" + repo.replace("/", "--"))
    snap = folder / "snapshots" / commit
    snap.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / revision).write_text(commit)
    for name, data in files.items():
        (snap / name).write_bytes(data)
    return snap


def test_weights_in_the_hf_cache_are_found_with_their_size(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    spec = get_spec("got_ocr_hf")
    assert weights.weights_available(spec) is None
    with pytest.raises(ModelUnavailableError) as err:
        weights.resolve_weights(spec, BackendOptions())
    message = str(err.value)
    for needle in ("got_ocr_hf", "stepfun-ai/GOT-OCR-2.0-hf", f"@ {spec.revision}", "--model-path",
                   f"huggingface-cli download stepfun-ai/GOT-OCR-2.0-hf --revision {spec.revision}", "HF_HUB_OFFLINE"):
        assert needle in message
    snap = _fake_cache(tmp_path, spec.repo_id, {"config.json": b"{}", "model.safetensors": b"w" * 1000},
                       commit=spec.revision)
    found = weights.weights_available(spec)
    assert found and Path(found["path"]) == snap and found["bytes"] == 1002 and found["source"] == "hf-cache"
    assert weights.resolve_weights(spec, BackendOptions()) == snap


def test_the_revision_recorded_is_the_commit_of_the_snapshot_loaded(tmp_path, monkeypatch):
    """deepseek_ocr2 follows "main": report.json's engine facts name the commit the cache's
    main pointed at (the snapshot folder's name), not "main"."""
    from huggingface_hub import constants

    from chatvlm.backends.base import create_backend
    from chatvlm.testing import build_tiny_checkpoint

    commit = "fedcba9876543210fedcba9876543210fedcba98"
    spec = get_spec("deepseek_ocr2")
    assert spec.revision == "main"
    snap = _fake_cache(tmp_path, spec.repo_id, {}, commit=commit)
    build_tiny_checkpoint("deepseek_ocr2", snap)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert weights.snapshot_commit(snap) == commit and weights.revision_used(spec, snap) == commit
    assert weights.snapshot_commit(tmp_path) is None and weights.revision_used(spec, tmp_path) == "main"
    pinned = get_spec("qwen_vl_2b")
    assert weights.revision_used(pinned, None) == pinned.revision
    backend = create_backend(spec, BackendOptions(device="cpu"))
    backend.load()
    try:
        facts = backend.describe()
    finally:
        backend.close()
    assert Path(facts["checkpoint"]) == snap and facts["revision"] == commit


def test_incomplete_sharded_snapshot_is_not_available(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    spec = get_spec("qwen_vl_2b")
    index = b'{"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}'
    _fake_cache(tmp_path, spec.repo_id, {"config.json": b"{}", "model.safetensors.index.json": index,
                                         "model-00001-of-00002.safetensors": b"x"})
    assert weights.weights_available(spec) is None


@pytest.mark.parametrize("env,needle", [
    ({"HF_HUB_OFFLINE": "1"}, "HF_HUB_OFFLINE is set"),
    ({"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0"}, "could not be downloaded"),
])
def test_cli_missing_weights_exits_3_without_a_stack_trace(tmp_path, env, needle):
    text_page("hello").save(tmp_path / "p.png")
    full_env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": str(ROOT), "COLUMNS": "200", **env}
    proc = subprocess.run([sys.executable, "-m", "chatvlm", "ocr", str(tmp_path / "p.png"), "-o", str(tmp_path / "o"),
                           "--model", "deepseek_ocr2"], capture_output=True, text=True, env=full_env, timeout=120)
    output = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode == 3, output
    assert "Traceback" not in output
    for part in ("deepseek_ocr2", "deepseek-community/DeepSeek-OCR-2", "@ main", "--model-path",
                 "huggingface-cli download deepseek-community/DeepSeek-OCR-2", needle):
        assert part in output


# ----------------------------------------------------------------- device, dtype, attention

def test_attention_choice():
    all3 = ("flash_attention_2", "sdpa", "eager")
    gpu = {"name": "H100", "capability": 9.0}
    assert devices.choose_attention(all3, "cpu", "float32") == "sdpa"
    assert devices.choose_attention(("sdpa", "eager"), "cuda", "bfloat16", gpu=gpu) == "sdpa"
    assert devices.choose_attention(("eager",), "cuda", "bfloat16", gpu=gpu) == "eager"
    assert devices.choose_attention(all3, "cpu", "float32", requested="eager") == "eager"
    flash = devices.choose_attention(all3, "cuda", "bfloat16", gpu=gpu)
    assert flash == ("flash_attention_2" if devices.flash_attn_importable() else "sdpa")
    assert devices.choose_attention(all3, "cuda", "bfloat16", gpu={"name": "T4", "capability": 7.5}) == "sdpa"
    with pytest.raises(ChatVLMError, match="not supported by this model"):
        devices.choose_attention(("sdpa", "eager"), "cuda", "bfloat16", requested="flash_attention_2")
    assert devices.planned_attention(get_spec("got_ocr_hf")) in ("sdpa",)
    assert devices.planned_attention(get_spec("tesseract")) == "n/a"


def test_dtype_choice():
    import torch

    spec = get_spec("qwen_vl_2b")
    assert hf.choose_dtype(spec, BackendOptions(), "cpu") == torch.float32
    assert hf.choose_dtype(spec, BackendOptions(dtype="bfloat16"), "cpu") == torch.bfloat16
    assert hf.choose_dtype(replace(spec, dtype="float16"), BackendOptions(dtype="fp32"), "cuda") == torch.float32
    with pytest.raises(ChatVLMError, match="unknown dtype"):
        hf.choose_dtype(spec, BackendOptions(dtype="int3"), "cpu")
    assert hf.choose_device(BackendOptions(device="cpu")) == "cpu"


# ----------------------------------------------------------------- output helpers

def test_strip_code_fence():
    assert hf.strip_code_fence("```markdown\n# Title\ntext\n```") == "# Title\ntext"
    assert hf.strip_code_fence("no fence") == "no fence"


def test_every_hub_checkpoint_is_pinned_to_a_commit_but_the_one_readme_explains():
    """A moving `main` can change weights, config or processor under the same name; the one
    model without a known commit (deepseek_ocr2) is named in README's model section."""
    import re

    from chatvlm.registry import all_specs

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    following_main = sorted(s.name for s in all_specs() if s.repo_id and not re.fullmatch(r"[0-9a-f]{40}", s.revision or ""))
    assert following_main == ["deepseek_ocr2"]
    assert "`deepseek_ocr2` follows the `main` branch" in readme


def test_a_pinned_revision_finds_its_own_snapshot_only(tmp_path, monkeypatch):
    """qwen_vl_2b pins a commit: a cached snapshot of another commit is not taken for it."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    spec = get_spec("qwen_vl_2b")
    assert len(spec.revision) == 40
    _fake_cache(tmp_path, spec.repo_id, {"config.json": b"{}", "model.safetensors": b"w"})   # "main" -> other commit
    assert weights.weights_available(spec) is None
    snap = _fake_cache(tmp_path / "pinned", spec.repo_id, {"config.json": b"{}", "model.safetensors": b"w"},
                       commit=spec.revision)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "pinned" / "hub"))
    found = weights.weights_available(spec)
    assert found and Path(found["path"]) == snap

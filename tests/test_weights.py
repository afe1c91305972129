"""chatvlm.weights: one place that says which checkpoint folder a model loads from (real or
synthetic), torch-free at import; the ports' backends load any folder the same way."""

import subprocess
import sys

import pytest

from chatvlm import weights
from chatvlm.config import BackendOptions
from chatvlm.registry import get_spec
from tests.conftest import ROOT


def test_importing_weights_loads_no_framework():
    code = ("import sys, chatvlm.weights as w; assert w.locate and w.weights_available; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stderr


def test_release_removes_only_the_synthetic_folders_it_made(tmp_path):
    pytest.importorskip("transformers")
    from chatvlm.models.dots_ocr.testing import config_dict

    spec = get_spec("dots_ocr")
    folder = weights.locate(spec, BackendOptions(synthetic=True, extra={"config": config_dict(vocab_size=1000)}))
    assert weights.is_synthetic(folder) and (folder / "config.json").is_file()
    keep = tmp_path / "ckpt"
    keep.mkdir()
    (keep / "config.json").write_text("{}")
    weights.release(keep)
    weights.release(folder)
    assert keep.is_dir() and not folder.exists() and not weights.is_synthetic(keep)


def _saved_dots(folder, config):
    from chatvlm.models.dots_ocr.synthetic import build_byte_tokenizer
    from chatvlm.models.dots_ocr.testing import build_random_checkpoint
    build_random_checkpoint(folder, config, seed=3)
    build_byte_tokenizer(folder)


def _saved_phi3(folder, config):
    from chatvlm.models.phi3_vision.synthetic import build_byte_tokenizer
    from chatvlm.models.phi3_vision.testing import write_random_checkpoint
    written = write_random_checkpoint(folder, seed=3)
    build_byte_tokenizer(folder, vocab_size=int(written["vocab_size"]))


def _saved_deepseek(folder, config):
    from chatvlm.models.deepseek_ocr.testing import write_random_checkpoint
    write_random_checkpoint(folder, seed=3, with_tokenizer=True, vocab_size=1024, hidden_size=32,
                            intermediate_size=64, moe_intermediate_size=16, num_hidden_layers=2,
                            num_attention_heads=2, n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1,
                            sam_width=16, sam_layers=2, sam_heads=1, sam_global_attn_indexes=(1,),
                            sam_downsample_channels=(16, 32), clip_layers=1, clip_heads=2)


def _tiny_config(name):
    if name == "dots_ocr":
        from chatvlm.models.dots_ocr.testing import config_dict
        return config_dict(vocab_size=1000)
    if name == "phi3_vision":
        from chatvlm.models.phi3_vision.testing import tiny_config
        return tiny_config()
    from chatvlm.models.deepseek_ocr import official_config_dict
    return official_config_dict(vocab_size=1024, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
                                num_hidden_layers=2, num_attention_heads=2, n_routed_experts=4,
                                num_experts_per_tok=2, n_shared_experts=1, sam_width=16, sam_layers=2, sam_heads=1,
                                sam_global_attn_indexes=(1,), sam_downsample_channels=(16, 32), clip_layers=1,
                                clip_heads=2)


@pytest.mark.parametrize("name, module, save", [
    ("dots_ocr", "dots_ocr", _saved_dots),
    ("phi3_vision", "phi3_vision", _saved_phi3),
    ("deepseek_ocr", "deepseek_ocr", _saved_deepseek),
])
def test_port_backends_load_a_folder_the_same_way_whatever_its_origin(name, module, save, tmp_path,
                                                                      one_torch_thread):
    """The backend's loading reads only the folder: a backend made for a normal run loads a
    synthetic checkpoint (random weights from its config), and a backend made for
    `bench --synthetic` loads a saved checkpoint's own weights."""
    torch = pytest.importorskip("torch")
    import importlib

    from chatvlm.backends.base import create_backend

    port = importlib.import_module(f"chatvlm.models.{module}")
    spec = get_spec(name)
    config = _tiny_config(name)
    synthetic_folder = weights.locate(spec, BackendOptions(synthetic=True, extra={"config": config}))
    saved = tmp_path / "saved"
    save(saved, config)
    try:
        plain = create_backend(spec, BackendOptions(device="cpu"))
        assert plain.load_processor(synthetic_folder) is not None
        random_model = plain.load_model(synthetic_folder, torch.float32, "eager")
        assert sum(p.numel() for p in random_model.parameters()) == \
            sum(p.numel() for p in port.build_from_config(config).parameters())

        for_bench = create_backend(spec, BackendOptions(device="cpu", synthetic=True))
        assert for_bench.load_processor(saved) is not None
        loaded = for_bench.load_model(saved, torch.float32, "eager").state_dict()
        reference = port.from_pretrained(saved, dtype=torch.float32, device="cpu").state_dict()
        assert loaded.keys() == reference.keys()
        assert all(torch.equal(loaded[k], reference[k]) for k in reference)
    finally:
        weights.release(synthetic_folder)
    assert not synthetic_folder.exists()

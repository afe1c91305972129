"""Every VLM has a synthetic recipe, and `bench --synthetic` runs each of them.

On CPU each model is built from a reduced config (the registry's full-size configs take
minutes and gigabytes there) through the same recipe and backend code the full-size run
uses, and must generate exactly N tokens for every page.
"""

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from chatvlm import bench, synthetic
from chatvlm.config import BackendOptions, GenerationParams, RunConfig
from chatvlm.registry import all_specs, get_spec
from tests.conftest import write_noise_pages

VLMS = sorted(s.name for s in all_specs() if s.repo_id is not None)
TOKENS = 3


def _tiny_configs() -> dict[str, dict]:
    from chatvlm.testing import tiny_synthetic_configs
    return tiny_synthetic_configs()


def test_every_vlm_has_a_recipe_and_a_full_config():
    assert len(VLMS) == 7
    assert set(synthetic.RECIPES) | set(synthetic.PORT_RECIPES) == set(VLMS)
    for name in VLMS:
        assert "model_type" in (get_spec(name).full_config or {}), name
    # `--models all` with --synthetic is those seven, and nothing is refused for want of a recipe
    config = bench.BenchConfig(base=RunConfig(inputs=[], out=None), synthetic=True)
    assert sorted(bench.select_models("all", config)) == VLMS
    assert all(bench._unavailable_reason(config, get_spec(n)) is None for n in VLMS)


@pytest.mark.parametrize("name", VLMS)
def test_recipe_builds_and_bench_generates_exactly_n_tokens(name, tmp_path, one_torch_thread):
    (tmp_path / "in").mkdir()
    pages = write_noise_pages(tmp_path / "in", [(160, 120), (96, 200)])
    config_path = tmp_path / f"{name}.json"
    config_path.write_text(json.dumps(_tiny_configs()[name]))
    # "mode" reaches every model like -O does; DeepSeek-OCR reads it (one 640-px view instead of tiles)
    extra = {"mode": "small"} if name == "deepseek_ocr" else {}
    base = RunConfig(inputs=[str(p) for p in pages], out=tmp_path / "out", model="auto",
                     backend=BackendOptions(device="cpu", extra=extra),
                     generation=GenerationParams(max_pixels=40_000))
    config = bench.BenchConfig(base=base, synthetic=True, tokens=TOKENS,
                               synthetic_configs={name: config_path}, command_line=["test"])
    outcome = bench.run_bench(config, [name])
    (row,) = outcome.report["models"]
    assert row["status"] == "ok", row["error"]
    assert [(d["output_tokens"], d["finish_reason"], d["status"]) for d in row["pages_detail"]] == \
        [(TOKENS, "length", "ok")] * 2
    assert row["engine"]["synthetic"] is True and row["accuracy"] is None
    # the roofline counts every model on the warm-up page: both phases seen, a limit per page
    roof = row["roofline"]
    assert roof["prefill_flops"] > roof["decode_step_flops"] > 0 and roof["decode_weight_bytes"] > 0, roof
    assert roof["limit_s"] > 0 and roof["percent_of_limit"] > 0
    assert outcome.report["options"]["model_options"] == extra
    if name == "deepseek_ocr":
        assert row["engine"]["mode"] == "small"
    assert outcome.exit_code == 0


def test_full_size_recipes_of_the_ports_keep_the_official_ids_and_budgets(tmp_path):
    """What the GPU check builds at full size: the recipe folders the ports' loaders read."""
    from chatvlm.backends.base import create_backend

    folders = {}
    for name in ("dots_ocr", "phi3_vision", "deepseek_ocr"):
        folders[name] = synthetic.prepare_checkpoint(name, get_spec(name).full_config, tmp_path / name)
        assert json.loads((folders[name] / "config.json").read_text()) == get_spec(name).full_config
    dots = create_backend(get_spec("dots_ocr")).load_processor(folders["dots_ocr"])
    assert (dots.min_pixels, dots.max_pixels) == (3136, 11289600)          # the official pixel budget
    assert dots.tokenizer.convert_tokens_to_ids("<|imgpad|>") == dots.image_token_id == 151665
    assert dots.tokenizer.convert_tokens_to_ids("<|endofassistant|>") == 151673
    phi3 = create_backend(get_spec("phi3_vision")).load_processor(folders["phi3_vision"])
    assert phi3.num_crops == 16 and phi3.tokenizer.convert_tokens_to_ids("<|end|>") == 32007
    assert (folders["deepseek_ocr"] / "decode_tokenizer" / "tokenizer.json").is_file()
    assert json.loads((folders["deepseek_ocr"] / "processor_config.json").read_text())["patch_size"] == 16

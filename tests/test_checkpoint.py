"""The one safetensors loader the model ports use: names and shapes checked before loading."""

import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from chatvlm.models.checkpoint import CheckpointMismatchError, load_checkpoint, read_checkpoint, weight_files


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(5, 3)
        self.proj = nn.Linear(3, 2)


def _values():
    g = torch.Generator().manual_seed(0)
    return {"embed.weight": torch.randn(5, 3, generator=g), "proj.weight": torch.randn(2, 3, generator=g),
            "proj.bias": torch.randn(2, generator=g)}


def _save_shards(folder, shards):
    """shards: file name -> {tensor name: tensor}; writes the index the official repos ship."""
    weight_map = {}
    for file, tensors in shards.items():
        save_file(tensors, str(folder / file))
        weight_map.update({name: file for name in tensors})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def test_a_sharded_checkpoint_loads_into_a_meta_model_and_a_real_one(tmp_path):
    values = _values()
    _save_shards(tmp_path, {"model-00001-of-00002.safetensors": {"embed.weight": values["embed.weight"]},
                            "model-00002-of-00002.safetensors": {k: values[k] for k in ("proj.weight", "proj.bias")}})
    assert [f.name for f in weight_files(tmp_path)] == ["model-00001-of-00002.safetensors",
                                                        "model-00002-of-00002.safetensors"]
    assert set(read_checkpoint(tmp_path)) == set(values)
    with torch.device("meta"):
        meta = Tiny().to(torch.bfloat16)
    real = Tiny()
    kept = real.proj.weight
    for model in (meta, real):
        report = load_checkpoint(model, tmp_path)
        assert report == {"missing": [], "unexpected": [], "mismatched": []}
        for name, value in values.items():
            assert torch.equal(model.state_dict()[name], value.to(model.state_dict()[name].dtype))
    assert meta.proj.weight.dtype == torch.bfloat16 and not meta.proj.weight.is_meta
    assert real.proj.weight is kept  # copied in place: parameters (and ties between them) stay


def test_missing_unexpected_and_misshapen_tensors_fail_naming_the_folder_keys_and_file(tmp_path):
    values = _values()
    del values["proj.bias"]
    values["proj.extra"] = torch.zeros(1)
    values["embed.weight"] = torch.zeros(4, 3)
    save_file(values, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointMismatchError) as err:
        load_checkpoint(Tiny(), tmp_path)
    message = str(err.value)
    assert str(tmp_path) in message
    assert "1 missing ['proj.bias']" in message
    assert "1 unexpected ['proj.extra (in model.safetensors)']" in message
    assert "embed.weight: (4, 3) in model.safetensors, (5, 3) in the model" in message
    # Not strict: what matches is loaded, the report says what did not.
    model = Tiny()
    report = load_checkpoint(model, tmp_path, strict=False)
    assert report["missing"] == ["proj.bias"] and report["unexpected"] == ["proj.extra"]
    assert len(report["mismatched"]) == 1
    assert torch.equal(model.proj.weight, values["proj.weight"])


def test_an_alias_loads_in_place_of_its_target_and_must_equal_it_when_both_are_stored(tmp_path):
    values = _values()
    aliased = dict(values)
    aliased["old.embed"] = aliased.pop("embed.weight")
    save_file(aliased, str(tmp_path / "model.safetensors"))
    model = Tiny()
    load_checkpoint(model, tmp_path, aliases={"old.embed": "embed.weight"})
    assert torch.equal(model.embed.weight, values["embed.weight"])

    save_file({**values, "old.embed": values["embed.weight"].clone()}, str(tmp_path / "model.safetensors"))
    load_checkpoint(Tiny(), tmp_path, aliases={"old.embed": "embed.weight"})
    save_file({**values, "old.embed": values["embed.weight"] + 1}, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointMismatchError, match="old.embed .in model.safetensors. differs from embed.weight"):
        load_checkpoint(Tiny(), tmp_path, aliases={"old.embed": "embed.weight"})


def test_a_folder_without_weights_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_checkpoint(Tiny(), tmp_path)


def test_a_tensor_stored_in_two_shards_is_refused(tmp_path):
    values = _values()
    _save_shards(tmp_path, {"a.safetensors": values, "b.safetensors": {"proj.bias": values["proj.bias"]}})
    with pytest.raises(CheckpointMismatchError,
                       match="proj.bias is stored twice: in .*a.safetensors and in .*b.safetensors"):
        load_checkpoint(Tiny(), tmp_path)

import pytest

from microt2i import presets
from microt2i.config import (ConfigError, DiTIConfig, RunConfig, apply_overrides, from_dict, load_yaml, save_yaml,
                             to_dict)


def test_yaml_round_trip(tmp_path):
    cfg = apply_overrides(presets.get("world-s"), ["train.lr=3e-4", "model.depth=3", "train.betas=[0.9, 0.95]"])
    save_yaml(cfg, tmp_path / "c.yaml")
    back = load_yaml(tmp_path / "c.yaml")
    assert back == cfg
    assert isinstance(back.model, DiTIConfig)
    assert back.train.lr == 3e-4 and back.model.depth == 3 and back.train.betas == (0.9, 0.95)


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError) as e:
        apply_overrides(RunConfig(), ["train.lrr=1e-3"])
    msg = str(e.value)
    assert "train.lrr" in msg and "Did you mean 'lr'" in msg and "batch_size" in msg and "total_nimg" in msg
    with pytest.raises(ConfigError) as e:
        from_dict(RunConfig, {"trian": {}})
    assert "Valid keys here" in str(e.value) and "train" in str(e.value)
    with pytest.raises(ConfigError) as e:
        apply_overrides(RunConfig(), ["modle.depth=2"])
    assert "model" in str(e.value)


def test_bad_values_are_named():
    with pytest.raises(ConfigError, match="train.batch_size"):
        apply_overrides(RunConfig(), ["train.batch_size=64", "train.micro_batch=48"])
    with pytest.raises(ConfigError, match="model.depth"):
        apply_overrides(RunConfig(), ["model.depth=two"])
    with pytest.raises(ConfigError, match="objective.kind"):
        apply_overrides(RunConfig(), ["objective.kind=ddpm"])
    with pytest.raises(ConfigError, match="key.sub=value"):
        apply_overrides(RunConfig(), ["train.lr"])
    with pytest.raises(ConfigError, match="model.family"):
        from_dict(RunConfig, {"model": {"family": "unet"}})


def test_every_preset_resolves_and_round_trips(tmp_path):
    for name in presets.names():
        cfg = presets.get(name)
        assert from_dict(RunConfig, to_dict(cfg)) == cfg
    with pytest.raises(ConfigError, match="valid presets"):
        presets.get("dit-xxl")

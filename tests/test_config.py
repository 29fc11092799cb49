"""Config errors name the key and say what is allowed."""

import pytest

from retaincl.config import ConfigError, config_from_dict, load_config


def test_defaults_are_valid():
    cfg = config_from_dict({})
    assert cfg.method_names == ["simplecil"] and cfg.backbone.name == "efficientnet_lite0"


def test_misspelt_key_suggests_closest():
    with pytest.raises(ConfigError, match=r"unknown config key 'scenario.incremnt'.*'scenario.increment'"):
        config_from_dict({"scenario": {"incremnt": 10}})
    with pytest.raises(ConfigError, match=r"'seed'"):
        config_from_dict({"sed": 1})


def test_wrong_type_names_key():
    with pytest.raises(ConfigError, match=r"scenario.base: expected an integer, got 'two'"):
        config_from_dict({"scenario": {"base": "two"}})
    with pytest.raises(ConfigError, match=r"scenario.kind: 'online' is not allowed; choose one of 'class', 'domain', 'task'"):
        config_from_dict({"scenario": {"kind": "online"}})


def test_unknown_method_suggests():
    with pytest.raises(KeyError, match="Did you mean 'ranpac'"):
        config_from_dict({"method": "ranpak"})


def test_method_params_are_validated_up_front():
    with pytest.raises(ConfigError, match=r"unknown config key 'methods.ranpac.projection'.*projection_dim"):
        config_from_dict({"method": "ranpac", "methods": {"ranpac": {"projection": 10}}})
    with pytest.raises(ConfigError, match=r"methods.finetune.lr: expected a number"):
        config_from_dict({"methods": {"finetune": {"lr": "fast"}}})


def test_yaml_plus_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("method: [simplecil, ranpac]\nscenario:\n  base: 4\n")
    cfg = load_config(p, ["scenario.increment=3", "methods.ranpac.projection_dim=50", "backbone.checkpoint=null"])
    assert cfg.method_names == ["simplecil", "ranpac"]
    assert (cfg.scenario.base, cfg.scenario.increment) == (4, 3)
    assert cfg.methods["ranpac"]["projection_dim"] == 50


def test_bad_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["scenario.base"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")

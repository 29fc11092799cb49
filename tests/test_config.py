"""Config errors name the key and say what is allowed."""

import dataclasses
import re

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


# ----------------------------------------------------------------------------- values that make no sense


@pytest.mark.parametrize(
    "tree, key",
    [
        ({"threads": 0}, "threads"),
        ({"eval": {"batch_size": 0}}, "eval.batch_size"),
        ({"backbone": {"image_size": 0}}, "backbone.image_size"),
        ({"data": {"image_size": -3}}, "data.image_size"),
        ({"scenario": {"base": 0}}, "scenario.base"),
        ({"scenario": {"increment": -2}}, "scenario.increment"),
        ({"scenario": {"num_tasks": 0}}, "scenario.num_tasks"),
        ({"seed": -1}, "seed"),
        ({"seed": 10**20}, "seed"),
        ({"scenario": {"order_seed": -5}}, "scenario.order_seed"),
        ({"scenario": {"max_rotation": float("nan")}}, "scenario.max_rotation"),
        ({"transform": {"train_crop_scale": [float("nan"), 1.0]}}, "transform.train_crop_scale[0]"),
        ({"methods": {"finetune": {"epochs": 0}}}, "methods.finetune.epochs"),
        ({"methods": {"finetune": {"batch_size": 0}}}, "methods.finetune.batch_size"),
        ({"methods": {"finetune": {"lr": -1}}}, "methods.finetune.lr"),
        ({"methods": {"finetune": {"lr": 0}}}, "methods.finetune.lr"),
        ({"methods": {"finetune": {"lr": float("inf")}}}, "methods.finetune.lr"),
        ({"methods": {"finetune": {"lr": float("nan")}}}, "methods.finetune.lr"),
        ({"methods": {"finetune": {"momentum": -0.5}}}, "methods.finetune.momentum"),
        ({"methods": {"finetune": {"backbone_lr": 0.0}}}, "methods.finetune.backbone_lr"),
        ({"methods": {"ranpac": {"ridge": -1.0}}}, "methods.ranpac.ridge"),
        ({"methods": {"ranpac": {"ridge": 0.0}}}, "methods.ranpac.ridge"),
        ({"methods": {"ranpac": {"projection_dim": -1}}}, "methods.ranpac.projection_dim"),
        ({"methods": {"er": {"memory_size": -10}}}, "methods.er.memory_size"),
        ({"methods": {"slca": {"epochs": 0}}}, "methods.slca.epochs"),
        ({"methods": {"aper_adapter": {"lr": float("nan")}}}, "methods.aper_adapter.lr"),
        ({"methods": {"vpt": {"batch_size": -1}}}, "methods.vpt.batch_size"),
        ({"methods": {"lwf": {"temperature": 0.0}}}, "methods.lwf.temperature"),
    ],
)
def test_values_that_make_no_sense_are_config_errors(tree, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        config_from_dict(tree)


def test_bounds_hold_for_every_registered_method():
    """Generic rules reach every method's Params: its lr must be positive, epochs and batch sizes >= 1."""
    from retaincl.config import method_params
    from retaincl.registry import METHODS

    checked = 0
    for name, cls in METHODS.items():
        fields = {f.name for f in dataclasses.fields(cls.Params)}
        for key, bad in (("lr", 0.0), ("epochs", 0), ("batch_size", 0), ("lr", float("nan"))):
            if key in fields:
                checked += 1
                with pytest.raises(ConfigError, match=f"methods.{name}.{key}"):
                    method_params(name, {key: bad})
    assert checked > 40


def test_valid_edge_values_still_pass():
    cfg = config_from_dict({
        "threads": 1, "seed": 0, "methods": {
            "ranpac": {"projection_dim": 0, "ridge": 1e-8},
            "finetune": {"momentum": 0.0, "weight_decay": 0.0, "lr": 1e-9, "epochs": 1, "batch_size": 1},
            "er": {"memory_size": 0},
        },
        "scenario": {"max_rotation": -90.0},
    })
    assert cfg.methods["ranpac"]["projection_dim"] == 0


def test_empty_or_repeated_method_list():
    with pytest.raises(ConfigError, match="method"):
        config_from_dict({"method": []})
    with pytest.raises(ConfigError, match="ranpac.*twice"):
        config_from_dict({"method": ["ranpac", "simplecil", "ranpac"]})


def test_yaml_duplicate_keys_are_errors(tmp_path):
    p = tmp_path / "dup.yaml"
    p.write_text("seed: 1\nscenario:\n  base: 2\n  base: 4\n")
    with pytest.raises(ConfigError, match=r"dup.yaml.*'base'.*twice|duplicate.*'base'"):
        load_config(p)
    p.write_text("seed: 1\nseed: 2\n")
    with pytest.raises(ConfigError, match="seed"):
        load_config(p)


def test_yaml_and_set_read_exponents_as_numbers(tmp_path):
    p = tmp_path / "lr.yaml"
    p.write_text("methods:\n  finetune: {lr: 1e-3, backbone_lr: 1.0e-4}\n  ranpac: {ridge: 1.0e9}\n")
    cfg = load_config(p)
    assert cfg.methods["finetune"]["lr"] == 1e-3 and cfg.methods["finetune"]["backbone_lr"] == 1e-4
    assert cfg.methods["ranpac"]["ridge"] == 1e9
    cfg = load_config(None, ["methods.finetune.lr=5e-2", "methods.ranpac.ridge=1E+3", "scenario.max_rotation=1e2"])
    assert cfg.methods["finetune"]["lr"] == 0.05 and cfg.methods["ranpac"]["ridge"] == 1000.0
    assert cfg.scenario.max_rotation == 100.0
    # what stays a string stays a string
    cfg = load_config(None, ["name=1e3x", "data.root=e5"])
    assert cfg.name == "1e3x" and cfg.data.root == "e5"


def test_check_stream_hook_refuses_a_stream_before_anything_runs(make_digits_config, monkeypatch):
    """A method can refuse a stream (e.g. fewer prompts than tasks) when the Session is created."""
    from retaincl.engine.runner import Session
    from retaincl.methods.base import Learner
    from retaincl.registry import METHODS

    assert hasattr(Learner, "check_stream")
    cls = METHODS.get("simplecil")
    seen = []

    def refuse(klass, params, stream):
        seen.append(len(stream))
        raise ConfigError(f"methods.simplecil: this stream has {len(stream)} tasks")

    monkeypatch.setattr(cls, "check_stream", classmethod(refuse), raising=False)
    with pytest.raises(ConfigError, match="5 tasks"):
        Session.create(make_digits_config(method=["finetune", "simplecil"]))
    assert seen == [5]


def test_unsupported_scenario_is_refused_at_session_creation(make_digits_config, monkeypatch):
    from retaincl.engine.runner import Session
    from retaincl.registry import METHODS

    monkeypatch.setattr(METHODS.get("ranpac"), "supported_scenarios", ("class",))
    with pytest.raises(Exception, match="ranpac.*not 'domain'"):
        Session.create(make_digits_config(method=["simplecil", "ranpac"], **{"scenario.kind": "domain"}))

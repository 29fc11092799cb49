"""Sweeps: `retaincl run A.yaml B.yaml --seeds 0,1` runs every method of every config on
every seed, each in its own run folder; a second identical sweep recomputes nothing."""

import json
from pathlib import Path

import pytest
import yaml

from retaincl.cli import main
from retaincl.config import ConfigError, config_from_dict
from retaincl.engine.sweep import expand_seeds, parse_seeds


def test_parse_seeds():
    assert parse_seeds("0,1,2") == [0, 1, 2]
    assert parse_seeds("3-5,9") == [3, 4, 5, 9]
    for bad in ("a", "5-3", "1,,2"):
        with pytest.raises(ConfigError, match="--seeds"):
            parse_seeds(bad)


def test_seeds_key_expands_to_one_config_per_seed():
    cfg = config_from_dict({"seeds": [4, 7], "name": "exp"})
    runs = expand_seeds(cfg)
    assert [(c.seed, c.name, c.seeds) for c in runs] == [(4, "exp-seed4", None), (7, "exp-seed7", None)]
    with pytest.raises(ConfigError, match="seeds: 4 is listed twice"):
        config_from_dict({"seeds": [4, 4]})
    with pytest.raises(ConfigError, match="seeds: the list is empty"):
        config_from_dict({"seeds": []})


def write_config(path: Path, tmp_path: Path, shared_cache, increment: int) -> Path:
    tree = {
        "method": ["simplecil"],
        "data": {"source": "digits"},
        "scenario": {"kind": "class", "base": 2, "increment": increment},
        "backbone": {"name": "efficientnet_lite0", "image_size": 32},
        "cache": {"dir": str(shared_cache)},
        "output_dir": str(tmp_path / "runs"),
        "device": "cpu",
    }
    path.write_text(yaml.safe_dump(tree))
    return path


def results_files(tmp_path):
    return sorted((tmp_path / "runs").glob("*/*/results.json"))


@pytest.mark.slow
def test_sweep_of_two_configs_and_two_seeds_then_nothing_recomputed(tmp_path, shared_cache, capsys):
    a = write_config(tmp_path / "a.yaml", tmp_path, shared_cache, increment=2)
    b = write_config(tmp_path / "b.yaml", tmp_path, shared_cache, increment=4)
    args = ["run", str(a), str(b), "--seeds", "0,1", "--quiet", "--set", "threads=1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    files = results_files(tmp_path)
    assert len(files) == 4  # 2 configs x 2 seeds x 1 method
    seeds = sorted((json.loads(f.read_text())["seed"], f.parent.parent.name) for f in files)
    assert [s for s, _ in seeds] == [0, 0, 1, 1]
    assert all(name.endswith(f"-seed{s}") for s, name in seeds)
    # one table per stream (B2-Inc2 and B2-Inc4), each with n = 2 seeds
    assert out.count("### ") == 2 and out.count("(seeds 0, 1)") == 2
    mtimes = {f: f.stat().st_mtime_ns for f in files}
    assert main(args) == 0
    assert {f: f.stat().st_mtime_ns for f in results_files(tmp_path)} == mtimes  # nothing rewritten
    again = capsys.readouterr().out
    assert again.count("### ") == 2
    # the second sweep's table is the first's (the same results, reused)
    assert again.split("### ", 1)[1] == out.split("### ", 1)[1]


def test_a_bad_second_config_stops_the_sweep_before_anything_runs(tmp_path, shared_cache, capsys):
    a = write_config(tmp_path / "a.yaml", tmp_path, shared_cache, increment=2)
    bad = tmp_path / "bad.yaml"
    bad.write_text("scenario: {increment: 0}\n")
    assert main(["run", str(a), str(bad), "--seeds", "0,1", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "scenario.increment" in err[0]
    assert results_files(tmp_path) == []

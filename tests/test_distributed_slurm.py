"""``retaincl submit``: one submitit job per (config, seed), tried with submitit's debug executor."""

from __future__ import annotations

import json

import pytest
import yaml

from retaincl.cli import main

submitit = pytest.importorskip("submitit")


def test_one_job_per_config_and_seed_each_writes_its_own_results(tmp_path, capsys):
    tree = {
        "method": ["simplecil"], "data": {"source": "digits"},
        "scenario": {"kind": "class", "base": 4, "increment": 3},
        "backbone": {"name": "mlp", "image_size": 8}, "cache": {"enabled": False},
        "output_dir": str(tmp_path / "runs"), "threads": 1, "device": "cpu",
    }
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(yaml.safe_dump(tree))
    b.write_text(yaml.safe_dump(tree | {"name": "second"}))
    code = main(["submit", str(a), str(b), "--seeds", "1", "2", "--executor", "debug",
                 "--folder", str(tmp_path / "logs"), "--wait"])
    assert code == 0
    out = capsys.readouterr().out
    assert out.count("submitted job") == 4
    found = sorted((p.parent.parent.name, json.loads(p.read_text())["config"]["seed"])
                   for p in (tmp_path / "runs").rglob("results.json"))
    assert found == [
        ("digits-class-B4Inc3-mlp-seed1", 1), ("digits-class-B4Inc3-mlp-seed2", 2),
        ("second-seed1", 1), ("second-seed2", 2),  # a named config: one folder per seed
    ]
    last = out.rstrip().splitlines()[-6:]  # --wait: the summary table of the four results comes last
    assert "method" in last[0] and all(row.startswith("| simplecil |") for row in last[2:])


def test_a_wrong_config_key_stops_before_anything_is_queued(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("methd: [simplecil]\n")
    assert main(["submit", str(bad), "--seeds", "1", "--executor", "debug", "--folder", str(tmp_path / "logs")]) == 2
    assert "methd" in capsys.readouterr().err
    assert not (tmp_path / "logs").exists()

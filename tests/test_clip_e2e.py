"""The CLIP config through the CLI, every method, on sklearn digits with tiny budgets:
it runs, records class names and the held-out zero-shot accuracy, and zero-shot CLIP
(no training) is already far above chance with the packaged tiny CLIP."""

import json
from pathlib import Path

import pytest

from retaincl.cli import main

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "clip_mnist5k_tiny.yaml"


@pytest.mark.slow
def test_clip_config_runs_every_method_from_the_cli(tmp_path):
    rc = main([
        "run", str(CONFIG), "--set", "data.source=digits", "--set", f"output_dir={tmp_path}",
        "--set", f"cache.dir={tmp_path / 'cache'}", "--set", "quiet=true", "--set", "device=cpu",
        "--set", "methods.proof.epochs=1", "--set", "methods.zscl.epochs=1", "--set", "methods.zscl.heldout_per_class=2",
        "--set", "methods.clip_finetune.epochs=1", "--set", "methods.clip_finetune.heldout_per_class=2",
        "--set", "methods.promptfusion.epochs=1",
    ])
    assert rc == 0
    results = {p.parent.name: json.loads(p.read_text()) for p in tmp_path.rglob("results.json")}
    assert set(results) == {"zeroshot_clip", "simplecil", "proof", "zscl", "clip_finetune", "promptfusion"}
    for r in results.values():
        assert r["stream"]["class_names"][:3] == ["zero", "one", "two"]
    for name in ("zscl", "clip_finetune"):
        assert len(results[name]["method_info"]["heldout_zero_shot"]) == 6  # before + after each of 5 tasks
    assert results["zeroshot_clip"]["metrics"]["last_accuracy"] > 0.3  # chance: 0.1

"""End to end through `retaincl run`: the replay family on scikit-learn's digits."""

import json

import pytest
import yaml

from retaincl.cli import main
from retaincl.engine.checkpoint import load_checkpoint

METHODS = ["er", "gem", "agem", "derpp", "sncl", "lwf", "ewc"]
ONLINE = {"train_backbone": True, "epochs": 1, "batch_size": 10, "lr": 0.1, "backbone_lr": 0.1, "momentum": 0.0}
MEMORY = {"memory_size": 40, "memory_budget": "per_task"}


def write_config(tmp_path, methods, **scenario):
    tree = {
        "method": methods,
        "seed": 0,
        "data": {"source": "digits"},
        "scenario": {"kind": "class", "base": 2, "increment": 2, **scenario},
        "backbone": {"name": "mlp", "image_size": 8},
        "cache": {"enabled": False},
        "output_dir": str(tmp_path / "runs"),
        "quiet": True,
        "device": "cpu",
        "methods": {m: ONLINE | (MEMORY if m in ("er", "gem", "agem", "derpp", "sncl") else {}) for m in methods},
    }
    path = tmp_path / "replay.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def results(tmp_path, method):
    (path,) = (tmp_path / "runs").glob(f"*/{method}/results.json")
    return json.loads(path.read_text())


@pytest.mark.slow
def test_every_replay_method_runs_through_retain_run(tmp_path):
    path = write_config(tmp_path, METHODS + ["finetune"])
    assert main(["run", str(path), "--set", "methods.finetune.lr_schedule=constant"]) == 0
    acc = {m: results(tmp_path, m)["metrics"]["last_accuracy"] for m in METHODS + ["finetune"]}
    # 5 tasks of 2 digits, one pass: finetuning keeps about the last task only (<= 0.3);
    # methods with a memory must do clearly better than that
    assert acc["finetune"] < 0.3
    for m in ("er", "gem", "derpp", "sncl"):
        assert acc[m] > acc["finetune"] + 0.2, (m, acc)
    ckpt = load_checkpoint(next((tmp_path / "runs").glob("*/sncl/checkpoint.pt")))
    mem = ckpt["learner"]["memory_state"]
    assert mem["kind"] == "loss_aware_reservoir" and {"x", "y", "task", "logits", "score", "act0", "act1"} <= set(mem["fields"])
    assert len(mem["fields"]["y"]) == 40 * 5


def test_er_is_reproducible_and_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    path = write_config(tmp_path, ["er"], kind="task")
    main(["run", str(path)])
    first = results(tmp_path, "er")
    assert first["metrics"]["last_accuracy"] > 0.8  # task-incremental digits: easy
    main(["run", str(path), "--fresh"])
    assert results(tmp_path, "er")["accuracy_matrix"] == first["accuracy_matrix"]

    # crash during task 3: the checkpoint after task 2 holds the network and the memory;
    # the resumed run must end with exactly the numbers of the uninterrupted one
    from retaincl.methods.replay.er import ER

    fit = ER.fit

    def crash_at_task_3(self, task):
        if task.index == 3:
            raise KeyboardInterrupt
        fit(self, task)

    monkeypatch.setattr(ER, "fit", crash_at_task_3)
    with pytest.raises(KeyboardInterrupt):
        main(["run", str(path), "--fresh"])
    ckpt = load_checkpoint(next((tmp_path / "runs").glob("*/er/checkpoint.pt")))
    assert ckpt["tasks_done"] == 3 and len(ckpt["learner"]["memory_state"]["fields"]["y"]) == 40 * 3
    monkeypatch.setattr(ER, "fit", fit)
    main(["run", str(path)])
    resumed = results(tmp_path, "er")
    assert resumed["resumed_from_task"] == 3
    assert resumed["accuracy_matrix"] == first["accuracy_matrix"]


@pytest.mark.slow
def test_replay_on_frozen_pretrained_features(tmp_path):
    tree = yaml.safe_load(write_config(tmp_path, ["er"]).read_text())
    tree["backbone"] = {"name": "efficientnet_lite0", "image_size": 32}
    tree["cache"] = {"enabled": True, "dir": str(tmp_path / "cache")}
    tree["methods"]["er"] |= {"train_backbone": False, "head_hidden": [64], "epochs": 2}
    path = tmp_path / "frozen.yaml"
    path.write_text(yaml.safe_dump(tree))
    assert main(["run", str(path)]) == 0
    res = results(tmp_path, "er")
    assert res["method_info"]["frozen_backbone"] is True
    assert res["metrics"]["last_accuracy"] > 0.4

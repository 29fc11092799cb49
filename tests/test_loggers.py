"""Run logs: metrics.jsonl / metrics.csv / run.log in every run folder, TensorBoard and
Weights & Biases (offline) when configured, read back and checked against the results
and against step counts worked out from the stream's sizes."""

import csv
import json
import math
import struct
import sys
from pathlib import Path

import pytest

from retaincl.cli import main
from retaincl.engine.loggers import LoggerError
from retaincl.engine.runner import Session, run_method

EPOCHS, BATCH = 2, 64


def finetune_config(make_digits_config, **extra):
    return make_digits_config(
        method="finetune", methods={"finetune": {"epochs": EPOCHS, "batch_size": BATCH}}, **extra
    )


def expected_steps(results) -> list[int]:
    """SGD steps per task: epochs x ceil(train size / batch size), from the stream's sizes."""
    return [EPOCHS * math.ceil(t["train_size"] / BATCH) for t in results["stream"]["tasks"]]


def pooled_accuracy(results, t: int) -> float:
    """A_t from the correct counts and test sizes (not from the metrics the runner wrote)."""
    c, n = results["correct_matrix"][t][: t + 1], results["test_sizes"][: t + 1]
    return sum(c) / sum(n)


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_run_writes_metrics_logs_and_a_log_file(make_digits_config):
    cfg = finetune_config(make_digits_config, name="logs")
    res = run_method(Session.create(cfg), "finetune", progress=False)
    folder = Path(res["results_path"]).parent
    events = read_jsonl(folder / "metrics.jsonl")
    tasks = [e for e in events if e["event"] == "task"]
    assert [e["task"] for e in tasks] == [1, 2, 3, 4, 5]
    for t, e in enumerate(tasks):
        assert e["accuracy"] == pytest.approx(pooled_accuracy(res, t))
        assert e["accuracy_on_task"][: t + 1] == pytest.approx(res["accuracy_matrix"][t][: t + 1])
        assert e["accuracy_on_task"][t + 1 :] == [None] * (4 - t)  # not measured: null, never NaN
    # one loss per SGD step, counted from the stream
    losses = [e for e in events if e["event"] == "scalar" and e["key"] == "loss"]
    per_task = [sum(1 for e in losses if e["task"] == t + 1) for t in range(5)]
    assert per_task == expected_steps(res)
    assert [e["global_step"] for e in losses] == list(range(len(losses)))
    # the CSV: one row per task, the same numbers, the loss mean and last of each task
    rows = list(csv.DictReader(open(folder / "metrics.csv")))
    assert [int(r["task"]) for r in rows] == [1, 2, 3, 4, 5]
    for t, r in enumerate(rows):
        assert float(r["accuracy"]) == pytest.approx(pooled_accuracy(res, t))
        vals = [e["value"] for e in losses if e["task"] == t + 1]
        assert float(r["loss_mean"]) == pytest.approx(sum(vals) / len(vals))
        assert float(r["loss_last"]) == pytest.approx(vals[-1])
        assert r["accuracy_on_task_5"] == ("" if t < 4 else r["accuracy_on_task_5"])
    log_text = (folder / "run.log").read_text()
    assert "finetune on logs: started" in log_text and "task 5 done" in log_text and "finished" in log_text
    assert res["logs"]["metrics_csv"].endswith("metrics.csv")


def test_resumed_run_logs_each_task_once(make_digits_config, monkeypatch):
    from retaincl.registry import METHODS

    reference = run_method(Session.create(finetune_config(make_digits_config, name="ref")), "finetune", progress=False)
    ref_events = read_jsonl(Path(reference["results_path"]).parent / "metrics.jsonl")
    cls = METHODS.get("finetune")
    original_fit = cls.fit

    def crash_in_task_3(self, task):
        if task.index == 2:
            for _ in range(3):
                self.log("loss", 1.0)  # logged by the interrupted task: must not survive the resume
            raise KeyboardInterrupt("simulated crash")
        return original_fit(self, task)

    cfg = finetune_config(make_digits_config, name="crash")
    monkeypatch.setattr(cls, "fit", crash_in_task_3)
    with pytest.raises(KeyboardInterrupt):
        run_method(Session.create(cfg), "finetune", progress=False)
    monkeypatch.setattr(cls, "fit", original_fit)
    folder = Path(cfg.output_dir) / "crash" / "finetune"
    assert "stopped by KeyboardInterrupt: simulated crash" in (folder / "run.log").read_text()
    resumed = run_method(Session.create(cfg), "finetune", progress=False)
    assert resumed["resumed_from_task"] == 2
    events = read_jsonl(folder / "metrics.jsonl")
    assert [e["task"] for e in events if e["event"] == "task"] == [1, 2, 3, 4, 5]
    strip = lambda es: [{k: v for k, v in e.items() if k != "time" and not k.endswith("_seconds")} for e in es]  # noqa: E731
    assert strip(events) == strip(ref_events)  # the same events as an uninterrupted run
    assert "resumed at task 3" in (folder / "run.log").read_text()


def test_tensorboard_event_files_read_back(make_digits_config):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = finetune_config(make_digits_config, name="tb", **{"log.tensorboard": True})
    res = run_method(Session.create(cfg), "finetune", progress=False)
    acc = EventAccumulator(str(Path(res["results_path"]).parent / "tensorboard"))
    acc.Reload()
    a_t = acc.Scalars("accuracy/A_t")
    assert [e.step for e in a_t] == [1, 2, 3, 4, 5]
    assert [e.value for e in a_t] == pytest.approx([pooled_accuracy(res, t) for t in range(5)], abs=1e-6)
    assert len(acc.Scalars("train/loss")) == sum(expected_steps(res))
    assert acc.Scalars("final/last_accuracy")[0].value == pytest.approx(res["metrics"]["last_accuracy"], abs=1e-6)


def wandb_records(path):
    """The protobuf records of a W&B ``.wandb`` file (a LevelDB-style log: 32 KiB blocks of
    records with a 7-byte header, after a 7-byte file header ``:W&B`` + magic + version)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, chunks, out = 7, 32768, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        chunks += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = pb.Record()
            record.ParseFromString(chunks)
            out.append(record)
            chunks = b""
    return out


def item_key(item) -> str:
    return item.key or ".".join(item.nested_key)  # W&B writes a key one way or the other


@pytest.mark.slow
def test_wandb_offline_run_read_back(make_digits_config):
    pytest.importorskip("wandb", reason="the wandb extra is not installed")
    cfg = finetune_config(make_digits_config, name="wb", **{"log.wandb": {"project": "retaincl-test", "mode": "offline"}})
    res = run_method(Session.create(cfg), "finetune", progress=False)
    import wandb

    wandb.teardown()  # finish() returns before W&B's service has written the file; this waits for it
    files = list((Path(res["results_path"]).parent / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1
    records = wandb_records(files[0])
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert run.project == "retaincl-test" and run.display_name == "wb/finetune" and run.run_group == "wb"
    history = [
        {item_key(i): json.loads(i.value_json) for i in r.history.item}
        for r in records if r.WhichOneof("record_type") == "history"
    ]
    a_t = [(h["task"], h["accuracy/A_t"]) for h in history if "accuracy/A_t" in h]
    assert [t for t, _ in a_t] == [1, 2, 3, 4, 5]
    assert [a for _, a in a_t] == pytest.approx([pooled_accuracy(res, t) for t in range(5)])
    assert sum(1 for h in history if "train/loss" in h) == sum(expected_steps(res))
    summary = {
        item_key(i): json.loads(i.value_json)
        for r in records if r.WhichOneof("record_type") == "summary" for i in r.summary.update
    }
    assert summary["last_accuracy"] == pytest.approx(res["metrics"]["last_accuracy"])
    exit_record = next(r.exit for r in records if r.WhichOneof("record_type") == "exit")
    assert exit_record.exit_code == 0


def test_missing_tracker_package_is_one_line_before_training(make_digits_config, monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    cfg = finetune_config(make_digits_config, name="notb", **{"log.tensorboard": True})
    with pytest.raises(LoggerError, match=r"retaincl\[tensorboard\]"):
        run_method(Session.create(cfg), "finetune", progress=False)
    assert not (tmp_path / "runs" / "notb" / "finetune" / "checkpoint.pt").exists()  # nothing trained
    args = ["run", "--quiet", "--set", "data.source=digits", "--set", "backbone.image_size=32", "--set", "device=cpu",
            "--set", f"output_dir={tmp_path / 'runs'}", "--set", f"cache.dir={cfg.cache.dir}", "--set", "method=simplecil",
            "--set", "log.tensorboard=true"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tensorboard" in err[0]

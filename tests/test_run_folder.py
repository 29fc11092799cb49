"""Nothing finished is lost, nothing finished is recomputed, nothing is mixed.

- The output folder is checked for writability before anything trains.
- A run folder that holds another config's results is never written over without
  ``--overwrite`` (class order, method hyperparameters and data root are not in the
  run's name, so two configs can share one).
- After a crash in a later method, the methods that had finished are not run again.
- A resumed run refuses to continue with another thread count (numbers depend on it).
- Temporary files of an interrupted atomic write are removed by the next run.
"""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from retaincl.cli import main
from retaincl.engine.runner import RunError, Session, run_method
from retaincl.registry import METHODS


@pytest.fixture
def args(tmp_path, shared_cache):
    def make(*sets: str, method: str = "simplecil") -> list[str]:
        out = ["run", "--quiet"]
        for s in (
            "data.source=digits", "backbone.image_size=32", "threads=1", "device=cpu", f"method={method}",
            f"output_dir={tmp_path / 'runs'}", f"cache.dir={shared_cache}", "methods.finetune.epochs=2", *sets,
        ):
            out += ["--set", s]
        return out

    return make


def error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("retaincl: error:"), lines
    return lines[0]


def test_unwritable_output_folder_is_refused_before_training(args, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")

    def never(self, task):
        raise AssertionError("trained although the results could not be written")

    monkeypatch.setattr(METHODS.get("simplecil"), "fit", never)
    assert main(args(f"output_dir={blocker / 'runs'}")) == 2
    line = error_line(capsys)
    assert "output_dir" in line and "a-file" in line


def test_another_config_never_overwrites_finished_results(args, tmp_path, capsys):
    assert main(args()) == 0
    capsys.readouterr()
    [results] = (tmp_path / "runs").rglob("results.json")
    before = results.read_bytes()
    # another class order: the same run name, another config
    assert main(args("scenario.class_order=[9,8,7,6,5,4,3,2,1,0]")) == 2
    line = error_line(capsys)
    assert "scenario.class_order" in line and "--overwrite" in line
    assert results.read_bytes() == before
    # another method hyperparameter, another data root: refused as well
    assert main(args("methods.simplecil={}", "data.root=/elsewhere")) == 2
    assert "data.root" in error_line(capsys)
    assert main([*args("scenario.class_order=[9,8,7,6,5,4,3,2,1,0]"), "--overwrite"]) == 0
    after = json.loads(results.read_text())
    assert after["config"]["scenario"]["class_order"] == [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]


def test_results_written_before_a_key_existed_are_reused_while_it_keeps_its_default(args, tmp_path, capsys, monkeypatch):
    assert main(args()) == 0
    [results] = (tmp_path / "runs").rglob("results.json")
    res = json.loads(results.read_text())
    # as if written by a retaincl without the keys data.root and transform.train_hflip
    del res["hashed_config"]["data"]["root"], res["hashed_config"]["transform"]["train_hflip"]
    res["config_hash"] = "0123456789abcdef"
    results.write_text(json.dumps(res))
    capsys.readouterr()

    def never(self, task):
        raise AssertionError("a finished run was computed again")

    monkeypatch.setattr(METHODS.get("simplecil"), "fit", never)
    assert main(args()) == 0  # both keys at their defaults now: the same config, reused
    # a key the old run did not have, set to something else now: another config
    assert main(args("data.root=/elsewhere")) == 2
    assert "data.root" in error_line(capsys)


def test_another_config_never_continues_a_checkpoint(make_digits_config, monkeypatch):
    cls = METHODS.get("finetune")
    original = cls.fit

    def crash(self, task):
        if task.index == 2:
            raise KeyboardInterrupt
        return original(self, task)

    monkeypatch.setattr(cls, "fit", crash)
    with pytest.raises(KeyboardInterrupt):
        run_method(Session.create(make_digits_config(method="finetune", name="mix")), "finetune", progress=False)
    monkeypatch.setattr(cls, "fit", original)
    other = make_digits_config(method="finetune", name="mix", **{"methods.finetune.lr": 0.01})
    with pytest.raises(RunError, match=r"methods.finetune.*--overwrite"):
        run_method(Session.create(other), "finetune", progress=False)


def test_finished_methods_are_not_run_again_after_a_later_crash(make_digits_config, monkeypatch):
    cfg = make_digits_config(method=["simplecil", "finetune"], name="crash")
    finetune, simplecil = METHODS.get("finetune"), METHODS.get("simplecil")
    original = finetune.fit

    def crash(self, task):
        if task.index == 2:
            raise RuntimeError("simulated crash")
        return original(self, task)

    monkeypatch.setattr(finetune, "fit", crash)
    session = Session.create(cfg)
    first = run_method(session, "simplecil", progress=False)
    with pytest.raises(RuntimeError, match="simulated"):
        run_method(session, "finetune", progress=False)
    monkeypatch.setattr(finetune, "fit", original)

    def never(self, task):
        raise AssertionError("simplecil ran again")

    monkeypatch.setattr(simplecil, "fit", never)
    session = Session.create(cfg)
    again = run_method(session, "simplecil", progress=False)
    np.testing.assert_array_equal(again["accuracy_matrix"], first["accuracy_matrix"])
    assert again["reused"]
    resumed = run_method(session, "finetune", progress=False)
    assert resumed["resumed_from_task"] == 2
    # finished, but the results file was lost: rebuilt from the final checkpoint, no training
    os.unlink(first["results_path"])
    rebuilt = run_method(Session.create(cfg), "simplecil", progress=False)
    np.testing.assert_array_equal(rebuilt["accuracy_matrix"], first["accuracy_matrix"])
    # --fresh runs it again
    monkeypatch.undo()
    fresh = run_method(Session.create(cfg), "simplecil", resume=False, progress=False)
    np.testing.assert_array_equal(fresh["accuracy_matrix"], first["accuracy_matrix"])


def test_resume_with_another_thread_count_is_refused(make_digits_config, monkeypatch):
    cls = METHODS.get("joint")
    original = cls.fit

    def crash(self, task):
        if task.index == 2:
            raise KeyboardInterrupt
        return original(self, task)

    monkeypatch.setattr(cls, "fit", crash)
    with pytest.raises(KeyboardInterrupt):
        run_method(Session.create(make_digits_config(method="joint", name="thr", threads=1)), "joint", progress=False)
    monkeypatch.setattr(cls, "fit", original)
    try:
        with pytest.raises(RunError, match=r"1 thread.*2.*threads=1"):
            run_method(Session.create(make_digits_config(method="joint", name="thr", threads=2)), "joint", progress=False)
    finally:
        torch.set_num_threads(1)
    resumed = run_method(Session.create(make_digits_config(method="joint", name="thr", threads=1)), "joint", progress=False)
    assert resumed["resumed_from_task"] == 2


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_temporary_files_of_an_interrupted_write_are_removed(args, tmp_path, shared_cache, capsys):
    out = tmp_path / "runs" / "tmpclean" / "simplecil"
    out.mkdir(parents=True)
    host = socket.gethostname()
    stale = [
        out / f".checkpoint.pt.{host}.{dead_pid()}.abcd1234.tmp",  # killed in this machine
        out / ".results.json.k3j4h5.tmp",  # the older naming, from before pids were recorded
    ]
    alive = out / f".checkpoint.pt.{host}.{os.getpid()}.live.tmp"  # this process: in use
    other_host = out / f".checkpoint.pt.another-host.{os.getpid()}.abcd1234.tmp"  # maybe in use elsewhere
    for p in [*stale, alive, other_host]:
        p.write_bytes(b"partial")
    old = time.time() - 2 * 86400
    os.utime(stale[1], (old, old))
    assert main(args("name=tmpclean")) == 0
    for p in stale:
        assert not p.exists(), p
    assert alive.exists() and other_host.exists()
    assert (out / "results.json").exists()

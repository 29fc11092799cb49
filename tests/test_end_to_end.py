"""End-to-end runs on scikit-learn's digits: seconds, not minutes."""

import json

import numpy as np
import pytest

from retaincl.cli import main
from retaincl.engine.runner import Session, run_method
from retaincl.evaluation.metrics import incremental_accuracies


def test_four_methods_fill_the_matrix_and_results(make_digits_config):
    cfg = make_digits_config()
    session = Session.create(cfg)
    results = {m: run_method(session, m, progress=False) for m in cfg.method_names}
    for name, res in results.items():
        R = np.array(res["accuracy_matrix"])
        assert R.shape == (5, 5)
        assert np.isnan(R[np.triu_indices(5, 1)]).all() and not np.isnan(R[np.tril_indices(5)]).any()
        # metrics recomputed from the matrix and the test sizes
        sizes = res["test_sizes"]
        assert res["metrics"]["accuracy_per_step"] == pytest.approx(incremental_accuracies(R, sizes))
        assert np.array(res["correct_matrix"])[4].sum() / sum(sizes) == pytest.approx(res["metrics"]["last_accuracy"])
        on_disk = json.loads(open(res["results_path"]).read())
        assert on_disk["config"]["method"] == name and on_disk["seed"] == cfg.seed
        assert {"fit_seconds", "evaluation_seconds", "feature_extraction_seconds"} <= set(on_disk["timings"])
    last = {m: r["metrics"]["last_accuracy"] for m, r in results.items()}
    assert last["simplecil"] > 0.5 and last["ranpac"] > 0.5 and last["joint"] > last["finetune"]
    # finetune on each task only forgets: after the last task it predicts only the last classes
    assert results["finetune"]["metrics"]["forgetting"] > 0.5
    # train + test extracted at most once for all four methods (zero when the cache was warm)
    assert session.features.stats.extracted_samples in (0, 1797)
    assert session.features.stats.extracted_samples + session.features.stats.loaded_samples == 1797


def test_same_seed_same_numbers(make_digits_config):
    cfg = make_digits_config(method=["finetune", "ranpac"])
    a = [run_method(Session.create(cfg), m, resume=False, progress=False)["accuracy_matrix"] for m in cfg.method_names]
    b = [run_method(Session.create(cfg), m, resume=False, progress=False)["accuracy_matrix"] for m in cfg.method_names]
    np.testing.assert_array_equal(np.array(a), np.array(b))


def test_second_run_extracts_nothing_and_damaged_cache_is_rebuilt(make_digits_config, tmp_path):
    cfg = make_digits_config(method="simplecil", **{"cache.dir": str(tmp_path / "own-cache")})
    first = run_method(Session.create(cfg), "simplecil", progress=False)
    second = run_method(Session.create(cfg), "simplecil", resume=False, progress=False)
    assert first["feature_cache"]["extracted_samples"] == 1797
    assert second["feature_cache"]["extracted_samples"] == 0
    np.testing.assert_array_equal(second["accuracy_matrix"], first["accuracy_matrix"])
    entry = sorted((tmp_path / "own-cache").glob("*.npy"))[0]
    entry.write_bytes(entry.read_bytes()[:-100])  # a partial write
    third = run_method(Session.create(cfg), "simplecil", resume=False, progress=False)
    assert third["feature_cache"]["rebuilt_entries"] == 1
    np.testing.assert_array_equal(third["accuracy_matrix"], first["accuracy_matrix"])
    no_cache = make_digits_config(method="simplecil", **{"cache.enabled": False, "name": "nocache"})
    assert run_method(Session.create(no_cache), "simplecil", progress=False)["feature_cache"]["extracted_samples"] == 1797


@pytest.mark.parametrize("method", ["finetune", "joint", "ranpac"])
def test_resume_after_crash_gives_the_same_numbers(make_digits_config, monkeypatch, method):
    cfg = make_digits_config(method=method, name="resume")
    reference = run_method(Session.create(make_digits_config(method=method, name="ref")), method, progress=False)

    from retaincl.registry import METHODS

    cls = METHODS.get(method)
    original_fit = cls.fit

    def crash_on_task_3(self, task):
        if task.index == 3:
            raise KeyboardInterrupt("simulated crash")
        return original_fit(self, task)

    monkeypatch.setattr(cls, "fit", crash_on_task_3)
    with pytest.raises(KeyboardInterrupt):
        run_method(Session.create(cfg), method, progress=False)
    monkeypatch.setattr(cls, "fit", original_fit)
    resumed = run_method(Session.create(cfg), method, progress=False)
    assert resumed["resumed_from_task"] == 3
    np.testing.assert_allclose(resumed["accuracy_matrix"], reference["accuracy_matrix"])


def test_task_incremental_is_never_worse_than_class_incremental(make_digits_config):
    cil = run_method(Session.create(make_digits_config(method="simplecil")), "simplecil", progress=False)
    til = run_method(Session.create(make_digits_config(method="simplecil", **{"scenario.kind": "task"})), "simplecil", progress=False)
    # masking logits to the true task's classes can only turn wrong answers right
    assert (np.array(til["correct_matrix"]) >= np.array(cil["correct_matrix"])).all()
    assert til["metrics"]["last_accuracy"] > cil["metrics"]["last_accuracy"]


def test_domain_incremental_measures_the_full_matrix(make_digits_config):
    cfg = make_digits_config(method="finetune", **{"scenario.kind": "domain", "scenario.num_tasks": 3})
    res = run_method(Session.create(cfg), "finetune", progress=False)
    R = np.array(res["accuracy_matrix"])
    assert not np.isnan(R).any()
    assert res["initial_accuracy"] is not None and res["metrics"]["fwt"] is not None


def test_predictions_do_not_depend_on_the_batch(make_digits_config):
    import torch

    from retaincl.engine.runner import build_learner

    session = Session.create(make_digits_config())
    task = session.stream.tasks[0]
    for method in ("simplecil", "ranpac", "finetune"):
        learner = build_learner(session, method)
        learner.begin_task(task)
        learner.fit(task)
        preds = []
        for bs in (1, 64):
            learner.ctx.eval_batch_size = bs
            logits = learner.predict_logits(task.test.inputs())
            perm = torch.randperm(len(task.test), generator=torch.Generator().manual_seed(0))
            shuffled = learner.predict_logits(task.test.inputs().subset(perm.numpy()))
            torch.testing.assert_close(shuffled, logits[perm])
            preds.append(logits.argmax(1))
        assert torch.equal(preds[0], preds[1])


def test_cli_list_and_config_errors(capsys, tmp_path):
    assert main(["list"]) == 0
    assert "ranpac" in capsys.readouterr().out
    assert main(["run", "--set", "scenario.incremnt=3", "--set", f"output_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "scenario.incremnt" in err and "scenario.increment" in err
    assert main(["run", "--set", "backbone.checkpoint=/nope.safetensors", "--set", f"output_dir={tmp_path}"]) == 2
    assert "/nope.safetensors" in capsys.readouterr().err


def test_unsupported_scenario_is_refused_before_running(make_digits_config):
    from retaincl.engine.runner import RunError, build_learner
    from retaincl.registry import METHODS

    cls = METHODS.get("simplecil")
    session = Session.create(make_digits_config(method="simplecil", **{"scenario.kind": "domain"}))
    old = cls.supported_scenarios
    try:
        cls.supported_scenarios = ("class",)
        with pytest.raises(RunError, match="not 'domain'"):
            build_learner(session, "simplecil")
    finally:
        cls.supported_scenarios = old


def test_a_finished_methods_learner_is_freed_before_the_next_is_built(make_digits_config):
    """RanPAC's statistics hold its own bound ``project``: a reference cycle that would keep
    its tensors (W_rand, K, the features) alive into the next method until the collector's
    next full pass. The runner collects it before building the next learner."""
    import gc
    import weakref

    from retaincl.engine.runner import build_learner
    from retaincl.methods.ranpac import RanPAC

    session = Session.create(make_digits_config(method="ranpac"))
    gc.disable()  # no automatic pass may do the runner's work
    try:
        run_method(session, "ranpac", resume=False, progress=False)
        alive = [weakref.ref(o) for o in gc.get_objects() if type(o) is RanPAC]
        assert alive  # the cycle outlived run_method
        build_learner(session, "simplecil")
        assert all(ref() is None for ref in alive)
    finally:
        gc.enable()

"""A diverged run stops with a message naming the method, the task and where: never exit 0.

Divergence is forced through the config only (a huge learning rate), for the bounds
(finetune, joint, on frozen features and on an MLP trained end to end) and for one
method of each trained family on the packaged tiny ViT. The runner's check of the
learned state after each task stops a method whose loop does not check its loss.
"""

import pytest
import torch

from retaincl.cli import main


def run_args(tmp_path, shared_cache, method, backbone="efficientnet_lite0", *sets):
    out = ["run", "--quiet"]
    for s in (
        "data.source=digits", f"backbone.name={backbone}", "threads=1", "device=cpu", f"method={method}",
        "scenario.base=5", "scenario.increment=5", f"output_dir={tmp_path / 'runs'}",
        f"cache.dir={shared_cache}", *sets,
    ):
        out += ["--set", s]
    return out


def assert_diverged(capsys, method):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert method in lines[0] and "task 0" in lines[0] and "diverged" in lines[0], lines[0]


@pytest.mark.parametrize(
    "method, backbone, sets",
    [
        ("finetune", "efficientnet_lite0", ["backbone.image_size=32", "methods.finetune.lr=1e36", "methods.finetune.epochs=2"]),
        ("joint", "efficientnet_lite0", ["backbone.image_size=32", "methods.joint.lr=1e36", "methods.joint.epochs=2"]),
        ("finetune", "mlp", [
            "backbone.image_size=8", "methods.finetune.train_backbone=true", "methods.finetune.lr=1e30",
            "methods.finetune.backbone_lr=1e30", "methods.finetune.epochs=2",
        ]),
    ],
)
# A linear softmax head on frozen features survives lr=1e30 (its loss stays finite and it
# still classifies: 92.8% on task 0 here), so the bounds on frozen features get 1e36.
def test_linear_bounds_stop_when_they_diverge(tmp_path, shared_cache, capsys, method, backbone, sets):
    assert main(run_args(tmp_path, shared_cache, method, backbone, *sets)) == 2
    assert_diverged(capsys, method)


VIT = ["backbone.image_size=32", "cache.enabled=false"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "method, sets",
    [
        ("aper_adapter", ["methods.aper_adapter.lr=1e30", "methods.aper_adapter.epochs=1"]),
        ("ranpac_petl", ["methods.ranpac_petl.lr=1e30", "methods.ranpac_petl.epochs=1", "methods.ranpac_petl.projection_dim=100"]),
        ("vpt", ["methods.vpt.lr=1e30", "methods.vpt.epochs=1", "methods.vpt.prompt_length=2"]),
        ("slca", ["methods.slca.lr=1e30", "methods.slca.epochs=1", "methods.slca.ca_epochs=1", "methods.slca.milestones=[1]"]),
    ],
)
def test_vit_methods_stop_when_they_diverge(tmp_path, shared_cache, capsys, method, sets):
    assert main(run_args(tmp_path, shared_cache, method, "vit_tiny_retain", *VIT, *sets)) == 2
    assert_diverged(capsys, method)


def test_runner_checks_the_learned_state_of_a_method_that_does_not_check_its_loss(make_digits_config, monkeypatch):
    """A method whose loop never calls check_finite is still stopped after the task."""
    from retaincl.engine.runner import Session, run_method
    from retaincl.methods.base import DivergenceError
    from retaincl.registry import METHODS

    cls = METHODS.get("ranpac")
    original = cls.fit

    def poisoned_fit(self, task):
        original(self, task)
        if task.index == 1:
            self.weights[0, 0] = float("nan")

    monkeypatch.setattr(cls, "fit", poisoned_fit)
    session = Session.create(make_digits_config(method="ranpac", name="poison"))
    with pytest.raises(DivergenceError, match=r"ranpac.*task 1.*weights"):
        run_method(session, "ranpac", progress=False)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_infinite_logits_are_caught_at_evaluation(make_digits_config, monkeypatch, bad):
    from retaincl.engine.runner import Session, run_method
    from retaincl.methods.base import DivergenceError
    from retaincl.registry import METHODS

    cls = METHODS.get("simplecil")
    monkeypatch.setattr(cls, "logits_from_features", lambda self, f: torch.full((len(f), self.seen_classes), bad))
    session = Session.create(make_digits_config(method="simplecil", name=f"badlogits{bad}"))
    with pytest.raises(DivergenceError, match=r"simplecil.*NaN or infinite.*task 0"):
        run_method(session, "simplecil", progress=False)


def test_minus_infinity_is_a_mask_not_a_divergence(make_digits_config, monkeypatch):
    """Methods mask logits with -inf (task masks, DAP): the evaluation accepts it."""
    from retaincl.engine.runner import Session, run_method
    from retaincl.registry import METHODS

    cls = METHODS.get("simplecil")
    original = cls.logits_from_features

    def masked(self, f):
        logits = original(self, f)
        logits[:, -1] = float("-inf") if logits.shape[1] > 2 else logits[:, -1]
        return logits

    monkeypatch.setattr(cls, "logits_from_features", masked)
    res = run_method(Session.create(make_digits_config(method="simplecil", name="mask")), "simplecil", progress=False)
    assert res["metrics"]["last_accuracy"] > 0.3

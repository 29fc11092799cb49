"""Per-sample inference of the prompt methods (docs/design.md): shuffling the test set, or
evaluating with batch size 1 instead of 64, leaves every sample's logits and prediction
unchanged when no batch-level flag is on.

To cover another prompt method, add one line to ``METHODS``: its name and the
hyperparameters that keep the run small.
"""

import numpy as np
import pytest
import torch

from retaincl.engine.runner import Session, build_learner
from tests.conftest import digits_config

METHODS = {
    "l2p": {"epochs": 1, "batch_size": 64, "pool_size": 6, "top_n": 2, "length": 3},
    "dualprompt": {"epochs": 1, "batch_size": 64, "pool_size": 5},
    "codaprompt": {"epochs": 1, "batch_size": 64, "pool_size": 20, "num_tasks": 5, "length": 4},
}


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("per-sample")
    cfg = digits_config(
        tmp,
        method=list(METHODS),
        methods=METHODS,
        **{"backbone.name": "vit_tiny_retain", "backbone.image_size": 32, "cache.enabled": False},
    )
    return Session.create(cfg)


@pytest.mark.slow
@pytest.mark.parametrize("method", list(METHODS))
def test_predictions_do_not_depend_on_batch(session, method):
    learner = build_learner(session, method)
    assert learner.describe()["batch_level_inference"] is False
    for task in session.stream.tasks[:2]:  # two tasks: selection among several keys/prompts
        learner.begin_task(task)
        learner.fit(task)
        learner.end_task(task)
    inputs = [t.test.inputs() for t in session.stream.tasks[:2]]
    learner.ctx.eval_batch_size = 64
    reference = torch.cat([learner.predict_logits(x) for x in inputs])
    learner.ctx.eval_batch_size = 1
    one_by_one = torch.cat([learner.predict_logits(x) for x in inputs])
    learner.ctx.eval_batch_size = 64
    shuffled = []
    for x in inputs:
        perm = np.random.default_rng(0).permutation(len(x))
        out = learner.predict_logits(x.subset(perm))
        back = torch.empty_like(out)
        back[torch.as_tensor(perm)] = out
        shuffled.append(back)
    shuffled = torch.cat(shuffled)
    assert torch.equal(reference.argmax(1), one_by_one.argmax(1))
    assert torch.equal(reference.argmax(1), shuffled.argmax(1))
    # the same numbers up to float rounding of batched matrix products
    assert torch.allclose(reference, one_by_one, atol=1e-4, rtol=1e-4)
    assert torch.allclose(reference, shuffled, atol=1e-4, rtol=1e-4)

"""Every registered method: its checkpoint holds its whole learned state.

For each method, on a tiny stream (digits, the packaged tiny ViT; the packaged tiny
CLIP for the CLIP methods): learn tasks 0-1,
save the learner's state through a real checkpoint file (read back with
``weights_only=True``) with the global random state, then learn task 2 twice: once
in the same learner, once in a fresh learner restored from the checkpoint. The
predictions must be the same: a resumed run loses nothing and changes nothing.
"""

import dataclasses

import pytest
import torch

from retaincl.engine.checkpoint import load_checkpoint, save_checkpoint
from retaincl.engine.environment import rng_state, set_rng_state
from retaincl.engine.runner import Session, build_learner
from retaincl.registry import METHODS

FAST = {"epochs": 1, "ca_epochs": 1, "projection_dim": 200, "batch_size": 64}
SMALL = {
    "codaprompt": {"pool_size": 20, "num_tasks": 5},  # the tiny ViT's features are 96-d
    "proof": {"memory_size": 40},
    "zscl": {"heldout": "none", "reference_size": 64},
    "clip_finetune": {"heldout": "none"},
    "promptfusion": {"booster": "vit_tiny_retain", "booster_image_size": 32, "context_length": 3,
                     "image_prompt_length": 2, "vpt_prompt_length": 2, "memory_size": 40},
}


def fast_params(name: str) -> dict:
    fields = {f.name for f in dataclasses.fields(METHODS.get(name).Params)}
    return {k: v for k, v in FAST.items() if k in fields} | SMALL.get(name, {})


def needs_clip(name: str) -> bool:
    return METHODS.get(name).__module__.startswith("retaincl.methods.clip.")


@pytest.fixture(scope="module")
def sessions(tmp_path_factory):
    from retaincl.config import config_from_dict

    tmp = tmp_path_factory.mktemp("all-methods")
    built = {}

    def get(backbone: str) -> Session:
        if backbone not in built:
            built[backbone] = Session.create(config_from_dict({
                "data": {"source": "digits"},
                "scenario": {"kind": "class", "base": 2, "increment": 2},
                "backbone": {"name": backbone, "image_size": 32},
                "methods": {name: fast_params(name) for name in METHODS.names()},
                "cache": {"enabled": False},
                "output_dir": str(tmp),
                "quiet": True,
                "device": "cpu",
            }))
        return built[backbone]

    return get


def learn(learner, task):
    learner.begin_task(task)
    learner.fit(task)
    learner.end_task(task)


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS.names())
def test_checkpoint_round_trip_and_continue(sessions, method, tmp_path):
    session = sessions("clip_tiny_retain" if needs_clip(method) else "vit_tiny_retain")
    tasks = session.stream.tasks
    a = build_learner(session, method)
    for task in tasks[:2]:
        learn(a, task)
    save_checkpoint(tmp_path / "c.pt", {"learner": a.state_dict(), "rng": rng_state()})
    test = tasks[1].test.inputs()
    before = a.predict_logits(test)

    ckpt = load_checkpoint(tmp_path / "c.pt")
    b = build_learner(session, method)
    b.load_state_dict(ckpt["learner"])
    b.restore_tasks(tasks[:2])
    torch.testing.assert_close(b.predict_logits(test), before, atol=1e-5, rtol=1e-5)

    set_rng_state(ckpt["rng"])
    learn(a, tasks[2])
    set_rng_state(ckpt["rng"])
    learn(b, tasks[2])
    test = tasks[2].test.inputs()
    torch.testing.assert_close(b.predict_logits(test), a.predict_logits(test), atol=1e-4, rtol=1e-4)

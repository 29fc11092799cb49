"""Shared set-up of the CLIP method tests: sklearn digits, a randomly initialised tiny
CLIP (the mechanisms do not need meaningful weights; nothing downloads)."""

import torch

from retaincl.config import config_from_dict
from retaincl.engine.runner import Session, build_learner


def clip_session(tmp_path, pretrained: bool = False, **methods) -> Session:
    cfg = config_from_dict({
        "data": {"source": "digits"},
        "scenario": {"kind": "class", "base": 2, "increment": 2},
        "backbone": {"name": "clip_tiny_retain", "image_size": 32, "pretrained": pretrained},
        "methods": methods,
        "cache": {"enabled": False},
        "output_dir": str(tmp_path),
        "quiet": True,
        "device": "cpu",
        "seed": 3,
    })
    torch.manual_seed(0)
    return Session.create(cfg)


def make(session: Session, method: str, **params):
    session.cfg.methods[method] = params
    return build_learner(session, method)


def learn(learner, task) -> None:
    learner.begin_task(task)
    learner.fit(task)
    learner.end_task(task)


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

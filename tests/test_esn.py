"""ESN: the anchor energy alignment brings two candidates of very different logit scales
to the anchor; the temperature choice and the vote by hand; isolation (old candidates
and, by default, the prompts stay fixed); per-sample, class- and domain-incremental."""

from __future__ import annotations

import numpy as np
import torch

from retaincl.data.images import ArrayImageSet, TaskSplit
from retaincl.data.scenarios import Task
from retaincl.methods.mixtures.esn import (
    Candidate,
    ESNParams,
    candidate_loss,
    choose_by_energy,
    vote,
)
from tests.test_aper import learn, make_learner, random_tasks


def esn(**params):
    return make_learner("esn", num_classes=4, **{"epochs": 1, "batch_size": 4, "lr": 0.01, "prompt_length": 4, **params})


def softmin_energy(z: torch.Tensor) -> torch.Tensor:
    """By hand: -log sum_i exp(-z_i), the official training energy with beta = 1."""
    return -torch.log(torch.exp(-z).sum(dim=1))


def train_on_tokens(tokens: torch.Tensor, labels: torch.Tensor, p: ESNParams, offset: float) -> Candidate:
    """A candidate trained with the ESN loss; its logits start shifted by ``offset``, a
    shift cross-entropy cannot see (the softmax is invariant to it)."""
    g = torch.Generator().manual_seed(1)
    cand = Candidate(torch.zeros(1, 1, tokens.shape[-1]), num_heads=2, num_classes=2, mlp_ratio=0.5, generator=g)
    with torch.no_grad():
        cand.classifier.bias += offset
    opt = torch.optim.SGD(cand.parameters(), lr=0.01, momentum=0.9)
    for _ in range(400):
        loss = candidate_loss(cand(tokens), labels, p)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return cand


def test_energy_alignment_brings_two_candidates_of_different_levels_to_the_anchor():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(16) % 2
    tasks = {  # two tasks, two candidates whose logits start 30 apart
        "low": (torch.randn(16, 5, 8, generator=g) + 2.0 * labels[:, None, None], labels, 0.0),
        "high": (torch.randn(16, 5, 8, generator=g) - 2.0 * labels[:, None, None], labels, 30.0),
    }

    def energies(p: ESNParams) -> dict[str, float]:
        out = {}
        for k, (tokens, y, offset) in tasks.items():
            cand = train_on_tokens(tokens, y, p, offset)
            with torch.no_grad():
                out[k] = float(softmin_energy(cand(tokens)).mean())
        return out

    free = energies(ESNParams(align_weight=0.0))
    assert abs(free["low"] - free["high"]) > 20.0  # cross-entropy alone keeps them apart
    aligned = energies(ESNParams())  # the defaults: lambda 0.1, anchor -10
    for k, e in aligned.items():
        assert abs(e - (-10.0)) < 1.0, (k, e)
    assert abs(aligned["low"] - aligned["high"]) < 1.0


def test_the_learner_pulls_each_candidates_energy_towards_the_anchor():
    tasks = random_tasks()
    learner = esn(epochs=8, prompt_length=0)
    learn(learner, tasks[:2])
    with torch.no_grad():
        for k, t in enumerate(tasks[:2]):
            z = learner.candidates[k](learner.tokens(t.train.images(range(len(t.train)))))
            assert float(softmin_energy(z).mean()) < -4.0  # CE alone leaves it near -log 2


def test_vote_and_the_temperature_choice_by_hand():
    # candidate 0: logits [3.5, -10]; candidate 1: [v, v].
    # logsumexp(z/T): cand 0 ~ 3.5/T; cand 1 = v/T + log 2.  T = 0.001: cand 0 iff 3.5 > v;
    # T = 1: cand 1 iff v + log 2 > 3.5 (v = 3: 3.69 > 3.5).
    z0 = torch.tensor([[3.5, -10.0]] * 4)
    z1 = torch.tensor([[3.0] * 2, [3.0] * 2, [4.0] * 2, [4.0] * 2])
    picks = choose_by_energy([z0, z1], [0.001, 1.0])
    assert picks.tolist() == [[0, 1], [0, 1], [1, 1], [1, 1]]
    # votes: ties go to the smaller index; a majority wins
    assert vote(torch.tensor([[0, 1], [1, 1], [2, 1], [2, 2]]), 3).tolist() == [0, 1, 1, 2]
    assert vote(torch.tensor([[1, 0, 1]]), 2).tolist() == [1]
    # the learner's choice for a task: the temperature under which most of its images pick it
    learner = esn(temperatures=[0.001, 1.0])
    tasks = random_tasks()
    learn(learner, tasks[:2])
    learner.candidate_logits = lambda images: [z0[: len(images)], z1[: len(images)]]
    small = Task(1, [2, 3], TaskSplit(tasks[1].train.base, tasks[1].train.indices[:4], tasks[1].train.label_map), tasks[1].test, 2, 4)
    assert learner.pick_temperature(small) == 1.0  # 4 of 4 hits at T = 1, 2 of 4 at T = 0.001
    # at test time both chosen temperatures vote: samples 0, 1 tie (0 vs 1) and go to
    # candidate 0; samples 2, 3 go to candidate 1 (the latest temperature alone: all to 1)
    learner.chosen_temperatures = [0.001, 1.0]
    out = learner.logits_from_images(small.train.images())
    winners = [0 if torch.isfinite(out[i, :2]).all() else 1 for i in range(4)]
    assert winners == [0, 0, 1, 1]
    torch.testing.assert_close(out[0, :2], z0[0])


def test_prediction_is_the_winning_candidates_logits_per_sample():
    tasks = random_tasks()
    learner = esn(epochs=2)
    learn(learner, tasks[:2])
    learner.eval_mode()
    x = tasks[1].test.base.images(range(8))
    with torch.no_grad():
        zs = learner.candidate_logits(x)
        picks = choose_by_energy(zs, sorted(set(learner.chosen_temperatures)))
    winner = vote(picks, 2)
    out = learner.logits_from_images(x)
    for i, k in enumerate(winner.tolist()):
        lo, hi = learner.blocks[k]
        torch.testing.assert_close(out[i, lo:hi], zs[k][i])
        assert torch.isinf(out[i]).sum() == 2  # the other candidate's two classes
    single = torch.cat([learner.logits_from_images(x[i : i + 1]) for i in range(8)])
    torch.testing.assert_close(out, single, atol=1e-5, rtol=1e-5)


def test_old_candidates_and_first_task_prompts_stay_fixed():
    tasks = random_tasks()
    for mode in ("first_task", "every_task"):
        learner = esn(train_prompts=mode)
        p0 = learner.prompts.tokens.clone()
        learn(learner, tasks[:1])
        p1 = learner.prompts.tokens.clone()
        c0 = {k: v.clone() for k, v in learner.candidates[0].state_dict().items()}
        assert not torch.equal(p0, p1)  # the first task trains them
        learn(learner, tasks[1:2])
        assert all(torch.equal(v, c0[k]) for k, v in learner.candidates[0].state_dict().items())
        assert torch.equal(learner.prompts.tokens, p1) == (mode == "first_task")


def test_domain_incremental_candidates_cover_every_class():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 4)
    imgs = (rng.integers(0, 120, size=(16, 16, 16)) + 30 * labels[:, None, None]).astype(np.uint8)
    data = ArrayImageSet("rand", "train", imgs, labels)
    ident = np.arange(4)
    split = TaskSplit(data, np.arange(16), ident)
    tasks = [Task(t, [0, 1, 2, 3], split, split, 0, 4) for t in range(2)]
    learner = esn()
    learn(learner, tasks)
    assert learner.blocks == [(0, 4), (0, 4)]
    out = learner.logits_from_images(data.images(range(5)))
    assert out.shape == (5, 4) and torch.isfinite(out).all()

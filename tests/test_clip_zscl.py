"""ZSCL: the distillation target is the frozen initial CLIP, the distillation keeps the
reference similarities, and the weight ensemble is the running mean of the snapshots."""

import pytest
import torch
import torch.nn.functional as F
from clip_helpers import clip_session, learn, make, same, snapshot

import retaincl.methods.clip.zscl as zscl_module
from retaincl.methods.clip.zscl import distillation, merge_weights_

FAST = {"epochs": 1, "batch_size": 32, "lr": 2e-3, "warmup_steps": 2, "reference_size": 64, "heldout": "none"}


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    return clip_session(tmp_path_factory.mktemp("zscl"))


def test_merge_is_the_running_mean():
    """After merges n = 1, 2 of 3 then 5 into 1: (1 + 3) / 2 = 2, then (2 * 2 + 5) / 3 = 3,
    the mean of {1, 3, 5}."""
    avg = [torch.tensor([1.0, -2.0])]
    merge_weights_(avg, [torch.tensor([3.0, 0.0])], 1)
    torch.testing.assert_close(avg[0], torch.tensor([2.0, -1.0]))
    merge_weights_(avg, [torch.tensor([5.0, 5.0])], 2)
    torch.testing.assert_close(avg[0], torch.tensor([3.0, 1.0]))


def test_distillation_is_the_tempered_soft_cross_entropy():
    t, s = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    p = torch.softmax(t / 2, 1)
    want = -(p * torch.log_softmax(s / 2, 1)).sum() * 4
    torch.testing.assert_close(distillation(t, s, 2.0), want)


def test_weight_ensemble_leaves_the_mean_of_start_and_snapshots(session, monkeypatch):
    snapshots = []

    def recording(average, current, n):
        snapshots.append([c.detach().clone() for c in current])
        merge_weights_(average, current, n)

    monkeypatch.setattr(zscl_module, "merge_weights_", recording)
    learner = make(session, "zscl", **FAST, ensemble_every=3, distill_weight=0.0, distill_text_weight=0.0)
    task = session.stream.tasks[0]
    learner.begin_task(task)
    params = [q for n, q in learner.model.named_parameters() if n != "logit_scale"]
    start = [q.detach().clone() for q in params]
    learner.fit(task)
    steps = -(-len(task.train) // 32) + 1
    assert len(snapshots) == len(range(0, steps, 3)) >= 2
    for i, q in enumerate(params):
        want = torch.stack([start[i]] + [s[i] for s in snapshots]).mean(0)
        torch.testing.assert_close(q.detach(), want, atol=1e-6, rtol=1e-5)


def test_distillation_target_is_the_frozen_initial_clip(session):
    initial = snapshot(session.backbone.model)
    learner = make(session, "zscl", **FAST)
    t0, t1 = session.stream.tasks[:2]
    learn(learner, t0)
    assert not same(snapshot(learner.model), initial), "task 0 did not change the CLIP"
    learner.begin_task(t1)
    assert same(snapshot(learner.teacher.model), initial), "the teacher is not the initial CLIP"
    ref_images, captions = learner.reference()
    with torch.no_grad():
        ref_text = session.backbone.encode_text(captions, normalize=True)
        want = session.backbone.encode_image(ref_images[:8], normalize=True) @ ref_text.T
        got = learner.teacher.encode_image(ref_images[:8], normalize=True) @ ref_text.T
    torch.testing.assert_close(got, want)


def _reference_gap(learner, session):
    """Mean KL from the initial CLIP's image-to-text distributions on reference data."""
    images, captions = learner.reference()
    with torch.no_grad():
        text = session.backbone.encode_text(captions, normalize=True)
        p0 = F.log_softmax(session.backbone.encode_image(images, normalize=True) @ text.T * 50, dim=1)
        p = F.log_softmax(learner.clip.encode_image(images, normalize=True) @ text.T * 50, dim=1)
    return float(F.kl_div(p, p0, log_target=True, reduction="batchmean"))


def test_distillation_keeps_the_reference_similarities(session):
    """Same data, seed and steps: with the distillation loss the CLIP stays closer to the
    initial one on the reference data than plain fine-tuning does."""
    common = dict(FAST, weight_ensemble=False, lr=5e-3)
    gaps = {}
    for name, weight in (("zscl", 5.0), ("clip_finetune", 0.0)):
        learner = make(session, name, **common, distill_weight=weight, distill_text_weight=weight)
        learn(learner, session.stream.tasks[0])
        gaps[name] = _reference_gap(learner, session)
    assert gaps["zscl"] < 0.5 * gaps["clip_finetune"], gaps


def test_heldout_zero_shot_is_recorded_before_and_after_each_task(session):
    learner = make(session, "zscl", **dict(FAST, heldout="letters", heldout_per_class=2))
    for task in session.stream.tasks[:2]:
        learn(learner, task)
    record = learner.describe()["heldout_zero_shot"]
    assert len(record) == 3 and all(0.0 <= a <= 1.0 for a in record)

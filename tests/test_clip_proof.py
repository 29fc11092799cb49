"""Zero-shot CLIP and PROOF: the inference rules against hand-written forward passes,
projection freezing, prototypes, exemplars, per-sample inference."""

import math

import pytest
import torch
import torch.nn.functional as F
from clip_helpers import clip_session, learn, make, same, snapshot

from retaincl.memory import herding_select


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    return clip_session(tmp_path_factory.mktemp("proof"))


def test_zero_shot_logits_are_clip_cosines_with_the_prompt_ensemble(session):
    learner = make(session, "zeroshot_clip", templates=["a photo of a {}.", "a drawing of the {}."])
    task = session.stream.tasks[0]
    learner.begin_task(task)
    learner.fit(task)
    images = task.test.images(range(4))
    clip, tok = session.backbone.model, session.backbone.tokenizer
    with torch.no_grad():
        img = F.normalize(clip.encode_image(session.backbone.preprocess(images)), dim=-1)
        rows = []
        for name in ["zero", "one"]:  # digits' first classes, class order 0..9
            emb = F.normalize(clip.encode_text(tok([f"a photo of a {name}.", f"a drawing of the {name}."])), dim=-1)
            rows.append(F.normalize(emb.mean(0), dim=0))
        want = clip.logit_scale.exp() * img @ torch.stack(rows).T
    got = learner.logits_from_features(session.features.get(task.test)[:4])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def _hand_eq9(learner, feats):
    """PROOF's eq. 9 written out: projections, attention by hand, three matchings."""
    head, n = learner.head, learner.seen_classes
    raw = learner.raw_text(n)  # frozen CLIP text embeddings [class, template, d]

    def p_img(x):
        return sum(lin.weight @ x.T + lin.bias[:, None] for lin in head.proj_img).T

    def p_txt(x):
        return sum(x @ lin.weight.T + lin.bias for lin in head.proj_txt)

    text = F.normalize(F.normalize(p_txt(raw), dim=-1).mean(1), dim=-1)
    img = p_img(feats)
    protos = F.normalize(p_img(learner.prototypes[:n]), dim=-1)
    ctx = torch.cat(list(head.context))
    att = head.fusion
    out = []
    for b in range(len(feats)):
        seq = torch.cat([img[b : b + 1], text, protos, ctx])
        q, k, v = seq @ att.q.weight.T, seq @ att.k.weight.T, seq @ att.v.weight.T
        a = torch.softmax(q @ k.T / math.sqrt(seq.shape[1]), dim=-1)
        o = F.layer_norm(a @ v @ att.out.weight.T + att.out.bias + seq, (seq.shape[1],), att.norm.weight, att.norm.bias)
        z, t, p = o[0], o[1 : 1 + n], o[1 + n : 1 + 2 * n]
        out.append(t @ z + p @ z + text @ img[b])
    return torch.stack(out)


def test_proof_inference_is_eq9_and_per_sample(session):
    learner = make(session, "proof", epochs=1, memory_size=20)
    for task in session.stream.tasks[:2]:
        learn(learner, task)
    feats = session.features.get(session.stream.tasks[1].test)[:6]
    with torch.no_grad():
        got = learner.logits_from_features(feats)
        torch.testing.assert_close(got, _hand_eq9(learner, feats), atol=1e-4, rtol=1e-4)
        alone = torch.cat([learner.logits_from_features(feats[i : i + 1]) for i in range(len(feats))])
    torch.testing.assert_close(alone, got, atol=1e-5, rtol=1e-5)
    assert learner.describe()["batch_level_inference"] is False


def test_official_batch_mean_fusion_is_batch_level_and_reported(session):
    learner = make(session, "proof", epochs=1, memory_size=20, batch_mean_fusion=True)
    learn(learner, session.stream.tasks[0])
    feats = session.features.get(session.stream.tasks[0].test)[:6]
    with torch.no_grad():
        batch = learner.logits_from_features(feats)
        alone = torch.cat([learner.logits_from_features(feats[i : i + 1]) for i in range(len(feats))])
    assert not torch.allclose(batch, alone, atol=1e-4)
    assert learner.describe()["batch_level_inference"] is True


def _projection_states(learner):
    return [snapshot(p) for p in learner.head.proj_img], [snapshot(p) for p in learner.head.proj_txt]


@pytest.mark.parametrize("variant", ["paper", "official_text"])
def test_old_projections_are_frozen(session, variant):
    extra = {"train_old_text_projections": True} if variant == "official_text" else {}
    learner = make(session, "proof", epochs=2, memory_size=20, lr=0.05, **extra)
    t0, t1 = session.stream.tasks[:2]
    learn(learner, t0)
    img0, txt0 = _projection_states(learner)
    learner.begin_task(t1)
    new_img_init = snapshot(learner.head.proj_img[1])
    learner.fit(t1)
    learner.end_task(t1)
    img1, txt1 = _projection_states(learner)
    assert same(img1[0], img0[0]), "the first task's image projection changed in the second task"
    assert not same(img1[1], new_img_init), "the new image projection did not learn"
    if variant == "paper":
        assert same(txt1[0], txt0[0]), "the first task's text projection changed in the second task"
    else:  # the official code keeps every text projection trainable
        assert not same(txt1[0], txt0[0])
    assert not learner.head.context[0].requires_grad and learner.head.context[1].requires_grad


def test_prototypes_and_herded_exemplars(session):
    learner = make(session, "proof", epochs=1, memory_size=12)
    t0, t1 = session.stream.tasks[:2]
    learn(learner, t0)
    feats, labels = learner.features_and_labels(t0.train)
    normed = F.normalize(feats, dim=-1)
    for c in t0.classes:
        torch.testing.assert_close(learner.prototypes[c], normed[labels == c].mean(0))
        chosen = herding_select(normed[labels == c], 6)  # 12 // 2 classes
        torch.testing.assert_close(learner.memory_features[learner.memory_labels == c], feats[labels == c][chosen])
    first = {c: learner.memory_features[learner.memory_labels == c][:3].clone() for c in t0.classes}
    learn(learner, t1)
    assert torch.bincount(learner.memory_labels).tolist() == [3, 3, 3, 3]  # 12 // 4 classes
    for c in t0.classes:  # old classes keep their first exemplars in herding order
        torch.testing.assert_close(learner.memory_features[learner.memory_labels == c], first[c])

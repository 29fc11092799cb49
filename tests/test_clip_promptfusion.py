"""PromptFusion: the fused logits, the learned fusion weight, CoOp contexts (class
specific, frozen after their task) and the weight mask of the loss."""

import pytest
import torch
import torch.nn.functional as F
from clip_helpers import clip_session, learn, make

SMALL = {
    "epochs": 1, "batch_size": 32, "booster": "vit_tiny_retain", "booster_image_size": 32,
    "context_length": 3, "image_prompt_length": 2, "vpt_prompt_length": 2, "memory_size": 40,
}


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    return clip_session(tmp_path_factory.mktemp("promptfusion"))


def test_logits_are_sigmoid_lambda_mix_of_booster_and_stabiliser(session):
    learner = make(session, "promptfusion", **SMALL)
    task = session.stream.tasks[0]
    learn(learner, task)
    images = task.test.images(range(5))
    with torch.no_grad():
        learner.state.lambda_.fill_(-0.4)
        w = 1 / (1 + torch.exp(torch.tensor(0.4)))
        text = learner.text_features(task.classes, learner.state.contexts[task.classes])
        want = w * learner.vit_logits(images, 2) + (1 - w) * learner.clip_logits(images, text)
        got = learner.logits_from_images(images)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("learned", [True, False])
def test_fusion_weight_is_learned(session, learned):
    learner = make(session, "promptfusion", **SMALL, lr=0.05, learn_lambda=learned)
    learn(learner, session.stream.tasks[0])
    moved = abs(float(learner.state.lambda_.detach()) - 1.0) > 1e-4
    assert moved == learned


def test_context_tokens_replace_the_placeholders(session):
    """With the contexts set to the embedding of "X", the text features are CLIP's own
    encoding of the placeholder prompt "X X X <name>.", computed from token ids."""
    learner = make(session, "promptfusion", **SMALL)
    clip = session.backbone
    x_embed = clip.token_embeddings(clip.tokenize(["X"]))[0, 1]
    contexts = x_embed.expand(2, 3, -1)
    with torch.no_grad():
        got = learner.text_features([0, 1], contexts)
        want = F.normalize(clip.model.encode_text(clip.tokenizer(["X X X zero.", "X X X one."])), dim=-1)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_old_contexts_stay_frozen_and_new_ones_learn(session):
    learner = make(session, "promptfusion", **SMALL, lr=0.05)
    t0, t1 = session.stream.tasks[:2]
    learn(learner, t0)
    old = learner.state.contexts[t0.classes].clone()
    learner.begin_task(t1)
    init = learner.ctx_new.detach().clone()
    learner.fit(t1)
    learner.end_task(t1)
    torch.testing.assert_close(learner.state.contexts[t0.classes], old, rtol=0, atol=0)
    assert not torch.allclose(learner.state.contexts[t1.classes], init)
    assert len(learner.memory) == 40 and torch.bincount(learner.memory[:, 0]).tolist() == [10, 10, 10, 10]


@pytest.mark.parametrize("masked", [True, False])
def test_weight_mask_reweights_the_log_likelihood(session, masked):
    learner = make(session, "promptfusion", **SMALL, weight_mask=masked)
    t0, t1 = session.stream.tasks[:2]
    learn(learner, t0)
    learner.begin_task(t1)
    with torch.no_grad():
        learner.beta.copy_(torch.tensor([0.5, -1.0]))
        learner.state.alpha[:2] = torch.tensor([2.0, 0.0])
        learner._frozen_text = learner.text_features(t0.classes, learner.state.contexts[t0.classes])
        images = t1.train.images(range(4))
        labels = torch.tensor([0, 1, 2, 3])
        theta = 1 / 2  # task 1
        w = torch.tensor([theta / torch.sigmoid(torch.tensor(0.5)), theta / torch.sigmoid(torch.tensor(-1.0)),
                          torch.sigmoid(torch.tensor(2.0)), torch.sigmoid(torch.tensor(0.0))])
        logp = F.log_softmax(learner.logits_from_images(images), dim=1)  # contexts of t1 = ctx_new
        nll = -logp[torch.arange(4), labels]
        want = (w * nll).mean() if masked else nll.mean()
        got = learner.loss(images, labels, t1)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)

"""L2P's defining mechanisms on small tensors: top-N key selection by cosine, the pull
loss value, the prompt-token head, class masking, and the opt-in batchwise selection."""

import math

import pytest
import torch
import torch.nn.functional as F

from retaincl.backbones.vit import ViTBackbone
from retaincl.config import BackboneConfig, method_params
from retaincl.methods.base import LearnerContext
from retaincl.methods.l2p import L2P
from retaincl.methods.prompt_common import majority_indices, mask_to_classes, pull_loss, top_n_keys


def make_l2p(**params) -> L2P:
    bb = ViTBackbone(BackboneConfig(name="vit_tiny_retain", image_size=32, pretrained=False))
    ctx = LearnerContext(bb, None, torch.device("cpu"), seed=0, num_classes=4, scenario="class", quiet=True)
    return L2P(method_params("l2p", params), ctx)


def test_top_n_by_cosine_and_pull_loss_by_hand():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    keys = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 5.0], [-1.0, 0.0], [2.0, -1.0]])
    idx, cos = top_n_keys(q, keys, 2)
    # q0: cos = [1, 1/sqrt2, 0, -1, 2/sqrt5] -> keys 0, 4; q1: [0, 1/sqrt2, 1, 0, -1/sqrt5] -> keys 2, 1
    assert idx.tolist() == [[0, 4], [2, 1]]
    assert torch.allclose(cos, torch.tensor([[1.0, 2 / math.sqrt(5)], [1.0, 1 / math.sqrt(2)]]))
    expected = ((1 - 1) + (1 - 2 / math.sqrt(5)) + (1 - 1) + (1 - 1 / math.sqrt(2))) / 2
    assert pull_loss(cos).item() == pytest.approx(expected, abs=1e-6)


def test_learner_selects_top_n_prompts_and_weights_pull_term():
    torch.manual_seed(0)
    learner = make_l2p(pool_size=4, top_n=2, length=3, pull_weight=0.1)
    D = learner.dim
    with torch.no_grad():
        learner.pool.keys.copy_(torch.eye(4, D))  # key i = e_i
    q = torch.zeros(1, D)
    q[0, :3] = torch.tensor([3.0, 2.0, 1.0])  # cos with keys = [3, 2, 1, 0] / sqrt(14)
    images = torch.rand(1, 3, 32, 32)
    idx, _ = learner.select(q)
    assert idx.tolist() == [[0, 1]]
    logits, aux = learner.train_outputs(images, q, task=None)
    assert aux.item() == pytest.approx(0.1 * ((1 - 3 / math.sqrt(14)) + (1 - 2 / math.sqrt(14))), abs=1e-6)
    # head reads the mean output at the N * L_p prompt positions of [CLS, P_0, P_1, patches]
    prompts = torch.cat([learner.pool.prompts[0], learner.pool.prompts[1]])[None]
    tokens = learner.backbone.vit.forward_tokens(learner.backbone.preprocess(images), prompts=prompts)
    assert tokens.num_prompts == 6
    assert torch.allclose(logits, learner.head(tokens.all[:, 1:7].mean(1)), atol=1e-6)


def test_train_mask_keeps_current_classes_only():
    logits = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    masked = mask_to_classes(logits, [2, 3])
    assert torch.isinf(masked[0, :2]).all()
    # CE of label 3 over the two current logits (3, 4): log(1 + e^-1)
    assert F.cross_entropy(masked, torch.tensor([3])).item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)


def test_batchwise_majority_is_opt_in_and_reported():
    chosen = majority_indices(torch.tensor([[0, 1], [1, 2], [1, 0]]), 2, 4)  # counts 2, 3, 1, 0
    assert chosen.tolist() == [1, 0]
    assert majority_indices(torch.tensor([[3, 2]]), 2, 4).tolist() == [2, 3]  # tie -> smaller index
    assert make_l2p().describe()["batch_level_inference"] is False
    learner = make_l2p(pool_size=4, top_n=1, batchwise_prompt=True)
    assert learner.describe()["batch_level_inference"] is True
    with torch.no_grad():
        learner.pool.keys.copy_(torch.eye(4, learner.dim))
    q = torch.eye(3, learner.dim)[[0, 0, 2]]  # own choices 0, 0, 2 -> batch majority 0 for all
    assert learner.select(q)[0].tolist() == [[0], [0], [0]]

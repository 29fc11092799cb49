"""CODA-Prompt's defining mechanisms: attended-query weights, Gram-Schmidt init of new
components against the old ones, the orthogonality penalty, and frozen old components
(zero gradients, unchanged values) once their task has ended."""

import math
from types import SimpleNamespace

import pytest
import torch

from retaincl.backbones.vit import ViTBackbone
from retaincl.config import BackboneConfig, ConfigError, DataConfig, ScenarioConfig, method_params
from retaincl.data import build_stream, load_source
from retaincl.methods.base import LearnerContext
from retaincl.methods.codaprompt import CODAPrompt, coda_weights
from retaincl.methods.prompt_common import gram_schmidt_, ortho_penalty


def make_coda(**params) -> CODAPrompt:
    bb = ViTBackbone(BackboneConfig(name="vit_tiny_retain", image_size=32, pretrained=False))
    ctx = LearnerContext(bb, None, torch.device("cpu"), seed=0, num_classes=10, scenario="class", quiet=True)
    return CODAPrompt(method_params("codaprompt", params), ctx)


def task(index: int) -> SimpleNamespace:
    return SimpleNamespace(index=index, classes=[2 * index, 2 * index + 1], known_classes=2 * index, total_classes=2 * index + 2)


def test_weights_are_cosine_of_attended_query_with_keys():
    q = torch.tensor([[1.0, 2.0]])
    A = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    K = torch.tensor([[2.0, 4.0], [0.0, 1.0], [1.0, 1.0]])
    # q*A = [1,2], [1,0], [0,2]; cos with K: 1, 0, 1/sqrt2
    assert torch.allclose(coda_weights(q, K, A), torch.tensor([[1.0, 0.0, 1 / math.sqrt(2)]]), atol=1e-6)


def test_gram_schmidt_new_rows_orthonormal_old_rows_untouched():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(6, 8, generator=g)
    v[:3] = torch.linalg.qr(v[:3].T).Q.T  # 3 orthonormal "old" components
    old = v[:3].clone()
    gram_schmidt_(v, 3, 6, g)
    assert torch.equal(v[:3], old)
    assert torch.allclose(v @ v.T, torch.eye(6), atol=1e-5)
    with pytest.raises(ValueError, match="do not fit"):
        gram_schmidt_(torch.zeros(5, 4), 0, 5)


def test_ortho_penalty_by_hand():
    assert ortho_penalty(torch.eye(3)).item() == 0.0
    # B B^T - I = [[0, 1], [1, 0]] -> mean of squares 2/4
    assert ortho_penalty(torch.tensor([[1.0, 0.0], [1.0, 0.0]])).item() == pytest.approx(0.5)


def test_components_init_orthogonal_per_task():
    learner = make_coda(pool_size=20, num_tasks=5, length=4)
    learner.begin_task(task(0))
    learner.begin_task(task(1))  # components 4:8 orthogonal to 0:4
    pool = learner.pool
    for li in range(len(learner.params.layers)):
        for B in (pool.K[li, :8], pool.A[li, :8], pool.P[li, :8].reshape(8, -1)):
            assert torch.allclose(B @ B.T, torch.eye(8), atol=1e-5)
        assert pool.K[li, 8:].abs().sum() == 0  # later tasks' components not drawn yet


@pytest.mark.slow
def test_old_components_get_zero_gradient_and_stay_fixed():
    source = load_source(DataConfig(source="digits"))
    stream = build_stream(ScenarioConfig(kind="class", base=2, increment=2), source)
    learner = make_coda(pool_size=10, num_tasks=5, length=4, epochs=1, batch_size=64, ortho_weight=0.1)
    m = learner.per_task
    first = stream.tasks[0]
    learner.begin_task(first)
    learner.end_task(first)  # freezing depends on the task boundary, not on what was learned
    second = stream.tasks[1]
    learner.begin_task(second)
    before = {k: v.detach().clone() for k, v in learner.pool.named_parameters()}
    images = second.train.images(range(8))
    labels = torch.as_tensor(second.train.targets[:8])
    loss = learner.training_loss(images, learner.queries(images), labels, second)
    learner.pool.zero_grad(set_to_none=True)
    loss.backward()
    for name, p in learner.pool.named_parameters():
        assert torch.count_nonzero(p.grad[:, :m]) == 0, name  # task 0's components: frozen
        assert torch.count_nonzero(p.grad[:, m : 2 * m]) > 0, name  # task 1's: trained
        assert torch.count_nonzero(p.grad[:, 2 * m :]) == 0, name  # future: unused
    learner.fit(second)
    for name, p in learner.pool.named_parameters():
        assert torch.equal(p[:, :m], before[name][:, :m]), name
        assert not torch.equal(p[:, m : 2 * m], before[name][:, m : 2 * m]), name


def test_too_many_components_for_the_feature_width_is_a_clear_error():
    with pytest.raises(ConfigError, match="pool_size"):
        make_coda(pool_size=100, num_tasks=10)  # 96-d tiny ViT

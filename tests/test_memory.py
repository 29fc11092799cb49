"""Exemplar memories: reservoir uniformity, herding order, ring buffers, budgets, state."""

import io

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from retaincl.memory import HerdingMemory, ReservoirMemory, TaskRingMemory, capacity, herding_select


def rows(values, task=0):
    v = torch.as_tensor(values, dtype=torch.float32)
    return {"x": v[:, None], "y": torch.zeros(len(v), dtype=torch.long), "task": torch.full((len(v),), task)}


def test_reservoir_keeps_every_seen_sample_with_equal_probability():
    # 20 samples offered in batches of 4 to a memory of 5, 1500 independent streams:
    # each sample must be kept with probability 5/20 (Algorithm R), whatever its position.
    n, cap, trials = 20, 5, 1500
    gen = torch.Generator().manual_seed(0)
    counts = np.zeros(n)
    for _ in range(trials):
        mem = ReservoirMemory(cap)
        for lo in range(0, n, 4):
            mem.add(rows(range(lo, lo + 4)), gen)
        assert len(mem) == cap and mem.seen == n
        counts[mem.fields["x"].flatten().long().numpy()] += 1
    expected = trials * cap / n  # 375
    sd = np.sqrt(trials * (cap / n) * (1 - cap / n))  # 16.8
    assert np.all(np.abs(counts - expected) < 5 * sd)
    assert chisquare(counts).pvalue > 1e-3
    # the first and last samples are not favoured: both within 3 sd
    assert abs(counts[0] - expected) < 3 * sd and abs(counts[-1] - expected) < 3 * sd


def test_reservoir_fills_in_order_before_replacing():
    mem = ReservoirMemory(3)
    mem.add(rows([7, 8]), torch.Generator().manual_seed(0))
    assert mem.fields["x"].flatten().tolist() == [7, 8]


def test_loss_aware_reservoir_replaces_low_loss_samples_first():
    gen = torch.Generator().manual_seed(0)
    mem = ReservoirMemory(2, loss_aware=True)
    first = rows([0, 1]) | {"score": torch.tensor([1e-4, 10.0])}
    mem.add(first, gen)
    kept_hard = 0
    for i in range(200):
        mem2 = ReservoirMemory(2, loss_aware=True)
        mem2.load_state_dict(mem.state_dict())
        mem2.add(rows([2 + i]) | {"score": torch.tensor([5.0])}, gen)
        kept_hard += int(1.0 in mem2.fields["x"].flatten().tolist())
    assert kept_hard == 200  # weights 1/(1e-4) vs 1/10: the easy sample is the one replaced


def test_herding_order_worked_by_hand():
    # 1-D features, class mean 5.1. k=1: 5.5 is closest; k=2: (5.5+4)/2=4.75 beats 5.75;
    # k=3: (9.5+6)/3=5.17; k=4: (15.5+0)/4=3.875 beats (15.5+10)/4=6.375; k=5: 10.
    feats = torch.tensor([[0.0], [10.0], [4.0], [6.0], [5.5]])
    assert herding_select(feats, 5).tolist() == [4, 2, 3, 0, 1]
    assert herding_select(feats, 2).tolist() == [4, 2]


def test_herding_running_mean_is_closest_at_every_step():
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(30, 4, generator=g)
    chosen = herding_select(feats, 10).tolist()
    mu = feats.mean(0)
    for k in range(1, 11):
        prefix = feats[chosen[: k - 1]].sum(0)
        dists = [float(((mu - (prefix + feats[i]) / k) ** 2).sum()) for i in range(30) if i not in chosen[: k - 1]]
        assert float(((mu - (prefix + feats[chosen[k - 1]]) / k) ** 2).sum()) == pytest.approx(min(dists))


def test_herding_memory_is_class_balanced_and_reduces_by_priority():
    feats = torch.tensor([[0.0], [10.0], [4.0], [6.0], [5.5], [100.0], [101.0], [103.0]])
    labels = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1])
    batch = {"x": feats, "y": labels, "task": torch.zeros(8, dtype=torch.long)}
    mem = HerdingMemory(3)
    mem.consolidate(batch, lambda x: x, per_class=3)
    # embed is normalised inside (iCaRL): 1-D positive features all become 1.0 except 0 -> 0,
    # so check sizes per class and that reduction keeps the first exemplars of each class.
    assert torch.bincount(mem.fields["y"]).tolist() == [3, 3]
    first_of_each = {c: mem.fields["x"][mem.fields["y"] == c][0].item() for c in (0, 1)}
    mem.set_per_class(1)
    assert torch.bincount(mem.fields["y"]).tolist() == [1, 1]
    assert {c: mem.fields["x"][mem.fields["y"] == c][0].item() for c in (0, 1)} == first_of_each


def test_ring_buffer_keeps_the_last_samples_of_each_task():
    mem = TaskRingMemory(3)
    mem.add(rows(range(7), task=0))
    assert sorted(mem.fields["x"].flatten().tolist()) == [4, 5, 6]
    mem.add(rows([50, 51], task=1))
    mem.set_per_task(2)  # a new task under a fixed total budget: old rings shrink, newest kept
    assert sorted(mem.rows_of_task(0)["x"].flatten().tolist()) == [5, 6]
    mem.add(rows([7], task=0))  # overwrites the oldest sample of task 0 (5)
    assert sorted(mem.rows_of_task(0)["x"].flatten().tolist()) == [6, 7]
    assert sorted(mem.rows_of_task(1)["x"].flatten().tolist()) == [50, 51]


def test_budgets():
    assert capacity(200, "total", seen_classes=6, tasks_seen=3) == 200
    assert capacity(20, "per_class", seen_classes=6, tasks_seen=3) == 120
    assert capacity(256, "per_task", seen_classes=10, tasks_seen=3) == 768


@pytest.mark.parametrize("mem", [ReservoirMemory(4), TaskRingMemory(2), HerdingMemory(2)])
def test_memory_state_survives_weights_only_load(mem):
    gen = torch.Generator().manual_seed(0)
    batch = rows([1, 2, 3]) | {"logits": torch.randn(3, 10)}
    if isinstance(mem, HerdingMemory):
        mem.consolidate(batch, lambda x: x, per_class=2)
    else:
        mem.add(batch, gen)
    buf = io.BytesIO()
    torch.save(mem.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    other = type(mem)(0)
    other.load_state_dict(state)
    assert all(torch.equal(other.fields[k], mem.fields[k]) for k in mem.fields)
    assert other.state_dict().keys() == mem.state_dict().keys()

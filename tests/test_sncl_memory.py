"""SNCL's loss-aware reservoir (LARS): the victim rule worked by hand, the replacement
frequencies it implies, Algorithm R's admission, score refresh and plain-data state."""

import io

import numpy as np
import pytest
import torch

from retaincl.memory.loss_aware import LossAwareReservoir, victim_probabilities


def rows(values, scores):
    v = torch.as_tensor(values, dtype=torch.float32)
    return {
        "x": v[:, None],
        "y": torch.zeros(len(v), dtype=torch.long),
        "task": torch.zeros(len(v), dtype=torch.long),
        "score": torch.as_tensor(scores, dtype=torch.float32),
    }


def test_victim_probabilities_worked_by_hand():
    # losses 0, 1, 2, 3: normalised negative loss (3 - s) / 3 = 1, 2/3, 1/3, 0; over their
    # sum 2: 1/2, 1/3, 1/6, 0. The hardest sample is never the victim.
    p = victim_probabilities(torch.tensor([0.0, 1.0, 2.0, 3.0]))
    torch.testing.assert_close(p, torch.tensor([1 / 2, 1 / 3, 1 / 6, 0.0], dtype=torch.float64))
    # all equal: uniform
    torch.testing.assert_close(victim_probabilities(torch.full((4,), 0.7)), torch.full((4,), 0.25, dtype=torch.float64))


@pytest.mark.parametrize("loss_aware", [True, False])
def test_replaced_slot_follows_the_loss(loss_aware):
    # a full memory with losses 0, 1, 2, 3 receives a new sample that Algorithm R admits
    # (capacity 4, 4 seen: admitted with probability 4/5); over many trials the slot it
    # lands in must follow LARS (1/2, 1/3, 1/6, 0), or be uniform without loss-awareness
    gen = torch.Generator().manual_seed(0)
    base = LossAwareReservoir(4, loss_aware=loss_aware)
    base.add(rows([0, 1, 2, 3], [0.0, 1.0, 2.0, 3.0]), gen)
    hits, admitted = np.zeros(4), 0
    for _ in range(3000):
        mem = LossAwareReservoir(4)
        mem.load_state_dict(base.state_dict())
        mem.add(rows([9], [1.5]), gen)
        new = (mem.fields["x"].flatten() == 9).nonzero().flatten()
        if len(new):
            admitted += 1
            hits[int(new[0])] += 1
    assert abs(admitted / 3000 - 0.8) < 0.03
    freq = hits / admitted
    expected = np.array([1 / 2, 1 / 3, 1 / 6, 0.0]) if loss_aware else np.full(4, 0.25)
    assert np.abs(freq - expected).max() < 0.03, freq


def test_refreshed_scores_change_the_victim():
    # a sample stored with a high loss is protected; once replay finds it easy (score
    # refreshed to 0), it becomes the most likely victim
    gen = torch.Generator().manual_seed(0)
    mem = LossAwareReservoir(3)
    mem.add(rows([0, 1, 2], [5.0, 1.0, 1.0]), gen)
    assert victim_probabilities(mem.fields["score"])[0] == 0.0
    idx, batch = mem.sample_indexed(3, gen)
    assert sorted(idx.tolist()) == [0, 1, 2] and set(batch) == {"x", "y", "task", "score"}
    mem.update_scores(torch.tensor([0]), torch.tensor([0.0]))
    assert mem.fields["score"].tolist() == [0.0, 1.0, 1.0]
    assert victim_probabilities(mem.fields["score"])[0] == 1.0


def test_fills_in_order_then_admits_with_reservoir_probability():
    gen = torch.Generator().manual_seed(1)
    kept = 0
    for _ in range(2000):
        mem = LossAwareReservoir(2)
        mem.add(rows([0, 1], [1.0, 1.0]), gen)
        assert mem.fields["x"].flatten().tolist() == [0, 1]
        mem.add(rows([2, 3], [1.0, 1.0]), gen)
        kept += int((mem.fields["x"] == 3).any())
    # the 4th sample offered (n = 3 seen before it) enters with probability 2 / 4
    assert abs(kept / 2000 - 0.5) < 0.04
    with pytest.raises(ValueError, match="score"):
        LossAwareReservoir(2).add({k: v for k, v in rows([0], [1.0]).items() if k != "score"}, gen)


def test_state_survives_weights_only_load():
    gen = torch.Generator().manual_seed(0)
    mem = LossAwareReservoir(3, loss_aware=True)
    mem.add(rows([0, 1, 2, 3, 4], [3.0, 1.0, 2.0, 0.5, 4.0]), gen)
    buf = io.BytesIO()
    torch.save(mem.state_dict(), buf)
    buf.seek(0)
    back = LossAwareReservoir(0, loss_aware=False)
    back.load_state_dict(torch.load(buf, weights_only=True))
    assert back.kind == "loss_aware_reservoir" and back.loss_aware and back.seen == 5 and back.capacity == 3
    for k in mem.fields:
        torch.testing.assert_close(back.fields[k], mem.fields[k])

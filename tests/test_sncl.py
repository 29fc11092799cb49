"""SNCL: the prior's KL and hyperparameter update against hand computations, and each
mechanism's effect (sparsity prior, activation replay, logit replay, loss refresh,
persistence of the variance hyperparameters) on small digits streams.

Every mechanism test compares the mechanism on against the same run with its switch off
and asserts an outcome that only the mechanism produces."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

from retaincl.config import config_from_dict
from retaincl.engine.checkpoint import load_checkpoint, save_checkpoint
from retaincl.engine.runner import Session, build_learner
from retaincl.methods.replay.sncl import ActivationPrior, kl_per_sample, m_step
from retaincl.methods.replay.sncl.analysis import layer_activations, near_zero_fraction
from retaincl.methods.replay.sncl.network import layer_stack

ONLINE = {"train_backbone": True, "epochs": 1, "batch_size": 10, "lr": 0.1, "backbone_lr": 0.1, "momentum": 0.0}


# ----------------------------------------------------------------------------- the prior


def test_m_step_and_running_update_worked_by_hand():
    # two samples, two units; sigma^2 = 0.5 and 0.25
    log_var = torch.log(torch.tensor([0.5, 0.25]))
    mu1 = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
    # gamma = mean mu^2 + sigma^2 = (1 + 9) / 2 + 0.5 = 5.5 and 0 + 0.25
    torch.testing.assert_close(m_step(mu1, log_var), torch.tensor([5.5, 0.25]))
    prior = ActivationPrior(rate=0.1, floor=1e-3)
    prior.update([mu1], [log_var])
    torch.testing.assert_close(prior.gamma[0], torch.tensor([5.5, 0.25]))  # the first batch sets it
    mu2 = torch.tensor([[2.0, 1.0], [0.0, 1.0]])
    # batch estimate (4 + 0) / 2 + 0.5 = 2.5 and (1 + 1) / 2 + 0.25 = 1.25;
    # running: 0.9 * 5.5 + 0.1 * 2.5 = 5.2 and 0.9 * 0.25 + 0.1 * 1.25 = 0.35
    prior.update([mu2], [log_var])
    torch.testing.assert_close(prior.gamma[0], torch.tensor([5.2, 0.35]))
    assert prior.updates == 2
    # a conv map: one unit per channel, energy averaged over positions (1+4+9+16)/4 = 7.5
    conv = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    torch.testing.assert_close(m_step(conv, torch.log(torch.tensor([0.1]))), torch.tensor([7.6]))
    # a unit no sample uses: floored
    assert float(ActivationPrior(1.0, 1e-3).estimate([torch.zeros(3, 1)], [torch.tensor([-20.0])])[0]) == pytest.approx(1e-3)


def test_kl_is_the_gaussian_kl_and_the_m_step_minimises_it():
    mu = torch.tensor([[1.0, -0.5, 0.0], [2.0, 0.3, 0.1], [0.0, 0.0, 0.7]])
    log_var = torch.tensor([-1.0, 0.2, -3.0])
    gamma = torch.tensor([2.0, 0.4, 0.05])
    # against torch.distributions, unit by unit
    expected = kl_divergence(Normal(mu, (0.5 * log_var).exp()), Normal(torch.zeros(3), gamma.sqrt())).sum(1)
    torch.testing.assert_close(kl_per_sample(mu, log_var, gamma), expected)
    # one unit by hand: mu 1, sigma^2 0.5, gamma 2: 1/2 (1.5/2 - 1 - log 0.5 + log 2) = 0.5681...
    one = kl_per_sample(torch.tensor([[1.0]]), torch.log(torch.tensor([0.5])), torch.tensor([2.0]))
    assert float(one) == pytest.approx(0.5 * (0.75 - 1 + 2 * math.log(2)), rel=1e-6)
    # the batch KL as a function of gamma is smallest at the M-step
    best = m_step(mu, log_var)
    total = kl_per_sample(mu, log_var, best).sum()
    for scale in (0.8, 0.95, 1.05, 1.25):
        assert float(kl_per_sample(mu, log_var, best * scale).sum()) > float(total)


# ----------------------------------------------------------------------------- helpers


def session(tmp_path, kind="class", **params):
    cfg = config_from_dict({
        "method": ["sncl"],
        "seed": 0,
        "data": {"source": "digits"},
        "scenario": {"kind": kind, "base": 2, "increment": 2},
        "backbone": {"name": "mlp", "image_size": 8},
        "cache": {"enabled": False},
        "output_dir": str(tmp_path),
        "quiet": True,
        "device": "cpu",
        "methods": {"sncl": ONLINE | params},
    })
    return Session.create(cfg)


def learn(learner, task):
    learner.begin_task(task)
    learner.fit(task)
    learner.end_task(task)


def inputs_of(learner, task):
    return task.train.images(range(len(task.train)))


# ----------------------------------------------------------------------------- mechanisms


@pytest.mark.slow
def test_sparsity_prior_switches_units_off(tmp_path):
    first = {}
    for sparsity in (1e-2, 0.0):
        s = session(tmp_path, sparsity=sparsity)
        learner = build_learner(s, "sncl")
        learn(learner, s.stream.tasks[0])
        test = s.stream.tasks[0].test.inputs()
        first[sparsity] = near_zero_fraction(layer_activations(learner, test))[0], learner
    (zeros_on, on), (zeros_off, _) = first[1e-2], first[0.0]
    # with the prior, most first-layer activations are (near) zero; without, far fewer
    assert zeros_on > zeros_off + 0.2, (zeros_on, zeros_off)
    # and the task is still learned
    logits = on.predict_logits(test)
    assert float((logits.argmax(1) == torch.as_tensor(s.stream.tasks[0].test.targets)).float().mean()) > 0.9
    # units whose variance hyperparameter collapsed to the posterior noise are off for every sample
    assert int((on.prior.gamma[0] < 3 * on.posterior[0].exp().detach()).sum()) > 20


def test_variance_hyperparameters_persist_across_tasks_and_in_the_checkpoint(tmp_path):
    s = session(tmp_path, sparsity=1e-3, gamma_rate=0.05)
    a = build_learner(s, "sncl")
    learn(a, s.stream.tasks[0])
    gamma = [g.clone() for g in a.prior.gamma]
    assert a.prior.updates > 10 and not torch.allclose(gamma[0], gamma[0].mean().expand_as(gamma[0]))
    a.begin_task(s.stream.tasks[1])  # a boundary changes nothing
    for g, h in zip(a.prior.gamma, gamma):
        torch.testing.assert_close(g, h)

    save_checkpoint(tmp_path / "c.pt", {"learner": a.state_dict()})
    b = build_learner(s, "sncl")
    b.load_state_dict(load_checkpoint(tmp_path / "c.pt")["learner"])
    assert b.prior.updates == a.prior.updates
    for g, h in zip(b.prior.gamma, gamma):
        torch.testing.assert_close(g, h)

    # the next step folds its batch into the old estimate: gamma_new = 0.95 gamma + 0.05 m_step
    x = s.stream.tasks[1].train.images(range(10))
    y = torch.as_tensor(s.stream.tasks[1].train.targets[:10])
    torch.manual_seed(0)
    b.opt = None
    b.observe(x, y, remember=False)
    # recompute the step's posterior means with the same noise draw
    c = build_learner(s, "sncl")
    c.load_state_dict(load_checkpoint(tmp_path / "c.pt")["learner"])
    slots, m = c.memory.sample_indexed(10, c.generator)
    torch.manual_seed(0)
    _, means = c.stack.forward(torch.cat([x, m["x"]]), list(c.posterior))
    expected = [0.95 * g + 0.05 * m_step(mu.detach(), lv.detach()) for g, mu, lv in zip(gamma, means, c.posterior)]
    for g, e in zip(b.prior.gamma, expected):
        torch.testing.assert_close(g, e.clamp(min=c.params.gamma_min))


def drift_after_second_task(tmp_path, **params):
    """Train task 0, then task 1 with the given replay weights; return how far the
    activations and logits of the memory's task-0 samples moved during task 1."""
    s = session(tmp_path, sparsity=0.0, replay_ce=0.0, memory_size=100, **params)
    learner = build_learner(s, "sncl")
    learn(learner, s.stream.tasks[0])
    x = learner.memory.fields["x"]
    stack = layer_stack(learner.net)
    learner.eval_mode()
    with torch.no_grad():
        z0, h0 = stack.forward(x)
    learn(learner, s.stream.tasks[1])
    learner.eval_mode()
    with torch.no_grad():
        z1, h1 = stack.forward(x)
    return F.mse_loss(z1, z0).item(), sum(F.mse_loss(a, b).item() for a, b in zip(h1, h0))


def test_activation_replay_holds_the_memory_activations(tmp_path):
    _, moved_without = drift_after_second_task(tmp_path / "a", alpha=0.0, beta=0.0)
    _, moved_with = drift_after_second_task(tmp_path / "b", alpha=0.0, beta=5.0)
    assert moved_with < 0.5 * moved_without, (moved_with, moved_without)


def test_logit_replay_holds_the_memory_logits(tmp_path):
    moved_without, _ = drift_after_second_task(tmp_path / "a", alpha=0.0, beta=0.0)
    moved_with, _ = drift_after_second_task(tmp_path / "b", alpha=1.0, beta=0.0)
    assert moved_with < 0.5 * moved_without, (moved_with, moved_without)


def test_replayed_samples_get_their_loss_refreshed(tmp_path):
    s = session(tmp_path, sparsity=0.0, memory_size=30)
    learner = build_learner(s, "sncl")
    learn(learner, s.stream.tasks[0])
    learner.memory.fields["score"][:] = 99.0  # stale scores
    task = s.stream.tasks[1]
    learner.begin_task(task)
    x, y = task.train.images(range(10)), torch.as_tensor(task.train.targets[:10])
    # the slots this step will replay, and their loss under the network before the step
    gen_state = learner.generator.get_state()
    slots, m = learner.memory.sample_indexed(10, learner.generator)
    learner.generator.set_state(gen_state)
    with torch.no_grad():
        learner.net.train()
        logits, _ = learner.stack.forward(torch.cat([x, m["x"]]))
        expected = F.cross_entropy(learner.train_logits(logits, torch.cat([torch.ones(10).long(), m["task"]])), torch.cat([y, m["y"]]), reduction="none")[10:]
    learner.opt = None
    learner.observe(x, y, torch.ones(10).long(), remember=False)
    torch.testing.assert_close(learner.memory.fields["score"][slots], expected, rtol=1e-5, atol=1e-5)
    untouched = torch.ones(len(learner.memory), dtype=torch.bool)
    untouched[slots] = False
    assert (learner.memory.fields["score"][untouched] == 99.0).all()


def test_memory_holds_full_experience(tmp_path):
    s = session(tmp_path, memory_size=50)
    learner = build_learner(s, "sncl")
    learn(learner, s.stream.tasks[0])
    f = learner.memory.fields
    assert set(f) == {"x", "y", "task", "logits", "score", "act0", "act1"}
    assert f["x"].shape == (50, 1, 8, 8) and f["logits"].shape == (50, 10) and f["act0"].shape == (50, 100)
    assert learner.memory.kind == "loss_aware_reservoir" and learner.memory.loss_aware


def test_runs_on_a_stream_without_task_ids(tmp_path):
    # class-incremental: the step reads no task id and no boundary. Driving one learner
    # with task ids and begin_task, another with neither, gives the same network.
    s = session(tmp_path, sparsity=1e-3, memory_size=40)
    a, b = build_learner(s, "sncl"), build_learner(s, "sncl")
    a.begin_task(s.stream.tasks[0])
    for i, task in enumerate(s.stream.tasks[:2]):
        if i:
            a.begin_task(task)
        for lo in range(0, 40, 10):
            x, y = task.train.images(range(lo, lo + 10)), torch.as_tensor(task.train.targets[lo : lo + 10])
            torch.manual_seed(lo + 100 * i)
            a.observe(x, y, torch.full((10,), i))
            torch.manual_seed(lo + 100 * i)
            b.observe(x, y)
    for pa, pb in zip(a.net.parameters(), b.net.parameters()):
        torch.testing.assert_close(pa, pb)
    torch.testing.assert_close(a.prior.gamma[1], b.prior.gamma[1])
    assert b.seen_classes == 4 and len(b.memory) == 40


def test_deterministic_pass_is_the_network(tmp_path):
    s = session(tmp_path)
    learner = build_learner(s, "sncl")
    x = s.stream.tasks[0].test.inputs().images(range(5))
    learner.eval_mode()
    logits, means = learner.stack.forward(x)
    torch.testing.assert_close(logits, learner.net(x))
    assert [h.shape[1] for h in means] == [100, 100]


def test_needs_a_layer_for_the_prior(tmp_path):
    from retaincl.config import ConfigError

    s = session(tmp_path, train_backbone=False, head_hidden=[])
    with pytest.raises(ConfigError, match="head_hidden"):
        build_learner(s, "sncl")
    learner = build_learner(session(tmp_path, train_backbone=False), "sncl")
    assert learner.stack.widths == [256]  # frozen features: a 256-unit hidden head by default

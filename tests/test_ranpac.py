"""RanPAC's classifier against independent closed-form ridge solutions; lambda against brute
force; the mechanisms (accumulated G, random projection + ReLU) against their ablations."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from retaincl.engine.runner import Session, run_method
from retaincl.methods.ranpac import (
    RIDGES,
    RanPAC,
    RanPACParams,
    RidgeStatistics,
    choose_ridge,
    select_ridge,
    solve_psd,
)


def kernel_ridge(h: np.ndarray, y: np.ndarray, lam: float) -> np.ndarray:
    """Independent exact ridge weights ``H^T (H H^T + lam I)^-1 Y`` (N < M: well conditioned)."""
    return h.T @ np.linalg.solve(h @ h.T + lam * np.eye(len(h)), y)


def relu_features(rng, n, d=20, m=300, scale=100.0):
    """ReLU random features at the magnitude of real ones (||G|| ~ 1e9)."""
    w = rng.normal(size=(d, m))
    return np.maximum(scale * (rng.normal(size=(n, d)) + 0.5) @ w, 0.0)


def ridge_svd(h: np.ndarray, y: np.ndarray, lam: float) -> np.ndarray:
    """Independent exact ridge weights from the SVD ``H = U S V^T``: ``V S / (S^2 + lam) U^T Y``,
    well defined for every lambda > 0 whatever the shape and rank of ``H``."""
    u, s, vt = np.linalg.svd(h, full_matrices=False)
    keep = s > 1e-12 * s.max()
    u, s, vt = u[:, keep], s[keep], vt[keep]
    return vt.T @ ((s / (s**2 + lam))[:, None] * (u.T @ y))


def test_kernel_form_is_exact_on_rank_deficient_gram_at_tiny_ridge():
    """G = sum of 3 tasks' h h^T, rank 120 in M = 300, lambda = 1e-8: the weights equal the
    kernel-form solution; the naive (G + 1e-8 I) solve of the full matrix does not. The
    statistics keep the inputs and lift them again: no M-sized copy of the samples."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 20)) + 0.5
    w = rng.normal(size=(20, 300))
    h = np.maximum(100.0 * x @ w, 0.0)
    y = np.eye(6)[rng.integers(0, 6, 120)]
    wt = torch.tensor(w)
    stats = RidgeStatistics(300, 6, torch.device("cpu"), lift=lambda v: torch.relu(100.0 * v.double() @ wt))
    for part in np.split(np.arange(120), 3):
        stats.add(torch.tensor(x[part]), torch.tensor(y[part]))
    assert stats.form == "kernel" and stats.order == 120
    # K as its lower block rows (40 x 40, 40 x 80, 40 x 120), Y, the (float64) inputs
    assert stats.nbytes() == 40 * (40 + 80 + 120) * 8 + 120 * 6 * 8 + 120 * 20 * 8
    np.testing.assert_allclose(stats.kernel().numpy(), h @ h.T, rtol=1e-12, atol=1e-12 * np.abs(h @ h.T).max())
    g = h.T @ h
    assert np.linalg.norm(g, 2) > 1e8  # eps * ||G|| >> 1e-8: the full system is singular in float64
    for lam in (1e-8, 1e-2, 1e3, 1e8):
        expected = kernel_ridge(h, y, lam)
        np.testing.assert_allclose(ridge_svd(h, y, lam), expected, rtol=1e-6, atol=1e-9 * np.abs(expected).max())
        got = stats.solve(lam).numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9 * np.abs(expected).max())
    naive = np.linalg.solve(g + 1e-8 * np.eye(300), h.T @ y)
    assert np.abs(naive - kernel_ridge(h, y, 1e-8)).max() > 1e-3 * np.abs(kernel_ridge(h, y, 1e-8)).max()
    np.testing.assert_allclose(stats.gram().numpy(), g, rtol=1e-6, atol=1e-9 * np.abs(g).max())
    np.testing.assert_allclose(stats.class_matrix().numpy(), h.T @ y, rtol=1e-6, atol=1e-9 * np.abs(h).max())


def test_kernel_form_holds_duplicate_samples_at_tiny_ridge():
    """A sample seen twice makes K singular; the solve on K's range stays exact."""
    rng = np.random.default_rng(4)
    h = np.maximum(100.0 * (rng.normal(size=(40, 10)) + 0.5) @ rng.normal(size=(10, 200)), 0.0)
    h[20:30] = h[:10]
    y = np.eye(3)[rng.integers(0, 3, 40)]
    y[20:30] = y[:10]
    stats = RidgeStatistics(200, 3, torch.device("cpu"))
    for part in np.split(np.arange(40), 2):
        stats.add(torch.tensor(h[part]), torch.tensor(y[part]))
    for lam in (1e-8, 1.0):
        expected = ridge_svd(h, y, lam)
        np.testing.assert_allclose(stats.solve(lam).numpy(), expected, rtol=1e-6, atol=1e-8 * np.abs(expected).max())


def test_full_form_and_switch_are_exact():
    """Past N = M the statistics become the full G (rank 60 of M = 100 here: a null space);
    a singular full G at lambda 1e-8 is solved on its range."""
    rng = np.random.default_rng(1)
    h = rng.normal(size=(150, 60)) @ rng.normal(size=(60, 100))
    y = np.eye(4)[rng.integers(0, 4, 150)]
    stats = RidgeStatistics(100, 4, torch.device("cpu"))
    for k, part in enumerate(np.split(np.arange(150), 3)):  # 50, 100 (kernel form), then 150 > 100: full
        stats.add(torch.tensor(h[part]), torch.tensor(y[part]))
        assert stats.form == ("kernel" if k < 2 else "full")
    for lam in (1e-8, 1.0, 1e6):
        expected = ridge_svd(h, y, lam)
        np.testing.assert_allclose(stats.solve(lam).numpy(), expected, rtol=1e-6, atol=1e-8 * np.abs(expected).max())
    # solve_psd on a singular full G (rank 90 of 100) at 1e-8 through the eigen fallback
    h = relu_features(rng, 90, d=100, m=100)
    y = np.eye(4)[rng.integers(0, 4, 90)]
    g = torch.tensor(h.T @ h)
    got = solve_psd(g, torch.tensor(h.T @ y), 1e-8, singular=True).numpy()
    np.testing.assert_allclose(got, kernel_ridge(h, y, 1e-8), rtol=1e-5, atol=1e-7 * np.abs(got).max())


def brute_force(h, y, fit_fraction=0.8):
    n = int(len(h) * fit_fraction)
    losses = []
    for lam in RIDGES:
        w = np.linalg.solve(h[:n].T @ h[:n] + lam * np.eye(h.shape[1]), h[:n].T @ y[:n])
        losses.append(np.mean((h[n:] @ w - y[n:]) ** 2))
    return losses


@pytest.mark.parametrize("n,m", [(50, 20), (30, 80)])  # primal (n > M) and kernel (n < M) forms
def test_ridge_losses_equal_seventeen_solves(n, m):
    rng = np.random.default_rng(n + m)
    w_true = rng.normal(size=(m, 4))
    h = np.maximum(rng.normal(size=(n, m)), 0)
    labels = np.argmax(h @ w_true + rng.normal(scale=2.0, size=(n, 4)), 1)
    y = np.eye(4)[labels]
    lam, losses = choose_ridge(torch.tensor(h), torch.tensor(y), rtol=0.0)
    losses_bf = brute_force(h, y)
    assert lam == RIDGES[int(np.argmin(losses_bf))]
    np.testing.assert_allclose(losses, losses_bf, rtol=1e-6, atol=1e-10)


def test_near_ties_go_to_the_larger_ridge():
    ridges = (1e-2, 1e-1, 1.0, 10.0)
    flat = [1.0000, 1.0000, 1.0005, 1.2]  # flat, then a 0.05% rise, then a real rise
    assert select_ridge(flat, ridges, rtol=1e-3) == 1.0
    assert select_ridge(flat, ridges, rtol=0.0) == 1e-1  # exact ties: still the larger one
    assert select_ridge([3.0, 2.0, 1.0, 2.0], ridges, rtol=1e-3) == 1.0


def fake_context(feats, num_classes):
    class FakeFeatures:
        def get(self, split):
            return feats[split.idx]

    return SimpleNamespace(
        backbone=SimpleNamespace(feature_dim=feats.shape[1]), features=FakeFeatures(), device=torch.device("cpu"),
        seed=0, num_classes=num_classes, scenario="class", quiet=True, eval_batch_size=8,
    )


def learn_tasks(learner, labels, task_classes):
    for t, classes in enumerate(task_classes):
        idx = np.flatnonzero(np.isin(labels.numpy(), classes))
        split = SimpleNamespace(idx=idx, targets=labels[idx].numpy())
        task = SimpleNamespace(index=t, classes=classes, train=split, known_classes=classes[0], total_classes=classes[-1] + 1)
        learner.begin_task(task)
        learner.fit(task)
        learner.end_task(task)


def test_accumulated_gram_equals_joint_ridge():
    """G and C summed over tasks give the ridge solution on all data at once; without
    accumulation (the ablation) they do not, and the first task's class is never predicted."""
    rng = np.random.default_rng(1)
    feats = torch.tensor(rng.normal(size=(60, 5)) + np.repeat(np.eye(3, 5) * 3, 20, 0), dtype=torch.float32)
    labels = torch.tensor(np.repeat([0, 1, 2], 20))
    results = {}
    for accumulate in (True, False):
        learner = RanPAC(RanPACParams(projection_dim=30, ridge=0.5, accumulate=accumulate), fake_context(feats, 3))
        learn_tasks(learner, labels, [[0], [1, 2]])
        h = F.relu(feats @ learner.w_rand).double().numpy()
        expected = np.linalg.solve(h.T @ h + 0.5 * np.eye(30), h.T @ np.eye(3)[labels.numpy()])
        results[accumulate] = (learner.weights.numpy(), expected, learner.logits_from_features(feats[:20]).argmax(1))
    w, expected, pred_old = results[True]
    np.testing.assert_allclose(w, expected, rtol=1e-5, atol=1e-6)
    assert (pred_old == 0).float().mean() > 0.9
    w, expected, pred_old = results[False]
    assert not np.allclose(w, expected, rtol=1e-2, atol=1e-3)
    assert (pred_old == 0).float().mean() < 0.1


def test_random_projection_and_relu_make_xor_separable():
    """Two classes by the sign of x1 * x2 (XOR): no linear ridge on f separates them;
    relu(f W_rand) does. Without the projection (the ablation) accuracy is near chance."""
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, size=(400, 2))
    feats = torch.tensor(np.c_[x, np.ones(400)], dtype=torch.float32)
    labels = torch.tensor((x[:, 0] * x[:, 1] > 0).astype(np.int64))
    acc = {}
    for rp in (True, False):
        learner = RanPAC(RanPACParams(projection_dim=500, ridge=1.0, random_projection=rp), fake_context(feats, 2))
        learn_tasks(learner, labels, [[0, 1]])
        acc[rp] = float((learner.logits_from_features(feats).argmax(1) == labels).float().mean())
        if rp:  # the logits are relu(f W_rand) W_o with an independent ridge solve
            h = np.maximum(feats.numpy() @ learner.w_rand.numpy(), 0).astype(np.float64)
            w = kernel_ridge(h, np.eye(2)[labels.numpy()], 1.0)
            np.testing.assert_allclose(learner.logits_from_features(feats).numpy(), h @ w, rtol=1e-3, atol=1e-3)
    assert acc[True] > 0.9 and acc[False] < 0.7


def exact_correct_per_task(session, res, m):
    """Correct counts per (step, task) of an independent float64 kernel-form ridge at the
    run's chosen lambdas, from the cached features and W_rand drawn as RanPAC draws it."""
    tasks = session.stream.tasks
    d, c = session.backbone.feature_dim, session.stream.num_classes
    w_rand = torch.randn(d, m, generator=torch.Generator().manual_seed(session.cfg.seed)).numpy()

    def h(split):
        return np.maximum(session.features.get(split).numpy() @ w_rand, 0).astype(np.float64)

    h_test = [h(t.test) for t in tasks]
    correct = np.zeros((len(tasks), len(tasks)), dtype=np.int64)
    hs, ys = [], []
    for i, (task, lam) in enumerate(zip(tasks, res["method_info"]["ridge_per_task"])):
        hs.append(h(task.train))
        ys.append(np.eye(c)[task.train.targets])
        w = kernel_ridge(np.concatenate(hs), np.concatenate(ys), lam)[:, : task.total_classes]
        for j in range(i + 1):
            correct[i, j] = int(((h_test[j] @ w).argmax(1) == np.asarray(tasks[j].test.targets)).sum())
    return correct


@pytest.mark.slow
@pytest.mark.parametrize("extra", [
    # the default M = 10000, lambda chosen per task: kernel form throughout (N = 1438 < M)
    {"methods.ranpac.projection_dim": 10000},
    # lambda = 1e-8, the value that broke the old solve (70.8% on 0 vs 1), in the kernel form
    # (M = 2000 > N); the full form at lambda = 1e-8 is test_full_form_and_switch_are_exact
    {"methods.ranpac.projection_dim": 2000, "methods.ranpac.ridge": 1e-8},
])
def test_digits_accuracy_equals_exact_ridge_on_every_task(make_digits_config, extra):
    cfg = make_digits_config(method=["ranpac"], **extra)
    session = Session.create(cfg)
    res = run_method(session, "ranpac", resume=False, progress=False)
    expected = exact_correct_per_task(session, res, extra["methods.ranpac.projection_dim"])
    got = np.array(res["correct_matrix"])
    np.testing.assert_array_equal(np.tril(got), expected)
    assert res["metrics"]["accuracy_per_step"][0] > 0.99  # 0 vs 1 is easy
    if "methods.ranpac.ridge" not in extra:
        assert min(res["method_info"]["ridge_per_task"]) >= 1.0  # flat small-lambda region: ties go up


@pytest.mark.parametrize("saved", [False, True])
def test_resume_rebuilds_or_loads_the_statistics_bit_for_bit(saved):
    """Without checkpoint_statistics the checkpoint holds no M-sized matrix and a resume
    rebuilds G and C from the finished tasks; either way the continuation is identical."""
    import io

    rng = np.random.default_rng(3)
    feats = torch.tensor(rng.normal(size=(90, 6)) + np.repeat(np.eye(3, 6) * 2, 30, 0), dtype=torch.float32)
    labels = torch.tensor(np.repeat([0, 1, 2], 30))
    params = RanPACParams(projection_dim=100, checkpoint_statistics=saved)
    a = RanPAC(params, fake_context(feats, 3))
    learn_tasks(a, labels, [[0], [1]])
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    assert (buf.tell() > 8 * (30 * 30 + 30 * 60)) == saved  # K's block rows (float64, 2 tasks of 30) only when saved
    b = RanPAC(params, fake_context(feats, 3))
    b.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    if not saved:
        with pytest.raises(RuntimeError, match="restore_tasks"):
            learn_tasks(b, labels, [[2]])
    tasks = []
    for t, classes in enumerate([[0], [1]]):
        idx = np.flatnonzero(np.isin(labels.numpy(), classes))
        tasks.append(SimpleNamespace(index=t, train=SimpleNamespace(idx=idx, targets=labels[idx].numpy())))
    b.restore_tasks(tasks)
    assert torch.equal(b.stats.gram(), a.stats.gram()) and torch.equal(b.stats.class_matrix(), a.stats.class_matrix())
    for learner in (a, b):
        idx = np.flatnonzero(labels.numpy() == 2)
        task = SimpleNamespace(index=2, classes=[2], train=SimpleNamespace(idx=idx, targets=labels[idx].numpy()),
                               known_classes=2, total_classes=3)
        learner.begin_task(task)
        learner.fit(task)
        learner.end_task(task)
    assert torch.equal(a.weights, b.weights) and a.ridge_history == b.ridge_history


def test_full_statistics_hold_no_sample_and_give_the_same_weights():
    """``statistics: full`` keeps only G and C (M x M), as the paper: no feature is held,
    and the weights equal the default kernel form's."""
    rng = np.random.default_rng(5)
    feats = torch.tensor(rng.normal(size=(60, 5)) + np.repeat(np.eye(3, 5) * 3, 20, 0), dtype=torch.float32)
    labels = torch.tensor(np.repeat([0, 1, 2], 20))
    learners = {}
    for form in ("auto", "full"):
        learner = RanPAC(RanPACParams(projection_dim=200, ridge=0.5, statistics=form), fake_context(feats, 3))
        learn_tasks(learner, labels, [[0], [1, 2]])
        learners[form] = learner
    assert learners["auto"].stats.form == "kernel" and learners["full"].stats.form == "full"
    assert learners["full"].stats.inputs is None and learners["full"].stats.nbytes() == 8 * (200 * 200 + 200 * 3)
    np.testing.assert_allclose(learners["full"].weights.numpy(), learners["auto"].weights.numpy(), rtol=1e-4, atol=1e-6)


def test_a_failed_cholesky_falls_back_on_the_matrix_itself_not_its_factored_buffer():
    """``A`` with a null direction that round-off made slightly negative: Cholesky of
    ``A + lam I`` fails, and the eigen route must see ``A`` again (the buffer Cholesky
    overwrote is garbage). Expected: the closed form on ``A``'s positive eigenvectors."""
    rng = np.random.default_rng(7)
    v, _ = np.linalg.qr(rng.normal(size=(20, 20)))
    s = np.concatenate([rng.uniform(1.0, 5.0, 12), np.zeros(7), [-1e-9]])
    a = (v * s) @ v.T
    b = v[:, :12] @ rng.normal(size=(12, 3))  # in the range of the positive part
    expected = v[:, :12] @ ((v[:, :12].T @ b) / (s[:12, None] + 1e-12))
    at = torch.tensor(a)
    got = solve_psd(at, torch.tensor(b), 1e-12, singular=False).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-8)
    assert torch.equal(at, torch.tensor(a))  # A itself is left as it was

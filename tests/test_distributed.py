"""Data-parallel runs: ``torchrun --nproc_per_node 2`` (gloo, CPU) computes what one process computes.

One test launches the real command (``python -m torch.distributed.run --standalone
--nproc_per_node 2 DRIVER -m retaincl run``) on digits with the ``mlp`` backbone and
compares every method's correct-count matrix with the single-process run's, exactly:

- statistics methods (SimpleCIL's class sums, FeCAM's sums and outer products, RanPAC's
  G and C in its primal form): each rank adds its rows and the shares are summed
  (float64; the accuracy matrix is exactly equal, the statistics to rounding);
- SGD methods (finetune's head on frozen features, SLCA's slow learner on the mlp, which
  has no batch normalisation): each rank computes the loss of its rows of the global
  batch and the gradients are summed weighted by the rank's share. The tolerance is 0
  wrong predictions here; it is exact up to float32 summation order, so on other data a
  prediction on a decision boundary may flip (docs/scale.md).

The driver also checks that rank 1 writes nothing (its ``os.replace`` and ``os.mkdir``
raise), and counts each rank's share of the extraction rows and of the training rows, so
the test fails if the work is replicated instead of split.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from retaincl.config import config_from_dict
from retaincl.engine import distributed

METHODS = ["simplecil", "ranpac", "fecam", "finetune", "slca"]

DRIVER = textwrap.dedent(
    """
    import json, os, sys
    out, argv = sys.argv[1], sys.argv[2:]
    rank = int(os.environ["RANK"])
    from retaincl import cli
    from retaincl.backbones.feature_cache import FeatureStore
    from retaincl.engine import distributed

    counts = {"extract_rows": 0, "extract_total": 0, "train_rows": 0, "global_rows": 0, "steps": 0}
    my_batches, shard_batch, extract = distributed.my_batches, distributed.shard_batch, FeatureStore._extract

    def counted_batches(n, bs):  # also used by evaluation: counted inside extraction only
        mine = my_batches(n, bs)
        if counts.get("extracting"):
            counts["extract_rows"] += sum(hi - lo for lo, hi in mine)
        return mine

    def counted_shard(owner, idx, also=()):
        local = shard_batch(owner, idx, also)
        rows = len(local) if distributed.step_sync(owner).share > 0 else 0  # an empty share computes 1 row at weight 0
        counts["train_rows"] += rows
        counts["global_rows"] += len(idx)
        counts["steps"] += 1
        mine = counts.setdefault("by_method", {}).setdefault(owner.name, [0, 0, 0])  # local, global, steps
        mine[0], mine[1], mine[2] = mine[0] + rows, mine[1] + len(idx), mine[2] + 1
        return local

    def counted_extract(self, images, shift):
        counts["extract_total"] += len(images)
        counts["extracting"] = True
        try:
            return extract(self, images, shift)
        finally:
            counts["extracting"] = False

    distributed.my_batches, distributed.shard_batch, FeatureStore._extract = counted_batches, counted_shard, counted_extract
    report = open(os.path.join(out, f"rank{rank}.json"), "w")
    if rank != 0:  # rank 1 may not create or rename anything under the run's folders
        def refusing(real):
            def call(*args, **kwargs):
                if any(str(a).startswith(out) for a in args):
                    raise AssertionError(f"rank {rank} wrote to disk: {args}")
                return real(*args, **kwargs)
            return call
        os.replace, os.mkdir = refusing(os.replace), refusing(os.mkdir)
    code = cli.main(argv)
    json.dump(counts, report)
    report.close()
    sys.exit(code)
    """
)


def run_settings(tmp_path: Path, out: str) -> dict:
    """Where a run of the test writes, on one CPU thread."""
    return {
        "eval": {"batch_size": 100},
        "cache": {"dir": str(tmp_path / f"cache-{out}")},
        "output_dir": str(tmp_path / out),
        "quiet": True,
        "device": "cpu",
        "threads": 1,
    }


PROMPT_METHODS = ["vpt", "l2p", "dualprompt", "codaprompt", "dap"]


def prompt_tree(tmp_path: Path, out: str) -> dict:
    """Prompt methods train end to end through the packaged tiny ViT (16 px: 4 patches)."""
    return {
        "method": PROMPT_METHODS,
        "methods": {
            "vpt": {"epochs": 1, "batch_size": 33, "prompt_length": 2},  # odd batches: unequal shares
            "l2p": {"epochs": 1, "batch_size": 33, "pool_size": 4, "top_n": 2, "length": 2},
            "dualprompt": {"epochs": 1, "batch_size": 33, "pool_size": 2, "g_length": 2, "e_length": 2},
            "codaprompt": {"epochs": 1, "batch_size": 33, "pool_size": 8, "num_tasks": 2, "length": 4},
            "dap": {"epochs": 1, "batch_size": 33, "prompt_length": 2, "task_embedding_dim": 8},
        },
        "data": {"source": "digits"},
        "scenario": {"kind": "class", "base": 5, "increment": 5},
        "backbone": {"name": "vit_tiny_retain", "image_size": 16},
        **run_settings(tmp_path, out),
    }


def tree(tmp_path: Path, out: str) -> dict:
    return {
        "method": METHODS,
        "methods": {
            "ranpac": {"projection_dim": 300},  # > the 100 features: the primal (summed) form of G
            "finetune": {"epochs": 2, "batch_size": 33},  # odd batches: unequal shares
            "slca": {"epochs": 1, "batch_size": 32, "milestones": [1], "ca_epochs": 2},
        },
        "data": {"source": "digits"},
        "scenario": {"kind": "class", "base": 4, "increment": 3},
        "backbone": {"name": "mlp", "image_size": 8},
        **run_settings(tmp_path, out),
    }


def single_process(tmp_path: Path, make_tree=tree) -> dict[str, list]:
    from retaincl.engine.runner import Session, run_method

    cfg = make_tree(tmp_path, "one")
    session = Session.create(config_from_dict(cfg))
    return {m: run_method(session, m, progress=False)["correct_matrix"] for m in cfg["method"]}


def two_processes(tmp_path: Path, make_tree=tree) -> tuple[Path, list[dict]]:
    cfg = tmp_path / "two.yaml"
    cfg.write_text(yaml.safe_dump(make_tree(tmp_path, "two")))
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = os.environ | {"PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(driver), str(tmp_path), "run", str(cfg)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    errors = [line for line in proc.stderr.splitlines() if "Error" in line and "ChildFailedError" not in line]
    assert proc.returncode == 0, "\n".join(errors[:6]) + "\n" + proc.stderr[-2000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    return tmp_path / "two", ranks


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without torch.distributed")
def test_two_gloo_processes_give_the_single_process_accuracy_matrix(tmp_path):
    out, ranks = two_processes(tmp_path)
    expected = single_process(tmp_path)
    run = next(out.iterdir())
    for method in METHODS:
        res = json.loads((run / method / "results.json").read_text())
        assert res["distributed"] == {"world_size": 2, "backend": "gloo"}
        assert res["correct_matrix"] == expected[method], method
        assert (run / method / "checkpoint.pt").exists()
    # the work was split, not repeated: each rank extracted about half of the rows ...
    r0, r1 = ranks
    assert r0["extract_total"] == r1["extract_total"] > 0
    assert r0["extract_rows"] + r1["extract_rows"] == r0["extract_total"]
    assert min(r0["extract_rows"], r1["extract_rows"]) > 0.3 * r0["extract_total"]
    # ... and trained on about half of each global batch (finetune and SLCA's steps)
    assert r0["steps"] == r1["steps"] > 0 and r0["global_rows"] == r1["global_rows"]
    assert r0["train_rows"] + r1["train_rows"] == r0["global_rows"]
    assert abs(r0["train_rows"] - r1["train_rows"]) <= r0["steps"]
    # the feature cache was written once, by rank 0 (rank 1's writes raise in the driver)
    assert any((tmp_path / "cache-two").rglob("*.npy"))


def assert_matrix_close(run: Path, method: str, expected: list, flips: int = 2) -> None:
    """The 2-process run's correct counts equal one process's, up to ``flips`` samples per cell."""
    got = json.loads((run / method / "results.json").read_text())["correct_matrix"]
    for row_got, row_exp in zip(got, expected, strict=True):
        for g, e in zip(row_got, row_exp, strict=True):
            assert abs(g - e) <= flips, (method, got, expected)


def assert_steps_split(ranks: list[dict], methods) -> None:
    """Each method's steps were split, not repeated: the same steps and global rows on both
    ranks, whose local rows add up to the global rows, about half each."""
    r0, r1 = (r["by_method"] for r in ranks)
    for method in methods:
        assert method in r0 and method in r1, f"{method} never split a batch"
        (local0, global0, steps0), (local1, global1, steps1) = r0[method], r1[method]
        assert steps0 == steps1 > 0 and global0 == global1 and local0 + local1 == global0, method
        assert abs(local0 - local1) <= steps0, method


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without torch.distributed")
def test_prompt_methods_split_each_batch_across_two_gloo_processes(tmp_path):
    """VPT, L2P, DualPrompt, CODA-Prompt and DAP train through the ViT on each rank's share of every global batch,
    gradients summed: the accuracy matrix is the single process's to float32 summation
    order (at most 1% of a task's test samples may flip; 0 flipped when this was written)."""
    out, ranks = two_processes(tmp_path, prompt_tree)
    expected = single_process(tmp_path, prompt_tree)
    run = next(out.iterdir())
    for method in PROMPT_METHODS:
        assert_matrix_close(run, method, expected[method])
    assert_steps_split(ranks, PROMPT_METHODS)


SUBSET = {"source": "digits", "train_per_class": 20, "test_per_class": 20}  # 2 tasks x 100 training images

VIT_METHODS = ["aper_adapter", "ranpac_petl", "esn", "lae", "coma", "cofima", "ease"]


def vit_more_tree(tmp_path: Path, out: str) -> dict:
    """First-task adaptation and the mixtures through the packaged tiny ViT (16 px). The
    adapters' dropout is 0: dropout masks are drawn per rank (docs/scale.md), so with it
    the numbers equal one process's only in distribution."""
    slca = {"epochs": 1, "batch_size": 33, "milestones": [1], "ca_epochs": 1, "ca_samples_per_class": 8}
    return {
        "method": VIT_METHODS,
        "methods": {
            "aper_adapter": {"epochs": 2, "batch_size": 33, "adapter_dropout": 0.0, "adapter_scale": 1.0, "lr": 0.1},  # odd batches: unequal shares
            "ranpac_petl": {"epochs": 1, "batch_size": 33, "petl": "vpt_deep", "projection_dim": 200},
            "esn": {"epochs": 3, "batch_size": 33, "prompt_length": 2, "temperatures": [0.1, 1.0]},
            "lae": {"epochs": 2, "batch_size": 33, "freeze_epochs": 1, "layers": [0, 1]},
            "coma": slca,
            "cofima": {**slca, "fisher_max": 1.0},
            "ease": {"epochs": 2, "batch_size": 33, "adapter_bottleneck": 8, "adapter_dropout": 0.0, "adapter_scale": 1.0,
                     "lr": 0.1},
        },
        "data": SUBSET,
        "scenario": {"kind": "class", "base": 5, "increment": 5},
        "backbone": {"name": "vit_tiny_retain", "image_size": 16},
        **run_settings(tmp_path, out),
    }


CLIP_METHODS = ["zscl", "promptfusion"]


def clip_more_tree(tmp_path: Path, out: str) -> dict:
    """ZSCL (CLIP fine-tuned on its share of the task batch; the reference batch whole on
    every rank) and PromptFusion through the packaged tiny CLIP (32 px)."""
    return {
        "method": CLIP_METHODS,
        "methods": {
            "zscl": {"epochs": 1, "batch_size": 33, "heldout": "none", "reference_size": 64, "warmup_steps": 2,
                     "ensemble_every": 2, "lr": 3e-4},
            "promptfusion": {"epochs": 1, "batch_size": 33, "booster": "vit_tiny_retain", "booster_image_size": 32,
                             "context_length": 3, "image_prompt_length": 2, "vpt_prompt_length": 2, "memory_size": 20},
        },
        "data": SUBSET,
        "scenario": {"kind": "class", "base": 5, "increment": 5},
        "backbone": {"name": "clip_tiny_retain", "image_size": 32},
        **run_settings(tmp_path, out),
    }


def float_tensors(obj, prefix: str = ""):
    """``(path, tensor)`` of every floating tensor in a checkpoint's nested state."""
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point():
            yield prefix, obj.double()
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from float_tensors(v, f"{prefix}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from float_tensors(v, f"{prefix}.{i}")


def state_deviation(run_a: Path, run_b: Path, method: str, skip: str = "\0") -> tuple[float, str]:
    """The largest ``||a - b|| / (||b|| + 1e-2 sqrt(n))`` over the learned-state tensors of
    two runs' checkpoints (the second term: a tensor that stays near 0, such as an attention
    key bias, whose exact gradient is 0, is compared to 1e-2 RMS, not to its own noise)."""
    from retaincl.engine.checkpoint import load_checkpoint

    a = dict(float_tensors(load_checkpoint(run_a / method / "checkpoint.pt")["learner"]))
    b = dict(float_tensors(load_checkpoint(run_b / method / "checkpoint.pt")["learner"]))
    assert a.keys() == b.keys(), method
    return max(
        (float((a[k] - b[k]).norm() / (b[k].norm() + 1e-2 * b[k].numel() ** 0.5)), k)
        for k in a if b[k].numel() and skip not in k
    )


#: ZSCL's AdamW turns the float-rounding-level gradient of the attention key biases (exactly
#: 0: a softmax ignores a constant added to every key) into learning-rate-sized steps: its
#: ``in_proj_bias`` tensors are not compared, and the rest of its state (which those steps
#: reach through later layers) to 1e-3 (4.5e-5 when this was written, 0.019 without the
#: gradient all-reduce).
STATE_SKIP = {"zscl": ("in_proj_bias", 1e-3)}


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without torch.distributed")
@pytest.mark.parametrize("make_tree", [vit_more_tree, clip_more_tree], ids=["vit", "clip"])
def test_adaptation_mixtures_and_clip_methods_split_each_batch_across_two_gloo_processes(tmp_path, make_tree):
    """APER's / RanPAC's first-task adaptation, ESN, LAE, CoMA and CoFiMA (slow learner and
    Fisher pass), EASE, ZSCL and PromptFusion train on each rank's share of every global
    batch, gradients summed: the accuracy matrix is the single process's to float32
    summation order (at most 2 of a task's 100 test samples may flip; 0 flipped when this
    was written), so is the learned state in the checkpoints (:func:`state_deviation` < 1e-4:
    at most 1.3e-5 when this was written, 0.04-1.4 without the gradient all-reduce; ZSCL:
    :data:`STATE_SKIP`), and every method's steps were split, not repeated."""
    methods = make_tree(tmp_path, "one")["method"]
    out, ranks = two_processes(tmp_path, make_tree)
    expected = single_process(tmp_path, make_tree)
    run = next(out.iterdir())
    for method in methods:
        assert_matrix_close(run, method, expected[method])
        # the learned state too (a prototype method's accuracy may not move when its adapter does)
        skip, tolerance = STATE_SKIP.get(method, ("\0", 1e-4))
        deviation, where = state_deviation(run, next((tmp_path / "one").iterdir()), method, skip)
        assert deviation < tolerance, (method, where, deviation)
    assert_steps_split(ranks, methods)


def test_single_process_helpers_are_the_identity():
    """Without torchrun nothing joins a process group and every helper is the identity."""
    assert not distributed.active() and distributed.world_size() == 1 and distributed.is_main()
    t = torch.arange(4.0)
    assert distributed.all_reduce_sum_(t) is t and torch.equal(t, torch.arange(4.0))
    assert distributed.my_batches(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert distributed.my_positions(10, 4) is None
    assert distributed.local_rows(5).tolist() == [0, 1, 2, 3, 4]
    idx = torch.tensor([3, 1, 2])
    assert distributed.shard_batch(object(), idx) is idx
    assert distributed.sum_ints(3, 4) == [3, 4] and distributed.any_rank(True)

"""The prompt methods' optimiser rules and published configs, against hand-computed numbers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from retaincl.config import load_config, method_params
from retaincl.methods.prompt_common import schedule_factor

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_coda_schedule_is_the_official_quarter_cosine():
    # GT-RIPL/CODA-Prompt utils/schedulers.py: lr * cos(99 pi e / (200 (K - 1))), K = 20
    assert schedule_factor("coda_cosine", 0, 20) == 1.0
    assert schedule_factor("coda_cosine", 19, 20) == pytest.approx(math.cos(0.495 * math.pi))  # 0.0157
    assert schedule_factor("coda_cosine", 10, 20) == pytest.approx(math.cos(99 * math.pi * 10 / 3800))
    assert schedule_factor("coda_cosine", 0, 1) == 1.0  # one epoch: the official formula divides by zero
    # torch's CosineAnnealingLR(T_max=K) for comparison: (1 + cos(pi e / K)) / 2
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=5)
    for e in range(5):
        assert schedule_factor("cosine", e, 5) == pytest.approx(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()


@pytest.mark.parametrize(
    ("name", "method", "lr"),
    [
        ("l2p_cifar100", "l2p", 0.03 * 128 / 256),  # google-research/l2p: lr * global batch / 256
        ("l2p_imagenet_r", "l2p", 0.005 * 192 / 256),
        ("dualprompt_cifar100", "dualprompt", 0.03 * 192 / 256),
        ("dualprompt_imagenet_r", "dualprompt", 0.005 * 192 / 256),
        ("codaprompt_cifar100", "codaprompt", 0.001),
        ("codaprompt_imagenet_r", "codaprompt", 0.001),
    ],
)
def test_published_configs_parse_with_the_effective_rate(name, method, lr):
    cfg = load_config(str(CONFIGS / f"{name}.yaml"), [])
    params = method_params(method, cfg.methods[method])
    assert params.effective_lr == pytest.approx(lr)
    weights = "augreg_in21k_ft_in1k" if method == "codaprompt" else "orig_in21k"
    assert cfg.backbone.name == f"vit_base_patch16_224.{weights}"
    assert cfg.transform.normalize == "none" and cfg.transform.train_hflip  # [0, 1] inputs, flips
    assert cfg.transform.train_crop == "random_resized"


@pytest.mark.parametrize("name", ["dap_cifar100", "dap_imagenet_r", "vpt_cifar100", "vpt_imagenet_r"])
def test_vpt_and_dap_configs_parse(name):
    cfg = load_config(str(CONFIGS / f"{name}.yaml"), [])
    method = name.split("_")[0]
    params = method_params(method, cfg.methods[method])
    assert cfg.backbone.name == "vit_base_patch16_224.orig_in21k" and cfg.transform.normalize == "imagenet"
    if method == "dap":
        assert params.amsgrad and not params.reset_optimizer and params.num_tasks == 10

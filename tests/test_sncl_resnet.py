"""The reduced ResNet-18 of GEM / A-GEM / ER, and SNCL on it (random 32x32 inputs; CIFAR
is not on this machine), plus the CIFAR-100 config failing fast without the data."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from retaincl.backbones import build_backbone
from retaincl.config import BackboneConfig
from retaincl.methods.base import LearnerContext
from retaincl.methods.replay.sncl import SNCL, SNCLParams

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "sncl"


def resnet_parameter_count(nf: int, in_ch: int = 3) -> int:
    """Counted from GEM's description: 3x3 convs without bias, BN (weight + bias) after
    each conv, 1x1 conv + BN shortcuts where the stride or width changes."""

    def conv(cin, cout, k):
        return cin * cout * k * k

    total = conv(in_ch, nf, 3) + 2 * nf  # stem
    cin = nf
    for width, stride in [(nf, 1), (2 * nf, 2), (4 * nf, 2), (8 * nf, 2)]:
        for s in (stride, 1):
            total += conv(cin, width, 3) + 2 * width + conv(width, width, 3) + 2 * width
            if s != 1 or cin != width:
                total += conv(cin, width, 1) + 2 * width
            cin = width
    return total


def test_reduced_resnet18_is_gems_network():
    net = build_backbone(BackboneConfig(name="reduced_resnet18", image_size=32))
    assert net.feature_dim == 160
    assert sum(p.numel() for p in net.parameters()) == resnet_parameter_count(20)
    x = torch.rand(3, 3, 32, 32)
    net.eval()
    acts = net.forward_activations(x)
    assert [a.shape[1:] for a in acts[:-1]] == [(20, 32, 32)] * 3 + [(40, 16, 16)] * 2 + [(80, 8, 8)] * 2 + [(160, 4, 4)] * 2
    torch.testing.assert_close(acts[-1], net(x))
    torch.testing.assert_close(net(x), acts[-2].mean((2, 3)))  # 4x4 average pooling of the last maps
    gray = torch.rand(2, 1, 32, 32)  # grayscale is repeated to three channels
    torch.testing.assert_close(net(gray), net(gray.expand(-1, 3, -1, -1)))


def test_seeded_initialisation_decides_the_weights():
    torch.manual_seed(0)
    a = build_backbone(BackboneConfig(name="reduced_resnet18", image_size=32))
    torch.manual_seed(0)
    b = build_backbone(BackboneConfig(name="reduced_resnet18", image_size=32))
    torch.manual_seed(1)
    c = build_backbone(BackboneConfig(name="reduced_resnet18", image_size=32))
    assert a.weights_id == b.weights_id != c.weights_id


def sncl_on_resnet(**params):
    torch.manual_seed(0)
    backbone = build_backbone(BackboneConfig(name="reduced_resnet18", image_size=32)).requires_grad_(True)
    p = SNCLParams(train_backbone=True, epochs=1, batch_size=4, lr=0.05, backbone_lr=0.05, momentum=0.0, memory_size=8, **params)
    ctx = LearnerContext(backbone=backbone, features=None, device=torch.device("cpu"), seed=0, num_classes=4, scenario="class")
    return SNCL(p, ctx)


def test_sncl_trains_the_reduced_resnet_with_per_channel_units():
    learner = sncl_on_resnet(sparsity=1e-3, beta=1.0)
    assert learner.stack.widths == [20, 20, 20, 40, 40, 80, 80, 160, 160]
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 3, 32, 32, generator=g)
    y = torch.tensor([0, 1] * 4 + [2, 3] * 4)
    learner.net.train()
    losses = [learner.observe(x[lo : lo + 4], y[lo : lo + 4]) for lo in range(0, 16, 4)]
    assert all(map(torch.isfinite, map(torch.tensor, losses)))
    assert [len(gm) for gm in learner.prior.gamma] == learner.stack.widths
    f = learner.memory.fields
    assert len(learner.memory) == 8 and f["act0"].shape == (8, 20, 4, 4) and f["act8"].shape == (8, 160, 4, 4)
    # predictions are the deterministic pass (posterior means) of the same network
    learner.eval_mode()
    logits, _ = learner.stack.forward(x[:3])
    torch.testing.assert_close(logits, learner.net(x[:3]))
    # the memory's activations are the training pass's, pooled: replaying them is an MSE on 4x4 maps
    assert F.mse_loss(learner.pool(torch.zeros(2, 20, 32, 32)), torch.zeros(2, 20, 4, 4)) == 0


def test_cifar100_config_fails_fast_without_the_data(tmp_path, capsys):
    from retaincl.cli import main

    code = main(["run", str(CONFIGS / "cifar100_reduced_resnet.yaml"), "--set", f"data.root={tmp_path / 'nothing'}",
                 "--set", f"output_dir={tmp_path / 'runs'}"])
    assert code == 2
    assert "CIFAR-100 is not under" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["split_mnist", "permuted_mnist", "pretrained_split_mnist", "cifar100_reduced_resnet"])
def test_configs_validate(name):
    from retaincl.config import load_config

    cfg = load_config(str(CONFIGS / f"{name}.yaml"), [])
    assert "sncl" in cfg.method_names

"""finetune_net and joint_net (the replay base's bounds) give the numbers of finetune and
joint of methods/linear.py on the same network: same initial weights, batch order and
SGD updates (plain SGD through the base's own step, momentum through torch.optim)."""

import pytest

from retaincl.config import load_config
from retaincl.engine.runner import Session, run_method

PROTOCOL = "train_backbone=true epochs=1 batch_size=10 lr=0.1 backbone_lr=0.1 lr_schedule=constant"


@pytest.mark.slow
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_bounds_on_the_replay_base_equal_the_linear_ones(tmp_path, momentum):
    pairs = {"finetune": "finetune_net", "joint": "joint_net"}
    sets = ["data.source=digits", "backbone.name=mlp", "backbone.image_size=8", "cache.enabled=false",
            "scenario.kind=class", "quiet=true", f"output_dir={tmp_path}", f"method=[{','.join([*pairs, *pairs.values()])}]"]
    for m in [*pairs, *pairs.values()]:
        sets += [f"methods.{m}.{kv}" for kv in PROTOCOL.split()] + [f"methods.{m}.momentum={momentum}"]
    session = Session.create(load_config(None, sets))
    for linear, net in pairs.items():
        a = run_method(session, linear, resume=False, progress=False)["correct_matrix"]
        b = run_method(session, net, resume=False, progress=False)["correct_matrix"]
        assert a == b, (linear, a, b)

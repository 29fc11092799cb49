"""VPT and DAP through the runner on digits with the packaged tiny ViT (8 px, the digits' own size; 1 epoch)."""

from __future__ import annotations

import numpy as np
import pytest

from retaincl.engine.runner import Session, run_method


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["class", "domain"])
def test_vpt_and_dap_run_in_class_and_domain_streams(make_digits_config, kind):
    proto = {"epochs": 1, "batch_size": 32}
    cfg = make_digits_config(
        method=["vpt", "dap"],
        methods={"vpt": {**proto, "prompt_length": 4}, "dap": {**proto, "prompt_length": 4, "batch_majority_vote": True}},
        backbone={"name": "vit_tiny_retain", "image_size": 8},
        scenario={"kind": kind, "base": 4, "increment": 3, "domains": "permuted", "num_tasks": 2},
    )
    session = Session.create(cfg)
    for method in ("vpt", "dap"):
        res = run_method(session, method, progress=False)
        R = np.array(res["accuracy_matrix"])
        T = 3 if kind == "class" else 2
        assert R.shape == (T, T) and not np.isnan(R[np.tril_indices(T)]).any()
        assert R[0, 0] > 0.25  # learned the first task well above chance (1/4 or 1/10)
        # the batch-level flag is recorded in the results (DAP's majority vote on here)
        assert res["method_info"]["batch_level_inference"] is (method == "dap")

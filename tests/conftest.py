"""Shared fixtures: a fast config on scikit-learn's digits."""

import os

import pytest
import torch

from retaincl.config import config_from_dict

# Small tensors: one thread is as fast and does not thrash when other jobs share the cores.
torch.set_num_threads(int(os.environ.get("RETAINCL_TEST_THREADS", "1")))


def digits_config(tmp_path, cache_dir=None, **extra):
    tree = {
        "method": ["simplecil", "ranpac", "finetune", "joint"],
        "methods": {"ranpac": {"projection_dim": 500}, "finetune": {"epochs": 3}, "joint": {"epochs": 3}},
        "data": {"source": "digits"},
        "scenario": {"kind": "class", "base": 2, "increment": 2},
        "backbone": {"name": "efficientnet_lite0", "image_size": 32},
        "cache": {"dir": str(cache_dir or tmp_path / "cache")},
        "output_dir": str(tmp_path / "runs"),
        "quiet": True,
        "device": "cpu",
    }
    for key, value in extra.items():
        node = tree
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return config_from_dict(tree)


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory):
    """One feature cache for the whole test session: digits are extracted once."""
    return tmp_path_factory.mktemp("feature-cache")


@pytest.fixture
def make_digits_config(tmp_path, shared_cache):
    return lambda **extra: digits_config(tmp_path, shared_cache, **extra)

"""What a method's run folder holds, and whether it belongs to this config.

A run folder (``<output_dir>/<run name>/<method>/``) holds ``results.json`` and
``checkpoint.pt``; both record the config hash and the hashed config. The run name
leaves out the class order, method hyperparameters and data root, so two configs can
share a folder: the runner compares hashes before reusing, continuing or writing over
anything, and names the keys that differ when it refuses.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Any

import torch

from retaincl.config import ExperimentConfig, method_params, to_dict
from retaincl.engine import distributed
from retaincl.engine.checkpoint import load_checkpoint

log = logging.getLogger(__name__)


class RunError(RuntimeError):
    """A run cannot start as configured; the message says why and what to change."""

#: Config keys that do not change the numbers: left out of the config hash. (``seeds``
#: names a sweep, each of whose runs has its own ``seed``; ``log`` only adds trackers;
#: ``loader`` only changes how images are decoded.)
UNHASHED_KEYS = ("quiet", "method", "cache", "output_dir", "eval", "threads", "loader", "seeds", "log")


def hashed_config(cfg: ExperimentConfig, method: str) -> dict[str, Any]:
    """The part of the config that decides ``method``'s numbers: every section but
    :data:`UNHASHED_KEYS`, and this method's hyperparameters with their defaults filled
    in (so that a changed default is a changed config)."""
    tree = to_dict(cfg)
    for key in UNHASHED_KEYS:
        tree.pop(key, None)
    if tree.get("precision") == "fp32":  # the default: hashes of runs from before the key stay valid
        tree.pop("precision")
    for key in ("train_per_class", "test_per_class"):  # null (all data), the default: hashes stay as before
        if tree.get("data", {}).get(key, 0) is None:
            tree["data"].pop(key)
    tree["methods"] = {method: to_dict(method_params(method, cfg.methods.get(method)))}
    return tree


def config_hash(cfg: ExperimentConfig, method: str) -> str:
    tree = hashed_config(cfg, method)
    return hashlib.sha256(json.dumps([tree, method], sort_keys=True, default=str).encode()).hexdigest()[:16]


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: tree}


def config_differences(old: dict[str, Any] | None, new: dict[str, Any]) -> str:
    """'key: old -> new' for the first keys that differ, or a note when unknown."""
    if not isinstance(old, dict):
        return "a config from an older version, not recorded"
    a, b = _flatten(old), _flatten(new)
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k, "<absent>") != b.get(k, "<absent>"))
    shown = [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}" for k in keys[:3]]
    return "; ".join(shown) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "") if keys else "same values"


def _plain(tree: Any) -> Any:
    """``tree`` as it reads back from JSON (tuples as lists, non-JSON values as strings)."""
    return json.loads(json.dumps(tree, sort_keys=True, default=str))


def same_config(stored_hash: Any, stored: Any, chash: str, hashed: dict[str, Any]) -> bool:
    """Whether a folder's results or checkpoint (``stored_hash``, ``stored`` hashed config)
    belong to this config (``chash``, ``hashed``).

    Equal hashes, or: every key stored has the same value now, and every key the stored
    config lacks (a key added to retaincl after it was written) has its default value now,
    so the run would have used it. A key that is gone, or a new key set to something else,
    is another config."""
    if stored_hash == chash:
        return True
    if not isinstance(stored, dict) or not isinstance(hashed.get("methods"), dict) or len(hashed["methods"]) != 1:
        return False
    (method,) = hashed["methods"]
    old, new = _flatten(_plain(stored)), _flatten(_plain(hashed))
    if set(old) - set(new) or any(old[k] != new[k] for k in old):
        return False
    defaults = _flatten(_plain(hashed_config(ExperimentConfig(), method)))
    return all(k in defaults and new[k] == defaults[k] for k in set(new) - set(old))


def read_finished_results(path: Path) -> dict[str, Any] | None:
    """A results file written by a finished run, or None when absent or unreadable."""
    if not path.exists():
        return None
    try:
        res = json.loads(path.read_text())
        if isinstance(res, dict) and isinstance(res.get("accuracy_matrix"), list):
            # the file holds null where an accuracy was not measured (JSON has no NaN);
            # returned as NaN, as a run that has just finished returns it
            res["accuracy_matrix"] = [
                [math.nan if v is None else v for v in row] if isinstance(row, list) else row
                for row in res["accuracy_matrix"]
            ]
        return res if isinstance(res, dict) else None
    except (OSError, ValueError) as err:
        log.warning("%s cannot be read (%s); it will be written again", path, err)
        return None




def open_run_folder(
    out_dir: Path, chash: str, hashed: dict[str, Any], resume: bool, overwrite: bool
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(finished results to reuse, checkpoint to continue) of a method's folder; at most one.

    Results or a checkpoint of another config are refused (:class:`RunError` naming the
    keys that differ) unless ``overwrite``, which removes those results. This config's
    finished results are reused when ``resume``; without it (``--fresh``) they are
    removed, so that a crash of the new run cannot bring them back. A checkpoint is
    continued only with the thread count it was written with."""
    ckpt_path, results_path = out_dir / "checkpoint.pt", out_dir / "results.json"

    def refuse(what: Path, stored: dict[str, Any] | None) -> RunError:
        return RunError(
            f"{what} belongs to another config ({config_differences(stored, hashed)}); pass --overwrite "
            f"to replace it, or set name=... to keep both"
        )

    finished = read_finished_results(results_path)
    ours = finished is not None and same_config(finished.get("config_hash"), finished.get("hashed_config"), chash, hashed)
    if finished is not None and not ours and not overwrite:
        raise refuse(results_path, finished.get("hashed_config"))
    if ours and resume:
        return finished, None
    if finished is not None:
        results_path.unlink()
    if not (resume and not overwrite and ckpt_path.exists()):
        return None, None
    ckpt = load_checkpoint(ckpt_path)
    if not same_config(ckpt.get("config_hash"), ckpt.get("hashed_config"), chash, hashed):
        raise refuse(ckpt_path, ckpt.get("hashed_config"))
    threads = torch.get_num_threads()
    if ckpt.get("threads", threads) != threads:
        n = ckpt["threads"]
        raise RunError(
            f"{ckpt_path} was written by a run with {n} thread(s) and this one has {threads}; some numbers "
            f"depend on the thread count, so continue it with --set threads={n}, or pass --fresh to start over"
        )
    processes = distributed.world_size()
    if ckpt.get("world_size", 1) != processes:
        n = ckpt.get("world_size", 1)
        raise RunError(
            f"{ckpt_path} was written by a run over {n} process(es) and this one has {processes}; the training "
            f"steps' rounding depends on it, so continue it with {n} process(es) (torchrun --nproc_per_node), "
            f"or pass --fresh to start over"
        )
    return None, ckpt

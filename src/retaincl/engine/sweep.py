"""Sweeps: several configs and several seeds in one command.

``retaincl run A.yaml B.yaml --seeds 0,1,2`` (or ``seeds: [0, 1, 2]`` in a config) runs
every method of every config once per seed. Each (config, seed) is one run of its own,
with its own ``seed`` and so its own run folder (``...-seed<N>``; a config with a
``name`` gets ``<name>-seed<N>``), and each method writes its own results there. The run
folder rules (:mod:`retaincl.engine.run_folder`) make a sweep restartable: what finished
is reused, what was interrupted continues, nothing finished is computed again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

from retaincl.config import ConfigError, ExperimentConfig


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` or ``"0-4"`` (inclusive) or a mix, as a list of seeds; a :class:`ConfigError` otherwise."""
    seeds: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        try:
            if "-" in part:
                lo, hi = part.split("-", 1)
                a, b = int(lo), int(hi)
                if b < a:
                    raise ValueError
                seeds += range(a, b + 1)
            else:
                seeds.append(int(part))
        except ValueError:
            raise ConfigError(f"--seeds {text!r}: expected seeds such as 0,1,2 or 0-4") from None
    return seeds


def expand_seeds(cfg: ExperimentConfig) -> list[ExperimentConfig]:
    """One config per seed of ``cfg.seeds`` (just ``cfg`` when it names none)."""
    if cfg.seeds is None:
        return [cfg]
    return [
        dataclasses.replace(cfg, seed=s, seeds=None, name=f"{cfg.name}-seed{s}" if cfg.name else None)
        for s in cfg.seeds
    ]


def run_configs(
    configs: list[ExperimentConfig],
    *,
    resume: bool = True,
    overwrite: bool = False,
    on_session: Callable[[Any], None] | None = None,
    on_result: Callable[[Any, str, dict[str, Any]], None] | None = None,
) -> Iterator[dict[str, Any]]:
    """Run every method of every config in turn; yields each method's results (reused
    ones marked ``reused: True``). ``on_session(session)`` is called when a config's
    session starts, ``on_result(session, method, results)`` after each method."""
    from retaincl.engine.runner import Session, run_method

    for cfg in configs:
        session = Session.create(cfg)
        if on_session is not None:
            on_session(session)
        for name in cfg.method_names:
            res = run_method(session, name, resume=resume, overwrite=overwrite)
            if on_result is not None:
                on_result(session, name, res)
            yield res

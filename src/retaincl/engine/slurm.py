"""Config x seed sweeps on a Slurm cluster through submitit (optional extra ``slurm``).

``retaincl submit CONFIG [CONFIG ...] --seeds 1993 1994 1995`` submits one job per
(config, seed). Each job runs ``retaincl run CONFIG --set seed=SEED`` in its own
process on the allocated node(s), with ``output_dir`` as the config says. The run
folder's name holds the seed, so the jobs never share a folder; a config with a fixed
``name`` gets ``name=NAME-seedSEED`` when the sweep has several seeds. With
``--tasks-per-node N`` (and ``--nodes M``) a job is a data-parallel run over N x M
processes: submitit starts them and :class:`submitit.helpers.TorchDistributedEnvironment`
exports the variables torchrun would (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``), which :mod:`retaincl.engine.distributed` reads.

``--executor local`` runs the jobs as local processes and ``--executor debug`` in this
process, one after the other (submitit's own executors), to try a sweep without a
cluster. ``--wait`` waits for every job and prints the summary table of their results;
without it the job ids and the log folder are printed and the command returns.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retaincl.config import ConfigError

log = logging.getLogger(__name__)


@dataclass
class SlurmOptions:
    """What each job asks of the cluster (submitit's ``slurm_*`` parameters)."""

    partition: str | None = None
    timeout_min: int = 240
    nodes: int = 1
    tasks_per_node: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int = 8
    mem_gb: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # slurm_additional_parameters


def require_submitit() -> Any:
    try:
        import submitit
    except ImportError as err:
        raise ConfigError(
            "retaincl submit needs submitit: pip install 'retaincl[slurm]' (or pip install submitit)"
        ) from err
    return submitit


class RunJob:
    """One (config, seed) run, as a picklable callable that submitit ships to the node."""

    def __init__(self, config: str, seed: int, overrides: list[str]) -> None:
        self.config, self.seed, self.overrides = config, seed, list(overrides)

    def argv(self) -> list[str]:
        argv = ["run", self.config, "--quiet", "--set", f"seed={self.seed}"]
        for item in self.overrides:
            argv += ["--set", item]
        return argv

    def __call__(self) -> list[str]:
        """Run it; returns the results files written (rank 0's, or none on other ranks)."""
        import submitit

        from retaincl.cli import main
        from retaincl.engine import distributed

        env = submitit.JobEnvironment()
        if env.num_tasks > 1:  # a data-parallel job: the variables torchrun would set
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        code = main(self.argv())
        if code != 0:
            raise RuntimeError(f"retaincl {' '.join(self.argv())} exited with code {code}")
        return results_files(self.config, self.seed, self.overrides) if distributed.is_main() else []

    def __repr__(self) -> str:
        return f"RunJob({self.config!r}, seed={self.seed})"


def results_files(config: str, seed: int, overrides: list[str]) -> list[str]:
    """The results files of ``config`` at ``seed``, where ``retaincl run`` writes them."""
    from types import SimpleNamespace

    from retaincl.config import load_config
    from retaincl.engine.runner import Session

    cfg = load_config(config, [*overrides, f"seed={seed}"])
    folder = Path(cfg.output_dir).expanduser() / Session.run_name(SimpleNamespace(cfg=cfg))  # reads cfg alone
    return [str(folder / m / "results.json") for m in cfg.method_names if (folder / m / "results.json").exists()]


def make_executor(kind: str, folder: str | Path, opts: SlurmOptions) -> Any:
    """submitit's executor: ``slurm`` (a cluster), ``local`` (processes here) or ``debug``."""
    submitit = require_submitit()
    if kind not in ("slurm", "local", "debug"):
        raise ConfigError(f"--executor {kind!r}: choose slurm, local or debug")
    cluster = None if kind == "slurm" else kind
    ex = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    ex.update_parameters(
        timeout_min=opts.timeout_min, nodes=opts.nodes, tasks_per_node=opts.tasks_per_node,
        cpus_per_task=opts.cpus_per_task, name="retaincl",
    )
    if kind == "slurm":
        params: dict[str, Any] = {"slurm_gpus_per_node": opts.gpus_per_node} if opts.gpus_per_node else {}
        if opts.partition:
            params["slurm_partition"] = opts.partition
        if opts.mem_gb:
            params["slurm_mem"] = f"{opts.mem_gb}G"
        if opts.extra:
            params["slurm_additional_parameters"] = dict(opts.extra)
        ex.update_parameters(**params)
    return ex


def submit_sweep(
    configs: list[str],
    seeds: list[int],
    folder: str | Path,
    executor: str = "slurm",
    opts: SlurmOptions | None = None,
    overrides: list[str] | None = None,
) -> list[Any]:
    """One job per (config, seed), submitted as one Slurm array; returns the jobs.

    Every config is loaded here first, so a wrong key or file is a one-line error before
    anything is queued."""
    from retaincl.config import load_config

    if not configs or not seeds:
        raise ConfigError("retaincl submit needs at least one config and one seed (--seeds)")
    overrides = list(overrides or [])
    runs = []
    for config in configs:
        name = load_config(config, overrides).name
        for seed in seeds:  # a named config's folder is its name: one folder per seed (name-seedS)
            extra = [f"name={name}-seed{int(seed)}"] if name and len(seeds) > 1 else []
            runs.append(RunJob(str(Path(config).resolve()), int(seed), overrides + extra))
    ex = make_executor(executor, folder, opts or SlurmOptions())
    with ex.batch():
        jobs = [ex.submit(run) for run in runs]
    for run, job in zip(runs, jobs):
        log.info("submitted %s as job %s", run, job.job_id)
    return jobs


# ---------------------------------------------------------------------- the command


def add_subparser(sub: Any) -> None:
    """``retaincl submit`` (registered by :func:`retaincl.cli.build_parser`)."""
    p = sub.add_parser("submit", help="submit a config x seed sweep to Slurm (submitit): one job per (config, seed)")
    p.add_argument("configs", nargs="+", help="YAML config files")
    p.add_argument("--seeds", type=int, nargs="+", required=True, help="one job per seed and config")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key in every job (repeatable)")
    p.add_argument("--folder", default="slurm-logs", help="where submitit keeps job scripts and logs")
    p.add_argument("--executor", default="slurm", choices=["slurm", "local", "debug"],
                   help="slurm (a cluster), local (processes here) or debug (in this process)")
    p.add_argument("--partition", help="Slurm partition")
    p.add_argument("--timeout-min", type=int, default=240, help="job time limit in minutes")
    p.add_argument("--nodes", type=int, default=1, help="nodes per job (data-parallel over all of them)")
    p.add_argument("--tasks-per-node", type=int, default=1, help="processes per node: one per GPU")
    p.add_argument("--gpus-per-node", type=int, default=0)
    p.add_argument("--cpus-per-task", type=int, default=8)
    p.add_argument("--mem-gb", type=int, help="memory per node")
    p.add_argument("--wait", action="store_true", help="wait for every job and print the summary of their results")
    p.set_defaults(func=cmd_submit)


def cmd_submit(args: Any) -> int:
    opts = SlurmOptions(
        partition=args.partition, timeout_min=args.timeout_min, nodes=args.nodes, tasks_per_node=args.tasks_per_node,
        gpus_per_node=args.gpus_per_node, cpus_per_task=args.cpus_per_task, mem_gb=args.mem_gb,
    )
    jobs = submit_sweep(args.configs, args.seeds, args.folder, args.executor, opts, args.set)
    for job in jobs:
        print(f"submitted job {job.job_id}")
    print(f"logs: {Path(args.folder).resolve()}")
    if not args.wait:
        print("results: retaincl report OUTPUT_DIR (each job writes its run folder, as retaincl run does)")
        return 0
    from retaincl.evaluation.report import load_results, summary_table

    files = [f for job in jobs for f in job.result()]
    print(summary_table(load_results(files)))
    return 0

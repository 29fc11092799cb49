"""The ``retaincl`` command: run, list, report, compare, config.

    retaincl run                         # the embedded default benchmark (no download)
    retaincl run CONFIG.yaml --set scenario.increment=10 --set methods.ranpac.projection_dim=5000
    retaincl run A.yaml B.yaml --seeds 0,1,2   # a sweep: every method of each config on each seed
    retaincl list                        # methods, backbones, data sources, scenarios
    retaincl report runs/                # one row per results file
    retaincl compare runs/ --format latex --html report.html   # per stream, mean ± sd over seeds
    retaincl config [METHOD]             # every config key (or one method's) with type, default, doc
    retaincl --import my_methods run ... # a module of your own that registers methods

Only the standard library is imported until a subcommand runs, so ``--help`` and
``--version`` answer at once (torch is imported by the commands that need it).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from importlib import resources
from pathlib import Path

from retaincl.config import ConfigError, ExperimentConfig, describe, load_config

DEFAULT_CONFIG = "default.yaml"


def default_config_path() -> Path:
    return Path(str(resources.files("retaincl") / "configs" / DEFAULT_CONFIG))


def load_plugins(modules: list[str] | None, optional_sources: bool = True) -> None:
    """Import ``--import`` modules (their ``@register_method`` classes become methods) and
    the data sources of optional parts (``cifar10``, registered by the anomaly package).
    A module that cannot be imported is a user error naming it."""
    import importlib

    for name in modules or []:
        target = name
        if name.endswith(".py") or os.sep in name:
            path = Path(name)
            if not path.is_file():
                raise FileNotFoundError(f"--import {name}: no such file; give a module name or a .py file")
            sys.path.insert(0, str(path.resolve().parent))
            target = path.stem
        try:
            importlib.import_module(target)
        except ImportError as err:
            raise ConfigError(f"--import {name}: cannot import it ({err}); check the name and PYTHONPATH") from err
    if optional_sources:  # the commands that look names up (not compare/report: no torch there)
        import retaincl.anomaly.sources  # noqa: F401  (registers cifar10, as before the lazy parser)


def cmd_run(args: argparse.Namespace) -> int:
    from retaincl.engine.sweep import expand_seeds, parse_seeds

    paths = args.config or [None]
    overrides = list(args.set or [])
    if args.quiet:
        overrides.append("quiet=true")
    if args.no_cache:
        overrides.append("cache.enabled=false")
    if args.skip_bad_images:
        overrides.append("data.skip_bad_images=true")
    if args.method:
        overrides.append(f"method=[{','.join(args.method)}]")
    if args.seeds:
        overrides.append(f"seeds=[{','.join(map(str, parse_seeds(args.seeds)))}]")
    # every config is read and checked before anything runs: a typo in the last one stops the sweep at once
    configs = [c for path in paths for c in expand_seeds(load_config(path or default_config_path(), overrides))]
    if len(configs) == 1:
        return run_one(configs[0], args)
    return run_sweep(configs, args)


def run_one(cfg: ExperimentConfig, args: argparse.Namespace) -> int:
    """One config on one seed: the summary table and, with --matrix, the matrices."""
    from retaincl.engine.runner import Session, run_method
    from retaincl.evaluation.report import SUMMARY_NOTE, matrix_table, summary_table

    session = Session.create(cfg)
    say = (lambda *a: None) if cfg.quiet else print
    say(f"retaincl: {session.stream.description}; backbone {cfg.backbone.name} ({session.device})")
    results = []
    for name in cfg.method_names:
        res = run_method(session, name, resume=not args.fresh, overwrite=args.overwrite)
        if res.get("reused"):
            say(f"{name}: finished earlier with this config; its results are reused (--fresh runs it again)")
        results.append(res)
        if args.matrix and not cfg.quiet:
            print(f"\n{name}: accuracy matrix R[i][j] (%), row = after task i, column = task j")
            print(matrix_table(res))
    stats = session.features.stats
    print()
    print(summary_table(results))
    print(
        f"\n{SUMMARY_NOTE}\nfeatures extracted: {stats.extracted_samples} samples "
        f"in {stats.extraction_seconds:.1f}s; read from cache: {stats.loaded_samples}."
    )
    if session.skipped_images:
        print(f"left out {len(session.skipped_images)} unreadable image file(s); the results list them")
    for res in results:
        print(f"results: {res['results_path']}")
    return 0


def run_sweep(configs: list[ExperimentConfig], args: argparse.Namespace) -> int:
    """Several configs or seeds: each run in turn (finished ones reused), then the
    comparison of everything the sweep produced, one table per stream."""
    from retaincl.engine.sweep import run_configs
    from retaincl.evaluation.compare import group_results, to_markdown

    quiet = all(c.quiet for c in configs)
    say = (lambda *a: None) if quiet else print
    say(f"retaincl: a sweep of {len(configs)} runs ({sum(len(c.method_names) for c in configs)} method runs)")

    def on_session(session) -> None:
        say(f"[seed {session.cfg.seed}] {session.stream.description}; backbone {session.cfg.backbone.name}")

    def on_result(session, name: str, res: dict) -> None:
        last = res["metrics"]["last_accuracy"]
        how = "reused (finished earlier)" if res.get("reused") else "done"
        say(f"  {name}: {how}; last {100 * last:.1f}%  {res['results_path']}")

    results = list(run_configs(configs, resume=not args.fresh, overwrite=args.overwrite,
                               on_session=on_session, on_result=on_result))
    for r in results:
        r.setdefault("results_file", r.get("results_path"))
    print()
    print(to_markdown(group_results(results)), end="")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from retaincl.registry import BACKBONES, DATA_SOURCES, METHODS, SCENARIOS

    def first_line(obj: object) -> str:
        text = (obj.__doc__ or "").strip().splitlines()
        return text[0] if text else ""

    for title, reg in (("methods", METHODS), ("backbones", BACKBONES), ("data sources", DATA_SOURCES), ("scenarios", SCENARIOS)):
        print(f"{title}:")
        if reg is METHODS:  # with exemplars and model growth (retaincl.practitioner.facts)
            from retaincl.practitioner.facts import method_lines

            print("\n".join(method_lines(first_line)))
            continue
        for name, obj in reg.items():
            print(f"  {name:<18} {first_line(obj)}")
    print("  (any timm model name also works as a backbone)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from retaincl.evaluation.report import SUMMARY_NOTE, load_results, matrix_table, summary_table

    results = load_results(args.paths)
    print(summary_table(results))
    print(f"\n{SUMMARY_NOTE}")
    if args.matrix:
        for r in results:
            print(f"\n{r['method']} ({r.get('stream', {}).get('description', '?')})")
            print(matrix_table(r))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from retaincl.engine.files import atomic_write_text
    from retaincl.evaluation.compare import FORMATS, compare_paths

    comparison = compare_paths(args.paths)
    text = FORMATS[args.format](comparison, args.columns)
    if args.output:
        atomic_write_text(args.output, text)
    else:
        print(text, end="")
    for note in comparison.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.plots:
        from retaincl.evaluation.plots import write_plots

        for path in write_plots(comparison, args.plots):
            print(f"plot: {path}", file=sys.stderr)
    if args.html:
        from retaincl.evaluation.html import render_html, write_html

        write_html(args.html, render_html(comparison, args.columns, sources=[str(p) for p in args.paths]))
        print(f"report: {args.html}", file=sys.stderr)
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from retaincl.registry import METHODS

    if args.method:
        cls = METHODS.get(args.method)  # an unknown name: KeyError listing the known ones
        print(f"{args.method}: {((cls.__doc__ or '').strip().splitlines() or [''])[0]}")
        for key, tp, default, text in describe(cls.Params, f"methods.{args.method}."):
            print(f"{key:<28} {tp:<34} default {default!r:<28} {text}")
        return 0
    for key, tp, default, text in describe(ExperimentConfig):
        print(f"{key:<28} {tp:<34} default {default!r:<28} {text}")
    for name, cls in METHODS.items():
        for key, tp, default, text in describe(cls.Params, f"methods.{name}."):
            print(f"{key:<28} {tp:<34} default {default!r:<28} {text}")
    return 0


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    from retaincl import __version__

    parser = argparse.ArgumentParser(prog="retaincl", description="Continual learning with pre-trained models.")
    parser.add_argument("--version", action="version", version=f"retaincl {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    parser.add_argument(
        "--import", dest="imports", action="append", metavar="MODULE",
        help="import a module (name or .py file) that registers methods with @register_method (repeatable)",
    )
    parser.add_argument("--debug", action="store_true", help="on an error, show the traceback")
    # --debug also after the subcommand; SUPPRESS keeps the subparser from resetting it to False
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="on an error, show the traceback")
    sub = parser.add_subparsers(dest="command")
    add_parser = sub.add_parser

    def add_with_common(*a, **kw):  # every subcommand takes --debug
        kw.setdefault("parents", []).append(common)
        return add_parser(*a, **kw)

    sub.add_parser = add_with_common  # type: ignore[method-assign]

    run = sub.add_parser("run", help="run a config (default: the embedded mnist5k benchmark)")
    run.add_argument("config", nargs="*", help="YAML config file(s) (default: the embedded default)")
    run.add_argument(
        "--seeds", metavar="LIST",
        help="a sweep: run every method on each seed, e.g. 0,1,2 or 0-4 (each seed its own run folder)",
    )
    run.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    run.add_argument("--method", action="append", help="run this method (repeatable); overrides the config's")
    run.add_argument(
        "--fresh", action="store_true",
        help="run every method again from the start, ignoring this config's finished results and checkpoints",
    )
    run.add_argument(
        "--overwrite", action="store_true",
        help="replace results and checkpoints of another config that share this run's folder",
    )
    run.add_argument("--no-cache", action="store_true", help="bypass the feature cache")
    run.add_argument(
        "--skip-bad-images", action="store_true",
        help="image folders: leave out unreadable image files (listed in the results) instead of stopping",
    )
    run.add_argument("--quiet", action="store_true", help="no progress bars or status lines (the tables still print)")
    run.add_argument("--matrix", action="store_true", help="also print each method's accuracy matrix")
    run.set_defaults(func=cmd_run)

    lst = sub.add_parser("list", help="list methods, backbones, data sources and scenarios")
    lst.set_defaults(func=cmd_list)

    rep = sub.add_parser("report", help="tables from results files or folders")
    rep.add_argument("paths", nargs="+")
    rep.add_argument("--matrix", action="store_true", help="also print accuracy matrices")
    rep.set_defaults(func=cmd_report)

    cmp = sub.add_parser("compare", help="results per stream and method, mean ± sd over seeds; CSV, LaTeX, plots, HTML")
    cmp.add_argument("paths", nargs="+", help="run folders or results files (searched for results.json)")
    cmp.add_argument("--format", choices=["markdown", "csv", "json", "latex"], default="markdown")
    cmp.add_argument(
        "--columns", metavar="LIST",
        help="comma-separated, e.g. avg_inc,last,forgetting,bwt,fwt,time,fit_time,peak_memory,steps "
        "(default avg_inc,last,forgetting,bwt,time; an unknown name lists them all)",
    )
    cmp.add_argument("-o", "--output", metavar="FILE", help="write the table to FILE instead of printing it")
    cmp.add_argument("--plots", metavar="FOLDER", help="write the PNG plots of each stream into FOLDER")
    cmp.add_argument("--html", metavar="FILE", help="write one self-contained HTML report (tables and plots)")
    cmp.set_defaults(func=cmd_compare)

    cfg = sub.add_parser("config", help="every config key (or one method's) with type, default and documentation")
    cfg.add_argument("method", nargs="?", help="show only this method's keys (methods.<name>.*)")
    cfg.set_defaults(func=cmd_config)

    if command in ANOMALY_COMMANDS:
        from retaincl.anomaly.cli import add_subparsers as add_anomaly

        add_anomaly(sub)  # retaincl anomaly, retaincl anomaly-score
    else:  # listed in --help without importing the anomaly package (it imports torch)
        for name, text in ANOMALY_COMMANDS.items():
            sub.add_parser(name, help=text)

    from retaincl.practitioner.commands import add_subparsers as add_practitioner

    add_practitioner(sub)  # retaincl learn, retaincl predict

    from retaincl.engine.slurm import add_subparser as add_submit

    add_submit(sub)  # retaincl submit: config x seed sweeps on Slurm (submitit)
    return parser


#: the anomaly subcommands and their help lines (their parsers are built only when used)
ANOMALY_COMMANDS = {
    "anomaly": "MemAE anomaly / novelty detection protocols from a config",
    "anomaly-score": "anomaly scores of image files with a saved detector",
}


def command_of(argv: list[str]) -> str | None:
    """The subcommand named in ``argv`` (the first word that is not an option or its value)."""
    takes_value = {"--import"}
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word in takes_value:
            skip = True
        elif not word.startswith("-"):
            return word
    return None


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors a user causes (a config value, a file, a diverged run): one line, exit 2."""
    from retaincl.backbones.base import BackboneError
    from retaincl.data.sources import DataSourceError
    from retaincl.engine.checkpoint import CheckpointError
    from retaincl.engine.loggers import LoggerError
    from retaincl.engine.runner import RunError
    from retaincl.evaluation.report import ReportError
    from retaincl.methods.base import DivergenceError

    return (
        ConfigError, KeyError, FileNotFoundError, BackboneError, DataSourceError, RunError,
        CheckpointError, ReportError, DivergenceError, LoggerError, FloatingPointError,  # a diverged run, however raised
    )


def one_line(err: BaseException) -> str:
    msg = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    return " ".join(str(msg).split()) or type(err).__name__


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(command_of(argv))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if args.command is None:
        args = parser.parse_args([*argv, "run"])
    try:
        load_plugins(args.imports, optional_sources=args.command in ("run", "list", "config"))
        return args.func(args)
    except BrokenPipeError:  # `retaincl config | head`
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keep Python quiet at exit
        return 0
    except Exception as err:
        if args.debug or not isinstance(err, user_errors()):
            raise
        print(f"retaincl: error: {one_line(err)} (--debug shows the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""The ``retaincl`` command: run, list, report, config.

    retaincl run                         # the embedded default benchmark (no download)
    retaincl run CONFIG.yaml --set scenario.increment=10 --set methods.ranpac.projection_dim=5000
    retaincl list                        # methods, backbones, data sources, scenarios
    retaincl report runs/                # tables from results files
    retaincl config                      # every config key with its type, default and doc
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


def cmd_run(args: argparse.Namespace) -> int:
    from retaincl.engine.runner import Session, run_method
    from retaincl.evaluation.report import matrix_table, summary_table

    path = args.config or default_config_path()
    overrides = list(args.set or [])
    if args.quiet:
        overrides.append("quiet=true")
    if args.no_cache:
        overrides.append("cache.enabled=false")
    if args.skip_bad_images:
        overrides.append("data.skip_bad_images=true")
    if args.method:
        overrides.append(f"method=[{','.join(args.method)}]")
    cfg = load_config(path, overrides)
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
        f"\nA_t: accuracy (%) on the pooled test data of the tasks seen after task t (sample-weighted); "
        f"forgetting and BWT in points.\nfeatures extracted: {stats.extracted_samples} samples "
        f"in {stats.extraction_seconds:.1f}s; read from cache: {stats.loaded_samples}."
    )
    if session.skipped_images:
        print(f"left out {len(session.skipped_images)} unreadable image file(s); the results list them")
    for res in results:
        print(f"results: {res['results_path']}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from retaincl.registry import BACKBONES, DATA_SOURCES, METHODS, SCENARIOS

    def first_line(obj: object) -> str:
        text = (obj.__doc__ or "").strip().splitlines()
        return text[0] if text else ""

    for title, reg in (("methods", METHODS), ("backbones", BACKBONES), ("data sources", DATA_SOURCES), ("scenarios", SCENARIOS)):
        print(f"{title}:")
        for name, obj in reg.items():
            print(f"  {name:<18} {first_line(obj)}")
    print("  (any timm model name also works as a backbone)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from retaincl.evaluation.report import load_results, matrix_table, summary_table

    results = load_results(args.paths)
    print(summary_table(results))
    if args.matrix:
        for r in results:
            print(f"\n{r['method']} ({r.get('stream', {}).get('description', '?')})")
            print(matrix_table(r))
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from retaincl.registry import METHODS

    for key, tp, default, text in describe(ExperimentConfig):
        print(f"{key:<28} {tp:<34} default {default!r:<28} {text}")
    for name, cls in METHODS.items():
        for key, tp, default, text in describe(cls.Params, f"methods.{name}."):
            print(f"{key:<28} {tp:<34} default {default!r:<28} {text}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="retaincl", description="Continual learning with pre-trained models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
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
    run.add_argument("config", nargs="?", help="YAML config file (default: the embedded default)")
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
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.add_argument("--matrix", action="store_true", help="also print each method's accuracy matrix")
    run.set_defaults(func=cmd_run)

    lst = sub.add_parser("list", help="list methods, backbones, data sources and scenarios")
    lst.set_defaults(func=cmd_list)

    rep = sub.add_parser("report", help="tables from results files or folders")
    rep.add_argument("paths", nargs="+")
    rep.add_argument("--matrix", action="store_true", help="also print accuracy matrices")
    rep.set_defaults(func=cmd_report)

    cfg = sub.add_parser("config", help="every config key with type, default and documentation")
    cfg.set_defaults(func=cmd_config)

    from retaincl.anomaly.cli import add_subparsers as add_anomaly

    add_anomaly(sub)  # retaincl anomaly, retaincl anomaly-score
    return parser


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors a user causes (a config value, a file, a diverged run): one line, exit 2."""
    from retaincl.backbones.base import BackboneError
    from retaincl.data.sources import DataSourceError
    from retaincl.engine.checkpoint import CheckpointError
    from retaincl.engine.runner import RunError
    from retaincl.evaluation.report import ReportError
    from retaincl.methods.base import DivergenceError

    return (
        ConfigError, KeyError, FileNotFoundError, BackboneError, DataSourceError, RunError,
        CheckpointError, ReportError, DivergenceError, FloatingPointError,  # a diverged run, however raised
    )


def one_line(err: BaseException) -> str:
    msg = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    return " ".join(str(msg).split()) or type(err).__name__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if args.command is None:
        args = parser.parse_args(["run", *(argv or [])])
    try:
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

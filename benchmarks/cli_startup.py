"""How long ``retaincl --help`` takes, as a ratio to starting Python (``python -c pass``)
measured in the same run, with ``import torch`` for scale.

    python benchmarks/cli_startup.py [--repeats 7]

The command parses its arguments with the standard library only: torch, numpy and
matplotlib are imported by the subcommands that need them, so ``--help`` and
``--version`` cost little more than the interpreter's own start.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time


def timed(cmd: list[str], repeats: int) -> float:
    """Median wall time of ``cmd`` in seconds over ``repeats`` runs (after one warm-up)."""
    subprocess.run(cmd, capture_output=True, check=True)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    py = sys.executable
    cases = {
        "python -c pass": [py, "-c", "pass"],
        "retaincl --help": [py, "-m", "retaincl", "--help"],
        "retaincl --version": [py, "-m", "retaincl", "--version"],
        "retaincl run --help": [py, "-m", "retaincl", "run", "--help"],
        "python -c 'import torch'": [py, "-c", "import torch"],
    }
    base = None
    print(f"{'command':<28} {'median s':>9} {'x python':>9}   ({args.repeats} runs each)")
    for name, cmd in cases.items():
        t = timed(cmd, args.repeats)
        base = base or t
        print(f"{name:<28} {t:9.3f} {t / base:9.2f}")


if __name__ == "__main__":
    main()

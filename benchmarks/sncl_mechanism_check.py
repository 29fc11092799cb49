"""Check that SNCL's tests notice each mechanism's removal.

For each mechanism, a copy of ``src/`` is patched to remove it (one string replacement),
and the SNCL test files run against the copy (``PYTHONPATH``); the line printed says
which test failed. Every mechanism must make at least one test fail. The working tree
is never modified.

    nice -n 5 python benchmarks/sncl_mechanism_check.py          # about 5 minutes on 2 shared cores
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LEARNER = "retaincl/methods/replay/sncl/learner.py"
PRIOR = "retaincl/methods/replay/sncl/prior.py"
MEMORY = "retaincl/memory/loss_aware.py"
TESTS = ["tests/test_sncl.py", "tests/test_sncl_memory.py", "tests/test_sncl_resnet.py"]

REMOVALS = {
    "sparsity prior (never on)": (LEARNER, "        return self.params.sparsity > 0\n", "        return False\n"),
    "M-step of the variance hyperparameters (skipped)": (
        PRIOR,
        "        batch = self.estimate(means, log_vars)\n        if not self.gamma:",
        "        return\n        batch = self.estimate(means, log_vars)\n        if not self.gamma:",
    ),
    "persistence of the variance hyperparameters (each batch replaces them)": (
        PRIOR,
        "((1.0 - self.rate) * g + self.rate * b).clamp(min=self.floor) for g, b in zip(self.gamma, batch)",
        "b for g, b in zip(self.gamma, batch)",
    ),
    "activation replay (term dropped)": (LEARNER, "loss = loss + p.beta * sum(", "loss = loss + 0 * sum("),
    "logit replay (term dropped)": (LEARNER, "loss = loss + p.alpha * F.mse_loss(", "loss = loss + 0 * F.mse_loss("),
    "loss refresh on replay (dropped)": (LEARNER, "self.memory.update_scores(slots, ce[n:])", "pass"),
    "loss-aware victim (uniform instead)": (MEMORY, "        if not self.loss_aware:\n            return j", "        if True:\n            return j"),
}


def main() -> int:
    missed = 0
    for name, (rel, old, new) in REMOVALS.items():
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "src"
            shutil.copytree(ROOT / "src", src)
            path = src / rel
            text = path.read_text()
            if text.count(old) != 1:
                print(f"{name}: the patch no longer applies ({rel}); update this script")
                missed += 1
                continue
            path.write_text(text.replace(old, new))
            env = dict(os.environ, PYTHONPATH=str(src))
            run = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf", *TESTS],
                cwd=ROOT, env=env, capture_output=True, text=True,
            )
            failed = [line.split(" - ")[0].removeprefix("FAILED ") for line in run.stdout.splitlines() if line.startswith("FAILED")]
            if not failed:
                missed += 1
            print(f"{name}: " + (", ".join(failed) if failed else "NO TEST FAILED"), flush=True)
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Check that the model-mixture tests notice each mechanism's removal.

For each mechanism, a copy of ``src/`` is patched to remove it (one string replacement
in the method's own code, not a config switch, so a test that sets the switch cannot
hide it), and the tests named for it run against the copy (``PYTHONPATH``). Every
removal must make at least one of its tests fail; the line printed names the failures.
The working tree is never modified.

    nice -n 5 python benchmarks/mixtures_mechanism_check.py            # every removal
    nice -n 5 python benchmarks/mixtures_mechanism_check.py lae        # those whose name starts with "lae"
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
M = "retaincl/methods/mixtures/"
VIT = "retaincl/backbones/vit/model.py"

#: name -> (file under src, old text, new text, test file, -k expression)
REMOVALS: dict[str, tuple[str, str, str, str, str]] = {
    "esn energy alignment (term dropped)": (
        M + "esn.py", "    return ((aligned_energy(logits, beta, form) - anchor) ** 2).mean()",
        "    return 0.0 * aligned_energy(logits, beta, form).mean()", "tests/test_esn.py", "energy"),
    "esn vote (latest temperature decides)": (
        M + "esn.py", "winner = vote(choose_by_energy(logits, temps), len(logits))",
        "winner = choose_by_energy(logits, temps)[:, -1]", "tests/test_esn.py", "vote or winning"),
    "esn temperature choice (first temperature always)": (
        M + "esn.py", "return float(temps[int(hits.argmax())])", "return float(temps[0])", "tests/test_esn.py", "vote"),
    "esn isolation (prompts train in every task)": (
        M + "esn.py", '(task.index == 0 or p.train_prompts == "every_task")', "True",
        "tests/test_esn.py", "stay_fixed"),
    "lae EMA step (offline never updated)": (
        M + "lae.py", "ema_(self.offline, self.pet, self.params.ema_decay)", "pass", "tests/test_lae.py", "ema"),
    "lae max ensemble (online only)": (
        M + "lae.py", "return max_ensemble(online, offline)", "return online", "tests/test_lae.py", "max_of"),
    "lae calibrated speed (PET never frozen)": (
        M + "lae.py", "frozen = task.index > 0 and epoch < p.freeze_epochs", "frozen = False",
        "tests/test_lae.py", "frozen"),
    "lae adapter beside attention (placed beside the MLP)": (
        VIT, 'if position == "attn":', "if False:", "tests/test_lae.py", "parallel_to_attention"),
    "cofima Fisher weighting in the formula (plain average)": (
        M + "cofima.py", "out[name] = torch.where(den > 0, weighted, plain)", "out[name] = plain",
        "tests/test_cofima.py", "fisher"),
    "cofima learner's Fishers (merged without them)": (
        M + "cofima.py", "merge_weights(before, self.weights(), self.params.merge_alpha, self.fisher, fisher)",
        "merge_weights(before, self.weights(), self.params.merge_alpha)", "tests/test_cofima.py", "cofima_vit"),
    "coma average (skipped)": (
        M + "cofima.py", "            self.load_weights(merge_weights(before, self.weights(), self.params.merge_alpha))",
        "            pass", "tests/test_cofima.py", "coma_vit"),
    "ease prototype complement in the formula (left as is)": (
        M + "ease.py", "            out[old, s] = sim.softmax(dim=1) @ out[new, s]", "            pass",
        "tests/test_ease.py", "synthes or three_tasks"),
    "ease learner's complement (not called)": (
        M + "ease.py", "        if self.params.synthesize_prototypes:", "        if False:",
        "tests/test_ease.py", "learner_synthesises"),
    "ease subspace reweighting (all weights 1)": (
        M + "ease.py", "weights = own + (1 - own) * (alpha / (T - 1) if T > 1 else 0.0)", "weights = torch.ones_like(own)",
        "tests/test_ease.py", "reweighted"),
    "ease frozen old subspaces (stored without a copy)": (
        M + "ease.py", "self.subspaces.append(copy.deepcopy(self.backbone.vit.petl).requires_grad_(False).eval())",
        "self.subspaces.append(self.backbone.vit.petl)", "tests/test_ease.py", "old_subspaces"),
}


def main(argv: list[str]) -> int:
    chosen = {k: v for k, v in REMOVALS.items() if not argv or any(k.startswith(a) for a in argv)}
    missed = 0
    for name, (rel, old, new, tests, select) in chosen.items():
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "src"
            shutil.copytree(ROOT / "src", src, ignore=shutil.ignore_patterns("__pycache__"))
            path = src / rel
            text = path.read_text()
            if text.count(old) != 1:
                print(f"{name}: the patch no longer applies ({rel}); update this script", flush=True)
                missed += 1
                continue
            path.write_text(text.replace(old, new))
            env = dict(os.environ, PYTHONPATH=str(src), RETAINCL_TEST_THREADS="1")
            run = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf", tests, "-k", select],
                cwd=ROOT, env=env, capture_output=True, text=True,
            )
            failed = sorted(set(re.findall(r"^FAILED \S+::(\w+)", run.stdout, flags=re.M)))
            if run.returncode == 0 or not failed:
                tail = run.stdout.strip().splitlines()[-1:] if run.stdout.strip() else ["(no output)"]
                print(f"{name}: NOT caught ({tests} -k '{select}': {tail[0]})", flush=True)
                missed += 1
            else:
                print(f"{name}: caught by {', '.join(failed)}", flush=True)
    print(f"{len(chosen) - missed}/{len(chosen)} removals caught")
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

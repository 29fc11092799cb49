"""Try bad inputs as a hostile user would and print what each gives (docs/bad_inputs.md).

    PYTHONPATH=src python scripts/bad_inputs.py > /tmp/bad_inputs_table.md
    PYTHONPATH=src python scripts/bad_inputs.py FIFO truncated    # only the cases that name these

Every case runs the real command line (``python -m retaincl ...``) in a fresh scratch
folder, with a time limit (a hang is reported, not waited for), and the table shows the
exit code and the first line of the error (or of the output when it succeeds). Fast
settings throughout: scikit-learn's digits, 32 px, one thread.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

FAST = [
    "data.source=digits", "backbone.image_size=32", "threads=1", "device=cpu", "method=simplecil",
    "methods.finetune.epochs=2", "scenario.base=5", "scenario.increment=5",
]


def sets(*items: str) -> list[str]:
    out: list[str] = []
    for s in items:
        out += ["--set", s]
    return out


def image_folder(root: Path) -> Path:
    for split in ("train", "test"):
        for c, cls in enumerate(("cat", "dog")):
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for k in range(3):
                Image.fromarray(np.full((12, 10, 3), 60 * c + 20 * k, np.uint8)).save(d / f"{k}.png")
    return root


def folder_sets(root: Path, *extra: str) -> list[str]:
    return sets(
        *FAST, "data.source=image_folder", f"data.root={root}", "data.image_size=16", "scenario.base=1",
        "scenario.increment=1", "cache.enabled=false", *extra,
    )


def png_bytes(seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


class Case:
    def __init__(self, what: str, args: list[str], setup=None, shown: str | None = None, timeout: int = 120):
        self.what, self.args, self.setup, self.shown, self.timeout = what, args, setup, shown, timeout


def cases(tmp: Path) -> list[Case]:
    out = str(tmp / "runs")
    cache = str(tmp / "cache")
    base = [*FAST, f"output_dir={out}", f"cache.dir={cache}"]

    def run(*extra: str) -> list[str]:
        return ["run", "--quiet", *sets(*base, *extra)]

    def yaml_file(name: str, text: str) -> str:
        p = tmp / name
        p.write_text(text)
        return str(p)

    def bad_folder(name: str, files: dict[str, bytes | None] | None = None, drop: list[str] | None = None):
        def make() -> None:
            root = image_folder(tmp / name)
            for rel, data in (files or {}).items():
                target = root / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                if data is None:
                    os.mkfifo(target)
                else:
                    target.write_bytes(data)
            for rel in drop or []:
                shutil.rmtree(root / rel)
        return make

    def corrupt_checkpoint(name: str, content: bytes):
        def make() -> None:
            subprocess.run([sys.executable, "-m", "retaincl", *run(f"name={name}")], capture_output=True, check=True)
            folder = Path(out) / name / "simplecil"
            (folder / "results.json").unlink()  # as if it had crashed before finishing
            (folder / "checkpoint.pt").write_bytes(content)
        return make

    def finished(name: str, *extra: str):
        def make() -> None:
            subprocess.run([sys.executable, "-m", "retaincl", *run(f"name={name}", *extra)], capture_output=True, check=True)
        return make

    def results_file(name: str, text: str) -> str:
        p = tmp / name
        p.write_text(text)
        return str(p)

    def interrupted(name: str):
        """A finished one-thread run turned back into one interrupted after its first task."""
        def make() -> None:
            import torch

            finished(name)()
            folder = Path(out) / name / "simplecil"
            (folder / "results.json").unlink()
            ckpt = torch.load(folder / "checkpoint.pt", weights_only=True)
            torch.save(ckpt | {"complete": False}, folder / "checkpoint.pt")
        return make

    sixteen = tmp / "sixteen"

    def sixteen_bit() -> None:
        image_folder(sixteen)
        Image.fromarray(np.array([[0, 1000, 30000, 65535]] * 12, dtype=np.uint16)).save(sixteen / "train" / "cat" / "deep.png")

    return [
        # ------------------------------------------------------------------ config values
        Case("threads=0", run("threads=0")),
        Case("eval.batch_size=0", run("eval.batch_size=0")),
        Case("backbone.image_size=0", run("backbone.image_size=0")),
        Case("methods.finetune.batch_size=0", run("method=finetune", "methods.finetune.batch_size=0")),
        Case("methods.finetune.epochs=0", run("method=finetune", "methods.finetune.epochs=0")),
        Case("methods.finetune.lr=-1", run("method=finetune", "methods.finetune.lr=-1")),
        Case("methods.finetune.lr=0", run("method=finetune", "methods.finetune.lr=0")),
        Case("methods.finetune.lr=.nan", run("method=finetune", "methods.finetune.lr=.nan")),
        Case("methods.finetune.lr=.inf", run("method=finetune", "methods.finetune.lr=.inf")),
        Case("methods.finetune.lr=fast", run("method=finetune", "methods.finetune.lr=fast")),
        Case("methods.finetune.lr=1e-3 (exponent without a dot)", run("method=finetune", "methods.finetune.lr=1e-3")),
        Case("methods.ranpac.ridge=0", run("method=ranpac", "methods.ranpac.ridge=0")),
        Case("methods.ranpac.ridge=-1", run("method=ranpac", "methods.ranpac.ridge=-1")),
        Case("methods.ranpac.projection_dim=-1", run("method=ranpac", "methods.ranpac.projection_dim=-1")),
        Case("methods.er.memory_size=-5", run("method=er", "methods.er.memory_size=-5")),
        Case("methods.lwf.temperature=0", run("method=lwf", "methods.lwf.temperature=0")),
        Case("method=[]", run("method=[]")),
        Case("method=[simplecil,simplecil]", run("method=[simplecil,simplecil]")),
        Case("method=ranpak (typo)", run("method=ranpak")),
        Case("seed=99999999999999999999", run("seed=99999999999999999999")),
        Case("seed=-1", run("seed=-1")),
        Case("seed=9223372036854775807 (largest allowed)", run("seed=9223372036854775807", "name=bigseed")),
        Case("device=cuda (none here)", run("device=cuda")),
        Case("device=gpu", run("device=gpu")),
        Case("scenario.base=0", run("scenario.base=0")),
        Case("scenario.increment=3 (10 classes)", run("scenario.increment=3", "scenario.base=2")),
        Case("scenario.class_order=[0,1,1]", run("scenario.class_order=[0,1,1]")),
        Case("scenario.class_order=[-1,...]", run("scenario.class_order=[-1,1,2,3,4,5,6,7,8,9]")),
        Case("scenario.incremnt=3 (misspelt key)", run("scenario.incremnt=3")),
        Case("--set seed (no value)", ["run", "--set", "seed"]),
        Case("config: a key twice", ["run", yaml_file("dup.yaml", "seed: 1\nscenario:\n  base: 5\n  base: 2\n"), *sets(*base)]),
        Case("config: not a mapping", ["run", yaml_file("list.yaml", "- a\n- b\n"), *sets(*base)]),
        Case("config: bad YAML", ["run", yaml_file("bad.yaml", "seed: [1, 2\n"), *sets(*base)]),
        Case("config: a !!python/object tag", ["run", yaml_file("evil.yaml", "seed: !!python/object/apply:os.system ['echo pwned']\n"), *sets(*base)]),
        Case("config: binary bytes", ["run", str(tmp / "binary.yaml"), *sets(*base)],
             setup=lambda: (tmp / "binary.yaml").write_bytes(b"\xff\xfe\x00\x01seed")),
        Case("config: file missing", ["run", str(tmp / "nope.yaml")]),
        Case("config: lr: 1e-3 and ridge: 1.0e9", ["run", "--quiet", yaml_file("exp.yaml", "method: [finetune, ranpac]\nmethods:\n  finetune: {lr: 1e-3, epochs: 2}\n  ranpac: {ridge: 1.0e9, projection_dim: 500}\n"), *sets(*[b for b in base if not b.startswith("method=")], "name=exp")]),
        # ------------------------------------------------------------------ output, cache, checkpoints, results
        Case("output_dir under a regular file", run(f"output_dir={tmp / 'afile' / 'runs'}"), setup=lambda: (tmp / "afile").write_text("x")),
        Case("output_dir=/proc/retaincl (not writable)", run("output_dir=/proc/retaincl")),
        Case("cache.dir under a regular file", run(f"cache.dir={tmp / 'afile2' / 'c'}", "name=nocache"), setup=lambda: (tmp / "afile2").write_text("x")),
        Case("corrupt checkpoint (random bytes)", run("name=ck1"), setup=corrupt_checkpoint("ck1", os.urandom(300))),
        Case("empty checkpoint", run("name=ck2"), setup=corrupt_checkpoint("ck2", b"")),
        Case("corrupt checkpoint, --fresh", [*run("name=ck3"), "--fresh"], setup=corrupt_checkpoint("ck3", b"junk")),
        Case("same config again", run("name=again"), setup=finished("again")),
        Case("another class order, same run folder", run("name=other", "scenario.class_order=[9,8,7,6,5,4,3,2,1,0]"), setup=finished("other")),
        Case("another data.root, same run folder", run("name=other2", "data.root=/elsewhere"), setup=finished("other2")),
        Case("the same with --overwrite", [*run("name=other3", "scenario.class_order=[9,8,7,6,5,4,3,2,1,0]"), "--overwrite"], setup=finished("other3")),
        Case("resume with another thread count", run("name=thr", "threads=2"), setup=interrupted("thr")),
        Case("report: results file without keys", ["report", results_file("r1.json", '{"method": "x"}')]),
        Case("report: not JSON", ["report", results_file("r2.json", "hello")]),
        Case("report: a JSON list", ["report", results_file("r3.json", "[1, 2]")]),
        Case("report: path missing", ["report", str(tmp / "nothing")]),
        Case("report: folder without results", ["report", str(tmp / "empty")], setup=lambda: (tmp / "empty").mkdir()),
        # ------------------------------------------------------------------ data
        Case("data.root missing", ["run", "--quiet", *folder_sets(tmp / "absent")]),
        Case("cifar100 not downloaded", run("data.source=cifar100", f"data.root={tmp}")),
        Case("backbone.checkpoint=/nope.safetensors", run("backbone.checkpoint=/nope.safetensors")),
        Case("backbone.name=vit_nope_patch16", run("backbone.name=vit_nope_patch16")),
        Case("class folder only in train/", ["run", "--quiet", *folder_sets(tmp / "f1")], setup=bad_folder("f1", drop=["test/dog"])),
        Case("class folder empty in test/", ["run", "--quiet", *folder_sets(tmp / "f2")],
             setup=lambda: (bad_folder("f2")(), [p.unlink() for p in (tmp / "f2" / "test" / "dog").iterdir()])),
        Case("empty image file", ["run", "--quiet", *folder_sets(tmp / "f3")], setup=bad_folder("f3", {"train/cat/empty.png": b""})),
        Case("text file named .jpg", ["run", "--quiet", *folder_sets(tmp / "f4")], setup=bad_folder("f4", {"train/cat/notes.jpg": b"hello\n"})),
        Case("random bytes named .png", ["run", "--quiet", *folder_sets(tmp / "f5")], setup=bad_folder("f5", {"test/dog/noise.png": os.urandom(500)})),
        Case("truncated PNG", ["run", "--quiet", *folder_sets(tmp / "f6")], setup=bad_folder("f6", {"train/dog/cut.png": png_bytes()[:300]})),
        Case("FIFO named .png", ["run", "--quiet", *folder_sets(tmp / "f7")], setup=bad_folder("f7", {"train/dog/pipe.png": None}), timeout=60),
        Case("all of the above with --skip-bad-images", ["run", "--quiet", *folder_sets(tmp / "f8"), "--skip-bad-images"],
             setup=bad_folder("f8", {"train/cat/empty.png": b"", "train/cat/notes.jpg": b"hi", "test/dog/noise.png": os.urandom(500),
                                     "train/dog/cut.png": png_bytes()[:300], "train/dog/pipe.png": None}), timeout=60),
        Case("16-bit grayscale PNG", ["run", "--quiet", *folder_sets(sixteen, "name=sixteen")], setup=sixteen_bit),
        # ------------------------------------------------------------------ divergence
        Case("finetune, methods.finetune.lr=1e36", run("method=finetune", "methods.finetune.lr=1e36", "name=lr36")),
        Case("finetune, methods.finetune.lr=1e30 (stays finite)", run("method=finetune", "methods.finetune.lr=1e30", "name=lr30")),
        Case("joint, methods.joint.lr=1e36", run("method=joint", "methods.joint.lr=1e36", "methods.joint.epochs=2", "name=j36")),
        Case("er, methods.er.lr=1e36", run("method=er", "methods.er.lr=1e36", "methods.er.epochs=1", "name=er36")),
        Case("finetune on the mlp backbone trained end to end, lr=1e30", run(
            "method=finetune", "backbone.name=mlp", "backbone.image_size=8", "methods.finetune.train_backbone=true",
            "methods.finetune.lr=1e30", "methods.finetune.backbone_lr=1e30")),
        Case("aper_adapter on the tiny ViT, lr=1e30", run(
            "method=aper_adapter", "backbone.name=vit_tiny_retain", "cache.enabled=false",
            "methods.aper_adapter.lr=1e30", "methods.aper_adapter.epochs=1"), timeout=300),
    ]


HINT = " (--debug shows the traceback)"


def first_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0].removesuffix(HINT) if lines else ""


def summary(stdout: str) -> str:
    """The summary rows of a successful run: method, last accuracy."""
    rows = [line for line in stdout.splitlines() if line.startswith("|") and not line.startswith("|-")]
    if len(rows) < 2:
        return first_line(stdout)
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    out = []
    for row in rows[1:]:
        cells = dict(zip(header, (c.strip() for c in row.strip("|").split("|"))))
        out.append(f"{cells.get('method')} last {cells.get('last')}%")
    reused = [line for line in stdout.splitlines() if "reused" in line or "left out" in line]
    return "ran: " + ", ".join(out) + ("; " + "; ".join(reused) if reused else "")


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="retaincl-bad-"))
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    print("| input | exit | first line of stderr (or of stdout when it succeeds) |")
    print("|---|---|---|")
    only = sys.argv[1:]  # substrings: run only the cases whose description holds one
    for case in cases(tmp):
        if only and not any(o in case.what for o in only):
            continue
        t0 = time.perf_counter()
        if case.setup:
            try:
                case.setup()
            except Exception as err:  # noqa: BLE001 - report it in the table
                print(f"| {case.what} | setup failed | {type(err).__name__}: {err} |", flush=True)
                continue
        try:
            p = subprocess.run([sys.executable, "-m", "retaincl", *case.args], capture_output=True, text=True,
                               timeout=case.timeout, env=env, cwd=tmp)
            code = str(p.returncode)
            text = first_line(p.stderr) if p.returncode else summary(p.stdout)
            if p.returncode == 0 and p.stderr.strip():
                text = f"{text}; warns: {first_line(p.stderr)}"
            if "Traceback" in p.stderr:
                text = "TRACEBACK: " + first_line(p.stderr.strip().splitlines()[-1])
        except subprocess.TimeoutExpired:
            code, text = "hang", f"no answer after {case.timeout}s"
        text = text.replace(str(tmp), "$TMP").replace("|", "\\|")
        print(f"| {case.what} | {code} | {text} |", flush=True)
        print(f"{case.what}: {code} in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    skipped = list(Path(tmp / "runs").rglob("results.json"))
    for r in skipped:
        data = json.loads(r.read_text()).get("data", {})
        if data.get("skipped_images"):
            print(f"\nskipped and listed in {str(r).replace(str(tmp), '$TMP')}:", file=sys.stderr)
            for s in data["skipped_images"]:
                print(f"  {s['path'].replace(str(tmp), '$TMP')}: {s['reason']}", file=sys.stderr)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

"""The CPU recipe as a user runs it: `smoothmax train` in a fresh process, timed whole, one JSON line per run.

    python experiments/bench_recipe.py [--variants softmax lse hard-m1] [--seeds 0 1 2] [--config.key=value ...]

Each run is a cold process start (no persistent compilation cache) with the decoded dataset already in the
cache (the bench loads it once first), into a fresh workdir. A line gives the command's wall time and its
phases:
* ``start_and_imports``: process start, imports and config, up to the trainer's first line of work;
* ``data``: reading the cached dataset and splitting it;
* ``compilation``: the first train step less one steady step (what compiling costs);
* ``training``: the steps of every epoch (compilation excluded);
* ``evaluation``: every evaluation, test-time augmentation included;
plus images/s in steady state and the test (and validation) accuracy. Run it alone on the machine: timings
are shared with anything else running. The data come from ``$SMOOTHMAX_CIFAR10`` (set to the JPEG copy in
../shared when unset and present). ``--append FILE`` also appends each line to FILE (the README's numbers are
in ``experiments/results/recipe/bench.jsonl``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from smoothmax.provenance import machine

ROOT = Path(__file__).resolve().parent.parent
SHARED_COPY = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tgz"


def run_once(config: str, seed: int, overrides: list[str], env: dict) -> dict:
    with tempfile.TemporaryDirectory() as workdir:
        command = [sys.executable, "-m", "smoothmax", "train", "--config", config, "--workdir", workdir,
                   "--no-progress", f"--config.seed={seed}", f"--config.data.seed={seed}", *overrides]
        start = time.time()
        out = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
        wall = time.time() - start
        if out.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed:\n{out.stderr[-3000:]}")
        summary = json.loads((Path(workdir) / "summary.json").read_text())
    phases, epochs = summary["phases"], summary["epochs"]
    steps = summary["config"]["total_steps"]
    step = (phases["training_seconds"] - phases["first_step_seconds"]) / max(1, steps - 1)
    compilation = phases["first_step_seconds"] - step
    return {
        "config": config, "seed": seed, "overrides": overrides, "epochs": epochs,
        "wall_seconds": round(wall, 1),
        "phases": {
            "start_and_imports": round(wall - summary["wall_seconds"], 1),
            "data": round(phases["data_seconds"], 1),
            "compilation": round(compilation, 1),
            "training": round(phases["training_seconds"] - compilation, 1),
            "evaluation": round(phases["evaluation_seconds"], 1),
        },
        "images_per_second": round(summary["images_per_second"], 1),
        "test_accuracy": summary["test_accuracy"],
        "val_accuracy": summary["val_accuracy"],
        "device": summary["provenance"]["device_kind"],
        "git_commit": summary["provenance"]["git_commit"],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/cifar10_cpu.py")
    parser.add_argument("--variants", nargs="+", default=["softmax"], help="hard, hard-m1, lse or softmax")
    parser.add_argument("--append", type=Path, help="also append each JSON line to this file")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args, overrides = parser.parse_known_args()
    if any(not o.startswith("--config.") for o in overrides):
        parser.error(f"unknown arguments {overrides}: only --config.key=value overrides pass through")
    env = dict(os.environ)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    if "SMOOTHMAX_CIFAR10" not in env and SHARED_COPY.exists():
        env["SMOOTHMAX_CIFAR10"] = str(SHARED_COPY)
    # Warm the decoded-data cache, so that every timed run reads it as a user's second run would.
    warm = subprocess.run([sys.executable, "-c", "import sys; from smoothmax.config import load_config; "
                           "from smoothmax.train import load_data; load_data(load_config(sys.argv[1]))",
                           f"{args.config}:{args.variants[0]}"], env=env, cwd=ROOT, capture_output=True, text=True)
    if warm.returncode != 0:
        raise SystemExit(f"loading the dataset failed:\n{warm.stderr[-3000:]}")
    where = machine()
    for variant in args.variants:
        for seed in args.seeds:
            line = json.dumps({**run_once(f"{args.config}:{variant}", seed, overrides, env), "machine": where})
            print(line, flush=True)
            if args.append:
                with args.append.open("a") as f:
                    f.write(line + "\n")


if __name__ == "__main__":
    main()

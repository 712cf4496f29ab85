"""One short check of the GPU recipe and the trainer on an accelerator, as JSON lines (``gpu_check.sh`` runs it).

    python experiments/gpu_check.py OUT_DIR [--smoke]

Three measurements, each a line in ``OUT_DIR/gpu_check.jsonl`` that records the machine and the code:

1. ``recipe``: configs/cifar10.py (softmax, seed 0), evaluated after every epoch: wall time, time to 93 % test
   accuracy (wall time from the start of the run to the end of the first evaluation at or above it), steady
   images/s, peak device memory, and the train step's FLOPs (XLA's cost analysis).
2. ``population``: the study's network (configs/cifar10_cpu.py) for 8 temperatures, as one vmapped
   population and as 8 runs one after another (one compilation: τ is traced), images/s of each.
3. ``dtype``: the GPU recipe's train step in bfloat16 and in float32, images/s and TFLOP/s.

``--smoke`` runs the same code paths on the synthetic set with tiny widths in seconds, on any backend: the
test suite runs it on CPU. Without it, the data is ``$SMOOTHMAX_CIFAR10`` (else the official archive).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from smoothmax import train
from smoothmax.config import load_config
from smoothmax.provenance import machine, provenance

TARGET = 0.93
SMOKE = {"data.name": "synthetic", "data.num_train": 1024, "data.num_test": 256, "data.eval_batch_size": 256,
         "model.widths": (8, 16, 16), "model.stem_width": 8, "epochs": 2}


def config(spec: str, smoke: bool, **keys):
    """A shipped config with ``keys`` (``a__b=value`` sets ``a.b``) as overrides, shrunk to the smoke set with
    ``smoke``; the caller's keys win."""
    settings = {**SMOKE, "data.batch_size": 128} if smoke else {}
    settings.update({k.replace("__", "."): v for k, v in keys.items()})
    return load_config(spec, [f"{key}={value!r}" for key, value in settings.items()])


def peak_memory_bytes() -> int | None:
    stats = jax.devices()[0].memory_stats()  # None on XLA:CPU
    return stats.get("peak_bytes_in_use") if stats else None


def compiled_step(cfg):
    """The train step of ``cfg`` compiled once, its FLOPs (XLA's cost analysis: forward and backward of a
    batch), and a fresh state and batch to call it with."""
    program, state, args = step_inputs(cfg)
    compiled = program.train_step.lower(state, *args).compile()
    cost = compiled.cost_analysis()
    return compiled, float((cost[0] if isinstance(cost, list) else cost)["flops"]), state, args


def step_inputs(cfg):
    """A program for ``cfg`` on made-up statistics, a fresh state and one batch of zeros."""
    cfg = cfg.copy_and_resolve_references()
    cfg.total_steps = 100
    batch = cfg.data.batch_size
    mean, std = np.full(3, 120.0, np.float32), np.full(3, 64.0, np.float32)
    program = train.build_program(cfg, mean, std, 10)
    sample = np.random.default_rng(0).integers(0, 256, (1000, 32, 32, 3), dtype=np.uint8)
    state = train.create_train_state(cfg, program.spec, 10, sample)
    metrics = train.zero_metrics()
    member = tuple(np.float32(v) for v in (1.0, 0.0, cfg.optimizer.learning_rate))
    args = (metrics, np.zeros((batch, 32, 32, 3), np.uint8), np.zeros(batch, np.int32), np.zeros(batch, bool),
            jax.random.key(0), 0, *member)
    return program, jax.device_put(state, program.state_sharding), args


def recipe(smoke: bool, tmp: Path, dataset) -> dict:
    """The GPU recipe end to end, with the time of each evaluation recorded."""
    cfg = config("configs/cifar10.py:softmax", smoke, eval_every_epochs=1)
    evaluated, rows = [], train._evaluation_rows

    def timed_rows(*args, **kwargs):
        out = rows(*args, **kwargs)
        evaluated.append(time.time())
        return out

    train._evaluation_rows = timed_rows
    try:
        start = time.time()
        summary = train.train_and_evaluate(cfg, tmp / "recipe", progress=False, dataset=dataset)
        wall = time.time() - start
    finally:
        train._evaluation_rows = rows
    curve = [json.loads(line) for line in (tmp / "recipe" / "metrics.jsonl").read_text().splitlines()]
    reached = [t - start for t, row in zip(evaluated, curve) if row["test_accuracy"] >= TARGET]
    flops = compiled_step(cfg)[1] / cfg.data.batch_size
    return {"case": "recipe", "config": "configs/cifar10.py:softmax", "epochs": cfg.epochs,
            "test_accuracy": summary["test_accuracy"], "wall_seconds": round(wall, 2),
            "seconds_to_93": round(reached[0], 2) if reached else None,
            "curve": [[row["epoch"], row["test_accuracy"]] for row in curve],
            "images_per_second": summary["images_per_second"], "phases": summary["phases"],
            "peak_memory_bytes": peak_memory_bytes(), "gflop_per_image": round(flops / 1e9, 4),
            "run_pflop": round(flops * cfg.epochs * 50_000 / 1e15, 4)}


def population(smoke: bool, tmp: Path, dataset) -> dict:
    """8 temperatures of the study's network (2 in a smoke run: the same program, a quicker compilation): one
    vmapped population against as many sequential runs."""
    members = 2 if smoke else 8
    keys = {"epochs": 1} if smoke else {"data__train_subset": 10_000, "epochs": 3}
    cfgs = [config("configs/cifar10_cpu.py:softmax", smoke, loss__temperature=t, **keys)
            for t in np.geomspace(0.05, 2.0, members).round(4).tolist()]
    start = time.time()
    vmapped = train.train_population(cfgs, [tmp / f"pop/m{k}" for k in range(members)], tmp / "pop/all",
                                     progress=False, dataset=dataset)
    vmapped_wall = time.time() - start
    start = time.time()
    sequential = [train.train_and_evaluate(c, tmp / f"seq/m{k}", progress=False, dataset=dataset)
                  for k, c in enumerate(cfgs)]
    sequential_wall = time.time() - start
    same = max(abs(a["test_accuracy"] - b["test_accuracy"]) for a, b in zip(vmapped, sequential))
    return {"case": "population", "config": "configs/cifar10_cpu.py:softmax", "members": members,
            "vmapped_images_per_second": vmapped[0]["images_per_second"],
            "sequential_images_per_second": [s["images_per_second"] for s in sequential],
            "vmapped_wall_seconds": round(vmapped_wall, 2), "sequential_wall_seconds": round(sequential_wall, 2),
            "largest_accuracy_difference": same}


def dtype(smoke: bool, steps: int = 50) -> list[dict]:
    """The GPU recipe's train step in bf16 and f32: steady images/s and achieved TFLOP/s."""
    lines = []
    for name in ("bfloat16", "float32"):
        cfg = config("configs/cifar10.py:softmax", smoke, model__compute_dtype=name)
        step, flops, state, (metrics, *rest) = compiled_step(cfg)
        repeats = 5 if smoke else steps
        for _ in range(3):  # warm up
            state, metrics = step(state, metrics, *rest)
        jax.block_until_ready(metrics)
        start = time.perf_counter()
        for _ in range(repeats):
            state, metrics = step(state, metrics, *rest)
        jax.block_until_ready(metrics)
        seconds = (time.perf_counter() - start) / repeats
        lines.append({"case": "dtype", "compute_dtype": name, "batch": cfg.data.batch_size,
                      "step_ms": round(1e3 * seconds, 3), "images_per_second": round(cfg.data.batch_size / seconds),
                      "tflop_per_second": round(flops / seconds / 1e12, 2)})
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--smoke", action="store_true", help="tiny widths on the synthetic set, seconds on a CPU")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    common = {"smoke": args.smoke, "machine": machine(), "provenance": provenance()}
    start = time.time()
    dataset = train.load_data(config("configs/cifar10.py:softmax", args.smoke))  # once: both configs read it
    print(f"gpu_check: data in {time.time() - start:.1f} s", flush=True)
    with tempfile.TemporaryDirectory() as tmp, (args.out / "gpu_check.jsonl").open("a") as out:
        for measure in (lambda: [recipe(args.smoke, Path(tmp), dataset)],
                        lambda: [population(args.smoke, Path(tmp), dataset)], lambda: dtype(args.smoke)):
            for line in measure():
                text = json.dumps({**line, **common})
                out.write(text + "\n")
                out.flush()
                print(text, flush=True)


if __name__ == "__main__":
    main()

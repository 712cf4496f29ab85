"""The trainer's host work per step, with the compiled step replaced by one that does nothing (JSON lines).

    python experiments/bench_host.py [--batch 1024 256] [--steps 400] [--members 1 8]

What a fast accelerator would wait for if the host were the bottleneck: sending the batch's indices and
dispatching its gather from the device-resident training set (``smoothmax.train.TrainingFeed``), the
schedules (τ, m, learning rate), the time ledger and the progress bar, per step of the real loop
(``smoothmax.train``), on CIFAR-10-shaped data (50,000 images of the built-in synthetic set). The step keeps
the real signature and donation but returns its state untouched, so what is timed is the loop alone. Target:
at most 1 ms per step at batch 1024 (a GPU step of the GPU recipe takes a few ms). Each line records the
machine (CPU flags and sgemm GFLOP/s).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time

import jax

from smoothmax import data as data_lib
from smoothmax import train
from smoothmax.config import load_config
from smoothmax.provenance import machine


def idle_step(state, metrics, images, labels, flips, key, step, temperature, margin, learning_rate):
    """The train step's signature and outputs, and none of its work."""
    return state, metrics


@contextlib.contextmanager
def idle_programs():
    """Programs built meanwhile run :func:`idle_step` in place of the train step (evaluation stays real)."""
    build = train.build_program

    def build_idle(*args, **kwargs):
        program = build(*args, **kwargs)
        program.train_step = jax.jit(idle_step, donate_argnums=(0, 1))
        return program

    train.build_program, saved = build_idle, dict(train._PROGRAMS)
    train._PROGRAMS.clear()
    try:
        yield
    finally:
        train.build_program = build
        train._PROGRAMS.clear()
        train._PROGRAMS.update(saved)


def measure(batch: int, steps: int, members: int, dataset) -> dict:
    cfg = load_config("configs/cifar10_cpu.py:softmax")
    cfg.data.name, cfg.data.path = "synthetic", ""  # the arrays come from `dataset`; no file is read
    cfg.model.widths = (8, 8, 8)  # evaluation (at the end, untimed) stays cheap
    cfg.data.batch_size, cfg.data.eval_batch_size = batch, 1000
    cfg.epochs, cfg.log_every_steps = 1, 50
    sliced = data_lib.Dataset(dataset.train_images[: batch * steps], dataset.train_labels[: batch * steps],
                              dataset.test_images, dataset.test_labels, dataset.class_names)
    cfgs = [cfg.copy_and_resolve_references() for _ in range(members)]
    for k, c in enumerate(cfgs):
        c.loss.temperature = 1.0 + k
    with tempfile.TemporaryDirectory() as tmp, idle_programs():
        start = time.perf_counter()
        if members > 1:
            summary = train.train_population(cfgs, [f"{tmp}/m{k}" for k in range(members)], f"{tmp}/pop",
                                             progress=True, dataset=sliced)[0]
        else:
            summary = train.train_and_evaluate(cfg, tmp, progress=True, dataset=sliced)
        wall = time.perf_counter() - start
    phases = summary["phases"]
    per_step = (phases["training_seconds"] - phases["first_step_seconds"]) / (steps - 1)
    return {"case": "host_per_step", "batch": batch, "members": members, "steps": steps,
            "host_us_per_step": round(1e6 * per_step, 1), "target_us": 1000 if batch == 1024 else None,
            "ok": per_step <= 1e-3 if batch == 1024 else None, "run_wall_seconds": round(wall, 1),
            "machine": machine()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1024, 256])
    parser.add_argument("--steps", type=int, default=400, help="steps of the timed epoch (at most 50,000 / batch)")
    parser.add_argument("--members", type=int, nargs="+", default=[1], help="population sizes (vmapped)")
    args = parser.parse_args()
    dataset = data_lib.synthetic(seed=0, num_train=50_000, num_test=1_000)  # CIFAR-10's shapes and dtype
    for members in args.members:
        for batch in args.batch:
            steps = min(args.steps, len(dataset.train_labels) // batch)
            print(json.dumps(measure(batch, steps, members, dataset)), flush=True)


if __name__ == "__main__":
    main()

"""Trainer throughput against a bare jitted train step of the same model and batch (one JSON line).

    python experiments/bench_train.py [--config configs/cifar10_cpu.py:softmax] [--subset 10000]

The trainer's steady-state images/s (host batching, transfer, on-device augmentation, metrics and the progress
bar included; the first epoch, which compiles, excluded) against the same compiled step called back to back
on one batch already on the device. Target: ratio >= 0.95, and one compilation of the train step per run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import jax
import numpy as np

from smoothmax import data as data_lib
from smoothmax import train
from smoothmax.config import load_config
from smoothmax.provenance import machine


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/cifar10_cpu.py:softmax")
    parser.add_argument("--subset", type=int, default=12_800, help="training images per epoch")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()

    cfg = load_config(args.config)
    cfg.epochs = args.epochs
    cfg.eval_every_epochs = args.epochs
    cfg.checkpoint.every_epochs = args.epochs
    source = data_lib.resolve_source(cfg.data.path)
    if cfg.data.name == "cifar10" and (source is None or not source.exists()):
        cfg.data.name = "synthetic"  # no local CIFAR-10: the same shapes from the built-in set
        cfg.data.num_train = args.subset
    ds = train.load_data(cfg)
    if len(ds.train_labels) > args.subset:
        ds = data_lib.subset(ds, args.subset)
    with tempfile.TemporaryDirectory() as workdir:
        summary = train.train_and_evaluate(cfg, workdir, progress=True, dataset=ds)
    # The trainer's own (cached) program: its step must have compiled exactly once.
    resolved = cfg.copy_and_resolve_references()
    resolved.total_steps = (len(ds.train_labels) // cfg.data.batch_size) * cfg.epochs
    program = train.get_program(resolved, ds)
    compilations = program.train_step._cache_size()

    # The bare step: same compiled function, one device-resident batch, no host work in the loop.
    state = train.create_train_state(resolved, program.spec, ds.num_classes, ds.train_images)
    batch = cfg.data.batch_size
    flips = data_lib.epoch_flips(batch, 0, 0)
    images, labels, flips = data_lib.shard_batch(program.mesh, ds.train_images[:batch], ds.train_labels[:batch],
                                                 flips)
    metrics = train.zero_metrics()
    key = jax.random.key(0)
    t, m, lr = np.float32(cfg.loss.temperature), np.float32(cfg.loss.margin), np.float32(cfg.optimizer.learning_rate)
    state = (state, metrics)
    for _ in range(3):
        state = program.train_step(*state, images, labels, flips, key, 0, t, m, lr)
    jax.block_until_ready(state)
    steps = 60
    start = time.perf_counter()
    for _ in range(steps):
        state = program.train_step(*state, images, labels, flips, key, 0, t, m, lr)
    jax.block_until_ready(state)
    bare = steps * batch / (time.perf_counter() - start)
    ratio = summary["images_per_second"] / bare
    print(json.dumps({
        "case": "trainer_vs_bare_step", "config": args.config, "batch": batch,
        "trainer_images_per_second": round(summary["images_per_second"], 1),
        "bare_step_images_per_second": round(bare, 1), "ratio": round(ratio, 3), "target": 0.95,
        "ok": ratio >= 0.95, "train_step_compilations": compilations, "devices": jax.device_count(),
        "machine": machine(),
    }), flush=True)


if __name__ == "__main__":
    main()

"""Input pipeline speed: first and cached loads of the JPEG CIFAR-10, batches/s against a train step.

    python experiments/bench_input.py [--path ../shared/data/cifar10-jpeg.tgz] [--batch 512]

Prints one JSON line per case. Target: the pipeline (host batch gather, transfer, normalisation and
augmentation on device) delivers batches at least 10x faster than the default model's train step uses them,
and a cached load is at least 20x faster than the first.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from smoothmax import data as data_lib
from smoothmax import train
from smoothmax.config import load_config
from smoothmax.provenance import machine


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", default="../shared/data/cifar10-jpeg.tgz")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()

    if Path(args.path).exists():
        with tempfile.TemporaryDirectory() as cache:
            start = time.perf_counter()
            ds = data_lib.load_cifar10(args.path, cache_dir=cache)
            first = time.perf_counter() - start
            cached = []
            for _ in range(3):
                start = time.perf_counter()
                data_lib.load_cifar10(args.path, cache_dir=cache)
                cached.append(time.perf_counter() - start)
        print(json.dumps({"case": "load", "path": args.path, "first_s": round(first, 3),
                          "cached_s": round(float(np.median(cached)), 3),
                          "speedup": round(first / float(np.median(cached)), 1), "target": 20,
                          "machine": machine()}), flush=True)
    else:
        ds = data_lib.synthetic(num_train=10_000)

    mesh = data_lib.data_mesh()
    mean, std = ds.mean, ds.std

    @jax.jit
    def prepare(key, images, flips):
        return data_lib.augment(key, data_lib.normalize(images, mean, std), flips)

    def pipeline_step(step):
        idx = data_lib.epoch_permutation(len(ds.train_labels), args.batch, 0, step)[0]
        flips = data_lib.epoch_flips(len(ds.train_labels), 0, step)[idx]
        images, labels, flips = data_lib.shard_batch(mesh, ds.train_images[idx], ds.train_labels[idx], flips)
        return prepare(jax.random.key(step), images, flips), labels

    jax.block_until_ready(pipeline_step(0))
    start = time.perf_counter()
    for step in range(args.steps):
        out = pipeline_step(step)
    jax.block_until_ready(out)
    pipeline_rate = args.steps / (time.perf_counter() - start)

    cfg = load_config("configs/cifar10_cpu.py:softmax")
    cfg.data.batch_size = args.batch
    cfg.total_steps = 1000
    program = train.get_program(cfg, ds)
    state = (train.create_train_state(cfg, program.spec, ds.num_classes, ds.train_images), train.zero_metrics())
    flips = data_lib.epoch_flips(args.batch, 0, 0)
    images, labels, flips = data_lib.shard_batch(mesh, ds.train_images[: args.batch], ds.train_labels[: args.batch],
                                                 flips)
    args_ = (images, labels, flips, jax.random.key(0), 0, np.float32(1.0), np.float32(0.0),
             np.float32(cfg.optimizer.learning_rate))
    state = program.train_step(*state, *args_)
    jax.block_until_ready(state)
    steps = max(5, args.steps // 4)
    start = time.perf_counter()
    for _ in range(steps):
        state = program.train_step(*state, *args_)
    jax.block_until_ready(state)
    train_rate = steps / (time.perf_counter() - start)
    ratio = pipeline_rate / train_rate
    print(json.dumps({"case": "pipeline_vs_train_step", "batch": args.batch,
                      "pipeline_batches_per_s": round(pipeline_rate, 2),
                      "train_steps_per_s": round(train_rate, 2), "ratio": round(ratio, 1), "target": 10,
                      "ok": ratio >= 10, "machine": machine()}), flush=True)


if __name__ == "__main__":
    main()

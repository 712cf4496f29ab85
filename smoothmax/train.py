"""Training: one jitted train step for any objective, the loop, evaluation metrics and checkpoints.

The loop is written for throughput on every backend:
* one compilation per run: τ, m and the learning rate enter the step as traced scalars, so a schedule that
  moves them never recompiles;
* the model is split once (``nnx.split``) and the step is a plain ``jax.jit`` over its states;
* images travel to the device as uint8 and are normalised and augmented inside the step;
* metrics accumulate on device and reach the host only when the progress bar is refreshed;
* batches are laid over a ``("data",)`` mesh of all devices; parameters are replicated.

Outputs in ``workdir``: ``metrics.jsonl`` (one line per evaluation), ``summary.json`` (at the end),
``config.json`` and orbax checkpoints under ``checkpoints/``. Rerunning into a workdir (or ``--resume``)
continues from the last checkpoint and reproduces an uninterrupted run's metrics.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from smoothmax import data as data_lib
from smoothmax.losses import objective
from smoothmax.margins import implicit_margin, implicit_margin_bound, logit_margin
from smoothmax.models import make_model

# --------------------------------------------------------------------------- small helpers


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def schedule_value(spec, progress: float) -> float:
    """A loss hyper-parameter at ``progress`` ∈ [0, 1] of training: a number, or (start, end) linear."""
    if isinstance(spec, (int, float)):
        return float(spec)
    start, end = spec
    return float(start) + (float(end) - float(start)) * progress


def loss_schedule(loss_cfg, progress: float) -> tuple[float, float]:
    """(τ, m) at ``progress``: ``loss.temperature``/``loss.margin`` move to ``final_*`` when those are set."""
    def value(name):
        final = loss_cfg.get(f"final_{name}")
        start = loss_cfg[name]
        return schedule_value(start if final is None else (start, final), progress)

    return value("temperature"), value("margin")


def learning_rate_schedule(cfg) -> optax.Schedule:
    total = cfg.total_steps
    warmup = max(1, int(cfg.optimizer.warmup_fraction * total))
    peak = cfg.optimizer.learning_rate
    if cfg.optimizer.decay == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, total, end_value=0.0)
    if cfg.optimizer.decay == "linear":
        return optax.join_schedules(
            [optax.linear_schedule(0.0, peak, warmup), optax.linear_schedule(peak, 0.0, total - warmup)],
            [warmup],
        )
    raise ValueError(f"unknown optimizer.decay {cfg.optimizer.decay!r}: choose cosine or linear")


def make_optimizer(cfg) -> optax.GradientTransformation:
    opt = cfg.optimizer
    lr = learning_rate_schedule(cfg)
    # Weight decay on kernels only: decaying BatchNorm scales and biases hurts small nets.
    kernels = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)  # noqa: E731
    if opt.name == "sgd":
        return optax.chain(
            optax.add_decayed_weights(opt.weight_decay, mask=kernels),
            optax.sgd(lr, momentum=opt.momentum, nesterov=opt.nesterov),
        )
    if opt.name == "adamw":
        return optax.adamw(lr, weight_decay=opt.weight_decay, mask=kernels)
    raise ValueError(f"unknown optimizer.name {opt.name!r}: choose sgd or adamw")


# --------------------------------------------------------------------------- steps


@dataclasses.dataclass
class Program:
    """The compiled pieces of one run: model definition, steps and the data placement."""

    graphdef_train: Any
    graphdef_eval: Any
    optimizer: optax.GradientTransformation
    mesh: Any
    train_step: Any
    eval_step: Any


def build_program(cfg, model, mean, std, num_classes: int) -> Program:
    loss_fn = objective(cfg.loss.name)
    model.train()
    graphdef_train, _, _ = nnx.split(model, nnx.Param, ...)
    model.eval()
    graphdef_eval, _, _ = nnx.split(model, nnx.Param, ...)
    optimizer = make_optimizer(cfg)
    mesh = data_lib.data_mesh()
    augment = cfg.data.augment

    def forward(graphdef, params, rest, images):
        # Fresh variables at this trace level: NNX refuses to mutate variables made at an outer one.
        params, rest = jax.tree.map(lambda x: x, (params, rest))
        model = nnx.merge(graphdef, params, rest)
        logits = model(data_lib.normalize(images, mean, std))
        _, _, new_rest = nnx.split(model, nnx.Param, ...)
        return logits, new_rest

    def train_step(params, rest, opt_state, metrics, images, labels, key, temperature, margin):
        if augment:
            images = data_lib.augment(key, images.astype(jnp.float32))

        def loss_of(params, rest):
            logits, new_rest = forward(graphdef_train, params, rest, images)
            losses = loss_fn(logits, labels, temperature=temperature, margin=margin)
            return jnp.mean(losses), (logits, new_rest)

        (loss, (logits, new_rest)), grads = jax.value_and_grad(loss_of, has_aux=True)(params, rest)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        correct = jnp.sum(jnp.argmax(logits, -1) == labels)
        metrics = {
            "loss": metrics["loss"] + loss * labels.shape[0],
            "correct": metrics["correct"] + correct,
            "count": metrics["count"] + labels.shape[0],
        }
        return params, new_rest, opt_state, metrics

    def eval_step(params, rest, images, labels, mask, temperature, margin):
        logits, _ = forward(graphdef_eval, params, rest, images)
        safe_labels = jnp.where(mask, labels, 0)
        w = mask.astype(jnp.float32)
        loss = loss_fn(logits, safe_labels, temperature=temperature, margin=margin)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, safe_labels)
        margins = logit_margin(logits, safe_labels)
        implicit = implicit_margin(logits, safe_labels, temperature=temperature)
        return {
            "loss": jnp.sum(loss * w),
            "ce": jnp.sum(ce * w),
            "correct": jnp.sum((jnp.argmax(logits, -1) == safe_labels) * w),
            "implicit_margin": jnp.sum(implicit * w),
            "zero_loss": jnp.sum((loss == 0) * w),
            "count": jnp.sum(w),
        }, margins

    return Program(
        graphdef_train, graphdef_eval, optimizer, mesh,
        jax.jit(train_step, donate_argnums=(0, 1, 2, 3)), jax.jit(eval_step),
    )


def zero_metrics():
    return {"loss": jnp.zeros((), jnp.float32), "correct": jnp.zeros((), jnp.int32),
            "count": jnp.zeros((), jnp.int32)}


def evaluate(program: Program, params, rest, images, labels, cfg, temperature, margin) -> dict:
    """Metrics over every example of (images, labels), each counted once."""
    sums, margins = None, []
    batch = cfg.data.eval_batch_size
    batch -= batch % len(program.mesh.devices.ravel())
    for idx, mask in data_lib.eval_batches(len(labels), batch):
        local = data_lib.host_indices(np.arange(len(idx)))
        x, y, m = data_lib.shard_batch(program.mesh, images[idx[local]], labels[idx[local]], mask[local])
        out, batch_margins = program.eval_step(params, rest, x, y, m, temperature, margin)
        sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
        margins.append(np.asarray(batch_margins)[mask])
    sums = jax.tree.map(float, jax.device_get(sums))
    margins = np.concatenate(margins)
    n = sums["count"]
    return {
        "accuracy": sums["correct"] / n,
        "loss": sums["loss"] / n,
        "ce": sums["ce"] / n,
        "implicit_margin_mean": sums["implicit_margin"] / n,
        "zero_loss_fraction": sums["zero_loss"] / n,
        "logit_margin_mean": float(margins.mean()),
        "logit_margin_quantiles": {
            str(q): float(np.quantile(margins, q)) for q in (0.05, 0.25, 0.5, 0.75, 0.95)
        },
    }


# --------------------------------------------------------------------------- data and checkpoints


def load_data(cfg) -> data_lib.Dataset:
    d = cfg.data
    if d.name == "synthetic":
        return data_lib.synthetic(seed=d.synthetic_seed, num_train=d.num_train, num_test=d.num_test,
                                  difficulty=d.difficulty)
    if d.name == "cifar10":
        path = None if not d.path else Path(d.path).expanduser()
        return data_lib.load_cifar10(path, download=d.download, cache_dir=d.cache_dir or None)
    raise ValueError(f"unknown data.name {d.name!r}: choose cifar10 or synthetic")


def _checkpoint_manager(workdir: Path, cfg):
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(max_to_keep=cfg.checkpoint.keep, create=True)
    return ocp.CheckpointManager((workdir / "checkpoints").absolute(), options=options)


def _read_metrics(path: Path, upto_epoch: int) -> list[dict]:
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["epoch"] <= upto_epoch]


# --------------------------------------------------------------------------- the run


def train_and_evaluate(cfg: ml_collections.ConfigDict, workdir, *, resume: bool = True,
                       progress: bool = True, dataset: data_lib.Dataset | None = None) -> dict:
    """Train the model that ``cfg`` describes, evaluate it, and write its files into ``workdir``."""
    from tqdm.auto import tqdm

    start_time = time.time()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        atomic_write_text(workdir / "config.json", cfg.to_json_best_effort(indent=2))
    ds = dataset if dataset is not None else load_data(cfg)
    num_train = len(ds.train_labels)
    batch_size = cfg.data.batch_size
    if batch_size % jax.device_count():
        raise ValueError(f"data.batch_size {batch_size} is not divisible by the {jax.device_count()} devices")
    steps_per_epoch = num_train // batch_size
    cfg = cfg.copy_and_resolve_references()
    with cfg.unlocked():
        cfg.total_steps = steps_per_epoch * cfg.epochs

    model = make_model(cfg.model, ds.num_classes, cfg.seed)
    program = build_program(cfg, model, ds.mean, ds.std, ds.num_classes)
    _, params, rest = nnx.split(model, nnx.Param, ...)
    opt_state = program.optimizer.init(params)
    replicated = NamedSharding(program.mesh, PartitionSpec())
    params, rest, opt_state = jax.device_put((params, rest, opt_state), replicated)

    manager = _checkpoint_manager(workdir, cfg)
    start_epoch = 0
    if resume and manager.latest_step() is not None:
        import orbax.checkpoint as ocp

        target = {"params": params, "rest": rest, "opt_state": opt_state}
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        restored = manager.restore(manager.latest_step(), args=ocp.args.StandardRestore(abstract))
        params, rest, opt_state = restored["params"], restored["rest"], restored["opt_state"]
        start_epoch = manager.latest_step()
    history = _read_metrics(workdir / "metrics.jsonl", start_epoch)
    key = jax.random.key(cfg.seed)
    eval_every = cfg.eval_every_epochs

    images_seen, train_seconds = 0, 0.0
    bar = tqdm(total=cfg.total_steps, initial=start_epoch * steps_per_epoch, disable=not progress,
               desc=f"{cfg.loss.name} τ={cfg.loss.temperature} m={cfg.loss.margin}", unit="step",
               dynamic_ncols=True)
    for epoch in range(start_epoch, cfg.epochs):
        epoch_start = time.time()
        metrics = jax.device_put(zero_metrics(), replicated)
        order = data_lib.epoch_permutation(num_train, batch_size, cfg.seed, epoch)
        for i, idx in enumerate(order):
            step = epoch * steps_per_epoch + i
            temperature, margin = loss_schedule(cfg.loss, step / max(1, cfg.total_steps - 1))
            local = data_lib.host_indices(idx)
            images, labels = data_lib.shard_batch(program.mesh, ds.train_images[local], ds.train_labels[local])
            params, rest, opt_state, metrics = program.train_step(
                params, rest, opt_state, metrics, images, labels, jax.random.fold_in(key, step),
                np.float32(temperature), np.float32(margin),
            )
            bar.update(1)
            if progress and (i + 1) % cfg.log_every_steps == 0:
                m = jax.device_get(metrics)
                bar.set_postfix(loss=f"{m['loss'] / m['count']:.4f}", acc=f"{m['correct'] / m['count']:.3f}")
        m = jax.device_get(metrics)
        train_seconds += time.time() - epoch_start
        images_seen += steps_per_epoch * batch_size
        done = epoch + 1
        if done % eval_every == 0 or done == cfg.epochs:
            temperature, margin = loss_schedule(cfg.loss, 1.0 if done == cfg.epochs else step / cfg.total_steps)
            test = evaluate(program, params, rest, ds.test_images, ds.test_labels, cfg, temperature, margin)
            row = {"epoch": done, "step": done * steps_per_epoch, "temperature": temperature, "margin": margin,
                   "train_loss": float(m["loss"] / m["count"]), "train_accuracy": float(m["correct"] / m["count"]),
                   **{f"test_{k}": v for k, v in test.items()}}
            history.append(row)
            bar.write(f"epoch {done}/{cfg.epochs}: train loss {row['train_loss']:.4f} acc "
                      f"{row['train_accuracy']:.4f} | test acc {test['accuracy']:.4f} ce {test['ce']:.4f}")
            if jax.process_index() == 0:
                atomic_write_text(workdir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))
        if done % cfg.checkpoint.every_epochs == 0 or done == cfg.epochs:
            import orbax.checkpoint as ocp

            manager.save(done, args=ocp.args.StandardSave({"params": params, "rest": rest, "opt_state": opt_state}))
    bar.close()
    manager.wait_until_finished()
    manager.close()

    final = history[-1]
    temperature, margin = final["temperature"], final["margin"]
    summary = {
        "objective": cfg.loss.name,
        "temperature": cfg.loss.temperature,
        "margin": cfg.loss.margin,
        "final_temperature": temperature,
        "final_margin": margin,
        "head": cfg.model.head,
        "model": cfg.model.name,
        "epochs": cfg.epochs,
        "seed": cfg.seed,
        "test_accuracy": final["test_accuracy"],
        "test_loss": final["test_loss"],
        "test_ce": final["test_ce"],
        "train_accuracy": final["train_accuracy"],
        "train_loss": final["train_loss"],
        "logit_margin_mean": final["test_logit_margin_mean"],
        "logit_margin_quantiles": final["test_logit_margin_quantiles"],
        "implicit_margin_mean": final["test_implicit_margin_mean"],
        "implicit_margin_bound": float(implicit_margin_bound(ds.num_classes, temperature)),
        "zero_loss_fraction": final["test_zero_loss_fraction"],
        "wall_seconds": time.time() - start_time,
        "images_per_second": images_seen / train_seconds if train_seconds else math.nan,
        "devices": jax.device_count(),
        "backend": jax.default_backend(),
        "config": json.loads(cfg.to_json_best_effort()),
    }
    if jax.process_index() == 0:
        atomic_write_text(workdir / "summary.json", json.dumps(summary, indent=2))
    return summary

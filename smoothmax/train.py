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
from smoothmax.files import atomic_write_text
from smoothmax.losses import objective
from smoothmax.margins import implicit_margin, implicit_margin_bound, logit_margin
from smoothmax.models import make_model

# --------------------------------------------------------------------------- small helpers


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

# Keys that change a member's numbers but not its program: runs that differ only in these share one
# compiled step (τ, m are traced scalars; the seed only sets initial weights).
MEMBER_KEYS = ("seed", "loss.temperature", "loss.margin", "loss.final_temperature", "loss.final_margin")


def static_key(cfg) -> str:
    """The part of a config that fixes the compiled program (everything but :data:`MEMBER_KEYS`)."""
    flat = json.loads(cfg.to_json_best_effort())
    for key in MEMBER_KEYS:
        *parents, leaf = key.split(".")
        node = flat
        for part in parents:
            node = node[part]
        node.pop(leaf, None)
    return json.dumps(flat, sort_keys=True)


@dataclasses.dataclass
class Program:
    """The compiled pieces shared by every member of a run: optimizer, steps, data placement.

    With ``members = K`` the steps are ``vmap``ped over stacked parameters, optimizer states and
    per-member (τ, m), while images, labels and the augmentation key are shared.
    """

    optimizer: optax.GradientTransformation
    mesh: Any
    members: int | None
    train_step: Any
    eval_step: Any
    # Where the vmapped population lives. When the devices divide it (on one host), each device holds
    # whole members and sees the whole batch: no gradient all-reduce, no BatchNorm statistics across
    # devices. Otherwise the state is replicated and batches are split along ``data``.
    splits_members: bool

    @property
    def state_sharding(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec("data") if self.splits_members else PartitionSpec())

    def put_batch(self, *local_arrays: np.ndarray):
        """Place this host's rows of a batch: whole on every device when the devices hold members, split
        along ``data`` otherwise."""
        if self.splits_members:
            out = jax.device_put(local_arrays, NamedSharding(self.mesh, PartitionSpec()))
            return out if len(out) > 1 else out[0]
        return data_lib.shard_batch(self.mesh, *local_arrays)


def _splits_members(members: int | None) -> bool:
    devices = jax.device_count()
    return members is not None and devices > 1 and members % devices == 0 and jax.process_count() == 1


def build_program(cfg, mean, std, num_classes: int, members: int | None = None) -> Program:
    loss_fn = objective(cfg.loss.name)
    model = make_model(cfg.model, num_classes, cfg.seed)
    graphdef, _, _ = nnx.split(model, nnx.Param, ...)
    optimizer = make_optimizer(cfg)
    mesh = data_lib.data_mesh()
    augment = cfg.data.augment

    def forward(params, rest, images, training):
        # Fresh variables at this trace level: NNX refuses to mutate variables made at an outer one.
        params, rest = jax.tree.map(lambda x: x, (params, rest))
        model = nnx.merge(graphdef, params, rest)
        model.train() if training else model.eval()
        logits = model(data_lib.normalize(images, mean, std))
        _, _, new_rest = nnx.split(model, nnx.Param, ...)
        return logits, new_rest

    def train_step(params, rest, opt_state, metrics, images, labels, key, temperature, margin):
        if augment:
            images = data_lib.augment(key, images.astype(jnp.float32))

        def loss_of(params, rest):
            logits, new_rest = forward(params, rest, images, training=True)
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
        logits, _ = forward(params, rest, images, training=False)
        if cfg.data.eval_flip:  # test-time augmentation: average the logits of the image and its mirror
            logits = 0.5 * (logits + forward(params, rest, images[:, :, ::-1], training=False)[0])
        safe_labels = jnp.where(mask, labels, 0)
        w = mask.astype(jnp.float32)
        loss, pullback = jax.vjp(
            lambda z: loss_fn(z, safe_labels, temperature=temperature, margin=margin), logits
        )
        # Gradient support: how many logits of an example receive a nonzero gradient.
        (logit_grads,) = pullback(jnp.ones_like(loss))
        support = jnp.sum(logit_grads != 0, axis=-1)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, safe_labels)
        implicit = implicit_margin(logits, safe_labels, temperature=temperature)
        return {
            "loss": jnp.sum(loss * w),
            "ce": jnp.sum(ce * w),
            "correct": jnp.sum((jnp.argmax(logits, -1) == safe_labels) * w),
            "implicit_margin": jnp.sum(implicit * w),
            "zero_loss": jnp.sum((loss == 0) * w),
            "gradient_support": jnp.sum(support * w),
            "count": jnp.sum(w),
        }, logit_margin(logits, safe_labels)

    if members is not None:
        shared = None
        train_step = jax.vmap(train_step, in_axes=(0, 0, 0, 0, shared, shared, shared, 0, 0))
        eval_step = jax.vmap(eval_step, in_axes=(0, 0, shared, shared, shared, 0, 0))
    program = Program(optimizer, mesh, members, train_step, jax.jit(eval_step), _splits_members(members))
    # Pin the state's placement so that step outputs feed the next step without a second compilation.
    state, replicated = program.state_sharding, NamedSharding(mesh, PartitionSpec())
    program.train_step = jax.jit(train_step, donate_argnums=(0, 1, 2, 3),
                                 out_shardings=(state, state, state, replicated))
    return program


_PROGRAMS: dict[tuple, Program] = {}


def get_program(cfg, dataset, members: int | None = None) -> Program:
    """A cached :class:`Program`: runs with the same static config and data reuse its compilation."""
    key = (static_key(cfg), dataset.mean.tobytes(), dataset.std.tobytes(), dataset.num_classes, members,
           tuple(jax.devices()))
    if key not in _PROGRAMS:
        _PROGRAMS[key] = build_program(cfg, dataset.mean, dataset.std, dataset.num_classes, members)
    return _PROGRAMS[key]


def init_state(cfg, program: Program, num_classes: int):
    """Parameters, BatchNorm statistics and optimizer state of a fresh model seeded by ``cfg.seed``."""
    _, params, rest = nnx.split(make_model(cfg.model, num_classes, cfg.seed), nnx.Param, ...)
    return params, rest, program.optimizer.init(params)


def zero_metrics(lead=()):
    return {"loss": jnp.zeros(lead, jnp.float32), "correct": jnp.zeros(lead, jnp.int32),
            "count": jnp.zeros(lead, jnp.int32)}


def _histogram(values: np.ndarray, bins: int = 60) -> dict:
    counts, edges = np.histogram(values, bins=bins)
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}


def evaluate(program: Program, params, rest, images, labels, cfg, temperature, margin) -> list[dict]:
    """Metrics of each member over every example of (images, labels), each example counted once."""
    sums, margins = None, []
    batch = cfg.data.eval_batch_size
    batch -= batch % len(program.mesh.devices.ravel())
    for idx, mask in data_lib.eval_batches(len(labels), batch):
        local = data_lib.host_indices(np.arange(len(idx)))
        x, y, m = program.put_batch(images[idx[local]], labels[idx[local]], mask[local])
        out, batch_margins = program.eval_step(params, rest, x, y, m, temperature, margin)
        sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
        margins.append(np.asarray(batch_margins)[..., mask])
    sums = jax.device_get(sums)
    margins = np.concatenate(margins, axis=-1)
    if program.members is None:
        sums, margins = jax.tree.map(lambda x: x[None], sums), margins[None]
    results = []
    for k in range(len(margins)):
        n = float(sums["count"][k])
        results.append({
            "accuracy": float(sums["correct"][k]) / n,
            "loss": float(sums["loss"][k]) / n,
            "ce": float(sums["ce"][k]) / n,
            "implicit_margin_mean": float(sums["implicit_margin"][k]) / n,
            "zero_loss_fraction": float(sums["zero_loss"][k]) / n,
            "gradient_support_mean": float(sums["gradient_support"][k]) / n,
            "logit_margin_mean": float(margins[k].mean()),
            "logit_margin_histogram": _histogram(margins[k]),
            "logit_margin_quantiles": {
                str(q): float(np.quantile(margins[k], q)) for q in (0.05, 0.25, 0.5, 0.75, 0.95)
            },
        })
    return results


# --------------------------------------------------------------------------- data and checkpoints


def load_data(cfg) -> data_lib.Dataset:
    d = cfg.data
    if d.name == "synthetic":
        return data_lib.synthetic(seed=d.synthetic_seed, num_train=d.num_train, num_test=d.num_test,
                                  difficulty=d.difficulty)
    if d.name == "cifar10":
        path = None if not d.path else Path(d.path).expanduser()
        ds = data_lib.load_cifar10(path, download=d.download, cache_dir=d.cache_dir or None)
        return data_lib.subset(ds, d.train_subset) if d.train_subset else ds
    raise ValueError(f"unknown data.name {d.name!r}: choose cifar10 or synthetic")


def _checkpoint_manager(directory: Path, cfg):
    """Orbax writes each checkpoint into a temporary folder and renames it when complete."""
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(max_to_keep=cfg.checkpoint.keep, create=True)
    return ocp.CheckpointManager(Path(directory).absolute(), options=options)


def _read_metrics(path: Path, upto_epoch: int) -> list[dict]:
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["epoch"] <= upto_epoch]


# --------------------------------------------------------------------------- the run


def train_and_evaluate(cfg: ml_collections.ConfigDict, workdir, *, resume: bool = True,
                       progress: bool = True, dataset: data_lib.Dataset | None = None) -> dict:
    """Train the model that ``cfg`` describes, evaluate it, and write its files into ``workdir``."""
    workdir = Path(workdir)
    return train_members([cfg], [workdir], workdir / "checkpoints", vmapped=False, resume=resume,
                         progress=progress, dataset=dataset)[0]


def train_members(cfgs, workdirs, checkpoint_dir, *, vmapped: bool, resume: bool = True, progress: bool = True,
                  dataset: data_lib.Dataset | None = None) -> list[dict]:
    """Train runs that differ only in :data:`MEMBER_KEYS` with one program and one data stream.

    ``vmapped``: one step trains all members at once (stacked states); otherwise a single member.
    Each member writes ``metrics.jsonl``, ``summary.json`` and ``config.json`` into its own workdir; the
    (stacked) state is checkpointed in ``checkpoint_dir``.
    """
    from tqdm.auto import tqdm

    start_time = time.time()
    cfgs = [c.copy_and_resolve_references() for c in cfgs]
    if not vmapped and len(cfgs) != 1:
        raise ValueError("without vmapped, train_members runs exactly one member")
    if len({static_key(c) for c in cfgs}) != 1:
        raise ValueError(f"population members may differ only in {', '.join(MEMBER_KEYS)}")
    workdirs = [Path(w) for w in workdirs]
    ds = dataset if dataset is not None else load_data(cfgs[0])
    cfg = cfgs[0]
    num_train = len(ds.train_labels)
    batch_size = cfg.data.batch_size
    if batch_size % jax.device_count():
        raise ValueError(f"data.batch_size {batch_size} is not divisible by the {jax.device_count()} devices")
    steps_per_epoch = num_train // batch_size
    total_steps = steps_per_epoch * cfg.epochs
    for c, w in zip(cfgs, workdirs):
        with c.unlocked():
            c.total_steps = total_steps
        w.mkdir(parents=True, exist_ok=True)
        if jax.process_index() == 0:
            atomic_write_text(w / "config.json", c.to_json_best_effort(indent=2))
    cfg = cfgs[0]

    members = len(cfgs) if vmapped else None
    program = get_program(cfg, ds, members)
    states = [init_state(c, program, ds.num_classes) for c in cfgs]
    state = jax.tree.map(lambda *xs: jnp.stack(xs), *states) if vmapped else states[0]
    replicated = NamedSharding(program.mesh, PartitionSpec())
    params, rest, opt_state = jax.device_put(state, program.state_sharding)

    def member_values(progress_fraction):
        values = np.array([loss_schedule(c.loss, progress_fraction) for c in cfgs], np.float32)
        return (values[:, 0], values[:, 1]) if vmapped else (values[0, 0], values[0, 1])

    manager = _checkpoint_manager(Path(checkpoint_dir), cfg)
    start_epoch = 0
    if resume and manager.latest_step() is not None:
        import orbax.checkpoint as ocp

        target = {"params": params, "rest": rest, "opt_state": opt_state}
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        restored = manager.restore(manager.latest_step(), args=ocp.args.StandardRestore(abstract))
        params, rest, opt_state = restored["params"], restored["rest"], restored["opt_state"]
        start_epoch = manager.latest_step()
    histories = [_read_metrics(w / "metrics.jsonl", start_epoch) for w in workdirs]
    key = jax.random.key(cfg.data.seed)
    lead = (len(cfgs),) if vmapped else ()

    epoch_seconds = []
    desc = cfg.loss.name if vmapped else f"{cfg.loss.name} τ={cfg.loss.temperature} m={cfg.loss.margin}"
    if vmapped:
        desc += f" ×{len(cfgs)} members"
    bar = tqdm(total=total_steps, initial=start_epoch * steps_per_epoch, disable=not progress, desc=desc,
               unit="step", dynamic_ncols=True)
    for epoch in range(start_epoch, cfg.epochs):
        epoch_start = time.time()
        metrics = jax.device_put(zero_metrics(lead), replicated)
        order = data_lib.epoch_permutation(num_train, batch_size, cfg.data.seed, epoch)
        for i, idx in enumerate(order):
            step = epoch * steps_per_epoch + i
            temperature, margin = member_values(step / max(1, total_steps - 1))
            local = data_lib.host_indices(idx)
            images, labels = program.put_batch(ds.train_images[local], ds.train_labels[local])
            params, rest, opt_state, metrics = program.train_step(
                params, rest, opt_state, metrics, images, labels, jax.random.fold_in(key, step),
                temperature, margin,
            )
            bar.update(1)
            if progress and (i + 1) % cfg.log_every_steps == 0:
                m = jax.device_get(metrics)
                bar.set_postfix(loss=f"{np.mean(m['loss'] / m['count']):.4f}",
                                acc=f"{np.mean(m['correct'] / m['count']):.3f}")
        m = jax.tree.map(np.atleast_1d, jax.device_get(metrics))
        epoch_seconds.append(time.time() - epoch_start)
        done = epoch + 1
        if done % cfg.eval_every_epochs == 0 or done == cfg.epochs:
            fraction = 1.0 if done == cfg.epochs else done * steps_per_epoch / max(1, total_steps - 1)
            temperature, margin = member_values(min(fraction, 1.0))
            tests = evaluate(program, params, rest, ds.test_images, ds.test_labels, cfg, temperature, margin)
            for k, (test, history) in enumerate(zip(tests, histories)):
                row = {"epoch": done, "step": done * steps_per_epoch,
                       "temperature": float(np.atleast_1d(temperature)[k]),
                       "margin": float(np.atleast_1d(margin)[k]),
                       "train_loss": float(m["loss"][k] / m["count"][k]),
                       "train_accuracy": float(m["correct"][k] / m["count"][k]),
                       **{f"test_{name}": v for name, v in test.items()}}
                history.append(row)
                bar.write(f"epoch {done}/{cfg.epochs} τ={row['temperature']:.4g} m={row['margin']:.4g}: train "
                          f"loss {row['train_loss']:.4f} acc {row['train_accuracy']:.4f} | test acc "
                          f"{test['accuracy']:.4f} ce {test['ce']:.4f}")
                if jax.process_index() == 0:
                    atomic_write_text(workdirs[k] / "metrics.jsonl",
                                      "".join(json.dumps(r) + "\n" for r in history))
        if done % cfg.checkpoint.every_epochs == 0 or done == cfg.epochs:
            import orbax.checkpoint as ocp

            manager.save(done, args=ocp.args.StandardSave({"params": params, "rest": rest, "opt_state": opt_state}))
    bar.close()
    manager.wait_until_finished()
    manager.close()

    wall = time.time() - start_time
    # Throughput in steady state: the first epoch of a process pays for compilation. None when this
    # process trained nothing (the run was already complete).
    steady = epoch_seconds[1:] or epoch_seconds
    images_per_second = len(steady) * steps_per_epoch * batch_size * len(cfgs) / sum(steady) if steady else None
    summaries = []
    for c, w, history in zip(cfgs, workdirs, histories):
        final = history[-1]
        summary = {
            "objective": c.loss.name,
            "temperature": c.loss.temperature,
            "margin": c.loss.margin,
            "final_temperature": final["temperature"],
            "final_margin": final["margin"],
            "head": c.model.head,
            "model": c.model.name,
            "epochs": c.epochs,
            "seed": c.seed,
            "test_accuracy": final["test_accuracy"],
            "test_loss": final["test_loss"],
            "test_ce": final["test_ce"],
            "train_accuracy": final["train_accuracy"],
            "train_loss": final["train_loss"],
            "logit_margin_mean": final["test_logit_margin_mean"],
            "logit_margin_quantiles": final["test_logit_margin_quantiles"],
            "implicit_margin_mean": final["test_implicit_margin_mean"],
            "implicit_margin_bound": float(implicit_margin_bound(ds.num_classes, final["temperature"])),
            "zero_loss_fraction": final["test_zero_loss_fraction"],
            "gradient_support_mean": final["test_gradient_support_mean"],
            "logit_margin_histogram": final["test_logit_margin_histogram"],
            "wall_seconds": wall,
            "images_per_second": images_per_second,
            "devices": jax.device_count(),
            "backend": jax.default_backend(),
            "population": len(cfgs) if vmapped else 1,
            "population_split": "members" if program.splits_members else "batch",
            "config": json.loads(c.to_json_best_effort()),
        }
        if jax.process_index() == 0:
            atomic_write_text(w / "summary.json", json.dumps(summary, indent=2))
        summaries.append(summary)
    return summaries

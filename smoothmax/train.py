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

import contextlib
import dataclasses
import functools
import json
import sys
import time
from pathlib import Path
from typing import Any


import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx, struct
from jax.sharding import NamedSharding, PartitionSpec

from smoothmax import data as data_lib
from smoothmax import metrics as metrics_lib
from smoothmax.config import validate_config
from smoothmax.files import atomic_write_text
from smoothmax.identity import canonical, short_hash
from smoothmax.losses import objective
from smoothmax.margins import implicit_margin, implicit_margin_bound, logit_margin
from smoothmax.models import make_model
from smoothmax.provenance import provenance
from smoothmax.workdir import TimeLedger, WorkdirBusy, WorkdirError, claim

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


def learning_rate_schedule(cfg, peak: float = 1.0) -> optax.Schedule:
    """Warm-up from 0 to ``peak``, then cosine or linear decay to 0 at ``total_steps``.

    The optimizer follows this shape at peak 1; the peak, ``optimizer.learning_rate``, multiplies its
    updates inside the train step as a traced value, so that runs differing only in their learning rate
    share one compiled step (and train as one population).
    """
    total = cfg.total_steps
    warmup = max(1, int(cfg.optimizer.warmup_fraction * total))
    if cfg.optimizer.decay == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, total, end_value=0.0)
    if cfg.optimizer.decay == "linear":
        return optax.join_schedules(
            [optax.linear_schedule(0.0, peak, warmup), optax.linear_schedule(peak, 0.0, total - warmup)],
            [warmup],
        )
    raise ValueError(f"unknown optimizer.decay {cfg.optimizer.decay!r}: choose cosine or linear")


def make_optimizer(cfg) -> optax.GradientTransformation:
    """The optimizer at learning rate 1 (see :func:`learning_rate_schedule`): its updates are scaled by the
    learning rate afterwards, exactly as a peak of ``optimizer.learning_rate`` would scale them."""
    opt = cfg.optimizer
    lr = learning_rate_schedule(cfg)
    # Weight decay on kernels only: decaying BatchNorm scales and biases hurts small nets.
    kernels = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)  # noqa: E731
    if opt.name == "sgd":
        steps = [optax.add_decayed_weights(opt.weight_decay, mask=kernels),
                 optax.sgd(lr, momentum=opt.momentum, nesterov=opt.nesterov)]
    elif opt.name == "adamw":
        steps = [optax.adamw(lr, weight_decay=opt.weight_decay, mask=kernels)]
    else:
        raise ValueError(f"unknown optimizer.name {opt.name!r}: choose sgd or adamw")
    if opt.bias_scale != 1.0:  # BatchNorm biases move faster (airbench: 64×, with BatchNorm scales frozen)
        steps.append(optax.masked(optax.scale(opt.bias_scale), batchnorm_biases))
    return optax.chain(*steps) if len(steps) > 1 else steps[0]


def batchnorm_biases(params):
    """True at every BatchNorm bias: each ``bias`` outside the head (the convolutions have none). Their
    gradients are small next to how far a BatchNorm bias must travel."""
    def is_bias(path, _):
        names = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]  # not the Variables' ``.value``
        return names[-1] == "bias" and "head" not in names

    return jax.tree_util.tree_map_with_path(is_bias, params)


# --------------------------------------------------------------------------- state and steps

# Keys that change a member's numbers but not its program: runs that differ only in these share one
# compiled step (τ, m and the learning rate are traced scalars; the seed only sets initial weights).
MEMBER_KEYS = ("seed", "loss.temperature", "loss.margin", "loss.final_temperature", "loss.final_margin",
               "optimizer.learning_rate")


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


@struct.dataclass
class TrainState:
    """One member's training state; a population stacks members along a leading axis."""

    params: Any  # {"model": the network's parameters, "log_temperature": log τ when τ is learned}
    rest: Any  # BatchNorm statistics and other non-parameter variables
    opt_state: Any
    step: jax.Array
    # Lookahead's slow copy of (params, rest) (None without ``optimizer.lookahead_every``).
    slow: Any = None


@dataclasses.dataclass(frozen=True)
class StepSpec:
    """What the steps close over: the model's structure, the optimizer, the objective, the input pipeline."""

    graphdef: Any
    optimizer: optax.GradientTransformation
    loss_fn: Any
    mean: np.ndarray
    std: np.ndarray
    augment: bool
    crop_pad: int
    eval_views: tuple  # the (dy, dx, mirrored) views whose logits evaluation averages
    learn_temperature: bool
    lookahead_every: int = 0  # Lookahead: sync every this many steps (0: off) ...
    lookahead_decay: float = 0.0  # ... keeping this share of the slow weights at the end of training
    total_steps: int = 0


def create_train_state(cfg, spec: StepSpec, num_classes: int, train_images=None) -> TrainState:
    """Parameters, BatchNorm statistics and optimizer state of a fresh model seeded by ``cfg.seed``.

    A whitened stem is fitted to ``train_images`` (uint8 NHWC; 1,000 of them, evenly spaced, are enough to
    estimate the 12 × 12 covariance of 2×2 patches)."""
    network = make_model(cfg.model, num_classes, cfg.seed)
    if cfg.model.get("stem") == "whitened":
        if train_images is None:
            raise ValueError("a whitened stem needs the training images to fit")
        sample = train_images[:: max(1, len(train_images) // 1000)]
        network.stem.fit(data_lib.normalize(sample, spec.mean, spec.std))
    _, model, rest = nnx.split(network, nnx.Param, ...)
    params = {"model": model}
    if spec.learn_temperature:
        params["log_temperature"] = jnp.log(jnp.asarray(cfg.loss.temperature, jnp.float32))
    slow = jax.tree.map(jnp.copy, (params, rest)) if spec.lookahead_every else None  # own buffers: donated
    return TrainState(params, rest, spec.optimizer.init(params), jnp.zeros((), jnp.int32), slow)


def temperature_of(spec: StepSpec, params, temperature):
    """τ of a step: learned (``exp(log τ)``, NormFace) or the schedule's."""
    return jnp.exp(params["log_temperature"]) if spec.learn_temperature else temperature


def forward(spec: StepSpec, params, rest, images, training: bool):
    """Logits of a batch of uint8 images, and the updated non-parameter variables."""
    # Fresh variables at this trace level: NNX refuses to mutate variables made at an outer one.
    params, rest = jax.tree.map(lambda x: x, (params, rest))
    model = nnx.merge(spec.graphdef, params, rest)
    model.train() if training else model.eval()
    logits = model(data_lib.normalize(images, spec.mean, spec.std))
    _, _, new_rest = nnx.split(model, nnx.Param, ...)
    return logits, new_rest


def train_step(spec: StepSpec, state: TrainState, metrics, images, labels, flips, key, step, temperature, margin,
               learning_rate):
    """One SGD step of one member; ``metrics`` accumulates loss, correct and count on device. ``flips``
    (decided on the host, :func:`smoothmax.data.epoch_flips`) and the crops (from ``key`` folded with the
    global ``step``, on device: an eager ``fold_in`` would be one more dispatch per step on the host)
    augment the batch."""
    if spec.augment:
        images = data_lib.augment(jax.random.fold_in(key, step), images.astype(jnp.float32), flips, spec.crop_pad)

    def objective_of(params):
        logits, new_rest = forward(spec, params["model"], state.rest, images, training=True)
        tau = temperature_of(spec, params, temperature)
        loss = jnp.mean(spec.loss_fn(logits, labels, temperature=tau, margin=margin))
        # A learned τ minimises L/τ (the cross-entropy of z/τ for softmax, as NormFace learns its scale):
        # L itself grows with τ, so minimising it would drive τ to 0.
        return (loss / tau if spec.learn_temperature else loss), (loss, logits, new_rest)

    (_, (loss, logits, new_rest)), grads = jax.value_and_grad(objective_of, has_aux=True)(state.params)
    updates, opt_state = spec.optimizer.update(grads, state.opt_state, state.params)
    updates = jax.tree.map(lambda u: learning_rate * u, updates)
    state = state.replace(params=optax.apply_updates(state.params, updates), rest=new_rest,
                          opt_state=opt_state, step=state.step + 1)
    if spec.lookahead_every:
        state = lookahead(spec, state)
    metrics = {
        "loss": metrics["loss"] + loss * labels.shape[0],
        "correct": metrics["correct"] + jnp.sum(jnp.argmax(logits, -1) == labels),
        "count": metrics["count"] + labels.shape[0],
    }
    return state, metrics


def lookahead(spec: StepSpec, state: TrainState) -> TrainState:
    """Lookahead (Zhang et al., 2019) as airbench schedules it: every ``lookahead_every`` steps and at the last
    step, the slow copy moves to ``d·slow + (1 − d)·fast`` and the fast weights restart from it. The share
    ``d = lookahead_decay · progress³`` is about 0 early, when the fast weights should roam, and reaches
    ``lookahead_decay`` at the end, where averaging damps the last steps' noise. BatchNorm statistics are
    averaged with the parameters, so that they describe the weights evaluation uses."""
    step = state.step  # already counts this step
    sync = (step % spec.lookahead_every == 0) | (step == spec.total_steps)
    decay = spec.lookahead_decay * (step.astype(jnp.float32) / spec.total_steps) ** 3
    fast = (state.params, state.rest)
    # Leaves that never move (a frozen whitened stem) stay bit-exact: d·s + (1 − d)·s rounds.
    moved = jax.tree.map(lambda s, f: jnp.where(s == f, f, decay * s + (1 - decay) * f), state.slow, fast)
    pick = lambda new, old: jax.tree.map(lambda a, b: jnp.where(sync, a, b), new, old)  # noqa: E731
    slow = pick(moved, state.slow)
    params, rest = pick(slow, fast)
    return state.replace(params=params, rest=rest, slow=slow)


def eval_step(spec: StepSpec, state: TrainState, images, labels, mask, temperature, margin):
    """One member's per-example outputs on a batch: logits, loss, logit and implicit margins, and the
    participation ratio of the loss's gradient over the rivals (see :mod:`smoothmax.metrics`)."""
    model = state.params["model"]
    # Test-time augmentation: the mean of the logits over the views (the image alone when there is one).
    views = [data_lib.translate(images[:, :, ::-1] if mirrored else images, dy, dx) for dy, dx, mirrored in spec.eval_views]
    logits = sum(forward(spec, model, state.rest, v, training=False)[0] for v in views) / len(views)
    temperature = temperature_of(spec, state.params, temperature)
    labels = jnp.where(mask, labels, 0)  # padding rows: any valid label, dropped on the host
    loss, pullback = jax.vjp(lambda z: spec.loss_fn(z, labels, temperature=temperature, margin=margin), logits)
    (grads,) = pullback(jnp.ones_like(loss))
    rivals = jnp.where(jax.nn.one_hot(labels, logits.shape[-1], dtype=bool), 0.0, grads)
    l1, l2 = jnp.sum(jnp.abs(rivals), -1), jnp.sum(rivals * rivals, -1)
    return {
        "logits": logits,
        "loss": loss,
        "logit_margin": logit_margin(logits, labels),
        "implicit_margin": implicit_margin(logits, labels, temperature=temperature),
        "participation": jnp.where(l2 > 0, l1 * l1 / jnp.where(l2 > 0, l2, 1.0), 0.0),
    }


def zero_metrics(lead=()):
    return {"loss": jnp.zeros(lead, jnp.float32), "correct": jnp.zeros(lead, jnp.int32),
            "count": jnp.zeros(lead, jnp.int32)}


# --------------------------------------------------------------------------- programs


@dataclasses.dataclass
class Program:
    """The compiled steps shared by every member of a run, and where states and batches live.

    With ``members = K`` the steps are the single-member steps ``vmap``ped over stacked states and
    per-member (τ, m), while images, labels and the augmentation key are shared.
    """

    spec: StepSpec
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


class TrainingFeed:
    """The training batches of a run, by their indices into the training set.

    On one host the uint8 training set (150 MB for CIFAR-10) and each epoch's flips are placed on the devices
    once, and a batch is gathered there from its indices: per step the host sends 4 bytes per example instead
    of 3 kB (docs/benchmarks.md, "Host work per step"). With several hosts each host reads its own rows and
    places them (:meth:`Program.put_batch`), so no host holds another's data.
    """

    def __init__(self, program: Program, images: np.ndarray, labels: np.ndarray):
        self.program, self.images, self.labels = program, images, labels
        self.resident = jax.process_count() == 1
        if self.resident:
            replicated = NamedSharding(program.mesh, PartitionSpec())
            batch = replicated if program.splits_members else data_lib.batch_sharding(program.mesh)
            self.replicated = replicated
            self.on_device = jax.device_put((images, labels), replicated)
            self.gather = jax.jit(lambda x, y, f, idx: (x[idx], y[idx], f[idx]), out_shardings=batch)

    def epoch(self, flips: np.ndarray) -> None:
        self.flips = jax.device_put(flips, self.replicated) if self.resident else flips

    def batch(self, idx: np.ndarray):
        """(images, labels, flips) of the examples ``idx`` (global indices, the same on every host)."""
        if self.resident:
            return self.gather(*self.on_device, self.flips, jax.device_put(idx.astype(np.int32), self.replicated))
        local = data_lib.host_indices(idx)
        return self.program.put_batch(self.images[local], self.labels[local], self.flips[local])


def _splits_members(members: int | None) -> bool:
    devices = jax.device_count()
    return members is not None and devices > 1 and members % devices == 0 and jax.process_count() == 1


def eval_views(data_cfg) -> tuple:
    """The (dy, dx, mirrored) views of test-time augmentation: the image, its mirror with ``eval_flip``, and
    with ``eval_translate = t`` each of those shifted by (t, t) and (−t, −t)."""
    t = data_cfg.eval_translate
    shifts = [(0, 0)] + ([(t, t), (-t, -t)] if t else [])
    return tuple((dy, dx, mirrored) for mirrored in ((False, True) if data_cfg.eval_flip else (False,))
                 for dy, dx in shifts)


def build_program(cfg, mean, std, num_classes: int, members: int | None = None) -> Program:
    graphdef, _, _ = nnx.split(make_model(cfg.model, num_classes, cfg.seed), nnx.Param, ...)
    opt = cfg.optimizer
    spec = StepSpec(graphdef, make_optimizer(cfg), objective(cfg.loss.name), mean, std,
                    bool(cfg.data.augment), int(cfg.data.crop_pad), eval_views(cfg.data),
                    bool(cfg.loss.learn_temperature), int(opt.lookahead_every), float(opt.lookahead_decay),
                    int(cfg.total_steps))
    train = functools.partial(train_step, spec)
    evaluate = functools.partial(eval_step, spec)
    if members is not None:  # a population: the single-member steps, vmapped over stacked states
        train = jax.vmap(train, in_axes=(0, 0, None, None, None, None, None, 0, 0, 0))
        evaluate = jax.vmap(evaluate, in_axes=(0, None, None, None, 0, 0))
    mesh = data_lib.data_mesh()
    program = Program(spec, mesh, members, None, None, _splits_members(members))
    # Pin the state's placement so that step outputs feed the next step without a second compilation;
    # evaluation outputs are replicated so that every host can read them (margins are per example).
    state, replicated = program.state_sharding, NamedSharding(mesh, PartitionSpec())
    program.train_step = jax.jit(train, donate_argnums=(0, 1), out_shardings=(state, replicated))
    program.eval_step = jax.jit(evaluate, out_shardings=replicated)
    return program


_PROGRAMS: dict[tuple, Program] = {}


def get_program(cfg, dataset, members: int | None = None) -> Program:
    """A cached :class:`Program`: runs with the same static config and data reuse its compilation."""
    key = (static_key(cfg), dataset.mean.tobytes(), dataset.std.tobytes(), dataset.num_classes, members,
           tuple(jax.devices()))
    if key not in _PROGRAMS:
        _PROGRAMS[key] = build_program(cfg, dataset.mean, dataset.std, dataset.num_classes, members)
    return _PROGRAMS[key]


def evaluate(program: Program, state: TrainState, images, labels, cfg, temperature, margin) -> list[tuple]:
    """Each member's ``(metrics, logits)`` over every example of (images, labels), each counted once."""
    outputs = []
    batch = cfg.data.eval_batch_size
    batch -= batch % len(program.mesh.devices.ravel())
    for idx, mask in data_lib.eval_batches(len(labels), batch):
        local = data_lib.host_indices(np.arange(len(idx)))
        x, y, m = program.put_batch(images[idx[local]], labels[idx[local]], mask[local])
        out = jax.device_get(program.eval_step(state, x, y, m, temperature, margin))
        outputs.append(jax.tree.map(lambda v: v[:, mask] if program.members else v[mask], out))
    outputs = jax.tree.map(lambda *vs: np.concatenate(vs, axis=1 if program.members else 0), *outputs)
    members = program.members or 1
    if program.members is None:
        outputs = jax.tree.map(lambda v: v[None], outputs)
    taus = np.broadcast_to(np.asarray(temperature, np.float64), (members,))
    return [(metrics_lib.split_metrics(jax.tree.map(lambda v: v[k], outputs), labels, float(taus[k])),
             outputs["logits"][k]) for k in range(members)]


# --------------------------------------------------------------------------- data and checkpoints


def load_data(cfg) -> data_lib.Dataset:
    d = cfg.data
    if d.name == "synthetic":
        return data_lib.synthetic(seed=d.synthetic_seed, num_train=d.num_train, num_test=d.num_test,
                                  difficulty=d.difficulty)
    if d.name == "cifar10":
        return data_lib.load_cifar10(data_lib.resolve_source(d.path), download=d.download,
                                     cache_dir=d.cache_dir or None)
    raise ValueError(f"unknown data.name {d.name!r}: choose cifar10 or synthetic")


def split_data(ds: data_lib.Dataset, data_cfg) -> tuple[data_lib.Dataset, tuple | None]:
    """The training set a run trains on and its validation split: the fixed validation images first, then
    ``train_subset`` of the rest (so a subset never changes which images validate)."""
    ds, validation = data_lib.hold_out(ds, data_cfg.validation)
    if data_cfg.train_subset:
        ds = data_lib.subset(ds, data_cfg.train_subset)
    return ds, validation


def checkpoint_manager(directory: Path, cfg):
    """Orbax writes each checkpoint into a temporary folder and renames it when complete; the temporary
    folders of a killed save are removed when the manager opens."""
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(max_to_keep=cfg.checkpoint.keep, create=True,
                                           cleanup_tmp_directories=True)
    return ocp.CheckpointManager(Path(directory).absolute(), options=options)


def restore_or_init(manager, fresh: TrainState) -> tuple[TrainState, int]:
    """The latest checkpoint (shaped and placed like ``fresh``) and its epoch, or ``fresh`` and 0."""
    import orbax.checkpoint as ocp

    epoch = manager.latest_step()
    if epoch is None:
        return fresh, 0
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, fresh)
    return manager.restore(epoch, args=ocp.args.StandardRestore(abstract)), epoch


def save(manager, epoch: int, state: TrainState) -> None:
    """Checkpoint ``state`` as epoch ``epoch`` (asynchronously: the next epoch trains meanwhile)."""
    import orbax.checkpoint as ocp

    manager.save(epoch, args=ocp.args.StandardSave(state))


def _read_metrics(path: Path, upto_epoch: int) -> list[dict]:
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["epoch"] <= upto_epoch]


def _prepare(cfg) -> ml_collections.ConfigDict:
    cfg = cfg.copy_and_resolve_references()
    validate_config(cfg)
    return cfg


# --------------------------------------------------------------------------- the run


def train_and_evaluate(cfg: ml_collections.ConfigDict, workdir, *, restart: bool = False, progress: bool = True,
                       dataset: data_lib.Dataset | None = None, form: dict | None = None) -> dict:
    """Train the model that ``cfg`` describes, evaluate it, and write its files into ``workdir``.

    The workdir is claimed for this experiment (:func:`smoothmax.workdir.claim`): the same config resumes
    from its last checkpoint or returns the finished summary, another config is refused, and ``restart``
    discards the old run first. ``form`` is the config's canonical form when the caller has it already.
    """
    cfg = _prepare(cfg)
    workdir = Path(workdir)
    with _claimed([workdir], [form or canonical(cfg)], restart=restart):
        if (workdir / "summary.json").exists():
            return json.loads((workdir / "summary.json").read_text())
        return _fit([cfg], [workdir], workdir, vmapped=False, progress=progress,
                    dataset=dataset)[0]


def train_population(cfgs, workdirs, population_dir, *, restart: bool = False, progress: bool = True,
                     dataset: data_lib.Dataset | None = None, forms: list[dict] | None = None) -> list[dict]:
    """Train runs that differ only in :data:`MEMBER_KEYS` as one ``vmap``ped program on one data stream.

    Each member writes its files into its own workdir; the stacked state is checkpointed in
    ``population_dir/checkpoints``. The population folder is claimed like a workdir, for the list of its
    members' experiments, so a population resumes only the checkpoints of exactly its members. Either all
    members are finished (their summaries are returned) or none is.
    """
    cfgs = [_prepare(c) for c in cfgs]
    if len({static_key(c) for c in cfgs}) != 1:
        raise ValueError(f"population members may differ only in {', '.join(MEMBER_KEYS)}")
    forms = forms or [canonical(c) for c in cfgs]
    workdirs, population_dir = [Path(w) for w in workdirs], Path(population_dir)
    population_form = {"members": [short_hash(f) for f in forms]}
    with _claimed(workdirs + [population_dir], forms + [population_form], restart=restart):
        finished = [(w / "summary.json").exists() for w in workdirs]
        if all(finished):
            return [json.loads((w / "summary.json").read_text()) for w in workdirs]
        if any(finished):
            raise ValueError(f"population {population_dir} has finished and unfinished members: train the "
                             "unfinished ones as their own population")
        return _fit(cfgs, workdirs, population_dir, vmapped=True, progress=progress,
                    dataset=dataset)


@contextlib.contextmanager
def _claimed(workdirs, forms, *, restart):
    """Claim every folder (see :mod:`smoothmax.workdir`) for the duration of a run.

    Host 0 of a multi-host run claims (locks, checks, writes) and tells the other hosts whether it could:
    every host goes on, or every host stops, instead of some waiting forever for the others.
    """
    with contextlib.ExitStack() as stack:
        refusal = None
        if jax.process_index() == 0:
            try:
                for workdir, form in zip(workdirs, forms):
                    stack.callback(claim(workdir, form, restart=restart).release)
            except Exception as err:  # noqa: BLE001 (re-raised below, after the other hosts are told)
                refusal = err
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            # 0: claimed; 1: busy (a sweep skips the point on every host); 2: refused.
            code = 0 if refusal is None else 1 if isinstance(refusal, WorkdirBusy) else 2
            code = int(multihost_utils.broadcast_one_to_all(np.int32(code)))
            if code and refusal is None:
                kind = WorkdirBusy if code == 1 else WorkdirError
                refusal = kind(f"host 0 refused workdir {workdirs[0]}: its log says why")
        if refusal is not None:
            raise refusal
        yield


def step_guard():
    """The context of each step's host work and dispatch. A step that reads the device stalls a fast
    accelerator until it has finished, so the loop reads it only at logging, evaluation and checkpoint
    points, between the steps; the tests replace this with a guard that refuses every device-to-host
    transfer (``jax.transfer_guard_device_to_host``) to hold that."""
    return contextlib.nullcontext()


def _fit(cfgs, workdirs, run_dir: Path, *, vmapped: bool, progress: bool, dataset) -> list[dict]:
    """The loop: train the members from their last checkpoint to the end, evaluate, write their files.

    ``run_dir`` (the workdir of a single run, the population folder of a population) holds the checkpoints
    and the time ledger."""
    start_time = time.time()
    where = provenance()  # now, while the code that runs is the code on disk
    writer = jax.process_index() == 0
    cfg = cfgs[0]
    ds, validation = split_data(dataset if dataset is not None else load_data(cfg), cfg.data)
    phases = {"data_seconds": time.time() - start_time, "first_step_seconds": None, "evaluation_seconds": 0.0}
    steps_per_epoch = len(ds.train_labels) // cfg.data.batch_size
    total_steps = steps_per_epoch * cfg.epochs
    for c, w in zip(cfgs, workdirs):
        with c.unlocked():
            c.total_steps = total_steps
        if writer:
            atomic_write_text(w / "config.json", c.to_json_best_effort(indent=2))

    program = get_program(cfg, ds, len(cfgs) if vmapped else None)
    fresh = [create_train_state(c, program.spec, ds.num_classes, ds.train_images) for c in cfgs]
    fresh = jax.tree.map(lambda *xs: jnp.stack(xs), *fresh) if vmapped else fresh[0]
    manager = checkpoint_manager(run_dir / "checkpoints", cfg)
    state, start_epoch = restore_or_init(manager, jax.device_put(fresh, program.state_sharding))
    ledger = TimeLedger(run_dir, start_time, writer)
    histories = [_read_metrics(w / "metrics.jsonl", start_epoch) for w in workdirs]

    def member_values(fraction):
        """(τ, m, learning rate) of every member at this point of training: arrays over a population."""
        values = np.array([(*loss_schedule(c.loss, fraction), c.optimizer.learning_rate) for c in cfgs],
                          np.float32)
        return tuple(values.T) if vmapped else tuple(values[0])

    replicated = NamedSharding(program.mesh, PartitionSpec())
    key = jax.random.key(cfg.data.seed)
    log = ProgressLog(cfgs, vmapped, total_steps, start_epoch * steps_per_epoch, progress)
    # Evaluations inside an epoch, after these many of its steps (short runs get a readable curve).
    inside = {steps_per_epoch * k // cfg.evals_per_epoch for k in range(1, cfg.evals_per_epoch)} - {0}

    def evaluate_now(step, metrics):
        """Evaluate every member after ``step`` steps; append the rows to their histories and write them."""
        eval_start = time.time()
        final = step == total_steps
        temperature, margin, _ = member_values(1.0 if final else min(1.0, step / max(1, total_steps - 1)))
        if program.spec.learn_temperature:  # logged over training, and the margins' unit
            temperature = np.exp(jax.device_get(state.params["log_temperature"]))
        rows = _evaluation_rows(program, state, cfg, ds, validation, final, temperature, margin)
        phases["evaluation_seconds"] += time.time() - eval_start
        seen = jax.tree.map(np.atleast_1d, jax.device_get(metrics))  # running sums over this epoch so far
        epoch = step // steps_per_epoch if step % steps_per_epoch == 0 else round(step / steps_per_epoch, 4)
        for k, (history, evaluated) in enumerate(zip(histories, rows)):
            row = {"epoch": epoch, "step": step,
                   "temperature": float(np.atleast_1d(temperature)[k]),
                   "margin": float(np.atleast_1d(margin)[k]),
                   "train_loss": float(seen["loss"][k] / seen["count"][k]),
                   "train_accuracy": float(seen["correct"][k] / seen["count"][k]),
                   **evaluated}
            history.append(row)
            log.evaluation(row, step / steps_per_epoch, cfg.epochs)
            if writer:
                atomic_write_text(workdirs[k] / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))

    epoch_seconds, feed = [], TrainingFeed(program, ds.train_images, ds.train_labels)
    for epoch in range(start_epoch, cfg.epochs):
        epoch_start, paused = time.time(), 0.0
        metrics = jax.device_put(zero_metrics((len(cfgs),) if vmapped else ()), replicated)
        feed.epoch(data_lib.epoch_flips(len(ds.train_labels), cfg.data.seed, epoch, cfg.data.alternate_flips))
        for i, idx in enumerate(data_lib.epoch_permutation(len(ds.train_labels), cfg.data.batch_size,
                                                           cfg.data.seed, epoch)):
            step = epoch * steps_per_epoch + i
            with step_guard():
                temperature, margin, learning_rate = member_values(step / max(1, total_steps - 1))
                images, labels, flip = feed.batch(idx)
                state, metrics = program.train_step(state, metrics, images, labels, flip, key, step, temperature,
                                                    margin, learning_rate)
            if phases["first_step_seconds"] is None:  # compilation, mostly: one host sync per process
                first = time.time()
                jax.block_until_ready(metrics)
                phases["first_step_seconds"] = time.time() - first + (first - epoch_start)
                ledger.update()
            refresh = (i + 1) % cfg.log_every_steps == 0
            if refresh:
                ledger.update()
            log.step(metrics, refresh)
            if i + 1 in inside:
                pause = time.time()
                evaluate_now(step + 1, metrics)
                paused += time.time() - pause
        train_metrics = jax.tree.map(np.atleast_1d, jax.device_get(metrics))
        epoch_seconds.append(time.time() - epoch_start - paused)  # the epoch's steps, not its evaluations
        done = epoch + 1
        log.epoch(done, cfg.epochs, epoch_seconds[-1], steps_per_epoch * cfg.data.batch_size, train_metrics)
        if done % cfg.eval_every_epochs == 0 or done == cfg.epochs:
            evaluate_now(done * steps_per_epoch, metrics)
        if done % cfg.checkpoint.every_epochs == 0 or done == cfg.epochs:
            save(manager, done, state)
        ledger.update()
    log.close()
    manager.wait_until_finished()
    manager.close()
    phases["training_seconds"] = sum(epoch_seconds)
    return _write_summaries(cfgs, workdirs, histories, ds, program, ledger.total(), epoch_seconds, steps_per_epoch,
                            phases, where)


def _evaluation_rows(program, state, cfg, ds, validation, final: bool, temperature, margin) -> list[dict]:
    """Each member's metrics of the splits this evaluation reads, as ``{split}_{metric}`` keys.

    With a validation split, every evaluation reads it and the test set is read once, at the end; without
    one, every evaluation reads the test set. At the end, ``data.eval_train`` adds the clean training set
    (no augmentation, BatchNorm in eval mode), and a validation split adds calibration (a post-hoc
    temperature fitted on validation, applied to test).
    """
    splits = {"val": validation} if validation is not None else {}
    if validation is None or final:
        splits["test"] = (ds.test_images, ds.test_labels)
    if final and cfg.data.eval_train:
        splits["clean_train"] = (ds.train_images, ds.train_labels)
    results = {name: evaluate(program, state, *arrays, cfg, temperature, margin) for name, arrays in splits.items()}
    tta = _tta_accuracy(program, state, cfg, ds, temperature, margin) if final and cfg.data.test_tta else None
    rows = []
    for k in range(program.members or 1):
        row = {f"{name}_{metric}": value for name, members in results.items() for metric, value in members[k][0].items()}
        if tta is not None:
            row["test_tta_accuracy"] = tta[k]
        if "val" in results and "test" in results:
            row.update(metrics_lib.calibration(results["val"][k][1], validation[1], results["test"][k][1],
                                               ds.test_labels))
        rows.append(row)
    return rows


TTA_DATA = {"eval_flip": True, "eval_translate": 2}  # data.test_tta's views: 6 of them


def _tta_accuracy(program, state, cfg, ds, temperature, margin) -> list[float]:
    """Each member's test accuracy on logits averaged over :data:`TTA_DATA`'s views (a second eval step)."""
    tta_cfg = cfg.copy_and_resolve_references()
    with tta_cfg.unlocked():
        tta_cfg.data.update(TTA_DATA)
    tta = get_program(tta_cfg, ds, program.members)
    return [metrics["accuracy"] for metrics, _ in
            evaluate(tta, state, ds.test_images, ds.test_labels, tta_cfg, temperature, margin)]


def _write_summaries(cfgs, workdirs, histories, ds, program, wall, epoch_seconds, steps_per_epoch,
                     phases, where) -> list[dict]:
    """Each member's ``summary.json``: its final metrics, the cost of the run and where it ran."""
    # Throughput in steady state: the first epoch of a process pays for compilation. None when this
    # process trained nothing.
    steady = epoch_seconds[1:] or epoch_seconds
    batch = cfgs[0].data.batch_size
    images_per_second = len(steady) * steps_per_epoch * batch * len(cfgs) / sum(steady) if steady else None
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
            "test_tta_accuracy": final.get("test_tta_accuracy"),  # None without data.test_tta
            "test_loss": final["test_loss"],
            "test_ce": final["test_ce"],
            "val_accuracy": final.get("val_accuracy"),  # None without a validation split
            "train_accuracy": final["train_accuracy"],  # running means over the last epoch's batches
            "train_loss": final["train_loss"],
            # The test split's margins and gradient (the clean training set's under clean_train_*).
            "logit_margin_mean": final["test_logit_margin_mean"],
            "logit_margin_quantiles": final["test_logit_margin_quantiles"],
            "logit_margin_histogram": final["test_logit_margin_histogram"],
            "implicit_margin_mean": final["test_implicit_margin_mean"],
            "implicit_margin_bound": float(implicit_margin_bound(ds.num_classes, final["temperature"])),
            "zero_loss_fraction": final["test_zero_loss_fraction"],
            "gradient_participation": final["test_gradient_participation"],
            # Every metric of the final evaluation: val_*, test_*, clean_train_*, calibration.
            "final": {k: v for k, v in final.items() if k not in ("epoch", "step")},
            # Summed over every process that trained the run; a population's members share its time.
            "wall_seconds": wall / len(cfgs),
            "population_wall_seconds": wall,
            "images_per_second": images_per_second,
            # This process's phases: data load, first step (compilation, mostly), training (the epochs'
            # steps, first step included) and evaluation.
            "phases": {name: None if v is None else round(v, 3) for name, v in phases.items()},
            "devices": jax.device_count(),
            "backend": jax.default_backend(),
            "population": len(cfgs) if program.members else 1,
            "population_split": "members" if program.splits_members else "batch",
            "provenance": where,
            "config": json.loads(c.to_json_best_effort()),
        }
        if jax.process_index() == 0:
            atomic_write_text(w / "summary.json", json.dumps(summary, indent=2))
        summaries.append(summary)
    return summaries


class ProgressLog:
    """Progress for a person: a tqdm bar on a terminal; in a piped log, one line per epoch instead of a
    carriage return per refresh. Evaluation lines are printed either way."""

    def __init__(self, cfgs, vmapped: bool, total_steps: int, initial: int, enabled: bool):
        from tqdm.auto import tqdm

        c = cfgs[0]
        desc = f"{c.loss.name} ×{len(cfgs)} members" if vmapped else \
            f"{c.loss.name} τ={c.loss.temperature} m={c.loss.margin}"
        self.enabled, self.lines = enabled, enabled and not sys.stderr.isatty()
        self.bar = tqdm(total=total_steps, initial=initial, disable=not enabled or self.lines, desc=desc,
                        unit="step", dynamic_ncols=True)

    def step(self, metrics, refresh: bool) -> None:
        self.bar.update(1)
        if refresh and not self.bar.disable:  # a host sync: only when a person will see it
            m = jax.device_get(metrics)
            self.bar.set_postfix(loss=f"{np.mean(m['loss'] / m['count']):.4f}",
                                 acc=f"{np.mean(m['correct'] / m['count']):.3f}")

    def epoch(self, done, epochs, seconds, images, m) -> None:
        if self.lines:
            print(f"epoch {done}/{epochs}: {seconds:.1f} s ({images / seconds:.0f} images/s per member), train "
                  f"loss {np.mean(m['loss'] / m['count']):.4f} acc {np.mean(m['correct'] / m['count']):.4f}",
                  flush=True)

    def evaluation(self, row, done, epochs) -> None:
        splits = "".join(f" | {name} acc {row[name + '_accuracy']:.4f} ce {row[name + '_ce']:.4f}"
                         for name in ("val", "test") if name + "_accuracy" in row)
        self.bar.write(f"epoch {done:g}/{epochs} τ={row['temperature']:.4g} m={row['margin']:.4g}: train loss "
                       f"{row['train_loss']:.4f} acc {row['train_accuracy']:.4f}{splits}")

    def close(self) -> None:
        self.bar.close()

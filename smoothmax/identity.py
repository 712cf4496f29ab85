"""What identifies an experiment: the canonical form of a config, its hash, and how two configs differ.

A workdir (one run) and a sweep point are both named by the *canonical* form of their resolved config: the
flat ``{"a.b": value}`` of every key that can change a result, where

* the dataset is named by its content hash, not by the machine-specific path it was read from
  (``data.path``, ``data.download`` and ``data.cache_dir`` only say where the bytes come from);
* keys at their :func:`~smoothmax.config.base_config` default are left out, so that adding a key later (with
  a default that keeps the old behaviour) does not orphan finished runs;
* keys that cannot change a result are left out (:data:`NEUTRAL_KEYS`): how often progress is logged or a
  checkpoint written (a resumed run reproduces an uninterrupted one), how many checkpoints are kept, and the
  evaluation batch size (it only regroups the evaluation's sums);
* keys the run ignores are left out (:data:`IGNORED`): τ for the hard objective, SGD's momentum under
  AdamW, the synthetic set's keys for CIFAR-10 and the reverse.

Two configs with the same canonical form describe the same experiment; :func:`differences` names the keys
where they do not.
"""

from __future__ import annotations

import hashlib
import json

from smoothmax.config import base_config

# Keys that cannot change a run's results: runs that differ only in these are the same experiment.
NEUTRAL_KEYS = frozenset({
    "log_every_steps",
    "checkpoint.every_epochs",
    "checkpoint.keep",
    "data.eval_batch_size",
    "total_steps",  # derived from the dataset and the batch size
})

# Keys that say where the dataset's bytes come from; the canonical form names the bytes instead.
SOURCE_KEYS = frozenset({"data.path", "data.download", "data.cache_dir"})

# (condition on the flat config, keys the run then ignores). One table, read in one place.
IGNORED = (
    (lambda c: c["loss.name"] == "hard", ("loss.temperature", "loss.final_temperature")),
    (lambda c: c["optimizer.name"] == "adamw", ("optimizer.momentum", "optimizer.nesterov")),
    (lambda c: c["data.name"] == "cifar10",
     ("data.num_train", "data.num_test", "data.difficulty", "data.synthetic_seed")),
    (lambda c: c["data.name"] == "synthetic", ("data.train_subset",)),
    (lambda c: c["model.name"] != "cnn", ("model.stem_width", "model.identity_init")),
    (lambda c: c["optimizer.lookahead_every"] == 0, ("optimizer.lookahead_decay",)),
    (lambda c: not c["data.augment"], ("data.alternate_flips",)),
)


def flatten(tree: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``, values in their JSON form (tuples become lists)."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = json.loads(json.dumps(value))
    return flat


def _flat_config(cfg) -> dict:
    return flatten(json.loads(cfg.to_json_best_effort()))


def defaults() -> dict:
    """Every key at its :func:`~smoothmax.config.base_config` default, flat: what a key absent from a
    canonical form stands for."""
    return _flat_config(base_config())


def dataset_identity(cfg) -> str:
    """The dataset a config trains on, by content: ``synthetic`` (its keys stay in the canonical form),
    the official archive by its published md5, or a local copy by its content hash."""
    from smoothmax import data as data_lib

    if cfg.data.name != "cifar10":
        return cfg.data.name
    source = data_lib.resolve_source(cfg.data.path)
    if source is None:
        return f"cifar10-official-md5-{data_lib.CIFAR10_MD5}"
    if not source.exists():
        raise FileNotFoundError(f"data.path {source} does not exist")
    return f"cifar10-sha256-{data_lib.content_hash(source)}"


def canonical(cfg, *, dataset: str | None = None) -> dict:
    """The canonical form of ``cfg`` (see the module docstring); ``dataset`` overrides the data identity
    (:func:`dataset_identity`, which hashes the files, by default)."""
    flat = _flat_config(cfg)
    base = defaults()
    ignored = set(NEUTRAL_KEYS) | SOURCE_KEYS
    for applies, keys in IGNORED:
        if applies({**base, **flat}):
            ignored.update(keys)
    form = {k: v for k, v in flat.items() if k not in ignored and (k not in base or base[k] != v)}
    form["data.source"] = dataset if dataset is not None else dataset_identity(cfg)
    return dict(sorted(form.items()))


def short_hash(form: dict, length: int = 10) -> str:
    """A short stable hash of a canonical form."""
    return hashlib.sha256(json.dumps(form, sort_keys=True).encode()).hexdigest()[:length]


def differences(recorded: dict, wanted: dict) -> list[str]:
    """``key: old -> new`` for every key where two canonical forms differ (an absent key is at its
    default, or ignored by that run)."""
    base = defaults()
    out = []
    for key in sorted(set(recorded) | set(wanted)):
        old, new = recorded.get(key, base.get(key)), wanted.get(key, base.get(key))
        if old != new:
            out.append(f"{key}: {json.dumps(old)} -> {json.dumps(new)}")
    return out

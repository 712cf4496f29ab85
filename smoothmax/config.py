"""Experiment configs as code: the defaults every config starts from, loading ``file.py:arg``, overrides.

A config file defines ``get_config(arg)`` returning an ``ml_collections.ConfigDict`` (the convention of
flax's examples and big_vision); ``arg`` picks a variant such as ``hard``, ``lse`` or ``softmax``.
Overrides ``--config.loss.temperature=0.5`` are parsed as Python literals and type-checked against the
default: an unknown key or a wrong type is an error that names it.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import ml_collections


class ConfigError(ValueError):
    """A config that cannot be loaded or an override that does not fit it."""


def base_config() -> ml_collections.ConfigDict:
    """Every key a run reads, with defaults: a small CNN on the synthetic set."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.epochs = 10
    c.eval_every_epochs = 1
    c.log_every_steps = 20
    c.total_steps = -1  # filled in by the trainer

    c.data = ml_collections.ConfigDict()
    c.data.name = "synthetic"  # cifar10 | synthetic
    c.data.path = ""  # cifar10: official archive/folder, image-folder tree or .tgz; "" = download
    c.data.download = True
    c.data.cache_dir = ""
    c.data.batch_size = 256
    c.data.eval_batch_size = 1000
    c.data.augment = True
    c.data.eval_flip = False  # test metrics on logits averaged over the image and its mirror
    c.data.train_subset = 0  # cifar10: train on a fixed random subset of this many images (0 = all)
    c.data.num_train = 10_000  # synthetic only
    c.data.num_test = 2_000
    c.data.difficulty = 0.5
    c.data.synthetic_seed = 0
    # Batch order and augmentation follow data.seed; the top-level seed sets the initial weights. Runs
    # that differ only in seed therefore see one data stream and can train as one population.
    c.data.seed = 0

    c.model = ml_collections.ConfigDict()
    c.model.name = "cnn"  # cnn | resnet18
    c.model.widths = (32, 64, 128)
    c.model.stem_width = 0  # cnn: channels of the full-resolution stem conv (0: half the first width)
    c.model.head = "linear"  # linear | cosine
    c.model.bn_momentum = 0.9
    c.model.compute_dtype = "float32"  # float32 | bfloat16 (GPU/TPU)

    c.loss = ml_collections.ConfigDict()
    c.loss.name = "softmax"  # hard | lse | softmax
    c.loss.temperature = 1.0
    c.loss.margin = 0.0
    # Optional linear schedules over training: τ moves from temperature to final_temperature.
    c.loss.final_temperature = ml_collections.FieldReference(None, field_type=float)
    c.loss.final_margin = ml_collections.FieldReference(None, field_type=float)

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "sgd"  # sgd | adamw
    c.optimizer.learning_rate = 0.2
    c.optimizer.momentum = 0.9
    c.optimizer.nesterov = True
    c.optimizer.weight_decay = 5e-4
    c.optimizer.warmup_fraction = 0.15
    c.optimizer.decay = "linear"  # linear | cosine

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_epochs = 1
    c.checkpoint.keep = 2
    return c


def objective_variant(config: ml_collections.ConfigDict, arg: str) -> ml_collections.ConfigDict:
    """Apply a ``:arg`` variant: an objective name, optionally ``name-m1`` for margin 1 (``hard-m1``)."""
    if not arg:
        return config
    name, _, margin = arg.partition("-m")
    if name not in ("hard", "lse", "softmax"):
        raise ConfigError(f"unknown config variant {arg!r}: use hard, lse, softmax (optionally -m<margin>)")
    config.loss.name = name
    if margin:
        config.loss.margin = float(margin)
    if name == "hard":
        config.loss.temperature = 0.0
    return config


def load_config(spec: str, overrides=()) -> ml_collections.ConfigDict:
    """``path/to/file.py[:arg]`` → its ``get_config(arg)``, with ``key.path=value`` overrides applied."""
    path, _, arg = spec.partition(":")
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"config file {path} does not exist")
    module_spec = importlib.util.spec_from_file_location(f"smoothmax_config_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path} defines no get_config(arg)")
    config = module.get_config(arg) if arg else module.get_config()
    for item in overrides:
        apply_override(config, item)
    return config


def apply_override(config: ml_collections.ConfigDict, item: str) -> None:
    """Set ``a.b.c=value`` in ``config``; the key must exist and the value must fit its type."""
    key, sep, text = item.partition("=")
    if not sep:
        raise ConfigError(f"override {item!r} is not of the form key=value")
    *parents, leaf = key.split(".")
    node = config
    for i, part in enumerate(parents):
        if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
            raise ConfigError(f"unknown config key {'.'.join(parents[: i + 1])!r} in override {item!r}")
        node = node[part]
    if leaf not in node:
        raise ConfigError(f"unknown config key {key!r}: known keys here are {', '.join(sorted(node.keys()))}")
    current = node[leaf]
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text  # a bare word is a string
    if isinstance(current, str) and not isinstance(value, str):
        value = text
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(current, tuple) and isinstance(value, list):
        value = tuple(value)
    if current is not None and isinstance(current, bool) != isinstance(value, bool):
        raise ConfigError(f"config key {key!r} is {type(current).__name__}, got {value!r}")
    try:
        node[leaf] = value
    except TypeError as err:
        raise ConfigError(f"config key {key!r} is {type(current).__name__}, got {value!r} ({err})") from None

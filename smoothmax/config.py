"""Experiment configs as code: the defaults every config starts from, loading ``file.py:arg``, overrides, checks.

A config file defines ``get_config(arg)`` returning an ``ml_collections.ConfigDict`` (the convention of
flax's examples and big_vision); ``arg`` picks a variant such as ``hard``, ``lse`` or ``softmax``.
Overrides ``--config.loss.temperature=0.5`` are parsed by the type of the key they set: an unknown key or a
value that does not parse is an error that names it. :func:`validate_config` checks every value against
:func:`_rules` before any work starts.
"""

from __future__ import annotations

import ast
import importlib.util
import math
import reprlib
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
    c.evals_per_epoch = 1  # > 1: also evaluate (validation, else test) this many times inside each epoch
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
    c.data.crop_pad = 4  # augment: random crops from this much reflect padding (0: no crops)
    c.data.eval_flip = False  # test metrics on logits averaged over the image and its mirror
    c.data.eval_translate = 0  # test metrics also average the views shifted by ±this many pixels
    c.data.eval_train = False  # at the end, also evaluate the clean training set (no augmentation)
    # At the end, also report test accuracy with test-time augmentation (the image and its mirror, each also
    # shifted by ±2 pixels) as test_tta_accuracy, beside the metrics of the views above.
    c.data.test_tta = False
    # Mirror each training image in alternate epochs (a fresh coin in the first epoch, then the opposite of
    # the last epoch) instead of by a fresh coin each epoch: airbench's derandomised flips.
    c.data.alternate_flips = False
    # Training images held out for validation (stratified, the same for every run; 0 = none). With a
    # validation split, evaluations during training read it, and the test set is read once, at the end.
    c.data.validation = 0
    c.data.train_subset = 0  # cifar10: train on a fixed random subset of the rest (0 = all)
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
    c.model.stem = "conv"  # cnn: conv (a learned 3×3) | whitened (frozen 2×2 patch whitening, ± each component)
    c.model.stem_width = 0  # cnn: channels of the full-resolution stem conv (0: half the first width)
    c.model.head = "linear"  # linear | cosine
    c.model.bn_momentum = 0.9
    c.model.bn_scale = True  # False: BatchNorm scales frozen at 1 (airbench trains only the biases)
    c.model.head_scale = 1.0  # linear head: logits times this (airbench: 1/9)
    c.model.identity_init = False  # cnn: each 3×3 conv's first filters start as the identity (airbench's Dirac)
    c.model.compute_dtype = "float32"  # float32 | bfloat16 (GPU/TPU)

    c.loss = ml_collections.ConfigDict()
    c.loss.name = "softmax"  # hard | lse | softmax
    c.loss.temperature = 1.0
    c.loss.margin = 0.0
    # Optional linear schedules over training: τ moves from temperature to final_temperature.
    c.loss.final_temperature = ml_collections.FieldReference(None, field_type=float)
    c.loss.final_margin = ml_collections.FieldReference(None, field_type=float)
    # Learn τ (as log τ, from loss.temperature) by minimising L/τ, as NormFace learns its scale: cosine head,
    # lse or softmax, no τ schedule.
    c.loss.learn_temperature = False

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "sgd"  # sgd | adamw
    c.optimizer.learning_rate = 0.2
    c.optimizer.momentum = 0.9
    c.optimizer.nesterov = True
    c.optimizer.weight_decay = 5e-4
    c.optimizer.warmup_fraction = 0.15
    c.optimizer.decay = "linear"  # linear | cosine
    c.optimizer.bias_scale = 1.0  # multiplies the updates of BatchNorm biases (airbench: 64)
    # Lookahead: every this many steps the slow weights take a step towards the fast ones and the fast restart
    # there (0: off); the slow weights' share grows as progress³ to lookahead_decay (airbench: 5 and 0.95⁵).
    c.optimizer.lookahead_every = 0
    c.optimizer.lookahead_decay = 0.0

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_epochs = 1
    c.checkpoint.keep = 2
    c.lock()  # a misspelt key in a config file is an error, not a new key nobody reads
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


_SHOW = reprlib.Repr()
_SHOW.maxstring = _SHOW.maxother = 40  # a 100 kB override stays a one-line error


def _parse_bool(text: str) -> bool:
    return {"True": True, "true": True, "False": False, "false": False}[text]


def _parse_tuple(text: str) -> tuple:
    value = ast.literal_eval(text)
    if not isinstance(value, (tuple, list)):
        raise ValueError("not a tuple")
    return tuple(value)


_LITERAL_ERRORS = (ValueError, TypeError, SyntaxError, MemoryError, RecursionError)  # ast.literal_eval's


def _parse_literal(text: str):
    """A key without a type (its value is None): a Python literal, else the text itself."""
    try:
        return ast.literal_eval(text)
    except _LITERAL_ERRORS:
        return text


def _parse_str(text: str) -> str:
    """The text, or the string a quoted literal spells (``'lse'``, as sweeps write their values)."""
    value = _parse_literal(text)
    return value if isinstance(value, str) else text


# How an override's text becomes a value, by the type of the key it sets. float() reads nan and inf, so that
# validate_config, not the parser, says they are not allowed.
_PARSERS = {bool: _parse_bool, int: int, float: float, str: _parse_str, tuple: _parse_tuple}


def apply_override(config: ml_collections.ConfigDict, item: str) -> None:
    """Set ``a.b.c=value`` in ``config``; the key must exist and the value must parse as its type.

    ``None`` sets any key to None (:func:`validate_config` says which keys allow it).
    """
    key, sep, text = item.partition("=")
    if not sep:
        raise ConfigError(f"override {_SHOW.repr(item)} is not of the form key=value")
    *parents, leaf = key.split(".")
    node = config
    for i, part in enumerate(parents):
        if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
            raise ConfigError(f"unknown config key {'.'.join(parents[: i + 1])!r} in override {_SHOW.repr(item)}")
        node = node[part]
    if leaf not in node:
        raise ConfigError(f"unknown config key {key!r}: known keys here are {', '.join(sorted(node.keys()))}")
    kind = node.get_type(leaf)
    if issubclass(kind, ml_collections.ConfigDict):
        raise ConfigError(f"config key {key!r} is a group: set its keys ({', '.join(sorted(node[leaf].keys()))})")
    parse = _PARSERS.get(kind, _parse_literal)
    try:
        value = None if text == "None" else parse(text)
        node[leaf] = value
    except (KeyError, *_LITERAL_ERRORS):
        raise ConfigError(f"config key {key!r} is {kind.__name__}, got {_SHOW.repr(text)}") from None


# --------------------------------------------------------------------------- validation
# Each rule is (a check of one value, what is allowed); a check may see any value a config file can hold.


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int_at_least(low: int):
    return lambda v: _is_int(v) and v >= low, f"an integer >= {low}"


def _optional(rule):
    check, text = rule
    return lambda v: v is None or check(v), f"{text} or None"


def _one_of(*names):
    return lambda v: v in names, "one of " + ", ".join(names)


_FINITE = (_is_real, "a finite number")
_NONNEGATIVE = (lambda v: _is_real(v) and v >= 0, "a finite number >= 0")
_POSITIVE = (lambda v: _is_real(v) and v > 0, "a finite number > 0")
_FRACTION = (lambda v: _is_real(v) and 0 <= v < 1, "a number in [0, 1)")
_UNIT = (lambda v: _is_real(v) and 0 <= v <= 1, "a number in [0, 1]")
_BOOL = (lambda v: isinstance(v, bool), "True or False")
_TEXT = (lambda v: isinstance(v, str), "a string")
_WIDTHS = (lambda v: isinstance(v, (tuple, list)) and len(v) > 0 and all(_is_int(w) and w >= 1 for w in v),
           "a non-empty tuple of integers >= 1")


_MISSING = object()


def _lookup(cfg, key: str):
    node = cfg
    for part in key.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _train_size(cfg) -> int | None:
    """How many training examples the config itself fixes (None: known only once the data is read)."""
    if _lookup(cfg, "data.name") != "synthetic":
        size = _lookup(cfg, "data.train_subset")
        return size if _is_int(size) and size > 0 else None  # a train_subset of 0 takes the whole set
    size, held = _lookup(cfg, "data.num_train"), _lookup(cfg, "data.validation")
    return size - held if _is_int(size) and _is_int(held) else None


def _rules(cfg, devices: int) -> list[tuple]:
    """(key, check, allowed) for every key a run reads; keys a config lacks are skipped."""
    from smoothmax.losses import OBJECTIVES
    from smoothmax.models import HEADS, WHITENED_STEM_MAX

    rules = [
        ("seed", *_int_at_least(0)),
        ("epochs", *_int_at_least(1)),
        ("eval_every_epochs", *_int_at_least(1)),
        ("evals_per_epoch", *_int_at_least(1)),
        ("log_every_steps", *_int_at_least(1)),
        ("checkpoint.every_epochs", *_int_at_least(1)),
        ("checkpoint.keep", *_int_at_least(1)),
        ("data.name", *_one_of("cifar10", "synthetic")),
        ("data.path", *_TEXT),
        ("data.download", *_BOOL),
        ("data.cache_dir", *_TEXT),
        ("data.batch_size", *_int_at_least(1)),
        ("data.batch_size", lambda v: v % devices == 0, f"a multiple of the number of devices ({devices})"),
        ("data.eval_batch_size", *_int_at_least(devices)),  # every device gets a row
        ("data.augment", *_BOOL),
        ("data.crop_pad", *_int_at_least(0)),
        ("data.eval_flip", *_BOOL),
        ("data.eval_translate", *_int_at_least(0)),
        ("data.eval_train", *_BOOL),
        ("data.test_tta", *_BOOL),
        ("data.alternate_flips", *_BOOL),
        ("data.train_subset", *_int_at_least(0)),
        ("data.validation", *_int_at_least(0)),
        ("data.num_train", *_int_at_least(1)),
        ("data.num_test", *_int_at_least(1)),
        ("data.difficulty", *_UNIT),
        ("data.synthetic_seed", *_int_at_least(0)),
        ("data.seed", *_int_at_least(0)),
        ("model.name", *_one_of("cnn", "resnet18")),
        ("model.widths", *_WIDTHS),
        ("model.stem", *_one_of("conv", "whitened")),
        ("model.stem_width", *_int_at_least(0)),
        ("model.head", *_one_of(*HEADS)),
        ("model.bn_momentum", *_FRACTION),
        ("model.bn_scale", *_BOOL),
        ("model.head_scale", *_POSITIVE),
        ("model.identity_init", *_BOOL),
        ("model.compute_dtype", *_one_of("float32", "bfloat16")),
        ("loss.name", *_one_of(*OBJECTIVES)),
        ("loss.temperature", *_NONNEGATIVE),
        ("loss.margin", *_FINITE),
        ("loss.final_temperature", *_optional(_NONNEGATIVE)),
        ("loss.final_margin", *_optional(_FINITE)),
        ("loss.learn_temperature", *_BOOL),
        ("optimizer.name", *_one_of("sgd", "adamw")),
        ("optimizer.learning_rate", *_POSITIVE),
        ("optimizer.momentum", *_FRACTION),
        ("optimizer.nesterov", *_BOOL),
        ("optimizer.weight_decay", *_NONNEGATIVE),
        ("optimizer.warmup_fraction", *_FRACTION),
        ("optimizer.decay", *_one_of("linear", "cosine")),
        ("optimizer.bias_scale", *_POSITIVE),
        ("optimizer.lookahead_every", *_int_at_least(0)),
        ("optimizer.lookahead_decay", *_FRACTION),
    ]
    if _lookup(cfg, "loss.learn_temperature") is True:
        why = "when loss.learn_temperature is set"
        rules += [
            ("loss.name", lambda v: v != "hard", f"lse or softmax {why} (hard has no temperature)"),
            ("loss.temperature", lambda v: v > 0, f"> 0 {why} (it is the learned τ's start)"),
            ("loss.final_temperature", lambda v: v is None, f"None {why} (τ is learned, not scheduled)"),
            ("model.head", lambda v: v == "cosine", f"cosine {why} (a linear head scales its logits itself)"),
        ]
    if _lookup(cfg, "model.head_scale") not in (1.0, _MISSING):
        rules.append(("model.head", lambda v: v == "linear", "linear when model.head_scale is set (a cosine "
                      "head's logits are cosines: set τ instead)"))
    if _lookup(cfg, "model.stem") == "whitened":
        first = _lookup(cfg, "model.widths")[0]
        rules.append(("model.stem_width", lambda v: (v or first // 2) % 2 == 0 and (v or first // 2) <= WHITENED_STEM_MAX,
                      f"even and at most {WHITENED_STEM_MAX} for a whitened stem (± each of the 12 components "
                      "of a 2×2 RGB patch; 0 means half the first width)"))
    size = _train_size(cfg)
    if size is not None:
        rules.append(("data.batch_size", lambda v: v <= size, f"at most the {size} training examples"))
    return rules


def validate_config(cfg: ml_collections.ConfigDict, *, devices: int | None = None) -> None:
    """Raise :class:`ConfigError` naming the first key whose value a run cannot use; read nothing else.

    ``devices``: how many devices split a batch, ``jax.device_count()`` by default. That call starts JAX's
    backends, which must wait for ``jax.distributed.initialize()``: before it, pass ``devices=1``.
    """
    if devices is None:
        import jax

        devices = jax.device_count()
    for key, check, allowed in _rules(cfg, devices):
        value = _lookup(cfg, key)
        if value is _MISSING:
            continue
        try:
            ok = check(value)
        except TypeError:  # e.g. a batch size of None compared with the device count
            ok = False
        if not ok:
            raise ConfigError(f"config key {key!r} = {_SHOW.repr(value)}: must be {allowed}")

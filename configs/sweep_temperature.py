"""The objectives study: hard, lse and softmax over τ, with linear and cosine heads, controls and baselines.

Every choice is made on a fixed, stratified validation split (5,000 of the 50,000 training images); the test
set is read once, at the end of each run. Each run also measures the clean training set (no augmentation,
BatchNorm in eval mode) and calibration (a post-hoc temperature fitted on validation). The network is the
CPU recipe's (whitened stem, batch 64, 2-pixel crops and flips) at widths 16/32/64, without test-time
augmentation, so that margins and likelihoods are those of the model's own logits.

The study runs in stages, each a variant of this file, into one workdir (``bash experiments/study.sh`` runs
them all and ``python experiments/study.py`` makes the choices between them):

| stage       | points                                                                                  |
|-------------|-----------------------------------------------------------------------------------------|
| select      | every row of :func:`rows` at each of :data:`LEARNING_RATES`, seed 0, short budget      |
| extend      | the next rate of :data:`RATE_SERIES` beyond a row's best, where that best is an edge    |
| rule        | lse and softmax at τ ≠ 1 with η = η₁·τ (η₁: the rate chosen for that member at τ = 1)   |
| replicate   | every row at its chosen rate, seeds :data:`SEEDS` (seed 0 is the selection's run)       |
| long        | the core subset (:data:`CORE`) at its chosen rate for 4× the epochs, seeds :data:`SEEDS`  |
| controls    | margin without the dense gradient, dense gradient without the margin (:func:`labelled_controls`) |

The CPU study (variant ``stage``) trains widths 16/32/64 for 2 epochs (short) or 8 (long), 3 seeds. The GPU
study (variant ``gpu-stage``; ``gpu`` alone is ``gpu-select``) is the same design at the CPU recipe's widths
32/64/128, for 8 epochs (short) or 32 (long), 5 seeds: ``bash experiments/study.sh runs/study-gpu gpu``.

A replicate varies the initial weights and the data order and augmentation together (``seed`` and
``data.seed``). ``rule``, ``replicate``, ``long`` and ``controls`` read the choices that
``python experiments/study.py choose`` writes from the finished points to ``choices.json`` in the study's
workdir (``$SMOOTHMAX_STUDY_DIR``, by default ``experiments/results/study``, where the points are committed).

The data is the official archive (downloaded once, md5-checked, cached) unless ``$SMOOTHMAX_CIFAR10`` or
``--config.data.path`` names a local copy; the README's study ran on the JPEG copy in ../shared.
"""

import json
import math
import os
from pathlib import Path

from smoothmax.config import ConfigError, base_config
from smoothmax.sweep import beyond_edge

TEMPERATURES = (0.03, 0.1, 0.3, 1.0, 3.0)
HEADS = ("linear", "cosine")
LEARNING_RATES = (0.02, 0.06, 0.2)  # spans 10×, around the CPU recipe's 0.05
# Steps of ~√10 beyond them: a row whose best rate is at an edge of those it tried gets the next one (``extend``).
RATE_SERIES = (0.002, 0.006, 0.02, 0.06, 0.2, 0.6, 2.0)
SEEDS = (0, 1, 2)
GPU_SEEDS = (0, 1, 2, 3, 4)
STAGES = ("select", "extend", "rule", "replicate", "long", "controls")
SHORT_EPOCHS, LONG_EPOCHS = 2, 8
NUM_CLASSES = 10
# The core subset, run at both budgets and controlled: (objective, τ, m), both heads.
CORE = (("hard", 0.0, 0.0), ("hard", 0.0, 1.0), ("lse", 0.1, 0.0), ("lse", 1.0, 0.0),
        ("softmax", 0.1, 0.0), ("softmax", 1.0, 0.0))
# The study's workdir, where `python experiments/study.py choose` writes choices.json.
STUDY_DIR = Path(os.environ.get("SMOOTHMAX_STUDY_DIR") or Path(__file__).resolve().parent.parent / "experiments"
                 / "results" / "study")
CHOICES = STUDY_DIR / "choices.json"


def get_config(arg: str = ""):
    c = base_config()
    c.data.name = "cifar10"
    c.data.path = ""  # $SMOOTHMAX_CIFAR10, else the official archive
    c.data.download = True
    c.data.validation = 5000
    c.data.eval_train = True
    c.data.batch_size = 64
    c.data.crop_pad = 2
    c.model.name = "cnn"
    c.model.widths = (16, 32, 64)
    c.model.stem = "whitened"
    c.model.stem_width = 12
    c.optimizer.learning_rate = 0.06  # the grid sets it
    c.optimizer.decay = "linear"
    c.epochs = SHORT_EPOCHS
    c.evals_per_epoch = 4  # 8 points on the validation curve
    c.checkpoint.every_epochs = 1
    gpu, stage = _variant(arg)
    if gpu:  # the CPU recipe's widths; 8 epochs short, 32 long
        c.model.widths = (32, 64, 128)
        c.epochs, c.evals_per_epoch = 4 * SHORT_EPOCHS, 1
        c.checkpoint.every_epochs = 2
    if stage == "long":
        c.epochs *= LONG_EPOCHS // SHORT_EPOCHS
        c.evals_per_epoch, c.eval_every_epochs = 1, c.epochs // 8
    return c


def _variant(arg: str) -> tuple[bool, str]:
    """``stage`` or ``gpu-stage`` (``gpu`` alone: the GPU study's first stage) → (GPU scale, stage)."""
    gpu = arg == "gpu" or arg.startswith("gpu-")
    stage = arg.removeprefix("gpu").removeprefix("-") or "select"
    if stage not in STAGES:
        raise ConfigError(f"unknown study stage {arg!r}: {', '.join(STAGES)}, each optionally gpu-<stage>")
    return gpu, stage


def _point(objective, temperature, margin, head, **more) -> dict:
    return {"loss.name": objective, "loss.temperature": temperature, "loss.margin": margin, "model.head": head,
            **more}


def labelled_rows() -> list[tuple[str, dict]]:
    """The study's rows before the learning rate, each with what it adds to the main grid ("" for the grid):
    the main grid, the cosine-head baselines and the τ schedules."""
    grid = [_point("hard", 0.0, m, h) for h in HEADS for m in (0.0, 1.0)]
    grid += [_point(o, t, 0.0, h) for h in HEADS for o in ("lse", "softmax") for t in TEMPERATURES]
    return [("", p) for p in grid] + [
        ("NormFace (learned τ)", _point("softmax", 0.1, 0.0, "cosine", **{"loss.learn_temperature": True})),
        ("AM-Softmax (s = 30, m = 0.35)", _point("softmax", 1 / 30, 0.35, "cosine")),
        *(("τ schedule 1 → 0", _point(o, 1.0, 0.0, "linear", **{"loss.final_temperature": 0.0}))
          for o in ("lse", "softmax")),
    ]


def rows() -> list[dict]:
    return [p for _, p in labelled_rows()]


def plain(point: dict) -> bool:
    """Whether ``point`` (rate and seeds aside) is a row of the main grid: no baseline, schedule or control."""
    return row_key(point) in {row_key(p) for label, p in labelled_rows() if label == ""}


def row_key(point: dict) -> str:
    """A row's identity without learning rate, seeds and epochs: the key of :data:`CHOICES`."""
    return json.dumps({k: v for k, v in point.items()
                       if k not in ("optimizer.learning_rate", "seed", "data.seed", "epochs")}, sort_keys=True)


def has_rule(point: dict) -> bool:
    """Whether the rule η = η₁·τ adds a candidate rate: lse and softmax rows of the main grid at τ ≠ 1."""
    return point["loss.name"] != "hard" and point["loss.temperature"] != 1.0 and plain(point)


def rule_rate(point: dict, choices: dict) -> float:
    """η₁·τ, rounded to 6 digits, with η₁ the rate chosen for the same member and head at τ = 1."""
    return round(choices["learning_rate"][row_key({**point, "loss.temperature": 1.0})] * point["loss.temperature"], 6)


def labelled_controls(choices: dict) -> list[tuple[str, float, dict]]:
    """(what it controls, the lse τ it is compared with, point), at each core τ > 0 and head: hard with m =
    lse's mean implicit margin on the clean training set, hard with m = its bound τ·log(C−1), and lse with
    m = −τ·log(C−1). Each takes the rate chosen for its parent: hard m = 1 for the hard controls, lse at that
    τ for the lse control."""
    out = []
    for head in HEADS:
        hard_rate = {"optimizer.learning_rate": choices["learning_rate"][row_key(_point("hard", 0.0, 1.0, head))]}
        for t in sorted({t for o, t, m in CORE if o == "lse"}):
            lse = row_key(_point("lse", t, 0.0, head))
            bound = round(t * math.log(NUM_CLASSES - 1), 4)
            out += [
                ("margin only: hard, m = lse's implicit margin", t,
                 _point("hard", 0.0, round(choices["implicit_margin"][lse], 4), head, **hard_rate)),
                ("margin only: hard, m = τ·log(C−1)", t, _point("hard", 0.0, bound, head, **hard_rate)),
                ("dense gradient only: lse, m = −τ·log(C−1)", t,
                 _point("lse", t, -bound, head, **{"optimizer.learning_rate": choices["learning_rate"][lse]})),
            ]
    return out


def _choices() -> dict:
    if not CHOICES.exists():
        raise ConfigError(f"{CHOICES} does not exist: run the select stage and `python experiments/study.py "
                          "choose` first")
    return json.loads(CHOICES.read_text())


def _seeded(points, seeds=SEEDS) -> list[dict]:
    return [{**p, "seed": s, "data.seed": s} for p in points for s in seeds]


def get_sweep(arg: str = "select"):
    gpu, stage = _variant(arg)
    seeds = GPU_SEEDS if gpu else SEEDS
    if stage == "select":
        return _seeded([{**p, "optimizer.learning_rate": lr} for p in rows() for lr in LEARNING_RATES], (0,))
    choices = _choices()
    if stage == "extend":
        tried = {k: {float(lr): acc for lr, acc in c.items()} for k, c in choices["validation_accuracy"].items()}
        return _seeded([{**p, "optimizer.learning_rate": lr} for p in rows() if row_key(p) in tried
                        for lr in beyond_edge(tried[row_key(p)], RATE_SERIES) if lr not in tried[row_key(p)]], (0,))
    if stage == "rule":
        at_one = [row_key({**p, "loss.temperature": 1.0}) for p in rows() if has_rule(p)]
        if any(k not in choices["learning_rate"] for k in at_one):
            raise ConfigError("the rule needs the rates chosen at τ = 1: finish the select stage and run "
                              "`python experiments/study.py choose`")
        rated = [(p, rule_rate(p, choices)) for p in rows() if has_rule(p)]
        return _seeded([{**p, "optimizer.learning_rate": r} for p, r in rated if r not in LEARNING_RATES], (0,))
    missing = [row_key(p) for p in rows() if row_key(p) not in choices["learning_rate"]]
    if missing:
        raise ConfigError(f"{len(missing)} rows have no chosen learning rate (first: {missing[0]}): finish the select "
                          "and rule stages and run `python experiments/study.py choose`")
    chosen = [{**p, "optimizer.learning_rate": choices["learning_rate"][row_key(p)]} for p in rows()]
    if stage == "replicate":
        return _seeded(chosen, seeds)
    if stage == "long":
        core = {(o, t, m) for o, t, m in CORE}
        return _seeded([p for p in chosen if plain(p) and
                        (p["loss.name"], p["loss.temperature"], p["loss.margin"]) in core], seeds)
    return _seeded([p for _, _, p in labelled_controls(choices)], seeds)

"""The pre-registered objectives study at the CPU recipe's scale: seven rows, five primary comparisons (H1–H5).

The design is fixed in issue #25 before any run (``experiments/results/primaries/report.md`` restates it):
the CPU recipe (``configs/cifar10_cpu.py``: widths 32/64/128, whitened stem, batch 64, SGD-Nesterov, warm-up
and linear decay, 2-pixel crops and flips, weight decay 5e-4 for every row) for 6 epochs on 45,000 images;
a fixed stratified validation split of 5,000 chooses, the test set reports, read once per run. Metrics come
from the model's own logits; the recipe's 6-view test-time augmentation is a separate column
(``data.test_tta``).

| row | objective                      | head   |
|-----|--------------------------------|--------|
| R1  | softmax τ = 1 (cross-entropy)  | linear |
| R2  | lse τ = 1                      | linear |
| R3  | hard m = 1 (Crammer–Singer)    | linear |
| R4  | lse τ = 0.1                    | cosine |
| R5  | hard, m = m̂ (R4's mean implicit margin on the clean training set, its tuning run at the chosen rate) | cosine |
| R6  | softmax τ = 0.1                | cosine |
| R7  | softmax τ = 1                  | cosine |

The study runs in stages, each a variant of this file, into one sweep workdir (``bash experiments/primaries.sh``
runs them all; ``python experiments/primaries.py choose`` makes the choices between them):

| stage         | points                                                                                   |
|---------------|------------------------------------------------------------------------------------------|
| tune          | R1–R4, R6, R7 at each of :data:`LEARNING_RATES`, the tuning seed, 6 epochs                |
| tune-r5       | R5 (its margin from R4's choice) at each of :data:`LEARNING_RATES`, the tuning seed        |
| extend        | the next rate of :data:`RATE_SERIES` beyond a row's best where that best is an edge        |
| evaluate      | every row at its chosen rate, seeds :data:`SEEDS`                                          |
| long-tune     | R1–R3 for 18 epochs at their 6-epoch rate and the next lower one, the tuning seed          |
| long-evaluate | R1–R3 for 18 epochs at their chosen 18-epoch rate, seeds :data:`LONG_SEEDS`                |

Each run varies the initial weights and the data order together (``seed`` and ``data.seed``); tuning runs
use :data:`TUNING_SEED`, which no evaluation run uses. The data is the official archive unless
``$SMOOTHMAX_CIFAR10`` or ``--config.data.path`` names a local copy (the committed points ran on the JPEG
copy in ../shared).
"""

import json
import os
from pathlib import Path

from smoothmax.config import ConfigError, load_config
from smoothmax.sweep import beyond_edge

ROOT = Path(__file__).resolve().parent.parent
LEARNING_RATES = (0.016, 0.05, 0.16)  # around the recipe's 0.05, ×√10 apart
RATE_SERIES = (0.0016, 0.005, 0.016, 0.05, 0.16, 0.5, 1.6)
TUNING_SEED = 100
SEEDS = (0, 1, 2, 3, 4)
LONG_SEEDS = (0, 1, 2)
EPOCHS, LONG_EPOCHS = 6, 18
STAGES = ("tune", "tune-r5", "extend", "evaluate", "long-tune", "long-evaluate")
WORKDIR = Path(os.environ.get("SMOOTHMAX_PRIMARIES_DIR") or ROOT / "experiments" / "results" / "primaries")


def _row(objective, temperature, margin, head) -> dict:
    return {"loss.name": objective, "loss.temperature": temperature, "loss.margin": margin, "model.head": head}


# R5's margin is measured: None here, filled from choices.json (:func:`rows`).
ROWS = {
    "R1": _row("softmax", 1.0, 0.0, "linear"),
    "R2": _row("lse", 1.0, 0.0, "linear"),
    "R3": _row("hard", 0.0, 1.0, "linear"),
    "R4": _row("lse", 0.1, 0.0, "cosine"),
    "R5": _row("hard", 0.0, None, "cosine"),
    "R6": _row("softmax", 0.1, 0.0, "cosine"),
    "R7": _row("softmax", 1.0, 0.0, "cosine"),
}
LONG_ROWS = ("R1", "R2", "R3")
# The primary comparisons, each a paired difference (first − second) by seed; Holm runs over these five.
PRIMARIES = {
    "H1": ("R1", "R3", "cross-entropy − Crammer–Singer"),
    "H2": ("R2", "R3", "smoothed rival max (lse) − hard max"),
    "H3": ("R1", "R2", "smoothed outer hinge (softmax) − lse"),
    "H4": ("R4", "R5", "lse − hard at lse's implicit margin (cosine head)"),
    "H5": ("R6", "R7", "positive control: softmax τ = 0.1 − τ = 1 (cosine head)"),
}
EQUIVALENCE = 0.01  # "no difference" only when the whole 95 % interval lies within ±1 point of accuracy


def get_config(arg: str = "tune"):
    stage = _stage(arg)
    c = load_config(str(ROOT / "configs" / "cifar10_cpu.py"))
    c.data.validation = 5000
    c.data.eval_train = True
    c.data.eval_flip, c.data.eval_translate = False, 0  # the model's own logits
    c.data.test_tta = True  # the recipe's 6 views, as their own column
    c.epochs = LONG_EPOCHS if stage.startswith("long") else EPOCHS
    c.eval_every_epochs = 1 if c.epochs == EPOCHS else 3  # a validation curve of 6 points
    c.checkpoint.every_epochs = 1 if c.epochs == EPOCHS else 3
    return c


def _stage(arg: str) -> str:
    stage = arg or "tune"
    if stage not in STAGES:
        raise ConfigError(f"unknown primaries stage {arg!r}: choose one of {', '.join(STAGES)}")
    return stage


def read_choices(workdir: Path = WORKDIR) -> dict:
    path = workdir / "choices.json"
    return json.loads(path.read_text()) if path.exists() else {}


def rows(choices: dict) -> dict:
    """``{row: overrides}`` of the rows whose settings are known: R5 once R4's margin is chosen."""
    out = {name: dict(p) for name, p in ROWS.items() if name != "R5"}
    if "R5_margin" in choices:
        out["R5"] = {**ROWS["R5"], "loss.margin": choices["R5_margin"]}
    return out


def seeded(points, seeds) -> list[dict]:
    return [{**p, "seed": s, "data.seed": s} for p in points for s in seeds]


def get_sweep(arg: str = "tune"):
    stage = _stage(arg)
    choices = read_choices()
    known = rows(choices)
    if stage == "tune":
        return seeded([{**p, "optimizer.learning_rate": lr} for name, p in known.items() if name != "R5"
                       for lr in LEARNING_RATES], (TUNING_SEED,))
    if stage == "tune-r5":
        if "R5" not in known:
            raise ConfigError("R5's margin is R4's: finish R4's tuning and run `python experiments/primaries.py choose`")
        return seeded([{**known["R5"], "optimizer.learning_rate": lr} for lr in LEARNING_RATES], (TUNING_SEED,))
    if stage == "extend":
        tried = {name: {float(lr): a for lr, a in c.items()} for name, c in choices.get("validation", {}).items()}
        return seeded([{**known[name], "optimizer.learning_rate": lr} for name, c in tried.items()
                       for lr in beyond_edge(c, RATE_SERIES) if lr not in c], (TUNING_SEED,))
    if stage == "evaluate":
        missing = [name for name in ROWS if name not in choices.get("learning_rate", {})]
        if missing:
            raise ConfigError(f"rows {', '.join(missing)} have no chosen rate yet: finish tuning and run "
                              "`python experiments/primaries.py choose`")
        return seeded([{**known[n], "optimizer.learning_rate": choices["learning_rate"][n]} for n in ROWS], SEEDS)
    if stage == "long-tune":
        rates = choices.get("learning_rate", {})
        if any(n not in rates for n in LONG_ROWS):
            raise ConfigError("the 18-epoch tuning starts from the 6-epoch rates: finish the evaluate stage first")
        return seeded([{**known[n], "optimizer.learning_rate": lr} for n in LONG_ROWS
                       for lr in (rates[n], RATE_SERIES[RATE_SERIES.index(rates[n]) - 1])], (TUNING_SEED,))
    long_rates = choices.get("long_learning_rate", {})
    if any(n not in long_rates for n in LONG_ROWS):
        raise ConfigError("R1–R3 have no chosen 18-epoch rate yet: finish long-tune and run "
                          "`python experiments/primaries.py choose`")
    return seeded([{**known[n], "optimizer.learning_rate": long_rates[n]} for n in LONG_ROWS], LONG_SEEDS)

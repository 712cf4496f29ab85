"""The pre-registered study's choices and report (``configs/primaries.py``), from its finished points alone.

    python experiments/primaries.py choose [workdir]   # learning rates and R5's margin -> choices.json
    python experiments/primaries.py report [workdir]   # results.csv, primaries.csv, report.md, figures/

The workdir defaults to ``experiments/results/primaries``, where the points are committed; ``bash
experiments/primaries.sh`` runs the stages and these steps in order. Choices read validation accuracy of
the tuning runs only; test numbers are read only from the evaluation runs.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
import textwrap
from collections import defaultdict
from pathlib import Path

import numpy as np

from smoothmax.files import atomic_write_text
from smoothmax.report import _plt, _save, holm, paired_p, t_interval, write_csv
from smoothmax.sweep import beyond_edge, is_finished, load_point, read_invocations

ROOT = Path(__file__).resolve().parent.parent
# The rows, stages and rules: one definition, in the sweep config (loaded by path: it shares this file's name).
_spec = importlib.util.spec_from_file_location("primaries_design", ROOT / "configs" / "primaries.py")
design = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(design)
# The pilot's report (experiments/study.py) holds the final-metric columns and two formatting helpers: reused,
# not copied, so the two studies' tables read alike.
_spec = importlib.util.spec_from_file_location("primaries_pilot", ROOT / "experiments" / "study.py")
pilot = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pilot)


# --------------------------------------------------------------------------- the points


def finished_points(workdir: Path) -> list[dict]:
    """Every finished point of every recorded invocation once, with its ``stage``, ``overrides`` and ``row``
    (R1–R7, by its settings)."""
    out, seen = [], set()
    for invocation in read_invocations(workdir):
        stage = design._stage(invocation["config"].partition(":")[2])
        for listed in invocation["points"]:
            if listed["name"] in seen or not is_finished(workdir, listed["name"]):
                continue
            seen.add(listed["name"])
            point = load_point(workdir / "points" / listed["name"])
            out.append({**point, "stage": stage, "overrides": listed["overrides"], "row": row_name(listed["overrides"])})
    return out


def row_name(overrides: dict) -> str:
    """The row (R1–R7) whose settings a point's overrides carry (R5: hard on the cosine head, any margin)."""
    settings = {k: overrides[k] for k in ("loss.name", "loss.temperature", "model.head")}
    for name, row in design.ROWS.items():
        if all(row[k] == v for k, v in settings.items()) and row["loss.margin"] in (None, overrides["loss.margin"]):
            return name
    raise SystemExit(f"a point with overrides {overrides} is no row of the design")


def is_long(point: dict) -> bool:
    return point["epochs"] == design.LONG_EPOCHS


# --------------------------------------------------------------------------- choices


def _choose_rate(candidates: dict, required) -> float | None:
    """The best rate by validation accuracy once the required rates and any edge extension have finished."""
    if not set(required) <= set(candidates):
        return None
    if set(beyond_edge(candidates, design.RATE_SERIES)) - set(candidates):
        return None
    return max(sorted(candidates), key=lambda lr: candidates[lr])


def choose(workdir: Path) -> dict:
    """Each row's rate (best final validation accuracy of its tuning runs), R5's margin (R4's mean implicit
    margin on the clean training set, in R4's tuning run at its chosen rate) and the 18-epoch rates."""
    points = [p for p in finished_points(workdir) if p["seed"] == design.TUNING_SEED]
    short = defaultdict(dict)
    for p in points:
        if not is_long(p):
            short[p["row"]][p["overrides"]["optimizer.learning_rate"]] = p["val_accuracy"]
    choices = {"validation": {name: {str(lr): a for lr, a in sorted(c.items())} for name, c in sorted(short.items())},
               "learning_rate": {}}
    for name, c in short.items():
        rate = _choose_rate(c, design.LEARNING_RATES)
        if rate is not None:
            choices["learning_rate"][name] = rate
    if "R4" in choices["learning_rate"]:
        r4 = next(p for p in points if p["row"] == "R4" and not is_long(p)
                  and p["overrides"]["optimizer.learning_rate"] == choices["learning_rate"]["R4"])
        choices["R5_margin"] = round(r4["final"]["clean_train_implicit_margin_mean"], 4)
    long = defaultdict(dict)
    for p in points:
        if is_long(p):
            long[p["row"]][p["overrides"]["optimizer.learning_rate"]] = p["val_accuracy"]
    choices["long_validation"] = {n: {str(lr): a for lr, a in sorted(c.items())} for n, c in sorted(long.items())}
    choices["long_learning_rate"] = {}
    for name in design.LONG_ROWS:
        six = choices["learning_rate"].get(name)
        if six is not None and six in long[name]:
            lower = design.RATE_SERIES[design.RATE_SERIES.index(six) - 1]
            if lower in long[name]:  # two candidates only, by the design: no extension at 18 epochs
                choices["long_learning_rate"][name] = max((six, lower), key=lambda lr: long[name][lr])
    atomic_write_text(workdir / "choices.json", json.dumps(choices, indent=2, sort_keys=True) + "\n")
    return choices


# --------------------------------------------------------------------------- the evaluation runs


def _rate(point: dict) -> float:
    return point["overrides"]["optimizer.learning_rate"]


def _chosen_rate(choices: dict, row: str, epochs: int) -> float | None:
    key = "long_learning_rate" if epochs == design.LONG_EPOCHS else "learning_rate"
    return choices.get(key, {}).get(row)


def evaluation_runs(points: list[dict], choices: dict) -> tuple[dict, list[dict]]:
    """``{(row, epochs): {seed: point}}`` of the evaluation runs (every seed but the tuning seed), and those
    left out: runs at a rate (or, for R5, a margin) other than the one chosen now. Those exist only if a
    choice was made again after its evaluation ran; the design reports the chosen setting alone."""
    runs, ignored = defaultdict(dict), []
    for p in points:
        if p["seed"] == design.TUNING_SEED:
            continue
        rate, margin = _chosen_rate(choices, p["row"], p["epochs"]), choices.get("R5_margin")
        stale_margin = p["row"] == "R5" and margin is not None and p["overrides"]["loss.margin"] != margin
        if (rate is not None and _rate(p) != rate) or stale_margin:
            ignored.append(p)
            continue
        runs[(p["row"], p["epochs"])][p["seed"]] = p
    return runs, ignored


def budgets(runs: dict) -> list[int]:
    """6 epochs always (rows not run yet read "pending"); 18 once any 18-epoch evaluation run has finished."""
    return [design.EPOCHS] + ([design.LONG_EPOCHS] if any(e == design.LONG_EPOCHS for _, e in runs) else [])


def budget_rows(epochs: int) -> list[str]:
    return list(design.ROWS) if epochs == design.EPOCHS else list(design.LONG_ROWS)


def _runs(runs: dict, row: str, epochs: int) -> list[dict]:
    """One cell's runs, by seed."""
    cell = runs.get((row, epochs), {})
    return [cell[s] for s in sorted(cell)]


def _stat(values) -> tuple[float, float]:
    """Mean and 95 % t-interval half-width of the values that exist (a hard row has no margin / τ: None)."""
    values = [float(v) for v in values if v is not None and not math.isnan(v)]
    return pilot._mean(values), t_interval(values)


def _settings(row: str, choices: dict) -> dict:
    """A row's objective, τ, m and head (R5's m: nan until R4's margin is chosen)."""
    o = design.rows(choices).get(row, design.ROWS[row])
    margin = math.nan if o["loss.margin"] is None else o["loss.margin"]
    return {"row": row, "objective": o["loss.name"], "temperature": o["loss.temperature"], "margin": margin,
            "head": o["model.head"]}


def row_label(row: str, choices: dict) -> str:
    """``R1 softmax τ=1, linear``; R5's margin is m̂ (its value once chosen)."""
    s = _settings(row, choices)
    if s["objective"] != "hard":
        setting = f"τ={s['temperature']:g}"
    elif row != "R5":
        setting = f"m={s['margin']:g}"
    else:
        setting = "m=m̂ (pending)" if math.isnan(s["margin"]) else f"m=m̂={s['margin']:.3g}"
    return f"{row} {s['objective']} {setting}, {s['head']}"


# --------------------------------------------------------------------------- results.csv


def _ci_name(column: str) -> str:
    return column.removesuffix("_mean") + "_ci95"


def _learning_rate(rs: list[dict], choices: dict, row: str, epochs: int):
    """The rate the runs used (the chosen one before any has run; nan before it is chosen)."""
    rates = sorted({_rate(p) for p in rs})
    if not rates:
        chosen = _chosen_rate(choices, row, epochs)
        return math.nan if chosen is None else chosen
    return rates[0] if len(rates) == 1 else " ".join(f"{lr:g}" for lr in rates)


def results_rows(runs: dict, choices: dict) -> list[dict]:
    """One row per design row and budget: means over the evaluation seeds with 95 % t-intervals (n = 0:
    pending). The final-metric columns are the pilot's (experiments/study.py), on the clean training set."""
    out = []
    for epochs in budgets(runs):
        for row in budget_rows(epochs):
            rs = _runs(runs, row, epochs)
            r = {**_settings(row, choices), "epochs": epochs, "n": len(rs),
                 "seeds": " ".join(str(p["seed"]) for p in rs),
                 "learning_rate": _learning_rate(rs, choices, row, epochs)}
            for key in ("val_accuracy", "test_accuracy", "test_tta_accuracy"):
                r[f"{key}_mean"], r[f"{key}_ci95"] = _stat(p.get(key) for p in rs)
            # TTA's gain, paired by seed: the 6 views against the model's own logits on the same network.
            r["tta_gain_mean"], r["tta_gain_ci95"] = _stat(
                p["test_tta_accuracy"] - p["test_accuracy"] for p in rs if p.get("test_tta_accuracy") is not None)
            for column, key in pilot._FINAL_MEANS.items():
                r[column], r[_ci_name(column)] = _stat(p["final"].get(key) for p in rs)
            r["implicit_margin_bound"] = pilot._mean(p.get("implicit_margin_bound") for p in rs)
            r["wall_seconds_mean"], r["wall_seconds_ci95"] = _stat(p["wall_seconds"] for p in rs)
            out.append(r)
    return out


# --------------------------------------------------------------------------- primaries.csv


def paired(first: list[dict], second: list[dict]) -> dict:
    """Test-accuracy differences (first − second) over the seeds both rows have: mean, 95 % paired-t
    half-width and the two-sided paired t-test's p (nan below two pairs)."""
    a, b = {p["seed"]: p for p in first}, {p["seed"]: p for p in second}
    seeds = sorted(set(a) & set(b))
    d = [a[s]["test_accuracy"] - b[s]["test_accuracy"] for s in seeds]
    mean, ci = _stat(d)
    return {"n": len(d), "seeds": " ".join(map(str, seeds)), "mean": mean, "ci": ci,
            "p": paired_p(d) if len(d) >= 2 else math.nan}


def holm_adjusted(p_values) -> list[float]:
    """Holm's step-down adjusted p-values over one family: the k-th smallest p (k from 0) times N − k, made
    monotone, at most 1; rejecting where it is below α is holm's test. The family is fixed in advance:
    a comparison still pending (nan) counts in N and is ranked last, the conservative place, and gets nan."""
    n = len(p_values)
    order = sorted((i for i in range(n) if not math.isnan(p_values[i])), key=lambda i: p_values[i])
    out, running = [math.nan] * n, 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (n - k) * p_values[i]))
        out[i] = running
    return out


def verdict(n: int, mean: float, ci: float, holm_p: float, alpha: float = 0.05) -> str:
    """The pre-registered reading: a Holm-significant difference names the better row (even when it is
    smaller than the margin: the test comes first); otherwise equivalence needs the whole 95 % interval
    inside ±EQUIVALENCE."""
    if n < 2:
        return f"pending (n = {n})"
    if holm_p < alpha:
        return "first better" if mean > 0 else "second better"
    if abs(mean) + ci <= design.EQUIVALENCE:
        return f"equivalent (±{100 * design.EQUIVALENCE:g} pt)"
    return "not settled"


def primaries_rows(runs: dict) -> list[dict]:
    """H1–H5 at 6 epochs (one Holm family); H1–H3 at 18 epochs once any 18-epoch run exists (their own)."""
    out = []
    for epochs in budgets(runs):
        family = {h: c for h, c in design.PRIMARIES.items() if {c[0], c[1]} <= set(budget_rows(epochs))}
        name = f"{min(family)}–{max(family)} at {epochs} epochs"
        rows = []
        for label, (first, second, description) in family.items():
            d = paired(_runs(runs, first, epochs), _runs(runs, second, epochs))
            rows.append({"label": label, "first": first, "second": second, "description": description,
                         "budget_epochs": epochs, "n": d["n"], "seeds": d["seeds"],
                         "test_accuracy_diff": d["mean"], "test_accuracy_diff_points": 100 * d["mean"],
                         "ci95": d["ci"], "ci95_points": 100 * d["ci"],
                         "ci_low_points": 100 * (d["mean"] - d["ci"]), "ci_high_points": 100 * (d["mean"] + d["ci"]),
                         "p": d["p"], "holm_family": name})
        for r, adjusted in zip(rows, holm_adjusted([r["p"] for r in rows])):
            r["holm_p"] = adjusted
            r["verdict"] = verdict(r["n"], r["test_accuracy_diff"], r["ci95"], adjusted)
        out += rows
    return out


# --------------------------------------------------------------------------- figures

ROW_COLORS = dict(zip(design.ROWS, ("tab:green", "tab:blue", "tab:red", "tab:cyan", "tab:orange", "tab:olive",
                                    "tab:purple")))
BUDGET_COLORS = {design.EPOCHS: "tab:blue", design.LONG_EPOCHS: "tab:red"}
CLASSES = 10  # CIFAR-10


def _pending(ax, text: str = "pending: no evaluation run yet") -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="0.4")


def plot_forest(prim: list[dict], out: Path) -> None:
    """Each H and budget: paired mean difference in points with its 95 % interval, the ±1-point band, zero,
    and the verdict in a column of its own beside the plot (off the data)."""
    fig, ax = _plt().subplots(figsize=(13, 1.6 + 0.6 * len(prim)))
    eq = 100 * design.EQUIVALENCE
    ax.axvspan(-eq, eq, color="0.88", label=f"±{eq:g} point: equivalence margin")
    ax.axvline(0, color="k", lw=0.8)
    ys = np.arange(len(prim))[::-1]
    for y, r in zip(ys, prim):
        if r["n"] >= 2:
            ax.errorbar(r["test_accuracy_diff_points"], y, xerr=r["ci95_points"], fmt="o",
                        color=BUDGET_COLORS[r["budget_epochs"]], capsize=4)
        note = r["verdict"] + (f"  (Holm p = {r['holm_p']:.2g}, n = {r['n']})" if r["n"] >= 2 else "")
        ax.text(1.02, y, note, transform=ax.get_yaxis_transform(), va="center", fontsize=8)
    for epochs, color in BUDGET_COLORS.items():
        if any(r["budget_epochs"] == epochs for r in prim):
            ax.plot([], [], "o-", color=color, label=f"{epochs} epochs: mean, 95 % paired-t interval")
    ax.set_yticks(ys, [f"{r['label']}, {r['budget_epochs']} ep: {r['first']} − {r['second']}\n"
                       + textwrap.fill(r["description"], 36) for r in prim], fontsize=7)
    ends = [eq] + [abs(r["test_accuracy_diff_points"]) + r["ci95_points"] for r in prim if r["n"] >= 2]
    reach = max(ends) * 1.15
    ax.set(xlim=(-reach, reach), ylim=(-0.7, len(prim) - 0.3),
           xlabel="test accuracy, first − second (percentage points; paired by seed)")
    ax.grid(alpha=0.3, axis="x")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3, fontsize=8)
    ax.set_title("Primary comparisons: paired test-accuracy differences, verdicts by Holm (5 % family-wise)")
    _save(fig, out)


def plot_curves(runs: dict, choices: dict, out: Path) -> None:
    """Validation accuracy against epoch at 6 epochs, a panel per head: mean over seeds, min–max band."""
    fig, axes = pilot._panels(1, 2, 6.5, 5.0)
    panels = {"linear": axes[0][0], "cosine": axes[0][1]}
    for row in design.ROWS:
        rs = _runs(runs, row, design.EPOCHS)
        by_epoch = defaultdict(list)
        for p in rs:
            for h in p["history"]:
                if h.get("val_accuracy") is not None:
                    by_epoch[h["epoch"]].append(100 * h["val_accuracy"])
        ax, color = panels[design.ROWS[row]["model.head"]], ROW_COLORS[row]
        if not by_epoch:
            ax.plot([], [], color=color, label=f"{row_label(row, choices)}: pending")
            continue
        epochs = sorted(by_epoch)
        ax.plot(epochs, [np.mean(by_epoch[e]) for e in epochs], "o-", ms=3, color=color,
                label=f"{row_label(row, choices)} (n = {len(rs)})")
        ax.fill_between(epochs, [min(by_epoch[e]) for e in epochs], [max(by_epoch[e]) for e in epochs],
                        color=color, alpha=0.2, lw=0)
    for head, ax in panels.items():
        ax.set(title=f"{head} head", xlabel="epoch", ylabel="validation accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize=7)
    fig.suptitle(f"Validation accuracy during training, {design.EPOCHS} epochs, evaluation seeds: "
                 "line = mean, band = min–max across seeds")
    _save(fig, out)


def _cdf(histogram: dict, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """The empirical CDF at a histogram's edges, x divided by ``scale``."""
    counts = np.asarray(histogram["counts"], float)
    return (np.asarray(histogram["edges"], float) / scale,
            np.concatenate([[0.0], np.cumsum(counts) / max(counts.sum(), 1.0)]))


def _margin_panel(ax, row: str, runs: dict, choices: dict) -> None:
    """One row's clean-training-set margin CDFs, one line per seed, coloured by budget."""
    s = _settings(row, choices)
    scale = s["temperature"] if s["temperature"] > 0 else 1.0  # hard rows: τ = 0, raw logit units
    spans = []
    for epochs, color in BUDGET_COLORS.items():
        rs = [p for p in _runs(runs, row, epochs) if p["final"].get("clean_train_logit_margin_histogram")]
        for k, p in enumerate(rs):
            x, cdf = _cdf(p["final"]["clean_train_logit_margin_histogram"], scale)
            ax.plot(x, cdf, color=color, lw=1, alpha=0.7, label=f"{epochs} epochs, a line per seed (n = {len(rs)})"
                    if k == 0 else None)
            spans.append((x[np.searchsorted(cdf, 0.01)], x[min(np.searchsorted(cdf, 0.99), len(x) - 1)]))
    if not spans:
        _pending(ax, "pending")
    else:  # the central 98 % of every line, zero, and where each loss stops pushing
        lo, hi = min(min(a for a, _ in spans), 0.0), max(max(b for _, b in spans), 0.0)
        ax.set_xlim(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
        ax.axvline(0, color="k", lw=0.8)
        if s["objective"] == "hard":
            ax.axvline(s["margin"], color="0.4", ls=":", label=f"hinge margin m = {s['margin']:.3g}")
        if s["objective"] == "lse":  # lse's loss is zero beyond τ·log(C−1): log(C−1) in units of τ
            ax.axvline(math.log(CLASSES - 1), color="0.4", ls="--", label="lse zero-loss point log(C−1)")
    unit = "(z_y − max rival) / τ" if s["temperature"] > 0 else "z_y − max rival (raw logits; τ = 0)"
    ax.set(title=row_label(row, choices), xlabel=unit, ylabel="fraction of images ≤ x", ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", fontsize=6)  # a CDF leaves its upper left empty


def plot_margins(runs: dict, choices: dict, out: Path) -> None:
    fig, axes = pilot._panels(2, 4, 4.3, 3.5)
    cells = list(np.ravel(axes))
    for ax, row in zip(cells, design.ROWS):
        _margin_panel(ax, row, runs, choices)
    for ax in cells[len(design.ROWS):]:
        ax.axis("off")
    fig.suptitle("Logit margins on the clean training set at the end of training: CDF per seed (soft rows in "
                 "units of τ, hard rows raw; central 98 % shown)")
    _save(fig, out)


def plot_calibration(results: list[dict], choices: dict, out: Path) -> None:
    """Test ECE of softmax(z) and of softmax(z/T) per row and budget, with 95 % t-intervals over seeds."""
    fig, ax = _plt().subplots(figsize=(12, 5.2))
    rows = list(design.ROWS)
    kinds = (("test_ece", "softmax(z), raw", dict(mfc="white")), ("calibrated_test_ece", "softmax(z/T), T fitted "
                                                                   "on validation", {}))
    slots = [(e, k) for e in sorted({r["epochs"] for r in results}) for k in kinds]
    width = 0.8 / len(slots)
    for j, (epochs, (key, kind, style)) in enumerate(slots):
        here = {r["row"]: r for r in results if r["epochs"] == epochs and r["n"] > 0}
        xs = [i - 0.4 + width * (j + 0.5) for i, row in enumerate(rows) if row in here]
        ys = [here[row][key] for row in rows if row in here]
        ci = [np.nan_to_num(here[row][_ci_name(key)]) for row in rows if row in here]
        marker = "o" if epochs == design.EPOCHS else "s"
        if xs:
            ax.errorbar(xs, ys, yerr=ci, fmt=marker, color=BUDGET_COLORS[epochs], capsize=3, **style,
                        label=f"{epochs} epochs: {kind}")
    n = defaultdict(list)  # each row's n at each budget it has, in budget order
    for r in results:
        n[r["row"]].append(str(r["n"]))
    ax.set_xticks(range(len(rows)), [row_label(row, choices).replace(", ", "\n") + "\nn = " + " / ".join(n[row])
                                     for row in rows], fontsize=7)
    for tick, row in zip(ax.get_xticklabels(), rows):
        tick.set_color(ROW_COLORS[row])
    if not any(r["n"] for r in results):
        _pending(ax)
    ax.set(xlim=(-0.6, len(rows) - 0.4), ylim=(0, None), ylabel="test ECE (15 confidence bins)")
    ax.grid(alpha=0.3, axis="y")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    ax.set_title("Calibration: test ECE before and after a post-hoc temperature T\n(mean over seeds, bars: 95 % "
                 "t-interval; under each row: n per budget)")
    _save(fig, out)


# --------------------------------------------------------------------------- report.md


def _cell(mean: float, ci: float, n: int, scale: float = 100.0, digits: int = 2) -> str:
    """mean ± 95 % half-width; "pending" without a run, "n/a" where the quantity does not exist (margin / τ
    at τ = 0), "(n = 1)" where one run gives no interval."""
    if n == 0:
        return "pending"
    if math.isnan(mean):
        return "n/a"
    return pilot._pm(mean, ci, scale, digits) + (" (n = 1)" if n == 1 else "")


def _seeds(seeds) -> str:
    return f"{seeds[0]}–{seeds[-1]}"


def design_text(points: list[dict], choices: dict) -> list[str]:
    """The pre-registered design, restated from configs/primaries.py."""
    decay = design.get_config("tune").optimizer.weight_decay
    seen = {p.get("config", {}).get("optimizer", {}).get("weight_decay") for p in points} - {None}
    lines = ["## Design (pre-registered in configs/primaries.py, issue #25)", "",
             f"The CPU recipe for {design.EPOCHS} epochs on 45,000 training images; a fixed stratified validation "
             "split of 5,000 chooses, the test set reports. Weight decay "
             f"{decay:g} for every row (the finished runs: {', '.join(f'{w:g}' for w in sorted(seen)) or 'none yet'}).",
             "", "| row | objective | τ | m | head |", "|---|---|---|---|---|"]
    for row in design.ROWS:
        s = _settings(row, choices)
        m = f"{s['margin']:g}" if row != "R5" else "m̂ = pending" if math.isnan(s["margin"]) else \
            f"m̂ = {s['margin']:.4g}"
        lines.append(f"| {row} | {s['objective']} | {s['temperature']:g} | {m} | {s['head']} |")
    lines += ["", "Primary comparisons, each the paired difference of test accuracy (first − second) over the "
              "seeds both rows have:", "", "| H | first − second | question |", "|---|---|---|"]
    lines += [f"| {h} | {a} − {b} | {d} |" for h, (a, b, d) in design.PRIMARIES.items()]
    eq = 100 * design.EQUIVALENCE
    lines += ["", f"- Verdicts: \"first better\" / \"second better\" where the Holm-adjusted p (two-sided paired "
              f"t-test) is below 0.05; \"equivalent (±{eq:g} pt)\" where the whole 95 % paired-t interval lies "
              f"within ±{eq:g} point of accuracy; otherwise \"not settled\". Holm runs over H1–H5 at "
              f"{design.EPOCHS} epochs; the {design.LONG_EPOCHS}-epoch H1–H3 are a family of their own.",
              f"- Tuning: seed {design.TUNING_SEED} only (no evaluation run uses it), rates "
              f"{', '.join(f'{lr:g}' for lr in design.LEARNING_RATES)}; a row whose best is an edge gets the next "
              f"rate of {', '.join(f'{lr:g}' for lr in design.RATE_SERIES)} until it is not. The best final "
              "validation accuracy chooses.",
              f"- R5's margin m̂: R4's mean implicit margin on the clean training set, in R4's tuning run at its "
              "chosen rate.",
              f"- Evaluation: seeds {_seeds(design.SEEDS)} at {design.EPOCHS} epochs; R1–R3 also at "
              f"{design.LONG_EPOCHS} epochs, seeds {_seeds(design.LONG_SEEDS)}, at the better (validation, seed "
              f"{design.TUNING_SEED}) of their {design.EPOCHS}-epoch rate and the next lower one.", ""]
    return lines


def _candidates(by_rate: dict | None, chosen) -> str:
    if not by_rate:
        return "pending"
    return ", ".join(("**" if chosen is not None and float(lr) == chosen else "") + f"{float(lr):g}: "
                     f"{100 * a:.2f}" + ("**" if chosen is not None and float(lr) == chosen else "")
                     for lr, a in sorted(by_rate.items(), key=lambda kv: float(kv[0])))


def choices_text(choices: dict) -> list[str]:
    """choices.json: every candidate's validation accuracy (one run each, the tuning seed), the chosen rates
    and R5's margin."""
    lines = ["## Choices (choices.json)", "",
             f"Validation accuracy (%) of every tuning candidate, η: accuracy, chosen in bold; one run each (seed "
             f"{design.TUNING_SEED}), so no interval.", "",
             f"| row | {design.EPOCHS} epochs | chosen η | {design.LONG_EPOCHS} epochs | chosen η |",
             "|---|---|---|---|---|"]
    for row in design.ROWS:
        short, long = _chosen_rate(choices, row, design.EPOCHS), _chosen_rate(choices, row, design.LONG_EPOCHS)
        long_cells = (f"{_candidates(choices.get('long_validation', {}).get(row), long)} | "
                      f"{'pending' if long is None else f'{long:g}'}") if row in design.LONG_ROWS else "— | —"
        lines.append(f"| {row_label(row, choices)} | {_candidates(choices.get('validation', {}).get(row), short)} | "
                     f"{'pending' if short is None else f'{short:g}'} | {long_cells} |")
    r4 = _chosen_rate(choices, "R4", design.EPOCHS)
    lines += ["", f"R5's margin m̂ = {choices['R5_margin']:.4g} (R4's mean clean-training implicit margin, its "
              f"tuning run at η = {r4:g})." if "R5_margin" in choices else "R5's margin m̂: pending (R4's rate is "
              "not chosen yet).", ""]
    return lines



def primaries_table(prim: list[dict]) -> list[str]:
    lines = ["## Primary comparisons", "",
             "Paired by seed; difference in percentage points with its 95 % paired-t interval (uncorrected); p: "
             "two-sided paired t-test; Holm p: adjusted within the family named.", "",
             "| H | budget | first − second | n (seeds) | difference, points | p | Holm p (family) | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for r in prim:
        p, holm_p = (f"{r['p']:.2g}", f"{r['holm_p']:.2g}") if r["n"] >= 2 else ("—", "—")
        lines.append(f"| {r['label']} | {r['budget_epochs']} epochs | {r['first']} − {r['second']}: "
                     f"{r['description']} | {r['n']} ({r['seeds'] or '—'}) | "
                     f"{_cell(r['test_accuracy_diff'], r['ci95'], r['n'])} | {p} | {holm_p} ({r['holm_family']}) | "
                     f"**{r['verdict']}** |")
    return lines + [""]


def results_table(results: list[dict], choices: dict) -> list[str]:
    lines = ["## Results", "",
             "Evaluation runs only (never the tuning seed); means over seeds with 95 % Student-t intervals "
             "(ddof = 1). Test accuracy from the model's own logits.", "",
             "| row | epochs | n (seeds) | η | val acc % | test acc % | wall s per run |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        rate = r["learning_rate"]
        rate = "pending" if isinstance(rate, float) and math.isnan(rate) else (f"{rate:g}" if isinstance(rate, float)
                                                                                 else rate)
        lines.append(f"| {row_label(r['row'], choices)} | {r['epochs']} | {r['n']} ({r['seeds'] or '—'}) | {rate} | "
                     f"{_cell(r['val_accuracy_mean'], r['val_accuracy_ci95'], r['n'])} | "
                     f"{_cell(r['test_accuracy_mean'], r['test_accuracy_ci95'], r['n'])} | "
                     f"{_cell(r['wall_seconds_mean'], r['wall_seconds_ci95'], r['n'], 1, 0)} |")
    return lines + [""]


# Exploratory columns: (title, results.csv column, scale, digits).
_MARGINS = (("logit margin", "train_logit_margin_mean", 1, 3), ("margin / τ", "train_logit_margin_over_tau", 1, 2),
            ("implicit margin", "train_implicit_margin_mean", 1, 3),
            ("implicit / τ", "train_implicit_margin_over_tau", 1, 2),
            ("zero-loss fraction", "train_zero_loss_fraction", 1, 3),
            ("gradient participation", "gradient_participation", 1, 2), ("logit norm", "train_logit_norm", 1, 3))
_CALIBRATION = (("post-hoc T", "posthoc_temperature", 1, 3), ("calibrated test NLL", "calibrated_test_nll", 1, 3),
                ("test ECE, softmax(z)", "test_ece", 1, 3), ("test ECE, softmax(z/T)", "calibrated_test_ece", 1, 3),
                ("TTA test acc %", "test_tta_accuracy_mean", 100, 2), ("TTA gain, points", "tta_gain_mean", 100, 2))


def _exploratory_table(results: list[dict], columns, choices: dict) -> list[str]:
    lines = ["| row | epochs | n | " + " | ".join(c[0] for c in columns) + " |",
             "|---|---|---|" + "---|" * len(columns)]
    for r in results:
        cells = [_cell(r[key], r[_ci_name(key)], r["n"], scale, digits) for _, key, scale, digits in columns]
        lines.append(f"| {row_label(r['row'], choices)} | {r['epochs']} | {r['n']} | " + " | ".join(cells) + " |")
    return lines + [""]


def exploratory_text(results: list[dict], choices: dict) -> list[str]:
    return ["## Exploratory (not among the pre-registered tests)", "",
            "Descriptive: means over the evaluation seeds with 95 % t-intervals, no correction for the many "
            "columns; none of it enters a verdict.", "",
            "### Margins and gradient participation (clean training set, end of training)", "",
            "Margins are z_y − max rival, in logit units (/ τ: in units of τ; n/a at τ = 0); the implicit margin "
            "is where the LSE step's loss reaches zero; participation is (Σ|g|)²/Σg² over the rivals.", "",
            *_exploratory_table(results, _MARGINS, choices),
            "### Calibration and test-time augmentation", "",
            "T fitted on the validation split; ECE over 15 confidence bins; TTA: logits averaged over the recipe's "
            "6 views (flips × ±2-pixel shifts), its gain paired by seed against the model's own logits.", "",
            *_exploratory_table(results, _CALIBRATION, choices)]


def status_lines(points: list[dict], runs: dict, choices: dict, ignored: list[dict]) -> tuple[list[str], bool]:
    """Which stages are incomplete (rows without a chosen rate, cells with fewer seeds than designed), and
    whether none is."""
    lines, complete = ["## Status", ""], "R5_margin" in choices
    tuned = defaultdict(int)
    for p in points:
        if p["seed"] == design.TUNING_SEED:
            tuned[(p["row"], p["epochs"])] += 1
    for epochs, rows, seeds in ((design.EPOCHS, design.ROWS, design.SEEDS),
                                (design.LONG_EPOCHS, design.LONG_ROWS, design.LONG_SEEDS)):
        unchosen = [f"{row} ({tuned[(row, epochs)]} candidates finished)" for row in rows
                    if _chosen_rate(choices, row, epochs) is None]
        lines.append(f"- Tuning at {epochs} epochs: " + (f"incomplete, no rate yet for {', '.join(unchosen)}."
                                                         if unchosen else "complete."))
        short = [f"{row} n = {len(runs.get((row, epochs), {}))} of {len(seeds)}" for row in rows
                 if len(runs.get((row, epochs), {})) < len(seeds)]
        lines.append(f"- Evaluation at {epochs} epochs (seeds {_seeds(seeds)}): "
                     + (f"incomplete: {', '.join(short)}." if short else "complete."))
        complete = complete and not unchosen and not short
    if "R5_margin" not in choices:
        lines.append("- R5: pending: its margin m̂ waits for R4's chosen rate.")
    if ignored:
        lines.append(f"- {len(ignored)} evaluation run(s) at a rate or margin no longer chosen are left out: "
                     + ", ".join(sorted(p["name"] for p in ignored)) + ".")
    return lines + [""], complete


FIGURES = (("forest", "the primary comparisons"), ("curves", "validation accuracy during training"),
           ("margins", "clean-training-set margin CDFs"), ("calibration", "test ECE before and after T"))


def report(workdir: Path, points: list[dict], choices: dict) -> Path:
    """results.csv, primaries.csv, report.md and figures/ into the workdir, from the finished points and the
    choices; rows and comparisons not run yet read "pending"."""
    workdir = Path(workdir)
    runs, ignored = evaluation_runs(points, choices)
    results, prim = results_rows(runs, choices), primaries_rows(runs)
    write_csv(workdir / "results.csv", results)
    write_csv(workdir / "primaries.csv", prim)
    figures = workdir / "figures"
    plot_forest(prim, figures / "forest.png")
    plot_curves(runs, choices, figures / "curves.png")
    plot_margins(runs, choices, figures / "margins.png")
    plot_calibration(results, choices, figures / "calibration.png")
    status, complete = status_lines(points, runs, choices, ignored)
    text = ["# The pre-registered objectives study", "",
            f"{len(points)} finished runs ({sum(p['seed'] == design.TUNING_SEED for p in points)} tuning, "
            f"{sum(len(c) for c in runs.values())} evaluation). "
            + ("Every stage is complete." if complete else "**Incomplete**: see Status; pending rows and "
               "comparisons say so."), "",
            *status, *design_text(points, choices), *choices_text(choices), *primaries_table(prim),
            *results_table(results, choices), *exploratory_text(results, choices), "## Figures", "",
            *(f"![{caption}](figures/{name}.png)" for name, caption in FIGURES)]
    out = workdir / "report.md"
    atomic_write_text(out, "\n".join(text) + "\n")
    return out


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ("choose", "report"):
        raise SystemExit(__doc__)
    workdir = Path(argv[1]) if len(argv) > 1 else design.WORKDIR
    if argv[0] == "choose":
        choices = choose(workdir)
        print(json.dumps({k: choices[k] for k in ("learning_rate", "long_learning_rate")}
                         | {"R5_margin": choices.get("R5_margin")}))
    else:
        report(workdir, finished_points(workdir), design.read_choices(workdir))


if __name__ == "__main__":
    main()

"""The objectives study's choices and report, from the finished points of its workdir alone.

    python experiments/study.py choose [workdir]   # learning rates (and lse's margins) -> choices.json
    python experiments/study.py report [workdir]   # results.csv, selection.csv, paired.csv, report.md, figures/

The workdir (default ``experiments/results/study``) is the sweep workdir of ``configs/sweep_temperature.py``'s
stages (see its docstring); each recorded invocation's stage is its config variant. ``bash experiments/study.sh``
runs the stages and these two steps in order. Selection reads validation accuracy only; test numbers are read
only for the runs at the chosen rates.
"""

from __future__ import annotations

import json
import math
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "configs"))
import sweep_temperature as study  # noqa: E402  (the grid and its rules: one definition)

from smoothmax.files import atomic_write_text  # noqa: E402
from smoothmax.report import (  # noqa: E402
    _plt, _save, holm, lse_cosine_floor, normface_floor, paired_p, t_interval, write_csv)
from smoothmax.sweep import beyond_edge, is_finished, load_point, read_invocations  # noqa: E402

WORKDIR = study.STUDY_DIR
COLORS = {"hard": "tab:red", "lse": "tab:blue", "softmax": "tab:green"}
OBJECTIVES = tuple(COLORS)
SEED_KEYS = ("seed", "data.seed")


# --------------------------------------------------------------------------- the points and their rows


def finished_points(workdir: Path) -> list[dict]:
    """Every finished point of every recorded invocation, with its ``stage`` and grid ``overrides``; a point
    listed by several stages (the seed-0 run at the chosen rate) appears once per stage, and once only
    within a stage (an interrupted stage that is rerun records a second invocation)."""
    out, seen = [], set()
    invocations = read_invocations(workdir)
    scales = {study._variant(inv["config"].partition(":")[2])[0] for inv in invocations}
    if len(scales) > 1:
        raise SystemExit(f"{workdir} holds stages of both the CPU and the GPU study: "
                         "give each its own workdir")
    for invocation in invocations:
        stage = study._variant(invocation["config"].partition(":")[2])[1]
        for listed in invocation["points"]:
            if (stage, listed["name"]) not in seen and is_finished(workdir, listed["name"]):
                seen.add((stage, listed["name"]))
                point = load_point(workdir / "points" / listed["name"])
                out.append({**point, "stage": stage, "overrides": listed["overrides"]})
    return out


def labels(choices: dict | None) -> dict:
    """``{row key: (control label, the lse τ a control is compared with)}``: "" labels the main grid."""
    out = {study.row_key(p): (label, None) for label, p in study.labelled_rows()}
    try:
        out.update({study.row_key(p): (label, t) for label, t, p in study.labelled_controls(choices or {})})
    except KeyError:  # the controls' margins are measured by the replicate stage: not yet
        pass
    return out


def row_of(point: dict, known: dict) -> tuple:
    """(objective, τ, m, head, epochs, control): a row of results.csv."""
    o = point["overrides"]
    return (o["loss.name"], o["loss.temperature"], o["loss.margin"], o["model.head"], point["epochs"],
            known[study.row_key(o)][0])


# --------------------------------------------------------------------------- choices


def _read_choices(workdir: Path) -> dict:
    path = workdir / "choices.json"
    return json.loads(path.read_text()) if path.exists() else {}


def choose(workdir: Path) -> dict:
    """The learning rate of every row (best final validation accuracy at seed 0 among its candidates), and
    the mean implicit margin lse measured on the clean training set at the chosen rate (for the controls)."""
    points = finished_points(workdir)
    candidates = defaultdict(dict)
    for p in points:
        if p["stage"] in ("select", "extend", "rule"):
            candidates[study.row_key(p["overrides"])][p["overrides"]["optimizer.learning_rate"]] = p["val_accuracy"]
    rates = {}
    for row in sorted(study.rows(), key=study.has_rule):  # the rule's η₁ is the rate chosen at τ = 1
        key, wanted = study.row_key(row), set(study.LEARNING_RATES)
        if study.has_rule(row):
            at_one = study.row_key({**row, "loss.temperature": 1.0})
            if at_one not in rates:
                continue
            wanted.add(study.rule_rate(row, {"learning_rate": rates}))
        c = candidates.get(key, {})
        # A row is chosen once all its candidates have finished and its best is not at an open edge.
        if wanted <= set(c) and set(beyond_edge(c, study.RATE_SERIES)) <= set(c):
            rates[key] = max(sorted(c), key=lambda lr: c[lr])
    margins = defaultdict(list)
    for p in points:
        if p["stage"] == "replicate" and p["objective"] == "lse":
            margins[study.row_key(p["overrides"])].append(p["final"]["clean_train_implicit_margin_mean"])
    choices = {"learning_rate": rates, "validation_accuracy": {k: {str(lr): a for lr, a in sorted(c.items())}
                                                                for k, c in candidates.items()},
               "implicit_margin": {k: float(np.mean(v)) for k, v in margins.items()},
               "implicit_margin_seeds": {k: len(v) for k, v in margins.items()}}
    atomic_write_text(workdir / "choices.json", json.dumps(choices, indent=2, sort_keys=True))
    return choices


# --------------------------------------------------------------------------- tables


def _mean(values):
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else float("nan")


FINAL_STAGES = ("replicate", "long", "controls")

# results.csv columns that average one final metric over the seeds: column -> key of the run's final metrics.
_FINAL_MEANS = {
    "train_accuracy_mean": "clean_train_accuracy",
    "train_loss_mean": "clean_train_loss",
    "train_logit_margin_mean": "clean_train_logit_margin_mean",
    "train_logit_margin_over_tau": "clean_train_logit_margin_over_tau_mean",
    "train_implicit_margin_mean": "clean_train_implicit_margin_mean",
    "train_implicit_margin_over_tau": "clean_train_implicit_margin_over_tau_mean",
    "train_zero_loss_fraction": "clean_train_zero_loss_fraction",
    "gradient_participation": "clean_train_gradient_participation",
    "train_logit_norm": "clean_train_logit_norm_mean",
    "final_temperature": "temperature",
    "posthoc_temperature": "posthoc_temperature",
    "calibrated_test_nll": "calibrated_test_nll",
    "test_ece": "test_ece",
    "calibrated_test_ece": "calibrated_test_ece",
}


def results_rows(points: list[dict], known: dict) -> list[dict]:
    """One row per (objective, τ, m, head, epochs, control): means over the seeds of the final runs."""
    groups = defaultdict(dict)
    for p in points:
        if p["stage"] in FINAL_STAGES:
            groups[row_of(p, known)][p["seed"]] = p
    rows = []
    for (objective, tau, margin, head, epochs, control), by_seed in groups.items():
        rs = [by_seed[s] for s in sorted(by_seed)]
        f = [r["final"] for r in rs]
        acc = [r["test_accuracy"] for r in rs]
        val = [r["val_accuracy"] for r in rs]
        rows.append({
            "objective": objective, "temperature": tau, "margin": margin, "head": head, "epochs": epochs,
            "control": control, "n_seeds": len(rs), "seeds": " ".join(str(r["seed"]) for r in rs),
            "learning_rate": rs[0]["config"]["optimizer"]["learning_rate"],
            "val_accuracy_mean": _mean(val), "val_accuracy_ci95": t_interval(val),
            "test_accuracy_mean": _mean(acc), "test_accuracy_ci95": t_interval(acc),
            **{column: _mean(x[key] for x in f) for column, key in _FINAL_MEANS.items()},
            "implicit_margin_bound": _mean(r["implicit_margin_bound"] for r in rs),
            "calibrated_test_nll_ci95": t_interval([x["calibrated_test_nll"] for x in f]),
            "wall_seconds_mean": _mean(r["wall_seconds"] for r in rs),
        })
    return sorted(rows, key=lambda r: (r["control"] != "", r["control"], r["epochs"], r["head"], r["objective"],
                                       r["margin"], r["temperature"]))


def selection_rows(choices: dict, known: dict) -> list[dict]:
    """Every learning-rate candidate with its seed-0 validation accuracy, and whether it was chosen."""
    out = []
    for key, by_rate in sorted(choices["validation_accuracy"].items()):
        o = json.loads(key)
        for lr, acc in by_rate.items():
            out.append({"objective": o["loss.name"], "temperature": o["loss.temperature"],
                        "margin": o["loss.margin"], "head": o["model.head"],
                        "control": known[key][0], "learning_rate": float(lr), "val_accuracy": acc,
                        "rule": study.has_rule(o) and float(lr) == study.rule_rate(o, choices),
                        "chosen": float(lr) == choices["learning_rate"].get(key)})
    return out


def _row(objective, tau, margin=0.0, control=""):
    """A row of the report as the comparisons name it: (objective, τ, m, control label)."""
    return (objective, tau, margin, control)


# Every comparison the report makes, each per head and budget on the seeds both rows have. Systematic
# rather than chosen by result (though written after the short budget's first six had been read): the two
# smoothings against each other at every τ, each against hard, each τ against its neighbours (and 0.1
# against 1), the baselines and schedules against the main-grid row they modify. Intervals are per
# comparison, uncorrected: with dozens of them, a few will exclude zero by chance.
COMPARISONS = (
    *((f"softmax − lse at τ = {t:g}", _row("softmax", t), _row("lse", t)) for t in study.TEMPERATURES),
    *((f"{o} τ = 0.1 − hard m = 0", _row(o, 0.1), _row("hard", 0.0)) for o in ("lse", "softmax")),
    *((f"{o} τ = 1 − hard m = 1", _row(o, 1.0), _row("hard", 0.0, 1.0)) for o in ("lse", "softmax")),
    ("hard m = 1 − hard m = 0", _row("hard", 0.0, 1.0), _row("hard", 0.0)),
    *((f"{o} τ = {a:g} − {o} τ = {b:g}", _row(o, a), _row(o, b))
      for o in ("lse", "softmax")
      for a, b in (*zip(study.TEMPERATURES, study.TEMPERATURES[1:]), (0.1, 1.0))),
    ("NormFace (learned τ from 0.1) − softmax τ = 0.1",
     _row("softmax", 0.1, 0.0, "NormFace (learned τ)"), _row("softmax", 0.1)),
    ("AM-Softmax − softmax τ = 0.1", _row("softmax", 1 / 30, 0.35, "AM-Softmax (s = 30, m = 0.35)"),
     _row("softmax", 0.1)),
    *((f"{o} τ 1 → 0 − {o} τ = 1", _row(o, 1.0, 0.0, "τ schedule 1 → 0"), _row(o, 1.0))
      for o in ("lse", "softmax")),
)


def paired_rows(points: list[dict], known: dict) -> list[dict]:
    """Paired differences (a − b) of test accuracy and calibrated test NLL over the seeds both rows have:
    the fixed :data:`COMPARISONS`, then each control against the lse row at its τ (the cause it removes)
    and against hard at m = 0 (the cause it keeps)."""
    by_row = defaultdict(dict)
    for p in points:
        if p["stage"] in FINAL_STAGES:
            objective, tau, margin, head, epochs, control = row_of(p, known)
            by_row[(head, epochs, (objective, tau, margin, control))][p["seed"]] = p
    pairs = list(COMPARISONS)
    for key, (label, tau) in known.items():
        if tau is not None:
            o = json.loads(key)
            control = (o["loss.name"], o["loss.temperature"], o["loss.margin"], label)
            name = f"{label} (m = {o['loss.margin']:g})"
            pairs += [(f"{name} − lse at τ = {tau:g}", control, _row("lse", tau)),
                      (f"{name} − hard m = 0", control, _row("hard", 0.0))]
    out = []
    for name, a, b in dict.fromkeys(pairs):
        for head in study.HEADS:
            for epochs in sorted({key[1] for key in by_row}):
                runs_a, runs_b = by_row.get((head, epochs, a), {}), by_row.get((head, epochs, b), {})
                seeds = sorted(set(runs_a) & set(runs_b))
                if len(seeds) < 2:
                    continue
                d_acc = [runs_a[s]["test_accuracy"] - runs_b[s]["test_accuracy"] for s in seeds]
                d_nll = [runs_a[s]["final"]["calibrated_test_nll"] - runs_b[s]["final"]["calibrated_test_nll"]
                         for s in seeds]
                out.append({"comparison": name, "head": head, "epochs": epochs, "n_pairs": len(seeds),
                            "test_accuracy_diff_mean": float(np.mean(d_acc)),
                            "test_accuracy_diff_ci95": t_interval(d_acc),
                            "test_accuracy_p": paired_p(d_acc),
                            "calibrated_test_nll_diff_mean": float(np.mean(d_nll)),
                            "calibrated_test_nll_diff_ci95": t_interval(d_nll)})
    for row, survives in zip(out, holm([r["test_accuracy_p"] for r in out])):
        row["test_accuracy_holm"] = survives
    return out


# --------------------------------------------------------------------------- figures


def _finish(fig, axes, title: str, out: Path) -> None:
    """Grid and legend on every panel, the figure's title, and the PNG."""
    for ax in np.ravel(axes):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    fig.suptitle(title)
    _save(fig, out)


def _grid_rows(rows, epochs=None):
    """The main grid's rows at ``epochs`` (default: the short budget, the fewest epochs)."""
    epochs = epochs or min(r["epochs"] for r in rows)
    return [r for r in rows if r["control"] == "" and r["epochs"] == epochs]


def _objective_panels():
    """A figure with a panel per head (rows) × objective (columns): the figure and (axis, head, objective)."""
    fig, axes = _panels(len(study.HEADS), len(OBJECTIVES))
    return fig, [(axes[i][j], head, obj) for i, head in enumerate(study.HEADS) for j, obj in enumerate(OBJECTIVES)]


def _replicates(points, known, head, objective):
    """The main grid's replicate runs of one head and objective."""
    return [p for p in points if p["stage"] == "replicate" and p["head"] == head and p["objective"] == objective
            and row_of(p, known)[5] == ""]


def _panels(n_rows, n_cols, width=5.0, height=3.6):
    fig, axes = _plt().subplots(n_rows, n_cols, figsize=(width * n_cols, height * n_rows), squeeze=False)
    return fig, axes


def plot_accuracy(rows, out: Path):
    """Test accuracy against τ with 95 % intervals and n; hard as bands; the long budget as hollow markers."""
    fig, axes = _panels(1, len(study.HEADS), 6, 4.5)
    for ax, head in zip(axes[0], study.HEADS):
        budgets = sorted({r["epochs"] for r in rows})
        for epochs, style in zip(budgets, (dict(marker="o"), dict(marker="s", mfc="none", ls=":"))):
            here = [r for r in _grid_rows(rows, epochs) if r["head"] == head]
            for obj in ("lse", "softmax"):
                pts = sorted((r["temperature"], r["test_accuracy_mean"], np.nan_to_num(r["test_accuracy_ci95"]),
                              r["n_seeds"]) for r in here if r["objective"] == obj)
                if pts:
                    t, a, ci, n = map(np.array, zip(*pts))
                    ax.errorbar(t, 100 * a, 100 * ci, color=COLORS[obj], capsize=3, label=f"{obj}, {epochs} epochs",
                                **style)
                    for x, y, k in zip(t, a, n):
                        ax.annotate(f"n={k}", (x, 100 * y), fontsize=6, xytext=(3, -9), textcoords="offset points")
            for r in (r for r in here if r["objective"] == "hard"):
                mean, ci = 100 * r["test_accuracy_mean"], 100 * np.nan_to_num(r["test_accuracy_ci95"])
                ls = "--" if r["margin"] == 0 else "-."
                band = ", band: 95 %" if r["n_seeds"] > 1 else ", no interval"
                ax.axhline(mean, color=COLORS["hard"], ls=ls, lw=1 if epochs == budgets[0] else 0.6,
                           label=f"hard m={r['margin']:g}, {epochs} epochs (n={r['n_seeds']}{band})")
                if r["n_seeds"] > 1:
                    ax.axhspan(mean - ci, mean + ci, color=COLORS["hard"], alpha=0.08)
        ax.set(xscale="log", xlabel="temperature τ", ylabel="test accuracy (%)", title=f"{head} head")
    _finish(fig, axes, "Test accuracy against τ (mean over seeds, bars: 95 % t-interval; each row at its chosen "
            "rate)", out)


def plot_margins(points, known, out: Path):
    """Clean-training-set logit margins in units of τ (hard: raw), seed 0 of each main-grid row, short budget."""
    fig, cells = _objective_panels()
    cmap = _plt().get_cmap("viridis")
    for ax, head, obj in cells:
        here = sorted((p for p in _replicates(points, known, head, obj) if p["seed"] == 0),
                      key=lambda p: (p["temperature"], p["margin"]))
        for k, p in enumerate(here):
            h = p["final"]["clean_train_logit_margin_histogram"]
            scale = p["temperature"] if obj != "hard" else 1.0
            edges, counts = np.array(h["edges"]) / scale, np.array(h["counts"])
            ax.stairs(counts / counts.sum() / np.diff(edges), edges, color=cmap(k / max(len(here) - 1, 1)),
                      label=f"m={p['margin']:g}" if obj == "hard" else f"τ={p['temperature']:g}")
            cdf = np.cumsum(counts) / counts.sum()
            lo, hi = edges[np.searchsorted(cdf, 0.01)], edges[min(np.searchsorted(cdf, 0.99) + 1, len(edges) - 1)]
            ax.set_xlim(min(ax.get_xlim()[0], lo) if k else lo, max(ax.get_xlim()[1], hi) if k else hi)
        ax.axvline(0, color="k", lw=0.8)
        unit = "z_y − max rival" if obj == "hard" else "(z_y − max rival) / τ"
        ax.set(title=f"{obj}, {head} head", xlabel=f"{unit}, clean training set", ylabel="density")
    _finish(fig, [c[0] for c in cells], "Logit margins on the clean training set, in units of τ (central 98 % of "
            "each; seed 0)", out)


def plot_validation_curves(points, known, out: Path):
    """Validation accuracy during training, mean over the seeds of each main-grid row, labelled by τ."""
    fig, cells = _objective_panels()
    cmap = _plt().get_cmap("viridis")
    for ax, head, obj in cells:
        curves = defaultdict(list)
        for p in _replicates(points, known, head, obj):
            curves[(p["temperature"], p["margin"])].append([(r["epoch"], r["val_accuracy"]) for r in p["history"]])
        for k, (tm, runs) in enumerate(sorted(curves.items())):
            epochs = [e for e, _ in runs[0]]
            acc = np.mean([[a for _, a in run] for run in runs if len(run) == len(epochs)], axis=0)
            label = f"m={tm[1]:g}" if obj == "hard" else f"τ={tm[0]:g}"
            ax.plot(epochs, 100 * acc, "o-", ms=3, color=cmap(k / max(len(curves) - 1, 1)),
                    label=f"{label} (n={len(runs)})")
        ax.set(title=f"{obj}, {head} head", xlabel="epoch", ylabel="validation accuracy (%)")
    _finish(fig, [c[0] for c in cells], "Validation accuracy during training (mean over seeds, each row at its "
            "chosen rate)", out)


def plot_implicit_fraction(rows, out: Path):
    fig, ax = _plt().subplots(figsize=(6.5, 4.5))
    for r in _grid_rows(rows):
        if r["objective"] != "hard" and r["implicit_margin_bound"] > 0:
            ax.scatter(r["temperature"], r["train_implicit_margin_mean"] / r["implicit_margin_bound"],
                       color=COLORS[r["objective"]], marker="o" if r["head"] == "linear" else "s")
    for obj in ("lse", "softmax"):
        ax.scatter([], [], color=COLORS[obj], label=obj)
    ax.scatter([], [], color="gray", marker="o", label="linear head")
    ax.scatter([], [], color="gray", marker="s", label="cosine head")
    ax.axhline(1, color="k", ls="--", lw=1, label="the bound τ·log(C−1)")
    ax.set(xscale="log", ylim=(0, 1.05), xlabel="temperature τ", ylabel="mean implicit margin / τ·log(C−1)")
    _finish(fig, [ax], "Implicit margin as a share of its bound\n(clean training set, mean over seeds)", out)


def achievable_share(objective: str, tau: float, loss: float, classes: int = study.NUM_CLASSES) -> float:
    """Cosine head: (loss at tied logits − loss) / (loss at tied logits − floor), the share of the possible drop."""
    tied = tau * math.log(classes - 1 if objective == "lse" else classes)
    floor = lse_cosine_floor(classes, tau) if objective == "lse" else normface_floor(classes, tau)
    return (tied - loss) / (tied - floor)


def plot_cosine_share(rows, out: Path):
    fig, ax = _plt().subplots(figsize=(6.5, 4.5))
    for obj in ("lse", "softmax"):
        pts = sorted((r["temperature"], achievable_share(obj, r["temperature"], r["train_loss_mean"]))
                     for r in _grid_rows(rows) if r["head"] == "cosine" and r["objective"] == obj)
        if pts:
            ax.plot(*zip(*pts), "o-", color=COLORS[obj], label=obj)
    ax.axhline(1, color="k", ls="--", lw=1, label="the floor (NormFace's for softmax)")
    ax.set(xscale="log", ylim=(0, 1.05), xlabel="temperature τ", ylabel="share of the achievable drop reached")
    _finish(fig, [ax], "Cosine head: (loss at tied logits − loss) / (tied − floor),\n"
            "clean training set, end of training", out)


def plot_calibration(rows, out: Path):
    fig, axes = _panels(1, 2, 6, 4.5)
    for r_head, marker in zip(study.HEADS, ("o", "s")):
        for obj in ("lse", "softmax"):
            pts = sorted((r["temperature"], r["calibrated_test_nll"], r["test_ece"], r["calibrated_test_ece"])
                         for r in _grid_rows(rows) if r["head"] == r_head and r["objective"] == obj)
            if not pts:
                continue
            t, nll, ece, cece = zip(*pts)
            axes[0][0].plot(t, nll, marker=marker, color=COLORS[obj], label=f"{obj}, {r_head}")
            axes[0][1].plot(t, ece, marker=marker, color=COLORS[obj], ls=":", label=f"{obj}, {r_head}: softmax(z)")
            axes[0][1].plot(t, cece, marker=marker, color=COLORS[obj], label=f"{obj}, {r_head}: softmax(z/T)")
    axes[0][0].set(xscale="log", xlabel="temperature τ", ylabel="test NLL of softmax(z/T)",
                   title="Calibrated test NLL (T fitted on validation)")
    axes[0][1].set(xscale="log", yscale="log", xlabel="temperature τ", ylabel="test ECE (15 bins)",
                   title="Test ECE before (dotted) and after (solid) T")
    _finish(fig, axes, "Calibration against τ (main grid, short budget, mean over seeds)", out)


def plot_selection(selection, out: Path):
    """Validation accuracy (seed 0) against the learning rate, each row's chosen rate circled."""
    fig, cells = _objective_panels()
    cmap = _plt().get_cmap("viridis")
    for ax, head, obj in cells:
        here = [s for s in selection if s["head"] == head and s["objective"] == obj and s["control"] == ""]
        keys = sorted({(s["temperature"], s["margin"]) for s in here})
        for k, key in enumerate(keys):
            pts = sorted((s["learning_rate"], s["val_accuracy"], s["chosen"]) for s in here
                         if (s["temperature"], s["margin"]) == key)
            lr, acc, chosen = zip(*pts)
            color = cmap(k / max(len(keys) - 1, 1))
            ax.plot(lr, 100 * np.array(acc), "o-", ms=3, color=color,
                    label=f"m={key[1]:g}" if obj == "hard" else f"τ={key[0]:g}")
            best = [x for x in pts if x[2]]
            ax.scatter([b[0] for b in best], [100 * b[1] for b in best], s=80, facecolors="none", edgecolors=color)
        ax.set(xscale="log", title=f"{obj}, {head} head", xlabel="learning rate", ylabel="validation accuracy (%)")
        rates = sorted({s["learning_rate"] for s in here})
        if rates:  # label the rates tried, nothing else
            ax.set_xticks(rates, [f"{lr:g}" for lr in rates], fontsize=7, rotation=45)
            ax.xaxis.set_minor_locator(_plt().NullLocator())
    _finish(fig, [c[0] for c in cells], "Learning-rate selection on validation (seed 0, short budget; circled: "
            "chosen)", out)


# --------------------------------------------------------------------------- the report


def _pm(mean, ci, scale=100.0, digits=2) -> str:
    return f"{scale * mean:.{digits}f}" + ("" if math.isnan(ci) else f" ± {scale * ci:.{digits}f}")


def markdown_results(rows) -> str:
    lines = ["| objective | τ | m | head | epochs | control | n | η | val acc % | test acc % | calibrated test NLL "
             "| test ECE → with T | T | train margin/τ | implicit / bound | zero-loss | participation |",
             "|" + "---|" * 17]
    for r in rows:
        bound = r["implicit_margin_bound"]
        share = r["train_implicit_margin_mean"] / bound if bound > 0 else math.nan
        lines.append(
            f"| {r['objective']} | {r['temperature']:.4g} | {r['margin']:g} | {r['head']} | {r['epochs']} | "
            f"{r['control']} | {r['n_seeds']} | {r['learning_rate']:.4g} | "
            f"{_pm(r['val_accuracy_mean'], r['val_accuracy_ci95'])} | "
            f"{_pm(r['test_accuracy_mean'], r['test_accuracy_ci95'])} | "
            f"{_pm(r['calibrated_test_nll'], r['calibrated_test_nll_ci95'], 1, 3)} | "
            f"{r['test_ece']:.3f} → {r['calibrated_test_ece']:.3f} | {r['posthoc_temperature']:.3g} | "
            f"{r['train_logit_margin_over_tau']:.3g} | {share:.2f} | {r['train_zero_loss_fraction']:.3f} | "
            f"{r['gradient_participation']:.2f} |")
    return "\n".join(lines) + "\n"


def markdown_paired(pairs) -> str:
    lines = ["| a − b | head | epochs | pairs | test accuracy (points) | p | Holm | calibrated test NLL |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {p['comparison']} | {p['head']} | {p['epochs']} | {p['n_pairs']} | "
              f"{_pm(p['test_accuracy_diff_mean'], p['test_accuracy_diff_ci95'])} | {p['test_accuracy_p']:.2g} | "
              f"{'yes' if p['test_accuracy_holm'] else ''} | "
              f"{_pm(p['calibrated_test_nll_diff_mean'], p['calibrated_test_nll_diff_ci95'], 1, 3)} |" for p in pairs]
    return "\n".join(lines) + "\n"


FIGURES = ("accuracy_vs_temperature", "validation_curves", "margins_over_tau", "implicit_margin_share",
           "calibration", "cosine_floor_share", "learning_rate_selection")


def report(workdir: Path) -> Path:
    """results.csv, selection.csv, paired.csv, report.md and the figures, into the workdir."""
    points = finished_points(workdir)
    if not points:
        raise SystemExit(f"{workdir}: no finished points of a recorded stage")
    choices = _read_choices(workdir) or None
    known = labels(choices)
    rows = results_rows(points, known)
    selection = selection_rows(choices, known) if choices else []
    pairs = paired_rows(points, known)
    write_csv(workdir / "results.csv", rows)
    write_csv(workdir / "selection.csv", selection)
    write_csv(workdir / "paired.csv", pairs)
    figures = workdir / "figures"
    figures.mkdir(exist_ok=True)
    if rows:
        plot_accuracy(rows, figures / "accuracy_vs_temperature.png")
        plot_validation_curves(points, known, figures / "validation_curves.png")
        plot_margins(points, known, figures / "margins_over_tau.png")
        plot_implicit_fraction(rows, figures / "implicit_margin_share.png")
        plot_calibration(rows, figures / "calibration.png")
        plot_cosine_share(rows, figures / "cosine_floor_share.png")
    if selection:
        plot_selection(selection, figures / "learning_rate_selection.png")
    distinct = {p["name"]: p for p in points}.values()
    hours = sum(p["wall_seconds"] for p in distinct) / 3600
    stages = defaultdict(int)
    for p in points:
        stages[p["stage"]] += 1
    first = next(iter(distinct))
    text = [
        "# The objectives study",
        "",
        f"{len(distinct)} finished runs (per stage, a run two stages share counted in each: "
        f"{', '.join(f'{s}: {n}' for s, n in stages.items())}), "
        f"{hours:.2f} hours of summed run wall time ({first['provenance'].get('device_kind', first['backend'])}); "
        f"data: {first['canonical']['data.source']} (the JPEG copy of CIFAR-10 when the hash says so). "
        "Design: `configs/sweep_temperature.py`; the README's study section reads these tables.",
        "",
        "Means over seeds with 95 % Student-t intervals (ddof = 1); `n` is the number of seeds. Training-set "
        "columns are on the clean training set (no augmentation, BatchNorm in eval mode) at the end of training.",
        "",
        markdown_results(rows) if rows else "No row has finished its replicates yet.\n",
        "## Paired differences (a − b, same seeds)",
        "",
        "p: the paired t-test's two-sided p; Holm: the difference survives Holm's correction at 5 % over all "
        f"{len(pairs)} accuracy comparisons below (the intervals themselves are uncorrected).",
        "",
        markdown_paired(pairs) if pairs else "None yet: they need two rows with two common seeds.\n",
        "## Figures",
        "",
        *(f"![{name}](figures/{name}.png)" for name in FIGURES if (figures / f"{name}.png").exists()),
    ]
    out = workdir / "report.md"
    atomic_write_text(out, "\n".join(text) + "\n")
    return out


def main(argv) -> None:
    if not argv or argv[0] not in ("choose", "report"):
        raise SystemExit("usage: python experiments/study.py choose|report [workdir]")
    workdir = Path(argv[1]) if len(argv) > 1 else WORKDIR
    if argv[0] == "choose":
        choices = choose(workdir)
        print(f"study: {len(choices['learning_rate'])} rows have a learning rate, "
              f"{len(choices['implicit_margin'])} lse rows an implicit margin -> {workdir / 'choices.json'}")
    else:
        print(f"study: wrote {report(workdir)}")


if __name__ == "__main__":
    main(sys.argv[1:])

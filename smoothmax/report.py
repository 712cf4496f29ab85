"""Report of a sweep: ``report.md`` with a results table, and PNG figures that read without the text.

    smoothmax report runs/sweep

The report reads the points of every invocation recorded in the workdir's ``sweep.json`` (see
:mod:`smoothmax.sweep`) that have finished, and nothing else: a stray folder under ``points/`` is not read.
A table row is every point with one canonical form but for the seeds (:data:`SEED_KEYS`): its accuracy is
the mean over those seeds with a 95 % Student-t interval (ddof = 1) and their number n; a row of one seed
shows "n = 1" and no interval. Other metrics are means over the row's seeds. Axes the grid varies beyond
objective, τ, m and head (a learning rate, a dataset) get a column of their own.

Figures (each titled and labelled):
  accuracy_vs_temperature.png   test accuracy against τ, one line per objective, one panel per head
  training_curves.png           test accuracy and test loss against epoch, every point
  logit_margins.png             test logit-margin histograms per objective
  implicit_margin.png           measured implicit margin against its bound τ·log(C−1)
  loss_shapes.png               the family's loss against z_y − max rival, for several τ
  gradient_support.png          rivals sharing each test example's gradient (participation ratio), per objective
  cosine_floor.png              cosine head: final training loss against τ beside NormFace's bound
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from smoothmax.files import atomic_write_bytes, atomic_write_text
from smoothmax.identity import defaults
from smoothmax.sweep import is_finished, load_point, read_invocations

OBJECTIVE_COLORS = {"hard": "tab:red", "lse": "tab:blue", "softmax": "tab:green"}
# Keys whose values are replicates of one experiment: a row of the table is every seed of one point.
SEED_KEYS = ("seed", "data.seed")
# Axes every row shows in columns of their own.
NAMED_AXES = ("loss.name", "loss.temperature", "loss.margin", "model.head")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path) -> None:
    """Lay out, write atomically (a PNG is never half-written) and free the figure."""
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    _plt().close(fig)
    atomic_write_bytes(out, buffer.getvalue())


def recorded_points(workdir) -> list[str]:
    """The names of the points of every invocation recorded in ``workdir/sweep.json``, in order."""
    invocations = read_invocations(workdir)
    if not invocations:
        raise FileNotFoundError(f"{workdir} has no sweep.json: is it a sweep workdir?")
    return list(dict.fromkeys(p["name"] for inv in invocations for p in inv["points"]))


def load_results(workdir, names: list[str]) -> list[dict]:
    """Every finished point among ``names``, the points recorded in a sweep workdir (see the module
    docstring)."""
    root = Path(workdir) / "points"
    results = [load_point(root / name) for name in names if is_finished(workdir, name)]
    if not results:
        raise FileNotFoundError(f"no finished points under {root}: run the sweep first")
    return results


def lse_cosine_floor(num_classes: int, temperature: float) -> float:
    """The lse objective's least value on cosine logits (target at 1, rivals on the simplex at −1/(C−1)).

    ``max(τ·log(C−1) − C/(C−1), 0)``: zero loss is reachable only for ``τ ≤ C/((C−1)·log(C−1))``.
    """
    c = num_classes
    return max(temperature * math.log(c - 1) - c / (c - 1), 0.0)


def normface_floor(num_classes: int, temperature: float) -> float:
    """NormFace's bound with scale s = 1/τ, times τ: ``τ·log(1 + (C−1)·exp(−C/((C−1)·τ)))``."""
    c = num_classes
    return temperature * math.log1p((c - 1) * math.exp(-c / ((c - 1) * temperature)))


def t_interval(values) -> float:
    """Half-width of the 95 % Student-t interval of the mean (ddof = 1); nan for one value."""
    from scipy import stats  # installed with jax, which requires it

    n = len(values)
    if n < 2:
        return float("nan")
    return float(stats.t.ppf(0.975, n - 1) * np.std(values, ddof=1) / math.sqrt(n))


def paired_p(diffs) -> float:
    """Two-sided p of the paired t-test that the mean difference is 0 (scipy's one-sample t-test on the
    differences). Identical differences have no spread: p is 0 unless they are all 0 (then 1), where scipy
    would warn and give nan."""
    from scipy import stats  # installed with jax, which requires it

    if np.ptp(diffs) == 0:
        return 0.0 if diffs[0] != 0 else 1.0
    return float(stats.ttest_1samp(diffs, 0.0).pvalue)


def holm(p_values, alpha: float = 0.05) -> list[bool]:
    """Which hypotheses Holm's step-down procedure rejects at family-wise level ``alpha`` (one family): the
    k-th smallest p must be below alpha/(N − k), in order."""
    rejected = [False] * len(p_values)
    for k, i in enumerate(sorted(range(len(p_values)), key=lambda i: p_values[i])):
        if p_values[i] >= alpha / (len(p_values) - k):
            break
        rejected[i] = True
    return rejected


def write_csv(path: Path, rows: list[dict]) -> None:
    """``rows`` (dicts with the same keys) as a CSV with a header, written atomically; nothing for no rows."""
    if not rows:
        return
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, text.getvalue())


def _axes(results) -> dict:
    """``{point name: "key=value ..."}`` for the axes beyond :data:`NAMED_AXES` and the seeds that vary."""
    base = defaults()
    keys = {k for r in results for k in r["canonical"]} - set(NAMED_AXES) - set(SEED_KEYS)
    varying = sorted(k for k in keys
                     if len({json.dumps(r["canonical"].get(k, base.get(k))) for r in results}) > 1)
    return {r["name"]: " ".join(f"{k}={json.dumps(r['canonical'].get(k, base.get(k)))}" for k in varying)
            for r in results}


MEAN_COLUMNS = ("test_ce", "logit_margin_mean", "implicit_margin_mean", "implicit_margin_bound", "zero_loss_fraction",
                "gradient_participation", "train_loss")


def summary_table(results) -> list[dict]:
    """Rows of points equal but for their seeds: accuracy mean, 95 % t-interval and n; other metrics' means."""
    groups = defaultdict(list)
    for r in results:
        key = {k: v for k, v in r["canonical"].items() if k not in SEED_KEYS}
        groups[json.dumps(key, sort_keys=True)].append(r)
    axes = _axes(results)
    rows = []
    for rs in groups.values():
        first, acc = rs[0], [r["test_accuracy"] for r in rs]
        rows.append({
            "objective": first["objective"], "temperature": first["temperature"], "margin": first["margin"],
            "head": first["head"], "axes": axes[first["name"]], "n": len(rs),
            "test_accuracy_mean": float(np.mean(acc)), "test_accuracy_ci95": t_interval(acc),
            **{c: float(np.mean([r.get(c, float("nan")) for r in rs])) for c in MEAN_COLUMNS},
        })
    return sorted(rows, key=lambda r: (r["head"], r["objective"], r["axes"], r["margin"], r["temperature"]))


def _accuracy_text(r) -> str:
    if r["n"] == 1:
        return f"{100 * r['test_accuracy_mean']:.2f} % (n = 1)"
    return f"{100 * r['test_accuracy_mean']:.2f} ± {100 * r['test_accuracy_ci95']:.2f} % (n = {r['n']})"


def markdown_table(rows) -> str:
    other = any(r["axes"] for r in rows)
    head = ("| objective | τ | m | head |" + (" other axes |" if other else "")
            + " test acc (mean ± 95 % t-interval over seeds) | test CE | logit margin | implicit margin "
            "| bound τ·log(C−1) | zero-loss frac | grad participation |\n|"
            + "---|" * (11 + other) + "\n")
    lines = [
        f"| {r['objective']} | {r['temperature']:g} | {r['margin']:g} | {r['head']} | "
        + (f"{r['axes']} | " if other else "")
        + f"{_accuracy_text(r)} | {r['test_ce']:.3f} | {r['logit_margin_mean']:.3f} | "
        f"{r['implicit_margin_mean']:.4f} | {r['implicit_margin_bound']:.4f} | {r['zero_loss_fraction']:.3f} | "
        f"{r['gradient_participation']:.2f} |"
        for r in rows
    ]
    return head + "\n".join(lines) + "\n"


def _head_panels(items, sharey: bool = False):
    """One panel per head: the figure and ``(axis, head, items of that head)`` for each panel."""
    heads = sorted({r["head"] for r in items})
    fig, axes = _plt().subplots(1, len(heads), figsize=(6 * len(heads), 4.5), squeeze=False, sharey=sharey)
    return fig, [(ax, head, [r for r in items if r["head"] == head]) for ax, head in zip(axes[0], heads)]


def plot_accuracy_vs_temperature(rows, out: Path):
    fig, panels = _head_panels(rows, sharey=True)
    for ax, head, here in panels:
        taus = sorted({r["temperature"] for r in here if r["objective"] != "hard"}) or [1.0]
        for obj in ("lse", "softmax"):
            pts = sorted((r["temperature"], r["test_accuracy_mean"], np.nan_to_num(r["test_accuracy_ci95"]))
                         for r in here if r["objective"] == obj and r["margin"] == 0)
            if pts:
                t, a, s = map(np.array, zip(*pts))
                ax.errorbar(t, 100 * a, yerr=100 * s, marker="o", label=obj, color=OBJECTIVE_COLORS[obj], capsize=3)
        for r in here:
            if r["objective"] == "hard":
                ax.axhline(100 * r["test_accuracy_mean"], color=OBJECTIVE_COLORS["hard"],
                           ls="--" if r["margin"] == 0 else ":", label=f"hard m={r['margin']:g} (τ=0)")
        ax.set_xscale("log")
        ax.set_xlim(min(taus) / 1.5, max(taus) * 1.5)
        ax.set_xlabel("temperature τ")
        ax.set_title(f"{head} head")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    panels[0][0].set_ylabel("test accuracy (%)")
    fig.suptitle("Test accuracy against temperature" + (" (bars: 95 % t-interval over seeds)"
                                                         if any(r["n"] > 1 for r in rows) else ""))
    _save(fig, out)


def plot_training_curves(results, out: Path):
    plt = _plt()
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(12, 4.5))
    # With a validation split, evaluations during training read it and the test set is read at the end only.
    split = "val" if any("val_accuracy" in row for r in results for row in r["history"]) else "test"
    name = "validation" if split == "val" else "test"
    for r in results:
        h = [row for row in r["history"] if f"{split}_accuracy" in row]
        if not h:
            continue
        epochs = [row["epoch"] for row in h]
        style = "-" if r["head"] == "linear" else "--"
        kw = dict(color=OBJECTIVE_COLORS.get(r["objective"]), ls=style, alpha=0.7, lw=1)
        ax_acc.plot(epochs, [100 * row[f"{split}_accuracy"] for row in h], **kw)
        ax_loss.plot(epochs, [row[f"{split}_ce"] for row in h], **kw)
    for obj, color in OBJECTIVE_COLORS.items():
        ax_acc.plot([], [], color=color, label=obj)
    ax_acc.plot([], [], color="gray", ls="-", label="linear head")
    ax_acc.plot([], [], color="gray", ls="--", label="cosine head")
    ax_acc.set(xlabel="epoch", ylabel=f"{name} accuracy (%)",
               title=f"{name.capitalize()} accuracy during training")
    ax_loss.set(xlabel="epoch", ylabel=f"{name} cross-entropy",
                title=f"{name.capitalize()} cross-entropy during training")
    ax_loss.set_yscale("log")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
    ax_acc.legend(fontsize=8)
    _save(fig, out)


def _central_range(edges, counts, lo=0.01, hi=0.99):
    """The x-range holding the central 98 % of a histogram's mass."""
    cdf = np.cumsum(counts) / max(counts.sum(), 1)
    return edges[np.searchsorted(cdf, lo)], edges[min(np.searchsorted(cdf, hi) + 1, len(edges) - 1)]


def plot_logit_margins(results, out: Path):
    """A panel per head × objective; one histogram per τ (lse, softmax) or m (hard), each x-range its own."""
    heads = sorted({r["head"] for r in results})
    objectives = [o for o in ("hard", "lse", "softmax") if any(r["objective"] == o for r in results)]
    fig, axes = _plt().subplots(len(heads), len(objectives), figsize=(4.5 * len(objectives), 3.3 * len(heads)),
                                squeeze=False)
    cmap = _plt().get_cmap("viridis")
    for row, head in enumerate(heads):
        for col, obj in enumerate(objectives):
            ax = axes[row][col]
            here = sorted((r for r in results if r["head"] == head and r["objective"] == obj
                           and r.get("logit_margin_histogram")), key=lambda r: (r["temperature"], r["margin"]))
            spans = []
            for i, r in enumerate(here):
                edges = np.array(r["logit_margin_histogram"]["edges"])
                counts = np.array(r["logit_margin_histogram"]["counts"])
                density = counts / max(counts.sum(), 1) / np.diff(edges)
                label = f"m={r['margin']:g}" if obj == "hard" else f"τ={r['temperature']:g}"
                ax.stairs(density, edges, color=cmap(i / max(len(here) - 1, 1)), lw=1.2, label=label)
                spans.append(_central_range(edges, counts))
            if spans:
                left, right = min(x for x, _ in spans), max(x for _, x in spans)
                pad = 0.05 * (right - left) or 0.1
                ax.set_xlim(min(left, 0) - pad, max(right, 0) + pad)
                ax.legend(fontsize=7)
            ax.axvline(0, color="k", lw=0.8)
            ax.set_title(f"{obj}, {head} head", fontsize=10)
            ax.set_xlabel("z_y − max rival (test)", fontsize=8)
            ax.set_ylabel("density", fontsize=8)
    fig.suptitle("Test logit-margin distributions (right of 0: correct; central 98 % shown)")
    _save(fig, out)


def plot_implicit_margin(rows, out: Path):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for r in rows:
        if r["objective"] == "hard" or r["implicit_margin_bound"] <= 0:
            continue
        marker = "o" if r["head"] == "linear" else "s"
        # Log axes keep y = x straight; a mean implicit margin of 0 sits at the bottom edge.
        ax.scatter(r["implicit_margin_bound"], max(r["implicit_margin_mean"], 1e-3 * r["implicit_margin_bound"]),
                   color=OBJECTIVE_COLORS[r["objective"]], marker=marker)
    bounds = [r["implicit_margin_bound"] for r in rows if r["implicit_margin_bound"] > 0]
    if bounds:
        grid = np.geomspace(min(bounds) / 1.5, max(bounds) * 1.5, 50)
        ax.plot(grid, grid, "k--", lw=1, label="bound τ·log(C−1)")
    for obj in ("lse", "softmax"):
        ax.scatter([], [], color=OBJECTIVE_COLORS[obj], label=obj)
    ax.scatter([], [], color="gray", marker="o", label="linear head")
    ax.scatter([], [], color="gray", marker="s", label="cosine head")
    ax.set(xscale="log", yscale="log", xlabel="bound τ·log(C−1)", ylabel="measured mean implicit margin (test)",
           title="Implicit margin of the LSE step against its bound")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, out)


def plot_loss_shapes(out: Path, num_classes: int = 10, temperatures=(0.1, 0.3, 1.0)):
    """Exact losses of the family on logits whose C−1 rivals tie at 0 and whose target sits at d."""
    import jax.numpy as jnp

    from smoothmax.losses import hard_loss, lse_loss, softmax_loss

    plt = _plt()
    d = np.linspace(-2, 3, 401, dtype=np.float32)
    logits = np.zeros((len(d), num_classes), np.float32)
    logits[:, 0] = d
    labels = jnp.zeros(len(d), jnp.int32)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(d, hard_loss(logits, labels), color=OBJECTIVE_COLORS["hard"], lw=2, label="hard (τ = 0)")
    for i, tau in enumerate(temperatures):
        alpha = 0.4 + 0.6 * (i + 1) / len(temperatures)
        ax.plot(d, lse_loss(logits, labels, temperature=tau), color=OBJECTIVE_COLORS["lse"], alpha=alpha,
                label=f"lse τ={tau:g} (zero beyond τ·log(C−1) = {tau * math.log(num_classes - 1):.2f})")
        ax.plot(d, softmax_loss(logits, labels, temperature=tau), color=OBJECTIVE_COLORS["softmax"], ls="--",
                alpha=alpha, label=f"softmax τ={tau:g}")
    ax.set(xlabel="logit margin z_y − max_{i≠y} z_i (rivals tied)", ylabel="loss",
           title=f"The family's shapes, C = {num_classes}, m = 0")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save(fig, out)


def plot_gradient_support(rows, out: Path):
    fig, panels = _head_panels(rows, sharey=True)
    for ax, head, here in panels:
        labels = [f"{r['objective']}\nτ={r['temperature']:g} m={r['margin']:g}" for r in here]
        ax.bar(range(len(here)), [r["gradient_participation"] for r in here],
               color=[OBJECTIVE_COLORS[r["objective"]] for r in here])
        ax.set_xticks(range(len(here)), labels, rotation=90, fontsize=7)
        ax.set(title=f"{head} head", ylabel="participation ratio (Σ|g|)²/Σg² over rivals (test mean)")
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle("Gradient participation: how many rivals share each example's gradient")
    _save(fig, out)


def plot_cosine_floor(rows, out: Path, num_classes: int = 10) -> bool:
    cosine = [r for r in rows if r["head"] == "cosine" and r["objective"] != "hard"]
    if not cosine:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for obj in ("lse", "softmax"):
        pts = sorted((r["temperature"], r["train_loss"]) for r in cosine if r["objective"] == obj)
        if pts:
            t, loss = zip(*pts)
            ax.plot(t, loss, "o-", color=OBJECTIVE_COLORS[obj], label=f"{obj}: final training loss")
    taus = np.geomspace(min(r["temperature"] for r in cosine) / 1.5, max(r["temperature"] for r in cosine) * 1.5, 60)
    ax.plot(taus, [normface_floor(num_classes, t) for t in taus], "k--",
            label="softmax floor (NormFace): τ·log(1+(C−1)·exp(−C/((C−1)τ)))")
    lse_floor = [lse_cosine_floor(num_classes, t) for t in taus]
    ax.plot(taus, np.where(np.array(lse_floor) > 0, lse_floor, np.nan), "k:",
            label="lse floor: max(τ·log(C−1) − C/(C−1), 0)")
    losses = [r["train_loss"] for r in cosine if r["train_loss"] > 0]
    if losses:  # the softmax floor falls to ~1e-20 at small τ: keep the measured losses readable
        ax.set_ylim(bottom=min(losses) / 1e3)
    ax.set(xscale="log", yscale="log", xlabel="temperature τ (= 1/s)", ylabel="training loss",
           title="Cosine head: where the smoothing sets the floor")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save(fig, out)
    return True


def _population_text(workdir: Path, results: list[dict]) -> str:
    """How the sweep's invocations trained their populations, as recorded in ``sweep.json``."""
    modes = {inv["population_mode"] for inv in read_invocations(workdir)}
    size = max(r.get("population", 1) for r in results)
    sequential = ("members of a population trained one after another through one compiled step "
                  "(sequential mode: fastest on CPU)")
    vmapped = f"members trained together in one vmapped step, up to {size} per population (vmap mode)"
    if modes == {"sequential"}:
        return sequential
    return vmapped if modes == {"vmap"} else f"some invocations with {sequential}, others with {vmapped}"


def write_report(workdir) -> Path:
    """Write ``report.md``, ``results.csv`` and the figures into ``workdir``; return the report's path."""
    workdir = Path(workdir)
    names = recorded_points(workdir)
    results = load_results(workdir, names)
    unfinished = len(names) - len(results)
    rows = summary_table(results)
    figures = workdir / "figures"
    figures.mkdir(exist_ok=True)
    plot_accuracy_vs_temperature(rows, figures / "accuracy_vs_temperature.png")
    plot_training_curves(results, figures / "training_curves.png")
    plot_logit_margins(results, figures / "logit_margins.png")
    plot_implicit_margin(rows, figures / "implicit_margin.png")
    plot_loss_shapes(figures / "loss_shapes.png")
    plot_gradient_support(rows, figures / "gradient_support.png")
    has_cosine = plot_cosine_floor(rows, figures / "cosine_floor.png")

    write_csv(workdir / "results.csv", rows)
    first = results[0]
    cfg = first["config"]
    lines = [
        f"# Sweep report: {workdir.name}",
        "",
        f"{len(results)} finished points" + (f" ({unfinished} recorded points unfinished)" if unfinished else "")
        + f" in {len(rows)} rows; data `{cfg['data']['name']}`"
        + (f" (`{cfg['data']['path']}`)" if cfg["data"].get("path") else "")
        + f"; model `{cfg['model']['name']}` widths {cfg['model']['widths']}; {first['epochs']} epochs; "
        f"backend {first.get('backend', '?')} × {first['devices']} device(s); {_population_text(workdir, results)}.",
        "",
        f"Wall time per point: {np.mean([r['wall_seconds'] for r in results]):.0f} s on average, "
        f"{sum(r['wall_seconds'] for r in results):.0f} s in all.",
        "",
        markdown_table(rows),
        "## Figures",
        "",
        "![accuracy vs temperature](figures/accuracy_vs_temperature.png)",
        "![training curves](figures/training_curves.png)",
        "![logit margins](figures/logit_margins.png)",
        "![implicit margin](figures/implicit_margin.png)",
        "![loss shapes](figures/loss_shapes.png)",
        "![gradient support](figures/gradient_support.png)",
    ]
    if has_cosine:
        lines.append("![cosine floor](figures/cosine_floor.png)")
    report = workdir / "report.md"
    atomic_write_text(report, "\n".join(lines) + "\n")
    return report

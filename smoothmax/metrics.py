"""Evaluation metrics from per-example outputs: accuracy, margins, gradient participation, calibration.

The evaluation step returns, per example, the logits, the loss, the logit margin ``z_y − max_{i≠y} z_i``,
the implicit margin and the participation ratio of the loss's gradient over the rivals; this module reduces
them on the host (in float64) to a split's metrics. Calibration follows Guo et al. (2017): one post-hoc
temperature T, fitted on the validation split to minimise the NLL of ``softmax(z/T)``, and the expected
calibration error over 15 equal-width confidence bins.
"""

from __future__ import annotations

import numpy as np
from scipy import special

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def log_softmax(logits, temperature: float = 1.0) -> np.ndarray:
    """``log softmax(z/T)`` over the last axis, in float64."""
    return special.log_softmax(np.asarray(logits, np.float64) / temperature, axis=-1)


def nll(logits, labels, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the labels under ``softmax(z/T)``."""
    return float(-np.take_along_axis(log_softmax(logits, temperature), labels[:, None], -1).mean())


def ece(logits, labels, temperature: float = 1.0, bins: int = 15) -> float:
    """Expected calibration error: Σ_b (n_b/n)·|accuracy_b − confidence_b| over equal-width confidence bins."""
    probs = np.exp(log_softmax(logits, temperature))
    confidence, predicted = probs.max(-1), probs.argmax(-1)
    correct = predicted == labels
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(total)


def posthoc_temperature(logits, labels) -> float:
    """The T > 0 that minimises ``nll(logits, labels, T)``. The NLL is unimodal in log T: a scan in unit
    steps of log T around the logits' spread within rows (softmax ignores a row's offset), moved while its
    best point is an edge, brackets the minimum; a golden-section search refines it. So a model whose
    logits are all tiny (hard at m = 0 ends near the all-equal minimiser) gets its own T, not a bound;
    separable data (the NLL falls as T → 0) stop at e^-40 times the spread."""
    spread = float(np.std(logits - logits.mean(-1, keepdims=True)))
    centre = float(np.round(np.log(spread))) if spread > 0 else 0.0
    grid = np.arange(-8.0, 9.0) + centre
    while True:
        best = int(np.argmin([nll(logits, labels, np.exp(g)) for g in grid]))
        at_edge = best in (0, len(grid) - 1)
        if not at_edge or abs(grid[best] - centre) >= 40:
            break
        grid = grid + (16.0 if best else -16.0)
    lo, hi = grid[best] - 1.0, grid[best] + 1.0
    ratio = (np.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(logits, labels, np.exp(a)), nll(logits, labels, np.exp(b))
    for _ in range(40):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(logits, labels, np.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(logits, labels, np.exp(b))
    return float(np.exp((lo + hi) / 2))


def _histogram(values: np.ndarray, bins: int = 60) -> dict:
    counts, edges = np.histogram(values, bins=bins)
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}


def _quantiles(values: np.ndarray) -> dict:
    return {str(q): float(np.quantile(values, q)) for q in QUANTILES}


def split_metrics(outputs: dict, labels: np.ndarray, temperature: float) -> dict:
    """One split's metrics from the evaluation step's per-example ``outputs`` (numpy, one member).

    Margins are also given in units of τ (``*_over_tau``; None at τ = 0), where members trained at
    different temperatures compare. The participation ratio ``(Σ|g_i|)²/Σ g_i²`` of the gradient over the
    rivals counts how many rivals effectively share it (1 for hard, up to C − 1); it is averaged over the
    examples whose loss is positive (the others have no gradient).
    """
    logits, loss = outputs["logits"], outputs["loss"]
    margin, implicit = outputs["logit_margin"], outputs["implicit_margin"]
    positive = loss > 0
    scale = temperature if temperature > 0 else None
    return {
        "accuracy": float((logits.argmax(-1) == labels).mean()),
        "loss": float(loss.mean()),
        "ce": nll(logits, labels),
        "ece": ece(logits, labels),
        "zero_loss_fraction": float(1 - positive.mean()),
        "logit_margin_mean": float(margin.mean()),
        "logit_margin_quantiles": _quantiles(margin),
        "logit_margin_histogram": _histogram(margin),
        "logit_margin_over_tau_mean": None if scale is None else float(margin.mean() / scale),
        "implicit_margin_mean": float(implicit.mean()),
        "implicit_margin_quantiles": _quantiles(implicit),
        "implicit_margin_over_tau_mean": None if scale is None else float(implicit.mean() / scale),
        "gradient_participation": float(outputs["participation"][positive].mean()) if positive.any() else None,
        "logit_norm_mean": float(np.linalg.norm(logits, axis=-1).mean()),
    }


def calibration(val_logits, val_labels, test_logits, test_labels) -> dict:
    """The post-hoc temperature fitted on validation, and the test NLL and ECE before and after it."""
    t = posthoc_temperature(val_logits, val_labels)
    return {
        "posthoc_temperature": t,
        "calibrated_test_nll": nll(test_logits, test_labels, t),
        "test_ece": ece(test_logits, test_labels),
        "calibrated_test_ece": ece(test_logits, test_labels, t),
    }

"""Metrics reduced on the host: NLL, ECE, the post-hoc temperature, margins and gradient participation."""

import numpy as np
import pytest

from smoothmax import metrics


def test_posthoc_temperature_recovers_the_temperature_that_generated_the_labels():
    rng = np.random.default_rng(0)
    logits = 3.0 * rng.standard_normal((20_000, 10))
    probs = np.exp(metrics.log_softmax(logits, 2.0))
    labels = (probs.cumsum(-1) > rng.random((20_000, 1))).argmax(-1)
    assert metrics.posthoc_temperature(logits, labels) == pytest.approx(2.0, rel=0.05)
    assert metrics.nll(logits, labels, 2.0) < metrics.nll(logits, labels, 1.0)
    # Calibrated by construction: a small ECE at T = 2, a large one at T = 1.
    assert metrics.ece(logits, labels, 2.0) < 0.02 < metrics.ece(logits, labels, 1.0)


@pytest.mark.parametrize("scale", [1e-4, 1e4])
def test_posthoc_temperature_follows_the_logits_scale(scale):
    """Hard at m = 0 ends with logits of spread ~1e-3: its T must be found, not clipped at a fixed bound."""
    rng = np.random.default_rng(1)
    logits = 3.0 * rng.standard_normal((20_000, 10))
    probs = np.exp(metrics.log_softmax(logits, 2.0))
    labels = (probs.cumsum(-1) > rng.random((20_000, 1))).argmax(-1)
    assert metrics.posthoc_temperature(scale * logits, labels) == pytest.approx(2.0 * scale, rel=0.05)
    # A per-row offset changes no probability, so it must not move the search window either.
    offsets = 1e3 * rng.standard_normal((20_000, 1))
    assert metrics.posthoc_temperature(scale * logits + offsets, labels) == pytest.approx(2.0 * scale, rel=0.05)


def test_posthoc_temperature_of_separable_logits_goes_far_below_their_spread():
    """Every label is its row's argmax: the NLL falls as T → 0, so the search moves past its first window."""
    logits = np.random.default_rng(2).standard_normal((5_000, 10))
    t = metrics.posthoc_temperature(logits, logits.argmax(-1))
    assert 0 < t < 1e-12 and metrics.nll(logits, logits.argmax(-1), t) < 1e-6


def test_ece_of_a_perfectly_confident_and_correct_model_is_zero():
    logits = np.array([[100.0, 0.0], [0.0, 100.0]])
    assert metrics.ece(logits, np.array([0, 1])) == pytest.approx(0.0, abs=1e-12)
    assert metrics.ece(logits, np.array([1, 0])) == pytest.approx(1.0)


def test_split_metrics_average_participation_over_positive_loss_only():
    outputs = {"logits": np.array([[2.0, 0.0, 0.0], [0.0, 1.0, 1.0]]), "loss": np.array([0.0, 1.0]),
               "logit_margin": np.array([2.0, -1.0]), "implicit_margin": np.array([0.0, 0.3]),
               "participation": np.array([0.0, 2.0])}
    m = metrics.split_metrics(outputs, np.array([0, 0]), temperature=0.5)
    assert m["gradient_participation"] == 2.0 and m["zero_loss_fraction"] == 0.5
    assert m["logit_margin_over_tau_mean"] == pytest.approx(1.0) and m["accuracy"] == 0.5
    assert metrics.split_metrics(outputs, np.array([0, 0]), temperature=0.0)["logit_margin_over_tau_mean"] is None

"""Margins of a classifier's logits: the logit margin and the implicit margin that LSE adds.

* logit margin ``z_y − max_{i≠y} z_i``: positive exactly when the example is classified correctly.
* implicit margin of the LSE step ``smooth_max_τ(z_i, i≠y) − max_{i≠y} z_i`` in ``[0, τ·log(C−1)]``,
  largest when the rivals tie. The lse loss is zero only when the logit margin is at least
  ``m + implicit margin``: it is the margin LSE adds without being asked.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from smoothmax.losses import (
    _is_target,
    _rival_max,
    _target_logit,
    check_logits_labels,
    check_temperature,
    compute_dtype,
    smooth_max,
)

__all__ = ["logit_margin", "implicit_margin", "implicit_margin_bound"]


def logit_margin(logits, labels) -> jax.Array:
    """``z_y − max_{i≠y} z_i`` per example (> 0 means correctly classified)."""
    logits, labels, _ = check_logits_labels(logits, labels)
    z = logits.astype(compute_dtype(logits.dtype))
    return _target_logit(z, labels) - _rival_max(z, labels)


def implicit_margin(logits, labels, *, temperature=1.0) -> jax.Array:
    """``smooth_max_τ(z_i, i≠y) − max_{i≠y} z_i`` per example, in ``[0, τ·log(C−1)]``."""
    logits, labels, _ = check_logits_labels(logits, labels)
    check_temperature(temperature)
    z = logits.astype(compute_dtype(logits.dtype))
    rivals = ~_is_target(z, labels)
    gap = smooth_max(z, temperature, where=rivals) - _rival_max(z, labels)
    # Clip the last ulp of rounding: the gap is never negative in exact arithmetic.
    return jnp.maximum(gap, 0.0)


def implicit_margin_bound(num_classes, temperature) -> jax.Array:
    """The largest implicit margin ``τ·log(C−1)``, reached when all C−1 rivals tie."""
    check_temperature(temperature)
    if not isinstance(num_classes, jax.core.Tracer) and np.any(np.asarray(num_classes) < 2):
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    tau = jnp.asarray(temperature, compute_dtype(jnp.result_type(temperature)))
    return tau * jnp.log(jnp.asarray(num_classes, tau.dtype) - 1)

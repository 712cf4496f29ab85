"""The smooth-max family of classification losses.

Classification asks the target logit to beat every rival: ``max(max_{i≠y} z_i − z_y, 0) = 0``.
The family smooths the two maxima of that objective, each with its own temperature::

    smooth_max_τ(x)  = τ·log Σ_i exp(x_i/τ)          (= max x   at τ = 0)
    smooth_relu_τ(u) = τ·log(1 + exp(u/τ))           (= max(u,0) at τ = 0)
    L(z, y) = smooth_relu_{τr}( smooth_max_{τm}(z_i, i≠y) − z_y + m )

Members: ``hard`` (τm = τr = 0), ``lse`` (τm = τ, τr = 0) and ``softmax`` (τm = τr = τ), which at τ = 1,
m = 0 is softmax cross-entropy.

Conventions shared by every loss here (the arguments are optax's
``softmax_cross_entropy_with_integer_labels(logits, labels, axis=-1, where=None)``, plus τ and m):

* logits of any float dtype (bf16/fp16 are computed in float32) with the classes on ``axis`` (an int or a
  tuple of axes; with a tuple a label is a flat index into the ``logits[axis]`` slice, row-major in the
  order given), integer labels of the remaining shape; the loss comes back per example, shape
  ``labels.shape``, float32 (float64 for float64 logits).
* ``where`` is either batch-shaped, an example mask (a masked example's loss and gradient are 0 and its
  label is not checked), or logits-shaped, a class mask: a masked rival is exactly a ``-inf`` logit, for
  every member. A masked target is still the target: the mask removes rivals only, so the loss stays
  ``≥ 0`` and τ → 0 still tends to the hard member. (optax also keeps a masked target's logit but leaves it
  out of its normaliser, so its value can go negative there; with the target unmasked, the softmax member
  at τ = 1, m = 0 is optax's cross-entropy, masks included.)
* temperature and margin are Python numbers or arrays broadcasting against ``labels.shape``. They are
  traced values: changing them never recompiles, and τ = 0 is exact, with finite gradients, also inside
  a ``vmap`` over temperatures. An eager call compiles once per shape and dtype, then runs as one call.
* gradients come from hand-written JVP rules (one pass for the value, one for the gradient), so they are
  exact at τ = 0: the hard subgradient puts exactly one +1 (on the strongest rival, first index on ties)
  and one −1 (on the target) on each example whose loss is positive. Forward and reverse mode, to any
  order, in the logits, τ and m.
* a ``-inf`` rival has no effect, a ``-inf`` target gives ``+inf``, and a NaN logit gives NaN in its
  example's loss and gradient. Finite input passes under ``jax.debug_nans`` and ``jax.debug_infs``.
* with concrete inputs, bad labels (out of ``[0, C)``, wrong shape, not integer), ``C < 2``, bad axes or
  masks and negative or NaN temperatures raise ``ValueError``. Under ``jit`` the label values cannot be
  checked: an out-of-range label gives NaN for that example (value and gradient), never a plausible number.

No label smoothing: it mixes the targets linearly, which is a property of cross-entropy (the softmax
member at m = 0), not of the family. For lse and hard a mixture of targets is not a smoothed target (the
margin and the rival max are taken per target), and for m ≠ 0 it changes the loss's minimiser. Whoever
wants it for softmax can mix ``softmax_loss`` values with a uniform-target term themselves.
"""

from __future__ import annotations

import functools
import operator
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_derivatives import SymbolicZero

__all__ = [
    "smooth_max",
    "smooth_relu",
    "family_loss",
    "hard_loss",
    "lse_loss",
    "softmax_loss",
    "objective",
    "OBJECTIVES",
]


# --------------------------------------------------------------------------- input checks


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def compute_dtype(dtype) -> jnp.dtype:
    """The dtype losses are computed in: at least float32 (bf16/fp16 are upcast)."""
    dtype = jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        return jnp.dtype(jnp.float32)
    return jnp.promote_types(dtype, jnp.float32)


def check_temperature(temperature, name: str = "temperature") -> None:
    """Raise ValueError if a concrete temperature is negative or NaN (traced values pass)."""
    if not _is_concrete(temperature):
        return
    t = np.asarray(temperature, dtype=np.float64)
    if np.isnan(t).any():
        raise ValueError(f"{name} must be a number >= 0, got NaN")
    if (t < 0).any():
        raise ValueError(f"{name} must be >= 0, got {t[t < 0].ravel()[0]:g}")


def class_axes(axis, ndim: int) -> tuple[int, ...]:
    """``axis`` (an int or a tuple of ints) as non-negative axes of an ``ndim``-dimensional array."""
    axes = (axis,) if isinstance(axis, (int, np.integer)) else axis
    if not isinstance(axes, tuple) or not axes or not all(isinstance(a, (int, np.integer)) for a in axes):
        raise ValueError(f"axis must be an int or a non-empty tuple of ints, got {axis!r}")
    if any(not -ndim <= a < ndim for a in axes):
        raise ValueError(f"axis {axis!r} is out of range for logits with {ndim} dimensions")
    axes = tuple(int(a) % ndim for a in axes)
    if len(set(axes)) != len(axes):
        raise ValueError(f"axis {axis!r} repeats an axis")
    return axes


def check_logits_labels(logits, labels, axis=-1, example_mask=None):
    """Validate shapes and dtypes (always) and label values (when concrete; masked examples are skipped).

    Returns the logits and labels as arrays and the class axes.
    """
    logits = jnp.asarray(logits)
    labels = jnp.asarray(labels)
    if logits.ndim < 1:
        raise ValueError("logits must have a class axis: shape [..., C], got a scalar")
    axes = class_axes(axis, logits.ndim)
    num_classes = int(np.prod([logits.shape[a] for a in axes]))
    if num_classes < 2:
        raise ValueError(f"logits need at least 2 classes (C >= 2), got C = {num_classes}")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
    batch_shape = tuple(n for a, n in enumerate(logits.shape) if a not in axes)
    if labels.shape != batch_shape:
        raise ValueError(
            f"labels shape {labels.shape} does not match logits shape {logits.shape}: "
            f"expected labels of shape {batch_shape}"
        )
    if example_mask is not None:
        example_mask = jnp.broadcast_to(example_mask, batch_shape)
    _check_label_values(labels, num_classes, example_mask)
    return logits, labels, axes


def _check_label_values(labels, num_classes, example_mask) -> None:
    """Raise ValueError for a concrete label outside ``[0, C)`` (masked examples are not checked)."""
    if not (_is_concrete(labels) and labels.size) or not (example_mask is None or _is_concrete(example_mask)):
        return
    lab = np.asarray(labels)
    bad = (lab < 0) | (lab >= num_classes)
    if example_mask is not None:
        bad &= np.asarray(example_mask)
    if bad.any():
        raise ValueError(
            f"labels must lie in [0, {num_classes}) for C = {num_classes} classes; "
            f"got {int(lab[bad].ravel()[0])} ({int(bad.sum())} bad labels)"
        )


def _check_where(where, logits_shape, batch_shape):
    """``where`` as a bool array, or None; raise ValueError if it is neither logits- nor batch-shaped."""
    if where is None:
        return None
    where = jnp.asarray(where)
    if where.dtype != jnp.bool_:
        raise ValueError(f"where must be a boolean mask, got dtype {where.dtype}")
    for shape in (logits_shape, batch_shape):
        if where.ndim == len(shape) and all(w in (1, n) for w, n in zip(where.shape, shape)):
            return where
    raise ValueError(
        f"where of shape {where.shape} is neither a class mask (logits shape {logits_shape}) "
        f"nor an example mask (batch shape {batch_shape})"
    )


def _classes_last(x, axes):
    """``x`` with the class axes moved to the end, in the order given, and flattened into one."""
    batch = [a for a in range(x.ndim) if a not in axes]
    if tuple(axes) == (x.ndim - 1,):
        return x
    x = jnp.transpose(x, (*batch, *axes))
    return x.reshape(*x.shape[: len(batch)], -1)


def _per_example(value, shape, dtype, name) -> jax.Array:
    """A temperature or margin as an array of the batch shape (broadcast, never tiled by the caller)."""
    value = jnp.asarray(value, dtype=dtype)
    try:
        return jnp.broadcast_to(value, shape)
    except ValueError:
        raise ValueError(
            f"{name} of shape {value.shape} does not broadcast against the batch shape {shape}"
        ) from None


# --------------------------------------------------------------------------- smooth maxima


def smooth_max(x, temperature=1.0, axis=-1, where=None, keepdims: bool = False) -> jax.Array:
    """Smooth maximum ``τ·log Σ_i exp(x_i/τ)`` along ``axis``; exactly ``max(x)`` at ``τ = 0``.

    Bounds: ``max x ≤ smooth_max_τ(x) ≤ max x + τ·log n`` for ``n`` entries, with the upper bound reached
    when all entries tie. ``axis`` is an int or a tuple; ``where`` (broadcasting against ``x``) leaves
    entries out, as a ``-inf`` entry; ``keepdims`` as in ``jax.nn.logsumexp``. ``temperature``
    broadcasts against the reduced shape. The result is ``-inf`` where no entry is left (also over an
    empty axis), as for ``logsumexp``.
    """
    check_temperature(temperature)
    x = jnp.asarray(x)
    if x.ndim == 0:
        raise ValueError("smooth_max needs an array with at least one axis, got a scalar")
    axes = class_axes(axis, x.ndim)
    if where is not None:
        where = jnp.asarray(where)
        try:
            jnp.broadcast_shapes(where.shape, x.shape)
        except ValueError:
            raise ValueError(f"where of shape {where.shape} does not broadcast against x of shape {x.shape}") from None
    return _smooth_max(x, temperature, where, axes=axes, keepdims=keepdims)


@functools.partial(jax.jit, static_argnames=("axes", "keepdims"))
def _smooth_max(x, temperature, where, *, axes, keepdims):
    x = x.astype(compute_dtype(x.dtype))
    if where is not None:
        x = jnp.where(where, x, -jnp.inf)
    peak = jnp.max(x, axis=axes, keepdims=True, initial=-jnp.inf)
    reduced_shape = tuple(1 if a in axes else n for a, n in enumerate(x.shape))
    tau = jnp.broadcast_to(jnp.asarray(temperature, x.dtype), jnp.squeeze(peak, axes).shape)
    tau = tau.reshape(reduced_shape)
    smooth = tau > 0
    safe_tau = jnp.where(smooth, tau, 1.0)
    # Shift by a finite peak so that exp never overflows and an all -inf row gives log(0) = -inf.
    shift = lax.stop_gradient(jnp.where(jnp.isfinite(peak), peak, 0.0))
    total = jnp.sum(jnp.exp((x - shift) / safe_tau), axis=axes, keepdims=True)
    value = jnp.where(smooth, shift + safe_tau * jnp.log(total), peak)
    return value if keepdims else jnp.squeeze(value, axes)


def smooth_relu(u, temperature=1.0) -> jax.Array:
    """Smooth ReLU (scaled softplus) ``τ·log(1 + exp(u/τ))``; exactly ``max(u, 0)`` at ``τ = 0``.

    Bounds: ``max(u, 0) ≤ smooth_relu_τ(u) ≤ max(u, 0) + τ·log 2``.
    """
    check_temperature(temperature)
    u = jnp.asarray(u)
    u = u.astype(compute_dtype(u.dtype))
    return _smooth_relu(u, jnp.asarray(temperature, u.dtype))


# exp of this underflows to exactly 0 in float32 and float64.
_FAR_BELOW = -1e4


def _over_tau(u, tau):
    """``u/τ`` at τ > 0 (a placeholder at τ = 0, which callers select away), floored at ``_FAR_BELOW``, where
    softplus, sigmoid and their τ-derivative are exactly 0: u may be the most negative float (no rival
    mass), whose quotient would overflow to -inf (which eager ``jax.debug_infs`` flags)."""
    safe_tau = _safe_tau(tau)
    return jnp.maximum(u, _FAR_BELOW * safe_tau) / safe_tau


def _smooth_relu(u, tau):
    return jnp.where(tau > 0, _safe_tau(tau) * jax.nn.softplus(_over_tau(u, tau)), jnp.maximum(u, 0.0))


def _dloss_du(u, tau):
    """``d smooth_relu_τ(u)/du``: sigmoid(u/τ), the step u > 0 at τ = 0; NaN where u is NaN.

    The NaN is selected from u itself: a NaN constant would trip ``jax.debug_nans`` on valid input.
    """
    smooth = tau > 0
    slope = jnp.where(smooth, jax.nn.sigmoid(_over_tau(u, tau)), (u > 0).astype(u.dtype))
    return jnp.where(jnp.isnan(u), u, slope)


# --------------------------------------------------------------------------- row helpers


def _classes(z):
    return lax.broadcasted_iota(jnp.int32, z.shape, z.ndim - 1)


def _is_target(z, labels):
    return _classes(z) == labels[..., None]


def _pick(x, index):
    """``x[..., index]`` per example (index within ``[0, C)``)."""
    return jnp.take_along_axis(x, index[..., None], axis=-1)[..., 0]


def _safe_labels(labels, num_classes):
    """Labels clipped into ``[0, C)`` for indexing; an out-of-range label's NaN comes from its target."""
    return jnp.clip(labels, 0, num_classes - 1)


def _target_logit(z, labels):
    """``z_y`` per example; NaN for a label outside ``[0, C)`` (a filled gather, no NaN constant)."""
    num_classes = z.shape[-1]
    index = jnp.where(labels < 0, num_classes, labels)  # no wrap-around of negative labels
    return jnp.take_along_axis(z, index[..., None], axis=-1, mode="fill", fill_value=np.nan)[..., 0]


def _scaled(x, shift, tau):
    """``(x − shift)/τ`` with a per-example shift and τ broadcast over the classes."""
    return (x - shift[..., None]) / tau[..., None]


def _safe_tau(tau):
    return jnp.where(tau > 0, tau, 1.0)


def _first_index(z, value):
    """Index of the first entry of each row equal to ``value``.

    Written as a float max-reduction over ``[z_i = value]·(C − i)``: XLA:CPU vectorises it, where an
    integer arg-max (a variadic reduction) runs several times slower.
    """
    num_classes = z.shape[-1]
    classes = _classes(z)
    hit = z == value[..., None]
    score = jnp.max(hit.astype(z.dtype) * (num_classes - classes).astype(z.dtype), axis=-1)
    return jnp.clip(num_classes - score.astype(jnp.int32), 0, num_classes - 1)


def _is_pos_inf(x):
    """``x == +inf`` without an inf constant, which eager ``jax.debug_infs`` would flag."""
    return x > jnp.finfo(x.dtype).max


def _rivals(z, labels):
    """The logits with the target's at the most negative float (not -inf, for ``jax.debug_infs``)."""
    return jnp.where(_is_target(z, labels), jnp.finfo(z.dtype).min, z)


def _rival_max(z, labels):
    """``max_{i≠y} z_i`` through the target mask."""
    return jnp.max(_rivals(z, labels), axis=-1)


@jax.custom_batching.custom_vmap
def _first_rival_index(z, labels, smooth_m):
    """The first rival at the rival max, for examples with τm = 0; skipped (a cond on a scalar) when none has.

    The index reads only z and labels; its vmap rule keeps the predicate a scalar (any hard example in any
    member), so a vmap over temperatures runs this pass once, or not at all, rather than once per member
    (a cond with a batched predicate runs both branches on every member).
    """
    return lax.cond(jnp.all(smooth_m), _no_index, _first_rival, z, labels)


def _no_index(z, labels):
    return jnp.zeros(labels.shape, jnp.int32)


def _first_rival(z, labels):
    rivals = _rivals(z, labels)
    return _first_index(rivals, jnp.max(rivals, axis=-1))


@_first_rival_index.def_vmap
def _first_rival_vmap(axis_size, in_batched, z, labels, smooth_m):
    z_batched, labels_batched, smooth_batched = in_batched
    if not (z_batched or labels_batched):
        # One index for every member; it is needed where any member's example is hard.
        smooth_m = jnp.all(smooth_m, axis=0) if smooth_batched else smooth_m
        first = _first_rival_index(z, labels, smooth_m)
        return jnp.broadcast_to(first, (axis_size, *first.shape)), True
    # The member axis becomes one more batch dimension of the row-wise computation.
    z, labels, smooth_m = (
        x if batched else jnp.broadcast_to(x, (axis_size, *x.shape))
        for x, batched in zip((z, labels, smooth_m), in_batched)
    )
    return _first_rival_index(z, labels, smooth_m), True


def _strongest_rival(z, labels, smooth_m):
    """``_first_rival_index`` of values outside differentiation (an index has no derivative)."""
    return _first_rival_index(lax.stop_gradient(z), labels, lax.stop_gradient(smooth_m))


# --------------------------------------------------------------------------- the family's paths


class Forward(NamedTuple):
    """What every path of the family's forward pass returns (the JVP rule reads all of it)."""

    loss: jax.Array        # per example
    u: jax.Array           # smooth_max_τm(z_i, i≠y) − z_y + m
    target: jax.Array      # z_y (NaN for an out-of-range label)
    rival_max: jax.Array   # max_{i≠y} z_i, or the row max where the loss is the same with it
    shift: jax.Array       # the exps are exp((z − shift)/τm)
    total: jax.Array       # Σ_{i≠y} exp((z_i − shift)/τm), at least the smallest normal float
    exps: jax.Array        # [..., C]; the target's entry is target_exp
    target_exp: jax.Array  # the target's entry of exps: its own term, or 0 where the path masked it


def _finish(target, tau_m, tau_r, margin, rival_max, shift, total, exps, target_exp):
    """The loss from a rival sum: ``u = (shift − z_y) + τm·log(total) + m`` (the rival max at τm = 0).

    The total is 0 only where every rival is -inf (the loss is 0), where the unmasked sum cancelled on a
    row whose loss the path's exactness rule keeps below a few τ·eps, or where ``_masked`` lost every
    rival to underflow (``_masked_is_exact`` keeps such loss below τr·e^-30).
    """
    info = jnp.finfo(total.dtype)
    # shift − z_y first: where the target holds the row max it is exactly 0, and τm·log(total) keeps its
    # bits however large the logits are. No rival mass at all: u is the most negative float, so the loss
    # and its slope are exactly 0 with nothing infinite on the way.
    smooth_gap = (shift - target) + _safe_tau(tau_m) * jnp.log(jnp.maximum(total, info.tiny))
    u = jnp.where(tau_m > 0, jnp.where(total == 0, info.min, smooth_gap), rival_max - target) + margin
    total = jnp.maximum(total, info.tiny)
    return Forward(_smooth_relu(u, tau_r), u, target, rival_max, shift, total, exps, target_exp)


def _shifted_exps(z, tau):
    """Row max, the shift (that max where finite, else 0) and ``exp((z − shift)/τ)`` over all classes."""
    peak = jnp.max(z, axis=-1)
    shift = jnp.where(jnp.isfinite(peak), peak, 0.0)
    return peak, shift, jnp.exp(_scaled(z, shift, _safe_tau(tau)))


def _unmasked_total(exps, target_exp, target):
    """Σ_{i≠y} as the sum over all classes minus the target's term (a +inf target: nothing beats it)."""
    return jnp.where(_is_pos_inf(target), 0.0, jnp.maximum(jnp.sum(exps, axis=-1) - target_exp, 0.0))


def _unmasked(z, labels, tau_m, tau_r, margin):
    """Both row reductions over the raw logits, the target's term subtracted; value only.

    XLA:CPU fuses an exp-sum over raw logits into its library reduction, and the target's exp is taken
    per example, so the exps are never stored.
    """
    peak, shift, exps = _shifted_exps(z, tau_m)
    target = _target_logit(z, labels)
    target_exp = jnp.exp((target - shift) / _safe_tau(tau_m))
    total = _unmasked_total(exps, target_exp, target)
    return _finish(target, tau_m, tau_r, margin, peak, shift, total, exps, target_exp)


def _unmasked_picked(z, labels, tau_m, tau_r, margin):
    """``_unmasked`` for the gradient: the exps are stored once and the target's term is picked from them.

    Picked before the sum: the gradient takes exactly this term out again, and the exps die at the
    gradient's product (XLA then writes them into the gradient's own buffer), as in optax's cross-entropy.
    """
    peak, shift, exps = _shifted_exps(z, tau_m)
    target_exp = _pick(exps, _safe_labels(labels, z.shape[-1]))
    target = _target_logit(z, labels)
    total = _unmasked_total(exps, target_exp, target)
    return _finish(target, tau_m, tau_r, margin, peak, shift, total, exps, target_exp)


def _tied_lse(z, labels, tau_m, tau_r, margin):
    """The softmax member (τr = τm = τ) as one log-sum-exp over all classes; value only.

    With the row max s, ``S = Σ_i exp((z_i − s)/τ)`` over all classes, ``a = m/τ`` and
    ``b = (z_y − s)/τ ≤ 0``::

        L = τ·log(1 + e^a·(S − e^b)/e^b) = s + τ·log(e^a·S + (1 − e^a)·e^b) − z_y

    For m ≤ 0 both terms are ≥ 0, so nothing cancels; at m = 0 this is cross-entropy by log-sum-exp. The
    two per-example exps are then taken relative to ``d = max(a, b)`` where some m < −60·τ, so that a
    large negative margin and a far-behind target cannot underflow together. For 0 < m ≤ τ·log 8 the
    form ``e^b + e^a·(S − e^b)`` cancels at most ``e^a ≤ 8`` ulps (an absolute error of a few τ·eps, as
    cross-entropy by log-sum-exp has) and gives exactly 0 where no rival mass is left. This drops the
    per-example softplus of ``_finish``, which for few classes costs as much as the reductions. At τ = 0
    the loss is the hinge over the row max.
    """
    peak, shift, exps = _shifted_exps(z, tau_m)
    target = _target_logit(z, labels)
    safe_tau = _safe_tau(tau_m)
    total = jnp.sum(exps, axis=-1)
    # A scalar switch: no margin; margins ≥ 0 (up to the path's bound); in [−60·τ, 0]; any others.
    which = jnp.select([jnp.all(margin == 0), jnp.all(margin >= 0),
                        jnp.all((margin <= 0) & (margin >= _RESCALE_BELOW * safe_tau))], [0, 1, 2], 3)
    branches = (_no_margin_terms, _positive_margin_terms, _negative_margin_terms, _margin_terms)
    d, inner = lax.switch(which, branches, total, target, shift, safe_tau, margin)
    loss = _tied_loss(tau_m, margin, peak, shift, target, d, inner)
    target_exp = jnp.exp((target - shift) / safe_tau)
    rest = _finish(target, tau_m, tau_r, margin, peak, shift, _unmasked_total(exps, target_exp, target),
                   exps, target_exp)
    return rest._replace(loss=loss)


def _tied_loss(tau_m, margin, peak, shift, target, d, inner):
    """``s − z_y + τ·(d + log(inner))``, the hinge over the row max at τ = 0."""
    # A +inf target beats every finite rival (the formula would give inf − inf).
    smooth_loss = jnp.where(_is_pos_inf(target), 0.0, (shift - target) + tau_m * (d + jnp.log(inner)))
    return jnp.where(tau_m > 0, smooth_loss, jnp.maximum(peak - target + margin, 0.0))


def _no_margin_terms(total, target, shift, safe_tau, margin):
    # Cross-entropy itself, the common case: the scalar cond skips three per-example transcendentals.
    return jnp.zeros_like(total), total


def _positive_margin_terms(total, target, shift, safe_tau, margin):
    # 0 ≤ m ≤ τ·log 8: e^a ≤ 8 cannot overflow and e^b = 1 where the target holds the row max, so no rescale
    # is needed, and with no rival mass left (the target's term the whole sum) the loss is exactly 0.
    target_term = jnp.exp((target - shift) / safe_tau)
    return jnp.zeros_like(total), target_term + jnp.exp(margin / safe_tau) * (total - target_term)


def _negative_margin_terms(total, target, shift, safe_tau, margin):
    # −60·τ ≤ m ≤ 0: both terms are ≥ 0, and e^a·S ≥ e^-60 keeps the sum normal (S ≥ 1), so no rescale
    # is needed: one per-example exp fewer than ``_margin_terms``.
    a = margin / safe_tau
    return jnp.zeros_like(total), jnp.exp(a) * total - jnp.expm1(a) * jnp.exp((target - shift) / safe_tau)


# Below m = −60·τ, e^{m/τ} could take the whole sum below float32's normal range: rescale there.
_RESCALE_BELOW = -60.0


def _margin_terms(total, target, shift, safe_tau, margin):
    a = margin / safe_tau
    b = (target - shift) / safe_tau
    d = jnp.maximum(a, b)
    return d, jnp.exp(a - d) * total - jnp.expm1(a) * jnp.exp(b - d)


def _masked(z, labels, tau_m, tau_r, margin):
    """The rival sum through the target mask, shifted by the row max: no cancellation at any margin.

    The exps are at most 1 (no overflow, whatever the target's lead), and the mask is a select after the
    exp, which XLA:CPU keeps inside its fused exp-sum. Exact wherever a rival lost to underflow could not
    change the loss (``_masked_is_exact``), and at τm > 0 only.
    """
    peak, shift, exps = _shifted_exps(z, tau_m)
    exps = jnp.where(_is_target(z, labels), 0.0, exps)
    total = jnp.sum(exps, axis=-1)
    return _finish(_target_logit(z, labels), tau_m, tau_r, margin, peak, shift, total, exps, jnp.zeros_like(total))


def _rival_shifted(z, labels, tau_m, tau_r, margin):
    """Exact at any input: the rival max (through the mask) and the rival sum shifted by it.

    One select feeds both reductions (two different selects measured slower). The masked target is
    lifted to ``shift − 10⁴·τm`` before the scaling: its exp is still exactly 0, and its scaled value and
    derivatives stay finite however far the target leads (an inf there would become NaN in derivatives).
    """
    rivals = _rivals(z, labels)
    rival_max = jnp.max(rivals, axis=-1)
    shift = jnp.where(jnp.isfinite(rival_max), rival_max, 0.0)
    safe_tau = _safe_tau(tau_m)
    exps = jnp.exp(_scaled(jnp.maximum(rivals, (shift + _FAR_BELOW * safe_tau)[..., None]), shift, safe_tau))
    total = jnp.sum(exps, axis=-1)
    return _finish(_target_logit(z, labels), tau_m, tau_r, margin, rival_max, shift, total, exps,
                   jnp.zeros_like(total))


def _one_pass_sums(z, labels, tau):
    """Row max and shift, the masked exps, and in one variadic reduction over the classes: the rival sum
    ``R = Σ_{i≠y} exp((z_i − shift)/τ)``, the target's term ``T = exp((z_y − shift)/τ)`` and ``z_y``.

    A masked sum as ``_masked``'s (no cancellation), without its separate gather and per-example exp:
    for few classes XLA:CPU runs a several-output row reduction as one fused loop over both cores, where
    a lone masked sum goes through a stored [B, C] select into a library kernel (README, "Benchmarks").
    ``z_y`` is a sum of one entry and zeros, so exact; a label outside ``[0, C)`` picks nothing: NaN.
    """
    peak, shift, exps = _shifted_exps(z, tau)
    is_target = _is_target(z, labels)
    rival_exps = jnp.where(is_target, 0.0, exps)
    zero = jnp.zeros((), z.dtype)
    total, target_exp, picked = lax.reduce(
        (rival_exps, jnp.where(is_target, exps, 0.0), jnp.where(is_target, z, 0.0)), (zero, zero, zero),
        lambda acc, x: tuple(a + b for a, b in zip(acc, x)), (z.ndim - 1,))
    # NaN for a label outside [0, C) through _target_logit's filled gather (no NaN constant).
    valid = (labels >= 0) & (labels < z.shape[-1])
    target = _target_logit(picked[..., None], jnp.where(valid, 0, -1))
    return peak, shift, rival_exps, total, target_exp, target


def _one_pass(z, labels, tau_m, tau_r, margin):
    """``_masked`` in one reduction over the classes (``_one_pass_sums``): few classes, value only."""
    peak, shift, rival_exps, total, _, target = _one_pass_sums(z, labels, tau_m)
    return _finish(target, tau_m, tau_r, margin, peak, shift, total, rival_exps, jnp.zeros_like(total))


def _tied_one_pass(z, labels, tau_m, tau_r, margin):
    """The softmax member (τr = τm = τ) from ``_one_pass_sums``' R and T: few classes, value only.

    With ``a = m/τ`` and ``b = (z_y − s)/τ`` (T = e^b)::

        L = τ·log(1 + e^a·R/T) = s − z_y + τ·log(T + e^a·R)

    Both terms are ≥ 0 and exact, so nothing cancels at any margin, and no per-example softplus is
    needed. Where some m < −60·τ, a far-behind target and the margin could underflow both terms
    together: there they are taken relative to ``d = max(a, b)``. At τ = 0 the hinge over the row max.
    """
    peak, shift, rival_exps, total, target_exp, target = _one_pass_sums(z, labels, tau_m)
    safe_tau = _safe_tau(tau_m)
    a = margin / safe_tau

    def plain():
        return jnp.zeros_like(total), target_exp + jnp.exp(a) * total

    def rescaled():
        b = (target - shift) / safe_tau
        d = jnp.maximum(a, b)
        return d, jnp.exp(b - d) + jnp.exp(a - d) * total

    d, inner = lax.cond(jnp.all(a >= _RESCALE_BELOW), plain, rescaled)
    loss = _tied_loss(tau_m, margin, peak, shift, target, d, inner)
    rest = _finish(target, tau_m, tau_r, margin, peak, shift, total, rival_exps, jnp.zeros_like(total))
    return rest._replace(loss=loss)


# The unmasked paths subtract the target's term from the full sum. That loses the rival sum R's low bits
# on rows where the target dominates; such rows matter only if m/τm is large (see ``_fast_is_exact``).
_MARGIN_BOUND = float(np.log(8.0))

# A loss below τr·e^-30 counts as exactly 0 for the masked path's underflow rule.
_NEGLIGIBLE = 30.0


def _masked_is_exact(tau_m, tau_r, margin, num_classes, dtype):
    """Whether ``_masked`` is exact for the whole batch (a scalar, from τ and m alone).

    Shifted by the row max, rivals more than ~87·τm (float32) below it underflow, each losing under
    ``tiny``: the rival sum R is exact to eps where R ≥ floor = C·tiny/eps, and below that the loss is
    at most ``τr·softplus((τm·log floor + m)/τr)`` (the target then holds the row max). So every row is
    exact, or its loss below τr·e^-30 (0 for the hinge), when ``m ≤ τm·(−log floor) − 30·τr``: m/τm up to
    ~34 in float32 with 1000 classes (AM-Softmax's s·m is 10.5). At τm = 0 the row max is not the rival max.
    """
    info = jnp.finfo(dtype)
    reach = -float(np.log(num_classes * float(info.tiny) / float(info.eps)))
    return jnp.all((tau_m > 0) & (margin <= reach * tau_m - _NEGLIGIBLE * tau_r))


def _fast_is_exact(tau_m, tau_r, margin, tying, bound):
    """Whether the unmasked paths are exact for the whole batch (a scalar).

    The subtraction ``R = S − e_y`` loses R's low bits only on rows where the target holds the row max and
    its rivals are far below it (R ≪ 1 in units of its term), with a relative error eps/R. For m ≤ 0 such
    rows do not need them: under a hinge (τr = 0) their loss is exactly 0 (u = τm·log R + m < 0), and under
    a smooth ReLU with τr ≤ τm the loss ``τr·log(1 + R^{τm/τr}·e^{m/τr})`` keeps an absolute error below
    τr·eps, as softmax cross-entropy computed by log-sum-exp does. For 0 < m ≤ τm·log 8 a row's loss is
    non-zero (or its slope above e^-m/τm) only where R > e^{−m/τm} ≥ 1/8: at most 8 ulps (``bound``).
    ``tying`` ("hinge": τr ≡ 0, "tied": τr ≡ τm) keeps the temperatures out of the m ≤ 0 predicate, so that
    a vmap over temperatures leaves it unbatched: a real branch, not a select of both.
    """
    exact = margin <= bound * tau_m if bound else margin <= 0
    if tying is None:
        exact = exact & ((tau_r == 0) | (tau_m >= tau_r))
    return jnp.all(exact)


# --------------------------------------------------------------------------- the one chooser


class Thresholds(NamedTuple):
    """The speed choices that depend on the backend."""

    few_classes: int  # up to this many classes the gradient masks the target in a dense [B, C] pass
    one_pass_classes: int  # up to this many classes a value takes every row sum in one reduction


# Measured on XLA:CPU (README, "Benchmarks"). GPU and TPU take the same numbers until someone measures them.
_THRESHOLDS = {"cpu": Thresholds(few_classes=32, one_pass_classes=20),
               "default": Thresholds(few_classes=32, one_pass_classes=20)}


def _per_backend(fn, *args):
    """``fn(thresholds, *args)`` with the thresholds of the backend it is lowered for.

    ``lax.platform_dependent`` picks the branch when lowering, so a jitted caller compiled for a GPU gets
    the GPU's thresholds (``jax.default_backend()`` at trace time could name another device). While all
    backends share one set it is not used: its linearisation carries every branch's residuals, which cost
    ~5 % of a few-class gradient on XLA:CPU (README, "Benchmarks").
    """
    if len(set(_THRESHOLDS.values())) == 1:
        return fn(_THRESHOLDS["default"], *args)
    return lax.platform_dependent(
        *args,
        cpu=functools.partial(fn, _THRESHOLDS["cpu"]),
        default=functools.partial(fn, _THRESHOLDS["default"]),
    )


class Plan(NamedTuple):
    """The paths of one call by margin, each ``path(z, labels, τm, τr, m) -> Forward``, and its tangent.

    Where none applies (m/τm beyond ``_masked_is_exact``; τm = 0 with m > 0), ``_rival_shifted``.
    """

    no_margin: Callable       # m ≤ 0 (and τr ≤ τm)
    small_margin: Callable    # 0 < m ≤ τm·log 8 (and τr ≤ τm)
    large_margin: Callable    # m ≤ τm·(−log floor) − 30·τr (``_masked_is_exact``)
    tangent: Callable | None  # the gradient's [B, C] pass (None for a value-only call)


def _plan(tying, num_classes, differentiated, thresholds: Thresholds) -> Plan:
    """Which paths a call of the family takes: the only place where that is decided.

    | path | taken when | why |
    |---|---|---|
    | ``_tied_one_pass`` | softmax (τr ≡ τm), value only, up to ``one_pass_classes``, where ``_masked`` is exact | one reduction, no softplus, no cancellation |
    | ``_one_pass`` | value only, up to ``one_pass_classes``, where ``_masked`` is exact, unless ``_tied_one_pass`` | one reduction for the masked sum and the target |
    | ``_tied_lse`` | softmax, value only, more than ``one_pass_classes``, m ≤ τ·log 8 | one log-sum-exp, no per-example softplus |
    | ``_unmasked`` | value only, more classes, m ≤ τm·log 8 and τr ≤ τm, unless ``_tied_lse`` | exp-sum over raw logits, exps not stored |
    | ``_unmasked_picked`` | gradient, more than ``few_classes``, m ≤ τm·log 8 and τr ≤ τm | exps stored once, reused by the gradient |
    | ``_masked`` | a value with more classes and larger m up to ~34·τm; a gradient up to ``few_classes`` at any such m | exact there; one plain max, the mask a select after the exp |
    | ``_rival_shifted`` | anything else (m/τm beyond that; τm = 0 with m > 0) | exact at any input |
    | ``_picked_tangent`` | gradient, more than ``few_classes`` | a mask in the [B, C] gradient pass costs more than one scatter |
    | ``_dense_tangent`` | gradient, up to ``few_classes`` | the per-example picks and the scatter cost more than the mask |

    The margin bounds are checked at run time on the whole batch (``cond`` on scalars, see
    ``_fast_is_exact`` and ``_masked_is_exact``); the class count and whether the call is differentiated
    are known when tracing.
    """
    if not differentiated and num_classes <= thresholds.one_pass_classes:
        one_pass = _tied_one_pass if tying == "tied" else _one_pass
        return Plan(no_margin=one_pass, small_margin=one_pass, large_margin=one_pass, tangent=None)
    if not differentiated:
        fast = _tied_lse if tying == "tied" else _unmasked
        return Plan(no_margin=fast, small_margin=fast, large_margin=_masked, tangent=None)
    if num_classes > thresholds.few_classes:
        return Plan(no_margin=_unmasked_picked, small_margin=_unmasked_picked, large_margin=_masked,
                    tangent=_picked_tangent)
    return Plan(no_margin=_masked, small_margin=_masked, large_margin=_masked, tangent=_dense_tangent)


def _forward(thresholds, z, labels, tau_m, tau_r, margin, *, tying, differentiated):
    """The family's forward pass along ``_plan``'s paths (a value-only call: its loss alone)."""
    plan = _plan(tying, z.shape[-1], differentiated, thresholds)

    def run(path):
        return path if differentiated else lambda *ops: path(*ops).loss

    ops = (z, labels, tau_m, tau_r, margin)

    def beyond(*ops):
        masked_exact = _masked_is_exact(tau_m, tau_r, margin, z.shape[-1], z.dtype)
        return lax.cond(masked_exact, run(plan.large_margin), run(_rival_shifted), *ops)

    def small(*ops):
        return lax.cond(_fast_is_exact(tau_m, tau_r, margin, tying, _MARGIN_BOUND), run(plan.small_margin),
                        beyond, *ops)

    # m ≤ 0 first: its predicate stays unbatched under a vmap over temperatures (a real branch).
    return lax.cond(_fast_is_exact(tau_m, tau_r, margin, tying, 0.0), run(plan.no_margin), small, *ops)


def _loss_only(thresholds, *ops, tying):
    return _forward(thresholds, *ops, tying=tying, differentiated=False)


@functools.partial(jax.custom_jvp, nondiff_argnums=(5,))
def _family_core(z, labels, tau_m, tau_r, margin, tying):
    return _per_backend(functools.partial(_loss_only, tying=tying), z, labels, tau_m, tau_r, margin)


def _dense_tangent(z, labels, f: Forward, dloss_du, tau_m, dz):
    """``Σ_i ∂L/∂z_i·dz_i`` through one [B, C] gradient, ``dL/du·(softmax(rivals/τm) − onehot)`` (the
    arg-max at τm = 0), on the masked forward pass's exps."""
    smooth_m = tau_m > 0
    is_target = _is_target(z, labels)
    hard_probs = (_classes(z) == _strongest_rival(z, labels, smooth_m)[..., None]).astype(z.dtype)
    probs = jnp.where(smooth_m[..., None], f.exps / f.total[..., None], hard_probs)
    grad = dloss_du[..., None] * (probs - is_target.astype(z.dtype))
    return jnp.sum(grad * dz, axis=-1)


def _picked_tangent(z, labels, f: Forward, dloss_du, tau_m, dz):
    """The same tangent as a dense term over all classes, on the forward pass's stored exps, plus
    corrections picked at the target and the arg-max rival (the picks transpose to one scatter)."""
    smooth_m = tau_m > 0
    # The exps are at most 1 except on rows with an infinite max (shift 0), whose weight is 0: the clamp
    # keeps exp(+inf) from meeting it, in the memory-bound product rather than the exp pass.
    exps = jnp.minimum(f.exps, 1.0)
    smooth_weight = jnp.where(smooth_m, dloss_du / f.total, 0.0)
    hard_weight = jnp.where(smooth_m, 0.0, dloss_du)
    picked = jnp.stack([_safe_labels(labels, z.shape[-1]), _strongest_rival(z, labels, smooth_m)], -1)
    # The target's own exp is taken out again, so that it nets to exactly −dL/du.
    weights = jnp.stack([-(smooth_weight * jnp.minimum(f.target_exp, 1.0) + dloss_du), hard_weight], -1)
    return smooth_weight * jnp.sum(exps * dz, axis=-1) + jnp.sum(
        weights * jnp.take_along_axis(dz, picked, axis=-1), axis=-1
    )


def _family_tangent(thresholds, z, labels, tau_m, tau_r, margin, dz, dtau_m, dtau_r, dmargin, *, tying):
    """Value and tangent; zero tangents come in as None and are skipped."""
    plan = _plan(tying, z.shape[-1], True, thresholds)
    f = _forward(thresholds, z, labels, tau_m, tau_r, margin, tying=tying, differentiated=True)
    dloss_du = _dloss_du(f.u, tau_r)
    dloss = jnp.zeros_like(f.loss)
    if dz is not None:
        dloss = dloss + plan.tangent(z, labels, f, dloss_du, tau_m, dz)
    if dmargin is not None:
        dloss = dloss + dloss_du * dmargin
    if dtau_m is not None:
        # d/dτ [τ·log Σ exp(x/τ)] is the entropy of softmax(x/τ); it is 0 at τ = 0. The forward pass's
        # exps with the target's term zeroed; zero entries are left out of the product, so no 0·inf (a
        # -inf rival) reaches higher derivatives.
        rival_exps = jnp.where(_is_target(z, labels), 0.0, f.exps)
        scaled = _scaled(z, f.shift, _safe_tau(tau_m))
        cross = jnp.sum(rival_exps * jnp.where(rival_exps > 0, scaled, 0.0), axis=-1) / f.total
        entropy = jnp.where(tau_m > 0, jnp.log(f.total) - cross, 0.0)
        dloss = dloss + dloss_du * entropy * dtau_m
    if dtau_r is not None:
        # d/dτ [τ·softplus(u/τ)] = softplus(u/τ) − (u/τ)·sigmoid(u/τ); 0 at τ = 0.
        x = _over_tau(f.u, tau_r)
        dloss = dloss + jnp.where(tau_r > 0, jax.nn.softplus(x) - x * jax.nn.sigmoid(x), 0.0) * dtau_r
    return f.loss, dloss


def _nonzero(tangent):
    return None if isinstance(tangent, SymbolicZero) else tangent


def _family_jvp(tying, primals, tangents):
    z, labels, tau_m, tau_r, margin = primals
    dz, _, dtau_m, dtau_r, dmargin = map(_nonzero, tangents)
    # None (a zero tangent) is an empty pytree: platform_dependent passes it through.
    return _per_backend(functools.partial(_family_tangent, tying=tying),
                        z, labels, tau_m, tau_r, margin, dz, dtau_m, dtau_r, dmargin)


_family_core.defjvp(_family_jvp, symbolic_zeros=True)


# --------------------------------------------------------------------------- the hard member


def _hard_forward(z, labels, margin):
    """The hinge and its rival max.

    With m ≤ 0 the plain max over all classes serves: it is the rival max unless the target attains it,
    and then the loss is 0 whatever the rival max. Any m > 0 takes the whole batch (a ``cond`` on a scalar
    of the margins alone, so no plain max is taken first) through the masked reduction.
    """
    masked = jnp.any(margin > 0)
    rival_max = lax.cond(masked, _rival_max, lambda z, labels: jnp.max(z, axis=-1), z, labels)
    u = rival_max - _target_logit(z, labels) + margin
    return jnp.maximum(u, 0.0), u, masked, rival_max


@jax.custom_jvp
def _hard_core(z, labels, margin):
    return _hard_forward(z, labels, margin)[0]


def _hard_jvp(primals, tangents):
    z, labels, margin = primals
    dz, _, dmargin = map(_nonzero, tangents)
    loss, u, masked, rival_max = _hard_forward(z, labels, margin)
    active = _dloss_du(u, jnp.zeros_like(u))
    dloss = jnp.zeros_like(loss)
    if dz is not None:
        # On active examples of the plain path the target is below the peak, so the first entry at the
        # peak is a rival; the masked path searches the masked logits its rival max came from.
        rival = lax.cond(masked, lambda z, labels: _first_index(_rivals(z, labels), rival_max),
                         lambda z, labels: _first_index(z, rival_max), z, labels)
        # Exactly one +1 (strongest rival) and one −1 (target) per active example, written densely as
        # selects: the transpose is one elementwise pass writing the gradient (README, "Benchmarks").
        classes = _classes(z)
        pair = jnp.where(classes == rival[..., None], dz, jnp.where(classes == labels[..., None], -dz, 0.0))
        dloss = dloss + active * jnp.sum(pair, axis=-1)
    if dmargin is not None:
        dloss = dloss + active * dmargin
    return loss, dloss


_hard_core.defjvp(_hard_jvp, symbolic_zeros=True)


# --------------------------------------------------------------------------- the losses


def _loss(member, logits, labels, tau_m, tau_r, margin, axis, where):
    """Check the arguments (before any work), then run the jitted loss: one dispatch per eager call."""
    logits = jnp.asarray(logits)
    axes = class_axes(axis, max(logits.ndim, 1))
    batch_shape = tuple(n for a, n in enumerate(logits.shape) if a not in axes)
    where = _check_where(where, logits.shape, batch_shape)
    example_mask = where if where is not None and where.ndim == len(batch_shape) else None
    logits, labels, axes = check_logits_labels(logits, labels, axis, example_mask)
    return _jitted_loss(logits, labels, tau_m, tau_r, margin, where, member=member, axes=axes)


@functools.partial(jax.jit, static_argnames=("member", "axes"))
def _jitted_loss(logits, labels, tau_m, tau_r, margin, where, *, member, axes):
    dtype = compute_dtype(logits.dtype)
    z = _classes_last(logits.astype(dtype), axes)
    labels = labels.astype(jnp.int32)
    shape = labels.shape
    example_mask = None
    if where is not None and where.ndim == len(shape):
        example_mask = jnp.broadcast_to(where, shape)
        # A masked example's label may be padding: it must not become a NaN that reaches the gradient.
        labels = jnp.where(example_mask, labels, 0)
    elif where is not None:
        class_mask = _classes_last(jnp.broadcast_to(where, logits.shape), axes)
        # A masked rival is a -inf logit; the target stays the target.
        z = jnp.where(class_mask | _is_target(z, labels), z, -jnp.inf)
    margin = _per_example(margin, shape, dtype, "margin")
    if member == "hard":
        loss = _hard_core(z, labels, margin)
    else:
        tau_m = _per_example(tau_m, shape, dtype, "temperature")
        tau_r = tau_m if member == "tied" else _per_example(tau_r, shape, dtype, "temperature")
        loss = _family_core(z, labels, tau_m, tau_r, margin, member)
    return loss if example_mask is None else jnp.where(example_mask, loss, 0.0)


def family_loss(logits, labels, *, max_temperature, relu_temperature, margin=0.0, axis=-1, where=None):
    """The general member: ``smooth_relu_{τr}(smooth_max_{τm}(z_i, i≠y) − z_y + m)``, per example.

    Args:
      logits: scores with ``C ≥ 2`` classes on ``axis``.
      labels: integer targets, of the logits' shape without ``axis``.
      max_temperature: τm ≥ 0 of the inner smooth max over the rivals (0: the hard max).
      relu_temperature: τr ≥ 0 of the outer smooth ReLU (0: the hinge ``max(u, 0)``).
      margin: m, added to the rival term; ``m > 0`` asks the target to win by m.
      axis: the class axis, or a tuple of axes (a label is then a flat index into that slice).
      where: an example mask (batch-shaped: masked examples give 0) or a class mask (logits-shaped: a
        masked rival is a ``-inf`` logit; the target is scored whether masked or not).

    Returns:
      The loss of each example, shape ``labels.shape``.
    """
    check_temperature(max_temperature, "max_temperature")
    check_temperature(relu_temperature, "relu_temperature")
    return _loss(None, logits, labels, max_temperature, relu_temperature, margin, axis, where)


def hard_loss(logits, labels, *, margin=0.0, axis=-1, where=None) -> jax.Array:
    """Multiclass hinge ``max(max_{i≠y} z_i − z_y + m, 0)``, per example.

    The multiclass perceptron at ``m = 0`` (zero on all-equal logits), Crammer–Singer's hinge at ``m = 1``.
    Its subgradient is +1 on the strongest rival (first index on ties) and −1 on the target of each
    example whose loss is positive, zero elsewhere. It needs no exponentials. ``axis`` and ``where`` as in
    :func:`family_loss`.
    """
    return _loss("hard", logits, labels, 0.0, 0.0, margin, axis, where)


def lse_loss(logits, labels, *, temperature=1.0, margin=0.0, axis=-1, where=None) -> jax.Array:
    """``max(τ·log Σ_{i≠y} exp(z_i/τ) − z_y + m, 0)``, per example: a smooth rival max, a hard hinge.

    Zero only when ``z_y − max_{i≠y} z_i ≥ m + implicit margin``, where the implicit margin
    ``smooth_max_τ(rivals) − max(rivals)`` lies in ``[0, τ·log(C−1)]``. Every rival gets gradient
    ``softmax(rivals/τ)`` on active examples; τ = 0 gives :func:`hard_loss`. ``axis`` and ``where`` as in
    :func:`family_loss`.
    """
    check_temperature(temperature)
    return _loss("hinge", logits, labels, temperature, 0.0, margin, axis, where)


def softmax_loss(logits, labels, *, temperature=1.0, margin=0.0, axis=-1, where=None) -> jax.Array:
    """``τ·log(1 + Σ_{i≠y} exp((z_i − z_y + m)/τ))``, per example.

    At τ = 1, m = 0 this is softmax cross-entropy (optax's, ``axis`` and ``where`` included, see
    :func:`family_loss`); with cosine logits, τ = 1/s and m > 0 it is AM-Softmax/CosFace. Its gradient is
    ``softmax((z + m·(1 − onehot))/τ) − onehot``; τ = 0 gives :func:`hard_loss`. Bounds:
    ``hard ≤ softmax ≤ hard + τ·log C``.
    """
    check_temperature(temperature)
    return _loss("tied", logits, labels, temperature, temperature, margin, axis, where)


def _hard_objective(logits, labels, *, temperature=0.0, margin=0.0, axis=-1, where=None):
    """The hard member as an objective: the temperature is accepted and ignored (it is always 0)."""
    del temperature
    return hard_loss(logits, labels, margin=margin, axis=axis, where=where)


Objective = Callable[..., jax.Array]

OBJECTIVES: dict[str, Objective] = {
    "hard": _hard_objective,
    "lse": lse_loss,
    "softmax": softmax_loss,
}


def objective(name: str) -> Objective:
    """The loss named ``hard``, ``lse`` or ``softmax``, as ``f(logits, labels, *, temperature, margin)``.

    ``hard`` accepts a temperature and ignores it, so that one config shape serves every objective.
    """
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ValueError(
            f"unknown objective {name!r}: choose one of {', '.join(sorted(OBJECTIVES))}"
        ) from None

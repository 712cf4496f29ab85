"""The smooth-max family of classification losses.

Classification asks the target logit to beat every rival: ``max(max_{i≠y} z_i − z_y, 0) = 0``.
The family smooths the two maxima of that objective, each with its own temperature::

    smooth_max_τ(x)  = τ·log Σ_i exp(x_i/τ)          (= max x   at τ = 0)
    smooth_relu_τ(u) = τ·log(1 + exp(u/τ))           (= max(u,0) at τ = 0)
    L(z, y) = smooth_relu_{τr}( smooth_max_{τm}(z_i, i≠y) − z_y + m )

Members: ``hard`` (τm = τr = 0), ``lse`` (τm = τ, τr = 0) and ``softmax`` (τm = τr = τ), which at τ = 1,
m = 0 is softmax cross-entropy.

Conventions shared by every loss here:

* logits ``[..., C]`` (any float dtype; bf16/fp16 are computed in float32), integer labels ``[...]``;
  the loss comes back per example, shape ``labels.shape``, float32 (float64 for float64 logits).
* temperature and margin are Python numbers or arrays broadcasting against ``labels.shape``. They are
  traced values: changing them never recompiles a jitted caller, and τ = 0 is exact, with finite
  gradients, also inside a ``vmap`` over temperatures.
* gradients come from hand-written JVP rules (one pass for the value, one for the gradient), so they are
  exact at τ = 0: the hard subgradient puts exactly one +1 (on the strongest rival, first index on ties)
  and one −1 (on the target) on each example whose loss is positive.
* a ``-inf`` rival has no effect, a ``-inf`` target gives ``+inf`` and NaN propagates.
* with concrete inputs, bad labels (out of ``[0, C)``, wrong shape, not integer), ``C < 2`` and negative or
  NaN temperatures raise ``ValueError``. Under ``jit`` the values cannot be checked: an out-of-range label
  gives NaN for that example (in its value and its gradient), never a plausible finite number.
"""

from __future__ import annotations

import functools
from typing import Callable

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


def check_logits_labels(logits, labels) -> tuple[jax.Array, jax.Array]:
    """Validate shapes and dtypes (always) and label values (when concrete); return JAX arrays."""
    logits = jnp.asarray(logits)
    labels = jnp.asarray(labels)
    if logits.ndim < 1:
        raise ValueError("logits must have a class axis: shape [..., C], got a scalar")
    num_classes = logits.shape[-1]
    if num_classes < 2:
        raise ValueError(f"logits need at least 2 classes (C >= 2), got C = {num_classes}")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
    if labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"labels shape {labels.shape} does not match logits shape {logits.shape}: "
            f"expected labels of shape {logits.shape[:-1]}"
        )
    if _is_concrete(labels) and labels.size:
        lab = np.asarray(labels)
        bad = (lab < 0) | (lab >= num_classes)
        if bad.any():
            raise ValueError(
                f"labels must lie in [0, {num_classes}) for C = {num_classes} classes; "
                f"got {int(lab[bad].ravel()[0])} ({int(bad.sum())} bad labels)"
            )
    return logits, labels


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


def smooth_max(x, temperature=1.0, axis: int = -1) -> jax.Array:
    """Smooth maximum ``τ·log Σ_i exp(x_i/τ)`` along ``axis``; exactly ``max(x)`` at ``τ = 0``.

    Bounds: ``max x ≤ smooth_max_τ(x) ≤ max x + τ·log n`` for ``n`` entries, with the upper bound reached
    when all entries tie. ``temperature`` broadcasts against the reduced shape. ``-inf`` entries are
    ignored; the result is ``-inf`` only if every entry is.
    """
    check_temperature(temperature)
    x = jnp.asarray(x)
    x = x.astype(compute_dtype(x.dtype))
    tau = jnp.asarray(temperature, x.dtype)
    peak = jnp.max(x, axis=axis)
    tau = jnp.broadcast_to(tau, jnp.broadcast_shapes(tau.shape, peak.shape))
    smooth = tau > 0
    safe_tau = jnp.where(smooth, tau, 1.0)
    # Shift by a finite peak so that exp never overflows and an all -inf row gives log(0) = -inf.
    shift = lax.stop_gradient(jnp.where(jnp.isfinite(peak), peak, 0.0))
    total = jnp.sum(
        jnp.exp((x - jnp.expand_dims(shift, axis)) / jnp.expand_dims(safe_tau, axis)), axis=axis
    )
    smooth_value = shift + safe_tau * jnp.log(total)
    return jnp.where(smooth, smooth_value, peak)


def smooth_relu(u, temperature=1.0) -> jax.Array:
    """Smooth ReLU (scaled softplus) ``τ·log(1 + exp(u/τ))``; exactly ``max(u, 0)`` at ``τ = 0``.

    Bounds: ``max(u, 0) ≤ smooth_relu_τ(u) ≤ max(u, 0) + τ·log 2``.
    """
    check_temperature(temperature)
    u = jnp.asarray(u)
    u = u.astype(compute_dtype(u.dtype))
    tau = jnp.asarray(temperature, u.dtype)
    smooth = tau > 0
    safe_tau = jnp.where(smooth, tau, 1.0)
    return jnp.where(smooth, safe_tau * jax.nn.softplus(u / safe_tau), jnp.maximum(u, 0.0))


# --------------------------------------------------------------------------- the family


def _rivals(z, labels):
    """The target mask, the logits with the target masked out, and the target logit.

    The target is masked with the most negative finite float rather than -inf: its exp still
    underflows to 0, and derivatives in τ of ``(masked − shift)/τ`` stay finite (no 0·inf).
    """
    classes = lax.broadcasted_iota(jnp.int32, z.shape, z.ndim - 1)
    is_target = classes == labels[..., None]
    rivals = jnp.where(is_target, jnp.finfo(z.dtype).min, z)
    return classes, is_target, rivals, _target_logit(z, labels)


def _rival_max(z, labels):
    """``max_{i≠y} z_i``: a reduction through the target mask, which XLA:CPU runs ~3x slower than a plain one."""
    return jnp.max(_rivals(z, labels)[2], axis=-1)


def _bad_label(labels, num_classes):
    return (labels < 0) | (labels >= num_classes)


def _first_index(z, value, exclude=None):
    """Index of the first entry of each row equal to ``value`` (skipping the class ``exclude``).

    Written as a float max-reduction over ``[z_i = value]·(C − i)``: XLA:CPU vectorises it, where an
    integer arg-max (a variadic reduction) runs several times slower.
    """
    num_classes = z.shape[-1]
    classes = lax.broadcasted_iota(jnp.int32, z.shape, z.ndim - 1)
    hit = z == value[..., None]
    if exclude is not None:
        hit = hit & (classes != exclude[..., None])
    score = jnp.max(hit.astype(z.dtype) * (num_classes - classes).astype(z.dtype), axis=-1)
    return jnp.clip(num_classes - score.astype(jnp.int32), 0, num_classes - 1)


def _pick(x, index):
    """``x[..., index]`` per example."""
    return jnp.take_along_axis(x, index[..., None], axis=-1)[..., 0]


def _safe_labels(labels, num_classes):
    """Labels clipped into ``[0, C)`` for indexing; an out-of-range label's loss is NaN'ed separately."""
    return jnp.clip(labels, 0, num_classes - 1)


def _target_logit(z, labels):
    """``z_y`` per example."""
    return _pick(z, _safe_labels(labels, z.shape[-1]))


def _scaled(x, shift, tau):
    """``(x − shift)/τ`` with a per-example shift and τ broadcast over the classes."""
    return (x - shift[..., None]) / tau[..., None]


# Up to this many classes a differentiated pass masks the target; above it the reductions run over the
# raw logits when exact and the gradient corrects the target by a pick (a scatter in the transpose).
# Either way the gradient reuses the exps of the forward pass. Measured on XLA:CPU: for few classes the
# per-example work and the scatter cost more than the masked [B, C] passes, for many classes far less.
_FEW_CLASSES = 32


def _skips_mask(num_classes, differentiated):
    """Whether the forward pass may take the unmasked rival sum where it is exact (a speed choice).

    Many classes: always. Few classes: only a value-only call; under differentiation the masked exps feed
    the dense gradient pass, which for few classes costs less than the per-example work and the scatter.
    """
    return num_classes > _FEW_CLASSES or not differentiated


def _exact_without_mask(tau_m, tau_r, margin, tying):
    """Whether the rival sum may be taken as (sum over all classes) − (target's term), for the whole batch.

    The subtraction loses the rival sum's low bits only on rows where the target holds the row max and
    its rivals are far below it (rival sum R ≪ 1 in units of the target's term). With m ≤ 0 such rows do
    not need them: under a hinge (τr = 0) their loss is exactly 0 (u = τm·log R + m < 0), and under a
    smooth ReLU with τr ≤ τm the loss ``τr·log(1 + R^{τm/τr}·e^{m/τr})`` keeps an absolute error below
    τr·eps, as softmax cross-entropy computed by log-sum-exp does. Everywhere else a masked sum is needed.
    ``tying`` ("hinge": τr ≡ 0, "tied": τr ≡ τm) keeps the temperatures out of the predicate, so that
    a vmap over temperatures leaves it unbatched: a real branch, not a select of both.
    """
    exact = margin <= 0
    if tying is None:
        exact = exact & ((tau_r == 0) | (tau_m >= tau_r))
    return jnp.all(exact)


def _shifted_exps(z, safe_tau):
    """Row max, the shift (that max where finite, else 0) and ``exp((z − shift)/τ)`` over all classes."""
    peak = jnp.max(z, axis=-1)
    shift = jnp.where(jnp.isfinite(peak), peak, 0.0)
    return peak, shift, jnp.exp(_scaled(z, shift, safe_tau))


def _unmasked_rival_sums(z, labels, target, safe_tau_m, differentiated):
    """Shift, ``Σ_{i≠y} exp((z_i − shift)/τm)``, the row max standing in for the rival max, the exps and
    the target's exp.

    The rival sum is the sum over all classes minus the target's term: both row reductions run over the
    raw logits, which XLA:CPU fuses into its library reductions as in log-sum-exp, and the exps (all
    classes, the target's too) are stored once for the gradient, as in optax's cross-entropy. The row max
    differs from the rival max only where the target holds it, and there ``_exact_without_mask``
    guarantees the hinge is inactive.
    """
    peak, shift, exps = _shifted_exps(z, safe_tau_m)
    if differentiated:
        # Picked from the stored exps before the sum: the gradient takes exactly this term out again, and
        # the exps die at the gradient's product (XLA then writes them into the gradient's own buffer).
        target_exp = _pick(exps, _safe_labels(labels, z.shape[-1]))
    else:
        # No pick: XLA:CPU fuses the exps into its library reduction and never stores them.
        target_exp = jnp.exp((target - shift) / safe_tau_m)
    # A +inf target would give inf − inf: nothing finite beats it, as on the masked path.
    rival_total = jnp.where(target == jnp.inf, 0.0, jnp.maximum(jnp.sum(exps, axis=-1) - target_exp, 0.0))
    return shift, rival_total, peak, exps, target_exp


def _masked_rival_sums(z, labels, safe_tau_m):
    """Shift, ``Σ_{i≠y} exp((z_i − shift)/τm)``, the rival max, the exps and the target's (0), through
    the target mask: exact always; XLA:CPU materialises the masked logits as an extra [B, C] pass."""
    rivals = _rivals(z, labels)[2]
    rival_max = jnp.max(rivals, axis=-1)
    shift = jnp.where(jnp.isfinite(rival_max), rival_max, 0.0)
    exps = jnp.exp(_scaled(rivals, shift, safe_tau_m))
    return shift, jnp.sum(exps, axis=-1), rival_max, exps, jnp.zeros_like(shift)


def _family_value(z, labels, tau_m, tau_r, margin, tying, *, skip_mask, differentiated):
    """Forward pass of the family; also returns the intermediates the JVP rule reuses."""
    target = _target_logit(z, labels)
    smooth_m = tau_m > 0
    safe_tau_m = jnp.where(smooth_m, tau_m, 1.0)
    if skip_mask:
        shift, total, rival_max, exps, target_exp = lax.cond(
            _exact_without_mask(tau_m, tau_r, margin, tying),
            lambda: _unmasked_rival_sums(z, labels, target, safe_tau_m, differentiated),
            lambda: _masked_rival_sums(z, labels, safe_tau_m),
        )
    else:
        shift, total, rival_max, exps, target_exp = _masked_rival_sums(z, labels, safe_tau_m)
    # All rivals -inf: total = 0, log 0 = -inf and the rival max is -inf in both branches.
    rival_smax = jnp.where(smooth_m, shift + tau_m * jnp.log(total), rival_max)
    u = rival_smax - target + margin
    smooth_r = tau_r > 0
    safe_tau_r = jnp.where(smooth_r, tau_r, 1.0)
    scaled_u = u / safe_tau_r
    loss = jnp.where(smooth_r, tau_r * jax.nn.softplus(scaled_u), jnp.maximum(u, 0.0))
    bad = _bad_label(labels, z.shape[-1])
    loss = jnp.where(bad, jnp.nan, loss)
    parts = dict(
        target=target, rival_max=rival_max, shift=shift, smooth_m=smooth_m, safe_tau_m=safe_tau_m,
        total=total, exps=exps, target_exp=target_exp, smooth_r=smooth_r, scaled_u=scaled_u, u=u, bad=bad,
    )
    return loss, parts


def _tied_value_by_log_sum_exp(z, labels, tau, margin):
    """The softmax member (τr = τm = τ) for m ≤ 0 as one log-sum-exp over all classes.

    With the row max s, ``S = Σ_i exp((z_i − s)/τ)`` over all classes, ``a = m/τ ≤ 0`` and
    ``b = (z_y − s)/τ ≤ 0``::

        L = τ·log(1 + e^a·(S − e^b)/e^b) = s + τ·log(e^a·S + (1 − e^a)·e^b) − z_y

    Both terms are ≥ 0, so nothing cancels; at m = 0 this is cross-entropy by log-sum-exp (absolute
    error τ·eps where the target dominates). The two per-example exps are taken relative to
    ``d = max(a, b)``, so that a large negative margin and a far-behind target cannot underflow together.
    This drops the per-example softplus of the general form, which for few classes costs as much as the
    reductions. At τ = 0 the loss is the hinge over the row max, exact for m ≤ 0 (a target at the peak
    gives 0 either way).
    """
    target = _target_logit(z, labels)
    smooth = tau > 0
    safe_tau = jnp.where(smooth, tau, 1.0)
    # Not _unmasked_rival_sums: its per-example target term and subtraction, fused by XLA:CPU into the
    # reduction, made this value 1.4x slower for 10 classes.
    peak, shift, exps = _shifted_exps(z, safe_tau)
    total = jnp.sum(exps, axis=-1)

    def with_margin():
        a = margin / safe_tau
        b = (target - shift) / safe_tau
        d = jnp.maximum(a, b)
        return d, jnp.exp(a - d) * total - jnp.expm1(a) * jnp.exp(b - d)

    # No margin (cross-entropy itself, the common case): a scalar cond skips three per-example
    # transcendentals, which cost ~5 % of the whole loss for 10 classes.
    d, inner = lax.cond(jnp.all(margin == 0), lambda: (jnp.zeros_like(total), total), with_margin)
    smooth_loss = shift + tau * (d + jnp.log(inner)) - target
    # A +inf target beats every finite rival (the formula would give inf − inf).
    smooth_loss = jnp.where(target == jnp.inf, 0.0, smooth_loss)
    loss = jnp.where(smooth, smooth_loss, jnp.maximum(peak - target + margin, 0.0))
    return jnp.where(_bad_label(labels, z.shape[-1]), jnp.nan, loss)


@functools.partial(jax.custom_jvp, nondiff_argnums=(5,))
def _family_core(z, labels, tau_m, tau_r, margin, tying):
    def value(skip_mask):
        return _family_value(z, labels, tau_m, tau_r, margin, tying, skip_mask=skip_mask, differentiated=False)[0]

    if tying == "tied":
        # Where exact, the softmax member is one log-sum-exp: no rival sum and no softplus.
        return lax.cond(
            _exact_without_mask(tau_m, tau_r, margin, tying),
            lambda: _tied_value_by_log_sum_exp(z, labels, tau_m, margin),
            lambda: value(skip_mask=False),
        )
    return value(skip_mask=_skips_mask(z.shape[-1], differentiated=False))


def _dense_rival_tangent(z, labels, p, dloss_du, safe_total, dz):
    """``Σ_i ∂L/∂z_i·dz_i`` through one [B, C] gradient, ``dL/du·(softmax(rivals/τm) − onehot)`` (the
    arg-max at τm = 0), on the masked forward pass's exps."""
    classes, is_target, _, _ = _rivals(z, labels)
    rival_probs = p["exps"] / safe_total[..., None]
    first = _first_rival(z, labels, p["smooth_m"])
    hard_probs = (classes == first[..., None]).astype(z.dtype)
    probs = jnp.where(p["smooth_m"][..., None], rival_probs, hard_probs)
    grad = dloss_du[..., None] * (probs - is_target.astype(z.dtype))
    return jnp.sum(grad * dz, axis=-1)


def _picked_rival_tangent(z, labels, p, dloss_du, safe_total, dz):
    """The same tangent as a dense term over all classes, on the forward pass's stored exps, plus
    corrections picked at the target and the arg-max rival.

    A mask on iota == y in the [B, C] pass runs 2.5x slower on XLA:CPU than a plain product for many
    classes; the picks transpose to one scatter into the dense gradient (as in optax's cross-entropy).
    """
    # The exps are at most 1 except on rows with an infinite max (shift 0), whose weight is 0: the clamp
    # keeps exp(+inf) from meeting it, in the memory-bound product rather than the exp pass.
    exps = jnp.minimum(p["exps"], 1.0)
    smooth_weight = jnp.where(p["smooth_m"], dloss_du / safe_total, 0.0)
    hard_weight = jnp.where(p["smooth_m"], 0.0, dloss_du)
    target = _safe_labels(labels, z.shape[-1])
    picked = jnp.stack([target, _first_rival(z, labels, p["smooth_m"])], -1)
    # The target's own exp is taken out again, so that it nets to exactly −dL/du.
    weights = jnp.stack([-(smooth_weight * jnp.minimum(p["target_exp"], 1.0) + dloss_du), hard_weight], -1)
    return smooth_weight * jnp.sum(exps * dz, axis=-1) + jnp.sum(
        weights * jnp.take_along_axis(dz, picked, axis=-1), axis=-1
    )


def _first_rival(z, labels, smooth_m):
    """``_first_rival_index`` of values outside differentiation (an index has no derivative)."""
    return _first_rival_index(lax.stop_gradient(z), labels, lax.stop_gradient(smooth_m))


@jax.custom_batching.custom_vmap
def _first_rival_index(z, labels, smooth_m):
    """The first rival at the rival max, for examples with τm = 0; skipped (a cond on a scalar) when none has.

    The index reads only z and labels; its vmap rule keeps the predicate a scalar (any hard example in any
    member), so a vmap over temperatures runs this pass once, or not at all, rather than once per member
    (a cond with a batched predicate runs both branches on every member).
    """
    return lax.cond(
        jnp.all(smooth_m),
        lambda: jnp.zeros(labels.shape, jnp.int32),
        lambda: _first_index(z, _rival_max(z, labels), exclude=labels),
    )


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


def _family_jvp(tying, primals, tangents):
    z, labels, tau_m, tau_r, margin = primals
    dz, _, dtau_m, dtau_r, dmargin = tangents
    skip_mask = _skips_mask(z.shape[-1], differentiated=True)
    loss, p = _family_value(z, labels, tau_m, tau_r, margin, tying, skip_mask=skip_mask, differentiated=True)
    # dL/du of the outer smooth ReLU: sigmoid(u/τr), or the step u > 0 at τr = 0.
    dloss_du = jnp.where(p["smooth_r"], jax.nn.sigmoid(p["scaled_u"]), (p["u"] > 0).astype(z.dtype))
    dloss_du = jnp.where(p["bad"], jnp.nan, dloss_du)
    dloss = jnp.zeros_like(loss)
    safe_total = jnp.where(p["total"] > 0, p["total"], 1.0)
    if not isinstance(dz, SymbolicZero):
        # dLSE/dz over the rivals: softmax(rivals/τm), or the first arg-max at τm = 0.
        rival_tangent = _picked_rival_tangent if skip_mask else _dense_rival_tangent
        dloss = dloss + rival_tangent(z, labels, p, dloss_du, safe_total, dz)
    if not isinstance(dmargin, SymbolicZero):
        dloss = dloss + dloss_du * dmargin
    if not isinstance(dtau_m, SymbolicZero):
        # d/dτ [τ·log Σ exp(x/τ)] is the entropy of softmax(x/τ); it is 0 at τ = 0.
        # The forward pass's exps, with the target's term (present on the unmasked path) zeroed; zero
        # entries are left out of the product, so no 0·inf reaches higher derivatives.
        _, is_target, _, _ = _rivals(z, labels)
        rival_exps = jnp.where(is_target, 0.0, p["exps"])
        scaled = _scaled(z, p["shift"], p["safe_tau_m"])
        cross = jnp.sum(rival_exps * jnp.where(rival_exps > 0, scaled, 0.0), axis=-1) / safe_total
        entropy = jnp.where(p["smooth_m"], jnp.log(safe_total) - cross, 0.0)
        dloss = dloss + dloss_du * entropy * dtau_m
    if not isinstance(dtau_r, SymbolicZero):
        # d/dτ [τ·softplus(u/τ)] = softplus(u/τ) − (u/τ)·sigmoid(u/τ); 0 at τ = 0.
        x = p["scaled_u"]
        dtau = jnp.where(p["smooth_r"], jax.nn.softplus(x) - x * jax.nn.sigmoid(x), 0.0)
        dloss = dloss + dtau * dtau_r
    return loss, dloss


_family_core.defjvp(_family_jvp, symbolic_zeros=True)


def _hard_value(z, labels, margin):
    """Forward pass of the hinge, with what its JVP rule reuses.

    The rival max equals the plain max over all classes whenever the target does not attain it; when it
    does and m ≤ 0 the loss is 0 whatever the rival max. Only a target at the top with m > 0 needs the
    masked reduction (a ``cond`` on a scalar takes the whole batch through it).
    """
    target = _target_logit(z, labels)
    peak = jnp.max(z, axis=-1)
    needs_rival_max = jnp.any((target >= peak) & (margin > 0))
    rival_max = lax.cond(needs_rival_max, lambda: _rival_max(z, labels), lambda: peak)
    u = rival_max - target + margin
    bad = _bad_label(labels, z.shape[-1])
    loss = jnp.where(bad, jnp.nan, jnp.maximum(u, 0.0))
    return loss, (needs_rival_max, rival_max, u, bad)


@jax.custom_jvp
def _hard_core(z, labels, margin):
    return _hard_value(z, labels, margin)[0]


def _hard_jvp(primals, tangents):
    z, labels, margin = primals
    dz, _, dmargin = tangents
    loss, (needs_rival_max, rival_max, u, bad) = _hard_value(z, labels, margin)
    active = jnp.where(bad, jnp.nan, (u > 0).astype(z.dtype))
    dloss = jnp.zeros_like(loss)
    if not isinstance(dz, SymbolicZero):
        # On active examples of the fast path the target is below the peak, so the first entry at the
        # peak is a rival: no mask needed.
        rival = lax.cond(needs_rival_max, lambda: _first_index(z, rival_max, exclude=labels),
                         lambda: _first_index(z, rival_max))
        # Exactly one +1 (strongest rival) and one −1 (target) per active example. Written densely as
        # selects: the transpose is one elementwise pass writing the gradient, where picks transpose to a
        # zero-filled buffer plus scatters, and a difference of one-hots to converts and a subtraction
        # (each measured 1.2-1.3x slower on XLA:CPU).
        classes = lax.broadcasted_iota(jnp.int32, z.shape, z.ndim - 1)
        pair = jnp.where(classes == rival[..., None], dz, jnp.where(classes == labels[..., None], -dz, 0.0))
        dloss = dloss + active * jnp.sum(pair, axis=-1)
    if not isinstance(dmargin, SymbolicZero):
        dloss = dloss + active * dmargin
    return loss, dloss


_hard_core.defjvp(_hard_jvp, symbolic_zeros=True)


def family_loss(logits, labels, *, max_temperature, relu_temperature, margin=0.0) -> jax.Array:
    """The general member: ``smooth_relu_{τr}(smooth_max_{τm}(z_i, i≠y) − z_y + m)``, per example.

    Args:
      logits: ``[..., C]`` scores, ``C ≥ 2``.
      labels: integer targets of shape ``logits.shape[:-1]``.
      max_temperature: τm ≥ 0 of the inner smooth max over the rivals (0: the hard max).
      relu_temperature: τr ≥ 0 of the outer smooth ReLU (0: the hinge ``max(u, 0)``).
      margin: m, added to the rival term; ``m > 0`` asks the target to win by m.

    Returns:
      The loss of each example, shape ``labels.shape``.
    """
    return _family(logits, labels, max_temperature, relu_temperature, margin, tying=None)


def _family(logits, labels, max_temperature, relu_temperature, margin, tying):
    """``family_loss`` with the relation of τr to τm that the caller knows: None, "hinge" or "tied"."""
    logits, labels = check_logits_labels(logits, labels)
    check_temperature(max_temperature, "max_temperature")
    check_temperature(relu_temperature, "relu_temperature")
    dtype = compute_dtype(logits.dtype)
    shape = labels.shape
    return _family_core(
        logits.astype(dtype),
        labels.astype(jnp.int32),
        _per_example(max_temperature, shape, dtype, "max_temperature"),
        _per_example(relu_temperature, shape, dtype, "relu_temperature"),
        _per_example(margin, shape, dtype, "margin"),
        tying,
    )


def hard_loss(logits, labels, *, margin=0.0) -> jax.Array:
    """Multiclass hinge ``max(max_{i≠y} z_i − z_y + m, 0)``, per example.

    The multiclass perceptron at ``m = 0`` (zero on all-equal logits), Crammer–Singer's hinge at ``m = 1``.
    Its subgradient is +1 on the strongest rival (first index on ties) and −1 on the target of each
    example whose loss is positive, zero elsewhere. It needs no exponentials.
    """
    logits, labels = check_logits_labels(logits, labels)
    dtype = compute_dtype(logits.dtype)
    return _hard_core(
        logits.astype(dtype),
        labels.astype(jnp.int32),
        _per_example(margin, labels.shape, dtype, "margin"),
    )


def lse_loss(logits, labels, *, temperature=1.0, margin=0.0) -> jax.Array:
    """``max(τ·log Σ_{i≠y} exp(z_i/τ) − z_y + m, 0)``, per example: a smooth rival max, a hard hinge.

    Zero only when ``z_y − max_{i≠y} z_i ≥ m + implicit margin``, where the implicit margin
    ``smooth_max_τ(rivals) − max(rivals)`` lies in ``[0, τ·log(C−1)]``. Every rival gets gradient
    ``softmax(rivals/τ)`` on active examples; τ = 0 gives :func:`hard_loss`.
    """
    check_temperature(temperature)
    return _family(logits, labels, temperature, 0.0, margin, tying="hinge")


def softmax_loss(logits, labels, *, temperature=1.0, margin=0.0) -> jax.Array:
    """``τ·log(1 + Σ_{i≠y} exp((z_i − z_y + m)/τ))``, per example.

    At τ = 1, m = 0 this is softmax cross-entropy; with cosine logits, τ = 1/s and m > 0 it is
    AM-Softmax/CosFace. Its gradient is ``softmax((z + m·(1 − onehot))/τ) − onehot``; τ = 0 gives
    :func:`hard_loss`. Bounds: ``hard ≤ softmax ≤ hard + τ·log C``.
    """
    check_temperature(temperature)
    return _family(logits, labels, temperature, temperature, margin, tying="tied")


def _hard_objective(logits, labels, *, temperature=0.0, margin=0.0):
    """The hard member as an objective: the temperature is accepted and ignored (it is always 0)."""
    del temperature
    return hard_loss(logits, labels, margin=margin)


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

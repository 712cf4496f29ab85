"""The loss family against an independent float64 NumPy reference, plus limits, gradients and bad input."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

import smoothmax as sm

# --------------------------------------------------------------------------- float64 reference


def ref_smooth_max(x, tau):
    x = np.asarray(x, np.float64)
    peak = x.max(-1)
    if tau == 0:
        return peak
    return peak + tau * np.log(np.exp((x - peak[..., None]) / tau).sum(-1))


def ref_smooth_relu(u, tau):
    u = np.asarray(u, np.float64)
    return np.maximum(u, 0) if tau == 0 else tau * np.logaddexp(0.0, u / tau)


def ref_rivals(z, y):
    z = np.asarray(z, np.float64)
    mask = np.arange(z.shape[-1]) == np.asarray(y)[..., None]
    return np.where(mask, -np.inf, z), np.take_along_axis(z, np.asarray(y)[..., None], -1)[..., 0]


def ref_family(z, y, tau_m, tau_r, m):
    rivals, target = ref_rivals(z, y)
    return ref_smooth_relu(ref_smooth_max(rivals, tau_m) - target + m, tau_r)


def random_problem(seed, batch, classes, scale):
    rng = np.random.default_rng(seed)
    z = (rng.standard_normal((batch, classes)) * scale).astype(np.float32)
    y = rng.integers(0, classes, batch).astype(np.int32)
    return z, y


def tolerance(z, tau):
    # float32 rounding of values of size |z|, divided and multiplied back by τ in the exponent.
    return 1e-5 * (1.0 + np.abs(z).max()) + 1e-6 * tau * np.log(z.shape[-1])


problems = st.tuples(
    st.integers(0, 2**31 - 1),                      # seed
    st.integers(1, 17),                             # batch
    st.sampled_from([2, 3, 10, 100, 1000]),         # classes
    st.sampled_from([0.1, 1.0, 10.0, 300.0]),       # logit scale
)
temperatures = st.sampled_from([0.0, 1e-3, 0.03, 0.3, 1.0, 4.0])
margins = st.sampled_from([-0.5, 0.0, 0.35, 1.0])


@settings(max_examples=60, deadline=None)
@given(problems, temperatures, temperatures, margins)
def test_family_matches_reference(problem, tau_m, tau_r, m):
    z, y = random_problem(*problem)
    got = sm.family_loss(z, y, max_temperature=tau_m, relu_temperature=tau_r, margin=m)
    want = ref_family(z, y, tau_m, tau_r, m)
    assert got.shape == y.shape and got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=tolerance(z, max(tau_m, tau_r)))


@settings(max_examples=40, deadline=None)
@given(problems, temperatures, margins)
def test_members_match_reference(problem, tau, m):
    z, y = random_problem(*problem)
    atol = tolerance(z, tau)
    np.testing.assert_allclose(sm.hard_loss(z, y, margin=m), ref_family(z, y, 0, 0, m), rtol=1e-5, atol=atol)
    np.testing.assert_allclose(
        sm.lse_loss(z, y, temperature=tau, margin=m), ref_family(z, y, tau, 0, m), rtol=1e-5, atol=atol
    )
    np.testing.assert_allclose(
        sm.softmax_loss(z, y, temperature=tau, margin=m), ref_family(z, y, tau, tau, m), rtol=1e-5, atol=atol
    )
    for name in ("lse", "softmax"):
        np.testing.assert_array_equal(
            sm.objective(name)(z, y, temperature=tau, margin=m),
            getattr(sm, f"{name}_loss")(z, y, temperature=tau, margin=m),
        )
    np.testing.assert_array_equal(sm.objective("hard")(z, y, temperature=tau, margin=m), sm.hard_loss(z, y, margin=m))


@settings(max_examples=40, deadline=None)
@given(problems, temperatures)
def test_smooth_max_and_relu_match_reference_and_bounds(problem, tau):
    z, _ = random_problem(*problem)
    got = np.asarray(sm.smooth_max(z, tau), np.float64)
    atol = tolerance(z, tau)
    np.testing.assert_allclose(got, ref_smooth_max(z, tau), rtol=1e-5, atol=atol)
    n = z.shape[-1]
    assert np.all(got >= z.max(-1) - atol) and np.all(got <= z.max(-1) + tau * np.log(n) + atol)
    relu = np.asarray(sm.smooth_relu(z, tau), np.float64)
    np.testing.assert_allclose(relu, ref_smooth_relu(z, tau), rtol=1e-5, atol=atol)
    assert np.all(relu >= np.maximum(z, 0) - atol) and np.all(relu <= np.maximum(z, 0) + tau * np.log(2) + atol)


def test_smooth_max_upper_bound_is_reached_on_ties():
    x = jnp.full((3, 7), 2.5)
    np.testing.assert_allclose(sm.smooth_max(x, 0.5), 2.5 + 0.5 * np.log(7), rtol=1e-6)
    np.testing.assert_allclose(sm.smooth_max(x, 0.5, axis=0), 2.5 + 0.5 * np.log(3), rtol=1e-6)


@settings(max_examples=30, deadline=None)
@given(problems, temperatures, margins)
def test_sandwich_bounds(problem, tau, m):
    z, y = random_problem(*problem)
    n = z.shape[-1]
    atol = tolerance(z, tau)
    hard = np.asarray(sm.hard_loss(z, y, margin=m))
    lse = np.asarray(sm.lse_loss(z, y, temperature=tau, margin=m))
    soft = np.asarray(sm.softmax_loss(z, y, temperature=tau, margin=m))
    assert np.all(hard <= lse + atol) and np.all(lse <= hard + tau * np.log(n - 1) + atol)
    assert np.all(hard <= soft + atol) and np.all(soft <= hard + tau * np.log(n) + atol)


def test_softmax_member_is_cross_entropy_at_unit_temperature():
    z, y = random_problem(0, 64, 10, 5.0)
    np.testing.assert_allclose(
        sm.softmax_loss(z, y), optax.softmax_cross_entropy_with_integer_labels(z, y), rtol=1e-5, atol=1e-5
    )


def test_hard_is_perceptron_and_crammer_singer():
    z, y = random_problem(1, 32, 10, 2.0)
    np.testing.assert_allclose(sm.hard_loss(z, y), optax.losses.multiclass_perceptron_loss(z, y), atol=1e-6)
    np.testing.assert_allclose(sm.hard_loss(z, y, margin=1.0), optax.losses.multiclass_hinge_loss(z, y), atol=1e-6)


def test_zero_loss_on_all_equal_logits_only_for_hard_at_zero_margin():
    z = jnp.zeros((4, 10))
    y = jnp.arange(4)
    np.testing.assert_array_equal(sm.hard_loss(z, y), 0.0)
    np.testing.assert_allclose(sm.lse_loss(z, y, temperature=0.1), 0.1 * np.log(9), rtol=1e-6)
    np.testing.assert_allclose(sm.softmax_loss(z, y, temperature=0.1), 0.1 * np.log(10), rtol=1e-6)


@pytest.mark.parametrize("name", ["lse", "softmax"])
def test_continuity_at_zero_temperature(name):
    z, y = random_problem(2, 50, 10, 1.0)
    loss = sm.objective(name)
    at_zero = np.asarray(loss(z, y, temperature=0.0, margin=0.2))
    for tau in (1e-2, 1e-3, 1e-4, 1e-6):
        gap = np.abs(np.asarray(loss(z, y, temperature=tau, margin=0.2)) - at_zero)
        assert gap.max() <= tau * np.log(10) + 1e-6


def test_two_classes_limit():
    # With one rival the smooth max is exact: lse = hard at every τ; softmax = τ·softplus((z_r − z_y + m)/τ).
    z, y = random_problem(3, 40, 2, 3.0)
    u = z[np.arange(40), 1 - y] - z[np.arange(40), y] + 0.5
    for tau in (0.0, 0.1, 1.0, 3.0):
        np.testing.assert_allclose(sm.lse_loss(z, y, temperature=tau, margin=0.5), np.maximum(u, 0), atol=1e-6)
        np.testing.assert_allclose(
            sm.softmax_loss(z, y, temperature=tau, margin=0.5), ref_smooth_relu(u, tau), atol=1e-5
        )
        np.testing.assert_array_equal(sm.implicit_margin(z, y, temperature=tau), 0.0)


# --------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("tau", [0.05, 0.5, 2.0])
def test_softmax_gradient_is_softmax_minus_onehot(tau):
    z, y = random_problem(4, 16, 10, 3.0)
    m = 0.3
    grad = jax.grad(lambda z: sm.softmax_loss(z, y, temperature=tau, margin=m).sum())(z)
    onehot = np.eye(10)[y]
    shifted = (z.astype(np.float64) + m * (1 - onehot)) / tau
    probs = np.exp(shifted - shifted.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    np.testing.assert_allclose(grad, probs - onehot, atol=1e-6)


def ref_family_grad(z, y, tau_m, tau_r, m):
    """dL/dz in float64: dL/du · (softmax_τm(rivals) − onehot), the first arg-max at τm = 0."""
    rivals, target = ref_rivals(z, y)
    u = ref_smooth_max(rivals, tau_m) - target + m
    dloss_du = (u > 0).astype(np.float64) if tau_r == 0 else np.exp(-np.logaddexp(0.0, -u / tau_r))
    if tau_m == 0:
        probs = np.eye(z.shape[-1])[np.argmax(rivals, -1)]
    else:
        scaled = (rivals - rivals.max(-1, keepdims=True)) / tau_m
        probs = np.exp(scaled) / np.exp(scaled).sum(-1, keepdims=True)
    return dloss_du[..., None] * (probs - np.eye(z.shape[-1])[y])


# Both sides of losses._FEW_CLASSES: few classes always mask the target; many classes reduce over the raw
# logits when that is exact (m <= 0) and mask otherwise. A target far ahead of its rivals is where the
# unmasked rival sum would lose all its bits; with m > 0 that loss would still be positive.
@pytest.mark.parametrize("classes", [10, 100])
@pytest.mark.parametrize("m", [-0.5, 0.0, 1.0])
@pytest.mark.parametrize("name", ["lse", "softmax"])
def test_dominant_targets_are_exact_on_every_path(name, m, classes):
    rng = np.random.default_rng(21)
    lead = [0.9, 50.0, 0.97, 3.0, 0.0, -2.0]  # target minus its best rival
    z = rng.standard_normal((len(lead), classes)).astype(np.float32)
    y = rng.integers(0, classes, len(lead))
    for i, gap in enumerate(lead):
        z[i, y[i]] = np.max(np.delete(z[i], y[i])) + gap
    tau = 0.03
    tau_r = tau if name == "softmax" else 0.0
    loss = functools.partial(sm.objective(name), labels=jnp.asarray(y), temperature=tau, margin=m)
    np.testing.assert_allclose(loss(z), ref_family(z, y, tau, tau_r, m), rtol=1e-5, atol=1e-6)
    grad = jax.grad(lambda z: loss(z).sum())(jnp.asarray(z))
    np.testing.assert_allclose(grad, ref_family_grad(z, y, tau, tau_r, m), rtol=1e-5, atol=1e-6)
    if m > 0:
        assert loss(z)[0] > 0.09  # ahead by 0.9 < m: the hinge is still active


# The softmax member's value-only path for m <= 0 is one log-sum-exp over all classes, with a scalar cond
# for m = 0; a traced margin takes every branch at run time. A margin far below 0 together with a target
# far behind makes both per-example terms underflow unless they are rescaled.
@pytest.mark.parametrize("tau", [1e-3, 0.3])
def test_softmax_value_under_a_traced_margin(tau):
    rng = np.random.default_rng(5)
    z = (rng.standard_normal((6, 10)) * 3).astype(np.float32)
    y = rng.integers(0, 10, 6)
    z[0, y[0]] = z[0].max() + 2.0  # target ahead
    z[1, y[1]] = z[1].min() - 5.0  # target far behind
    loss = jax.jit(lambda z, m: sm.softmax_loss(z, jnp.asarray(y), temperature=tau, margin=m))
    for m in [0.0, -0.5, -40.0, 0.35]:
        np.testing.assert_allclose(loss(z, m), ref_family(z, y, tau, tau, m), rtol=1e-5, atol=tolerance(z, tau))
    per_example = np.array([0.0, -40.0, -0.5, 0.0, 0.0, -1e-3], np.float32)
    np.testing.assert_allclose(
        loss(z, per_example), ref_family(z, y, tau, tau, per_example), rtol=1e-5, atol=tolerance(z, tau)
    )


@pytest.mark.parametrize("classes", [10, 100])
@pytest.mark.parametrize("name", ["lse", "softmax"])
def test_plus_inf_target_beats_finite_rivals(name, classes):
    z = np.random.default_rng(3).standard_normal((2, classes)).astype(np.float32)
    z[0, 1] = np.inf
    y = jnp.array([1, 0])
    loss = functools.partial(sm.objective(name), labels=y, temperature=0.5)
    assert loss(z)[0] == 0.0 and np.isfinite(loss(z)[1])
    grad = jax.grad(lambda z: loss(z).sum())(jnp.asarray(z))
    assert np.all(grad[0] == 0) and np.all(np.isfinite(grad))


def test_hard_subgradient_is_one_pair_with_first_index_ties():
    z = jnp.array([[0.0, 0.0, 0.0, 0.0], [1.0, 3.0, 3.0, 0.0], [5.0, 1.0, 1.0, 0.0], [2.0, 2.0, 2.0, 2.0]])
    y = jnp.array([3, 0, 0, 1])
    grad = jax.grad(lambda z: sm.hard_loss(z, y, margin=1.0).sum())(z)
    np.testing.assert_array_equal(
        grad,
        [[-0.0 + 1, 0, 0, -1], [-1, 1, 0, 0], [0, 0, 0, 0], [1, -1, 0, 0]],
    )
    # At m = 0, all-equal logits have zero loss and zero gradient.
    np.testing.assert_array_equal(jax.grad(lambda z: sm.hard_loss(z, y).sum())(jnp.zeros((4, 4))), 0.0)


def test_lse_gradient_reaches_every_rival():
    z, y = random_problem(5, 8, 10, 0.1)  # small logits: every example is active
    grad = np.asarray(jax.grad(lambda z: sm.lse_loss(z, y, temperature=1.0).sum())(z))
    rivals = np.arange(10) != y[:, None]
    assert np.all(grad[rivals] > 0) and np.allclose(grad.sum(-1), 0, atol=1e-6)
    np.testing.assert_allclose(grad[~rivals], -1.0, atol=1e-6)
    hard_grad = np.asarray(jax.grad(lambda z: sm.lse_loss(z, y, temperature=0.0, margin=1.0).sum())(z))
    assert np.all((hard_grad != 0).sum(-1) == 2)


@pytest.mark.parametrize(
    "loss",
    [
        lambda z, y, t, m: sm.family_loss(z, y, max_temperature=t, relu_temperature=0.7 * t, margin=m),
        lambda z, y, t, m: sm.softmax_loss(z, y, temperature=t, margin=m),
        lambda z, y, t, m: sm.lse_loss(z, y, temperature=t, margin=m),
    ],
)
# 7 classes go through the target mask; 40 classes through the unmasked sums for m < 0 and 0 < m <= τ·log 8
# (0.4 at τ = 0.6), and through the target mask beyond (2.0).
@pytest.mark.parametrize("classes, margin", [(7, 0.2), (40, -0.2), (40, 0.4), (40, 2.0)])
def test_check_grads_in_logits_temperature_and_margin(loss, classes, margin):
    with jax.enable_x64(True):
        z, y = random_problem(6, 5, classes, 1.0)
        z = z.astype(np.float64)
        f = lambda z, t, m: loss(z, y, t, m)  # noqa: E731
        check_grads(f, (z, 0.6, margin), order=2, modes=["fwd", "rev"], atol=1e-5, rtol=1e-5)


def test_check_grads_hard_away_from_kinks():
    with jax.enable_x64(True):
        z, y = random_problem(7, 5, 7, 1.0)
        f = lambda z, m: sm.hard_loss(z, y, margin=m)  # noqa: E731
        check_grads(f, (z.astype(np.float64), 0.5), order=1, modes=["fwd", "rev"], atol=1e-5, rtol=1e-5)


def test_temperature_gradient_at_zero_is_finite_and_zero():
    z, y = random_problem(8, 6, 5, 1.0)
    for name in ("lse", "softmax"):
        g = jax.grad(lambda t: sm.objective(name)(z, y, temperature=t).sum())(0.0)
        assert np.isfinite(g) and g == 0.0


# --------------------------------------------------------------------------- transformations


def test_jit_and_vmap_over_batch_match_a_loop():
    z, y = random_problem(9, 6, 10, 2.0)
    per_example = jax.vmap(lambda zi, yi: sm.softmax_loss(zi, yi, temperature=0.5, margin=0.1))(z, y)
    loop = [sm.softmax_loss(z[i], y[i], temperature=0.5, margin=0.1) for i in range(6)]
    np.testing.assert_allclose(per_example, loop, rtol=1e-6)
    jitted = jax.jit(lambda z, y: sm.softmax_loss(z, y, temperature=0.5, margin=0.1))
    np.testing.assert_allclose(jitted(z, y), loop, rtol=1e-6)


@pytest.mark.parametrize("name", ["lse", "softmax"])
def test_vmap_over_temperatures_including_zero_is_exact_with_finite_gradients(name):
    z, y = random_problem(10, 12, 10, 2.0)
    temps = jnp.array([0.0, 0.01, 0.3, 1.0, 3.0])
    loss = sm.objective(name)

    def mean_loss(z, t, m):
        return jnp.mean(loss(z, y, temperature=t, margin=m))

    values, grads = jax.vmap(jax.value_and_grad(mean_loss, argnums=(0, 1, 2)), in_axes=(None, 0, 0))(
        z, temps, 0.1 * temps
    )
    for i, t in enumerate(temps):
        np.testing.assert_allclose(values[i], mean_loss(z, t, 0.1 * t), rtol=1e-6)
    np.testing.assert_allclose(values[0], jnp.mean(sm.hard_loss(z, y)), rtol=1e-6)
    for g in grads:
        assert np.all(np.isfinite(g))
    np.testing.assert_array_equal(grads[0][0], jax.grad(lambda z: jnp.mean(sm.hard_loss(z, y)))(z))


@pytest.mark.parametrize("classes", [10, 100])
@pytest.mark.parametrize("name", ["lse", "softmax"])
def test_value_only_vmap_over_temperatures_matches_reference(name, classes):
    # A value-only call takes the unmasked sums (and for softmax the log-sum-exp form) where exact: under a
    # vmap over temperatures that include 0, each member must still be its own member's loss.
    z, y = random_problem(13, 9, classes, 2.0)
    temps = np.array([0.0, 0.01, 0.3, 1.0, 3.0], np.float32)
    for m in (0.0, -0.2, 0.4):
        got = jax.vmap(lambda t: sm.objective(name)(z, y, temperature=t, margin=m))(jnp.asarray(temps))
        for i, t in enumerate(temps):
            want = ref_family(z, y, t, t if name == "softmax" else 0.0, m)
            np.testing.assert_allclose(got[i], want, rtol=1e-5, atol=tolerance(z, t))


def test_per_example_temperature_and_margin():
    z, y = random_problem(11, 4, 6, 1.0)
    temps = np.array([0.0, 0.1, 1.0, 2.0], np.float32)
    margins = np.array([0.0, 0.5, -0.2, 1.0], np.float32)
    got = sm.softmax_loss(z, y, temperature=temps, margin=margins)
    for i in range(4):
        np.testing.assert_allclose(got[i], ref_family(z[i], y[i], temps[i], temps[i], margins[i]), atol=1e-5)


def test_no_recompilation_across_temperatures_and_margins():
    traces = []

    @jax.jit
    def step(z, y, t, m):
        traces.append(1)
        return jax.grad(lambda z: sm.lse_loss(z, y, temperature=t, margin=m).mean())(z)

    z, y = random_problem(12, 8, 10, 1.0)
    for t in (0.0, 0.1, 0.5, 2.0):
        step(z, y, t, t / 2)
    assert len(traces) == 1


# --------------------------------------------------------------------------- numerics and dtypes


@pytest.mark.parametrize("name", ["hard", "lse", "softmax"])
@pytest.mark.parametrize("tau", [1e-6, 1.0])
def test_extreme_logits_stay_finite(name, tau):
    z = jnp.array([[1e30, -1e30, 0.0], [-1e30, 1e30, 5.0], [3.0, 3.0, 3.0]])
    y = jnp.array([0, 0, 2])
    loss = lambda z: sm.objective(name)(z, y, temperature=tau, margin=0.5)  # noqa: E731
    values = loss(z)
    grads = jax.grad(lambda z: loss(z).sum())(z)
    assert np.all(np.isfinite(values)) and np.all(np.isfinite(grads))
    np.testing.assert_allclose(values[1], 2e30, rtol=1e-6)
    assert values[0] == 0.0 or values[0] < 1e-20


@pytest.mark.parametrize("name", ["hard", "lse", "softmax"])
def test_minus_inf_rivals_have_no_effect_and_nan_propagates(name):
    loss = functools.partial(sm.objective(name), temperature=0.5, margin=0.1)
    z = jnp.array([[1.0, -jnp.inf, 0.5, -jnp.inf]])
    y = jnp.array([0])
    np.testing.assert_allclose(loss(z, y), loss(z[:, :3:2], y), rtol=1e-6)
    grads = jax.grad(lambda z: loss(z, y).sum())(z)
    assert np.all(np.isfinite(grads)) and grads[0, 1] == 0 and grads[0, 3] == 0
    # Only -inf rivals: nothing to beat.
    np.testing.assert_array_equal(loss(jnp.array([[0.0, -jnp.inf]]), y), 0.0)
    assert loss(jnp.array([[-jnp.inf, 0.0]]), y)[0] == jnp.inf
    assert np.isnan(loss(jnp.array([[0.0, jnp.nan, 1.0]]), y)[0])


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_logits_are_computed_in_float32(dtype):
    z, y = random_problem(13, 32, 10, 2.0)
    low = jnp.asarray(z, dtype)
    for name in ("hard", "lse", "softmax"):
        got = sm.objective(name)(low, y, temperature=0.3, margin=0.1)
        assert got.dtype == jnp.float32
        want = sm.objective(name)(low.astype(jnp.float32), y, temperature=0.3, margin=0.1)
        np.testing.assert_allclose(got, want, rtol=1e-6)
        grad = jax.grad(lambda z: sm.objective(name)(z, y, temperature=0.3).sum())(low)
        assert grad.dtype == dtype


def test_float64_under_x64():
    with jax.enable_x64(True):
        z, y = random_problem(14, 8, 10, 2.0)
        got = sm.softmax_loss(z.astype(np.float64), y, temperature=0.2, margin=0.3)
        assert got.dtype == jnp.float64
        np.testing.assert_allclose(got, ref_family(z, y, 0.2, 0.2, 0.3), rtol=1e-12, atol=1e-12)


def test_batch_dimensions_are_preserved():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((2, 3, 5)).astype(np.float32)
    y = rng.integers(0, 5, (2, 3))
    assert sm.lse_loss(z, y).shape == (2, 3)
    np.testing.assert_allclose(sm.lse_loss(z, y).reshape(-1), sm.lse_loss(z.reshape(6, 5), y.reshape(6)), rtol=1e-6)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("name", ["hard", "lse", "softmax"])
def test_bad_inputs_raise_clear_errors(name):
    loss = sm.objective(name)
    z = jnp.zeros((3, 4))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\)"):
        loss(z, jnp.array([0, 4, 1]))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\)"):
        loss(z, jnp.array([0, -1, 1]))
    with pytest.raises(ValueError, match="labels shape"):
        loss(z, jnp.array([0, 1]))
    with pytest.raises(ValueError, match="at least 2 classes"):
        loss(jnp.zeros((3, 1)), jnp.array([0, 0, 0]))
    with pytest.raises(ValueError, match="integer"):
        loss(z, jnp.array([0.0, 1.0, 2.0]))
    if name != "hard":
        with pytest.raises(ValueError, match="temperature must be >= 0"):
            loss(z, jnp.array([0, 1, 2]), temperature=-0.1)
        with pytest.raises(ValueError, match="NaN"):
            loss(z, jnp.array([0, 1, 2]), temperature=float("nan"))


def test_family_and_helpers_reject_bad_temperatures():
    with pytest.raises(ValueError, match="relu_temperature"):
        sm.family_loss(jnp.zeros((2, 3)), jnp.array([0, 1]), max_temperature=1.0, relu_temperature=-1.0)
    with pytest.raises(ValueError, match="temperature"):
        sm.smooth_max(jnp.zeros(3), -1.0)
    with pytest.raises(ValueError, match="temperature"):
        sm.smooth_relu(jnp.zeros(3), float("nan"))
    with pytest.raises(ValueError, match="does not broadcast"):
        sm.softmax_loss(jnp.zeros((2, 3)), jnp.array([0, 1]), temperature=jnp.ones(3))
    with pytest.raises(ValueError, match="unknown objective 'focal'"):
        sm.objective("focal")


@pytest.mark.parametrize("name", ["hard", "lse", "softmax"])
def test_out_of_range_label_under_jit_gives_nan(name):
    z = jnp.ones((3, 4)) * jnp.arange(4.0)
    f = jax.jit(lambda z, y: sm.objective(name)(z, y, temperature=0.5))
    values = f(z, jnp.array([0, 7, -2]))
    assert np.isfinite(values[0]) and np.isnan(values[1]) and np.isnan(values[2])
    grads = jax.jit(jax.grad(lambda z, y: sm.objective(name)(z, y, temperature=0.5).sum()))(z, jnp.array([0, 7, 1]))
    assert np.any(np.isnan(grads[1])) and np.all(np.isfinite(grads[0]))


# --------------------------------------------------------------------------- each path, called directly

from smoothmax import losses  # noqa: E402

PATHS = {
    "tied_one_pass": losses._tied_one_pass,
    "one_pass": losses._one_pass,
    "tied_lse": losses._tied_lse,
    "unmasked": losses._unmasked,
    "unmasked_picked": losses._unmasked_picked,
    "masked": losses._masked,
    "rival_shifted": losses._rival_shifted,
}
TANGENTS = {"dense": losses._dense_tangent, "picked": losses._picked_tangent}


def test_the_chooser_reaches_every_path():
    # Moving a threshold must not drop a path that the tests below exercise directly.
    reached, tangents = set(), set()
    for tying in (None, "hinge", "tied"):
        cpu = losses._THRESHOLDS["cpu"]
        for classes in (2, cpu.one_pass_classes + 1, cpu.few_classes + 1):
            for differentiated in (False, True):
                plan = losses._plan(tying, classes, differentiated, losses._THRESHOLDS["cpu"])
                reached |= {plan.no_margin, plan.small_margin, plan.large_margin}
                tangents |= {plan.tangent} - {None}
    reached.add(losses._rival_shifted)  # where no other path is exact
    assert reached == set(PATHS.values()) and tangents == set(TANGENTS.values())


def path_is_exact(name, ratio, m, tau):
    """Where each path is exact (tau_r = ratio·tau): its conditions in losses._plan."""
    masked_exact = bool(losses._masked_is_exact(tau, ratio * tau, m, 100, np.float32))
    if name.startswith("tied") and ratio != 1.0:
        return False  # the tied paths compute softmax (τr = τm) only
    if name.endswith("one_pass"):
        return (m <= 0 and ratio <= 1.0) or masked_exact
    if name == "tied_lse":
        return m <= losses._MARGIN_BOUND * tau
    if name.startswith("unmasked"):
        return ratio <= 1.0 and m <= losses._MARGIN_BOUND * tau
    if name == "masked":
        return masked_exact
    return True


@pytest.mark.parametrize("classes", [3, 10, 100])
@pytest.mark.parametrize("name", list(PATHS))
def test_each_path_matches_the_float64_reference(name, classes):
    with jax.enable_x64(True):
        z, y = random_problem(30 + classes, 12, classes, 2.0)
        z = z.astype(np.float64)
        z[0, y[0]] = np.delete(z[0], y[0]).max() + 40.0  # a dominant target
        for ratio, m, tau in itertools.product((0.0, 0.5, 1.0, 2.0), (-0.5, 0.0, 0.3, 2.0), (0.0, 0.05, 0.7)):
            if not path_is_exact(name, ratio, m, tau):
                continue
            t = np.full(12, tau)
            f = PATHS[name](jnp.asarray(z), jnp.asarray(y), jnp.asarray(t), jnp.asarray(ratio * t), jnp.full(12, m))
            want = ref_family(z, y, tau, ratio * tau, m)
            np.testing.assert_allclose(f.loss, want, rtol=1e-9, atol=1e-9, err_msg=f"{ratio} {m} {tau}")


# The pairs the chooser can make: the dense tangent reads masked exps (the target's entry 0).
@pytest.mark.parametrize("name, tangent", [("unmasked_picked", "picked"), ("masked", "picked"), ("masked", "dense"),
                                           ("rival_shifted", "picked"), ("rival_shifted", "dense")])
def test_each_differentiated_path_has_exact_second_derivatives(name, tangent, monkeypatch):
    # Every path of the gradient under the family's JVP rule, forced, in both modes to order 2.
    path = PATHS[name]
    plan = losses.Plan(no_margin=path, small_margin=path, large_margin=path, tangent=TANGENTS[tangent])
    monkeypatch.setattr(losses, "_plan", lambda *args: plan)
    with jax.enable_x64(True):
        z, y = random_problem(40, 5, 12, 1.0)
        z = z.astype(np.float64)
        m = 0.3 if name == "unmasked_picked" else 1.5  # within _MARGIN_BOUND·τ for the unmasked sums

        def f(z, t, m):
            ones = jnp.ones(5)
            return losses._family_core(z, jnp.asarray(y), t * ones, 0.7 * t * ones, m * ones, None)

        check_grads(f, (z, 0.6, m), order=2, modes=["fwd", "rev"], atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(f(z, 0.6, m), ref_family(z, y, 0.6, 0.42, m), rtol=1e-9, atol=1e-9)


# --------------------------------------------------------------------------- as a library: eager calls, debug flags


def test_eager_calls_compile_once_per_shape():
    compiles = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(event)

    z, y = random_problem(50, 16, 10, 2.0)
    calls = {
        name: (lambda name: lambda z, t, m: sm.objective(name)(z, y, temperature=t, margin=m))(name)
        for name in ("hard", "lse", "softmax")
    }
    calls["family"] = lambda z, t, m: sm.family_loss(z, y, max_temperature=t, relu_temperature=t / 2, margin=m)
    for call in calls.values():  # warm up: one compilation each for the value and the gradient
        call(z, 0.5, 0.1)
        jax.grad(lambda z: call(z, 0.5, 0.1).sum())(z)
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        for i, call in enumerate(calls.values()):
            for t, m in ((0.3, -0.2), (1.0, 0.0), (0.0, 2.0), (2.0, 0.35)):
                call(z + i, t, m)
                jax.grad(lambda z: call(z, t, m).sum())(z)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert compiles == []


@pytest.mark.parametrize("margins", [[0.0] * 4, [0.3, 0.0, 0.5, 0.1], [-0.5, -0.1, 0.0, -2.0],
                                     [-29.0, -0.1, -3.0, -30.0], [-80.0, -0.2, 0.0, -70.0],
                                     [-0.5, 0.3, 0.0, 0.1]])
def test_softmax_value_on_each_margin_branch_matches_float64(margins):
    """The softmax value's per-example terms switch on the batch's margins (none, ≥ 0, [−60·τ, 0],
    others); rows with a dominant and a far-behind target, in float32 against the float64 reference."""
    z, y = random_problem(7, 4, 10, 3.0)
    z[0, y[0]] = np.delete(z[0], y[0]).max() + 30.0
    z[1, y[1]] = np.delete(z[1], y[1]).min() - 30.0
    tau, m = 0.5, np.array(margins, np.float32)
    got = jax.jit(lambda z, m: sm.softmax_loss(z, y, temperature=tau, margin=m))(z.astype(np.float32), m)
    want = [ref_family(z[i].astype(np.float64), y[i], tau, tau, float(m[i])) for i in range(4)]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.all(np.asarray(got) >= 0)


REGIMES = [(7, -0.2), (7, 0.0), (7, 0.3), (40, -0.2), (40, 0.0), (40, 0.3), (40, 2.0)]


def member_call(name):
    if name == "family":
        return lambda z, y, t, m: sm.family_loss(z, y, max_temperature=t, relu_temperature=0.5 * t, margin=m)
    return lambda z, y, t, m: sm.objective(name)(z, y, temperature=t, margin=m)


@pytest.mark.parametrize("flag", ["debug_nans", "debug_nans_without_jit", "debug_infs", "debug_infs_without_jit"])
@pytest.mark.parametrize("classes, margin", REGIMES)
def test_valid_input_passes_under_debug_flags(flag, classes, margin):
    z, y = random_problem(51, 6, classes, 3.0)
    z[0, y[0]] = np.delete(z[0], y[0]).max() + 30.0  # a dominant target: the unmasked sum cancels to 0
    config = {"debug_nans": jax.debug_nans, "debug_infs": jax.debug_infs}[flag.removesuffix("_without_jit")]
    for name in ("hard", "lse", "softmax", "family"):
        loss = member_call(name)
        with config(True), jax.disable_jit(flag.endswith("without_jit")):
            for t in (0.0, 0.05, 0.5, 1.0):
                values = loss(z, y, t, margin)
                grads = jax.grad(lambda z, t, m: loss(z, y, t, m).sum(), argnums=(0, 1, 2))(jnp.asarray(z), t, margin)
                assert np.all(np.isfinite(values)) and all(np.all(np.isfinite(g)) for g in grads)


@pytest.mark.parametrize("name", ["hard", "lse", "softmax", "family"])
@pytest.mark.parametrize("tau", [0.0, 0.5])
@pytest.mark.parametrize("classes", [7, 40])
def test_nan_logit_gives_nan_gradient_in_its_row_only(name, tau, classes):
    z, y = random_problem(52, 4, classes, 1.0)
    z[1, (y[1] + 1) % classes] = np.nan  # a rival
    z[2, y[2]] = np.nan  # a target
    loss = member_call(name)
    for m in (0.0, 0.5):
        values = np.asarray(loss(z, y, tau, m))
        grads = np.asarray(jax.grad(lambda z: loss(z, y, tau, m).sum())(jnp.asarray(z)))
        assert np.isnan(values[1]) and np.isnan(values[2]) and np.all(np.isfinite(values[[0, 3]]))
        assert np.isnan(grads[1]).any() and np.isnan(grads[2]).any(), (name, tau, m)
        assert np.all(np.isfinite(grads[[0, 3]]))


def test_smooth_max_over_an_empty_axis_is_minus_inf_like_logsumexp():
    for tau in (0.0, 0.5):
        got = sm.smooth_max(jnp.zeros((3, 0)), tau)
        np.testing.assert_array_equal(got, jax.nn.logsumexp(jnp.zeros((3, 0)), axis=-1))
        np.testing.assert_array_equal(got, -np.inf)


def test_smooth_max_takes_where_and_keepdims_like_logsumexp():
    x, _ = random_problem(53, 4, 6, 2.0)
    x = x.reshape(2, 2, 6)
    mask = np.random.default_rng(53).random(x.shape) > 0.4
    mask[0, 0] = False  # a slice with nothing left: -inf
    for axis in (-1, 0, (0, 2)):
        for keepdims in (False, True):
            want = jax.nn.logsumexp(x, axis=axis, where=mask, keepdims=keepdims)
            got = sm.smooth_max(x, 1.0, axis=axis, where=mask, keepdims=keepdims)
            np.testing.assert_allclose(got, want, rtol=1e-6)
            hard = sm.smooth_max(x, 0.0, axis=axis, where=mask, keepdims=keepdims)
            np.testing.assert_array_equal(hard, jnp.max(jnp.where(mask, x, -jnp.inf), axis=axis, keepdims=keepdims))


# --------------------------------------------------------------------------- optax's arguments: axis and where


def optax_and_ours(z, y, **kwargs):
    def ours(z):
        return sm.softmax_loss(z, y, temperature=1.0, **kwargs)

    def theirs(z):
        return optax.softmax_cross_entropy_with_integer_labels(z, y, **kwargs)

    return [(f(z), jax.grad(lambda z: f(z).sum())(z), jax.jit(f)(z)) for f in (ours, theirs)]


def assert_same_as_optax(z, y, **kwargs):
    (value, grad, jitted), (want, want_grad, _) = optax_and_ours(jnp.asarray(z), jnp.asarray(y), **kwargs)
    np.testing.assert_allclose(value, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(jitted, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("classes", [10, 100])
def test_softmax_member_is_optax_with_axis_and_where(classes):
    rng = np.random.default_rng(54)
    z = (rng.standard_normal((3, 4, classes)) * 3).astype(np.float32)
    y = rng.integers(0, classes, (3, 4))
    assert_same_as_optax(z, y)
    assert_same_as_optax(np.moveaxis(z, -1, 1), y, axis=1)
    assert_same_as_optax(z, y, where=rng.random((3, 4)) > 0.3)  # an example mask
    classes_kept = rng.random(z.shape) > 0.3
    np.put_along_axis(classes_kept, y[..., None], True, axis=-1)  # optax's rule differs for masked targets
    classes_kept[0, 0] = False
    classes_kept[0, 0, y[0, 0]] = True  # no rival left
    assert_same_as_optax(z, y, where=classes_kept)
    # A tuple of axes: a label is a flat index into the slice, in the order given.
    z4 = z.reshape(3, 4, 2, classes // 2)
    assert_same_as_optax(z4.transpose(2, 0, 3, 1), y, axis=(0, 2))
    assert_same_as_optax(z4.transpose(0, 3, 1, 2), y, axis=(3, 1))


@pytest.mark.parametrize("name", ["hard", "lse", "softmax", "family"])
def test_axis_and_where_on_every_member(name):
    rng = np.random.default_rng(55)
    z = (rng.standard_normal((6, 12)) * 2).astype(np.float32)
    y = rng.integers(0, 12, 6)
    loss = member_call(name)

    def call(z, y, **kwargs):
        return functools.partial(loss, t=0.4, m=0.3)(z, y) if not kwargs else (
            sm.hard_loss(z, y, margin=0.3, **kwargs) if name == "hard" else
            sm.family_loss(z, y, max_temperature=0.4, relu_temperature=0.2, margin=0.3, **kwargs)
            if name == "family" else sm.objective(name)(z, y, temperature=0.4, margin=0.3, **kwargs))

    plain = call(z, y)
    np.testing.assert_allclose(call(z.T, y, axis=0), plain, rtol=1e-5)
    np.testing.assert_allclose(call(z.reshape(6, 3, 4), y, axis=(1, 2)), plain, rtol=1e-5)
    np.testing.assert_allclose(call(z.reshape(6, 3, 4).transpose(2, 0, 1), y, axis=(2, 0)),
                               call(z.reshape(6, 3, 4).transpose(0, 2, 1).reshape(6, 12),
                                    (y % 4) * 3 + y // 4), rtol=1e-5)
    # An example mask: 0 for masked examples, whose labels are not checked (padding) and whose gradient is 0.
    keep = np.array([True, False, True, True, False, True])
    padded = np.where(keep, y, -1)
    np.testing.assert_allclose(call(z, padded, where=keep), np.where(keep, plain, 0.0), rtol=1e-5)
    grad = jax.grad(lambda z: call(z, padded, where=keep).sum())(jnp.asarray(z))
    np.testing.assert_array_equal(grad[~keep], 0.0)
    np.testing.assert_allclose(grad[keep], jax.grad(lambda z: call(z, y).sum())(jnp.asarray(z))[keep], atol=1e-6)
    # A class mask: a masked rival is exactly a -inf logit; a masked target is still the target.
    kept = rng.random(z.shape) > 0.4
    want = call(np.where(kept, z, -np.inf), y)
    target_kept = np.take_along_axis(kept, y[:, None], -1)[:, 0]
    with_target = np.where(kept | (np.arange(12) == y[:, None]), z, -np.inf)
    np.testing.assert_allclose(call(z, y, where=kept), call(with_target, y), rtol=1e-5)
    np.testing.assert_allclose(call(z, y, where=kept)[target_kept], want[target_kept], rtol=1e-5)
    assert np.all(np.asarray(call(z, y, where=kept)) >= 0)
    grad = jax.grad(lambda z: call(z, y, where=kept).sum())(jnp.asarray(z))
    assert np.all(grad[~kept & (np.arange(12) != y[:, None])] == 0)


def test_masked_target_rule_tends_to_hard():
    z, y = random_problem(56, 8, 10, 2.0)
    kept = np.random.default_rng(56).random(z.shape) > 0.5
    kept[np.arange(8), y] = False  # every target masked
    hard = sm.hard_loss(z, y, margin=0.2, where=kept)
    for name in ("lse", "softmax"):
        gap = np.abs(sm.objective(name)(z, y, temperature=1e-4, margin=0.2, where=kept) - hard)
        assert gap.max() <= 1e-4 * np.log(10) + 1e-6


def test_bad_axis_and_where_raise_clear_errors():
    z, y = jnp.zeros((3, 4)), jnp.array([0, 1, 2])
    with pytest.raises(ValueError, match="out of range"):
        sm.lse_loss(z, y, axis=2)
    with pytest.raises(ValueError, match="repeats"):
        sm.lse_loss(z.reshape(3, 2, 2), y, axis=(1, -2))
    with pytest.raises(ValueError, match="int or a non-empty tuple"):
        sm.lse_loss(z, y, axis=[1])
    with pytest.raises(ValueError, match="neither a class mask"):
        sm.softmax_loss(z, y, where=jnp.ones((4,), bool))
    with pytest.raises(ValueError, match="boolean"):
        sm.hard_loss(z, y, where=jnp.ones((3,)))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\)"):
        sm.hard_loss(z, jnp.array([0, 4, 1]), where=jnp.array([True, True, False]))


def test_per_backend_thresholds_choose_at_lowering(monkeypatch):
    # With thresholds that differ by backend, lax.platform_dependent picks CPU's when lowering for CPU.
    thresholds = {"cpu": losses.Thresholds(few_classes=4, one_pass_classes=4),
                  "default": losses.Thresholds(few_classes=1000, one_pass_classes=1000)}
    monkeypatch.setattr(losses, "_THRESHOLDS", thresholds)
    z, y = random_problem(57, 6, 10, 1.0)

    def f(z, t, m):
        ones = jnp.ones(6)
        return losses._family_core(z, jnp.asarray(y), t * ones, t * ones, m * ones, "tied")

    lowered = jax.jit(jax.grad(lambda z: f(z, 0.5, 0.0).sum())).lower(jnp.asarray(z)).as_text()
    assert "scatter" in lowered  # the picked tangent of more than few_classes (4 on CPU, 1000 elsewhere)
    np.testing.assert_allclose(f(z, 0.5, 0.2), ref_family(z, y, 0.5, 0.5, 0.2), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jax.grad(lambda z: f(z, 0.5, 0.2).sum())(jnp.asarray(z)),
                               ref_family_grad(z, y, 0.5, 0.5, 0.2), atol=1e-6)

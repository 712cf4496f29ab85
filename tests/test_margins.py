"""Logit margin, implicit margin and its bound against a float64 NumPy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import smoothmax as sm
from tests.test_losses import random_problem, ref_rivals, ref_smooth_max


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from([2, 3, 10, 1000]), st.sampled_from([0.1, 1.0, 300.0]),
       st.sampled_from([0.0, 0.03, 1.0, 4.0]))
def test_margins_match_reference_and_bounds(seed, classes, scale, tau):
    z, y = random_problem(seed, 9, classes, scale)
    rivals, target = ref_rivals(z, y)
    atol = 1e-5 * (1 + np.abs(z).max())
    np.testing.assert_allclose(sm.logit_margin(z, y), target - rivals.max(-1), rtol=1e-6, atol=atol)
    implicit = np.asarray(sm.implicit_margin(z, y, temperature=tau), np.float64)
    np.testing.assert_allclose(implicit, ref_smooth_max(rivals, tau) - rivals.max(-1), rtol=1e-5, atol=atol)
    bound = float(sm.implicit_margin_bound(classes, tau))
    np.testing.assert_allclose(bound, tau * np.log(classes - 1), rtol=1e-6)
    assert np.all(implicit >= 0) and np.all(implicit <= bound + atol)


def test_implicit_margin_reaches_its_bound_when_rivals_tie():
    z = jnp.array([[5.0, 1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    y = jnp.array([0, 3])
    np.testing.assert_allclose(sm.implicit_margin(z, y, temperature=0.5), 0.5 * np.log(4), rtol=1e-6)
    np.testing.assert_allclose(sm.implicit_margin_bound(5, 0.5), 0.5 * np.log(4), rtol=1e-6)


def test_lse_is_zero_exactly_beyond_margin_plus_implicit_margin():
    # The lse loss vanishes iff the logit margin covers m plus the implicit margin.
    z, y = random_problem(3, 200, 10, 3.0)
    tau, m = 0.5, 0.25
    loss = np.asarray(sm.lse_loss(z, y, temperature=tau, margin=m))
    need = m + np.asarray(sm.implicit_margin(z, y, temperature=tau))
    have = np.asarray(sm.logit_margin(z, y))
    clear = np.abs(have - need) > 1e-4
    np.testing.assert_array_equal((loss == 0)[clear], (have >= need)[clear])


def test_margins_jit_vmap_and_bad_input():
    z, y = random_problem(4, 6, 10, 1.0)
    temps = jnp.array([0.0, 0.5, 2.0])
    out = jax.jit(jax.vmap(lambda t: sm.implicit_margin(z, y, temperature=t)))(temps)
    np.testing.assert_array_equal(out[0], 0.0)
    np.testing.assert_allclose(out[2], sm.implicit_margin(z, y, temperature=2.0), rtol=1e-6)
    with pytest.raises(ValueError, match="labels must lie"):
        sm.logit_margin(z, jnp.full(6, 10))
    with pytest.raises(ValueError, match="temperature"):
        sm.implicit_margin(z, y, temperature=-1.0)
    with pytest.raises(ValueError, match="num_classes"):
        sm.implicit_margin_bound(1, 1.0)

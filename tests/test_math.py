"""nerflib.math against closed forms and finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nerflib import math as nmath

SETTINGS = settings(max_examples=25, deadline=None)


def _fd(fn, x, h):
    """Central finite difference of a scalar float function, in float64."""
    return (fn(x + h) - fn(x - h)) / (2 * h)


def _grad(fn, x):
    return float(jax.grad(lambda v: fn(v))(jnp.float32(x)))


@SETTINGS
@given(st.floats(-20.0, 20.0))
def test_safe_exp_value_and_grad_match_exp(x):
    assert np.isclose(float(nmath.safe_exp(jnp.float32(x))), np.exp(x), rtol=1e-5)
    fd = _fd(np.exp, x, 1e-4)
    assert np.isclose(_grad(nmath.safe_exp, x), fd, rtol=1e-4)


@SETTINGS
@given(st.floats(1e-3, 1e3))
def test_safe_log_and_sqrt_grads_match_finite_differences(x):
    h = 1e-4 * x
    assert np.isclose(float(nmath.safe_log(jnp.float32(x))), np.log(x), rtol=1e-5, atol=1e-6)
    assert np.isclose(_grad(nmath.safe_log, x), _fd(np.log, x, h), rtol=1e-4)
    assert np.isclose(float(nmath.safe_sqrt(jnp.float32(x))), np.sqrt(x), rtol=1e-6)
    assert np.isclose(_grad(nmath.safe_sqrt, x), _fd(np.sqrt, x, h), rtol=1e-4)


@pytest.mark.parametrize("fn", [nmath.safe_exp, nmath.safe_log, nmath.safe_sqrt])
@pytest.mark.parametrize("x", [-1e30, -100.0, -1.0, 0.0, 1e-30, 1e-10, 100.0, 1e4, 1e30])
def test_safe_functions_are_finite_at_extremes(fn, x):
    x = jnp.float32(x)
    assert np.isfinite(float(fn(x)))
    assert np.isfinite(float(jax.grad(fn)(x)))


def test_safe_exp_keeps_a_nonzero_gradient_beyond_the_clamp():
    # Plain clamping (jnp.exp(jnp.minimum(x, 88))) would give 0 here.
    g = float(jax.grad(nmath.safe_exp)(jnp.float32(200.0)))
    assert np.isfinite(g) and g > 1e30


def test_unsafe_versions_really_fail_at_these_points():
    # Guards against the tests above passing vacuously.
    assert not np.isfinite(float(jnp.exp(jnp.float32(100.0))))
    assert not np.isfinite(float(jax.grad(jnp.sqrt)(jnp.float32(0.0))))
    assert not np.isfinite(float(jax.grad(jnp.log)(jnp.float32(0.0))))


def test_safe_div():
    n = jnp.array([1.0, 2.0, 3.0])
    d = jnp.array([2.0, 0.0, -4.0])
    np.testing.assert_allclose(nmath.safe_div(n, d), [0.5, 0.0, -0.75])
    gn, gd = jax.grad(lambda a, b: jnp.sum(nmath.safe_div(a, b)), argnums=(0, 1))(n, d)
    assert np.all(np.isfinite(gn)) and np.all(np.isfinite(gd))
    np.testing.assert_allclose(gn, [0.5, 0.0, -0.25])
    np.testing.assert_allclose(gd, [-0.25, 0.0, -3.0 / 16.0])


def test_log_lerp():
    t = jnp.array([-1.0, 0.0, 0.5, 1.0, 2.0])
    np.testing.assert_allclose(nmath.log_lerp(t, 1e-2, 1e-4), [1e-2, 1e-2, 1e-3, 1e-4, 1e-4], rtol=1e-5)
    with pytest.raises(ValueError, match="-1"):
        nmath.log_lerp(0.5, -1.0, 1.0)


def test_learning_rate_decay_matches_schedule():
    kw = dict(lr_init=2e-3, lr_final=2e-5, max_steps=1000, lr_delay_steps=100, lr_delay_mult=0.01)
    lr = lambda s: float(nmath.learning_rate_decay(s, **kw))
    plain = lambda s: 2e-3 * (2e-5 / 2e-3) ** (s / 1000)  # exponential decay, float64.
    assert np.isclose(lr(0), 2e-3 * 0.01, rtol=1e-5)
    for s in (100, 250, 500, 999, 1000):
        assert np.isclose(lr(s), plain(s), rtol=1e-5), s
    assert np.isclose(lr(5000), 2e-5, rtol=1e-5)  # clamped after max_steps.
    # Inside the warm-up: reverse-cosine ease of the multiplier.
    s = 50
    mult = 0.01 + 0.99 * np.sin(0.5 * np.pi * s / 100)
    assert np.isclose(lr(s), mult * plain(s), rtol=1e-5)
    warm = [lr(s) for s in range(0, 61, 10)]  # the ramp outpaces the decay early on.
    assert all(a < b for a, b in zip(warm, warm[1:]))
    with pytest.raises(ValueError, match="0"):
        nmath.learning_rate_decay(0, lr_init=1e-3, lr_final=1e-4, max_steps=0)


def test_psnr():
    np.testing.assert_allclose(nmath.psnr_from_mse(jnp.array([1.0, 0.01, 1e-4])), [0.0, 20.0, 40.0], atol=1e-4)
    np.testing.assert_allclose(nmath.mse_from_psnr(nmath.psnr_from_mse(0.003)), 0.003, rtol=1e-5)

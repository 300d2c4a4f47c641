"""Guarded elementwise math, interpolation and learning-rate schedules.

Everything here is pure `jax.numpy` and works on arrays of any shape.

Short names:
  x        any float array.
  n, d     numerator and denominator of a division.
  step     optimisation step (int or traced scalar).

The `safe_*` functions keep both values and gradients finite when the
argument leaves the function's comfortable domain (exp overflow, log/sqrt at
or below zero, division by zero). Their gradients are defined through
`jax.custom_jvp` so that the guard does not silently zero the gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# exp(88.72) is the largest value float32 can hold; clamp a little below it.
_EXP_MAX = 88.0
# Smallest positive normal float32: the floor used by log/sqrt/division.
_TINY = float(np.finfo(np.float32).tiny)
_EPS = float(np.finfo(np.float32).eps)

__all__ = [
    "safe_exp",
    "safe_log",
    "safe_sqrt",
    "safe_div",
    "log_lerp",
    "learning_rate_decay",
    "psnr_from_mse",
    "mse_from_psnr",
]


@jax.custom_jvp
def safe_exp(x):
    """exp(x) with the input clamped at 88 so that the value stays finite."""
    return jnp.exp(jnp.minimum(x, _EXP_MAX))


@safe_exp.defjvp
def _safe_exp_jvp(primals, tangents):
    (x,), (x_dot,) = primals, tangents
    y = safe_exp(x)
    # d/dx exp(x) = exp(x), evaluated at the clamped input: large but finite,
    # and never zero (plain clamping would give a zero gradient above 88).
    return y, y * x_dot


@jax.custom_jvp
def safe_log(x):
    """log(x) with the input clamped below at the smallest float32 normal."""
    return jnp.log(jnp.maximum(x, _TINY))


@safe_log.defjvp
def _safe_log_jvp(primals, tangents):
    (x,), (x_dot,) = primals, tangents
    # 1/x evaluated at the clamped input: finite (<= 1/tiny ~ 8.5e37) at x <= 0.
    return safe_log(x), x_dot / jnp.maximum(x, _TINY)


@jax.custom_jvp
def safe_sqrt(x):
    """sqrt(x) with negative inputs clamped to 0 (value) ..."""
    return jnp.sqrt(jnp.maximum(x, 0.0))


@safe_sqrt.defjvp
def _safe_sqrt_jvp(primals, tangents):
    (x,), (x_dot,) = primals, tangents
    # ... and the derivative 1/(2 sqrt(x)) evaluated at max(x, eps), so that it
    # stays finite at x == 0 (where the true derivative is +inf).
    return safe_sqrt(x), x_dot / (2.0 * jnp.sqrt(jnp.maximum(x, _EPS)))


def safe_div(n, d):
    """n / d, returning 0 wherever |d| < tiny, with finite gradients.

    The "double where" keeps the unused branch finite: the division itself
    only ever sees a denominator of at least `tiny`, so its gradient cannot
    produce inf * 0 = nan during back-propagation.
    """
    n = jnp.asarray(n)
    d = jnp.asarray(d)
    small = jnp.abs(d) < _TINY
    d_safe = jnp.where(small, 1.0, d)
    return jnp.where(small, 0.0, n / d_safe)


def log_lerp(t, v0, v1):
    """Log-linear interpolation: v0 at t <= 0, v1 at t >= 1, exp-linear between.

    `v0` and `v1` must be positive Python/NumPy scalars (they are
    hyperparameters); `t` may be a traced array.
    """
    if not (np.all(np.asarray(v0) > 0) and np.all(np.asarray(v1) > 0)):
        raise ValueError(f"log_lerp needs positive end values, got v0={v0!r}, v1={v1!r}")
    lv0, lv1 = np.log(v0), np.log(v1)
    return jnp.exp(lv0 + jnp.clip(t, 0.0, 1.0) * (lv1 - lv0))


def learning_rate_decay(
    step,
    *,
    lr_init: float,
    lr_final: float,
    max_steps: int,
    lr_delay_steps: int = 0,
    lr_delay_mult: float = 1.0,
):
    """mip-NeRF 360's learning rate: log-linear decay with an optional warm-up.

    lr(step) = delay(step) * exp(lerp(log lr_init, log lr_final, step/max_steps))

    With `lr_delay_steps > 0` the rate starts at `lr_init * lr_delay_mult` and
    eases back to the undelayed curve along a quarter sine wave, reaching it at
    `step == lr_delay_steps`. The paper uses lr_init=2e-3, lr_final=2e-5,
    max_steps=250k, lr_delay_steps=512, lr_delay_mult=0.01.
    """
    if max_steps <= 0:
        raise ValueError(f"max_steps must be positive, got {max_steps!r}")
    if lr_delay_steps < 0:
        raise ValueError(f"lr_delay_steps must be >= 0, got {lr_delay_steps!r}")
    if not lr_delay_mult > 0:
        raise ValueError(f"lr_delay_mult must be positive, got {lr_delay_mult!r}")
    step = jnp.asarray(step, jnp.float32)
    if lr_delay_steps > 0:
        ramp = jnp.sin(0.5 * jnp.pi * jnp.clip(step / lr_delay_steps, 0.0, 1.0))
        delay = lr_delay_mult + (1.0 - lr_delay_mult) * ramp
    else:
        delay = 1.0
    return delay * log_lerp(step / max_steps, lr_init, lr_final)


def psnr_from_mse(mse):
    """Peak signal-to-noise ratio in dB for signals in [0, 1]: -10 log10(mse)."""
    return -10.0 / np.log(10.0) * safe_log(mse)


def mse_from_psnr(psnr):
    """The inverse of `psnr_from_mse`."""
    return jnp.exp(-np.log(10.0) / 10.0 * psnr)

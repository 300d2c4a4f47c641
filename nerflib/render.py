"""Volume rendering of piecewise-constant fields along rays.

Short names and shapes:
  tdist      [..., n+1]  metric interval endpoints along each ray (t units:
                         multiples of `dirs`; depth for nerflib rays).
  density    [..., n]    volume density per unit *world* length, >= 0.
  dirs       [..., 3]    ray directions (their length converts t to world
                         length).
  weights    [..., n]    alpha-compositing weights, sum <= 1.
  rgbs       [..., n, 3] per-interval colours.
  bg_rgbs    [..., 3] or broadcastable (e.g. a scalar): background colour.
  t_far      [..., 1]    far bound, used to close the weight distribution.

With density and colour constant within each interval, alpha compositing
is the exact solution of the volume rendering integral
C = int T(t) sigma(t) c(t) dt + T(t_far) c_bg, T(t) = exp(-int_0^t sigma).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from nerflib import stepfun

__all__ = ["compute_alpha_weights", "volumetric_rendering", "distance_percentiles", "DISTANCE_PERCENTILES"]

_EPS = float(np.finfo(np.float32).eps)

# Percentiles of the ray-termination distance reported by `compute_extras`.
DISTANCE_PERCENTILES = (5.0, 50.0, 95.0)


def compute_alpha_weights(density, tdist, dirs, *, opaque_background: bool = False):
    """Alpha-compositing weights of intervals with constant density.

    Returns (weights, alpha, trans), each [..., n]:
      alpha_i = 1 - exp(-density_i * delta_i), delta_i = (t_{i+1} - t_i) |dir|,
      trans_i = exp(-sum_{j<i} density_j delta_j),   weights = alpha * trans.
    With `opaque_background` the last interval is made infinitely dense, so
    the weights sum to exactly 1 (nothing is seen behind the far bound).
    """
    delta = (tdist[..., 1:] - tdist[..., :-1]) * jnp.linalg.norm(dirs, axis=-1, keepdims=True)
    tau = density * delta  # optical thickness of each interval.
    if opaque_background:
        tau = jnp.concatenate([tau[..., :-1], jnp.full_like(tau[..., -1:], jnp.inf)], axis=-1)
    alpha = 1.0 - jnp.exp(-tau)
    # Exclusive prefix sum of optical thickness. Summing tau (instead of
    # multiplying (1 - alpha)) keeps trans accurate when alpha ~ 1, and the
    # infinite last tau of an opaque background never enters it.
    tau_before = jnp.concatenate([jnp.zeros_like(tau[..., :1]), jnp.cumsum(tau[..., :-1], axis=-1)], axis=-1)
    trans = jnp.exp(-tau_before)
    return alpha * trans, alpha, trans


def volumetric_rendering(rgbs, weights, tdist, bg_rgbs, *, t_far, compute_extras: bool = False):
    """Composite per-interval colours into pixels.

    Returns a dict:
      'rgb'   [..., 3]  sum_i w_i c_i + (1 - sum_i w_i) c_bg.
      'acc'   [...]     sum_i w_i (opacity).
      'depth' [...]     expected t over the interval midpoints, normalised by
                        acc and clipped to [tdist[0], tdist[-1]].
    and, if `compute_extras`:
      'distance_mean'          exp(E[log t]): a mean that is stable when
                               t spans many orders of magnitude.
      'distance_median', 'distance_percentile_5', 'distance_percentile_95':
                               percentiles of the termination distance, with
                               the missing mass 1 - acc placed at t_far.
    """
    acc = jnp.sum(weights, axis=-1)
    bg_w = jnp.maximum(0.0, 1.0 - acc)[..., None]  # round-off can push acc > 1.
    rgb = jnp.sum(weights[..., None] * rgbs, axis=-2) + bg_w * bg_rgbs
    t_mid = 0.5 * (tdist[..., 1:] + tdist[..., :-1])
    # max(eps, acc): empty rays (acc == 0) give depth 0, then clipped to near.
    depth = jnp.sum(weights * t_mid, axis=-1) / jnp.maximum(_EPS, acc)
    out = {
        "rgb": rgb,
        "acc": acc,
        "depth": jnp.clip(depth, tdist[..., 0], tdist[..., -1]),
    }
    if compute_extras:
        # log of midpoints: t > 0 for every sensible ray; guard t == 0 anyway.
        log_mean = jnp.sum(weights * jnp.log(jnp.maximum(_EPS, t_mid)), axis=-1) / jnp.maximum(_EPS, acc)
        out["distance_mean"] = jnp.clip(jnp.exp(log_mean), tdist[..., 0], tdist[..., -1])
        # Close the distribution with one more interval [t_last, t_far]
        # holding the background weight, so the weights sum to exactly 1.
        t_aug = jnp.concatenate([tdist, jnp.broadcast_to(t_far, tdist.shape[:-1] + (1,))], axis=-1)
        w_aug = jnp.concatenate([weights, bg_w], axis=-1)
        out.update(distance_percentiles(t_aug, w_aug))
    return out


def distance_percentiles(t, w) -> dict:
    """{'distance_median', 'distance_percentile_5', '_95'} [...] of the termination distance (t, w),
    w summing to 1 (DISTANCE_PERCENTILES; the tiled model's extras use it too)."""
    pct = stepfun.weighted_percentile(t, w, DISTANCE_PERCENTILES)
    return {("distance_median" if p == 50.0 else f"distance_percentile_{int(p)}"): pct[..., i]
            for i, p in enumerate(DISTANCE_PERCENTILES)}

"""nerflib.render against a float64 quadrature of the volume rendering integral."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from nerflib import render

N = 10
alpha_weights = jax.jit(render.compute_alpha_weights, static_argnames="opaque_background")
volrend = jax.jit(render.volumetric_rendering, static_argnames="compute_extras")


def random_ray(seed, n=N):
    rng = np.random.default_rng(seed)
    t = 0.5 + np.concatenate([[0.0], np.cumsum(rng.uniform(0.05, 0.6, n))])
    density = rng.uniform(0, 3, n) * (rng.uniform(size=n) < 0.7)
    rgbs = rng.uniform(0, 1, (n, 3))
    d = np.array([rng.uniform(-0.5, 0.5), rng.uniform(-0.5, 0.5), 1.0])  # z == 1
    f32 = lambda a: a.astype(np.float32).astype(np.float64)
    return f32(t), f32(density), f32(rgbs), f32(d)


def render_by_quadrature(t, density, rgbs, d, bg, k=4000):
    """C = int T(s) sigma(s) c(s) ds + T(end) bg, integrated numerically.

    s is world length along the ray (|d| per unit t). T is accumulated
    step by step from the optical depth; each interval is split into k
    midpoint cells. Returns (rgb, per-interval weights, expected t).
    """
    speed = np.linalg.norm(d)
    tau_before = 0.0
    weights, t_mean = [], 0.0
    for i in range(len(density)):
        ds = (t[i + 1] - t[i]) * speed / k
        s_mid = (np.arange(k) + 0.5) * ds
        trans = np.exp(-(tau_before + density[i] * s_mid))
        w_cells = trans * density[i] * ds
        weights.append(w_cells.sum())
        t_mean += (w_cells * (t[i] + s_mid / speed)).sum()
        tau_before += density[i] * ds * k
    weights = np.array(weights)
    rgb = weights @ rgbs + np.exp(-tau_before) * bg
    return rgb, weights, t_mean / max(weights.sum(), 1e-30)


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_alpha_compositing_matches_quadrature(seed):
    t, density, rgbs, d = random_ray(seed)
    bg = np.array([0.2, 0.5, 1.0])
    w, alpha, trans = alpha_weights(jnp.asarray(density[None], jnp.float32), jnp.asarray(t[None], jnp.float32),
                                    jnp.asarray(d[None], jnp.float32))
    rgb_q, w_q, _ = render_by_quadrature(t, density, rgbs, d, bg)
    np.testing.assert_allclose(w[0], w_q, atol=2e-6, rtol=1e-4)
    assert float(w.sum()) <= 1 + 1e-6 and np.all(np.asarray(w) >= 0)
    np.testing.assert_allclose(np.asarray(alpha * trans), np.asarray(w), rtol=1e-6)
    out = volrend(jnp.asarray(rgbs[None], jnp.float32), w, jnp.asarray(t[None], jnp.float32),
                  jnp.asarray(bg, jnp.float32), t_far=jnp.array([[t[-1] + 1]], jnp.float32))
    np.testing.assert_allclose(out["rgb"][0], rgb_q, atol=1e-5)
    np.testing.assert_allclose(out["acc"][0], w_q.sum(), atol=1e-5)


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_opaque_background_weights_sum_to_one(seed):
    t, density, _, d = random_ray(seed)
    w, _, _ = alpha_weights(jnp.asarray(density[None], jnp.float32), jnp.asarray(t[None], jnp.float32),
                            jnp.asarray(d[None], jnp.float32), opaque_background=True)
    np.testing.assert_allclose(float(w.sum()), 1.0, atol=1e-6)
    # The first n-1 weights do not depend on the option.
    w_plain, _, _ = alpha_weights(jnp.asarray(density[None], jnp.float32), jnp.asarray(t[None], jnp.float32),
                                  jnp.asarray(d[None], jnp.float32))
    np.testing.assert_allclose(w[0, :-1], w_plain[0, :-1], rtol=1e-6)


def test_weights_are_stable_for_dense_media_and_have_finite_gradients():
    t = jnp.linspace(0.0, 1.0, 9)[None]
    density = jnp.array([[0.0, 1e4, 1e6, 0.0, 5.0, 1e9, 0.0, 1.0]])
    d = jnp.array([[0.0, 0.0, 1.0]])
    w, _, _ = alpha_weights(density, t, d)
    np.testing.assert_allclose(w[0, :2], [0.0, 1.0], atol=1e-6)
    assert np.all(np.isfinite(w))
    g = jax.grad(lambda s: alpha_weights(s, t, d, opaque_background=True)[0].sum())(density)
    assert np.all(np.isfinite(g))


def test_direction_length_scales_optical_depth():
    t, density, _, _ = random_ray(7)
    d = np.array([0.6, 0.0, 1.0])
    f = lambda dens, dirs: alpha_weights(jnp.asarray(dens[None], jnp.float32), jnp.asarray(t[None], jnp.float32),
                                         jnp.asarray(dirs[None], jnp.float32))[0]
    np.testing.assert_allclose(f(density, 2 * d), f(2 * density, d), rtol=1e-5, atol=1e-7)


def test_depth_and_distance_percentiles():
    t, density, rgbs, d = random_ray(11)
    t_far = t[-1] + 2.0
    args = tuple(jnp.asarray(a[None], jnp.float32) for a in (density, t, d))
    w, _, _ = alpha_weights(*args)
    out = volrend(jnp.asarray(rgbs[None], jnp.float32), w, args[1], 1.0, t_far=jnp.array([[t_far]], jnp.float32),
                  compute_extras=True)
    _, w_q, t_mean_q = render_by_quadrature(t, density, rgbs, d, 0.0)
    # 'depth' uses interval midpoints; the exact expectation differs by less
    # than half the widest interval.
    assert abs(float(out["depth"][0]) - t_mean_q) < 0.5 * np.diff(t).max()
    mid = 0.5 * (t[1:] + t[:-1])
    np.testing.assert_allclose(out["depth"][0], (w_q @ mid) / w_q.sum(), rtol=1e-4)
    np.testing.assert_allclose(out["distance_mean"][0], np.exp((w_q @ np.log(mid)) / w_q.sum()), rtol=1e-4)
    # Percentiles of the step function closed with the background mass at t_far.
    t_aug = np.append(t, t_far)
    cdf = np.concatenate([[0.0], np.cumsum(np.append(w_q, 1 - w_q.sum()))])
    for p, key in ((5, "distance_percentile_5"), (50, "distance_median"), (95, "distance_percentile_95")):
        np.testing.assert_allclose(out[key][0], np.interp(p / 100, cdf, t_aug), rtol=1e-4)
    assert out["depth"].shape == (1,) and out["rgb"].shape == (1, 3)


def test_empty_rays_render_background_and_near_depth():
    t = jnp.array([[1.0, 2.0, 3.0]])
    w = jnp.zeros((1, 2))
    out = volrend(jnp.ones((1, 2, 3)), w, t, jnp.array([0.1, 0.2, 0.3]), t_far=jnp.array([[5.0]]))
    np.testing.assert_allclose(out["rgb"][0], [0.1, 0.2, 0.3])
    np.testing.assert_allclose(out["depth"][0], 1.0)

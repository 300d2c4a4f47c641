"""nerflib.stepfun against naive float64 numpy loops and quadrature."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nerflib import stepfun

SETTINGS = settings(max_examples=10, deadline=None)
N = 12  # intervals per step function in the property tests (fixed: one compile).


@st.composite
def step_functions(draw, n=N, zeros=True):
    """(t [n+1] sorted, w [n] summing to 1), float64 rounded to float32 values."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    gaps = rng.uniform(0.05, 1.0, n)
    t = rng.uniform(-1, 1) + np.concatenate([[0.0], np.cumsum(gaps)])
    w = rng.uniform(0, 1, n) ** 3
    if zeros:
        w[rng.uniform(size=n) < 0.3] = 0.0
    w[rng.integers(n)] += 0.1
    w /= w.sum()
    f32 = lambda a: a.astype(np.float32).astype(np.float64)
    return f32(t), f32(w)


def naive_invert_cdf(u, t, w):
    cw = np.concatenate([[0.0], np.cumsum(w)])
    cw /= cw[-1]
    out = []
    for ui in u:
        for i in range(len(w)):
            if w[i] > 0 and cw[i] <= ui < cw[i + 1]:
                out.append(t[i] + (ui - cw[i]) / w[i] * (t[i + 1] - t[i]))
                break
        else:
            out.append(t[-1])
    return np.array(out)


def naive_resample(t, tp, vp):
    """Mass of (tp, vp) inside each interval of t, by interval overlap."""
    out = np.zeros(len(t) - 1)
    for j in range(len(t) - 1):
        for i in range(len(vp)):
            overlap = min(t[j + 1], tp[i + 1]) - max(t[j], tp[i])
            if overlap > 0:
                out[j] += vp[i] * overlap / (tp[i + 1] - tp[i])
    return out


def naive_outer(t, t_env, w_env):
    out = np.zeros(len(t) - 1)
    for j in range(len(t) - 1):
        for k in range(len(w_env)):
            if min(t[j + 1], t_env[k + 1]) > max(t[j], t_env[k]):
                out[j] += w_env[k]
    return out


f32 = lambda a: jnp.asarray(a, jnp.float32)

# Jitted once per shape: far cheaper than eager op-by-op dispatch on CPU.
searchsorted = jax.jit(stepfun.searchsorted)
query = jax.jit(stepfun.query)
invert_cdf = jax.jit(stepfun.invert_cdf)
sample = jax.jit(stepfun.sample, static_argnums=3, static_argnames=("single_jitter", "deterministic_center"))
resample = jax.jit(stepfun.resample, static_argnames="use_avg")
outer_measure = jax.jit(stepfun.outer_measure)
lossfun_outer = jax.jit(stepfun.lossfun_outer)
lossfun_distortion = jax.jit(stepfun.lossfun_distortion)
max_dilate = jax.jit(stepfun.max_dilate)
weighted_percentile = jax.jit(stepfun.weighted_percentile)
sample_intervals = jax.jit(stepfun.sample_intervals, static_argnums=3, static_argnames=("single_jitter", "domain"))


@SETTINGS
@given(step_functions(), st.integers(0, 2**32 - 1))
def test_searchsorted_and_query_match_naive(tw, seed):
    t, w = tw
    q = np.random.default_rng(seed).uniform(t[0] - 1, t[-1] + 1, 20).astype(np.float32).astype(np.float64)
    q[:2] = t[3], t[-1]  # exact hits
    lo, hi = searchsorted(f32(t), f32(q))
    for k, v in enumerate(q):
        below = np.nonzero(t <= v)[0]
        exp_lo = below[-1] if len(below) else 0
        exp_hi = min(exp_lo + 1, len(t) - 1) if len(below) else 0
        assert (int(lo[k]), int(hi[k])) == (exp_lo, exp_hi), (v, t)
    y = np.arange(1.0, N + 1)
    got = query(f32(q), f32(t), f32(y), outside_value=-1.0)
    expect = [y[np.nonzero(t <= v)[0][-1]] if t[0] <= v < t[-1] else -1.0 for v in q]
    np.testing.assert_array_equal(got, expect)


@SETTINGS
@given(step_functions(), st.integers(0, 2**32 - 1))
def test_invert_cdf_matches_naive_loop(tw, seed):
    t, w = tw
    u = np.sort(np.random.default_rng(seed).uniform(0, 1, 30))
    logits = np.where(w > 0, np.log(np.maximum(w, 1e-300)), -np.inf)
    got = invert_cdf(f32(u), f32(t), f32(logits))
    np.testing.assert_allclose(got, naive_invert_cdf(u, t, w), atol=2e-5 * (t[-1] - t[0]) / w[w > 0].min())
    cw = stepfun.integrate_weights(f32(w))
    assert cw[0] == 0 and cw[-1] == 1 and np.all(np.diff(cw) >= 0)


def test_invert_cdf_survives_all_empty_rows():
    t = f32([[0.0, 1.0, 2.0, 4.0]])
    logits = jnp.full((1, 3), -jnp.inf)
    out = invert_cdf(f32([[0.0, 0.5, 0.99]]), t, logits)
    np.testing.assert_allclose(out, [[0.0, 1.5, 3.94]], rtol=1e-5)  # uniform fallback.


@SETTINGS
@given(step_functions(), st.integers(0, 2**32 - 1), st.booleans())
def test_sample_is_stratified_in_the_cdf(tw, seed, single):
    t, w = tw
    k = 8
    logits = f32(np.log(w + 1e-30))
    s = np.asarray(sample(jax.random.PRNGKey(seed), f32(t)[None], logits[None], k,
                                  single_jitter=single))[0]
    assert np.all(np.diff(s) >= 0) and t[0] <= s[0] and s[-1] <= t[-1]
    # Map samples back through the float64 CDF: sample i lies in [i/k, (i+1)/k).
    u = np.interp(s, t, np.concatenate([[0.0], np.cumsum(w)]))
    strata = np.floor(u * k + 1e-4)
    assert np.array_equal(np.minimum(strata, k - 1), np.arange(k)), u
    if single:
        np.testing.assert_allclose(np.diff(u), 1.0 / k, atol=1e-4)
    c = np.asarray(sample(None, f32(t)[None], logits[None], k, deterministic_center=True))[0]
    np.testing.assert_allclose(np.interp(c, t, np.concatenate([[0.0], np.cumsum(w)])), (np.arange(k) + 0.5) / k,
                               atol=1e-4)


def test_sample_histogram_follows_the_weights():
    t = np.array([0.0, 1.0, 1.5, 3.0, 4.0])
    w = np.array([0.1, 0.4, 0.0, 0.5])
    s = sample(jax.random.PRNGKey(0), f32(np.tile(t, (4000, 1))), f32(np.log(w + 1e-30))[None], 4)
    counts = np.histogram(np.asarray(s).ravel(), bins=t)[0] / s.size
    np.testing.assert_allclose(counts, w, atol=0.01)


def test_sample_intervals():
    t = f32([[0.0, 0.25, 0.5, 1.0]])
    logits = f32(np.log([[0.2, 0.6, 0.2]]))
    for key in (None, jax.random.PRNGKey(3)):
        s = np.asarray(sample_intervals(key, t, logits, 16, single_jitter=True, domain=(0.0, 1.0)))[0]
        assert s.shape == (17,) and np.all(np.diff(s) > 0) and s[0] >= 0 and s[-1] <= 1
    with pytest.raises(ValueError, match="1"):
        stepfun.sample_intervals(None, t, logits, 1)


@SETTINGS
@given(step_functions(), step_functions(n=7, zeros=False))
def test_resample_matches_naive_overlap_sums(tw, tw2):
    (tp, vp), (t, _) = tw, tw2
    t = t * 1.5 - 0.5  # partially outside tp's range.
    got = resample(f32(t), f32(tp), f32(vp))
    np.testing.assert_allclose(got, naive_resample(t, tp, vp), atol=2e-6)
    wp = np.diff(tp)
    avg = naive_resample(t, tp, vp * wp) / np.maximum(1.2e-7, naive_resample(t, tp, wp))
    np.testing.assert_allclose(resample(f32(t), f32(tp), f32(vp), use_avg=True), avg, atol=1e-4, rtol=1e-4)


@SETTINGS
@given(step_functions(), step_functions(n=5, zeros=False))
def test_outer_measure_bounds_any_rebinning(tw, tw_env):
    """lossfun_outer is ~0 when the envelope carries the fine function's mass."""
    (t, w), (t_env, _) = tw, tw_env
    # An envelope grid covering t, coarser than t.
    t_env = t[0] + (t_env - t_env[0]) / (t_env[-1] - t_env[0]) * (t[-1] - t[0])
    w_env = naive_resample(t_env, t, w)
    np.testing.assert_allclose(outer_measure(f32(t), f32(t_env), f32(w_env)),
                               naive_outer(t, t_env, w_env), atol=1e-5)
    loss = np.asarray(lossfun_outer(f32(t), f32(w), f32(t_env), f32(w_env)))
    assert loss.max() < 1e-6
    # The same envelope at half height no longer bounds the function
    # everywhere: compare with the loss computed from the naive outer measure.
    loss_half = np.asarray(lossfun_outer(f32(t), f32(w), f32(t_env), f32(0.5 * w_env)))
    expect = np.maximum(0, w - 0.5 * naive_outer(t, t_env, w_env)) ** 2 / (w + 1.2e-7)
    np.testing.assert_allclose(loss_half, expect, rtol=1e-4, atol=1e-7)
    # Shrunk enough, the envelope is violated wherever w > 0.
    outer = naive_outer(t, t_env, w_env)
    c = 0.5 * np.min(w[w > 0] / outer[w > 0])
    loss_c = np.asarray(lossfun_outer(f32(t), f32(w), f32(t_env), f32(c * w_env)))
    assert np.all(loss_c[w > 0] > 0)


def distortion_by_quadrature(t, w, k=250):
    """int int p(u) p(v) |u - v| du dv of the density p = w / width.

    Midpoint rule with k nodes inside every interval (so the density's jumps
    fall on cell boundaries), summed over all pairs of nodes: O((n k)^2).
    """
    frac = (np.arange(k) + 0.5) / k
    u = (t[:-1, None] + frac[None] * np.diff(t)[:, None]).ravel()
    mass = np.repeat(w / k, k)  # p * cell width
    return mass @ np.abs(u[:, None] - u[None, :]) @ mass


@settings(max_examples=8, deadline=None)
@given(step_functions())
def test_distortion_loss_matches_double_integral(tw):
    t, w = tw
    got = float(lossfun_distortion(f32(t), f32(w)))
    ref = distortion_by_quadrature(t, w)
    assert np.isclose(got, ref, rtol=2e-3, atol=1e-5), (got, ref)


def test_distortion_loss_prefers_compact_weights():
    t = f32(np.linspace(0, 1, 11))
    spread = jnp.full((10,), 0.1)
    peak = jnp.zeros(10).at[4].set(1.0)
    assert float(lossfun_distortion(t, peak)) < float(lossfun_distortion(t, spread))
    np.testing.assert_allclose(lossfun_distortion(t, peak), 0.1 / 3, rtol=1e-6)


@SETTINGS
@given(step_functions(), st.floats(0.01, 0.5), st.integers(0, 2**32 - 1))
def test_max_dilate_matches_pointwise_maximum(tw, dilation, seed):
    t, w = tw
    y = w / np.diff(t)
    t_out, y_out = max_dilate(f32(t), f32(y), dilation)
    q = np.random.default_rng(seed).uniform(t[0] - 1, t[-1] + 1, 200)
    expect = [max([y[i] for i in range(N) if t[i] - dilation <= v < t[i + 1] + dilation], default=0.0) for v in q]
    got = query(f32(q), t_out, y_out)
    close = np.min(np.abs(q[:, None] - np.concatenate([t, t - dilation, t + dilation])[None]), axis=1) < 1e-4
    np.testing.assert_allclose(np.asarray(got)[~close], np.asarray(expect)[~close], rtol=1e-5)
    # Weights version: renormalised and never below the input density.
    td, wd = stepfun.max_dilate_weights(f32(t), f32(w), dilation, domain=(t[0], t[-1]), renormalize=True)
    assert abs(float(wd.sum()) - 1) < 1e-5 and td[0] >= t[0] - 1e-6 and td[-1] <= t[-1] + 1e-6


@SETTINGS
@given(step_functions())
def test_weighted_percentile_matches_numpy(tw):
    t, w = tw
    ps = [5.0, 25.0, 50.0, 95.0]
    got = weighted_percentile(f32(t), f32(w), ps)
    ref = naive_invert_cdf(np.array(ps) / 100, t, w)
    np.testing.assert_allclose(got, ref, atol=1e-4 * (t[-1] - t[0]) / w[w > 0].min())


def rows_with_ties(seed, rows, n, grid=8):
    """Sorted endpoints [rows, n+1] in [0, 1], half the rows snapped to a coarse grid (ties, zero widths)."""
    rng = np.random.default_rng(seed)
    t = np.sort(rng.uniform(0, 1, (rows, n + 1)), axis=-1)
    t[::2] = np.sort(np.round(t[::2] * grid) / grid, axis=-1)
    return t.astype(np.float32)


@pytest.mark.parametrize("n", [1, 12, 64])
def test_count_matches_numpy_searchsorted(n):
    t = rows_with_ties(n, 16, n)
    v = np.random.default_rng(1).uniform(-0.1, 1.1, (16, 40)).astype(np.float32)
    v[:, : min(n + 1, 40)] = t[:, : min(n + 1, 40)]  # exact hits
    v[::2] = np.round(v[::2] * 8) / 8
    for side in ("left", "right"):
        got = jax.jit(stepfun._count, static_argnums=2)(f32(t), f32(v), side)
        expect = [np.searchsorted(t[r], v[r], side=side) for r in range(len(t))]
        np.testing.assert_array_equal(got, expect)


@pytest.mark.parametrize("n", [1, 5, 64])
def test_range_max_matches_naive_loop(n):
    rng = np.random.default_rng(n)
    y = rng.uniform(0, 1, (8, n)).astype(np.float32)
    first = rng.integers(0, n + 1, (8, 50))
    last = rng.integers(-1, n, (8, 50))  # includes empty ranges (first > last).
    got = jax.jit(stepfun._range_max)(f32(y), jnp.asarray(first, jnp.int32), jnp.asarray(last, jnp.int32))
    expect = [[y[r, f:l + 1].max() if f <= l else 0.0 for f, l in zip(first[r], last[r])] for r in range(8)]
    np.testing.assert_array_equal(got, expect)


@pytest.mark.parametrize("n", [1, 12, 64])
@pytest.mark.parametrize("dilation", [0.0, 0.0103125, 0.125])
def test_max_dilate_equals_all_pairs_mask(n, dilation):
    """Bit for bit the O(n^2) formulation it replaced: max over i of y_i where lo_i <= x < hi_i, else 0."""
    t = rows_with_ties(n, 32, n)
    y = np.random.default_rng(2).uniform(0, 1, (32, n)).astype(np.float32) ** 3
    y[y < 0.1] = 0.0
    for domain in ((-np.inf, np.inf), (0.0, 1.0)):
        t_out, y_out = jax.jit(stepfun.max_dilate, static_argnames="domain")(f32(t), f32(y), dilation, domain=domain)

        def all_pairs(t, y, t_out):
            lo, hi = t[..., :-1] - dilation, t[..., 1:] + dilation
            x = 0.5 * (t_out[..., 1:] + t_out[..., :-1])
            covers = (lo[..., None, :] <= x[..., :, None]) & (x[..., :, None] < hi[..., None, :])
            return jnp.max(jnp.where(covers, y[..., None, :], 0.0), axis=-1)

        np.testing.assert_array_equal(y_out, jax.jit(all_pairs)(f32(t), f32(y), t_out))


def _largest_intermediate(fn, *args):
    """Element count of the largest array that `fn`'s jaxpr creates (nested jaxprs included)."""
    def walk(jaxpr):
        sizes = [int(np.prod(v.aval.shape)) for e in jaxpr.eqns for v in e.outvars if hasattr(v.aval, "shape")]
        for e in jaxpr.eqns:
            for p in e.params.values():
                for sub in p if isinstance(p, (list, tuple)) else [p]:
                    inner = getattr(sub, "jaxpr", sub)
                    if hasattr(inner, "eqns"):
                        sizes.append(walk(inner))
        return max(sizes, default=0)

    return walk(jax.make_jaxpr(fn)(*args).jaxpr)


def test_sampler_builds_no_all_pairs_tensor():
    """Dilating and resampling n intervals must not build [rays, ~3n, n] tensors.

    XLA:GPU fuses such a comparison tensor and its reduction into one kernel
    that took 5-7 minutes to compile per call site for mip-NeRF 360 (16384
    rays, 64 samples from 193 endpoints); bounded per-ray intermediates keep
    the whole training step compiling in well under a minute.
    """
    rays, n = 4, 64
    t = f32(np.tile(np.linspace(0, 1, n + 1), (rays, 1)))
    w = jnp.full((rays, n), 1.0 / n)

    def sampler(t, w):
        td, wd = stepfun.max_dilate_weights(t, w, 0.01, domain=(0.0, 1.0), renormalize=True)
        s = stepfun.sample_intervals(jax.random.PRNGKey(0), td, jnp.log(wd), n, domain=(0.0, 1.0))
        return s, stepfun.lossfun_outer(s, jnp.full((rays, n), 1.0 / n), t, w)

    largest = _largest_intermediate(sampler, t, w)
    assert largest <= 16 * rays * (3 * n + 1), largest


@pytest.mark.parametrize("n", [1, 12, 64])
@pytest.mark.parametrize("dilation", [0.0, 0.0103125, 0.125])
def test_max_dilate_on_grid_is_the_exact_dilation_maximised_per_interval(n, dilation):
    """On each interval of t, the largest value the exact (union-of-endpoints) dilation takes there."""
    t = rows_with_ties(n + 7, 32, n)
    y = np.random.default_rng(3).uniform(0, 1, (32, n)).astype(np.float32) ** 3
    y[y < 0.1] = 0.0
    got = np.asarray(jax.jit(stepfun.max_dilate_on_grid)(f32(t), f32(y), dilation))
    t_ex, y_ex = (np.asarray(a) for a in stepfun.max_dilate(f32(t), f32(y), dilation))
    mid = 0.5 * (t_ex[:, 1:] + t_ex[:, :-1])
    for r in range(32):
        for i in range(n):
            if t[r, i + 1] <= t[r, i]:
                continue  # a zero-width interval carries no mass whatever its value
            inside = (mid[r] > t[r, i]) & (mid[r] < t[r, i + 1]) & (t_ex[r, 1:] > t_ex[r, :-1])
            assert got[r, i] == pytest.approx(y_ex[r][inside].max(), abs=1e-7), (r, i)
    # The weights version keeps the endpoints and only ever adds mass.
    w = y * np.diff(t, axis=-1)
    td, wd = stepfun.max_dilate_weights(f32(t), f32(w), dilation, on_grid=True)
    np.testing.assert_array_equal(td, f32(t))
    assert np.all(np.asarray(wd) >= w - 1e-7)
    np.testing.assert_allclose(stepfun.renormalize_weights(wd).sum(-1)[w.sum(-1) > 0], 1.0, rtol=1e-5)


def blurred_mass_by_quadrature(tq, t, w, r, k=4001):
    """Mass of the box-blurred density of (t, w) in each interval of tq: the integral over [a, b]
    of (F(x + r) - F(x - r)) / 2r (F the step function's CDF, piecewise linear) by the
    trapezoid rule on k nodes per interval."""
    cdf = np.concatenate([[0.0], np.cumsum(w)])
    F = lambda x: np.interp(x, t, cdf, left=0.0, right=cdf[-1])
    out = []
    for a, b in zip(tq[:-1], tq[1:]):
        x = np.linspace(a, b, k)
        out.append(np.trapezoid((F(x + r) - F(x - r)) / (2 * r), x))
    return np.array(out)


blur_and_resample = jax.jit(stepfun.blur_and_resample_weights)


@SETTINGS
@given(step_functions(), step_functions(n=7, zeros=False), st.floats(0.02, 0.5))
def test_blur_and_resample_matches_quadrature(tw, tw2, r):
    """Zip-NeRF's blurred re-binning against a direct integration of the blurred density."""
    (t, w), (tq, _) = tw, tw2
    tq = t[0] - 0.5 + (tq - tq[0]) / (tq[-1] - tq[0]) * (t[-1] - t[0] + 1.0)  # spans [t0 - .5, tn + .5]
    got = np.asarray(blur_and_resample(f32(tq), f32(t), f32(w), r))
    np.testing.assert_allclose(got, blurred_mass_by_quadrature(tq, t, w, r), atol=3e-5)
    # Blurring moves mass but keeps it: r <= 0.5, so all of it lands inside tq.
    assert abs(got.sum() - w.sum()) < 3e-5


@SETTINGS
@given(step_functions(), step_functions(n=7, zeros=False))
def test_blur_and_resample_tends_to_plain_resample(tw, tw2):
    (t, w), (tq, _) = tw, tw2
    tq = tq * 1.5 - 0.5
    got = blur_and_resample(f32(tq), f32(t), f32(w), 1e-3)
    np.testing.assert_allclose(got, naive_resample(tq, t, w), atol=3e-3)

"""Piecewise-constant functions along rays ("step functions").

Short names and shapes; every function works along the last axis, with any
batch dimensions `...` in front:
  t        [..., n+1]  sorted interval endpoints.
  w        [..., n]    interval weights ("mass"), w >= 0, usually sum <= 1.
  p        [..., n]    interval densities: p = w / (t[1:] - t[:-1]).
  y, v     [..., n]    arbitrary per-interval values.
  logits   [..., n]    log-weights (may be -inf for empty intervals).
  u        [..., k]    quantiles in [0, 1).
  cw       [..., n+1]  cumulative weights (a CDF sampled at `t`).

mip-NeRF 360 samples each level from the previous level's weights
(`sample_intervals`), asks the proposal weights to bound the final ones from
above (`lossfun_outer`) and penalises spread-out weights
(`lossfun_distortion`). Zip-NeRF's anti-aliased interlevel loss compares the
proposal weights with the final ones blurred by a box filter and re-binned
onto the proposal's intervals (`blur_and_resample_weights`).
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "searchsorted",
    "query",
    "sorted_interp",
    "integrate_weights",
    "weight_to_pdf",
    "pdf_to_weight",
    "invert_cdf",
    "sample",
    "sample_intervals",
    "outer_measure",
    "lossfun_outer",
    "lossfun_distortion",
    "max_dilate",
    "max_dilate_on_grid",
    "max_dilate_weights",
    "renormalize_weights",
    "weighted_percentile",
    "resample",
    "blur_and_resample_weights",
]

_EPS = float(np.finfo(np.float32).eps)


def _count(a, v, side: str):
    """Entries of sorted `a` [..., n] that are <= v (side='right') or < v ('left').

    A binary search (ceil(log2(n + 1)) gathers per query). On GPU the loop is
    unrolled ("scan_unrolled"): the rolled while loop's per-iteration kernels
    took ~0.6 ms of the `fast` step's 9.2 ms, and unrolled the step trains at
    2.14 M rays/s instead of 1.84 M (H100, 16384 rays; bench/RESULTS.md call 12). On CPU the
    rolled loop ("scan") stays: unrolled, it compiled 2.5x slower and ran
    slower. Not "compare_all": its [..., m, n] comparison tensor becomes one
    reduction fusion that XLA:GPU turns into a kernel taking minutes to
    compile (the mip-NeRF 360 sampler searches 64 quantiles in 193 endpoints
    for 16k rays). Every `jnp.searchsorted` method uses the same total order,
    so the indices are the same. DNERF_SEARCHSORTED overrides the method
    (for bench/ comparisons).
    """
    method = os.environ.get("DNERF_SEARCHSORTED") or ("scan_unrolled" if jax.default_backend() == "gpu" else "scan")
    fn = functools.partial(jnp.searchsorted, side=side, method=method)
    return jnp.vectorize(fn, signature="(n),(m)->(m)")(a, v)


def _range_max(y, first, last):
    """max(y[..., first:last + 1]) for index arrays first, last [..., m]; 0 where first > last.

    A sparse table: level k holds the maxima of the 2^k entries starting at
    each index, and a range of length L is the union of two such windows with
    2^k <= L < 2^(k+1). Exact (max is idempotent); n log n work per row.
    """
    n = y.shape[-1]
    levels = [y]
    while 2 ** len(levels) <= n:
        half = 2 ** (len(levels) - 1)
        prev = levels[-1]
        # The last `half` entries would look past the end; they are never read
        # (a window must fit in its range), so any value does: keep prev's.
        levels.append(jnp.maximum(prev, jnp.concatenate([prev[..., half:], prev[..., n - half:]], axis=-1)))
    table = jnp.concatenate(levels, axis=-1)  # [..., len(levels) * n]
    length = last - first + 1
    powers = jnp.asarray(2 ** np.arange(1, len(levels)), length.dtype)
    k = jnp.sum(length[..., None] >= powers, axis=-1).astype(length.dtype)  # floor(log2(length)).
    start = k * n + jnp.clip(first, 0, n - 1)
    end = k * n + jnp.clip(last + 1 - jnp.left_shift(jnp.ones_like(k), k), 0, n - 1)
    both = jnp.maximum(jnp.take_along_axis(table, start, axis=-1), jnp.take_along_axis(table, end, axis=-1))
    return jnp.where(length > 0, both, 0.0)


def searchsorted(a, v):
    """Bracketing indices of `v` [..., m] in the sorted `a` [..., n].

    Returns (idx_lo, idx_hi) with a[idx_lo] <= v < a[idx_hi] when
    a[0] <= v < a[-1]; below a[0] both are 0, at or above a[-1] both are n-1.
    """
    count = _count(a, v, "right")
    n = a.shape[-1]
    return jnp.clip(count - 1, 0, n - 1), jnp.clip(count, 0, n - 1)


def query(tq, t, y, *, outside_value=0.0):
    """Values of the step function (t, y) at the points `tq` [..., m]."""
    lo, hi = searchsorted(t, tq)
    inside = lo != hi  # equal indices mean tq is outside [t[0], t[-1]).
    return jnp.where(inside, jnp.take_along_axis(y, lo, axis=-1), outside_value)


def sorted_interp(x, xp, fp):
    """Piecewise-linear interpolation like `jnp.interp`, batched.

    xp [..., n] must be sorted; repeated values are allowed (an x equal to a
    repeated value takes the last of the repeats, so a CDF's flat stretch
    maps to the start of the next non-empty interval); fp [..., n]; x [..., m].
    Values outside [xp[0], xp[-1]] are clamped to fp[0] / fp[-1].
    """
    lo, hi = searchsorted(xp, x)
    x0, x1 = jnp.take_along_axis(xp, lo, axis=-1), jnp.take_along_axis(xp, hi, axis=-1)
    f0, f1 = jnp.take_along_axis(fp, lo, axis=-1), jnp.take_along_axis(fp, hi, axis=-1)
    # The bracket can have zero width (lo == hi at the ends); then use f0.
    width = x1 - x0
    frac = jnp.where(width > 0, (x - x0) / jnp.where(width > 0, width, 1.0), 0.0)
    return f0 + jnp.clip(frac, 0.0, 1.0) * (f1 - f0)


def integrate_weights(w):
    """The CDF at the endpoints: [0, w0, w0+w1, ..., 1], shape [..., n+1].

    Assumes `w` sums to 1; the partial sums are clipped at 1 and the last
    entry is exactly 1 so that float round-off cannot push quantiles past
    the end of the ray.
    """
    cw = jnp.minimum(1.0, jnp.cumsum(w[..., :-1], axis=-1))
    pad = jnp.zeros(w.shape[:-1] + (1,), w.dtype)
    return jnp.concatenate([pad, cw, pad + 1.0], axis=-1)


def weight_to_pdf(t, w):
    """Densities p = w / width; zero-width intervals are clamped to eps^2."""
    return w / jnp.maximum(_EPS**2, t[..., 1:] - t[..., :-1])


def pdf_to_weight(t, p):
    """Weights w = p * width (the inverse of `weight_to_pdf`)."""
    return p * (t[..., 1:] - t[..., :-1])


def _normalized_weights(logits):
    """softmax(logits) that survives rows of all -inf (returns uniform ones)."""
    top = jnp.max(logits, axis=-1, keepdims=True)
    top = jnp.where(jnp.isfinite(top), top, 0.0)  # all -inf: avoid inf - inf.
    e = jnp.exp(logits - top)
    total = jnp.sum(e, axis=-1, keepdims=True)
    uniform = jnp.full_like(e, 1.0 / e.shape[-1])
    return jnp.where(total > 0, e / jnp.where(total > 0, total, 1.0), uniform)


def invert_cdf(u, t, logits):
    """Inverse CDF of the step function (t, softmax(logits)) at quantiles u."""
    cw = integrate_weights(_normalized_weights(logits))
    return sorted_interp(u, cw, t)


def sample(rng, t, logits, num_samples: int, *, single_jitter: bool = False, deterministic_center: bool = False):
    """Draw `num_samples` sorted points [..., num_samples] by inverse CDF.

    With a key, quantiles are stratified: u_i = (i + xi) / k with xi ~ U[0,1)
    per sample, or one xi per ray if `single_jitter`. With rng=None they are
    evenly spaced: (i + 1/2) / k if `deterministic_center`, else
    linspace(0, 1 - eps, k).
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples!r}")
    k = num_samples
    batch = t.shape[:-1]
    i = jnp.arange(k, dtype=t.dtype)
    if rng is None:
        if deterministic_center:
            u = (i + 0.5) / k
        else:
            u = jnp.linspace(0.0, 1.0 - _EPS, k, dtype=t.dtype)
        u = jnp.broadcast_to(u, batch + (k,))
    else:
        xi = jax.random.uniform(rng, batch + ((1,) if single_jitter else (k,)), dtype=t.dtype)
        # Quantiles must stay < 1 so that they land inside the last interval.
        u = jnp.minimum((i + xi) / k, 1.0 - _EPS)
    return invert_cdf(u, t, logits)


def sample_intervals(
    rng,
    t,
    logits,
    num_samples: int,
    *,
    single_jitter: bool = False,
    domain: tuple[float, float] = (-np.inf, np.inf),
):
    """Sample `num_samples` intervals [..., num_samples + 1] from (t, logits).

    Draws interval centres with `sample(..., deterministic_center=True)`, puts
    endpoints halfway between neighbouring centres and mirrors the first and
    last half-widths outwards, clamped to `domain`.
    """
    if num_samples < 2:
        raise ValueError(f"sample_intervals needs num_samples >= 2, got {num_samples!r}")
    c = sample(rng, t, logits, num_samples, single_jitter=single_jitter, deterministic_center=True)
    mid = 0.5 * (c[..., 1:] + c[..., :-1])
    first = jnp.maximum(domain[0], 2.0 * c[..., :1] - mid[..., :1])
    last = jnp.minimum(domain[1], 2.0 * c[..., -1:] - mid[..., -1:])
    return jnp.concatenate([first, mid, last], axis=-1)


def outer_measure(t, t_env, w_env):
    """For each interval of t: the total w_env of the t_env intervals overlapping it.

    Overlap means an intersection of positive length (intervals that only
    touch at an endpoint do not count). This is the tightest upper bound on
    any step function whose mass is a re-binning of (t_env, w_env) onto t.
    Shape [..., n].
    """
    m = w_env.shape[-1]
    cw = jnp.concatenate([jnp.zeros_like(w_env[..., :1]), jnp.cumsum(w_env, axis=-1)], axis=-1)
    # Interval j = [a, b] overlaps env intervals first .. last - 1 with
    # first = #{e_k <= a} - 1 (the one containing a) and last = #{e_k < b}.
    first = jnp.clip(_count(t_env, t[..., :-1], "right") - 1, 0, m)
    last = jnp.clip(_count(t_env, t[..., 1:], "left"), 0, m)
    last = jnp.maximum(first, last)  # empty ranges (e.g. b <= e_0) give 0.
    return jnp.take_along_axis(cw, last, axis=-1) - jnp.take_along_axis(cw, first, axis=-1)


def lossfun_outer(t, w, t_env, w_env):
    """mip-NeRF 360's interlevel loss: penalise w where it exceeds the envelope.

    Loss per interval [..., n]: max(0, w - outer)^2 / (w + eps), with `outer`
    from `outer_measure(t, t_env, w_env)`. Zero whenever (t_env, w_env) bounds
    (t, w) from above.
    """
    excess = jnp.maximum(0.0, w - outer_measure(t, t_env, w_env))
    # Dividing by w (+eps against 0/0) turns the quadratic into a loss with a
    # constant gradient as w_env -> 0 (paper Eq. 13).
    return excess**2 / (w + _EPS)


def lossfun_distortion(t, w):
    """Distortion loss of each ray [...] (paper Eq. 15), computed in O(n).

    L = sum_ij w_i w_j |m_i - m_j| + (1/3) sum_i w_i^2 (t_{i+1} - t_i),
    the double integral of |u - v| under the density with mass w_i on
    interval i (m: midpoints). With sorted midpoints the pairwise term is
    2 sum_i w_i (m_i W_i - (wm)_i) where W_i and (wm)_i are exclusive prefix
    sums of w and w m.
    """
    m = 0.5 * (t[..., 1:] + t[..., :-1])
    wm = w * m
    w_before = jnp.cumsum(w, axis=-1) - w
    wm_before = jnp.cumsum(wm, axis=-1) - wm
    inter = 2.0 * jnp.sum(w * (m * w_before - wm_before), axis=-1)
    intra = jnp.sum(w * w * (t[..., 1:] - t[..., :-1]), axis=-1) / 3.0
    return inter + intra


def max_dilate(t, y, dilation, *, domain: tuple[float, float] = (-np.inf, np.inf)):
    """Max-pool a non-negative step function (t, y) by `dilation` on each side.

    The result takes, at each point x, the largest y_i over the intervals
    [t_i - dilation, t_{i+1} + dilation) containing x. Its endpoints are the
    union of t, t[:-1] - dilation and t[1:] + dilation, clipped to `domain`:
    t_out [..., 3n+1], y_out [..., 3n] (zero-width intervals are harmless).
    """
    lo = t[..., :-1] - dilation
    hi = t[..., 1:] + dilation
    t_out = jnp.clip(jnp.sort(jnp.concatenate([t, lo, hi], axis=-1), axis=-1), *domain)
    # Evaluate at interval midpoints: robust to ties between endpoints.
    x = 0.5 * (t_out[..., 1:] + t_out[..., :-1])
    # Interval i covers x iff lo_i <= x < hi_i. Both lo and hi are sorted, so
    # the covering intervals are the contiguous range first..last: a range
    # maximum instead of an all-pairs [..., 3n, n] mask (which XLA:GPU fuses
    # into a reduction that takes minutes to compile).
    first = _count(hi, x, "right")
    last = _count(lo, x, "right") - 1
    return t_out, _range_max(y, first, last)


def max_dilate_on_grid(t, y, dilation):
    """An upper bound of `max_dilate(t, y, dilation)` on the same endpoints t.

    Interval i takes the largest y_j over the intervals j that come within
    `dilation` of it (t_{j+1} > t_i - dilation and t_j < t_{i+1} + dilation),
    the maximum of the exact dilation over interval i. No sort and a third of
    the searching: for the mip-NeRF 360 sampler (64 intervals) the exact
    version's two sorts of 193 endpoints and its searches took 0.86 ms of a
    5.8 ms `fast` step (H100, bench/RESULTS.md call 19). Support does not grow
    beyond [t_0, t_n]. Returns y_out [..., n].
    """
    first = _count(t[..., 1:], t[..., :-1] - dilation, "right")
    last = _count(t[..., :-1], t[..., 1:] + dilation, "left") - 1
    return _range_max(y, first, jnp.maximum(first, last))


def max_dilate_weights(
    t,
    w,
    dilation,
    *,
    domain: tuple[float, float] = (-np.inf, np.inf),
    renormalize: bool = False,
    on_grid: bool = False,
):
    """`max_dilate` (or `max_dilate_on_grid`) applied to the densities of (t, w), returned as weights."""
    if on_grid:
        t_out, p_out = t, max_dilate_on_grid(t, weight_to_pdf(t, w), dilation)
    else:
        t_out, p_out = max_dilate(t, weight_to_pdf(t, w), dilation, domain=domain)
    w_out = pdf_to_weight(t_out, p_out)
    return t_out, renormalize_weights(w_out) if renormalize else w_out


def renormalize_weights(w):
    """w [..., n] scaled to sum to 1 along the last axis; an all-zero row stays zero."""
    # eps^2 floor: an all-zero row stays zero instead of becoming nan.
    return w / jnp.maximum(_EPS**2, jnp.sum(w, axis=-1, keepdims=True))


def weighted_percentile(t, w, ps):
    """Percentiles `ps` (in [0, 100]) of (t, w) [..., len(ps)]; w must sum to 1."""
    ps = jnp.asarray(ps, dtype=t.dtype)
    u = jnp.broadcast_to(ps / 100.0, t.shape[:-1] + ps.shape)
    return sorted_interp(u, integrate_weights(w), t)


def resample(t, tp, vp, *, use_avg: bool = False):
    """Re-bin the step function (tp [..., m+1], vp [..., m]) onto t [..., n+1].

    By default each output interval gets the sum of the mass of vp falling
    inside it (mass is spread uniformly within each input interval); with
    `use_avg` it gets the width-weighted average value instead. Mass outside
    [tp[0], tp[-1]] is zero.
    """
    if use_avg:
        wp = tp[..., 1:] - tp[..., :-1]
        num = resample(t, tp, vp * wp)
        den = resample(t, tp, wp)
        return num / jnp.maximum(_EPS, den)  # empty output intervals -> 0.
    acc = jnp.concatenate([jnp.zeros_like(vp[..., :1]), jnp.cumsum(vp, axis=-1)], axis=-1)
    acc_t = sorted_interp(t, tp, acc)
    return acc_t[..., 1:] - acc_t[..., :-1]


def _cdf_antiderivative(x, t, w):
    """I(x) = integral from t[0] to x of the CDF of (t, w), at the points x [..., m]; exact.

    The CDF F is piecewise linear (0 before t[0], sum(w) after t[-1]), so I is piecewise
    quadratic: inside interval k, I(x) = I_k + F_k d + p_k d^2 / 2 with d = x - t_k.
    """
    n = w.shape[-1]
    width = t[..., 1:] - t[..., :-1]
    cdf = jnp.concatenate([jnp.zeros_like(w[..., :1]), jnp.cumsum(w, axis=-1)], axis=-1)
    knots = jnp.concatenate([jnp.zeros_like(w[..., :1]),
                             jnp.cumsum(0.5 * (cdf[..., :-1] + cdf[..., 1:]) * width, axis=-1)], axis=-1)
    pdf = weight_to_pdf(t, w)
    k = jnp.clip(_count(t, x, "right") - 1, 0, n - 1)
    take = functools.partial(jnp.take_along_axis, indices=k, axis=-1)
    d = jnp.clip(x - take(t), 0.0, take(width))
    inside = take(knots) + take(cdf) * d + 0.5 * take(pdf) * d * d
    return inside + cdf[..., -1:] * jnp.maximum(0.0, x - t[..., -1:])


def blur_and_resample_weights(tq, t, w, halfwidth):
    """The step function (t, w) convolved with a box of half-width `halfwidth`, re-binned onto tq.

    The density w / width blurred by a box [-r, r] is piecewise linear; its mass in [a, b] is
    G(b) - G(a) with G(x) = (I(x + r) - I(x - r)) / 2r, I the antiderivative of the CDF
    (`_cdf_antiderivative`). Zip-NeRF's anti-aliased interlevel loss compares proposal weights
    with this. tq [..., m+1] sorted; halfwidth > 0, a scalar or broadcastable to tq. Returns
    [..., m] (>= 0; the mass blurred past tq's ends is not counted).
    """
    r = jnp.broadcast_to(jnp.asarray(halfwidth, dtype=w.dtype), tq.shape)
    m = tq.shape[-1]
    both = _cdf_antiderivative(jnp.concatenate([tq + r, tq - r], axis=-1), t, w)  # one search, one CDF
    g = (both[..., :m] - both[..., m:]) / (2.0 * r)
    return jnp.maximum(0.0, g[..., 1:] - g[..., :-1])

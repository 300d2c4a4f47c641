"""Coordinate spaces, Gaussians along cones, and positional encodings.

Short names and shapes (batch dimensions `...` first):
  x, z             [..., 3]      points in world space / contracted space.
  mean             [..., d]      Gaussian means; `cov` [..., d, d] full
                                 covariances, `var` [..., d] diagonal ones.
  origins          [..., 3]      ray origins.
  directions       [..., 3]      ray directions (nerflib: camera-frame z == 1,
                                 not unit length; see nerflib.types).
  radii            [..., 1]      cone radius at t == 1.
  tdist            [..., n+1]    metric distances (interval endpoints) along
                                 each ray, in units of `directions`.
  sdist            [..., n+1]    normalised distances in [0, 1] (see
                                 `construct_ray_warps`).
  basis            [3, k]        unit directions that positions are projected
                                 onto before encoding.

mip-NeRF 360 (Barron et al. 2022) represents each interval of a cone as a
Gaussian, pushes it through the scene contraction by linearisation, projects
it onto a fixed set of directions and encodes it with the integrated
positional encoding (IPE), whose sinusoids are attenuated by the variance.
"""

from __future__ import annotations

import functools
import itertools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "contract",
    "inv_contract",
    "track_linearize",
    "construct_ray_warps",
    "RAY_WARPS",
    "pos_enc",
    "integrated_pos_enc",
    "expected_sin",
    "lift_gaussian",
    "frustum_moments",
    "conical_frustum_to_gaussian",
    "cast_rays",
    "MULTISAMPLE_COUNTS",
    "multisample_frustum",
    "contract_scale",
    "lift_and_diagonalize",
    "geodesic_basis",
]

_EPS = float(np.finfo(np.float32).eps)


# --------------------------------------------------------------------------
# Scene contraction.
# --------------------------------------------------------------------------


def contract(x):
    """mip-NeRF 360's contraction (paper Eq. 10) into the ball of radius 2.

    contract(x) = x                          if |x| <= 1
                = (2 - 1/|x|) * x / |x|      otherwise.

    Written as x * (2m - 1) / m^2 with m = max(1, |x|), which equals x inside
    the unit ball, so no `where` is needed and the gradient is finite
    everywhere.
    """
    # sqrt(max(1, |x|^2)) rather than max(1, sqrt(|x|^2)): the sqrt never sees
    # an argument below 1, so its gradient cannot be inf at x == 0.
    m = jnp.sqrt(jnp.maximum(1.0, jnp.sum(x * x, axis=-1, keepdims=True)))
    return x * ((2.0 * m - 1.0) / (m * m))


def inv_contract(z):
    """The inverse of `contract` for |z| < 2 (|z| >= 2 maps to a huge radius).

    inv(z) = z                       if |z| <= 1
           = z / (|z| (2 - |z|))     otherwise.
    """
    m = jnp.sqrt(jnp.maximum(1.0, jnp.sum(z * z, axis=-1, keepdims=True)))
    # Points on or outside the radius-2 sphere would divide by zero; clamp the
    # radius just inside it (maps to |x| ~ 1e6, "infinitely far").
    m = jnp.minimum(m, 2.0 - 4.0 * _EPS)
    return z / (m * (2.0 - m))


def track_linearize(fn: Callable, mean, cov):
    """Push Gaussians (mean, cov) through `fn` by linearising it at the mean.

    Returns (fn(mean), J cov J^T) where J is the Jacobian of `fn` at `mean`
    (a first-order, Kalman-filter-style approximation). `fn` must act
    pointwise on the last axis (like `contract`). `cov` must be full
    ([..., d, d]); diagonal covariances are rejected.
    """
    if cov.ndim != mean.ndim + 1 or cov.shape[-2:] != (mean.shape[-1],) * 2:
        raise ValueError(
            "track_linearize needs full covariances of shape mean.shape + (d,), "
            f"got mean {mean.shape} and cov {cov.shape}"
        )
    fn_mean, jvp = jax.linearize(fn, mean)
    # `jvp` maps a tangent shaped like `mean` to J @ tangent. Mapping it over
    # the columns of a matrix M (its last axis) gives J @ M.
    left = jax.vmap(jvp, in_axes=-1, out_axes=-1)
    j_cov = left(cov)  # J cov
    fn_cov = left(jnp.swapaxes(j_cov, -1, -2))  # J (J cov)^T = J cov J^T
    return fn_mean, fn_cov


# --------------------------------------------------------------------------
# Normalised ray distances.
# --------------------------------------------------------------------------

# name -> (forward curve g, inverse of g). `s` is an affine map of g(t).
RAY_WARPS: dict[str, tuple[Callable, Callable]] = {
    "linear": (lambda t: t, lambda g: g),
    "reciprocal": (jnp.reciprocal, jnp.reciprocal),
    "log": (jnp.log, jnp.exp),
    "sqrt": (jnp.sqrt, jnp.square),
    # Identity below 1 and 1/t above it, so that t_near may be 0.
    "piecewise": (
        lambda t: jnp.where(t < 1.0, 0.5 * t, 1.0 - 0.5 / jnp.maximum(t, 1.0)),
        lambda g: jnp.where(g < 0.5, 2.0 * g, 0.5 / jnp.maximum(1.0 - g, _EPS)),
    ),
}


def construct_ray_warps(fn: str | None, t_near, t_far):
    """A bijection between metric distances `t` and normalised ones `s`.

    s = (g(t) - g(t_near)) / (g(t_far) - g(t_near)), so s(t_near) = 0 and
    s(t_far) = 1. mip-NeRF 360 uses g(t) = 1/t ("reciprocal"), which spends
    samples uniformly in disparity: a far plane at 1e6 is harmless.

    Args:
      fn: a name in RAY_WARPS ('linear', 'reciprocal', 'log', 'sqrt',
        'piecewise'), or None for 'linear'. 'reciprocal' and 'log' need
        t_near > 0.
      t_near, t_far: [..., 1] bounds.

    Returns:
      (t_to_s, s_to_t), two functions of arrays that broadcast with the bounds.
    """
    name = "linear" if fn is None else fn
    if name not in RAY_WARPS:
        raise ValueError(f"unknown ray warp {fn!r}; choose one of {sorted(RAY_WARPS)} or None")
    g, g_inv = RAY_WARPS[name]
    g_near, g_far = g(t_near), g(t_far)

    def t_to_s(t):
        return (g(t) - g_near) / (g_far - g_near)

    def s_to_t(s):
        # (1 - s) a + s b rather than a + s (b - a): exact at both ends even
        # when |g_far| << |g_near| (1/t with far = 1e6).
        return g_inv((1.0 - s) * g_near + s * g_far)

    return t_to_s, s_to_t


# --------------------------------------------------------------------------
# Encodings.
# --------------------------------------------------------------------------


def _scaled(x, min_deg: int, max_deg: int, power: int = 1):
    """x[..., d] -> [..., (max_deg - min_deg) * d] scaled by 2^(power * deg).

    Frequencies vary slowest: the output is [x*2^min, ..., x*2^(max-1)].
    """
    if not 0 <= min_deg <= max_deg:
        raise ValueError(f"need 0 <= min_deg <= max_deg, got min_deg={min_deg!r}, max_deg={max_deg!r}")
    scales = 2.0 ** (power * np.arange(min_deg, max_deg, dtype=np.float64))
    scaled = x[..., None, :] * jnp.asarray(scales, dtype=x.dtype)[:, None]
    return scaled.reshape(x.shape[:-1] + (-1,))


def pos_enc(x, *, min_deg: int, max_deg: int, append_identity: bool = True):
    """NeRF's positional encoding [x, sin(2^l x), cos(2^l x)], l in [min, max).

    Output size: d * (append_identity + 2 * (max_deg - min_deg)).
    """
    xs = _scaled(x, min_deg, max_deg)
    feats = jnp.sin(jnp.concatenate([xs, xs + 0.5 * jnp.pi], axis=-1))
    return jnp.concatenate([x, feats], axis=-1) if append_identity else feats


def expected_sin(mean, var):
    """E[sin(y)] for y ~ N(mean, var), which is exp(-var / 2) sin(mean)."""
    # exp(-var/2) underflows gracefully to 0 for large var: no guard needed.
    return jnp.exp(-0.5 * var) * jnp.sin(mean)


def integrated_pos_enc(mean, var, *, min_deg: int, max_deg: int):
    """mip-NeRF's integrated positional encoding of a diagonal Gaussian.

    Returns [E sin(2^l y), E cos(2^l y)] for y ~ N(mean, diag(var)), l in
    [min_deg, max_deg), shape [..., 2 * d * (max_deg - min_deg)]. With
    var == 0 this equals `pos_enc(mean, append_identity=False)`.
    """
    m = _scaled(mean, min_deg, max_deg)
    v = _scaled(var, min_deg, max_deg, power=2)  # Var[a y] = a^2 Var[y].
    return expected_sin(jnp.concatenate([m, m + 0.5 * jnp.pi], axis=-1), jnp.concatenate([v, v], axis=-1))


# --------------------------------------------------------------------------
# Cones -> Gaussians.
# --------------------------------------------------------------------------


def lift_gaussian(directions, t_mean, t_var, r_var, *, diag: bool):
    """A 3D Gaussian from its 1D statistics along and across a ray.

    Args:
      directions: [..., 3] ray axis (any length; `t` is in its units).
      t_mean, t_var: [..., n] mean and variance of `t` along the axis.
      r_var: [..., n] variance across the axis, per perpendicular direction.
      diag: return only the diagonal of the covariance.

    Returns:
      mean [..., n, 3] (relative to the ray origin) and cov [..., n, 3, 3]
      (or [..., n, 3] if diag).
    """
    d = directions[..., None, :]  # [..., 1, 3]
    mean = d * t_mean[..., None]
    # |d|^2 >= 1 for nerflib rays; the clamp only protects degenerate input.
    d_sq = jnp.maximum(1e-10, jnp.sum(d * d, axis=-1, keepdims=True))
    if diag:
        dd = d * d
        return mean, t_var[..., None] * dd + r_var[..., None] * (1.0 - dd / d_sq)
    dd = d[..., :, None] * d[..., None, :]  # [..., 1, 3, 3]
    perp = jnp.eye(3, dtype=d.dtype) - dd / d_sq[..., None]
    cov = t_var[..., None, None] * dd + r_var[..., None, None] * perp
    return mean, cov


def frustum_moments(t0, t1, base_radius):
    """The moments of the conical frustum between t0 and t1 (its points weighted by volume).

    The cone has its apex at the origin and radius `base_radius * t` at
    distance t. Returns (t_mean, t_var, r_var): the mean and variance of the
    distance t along the axis, and the variance across the axis per
    perpendicular direction. Uses mip-NeRF's numerically stable form (its
    Eq. 7), written in the midpoint mu and half-width hw of [t0, t1] to avoid
    the catastrophic cancellation of the raw moments t1^k - t0^k.

    Shapes: t0, t1 [..., n]; base_radius [..., 1] (or broadcastable).
    """
    mu = 0.5 * (t0 + t1)
    hw = 0.5 * (t1 - t0)
    mu2, hw2 = mu * mu, hw * hw
    # 3 mu^2 + hw^2 is 0 only for the degenerate interval [0, 0]; clamp it.
    denom = jnp.maximum(_EPS, 3.0 * mu2 + hw2)
    t_mean = mu + 2.0 * mu * hw2 / denom
    t_var = hw2 / 3.0 - (4.0 / 15.0) * hw2 * hw2 * (12.0 * mu2 - hw2) / (denom * denom)
    # E[t^2] / 4 (a disk of radius R has variance R^2/4 per axis), times r^2.
    r_var = (mu2 / 4.0 + (5.0 / 12.0) * hw2 - (4.0 / 15.0) * hw2 * hw2 / denom) * base_radius**2
    return t_mean, t_var, r_var


def conical_frustum_to_gaussian(directions, t0, t1, base_radius, *, diag: bool):
    """Moment-matched Gaussian of the conical frustum between t0 and t1.

    The cone has its apex at the origin, axis `directions` and radius
    `base_radius * t` at distance t (cross-sections are perpendicular to the
    axis); its moments are `frustum_moments`'.

    Shapes: directions [..., 3]; t0, t1 [..., n]; base_radius [..., 1].
    """
    return lift_gaussian(directions, *frustum_moments(t0, t1, base_radius), diag=diag)


def cast_rays(tdist, origins, directions, radii, *, diag: bool):
    """Gaussians of the n conical frusta delimited by `tdist` [..., n+1].

    Returns means [..., n, 3] (world space) and covariances [..., n, 3, 3]
    (or [..., n, 3] if diag).
    """
    mean, cov = conical_frustum_to_gaussian(directions, tdist[..., :-1], tdist[..., 1:], radii, diag=diag)
    return mean + origins[..., None, :], cov


# --------------------------------------------------------------------------
# Cones -> multisamples (Zip-NeRF).
# --------------------------------------------------------------------------

MULTISAMPLE_COUNTS = (1, 6)  # the frustum's mean alone, or Zip-NeRF's hexagonal pattern

# The hexagonal pattern: sample j sits at offset a_j standard deviations along the
# axis and at angle theta_j around it. a_j = (2j/5 - 1) * sqrt(15/7) has mean 0 and
# mean square 1; the angles pair the six sixths of the circle so that sum_j a_j cos
# and sum_j a_j sin vanish, hence the six points' sample covariance has no cross term.
_HEX_AXIAL = (2.0 * np.arange(6) / 5.0 - 1.0) * np.sqrt(15.0 / 7.0)
_HEX_ANGLES = np.pi / 3.0 * np.array([0.0, 2.0, 4.0, 3.0, 5.0, 1.0])


def _perpendicular_frame(directions):
    """Two unit vectors u, v [..., 3] with u, v, directions mutually orthogonal."""
    d = directions / jnp.linalg.norm(directions, axis=-1, keepdims=True)
    # Cross with the world axis least aligned with d (never parallel to it).
    axis = jnp.eye(3, dtype=d.dtype)[jnp.argmin(jnp.abs(d), axis=-1)]
    u = jnp.cross(d, axis)
    u = u / jnp.linalg.norm(u, axis=-1, keepdims=True)
    return u, jnp.cross(d, u)


def multisample_frustum(tdist, origins, directions, radii, *, count: int, std_scale: float, key=None):
    """Zip-NeRF's multisamples of the n conical frusta delimited by `tdist` [..., n+1].

    count 6: six points whose sample mean and (population) covariance equal
    the mean and covariance of `cast_rays`' Gaussian of each frustum exactly:
    t_mean + a_j sqrt(t_var) along the axis, and sqrt(2 r_var) from it at the
    hexagonal angles theta_j (+ one random phase per interval when `key` is
    given, as in training; the moments do not depend on it). count 1: the
    Gaussian's mean alone.

    Each point stands for an isotropic Gaussian of standard deviation
    `std_scale * radii * t_j` (the cone's radius at its distance, scaled) for
    the grid's level weights (`hashgrid.footprint_level_weights`).

    Returns points [..., n, count, 3] (world space) and stds [..., n, count].
    """
    if count not in MULTISAMPLE_COUNTS:
        raise ValueError(f"count must be one of {MULTISAMPLE_COUNTS}, got {count!r}")
    if std_scale < 0:
        raise ValueError(f"std_scale must be >= 0, got {std_scale!r}")
    # The moments of cast_rays' Gaussians, per interval (unused ones cost nothing under jit).
    t_mean, t_var, r_var = frustum_moments(tdist[..., :-1], tdist[..., 1:], radii)
    if count == 1:
        t = t_mean[..., None]  # [..., n, 1]
        offsets = jnp.zeros(t.shape + (3,), t.dtype)
    else:
        # t_var can round to a tiny negative number for very thin intervals.
        t = t_mean[..., None] + jnp.sqrt(jnp.maximum(t_var, 0.0))[..., None] * jnp.asarray(_HEX_AXIAL, t_mean.dtype)
        theta = jnp.asarray(_HEX_ANGLES, t_mean.dtype)
        if key is not None:
            theta = theta + jax.random.uniform(key, t_mean.shape + (1,), t_mean.dtype, 0.0, 2.0 * jnp.pi)
        u, v = _perpendicular_frame(directions)  # [..., 3]
        rho = jnp.sqrt(2.0 * jnp.maximum(r_var, 0.0))[..., None, None]  # [..., n, 1, 1]
        offsets = rho * (jnp.cos(theta)[..., None] * u[..., None, None, :]
                         + jnp.sin(theta)[..., None] * v[..., None, None, :])
    points = origins[..., None, None, :] + directions[..., None, None, :] * t[..., None] + offsets
    stds = std_scale * radii[..., None] * t
    return points, stds


def contract_scale(x):
    """The isotropic scale |det J|^(1/3) of `contract` at x [..., 3] -> [...].

    Inside the unit ball the contraction is the identity (1); outside, with
    m = |x|, its Jacobian has eigenvalue 1/m^2 radially and (2m - 1)/m^2 twice
    tangentially, so |det J|^(1/3) = (2m - 1)^(2/3) / m^2. A Gaussian of std s at x
    becomes (isotropically approximated) one of std s * contract_scale(x).
    """
    # sqrt of a clamped square: no NaN gradient at x == 0 (localization differentiates positions).
    m = jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=-1), 1.0))
    return (2.0 * m - 1.0) ** (2.0 / 3.0) / (m * m)


# --------------------------------------------------------------------------
# Projection onto a fixed set of directions.
# --------------------------------------------------------------------------


def lift_and_diagonalize(mean, cov, basis):
    """Project a Gaussian onto the columns of `basis` [3, k].

    Returns the projected means [..., k] and variances [..., k]
    (b^T mean and b^T cov b for each column b); cross-terms are dropped.
    """
    hi = jax.lax.Precision.HIGHEST  # keep float32 on accelerators (no bf16 passes).
    proj_mean = jnp.matmul(mean, basis, precision=hi)
    proj_var = jnp.sum(basis * jnp.matmul(cov, basis, precision=hi), axis=-2)
    return proj_mean, proj_var


@functools.lru_cache(maxsize=None)
def _geodesic_basis(shape: str, subdivisions: int) -> np.ndarray:
    if shape == "axes":
        return np.eye(3)
    if shape != "icosahedron":
        raise ValueError(f"unknown basis shape {shape!r}; choose 'icosahedron' or 'axes'")
    if subdivisions < 1:
        raise ValueError(f"subdivisions must be >= 1, got {subdivisions!r}")
    phi = (1.0 + np.sqrt(5.0)) / 2.0
    # The 12 icosahedron vertices: cyclic permutations of (0, +-1, +-phi).
    verts = []
    for a, b in itertools.product((-1.0, 1.0), repeat=2):
        verts += [(0.0, a, b * phi), (a, b * phi, 0.0), (b * phi, 0.0, a)]
    verts = np.array(verts) / np.sqrt(1.0 + phi * phi)
    # Faces: the triples of mutually nearest neighbours (edge length is the
    # smallest non-zero vertex distance).
    dist = np.linalg.norm(verts[:, None] - verts[None], axis=-1)
    edge = dist[dist > 1e-9].min()
    adj = np.abs(dist - edge) < 1e-6
    faces = [f for f in itertools.combinations(range(12), 3) if adj[f[0], f[1]] and adj[f[1], f[2]] and adj[f[0], f[2]]]
    # Subdivide every face with barycentric weights (i, j, k) / v, push the
    # points onto the sphere and keep each point once.
    v = subdivisions
    bary = np.array([(i, j, v - i - j) for i in range(v + 1) for j in range(v + 1 - i)], dtype=np.float64) / v
    points = np.concatenate([bary @ verts[list(f)] for f in faces])
    points /= np.linalg.norm(points, axis=-1, keepdims=True)
    kept: list[np.ndarray] = []
    for p in points:
        # Drop duplicates and antipodes: +b and -b give the same features up
        # to sign, so they would only waste encoder width.
        if all(min(np.linalg.norm(p - q), np.linalg.norm(p + q)) > 1e-6 for q in kept):
            kept.append(p)
    return np.stack(kept, axis=-1)


def geodesic_basis(shape: str = "icosahedron", subdivisions: int = 2) -> np.ndarray:
    """Unit directions [3, k] spread evenly over a hemisphere.

    'icosahedron' with `subdivisions` v tessellates each icosahedron face v
    times and keeps one of each antipodal pair: v=1 gives 6 directions, v=2
    (mip-NeRF 360's choice) 21. 'axes' gives the identity (original
    mip-NeRF). The result is a read-only float64 numpy array.
    """
    basis = _geodesic_basis(shape, int(subdivisions))
    basis.setflags(write=False)
    return basis

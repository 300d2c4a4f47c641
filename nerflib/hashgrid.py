"""Multi-resolution hash-grid encoding (instant-ngp, Müller et al. 2022).

Short names and shapes, fixed once for this module:
  x            [..., 3]      points in the encoding domain, the unit cube [0, 1]^3.
                             Points outside are clamped onto the cube (their
                             gradient wrt `x` is zero). The caller maps the
                             contracted scene (ball of radius 2) into it, as
                             (x + 2) / 4, or lets `HashEncoding` map its `bbox`.
  L, F, T                    num_levels, features_per_level, table_size (rows per level).
  resolutions  [L]           cells per axis of each level (`level_resolutions`).
                             Level l has vertices (i, j, k) in {0..n_l}^3, i.e.
                             (n_l + 1)^3 of them, at positions (i, j, k) / n_l.
  tables       [L, T, F]     feature tables, one row per (hashed) vertex.
  ijk          [..., 3]      integer vertex coordinates of one level.
  features     [..., L * F]  level-major: level l occupies [l * F, (l + 1) * F).

Vertex -> row: a level whose vertices fit the table ((n + 1)^3 <= T) indexes
them densely (i + (n + 1) * (j + (n + 1) * k), collision-free); finer levels
use the paper's spatial hash (i * 1 XOR j * 2654435761 XOR k * 805459861),
in wrapping uint32 arithmetic, modulo T.

Performance design (bench/hashgrid_bench.py times it; H100 figures for 4M
points, L = 16, T = 2^19, F = 2, jax 0.11.2):
  * The levels are stacked in one [L * T, F] table and processed together:
    no Python loop over levels in the traced program (a per-level loop of
    gathers was 1.75x slower forward+backward).
  * The forward takes one [N, L]-indexed gather per corner (8 in all) and sums
    them elementwise, so XLA fuses hashing, gathers and interpolation into one
    kernel that writes only [N, L, F] (5.2 ms; 6.2 ms with one [N, L, 8]
    gather and a reduce, which materialised indices and corner values).
  * `encode` has a custom VJP that saves only `x` and the tables, recomputes
    the cheap integer hashing in the backward pass, and does ONE scatter-add
    of all corner cotangents into the table gradient (forward+backward
    15.9 ms, i.e. 263 M points/s; the atomics are two thirds of it, see
    `_encode_bwd` for what did not beat them). The cotangent
    of `x` needs a second round of gathers, which XLA drops as dead code when
    nobody asks for d/dx (the usual NeRF case: sample positions are
    stop-gradiented; `localize` does ask for it).
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# instant-ngp's primes; 1 for the first axis keeps x-neighbours close in memory.
PRIMES = (1, 2654435761, 805459861)

# The 8 corners of a cell, corner c at offset (c & 1, (c >> 1) & 1, (c >> 2) & 1).
CORNER_OFFSETS = np.array([[(c >> a) & 1 for a in range(3)] for c in range(8)], np.int32)


def level_resolutions(*, num_levels: int, base_resolution: int, max_resolution: int) -> np.ndarray:
    """Per-level resolutions n_l = floor(base * b^l), b = (max / base)^(1 / (L - 1)).

    This is eq. (2)-(3) of the paper; the first level is `base_resolution` and
    the last `max_resolution`. Returns int64 [num_levels].
    """
    if num_levels < 1:
        raise ValueError(f"num_levels must be >= 1, got {num_levels}")
    if base_resolution < 1:
        raise ValueError(f"base_resolution must be >= 1, got {base_resolution}")
    if max_resolution < base_resolution:
        raise ValueError(
            f"max_resolution must be >= base_resolution ({base_resolution}), "
            f"got {max_resolution}"
        )
    if num_levels == 1:
        return np.array([base_resolution], np.int64)
    log_b = (math.log(max_resolution) - math.log(base_resolution)) / (num_levels - 1)
    n = base_resolution * np.exp(log_b * np.arange(num_levels, dtype=np.float64))
    # 1e-6 relative slack: floor(2047.9999999) from rounding must still give 2048.
    return np.floor(n * (1 + 1e-9) + 1e-6).astype(np.int64)


def _max_dense_stride(table_size: int) -> int:
    """Largest s with s^3 <= table_size (exact integer cube root)."""
    s = int(round(table_size ** (1 / 3)))
    while s**3 > table_size:
        s -= 1
    while (s + 1) ** 3 <= table_size:
        s += 1
    return s


def hash_indices(ijk_int, *, table_size: int, level_res):
    """Table row in [0, table_size) of integer vertices `ijk_int` [..., 3] -> uint32 [...].

    Dense (i + s * (j + s * k), s = level_res + 1) where (level_res + 1)^3 <=
    table_size, else the XOR-prime spatial hash modulo table_size. `level_res` is
    a Python int (the branch is chosen while tracing) or an integer array that
    broadcasts against ijk_int[..., 0] (both are computed and selected per element).
    """
    if not 1 <= table_size <= 2**31:
        raise ValueError(f"table_size must be in [1, 2**31], got {table_size}")
    u = jnp.asarray(ijk_int).astype(jnp.uint32)  # uint32: products wrap mod 2^32 as in the paper
    i, j, k = u[..., 0], u[..., 1], u[..., 2]
    hashed = (i * jnp.uint32(PRIMES[0])) ^ (j * jnp.uint32(PRIMES[1])) ^ (k * jnp.uint32(PRIMES[2]))
    if table_size & (table_size - 1) == 0:
        hashed = hashed & jnp.uint32(table_size - 1)
    else:
        hashed = hashed % jnp.uint32(table_size)
    s_max = _max_dense_stride(table_size)
    if isinstance(level_res, (int, np.integer)):
        if level_res < 1:
            raise ValueError(f"level_res must be >= 1, got {level_res}")
        if level_res + 1 > s_max:
            return hashed
        s = jnp.uint32(level_res + 1)
        return i + s * (j + s * k)
    # Array of resolutions: the dense index may wrap for levels that do not use it.
    s = jnp.asarray(level_res).astype(jnp.uint32) + jnp.uint32(1)
    dense = i + s * (j + s * k)
    return jnp.where(s <= jnp.uint32(s_max), dense, hashed)


def _cells(x, resolutions):
    """x [N, 3] -> (cell uint32 [N, L, 3], frac f32 [N, L, 3] in [0, 1], inside bool [N, 3])."""
    res = np.asarray(resolutions)
    inside = (x >= 0) & (x <= 1)
    pos = jnp.clip(x, 0.0, 1.0)[:, None, :] * jnp.asarray(res, jnp.float32)[:, None]
    # Clamp the cell to n - 1 so that x == 1 is the far corner of the last cell
    # (frac == 1) rather than a cell that does not exist.
    cell = jnp.minimum(jnp.floor(pos), jnp.asarray(res - 1, jnp.float32)[:, None])
    return cell.astype(jnp.uint32), pos - cell, inside


def _corner_factors(frac):
    """Per-axis trilinear factors [..., 8, 3]: corner c takes frac or 1 - frac on each axis."""
    off = jnp.asarray(CORNER_OFFSETS, bool)
    f = frac[..., None, :]
    return jnp.where(off, f, 1.0 - f)


def _corner_weights(frac):
    """Trilinear weights [..., 8] of the cell corners (a product, no reduce: it fuses)."""
    factors = _corner_factors(frac)
    return factors[..., 0] * factors[..., 1] * factors[..., 2]


def _level_rows(ijk, resolutions, table_size):
    """Rows into the flattened [L * T, F] table of vertices ijk [N, L, ..., 3] (uint32)."""
    res = np.asarray(resolutions)
    extra = (1,) * (ijk.ndim - 3)  # broadcast the per-level constants over trailing axes
    level_res = jnp.asarray(res.astype(np.uint32)).reshape(-1, *extra)
    level_base = jnp.asarray(np.arange(len(res), dtype=np.uint32) * np.uint32(table_size))
    rows = hash_indices(ijk, table_size=table_size, level_res=level_res)
    return rows + level_base.reshape(-1, *extra)


def _gather(flat_tables, rows):
    # Indices are uint32 and in range by construction: no sign fix-up, no bounds select.
    return flat_tables.at[rows].get(mode="promise_in_bounds")


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _encode_flat(x, tables, resolutions, table_size, dtype):
    """x [N, 3], tables [L, T, F] -> [N, L, F]."""
    num_levels, _, num_features = tables.shape
    flat = tables.reshape(num_levels * table_size, num_features)
    cell, frac, _ = _cells(x, resolutions)
    # One [N, L]-indexed gather per corner, with its row and weight computed
    # right there, summed elementwise: XLA fuses hashing, the 8 gathers and the
    # interpolation into one kernel that writes only [N, L, F]. One [N, L, 8]-
    # indexed gather and a reduce over corners materialised indices and corner
    # values instead (H100, 4M points: 5.2 ms vs 6.2 ms).
    compute = jnp.float32 if dtype is None else dtype
    acc = jnp.zeros((*frac.shape[:-1], num_features), jnp.float32)
    for off in CORNER_OFFSETS:
        rows = _level_rows(cell + jnp.asarray(off, jnp.uint32), resolutions, table_size)
        w = 1.0
        for a in range(3):
            w = w * (frac[..., a] if off[a] else 1.0 - frac[..., a])
        vals = _gather(flat, rows)
        acc = acc + (w[..., None].astype(compute) * vals.astype(compute)).astype(jnp.float32)
    return acc.astype(compute)


def _encode_fwd(x, tables, resolutions, table_size, dtype):
    return _encode_flat(x, tables, resolutions, table_size, dtype), (x, tables)


def _encode_bwd(resolutions, table_size, dtype, saved, g):
    x, tables = saved
    # The barrier keeps XLA from merging this recomputation with the forward's
    # (CSE), which made it write all 8 corners' rows and weights to memory for
    # the backward to read (H100, 4M points, forward+backward: 19.2 ms, not 15.9).
    x = jax.lax.optimization_barrier(x)
    num_levels, _, num_features = tables.shape
    flat_shape = (num_levels * table_size, num_features)
    cell, frac, inside = _cells(x, resolutions)
    offsets = jnp.asarray(CORNER_OFFSETS, jnp.uint32)
    rows = _level_rows(cell[:, :, None, :] + offsets, resolutions, table_size)  # [N, L, 8]
    factors = _corner_factors(frac)  # [N, L, 8, 3]
    w = factors[..., 0] * factors[..., 1] * factors[..., 2]
    g = g.astype(jnp.float32)  # [N, L, F]
    # d tables: ONE scatter-add of all N * L * 8 weighted cotangent rows; XLA
    # lowers it to atomic adds (so the last float bits vary between runs), at
    # about 0.6 ms per level per 4M points on an H100: it is the most costly
    # part of encode's forward+backward. Neither 8 per-corner scatters (1.5x
    # slower) nor spreading the contended coarse levels over replicas (1.4x)
    # helped, and a sort-based segment_sum would have to sort N * L * 8 keys
    # per step, far more than the atomics cost. A fused Pallas kernel with
    # two-wide (v2.f32 or f16x2) atomics was not faster either: the scatter
    # runs at 32-55 G corner updates/s whatever the atomic's width
    # (bench/pallas_scatter.py, bench/RESULTS.md call 17).
    updates = (w[..., None] * g[:, :, None, :]).astype(tables.dtype)  # [N, L, 8, F]
    d_tables = jnp.zeros(flat_shape, tables.dtype).at[rows].add(updates, mode="promise_in_bounds")
    # d x needs the corner values again (XLA drops all of this when nobody uses
    # d x). d w_c / d frac_a is the product of the other two axes' factors with
    # the sign of corner c on axis a: no division, so frac == 0 is fine.
    vals = _gather(tables.reshape(flat_shape), rows)  # [N, L, 8, F]
    gv = jnp.sum(vals.astype(jnp.float32) * g[:, :, None, :], axis=-1)  # [N, L, 8]
    f0, f1, f2 = factors[..., 0], factors[..., 1], factors[..., 2]
    others = jnp.stack([f1 * f2, f0 * f2, f0 * f1], axis=-1)  # [N, L, 8, 3]
    sign = jnp.where(jnp.asarray(CORNER_OFFSETS, bool), 1.0, -1.0)  # [8, 3]
    d_frac = jnp.sum(gv[..., None] * others * sign, axis=-2)  # [N, L, 3]
    res = jnp.asarray(np.asarray(resolutions), jnp.float32)
    d_x = jnp.sum(d_frac * res[:, None], axis=1) * inside  # clamped coordinates: no gradient
    return d_x.astype(x.dtype), d_tables.reshape(tables.shape)


_encode_flat.defvjp(_encode_fwd, _encode_bwd)
# One compiled program when called eagerly (inlined when traced inside another jit).
_encode_jit = jax.jit(_encode_flat, static_argnums=(2, 3, 4))


def encode(x, tables, *, resolutions, table_size: int, dtype=None):
    """Hash-grid features of points x [..., 3] in [0, 1]^3 -> [..., L * F].

    tables [L, T, F] (T == table_size); resolutions [L] static ints (e.g. from
    `level_resolutions`). Each level trilinearly interpolates its 8 cell corners.
    `dtype` (e.g. jnp.bfloat16) sets the precision of the interpolation products
    and of the output; positions, tables and the sum stay float32. Reverse-mode
    differentiable in `x` and `tables` (custom VJP: jax.jvp / jacfwd are not
    supported). `x` must be finite: NaN gives meaningless features but no fault,
    as XLA clamps gather indices and drops out-of-range scatter updates.
    """
    tables = jnp.asarray(tables)
    res = np.asarray(resolutions)
    if tables.ndim != 3:
        raise ValueError(f"tables must be [L, T, F], got shape {tables.shape}")
    num_levels, t, num_features = tables.shape
    if t != table_size:
        raise ValueError(f"tables.shape[1] ({t}) must equal table_size ({table_size})")
    if res.shape != (num_levels,) or not np.issubdtype(res.dtype, np.integer) or res.min() < 1:
        raise ValueError(f"resolutions must be {num_levels} positive ints, got {resolutions}")
    if num_levels * table_size > 2**32:
        raise ValueError(f"L * T must fit uint32 row indices, got {num_levels} * {table_size}")
    x = jnp.asarray(x)
    if x.shape[-1] != 3:
        raise ValueError(f"x must be [..., 3], got shape {x.shape}")
    batch = x.shape[:-1]
    x = x.reshape(-1, 3).astype(jnp.float32)
    feats = _encode_jit(x, tables, tuple(int(r) for r in res), int(table_size), dtype)
    return feats.reshape(*batch, num_levels * num_features)


def footprint_level_weights(radius_in_grid_units, resolutions):
    """Zip-NeRF's per-level down-weighting for a Gaussian footprint -> [..., L].

    radius_in_grid_units [...]: standard deviation s of an isotropic Gaussian
    around each point, in the units of the encoding domain [0, 1]^3 (i.e. of
    `x` as passed to `encode`; `HashEncoding.footprint_weights` converts from its
    input units). s * n_l is the footprint in cells of level l, and the weight
    erf(1 / sqrt(8 s^2 n_l^2)) is the fraction of the (1-D) Gaussian's mass
    within half a cell of its centre: 1 for a point (s = 0), falling towards 0
    once the footprint covers many cells, so fine levels fade out first.
    Multiply the features of level l by it (`HashEncoding(level_weights=...)`).
    """
    s = jnp.asarray(radius_in_grid_units, jnp.float32)[..., None]
    n = jnp.asarray(np.asarray(resolutions), jnp.float32)
    # Floor the footprint at 1e-10 cells: s == 0 gives erf(3.5e9) == 1 and a zero
    # (not 0 * inf = NaN) gradient, since 1 / (sqrt(8) * 1e-10)^2 is finite in float32.
    footprint = jnp.maximum(jnp.abs(s) * n, 1e-10)
    return jax.scipy.special.erf(1.0 / (math.sqrt(8.0) * footprint))


class HashEncoding(nn.Module):
    """Multi-resolution hash encoding of points in the box `bbox`.

    Maps x [..., 3] from `bbox` onto [0, 1]^3 and returns `encode` features
    [..., num_levels * features_per_level]. The default bbox is the unit cube
    itself (models.py passes (contracted + 2) / 4); bbox=((-2,) * 3, (2,) * 3)
    takes contracted coordinates directly.
    The single parameter `tables` [L, 2^log2_table_size, F] is initialised
    uniform(-1e-4, 1e-4) as in the paper.
    """

    num_levels: int = 16
    features_per_level: int = 2
    log2_table_size: int = 19
    base_resolution: int = 16
    max_resolution: int = 2048
    bbox: tuple[tuple[float, float, float], tuple[float, float, float]] = ((0.0,) * 3, (1.0,) * 3)
    init_range: float = 1e-4
    dtype: jnp.dtype | None = None  # interpolation/output precision, see `encode`
    param_dtype: jnp.dtype = jnp.float32  # keep float32: the gradient scatter-adds in it

    @property
    def resolutions(self) -> np.ndarray:
        return level_resolutions(
            num_levels=self.num_levels,
            base_resolution=self.base_resolution,
            max_resolution=self.max_resolution,
        )

    @property
    def table_size(self) -> int:
        return 2**self.log2_table_size

    def _box(self):
        lo, hi = (np.asarray(b, np.float64) for b in self.bbox)
        if lo.shape != (3,) or hi.shape != (3,) or np.any(hi <= lo):
            raise ValueError(
                f"bbox must be ((x0, y0, z0), (x1, y1, z1)) with x1 > x0, got {self.bbox}"
            )
        return lo, hi

    def footprint_weights(self, radius):
        """Level weights [..., L] for a footprint std `radius` [...] in input (bbox) units.

        A non-cubic box is measured by its largest side (the smallest footprint
        in cells, so the largest weights); with a cubic box this is exact.
        """
        lo, hi = self._box()
        scale = 1.0 / float(np.max(hi - lo))
        return footprint_level_weights(jnp.asarray(radius) * scale, self.resolutions)

    @nn.compact
    def __call__(self, x, *, level_weights=None):
        """x [..., 3] in bbox units -> [..., L * F]; level_weights [..., L] scales each level."""
        if self.log2_table_size < 1 or self.log2_table_size > 30:
            raise ValueError(f"log2_table_size must be in [1, 30], got {self.log2_table_size}")
        if self.features_per_level < 1:
            raise ValueError(f"features_per_level must be >= 1, got {self.features_per_level}")
        lo, hi = self._box()
        r = self.init_range
        tables = self.param(
            "tables",
            lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -r, r),
            (self.num_levels, self.table_size, self.features_per_level),
            self.param_dtype,
        )
        if np.any(lo != 0) or np.any(hi != 1):
            x = (x - jnp.asarray(lo, jnp.float32)) * jnp.asarray(1.0 / (hi - lo), jnp.float32)
        feats = encode(
            x, tables, resolutions=self.resolutions, table_size=self.table_size, dtype=self.dtype
        )
        if level_weights is not None:
            lw = jnp.asarray(level_weights)
            if lw.shape[-1] != self.num_levels:
                raise ValueError(
                    f"level_weights must be [..., {self.num_levels}], got shape {lw.shape}"
                )
            shape = feats.shape
            feats = feats.reshape(*shape[:-1], self.num_levels, self.features_per_level)
            feats = (feats * lw[..., None].astype(feats.dtype)).reshape(shape)
        return feats

"""An experiment that lost: the hash grid's table gradient as one fused Pallas (Triton) kernel.

`nerflib.hashgrid.encode`'s backward scatters N * L * 8 weighted cotangent rows
(F features each) into the [L * T, F] table gradient; XLA lowers that to one
float32 atomic add per feature, and it is 30 % of the `fast` training step on an
H100. This kernel recomputes each block of points' cells, rows and trilinear
weights in registers, level by level, and adds each corner's F features with one
atomic on F contiguous values (float32 or float16), hoping for Triton's vector
(`red.global.v2.f32`) or packed (`f16x2`) atomics: half the atomic operations.

It computes the same gradient, but it is not faster (bench/hashgrid_bench.py
--scatter-only, bench/RESULTS.md call 17): the scatter runs at the same ~35-45 G
corner updates/s whatever the atomic's width, and inside the training step it
was slower than XLA's (3.3 ms against 2.1 ms). So nerflib keeps XLA's scatter and
this lives in bench/ as the measured evidence. GPU only (on the CPU only in
Pallas' interpreter, with one point per block).
"""


from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# Points per kernel instance on GPU: each thread of 4 warps holds one point's F features.
BLOCK = 128


def table_gradient(x, g, *, resolutions, table_size, max_dense_stride, interpret=False, block=None,
                   accumulate=jnp.float32):
    """d tables [L * T, F] (dtype `accumulate`) of sum(g * encode(x)): x [N, 3] in [0, 1]^3, g [N, L, F].

    Rows follow `nerflib.hashgrid.hash_indices`: dense i + s * (j + s * k) with
    s = n + 1 where s <= max_dense_stride, else the XOR-prime hash mod T
    (T a power of two). Points outside the cube are clamped onto it, as in the
    forward pass. `interpret` runs Pallas' interpreter (CPU tests).
    """
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import triton as plgpu

    if table_size & (table_size - 1):
        raise ValueError(f"the Pallas scatter needs a power-of-two table size, got {table_size}")
    res = [int(r) for r in resolutions]
    num_levels = len(res)
    n, num_features = g.shape[0], g.shape[-1]
    if g.shape != (n, num_levels, num_features) or x.shape != (n, 3):
        raise ValueError(f"x must be [N, 3] and g [N, {num_levels}, F], got {x.shape} and {g.shape}")
    block = block or (1 if interpret else BLOCK)
    padded = -(-n // block) * block
    # Padding points sit at the origin with zero cotangents: they add 0.0 to real rows.
    xt = jnp.pad(x.astype(jnp.float32), ((0, padded - n), (0, 0))).T  # [3, padded]: one row per axis
    g = jnp.pad(g, ((0, padded - n), (0, 0), (0, 0)))
    zeros = jnp.zeros((num_levels * table_size * num_features,), accumulate)
    primes = (np.uint32(1), np.uint32(2654435761), np.uint32(805459861))

    def kernel(xt_ref, g_ref, _, out_ref):
        points = pl.ds(pl.program_id(0) * block, block)
        xs = [jnp.clip(xt_ref[a, points], 0.0, 1.0) for a in range(3)]  # [block] each
        feature = jnp.arange(num_features, dtype=jnp.uint32)[None, :]
        for level, n_l in enumerate(res):
            gl = g_ref[points, level, :].astype(jnp.float32)  # [block, F]
            cells, fracs = [], []
            for a in range(3):
                pos = xs[a] * float(n_l)
                cell = jnp.minimum(jnp.floor(pos), float(n_l - 1))  # x == 1: far corner of the last cell
                cells.append(cell.astype(jnp.int32).astype(jnp.uint32))
                fracs.append(pos - cell)
            dense = n_l + 1 <= max_dense_stride
            base = np.uint32(level * table_size)
            for c in range(8):
                ijk = [cells[a] + np.uint32((c >> a) & 1) for a in range(3)]
                if dense:
                    s = np.uint32(n_l + 1)
                    rows = ijk[0] + s * (ijk[1] + s * ijk[2])
                else:
                    h = (ijk[0] * primes[0]) ^ (ijk[1] * primes[1]) ^ (ijk[2] * primes[2])
                    rows = h & np.uint32(table_size - 1)
                w = None
                for a in range(3):
                    f = fracs[a] if (c >> a) & 1 else 1.0 - fracs[a]
                    w = f if w is None else w * f
                # F contiguous floats per corner: one vector atomic on Hopper.
                offsets = (rows + base)[:, None] * np.uint32(num_features) + feature
                plgpu.atomic_add(out_ref, (offsets,), (w[:, None] * gl).astype(accumulate))

    call = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct(zeros.shape, accumulate),
        grid=(padded // block,),
        input_output_aliases={2: 0},
        interpret=interpret,
        compiler_params=None if interpret else plgpu.CompilerParams(num_warps=4, num_stages=1),
    )
    return call(xt, g, zeros).reshape(num_levels * table_size, num_features)


def patch_encode(block=None, accumulate=jnp.float32):
    """Make `nerflib.hashgrid.encode`'s backward use this kernel for d tables (benchmarks only).

    The original backward still gives d x; its own scatter is then dead code,
    which XLA drops.
    """
    from nerflib import hashgrid

    original = hashgrid._encode_bwd

    def bwd(resolutions, table_size, dtype, saved, g):
        d_x, _ = original(resolutions, table_size, dtype, saved, g)
        x, tables = saved
        d_tables = table_gradient(
            x, g, resolutions=resolutions, table_size=table_size,
            max_dense_stride=hashgrid._max_dense_stride(table_size), block=block, accumulate=accumulate,
        )
        return d_x, d_tables.astype(tables.dtype).reshape(tables.shape)

    hashgrid._encode_flat.defvjp(hashgrid._encode_fwd, bwd)
    jax.clear_caches()  # programs traced before the patch must not be reused

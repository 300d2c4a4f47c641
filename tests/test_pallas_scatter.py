"""bench/pallas_scatter.py (an experimental kernel): same table gradient as encode's own backward.

Runs the kernel in Pallas' interpreter on the CPU (one point per block), so it
checks the kernel's rows, weights and clamping, not its GPU speed.
"""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nerflib import hashgrid

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
pallas_scatter = pytest.importorskip("pallas_scatter")


def test_kernel_matches_encode_gradient():
    # Level 4 is dense, level 24 hashed (T = 2^9); points outside the cube and on its faces.
    res, t = (4, 24), 2**9
    rng = np.random.default_rng(3)
    x = rng.uniform(-0.2, 1.2, (17, 3)).astype(np.float32)
    x[0], x[1] = 1.0, 0.0
    g = rng.normal(size=(17, len(res), 2)).astype(np.float32)
    tables = jnp.asarray(rng.normal(size=(len(res), t, 2)).astype(np.float32))

    def loss(tb):
        return jnp.sum(hashgrid.encode(x, tb, resolutions=res, table_size=t).reshape(g.shape) * g)

    want = np.asarray(jax.grad(loss)(tables)).reshape(-1, 2)
    got = pallas_scatter.table_gradient(
        jnp.asarray(x), jnp.asarray(g), resolutions=res, table_size=t,
        max_dense_stride=hashgrid._max_dense_stride(t), interpret=True,
    )
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5 * np.abs(want).max())
    assert np.count_nonzero(want) > 100  # the check covers many rows of both levels, not a few
    assert np.count_nonzero(want[: t]) > 20 and np.count_nonzero(want[t:]) > 20


def test_rejects_table_size_not_power_of_two():
    with pytest.raises(ValueError, match="power-of-two"):
        pallas_scatter.table_gradient(jnp.zeros((4, 3)), jnp.zeros((4, 1, 2)), resolutions=(4,), table_size=100,
                                      max_dense_stride=4, interpret=True)

"""nerflib.coord against closed forms, jax.jacfwd and Monte Carlo."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from nerflib import coord

SETTINGS = settings(max_examples=15, deadline=None)

# Points with magnitudes spread over 1e-3 .. 1e5 in random directions.
_unit = hnp.arrays(np.float64, (16, 3), elements=st.floats(-1, 1)).filter(
    lambda a: np.all(np.linalg.norm(a, axis=-1) > 0.1)
)
_mags = hnp.arrays(np.float64, (16, 1), elements=st.floats(-3, 5))
# Rounded to float32 so that the float64 references see the same inputs.
points = st.builds(
    lambda u, m: (u / np.linalg.norm(u, axis=-1, keepdims=True) * 10.0**m).astype(np.float32).astype(np.float64),
    _unit,
    _mags,
)
contract_jit = jax.jit(coord.contract)
jacobian_jit = jax.jit(jax.vmap(jax.jacfwd(coord.contract)))
track_jit = jax.jit(lambda m, c: coord.track_linearize(coord.contract, m, c))
inv_contract_jit = jax.jit(coord.inv_contract)


def contract_np(x):
    """Eq. 10 of mip-NeRF 360, float64."""
    r = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.where(r <= 1, x, (2 - 1 / r) * x / np.maximum(r, 1e-300))


def contract_jacobian_np(x):
    """d contract / dx in closed form: radial slope 1/r^2, tangential (2 - 1/r)/r."""
    r = np.linalg.norm(x)
    if r <= 1:
        return np.eye(3)
    xh = x / r
    radial = np.outer(xh, xh)
    return radial / r**2 + (2 - 1 / r) / r * (np.eye(3) - radial)


@SETTINGS
@given(points)
def test_contract_matches_closed_form_and_stays_in_ball(x):
    z = np.asarray(contract_jit(jnp.asarray(x, jnp.float32)))
    np.testing.assert_allclose(z, contract_np(x), rtol=2e-6, atol=1e-6)
    assert np.all(np.linalg.norm(z, axis=-1) <= 2.0)
    inside = np.linalg.norm(x, axis=-1) <= 1
    np.testing.assert_allclose(z[inside], x[inside], rtol=1e-6, atol=1e-7)


@SETTINGS
@given(points)
def test_inv_contract_inverts_contract(x):
    r = np.linalg.norm(x, axis=-1, keepdims=True)
    x = x * np.minimum(1.0, 1e3 / r)  # beyond |x| ~ 1e3 float32 |z| rounds to 2.
    back = np.asarray(inv_contract_jit(contract_jit(jnp.asarray(x, jnp.float32))))
    np.testing.assert_allclose(back, x, rtol=2e-3, atol=1e-6)


def test_inv_contract_is_finite_on_the_boundary():
    z = jnp.array([[2.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
    assert np.all(np.isfinite(coord.inv_contract(z)))
    assert np.all(np.isfinite(jax.jacfwd(lambda v: coord.inv_contract(v).sum())(z)))


@SETTINGS
@given(points)
def test_contract_jacobian_matches_closed_form_and_jacfwd(x):
    xs = jnp.asarray(x, jnp.float32)
    jac = jacobian_jit(xs)
    for i in range(len(x)):
        np.testing.assert_allclose(jac[i], contract_jacobian_np(x[i]), rtol=1e-4, atol=1e-6)
    # track_linearize must push covariances as J cov J^T.
    a = np.random.default_rng(0).normal(size=(len(x), 3, 3))
    cov = (a @ np.swapaxes(a, -1, -2) + 0.1 * np.eye(3)) * 0.01
    mean_out, cov_out = track_jit(xs, jnp.asarray(cov, jnp.float32))
    expect = np.einsum("nij,njk,nlk->nil", np.asarray(jac, np.float64), cov, np.asarray(jac, np.float64))
    np.testing.assert_allclose(mean_out, contract_np(x), rtol=2e-6, atol=1e-6)
    scale = np.abs(expect).max(axis=(-1, -2), keepdims=True)
    np.testing.assert_allclose(np.asarray(cov_out) / scale, expect / scale, atol=1e-5)


def test_contract_gradient_is_finite_at_origin():
    g = jax.grad(lambda v: coord.contract(v).sum())(jnp.zeros(3))
    np.testing.assert_allclose(g, np.ones(3))


def test_track_linearize_rejects_diagonal_covariances():
    with pytest.raises(ValueError, match=r"\(4, 3\)"):
        coord.track_linearize(coord.contract, jnp.zeros((4, 3)), jnp.ones((4, 3)))


@pytest.mark.parametrize("warp", ["linear", "reciprocal", "log", "sqrt", "piecewise", None])
def test_ray_warps_are_monotone_bijections(warp):
    near = jnp.array([[0.5], [0.2], [1.0]])
    far = jnp.array([[4.0], [100.0], [2.0]])
    t_to_s, s_to_t = coord.construct_ray_warps(warp, near, far)
    s = jnp.linspace(0.0, 1.0, 101)[None]
    t = s_to_t(s)
    np.testing.assert_allclose(t[:, 0], near[:, 0], rtol=1e-5)
    np.testing.assert_allclose(t[:, -1], far[:, 0], rtol=1e-4)
    assert np.all(np.diff(np.asarray(t), axis=-1) > 0)
    np.testing.assert_allclose(t_to_s(t), np.broadcast_to(s, t.shape), atol=2e-4)


def test_reciprocal_warp_is_linear_in_disparity():
    t_to_s, _ = coord.construct_ray_warps("reciprocal", 1.0, 5.0)
    t = np.array([1.0, 1.25, 2.0, 5.0])
    np.testing.assert_allclose(t_to_s(jnp.asarray(t)), (1 / t - 1) / (1 / 5 - 1), rtol=1e-6)
    # mip-NeRF 360's bounds: the far end stays exact in float32.
    _, s_to_t = coord.construct_ray_warps("reciprocal", jnp.float32(0.2), jnp.float32(1e6))
    np.testing.assert_allclose(s_to_t(jnp.array([0.0, 0.5, 1.0])), [0.2, 0.4 / (1 + 2e-7), 1e6], rtol=1e-5)
    with pytest.raises(ValueError, match="cubic"):
        coord.construct_ray_warps("cubic", 1.0, 2.0)


def test_pos_enc_matches_naive_loop():
    x = np.random.default_rng(1).normal(size=(5, 3))
    out = np.asarray(coord.pos_enc(jnp.asarray(x, jnp.float32), min_deg=1, max_deg=4))
    sins = [np.sin(2.0**l * x) for l in range(1, 4)]
    coss = [np.cos(2.0**l * x) for l in range(1, 4)]
    expect = np.concatenate([x] + sins + coss, axis=-1)
    np.testing.assert_allclose(out, expect, atol=2e-6)
    np.testing.assert_allclose(
        coord.integrated_pos_enc(jnp.asarray(x, jnp.float32), jnp.zeros((5, 3)), min_deg=1, max_deg=4),
        expect[:, 3:],
        atol=2e-6,
    )


def test_integrated_pos_enc_matches_monte_carlo_over_gaussians():
    rng = np.random.default_rng(2)
    mean = rng.normal(size=(4, 2))
    var = rng.uniform(0.001, 0.3, size=(4, 2))
    y = mean + np.sqrt(var) * rng.standard_normal((200_000, 4, 2))
    got = np.asarray(coord.integrated_pos_enc(jnp.asarray(mean, jnp.float32), jnp.asarray(var, jnp.float32),
                                              min_deg=0, max_deg=3))
    for l in range(3):
        for k, f in enumerate((np.sin, np.cos)):
            mc = f(2.0**l * y).mean(axis=0)  # [4, 2]
            block = got[:, 2 * (3 * k + l):2 * (3 * k + l) + 2]
            np.testing.assert_allclose(block, mc, atol=0.01)  # ~4 MC standard errors.


def sample_frustum(rng, n, origin, d, r, t0, t1):
    """Uniform samples from the conical frustum (cone radius r*t at distance t)."""
    u = rng.uniform(size=(n, 3))
    t = (t0**3 + u[:, 0] * (t1**3 - t0**3)) ** (1 / 3)  # cross-section area ~ t^2.
    rho = r * t * np.sqrt(u[:, 1])  # uniform in the disk.
    phi = 2 * np.pi * u[:, 2]
    e1 = np.cross(d, [1.0, 0.0, 0.0] if abs(d[0]) < 0.9 else [0.0, 1.0, 0.0])
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(d / np.linalg.norm(d), e1)
    return origin + t[:, None] * d + rho[:, None] * (np.cos(phi)[:, None] * e1 + np.sin(phi)[:, None] * e2)


@pytest.mark.parametrize(
    "t0,t1,radius",
    [(1.0, 1.5, 0.05), (0.2, 3.0, 0.2), (10.0, 10.1, 0.01)],
)
def test_cast_rays_matches_monte_carlo_frustum_moments(t0, t1, radius):
    rng = np.random.default_rng(3)
    origin = np.array([0.3, -0.2, 0.5])
    d = np.array([0.4, -0.3, 1.0])  # nerflib convention: z == 1, not unit length.
    pts = sample_frustum(rng, 400_000, origin, d, radius, t0, t1)
    mc_mean, mc_cov = pts.mean(0), np.cov(pts.T)
    tdist = jnp.array([[t0, t1]], jnp.float32)
    args = (tdist, jnp.asarray(origin[None], jnp.float32), jnp.asarray(d[None], jnp.float32),
            jnp.array([[radius]], jnp.float32))
    mean, cov = coord.cast_rays(*args, diag=False)
    _, cov_diag = coord.cast_rays(*args, diag=True)
    mean, cov, cov_diag = (np.asarray(a)[0, 0] for a in (mean, cov, cov_diag))
    sd = np.sqrt(np.diag(mc_cov))
    np.testing.assert_allclose(mean, mc_mean, atol=4 * sd.max() / np.sqrt(400_000) + 1e-5 * np.abs(mc_mean).max())
    np.testing.assert_allclose(cov, mc_cov, rtol=0.02, atol=0.02 * np.abs(mc_cov).max())
    np.testing.assert_allclose(cov_diag, np.diag(cov), rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("t0,t1", [(0.0, 0.5), (1.0, 1.5), (0.2, 3.0), (10.0, 10.5), (100.0, 200.0)])
def test_frustum_moments_match_the_raw_moments_in_float64(t0, t1):
    """E[t^k] = 3/(k+3) (t1^(k+3) - t0^(k+3)) / (t1^3 - t0^3) (density ~ t^2), exact in float64 here."""
    radius = 0.03
    raw = [3.0 / (k + 3) * (t1 ** (k + 3) - t0 ** (k + 3)) / (t1**3 - t0**3) for k in (1, 2)]
    t_mean, t_var, r_var = (np.asarray(a).item() for a in coord.frustum_moments(
        jnp.float32(t0), jnp.float32(t1), jnp.float32(radius)))
    np.testing.assert_allclose(t_mean, raw[0], rtol=1e-6)
    np.testing.assert_allclose(t_var, raw[1] - raw[0] ** 2, rtol=1e-3)
    np.testing.assert_allclose(r_var, raw[1] / 4 * radius**2, rtol=1e-5)


def test_projected_ipe_matches_monte_carlo_over_a_frustum():
    """Expected sin/cos of basis projections: IPE vs samples of the frustum itself.

    The frustum is not Gaussian, so only low frequencies (where the frustum
    is small compared to the wavelength) are compared, with a loose tolerance.
    """
    rng = np.random.default_rng(4)
    origin, d, radius, t0, t1 = np.array([0.1, 0.2, -0.3]), np.array([-0.2, 0.1, 1.0]), 0.1, 1.0, 1.6
    pts = sample_frustum(rng, 300_000, origin, d, radius, t0, t1)
    basis = coord.geodesic_basis("icosahedron", 1)
    mean, cov = coord.cast_rays(jnp.array([[t0, t1]], jnp.float32), jnp.asarray(origin[None], jnp.float32),
                                jnp.asarray(d[None], jnp.float32), jnp.array([[radius]], jnp.float32), diag=False)
    pm, pv = coord.lift_and_diagonalize(mean, cov, jnp.asarray(basis, jnp.float32))
    enc = np.asarray(coord.integrated_pos_enc(pm, pv, min_deg=0, max_deg=2))[0, 0]
    proj = pts @ basis  # [N, 6]
    k = basis.shape[1]
    for l in range(2):
        np.testing.assert_allclose(enc[l * k:(l + 1) * k], np.sin(2.0**l * proj).mean(0), atol=0.01)
        np.testing.assert_allclose(enc[(2 + l) * k:(3 + l) * k], np.cos(2.0**l * proj).mean(0), atol=0.01)


@pytest.mark.parametrize("subdivisions,count", [(1, 6), (2, 21), (3, 46)])
def test_geodesic_basis(subdivisions, count):
    b = coord.geodesic_basis("icosahedron", subdivisions)
    assert b.shape == (3, count)
    np.testing.assert_allclose(np.linalg.norm(b, axis=0), 1.0, rtol=1e-12)
    cos = np.abs(b.T @ b) - np.eye(count)
    assert cos.max() < 1 - 1e-3  # no duplicates or antipodal pairs.
    # Spread out: no direction far from the others' span (covariance ~ isotropic).
    np.testing.assert_allclose(b @ b.T, np.eye(3) * count / 3, atol=1e-9)
    np.testing.assert_array_equal(coord.geodesic_basis("axes"), np.eye(3))
    with pytest.raises(ValueError, match="cube"):
        coord.geodesic_basis("cube")


# ---------------------------------------------------------------- multisamples (Zip-NeRF)


@pytest.mark.parametrize("t0,t1,radius", [(1.0, 1.5, 0.05), (0.2, 3.0, 0.2), (10.0, 10.1, 0.01)])
def test_multisamples_have_the_frustums_moments(t0, t1, radius):
    """The six points' mean and population covariance are the frustum's (Monte Carlo, independent)."""
    rng = np.random.default_rng(5)
    origin = np.array([0.3, -0.2, 0.5])
    d = np.array([0.4, -0.3, 1.0])
    pts = sample_frustum(rng, 400_000, origin, d, radius, t0, t1)
    mc_mean, mc_cov = pts.mean(0), np.cov(pts.T)
    args = (jnp.array([[t0, t1]], jnp.float32), jnp.asarray(origin[None], jnp.float32),
            jnp.asarray(d[None], jnp.float32), jnp.array([[radius]], jnp.float32))
    for key in (None, jax.random.PRNGKey(7)):  # a random phase of the pattern keeps the moments
        points, stds = coord.multisample_frustum(*args, count=6, std_scale=0.5, key=key)
        p = np.asarray(points, np.float64)[0, 0]  # [6, 3]
        assert p.shape == (6, 3) and np.asarray(stds).shape == (1, 1, 6)
        cov = (p - p.mean(0)).T @ (p - p.mean(0)) / 6
        sd = np.sqrt(np.diag(mc_cov))
        np.testing.assert_allclose(p.mean(0), mc_mean, atol=4 * sd.max() / np.sqrt(400_000) + 1e-5 * np.abs(mc_mean).max())
        np.testing.assert_allclose(cov, mc_cov, rtol=0.02, atol=0.02 * np.abs(mc_cov).max())


@settings(max_examples=25, deadline=None)
@given(
    hnp.arrays(np.float64, (4, 3), elements=st.floats(-2, 2)),
    hnp.arrays(np.float64, (4, 3), elements=st.floats(-1, 1)),
    hnp.arrays(np.float64, (4, 6), elements=st.floats(0.05, 20.0)),
    st.floats(1e-3, 0.1),
)
def test_multisamples_match_cast_rays_for_any_frustum(origins, dirs, t, radius):
    dirs = dirs + np.array([0.0, 0.0, 1.5])  # keep directions away from zero
    tdist = np.sort(t, axis=-1)
    args = (jnp.asarray(tdist, jnp.float32), jnp.asarray(origins, jnp.float32), jnp.asarray(dirs, jnp.float32),
            jnp.full((4, 1), radius, jnp.float32))
    mean, cov = (np.asarray(a, np.float64) for a in coord.cast_rays(*args, diag=False))
    points, stds = coord.multisample_frustum(*args, count=6, std_scale=0.35, key=jax.random.PRNGKey(1))
    p = np.asarray(points, np.float64)
    dev = p - p.mean(-2, keepdims=True)
    scale = np.abs(cov).max(axis=(-1, -2), keepdims=True)
    np.testing.assert_allclose(p.mean(-2), mean, atol=2e-5 * (1 + np.abs(mean).max()))
    # float32 points: each coordinate is off by ~eps * |p|, so the covariance by ~eps * |p| * its std.
    tol = 2e-4 * scale + 1e-6 * (1 + np.abs(p).max(axis=(-1, -2))[..., None, None]) * np.sqrt(scale)
    assert np.all(np.abs(np.einsum("...ki,...kj->...ij", dev, dev) / 6 - cov) <= tol)
    # Each point's std is the cone's radius at its distance (along the axis) times std_scale.
    t_axis = np.einsum("...ki,...i->...k", p - origins[:, None, None], dirs[:, None]) / np.sum(dirs**2, -1)[:, None, None]
    np.testing.assert_allclose(np.asarray(stds), 0.35 * radius * t_axis, rtol=1e-4, atol=1e-6)
    one, one_std = coord.multisample_frustum(*args, count=1, std_scale=0.35)
    np.testing.assert_allclose(np.asarray(one)[..., 0, :], mean, rtol=1e-5, atol=1e-5)
    assert np.asarray(one_std).shape == (4, 5, 1)


def test_multisample_frustum_rejects_bad_arguments():
    args = (jnp.ones((1, 3)), jnp.zeros((1, 3)), jnp.ones((1, 3)), jnp.ones((1, 1)))
    with pytest.raises(ValueError, match="count"):
        coord.multisample_frustum(*args, count=4, std_scale=0.5)
    with pytest.raises(ValueError, match="std_scale"):
        coord.multisample_frustum(*args, count=6, std_scale=-1.0)


@settings(max_examples=30, deadline=None)
@given(hnp.arrays(np.float64, (3,), elements=st.floats(-50, 50)))
def test_contract_scale_is_the_cube_root_of_the_jacobian_determinant(x):
    jac = jax.jacfwd(coord.contract)(jnp.asarray(x, jnp.float64) if jax.config.jax_enable_x64 else jnp.asarray(x))
    want = abs(np.linalg.det(np.asarray(jac, np.float64))) ** (1 / 3)
    assert float(coord.contract_scale(jnp.asarray(x, jnp.float32))) == pytest.approx(want, rel=2e-4, abs=1e-6)
    assert np.isfinite(np.asarray(jax.grad(lambda y: coord.contract_scale(y))(jnp.zeros(3)))).all()

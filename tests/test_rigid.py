"""nerflib.rigid against float64 power series, pycolmap and exact constructions."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pycolmap
import pytest

from nerflib import rigid

# Angles that exercise every branch: 0, the series regions and their edges,
# generic angles and the approach to pi.
ANGLES = [0.0, 1e-12, 1e-7, 9.99e-4, 1.001e-3, 0.05, 0.0999, 0.1001, 0.7, 2.0, 2.0944, 2.5,
          math.pi - 1e-3, math.pi - 1e-7, math.pi]


def _expm(a: np.ndarray, terms: int = 60) -> np.ndarray:
    """Reference matrix exponential: scaling and squaring of a truncated power series (float64)."""
    k = max(0, int(np.ceil(np.log2(max(np.abs(a).sum(axis=-1).max(), 1e-300)))) + 1)
    a = a / 2.0**k
    out, term = np.eye(len(a)), np.eye(len(a))
    for n in range(1, terms):
        term = term @ a / n
        out = out + term
    for _ in range(k):
        out = out @ out
    return out


def _axes(n, seed=0):
    v = np.random.default_rng(seed).normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_skew_is_the_cross_product():
    rng = np.random.default_rng(0)
    w, x = rng.normal(size=(2, 5, 3))
    assert np.allclose(np.einsum("nij,nj->ni", rigid.skew(w), x), np.cross(w, x), atol=1e-15)
    assert np.allclose(rigid.vee(rigid.skew(w)), w)


@pytest.mark.parametrize("theta", ANGLES)
def test_exp_so3_matches_series(theta):
    for axis in _axes(4, seed=1):
        w = axis * theta
        R = rigid.exp_so3(w)
        assert R.dtype == np.float64
        assert np.abs(R - _expm(rigid.skew(w))).max() < 2e-15
        assert rigid.is_rotation(R, 1e-14)


@pytest.mark.parametrize("theta", ANGLES)
def test_log_so3_inverts_exp(theta):
    for axis in _axes(4, seed=2):
        w = axis * theta
        R = _expm(rigid.skew(w))
        w2 = rigid.log_so3(R)
        assert np.abs(rigid.exp_so3(w2) - R).max() < 1e-14
        if theta < math.pi - 1e-6:
            # Away from pi the rotation vector is unique; float64 accuracy even for tiny angles.
            assert np.abs(w2 - w).max() < 1e-15 + 1e-13 * theta / max(math.pi - theta, 1e-3)
        else:
            # At pi, +-w are the same rotation; the angle is still exact.
            assert abs(np.linalg.norm(w2) - theta) < 1e-9
            assert min(np.abs(w2 - w).max(), np.abs(w2 + w).max()) < 1e-7


def test_so3_float32_in_jax_is_accurate():
    w = jnp.asarray(_axes(50, seed=3) * np.linspace(0, math.pi - 1e-3, 50)[:, None], jnp.float32)
    R = jax.jit(rigid.exp_so3)(w)
    assert R.dtype == jnp.float32
    ref = np.stack([_expm(rigid.skew(x)) for x in np.asarray(w, np.float64)])
    assert np.abs(np.asarray(R) - ref).max() < 1e-6
    assert np.abs(np.asarray(jax.jit(rigid.log_so3)(R)) - np.asarray(w, np.float64)).max() < 2e-3


def test_gradients_at_zero_are_the_generators():
    @jax.jit  # one compilation for all the Jacobians (eager mode compiles every primitive)
    def jacobians():
        return (
            jax.jacfwd(rigid.exp_so3)(jnp.zeros(3)),  # [3, 3, 3]: dR / dw_k
            jax.jacfwd(lambda w: rigid.log_so3(rigid.exp_so3(w)))(jnp.zeros(3)),
            jax.jacrev(lambda w: rigid.log_so3(rigid.exp_so3(w)))(jnp.zeros(3)),
            jax.jacfwd(lambda t: rigid.log_se3(rigid.exp_se3(t)))(jnp.zeros(6)),
            jax.grad(lambda R: rigid.log_so3(R).sum())(jnp.eye(3)),
        )

    d_exp, d_fwd, d_rev, d_se3, d_log = (np.asarray(x) for x in jacobians())
    for k in range(3):
        assert np.allclose(d_exp[:, :, k], rigid.skew(np.eye(3)[k]))
    # d log(exp(w)) / dw = I at 0 (forward and reverse mode); log's gradient at I is finite.
    assert np.allclose(d_fwd, np.eye(3)) and np.allclose(d_rev, np.eye(3))
    assert np.allclose(d_se3, np.eye(6), atol=1e-6)
    assert np.isfinite(d_log).all()


def test_exp_se3_gradient_matches_finite_differences():
    rng = np.random.default_rng(4)
    with jax.enable_x64(True):
        probe = jnp.asarray(rng.normal(size=(4, 4)))

        def f(t):
            return jnp.sum(rigid.exp_se3(t) * probe) + jnp.sum(jnp.sin(rigid.log_se3(rigid.exp_se3(t))))

        value_and_grad = jax.jit(jax.vmap(jax.value_and_grad(f)))  # one compilation for everything
        # Rotation angles in the series region, near its edge, generic and near pi.
        t = np.c_[_axes(5, seed=5) * np.array([1e-5, 0.05, 0.1001, 1.0, 3.0])[:, None], rng.normal(size=(5, 3))]
        e = 1e-6 * np.eye(6)
        batch = np.concatenate([t, (t[:, None] + e).reshape(-1, 6), (t[:, None] - e).reshape(-1, 6)])
        values, grads = (np.asarray(x) for x in value_and_grad(jnp.asarray(batch)))
        g = grads[:5]
        plus, minus = values[5:35].reshape(5, 6), values[35:].reshape(5, 6)
        assert np.abs(g - (plus - minus) / 2e-6).max() < 1e-6


@pytest.mark.parametrize("theta", ANGLES)
def test_exp_se3_matches_matrix_exponential(theta):
    rng = np.random.default_rng(6)
    for axis in _axes(3, seed=7):
        twist = np.r_[axis * theta, rng.normal(size=3)]
        a = np.zeros((4, 4))
        a[:3, :3] = rigid.skew(twist[:3])
        a[:3, 3] = twist[3:]
        T = rigid.exp_se3(twist)
        assert T.shape == (4, 4) and np.array_equal(T[3], [0, 0, 0, 1])
        assert np.abs(T - _expm(a)).max() < 1e-14
        back = rigid.log_se3(T)
        assert np.abs(rigid.exp_se3(back) - T).max() < 1e-13
        if theta < math.pi - 1e-6:
            assert np.abs(back - twist).max() < 1e-12 * (1 + 1 / max(math.pi - theta, 1e-3))
        assert np.allclose(rigid.log_se3(T[:3]), back)  # 3x4 accepted


def test_quaternion_round_trip_and_pycolmap():
    rng = np.random.default_rng(8)
    q = rng.normal(size=(500, 4))
    # Hard cases: w == 0 (half turns), one dominant component each, identity.
    q[:4] = np.eye(4)
    q[4:8] = np.eye(4) + 1e-9
    q[8] = [0.0, 1.0, 1.0, 0.0]
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    q = np.where(q[:, :1] < 0, -q, q)
    R = rigid.quat_to_rotation(q)
    assert rigid.is_rotation(R, 1e-14).all()
    assert np.abs(rigid.rotation_to_quat(R) - q).max() < 1e-15 * 10
    for qi, Ri in zip(q[:50], R[:50]):
        ref = pycolmap.Rotation3d(np.r_[qi[1:], qi[0]]).matrix()  # pycolmap: (x, y, z, w)
        assert np.abs(ref - Ri).max() < 1e-15 * 10
    # Agrees with the rotation vector: q = (cos(t/2), sin(t/2) axis).
    w = _axes(1, seed=9)[0] * 2.5
    assert np.allclose(rigid.rotation_to_quat(rigid.exp_so3(w)), np.r_[math.cos(1.25), math.sin(1.25) * w / 2.5])
    qj = jax.jit(rigid.rotation_to_quat)(jnp.asarray(R[:20], jnp.float32))  # the jax path
    assert np.abs(np.asarray(qj) - q[:20]).max() < 1e-6


def _random_similarity(rng):
    R = rigid.exp_so3(_axes(1, int(rng.integers(1e6)))[0] * rng.uniform(0, math.pi))
    return float(np.exp(rng.normal())), R, rng.normal(size=3) * 5


def test_umeyama_recovers_a_similarity_exactly():
    rng = np.random.default_rng(10)
    for _ in range(20):
        s, R, t = _random_similarity(rng)
        src = rng.normal(size=(int(rng.integers(3, 50)), 3))
        s2, R2, t2 = rigid.umeyama(src, s * src @ R.T + t)
        assert abs(s2 - s) < 1e-12 * s and np.abs(R2 - R).max() < 1e-12 and np.abs(t2 - t).max() < 1e-11
        s3, R3, t3 = rigid.umeyama(src, src @ R.T + t, with_scale=False)
        assert s3 == 1.0 and np.abs(R3 - R).max() < 1e-12 and np.abs(t3 - t).max() < 1e-11
    # Noisy points: the residual is no worse than that of the true similarity.
    src = rng.normal(size=(100, 3))
    dst = s * src @ R.T + t + rng.normal(scale=0.05, size=(100, 3))
    s2, R2, t2 = rigid.umeyama(src, dst)
    assert ((dst - s2 * src @ R2.T - t2) ** 2).sum() <= ((dst - s * src @ R.T - t) ** 2).sum()


def test_umeyama_rejects_degenerate_input():
    with pytest.raises(ValueError, match="at least 3"):
        rigid.umeyama(np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="coincide"):
        rigid.umeyama(np.ones((4, 3)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="shape"):
        rigid.umeyama(np.zeros((4, 3)), np.zeros((5, 3)))


def test_similarity_keeps_projections_and_inverts():
    """Moving the world and the cameras together changes no image."""
    from nerflib import cameras

    rng = np.random.default_rng(11)
    s, R, t = _random_similarity(rng)
    c2w = np.stack([np.c_[rigid.exp_so3(rng.normal(size=3)), rng.normal(size=3)] for _ in range(5)])
    pts = rng.normal(size=(5, 3)) * 3
    params = (300.0, 310.0, 160.0, 120.0, -0.1, 0.01, 1e-3, 0.0)
    uv, depth = cameras.project_points("OPENCV", params, c2w, pts)
    moved = rigid.apply_similarity_to_poses(c2w, s, R, t)
    uv2, depth2 = cameras.project_points("OPENCV", params, moved, s * pts @ R.T + t)
    assert np.allclose(uv2, uv, atol=1e-9) and np.allclose(depth2, s * depth)
    back = rigid.apply_similarity_to_poses(moved, *rigid.invert_similarity(s, R, t))
    assert np.abs(back - c2w).max() < 1e-12
    m = rigid.similarity_matrix(s, R, t)
    assert np.allclose((m @ np.r_[pts[0], 1])[:3], s * R @ pts[0] + t)


def test_rotation_error_is_accurate_for_tiny_and_large_angles():
    R = rigid.exp_so3(np.array([0.3, -0.2, 0.9]))
    for deg in (1e-7, 1e-3, 0.5, 90.0, 179.0):
        d = rigid.exp_so3(_axes(1, seed=12)[0] * math.radians(deg))
        assert abs(rigid.rotation_error_deg(R, R @ d) - deg) < 1e-9 * max(deg, 1e-3)


def test_pose_errors_after_alignment():
    rng = np.random.default_rng(13)
    gt = np.stack([np.c_[rigid.exp_so3(rng.normal(size=3)), rng.normal(size=3) * 4] for _ in range(12)])
    s, R, t = _random_similarity(rng)
    est = rigid.apply_similarity_to_poses(gt, s, R, t)  # same cameras in another gauge
    est[3, :, :3] = est[3, :, :3] @ rigid.exp_so3(np.array([0.0, 0.0, math.radians(2.0)]))  # 2 deg roll
    e = rigid.pose_errors(est, gt)
    expect = np.zeros(12)
    expect[3] = 2.0
    assert np.abs(e["rotation_deg"] - expect).max() < 1e-9
    assert e["position"].max() < 1e-10 * 4
    assert abs(e["scale"] - 1 / s) < 1e-12
    # Without alignment the gauge shows up as error.
    assert rigid.pose_errors(est, gt, align=False)["position"].min() > 1e-3


def test_is_rotation():
    R = rigid.exp_so3(np.array([0.1, 2.0, -0.4]))
    assert rigid.is_rotation(R)
    assert not rigid.is_rotation(R @ np.diag([1, 1, -1]))  # reflection: det -1
    assert not rigid.is_rotation(1.01 * R)
    assert not rigid.is_rotation(np.full((3, 3), np.nan))
    assert not rigid.is_rotation(np.eye(4))
    assert rigid.is_rotation(np.stack([R, R.T])).tolist() == [True, True]


def test_rotation_between_and_focus_point():
    for a, b in [(_axes(1, 14)[0], _axes(1, 15)[0]), (np.array([0, 0, 1.0]), np.array([0, 0, -1.0])),
                 (np.array([1.0, 0, 0]), np.array([-1.0, 0, 0])), (np.array([0, 1.0, 0]), np.array([0, 1.0, 0]))]:
        R = rigid.rotation_between(a, b)
        assert rigid.is_rotation(R, 1e-12) and np.allclose(R @ a, b, atol=1e-12)
        # The smallest such rotation: its angle is the angle between a and b.
        assert abs(rigid.rotation_error_deg(np.eye(3), R) - np.degrees(np.arccos(np.clip(a @ b, -1, 1)))) < 1e-6
    rng = np.random.default_rng(16)
    target = np.array([1.0, -2.0, 0.5])
    pos = rng.normal(size=(8, 3)) * 4
    z = (target - pos) / np.linalg.norm(target - pos, axis=1, keepdims=True)
    c2w = np.stack([np.c_[rigid.rotation_between(np.array([0, 0, 1.0]), zi), p] for zi, p in zip(z, pos)])
    assert np.allclose(rigid.focus_point(c2w), target, atol=1e-10)

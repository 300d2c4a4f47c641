"""Rigid-body and similarity transforms: SO(3), SE(3), quaternions, alignment.

Short names:
  omega  [..., 3]     rotation vector (axis * angle, radians).
  twist  [..., 6]     (omega, v): se(3) coordinates, rotation part first;
                      exp_se3(twist) = expm([[skew(omega), v], [0, 0]]).
  R      [..., 3, 3]  rotation matrix; poses `c2w` [..., 3, 4] (OpenCV axes).
  quat   [..., 4]     unit quaternion (w, x, y, z), COLMAP's order; w >= 0 when
                      produced here.
  s, R, t             a similarity x -> s R x + t.

Array namespace: like cameras.py, the pure functions run on numpy (float64,
host) or jax (jit/grad) inputs and return the same kind. Small-angle and
near-pi cases use series or a separate formula, chosen with the double-`where`
pattern so that values *and* gradients are finite at exactly zero.
`umeyama`, `pose_errors` and `is_rotation` are host-side numpy.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


def _xp(*arrays):
    """jnp if any argument is a jax array (or tracer), else numpy."""
    return jnp if any(isinstance(a, jax.Array) for a in arrays) else np


# Below this angle (radians) the series expansions are used; their truncation
# error there is < 1e-20, far under float64 rounding.
_SMALL_ANGLE = 1e-3
# (theta - sin theta) / theta^3 and the log's V^-1 coefficient cancel badly
# for small theta; their 4-term series are exact to ~1e-16 below this angle.
_SERIES_ANGLE = 0.1


def _safe_sqrt(x, xp):
    """sqrt with x clamped to the smallest normal number: finite gradients at 0."""
    x = xp.asarray(x)
    return xp.sqrt(xp.maximum(x, np.finfo(x.dtype).tiny))


def skew(w):
    """[..., 3] -> [..., 3, 3] cross-product matrix: skew(w) @ x == cross(w, x)."""
    xp = _xp(w)
    w = xp.asarray(w)
    x, y, z = w[..., 0], w[..., 1], w[..., 2]
    o = xp.zeros_like(x)
    return xp.stack(
        [xp.stack([o, -z, y], -1), xp.stack([z, o, -x], -1), xp.stack([-y, x, o], -1)], axis=-2
    )


def vee(m):
    """Inverse of `skew` on the antisymmetric part: [..., 3, 3] -> [..., 3]."""
    xp = _xp(m)
    m = xp.asarray(m)
    return 0.5 * xp.stack(
        [m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], axis=-1
    )


def _theta(w, xp):
    """|w|, the small-angle mask and a safe angle (1 where small) for divisions."""
    theta2 = xp.sum(w * w, axis=-1)
    small = theta2 < _SMALL_ANGLE**2
    theta_safe = xp.sqrt(xp.where(small, 1.0, theta2))
    return theta2, small, theta_safe


def _so3_coefficients(w, xp):
    """A = sin(t)/t, B = (1 - cos t)/t^2, C = (t - sin t)/t^3 for t = |w|, all [...]."""
    theta2, small, t = _theta(w, xp)
    a = xp.where(small, 1.0 - theta2 / 6.0 * (1.0 - theta2 / 20.0), xp.sin(t) / t)
    # 1 - cos t = 2 sin^2(t/2) avoids the cancellation of 1 - cos t.
    half = xp.sin(0.5 * t) / t
    b = xp.where(small, 0.5 - theta2 / 24.0 * (1.0 - theta2 / 30.0), 2.0 * half * half)
    series = theta2 < _SERIES_ANGLE**2
    c_series = (1.0 / 6.0) * (1.0 - theta2 / 20.0 * (1.0 - theta2 / 42.0 * (1.0 - theta2 / 72.0)))
    c = xp.where(series, c_series, (t - xp.sin(t)) / (t * t * t))
    return a, b, c


def exp_so3(omega):
    """Rotation vector [..., 3] -> rotation matrix [..., 3, 3] (Rodrigues)."""
    xp = _xp(omega)
    omega = xp.asarray(omega)
    a, b, _ = _so3_coefficients(omega, xp)
    k = skew(omega)
    eye = xp.eye(3, dtype=k.dtype)
    return eye + a[..., None, None] * k + b[..., None, None] * (k @ k)


def log_so3(R):
    """Rotation matrix [..., 3, 3] -> rotation vector [..., 3] with angle in [0, pi].

    The angle is atan2(|vee(R)|, (tr R - 1) / 2), accurate at every angle. The
    axis is vee(R) / sin(angle) for angles below 2 pi / 3; above, where sin
    vanishes, it comes from the symmetric part (R + R^T) / 2 - cos I =
    (1 - cos) a a^T, signed to agree with vee(R).
    """
    xp = _xp(R)
    R = xp.asarray(R)
    w = vee(R)  # sin(theta) * axis
    s2 = xp.sum(w * w, axis=-1)
    s = _safe_sqrt(s2, xp)
    c = 0.5 * (R[..., 0, 0] + R[..., 1, 1] + R[..., 2, 2] - 1.0)
    theta = xp.arctan2(s, c)
    # Generic and small-angle branch: omega = theta / sin(theta) * w, where
    # theta / sin(theta) = 1 + theta^2 / 6 + O(theta^4) and sin^2 = s2.
    small = (s2 < _SMALL_ANGLE**2) & (c > 0)
    s_gen = xp.where(small, 1.0, s)
    ratio = xp.where(small, 1.0 + s2 / 6.0, xp.arctan2(s_gen, c) / s_gen)
    omega_generic = ratio[..., None] * w
    # Near-pi branch.
    near_pi = c < -0.5
    one_minus_c = xp.where(near_pi, 1.0 - c, 1.0)
    sym = 0.5 * (R + xp.swapaxes(R, -1, -2)) - c[..., None, None] * xp.eye(3, dtype=R.dtype)
    diag = xp.stack([sym[..., 0, 0], sym[..., 1, 1], sym[..., 2, 2]], axis=-1)
    # Column k of sym with the largest diagonal entry (a one-hot mask: cheaper to trace than a gather).
    onehot = (xp.argmax(diag, axis=-1)[..., None] == xp.arange(3)).astype(sym.dtype)
    col = xp.sum(sym * onehot[..., None, :], axis=-1)
    dkk = xp.sum(diag * onehot, axis=-1)
    axis = col / _safe_sqrt(dkk * one_minus_c, xp)[..., None]
    sign = xp.where(xp.sum(axis * w, axis=-1) < 0, -1.0, 1.0)
    omega_pi = (sign * theta)[..., None] * axis
    return xp.where(near_pi[..., None], omega_pi, omega_generic)


def exp_se3(twist):
    """Twist (omega, v) [..., 6] -> rigid transform [..., 4, 4] (last row 0 0 0 1)."""
    xp = _xp(twist)
    twist = xp.asarray(twist)
    omega, v = twist[..., :3], twist[..., 3:]
    a, b, c = _so3_coefficients(omega, xp)
    k = skew(omega)
    k2 = k @ k
    eye = xp.eye(3, dtype=k.dtype)
    R = eye + a[..., None, None] * k + b[..., None, None] * k2
    V = eye + b[..., None, None] * k + c[..., None, None] * k2
    t = xp.einsum("...ij,...j->...i", V, v)
    top = xp.concatenate([R, t[..., None]], axis=-1)
    bottom = xp.broadcast_to(xp.asarray([0.0, 0.0, 0.0, 1.0], dtype=top.dtype), top.shape[:-2] + (1, 4))
    return xp.concatenate([top, bottom], axis=-2)


def log_se3(T):
    """Rigid transform [..., 3, 4] or [..., 4, 4] -> twist (omega, v) [..., 6]."""
    xp = _xp(T)
    T = xp.asarray(T)
    omega = log_so3(T[..., :3, :3])
    theta2 = xp.sum(omega * omega, axis=-1)
    series = theta2 < _SERIES_ANGLE**2
    t = xp.sqrt(xp.where(series, 1.0, theta2))
    # V^-1 = I - K/2 + D K^2 with D = (1 - t sin t / (2 (1 - cos t))) / t^2.
    d_direct = (1.0 - 0.5 * t / xp.tan(0.5 * t)) / (t * t)
    d_series = 1.0 / 12.0 + theta2 * (1.0 / 720.0 + theta2 * (1.0 / 30240.0 + theta2 / 1209600.0))
    d = xp.where(series, d_series, d_direct)
    k = skew(omega)
    v_inv = xp.eye(3, dtype=k.dtype) - 0.5 * k + d[..., None, None] * (k @ k)
    v = xp.einsum("...ij,...j->...i", v_inv, T[..., :3, 3])
    return xp.concatenate([omega, v], axis=-1)


def quat_to_rotation(quat):
    """Quaternion (w, x, y, z) [..., 4] (normalized here) -> rotation [..., 3, 3]."""
    xp = _xp(quat)
    q = xp.asarray(quat)
    q = q / xp.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    rows = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ]
    return xp.stack([xp.stack(r, axis=-1) for r in rows], axis=-2)


def rotation_to_quat(R):
    """Rotation [..., 3, 3] -> unit quaternion (w, x, y, z) [..., 4] with w >= 0.

    Shepperd's method: of the four algebraically equal formulas, use the one
    whose square root argument (1 + trace, or 1 + 2 R_ii - trace) is largest.
    """
    xp = _xp(R)
    R = xp.asarray(R)
    r00, r11, r22 = R[..., 0, 0], R[..., 1, 1], R[..., 2, 2]
    tr = r00 + r11 + r22
    r = lambda i, j: R[..., i, j]  # noqa: E731
    # Square-root arguments 4 w^2, 4 x^2, 4 y^2, 4 z^2 (up to the common factor).
    args = (1.0 + tr, 1.0 + 2.0 * r00 - tr, 1.0 + 2.0 * r11 - tr, 1.0 + 2.0 * r22 - tr)
    # Clamp: a losing candidate may have a negative argument; it is never selected.
    s = [2.0 * xp.sqrt(xp.maximum(a, 1e-12)) for a in args]
    cands = [
        [0.25 * s[0], (r(2, 1) - r(1, 2)) / s[0], (r(0, 2) - r(2, 0)) / s[0], (r(1, 0) - r(0, 1)) / s[0]],
        [(r(2, 1) - r(1, 2)) / s[1], 0.25 * s[1], (r(0, 1) + r(1, 0)) / s[1], (r(0, 2) + r(2, 0)) / s[1]],
        [(r(0, 2) - r(2, 0)) / s[2], (r(0, 1) + r(1, 0)) / s[2], 0.25 * s[2], (r(1, 2) + r(2, 1)) / s[2]],
        [(r(1, 0) - r(0, 1)) / s[3], (r(0, 2) + r(2, 0)) / s[3], (r(1, 2) + r(2, 1)) / s[3], 0.25 * s[3]],
    ]
    cands = [xp.stack(q, axis=-1) for q in cands]
    cands = xp.stack(cands, axis=-2)  # [..., 4 candidates, 4]
    key = xp.stack(args, axis=-1)
    best = xp.argmax(key, axis=-1)
    q = xp.take_along_axis(cands, best[..., None, None], axis=-2)[..., 0, :]
    q = q / xp.linalg.norm(q, axis=-1, keepdims=True)
    return xp.where(q[..., :1] < 0, -q, q)


def rotation_error_deg(R_a, R_b):
    """Angle in degrees of R_a^T R_b, [...] (atan2 form: accurate for tiny errors too)."""
    xp = _xp(R_a, R_b)
    m = xp.swapaxes(xp.asarray(R_a), -1, -2) @ xp.asarray(R_b)
    w = vee(m)
    s = _safe_sqrt(xp.sum(w * w, axis=-1), xp)
    c = 0.5 * (m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2] - 1.0)
    return xp.arctan2(s, c) * (180.0 / math.pi)


def is_rotation(R, tol: float = 1e-6):
    """True where R [..., 3, 3] is orthonormal and right-handed (det +1) within `tol`."""
    R = np.asarray(R, dtype=np.float64)
    if R.shape[-2:] != (3, 3):
        return np.zeros(R.shape[:-2], dtype=bool) if R.ndim >= 2 else np.bool_(False)
    ortho = np.abs(np.swapaxes(R, -1, -2) @ R - np.eye(3)).max(axis=(-2, -1)) <= tol
    with np.errstate(invalid="ignore"):
        det = np.abs(np.linalg.det(R) - 1.0) <= tol
    return ortho & det & np.isfinite(R).all(axis=(-2, -1))


# --------------------------------------------------------------------------
# Similarities, alignment and pose-set geometry (host side).


def focus_point(c2w) -> np.ndarray:
    """The point nearest (least squares) to all optical axes (multinerf's focus point), [3]."""
    c2w = np.asarray(c2w, dtype=np.float64)
    d = c2w[:, :, 2]
    m = np.eye(3) - d[:, :, None] * d[:, None, :]  # projectors orthogonal to each axis
    a = m.sum(0)
    b = np.einsum("nij,nj->i", m, c2w[:, :, 3])
    if np.linalg.cond(a) > 1e6:
        raise ValueError("the optical axes are (nearly) parallel, so they have no common focus point; "
                         "for a forward-facing capture use normalize_scene(mode='forward')")
    return np.linalg.solve(a, b)


def rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The smallest rotation taking unit vector a to unit vector b."""
    v, c = np.cross(a, b), float(a @ b)
    if c < -1 + 1e-12:  # opposite: a half turn about any axis orthogonal to a
        axis = np.cross(a, [1.0, 0, 0]) if abs(a[0]) < 0.9 else np.cross(a, [0, 1.0, 0])
        return exp_so3(np.pi * axis / np.linalg.norm(axis))
    k = skew(v)
    return np.eye(3) + k + k @ k / (1.0 + c)


def umeyama(src, dst, *, with_scale: bool = True):
    """Least-squares similarity (s, R, t) with dst ~ s R src + t (Umeyama 1991).

    src, dst [N, 3] float64, N >= 3 not collinear. with_scale=False fixes s = 1.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 3:
        raise ValueError(f"umeyama needs two [N, 3] arrays of one shape, got {src.shape} and {dst.shape}")
    if len(src) < 3:
        raise ValueError(f"umeyama needs at least 3 point pairs, got {len(src)}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    var_s = (xs * xs).sum(1).mean()
    if not var_s > 0:
        raise ValueError("umeyama: the source points all coincide")
    u, sv, vt = np.linalg.svd(xd.T @ xs / len(src))
    d = np.ones(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[2] = -1.0  # a reflection would fit better: take the best proper rotation
    R = u @ np.diag(d) @ vt
    s = float((sv * d).sum() / var_s) if with_scale else 1.0
    t = mu_d - s * R @ mu_s
    return s, R, t


def similarity_matrix(s, R, t) -> np.ndarray:
    """4x4 matrix of x -> s R x + t."""
    m = np.eye(4)
    m[:3, :3] = s * np.asarray(R)
    m[:3, 3] = t
    return m


def invert_similarity(s, R, t):
    """(s, R, t) of the inverse map x -> (R^T (x - t)) / s."""
    R = np.asarray(R, dtype=np.float64)
    return 1.0 / s, R.T, -(R.T @ np.asarray(t, dtype=np.float64)) / s


def apply_similarity_to_poses(c2w, s, R, t):
    """Poses c2w [..., 3, 4] after moving the world by x -> s R x + t.

    Rotations become R @ R_c2w (the camera is not scaled), centres s R c + t.
    """
    xp = _xp(c2w, R, t)
    c2w = xp.asarray(c2w)
    R = xp.asarray(R)
    rot = xp.einsum("ij,...jk->...ik", R, c2w[..., :3, :3])
    centre = s * xp.einsum("ij,...j->...i", R, c2w[..., :3, 3]) + xp.asarray(t)
    return xp.concatenate([rot, centre[..., None]], axis=-1)


def pose_errors(c2w_est, c2w_gt, *, align: bool = True, with_scale: bool = True) -> dict:
    """Per-camera errors of estimated poses against ground truth.

    With `align`, the estimated camera centres are first mapped onto the
    ground-truth ones by the Umeyama similarity (the gauge freedom of SfM),
    and the same similarity is applied to the estimated rotations.
    Returns {'rotation_deg' [N], 'position' [N] (world units of gt),
    'scale', 'R', 't' (the alignment; identity without `align`),
    'c2w_aligned' [N, 3, 4]}.
    """
    est = np.asarray(c2w_est, dtype=np.float64)
    gt = np.asarray(c2w_gt, dtype=np.float64)
    if est.shape != gt.shape or est.shape[-2:] != (3, 4):
        raise ValueError(f"pose_errors needs two [N, 3, 4] arrays of one shape, got {est.shape} and {gt.shape}")
    s, R, t = umeyama(est[:, :, 3], gt[:, :, 3], with_scale=with_scale) if align else (1.0, np.eye(3), np.zeros(3))
    aligned = apply_similarity_to_poses(est, s, R, t)
    return {
        "rotation_deg": rotation_error_deg(aligned[:, :, :3], gt[:, :, :3]),
        "position": np.linalg.norm(aligned[:, :, 3] - gt[:, :, 3], axis=-1),
        "scale": s,
        "R": R,
        "t": t,
        "c2w_aligned": aligned,
    }

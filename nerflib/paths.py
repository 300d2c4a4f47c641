"""Camera paths for rendering videos (host side, numpy float64).

Every function takes the training cameras' poses `c2w` [N, 3, 4] (OpenCV axes:
x right, y down, z forward; last column = centre) in the frame the model was
trained in, and returns the path's poses [n_frames, 3, 4] in that frame.

Short names:
  up      [3]  the world's up direction: +z in the frame of
               scene_io.normalize_scene(mode='360') (which turns the mean camera
               up axis, -y, onto +z); `camera_up` gives it for other frames.
  focus   [3]  the point every orbit camera looks at (rigid.focus_point: the
               point nearest to all optical axes).
  phi     [...] an angle along the fitted ellipse (its parameter, not the azimuth).

Kinds (`make_path`):
  orbit   360 captures: an ellipse fitted to the cameras' ground-plane
          positions, heights following the cameras, looking at the focus point,
          frames evenly spaced in arc length.
  spiral  forward-facing (LLFF) captures: NeRF/multinerf's spiral around the
          average camera, looking at a point at the focal depth.
  spline  a centripetal Catmull-Rom spline through chosen cameras' centres,
          rotations by squad (smooth spherical interpolation); the path passes
          exactly through each keyframe pose.
`keyframe_path` samples the same spline in time (keyframes with times, at a
frame rate): what camera path files hold (nerflib.camera_path).
"""

from __future__ import annotations

import numpy as np

from nerflib import rigid
from nerflib.types import Scene

KINDS = ("auto", "orbit", "spiral", "spline")
# Samples per frame of the dense curve used to space frames by arc length;
# the polyline's length error is O((2 pi / samples)^2), far below 1e-6.
_DENSE_PER_FRAME = 64
_DENSE_MIN = 8192


def _check_c2w(c2w, min_count: int = 1) -> np.ndarray:
    c2w = np.asarray(c2w, dtype=np.float64)
    if c2w.ndim != 3 or c2w.shape[1:] != (3, 4):
        raise ValueError(f"c2w must have shape [N, 3, 4], got {c2w.shape}")
    if len(c2w) < min_count:
        raise ValueError(f"need at least {min_count} cameras, got {len(c2w)}")
    if not np.isfinite(c2w).all():
        raise ValueError("c2w has non-finite values")
    return c2w


def _check_frames(n_frames) -> int:
    if isinstance(n_frames, bool) or not isinstance(n_frames, (int, np.integer)) or n_frames < 1:
        raise ValueError(f"n_frames must be a positive integer, got {n_frames!r}")
    return int(n_frames)


def _unit(v, what: str) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    n = np.linalg.norm(v)
    if not n > 1e-12:
        raise ValueError(f"{what} has no direction (length {n})")
    return v / n


def camera_up(c2w) -> np.ndarray:
    """The mean camera up axis (-y in OpenCV axes), unit [3]; world +z for normalized 360 scenes."""
    c2w = _check_c2w(c2w)
    return _unit(-c2w[:, :, 1].mean(0), "the mean camera up axis")


def look_at(positions, targets, up) -> np.ndarray:
    """Poses [..., 3, 4] at `positions` [..., 3] looking at `targets` [..., 3], image up ~ `up` [3].

    z (forward) = unit(target - position), x (right) = unit(z x up), y (down) = z x x.
    """
    positions = np.asarray(positions, dtype=np.float64)
    targets = np.broadcast_to(np.asarray(targets, dtype=np.float64), positions.shape)
    z = targets - positions
    zn = np.linalg.norm(z, axis=-1, keepdims=True)
    if not (zn > 1e-12).all():
        raise ValueError("a path camera sits on its look-at point")
    z = z / zn
    x = np.cross(z, np.asarray(up, dtype=np.float64))
    xn = np.linalg.norm(x, axis=-1, keepdims=True)
    # Looking straight along `up` leaves the roll undefined.
    if not (xn > 1e-9).all():
        raise ValueError("a path camera looks straight up or down: its roll is undefined")
    x = x / xn
    y = np.cross(z, x)
    return np.concatenate([np.stack([x, y, z], axis=-1), positions[..., None]], axis=-1)


def _frame_basis(up: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors spanning the ground plane orthogonal to `up`."""
    helper = np.array([1.0, 0.0, 0.0]) if abs(up[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    e1 = _unit(helper - (helper @ up) * up, "ground axis")
    return e1, np.cross(up, e1)


def resample_closed(points: np.ndarray, n: int, start: float = 0.0) -> np.ndarray:
    """Parameters of n points evenly spaced in arc length along a closed dense polyline.

    points [M, 3] sample a closed curve at parameters 2 pi k / M. Returns the
    curve parameters [n] (in [0, 2 pi)) of the n points, the first at `start`.
    """
    m = len(points)
    seg = np.linalg.norm(np.roll(points, -1, axis=0) - points, axis=-1)
    cum = np.concatenate([[0.0], np.cumsum(seg)])  # [M + 1], the last = total length
    params = 2.0 * np.pi * np.arange(m + 1) / m
    s0 = np.interp(start % (2.0 * np.pi), params, cum)  # arc length at `start`
    s = (s0 + cum[-1] * np.arange(n) / n) % cum[-1]
    return np.interp(s, cum, params)


# --------------------------------------------------------------------------- orbit


def fit_ellipse(xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centred ellipse through 2D points xy [N, 2] (relative to its known centre).

    Least squares on the conic q^T Q q = 1 (Q symmetric 2x2: three linear
    unknowns), exact for points on any arc of a centred ellipse. Returns
    (axes [2, 2] (columns: major, minor direction), radii [2] (major, minor)).
    Falls back to a circle of the median radius when the fit is degenerate
    (fewer than 3 distinct directions, or Q not positive definite).
    """
    x, y = xy[:, 0], xy[:, 1]
    a = np.stack([x * x, 2.0 * x * y, y * y], axis=-1)
    r = np.linalg.norm(xy, axis=-1)
    circle = (np.eye(2), np.full(2, float(np.median(r))))
    if len(xy) >= 3:
        coef, _, rank, sv = np.linalg.lstsq(a, np.ones(len(xy)), rcond=None)
        if rank == 3 and sv[-1] > 1e-9 * sv[0]:
            q = np.array([[coef[0], coef[1]], [coef[1], coef[2]]])
            evals, evecs = np.linalg.eigh(q)  # ascending: the smallest eigenvalue is the major axis
            if evals[0] > 0:
                return evecs, 1.0 / np.sqrt(evals)
    if not circle[1][0] > 0:
        raise ValueError("the cameras all sit above the focus point: no orbit to fit")
    return circle


def orbit_path(c2w, *, n_frames: int, focus=None, up=None, radius_scale: float = 1.0,
               height_offset: float = 0.0, follow_heights: bool = True) -> np.ndarray:
    """An elliptical orbit around `focus` fitted to the cameras of a 360 capture.

    c2w      [N, 3, 4] training cameras (N >= 1).
    focus    [3] look-at point; None -> rigid.focus_point(c2w) (N >= 2 cameras
             that are not all parallel).
    up       [3] world up; None -> +z, the up of scene_io.normalize_scene(mode='360')'s
             frame (for another frame pass e.g. `camera_up(c2w)`).
    The ellipse is centred on the focus point's ground-plane projection; its
    axes and radii are the least-squares conic through the cameras'
    ground-plane offsets (`fit_ellipse`), times `radius_scale`. Heights
    (along `up`, relative to the focus) follow the cameras: the sinusoid
    h0 + h1 cos(phi) + h2 sin(phi) fitted to their heights at their ellipse
    angles (exact for a tilted circular orbit), clipped to the cameras' height
    range widened by 10% of the mean radius, so an arc the capture never
    visited is not extrapolated over or under the scene; constant (the mean)
    when follow_heights=False or fewer than 3 cameras. `height_offset` lifts the path.
    Frames are evenly spaced in 3D arc length, the first one nearest to camera 0
    in angle, running in the direction the cameras were taken.
    Returns c2w [n_frames, 3, 4], every camera looking at `focus`.
    """
    c2w = _check_c2w(c2w)
    n_frames = _check_frames(n_frames)
    if not radius_scale > 0:
        raise ValueError(f"radius_scale must be positive, got {radius_scale!r}")
    focus = rigid.focus_point(c2w) if focus is None else np.asarray(focus, dtype=np.float64)
    up = np.array([0.0, 0.0, 1.0]) if up is None else _unit(up, "up")
    e1, e2 = _frame_basis(up)
    rel = c2w[:, :, 3] - focus
    ground = np.stack([rel @ e1, rel @ e2], axis=-1)
    heights = rel @ up
    axes, radii = fit_ellipse(ground)
    radii = radii * radius_scale
    local = ground @ axes / radii  # camera offsets in unit-circle coordinates
    phi = np.arctan2(local[:, 1], local[:, 0])

    if follow_heights and len(c2w) >= 3:
        design = np.stack([np.ones_like(phi), np.cos(phi), np.sin(phi)], axis=-1)
        coef, _, rank, sv = np.linalg.lstsq(design, heights, rcond=None)
        if rank < 3 or sv[-1] < 1e-6 * sv[0]:  # all cameras at one angle: no sinusoid to fit
            coef = np.array([heights.mean(), 0.0, 0.0])
    else:
        coef = np.array([heights.mean(), 0.0, 0.0])
    margin = 0.1 * float(radii.mean())
    h_lo, h_hi = heights.min() - margin, heights.max() + margin

    ground_axes = np.stack([e1, e2], axis=-1) @ axes  # [3, 2]: ellipse axes in the world

    def curve(t):
        h = np.clip(coef[0] + coef[1] * np.cos(t) + coef[2] * np.sin(t), h_lo, h_hi) + height_offset
        flat = np.stack([radii[0] * np.cos(t), radii[1] * np.sin(t)], axis=-1)
        return focus + flat @ ground_axes.T + h[..., None] * up

    # Direction of travel: the sign of the median angle step between consecutive cameras.
    direction = 1.0
    if len(phi) >= 2:
        steps = np.angle(np.exp(1j * np.diff(phi)))
        if np.median(steps) < 0:
            direction = -1.0
    m = max(_DENSE_MIN, _DENSE_PER_FRAME * n_frames)
    dense_t = 2.0 * np.pi * np.arange(m) / m
    start = (direction * phi[0]) % (2.0 * np.pi)
    t = direction * resample_closed(curve(direction * dense_t), n_frames, start=start)
    positions = curve(t)
    return look_at(positions, focus, up)


# --------------------------------------------------------------------------- spiral


def average_pose(c2w) -> np.ndarray:
    """The mean camera [3, 4]: mean centre; forward = mean z, down = mean y made orthogonal.

    The same frame as scene_io.normalize_scene(mode='forward') (LLFF's recenter_poses).
    """
    c2w = _check_c2w(c2w)
    z = _unit(c2w[:, :, 2].mean(0), "the mean forward axis")
    x = _unit(np.cross(c2w[:, :, 1].mean(0), z), "the mean right axis")
    y = np.cross(z, x)
    return np.concatenate([np.stack([x, y, z], axis=-1), c2w[:, :, 3].mean(0)[:, None]], axis=-1)


def spiral_path(c2w, *, n_frames: int, near: float, far: float, n_rotations: float = 2.0, zrate: float = 0.5,
                radius_percentile: float = 90.0, focus_depth: float | None = None) -> np.ndarray:
    """NeRF's spiral for forward-facing captures (multinerf `generate_spiral_path`, OpenCV axes).

    Around the average camera (`average_pose`) the centres follow
    radii * (cos a, sin a, sin(zrate a)) in its camera frame (multinerf's
    (cos a, -sin a, -sin(zrate a)) in OpenGL axes), for
    a = 2 pi n_rotations k / n_frames (k = 0 .. n_frames - 1), where radii [3]
    are the `radius_percentile` percentile of the cameras' |offsets| from the
    average camera in its frame. Every frame looks at the point `focus_depth`
    ahead of the average camera, with the average camera's up; focus_depth
    None -> multinerf's 1 / (0.25 / (0.9 near) + 0.75 / (5 far)), the depth
    NeRF found pleasant (a weighted harmonic mean of the bounds).
    """
    c2w = _check_c2w(c2w)
    n_frames = _check_frames(n_frames)
    if not (np.isfinite(near) and np.isfinite(far) and 0 < near < far):
        raise ValueError(f"spiral_path needs 0 < near < far, got near={near!r}, far={far!r}")
    if not 0 < radius_percentile <= 100:
        raise ValueError(f"radius_percentile must be in (0, 100], got {radius_percentile!r}")
    avg = average_pose(c2w)
    rot, centre = avg[:, :3], avg[:, 3]
    offsets = (c2w[:, :, 3] - centre) @ rot  # in the average camera's frame
    radii = np.percentile(np.abs(offsets), radius_percentile, axis=0)
    if focus_depth is None:
        focus_depth = 1.0 / (0.25 / (0.9 * near) + 0.75 / (5.0 * far))
    if not focus_depth > 0:
        raise ValueError(f"focus_depth must be positive, got {focus_depth!r}")
    a = 2.0 * np.pi * n_rotations * np.arange(n_frames) / n_frames
    local = radii * np.stack([np.cos(a), np.sin(a), np.sin(zrate * a)], axis=-1)
    positions = centre + local @ rot.T
    target = centre + focus_depth * rot[:, 2]
    return look_at(positions, target, -rot[:, 1])


# --------------------------------------------------------------------------- spline


def _catmull_rom(p: np.ndarray, closed: bool, alpha: float = 0.5):
    """Per segment i (p[i] -> p[i+1]) the Hermite tangents (m0, m1) [S, 3] of a centripetal Catmull-Rom spline."""
    k = len(p)
    if closed:
        ext = np.concatenate([p[-1:], p, p[:2]])
    else:  # open ends: reflected phantom points
        ext = np.concatenate([2 * p[:1] - p[1:2], p, 2 * p[-1:] - p[-2:-1]])
    n_seg = k if closed else k - 1
    # Knot spacing |dp|^alpha, floored so that coincident keyframes (a pure
    # rotation between them) do not divide by zero; such a segment stays put.
    dt = np.maximum(np.linalg.norm(np.diff(ext, axis=0), axis=-1) ** alpha, 1e-9)
    m0, m1 = [], []
    for i in range(n_seg):
        p0, p1, p2, p3 = ext[i], ext[i + 1], ext[i + 2], ext[i + 3]
        d0, d1, d2 = dt[i], dt[i + 1], dt[i + 2]
        t1 = (p1 - p0) / d0 - (p2 - p0) / (d0 + d1) + (p2 - p1) / d1
        t2 = (p2 - p1) / d1 - (p3 - p1) / (d1 + d2) + (p3 - p2) / d2
        m0.append(t1 * d1)
        m1.append(t2 * d1)
    return np.array(m0), np.array(m1)


def _slerp(ra, rb, h):
    """Rotations [..., 3, 3] along the geodesic from ra to rb at fraction h [...]."""
    omega = rigid.log_so3(np.swapaxes(ra, -1, -2) @ rb)
    return ra @ rigid.exp_so3(np.asarray(h)[..., None] * omega)


def spline_path(c2w, keyframe_indices, *, n_frames: int, closed: bool = False) -> np.ndarray:
    """A smooth path through the poses c2w[keyframe_indices] (in that order).

    Centres: a centripetal Catmull-Rom spline (no cusps or self-intersections
    within a segment). Rotations: squad (Shoemake), the spherical analogue of
    a cubic, with inner control rotations S_i = R_i exp(-(log(R_i^T R_i+1) +
    log(R_i^T R_i-1)) / 4) (the quaternion formula written with rotation
    vectors from nerflib.rigid; S = R at the open ends).
    Frames are shared among segments in proportion to their length (centre
    distance plus rotation angle times the mean keyframe spacing), at least
    one each, so every keyframe is exactly a frame: open paths start at the
    first keyframe and end at the last (n_frames >= K); closed ones return
    towards the first (n_frames >= K, the last segment wraps around).
    """
    c2w = _check_c2w(c2w)
    n_frames = _check_frames(n_frames)
    idx = np.asarray(keyframe_indices, dtype=np.int64).reshape(-1)
    if len(idx) < 2:
        raise ValueError(f"spline_path needs at least 2 keyframes, got {list(idx)}")
    if idx.min() < -len(c2w) or idx.max() >= len(c2w):
        raise ValueError(f"keyframe indices {list(idx)} out of range for {len(c2w)} cameras")
    keys = c2w[idx]
    k = len(keys)
    n_seg = k if closed else k - 1
    steps = n_frames if closed else n_frames - 1
    if steps < n_seg:
        raise ValueError(f"n_frames={n_frames} is too few for {k} keyframes (need at least {k})")
    p, rot = keys[:, :, 3], keys[:, :, :3]
    nxt = np.roll(np.arange(k), -1)[:n_seg]
    dist = np.linalg.norm(p[nxt] - p[:n_seg], axis=-1)
    angle = np.linalg.norm(rigid.log_so3(np.swapaxes(rot[:n_seg], -1, -2) @ rot[nxt]), axis=-1)
    scale = dist.mean() if dist.mean() > 0 else 1.0
    length = dist + scale * angle
    counts = _share(steps, length if length.sum() > 0 else np.ones(n_seg))

    spline = _Spline(keys, closed)
    out = [spline.segment(i, np.arange(counts[i]) / counts[i]) for i in range(n_seg)]
    if not closed:
        out.append(keys[-1:])
    return np.concatenate(out)


class _Spline:
    """The spline of `spline_path` through keyframe poses keys [K, 3, 4]: centres by centripetal
    Catmull-Rom, rotations by squad; `segment(i, h)` evaluates segment i (keyframe i -> i + 1, the
    last one wrapping round when closed) at fractions h [m] in [0, 1]."""

    def __init__(self, keys: np.ndarray, closed: bool):
        k = len(keys)
        self.k, self.keys = k, keys
        self.p, self.rot = keys[:, :, 3], keys[:, :, :3]
        rot = self.rot
        # Squad's inner control rotations.
        self.inner = rot.copy()
        for i in range(k):
            if not closed and i in (0, k - 1):
                continue
            w_next = rigid.log_so3(rot[i].T @ rot[(i + 1) % k])
            w_prev = rigid.log_so3(rot[i].T @ rot[(i - 1) % k])
            self.inner[i] = rot[i] @ rigid.exp_so3(-(w_next + w_prev) / 4.0)
        self.m0, self.m1 = _catmull_rom(self.p, closed)

    def segment(self, i: int, h) -> np.ndarray:
        """Poses [m, 3, 4] of segment i at fractions h [m]; h = 0 (1) is exactly keyframe i (i + 1)."""
        p, rot, inner, m0, m1 = self.p, self.rot, self.inner, self.m0, self.m1
        j = (i + 1) % self.k
        h = np.asarray(h, dtype=np.float64).reshape(-1)
        h00, h10 = 2 * h**3 - 3 * h**2 + 1, h**3 - 2 * h**2 + h
        h01, h11 = -2 * h**3 + 3 * h**2, h**3 - h**2
        pos = h00[:, None] * p[i] + h10[:, None] * m0[i] + h01[:, None] * p[j] + h11[:, None] * m1[i]
        ra = np.broadcast_to(rot[i], (len(h), 3, 3))
        outer = _slerp(ra, np.broadcast_to(rot[j], ra.shape), h)
        ctrl = _slerp(np.broadcast_to(inner[i], ra.shape), np.broadcast_to(inner[j], ra.shape), h)
        r = _slerp(outer, ctrl, 2.0 * h * (1.0 - h))
        # Exactly the keyframes at the ends (the formulas give them up to rounding).
        r[h == 0.0], pos[h == 0.0] = rot[i], p[i]
        r[h == 1.0], pos[h == 1.0] = rot[j], p[j]
        return np.concatenate([r, pos[..., None]], axis=-1)


def keyframe_path(c2w, times, *, fps: float, fov=None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """A timed path through keyframe poses c2w [K, 3, 4] at times [K] (seconds, increasing), sampled at `fps`.

    Between keyframes the spline of `spline_path` (Catmull-Rom centres, squad rotations), with
    each segment's fraction h = (t - times[i]) / (times[i + 1] - times[i]): the camera keeps to
    the keyframes' timing (a segment of 2 s gets twice the frames of one of 1 s). Frames at
    t = times[0] + n / fps up to times[-1] (included when a whole number of frames away); the
    first frame is the first keyframe. fov [K] (degrees), if given, is interpolated linearly in t.
    Returns (c2w [n, 3, 4], fov [n] or None, t [n]).
    """
    c2w = _check_c2w(c2w)
    times = np.asarray(times, dtype=np.float64).reshape(-1)
    if len(c2w) < 2 or len(times) != len(c2w):
        raise ValueError(f"keyframe_path needs >= 2 keyframes with one time each, got {len(c2w)} poses "
                         f"and {len(times)} times")
    if not (np.isfinite(times).all() and np.all(np.diff(times) > 0)):
        raise ValueError(f"keyframe times must be finite and strictly increasing, got {times.tolist()}")
    if not (np.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be positive, got {fps!r}")
    n = int(np.floor((times[-1] - times[0]) * fps + 1e-6)) + 1
    t = times[0] + np.arange(n) / fps
    seg = np.clip(np.searchsorted(times, t, side="right") - 1, 0, len(times) - 2)
    h = np.clip((t - times[seg]) / (times[seg + 1] - times[seg]), 0.0, 1.0)
    spline = _Spline(c2w, closed=False)
    out = np.empty((n, 3, 4))
    for i in np.unique(seg):
        out[seg == i] = spline.segment(int(i), h[seg == i])
    fovs = None
    if fov is not None:
        fov = np.asarray(fov, dtype=np.float64).reshape(-1)
        if len(fov) != len(times) or not np.all((fov > 0) & (fov < 180)):
            raise ValueError(f"fov must hold one angle in (0, 180) degrees per keyframe, got {fov.tolist()}")
        fovs = np.interp(t, times, fov)
    return out, fovs, t


def _share(total: int, weights: np.ndarray) -> np.ndarray:
    """`total` split into len(weights) <= total positive integers proportional to weights (largest remainders)."""
    raw = total * weights / weights.sum()
    counts = np.floor(raw).astype(np.int64)
    counts[np.argsort(-(raw - counts), kind="stable")[: total - counts.sum()]] += 1
    for i in np.flatnonzero(counts == 0):  # every segment gets a frame: take it from the largest share
        counts[np.argmax(counts)] -= 1
        counts[i] = 1
    return counts


# --------------------------------------------------------------------------- choice


def make_path(kind: str, scene_or_c2w, *, n_frames: int, keyframes=(), near: float | None = None,
              far: float | None = None, forward_facing: bool | None = None, **options) -> np.ndarray:
    """The path `kind` ('auto', 'orbit', 'spiral', 'spline') for a Scene or poses [N, 3, 4].

    'auto' -> 'spiral' for forward-facing captures, else 'orbit'. A Scene gives
    its poses, forward_facing and near/far (explicit arguments win). 'spline'
    needs `keyframes` (indices into the poses); 'spiral' needs near and far.
    `options` go to the path function (e.g. radius_scale=, n_rotations=, closed=).
    """
    if kind not in KINDS:
        raise ValueError(f"path kind must be one of {KINDS}, got {kind!r}")
    if isinstance(scene_or_c2w, Scene):
        scene = scene_or_c2w
        c2w = scene.c2w
        forward_facing = scene.forward_facing if forward_facing is None else forward_facing
        near = scene.near if near is None else near
        far = scene.far if far is None else far
    else:
        c2w = scene_or_c2w
    if kind == "auto":
        kind = "spiral" if forward_facing else "orbit"
    if kind == "orbit":
        return orbit_path(c2w, n_frames=n_frames, **options)
    if kind == "spiral":
        if near is None or far is None:
            raise ValueError("a spiral path needs near and far (the scene's ray bounds)")
        return spiral_path(c2w, n_frames=n_frames, near=near, far=far, **options)
    if not len(keyframes):
        raise ValueError("a spline path needs keyframes (indices of the cameras to pass through)")
    return spline_path(c2w, keyframes, n_frames=n_frames, **options)

"""Camera models, lens distortion and ray generation.

Conventions (see types.py): OpenCV camera axes (x right, y down, z forward),
camera-to-world poses `c2w` [..., 3, 4], camera parameters in COLMAP's order
(`types.CAMERA_MODELS`).

Short names:
  uv      [..., 2]  continuous pixel coordinates, COLMAP/NeRF convention: the
                    image's top-left corner is (0, 0), so the centre of pixel
                    (column i, row j) is (i + 0.5, j + 0.5) and an ideal
                    principal point is (width / 2, height / 2).
  pixels  [..., 2]  integer pixel indices (column, row); rays go through
                    `pixels + 0.5`.
  xy      [..., 2]  normalized image coordinates (X / Z, Y / Z) of a camera-frame
                    point, i.e. *undistorted*; `distort(xy)` is where the lens
                    puts them, before the focal length and principal point.
  params  [..., P]  a camera's parameters, P = len(CAMERA_MODELS[model]).

Array namespace: every function here is written once with array-API calls and
runs on what it is given: numpy in -> numpy (float64) out, for host-side work
and exact tests; jax arrays (or tracers, inside `jit`/`grad`) in -> jnp out.
`model` is always a static Python string.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from nerflib.types import CAMERA_MODELS, Camera, Rays

PINHOLE_MODELS = ("SIMPLE_PINHOLE", "PINHOLE")
# Models that differ only by which coefficients are fixed at zero, from least
# to most general; any of these can be promoted to a later one exactly.
_PROMOTION_ORDER = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV", "FULL_OPENCV")
_DISTORTION_NAMES = ("k1", "k2", "k3", "k4", "k5", "k6", "p1", "p2")


def _xp(*arrays):
    """jnp if any argument is a jax array (or tracer), else numpy."""
    return jnp if any(isinstance(a, jax.Array) for a in arrays) else np


def _loop(xp, n: int, body, init):
    """`body` applied n times: a Python loop for numpy, `lax.fori_loop` for jax
    (one traced body instead of n unrolled copies keeps compile times short)."""
    if xp is np:
        for i in range(n):
            init = body(i, init)
        return init
    return jax.lax.fori_loop(0, n, body, init)


def _check_model(model: str) -> None:
    if model not in CAMERA_MODELS:
        raise ValueError(f"unknown camera model {model!r}; supported: {', '.join(CAMERA_MODELS)}")


def _named(model: str, params, xp) -> dict:
    """Parameter name -> array [...] (the last axis of `params` split)."""
    _check_model(model)
    params = xp.asarray(params)
    names = CAMERA_MODELS[model]
    if params.shape[-1] != len(names):
        raise ValueError(f"camera model {model} takes {len(names)} parameters {names}, got shape {params.shape}")
    return {n: params[..., i] for i, n in enumerate(names)}


def _focal_principal(model: str, params, xp):
    p = _named(model, params, xp)
    fx = p.get("fx", p.get("f"))
    fy = p.get("fy", p.get("f"))
    return fx, fy, p["cx"], p["cy"]


def _coeffs(model: str, params, xp) -> dict:
    """Distortion coefficients of `model`, each [...], absent ones 0."""
    p = _named(model, params, xp)
    return {n: p.get(n, 0.0) for n in _DISTORTION_NAMES}


# --------------------------------------------------------------------------
# Distortion on normalized coordinates.


def _radial_tangential(c, x, y, xp):
    """OpenCV's rational radial + tangential model and its 2x2 Jacobian.

    radial = (1 + k1 r2 + k2 r2^2 + k3 r2^3) / (1 + k4 r2 + k5 r2^2 + k6 r2^3)
    xd = x radial + 2 p1 x y + p2 (r2 + 2 x^2)
    yd = y radial + p1 (r2 + 2 y^2) + 2 p2 x y
    Covers SIMPLE_RADIAL, RADIAL, OPENCV and FULL_OPENCV (unused terms are 0).
    """
    k1, k2, k3, k4, k5, k6, p1, p2 = (c[n] for n in _DISTORTION_NAMES)
    r2 = x * x + y * y
    num = 1.0 + r2 * (k1 + r2 * (k2 + r2 * k3))
    den = 1.0 + r2 * (k4 + r2 * (k5 + r2 * k6))
    d_num = k1 + r2 * (2.0 * k2 + 3.0 * r2 * k3)  # d num / d r2
    d_den = k4 + r2 * (2.0 * k5 + 3.0 * r2 * k6)
    radial = num / den
    d_radial = (d_num * den - num * d_den) / (den * den)  # d radial / d r2
    xd = x * radial + 2.0 * p1 * x * y + p2 * (r2 + 2.0 * x * x)
    yd = y * radial + p1 * (r2 + 2.0 * y * y) + 2.0 * p2 * x * y
    xd_x = radial + 2.0 * x * x * d_radial + 2.0 * p1 * y + 6.0 * p2 * x
    xd_y = 2.0 * x * y * d_radial + 2.0 * p1 * x + 2.0 * p2 * y
    yd_x = 2.0 * x * y * d_radial + 2.0 * p1 * x + 2.0 * p2 * y
    yd_y = radial + 2.0 * y * y * d_radial + 6.0 * p1 * y + 2.0 * p2 * x
    return xd, yd, xd_x, xd_y, yd_x, yd_y


def _fisheye_theta_d(c, theta):
    """Equidistant fisheye: theta_d = theta (1 + k1 t^2 + k2 t^4 + k3 t^6 + k4 t^8), and d/dtheta."""
    k1, k2, k3, k4 = c["k1"], c["k2"], c["k3"], c["k4"]
    t2 = theta * theta
    theta_d = theta * (1.0 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4))))
    d_theta_d = 1.0 + t2 * (3.0 * k1 + t2 * (5.0 * k2 + t2 * (7.0 * k3 + t2 * 9.0 * k4)))
    return theta_d, d_theta_d


def distort(model: str, params, xy):
    """Apply the lens distortion of `model` to normalized coordinates.

    params [..., P] (the full COLMAP parameter vector; only the distortion
    coefficients are used), xy [..., 2] -> [..., 2].
    """
    xp = _xp(params, xy)
    _check_model(model)
    xy = xp.asarray(xy)
    if model in PINHOLE_MODELS:
        return xy
    c = _coeffs(model, params, xp)
    x, y = xy[..., 0], xy[..., 1]
    if model == "OPENCV_FISHEYE":
        r = xp.sqrt(x * x + y * y)
        theta_d, _ = _fisheye_theta_d(c, xp.arctan(r))
        # theta_d / r -> 1 as r -> 0; the double `where` keeps gradients finite at r == 0.
        safe_r = xp.where(r > 0, r, 1.0)
        scale = xp.where(r > 0, theta_d / safe_r, 1.0)
        return xp.stack([x * scale, y * scale], axis=-1)
    xd, yd, *_ = _radial_tangential(c, x, y, xp)
    return xp.stack([xd, yd], axis=-1)


def undistort(model: str, params, xy, *, iters: int = 10, eps: float = 1e-12):
    """Invert `distort` by Newton's method: distorted xy [..., 2] -> undistorted [..., 2].

    Radial/tangential models solve the 2D system with its 2x2 Jacobian, starting
    from the distorted point (as multinerf's `_radial_and_tangential_undistort`);
    the fisheye model solves the scalar equation theta_d(theta) = |xy| and
    returns xy * tan(theta) / theta_d. Ten iterations converge to float64
    precision for lens distortions met in practice (see tests).
    """
    xp = _xp(params, xy)
    _check_model(model)
    if iters < 0:
        raise ValueError(f"iters must be >= 0, got {iters}")
    xy = xp.asarray(xy)
    if model in PINHOLE_MODELS:
        return xy
    # One float dtype for the loop carry (fori_loop needs it fixed).
    xy = xy.astype(xp.result_type(xy, xp.asarray(params), 1.0))
    c = _coeffs(model, params, xp)
    xd, yd = xy[..., 0], xy[..., 1]
    if model == "OPENCV_FISHEYE":
        theta_d = xp.sqrt(xd * xd + yd * yd)
        # Beyond 90 degrees the equidistant model has no pinhole image; clamp like OpenCV.
        theta_d = xp.minimum(theta_d, math.pi / 2)

        def fisheye_step(_, theta):
            f, df = _fisheye_theta_d(c, theta)
            ok = xp.abs(df) > eps  # a flat spot: stop rather than divide by 0
            return theta - xp.where(ok, (f - theta_d) / xp.where(ok, df, 1.0), 0.0)

        theta = _loop(xp, iters, fisheye_step, theta_d)
        safe_td = xp.where(theta_d > 0, theta_d, 1.0)
        scale = xp.where(theta_d > 0, xp.tan(theta) / safe_td, 1.0)
        return xp.stack([xd * scale, yd * scale], axis=-1)

    def newton_step(_, xy):
        x, y = xy
        fx_, fy_, xd_x, xd_y, yd_x, yd_y = _radial_tangential(c, x, y, xp)
        fx_ = fx_ - xd
        fy_ = fy_ - yd
        det = xd_x * yd_y - xd_y * yd_x
        ok = xp.abs(det) > eps  # singular Jacobian: keep the current estimate
        safe_det = xp.where(ok, det, 1.0)
        x = x - xp.where(ok, (fx_ * yd_y - fy_ * xd_y) / safe_det, 0.0)
        y = y - xp.where(ok, (fy_ * xd_x - fx_ * yd_x) / safe_det, 0.0)
        return x, y

    x, y = _loop(xp, iters, newton_step, (xd, yd))
    return xp.stack([x, y], axis=-1)


# --------------------------------------------------------------------------
# Pixels <-> normalized coordinates, projection.


def pixel_to_normalized(model: str, params, uv, *, iters: int = 10):
    """Pixel coordinates uv [..., 2] -> undistorted normalized xy [..., 2]."""
    xp = _xp(params, uv)
    fx, fy, cx, cy = _focal_principal(model, params, xp)
    uv = xp.asarray(uv)
    xy_d = xp.stack([(uv[..., 0] - cx) / fx, (uv[..., 1] - cy) / fy], axis=-1)
    return undistort(model, params, xy_d, iters=iters)


def normalized_to_pixel(model: str, params, xy):
    """Undistorted normalized xy [..., 2] -> pixel coordinates uv [..., 2]."""
    xp = _xp(params, xy)
    fx, fy, cx, cy = _focal_principal(model, params, xp)
    xy_d = distort(model, params, xy)
    return xp.stack([xy_d[..., 0] * fx + cx, xy_d[..., 1] * fy + cy], axis=-1)


def project_points(model: str, params, c2w, points):
    """World points [..., 3] seen by a camera with pose c2w [..., 3, 4].

    Returns (uv [..., 2], depth [...]) where depth is the camera-frame z
    (points with depth <= 0 are behind the camera; their uv is meaningless).
    """
    xp = _xp(params, c2w, points)
    c2w = xp.asarray(c2w)
    p = xp.asarray(points) - c2w[..., :3, 3]
    p_cam = xp.einsum("...ji,...j->...i", c2w[..., :3, :3], p)  # R^T (p - t)
    depth = p_cam[..., 2]
    safe = xp.where(xp.abs(depth) > 0, depth, 1.0)
    uv = normalized_to_pixel(model, params, p_cam[..., :2] / safe[..., None])
    return uv, depth


def camera_directions(model: str, params, uv, *, iters: int = 10):
    """Camera-frame ray directions [..., 3] with z == 1 through pixel coordinates uv."""
    xp = _xp(params, uv)
    xy = pixel_to_normalized(model, params, uv, iters=iters)
    return xp.concatenate([xy, xp.ones_like(xy[..., :1])], axis=-1)


def intrinsics_matrix(camera: Camera) -> np.ndarray:
    """The 3x3 calibration matrix K (float64) of `camera`; distortion is not in K."""
    fx, fy = camera.param("fx"), camera.param("fy")
    return np.array([[fx, 0.0, camera.param("cx")], [0.0, fy, camera.param("cy")], [0.0, 0.0, 1.0]])


def opencv_distortion(camera: Camera) -> np.ndarray:
    """`camera`'s distortion as OpenCV's distCoeffs (or cv2.fisheye's D for OPENCV_FISHEYE)."""
    g = camera.param
    if camera.model == "OPENCV_FISHEYE":
        return np.array([g("k1"), g("k2"), g("k3"), g("k4")])
    if camera.model == "FULL_OPENCV":
        return np.array([g(n) for n in ("k1", "k2", "p1", "p2", "k3", "k4", "k5", "k6")])
    return np.array([g(n) for n in ("k1", "k2", "p1", "p2")])


# --------------------------------------------------------------------------
# Camera models and image pyramids.


def convert_camera(camera: Camera, model: str) -> Camera:
    """Express `camera` exactly in a more general `model` (e.g. SIMPLE_RADIAL -> OPENCV).

    Raises ValueError if that would lose information (a non-zero coefficient
    the target lacks, fx != fy for a single-focal target, or fisheye <-> not).
    """
    _check_model(model)
    if camera.model == model:
        return camera
    if (camera.model == "OPENCV_FISHEYE") != (model == "OPENCV_FISHEYE"):
        raise ValueError(f"cannot express a {camera.model} camera as {model}: fisheye and perspective differ")
    values = {n: camera.param(n) for n in ("fx", "fy", "cx", "cy", *_DISTORTION_NAMES)}
    target = CAMERA_MODELS[model]
    if "f" in target:
        if values["fx"] != values["fy"]:
            raise ValueError(f"cannot express {camera} as {model}: fx != fy")
        values["f"] = values["fx"]
    lost = [n for n in _DISTORTION_NAMES if values[n] != 0.0 and n not in target]
    if lost:
        raise ValueError(f"cannot express {camera} as {model}: it has no {', '.join(lost)}")
    return Camera(model, camera.width, camera.height, tuple(values[n] for n in target))


def common_model(cameras: list[Camera]) -> str:
    """The least general model that expresses every camera in `cameras` exactly."""
    models = {c.model for c in cameras}
    if not models:
        raise ValueError("no cameras given")
    if "OPENCV_FISHEYE" in models:
        if models - {"OPENCV_FISHEYE"}:
            raise ValueError(f"cannot batch fisheye and perspective cameras together: {sorted(models)}")
        return "OPENCV_FISHEYE"
    best = max(_PROMOTION_ORDER.index(m) for m in models)
    model = _PROMOTION_ORDER[best]
    if model in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL") and any(c.param("fx") != c.param("fy") for c in cameras):
        model = {"SIMPLE_PINHOLE": "PINHOLE", "SIMPLE_RADIAL": "OPENCV", "RADIAL": "OPENCV"}[model]
    return model


def stack_params(cameras: list[Camera]) -> tuple[str, np.ndarray]:
    """(model, params [C, P] float64): all cameras in one common model, for batched ray generation."""
    model = common_model(cameras)
    return model, np.array([convert_camera(c, model).params for c in cameras], dtype=np.float64)


def scale_camera(camera: Camera, factor: int) -> Camera:
    """The camera of an image downsampled by an integer `factor`.

    The image pyramid resizes to (width // factor, height // factor) with
    `cv2.resize`, which maps the image's corners onto each other; with pixel
    centres at +0.5 this scales fx, cx by sx = new_width / width and fy, cy by
    sy = new_height / height (exactly 1 / factor when the size divides).
    Distortion coefficients act on normalized coordinates and are kept. A
    single-focal model whose axes scale differently becomes PINHOLE / OPENCV.
    """
    if isinstance(factor, bool) or not isinstance(factor, (int, np.integer)) or factor < 1:
        raise ValueError(f"factor must be a positive integer, got {factor!r}")
    if factor == 1:
        return camera
    w, h = camera.width // factor, camera.height // factor
    if w < 1 or h < 1:
        raise ValueError(f"factor {factor} leaves no pixels of a {camera.width}x{camera.height} image")
    sx, sy = w / camera.width, h / camera.height
    if sx != sy and "f" in CAMERA_MODELS[camera.model]:
        camera = convert_camera(camera, {"SIMPLE_PINHOLE": "PINHOLE"}.get(camera.model, "OPENCV"))
    scale = {"f": sx, "fx": sx, "cx": sx, "fy": sy, "cy": sy}
    params = tuple(p * scale.get(n, 1.0) for n, p in zip(CAMERA_MODELS[camera.model], camera.params))
    return Camera(camera.model, w, h, params)


# --------------------------------------------------------------------------
# Rays.


def rays_from_pixels(model: str, params, c2w, cam_idx, pixels, *, near, far, iters: int = 10) -> Rays:
    """Rays through pixel centres of many cameras at once (jit- and grad-friendly).

    model   : static; all cameras share it (see `stack_params`).
    params  : [N, P] per image (gather camera params by `Scene.camera_idx`
              first) or [P] shared by all.
    c2w     : [N, 3, 4] poses; results are differentiable w.r.t. c2w (and params).
    cam_idx : [...] int image index of each ray; also stored in `Rays.cam_idx`.
    pixels  : [..., 2] pixel indices (column, row); the ray passes through
              `pixels + 0.5`; fractional indices give sub-pixel rays.
    near, far : scalars or arrays broadcastable to [..., 1].

    radii follow mip-NeRF / multinerf: the mean distance between this pixel's
    direction and its right and lower neighbours' (z == 1 directions), times
    2 / sqrt(12), so the cone's cross-section matches the pixel footprint's variance.
    """
    xp = _xp(params, c2w, cam_idx, pixels)
    params = xp.asarray(params)
    c2w = xp.asarray(c2w)
    cam_idx = xp.asarray(cam_idx).astype(xp.int32)
    p = params[cam_idx] if params.ndim == 2 else params
    d_cam, radii = camera_frame_rays(model, p, pixels, iters=iters)
    return posed_rays(c2w[cam_idx], d_cam, radii, cam_idx, near=near, far=far)


def camera_frame_rays(model: str, params, pixels, *, iters: int = 10):
    """(directions [..., 3] with z == 1, radii [..., 1]) in the camera frame through `pixels + 0.5`:
    the part of `rays_from_pixels` that depends on the intrinsics alone (lens distortion undone)."""
    xp = _xp(params, pixels)
    uv = xp.asarray(pixels) + 0.5
    d_cam = camera_directions(model, params, uv, iters=iters)
    d_dx = camera_directions(model, params, uv + xp.asarray([1.0, 0.0]), iters=iters)
    d_dy = camera_directions(model, params, uv + xp.asarray([0.0, 1.0]), iters=iters)
    radii = (
        0.5
        * (xp.linalg.norm(d_cam - d_dx, axis=-1) + xp.linalg.norm(d_cam - d_dy, axis=-1))[..., None]
        * (2.0 / math.sqrt(12.0))
    )
    return d_cam, radii


def posed_rays(pose, d_cam, radii, cam_idx, *, near, far) -> Rays:
    """Rays of camera-frame directions `d_cam` [..., 3] and radii [..., 1] under poses [..., 3, 4]."""
    xp = _xp(pose, d_cam)
    directions = xp.einsum("...ij,...j->...i", pose[..., :3, :3], d_cam)
    origins = xp.broadcast_to(pose[..., :3, 3], directions.shape)
    viewdirs = directions / xp.linalg.norm(directions, axis=-1, keepdims=True)
    ones = xp.ones_like(radii)
    return Rays(
        origins=origins,
        directions=directions,
        viewdirs=viewdirs,
        radii=radii,
        near=ones * near,
        far=ones * far,
        cam_idx=cam_idx[..., None],
    )


def pixel_grid(width: int, height: int) -> np.ndarray:
    """[height, width, 2] int32 pixel indices (column, row)."""
    cols, rows = np.meshgrid(np.arange(width, dtype=np.int32), np.arange(height, dtype=np.int32), indexing="xy")
    return np.stack([cols, rows], axis=-1)


def generate_rays(
    camera: Camera,
    c2w,
    *,
    pixels=None,
    factor: int = 1,
    near: float,
    far: float,
    cam_idx: int = 0,
    iters: int = 10,
    dtype=np.float32,
) -> Rays:
    """Rays of one camera (host side, numpy; computed in float64, returned as `dtype`).

    pixels : [..., 2] pixel indices (column, row) of the factor-downsampled
             image; None -> the whole image, shape [H, W, ...].
    """
    camera = scale_camera(camera, factor)
    c2w = np.asarray(c2w, dtype=np.float64).reshape(1, 3, 4)
    if pixels is None:  # a whole image: its camera-frame rays are the same for every pose of the camera
        d_cam, radii = _whole_image_camera_rays(camera.model, camera.width, camera.height,
                                                tuple(float(v) for v in camera.params), iters)
        rays = posed_rays(c2w[0], d_cam, radii, np.zeros(d_cam.shape[:-1], dtype=np.int32), near=near, far=far)
    else:
        pixels = np.asarray(pixels, dtype=np.float64)
        idx = np.zeros(pixels.shape[:-1], dtype=np.int32)
        rays = rays_from_pixels(
            camera.model, np.asarray(camera.params, np.float64), c2w, idx, pixels, near=near, far=far, iters=iters
        )
    cast = {k: np.asarray(v, dtype=dtype) for k, v in vars(rays).items() if k != "cam_idx"}
    return Rays(**cast, cam_idx=np.full(rays.radii.shape, cam_idx, dtype=np.int32))


@functools.lru_cache(maxsize=4)
def _whole_image_camera_rays(model: str, width: int, height: int, params: tuple[float, ...],
                             iters: int) -> tuple[np.ndarray, np.ndarray]:
    """camera_frame_rays of every pixel of a camera (float64, read-only), made once per camera: undoing
    the lens distortion (Newton steps at three points per pixel) costs ~1 s per 800x533 image on the
    host, the pose's rotation ~1 % of that."""
    pixels = pixel_grid(width, height).astype(np.float64)
    d_cam, radii = camera_frame_rays(model, np.asarray(params, np.float64), pixels, iters=iters)
    for a in (d_cam, radii):
        a.setflags(write=False)
    return d_cam, radii


def convert_to_ndc(origins, directions, focal, width, height, near: float = 1.0):
    """Map rays of a forward-facing scene into normalized device coordinates.

    NeRF's NDC (Mildenhall et al. 2020, appendix C), written for our OpenCV
    axes: the scene (after `scene_io.normalize_scene(mode='forward')`) is seen
    along +z, so NDC is x = 2 f / W * X / Z, y = 2 f / H * Y / Z (y down, like
    the image), z = 1 - 2 near / Z in [-1, 1) for Z in [near, inf). Origins
    are first moved onto the plane Z = near; the returned ray reaches z = 1
    (infinite depth) at t = 1. Same numbers as NeRF's `ndc_rays` with y and
    z of the inputs flipped and y of the output flipped.
    origins, directions [..., 3] -> (origins_ndc, directions_ndc) [..., 3].
    """
    xp = _xp(origins, directions)
    origins = xp.asarray(origins)
    directions = xp.asarray(directions)
    t = (near - origins[..., 2]) / directions[..., 2]
    origins = origins + t[..., None] * directions
    ox, oy, oz = origins[..., 0], origins[..., 1], origins[..., 2]
    dx, dy, dz = directions[..., 0], directions[..., 1], directions[..., 2]
    ax, ay = 2.0 * focal / width, 2.0 * focal / height
    o_ndc = xp.stack([ax * ox / oz, ay * oy / oz, 1.0 - 2.0 * near / oz], axis=-1)
    d_ndc = xp.stack([ax * (dx / dz - ox / oz), ay * (dy / dz - oy / oz), 2.0 * near / oz], axis=-1)
    return o_ndc, d_ndc

"""nerflib.cameras against OpenCV, pycolmap, closed forms and finite differences."""

from __future__ import annotations

import math

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pycolmap
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nerflib import cameras, rigid
from nerflib.types import CAMERA_MODELS, Camera

W, H = 640, 480
# Realistic lenses: a wide-angle phone-like OPENCV lens, a rational FULL_OPENCV
# lens and a fisheye whose image corners sit ~75 degrees off axis.
LENSES = {
    "SIMPLE_PINHOLE": (520.0, 321.0, 238.5),
    "PINHOLE": (520.0, 530.0, 321.0, 238.5),
    "SIMPLE_RADIAL": (520.0, 321.0, 238.5, -0.12),
    "RADIAL": (520.0, 321.0, 238.5, -0.25, 0.08),
    "OPENCV": (520.0, 530.0, 321.0, 238.5, -0.28, 0.09, 1.2e-3, -8e-4),
    "FULL_OPENCV": (520.0, 530.0, 321.0, 238.5, 0.15, -0.05, 1e-3, -5e-4, 0.01, 0.45, -0.08, 0.02),
    "OPENCV_FISHEYE": (300.0, 302.0, 321.0, 238.5, 0.03, -0.01, 2e-3, -4e-4),
}
CRITERIA = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 200, 1e-15)


def _uv(n=500, seed=0):
    """Random pixel coordinates over the whole image, corners included."""
    rng = np.random.default_rng(seed)
    corners = np.array([[0.0, 0.0], [W, 0.0], [0.0, H], [W, H]])
    return np.concatenate([corners, rng.uniform([0, 0], [W, H], size=(n, 2))])


def _random_pose(rng):
    R = rigid.exp_so3(rng.normal(size=3))
    return np.concatenate([R, rng.normal(size=(3, 1))], axis=1)


def test_every_model_has_a_lens():
    assert set(LENSES) == set(CAMERA_MODELS)


@pytest.mark.parametrize("model", ["OPENCV", "FULL_OPENCV", "OPENCV_FISHEYE"])
def test_undistort_matches_opencv(model):
    cam = Camera(model, W, H, LENSES[model])
    K, D = cameras.intrinsics_matrix(cam), cameras.opencv_distortion(cam)
    uv = _uv()
    xy = cameras.pixel_to_normalized(model, cam.params, uv)
    assert xy.dtype == np.float64
    if model == "OPENCV_FISHEYE":
        ref = cv2.fisheye.undistortPoints(uv[:, None], K, D, criteria=CRITERIA)[:, 0]
        back = cv2.fisheye.projectPoints(np.c_[xy, np.ones(len(xy))][:, None], np.zeros(3), np.zeros(3), K, D)[0][:, 0]
    else:
        ref = cv2.undistortPoints(uv[:, None], K, D, criteria=CRITERIA)[:, 0]
        back = cv2.projectPoints(np.c_[xy, np.ones(len(xy))], np.zeros(3), np.zeros(3), K, D)[0][:, 0]
    err_px = np.abs(xy - ref).max() * cam.param("fx")
    assert err_px < 1e-4, err_px
    # OpenCV's forward model maps our undistorted points back onto the input pixels.
    assert np.abs(back - uv).max() < 1e-6
    # And our forward model agrees with OpenCV's.
    assert np.abs(cameras.normalized_to_pixel(model, cam.params, xy) - back).max() < 1e-6


@pytest.mark.parametrize("model", sorted(CAMERA_MODELS))
def test_every_model_matches_pycolmap(model):
    cam = Camera(model, W, H, LENSES[model])
    ref = pycolmap.Camera(camera_id=1, model=model, width=W, height=H, params=list(cam.params))
    uv = _uv(200, seed=1)
    xy = cameras.pixel_to_normalized(model, cam.params, uv)
    assert np.abs(xy - ref.cam_from_img(uv)).max() * cam.param("fx") < 1e-4
    pts = np.c_[xy, np.ones(len(xy))] * 2.5
    assert np.abs(cameras.normalized_to_pixel(model, cam.params, xy) - ref.img_from_cam(pts)).max() < 1e-6


@pytest.mark.parametrize("model", ["OPENCV", "FULL_OPENCV", "OPENCV_FISHEYE"])
def test_jax_float32_and_jit_agree_with_numpy(model):
    params = LENSES[model]
    uv = _uv(100, seed=2)
    ref = cameras.pixel_to_normalized(model, params, uv)
    f = jax.jit(lambda p, q: cameras.pixel_to_normalized(model, p, q))
    out = f(jnp.asarray(params), jnp.asarray(uv))
    assert isinstance(out, jax.Array) and out.dtype == jnp.float32
    # float32 round-off only (a few 1e-4 px at 1/f ~ 2e-3 per pixel).
    assert np.abs(np.asarray(out) - ref).max() * params[0] < 2e-3
    with jax.enable_x64(True):
        out64 = cameras.pixel_to_normalized(model, jnp.asarray(params, jnp.float64), jnp.asarray(uv, jnp.float64))
        assert out64.dtype == jnp.float64
        assert np.abs(np.asarray(out64) - ref).max() < 1e-12


_RT = dict(allow_nan=False, allow_infinity=False)


@st.composite
def _lens_and_points(draw):
    model = draw(st.sampled_from(["SIMPLE_RADIAL", "RADIAL", "OPENCV", "FULL_OPENCV", "OPENCV_FISHEYE"]))
    names = CAMERA_MODELS[model]
    bounds = {"k1": 0.3, "k2": 0.1, "k3": 0.02, "k4": 0.05, "k5": 0.02, "k6": 0.01, "p1": 0.01, "p2": 0.01}
    if model == "OPENCV_FISHEYE":
        bounds.update(k1=0.05, k2=0.01, k3=0.002, k4=0.001)
    params = tuple(
        draw(st.floats(-bounds[n], bounds[n], **_RT)) if n in bounds else 500.0 for n in names
    )
    # Normalized points within ~39 degrees (perspective) / ~72 degrees (fisheye) of the axis.
    rmax = 3.0 if model == "OPENCV_FISHEYE" else 0.8
    r = draw(st.floats(0.0, rmax, **_RT))
    phi = draw(st.floats(0.0, 2 * math.pi, **_RT))
    return model, params, np.array([[r * math.cos(phi), r * math.sin(phi)]])


@settings(max_examples=300, deadline=None)
@given(_lens_and_points())
def test_distort_undistort_identity(case):
    model, params, xy = case
    xd = cameras.distort(model, params, xy)
    assert np.allclose(cameras.undistort(model, params, xd), xy, rtol=0, atol=1e-10)
    # Distorted points well inside the image of that domain (fisheye: < 72 deg).
    yd = xy * (0.4 if model == "OPENCV_FISHEYE" else 0.6)
    assert np.allclose(cameras.distort(model, params, cameras.undistort(model, params, yd)), yd, rtol=0, atol=1e-10)


def test_distort_is_identity_at_the_centre_with_finite_gradient():
    for model, params in LENSES.items():
        if model in cameras.PINHOLE_MODELS:
            continue
        assert np.array_equal(cameras.distort(model, params, np.zeros((1, 2))), np.zeros((1, 2)))
        g = jax.jit(jax.jacfwd(lambda xy: cameras.distort(model, jnp.asarray(params), xy)))(jnp.zeros(2))
        assert np.isfinite(np.asarray(g)).all()


def test_rays_pass_through_points_projected_by_opencv():
    rng = np.random.default_rng(3)
    model = "OPENCV"
    cam = Camera(model, W, H, LENSES[model])
    K, D = cameras.intrinsics_matrix(cam), cameras.opencv_distortion(cam)
    c2w = _random_pose(rng)
    R_w2c, t_w2c = c2w[:, :3].T, -c2w[:, :3].T @ c2w[:, 3]
    # World points in front of the camera, inside the image.
    xy = cameras.pixel_to_normalized(model, cam.params, rng.uniform([0, 0], [W, H], size=(200, 2)))
    depth = rng.uniform(0.5, 20.0, size=200)
    points = (np.c_[xy, np.ones(200)] * depth[:, None]) @ c2w[:, :3].T + c2w[:, 3]
    uv = cv2.projectPoints(points, cv2.Rodrigues(R_w2c)[0], t_w2c, K, D)[0][:, 0]
    rays = cameras.rays_from_pixels(model, np.asarray(cam.params), c2w[None], np.zeros(200, int), uv - 0.5,
                                    near=0.1, far=30.0)
    # The point lies on the ray at t = its depth (directions have camera-frame z == 1).
    on_ray = rays.origins + depth[:, None] * rays.directions
    assert np.abs(on_ray - points).max() < 1e-9 * depth.max()
    d_cam = rays.directions @ c2w[:, :3]  # back to the camera frame
    assert np.allclose(d_cam[:, 2], 1.0, atol=1e-14)
    assert np.allclose(np.linalg.norm(rays.viewdirs, axis=-1), 1.0, atol=1e-14)
    assert np.allclose(rays.origins, c2w[:, 3])
    assert rays.near.shape == rays.far.shape == rays.radii.shape == rays.cam_idx.shape == (200, 1)


def test_generate_rays_grid_hits_pixel_centres():
    rng = np.random.default_rng(4)
    cam = Camera("FULL_OPENCV", 40, 30, tuple(p / 16 if i < 4 else p for i, p in enumerate(LENSES["FULL_OPENCV"])))
    c2w = _random_pose(rng)
    rays = cameras.generate_rays(cam, c2w, near=0.2, far=5.0, cam_idx=7, dtype=np.float64)
    assert rays.origins.shape == (30, 40, 3) and rays.cam_idx.shape == (30, 40, 1)
    assert (rays.cam_idx == 7).all() and (rays.near == 0.2).all() and (rays.far == 5.0).all()
    pts = rays.origins + 3.0 * rays.directions
    R_w2c, t_w2c = c2w[:, :3].T, -c2w[:, :3].T @ c2w[:, 3]
    uv = cv2.projectPoints(pts.reshape(-1, 3), cv2.Rodrigues(R_w2c)[0], t_w2c,
                           cameras.intrinsics_matrix(cam), cameras.opencv_distortion(cam))[0][:, 0]
    assert np.abs(uv - (cameras.pixel_grid(40, 30).reshape(-1, 2) + 0.5)).max() < 1e-8
    f32 = cameras.generate_rays(cam, c2w, near=0.2, far=5.0)
    assert f32.directions.dtype == np.float32


def test_radii_pinhole_closed_form():
    cam = Camera("PINHOLE", 50, 40, (60.0, 45.0, 25.0, 20.0))
    rays = cameras.generate_rays(cam, np.eye(4)[:3], near=0.0, far=1.0, dtype=np.float64)
    # Neighbouring z == 1 directions differ by 1 / fx across and 1 / fy down.
    expect = 0.5 * (1 / 60.0 + 1 / 45.0) * 2 / math.sqrt(12)
    assert np.allclose(rays.radii, expect, rtol=1e-12)


def test_radii_with_distortion_match_a_naive_loop():
    cam = Camera("OPENCV", 16, 12, (14.0, 14.5, 8.1, 5.9, -0.28, 0.09, 1.2e-3, -8e-4))
    K, D = cameras.intrinsics_matrix(cam), cameras.opencv_distortion(cam)
    rays = cameras.generate_rays(cam, np.eye(4)[:3], near=0.0, far=1.0, dtype=np.float64)

    def direction(u, v):  # reference: OpenCV's undistortion, one pixel at a time
        x, y = cv2.undistortPoints(np.array([[[u, v]]]), K, D, criteria=CRITERIA)[0, 0]
        return np.array([x, y, 1.0])

    for j in range(12):
        for i in range(16):
            d = direction(i + 0.5, j + 0.5)
            dx = np.linalg.norm(d - direction(i + 1.5, j + 0.5))
            dy = np.linalg.norm(d - direction(i + 0.5, j + 1.5))
            assert abs(rays.radii[j, i, 0] - 0.5 * (dx + dy) * 2 / math.sqrt(12)) < 1e-10


def test_whole_image_rays_of_any_pose_equal_the_per_pixel_computation():
    """generate_rays of a whole image reuses its camera's camera-frame rays across poses (made once): for
    several poses of one distorted camera, every field equals rays_from_pixels through explicit pixels."""
    cam = Camera("OPENCV", 16, 12, (14.0, 14.5, 8.1, 5.9, -0.28, 0.09, 1.2e-3, -8e-4))
    rng = np.random.default_rng(0)
    for k in range(3):
        c2w = np.concatenate([rigid.exp_so3(rng.normal(size=3)), rng.normal(size=(3, 1))], axis=1)
        whole = cameras.generate_rays(cam, c2w, near=0.1, far=5.0, cam_idx=k, dtype=np.float64)
        per_pixel = cameras.generate_rays(cam, c2w, pixels=cameras.pixel_grid(16, 12), near=0.1, far=5.0,
                                          cam_idx=k, dtype=np.float64)
        for name, value in vars(per_pixel).items():
            np.testing.assert_array_equal(getattr(whole, name), value, err_msg=name)
        assert whole.cam_idx.shape == (12, 16, 1) and (whole.cam_idx == k).all()


def test_rays_are_differentiable_wrt_pose():
    model, params = "OPENCV", jnp.asarray(LENSES["OPENCV"])
    pixels = jnp.asarray(_uv(20, seed=5)[4:])
    idx = jnp.arange(20) % 2
    rng = np.random.default_rng(6)
    with jax.enable_x64(True):
        c2w = jnp.asarray(np.stack([_random_pose(rng), _random_pose(rng)]))
        w = jnp.asarray(rng.normal(size=(20, 3)))
        params = params.astype(jnp.float64)

        def loss(c2w):
            r = cameras.rays_from_pixels(model, params, c2w, idx, pixels, near=0.0, far=1.0)
            return jnp.sum(jnp.sin(r.viewdirs * w)) + jnp.sum(r.origins**2) + jnp.sum(r.directions * w)

        # Gradient and central differences of all 24 entries in one compiled, batched call.
        eps = 1e-6
        e = eps * np.eye(24).reshape(24, 2, 3, 4)
        batch = jnp.concatenate([c2w[None], c2w + e, c2w - e])
        values, grads = jax.jit(jax.vmap(jax.value_and_grad(loss)))(batch)
        g = np.asarray(grads[0])
        num = ((values[1:25] - values[25:]) / (2 * eps)).reshape(g.shape)
        assert np.abs(g - num).max() < 1e-6 * max(1.0, np.abs(num).max())


def test_scale_camera_sizes_and_intrinsics():
    cam = Camera("OPENCV", 800, 600, LENSES["OPENCV"])
    s = cameras.scale_camera(cam, 4)
    assert (s.width, s.height) == (200, 150)
    assert np.allclose(s.params[:4], np.array(cam.params[:4]) / 4) and s.params[4:] == cam.params[4:]
    odd = cameras.scale_camera(Camera("SIMPLE_PINHOLE", 803, 601, (700.0, 401.5, 300.5)), 4)
    assert odd.model == "PINHOLE" and (odd.width, odd.height) == (200, 150)
    assert np.allclose(odd.params, (700 * 200 / 803, 700 * 150 / 601, 401.5 * 200 / 803, 300.5 * 150 / 601))
    assert cameras.scale_camera(cam, 1) is cam
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="factor"):
            cameras.scale_camera(cam, bad)


def test_scale_camera_matches_cv2_resize():
    """A blob centred at a known point lands where the scaled camera says after cv2.resize."""
    w, h, factor = 803, 601, 4
    u, v, sigma = 411.3, 257.8, 7.0
    cols, rows = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    img = np.exp(-((cols - u) ** 2 + (rows - v) ** 2) / (2 * sigma**2)).astype(np.float64)
    cam = Camera("PINHOLE", w, h, (500.0, 500.0, u, v))  # the blob sits at the principal point
    small = cameras.scale_camera(cam, factor)
    out = cv2.resize(img, (small.width, small.height), interpolation=cv2.INTER_AREA)
    c, r = np.meshgrid(np.arange(small.width) + 0.5, np.arange(small.height) + 0.5)
    centroid = np.array([(out * c).sum(), (out * r).sum()]) / out.sum()
    assert np.abs(centroid - np.array(small.params[2:])).max() < 0.01


def test_common_model_and_stack_params():
    a = Camera("SIMPLE_PINHOLE", W, H, (500.0, 320.0, 240.0))
    b = Camera("OPENCV", W, H, LENSES["OPENCV"])
    model, params = cameras.stack_params([a, b])
    assert model == "OPENCV" and params.shape == (2, 8)
    uv = _uv(50)
    assert np.allclose(cameras.pixel_to_normalized(model, params[0], uv),
                       cameras.pixel_to_normalized(a.model, a.params, uv), atol=1e-15)
    assert cameras.common_model([a, Camera("PINHOLE", W, H, (1.0, 2.0, 3.0, 4.0))]) == "PINHOLE"
    with pytest.raises(ValueError, match="fisheye"):
        cameras.common_model([a, Camera("OPENCV_FISHEYE", W, H, LENSES["OPENCV_FISHEYE"])])
    with pytest.raises(ValueError, match="no p1"):
        cameras.convert_camera(Camera("OPENCV", W, H, (500.0, 500.0, 320.0, 240.0, 0.1, 0.0, 1e-3, 0.0)), "RADIAL")
    with pytest.raises(ValueError, match="fx != fy"):
        cameras.convert_camera(b, "RADIAL")


def test_bad_model_and_params_raise():
    with pytest.raises(ValueError, match="unknown camera model 'KANNALA'"):
        cameras.distort("KANNALA", (1.0,), np.zeros(2))
    with pytest.raises(ValueError, match="takes 8 parameters"):
        cameras.undistort("OPENCV", (1.0, 2.0), np.zeros(2))


def _nerf_ndc_rays(H, W, focal, near, rays_o, rays_d):
    """NeRF's ndc_rays (OpenGL axes), transcribed from the paper's code as the reference."""
    t = -(near + rays_o[..., 2]) / rays_d[..., 2]
    rays_o = rays_o + t[..., None] * rays_d
    o0 = -1.0 / (W / (2.0 * focal)) * rays_o[..., 0] / rays_o[..., 2]
    o1 = -1.0 / (H / (2.0 * focal)) * rays_o[..., 1] / rays_o[..., 2]
    o2 = 1.0 + 2.0 * near / rays_o[..., 2]
    d0 = -1.0 / (W / (2.0 * focal)) * (rays_d[..., 0] / rays_d[..., 2] - rays_o[..., 0] / rays_o[..., 2])
    d1 = -1.0 / (H / (2.0 * focal)) * (rays_d[..., 1] / rays_d[..., 2] - rays_o[..., 1] / rays_o[..., 2])
    d2 = -2.0 * near / rays_o[..., 2]
    return np.stack([o0, o1, o2], -1), np.stack([d0, d1, d2], -1)


def test_convert_to_ndc_matches_nerf_in_opencv_axes():
    rng = np.random.default_rng(7)
    o = rng.normal(scale=0.1, size=(100, 3))
    d = np.c_[rng.normal(scale=0.3, size=(100, 2)), np.ones(100)]  # looking along +z (OpenCV)
    o_ndc, d_ndc = cameras.convert_to_ndc(o, d, 400.0, 504, 378, near=1.0)
    flip = np.array([1.0, -1.0, -1.0])
    ref_o, ref_d = _nerf_ndc_rays(378, 504, 400.0, 1.0, o * flip, d * flip)
    out_flip = np.array([1.0, -1.0, 1.0])  # our NDC y points down like the image
    assert np.allclose(o_ndc, ref_o * out_flip, atol=1e-12) and np.allclose(d_ndc, ref_d * out_flip, atol=1e-12)
    # Every world point on the ray maps onto the NDC ray; infinity maps to z = 1 at t = 1.
    p = o + 5.0 * d
    p_ndc = np.stack([800 / 504 * p[:, 0] / p[:, 2], 800 / 378 * p[:, 1] / p[:, 2], 1 - 2 / p[:, 2]], -1)
    t = (p_ndc[:, 2] - o_ndc[:, 2]) / d_ndc[:, 2]
    assert np.allclose(o_ndc + t[:, None] * d_ndc, p_ndc, atol=1e-12)
    assert np.allclose((o_ndc + d_ndc)[:, 2], 1.0)

"""Camera localization against a frozen field: pose update, gradients, convergence, outputs.

Most tests use `AnalyticField`, a closed-form stand-in for a trained field
(a textured sphere on a textured ground under a patterned sky, ray-cast in
jnp): it has the model's `apply` signature, renders in microseconds and is
exact, so convergence failures are the optimizer's, not the field's. One
test (marked slow) trains the `tiny` preset on the demo scene and
localizes its query photos with `localize.localize_step`.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nerflib import cameras as cam_lib
from nerflib import localize, rigid
from nerflib.localize import optimize
from nerflib.types import Camera

NEAR, FAR = 0.05, 20.0
GROUND_Z = -0.3
SPHERE_C = np.array([0.05, -0.05, 0.0])
SPHERE_R = 0.3


def _texture(p, phase):
    """Smooth colour [..., 3] of world points p [..., 3]: sinusoids of ~6 to ~1 units period."""
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    r = 0.5 + 0.22 * jnp.sin(2.0 * x + 1.5 * y + phase) + 0.1 * jnp.sin(6.0 * y - 4.0 * z + 1.0)
    g = 0.5 + 0.22 * jnp.sin(2.5 * y - 1.0 * x + 2.0 + phase) + 0.1 * jnp.sin(5.0 * x + 7.0 * z)
    b = 0.5 + 0.22 * jnp.sin(3.0 * z + 1.5 * x + 0.5 * phase) + 0.1 * jnp.sin(7.0 * (x + y) + 2.0)
    return jnp.stack([r, g, b], axis=-1)


class AnalyticField:
    """Closed-form stand-in with NerfModel's `apply(variables, rays, rng=None, train_frac=1.0)`.

    A soft textured ball (opacity a sigmoid of the ray's closest approach to
    its centre, colour the texture at that point) in front of a textured
    ground that fades into the sky with distance, and a patterned sky. Like a
    radiance field's, every colour is a smooth function of the ray: a hard
    silhouette would give tangent rays unbounded derivatives.
    """

    def __init__(self, phase: float = 0.0):
        self.phase = phase

    def apply(self, variables, rays, rng=None, train_frac=1.0):
        del variables, rng, train_frac
        o, d = rays.origins, rays.directions
        v = d / jnp.linalg.norm(d, axis=-1, keepdims=True)
        az = jnp.arctan2(v[..., 1], v[..., 0])
        sky = jnp.stack([0.55 + 0.25 * jnp.sin(3 * az + 4 * v[..., 2]), 0.6 + 0.3 * v[..., 2],
                         0.7 + 0.2 * jnp.cos(2 * az)], -1)
        # Ground z = GROUND_Z, faded into the sky as exp(-distance / 4): continuous at the horizon.
        down = v[..., 2] < -1e-3
        t_g = (GROUND_Z - o[..., 2]) / jnp.where(down, v[..., 2], -1.0)
        fade = jnp.where(down, jnp.exp(-jnp.maximum(t_g, 0.0) / 4.0), 0.0)[..., None]
        ground = sky + fade * (_texture(0.8 * (o + t_g[..., None] * v), self.phase) - sky)
        # The ball: closest approach of the ray to its centre (in front of the camera).
        oc = SPHERE_C - o
        t_c = jnp.maximum(jnp.sum(oc * v, -1), 0.0)
        closest = o + t_c[..., None] * v
        dist = jnp.linalg.norm(closest - SPHERE_C, axis=-1)
        alpha = jax.nn.sigmoid((SPHERE_R - dist) / 0.01)[..., None]
        rgb = alpha * _texture(3.0 * closest, self.phase + 1.0) + (1.0 - alpha) * ground
        return [{"rgb": rgb}], []


def look_at(eye, target, roll_deg=0.0):
    from nerflib.synthetic import look_at as la

    return la(eye, target, roll=math.radians(roll_deg))


def camera(width=64, height=48):
    f = 0.5 * width / math.tan(math.radians(56.0) / 2)
    return Camera("PINHOLE", width, height, (f, f, width / 2, height / 2))


_RENDER = {}


def render(field, cam, c2w):
    """Full image [H, W, 3] of `field` (one compiled function per field and image size)."""
    rays = cam_lib.generate_rays(cam, c2w, near=NEAR, far=FAR)
    key = (field.phase, cam.width, cam.height)
    if key not in _RENDER:
        _RENDER[key] = jax.jit(lambda r: field.apply({}, r)[0][-1]["rgb"])
    return np.asarray(_RENDER[key](rays), np.float32)


def query_poses(n, seed):
    rng = np.random.default_rng(seed)
    az = rng.uniform(0, 2 * np.pi, n)
    r = rng.uniform(0.95, 1.1, n)
    eyes = np.stack([r * np.cos(az), r * np.sin(az), rng.uniform(0.25, 0.45, n)], 1)
    targets = rng.uniform(-0.08, 0.08, (n, 3))
    return np.stack([look_at(e, t, rng.uniform(-5, 5)) for e, t in zip(eyes, targets)])


# --------------------------------------------------------------------------- the pose update


def _twist_matrix(twist):
    m = np.zeros((4, 4))
    m[:3, :3] = rigid.skew(twist[:3])
    m[:3, 3] = twist[3:]
    return m


def test_apply_twist_matches_matrix_exponential():
    from scipy.linalg import expm

    rng = np.random.default_rng(0)
    c2w0 = look_at([0.9, -0.4, 0.3], [0, 0, 0], 3.0)
    hom = np.vstack([c2w0, [0, 0, 0, 1]])
    for scale in (0.0, 1e-5, 0.3, 2.0):
        twist = rng.normal(size=6) * scale
        world = expm(_twist_matrix(twist)) @ hom
        np.testing.assert_allclose(localize.apply_twist(c2w0, twist, pivot="world"), world[:3], atol=1e-12)
        C = np.eye(4)
        C[:3, 3] = c2w0[:, 3]
        pivot = C @ expm(_twist_matrix(twist)) @ np.linalg.inv(C) @ hom
        got = localize.apply_twist(c2w0, twist, pivot="camera")
        np.testing.assert_allclose(got, pivot[:3], atol=1e-12)
        assert rigid.is_rotation(got[:, :3])
    # jnp agrees with numpy (float32), and twist 0 is the identity
    c2w0_j, twist_j = jnp.asarray(c2w0, jnp.float32), jnp.asarray(twist, jnp.float32)
    np.testing.assert_allclose(np.asarray(localize.apply_twist(c2w0_j, twist_j, pivot="camera")), got, atol=1e-5)
    for pivot in ("camera", "world"):
        np.testing.assert_allclose(localize.apply_twist(c2w0, np.zeros(6), pivot=pivot), c2w0, atol=1e-15)
    with pytest.raises(ValueError, match="pivot"):
        localize.apply_twist(c2w0, twist, pivot="origin")


def test_perturb_pose_has_exact_magnitudes():
    rng = np.random.default_rng(1)
    c2w = look_at([1.0, 0.2, 0.3], [0, 0, 0])
    for _ in range(5):
        p = localize.perturb_pose(c2w, rng, rot_deg=10.0, trans=0.1)
        assert rigid.rotation_error_deg(p[:, :3], c2w[:, :3]) == pytest.approx(10.0, abs=1e-9)
        assert np.linalg.norm(p[:, 3] - c2w[:, 3]) == pytest.approx(0.1, abs=1e-12)
    with pytest.raises(ValueError, match="pivot"):
        localize.perturb_pose(c2w, rng, rot_deg=10.0, trans=0.1, pivot="origin")


def test_perturb_pose_about_the_world_origin_keeps_the_origin_in_view():
    """iNeRF's perturbation (R @ pose): the origin keeps its camera-frame coordinates."""
    rng = np.random.default_rng(3)
    c2w = look_at([1.0, 0.2, 0.3], [0.1, 0, 0])
    in_cam = c2w[:, :3].T @ (np.zeros(3) - c2w[:, 3])
    for deg in (5.0, 40.0):
        p = localize.perturb_pose(c2w, rng, rot_deg=deg, trans=0.0, pivot="world")
        assert rigid.rotation_error_deg(p[:, :3], c2w[:, :3]) == pytest.approx(deg, abs=1e-9)
        np.testing.assert_allclose(p[:, :3].T @ (np.zeros(3) - p[:, 3]), in_cam, atol=1e-12)
        assert np.linalg.norm(p[:, 3]) == pytest.approx(np.linalg.norm(c2w[:, 3]), abs=1e-12)  # on its orbit
        q = localize.perturb_pose(c2w, np.random.default_rng(4), rot_deg=deg, trans=0.2, pivot="world")
        r = localize.perturb_pose(c2w, np.random.default_rng(4), rot_deg=deg, trans=0.0, pivot="world")
        assert np.linalg.norm(q[:, 3] - r[:, 3]) == pytest.approx(0.2, abs=1e-12)


def test_robust_losses_against_closed_forms():
    r = jnp.asarray([[0.0, 0.0, 0.0], [0.03, 0.0, 0.04], [0.3, 0.4, 0.0]], jnp.float32)
    n2 = np.array([0.0, 0.0025, 0.25])
    c = 0.1
    np.testing.assert_allclose(localize.robust_loss(r, kind="mse"), n2, rtol=1e-6)
    np.testing.assert_allclose(localize.robust_loss(r, kind="charbonnier", scale=c), np.sqrt(n2 + c * c), rtol=1e-6)
    np.testing.assert_allclose(localize.robust_loss(r, kind="cauchy", scale=c), c * c * np.log1p(n2 / c**2),
                               rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(localize.robust_loss(r, kind="huber", scale=c), [0.0, 0.0025, 2 * c * 0.5 - c * c],
                               rtol=1e-6)
    g = jax.grad(lambda x: jnp.sum(localize.robust_loss(x, kind="huber", scale=c)))(r)
    assert np.all(np.isfinite(np.asarray(g)))
    with pytest.raises(ValueError, match="loss must be one of"):
        localize.robust_loss(r, kind="l3")


def test_loss_gradient_matches_finite_differences():
    """d loss / d var of the real per-problem loss (rays, field, robust loss) vs central differences.

    The camera looks down at the ground only: no silhouette or horizon, so the
    loss is smooth in the pose (at a silhouette the analytic derivative of a
    tangent ray is unbounded and differences of any step disagree with it).
    """
    field = AnalyticField()
    cam = camera(32, 24)
    c2w_true = look_at([1.0, 0.1, 0.35], [1.4, 0.2, GROUND_Z])
    c2w0 = localize.perturb_pose(c2w_true, np.random.default_rng(2), rot_deg=3.0, trans=0.03)
    image = render(field, cam, c2w_true)
    opts = localize.Options(n_pixels=64, coarse_to_fine=(1,), loss="cauchy", refine_focal=True)
    lv = optimize._build_level([image], [cam], "PINHOLE", 1, 1, opts, np.random.default_rng(0), (24, 32))
    loss = optimize._make_loss(field, "PINHOLE", opts, near=NEAR, far=FAR)
    key = jax.random.PRNGKey(3)  # fixed pixels: the loss is a deterministic function of var
    c2w0_j = jnp.asarray(c2w0, jnp.float32)
    f = jax.jit(jax.value_and_grad(lambda v: loss({}, v, c2w0_j, 0, key, lv)))  # one compilation for both
    var = np.asarray([0.01, -0.02, 0.015, 0.01, 0.02, -0.01, 0.01], np.float32)
    grad = np.asarray(f(var)[1], np.float64)
    h = 2e-3
    step = lambda i, d: var + d * h * np.eye(7, dtype=np.float32)[i]  # noqa: E731
    fd = np.array([(float(f(step(i, 1))[0]) - float(f(step(i, -1))[0])) / (2 * h) for i in range(7)])
    assert np.linalg.norm(grad) > 1e-3
    np.testing.assert_allclose(grad, fd, rtol=1e-2, atol=1e-3 * np.abs(fd).max())


def test_interest_pixels_and_eval_grid():
    rng = np.random.default_rng(0)
    image = np.zeros((40, 50, 3), np.float32)
    image[:, 25:] = 1.0  # one vertical edge between columns 24 and 25
    pix = localize.interest_pixels(image, 500, rng, sampling="edges", dilate=1)
    assert pix.shape == (500, 2) and pix.dtype == np.int32
    assert np.all(np.abs(pix[:, 0] - 24.5) <= 2.5)  # Sobel support (1) + dilation (1)
    uni = localize.interest_pixels(image, 2000, rng, sampling="uniform")
    assert uni[:, 0].min() == 0 and uni[:, 0].max() == 49 and uni[:, 1].max() == 39
    grid = localize.eval_grid(50, 40, 500)
    assert 300 <= len(grid) <= 600 and grid[:, 0].max() < 50 and grid[:, 1].max() < 40
    assert len(np.unique(grid, axis=0)) == len(grid)


def test_frames_round_trip():
    from nerflib import scene_io
    from nerflib.types import Scene

    poses = query_poses(5, 0) * np.array([1, 1, 1, 3.0]) + np.array([0, 0, 0, 1.0])
    scene = Scene(names=[f"{i}.jpg" for i in range(5)], c2w=poses, cameras=[camera()], camera_idx=np.zeros(5))
    _, norm = scene_io.normalize_scene(scene)
    back = localize.to_original(localize.to_normalized(poses, norm), norm)
    np.testing.assert_allclose(back, poses, atol=1e-12)
    np.testing.assert_allclose(localize.to_normalized(poses, None), poses)
    # the normalized frame is the training one: cameras fill the unit ball about the focus point
    assert np.linalg.norm(localize.to_normalized(poses, norm)[:, :, 3], axis=1).max() == pytest.approx(1.0)


def test_nearest_view_retrieval():
    field = AnalyticField()
    cam = camera(32, 24)
    orbit = [look_at([math.cos(a), math.sin(a), 0.35], [0, 0, 0]) for a in np.linspace(0, 2 * np.pi, 12, endpoint=False)]
    refs = [render(field, cam, c) for c in orbit]
    q = render(field, cam, look_at([1.05 * math.cos(1.1), 1.05 * math.sin(1.1), 0.3], [0, 0, 0]))
    k, score = localize.nearest_view(q, refs)
    assert k == 2 and score > 0.5  # azimuth 1.1 rad is nearest to 2 * 2 pi / 12 = 1.05 rad


# --------------------------------------------------------------------------- convergence


@pytest.fixture(scope="module")
def analytic_run():
    """Four queries started 10 deg / 10 % of the radius off, plus a noise photo and another scene."""
    field = AnalyticField()
    cam = camera()
    gt = query_poses(4, seed=7)
    rng = np.random.default_rng(11)
    starts = [localize.perturb_pose(c, rng, rot_deg=10.0, trans=0.1) for c in gt]
    queries = [(f"q{i}", render(field, cam, c), cam, s) for i, (c, s) in enumerate(zip(gt, starts))]
    queries.append(("noise", rng.uniform(size=(48, 64, 3)).astype(np.float32), cam, starts[0], "noise"))
    other = render(AnalyticField(phase=2.5), cam, gt[1])  # same geometry, other paint
    queries.append(("other", np.ascontiguousarray(other[:, ::-1]), cam, starts[1], "other"))
    trace = []
    t0 = time.perf_counter()
    res = localize.localize(field, {}, None, queries, near=NEAR, far=FAR, iters=120, n_pixels=128, restarts=3,
                            coarse_to_fine=(2, 1), min_psnr=25.0, progress=False, log=lambda m: None,
                            callback=lambda step, c2w: trace.append((step, c2w)))
    return {"gt": gt, "starts": starts, "res": res, "trace": trace, "seconds": time.perf_counter() - t0}


def test_converges_from_10_degrees_and_10_percent(analytic_run):
    gt, starts, res = analytic_run["gt"], analytic_run["starts"], analytic_run["res"]
    rot = np.array([rigid.rotation_error_deg(r["c2w"][:, :3], g[:, :3]) for r, g in zip(res, gt)])
    trans = np.array([np.linalg.norm(r["c2w"][:, 3] - g[:, 3]) for r, g in zip(res, gt)])  # radius 1
    rot0 = np.array([rigid.rotation_error_deg(s[:, :3], g[:, :3]) for s, g in zip(starts, gt)])
    print(f"analytic: rot {rot0.round(2)} -> {rot.round(3)} deg, trans -> {(100 * trans).round(3)} %, "
          f"psnr {[round(r['psnr'], 1) for r in res]}, {analytic_run['seconds']:.1f} s")
    assert np.median(rot) < 1.0 and np.median(trans) < 0.01
    assert all(r["converged"] for r in res[:4])
    assert all(r["psnr"] > r["psnr_start"] for r in res[:4])
    assert all(r["start_used"] == "given" for r in res[:4])
    assert all(rigid.is_rotation(r["c2w"][:, :3]) for r in res)


def test_noise_and_other_scene_are_not_converged(analytic_run):
    noise, other = analytic_run["res"][4:]
    assert noise["name"] == "noise" and noise["start_used"] == "noise"
    assert not noise["converged"] and noise["psnr"] < 15.0 and abs(noise["gradient_ncc"]) < 0.1
    assert not other["converged"] and other["psnr"] < other["threshold_psnr"]
    for r in analytic_run["res"][:4]:
        assert r["gradient_ncc"] > 0.99 and r["gradient_ncc"] > r["gradient_ncc_start"]


def test_trace_and_restart_selection(analytic_run):
    steps = [s for s, _ in analytic_run["trace"]]
    assert steps[-1] == 120 and steps == sorted(steps)
    first, last = analytic_run["trace"][0][1], analytic_run["trace"][-1][1]
    assert first.shape == (6, 3, 3, 4)
    for r in analytic_run["res"]:  # the reported pose is the winning restart's last pose
        i = int(r["name"][1:]) if r["name"].startswith("q") else None
        if i is not None:
            np.testing.assert_allclose(r["c2w"], last[i, r["restart"]], atol=1e-9)


def test_evaluation_is_the_same_in_small_chunks():
    """eval_rays bounds the rays of one evaluation call over all problems (50 queries x 8 restarts
    ran out of GPU memory at 2048 each); the figures must not depend on the chunking."""
    field, cam = AnalyticField(), camera()
    gt = query_poses(2, seed=3)
    rng = np.random.default_rng(5)
    queries = [(f"q{i}", render(field, cam, c), cam, localize.perturb_pose(c, rng, rot_deg=5.0, trans=0.05))
               for i, c in enumerate(gt)]
    kw = dict(near=NEAR, far=FAR, iters=2, n_pixels=32, restarts=2, n_eval=64, coarse_to_fine=(1,),
              progress=False, log=lambda m: None)
    whole = localize.localize(field, {}, None, queries, eval_rays=10**6, **kw)
    small = localize.localize(field, {}, None, queries, eval_rays=20, **kw)  # 5 pixels per problem per call
    for a, b in zip(whole, small):
        for k in ("psnr", "psnr_start", "gradient_ncc", "gradient_ncc_start"):
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6), k
        np.testing.assert_allclose(a["c2w"], b["c2w"], atol=1e-9)


def test_levels_whose_factor_does_not_divide_the_photo_keep_one_camera_model():
    """A SIMPLE_PINHOLE 64x46 photo at x4 is 16x11: x and y scale differently, so every level
    runs as PINHOLE (this raised 'cannot express ... as SIMPLE_PINHOLE' on the real cup at x16)."""
    field = AnalyticField()
    c = camera()
    cam = Camera("SIMPLE_PINHOLE", 64, 46, (c.params[0], 32.0, 23.0))
    gt = query_poses(1, seed=2)[0]
    start = localize.perturb_pose(gt, np.random.default_rng(1), rot_deg=3.0, trans=0.03)
    res = localize.localize(field, {}, None, [("q", render(field, cam, gt), cam, start)], near=NEAR, far=FAR,
                            iters=40, n_pixels=64, restarts=1, coarse_to_fine=(4, 1), n_eval=256,
                            progress=False, log=lambda m: None)
    assert rigid.rotation_error_deg(res[0]["c2w"][:, :3], gt[:, :3]) < 3.0


def test_options_are_validated():
    with pytest.raises(ValueError, match="restarts"):
        localize.Options(restarts=0)
    with pytest.raises(ValueError, match="coarse_to_fine"):
        localize.Options(coarse_to_fine=())
    with pytest.raises(ValueError, match="camera is 64x48"):
        localize.localize(AnalyticField(), {}, None, [("a", np.zeros((10, 10, 3)), camera(), np.eye(3, 4))],
                          near=NEAR, far=FAR, progress=False)


# --------------------------------------------------------------------------- the pipeline step


def _train_toy(root: Path, cfg) -> Path:
    from nerflib import datasets, train

    scene = datasets.toy_scene(root / "data")
    ds = datasets.load_for_config(cfg, scene, image_dir=root / "data" / "images")
    train.train(cfg, ds, root / "model", progress=False, tb=False, log=lambda m: None)
    return root / "data" / "scene.json"


def _toy_field_and_queries(tmp_path, pick, *, prefix=""):
    """A 2-step toy field (tmp_path/model) and copies of its training photos `pick` as queries.

    Returns (scene.json path, the scene, the query folder).
    """
    import shutil

    from helpers.training import toy_config

    from nerflib import scene_io

    scene_json = _train_toy(tmp_path, toy_config(normalize="360", max_steps=2, checkpoint_every=2))
    scene = scene_io.read_scene_json(scene_json)
    qdir = tmp_path / "queries"
    qdir.mkdir()
    for i in pick:
        shutil.copy(Path(scene.image_dir) / scene.names[i], qdir / (prefix + scene.names[i]))
    return scene_json, scene, qdir


def test_localize_step_outputs_in_the_scene_frame(tmp_path):
    """poses.json / errors.tsv / views with a toy field and zero learning rates: the given poses come back."""
    from nerflib import scene_io
    from nerflib.types import Scene

    pick = [1, 5]
    scene_json, scene, qdir = _toy_field_and_queries(tmp_path, pick)
    sub = Scene(names=[scene.names[i] for i in pick], c2w=scene.c2w[pick], cameras=scene.cameras,
                camera_idx=np.zeros(2, np.int32))
    scene_io.write_poses_json(sub, tmp_path / "given.json")
    opts = dict(iters=2, restarts=1, n_pixels=16, coarse_to_fine=(1,), n_eval=64, lr_rot=0.0, lr_trans=0.0,
                progress=False, log=lambda m: None)
    out = tmp_path / "loc"
    summary = localize.localize_step(tmp_path / "model", scene_json, qdir, out,
                                          query_poses=tmp_path / "given.json", gt_poses=tmp_path / "given.json",
                                          **opts)
    assert summary["queries"] == 2 and summary["starts"] == {n: "pose_file" for n in sub.names}
    found = scene_io.read_scene_json(out / "poses.json")  # the scene's own format and frame
    assert found.names == sub.names
    np.testing.assert_allclose(found.c2w, sub.c2w, atol=1e-9)
    assert found.cameras == scene.cameras and Path(found.image_dir).resolve() == qdir.resolve()
    doc = json.loads((out / "poses.json").read_text())
    frame = doc["frames"][0]
    assert isinstance(frame["converged"], bool) and frame["start_used"] == "pose_file"
    assert {"psnr", "gradient_ncc", "photometric_error", "restart"} <= set(frame)
    np.testing.assert_allclose(frame["c2w_start"], sub.c2w[0], atol=1e-9)
    assert doc["calibration"]["threshold_psnr"] == pytest.approx(doc["thresholds"]["psnr"])
    rows = [line.split("\t") for line in (out / "errors.tsv").read_text().splitlines()]
    assert tuple(rows[0]) == localize.ERRORS_COLUMNS and [r[0] for r in rows[1:]] == sub.names + ["median"]
    assert all(float(r[1]) < 1e-6 and float(r[2]) < 1e-6 for r in rows[1:3])
    from nerflib.images import load_image

    view = load_image(out / "views" / (Path(sub.names[0]).stem + ".png"))
    assert view.shape == (12, 48, 3)
    assert not list(out.glob(".*")) and not list((out / "views").glob(".*"))  # atomic: no temp files left

    # Without a poses file: the nearest training view (a query that *is* training view 5 finds it).
    out2 = tmp_path / "loc2"
    summary = localize.localize_step(tmp_path / "model", scene_json, qdir, out2, write_views=False, **opts)
    assert summary["starts"][sub.names[1]] == f"nearest_view:{sub.names[1]}"
    assert not (out2 / "errors.tsv").exists() and not (out2 / "views").exists()


def _moved(c2w, s, R, t):
    return rigid.apply_similarity_to_poses(c2w, s, R, t)


def test_ground_truth_in_another_frame_perturbed_starts_and_errors_rule(tmp_path):
    """Ground truth in another frame (as the demo's generator frame against SfM's) is aligned through the
    training photos; start='perturbed' moves it by exactly 10 deg / 10 % of the radius; `localize_errors`
    (the workflow's errors rule) recomputes errors.tsv from poses.json alone."""
    from nerflib import scene_io
    from nerflib.types import Scene

    pick = [2, 6]
    scene_json, scene, qdir = _toy_field_and_queries(tmp_path, pick, prefix="q")
    # The "generator" frame: the scene's world moved by a similarity (scale 3).
    sim = (3.0, rigid.exp_so3(np.array([0.3, -0.2, 0.5])), np.array([1.0, -2.0, 0.5]))
    gt = Scene(names=["q" + scene.names[i] for i in pick], c2w=_moved(scene.c2w[pick], *sim),
               cameras=scene.cameras, camera_idx=np.zeros(2, np.int32))
    scene_io.write_poses_json(gt, tmp_path / "gt.json")
    ref = Scene(names=scene.names, c2w=_moved(scene.c2w, *sim), cameras=scene.cameras,
                camera_idx=scene.camera_idx)
    scene_io.write_poses_json(ref, tmp_path / "ref.json")
    truth = localize.load_ground_truth(tmp_path / "gt.json", scene, reference=tmp_path / "ref.json",
                                            log=lambda m: None)
    np.testing.assert_allclose(truth[gt.names[0]], scene.c2w[pick[0]], atol=1e-9)
    with pytest.raises(ValueError, match="at least 3"):
        localize.load_ground_truth(tmp_path / "gt.json", scene, reference=tmp_path / "gt.json")

    opts = dict(iters=2, restarts=1, n_pixels=16, coarse_to_fine=(1,), n_eval=64, lr_rot=0.0, lr_trans=0.0,
                progress=False, write_views=False, log=lambda m: None)
    out = tmp_path / "loc"
    summary = localize.localize_step(tmp_path / "model", scene_json, qdir, out, start="perturbed",
                                          gt_poses=tmp_path / "gt.json", gt_reference=tmp_path / "ref.json",
                                          write_errors=False, **opts)
    assert summary["starts"] == {n: "perturbed_truth" for n in gt.names}
    assert not (out / "errors.tsv").exists()
    assert summary["median_rot_err_deg"] == pytest.approx(10.0, abs=1e-6)  # zero learning rates: the start
    assert summary["median_trans_err_pct"] == pytest.approx(10.0, abs=1e-6)
    errors = localize.localize_errors(out / "poses.json", scene_json, tmp_path / "model", tmp_path / "gt.json",
                                           out / "errors.tsv", gt_reference=tmp_path / "ref.json",
                                           log=lambda m: None)
    assert errors["median_rot_err_deg"] == pytest.approx(summary["median_rot_err_deg"])
    rows = [line.split("\t") for line in (out / "errors.tsv").read_text().splitlines()]
    assert [r[0] for r in rows[1:]] == gt.names + ["median"] and rows[1][-1] == "perturbed_truth"
    assert all(float(r[3]) == pytest.approx(10.0, abs=1e-3) and float(r[4]) == pytest.approx(10.0, abs=1e-3)
               for r in rows[1:])
    with pytest.raises(ValueError, match="perturbed"):
        localize.localize_step(tmp_path / "model", scene_json, qdir, out, start="perturbed", **opts)
    with pytest.raises(ValueError, match="no ground truth for any"):
        localize.localize_errors(out / "poses.json", scene_json, tmp_path / "model", tmp_path / "ref.json",
                                      tmp_path / "e.tsv", log=lambda m: None)


def test_sheet_localize_columns_are_checked(tmp_path):
    """query_gt without queries, and synthetic queries on a photo row, fail the dry run naming row and column."""
    import shutil

    from helpers.workflow import HEADER, REPO, dry_run, write_sheet

    shutil.copytree(REPO / "config", tmp_path / "config")
    photos = tmp_path / "photos"
    photos.mkdir()
    write_sheet(tmp_path, HEADER + "\tquery_gt", f"real\t{photos}\tOPENCV\t4\ttiny\texhaustive\t\t\t\t\t{photos}")
    result = dry_run(tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode != 0 and "line 2 (scene 'real'), column 'query_gt'" in out, out
    assert "needs a `queries` folder" in out
    write_sheet(tmp_path, HEADER, f"real\t{photos}\tOPENCV\t4\ttiny\texhaustive\t\t\t\tsynthetic")
    result = dry_run(tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode != 0 and "column 'queries'" in out and "only for rows whose source" in out, out


@pytest.mark.nightly  # ~4.5 min on 2 cores; run with `pytest -m nightly`
def test_trained_field_localizes_demo_queries(tmp_path):
    """The tiny preset trained briefly on the demo scene; queries started 10 deg / 10 % off.

    A regression and measurement test (run with -s to see the table), not the
    accuracy test (that is `test_converges_from_10_degrees_and_10_percent`):
    a ~18-20 dB field trained for a minute on 2 CPU cores is too blurry for
    0.1-degree work. Measured (2 runs, 300-400 training steps): rotation errors
    0.3-0.8 deg for 1-2 of 3 queries, the others stuck 7-15 deg off; camera
    centres 5-8 % of the radius off even where the rotation converged (depth
    along the optical axis is what a blurry field constrains least); the
    convergence flag was right for 4 of 6 queries. Asserted: the photometric
    fit and the median rotation error improve.
    """
    from nerflib import configs, datasets, scene_io, synthetic, train

    t0 = time.perf_counter()
    synthetic.generate(tmp_path, n_views=24, n_heldout=1, n_queries=3, width=96, height=72)
    steps = 300
    cfg = configs.tiny(factor=1, max_steps=steps, test_every=0, checkpoint_every=steps)
    scene_json = tmp_path / "gt" / "scene.json"
    ds = datasets.load_for_config(cfg, scene_io.read_scene_json(scene_json), image_dir=tmp_path / "images")
    train.train(cfg, ds, tmp_path / "model", progress=False, tb=False, log=lambda m: None)
    t_train = time.perf_counter() - t0
    # Starts: the true poses moved by exactly 10 degrees and 10 % of the orbit radius (original frame).
    gt = scene_io.read_scene_json(tmp_path / "gt" / "queries.json")
    _, norm = scene_io.normalize_scene(scene_io.read_scene_json(scene_json))
    rng = np.random.default_rng(5)
    starts = [localize.to_original(localize.perturb_pose(c, rng, rot_deg=10.0, trans=0.1), norm)
              for c in localize.to_normalized(gt.c2w, norm)]
    gt.c2w = np.stack(starts)
    scene_io.write_poses_json(gt, tmp_path / "starts.json")
    summary = localize.localize_step(tmp_path / "model", scene_json, tmp_path / "queries", tmp_path / "loc",
                                     query_poses=tmp_path / "starts.json", gt_poses=tmp_path / "gt" / "queries.json",
                                     iters=150, n_pixels=256, restarts=2, n_eval=1024, progress=False,
                                     write_views=False, log=lambda m: None)
    table = (tmp_path / "loc" / "errors.tsv").read_text()
    print(f"trained field: training {t_train:.0f} s, localization {summary['seconds']:.0f} s\n{table}")
    frames = json.loads((tmp_path / "loc" / "poses.json").read_text())["frames"]
    rows = {r[0]: r for r in (line.split("\t") for line in table.splitlines()[1:-1])}
    assert np.median([f["psnr"] for f in frames]) > np.median([f["psnr_start"] for f in frames])
    assert summary["median_rot_err_deg"] < 10.0
    assert set(rows) == {f["name"] for f in frames}


@pytest.mark.slow
def test_register_with_colmap_on_the_demo_scene(tmp_path):
    """SfM of 24 demo views, then absolute poses of the query photos against the model (both descriptor sources)."""
    from nerflib import images, scene_io, sfm, synthetic

    synthetic.generate(tmp_path, n_views=24, n_heldout=0, n_queries=3, width=320, height=240)
    sfm.run_sfm(tmp_path / "images", tmp_path / "sfm", camera_model="PINHOLE", matcher="exhaustive", threads=2)
    sparse = tmp_path / "sfm" / "sparse" / "0"
    model = scene_io.read_colmap(sparse, image_dir=tmp_path / "images")
    truth = scene_io.read_scene_json(tmp_path / "gt" / "scene.json")
    queries = scene_io.read_scene_json(tmp_path / "gt" / "queries.json")
    # SfM's frame is its own: align it to the generator's with the training cameras.
    align = rigid.pose_errors(model.c2w, truth.c2w[[truth.names.index(n) for n in model.names]])
    photos = {n: images.load_image(tmp_path / "queries" / n) for n in queries.names}
    cams = {n: model.cameras[0] for n in queries.names}
    for database in (tmp_path / "sfm" / "database.db", None):
        found = localize.register_with_colmap(photos, sparse, cameras=cams, database=database,
                                              image_dir=tmp_path / "images", log=lambda m: None)
        assert sorted(found) == queries.names
        for i, name in enumerate(queries.names):
            c2w = rigid.apply_similarity_to_poses(found[name]["c2w"], align["scale"], align["R"], align["t"])
            assert found[name]["num_inliers"] >= 100
            assert rigid.rotation_error_deg(c2w[:, :3], queries.c2w[i, :, :3]) < 0.2
            assert np.linalg.norm(c2w[:, 3] - queries.c2w[i, :, 3]) < 0.005 * synthetic.ORBIT_RADIUS

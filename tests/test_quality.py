"""The `quality` preset's pieces: the anti-aliased hash grid and camera refinement.

Each is checked against an independent computation: the multisampled, level-weighted
grid features against numpy (erf per level, a finite-difference Jacobian for the
contraction), camera refinement against rays of the refined camera and by recovering a
known perturbation of the poses of cameras looking at a known textured plane.
"""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nerflib import cameras, configs, coord, hashgrid, losses, model_config, models, pose_refine, rigid, stepfun
from nerflib.types import Camera


# ---------------------------------------------------------------- anti-aliased grid


def _contract_np(x):
    m = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.where(m <= 1, x, (2 - 1 / m) * x / np.maximum(m, 1e-30))


def _contract_scale_fd(x, h=1e-5):
    """|det J|^(1/3) of the contraction by central differences (float64)."""
    jac = np.stack([(_contract_np(x + h * e) - _contract_np(x - h * e)) / (2 * h) for e in np.eye(3)], -1)
    return np.abs(np.linalg.det(jac)) ** (1 / 3)


@pytest.mark.parametrize("count", [1, 6])
def test_multisampled_field_features_match_a_direct_computation(count):
    """A proposal field with no hidden layer: density = softplus(w . mean_k(level weights * grid features) + b - 1)."""
    grid = (("num_levels", 4), ("features_per_level", 2), ("log2_table_size", 10), ("base_resolution", 4),
            ("max_resolution", 64))
    cfg = configs.get_preset("tiny", **{"model.hashgrid_options": grid, "model.prop_net_depth": 0,
                                        "model.prop_multisamples": count}).model
    field = models.Field(cfg, 0, 8, predict_rgb=False)
    rng = np.random.default_rng(0)
    origins = rng.normal(size=(5, 3)) * 0.3
    dirs = rng.normal(size=(5, 3)) + [0, 0, 1.0]
    tdist = np.sort(rng.uniform(0.2, 6.0, size=(5, 4)), axis=-1)
    radii = np.full((5, 1), 0.15)  # wide cones: the finer levels fade out (weights well below 1)
    points, stds = coord.multisample_frustum(*(jnp.asarray(a, jnp.float32) for a in (tdist, origins, dirs, radii)),
                                             count=count, std_scale=0.35)
    params = field.init(jax.random.PRNGKey(0), points, stds)
    density = np.asarray(field.apply(params, points, stds)[0], np.float64)  # [5, 3]

    p = params["params"]
    tables = np.asarray(p["hash_encoding"]["tables"], np.float64)  # [L, T, F]
    res = hashgrid.level_resolutions(num_levels=4, base_resolution=4, max_resolution=64)
    pts, sd = np.asarray(points, np.float64), np.asarray(stds, np.float64)
    x01 = (_contract_np(pts) + 2) / 4
    feats = np.asarray(hashgrid.encode(jnp.asarray(x01, jnp.float32), jnp.asarray(tables, jnp.float32),
                                       resolutions=res, table_size=2**10), np.float64).reshape(*pts.shape[:-1], 4, 2)
    # The fraction of a 1-D Gaussian of std (s * contraction scale / 4) * n_l within half a cell.
    s01 = sd * _contract_scale_fd(pts) / 4
    weights = np.vectorize(lambda s, n: math.erf(0.5 / (math.sqrt(2) * max(s * n, 1e-10))))(s01[..., None], res)
    enc = (feats * weights[..., None]).reshape(*pts.shape[:-1], 8).mean(axis=-2)
    raw = enc @ np.asarray(p["Dense_0"]["kernel"], np.float64)[:, 0] + float(p["Dense_0"]["bias"][0]) + cfg.density_bias
    np.testing.assert_allclose(density, np.logaddexp(0, raw), rtol=2e-4, atol=1e-6)
    if count == 6:  # far samples have footprints of many fine cells: those levels are faded out
        assert weights[..., -1].min() < 0.5 < weights[..., 0].min()


def test_multisampled_model_renders_finite_colours_and_gradients():
    """The model's wiring of multisamples (6 in the final round, 1 in the proposal round), one jit."""
    grid = (("num_levels", 4), ("features_per_level", 2), ("log2_table_size", 8), ("base_resolution", 4),
            ("max_resolution", 32))
    cfg = configs.get_preset("tiny", **{"model.multisamples": 6, "model.prop_multisamples": 1,
                                        "model.hashgrid_options": grid, "model.prop_hashgrid_options": grid,
                                        "model.num_prop_samples": (4,), "model.num_nerf_samples": 4,
                                        "model.interlevel_blur": (0.03,), "model.interlevel_loss_mult": 0.01}).model
    model = models.make_model(cfg, num_images=2)
    variables = models.init_variables(model, jax.random.PRNGKey(0))
    rays = models.dummy_rays(cfg, 8)

    @jax.jit
    def rgb_and_grad(params):
        def total(p):  # the objective, with Zip-NeRF's anti-aliased interlevel loss
            renderings, history = model.apply({"params": p}, rays, rng=jax.random.PRNGKey(1), train_frac=0.5)
            return losses.total_loss(renderings, history, jnp.full(renderings[-1]["rgb"].shape, 0.5), cfg)
        return jax.value_and_grad(total, has_aux=True)(params)

    (value, stats), grad = rgb_and_grad(variables["params"])
    assert np.isfinite(float(value)) and float(stats["interlevel"]) > 0
    for field in ("nerf_field", "prop_field"):
        table_grad = np.asarray(grad[field]["hash_encoding"]["tables"])
        assert np.isfinite(table_grad).all() and np.abs(table_grad).sum() > 0, field
    with pytest.raises(ValueError, match="multisamples must be 0"):
        configs.get_preset("tiny", **{"model.multisamples": 3})
    with pytest.raises(ValueError, match="needs field='hashgrid'"):
        models.model_tiny(multisamples=6)


# ---------------------------------------------------------------- anti-aliased interlevel loss


def test_antialiased_interlevel_loss_is_zero_on_the_blurred_target_and_trains_only_the_proposal():
    """Zip-NeRF's loss: 0 where the proposal carries the blurred final weights, the truncated
    chi-square of the shortfall elsewhere (checked against numpy), gradient to the proposal only."""
    rng = np.random.default_rng(3)
    t = np.sort(rng.uniform(0, 1, (5, 17)), axis=-1)
    w = rng.uniform(0, 1, (5, 16)) ** 2
    w /= w.sum(-1, keepdims=True)
    tp = np.sort(rng.uniform(0, 1, (5, 9)), axis=-1)
    tp[:, 0], tp[:, -1] = 0.0, 1.0
    blur = 0.03
    target = np.asarray(stepfun.blur_and_resample_weights(jnp.float32(tp), jnp.float32(t), jnp.float32(w), blur))

    def loss(wp, w_final):
        history = [{"sdist": jnp.float32(tp), "weights": wp}, {"sdist": jnp.float32(t), "weights": w_final}]
        return losses.interlevel_loss(history, mult=0.01, blur=(blur,))

    assert float(loss(jnp.float32(target), jnp.float32(w))) < 1e-9
    wp = 0.5 * target
    expect = 0.01 * np.mean(np.maximum(0, target - wp) ** 2 / (wp + np.finfo(np.float32).eps))
    assert np.isclose(float(loss(jnp.float32(wp), jnp.float32(w))), expect, rtol=1e-4)
    g_prop, g_final = jax.grad(loss, argnums=(0, 1))(jnp.float32(wp), jnp.float32(w))
    assert np.abs(np.asarray(g_prop)).sum() > 0 and np.abs(np.asarray(g_final)).sum() == 0
    # The plain loss (blur ()) is mip-NeRF 360's; a blur per proposal round is required.
    history = [{"sdist": jnp.float32(tp), "weights": jnp.float32(wp)}, {"sdist": jnp.float32(t), "weights": jnp.float32(w)}]
    plain = float(losses.interlevel_loss(history))
    assert np.isclose(plain, np.mean(np.asarray(stepfun.lossfun_outer(*history[1].values(), *history[0].values()))))
    with pytest.raises(ValueError, match="one half-width per proposal round"):
        losses.interlevel_loss(history, blur=(0.03, 0.003))
    with pytest.raises(ValueError, match="interlevel_blur"):
        models.model_tiny(interlevel_blur=(0.03, 0.003))  # tiny has one proposal round
    assert "interlevel_blur must be ()" in model_config.tiled_model_problems(
        models.model_tiny(field="hashgrid", interlevel_blur=(0.03,)))


# ---------------------------------------------------------------- camera refinement


def _look_at(eye, target=(0.0, 0.0, 0.0)):
    z = np.asarray(target, float) - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, [0.0, 1.0, 0.0])
    x /= np.linalg.norm(x)
    return np.concatenate([np.stack([x, np.cross(z, x), z], 1), np.asarray(eye, float)[:, None]], 1)


def test_pose_delta_on_rays_equals_rays_of_the_refined_camera():
    camera = Camera("PINHOLE", 8, 6, (7.0, 7.0, 4.0, 3.0))
    c2w = np.stack([_look_at(np.array([0.3, -0.2, -3.0])), _look_at(np.array([2.0, 0.5, -2.0]))])
    delta = np.array([[0.02, -0.01, 0.03, 0.05, -0.02, 0.01], [-0.04, 0.02, 0.0, 0.0, 0.03, -0.06]])
    refined = pose_refine.refined_c2w(c2w, delta)
    assert np.allclose(refined[:, :, :3] @ np.swapaxes(refined[:, :, :3], 1, 2), np.eye(3), atol=1e-12)
    for i in range(2):
        before = cameras.generate_rays(camera, c2w[i], near=0.1, far=10.0, dtype=np.float64)
        after = cameras.generate_rays(camera, refined[i], near=0.1, far=10.0, dtype=np.float64)
        d = jnp.asarray(np.broadcast_to(delta[i], before.origins.shape[:-1] + (6,)))
        o, dirs, v = pose_refine.apply_pose_delta(d, *(jnp.asarray(a) for a in (before.origins, before.directions,
                                                                           before.viewdirs)))
        np.testing.assert_allclose(np.asarray(o), after.origins, atol=1e-6)
        np.testing.assert_allclose(np.asarray(dirs), after.directions, atol=1e-6)
        np.testing.assert_allclose(np.asarray(v), after.viewdirs, atol=1e-6)


def _plane_colour(origins, directions):
    """A known scene: a smooth texture on the plane z = 0, seen by rays (o, d)."""
    t = -origins[..., 2:3] / directions[..., 2:3]
    x = origins + t * directions
    u, w = x[..., 0], x[..., 1]
    return jnp.stack([jnp.sin(2.1 * u + 0.3) * jnp.cos(1.3 * w), jnp.cos(1.7 * u - 2.2 * w),
                      jnp.sin(0.9 * u * w + 1.1 * w)], -1)


def test_camera_refinement_recovers_a_known_perturbation_of_the_poses():
    """Cameras see a known textured plane; their poses are perturbed by known deltas. Fitting the
    model's pose parameters (its parameterisation, preconditioning and scale; Adam) to the colours
    seen from the true poses brings every camera back: rotation and position errors fall by > 10x."""
    cfg = models.model_tiny(refine_poses=True)
    camera = Camera("PINHOLE", 24, 18, (20.0, 20.0, 12.0, 9.0))
    eyes = np.array([[0.4, -0.3, -3.0], [1.5, 0.2, -2.6], [-1.2, 0.8, -2.8], [0.2, 1.4, -2.5]])
    c2w_true = np.stack([_look_at(e) for e in eyes])
    rng = np.random.default_rng(3)
    perturb = np.concatenate([rng.normal(size=(4, 3)) * np.radians(0.5), rng.normal(size=(4, 3)) * 0.015], -1)
    c2w_start = pose_refine.refined_c2w(c2w_true, perturb)  # what SfM gave us

    def rays_of(c2w):
        rs = [cameras.generate_rays(camera, c, near=0.1, far=10.0, cam_idx=i) for i, c in enumerate(c2w)]
        return [jnp.asarray(np.concatenate([getattr(r, k).reshape(-1, r.origins.shape[-1] if k != "cam_idx" else 1)
                                            for r in rs])) for k in ("origins", "directions", "cam_idx")]

    o_true, d_true, _ = rays_of(c2w_true)
    target = _plane_colour(o_true, d_true)
    o, d, cam = rays_of(c2w_start)
    cam = cam[:, 0]

    precond = jnp.asarray(pose_refine.pose_preconditioner(c2w_start))

    def loss(params):
        delta = pose_refine.pose_delta_of(params[cam], precond[cam], cfg)
        o2, d2, _ = pose_refine.apply_pose_delta(delta, o, d, d)
        return jnp.mean(jnp.square(_plane_colour(o2, d2) - target))

    tx = optax.adam(0.01)
    params = jnp.zeros((4, 6))
    opt = tx.init(params)

    @jax.jit
    def step(params, opt):
        g = jax.grad(loss)(params)
        upd, opt = tx.update(g, opt)
        return optax.apply_updates(params, upd), opt

    for _ in range(3500):
        params, opt = step(params, opt)
    refined = pose_refine.refined_c2w(c2w_start, np.asarray(pose_refine.pose_deltas(
        {"pose_delta": params, "pose_precondition": precond}, cfg), np.float64))
    err_before = rigid.pose_errors(c2w_start, c2w_true, align=False)
    err_after = rigid.pose_errors(refined, c2w_true, align=False)
    rot_before, rot_after = (np.max(e["rotation_deg"]) for e in (err_before, err_after))
    pos_before, pos_after = (np.max(e["position"]) for e in (err_before, err_after))
    assert rot_before > 0.5 and rot_after < rot_before / 10, (rot_before, rot_after)
    assert pos_after < pos_before / 10, (pos_before, pos_after)


def test_training_with_refinement_writes_the_refined_poses(tmp_path):
    from nerflib import datasets, train

    scene = datasets.toy_scene(tmp_path / "data", num_images=6)
    cfg = configs.get_preset("tiny", **{"model.refine_poses": True, "model.num_prop_samples": (8,),
                                        "model.num_nerf_samples": 8, "batch_size": 64, "max_steps": 6,
                                        "checkpoint_every": 6, "normalize": "360", "test_every": 3, "factor": 1})
    ds = datasets.load_for_config(cfg, scene, split="train")
    summary = train.train(cfg, ds, tmp_path / "model", progress=False, tb=False)
    out = json.loads((tmp_path / "model" / pose_refine.REFINED_POSES).read_text())
    assert [im["name"] for im in out["images"]] == ds.names and out["frame"] == "input"
    assert summary["pose_refinement"] == out["summary"] and out["summary"]["max_rotation_deg"] > 0
    # In the input frame: an image's refined pose is close to (not exactly) its input pose.
    given = {n: np.asarray(c) for n, c in zip(scene.names, scene.c2w)}
    for im in out["images"]:
        c2w = np.asarray(im["c2w"])
        assert np.allclose(c2w, given[im["name"]], atol=0.05) and not np.array_equal(c2w, given[im["name"]])


# ---------------------------------------------------------------- appearance codes


def test_appearance_codes_are_per_image_and_zero_for_unseen_views():
    """GLO: rays of image i reach only row i of the code table; held-out views use a zero code."""
    cfg = models.model_tiny(num_glo_features=4, num_prop_samples=(8,), num_nerf_samples=8)
    model = models.make_model(cfg, num_images=5)
    params = models.init_variables(model, jax.random.PRNGKey(0))["params"]
    params = {**params, "glo": {"embedding": jax.random.normal(jax.random.PRNGKey(1), (5, 4))}}
    rays = models.dummy_rays(cfg, 6)
    rays = rays.replace(directions=rays.directions + jnp.linspace(-0.3, 0.3, 6)[:, None] * jnp.array([1.0, 0, 0]))
    rays = rays.replace(viewdirs=rays.directions / jnp.linalg.norm(rays.directions, axis=-1, keepdims=True),
                        cam_idx=jnp.full((6, 1), 3, jnp.int32))

    @jax.jit
    def all_at_once(p):  # one compilation for the four renders
        def rgb(p, **kw):
            return model.apply({"params": p}, rays, rng=None, train_frac=1.0, **kw)[0][-1]["rgb"]

        zeroed = {**p, "glo": {"embedding": jnp.zeros((5, 4))}}
        grad = jax.grad(lambda q: rgb(q).sum())(p)["glo"]["embedding"]
        return grad, rgb(p), rgb(p, zero_glo=True), rgb(zeroed)

    g, with_codes, zero_glo, zeroed = (np.asarray(a) for a in all_at_once(params))
    assert np.abs(g[3]).sum() > 0 and np.all(g[[0, 1, 2, 4]] == 0)
    np.testing.assert_allclose(zero_glo, zeroed, atol=1e-6)
    assert not np.allclose(with_codes, zeroed, atol=1e-4)

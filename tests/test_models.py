"""nerflib.models and nerflib.losses: configs, shapes, gradients, overfitting.

Compilation dominates on CPU, so the tiny model's jitted functions are
built once per module and shared by the tests.
"""

import dataclasses
import functools
import json
import math
import sys
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nerflib import losses, models, sample_packing
from nerflib import math as nmath
from nerflib.types import Rays

H = W = 16  # the overfitting image.


def pinhole_rays(cfg, height, width, focal):
    """Rays of a camera at the origin looking down +z (nerflib conventions)."""
    yy, xx = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
    dirs = np.stack([(xx - width / 2) / focal, (yy - height / 2) / focal, np.ones_like(xx)], -1).reshape(-1, 3)
    n = len(dirs)
    return Rays(
        origins=jnp.zeros((n, 3), jnp.float32),
        directions=jnp.asarray(dirs, jnp.float32),
        viewdirs=jnp.asarray(dirs / np.linalg.norm(dirs, axis=-1, keepdims=True), jnp.float32),
        radii=jnp.full((n, 1), 2 / np.sqrt(12) / focal, jnp.float32),  # mip-NeRF's pixel footprint.
        near=jnp.full((n, 1), cfg.near, jnp.float32),
        far=jnp.full((n, 1), cfg.far, jnp.float32),
        cam_idx=jnp.zeros((n, 1), jnp.int32),
    )


def smooth_texture(height, width, seed=0):
    """A random but smooth RGB image in [0.05, 0.95]: a texture on the plane z = 1."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.arange(height) / height, np.arange(width) / width, indexing="ij")
    img = np.zeros((height, width, 3))
    for c in range(3):
        for _ in range(3):
            kx, ky = rng.uniform(-2, 2, 2)
            img[..., c] += np.sin(2 * np.pi * (kx * xx + ky * yy) + rng.uniform(0, 2 * np.pi))
    return jnp.asarray((0.5 + 0.12 * img).clip(0.05, 0.95).reshape(-1, 3), jnp.float32)


@pytest.fixture(scope="module")
def tiny():
    """The tiny preset on a 16x16 image, with two jitted functions shared by the tests.

    `init_and_render(key)`: initial variables and a deterministic (rng=None)
    rendering with extras; `loss_and_grad(variables, key, train_frac)`: the
    training objective with jittered sampling and its gradient.
    """
    cfg = models.model_tiny()
    model = models.make_model(cfg, num_images=1)
    rays = pinhole_rays(cfg, H, W, focal=1.2 * W)
    image = smooth_texture(H, W)

    @jax.jit
    def init_and_render(key):
        # One forward pass both initialises and renders (one compilation).
        output, variables = model.init_with_output(key, rays, rng=None, train_frac=1.0, compute_extras=True)
        return variables, output

    def loss_fn(variables, key, train_frac):
        renderings, history = model.apply(variables, rays, rng=key, train_frac=train_frac)
        return losses.total_loss(renderings, history, image, cfg)

    params, (rend, hist) = init_and_render(jax.random.PRNGKey(0))
    return types.SimpleNamespace(
        cfg=cfg, model=model, rays=rays, image=image, params=params, rend=rend, hist=hist,
        init_and_render=init_and_render, loss_and_grad=jax.jit(jax.value_and_grad(loss_fn, has_aux=True)),
    )


# ----------------------------------------------------------------------------
# Config.
# ----------------------------------------------------------------------------


def test_presets_and_validation():
    ref = models.model_mipnerf360()
    # The published mip-NeRF 360 sampling and network sizes.
    assert (ref.num_prop_samples, ref.num_nerf_samples, ref.num_levels) == ((64, 64), 32, 3)
    assert (ref.prop_net_depth, ref.prop_net_width, ref.nerf_net_depth, ref.nerf_net_width) == (4, 256, 8, 1024)
    assert (ref.interlevel_loss_mult, ref.distortion_loss_mult, ref.raydist_fn) == (1.0, 0.01, "reciprocal")
    tiny = models.model_tiny(num_glo_features=8)
    assert tiny.num_glo_features == 8 and tiny.num_levels == 2
    # JSON round trip (tuples become lists and back).
    again = models.config_from_dict(json.loads(json.dumps(dataclasses.asdict(tiny))))
    assert again == tiny and hash(again) == hash(tiny)
    bad = [
        dict(num_levels=4),  # (64, 64) proposals need 3 levels
        dict(field="voxels"),
        dict(background="pink"),
        dict(near=0.0),
        dict(raydist_fn="cubic"),
        dict(num_nerf_samples=1),
        dict(max_deg_point=-1),
    ]
    for kw in bad:
        with pytest.raises(ValueError, match=repr(list(kw.values())[0]).strip("'")):
            models.model_mipnerf360(**kw)
    with pytest.raises(ValueError, match="0"):
        models.make_model(tiny, num_images=0)
    with pytest.raises(ValueError, match="bogus"):
        models.config_from_dict({"bogus": 1})


def test_background_options():
    key = jax.random.PRNGKey(0)
    np.testing.assert_array_equal(models.background_rgb("white", key, (2,)), np.ones((2, 3)))
    np.testing.assert_array_equal(models.background_rgb("black", key, (2,)), np.zeros((2, 3)))
    np.testing.assert_array_equal(models.background_rgb("random", None, (2,)), np.full((2, 3), 0.5))
    rnd = np.asarray(models.background_rgb("random", key, (64,)))
    assert rnd.min() >= 0 and rnd.max() <= 1 and rnd.std() > 0.2


# ----------------------------------------------------------------------------
# Shapes (both presets).
# ----------------------------------------------------------------------------


def batch_rays(cfg, shape):
    n = int(np.prod(shape))
    return jax.tree_util.tree_map(lambda x: x.reshape(shape + x.shape[1:]), models.dummy_rays(cfg, n))


def test_mipnerf360_preset_output_shapes_with_batch_dims():
    # Shapes only (jax.eval_shape traces without compiling: the full model
    # takes ~10 s to compile on CPU); the tiny preset below runs for real.
    cfg = models.model_mipnerf360(num_glo_features=4)
    model = models.make_model(cfg, num_images=3)
    rays = batch_rays(cfg, (2, 3))

    def run(key):
        variables = model.init(key, rays, rng=None, train_frac=1.0)
        return variables, model.apply(variables, rays, rng=key, train_frac=0.3, compute_extras=True)

    variables, (rend, hist) = jax.eval_shape(run, jax.random.PRNGKey(0))
    params = variables["params"]
    assert params["glo"]["embedding"].shape == (3, 4)
    assert set(params) == {"glo", "prop_field", "nerf_field"}  # one proposal MLP for both rounds.
    assert params["nerf_field"]["Dense_0"]["kernel"].shape == (2 * 21 * 12, 1024)  # IPE: 21 dirs x 12 degrees.
    assert params["prop_field"]["Dense_0"]["kernel"].shape == (2 * 21 * 12, 256)
    assert len(rend) == len(hist) == 3
    for r, n in zip(hist, (64, 64, 32)):
        assert r["sdist"].shape == r["tdist"].shape == (2, 3, n + 1)
        assert r["weights"].shape == (2, 3, n)
    for r in rend:
        assert r["rgb"].shape == (2, 3, 3) and r["depth"].shape == (2, 3) and r["acc"].shape == (2, 3)
        assert r["distance_median"].shape == (2, 3)


def test_tiny_preset_shapes_ray_history_and_determinism(tiny):
    rend, hist = tiny.rend, tiny.hist
    n = H * W
    assert [h["weights"].shape for h in hist] == [(n, 32), (n, 16)]
    assert [h["sdist"].shape for h in hist] == [(n, 33), (n, 17)]
    for r in rend:
        assert r["rgb"].shape == (n, 3) and r["depth"].shape == (n,) and r["acc"].shape == (n,)
        assert r["distance_percentile_95"].shape == (n,)
    for h in hist:
        s, t, w = (np.asarray(h[k]) for k in ("sdist", "tdist", "weights"))
        assert np.all(np.diff(s, axis=-1) >= 0) and s.min() >= 0 and s.max() <= 1
        assert np.all(t >= tiny.cfg.near * (1 - 1e-5)) and np.all(t <= tiny.cfg.far * (1 + 1e-5))
        assert np.all(w >= 0) and np.all(w.sum(-1) <= 1 + 1e-5)
        assert all(np.all(np.isfinite(np.asarray(x))) for x in (s, t, w))
    np.testing.assert_allclose(rend[-1]["acc"], 1.0, atol=1e-5)  # opaque background.
    # rng=None: the first round splits [0, 1] evenly (interval centres of a
    # flat distribution), identically for every ray and every call.
    np.testing.assert_allclose(hist[0]["sdist"], np.broadcast_to(np.linspace(0, 1, 33), (n, 33)), atol=1e-6)
    _, (rend2, hist2) = tiny.init_and_render(jax.random.PRNGKey(0))
    jax.tree_util.tree_map(np.testing.assert_array_equal, (rend, hist), (rend2, hist2))


def test_hashgrid_hook_and_glo(monkeypatch):
    class FakeHashEncoding(nn.Module):
        num_features: int = 4

        @nn.compact
        def __call__(self, x01):
            table = self.param("table", nn.initializers.normal(), (3, self.num_features))
            return x01 @ table

    monkeypatch.setitem(sys.modules, "nerflib.hashgrid", types.SimpleNamespace(HashEncoding=FakeHashEncoding))
    cfg = models.model_tiny(field="hashgrid", hashgrid_options=(("num_features", 5),), num_glo_features=2)
    model = models.make_model(cfg, num_images=7)
    rays = models.dummy_rays(cfg, 4)
    variables = jax.eval_shape(lambda k: models.init_variables(model, k, num_rays=4), jax.random.PRNGKey(0))
    params = variables["params"]
    for field in ("prop_field", "nerf_field"):
        assert params[field]["hash_encoding"]["table"].shape == (3, 5)
        assert params[field]["Dense_0"]["kernel"].shape[0] == 5  # hash features feed the MLP.
    assert params["glo"]["embedding"].shape == (7, 2)
    out = jax.eval_shape(lambda v: model.apply(v, rays, rng=None, train_frac=1.0, zero_glo=True)[0][-1], variables)
    assert out["rgb"].shape == (4, 3)


def test_hashgrid_field_with_the_real_module():
    hashgrid = pytest.importorskip("nerflib.hashgrid")
    opts = (("num_levels", 4), ("features_per_level", 2), ("log2_table_size", 10), ("max_resolution", 64))
    cfg = models.model_tiny(field="hashgrid", hashgrid_options=opts, share_proposal_field=False)
    model = models.make_model(cfg, num_images=1)
    rays = models.dummy_rays(cfg, 4)

    def run(key):
        out, variables = model.init_with_output(key, rays, rng=key, train_frac=0.5)
        return variables, out

    variables, (rend, _) = jax.eval_shape(run, jax.random.PRNGKey(0))
    assert isinstance(hashgrid.HashEncoding, type)
    for field in ("prop_field_0", "nerf_field"):
        assert variables["params"][field]["hash_encoding"]["tables"].shape == (4, 1024, 2)
        assert variables["params"][field]["Dense_0"]["kernel"].shape[0] == 8
    assert rend[-1]["rgb"].shape == (4, 3)


@pytest.mark.parametrize("shared", [True, False])
def test_proposal_fields_can_have_their_own_smaller_grid(shared):
    pytest.importorskip("nerflib.hashgrid")
    opts = (("num_levels", 4), ("features_per_level", 2), ("log2_table_size", 10), ("max_resolution", 64))
    small = (("num_levels", 2), ("features_per_level", 2), ("log2_table_size", 8), ("max_resolution", 16))
    cfg = models.model_tiny(field="hashgrid", hashgrid_options=opts, prop_hashgrid_options=list(small),
                            share_proposal_field=shared)
    assert cfg.prop_hashgrid_options == small  # stored as a hashable tuple
    model = models.make_model(cfg, num_images=1)
    rays = models.dummy_rays(cfg, 4)
    variables = jax.eval_shape(lambda k: model.init(k, rays, rng=k, train_frac=0.5), jax.random.PRNGKey(0))
    params = variables["params"]
    assert params["nerf_field"]["hash_encoding"]["tables"].shape == (4, 1024, 2)
    props = [k for k in params if k.startswith("prop_field")]
    assert props and all(params[k]["hash_encoding"]["tables"].shape == (2, 256, 2) for k in props)
    assert all(params[k]["Dense_0"]["kernel"].shape[0] == 4 for k in props)


def test_bfloat16_hidden_layers_keep_parameters_and_heads_in_float32():
    """mlp_dtype='bfloat16' (the fast preset's): same parameter tree, all float32; outputs within
    bfloat16 rounding of the float32 model's. (Training through it: test_hashgrid's fast-preset test.)"""
    opts = (("num_levels", 4), ("features_per_level", 2), ("log2_table_size", 10), ("max_resolution", 64))
    base = models.model_tiny(field="hashgrid", hashgrid_options=opts)
    half = models.model_tiny(field="hashgrid", hashgrid_options=opts + (("dtype", "bfloat16"),),
                             mlp_dtype="bfloat16")
    rays = models.dummy_rays(base, 16)
    key = jax.random.PRNGKey(3)
    m32, m16 = models.make_model(base, num_images=1), models.make_model(half, num_images=1)
    variables = jax.jit(lambda k: m32.init(k, rays, rng=k, train_frac=0.5))(key)  # eager init is slow
    v16 = jax.eval_shape(lambda k: m16.init(k, rays, rng=k, train_frac=0.5), key)
    assert jax.tree.structure(variables) == jax.tree.structure(v16)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(v16))
    # Larger tables than the init range so that the features matter.
    variables = jax.tree.map(lambda x: x * 1e3 if x.ndim == 3 else x, variables)

    @functools.partial(jax.jit, static_argnums=0)
    def render(model, v):
        return model.apply(v, rays, rng=None, train_frac=1.0)[0][-1]

    a, b = render(m32, variables), render(m16, variables)
    assert b["rgb"].dtype == jnp.float32
    np.testing.assert_allclose(b["rgb"], a["rgb"], atol=2e-2)
    assert float(jnp.max(jnp.abs(b["rgb"] - a["rgb"]))) > 0  # the bfloat16 path really ran
    with pytest.raises(ValueError, match="mlp_dtype"):
        models.model_tiny(mlp_dtype="float16")


def test_hashgrid_without_module_fails_clearly(monkeypatch):
    monkeypatch.setitem(sys.modules, "nerflib.hashgrid", None)  # makes the import fail.
    model = models.make_model(models.model_tiny(field="hashgrid"), num_images=1)
    with pytest.raises(ValueError, match="hashgrid"):
        jax.eval_shape(lambda k: models.init_variables(model, k), jax.random.PRNGKey(0))


# ----------------------------------------------------------------------------
# Gradients and training.
# ----------------------------------------------------------------------------


def test_gradients_are_finite_and_reach_every_field(tiny):
    for train_frac in (0.0, 0.5):  # 0.0: annealing exponent 0 (flat resampling).
        (loss, stats), grads = tiny.loss_and_grad(tiny.params, jax.random.PRNGKey(1), train_frac)
        assert np.isfinite(float(loss))
        leaves = jax.tree_util.tree_leaves(grads)
        assert all(np.all(np.isfinite(g)) for g in leaves)
        for field in ("prop_field", "nerf_field"):
            sq = sum(float(jnp.sum(g * g)) for g in jax.tree_util.tree_leaves(grads["params"][field]))
            assert sq > 0, field
        assert set(stats) >= {"data", "interlevel", "distortion", "mse", "psnr"}
    # The sampling really is random with a key, and reproducible per key.
    (l1, _), _ = tiny.loss_and_grad(tiny.params, jax.random.PRNGKey(2), 0.5)
    (l2, _), _ = tiny.loss_and_grad(tiny.params, jax.random.PRNGKey(2), 0.5)
    (l3, _), _ = tiny.loss_and_grad(tiny.params, jax.random.PRNGKey(3), 0.5)
    assert float(l1) == float(l2) and float(l1) != float(l3)


def test_grad_on_every_differentiates_only_every_mth_entry():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(12, 3)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 2)), jnp.float32)

    def fn(w, x):
        return (jnp.tanh(x @ w), x[:, :1] * 2.0)  # a pytree of outputs

    def loss(w, m):
        out = sample_packing.grad_on_every(m, functools.partial(fn, w), x)
        return jnp.sum(out[0] ** 2) + jnp.sum(out[1])

    np.testing.assert_allclose(sample_packing.grad_on_every(3, functools.partial(fn, w), x)[0], fn(w, x)[0], rtol=1e-6)
    for m in (2, 3):
        want = jax.grad(lambda w: jnp.sum(fn(w, x[::m])[0] ** 2))(w)  # only rays 0, m, 2m, ...
        np.testing.assert_allclose(jax.grad(loss)(w, m), want, rtol=1e-5, atol=1e-6)
    # A leading axis that m does not divide is differentiated whole.
    np.testing.assert_allclose(jax.grad(loss)(w, 5), jax.grad(lambda w: jnp.sum(fn(w, x)[0] ** 2))(w), rtol=1e-5)


def test_prop_grad_fraction_changes_only_the_proposal_gradient(tiny):
    half = dataclasses.replace(tiny.cfg, prop_grad_fraction=0.5)
    model = models.make_model(half, num_images=1)

    @jax.jit
    def loss_and_grad(variables, key):
        def loss_fn(v):
            renderings, history = model.apply(v, tiny.rays, rng=key, train_frac=0.5)
            return losses.total_loss(renderings, history, tiny.image, half)
        return jax.value_and_grad(loss_fn, has_aux=True)(variables)

    key = jax.random.PRNGKey(4)
    (l1, _), g1 = tiny.loss_and_grad(tiny.params, key, 0.5)
    (l2, _), g2 = loss_and_grad(tiny.params, key)
    np.testing.assert_allclose(float(l2), float(l1), rtol=1e-5)  # the same forward pass
    for a, b in zip(jax.tree.leaves(g1["params"]["nerf_field"]), jax.tree.leaves(g2["params"]["nerf_field"])):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-7)
    p1, p2 = (jnp.concatenate([x.ravel() for x in jax.tree.leaves(g["params"]["prop_field"])]) for g in (g1, g2))
    assert float(jnp.linalg.norm(p2)) > 0 and float(jnp.linalg.norm(p2 - p1)) > 1e-3 * float(jnp.linalg.norm(p1))
    for bad in (0.0, 0.3, 1.5):
        with pytest.raises(ValueError, match="prop_grad_fraction"):
            dataclasses.replace(tiny.cfg, prop_grad_fraction=bad)


# ----------------------------------------------------------------------------
# Empty-space skipping.
# ----------------------------------------------------------------------------


def _analytic_field(means, covs, viewdirs, glo_vec):
    """A closed-form stand-in for a Field: density |x|^2 + 0.1, colour sigmoid(x + d)."""
    return jnp.sum(means**2, axis=-1) + 0.1, jax.nn.sigmoid(means + viewdirs[..., None, :])


@settings(max_examples=6, deadline=None)  # eager and a compilation per shape: ~3.5 s an example on 2 cores
@given(st.sampled_from([8, 16, 24, 12]), st.sampled_from([4, 8]), st.floats(0.05, 1.0), st.floats(0.05, 0.95),
       st.integers(0, 2**31 - 1))
def test_skip_empty_evaluates_exactly_the_live_samples_of_the_rays_that_fit(num_rays, n, budget, threshold, seed):
    """Against a numpy reference of the rule: live = bound >= threshold; in each group of rays, rays
    are kept in order while their live samples fit the budget; the field's values land where they belong."""
    cfg = dataclasses.replace(models.model_tiny(), skip_threshold=threshold, sample_budget=budget)
    rng = np.random.default_rng(seed)
    bound = rng.uniform(0, 1, (num_rays, n)).astype(np.float32)
    means = jnp.asarray(rng.normal(size=(num_rays, n, 3)), jnp.float32)
    covs = jnp.zeros((num_rays, n, 3, 3), jnp.float32)
    viewdirs = jnp.asarray(rng.normal(size=(num_rays, 3)), jnp.float32)
    full_density, full_rgb = (np.asarray(a) for a in _analytic_field(means, covs, viewdirs, None))

    groups = math.lcm(8, jax.device_count())
    groups = groups if num_rays % groups == 0 else 1
    size = num_rays // groups * n
    slots = min(size, math.ceil(math.ceil(budget * size) / 8) * 8)
    live = bound >= threshold
    fits = (np.cumsum(live.sum(-1).reshape(groups, -1), axis=-1) <= slots).reshape(num_rays)
    packed_live = live & fits[:, None]

    for pack, want_live, want_fits in ((True, packed_live, fits), (False, live, np.ones(num_rays, bool))):
        density, rgb, got_live, got_fits = sample_packing.skip_empty(_analytic_field, cfg, jnp.asarray(bound), means, covs,
                                                              viewdirs, None, pack=pack)
        np.testing.assert_array_equal(got_fits, want_fits if budget < 1 else np.ones(num_rays, bool))
        np.testing.assert_array_equal(got_live, want_live if budget < 1 else live)
        keep = np.asarray(got_live)
        np.testing.assert_allclose(density, np.where(keep, full_density, 0.0), rtol=1e-6)
        np.testing.assert_allclose(rgb, np.where(keep[..., None], full_rgb, 0.0), rtol=1e-6)
    # Gradients flow back through the packing to the live samples only (d|x|^2/dx = 2x).
    grad = jax.grad(lambda m: jnp.sum(sample_packing.skip_empty(_analytic_field, cfg, jnp.asarray(bound), m, covs, viewdirs,
                                                         None, pack=True)[0]))(means)
    evaluated = packed_live if budget < 1 else live
    np.testing.assert_allclose(grad, np.where(evaluated[..., None], 2 * np.asarray(means), 0.0), rtol=1e-5)


def test_skipping_in_the_model_packs_without_changing_the_result(tiny):
    """The tiny model with skipping: packing (a budget every batch fits) gives the unpacked pass's loss
    and gradients; a budget too small leaves whole rays out of the loss; validation of the options."""
    masked = dataclasses.replace(tiny.cfg, skip_threshold=0.08)

    def loss_and_grad(cfg):
        model = models.make_model(cfg, num_images=1)

        def loss_fn(v):
            renderings, history = model.apply(v, tiny.rays, rng=jax.random.PRNGKey(5), train_frac=0.5)
            return losses.total_loss(renderings, history, tiny.image, cfg)

        return jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(tiny.params)

    (l0, s0), g0 = loss_and_grad(masked)
    assert 0.2 < float(s0["live"]) < 0.95 and float(s0["fits"]) == 1.0  # some samples skipped, no ray left out
    (l1, s1), g1 = loss_and_grad(dataclasses.replace(masked, sample_budget=min(1.0, float(s0["live"]) + 0.15)))
    assert float(s1["fits"]) == 1.0
    np.testing.assert_allclose(float(l1), float(l0), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-7)
    (_, s2), _ = loss_and_grad(dataclasses.replace(masked, sample_budget=float(s0["live"]) / 2))
    assert 0 < float(s2["fits"]) < 0.75 and float(s2["live"]) <= float(s0["live"]) / 2 + 0.02
    # Rendering (no rng) evaluates every sample and skips the same ones, whatever the budget.
    def render(cfg):
        model = models.make_model(cfg, num_images=1)
        return jax.jit(lambda v: model.apply(v, tiny.rays, rng=None, train_frac=1.0))(tiny.params)

    r_small, h_small = render(dataclasses.replace(masked, sample_budget=0.1))
    r_all, _ = render(masked)
    np.testing.assert_array_equal(r_small[-1]["rgb"], r_all[-1]["rgb"])
    assert bool(h_small[-1]["fits"].all()) and not bool(h_small[-1]["live"].all())
    for name, bad in (("skip_threshold", -1.0), ("sample_budget", 0.0), ("sample_budget", 1.5),
                      ("prop_sparsity_mult", -0.1)):
        with pytest.raises(ValueError, match=name):
            dataclasses.replace(tiny.cfg, **{name: bad})


def test_tiny_model_overfits_one_image(tiny):
    """A minimal optax loop: the tiny preset must memorise a 16x16 texture.

    Evaluated with jittered sampling on fresh keys (what a deterministic
    render would see is one particular placement of the same samples).
    """
    steps = 80
    schedule = lambda s: nmath.learning_rate_decay(s, lr_init=1e-2, lr_final=3e-3, max_steps=steps)
    opt = optax.adam(schedule)
    update = jax.jit(lambda g, st, p: opt.update(g, st, p))
    params, state = tiny.params, opt.init(tiny.params)
    key = jax.random.PRNGKey(42)
    for step in range(steps):
        _, grads = tiny.loss_and_grad(params, jax.random.fold_in(key, step), step / steps)
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
    baseline = float(nmath.psnr_from_mse(jnp.mean((tiny.image - tiny.image.mean(0)) ** 2)))
    for k in (1000, 1001):
        (_, stats), _ = tiny.loss_and_grad(params, jax.random.PRNGKey(k), 1.0)
        assert float(stats["psnr"]) > 30.0, (float(stats["psnr"]), baseline)


# ----------------------------------------------------------------------------
# Losses.
# ----------------------------------------------------------------------------


def test_data_losses_match_numpy():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(size=(5, 3)), rng.uniform(size=(5, 3))
    np.testing.assert_allclose(losses.data_loss(a, b, kind="mse"), np.mean((a - b) ** 2), rtol=1e-6)
    np.testing.assert_allclose(losses.data_loss(a, b, kind="charbonnier", charb_padding=0.01),
                               np.mean(np.sqrt((a - b) ** 2 + 1e-4)), rtol=1e-6)
    with pytest.raises(ValueError, match="l1"):
        losses.data_loss(a, b, kind="l1")


def test_interlevel_and_distortion_losses():
    t = jnp.linspace(0.0, 1.0, 9)[None]
    w = jnp.array([[0.0, 0.1, 0.5, 0.3, 0.1, 0.0, 0.0, 0.0]])
    t_prop = jnp.linspace(0.0, 1.0, 5)[None]
    history = [{"sdist": t_prop, "weights": jnp.array([[0.1, 0.8, 0.1, 0.0]])}, {"sdist": t, "weights": w}]
    # This proposal bounds the final weights (0.1 >= 0.0 + 0.1, 0.8 >= 0.5 + 0.3, ...): no loss.
    assert float(losses.interlevel_loss(history, mult=1.0)) < 1e-9
    # A proposal that misses the peak is penalised, and only the proposal gets gradients.
    def inter(wp, wf):
        h = [{"sdist": t_prop, "weights": wp}, {"sdist": t, "weights": wf}]
        return losses.interlevel_loss(h, mult=2.0)
    bad = jnp.array([[0.7, 0.1, 0.1, 0.1]])
    expect = 2.0 * np.mean(np.maximum(0, np.asarray(w) - [[0.7, 0.7, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]]) ** 2
                           / (np.asarray(w) + 1.2e-7))
    np.testing.assert_allclose(inter(bad, w), expect, rtol=1e-4)
    g_prop, g_final = jax.jit(jax.grad(inter, argnums=(0, 1)))(bad, w)
    assert float(jnp.abs(g_prop).sum()) > 0 and float(jnp.abs(g_final).sum()) == 0
    np.testing.assert_allclose(losses.distortion_loss(history, mult=0.5),
                               0.5 * float(jnp.mean(losses.stepfun.lossfun_distortion(t, w))), rtol=1e-6)


def test_losses_over_the_rays_in_the_mask_equal_losses_of_those_rays_alone():
    """Empty-space skipping leaves rays out of the loss: with a 'fits' mask every term is the loss of the kept
    rays alone; the proposal sparsity term is the proposals' weight before their last interval."""
    rng = np.random.default_rng(7)
    rays, n_prop, n = 6, 5, 7

    def history(idx):
        def rnd(k):
            t = np.sort(rng.uniform(0, 1, (rays, k + 1)), axis=-1)
            w = rng.uniform(0, 1, (rays, k))
            return jnp.asarray(t, jnp.float32), jnp.asarray(w / w.sum(-1, keepdims=True) * 0.9, jnp.float32)
        (tp, wp), (tf, wf) = rnd(n_prop), rnd(n)
        return tp, wp, tf, wf

    tp, wp, tf, wf = history(None)
    rgb = jnp.asarray(rng.uniform(0, 1, (rays, 3)), jnp.float32)
    gt = jnp.asarray(rng.uniform(0, 1, (rays, 3)), jnp.float32)
    fits = np.array([True, False, True, True, False, True])
    cfg = dataclasses.replace(models.model_tiny(), prop_sparsity_mult=0.3)

    def total(sel, with_mask):
        hist = [{"sdist": tp[sel], "weights": wp[sel]}, {"sdist": tf[sel], "weights": wf[sel]}]
        if with_mask:
            hist[-1].update(live=jnp.ones((int(np.sum(np.ones(rays)[sel])), n), bool), fits=jnp.asarray(fits))
        return losses.total_loss([{"rgb": rgb[sel]}], hist, gt[sel], cfg)

    (loss_m, stats_m), (loss_s, stats_s) = total(slice(None), True), total(fits, False)
    np.testing.assert_allclose(float(loss_m), float(loss_s), rtol=1e-5)
    for k in ("data", "interlevel", "distortion", "mse", "prop_sparsity"):
        np.testing.assert_allclose(float(stats_m[k]), float(stats_s[k]), rtol=1e-5, err_msg=k)
    assert float(stats_m["fits"]) == pytest.approx(4 / 6)
    np.testing.assert_allclose(float(stats_s["prop_sparsity"]), 0.3 * np.mean(np.asarray(wp)[fits][:, :-1].sum(-1)),
                               rtol=1e-5)

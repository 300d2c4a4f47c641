"""The tiled field (nerflib.tiled, issue #26): K tiles rendered as segments equal the same fields
rendered as one sequence per ray, and K == 1 is the plain models.NerfModel (same rendering and loss; the
gradients are those of the same computation, checked against the untiled sequence for K == 4).

References: tiled.untiled_reference (each tile's field on its own intervals, all tiles'
intervals of a ray in one sequence with zero-density gaps, then render / stepfun on the
whole sequence) and models.NerfModel with the same parameters. Colour, opacity, depth,
per-round weights, interlevel and distortion losses and the gradients of the total loss
agree in float32.

The numerical checks run in one subprocess (this file is its script) with XLA's CPU backend
optimisations off (helpers.tiled.FAST_XLA): it compiles these graphs about 3x faster, and the checks
compare two computations of the same build.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers.tiled import layout, noisy_params, random_rays, run_script, small_cfg

from nerflib import losses, models, tiled

HERE = Path(__file__).resolve()


def check_tiled_render_equals_the_untiled_sequence_with_gradients():
    model = tiled.TiledModel(small_cfg(), layout(4))
    params = noisy_params(model, 3)
    rays = random_rays(1)
    jitter = model.draw_jitter(jax.random.PRNGKey(7), 32)
    gt = jnp.asarray(np.random.default_rng(2).uniform(size=(32, 3)), jnp.float32)

    def tiled_loss(params):
        out, hist = model.render(params, rays, jitter=jitter, train_frac=0.5)
        return model.loss(out, gt)[0], (out, hist)

    def ref_loss(params, hist):
        ref = tiled.untiled_reference(model, params, rays, hist)
        cfg = model.cfg
        data = losses.data_loss(ref["rgb"], gt, kind=cfg.data_loss_type, charb_padding=cfg.charb_padding)
        total = (data + cfg.interlevel_loss_mult * jnp.mean(ref["interlevel"])
                 + cfg.distortion_loss_mult * jnp.mean(ref["distortion"]))
        return total, ref

    (loss, (out, hist)), grad = jax.jit(jax.value_and_grad(tiled_loss, has_aux=True))(params)
    (loss_ref, ref), grad_ref = jax.jit(jax.value_and_grad(ref_loss, has_aux=True))(params, hist)
    assert 0.05 < float(jnp.mean(out["acc"])) < 0.97  # a field with something to composite
    for key in ("rgb", "acc", "depth", "distortion"):
        np.testing.assert_allclose(out[key], ref[key], rtol=2e-4, atol=2e-5, err_msg=key)
    np.testing.assert_allclose(jnp.sum(out["interlevel"], -1) / model.k, ref["interlevel"], rtol=2e-4, atol=1e-6)
    for level, (h, w) in enumerate(zip(hist, ref["weights"])):
        np.testing.assert_allclose(h["weights"], w, rtol=2e-4, atol=2e-6, err_msg=f"weights of round {level}")
    np.testing.assert_allclose(loss, loss_ref, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(grad_ref)):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-6 * float(jnp.max(jnp.abs(b))) + 1e-9)
    assert float(jnp.max(jnp.abs(grad["prop_field"]["hash_encoding"]["tables"]))) > 0  # interlevel reaches them


def check_one_tile_is_the_plain_model():
    cfg = small_cfg()
    model = tiled.TiledModel(cfg, tiled.whole_space_layout())
    params = noisy_params(model, 5)
    rays = random_rays(3)
    gt = jnp.asarray(np.random.default_rng(4).uniform(size=(32, 3)), jnp.float32)
    plain = models.make_model(cfg, num_images=1)
    one = jax.tree.map(lambda x: x[0], params)
    plain_shapes = jax.eval_shape(lambda: models.init_variables(plain, jax.random.PRNGKey(0))["params"])
    assert jax.tree.structure(one) == jax.tree.structure(plain_shapes)

    def tiled_loss(params):
        out, hist = model.render(params, rays, train_frac=0.7)
        return model.loss(out, gt)[0], (out, hist)

    def plain_loss(one):
        renderings, history = plain.apply({"params": one}, rays, rng=None, train_frac=0.7)
        return losses.total_loss(renderings, history, gt, cfg)[0], (renderings, history)

    loss, (out, hist) = jax.jit(tiled_loss)(params)
    loss_p, (rend, hist_p) = jax.jit(plain_loss)(one)
    for key in ("rgb", "acc", "depth"):
        np.testing.assert_allclose(out[key], rend[-1][key], rtol=2e-4, atol=2e-5, err_msg=key)
    for h, hp in zip(hist, hist_p):
        np.testing.assert_allclose(h["sdist"][:, 0], hp["sdist"], atol=1e-6)
        np.testing.assert_allclose(h["weights"][:, 0], hp["weights"], rtol=2e-4, atol=2e-6)
    np.testing.assert_allclose(loss, loss_p, rtol=1e-5)  # data, interlevel and distortion


def _percentiles_reference(tdist, weights, acc, far, ps):
    """Naive float64 loop: every tile's intervals of a ray sorted by start, the missing mass on [t_last, far],
    each percentile interpolated linearly inside the interval where the cumulative weight reaches it."""
    out = np.zeros((len(acc), len(ps)))
    for r in range(len(acc)):
        iv = sorted((t[i], t[i + 1], wk[i]) for t, wk in zip(tdist[r], weights[r]) for i in range(len(wk)))
        iv.append((max(b for _, b, _ in iv), far[r, 0], max(0.0, 1.0 - acc[r])))
        for j, p in enumerate(ps):
            u, cum = p / 100.0, 0.0
            for a, b, w in iv:
                if w > 0 and cum + w >= u:
                    out[r, j] = a + (b - a) * (u - cum) / w
                    break
                cum += w
            else:
                out[r, j] = iv[-1][1]
    return out


def check_distance_percentiles_over_tiles():
    """The ply export's termination-distance percentiles of a tiled render: K == 4 against the naive loop,
    K == 1 against models.NerfModel's compute_extras."""
    from nerflib import render
    from nerflib.tiled import pipeline

    model = tiled.TiledModel(small_cfg(), layout(4))
    params = noisy_params(model, 1)
    rays = random_rays(2)
    out, hist = jax.jit(lambda p: model.render(p, rays))(params)
    got = jax.jit(pipeline.distance_percentiles)(hist[-1]["tdist"], hist[-1]["weights"], out["acc"], rays.far)
    ref = _percentiles_reference(*(np.asarray(x, np.float64) for x in (hist[-1]["tdist"], hist[-1]["weights"],
                                                                          out["acc"], rays.far)),
                                 render.DISTANCE_PERCENTILES)
    names = ("distance_percentile_5", "distance_median", "distance_percentile_95")
    for j, name in enumerate(names):
        np.testing.assert_allclose(got[name], ref[:, j], rtol=1e-4, atol=1e-4, err_msg=name)
    assert np.ptp(ref[:, 1]) > 0.1  # rays ending at different depths
    cfg = small_cfg()
    one = tiled.TiledModel(cfg, tiled.whole_space_layout())
    params = noisy_params(one, 5)
    tiled_out = jax.jit(pipeline.ray_render(one, extras=True))(params, rays)
    plain = models.make_model(cfg, num_images=1)
    rend, _ = jax.jit(lambda p: plain.apply({"params": p}, rays, rng=None, train_frac=1.0, compute_extras=True))(
        jax.tree.map(lambda x: x[0], params))
    for name in names:
        np.testing.assert_allclose(tiled_out[name], rend[-1][name], rtol=2e-4, atol=2e-4, err_msg=name)


def test_layout_and_unsupported_options():
    pts = np.random.default_rng(0).normal(size=(1000, 3)) * [3.0, 1.0, 0.2]
    lay = tiled.layout_from_points(pts, 4)
    assert lay.k == 4 and np.all(np.isinf(lay.lo).sum(1) >= 2) and np.all(lay.c_lo < lay.c_hi)
    inside = [np.sum(np.all((pts >= lo) & (pts < hi), axis=1)) for lo, hi in zip(lay.lo, lay.hi)]
    assert sum(inside) == 1000 and max(inside) - min(inside) <= 2
    assert np.all(lay.c_lo >= -2) and np.all(lay.c_hi <= 2)
    with pytest.raises(ValueError, match="opaque_background"):
        tiled.TiledModel(small_cfg(opaque_background=True), lay)


CHECKS = (check_tiled_render_equals_the_untiled_sequence_with_gradients, check_one_tile_is_the_plain_model,
          check_distance_percentiles_over_tiles)


@functools.cache
def _checks_run() -> subprocess.CompletedProcess:
    return run_script(HERE)


@pytest.mark.parametrize("check", [c.__name__ for c in CHECKS])
def test_checks(check):
    proc = _checks_run()
    assert f"OK {check}" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-4000:]


if __name__ == "__main__":
    for fn in CHECKS:
        fn()
        print("OK", fn.__name__, flush=True)

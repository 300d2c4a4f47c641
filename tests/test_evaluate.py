"""Chunked full-image rendering and the evaluation outputs (metrics.tsv, side-by-side views)."""

from __future__ import annotations


import numpy as np
import pytest

from helpers.training import toy_config


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import jax

    from nerflib import datasets, evaluate, models, parallel

    root = tmp_path_factory.mktemp("eval")
    scene = datasets.toy_scene(root)
    test = datasets.load_dataset(scene, split="test", test_every=4, normalize=None)
    cfg = toy_config(render_chunk_size=64)
    model = models.make_model(cfg.model, num_images=test.num_train_images)
    params = jax.jit(lambda key: models.init_variables(model, key)["params"])(jax.random.PRNGKey(0))
    mesh = parallel.make_mesh()
    fn = evaluate.make_render_fn(model, mesh)
    return root, cfg, test, model, params, mesh, fn


def test_render_image_chunks_and_padding(setup):
    from nerflib import evaluate

    _, cfg, test, model, params, mesh, fn = setup
    rays = test.rays(0)  # [12, 16]: 192 rays = 3 chunks of 64
    full = evaluate.render_image(model, params, rays, chunk_size=64, mesh=mesh, render_fn=fn)
    assert full["rgb"].shape == (12, 16, 3) and full["depth"].shape == (12, 16) and full["acc"].shape == (12, 16)
    assert np.all(np.isfinite(full["rgb"]))
    # a 5x7 crop (35 rays: one padded chunk) renders the same pixels: the padding never leaks
    import jax

    crop = jax.tree_util.tree_map(lambda x: x[3:8, 2:9], rays)
    part = evaluate.render_image(model, params, crop, chunk_size=64, mesh=mesh, render_fn=fn)
    np.testing.assert_allclose(part["rgb"], full["rgb"][3:8, 2:9], atol=1e-6)
    assert evaluate.chunk_size_for(100, 8) == 104


def test_evaluate_writes_metrics_and_views(setup):
    from nerflib import evaluate, metrics

    root, cfg, test, model, params, mesh, _ = setup
    out = root / "eval_out"
    res = evaluate.evaluate(cfg, test, params, out, mesh=mesh, log=lambda m: None)
    lines = (out / "metrics.tsv").read_text().splitlines()
    assert lines[0] == "name\tpsnr\tssim"
    assert [line.split("\t")[0] for line in lines[1:]] == ["000.png", "004.png", "mean"]
    values = np.array([[float(x) for x in line.split("\t")[1:]] for line in lines[1:]])
    np.testing.assert_allclose(values[-1], values[:-1].mean(0), atol=1e-3)
    assert res["psnr"] == pytest.approx(values[-1, 0], abs=1e-3)
    # the PSNR is that of the quantized render against the quantized ground truth
    name, rays, gt = next(test.iterate_views())
    rgb = evaluate.render_image(model, params, rays, chunk_size=64, mesh=mesh)["rgb"]  # cached render fn
    expect = float(metrics.psnr(metrics.quantize(rgb), metrics.quantize(gt)))
    assert values[0, 0] == pytest.approx(expect, abs=1e-3)
    from nerflib.images import load_image

    view = load_image(out / "views" / "000.png")
    assert view.shape == (12, 48, 3)
    np.testing.assert_allclose(view[:, :16], gt, atol=1 / 255 + 1e-6)  # left panel: ground truth
    assert not [p for p in out.rglob(".*")], "temp files left"


def test_side_by_side_layout():
    from nerflib import evaluate

    gt = np.zeros((2, 3, 3))
    render = np.full((2, 3, 3), 0.5)
    panel = evaluate.side_by_side(gt, render)
    assert panel.shape == (2, 9, 3) and panel.dtype == np.uint8
    assert panel[0, 0, 0] == 0 and panel[0, 3, 0] == 128 and panel[0, 6, 0] == 128

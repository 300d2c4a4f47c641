"""Localization against a tiled field (issue #26): the pose of a photo found through the tiled render.

One process on CPU (this file is its script, run by helpers.tiled.run_script): a random non-trivial
field of 2 tiles (helpers.tiled: noisy_params over a median-split layout, params with their
'tile_boxes' as a checkpoint holds them), the photo its own render (evaluate.ray_render, the one
render of either model kind) at a known pose, localize.localize started 3 deg and 0.05 off: the
rotation and translation errors fall by more than 10x and the photometric PSNR rises. (Before the
infinite faces of tiles.box_entry_exit were clamped, the gradient w.r.t. the ray directions was NaN,
and the rotation never moved.)
"""

from __future__ import annotations

import math
from pathlib import Path

from helpers.tiled import assert_script_prints

HERE = Path(__file__).resolve()


def _main() -> None:
    import jax
    import numpy as np
    from helpers.tiled import layout, noisy_params, small_cfg

    from nerflib import cameras as cam_lib
    from nerflib import evaluate, localize, rigid, tiled
    from nerflib.synthetic import look_at
    from nerflib.tiled.pipeline import BOXES
    from nerflib.types import Camera

    model = tiled.TiledModel(small_cfg(), layout(2))
    params = {**noisy_params(model, 0), BOXES: model.boxes()}
    w, h = 32, 24
    f = 0.5 * w / math.tan(math.radians(50.0) / 2)
    cam = Camera("PINHOLE", w, h, (f, f, w / 2, h / 2))
    truth = look_at(np.array([1.2, 0.9, 0.6]), np.zeros(3), roll=0.0)
    rays = cam_lib.generate_rays(cam, truth, near=0.05, far=50.0)
    photo = np.asarray(jax.jit(evaluate.ray_render(model))(params, rays)["rgb"], np.float32)
    assert photo.std() > 0.1, photo.std()  # a textured photo, not a blank one
    start = localize.perturb_pose(truth, np.random.default_rng(1), rot_deg=3.0, trans=0.05)
    res = localize.localize(model, params, None, [("q", photo, cam, start)], near=0.05, far=50.0, iters=60,
                            n_pixels=256, restarts=1, coarse_to_fine=(1,), progress=False, log=lambda m: None)[0]

    def errors(c2w):
        return rigid.rotation_error_deg(c2w[:, :3], truth[:, :3]), float(np.linalg.norm(c2w[:, 3] - truth[:, 3]))

    (rot0, trans0), (rot, trans) = errors(start), errors(res["c2w"])
    print(f"tiled localize: rot {rot0:.3f} -> {rot:.4f} deg, trans {trans0:.4f} -> {trans:.5f}, "
          f"psnr {res['psnr_start']:.1f} -> {res['psnr']:.1f}", flush=True)
    assert rot < rot0 / 10 and trans < trans0 / 10, (rot, trans)
    assert res["psnr"] > res["psnr_start"] + 10.0, res
    print("TILED LOCALIZE OK", flush=True)


def test_tiled_field_localizes_a_perturbed_view():
    assert_script_prints(HERE, "TILED LOCALIZE OK")


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(HERE.parent))
    _main()

"""Rendering along camera paths: frames, resumption, videos, path.json, agreement with evaluation.

The model is trained and rendered in one subprocess (this file is also its
script: `python tests/test_video.py driver OUT`), with test_train's fast-compile
XLA flags and private compilation cache; the tests then read what it wrote.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve()
from helpers.training import compile_cache, subprocess_env, toy_config

N_FRAMES = 6
FPS = 24
# Held-out views (test_every = 4 on the 8 toy images: 000 and 004) and a training view between them.
SPLINE_KEYS = ["000.png", "002.png", "004.png"]
PATH_FPS = 3  # the path file's two keyframes 1 s apart: 4 frames


# --------------------------------------------------------------------------- the subprocess side


def _driver(out: Path) -> None:
    import jax

    from nerflib import cameras as cam_lib
    from nerflib import checkpoint, datasets, evaluate, models, parallel, train, video
    from nerflib.types import Camera

    scene = datasets.toy_scene(out / "data")
    cfg = toy_config(normalize="360", test_every=4, max_steps=12, checkpoint_every=12)
    train.train(cfg, datasets.load_for_config(cfg, scene, split="train"), out / "model", progress=False, tb=False)
    scene_json, model_dir = out / "data" / "scene.json", out / "model"
    result: dict = {}

    # An orbit, then a restart after one frame's PNGs were lost.
    lines: list[str] = []
    first = video.render_path(model_dir, scene_json, out / "orbit", n_frames=N_FRAMES, fps=FPS, log=lines.append,
                              progress=False)
    result["orbit_first"] = {k: first[k] for k in ("rendered", "skipped", "n_frames", "depth_range")}
    lost = video.frame_paths(out / "orbit", 2, N_FRAMES)
    for p in lost.values():
        p.unlink()
    kept = {str(p): p.stat().st_mtime_ns for k in range(N_FRAMES) if k != 2
            for p in video.frame_paths(out / "orbit", k, N_FRAMES).values()}
    time.sleep(0.05)  # a rewrite would get a later mtime
    again = video.render_path(model_dir, scene_json, out / "orbit", n_frames=N_FRAMES, fps=FPS, log=lines.append,
                              progress=False)
    result["orbit_again"] = {k: again[k] for k in ("rendered", "skipped")}
    result["kept_mtimes"] = kept
    result["kept_mtimes_after"] = {p: Path(p).stat().st_mtime_ns for p in kept}
    # Another path into the same folder: the old frames are not reused.
    other = video.render_path(model_dir, scene_json, out / "orbit", n_frames=4, fps=FPS, log=lines.append,
                              progress=False, path_options={"radius_scale": 1.5})
    result["other"] = {k: other[k] for k in ("rendered", "skipped")}
    result["other_pngs"] = sorted(p.name for p in (out / "orbit" / "frames" / "color").iterdir())
    result["log"] = lines

    # The orbit again, for the tests of its files.
    video.render_path(model_dir, scene_json, out / "orbit", n_frames=N_FRAMES, fps=FPS, log=None, progress=False)

    # A spline through two held-out cameras, and the evaluation's render of those cameras.
    spline = video.render_path(model_dir, scene_json, out / "spline", path="spline", keyframes=SPLINE_KEYS,
                               n_frames=5, fps=FPS, log=None, progress=False)
    mesh = parallel.make_mesh()
    _, params, _ = checkpoint.restore_params(model_dir, mesh)
    test = datasets.load_for_config(cfg, scene, split="test")
    model = models.make_model(cfg.model, num_images=evaluate.num_images_of(params, test.num_train_images))
    arrays = {}
    for i, name in enumerate(test.names):
        k = int(np.argmin(np.abs(spline["c2w"] - test.c2w[i]).max(axis=(1, 2))))
        result[f"frame_of_{name}"] = k
        result[f"pose_error_{name}"] = float(np.abs(spline["c2w"][k] - test.c2w[i]).max())
        ev = evaluate.render_image(model, params, test.rays(i), chunk_size=cfg.render_chunk_size, mesh=mesh)
        rays = cam_lib.generate_rays(spline["camera"], spline["c2w"][k], near=spline["near"], far=spline["far"])
        direct = evaluate.render_image(model, params, rays, chunk_size=cfg.render_chunk_size, mesh=mesh)
        for key in ("rgb", "depth", "acc"):
            arrays[f"eval_{name}_{key}"] = ev[key]
            arrays[f"path_{name}_{key}"] = direct[key]
    # A two-keyframe path file (two toy cameras' poses in scene.json's frame, the field of view widening)
    # rendered through the step the rule runs, and the same path by hand.
    from nerflib import camera_path, steps

    keys = np.stack([scene.c2w[scene.names.index(n)] for n in ("001.png", "003.png")])
    camera_path.write_path(out / "flight.json", keys, [0.0, 1.0], fps=PATH_FPS, fov=[40.0, 60.0], width=20,
                           height=14)
    steps.render(scene_json, scene.image_dir, model_dir=model_dir, out_dir=out / "flight",
                 path=str(out / "flight.json"), n_frames=99, fps=99)
    # By hand: with two keyframes the spline is a straight line at constant speed and a slerp (Catmull-Rom
    # tangents p1 - p0, squad's inner rotations = the keyframes'); frames at 0, 1/3, 2/3, 1 s; the training
    # normalization x -> T x applied to centres and rotations.
    from nerflib import rigid

    t_mat = np.asarray(test.normalization["T"])
    scale = np.cbrt(np.linalg.det(t_mat[:3, :3]))
    omega = rigid.log_so3(keys[0, :, :3].T @ keys[1, :, :3])
    for k, h in enumerate(np.arange(PATH_FPS + 1) / PATH_FPS):
        rot = t_mat[:3, :3] / scale @ keys[0, :, :3] @ rigid.exp_so3(h * omega)
        centre = t_mat[:3, :3] @ ((1 - h) * keys[0, :, 3] + h * keys[1, :, 3]) + t_mat[:3, 3]
        f = 0.5 * 14 / np.tan(np.radians(40.0 + 20.0 * h) / 2)
        by_hand = cam_lib.generate_rays(Camera("PINHOLE", 20, 14, (f, f, 10.0, 7.0)),
                                        np.concatenate([rot, centre[:, None]], 1), near=spline["near"],
                                        far=spline["far"])
        r = evaluate.render_image(model, params, by_hand, chunk_size=cfg.render_chunk_size, mesh=mesh)
        for key in ("rgb", "depth", "acc"):
            arrays[f"flight_{k}_{key}"] = r[key]
    result["normalization_T_inv"] = test.normalization["T_inv"].tolist()
    result["original_c2w"] = {n: scene.c2w[scene.names.index(n)].tolist() for n in SPLINE_KEYS}
    result["devices"] = jax.device_count()
    np.savez(out / "renders.npz", **arrays)
    (out / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    {"driver": _driver}[sys.argv[1]](Path(sys.argv[2]))
    sys.exit(0)


# --------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("video_runs")
    proc = subprocess.run([sys.executable, str(HERE), "driver", str(out)],
                          env=subprocess_env(compile_cache(tmp_path_factory)), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, json.loads((out / "result.json").read_text())


def _read_video(path: Path):
    """(frames uint8 [N, H, W, 3], fps). Through imageio-ffmpeg: mediapy 1.2.7's reader passes
    `-vsync`, which the ffmpeg 9 binary of imageio-ffmpeg 0.8 no longer accepts."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    w, h = meta["size"]
    frames = [np.frombuffer(b, np.uint8).reshape(h, w, 3) for b in reader]
    return np.stack(frames), meta["fps"]


def test_frames_videos_and_path_json(runs):
    from nerflib import video

    out, result = runs
    root = out / "orbit"
    assert result["orbit_first"]["rendered"] == N_FRAMES and result["orbit_first"]["skipped"] == 0
    for k in range(N_FRAMES):
        files = video.frame_paths(root, k, N_FRAMES)
        assert files["color"].name == f"{k:04d}.png"
        color, depth, acc = (video.read_png(files[x]) for x in ("color", "depth", "acc"))
        assert color.shape == (12, 16, 3) and color.dtype == np.uint8
        assert depth.shape == (12, 16) and depth.dtype == np.uint16
        assert acc.shape == (12, 16) and acc.dtype == np.uint8
    for name in ("color", "depth", "acc"):
        frames, fps = _read_video(root / f"{name}.mp4")
        assert frames.shape == (N_FRAMES, 12, 16, 3), name
        assert fps == pytest.approx(FPS)
    # the colour video is the PNG frames up to H.264's loss
    frames, _ = _read_video(root / "color.mp4")
    pngs = np.stack([video.read_png(video.frame_paths(root, k, N_FRAMES)["color"]) for k in range(N_FRAMES)])
    assert np.abs(frames.astype(float) - pngs).mean() < 12
    meta = json.loads((root / "path.json").read_text())
    assert meta["n_frames"] == N_FRAMES and meta["fps"] == FPS and meta["path"] == "orbit"
    assert meta["camera"]["width"] == 16 and meta["camera"]["height"] == 12
    assert np.shape(meta["c2w"]) == (N_FRAMES, 3, 4)
    lo, hi = meta["depth_video_range"]
    assert 0 < lo < hi
    assert not [p for p in root.rglob(".*")], "temp files left"


def test_orbit_in_the_original_frame_circles_the_toy_scene(runs):
    """The toy cameras circle the origin at radius 2, height 0.5; path.json's c2w are in that frame."""
    from nerflib import rigid

    out, _ = runs
    meta = json.loads((out / "orbit" / "path.json").read_text())
    c2w = np.array(meta["c2w"])
    assert rigid.is_rotation(c2w[:, :, :3], tol=1e-9).all()
    centres = c2w[:, :, 3]
    # 6 of the 8 cameras trained (2 held out), all on the circle: the fitted ellipse is that circle
    np.testing.assert_allclose(np.linalg.norm(centres[:, :2], axis=-1), 2.0, atol=1e-6)
    np.testing.assert_allclose(centres[:, 2], 0.5, atol=1e-6)
    # every frame looks at the origin (the focus point)
    to_origin = -centres / np.linalg.norm(centres, axis=-1, keepdims=True)
    np.testing.assert_allclose(c2w[:, :, 2], to_origin, atol=1e-6)


def test_restart_renders_only_missing_frames(runs):
    out, result = runs
    assert result["orbit_again"] == {"rendered": 1, "skipped": N_FRAMES - 1}
    assert result["kept_mtimes_after"] == result["kept_mtimes"]
    assert any("1 to render, 5 already on disk" in line for line in result["log"])
    # a different path in the same folder renders everything and leaves no frame of the old one
    assert result["other"] == {"rendered": 4, "skipped": 0}
    assert result["other_pngs"] == ["0000.png", "0001.png", "0002.png", "0003.png"]
    assert any("of another path, camera or model" in line for line in result["log"])


def test_spline_frames_through_held_out_cameras_match_evaluation(runs):
    from nerflib import scene_io, video

    out, result = runs
    root = out / "spline"
    meta = json.loads((root / "path.json").read_text())
    assert meta["keyframes"] == SPLINE_KEYS and meta["n_frames"] == 5
    with np.load(out / "renders.npz") as z:
        arrays = {k: z[k] for k in z.files}
    for name in ("000.png", "004.png"):
        k = result[f"frame_of_{name}"]
        assert result[f"pose_error_{name}"] < 1e-6  # float32 poses of the dataset vs float64 of the path
        ev = {key: arrays[f"eval_{name}_{key}"] for key in ("rgb", "depth", "acc")}
        # the same camera rendered the evaluation's way and the path's way
        for key in ev:
            np.testing.assert_allclose(arrays[f"path_{name}_{key}"], ev[key], rtol=1e-4, atol=1e-5, err_msg=key)
        files = video.frame_paths(root, k, 5)
        color = video.read_png(files["color"]).astype(int)
        assert np.abs(color - video.to_uint8(ev["rgb"])).max() <= 1
        ref = meta["depth_png"]["ref"]
        np.testing.assert_allclose(video.decode_depth(video.read_png(files["depth"]), ref), ev["depth"], rtol=2e-3)
        assert np.abs(video.read_png(files["acc"]).astype(int) - video.to_uint8(ev["acc"])).max() <= 1
        # path.json's pose of that frame is the camera's pose in scene.json
        np.testing.assert_allclose(meta["c2w"][k], result["original_c2w"][name], atol=1e-6)
        np.testing.assert_allclose(
            scene_io.transform_poses(np.array(meta["c2w_model"][k]), result["normalization_T_inv"]),
            result["original_c2w"][name], atol=1e-6)


# --------------------------------------------------------------------------- helpers (no model)


def test_depth_encoding_round_trip():
    from nerflib import video

    t = np.array([[0.0, 0.2, 1.0, 5.0], [40.0, 1e3, np.inf, np.nan]])
    q = video.encode_depth(t, 0.2)
    assert q.dtype == np.uint16 and q[0, 0] == 65535 and q[1, 2] == 0 and q[1, 3] == 0
    back = video.decode_depth(q, 0.2)
    np.testing.assert_allclose(back[0, 1:], t[0, 1:], rtol=1e-3)
    # relative error bound (ref + t)^2 / (65535 ref t) / 2, up to float32 rounding
    bound = (0.2 + t[1, :2]) ** 2 / (65535 * 0.2 * t[1, :2]) / 2
    assert np.all(np.abs(back[1, :2] / t[1, :2] - 1) <= bound + 1e-6)
    assert back[0, 0] == 0 and np.isinf(back[1, 2])


def test_path_file_renders_the_flight_drawn_by_hand(runs):
    """A two-keyframe path file through steps.render (what rule render runs for a sheet's path file)
    gives the frames of the same flight computed and rendered by hand."""
    from nerflib import video

    out, _ = runs
    root = out / "flight"
    meta = json.loads((root / "path.json").read_text())
    assert meta["path"] == "file" and meta["n_frames"] == PATH_FPS + 1 and meta["fps"] == PATH_FPS
    assert meta["path_file"] == str(out / "flight.json") and len(meta["cameras"]) == PATH_FPS + 1
    assert meta["camera"]["width"] == 20 and meta["camera"]["height"] == 14
    np.testing.assert_allclose(np.array(meta["c2w"])[[0, -1]], [json.loads((out / "flight.json").read_text())
                                                              ["keyframes"][i]["c2w"] for i in (0, 1)], atol=1e-9)
    with np.load(out / "renders.npz") as z:
        for k in range(PATH_FPS + 1):
            files = video.frame_paths(root, k, PATH_FPS + 1)
            color = video.read_png(files["color"]).astype(int)
            assert color.shape == (14, 20, 3)
            assert np.abs(color - np.rint(np.clip(z[f"flight_{k}_rgb"], 0, 1) * 255)).max() <= 1
            depth = video.decode_depth(video.read_png(files["depth"]), meta["depth_png"]["ref"])
            np.testing.assert_allclose(depth, z[f"flight_{k}_depth"], rtol=2e-4)
    frames, fps = _read_video(root / "color.mp4")
    assert frames.shape == (PATH_FPS + 1, 14, 20, 3) and fps == pytest.approx(PATH_FPS)


def test_weighted_percentile_matches_repetition():
    from nerflib import video

    rng = np.random.default_rng(0)
    values = rng.normal(size=50)
    counts = rng.integers(1, 5, size=50)
    repeated = np.repeat(values, counts)
    for q in (5.0, 50.0, 95.0):
        got = video.weighted_percentile(values, counts.astype(float), q)
        # integer weights = repeated samples; both interpolate, so they agree within one sample gap
        expect = np.percentile(repeated, q)
        gap = np.diff(np.sort(values)).max()
        assert abs(got - expect) <= gap
    assert video.weighted_percentile([3.0, 1.0, 2.0], [0.0, 1.0, 0.0], 50.0) == pytest.approx(1.0)


def test_depth_colors_and_even_padding():
    import cv2

    from nerflib import video

    depth = np.array([[1.0, 2.0, 4.0]])
    acc = np.array([[1.0, 1.0, 0.0]])
    rgb = video.depth_colors(depth, acc, 1.0, 4.0)
    turbo = cv2.applyColorMap(np.array([[255, 0]], np.uint8), cv2.COLORMAP_TURBO)[0, :, ::-1]
    np.testing.assert_array_equal(rgb[0, 0], turbo[0])  # near: top of the map (red)
    np.testing.assert_array_equal(rgb[0, 2], [255, 255, 255])  # transparent: white
    padded = video._pad_even(np.arange(15, dtype=np.uint8).reshape(3, 5))
    assert padded.shape == (4, 6)
    np.testing.assert_array_equal(padded[3, :5], padded[2, :5])


def test_frames_of_another_model_at_the_same_step_are_not_reused():
    """The frame cache is keyed on the parameters' digest, not only the step."""
    from nerflib import video
    from nerflib.types import Camera

    params = {"a": {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, "b": np.ones(4, np.float32)}
    retrained = {"a": {"w": params["a"]["w"] + 1e-6}, "b": params["b"]}
    d0 = video.params_digest(params)
    assert d0 == video.params_digest({"b": params["b"].copy(), "a": {"w": params["a"]["w"].copy()}})
    assert d0 != video.params_digest(retrained)
    assert d0 != video.params_digest({"a": {"w": params["a"]["w"].reshape(3, 2)}, "b": params["b"]})
    camera = Camera("PINHOLE", 8, 6, (8.0, 8.0, 4.0, 3.0))
    c2w = np.eye(4)[None, :3].repeat(3, 0)
    meta = video._frames_meta(c2w, camera, 0.1, 5.0, 0.1, 100, d0)
    assert video._same_meta(meta, video._frames_meta(c2w, camera, 0.1, 5.0, 0.1, 100, d0))
    assert not video._same_meta(meta, video._frames_meta(c2w, camera, 0.1, 5.0, 0.1, 100,
                                                         video.params_digest(retrained)))
    assert not video._same_meta({k: v for k, v in meta.items() if k != "model_digest"}, meta)  # an old cache

"""Render a trained model along a camera path: frames, videos and the path itself.

`render_path` writes under out_dir (results/{scene}/render/ in the workflow; docs/architecture.md):
  frames/color/NNNN.png   uint8 RGB, the rendered colour clipped to [0, 1].
  frames/depth/NNNN.png   uint16 gray, the expected ray depth t (along the
                          optical axis) encoded losslessly enough for
                          visualisation: q = round(65535 ref / (ref + t)),
                          t = ref (65535 / q - 1) (`encode_depth`/`decode_depth`;
                          ref = the ray near bound, or 1 when that is 0).
  frames/acc/NNNN.png     uint8 gray, the accumulated opacity.
  frames/meta.json        what the frames were rendered from (path, camera,
                          bounds, checkpoint step): frames of another path or
                          model are deleted, not reused.
  color.mp4, depth.mp4, acc.mp4   H.264 (mediapy), `fps` frames per second;
                          depth as turbo-coloured inverse depth between robust
                          bounds (the 0.5 and 99.5 percentiles of all frames'
                          depths weighted by opacity), matted onto white by
                          opacity. Odd image sizes are padded by one edge row /
                          column (yuv420p needs even sizes; most players need yuv420p).
  path.json               the path in the scene's original frame (scene.json's:
                          the training normalization inverted) and in the model's,
                          the camera (`cameras`: one per frame when a path file
                          varies the field of view), fps, n_frames, bounds, depth encoding.

`path` is a kind (orbit, spiral, spline through training images) or a camera
path file (nerflib.camera_path: our keyframe JSON or nerfstudio's camera_path.json,
poses in the scene's original frame).

Each frame's three PNGs are written atomically as soon as it is rendered, so
a killed job restarted with the same arguments renders only the missing
frames; videos and path.json are (re)written at the end, atomically. All
processes of a multi-process run must call `render_path` together (each frame
is rendered over all devices); only process 0 writes.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Iterator

import jax
import numpy as np

from nerflib import camera_path as camera_path_lib
from nerflib import cameras as cam_lib
from nerflib import checkpoint, configs, datasets, evaluate, fileio, parallel, paths, scene_io
from nerflib.logs import progress_bar
from nerflib.types import Camera

KINDS = ("color", "depth", "acc")
DEPTH_LEVELS = 65535
# Depth percentiles (weighted by opacity) that bound the depth video's colour map.
DEPTH_PERCENTILES = (0.5, 99.5)
# At most this many depth samples (strided over all frames) for those percentiles.
_MAX_DEPTH_SAMPLES = 2_000_000


# --------------------------------------------------------------------------- frame encodings


def encode_depth(depth: np.ndarray, ref: float) -> np.ndarray:
    """Depth t >= 0 [H, W] -> uint16 q = round(65535 ref / (ref + t)); t = 0 -> 65535, t = inf -> 0.

    Relative precision ~ (ref + t)^2 / (65535 ref t): 1e-4 at t = ref, 1.5% at t = 1000 ref.
    """
    if not ref > 0:
        raise ValueError(f"ref must be positive, got {ref!r}")
    t = np.nan_to_num(np.asarray(depth, dtype=np.float64), nan=np.inf, posinf=np.inf)
    t = np.maximum(t, 0.0)
    return np.rint(DEPTH_LEVELS * ref / (ref + t)).astype(np.uint16)


def decode_depth(q: np.ndarray, ref: float) -> np.ndarray:
    """Inverse of `encode_depth`: uint16 [H, W] -> float32 depth (q = 0 -> inf)."""
    q = np.asarray(q, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return (ref * (DEPTH_LEVELS / q - 1.0)).astype(np.float32)


def to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(np.asarray(x, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)


def read_png(path: str | os.PathLike) -> np.ndarray:
    """An 8/16-bit PNG as written by fileio.write_image (RGB order, gray stays 2-D)."""
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError(f"cannot read image {path}")
    return image[..., ::-1] if image.ndim == 3 else image


def weighted_percentile(values: np.ndarray, weights: np.ndarray, q) -> np.ndarray:
    """Percentiles q (0..100) of `values` weighted by `weights` (both [...] flattened; weights >= 0)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    order = np.argsort(v, kind="stable")
    v, w = v[order], w[order]
    cw = np.cumsum(w)
    if not cw[-1] > 0:
        raise ValueError("weighted_percentile: the weights sum to 0")
    # Midpoint rule: value i sits at the centre of its weight's share of the total.
    at = (cw - 0.5 * w) / cw[-1] * 100.0
    return np.interp(np.asarray(q, dtype=np.float64), at, v)


def depth_colors(depth: np.ndarray, acc: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """uint8 RGB [H, W, 3]: turbo colour of inverse depth (near lo -> red, far hi -> blue), matted on white by acc."""
    import cv2

    inv_lo, inv_hi = 1.0 / max(lo, 1e-12), 1.0 / max(hi, 1e-12)
    span = inv_lo - inv_hi
    with np.errstate(divide="ignore"):
        inv = 1.0 / np.maximum(np.asarray(depth, dtype=np.float64), 1e-12)
    x = np.clip((inv - inv_hi) / span, 0.0, 1.0) if span > 0 else np.full(np.shape(depth), 0.5)
    bgr = cv2.applyColorMap(to_uint8(x), cv2.COLORMAP_TURBO)
    rgb = bgr[..., ::-1].astype(np.float64) / 255.0
    a = np.clip(np.asarray(acc, dtype=np.float64), 0.0, 1.0)[..., None]
    return to_uint8(rgb * a + (1.0 - a))


def _pad_even(image: np.ndarray) -> np.ndarray:
    """Repeat the last row / column where the size is odd (H.264 yuv420p needs even sizes)."""
    h, w = image.shape[:2]
    pad = [(0, h % 2), (0, w % 2)] + [(0, 0)] * (image.ndim - 2)
    return np.pad(image, pad, mode="edge") if (h % 2 or w % 2) else image


def _ensure_ffmpeg() -> None:
    """Point mediapy at imageio-ffmpeg's binary when no `ffmpeg` is on PATH."""
    import mediapy

    if mediapy._search_for_ffmpeg_path():  # noqa: SLF001 (mediapy has no public "is it found" call)
        return
    try:
        import imageio_ffmpeg
    except ImportError:
        raise RuntimeError("writing videos needs ffmpeg: install it (apt install ffmpeg) "
                           "or pip install imageio-ffmpeg") from None
    mediapy.set_ffmpeg(imageio_ffmpeg.get_ffmpeg_exe())


def write_video(path: str | os.PathLike, frames: Iterator[np.ndarray], *, fps: float) -> None:
    """Frames (uint8 [H, W, 3] or [H, W]) -> an H.264 video, atomically (a temp name
    with the .mp4 suffix, which picks ffmpeg's muxer, then a rename)."""
    import mediapy

    _ensure_ffmpeg()
    with fileio.atomic_path(path) as tmp:
        mediapy.write_video(tmp, (_pad_even(f) for f in frames), fps=fps)


# --------------------------------------------------------------------------- the training frame


@dataclasses.dataclass
class TrainingFrame:
    """The scene as the model saw it: every image's pose in the training frame, sorted by name.

    c2w [N, 3, 4] float64 (normalized like training), names, train [T] (indices
    of the training images), cameras (full resolution), near/far, forward_facing,
    normalization (scene_io.normalize_scene's transform, or None).
    """

    names: list[str]
    c2w: np.ndarray
    train: np.ndarray
    cameras: list[Camera]
    near: float
    far: float
    forward_facing: bool
    normalization: dict | None
    dataset: datasets.Dataset

    def index(self, key) -> int:
        """An image's position: an int (among all images sorted by name) or an image name."""
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            if not -len(self.names) <= key < len(self.names):
                raise ValueError(f"keyframe {key} out of range: the scene has {len(self.names)} images")
            return int(key) % len(self.names)
        if key not in self.names:
            raise ValueError(f"keyframe {key!r} is not an image of the scene (e.g. {self.names[:3]})")
        return self.names.index(key)


def training_frame(cfg, scene_json, *, images=None) -> TrainingFrame:
    """Load scene.json normalized exactly as `steps.train` did (forward-facing scenes as 'forward').

    images: the image folder at cfg.factor (only checked for existence, never
    read); None -> the scene's own layout (image_dir, or images_{factor} beside it).
    """
    scene = scene_io.read_scene_json(scene_json)
    cfg = configs.for_scene(cfg, scene)  # as steps.train did
    ds = datasets.load_for_config(cfg, scene, image_dir=images, split="all", lazy=True)
    norm = ds.scene
    where = {name: i for i, name in enumerate(norm.names)}
    order = [where[n] for n in ds.names]
    train = datasets.split_indices(len(ds), "train", cfg.test_every)
    return TrainingFrame(
        names=list(ds.names), c2w=np.asarray(norm.c2w[order], np.float64),
        train=train if len(train) else np.arange(len(ds)),
        cameras=[norm.camera_of(i) for i in order], near=ds.near, far=ds.far,
        forward_facing=bool(norm.forward_facing), normalization=ds.normalization, dataset=ds,
    )


def render_camera(camera: Camera, *, factor: int, pinhole: bool = True) -> Camera:
    """`camera` at `factor`; with `pinhole`, its focal lengths and principal point without lens distortion."""
    camera = cam_lib.scale_camera(camera, int(factor))
    if pinhole and camera.model != "PINHOLE":
        g = camera.param
        camera = Camera("PINHOLE", camera.width, camera.height, (g("fx"), g("fy"), g("cx"), g("cy")))
    return camera


def path_kind(frame: TrainingFrame, path: str) -> str:
    """'auto' -> 'spiral' for forward-facing captures, else 'orbit'; other kinds unchanged (checked);
    a path file (.json) -> 'file'."""
    if camera_path_lib.is_path_file(path):
        return "file"
    if path not in paths.KINDS:
        raise ValueError(f"path must be one of {paths.KINDS} or a path file (.json), got {path!r}")
    return ("spiral" if frame.forward_facing else "orbit") if path == "auto" else path


def build_path(frame: TrainingFrame, *, path: str = "auto", keyframes=(), n_frames: int, **options) -> np.ndarray:
    """The path [n_frames, 3, 4] in the training frame: orbit/spiral from the training
    cameras, spline through `keyframes` (image names, or indices among all images sorted by name)."""
    kind = path_kind(frame, path)
    if kind == "spline":
        idx = [frame.index(k) for k in keyframes]
        return paths.make_path("spline", frame.c2w, n_frames=n_frames, keyframes=idx, **options)
    if kind == "orbit" and "up" not in options:
        mode = (frame.normalization or {}).get("mode")
        options["up"] = None if mode == "360" else paths.camera_up(frame.c2w)
    return paths.make_path(kind, frame.c2w[frame.train], n_frames=n_frames, near=frame.near, far=frame.far,
                           **options)


# --------------------------------------------------------------------------- rendering


def frame_paths(out_dir: str | os.PathLike, k: int, n_frames: int) -> dict[str, Path]:
    """{'color', 'depth', 'acc'} -> out_dir/frames/<kind>/NNNN.png of frame k."""
    width = max(4, len(str(max(n_frames - 1, 0))))
    return {kind: Path(out_dir) / "frames" / kind / f"{k:0{width}d}.png" for kind in KINDS}


def _camera_dict(camera: Camera) -> dict:
    return {"model": camera.model, "width": camera.width, "height": camera.height,
            "params": [float(p) for p in camera.params]}


def params_digest(params) -> str:
    """SHA-256 of a parameter tree (names, shapes, dtypes, bytes): which model rendered a frame.

    The step alone does not say it: a retrained model (another config or
    data) usually ends at the same step.
    """
    import hashlib

    h = hashlib.sha256()
    for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(parallel.fetch(params))[0],
                             key=lambda kv: jax.tree_util.keystr(kv[0])):
        a = np.ascontiguousarray(leaf)
        h.update(f"{jax.tree_util.keystr(path)}:{a.dtype}:{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _frames_meta(c2w, camera, near, far, depth_ref, step, digest) -> dict:
    """camera: one Camera, or a list (one per frame, for path files)."""
    camera = [_camera_dict(c) for c in camera] if isinstance(camera, list) else _camera_dict(camera)
    return {"c2w": np.asarray(c2w).tolist(), "camera": camera, "near": float(near),
            "far": float(far), "depth_ref": float(depth_ref), "model_step": int(step), "model_digest": digest}


def _same_meta(a: dict, b: dict) -> bool:
    try:
        return (a["camera"] == b["camera"] and a["model_step"] == b["model_step"]
                and a["model_digest"] == b["model_digest"]
                and np.isclose(a["near"], b["near"]) and np.isclose(a["far"], b["far"])
                and np.isclose(a["depth_ref"], b["depth_ref"])
                and np.shape(a["c2w"]) == np.shape(b["c2w"])
                and np.allclose(a["c2w"], b["c2w"], rtol=0, atol=1e-9))
    except (KeyError, TypeError, ValueError):
        return False


def _prepare_frames(out_dir: Path, meta: dict, n_frames: int, log) -> np.ndarray:
    """Process 0: drop frames of another path/model; [n_frames] bool, True = still to render."""
    import json

    frames_dir = out_dir / "frames"
    meta_path = frames_dir / "meta.json"
    old = None
    if meta_path.is_file():
        try:
            old = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            old = None
    if frames_dir.is_dir() and (old is None or not _same_meta(old, meta)):
        stale = [p for kind in KINDS for p in (frames_dir / kind).glob("*.png")]
        if stale:
            log(f"render: {len(stale)} frame images of another path, camera or model in {frames_dir}: deleting them")
        for kind in KINDS:
            shutil.rmtree(frames_dir / kind, ignore_errors=True)
    fileio.write_json(meta_path, meta)
    return np.array([not all(p.is_file() for p in frame_paths(out_dir, k, n_frames).values())
                     for k in range(n_frames)])


def _agree(todo: np.ndarray) -> np.ndarray:
    """Process 0's frame list on every process (they must render the same frames together)."""
    if jax.process_count() == 1:
        return todo
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.broadcast_one_to_all(todo.astype(np.int32))).astype(bool)


def render_path(model_dir, scene_json, out_dir, *, images=None, path: str = "auto", keyframes=(),
                n_frames: int = 480, fps: float = 60, factor: int | None = None, chunk_size: int | None = None,
                pinhole: bool = True, path_options: dict | None = None, mesh=None,
                log: Callable[[str], None] | None = print, progress: bool = True) -> dict:
    """Render the trained model in model_dir along a camera path; see the module docstring for the outputs.

    scene_json: the scene the model was trained on (poses/scene.json);
      normalized here exactly as training did (`training_frame`).
    images: the training image folder at the training factor (existence check
      only, as training's loader does); None -> the scene's own layout.
    path: 'auto' (orbit for 360 captures, spiral for forward-facing), 'orbit',
      'spiral' or 'spline' (through `keyframes`: image names or indices among
      all images sorted by name; held-out images may be keyframes), or a camera
      path file (.json: nerflib.camera_path, ours or nerfstudio's camera_path.json),
      whose frames, frame size, fields of view and fps replace n_frames, fps and factor.
    factor: image downsampling of the first training camera (None: the training factor).
    chunk_size: rays per rendering call (None: the config's render_chunk_size).
    pinhole: drop lens distortion from the render camera (see `render_camera`).
    path_options: passed to the path function (paths.orbit_path etc.).
    Returns {'n_frames', 'rendered', 'skipped', 'c2w' [n, 3, 4] (training frame),
    'camera' (the first frame's), 'cameras' (one per frame), 'near', 'far', 'depth_range',
    'model_step', 'seconds'}.
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    main = jax.process_index() == 0
    log = log if (log is not None and main) else (lambda msg: None)
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    mesh = parallel.make_mesh() if mesh is None else mesh
    cfg, params, step = checkpoint.restore_params(model_dir, mesh)
    frame = training_frame(cfg, scene_json, images=images)
    kind, c2w, cameras, fps = _path_cameras(frame, cfg, path=path, keyframes=keyframes, n_frames=n_frames, fps=fps,
                                            factor=factor, pinhole=pinhole, path_options=path_options)
    camera = cameras[0]
    n_frames = len(c2w)
    varying = any(c != camera for c in cameras)
    near, far = frame.near, frame.far
    depth_ref = near if near > 0 else 1.0
    chunk = int(chunk_size or cfg.render_chunk_size)

    todo = np.ones(n_frames, bool)
    if main:
        todo = _prepare_frames(out_dir, _frames_meta(c2w, cameras if varying else camera, near, far, depth_ref, step,
                                                     params_digest(params)), n_frames, log)
    todo = _agree(todo)
    log(f"render: {n_frames} frames of {camera.width}x{camera.height} on the {kind} path "
        f"(model step {step}); {int(todo.sum())} to render, {n_frames - int(todo.sum())} already on disk")

    _render_frames(cfg, params, frame, c2w, cameras, todo, out_dir, near=near, far=far, depth_ref=depth_ref,
                   chunk=chunk, mesh=mesh, main=main, log=log, progress=progress)
    parallel.sync("render_path_frames")

    depth_range = [float("nan"), float("nan")]
    if main:
        depth_range = write_videos(out_dir, n_frames, fps=fps, depth_ref=depth_ref, log=log)
        fileio.write_json(out_dir / "path.json", _path_json(frame, kind, path, keyframes, c2w, cameras, fps=fps,
                                                             depth_ref=depth_ref, depth_range=depth_range, step=step))
    parallel.sync("render_path_done")
    seconds = time.perf_counter() - start
    log(f"render: done in {seconds:.1f} s -> {out_dir}")
    return {"n_frames": n_frames, "rendered": int(todo.sum()), "skipped": n_frames - int(todo.sum()),
            "c2w": c2w, "camera": camera, "cameras": cameras, "near": near, "far": far, "depth_range": depth_range,
            "model_step": step, "seconds": seconds}


def _path_json(frame, kind, path, keyframes, c2w, cameras, *, fps, depth_ref, depth_range, step) -> dict:
    """path.json: the rendered path's cameras in the scene's frame (c2w) and the model's (c2w_model)."""
    original = c2w if frame.normalization is None else scene_io.transform_poses(c2w, frame.normalization["T_inv"])
    varying = any(c != cameras[0] for c in cameras)
    return {
        "version": 1,
        "convention": "opencv_c2w",
        "path": kind,
        "path_file": str(path) if kind == "file" else None,
        "keyframes": [frame.names[frame.index(k)] for k in keyframes] if kind == "spline" else [],
        "n_frames": len(c2w),
        "fps": fps,
        "camera": _camera_dict(cameras[0]),
        "cameras": [_camera_dict(c) for c in cameras] if varying else None,
        "c2w": np.asarray(original).tolist(),
        "c2w_model": np.asarray(c2w).tolist(),
        "normalization": None if frame.normalization is None else frame.normalization["mode"],
        "near": frame.near,
        "far": frame.far,
        "depth_png": {"encoding": "q = round(65535 * ref / (ref + t))", "ref": depth_ref},
        "depth_video_range": depth_range,
        "model_step": step,
    }


def _path_cameras(frame, cfg, *, path, keyframes, n_frames, fps, factor, pinhole, path_options):
    """(path kind, c2w [n, 3, 4] in the training frame, one camera per frame, fps) of `render_path`."""
    kind = path_kind(frame, path)
    if len(keyframes) and kind != "spline":
        raise ValueError(f"keyframes {list(keyframes)} are only used by path='spline', not path={path!r}")
    camera = render_camera(frame.cameras[frame.train[0]], factor=cfg.factor if factor is None else factor,
                           pinhole=pinhole)
    if kind == "file":
        c2w, cameras, fps = camera_path_lib.render_frames(path, frame.normalization, camera)
        return kind, c2w, list(cameras), fps
    c2w = build_path(frame, path=kind, keyframes=keyframes, n_frames=int(n_frames), **dict(path_options or {}))
    return kind, c2w, [camera] * len(c2w), fps


def _render_frames(cfg, params, frame, c2w, cameras, todo, out_dir: Path, *, near, far, depth_ref, chunk, mesh,
                   main: bool, log, progress: bool) -> None:
    """Render the frames marked in `todo` into out_dir/frames/ (process 0 writes; every process renders)."""
    n_frames = len(c2w)
    model, fn = evaluate.field_of(cfg, params, mesh, num_images=frame.dataset.num_train_images)
    total = int(todo.sum())
    bar = progress_bar(total, desc="render", unit="frame", enabled=progress and main)
    every = max(1, total // 10)
    done = 0
    for k in np.flatnonzero(todo):
        rays = cam_lib.generate_rays(cameras[k], c2w[k], near=near, far=far)
        out = evaluate.render_image(model, params, rays, chunk_size=chunk, mesh=mesh, render_fn=fn)
        if main:
            files = frame_paths(out_dir, int(k), n_frames)
            fileio.write_image(files["color"], to_uint8(out["rgb"]))
            fileio.write_image(files["depth"], encode_depth(out["depth"], depth_ref))
            fileio.write_image(files["acc"], to_uint8(out["acc"]))
        done += 1
        if bar is not None:
            bar.update(1)
        if done % every == 0 or done == total:
            log(f"render: frame {k + 1}/{n_frames} ({done}/{total} this run)")
    if bar is not None:
        bar.close()


def write_videos(out_dir: str | os.PathLike, n_frames: int, *, fps: float, depth_ref: float,
                 log: Callable[[str], None] = print) -> list[float]:
    """color.mp4, depth.mp4, acc.mp4 from out_dir/frames/; returns the depth video's [near, far]."""
    out_dir = Path(out_dir)
    files = [frame_paths(out_dir, k, n_frames) for k in range(n_frames)]

    def frames(kind):
        for f in files:
            yield read_png(f[kind])

    write_video(out_dir / "color.mp4", frames("color"), fps=fps)
    write_video(out_dir / "acc.mp4", frames("acc"), fps=fps)

    # Robust bounds from a strided sample of every frame's depth, weighted by opacity.
    first = read_png(files[0]["depth"])
    stride = max(1, math.ceil(n_frames * first.size / _MAX_DEPTH_SAMPLES))
    values, weights = [], []
    for f in files:
        d = decode_depth(read_png(f["depth"]), depth_ref).reshape(-1)[::stride]
        a = read_png(f["acc"]).reshape(-1)[::stride].astype(np.float32) / 255.0
        ok = np.isfinite(d) & (a > 0)
        values.append(d[ok])
        weights.append(a[ok])
    values, weights = np.concatenate(values), np.concatenate(weights)
    if values.size and weights.sum() > 0:
        lo, hi = (float(x) for x in weighted_percentile(values, weights, DEPTH_PERCENTILES))
    else:  # nothing opaque rendered: any range shows the (white) frames
        lo, hi = 1.0, 2.0

    def depth_frames():
        for f in files:
            d = decode_depth(read_png(f["depth"]), depth_ref)
            a = read_png(f["acc"]).astype(np.float32) / 255.0
            yield depth_colors(d, a, lo, hi)

    write_video(out_dir / "depth.mp4", depth_frames(), fps=fps)
    log(f"render: videos written to {out_dir} ({n_frames} frames at {fps} fps, depth range {lo:.3g}..{hi:.3g})")
    return [lo, hi]

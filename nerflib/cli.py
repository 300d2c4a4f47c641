"""`nerf`: one console entry point with a subcommand per pipeline step.

Each subcommand calls the same `nerflib.steps` function as the Snakemake rule,
so any step can be run by hand when something goes wrong:

    nerf synthetic resources/synthetic/demo
    nerf poses resources/synthetic/demo/images results/demo --camera-model PINHOLE
    nerf vocab-tree /data/big/photos /shared/big_tree.bin   (no rule: for nerf poses ... --vocab-tree)
    nerf pyramid resources/synthetic/demo/images results/demo/images_4 --factor 4
    nerf train results/demo/poses/scene.json results/demo/images_4 results/demo/model --preset tiny --factor 4
    nerf eval results/demo/poses/scene.json results/demo/images_4 results/demo/model results/demo/eval
    nerf render results/demo/poses/scene.json results/demo/images_4 results/demo/model results/demo/render
    nerf export results/demo/poses/scene.json results/demo/export --model results/demo/model \
        --sparse results/demo/sparse/0
    nerf localize results/demo/poses/scene.json results/demo/images_4 results/demo/model \
        resources/synthetic/demo/queries results/demo/localize --sparse results/demo/sparse/0
    nerf intake ~/Videos/garden.mp4 results/garden/photos --fps 2   (video, HEIC or rotated photos -> upright photos)
    nerf doctor   (what this machine gives a run: JAX backend and GPUs, pycolmap, ffmpeg, disk, ...)
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from nerflib import configs, localize, pyramid, scene_io, settings, synthetic
from nerflib.layout import SceneLayout
from nerflib.matching import MATCHERS
from nerflib.sfm import MAPPERS
from nerflib.types import CAMERA_MODELS


def _results_images(model_dir: str, images: str | None) -> str | None:
    """`images`, else the pyramid level of the results layout (nerflib.layout) when MODEL_DIR is a
    scene's model folder and that level exists, else None (the scene's own image folder)."""
    if images:
        return images
    from nerflib import checkpoint

    scene = SceneLayout.containing(model_dir, "model")
    if scene is None:
        return None
    level = scene.images(checkpoint.load_config(model_dir).factor)
    return level if os.path.isdir(level) else None


def _beside(path: str, what: str, wanted: str) -> str:
    """The results layout's `wanted` (e.g. 'database') of the scene whose `what` is `path`, when it
    exists; '' otherwise (`path` is not in the layout, or the file is absent)."""
    scene = SceneLayout.containing(path, what) if path else None
    found = getattr(scene, wanted) if scene is not None else ""
    return found if found and os.path.exists(found) else ""


def _overrides(items: list[str]) -> dict:
    """`key=value` pairs; values parsed as JSON where possible (numbers, lists, booleans)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects key=value, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nerf", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log", help="append all output of the step to this file")
    sub = parser.add_subparsers(dest="step", required=True, metavar="STEP")
    _add_synthetic(sub)
    _add_poses(sub)
    _add_vocab_tree(sub)
    _add_pyramid(sub)
    _add_train(sub)
    _add_eval(sub)
    _add_render(sub)
    _add_export(sub)
    _add_intake(sub)
    _add_doctor(sub)
    _add_view(sub)
    _add_localize(sub)
    return parser


def _add_synthetic(sub) -> None:
    p = sub.add_parser("synthetic", help="write the procedural demo scene (photos + ground-truth poses)")
    synthetic.add_arguments(p)


def _add_poses(sub) -> None:
    p = sub.add_parser("poses", help="camera poses by structure-from-motion (pycolmap) or from an existing poses file")
    p.add_argument("images", help="folder of photos")
    p.add_argument("scene_dir", help="output folder: gets sparse/0/, poses/summary.json, poses/scene.json")
    p.add_argument("--camera-model", default="OPENCV", choices=list(CAMERA_MODELS))
    p.add_argument("--matcher", default="auto", choices=MATCHERS)
    p.add_argument("--poses", default="", help="existing poses instead of SfM")
    p.add_argument("--poses-format", default="auto", choices=scene_io.SHEET_FORMATS)
    p.add_argument("--per-image-cameras", action="store_true", help="one camera per photo instead of one shared camera")
    p.add_argument("--max-image-size", type=int, default=3200)
    p.add_argument("--min-registered-fraction", type=float, default=0.5)
    p.add_argument("--vocab-tree", default="", help="vocabulary tree file for --matcher vocab_tree (nerf vocab-tree)")
    p.add_argument("--sequential-overlap", type=int, default=10)
    p.add_argument("--strict", action="store_true",
                   help="fail when the pose diagnostics warn (docs/pose_diagnostics.md), not only warn")
    p.add_argument("--mapper", choices=MAPPERS, default="auto",
                   help="auto (incremental below 250 photos; from there global, then incremental when the "
                        "global model looks wrong; the log says why), incremental (COLMAP) or global (GLOMAP)")
    p.add_argument("--gpu", choices=["auto", "yes", "no"], default="auto",
                   help="SIFT extraction and matching on the GPU: auto = where pycolmap is a CUDA build "
                        "(pycolmap-cuda12) and a GPU is visible (config key sfm.gpu)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)


def _add_vocab_tree(sub) -> None:
    p = sub.add_parser(
        "vocab-tree",
        help="train a vocabulary tree (for --matcher vocab_tree) on the SIFT features of photos or a COLMAP database",
        description=(
            "Train a COLMAP vocabulary tree (faiss visual index) for image retrieval, the matcher for large "
            "captures (--matcher vocab_tree, or auto beyond 500 photos; config key sfm.vocab_tree). Train it on "
            "the capture itself or on a similar set of photos: SIFT is extracted as `nerf poses` does, or read "
            "from an existing COLMAP database.db. The file is written atomically and read back before it "
            "replaces TREE. Alternative: download one of COLMAP's published faiss-format trees."
        ),
    )
    p.add_argument("source", help="folder of photos, or a COLMAP database.db with SIFT features")
    p.add_argument("tree", help="output vocabulary tree file (e.g. vocab_tree.bin)")
    p.add_argument("--words", type=int, default=None,
                   help="visual words (default: a power of two near the training descriptors / 50, 16 to 65536)")
    p.add_argument("--max-descriptors", type=int, default=500_000,
                   help="train on a random sample of at most this many descriptors (default 500000: 8192 words)")
    p.add_argument("--iterations", type=int, default=25, help="k-means iterations (COLMAP's builder: 100)")
    p.add_argument("--rounds", type=int, default=1, help="k-means restarts, the best kept (COLMAP's builder: 3)")
    p.add_argument("--max-image-size", type=int, default=3200, help="photos: longest side for SIFT (as nerf poses)")
    p.add_argument("--max-features", type=int, default=8192, help="photos: SIFT features per photo (as nerf poses)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)


def _add_pyramid(sub) -> None:
    p = sub.add_parser("pyramid", help="downsampled copies of the photos (area interpolation)")
    p.add_argument("images")
    p.add_argument("out_dir")
    p.add_argument("--factor", type=int, required=True, choices=[f for f in pyramid.FACTORS if f > 1])
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a radiance field (resumes from the latest checkpoint)")
    p.add_argument("scene", help="poses/scene.json")
    p.add_argument("images", help="image folder at the training factor")
    p.add_argument("model_dir")
    p.add_argument("--preset", default=configs.AUTO, choices=list(configs.PRESET_CHOICES),
                   help=f"auto (default): {configs.AUTO_GPU_PRESET} where JAX finds a GPU, {configs.AUTO_CPU_PRESET} "
                        f"on a CPU; GPU presets ({', '.join(configs.GPU_PRESETS)}) stop on a CPU unless --allow-cpu")
    p.add_argument("--allow-cpu", action="store_true", help="train a GPU preset even where JAX runs on the CPU")
    p.add_argument("--factor", type=int, default=None, choices=pyramid.FACTORS,
                   help="the image folder's downscale factor (default: the preset's)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set max_steps=2000 (repeatable)")
    p.add_argument("--sparse", default="", help="the scene's COLMAP model (sparse/0): a tiled model (--set tiles=K) "
                                                "splits space at its points (default: at the camera centres)")


def train_argv(scene_json, images, *, model_dir, preset, factor=None, overrides=None, allow_cpu=False,
               sparse="") -> list[str]:
    """`nerf train` arguments for a `steps.train` call (the inverse of train_call: tests check both ways).

    How a launcher hands one train call to each of its tasks: command-line words are what every
    launcher (srun, mpirun) passes unchanged to every task on every node. Each override goes as
    `--set KEY=JSON`, which parses back to the same value.
    """
    argv = ["train", str(scene_json), str(images), str(model_dir), "--preset", str(preset)]
    if factor is not None:
        argv += ["--factor", str(int(factor))]
    for key, value in dict(overrides or {}).items():
        argv += ["--set", f"{key}={json.dumps(value)}"]
    if sparse:
        argv += ["--sparse", str(sparse)]
    return argv + (["--allow-cpu"] if allow_cpu else [])


def train_call(args: argparse.Namespace) -> dict:
    """The keyword arguments of `steps.train` for parsed `nerf train` arguments."""
    return {"scene_json": args.scene, "images": args.images, "model_dir": args.model_dir, "preset": args.preset,
            "factor": args.factor, "overrides": _overrides(args.overrides), "allow_cpu": args.allow_cpu,
            "sparse": args.sparse}


def command(argv: list[str], *, log: str | None = None) -> list[str]:
    """The words that run `nerf [--log LOG] ARGV` with this Python (no console script needed)."""
    return [sys.executable, "-m", "nerflib.cli", *(["--log", str(log)] if log else []), *argv]


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", aliases=["evaluate"],  # `evaluate`: the rule's name
                       help="PSNR/SSIM on the held-out views and side-by-side images (rule evaluate)")
    p.add_argument("scene")
    p.add_argument("images")
    p.add_argument("model_dir")
    p.add_argument("out_dir")


def _add_render(sub) -> None:
    p = sub.add_parser("render", help="videos (colour, depth, accumulation) along a camera path")
    p.add_argument("scene")
    p.add_argument("images")
    p.add_argument("model_dir")
    p.add_argument("out_dir")
    p.add_argument("--path", default="auto",
                   help="auto, orbit, spiral, spline (through --keyframes), or a camera path file (.json: ours or "
                        "nerfstudio's camera_path.json, poses in scene.json's frame; see nerflib/camera_path.py)")
    p.add_argument("--keyframes", default="", help="comma-separated image names (spline path)")
    p.add_argument("--frames", type=int, default=480)
    p.add_argument("--fps", type=int, default=60)
    p.add_argument("--factor", type=int, default=None, help="render at this factor instead of the training one")


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="point cloud (PLY), poses as transforms.json and COLMAP text, for other tools")
    p.add_argument("scene", help="poses/scene.json")
    p.add_argument("out_dir", help="gets points.ply, transforms.json, colmap/")
    p.add_argument("--what", default="ply,transforms,colmap", help="comma-separated: ply, transforms, colmap")
    p.add_argument("--model", default="", help="the trained model's folder (needed by ply)")
    p.add_argument("--images", default=None,
                   help="image folder at the training factor (default: images_{factor} beside the model, else the scene's)")
    p.add_argument("--sparse", default="", help="COLMAP model (sparse/0) to write as text (default: scene.json's poses)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a nerflib.export.PointCloudOptions field, e.g. --set stride=2 (repeatable)")


def _add_intake(sub) -> None:
    p = sub.add_parser("intake", help="a video, HEIC or EXIF-rotated photos -> a folder of upright photos (rule intake)")
    p.add_argument("source", help="a video file or a folder of photos")
    p.add_argument("out_dir", help="output folder of photos (replaced as a whole)")
    p.add_argument("--fps", type=float, default=2.0, help="video: frames taken per second of video")
    p.add_argument("--max-frames", type=int, default=0, help="video: at most this many frames (0 = all)")


def _add_doctor(sub) -> None:
    p = sub.add_parser("doctor", help="check this machine: JAX backend and GPUs, pycolmap, ffmpeg, disk, cache, SLURM")
    p.add_argument("--config", default="config/config.yaml", help="the workflow's config (its presets are checked)")
    p.add_argument("--results", default="results", help="where results go (free disk is checked there)")


def _add_view(sub) -> None:
    p = sub.add_parser("view", help="web viewer of a trained (or training) model (viser): http://HOST:PORT")
    p.add_argument("model_dir")
    p.add_argument("--scene", default="", help="poses/scene.json (default: the results layout's, beside MODEL_DIR)")
    p.add_argument("--images", default=None,
                   help="image folder at the training factor (default: images_{factor} beside the model, else the scene's)")
    p.add_argument("--sparse", default="", help="COLMAP model whose points are shown (default: the results layout's "
                                                "sparse/0 beside MODEL_DIR)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (0.0.0.0: every interface; default: this machine)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--max-size", type=int, default=512, help="longer side of the still frame (pixels)")
    p.add_argument("--preview-size", type=int, default=128, help="longer side of the frames while moving")
    p.add_argument("--path-out", default="camera_path.json", help="where Save path writes the keyframes")
    p.add_argument("--wait", type=float, default=0.0, help="seconds to wait for the first checkpoint")


def _add_localize(sub) -> None:
    p = sub.add_parser("localize", help="camera poses of new photos against the trained field")
    p.add_argument("scene")
    p.add_argument("images", help="image folder at the training factor")
    p.add_argument("model_dir")
    p.add_argument("queries", help="folder of photos to localize")
    p.add_argument("out_dir", help="gets poses.json, views/ (and errors.tsv with --gt-poses)")
    p.add_argument("--query-poses", default="", help="initial poses of the photos (any poses format)")
    p.add_argument("--sparse", default="", help="COLMAP model of the scene (sparse/0) for registration starts")
    p.add_argument("--database", default="", help="its database.db (default: the results layout's, beside sparse/, "
                                                  "else the features are extracted again)")
    p.add_argument("--gt-poses", default="", help="ground-truth poses of the photos -> errors.tsv")
    p.add_argument("--gt-reference", default="", help="training poses in the ground truth's frame (to align it)")
    settings.add_arguments(p, localize.workflow_settings())
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="another nerflib.localize.Options field, e.g. --set refine_focal=true (repeatable)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.step == "doctor":
        from nerflib import doctor

        return doctor.main(args.config, args.results)
    from nerflib import steps
    from nerflib.logs import log_to

    with log_to(args.log):
        if args.step == "synthetic":
            steps.synthetic_scene(args.out_dir, **settings.values(args, settings.declared(synthetic.DemoSettings)))
        elif args.step == "poses":
            steps.poses(args.images, scene_dir=args.scene_dir, camera_model=args.camera_model, matcher=args.matcher,
                        poses=args.poses, poses_format=args.poses_format, single_camera=not args.per_image_cameras,
                        max_image_size=args.max_image_size, min_registered_fraction=args.min_registered_fraction,
                        vocab_tree=args.vocab_tree, sequential_overlap=args.sequential_overlap, strict=args.strict,
                        mapper=args.mapper, gpu={"yes": True, "no": False}.get(args.gpu, args.gpu),
                        threads=args.threads)
        elif args.step == "vocab-tree":
            from nerflib import vocab_tree

            vocab_tree.build_vocab_tree(args.source, args.tree, num_visual_words=args.words,
                                        max_num_descriptors=args.max_descriptors, num_iterations=args.iterations,
                                        num_rounds=args.rounds, threads=args.threads,
                                        max_image_size=args.max_image_size, max_num_features=args.max_features,
                                        seed=args.seed)
        elif args.step == "pyramid":
            steps.pyramid(args.images, args.out_dir, factor=args.factor, threads=args.threads)
        elif args.step == "train":
            steps.train(**train_call(args))
        elif args.step in ("eval", "evaluate"):
            steps.evaluate(args.scene, args.images, model_dir=args.model_dir, out_dir=args.out_dir)
        elif args.step == "render":
            keyframes = [k for k in args.keyframes.split(",") if k]
            steps.render(args.scene, args.images, model_dir=args.model_dir, out_dir=args.out_dir, path=args.path,
                         keyframes=keyframes, n_frames=args.frames, fps=args.fps, factor=args.factor)
        elif args.step == "view":
            from nerflib import viewer

            sparse = args.sparse or _beside(args.model_dir, "model", "sparse")
            scene_json = args.scene or _beside(args.model_dir, "model", "scene_json")
            if not scene_json:
                raise SystemExit(f"nerf view: {args.model_dir} is not a results/{{scene}}/model folder; pass --scene")
            options = viewer.ViewerOptions(host=args.host, port=args.port, max_size=args.max_size,
                                           preview_size=args.preview_size, path_out=args.path_out, wait_s=args.wait)
            viewer.Viewer(args.model_dir, scene_json,
                          images=_results_images(args.model_dir, args.images), sparse_dir=sparse,
                          options=options).serve_forever()
        elif args.step == "export":
            steps.export(args.scene, out_dir=args.out_dir, what=[w for w in args.what.split(",") if w],
                         model_dir=args.model or None,
                         images=_results_images(args.model, args.images) if args.model else args.images,
                         sparse_dir=args.sparse or None,
                         options=_overrides(args.overrides))
        elif args.step == "intake":
            from nerflib import intake

            intake.prepare(args.source, args.out_dir, video_fps=args.fps, max_frames=args.max_frames)
        elif args.step == "localize":
            database = args.database or _beside(args.sparse, "sparse", "database")
            steps.localize(args.scene, args.images, model_dir=args.model_dir, queries=args.queries,
                           out_dir=args.out_dir, query_poses=args.query_poses, gt_poses=args.gt_poses,
                           gt_reference=args.gt_reference, sparse_dir=args.sparse, database=database,
                           options=_overrides(args.overrides),
                           **settings.values(args, localize.workflow_settings()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Frames per second of the viewer's render (nerflib.viewer.Viewer.render) of a trained model.

Renders `--frames` frames at each `--size` (longer side; aspect 1 = 512x512 as issue #25 asks)
along a small orbit around the first training camera's view (every frame a new pose, as when the
user drags), after `--warmup` frames (compilation), and prints frames/s and ms/frame per size.
The browser and the network are not in the figure: only what the viewer's render thread spends
per frame (rays, the field over all local devices, colour to uint8).

    python bench/viewer_fps.py results/demo/model results/demo/poses/scene.json \
        --images results/demo/images_4 --size 512 --size 128 --frames 30

Not run yet on a GPU (issue #25 wants the `fast` preset at 512x512 in bench/RESULTS.md). On 2 busy
CPU cores the demo's tiny model gives 0.9 frames/s at 128x128 and 0.23 at 256x256.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir")
    parser.add_argument("scene")
    parser.add_argument("--images", default=None)
    parser.add_argument("--size", type=int, action="append", help="longer side (repeatable; default 512)")
    parser.add_argument("--aspect", type=float, default=1.0, help="width / height (1: square frames)")
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--output", default="colour", choices=["colour", "depth", "accumulation"])
    parser.add_argument("--out", default="", help="also write the results as JSON here")
    args = parser.parse_args(argv)

    import jax

    from nerflib import rigid, viewer

    v = viewer.Viewer(args.model_dir, args.scene, images=args.images, log=lambda m: None)
    start = v.frame.c2w[v.frame.train[0]]
    cam = v.frame.cameras[v.frame.train[0]]
    fov = float(2 * np.arctan(0.5 * cam.height / cam.param("fy")))
    results = []
    for size in args.size or [512]:
        poses = []
        for k in range(args.warmup + args.frames):  # a small turn per frame about the camera's own up axis
            turn = rigid.exp_so3(np.array([0.0, 0.02 * k, 0.0]))
            poses.append(np.concatenate([start[:, :3] @ turn, start[:, 3:]], axis=1))
        for pose in poses[: args.warmup]:
            v.render(pose, fov, args.aspect, size, args.output)
        t0 = time.perf_counter()
        for pose in poses[args.warmup:]:
            v.render(pose, fov, args.aspect, size, args.output)  # returns numpy: synchronised
        seconds = time.perf_counter() - t0
        row = {"size": size, "aspect": args.aspect, "frames": args.frames, "fps": args.frames / seconds,
               "ms_per_frame": 1000 * seconds / args.frames, "model_step": v.step,
               "devices": [str(d) for d in jax.local_devices()]}
        results.append(row)
        print(f"{size} px (aspect {args.aspect}): {row['fps']:.2f} frames/s, {row['ms_per_frame']:.1f} ms/frame")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

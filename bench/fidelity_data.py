"""One capture, two readers: the same images, poses and split for our `mipnerf360` and the reference.

    python bench/fidelity_data.py .bench_data/bonsai /tmp/fidelity [--test-every 8]

Reads SRC/scene.json (+ SRC/images), normalizes it as our training does (scene_io.normalize_scene,
mode '360'), replaces the camera by a centred pinhole with one focal length (the mean of fx and fy;
distortion dropped: multinerf's Blender reader knows neither), and writes into DST:

- images/<stem>.png         RGBA, alpha 255 (the reference's Blender reader takes the 4th channel as alpha),
- scene.json                our reader's view of them (normalized already, so our normalization is the identity),
- transforms_{train,test}.json  the reference's Blender reader's view: OpenGL camera-to-world, camera_angle_x;
                            every `test_every`-th photo in name order held out (both readers' llffhold).

Both models therefore see exactly the same pixels and rays; only the lens distortion of the real
capture is ignored by both alike. Needs numpy, opencv and nerflib (no pycolmap).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nerflib import scene_io  # noqa: E402
from nerflib.datasets import split_indices  # noqa: E402
from nerflib.types import Camera, Scene  # noqa: E402

OPENCV_TO_OPENGL = np.diag([1.0, -1.0, -1.0])


def pinhole(camera: Camera) -> Camera:
    f = 0.5 * (camera.param("fx") + camera.param("fy"))
    return Camera("PINHOLE", camera.width, camera.height, (f, f, camera.width / 2, camera.height / 2))


def convert(src: Path, dst: Path, *, test_every: int = 8) -> dict:
    scene = scene_io.read_scene_json(src / "scene.json")
    if len(scene.cameras) != 1:
        raise SystemExit(f"{src}: {len(scene.cameras)} cameras; the Blender format has one")
    scene, _ = scene_io.normalize_scene(scene, mode="360")
    camera = pinhole(scene.cameras[0])
    image_dir = src / "images" if (src / "images").is_dir() else Path(scene.image_dir)
    (dst / "images").mkdir(parents=True, exist_ok=True)
    order = np.argsort(scene.names)
    names = [Path(scene.names[i]).stem + ".png" for i in order]
    c2w = scene.c2w[order]
    for i, name in zip(order, names):
        bgr = cv2.imread(str(image_dir / scene.names[i]), cv2.IMREAD_COLOR)
        if bgr is None or bgr.shape[:2] != (camera.height, camera.width):
            raise SystemExit(f"{image_dir / scene.names[i]}: unreadable or not {camera.width}x{camera.height}")
        cv2.imwrite(str(dst / "images" / name), cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA))
    out = Scene(names=names, c2w=c2w, cameras=[camera], camera_idx=np.zeros(len(names), np.int32),
                image_dir=str(dst / "images"))
    scene_io.write_scene_json(out, dst / "scene.json")
    angle_x = 2.0 * math.atan(camera.width / (2.0 * camera.params[0]))
    for split in ("train", "test"):
        frames = [{"file_path": f"images/{Path(names[i]).stem}",
                   "transform_matrix": np.vstack([np.hstack([c2w[i, :, :3] @ OPENCV_TO_OPENGL, c2w[i, :, 3:]]),
                                                  [0, 0, 0, 1]]).tolist()}
                  for i in split_indices(len(names), split, test_every)]
        (dst / f"transforms_{split}.json").write_text(json.dumps({"camera_angle_x": angle_x, "frames": frames}))
    return {"images": len(names), "test": len(split_indices(len(names), "test", test_every)),
            "focal": camera.params[0], "size": [camera.width, camera.height]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    parser.add_argument("--test-every", type=int, default=8)
    args = parser.parse_args()
    print(json.dumps(convert(args.src, args.dst, test_every=args.test_every)))


if __name__ == "__main__":
    main()

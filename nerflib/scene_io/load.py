"""Poses in any supported format (`load_poses`: FORMATS, or `detect_format` from the path), and
the check that a poses file names exactly the photos of a folder (`load_poses_for_photos`).
"""

from __future__ import annotations

from pathlib import Path

from nerflib.scene_io.blender import read_blender
from nerflib.scene_io.colmap import read_colmap
from nerflib.scene_io.common import read_json, validate_scene
from nerflib.scene_io.llff import read_llff
from nerflib.scene_io.plain import read_poses_csv, read_poses_json
from nerflib.scene_io.scene_json import read_scene_json
from nerflib.types import Scene

FORMATS = ("colmap", "blender", "llff", "json", "csv", "scene", "auto")


SHEET_FORMATS = ("auto", "colmap", "blender", "llff", "json", "csv")  # the sheet's poses_format, nerf poses --poses-format


def detect_format(path) -> str:
    """The `fmt` that `load_poses(path, 'auto')` would use."""
    path = Path(path)
    if path.is_dir():
        if any((path / f"cameras{e}").is_file() for e in (".bin", ".txt")):
            return "colmap"
        if (path / "sparse" / "0").is_dir():
            return "colmap"
        if any(path.glob("transforms*.json")):
            return "blender"
        if (path / "poses_bounds.npy").is_file():
            return "llff"
        raise ValueError(f"{path}: cannot tell the poses format of this folder; pass fmt= one of {', '.join(FORMATS)}")
    if path.name.startswith(("cameras.", "images.", "points3D.")) and path.suffix in (".bin", ".txt"):
        return "colmap"
    if path.suffix == ".npy":
        return "llff"
    if path.suffix.lower() == ".csv":
        return "csv"
    if path.suffix.lower() == ".json":
        if path.name.startswith("transforms"):
            return "blender"
        d = read_json(path)
        if d.get("convention") == "opencv_c2w" and "cameras" in d:
            return "scene"
        frames = d.get("frames")
        if isinstance(frames, list) and frames and isinstance(frames[0], dict) and "transform_matrix" in frames[0]:
            return "blender"
        return "json"
    raise ValueError(f"{path}: cannot tell the poses format from the name; pass fmt= one of {', '.join(FORMATS)}")


def load_poses(path, fmt: str = "auto", *, image_dir=None, check_images: bool = True) -> Scene:
    """Read poses in any supported format (`fmt` in FORMATS; 'auto' guesses from the path).

    image_dir overrides where the images are looked for (colmap, llff, json,
    csv, scene); blender image paths are always relative to the json.
    """
    path = Path(path)
    if fmt not in FORMATS:
        raise ValueError(f"unknown poses format {fmt!r}; use one of {', '.join(FORMATS)}")
    if not path.exists():
        raise ValueError(
            f"poses file or folder {path} does not exist; check the path (relative paths start from the "
            "working directory), or leave the sheet's `poses` cell empty to run SfM instead"
        )
    if fmt == "auto":
        fmt = detect_format(path)
    kw = {"check_images": check_images}
    if fmt == "colmap":
        if path.is_file():
            path = path.parent
        elif not any((path / f"cameras{e}").is_file() for e in (".bin", ".txt")) and (path / "sparse" / "0").is_dir():
            path = path / "sparse" / "0"
        return read_colmap(path, image_dir=image_dir, **kw)
    if fmt in ("blender", "llff"):
        if fmt == "blender":
            return read_blender(path, **kw)
        return read_llff(path / "poses_bounds.npy" if path.is_dir() else path, image_dir, **kw)
    if fmt == "json":
        return read_poses_json(path, image_dir=image_dir, **kw)
    if fmt == "csv":
        return read_poses_csv(path, image_dir=image_dir, **kw)
    scene = read_scene_json(path)
    if image_dir is not None:
        scene.image_dir = str(image_dir)
    return validate_scene(scene, str(path), **kw)


def load_poses_for_photos(path, fmt: str, images) -> Scene:
    """`load_poses` for the photos in folder `images`: every image the file names must be a photo
    of that folder (no `../` or absolute names reaching outside it; none missing)."""
    images = Path(images)
    scene = load_poses(path, fmt, image_dir=images)
    root = images.resolve()
    outside = [n for n in scene.names if not (images / n).resolve().is_relative_to(root)]
    if outside:
        raise ValueError(
            f"{path}: {len(outside)} image(s) named in the poses file lie outside the photo folder {images} "
            f"(e.g. {', '.join(outside[:3])}); name the photos relative to that folder, or point the row's "
            "`source` at the folder that holds them"
        )
    return scene  # load_poses has checked that every image it names is there

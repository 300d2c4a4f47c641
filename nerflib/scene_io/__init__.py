"""Readers and writers of posed image sets; everything becomes a `types.Scene`.

Inside nerflib there is one convention (types.py): OpenCV camera axes (x right,
y down, z forward), camera-to-world `c2w` [N, 3, 4]. Every reader converts to
it and validates (`validate_scene`); every writer converts back. Errors are
ValueErrors that name the file and say how to fix it.

Formats (the `fmt` of `load_poses`):
  colmap   a sparse model folder (cameras/images/points3D, .bin or .txt), via pycolmap.
  blender  transforms*.json of NeRF synthetic, instant-ngp and nerfstudio: c2w
           4x4 with OpenGL axes (x right, y up, z back); `camera_angle_x` or
           fl_x/fl_y/cx/cy/w/h and k1 k2 (k3) p1 p2 / `camera_model` / `is_fisheye`.
  llff     poses_bounds.npy: per image a 3x5 [R | t | (h, w, f)] whose rotation
           columns are (down, right, backwards), plus near/far bounds; rows pair
           with the sorted image files of the image folder.
  json     the plain poses format below.
  csv      the plain poses format below, as a table.
  scene    our scene.json (below).

Plain poses format (`read_poses_json` / `read_poses_csv`), one record per image:
  name        file name relative to the image folder.
  matrix      3x4, or 4x4 with last row 0 0 0 1 (json: nested list, row-major;
              csv: columns m00 m01 m02 m03 m10 ... m23, optionally m30 ... m33).
  convention  "opencv" (x right, y down, z forward: COLMAP, OpenCV) or
              "opengl" (x right, y up, z backward: Blender, NeRF, instant-ngp).
  pose_type   "c2w" (camera-to-world: last column = camera centre) or
              "w2c" (world-to-camera: x_cam = R x_world + t, as COLMAP stores).
  fx fy cx cy width height
              intrinsics in pixels; pixel centres at +0.5 (COLMAP's convention:
              an ideal principal point is (width / 2, height / 2)).
  model       optional camera model (types.CAMERA_MODELS; default PINHOLE), with
              its distortion coefficients as fields named k1 k2 k3 k4 k5 k6 p1 p2
              (only those the model has; missing ones are 0). Single-focal
              models (SIMPLE_*, RADIAL) need fx == fy.
  JSON layout: {"image_dir": "images" (optional, relative to the file; default
  the file's folder), "frames": [{record}, ...]}; any record field may also sit
  at the top level as the default for every frame (e.g. shared intrinsics,
  "convention": "opengl"). CSV: a header row naming the columns; one row per
  image; blank cells of optional columns count as absent; lines starting with
  '#' are comments. `convention` and `pose_type` are required: a silent default
  would turn a mirrored pose set into a plausible-looking wrong one.

scene.json (our own exchange format, written by the pose stage and the demo
generator; `read_scene_json` is its reader):

    {"version": 1, "convention": "opencv_c2w",
     "cameras": [{"model": "PINHOLE", "width": 320, "height": 240, "params": [fx, fy, cx, cy]}],
     "frames":  [{"name": "000.jpg", "camera": 0, "c2w": [[r00, r01, r02, tx], [..], [..]]}],
     "image_dir": "images"            (optional, relative to the json file),
     "near": null, "far": null, "forward_facing": false,
     "normalization": {...}           (optional, see `normalize_scene`; `read_normalization`)}

Modules, one per format, each importing only those above it (no private name crosses a file):
  common      shared checks and conversions: validate_scene, CameraTable (one Camera per distinct
              intrinsics), make_camera, pose_to_c2w / c2w_to_pose, read_json, ...
  scene_json  scene.json (read_scene_json, write_scene_json, scene_to_dict, read_normalization)
  colmap      read_colmap, write_colmap (pycolmap)
  plain       the plain poses format as JSON or CSV (read_poses_json/csv, write_poses_json/csv)
  blender     read_blender, write_blender
  llff        read_llff, write_llff
  normalize   normalize_scene, transform_poses
  load        load_poses (any format, FORMATS; detect_format), load_poses_for_photos
"""

from nerflib.scene_io.common import ROTATION_TOL, validate_scene
from nerflib.scene_io.scene_json import (SCENE_JSON_VERSION, read_normalization, read_scene_json, scene_from_dict,
                                         scene_to_dict, write_scene_json)
from nerflib.scene_io.colmap import read_colmap, write_colmap
from nerflib.scene_io.plain import read_poses_csv, read_poses_json, write_poses_csv, write_poses_json
from nerflib.scene_io.blender import read_blender, write_blender
from nerflib.scene_io.llff import read_llff, write_llff
from nerflib.scene_io.normalize import normalize_scene, transform_poses
from nerflib.scene_io.load import FORMATS, SHEET_FORMATS, detect_format, load_poses, load_poses_for_photos

__all__ = [
    "FORMATS", "ROTATION_TOL", "SCENE_JSON_VERSION", "SHEET_FORMATS", "detect_format", "load_poses",
    "load_poses_for_photos", "normalize_scene", "read_blender", "read_colmap", "read_llff", "read_normalization",
    "read_poses_csv", "read_poses_json", "read_scene_json", "scene_from_dict", "scene_to_dict", "transform_poses",
    "validate_scene", "write_blender", "write_colmap", "write_llff", "write_poses_csv", "write_poses_json",
    "write_scene_json",
]

"""Shared data types: cameras, posed image sets and ray bundles.

One convention inside nerflib (docs/architecture.md): camera axes are OpenCV's
(x right, y down, z forward) and poses are camera-to-world `c2w` [3, 4]
(rotation columns = camera axes in world coordinates, last column = centre).

Short names used everywhere:
  origins, directions  [..., 3]  ray origin and direction; `directions` has
                                 camera-frame z == 1 (not unit length), so the
                                 ray distance `t` is depth along the optical axis.
  viewdirs             [..., 3]  unit-length `directions`.
  radii                [..., 1]  cone radius at t == 1 (mip-NeRF's pixel footprint).
  near, far            [..., 1]  integration bounds in `t`.
  cam_idx              [..., 1]  int32 index of the training image (for GLO).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import flax

# Parameter names of each supported camera model, in COLMAP's order.
CAMERA_MODELS: dict[str, tuple[str, ...]] = {
    "SIMPLE_PINHOLE": ("f", "cx", "cy"),
    "PINHOLE": ("fx", "fy", "cx", "cy"),
    "SIMPLE_RADIAL": ("f", "cx", "cy", "k1"),
    "RADIAL": ("f", "cx", "cy", "k1", "k2"),
    "OPENCV": ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2"),
    "OPENCV_FISHEYE": ("fx", "fy", "cx", "cy", "k1", "k2", "k3", "k4"),
    "FULL_OPENCV": ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2", "k3", "k4", "k5", "k6"),
}


@dataclasses.dataclass(frozen=True)
class Camera:
    """Intrinsics of one physical camera (numpy, host side)."""

    model: str
    width: int
    height: int
    params: tuple[float, ...]

    def __post_init__(self):
        if self.model not in CAMERA_MODELS:
            raise ValueError(
                f"unknown camera model {self.model!r}; supported: {', '.join(CAMERA_MODELS)}"
            )
        want = len(CAMERA_MODELS[self.model])
        if len(self.params) != want:
            raise ValueError(
                f"camera model {self.model} takes {want} parameters "
                f"{CAMERA_MODELS[self.model]}, got {len(self.params)}: {self.params}"
            )

    def param(self, name: str) -> float:
        """A named parameter; `fx`/`fy` fall back to `f` for single-focal models."""
        names = CAMERA_MODELS[self.model]
        if name in names:
            return float(self.params[names.index(name)])
        if name in ("fx", "fy") and "f" in names:
            return float(self.params[names.index("f")])
        return 0.0


@dataclasses.dataclass
class Scene:
    """A set of posed images: what every pose source is converted into.

    names    : image file names, relative to `image_dir`.
    c2w      : [N, 3, 4] float64 camera-to-world, OpenCV axes.
    cameras  : the distinct cameras; `camera_idx[i]` says which one image i uses.
    points   : optional [P, 3] sparse points (world frame), e.g. from SfM.
    near/far : optional per-scene bounds in world units (LLFF files carry them).
    forward_facing : True for LLFF-style captures (rendered in NDC).
    object_on_background : True for an object on a plain background (Blender
               synthetic sets: RGBA images): empty space shows the background colour,
               which changes the training recipe (configs.for_scene).
    """

    names: list[str]
    c2w: np.ndarray
    cameras: list[Camera]
    camera_idx: np.ndarray
    image_dir: str | None = None
    points: np.ndarray | None = None
    near: float | None = None
    far: float | None = None
    forward_facing: bool = False
    object_on_background: bool = False

    def __post_init__(self):
        self.c2w = np.asarray(self.c2w, dtype=np.float64)
        self.camera_idx = np.asarray(self.camera_idx, dtype=np.int32)
        n = len(self.names)
        if self.c2w.shape != (n, 3, 4):
            raise ValueError(f"c2w must have shape ({n}, 3, 4), got {self.c2w.shape}")
        if self.camera_idx.shape != (n,):
            raise ValueError(f"camera_idx must have shape ({n},), got {self.camera_idx.shape}")
        if n and (self.camera_idx.min() < 0 or self.camera_idx.max() >= len(self.cameras)):
            raise ValueError("camera_idx refers to a camera that does not exist")

    def __len__(self) -> int:
        return len(self.names)

    def camera_of(self, i: int) -> Camera:
        return self.cameras[int(self.camera_idx[i])]


@flax.struct.dataclass
class Rays:
    """A bundle of rays (a pytree; any leading batch shape)."""

    origins: np.ndarray
    directions: np.ndarray
    viewdirs: np.ndarray
    radii: np.ndarray
    near: np.ndarray
    far: np.ndarray
    cam_idx: np.ndarray

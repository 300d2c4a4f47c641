"""What the procedural demo scene holds (world frame: z up, ground plane z == 0, units are metres).

  * five textured objects near the origin (three spheres, a box turned about z,
    a capped vertical cylinder), Lambertian under one directional light, with
    cast shadows;
  * a textured ground plane that reaches the far dome;
  * a textured far dome (a sphere of radius `DOME_RADIUS`, ten times the
    camera orbit), so every pixel sees texture and the scene stays bounded.

raytrace.py casts rays into it, synthetic_textures.py paints it, synthetic.py
renders and writes the demo data set (and re-exports these names).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

ORBIT_RADIUS = 4.0
ORBIT_HEIGHT = 1.6  # mean camera height above the ground
SCENE_CENTER = (0.0, 0.0, 0.5)  # every orbit camera looks at this point
DOME_RADIUS = 10.0 * ORBIT_RADIUS  # centred at the origin
LIGHT_DIR = tuple(np.array([0.45, 0.3, 0.84]) / np.linalg.norm([0.45, 0.3, 0.84]))
AMBIENT = 0.4
FOV_X_DEG = 56.0

GROUND_TILE = 12.0  # metres covered by one period of the fine ground texture
GROUND_COARSE_TILE = 96.0  # a smooth, longer-period layer breaks the repetition
OBJECT_TILE = 2.5  # metres covered by one period of the object texture


@dataclasses.dataclass(frozen=True)
class SceneObject:
    """One primitive. `size` is (radius,) for spheres, (hx, hy, hz) half-extents
    for boxes, (radius, height) for cylinders; `yaw` turns a box about z (radians)."""

    name: str
    kind: str  # "sphere" | "box" | "cylinder"
    center: tuple[float, float, float]
    size: tuple[float, ...]
    yaw: float = 0.0

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "center": list(self.center), "size": list(self.size),
                "yaw": self.yaw}


OBJECTS: tuple[SceneObject, ...] = (
    SceneObject("big_sphere", "sphere", (0.0, 0.0, 0.7), (0.7,)),
    SceneObject("sphere_east", "sphere", (1.3, 0.6, 0.4), (0.4,)),
    SceneObject("sphere_south", "sphere", (-0.8, -1.2, 0.35), (0.35,)),
    SceneObject("box", "box", (-1.1, 0.9, 0.45), (0.45, 0.35, 0.45), math.radians(25.0)),
    SceneObject("cylinder", "cylinder", (0.9, -1.1, 0.6), (0.3, 1.2)),
)

"""The results layout of one scene, `results/{scene}/...` (docs/architecture.md, The DAG).

One owner for every path of it: the rules (their outputs and input functions),
`nerflib.steps`, the CLI's defaults and `bench/` ask `SceneLayout`; nobody
rebuilds a path with `parent.parent` or string surgery.

    scene = SceneLayout.of("demo")          # results/demo
    scene.sparse, scene.database, scene.images(4), scene.final_json
    SceneLayout("results/{scene}").sparse   # the rules' pattern: results/{scene}/sparse/0

Paths are strings (what Snakemake's rules take); a root with `{scene}` in it
gives the rules' wildcard patterns. A COLMAP project (sparse/0, database.db,
images/, images_{factor}/) has the same shape, so `bench/` reads one with it too.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

RESULTS = "results"
EXPORTS = {"ply": "points.ply", "transforms": "transforms.json", "colmap": "colmap"}  # the sheet's `export` kinds
VIDEOS = ("color", "depth", "acc")


def _path(*parts: str, doc: str = "") -> property:
    """A property: `parts` joined under the layout's root."""
    return property(lambda self: "/".join((self.root, *parts)), doc=doc)


@dataclasses.dataclass(frozen=True)
class SceneLayout:
    """Where each step of one scene reads and writes, under `root` (results/{scene})."""

    root: str

    def __post_init__(self):
        object.__setattr__(self, "root", os.fspath(self.root).rstrip("/") or "/")

    @classmethod
    def of(cls, scene: str, results: str = RESULTS) -> SceneLayout:
        return cls(f"{results}/{scene}")

    @classmethod
    def containing(cls, path, what: str) -> SceneLayout | None:
        """The scene folder whose `what` (an attribute: 'sparse', 'model', 'scene_json', ...) is `path`;
        None when `path` is not where this layout puts it (then nothing beside it is assumed)."""
        path = Path(os.path.abspath(path))  # not resolved: results/{scene}/images is a symlink to the photos
        depth = len(Path(getattr(cls("x"), what)).parts) - 1
        if len(path.parts) <= depth:
            return None
        layout = cls(str(path.parents[depth - 1]))
        return layout if Path(getattr(layout, what)) == path else None

    # intake and poses
    photos = _path("photos", doc="Upright photos written by rule intake (a video, HEIC or EXIF-rotated photos).")
    query_photos = _path("query_photos", doc="Upright query photos written by rule intake_queries.")
    sparse = _path("sparse", "0", doc="The COLMAP model (binary) of the poses step.")
    database = _path("database.db", doc="SfM's COLMAP database beside sparse/ (absent when poses were imported).")
    photos_link = _path("images", doc="images/: a symlink to the photos beside sparse/ (what COLMAP users expect).")
    poses_dir = _path("poses")
    scene_json = _path("poses", "scene.json")
    summary_json = _path("poses", "summary.json")

    def images(self, factor) -> str:
        """The photos at `factor`: images_{factor}/ (the pyramid), images/ for 1 (the photos themselves)."""
        return self._at("images" if str(factor) == "1" else f"images_{factor}")

    # training and products
    model = _path("model")
    final_json = _path("model", "final.json", doc="Written last by training: the rules' handle on the model folder.")
    metrics = _path("eval", "metrics.tsv")
    eval_views = _path("eval", "views")
    render_path = _path("render", "path.json", doc="The cameras of the rendered path.")
    localize_poses = _path("localize", "poses.json")
    localize_views = _path("localize", "views")
    localize_errors = _path("localize", "errors.tsv")

    def video(self, kind: str) -> str:
        """render/{kind}.mp4, kind in VIDEOS."""
        return self._at("render", f"{kind}.mp4")

    def export(self, kind: str) -> str:
        """The file or folder of an export kind (EXPORTS)."""
        return self._at("export", EXPORTS[kind])

    def report(self, name: str) -> str:
        return self._at("report", name)

    def _at(self, *parts: str) -> str:
        return "/".join((self.root, *parts))

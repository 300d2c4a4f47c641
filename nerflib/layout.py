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

    def _at(self, *parts: str) -> str:
        return "/".join((self.root, *parts))

    # intake and poses
    @property
    def photos(self) -> str:
        """Upright photos written by rule intake (a video, HEIC or EXIF-rotated photos)."""
        return self._at("photos")

    @property
    def query_photos(self) -> str:
        return self._at("query_photos")

    @property
    def sparse(self) -> str:
        """The COLMAP model (binary) of the poses step."""
        return self._at("sparse", "0")

    @property
    def database(self) -> str:
        """SfM's COLMAP database (features, matches) beside sparse/; absent when the poses were imported."""
        return self._at("database.db")

    @property
    def photos_link(self) -> str:
        """images/: a symlink to the photos beside sparse/ (what COLMAP users expect)."""
        return self._at("images")

    @property
    def poses_dir(self) -> str:
        return self._at("poses")

    @property
    def scene_json(self) -> str:
        return self._at("poses", "scene.json")

    @property
    def summary_json(self) -> str:
        return self._at("poses", "summary.json")

    def images(self, factor) -> str:
        """The photos at `factor`: images_{factor}/ (the pyramid), images/ for 1 (the photos themselves)."""
        return self._at("images" if str(factor) == "1" else f"images_{factor}")

    # training and products
    @property
    def model(self) -> str:
        return self._at("model")

    @property
    def final_json(self) -> str:
        """Written last by training: the rules' handle on the model folder."""
        return self._at("model", "final.json")

    @property
    def metrics(self) -> str:
        return self._at("eval", "metrics.tsv")

    @property
    def eval_views(self) -> str:
        return self._at("eval", "views")

    def video(self, kind: str) -> str:
        """render/{kind}.mp4, kind in VIDEOS."""
        return self._at("render", f"{kind}.mp4")

    @property
    def render_path(self) -> str:
        """render/path.json: the cameras of the rendered path."""
        return self._at("render", "path.json")

    @property
    def localize_poses(self) -> str:
        return self._at("localize", "poses.json")

    @property
    def localize_views(self) -> str:
        return self._at("localize", "views")

    @property
    def localize_errors(self) -> str:
        return self._at("localize", "errors.tsv")

    def export(self, kind: str) -> str:
        """The file or folder of an export kind (EXPORTS)."""
        return self._at("export", EXPORTS[kind])

    def report(self, name: str) -> str:
        return self._at("report", name)

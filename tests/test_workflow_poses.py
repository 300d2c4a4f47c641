"""Bring-your-own poses through the real `poses` rule (no SfM): COLMAP and LLFF imports."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from nerflib import rigid, scene_io

REPO = Path(__file__).resolve().parents[1]
HEADER = "scene\tsource\tcamera_model\tfactor\tpreset\tmatcher\tposes\tposes_format"


def run_poses(tmp_path, rows, targets):
    shutil.copytree(REPO / "config", tmp_path / "config")
    (tmp_path / "config" / "datasets.tsv").write_text("\n".join([HEADER, *rows]) + "\n")
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "--cores", "2", *targets],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]


def test_import_colmap_and_llff(tmp_path, dataset):
    cup = dataset("real_cup_colmap")
    fern = dataset("llff_fern")
    run_poses(
        tmp_path,
        [f"cup\t{cup / 'images'}\tOPENCV\t4\ttiny\tauto\t{cup / 'sparse' / '0'}\tcolmap",
         f"fern\t{fern / 'images_8'}\tOPENCV\t1\ttiny\tauto\t{fern / 'poses_bounds.npy'}\tllff"],
        ["results/cup/poses/scene.json", "results/fern/poses/scene.json"],
    )
    # COLMAP: the same cameras as the shipped model, written back as a COLMAP binary model.
    shipped = scene_io.read_colmap(cup / "sparse" / "0", image_dir=cup / "images")
    ours = scene_io.read_scene_json(tmp_path / "results/cup/poses/scene.json")
    rewritten = scene_io.read_colmap(tmp_path / "results/cup/sparse/0", image_dir=cup / "images")
    assert sorted(ours.names) == sorted(shipped.names) and len(ours) == 77
    for scene in (ours, rewritten):
        order = [scene.names.index(n) for n in shipped.names]
        np.testing.assert_allclose(scene.c2w[order], shipped.c2w, atol=1e-9)
    assert (tmp_path / "results/cup/images").resolve() == (cup / "images").resolve()
    # LLFF: forward-facing, 20 cameras with the bounds of the file.
    fern_scene = scene_io.read_scene_json(tmp_path / "results/fern/poses/scene.json")
    assert len(fern_scene) == 20 and fern_scene.forward_facing
    assert fern_scene.near is not None and fern_scene.far > fern_scene.near
    direct = scene_io.read_llff(fern / "poses_bounds.npy", fern / "images_8")
    err = rigid.pose_errors(fern_scene.c2w, direct.c2w, align=False)
    assert err["rotation_deg"].max() < 1e-6 and err["position"].max() < 1e-9

"""nerflib.figures: the report's camera plot, training curves and settings table."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from nerflib import configs, figures
from nerflib.types import Camera, Scene


def _scene(n=12):
    """n cameras on a circle of radius 3 at height 1, looking at the origin (OpenCV axes)."""
    c2w = []
    for a in np.linspace(0, 2 * np.pi, n, endpoint=False):
        centre = np.array([3 * np.cos(a), 3 * np.sin(a), 1.0])
        z = -centre / np.linalg.norm(centre)
        x = np.cross(z, [0, 0, 1.0])
        x /= np.linalg.norm(x)
        c2w.append(np.column_stack([x, np.cross(z, x), z, centre]))
    return Scene(names=[f"{i:03d}.png" for i in range(n)], c2w=np.asarray(c2w), camera_idx=np.zeros(n, np.int32),
                 cameras=[Camera("PINHOLE", 64, 48, (50.0, 50.0, 32.0, 24.0))],
                 points=np.random.default_rng(0).normal(size=(500, 3)))


def test_camera_figure_is_a_png_with_the_summary(tmp_path):
    out = figures.camera_figure(_scene(), tmp_path / "cameras.png",
                                summary={"registered": 12, "total": 13, "points": 500, "mean_reprojection_error_px": 0.5})
    image = cv2.imread(str(out))
    assert image is not None and image.shape[1] > image.shape[0] > 200
    assert not list(tmp_path.glob(".*"))  # no temp file left behind


def test_training_figure_reads_train_tsv(tmp_path):
    tsv = tmp_path / "train.tsv"
    rows = ["step\tloss\tpsnr\tlr\trays_per_s\telapsed_s"]
    rows += [f"{s}\t{1 / s:.5f}\t{10 + s / 10:.3f}\t{1e-2 * 0.99 ** s:.3e}\t1000\t{s * 0.5:.1f}" for s in range(1, 51)]
    tsv.write_text("\n".join(rows) + "\n")
    cols = figures.read_train_tsv(tsv)
    assert cols["step"].tolist() == list(range(1, 51)) and np.isclose(cols["elapsed_s"][-1], 25.0)
    assert cv2.imread(str(figures.training_figure(tsv, tmp_path / "training.png"))) is not None
    (tmp_path / "empty.tsv").write_text("")
    with pytest.raises(ValueError, match="empty.tsv is empty"):
        figures.read_train_tsv(tmp_path / "empty.tsv")


def test_settings_table_flattens_the_resolved_config(tmp_path):
    cfg = configs.to_dict(configs.get_preset("tiny"))
    out = figures.settings_table(cfg, tmp_path / "settings.tsv")
    lines = out.read_text().splitlines()
    table = dict(line.split("\t", 1) for line in lines[1:])
    assert lines[0] == "name\tvalue"
    assert table["batch_size"] == "1024" and table["model.field"] == "hashgrid"
    assert len(table) == len(cfg) - 1 + len(cfg["model"])  # every field once, the model's dotted

"""nerflib.pyramid: sizes, names, formats, pixel values, incremental reruns."""

from __future__ import annotations

import os
import time

import cv2
import numpy as np
import pytest

from nerflib import pyramid
from nerflib.images import read_raw
from nerflib.types import Camera


from helpers.images import noise as _noise
from helpers.images import write_encoded as _write


@pytest.mark.parametrize(
    "w,h,f,want", [(800, 600, 4, (200, 150)), (101, 75, 4, (25, 18)), (533, 800, 2, (266, 400)), (7, 7, 1, (7, 7))]
)
def test_pyramid_size_floors(w, h, f, want):
    assert pyramid.pyramid_size(w, h, f) == want


def test_pyramid_size_matches_scale_camera():
    cameras = pytest.importorskip("nerflib.cameras")
    for w, h, f in [(800, 533, 2), (101, 75, 4), (2832, 2128, 8)]:
        cam = cameras.scale_camera(Camera("PINHOLE", w, h, (100.0, 100.0, w / 2, h / 2)), f)
        assert (cam.width, cam.height) == pyramid.pyramid_size(w, h, f)


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "2"])
def test_bad_factor(bad):
    with pytest.raises(ValueError, match="factor"):
        pyramid.pyramid_size(100, 100, bad)


def test_factor_too_large():
    with pytest.raises(ValueError, match="too large"):
        pyramid.pyramid_size(10, 6, 8)


def test_make_pyramid_names_sizes_formats_values(tmp_path):
    src, dst = tmp_path / "images", tmp_path / "images_4"
    src.mkdir()
    yy, xx = np.mgrid[0:75, 0:101]
    photo = np.stack([xx * 2.5, yy * 3.0, 128 + 100 * np.sin(xx / 9.0) * np.cos(yy / 7.0)], -1).astype(np.uint8)
    deep = _noise(40, 64, seed=2, dtype=np.uint16)
    rgba = _noise(41, 63, c=4, seed=3)
    _write(src / "a photo.jpg", photo, [cv2.IMWRITE_JPEG_QUALITY, 100])
    _write(src / "deep.png", deep)
    _write(src / "alpha.PNG", rgba)
    (src / "notes.txt").write_text("ignored")
    out = pyramid.make_pyramid(src, dst, 4, threads=2, progress=False)
    assert sorted(out["written"]) == sorted(["a photo.jpg", "deep.png", "alpha.PNG"]) and out["skipped"] == []
    assert sorted(os.listdir(dst)) == sorted(["a photo.jpg", "deep.png", "alpha.PNG"])  # no temp files left
    small_jpg, small_deep, small_rgba = (read_raw(dst / n) for n in ["a photo.jpg", "deep.png", "alpha.PNG"])
    assert small_jpg.shape == (18, 25, 3) and small_jpg.dtype == np.uint8
    assert small_deep.shape == (10, 16, 3) and small_deep.dtype == np.uint16
    assert small_rgba.shape == (10, 15, 4)
    # PNG is lossless: exactly cv2.resize with INTER_AREA of what was read.
    np.testing.assert_array_equal(small_deep, cv2.resize(deep, (16, 10), interpolation=cv2.INTER_AREA))
    np.testing.assert_array_equal(small_rgba, cv2.resize(rgba, (15, 10), interpolation=cv2.INTER_AREA))
    # JPEG: exactly the INTER_AREA result encoded at quality 95.
    ref = cv2.resize(read_raw(src / "a photo.jpg"), (25, 18), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", ref, [cv2.IMWRITE_JPEG_QUALITY, 95])
    np.testing.assert_array_equal(small_jpg, cv2.imdecode(buf, cv2.IMREAD_UNCHANGED))


def test_make_pyramid_is_incremental(tmp_path):
    src, dst = tmp_path / "images", tmp_path / "images_2"
    src.mkdir()
    for i in range(3):
        _write(src / f"{i}.png", _noise(20, 30, seed=i))
    pyramid.make_pyramid(src, dst, 2, threads=1, progress=False)
    before = {p.name: p.stat().st_mtime_ns for p in dst.iterdir()}
    time.sleep(0.02)
    out = pyramid.make_pyramid(src, dst, 2, threads=1, progress=False)
    assert out["written"] == [] and out["skipped"] == ["0.png", "1.png", "2.png"]
    assert {p.name: p.stat().st_mtime_ns for p in dst.iterdir()} == before
    # A changed input (newer than its output) is redone; a missing output is made.
    future = time.time() + 10
    _write(src / "1.png", _noise(20, 30, seed=9))
    os.utime(src / "1.png", (future, future))
    (dst / "2.png").unlink()
    out = pyramid.make_pyramid(src, dst, 2, threads=2, progress=False)
    assert sorted(out["written"]) == ["1.png", "2.png"] and out["skipped"] == ["0.png"]
    np.testing.assert_array_equal(
        read_raw(dst / "1.png"), cv2.resize(_noise(20, 30, seed=9), (15, 10), interpolation=cv2.INTER_AREA)
    )


def test_make_pyramid_rejects_same_folder_and_bad_threads(tmp_path):
    _write(tmp_path / "a.png", _noise(8, 8))
    with pytest.raises(ValueError, match="same"):
        pyramid.make_pyramid(tmp_path, tmp_path, 2)
    with pytest.raises(ValueError, match="threads"):
        pyramid.make_pyramid(tmp_path, tmp_path / "x", 2, threads=0)


def test_make_pyramid_reports_unreadable_file(tmp_path):
    src = tmp_path / "images"
    src.mkdir()
    (src / "broken.jpg").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="broken.jpg"):
        pyramid.make_pyramid(src, tmp_path / "out", 2, progress=False)
    assert not (tmp_path / "out" / "broken.jpg").exists()

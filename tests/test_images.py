"""nerflib.images: listing, checking and loading photos (error cases first)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from nerflib import images


from helpers.images import jpeg_with_orientation
from helpers.images import noise as _noise
from helpers.images import write_encoded as _write


# ---------------------------------------------------------------- list_images


def test_list_images_filters_and_sorts(tmp_path):
    for name in ["b.JPG", "a.png", "c.Jpeg", "d.tif", "e.TIFF", "f.bmp", "g.webp"]:
        _write(tmp_path / name, _noise(8, 8))
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden.jpg").write_bytes(b"")
    (tmp_path / "sub.jpg").mkdir()  # a folder with an image-like name
    (tmp_path / "sub.jpg" / "x.jpg").write_bytes(b"")
    assert images.list_images(tmp_path) == sorted(["b.JPG", "a.png", "c.Jpeg", "d.tif", "e.TIFF", "f.bmp", "g.webp"])


def test_list_images_unicode_and_spaces(tmp_path):
    names = ["vue du château 01.jpg", "日本 2.png", "plain.jpg"]
    for i, name in enumerate(names):
        _write(tmp_path / name, _noise(10, 12, seed=i))
    assert images.list_images(tmp_path) == sorted(names)
    checked = images.check_images(tmp_path)
    assert [(n, w, h) for n, w, h in checked] == [(n, 12, 10) for n in sorted(names)]
    assert images.load_image(tmp_path / names[1]).shape == (10, 12, 3)


def test_list_images_missing_folder(tmp_path):
    with pytest.raises(ValueError, match="does not exist") as e:
        images.list_images(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(e.value)


def test_list_images_empty_folder(tmp_path):
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match="holds no images") as e:
        images.list_images(tmp_path)
    assert str(tmp_path) in str(e.value) and "jpg" in str(e.value)


# ---------------------------------------------------------------- check_images


def test_check_images_sizes(tmp_path):
    for i in range(3):
        _write(tmp_path / f"{i}.jpg", _noise(30, 40, seed=i))
    assert images.check_images(tmp_path) == [(f"{i}.jpg", 40, 30) for i in range(3)]


def test_check_images_zero_byte(tmp_path):
    for i in range(3):
        _write(tmp_path / f"{i}.jpg", _noise(30, 40, seed=i))
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.jpg \(empty file\)") as e:
        images.check_images(tmp_path)
    assert "Remove these files or re-export" in str(e.value)


def test_check_images_corrupt_and_truncated_jpeg(tmp_path):
    for i in range(3):
        _write(tmp_path / f"{i}.jpg", _noise(30, 40, seed=i))
    (tmp_path / "garbage.jpg").write_bytes(b"this is not a JPEG file at all" * 20)
    data = (tmp_path / "0.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])  # OpenCV would decode this silently
    with pytest.raises(ValueError) as e:
        images.check_images(tmp_path)
    msg = str(e.value)
    assert "2 of 5 files" in msg and "garbage.jpg" in msg and "truncated.jpg" in msg
    assert "0.jpg" not in msg.replace("garbage.jpg", "").replace("truncated.jpg", "")


def test_check_images_mixed_sizes(tmp_path):
    for i in range(4):
        _write(tmp_path / f"{i}.png", _noise(30, 40, seed=i))
    _write(tmp_path / "odd.png", _noise(40, 30))
    assert len(images.check_images(tmp_path, single_camera=False)) == 5
    with pytest.raises(ValueError, match="single shared camera") as e:
        images.check_images(tmp_path, single_camera=True)
    assert "odd.png (30x40)" in str(e.value) and "most are 40x30" in str(e.value)


def test_check_images_too_few(tmp_path):
    for i in range(2):
        _write(tmp_path / f"{i}.jpg", _noise(30, 40, seed=i))
    with pytest.raises(ValueError, match="holds 2 image"):
        images.check_images(tmp_path, min_images=3)
    assert len(images.check_images(tmp_path, min_images=2)) == 2


def test_check_images_warns_about_exif_rotation(tmp_path):
    for i in range(3):
        jpeg_with_orientation(tmp_path / f"{i}.jpg", _noise(30, 40, seed=i), 6 if i == 1 else 1)
    with pytest.warns(UserWarning, match=r"EXIF rotation tag \(1\.jpg\)"):
        sizes = images.check_images(tmp_path)
    assert sizes[1] == ("1.jpg", 40, 30)  # stored size, not rotated


def test_check_images_cache_decodes_only_new_or_changed_files(tmp_path, monkeypatch):
    folder, cache = tmp_path / "photos", tmp_path / "cache" / "photos.json"
    folder.mkdir()
    for i in range(3):
        _write(folder / f"{i}.jpg", _noise(30, 40, seed=i))
    decoded = []
    real = images._read_header
    monkeypatch.setattr(images, "_read_header", lambda p: decoded.append(p.name) or real(p))
    first = images.check_images(folder, cache=cache)
    assert sorted(decoded) == ["0.jpg", "1.jpg", "2.jpg"] and cache.is_file()
    decoded.clear()
    assert images.check_images(folder, cache=cache) == first and decoded == []  # all remembered
    _write(folder / "3.jpg", _noise(30, 40, seed=3))
    assert len(images.check_images(folder, cache=cache)) == 4 and decoded == ["3.jpg"]
    # A remembered photo that turns bad (same name, new content) is decoded again and reported.
    decoded.clear()
    data = (folder / "1.jpg").read_bytes()
    (folder / "1.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"1 of 4 files.*1\.jpg"):
        images.check_images(folder, cache=cache)
    assert decoded == ["1.jpg"]
    # A damaged cache file only costs a full check.
    cache.write_text("{not json")
    (folder / "1.jpg").write_bytes(data)
    decoded.clear()
    assert len(images.check_images(folder, cache=cache)) == 4 and len(decoded) == 4


# ---------------------------------------------------------------- load_image


def test_load_color_jpeg_rgb_order(tmp_path):
    bgr = np.zeros((16, 16, 3), np.uint8)
    bgr[..., 2] = 255  # red in OpenCV's BGR
    _write(tmp_path / "red.png", bgr)
    x = images.load_image(tmp_path / "red.png")
    assert x.dtype == np.float32 and x.shape == (16, 16, 3)
    np.testing.assert_allclose(x[0, 0], [1.0, 0.0, 0.0])


def test_load_grayscale_replicated(tmp_path):
    gray = _noise(12, 10, c=1)
    _write(tmp_path / "g.png", gray)
    x = images.load_image(tmp_path / "g.png")
    assert x.shape == (12, 10, 3)
    for c in range(3):
        np.testing.assert_allclose(x[..., c], gray / 255.0, atol=1e-7)


def test_load_16bit(tmp_path):
    im = _noise(12, 10, dtype=np.uint16)
    im[0, 0] = [65535, 0, 32768]
    _write(tmp_path / "deep.png", im)
    x = images.load_image(tmp_path / "deep.png")
    np.testing.assert_allclose(x, im[..., ::-1] / 65535.0, atol=1e-7)
    np.testing.assert_allclose(x[0, 0], [32768 / 65535, 0.0, 1.0], atol=1e-7)


def test_load_rgba_composite(tmp_path):
    bgra = np.zeros((4, 4, 4), np.uint8)
    bgra[..., 2] = 255  # red
    bgra[0, 0, 3] = 0  # transparent
    bgra[0, 1, 3] = 255  # opaque
    bgra[0, 2, 3] = 51  # 20 % opaque
    _write(tmp_path / "a.png", bgra)
    white = images.load_image(tmp_path / "a.png")
    black = images.load_image(tmp_path / "a.png", background="black")
    np.testing.assert_allclose(white[0, 0], [1, 1, 1])
    np.testing.assert_allclose(black[0, 0], [0, 0, 0])
    np.testing.assert_allclose(white[0, 1], [1, 0, 0])
    np.testing.assert_allclose(black[0, 2], [0.2, 0, 0], atol=1e-6)
    np.testing.assert_allclose(white[0, 2], [1, 0.8, 0.8], atol=1e-6)
    with pytest.raises(ValueError, match="background"):
        images.load_image(tmp_path / "a.png", background="grey")


def test_load_ignores_exif_orientation_like_colmap(tmp_path):
    import pycolmap

    rgb = _noise(30, 40)
    jpeg_with_orientation(tmp_path / "rot.jpg", rgb, 6)
    x = images.load_image(tmp_path / "rot.jpg")
    bitmap = pycolmap.Bitmap.read(str(tmp_path / "rot.jpg"), True)
    assert x.shape == (30, 40, 3)
    assert (bitmap.width, bitmap.height) == (40, 30)  # COLMAP: stored layout too
    assert cv2.imread(str(tmp_path / "rot.jpg"), cv2.IMREAD_COLOR).shape[:2] == (40, 30)  # what we avoid


def test_load_corrupt_names_file(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    with pytest.raises(ValueError, match="bad.jpg"):
        images.load_image(tmp_path / "bad.jpg")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.png"):
        images.load_image(tmp_path / "empty.png")

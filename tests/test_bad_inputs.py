"""A catalogue of bad inputs (issue #11, item 1): each fails early, naming the file/row and the fix.

Every input is generated here under tmp_path (no committed binaries). Error
cases are one table per kind of input (images, poses, training config,
trained model): each entry builds the input, calls the nerflib loader and
lists the texts the error message must contain: the offending file or row,
and a hint saying what to do. Inputs that are legitimately fine (grayscale,
16-bit, RGBA, EXIF-rotated, unicode names, stray non-image files) are
asserted to *work* instead. The sheet and config.yaml cases live in
test_workflow_config.py; the workflow-level case at the end runs the real
`pyramid` rule once on a folder with a corrupt photo.
"""

from __future__ import annotations

import hashlib
import json
import re
import types

import numpy as np
import pytest

from nerflib import checkpoint, configs, datasets, images, parallel, pyramid, scene_io

from helpers.images import jpeg_with_orientation, noise, write_encoded
from helpers.workflow import HEADER, run_snakemake, write_sheet


def photos(folder, names=("a.png", "b.png", "c.png"), *, h=12, w=16):
    """A folder of small random photos; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        write_encoded(folder / name, noise(h, w, seed=i))
    return folder


def truncated_jpeg(path):
    write_encoded(path, noise(32, 32, seed=7), params=(1, 90))  # 1 = cv2.IMWRITE_JPEG_QUALITY
    path.write_bytes(path.read_bytes()[:200])


def garbage(path):
    path.write_bytes(b"this is not a picture" * 10)


# ------------------------------------------------------------------ images


def _empty_folder(tmp):
    (tmp / "photos").mkdir()
    return lambda: images.list_images(tmp / "photos"), ["photos", "holds no images", "put the photos there"]


def _only_non_images(tmp):
    folder = tmp / "photos"
    (folder / "sub").mkdir(parents=True)
    (folder / "notes.txt").write_text("x")
    (folder / ".hidden.jpg").write_bytes(b"")
    write_encoded(folder / "sub" / "a.png", noise(8, 8))
    return lambda: images.check_images(folder), ["photos", "holds no images", "sub-folders are ignored"]


def _missing_folder(tmp):
    return lambda: images.check_images(tmp / "nope"), ["nope", "does not exist", "point the scene's image folder"]


def _truncated_jpeg(tmp):
    folder = photos(tmp / "photos")
    truncated_jpeg(folder / "cut.jpg")
    return lambda: images.check_images(folder), ["1 of 4 files", "cut.jpg", "Remove these files or re-export"]


def _zero_byte(tmp):
    folder = photos(tmp / "photos")
    (folder / "zero.png").write_bytes(b"")
    return lambda: images.check_images(folder), ["zero.png (empty file)", "Remove these files or re-export"]


def _garbage_load(tmp):
    garbage(tmp / "junk.png")
    return lambda: images.load_image(tmp / "junk.png"), ["junk.png", "cannot decode", "remove the file or re-export"]


def _zero_byte_load(tmp):
    (tmp / "zero.jpg").write_bytes(b"")
    return lambda: images.load_image(tmp / "zero.jpg"), ["zero.jpg", "cannot decode", "remove the file or re-export"]


def _mixed_sizes_one_camera(tmp):
    folder = photos(tmp / "photos")
    write_encoded(folder / "odd.png", noise(10, 20))
    call = lambda: images.check_images(folder, single_camera=True)  # noqa: E731
    return call, ["odd.png (20x10)", "most are 16x12", "Resize or remove them, or turn single_camera off"]


def _too_few(tmp):
    folder = photos(tmp / "photos", names=("a.png", "b.png"))
    return lambda: images.check_images(folder), ["holds 2 image(s)", "add more overlapping photos"]


def _pyramid_corrupt(tmp):
    folder = photos(tmp / "photos")
    garbage(folder / "junk.jpg")
    call = lambda: pyramid.make_pyramid(folder, tmp / "images_2", 2, progress=False)  # noqa: E731
    return call, ["junk.jpg", "cannot", "re-export"]


def _pyramid_truncated_jpeg(tmp):
    folder = photos(tmp / "photos")
    truncated_jpeg(folder / "cut.jpg")  # OpenCV alone would decode it to a partly grey image
    call = lambda: pyramid.make_pyramid(folder, tmp / "images_2", 2, progress=False)  # noqa: E731
    return call, ["cut.jpg", "cannot read image", "re-export"]


def _pyramid_factor_too_large(tmp):
    folder = photos(tmp / "photos")
    call = lambda: pyramid.make_pyramid(folder, tmp / "images_32", 32, progress=False)  # noqa: E731
    return call, ["a.png", "factor 32 is too large for a 16x12 image", "use a smaller factor"]


def _image_size_vs_camera(tmp):
    scene = datasets.toy_scene(tmp, num_images=3)
    write_encoded(tmp / "images" / "001.png", noise(6, 8))
    call = lambda: datasets.load_dataset(scene, normalize=None)  # noqa: E731
    return call, ["001.png", "is 8x6", "expects 16x12", "images_F/ for factor F"]


BAD_IMAGES = {
    "empty folder": _empty_folder,
    "only non-image files": _only_non_images,
    "missing folder": _missing_folder,
    "truncated JPEG": _truncated_jpeg,
    "zero-byte file": _zero_byte,
    "garbage bytes, load_image": _garbage_load,
    "zero-byte file, load_image": _zero_byte_load,
    "mixed sizes, one camera": _mixed_sizes_one_camera,
    "too few images": _too_few,
    "corrupt image in pyramid": _pyramid_corrupt,
    "truncated JPEG in pyramid": _pyramid_truncated_jpeg,
    "pyramid factor too large": _pyramid_factor_too_large,
    "image size differs from its camera": _image_size_vs_camera,
}

# ------------------------------------------------------------------ poses


def _poses_file(tmp, fmt="json", edit=None):
    """toy_scene's poses written as plain json/csv; `edit` changes the json dict or the csv lines."""
    scene = datasets.toy_scene(tmp, num_images=3)
    path = tmp / "images" / f"poses.{fmt}"
    if fmt == "json":
        scene_io.write_poses_json(scene, path)
        d = json.loads(path.read_text())
        if edit:
            edit(d)
        path.write_text(json.dumps(d))  # json.dumps writes NaN as the NaN literal Python reads back
    else:
        scene_io.write_poses_csv(scene, path)
        lines = path.read_text().splitlines()
        if edit:
            edit(lines)
        path.write_text("\n".join(lines) + "\n")
    return path


def _frame(i, key, value):
    def edit(d):
        d["frames"][i][key] = value(d["frames"][i][key]) if callable(value) else value

    return edit


def _load(path, **kw):
    return lambda: scene_io.load_poses(path, **kw)


def _missing_images(tmp):
    path = _poses_file(tmp)
    (tmp / "images" / "001.png").unlink()
    return _load(path), ["poses.json", "1 of 3 images", "001.png", "pass image_dir="]


def _nan_pose(tmp):
    path = _poses_file(tmp, edit=_frame(2, "matrix", lambda m: [m[0], [float("nan"), *m[1][1:]], m[2]]))
    return _load(path), ["poses.json", "image '002.png'", "non-finite", "remove or fix that entry"]


def _scaled_rotation(tmp):
    path = _poses_file(tmp, edit=_frame(0, "matrix", lambda m: [[2 * v for v in row[:3]] + row[3:] for row in m]))
    return _load(path), ["image '000.png'", "not orthonormal", "no scale or shear"]


def _mirrored_rotation(tmp):
    path = _poses_file(tmp, edit=_frame(1, "matrix", lambda m: [[-row[0], *row[1:]] for row in m]))
    return _load(path), ["image '001.png'", "reflection", "check the convention flag"]


def _matrix_3x3(tmp):
    path = _poses_file(tmp, edit=_frame(0, "matrix", lambda m: [row[:3] for row in m]))
    return _load(path), ["image '000.png'", "shape (3, 3)", "give 3x4 or 4x4"]


def _bad_last_row(tmp):
    path = _poses_file(tmp, edit=_frame(0, "matrix", lambda m: [*m, [0, 0, 1, 1]]))
    return _load(path), ["image '000.png'", "last row", "must be 0 0 0 1"]


def _wrong_convention(tmp):
    path = _poses_file(tmp, edit=lambda d: d.update(convention="blender"))
    return _load(path), ["image '000.png'", "'blender'", "must be 'opencv' or 'opengl'"]


def _missing_convention(tmp):
    path = _poses_file(tmp, edit=lambda d: d.pop("convention"))
    return _load(path), ["image '000.png'", "'convention' is missing", "nerflib.scene_io's docstring"]


def _duplicate_names(tmp):
    path = _poses_file(tmp, edit=_frame(1, "name", "000.png"))
    return _load(path), ["poses.json", "more than once: 000.png", "one pose per image"]


def _csv_nan(tmp):
    def edit(lines):
        cells = lines[2].split(",")
        cells[5] = "nan"
        lines[2] = ",".join(cells)

    path = _poses_file(tmp, "csv", edit)
    return _load(path), ["poses.csv", "row 2 ('001.png')", "non-finite", "remove or fix that entry"]


def _csv_missing_column(tmp):
    path = _poses_file(tmp, "csv", lambda lines: lines.__setitem__(0, lines[0].replace("m23", "m2_3")))
    return _load(path), ["poses.csv", "row 1 ('000.png')", "m23", "give m00..m23"]


def _csv_text_cell(tmp):
    def edit(lines):
        cells = lines[1].split(",")
        cells[4] = "one"
        lines[1] = ",".join(cells)

    path = _poses_file(tmp, "csv", edit)
    return _load(path), ["row 1 ('000.png')", "'one'", "plain decimal number"]


def _llff_shape(tmp):
    np.save(tmp / "poses_bounds.npy", np.zeros((3, 15)))
    return _load(tmp / "poses_bounds.npy"), ["poses_bounds.npy", "[N, 17]", "(3, 15)"]


def _llff_nan(tmp):
    photos(tmp / "images")
    arr = np.ones((3, 17))
    arr[1, 3] = np.nan
    np.save(tmp / "poses_bounds.npy", arr)
    return _load(tmp / "poses_bounds.npy"), ["poses_bounds.npy", "rows 1", "non-finite", "fix or remove those rows"]


def _llff_count(tmp):
    photos(tmp / "images", names=("a.png", "b.png"))
    np.save(tmp / "poses_bounds.npy", np.ones((3, 17)))
    return _load(tmp / "poses_bounds.npy"), ["3 poses but 2 images", "remove extra images"]


def _no_poses_file(tmp):
    return _load(tmp / "poses.json"), ["poses.json", "does not exist", "check the path"]


def _unknown_format(tmp):
    (tmp / "poses.yaml").write_text("frames: []")
    return _load(tmp / "poses.yaml"), ["poses.yaml", "cannot tell the poses format", "pass fmt="]


def _scene_json_nan(tmp):
    datasets.toy_scene(tmp, num_images=3)
    d = json.loads((tmp / "scene.json").read_text())
    d["frames"][1]["c2w"][0][3] = float("nan")
    (tmp / "scene.json").write_text(json.dumps(d))
    return _load(tmp / "scene.json"), ["scene.json", "image '001.png'", "non-finite", "remove or fix that entry"]


BAD_POSES = {
    "poses name missing images": _missing_images,
    "NaN in a pose": _nan_pose,
    "scaled rotation": _scaled_rotation,
    "mirrored rotation": _mirrored_rotation,
    "3x3 matrix": _matrix_3x3,
    "4x4 with a bad last row": _bad_last_row,
    "wrong convention flag": _wrong_convention,
    "no convention flag": _missing_convention,
    "duplicate image names": _duplicate_names,
    "csv: NaN in a row": _csv_nan,
    "csv: matrix column missing": _csv_missing_column,
    "csv: text in a matrix cell": _csv_text_cell,
    "llff: wrong array shape": _llff_shape,
    "llff: NaN in a row": _llff_nan,
    "llff: more poses than images": _llff_count,
    "poses file missing": _no_poses_file,
    "unknown poses format": _unknown_format,
    "scene.json: NaN in a pose": _scene_json_nan,
}

# ------------------------------------------------------------------ training config and trained models


def _batch_not_divisible(tmp):
    scene = datasets.toy_scene(tmp, num_images=2, width=4, height=3)
    data = datasets.load_dataset(scene, normalize=None)
    two_devices = types.SimpleNamespace(devices=np.empty(2))  # only its size is read before the check
    call = lambda: datasets.RayBatcher(data, batch_size=1001, mesh=two_devices)  # noqa: E731
    return call, ["batch_size=1001", "2 devices", "use a multiple of 2, e.g.", "1000, 1002"]


def _unknown_preset(tmp):
    return lambda: configs.get_preset("huge"), ["'huge'", "choose one of", "tiny"]


def _bad_override(tmp):
    return lambda: configs.override(configs.tiny(), lr=1e-3), ["'lr'", "did you mean 'lr_init'", "known:"]


def _bad_model_override(tmp):
    call = lambda: configs.get_preset("tiny", **{"model.num_sample": 8})  # noqa: E731
    return call, ["model config field 'num_sample'", "did you mean", "known:"]


def _bad_override_value(tmp):
    return lambda: configs.override(configs.tiny(), batch_size=0), ["Config.batch_size must be >= 1", "got 0"]


def _model_without_config(tmp):
    (tmp / "model").mkdir()
    call = lambda: checkpoint.restore_params(tmp / "model", parallel.make_mesh())  # noqa: E731
    return call, ["config.json", "not a trained model folder", "the model/ folder that training wrote"]


def _trained_model(tmp, steps=()):
    checkpoint.save_config(tmp / "model", configs.tiny())
    if steps:
        with checkpoint.Checkpointer(checkpoint.checkpoint_dir(tmp / "model"), async_save=False) as ckpt:
            for step in steps:
                ckpt.save(step, {"params": {"w": np.zeros(2, np.float32)}})
    return tmp / "model"


def _model_without_checkpoints(tmp):
    model = _trained_model(tmp)
    return lambda: checkpoint.restore_params(model, parallel.make_mesh()), ["checkpoints", "train the model first"]


def _model_empty_checkpoints(tmp):
    model = _trained_model(tmp)
    checkpoint.checkpoint_dir(model).mkdir()
    call = lambda: checkpoint.restore_params(model, parallel.make_mesh())  # noqa: E731
    return call, ["checkpoints", "holds no checkpoint", "train the model first"]


def _model_missing_step(tmp):
    model = _trained_model(tmp, steps=(1,))
    call = lambda: checkpoint.restore_params(model, parallel.make_mesh(), step=5)  # noqa: E731
    return call, ["checkpoints", "no checkpoint of step 5", "available steps: 1", "leave step unset"]


def _corrupt_config_json(tmp):
    (tmp / "model").mkdir()
    (tmp / "model" / "config.json").write_text("{ half a file")
    call = lambda: checkpoint.restore_params(tmp / "model", parallel.make_mesh())  # noqa: E731
    return call, ["config.json", "cannot read config", "retrain"]


BAD_TRAINING = {
    "batch not divisible by devices": _batch_not_divisible,
    "unknown preset": _unknown_preset,
    "bad override name": _bad_override,
    "bad model override name": _bad_model_override,
    "bad override value": _bad_override_value,
    "model folder without config": _model_without_config,
    "model folder without checkpoints": _model_without_checkpoints,
    "empty checkpoints folder": _model_empty_checkpoints,
    "checkpoint step missing": _model_missing_step,
    "corrupt config.json": _corrupt_config_json,
}

CATALOGUE = {f"images: {k}": v for k, v in BAD_IMAGES.items()}
CATALOGUE |= {f"poses: {k}": v for k, v in BAD_POSES.items()}
CATALOGUE |= {f"training: {k}": v for k, v in BAD_TRAINING.items()}


@pytest.mark.parametrize("case", list(CATALOGUE))
def test_bad_input_names_the_culprit_and_the_fix(tmp_path, case):
    call, expected = CATALOGUE[case](tmp_path)
    with pytest.raises(ValueError) as err:
        call()
    message = str(err.value)
    for text in expected:
        assert text in message, f"{text!r} not in: {message}"


# ------------------------------------------------------------------ inputs that are fine


def test_grayscale_16bit_and_alpha_images_load_as_rgb(tmp_path):
    gray = noise(6, 8, c=1)
    deep = noise(6, 8, c=1, dtype=np.uint16)
    rgba = noise(6, 8, c=4)
    rgba[0, 0, 3], rgba[0, 1, 3] = 0, 255
    for name, pixels in {"gray.png": gray, "deep.png": deep, "rgba.png": rgba}.items():
        write_encoded(tmp_path / name, pixels)
    out = {n: images.load_image(tmp_path / n) for n in ("gray.png", "deep.png", "rgba.png")}
    assert all(x.shape == (6, 8, 3) and x.dtype == np.float32 for x in out.values())
    np.testing.assert_allclose(out["gray.png"], np.repeat(gray[..., None], 3, -1) / 255.0, atol=1e-6)
    np.testing.assert_allclose(out["deep.png"][..., 1], deep / 65535.0, atol=1e-6)
    np.testing.assert_allclose(out["rgba.png"][0, 0], 1.0)  # transparent -> white background
    np.testing.assert_allclose(out["rgba.png"][0, 1], rgba[0, 1, 2::-1] / 255.0, atol=1e-6)  # opaque: BGR -> RGB
    assert images.check_images(tmp_path) == [("deep.png", 8, 6), ("gray.png", 8, 6), ("rgba.png", 8, 6)]


def test_exif_rotated_jpeg_keeps_the_stored_layout_and_warns(tmp_path):
    photos(tmp_path, names=("a.png", "b.png"))
    rgb = np.zeros((6, 8, 3), np.uint8)
    rgb[:, :4] = 255  # left half white: stays on the left if the tag is ignored
    jpeg_with_orientation(tmp_path / "turned.jpg", rgb, 6)  # 6 = "rotate 90 CW" for viewers
    loaded = images.load_image(tmp_path / "turned.jpg")
    assert loaded.shape == (6, 8, 3)
    assert loaded[:, :3].mean() > 0.9 and loaded[:, 5:].mean() < 0.1
    with pytest.warns(UserWarning, match=r"turned\.jpg.*Re-export them with the rotation applied"):
        sizes = images.check_images(tmp_path)
    assert ("turned.jpg", 8, 6) in sizes


def test_unicode_spaces_and_stray_files_are_handled(tmp_path):
    names = ("vue du château.jpg", "日本 2.PNG", "plain.png")
    src = photos(tmp_path / "photos", names=names)
    (src / "notes.txt").write_text("x")
    (src / ".DS_Store").write_bytes(b"\0")
    (src / "thumbs").mkdir()
    garbage(src / "thumbs" / "broken.jpg")  # sub-folders are not searched
    assert images.list_images(src) == sorted(names)
    assert [s[0] for s in images.check_images(src)] == sorted(names)
    pyramid.make_pyramid(src, tmp_path / "images_2", 2, progress=False)
    assert sorted(p.name for p in (tmp_path / "images_2").iterdir()) == sorted(names)
    assert images.load_image(tmp_path / "images_2" / "日本 2.PNG").shape == (6, 8, 3)


def test_mixed_sizes_are_fine_with_one_camera_per_size(tmp_path):
    folder = photos(tmp_path, names=("a.png", "b.png"))
    write_encoded(folder / "big.png", noise(24, 32))
    assert images.check_images(folder) == [("a.png", 16, 12), ("b.png", 16, 12), ("big.png", 32, 24)]


# ------------------------------------------------------------------ through the workflow


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}




# ------------------------------------------------------------------ through the workflow


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_corrupt_photo_fails_before_any_job_and_keeps_every_earlier_output(workdir):  # noqa: F811
    """A photo that turns bad after a good run: the run fails before any job starts, naming the photo,
    the sheet row and the fix, and every output of the earlier run is byte-for-byte untouched
    (inside a job it would be too late: Snakemake deletes a job's outputs before running it).
    A fixed folder then runs again, decoding only the changed photo."""
    cup, mug = photos(workdir / "cup"), photos(workdir / "mug")
    write_sheet(workdir, HEADER, *(f"{s}\t{workdir / s}\tPINHOLE\t2\ttiny\texhaustive\t\t\t\t" for s in ("cup", "mug")))
    targets = ["results/cup/images_2", "results/mug/images_2"]
    good = run_snakemake(workdir, *targets)
    assert good.returncode == 0, good.stderr[-3000:]
    before = {t: _digests(workdir / t) for t in targets}
    garbage(cup / "junk.jpg")
    (cup / "a.png").touch()  # a changed photo: the cup's pyramid must be redone
    photos_before = _digests(cup)

    bad = run_snakemake(workdir, *targets)
    assert bad.returncode != 0
    expected = [str(cup / "junk.jpg"), "datasets.tsv, line 2 (scene 'cup'), column 'source'",
                "Remove these files or re-export them", "no earlier output was touched"]
    for text in expected:
        assert text in bad.stderr, f"{text!r} not on the terminal:\n{bad.stderr[-3000:]}"
    assert not re.search(r"^(local)?rule pyramid:", bad.stdout + bad.stderr, flags=re.M)  # no job started
    assert {t: _digests(workdir / t) for t in targets} == before
    assert _digests(cup) == photos_before

    (cup / "junk.jpg").unlink()
    fixed = run_snakemake(workdir, *targets)
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    assert re.search(r"^(local)?rule pyramid:", fixed.stdout + fixed.stderr, flags=re.M)  # the cup's pyramid redone for the touched photo

"""Bad inputs of issue #20: each fails naming the file or row and the fix, and destroys nothing.

Two tables, as in test_bad_inputs.py:
  * UNIT: the loaders and checks themselves (in-process, milliseconds): photo
    names, decompression bombs, poses files reaching outside the photo folder,
    the verbatim sheet reader, config values of the wrong type, localize
    options, the model-folder lock, damaged checkpoints.
  * WORKFLOW: after a good run (poses imported, image pyramid), one bad input
    each; the next `snakemake` fails before any job starts, naming the sheet
    row or config entry, the culprit and the fix, and every earlier output
    and photo is unchanged (checksums). Before #20 several of these failed
    inside a job, after Snakemake had deleted that job's earlier outputs, or
    not at all.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml

from nerflib import checkpoint, configs, datasets, fileio, images, localize, parallel, scene_io, sheet

from helpers.images import noise, write_encoded

REPO = Path(__file__).resolve().parents[1]


def photos(folder, names=("a.png", "b.png", "c.png", "d.png"), *, h=12, w=16):
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        write_encoded(folder / name, noise(h, w, seed=i))
    return folder


def png_declaring(path, width, height):
    """A 100-byte PNG whose header declares width x height pixels (a decompression bomb's look)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def truncated_jpeg(path):
    write_encoded(path, noise(32, 32, seed=7), params=(1, 90))  # 1 = cv2.IMWRITE_JPEG_QUALITY
    path.write_bytes(path.read_bytes()[:200])


def posed(tmp, names=None):
    """A toy scene's photos and its poses as a JSON poses file; (scene, photo folder, poses file)."""
    scene = datasets.toy_scene(tmp / "data", num_images=4)
    if names is not None:
        scene.names = names
    scene.image_dir = str(tmp / "data" / "images")
    scene_io.write_poses_json(scene, tmp / "poses.json")
    return scene, tmp / "data" / "images", tmp / "poses.json"


# ------------------------------------------------------------------ unit table


def _tab_in_name(tmp):
    folder = photos(tmp / "p", names=("a.png", "b.png", "c\td.png"))
    return lambda: images.check_images(folder), ["'c\\td.png'", "control characters", "Rename these files"]


def _newline_in_name(tmp):
    folder = photos(tmp / "p", names=("a.png", "b.png", "x\nmean\t99.png"))
    return lambda: images.list_images(folder), ["'x\\nmean\\t99.png'", "tab-separated outputs", "Rename these files"]


def _bomb(tmp):
    folder = photos(tmp / "p")
    png_declaring(folder / "bomb.png", 30000, 30000)
    return lambda: images.check_images(folder), ["bomb.png", "900000000 pixels", "Remove these files or re-export"]


def _poses_outside(tmp):
    _, folder, poses = posed(tmp)
    (folder.parent / "outside").mkdir()
    write_encoded(folder.parent / "outside" / "000.png", noise(12, 16))
    d = poses.read_text().replace('"000.png"', '"../outside/000.png"')
    poses.write_text(d)
    call = lambda: scene_io.load_poses_for_photos(poses, "json", folder)  # noqa: E731
    return call, ["poses.json", "../outside/000.png", "outside the photo folder", "name the photos relative"]


def _poses_absolute(tmp):
    _, folder, poses = posed(tmp)
    other = tmp / "elsewhere.png"
    write_encoded(other, noise(12, 16))
    poses.write_text(poses.read_text().replace('"000.png"', f'"{other}"'))
    call = lambda: scene_io.load_poses_for_photos(poses, "json", folder)  # noqa: E731
    return call, ["poses.json", "elsewhere.png", "outside the photo folder", "point the row's `source`"]


def _sheet_extra_cell(tmp):
    (tmp / "s.tsv").write_text("# notes\nscene\tsource\n\na\t/x\tstray\n")
    return lambda: sheet.read(tmp / "s.tsv"), ["s.tsv, line 4", "3 cells but the header has 2", "'stray'",
                                               "remove the extra cells"]


def _sheet_repeated_column(tmp):
    (tmp / "s.tsv").write_text("scene\tsource\tsource\n")
    return lambda: sheet.read(tmp / "s.tsv"), ["s.tsv, line 1", "repeated column(s) source", "one distinct name"]


def _sheet_empty(tmp):
    (tmp / "s.tsv").write_text("# only a comment\n\n")
    return lambda: sheet.read(tmp / "s.tsv"), ["s.tsv", "the sheet is empty", "write a header line"]


def _sheet_not_utf8(tmp):
    (tmp / "s.tsv").write_bytes(b"scene\tsource\na\t/caf\xe9\n")
    return lambda: sheet.read(tmp / "s.tsv"), ["s.tsv", "cannot read the dataset sheet", "save it as UTF-8"]


def _override(overrides):
    return lambda tmp: (lambda: configs.override(configs.tiny(), **overrides))


def _int_as_float(tmp):
    return _override({"max_steps": 400.0})(tmp), ["max_steps must be an int", "400.0", "write 400"]


def _number_as_text(tmp):
    return _override({"lr_init": "1e-3"})(tmp), ["lr_init must be a float", "'1e-3'", "write 1.0e-3"]


def _bool_as_int(tmp):
    return _override({"batch_size": True})(tmp), ["batch_size must be an int", "True"]


def _model_field_type(tmp):
    return _override({"model.num_glo_features": "4"})(tmp), ["model.num_glo_features must be an int", "'4'"]


def _list_item_type(tmp):
    return _override({"debug_nan_steps": [1, "two"]})(tmp), ["debug_nan_steps[1] must be an int", "'two'"]


def _scalar_for_list(tmp):
    return _override({"debug_nan_steps": 3})(tmp), ["debug_nan_steps must be a list", "got 3"]


def _localize_option_name(tmp):
    call = lambda: configs.check_fields(localize.Options, {"n_pixel": 64}, what="localize option")  # noqa: E731
    return call, ["unknown localize option 'n_pixel'", "did you mean 'n_pixels'", "known:"]


def _localize_option_type(tmp):
    call = lambda: configs.check_fields(localize.Options, {"iters": "many"}, what="localize option")  # noqa: E731
    return call, ["iters must be an int", "'many'"]


def _folder_locked(tmp):
    def call():
        with fileio.folder_lock(tmp / "model", what="training"), fileio.folder_lock(tmp / "model", what="training"):
            pass

    return call, [str(tmp / "model"), f"process {os.getpid()}", "is running training in it", "Wait for it to finish"]


def _every_checkpoint_damaged(tmp):
    checkpoint.save_config(tmp / "model", configs.tiny())
    with checkpoint.Checkpointer(checkpoint.checkpoint_dir(tmp / "model"), async_save=False) as ckpt:
        ckpt.save(1, {"params": {"w": np.zeros(2, np.float32)}})
    for path in (checkpoint.checkpoint_dir(tmp / "model") / "1").rglob("*"):
        if path.is_file():
            path.write_bytes(b"")
    call = lambda: checkpoint.restore_params(tmp / "model", parallel.make_mesh())  # noqa: E731
    return call, ["checkpoints", "holds no checkpoint that can be restored", "train the model first"]


UNIT = {
    "photo name with a tab": _tab_in_name,
    "photo name with a newline forging a row": _newline_in_name,
    "decompression bomb": _bomb,
    "poses file reaches outside the folder": _poses_outside,
    "poses file names an absolute path": _poses_absolute,
    "sheet row with an extra cell": _sheet_extra_cell,
    "sheet header with a repeated column": _sheet_repeated_column,
    "sheet with only comments": _sheet_empty,
    "sheet not UTF-8": _sheet_not_utf8,
    "int setting given as a float": _int_as_float,
    "float setting written as text": _number_as_text,
    "bool for an int": _bool_as_int,
    "model setting of the wrong type": _model_field_type,
    "list item of the wrong type": _list_item_type,
    "scalar for a list": _scalar_for_list,
    "unknown localize option": _localize_option_name,
    "localize option of the wrong type": _localize_option_type,
    "model folder locked by another training": _folder_locked,
    "every checkpoint damaged": _every_checkpoint_damaged,
}


@pytest.mark.parametrize("case", list(UNIT))
def test_bad_input_names_the_culprit_and_the_fix(tmp_path, case):
    call, expected = UNIT[case](tmp_path)
    with pytest.raises(ValueError) as err:
        call()
    for text in expected:
        assert text in str(err.value), f"{text!r} not in: {err.value}"


# ------------------------------------------------------------------ workflow table

HEADER = "scene\tsource\tcamera_model\tfactor\tpreset\tmatcher\tposes\tposes_format\trender_path\tqueries"
GOOD_TARGETS = ("results/cup/poses/scene.json", "results/cup/images_2")


def _row(source="photos", poses="poses.json", queries="", scene="cup"):
    return f"{scene}\t{source}\tPINHOLE\t2\ttiny\texhaustive\t{poses}\tjson\tnone\t{queries}"


def _write_sheet(workdir, *rows):
    (workdir / "config" / "datasets.tsv").write_text("\n".join([HEADER, *rows]) + "\n")


def _edit_config(workdir, section, key, value):
    path = workdir / "config" / "config.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg[section][key] = value
    path.write_text(yaml.safe_dump(cfg))


def _snakemake(workdir, *args):
    return subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
                           "--cores", "1", *args], capture_output=True, text=True, timeout=300)


def _digests(workdir):
    return {p.relative_to(workdir).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for top in ("results", "photos") for p in sorted((workdir / top).rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    """A finished run: 8 photos, their poses imported, the x2 pyramid."""
    workdir = tmp_path_factory.mktemp("good")
    shutil.copytree(REPO / "config", workdir / "config")
    scene = datasets.toy_scene(workdir / "toy", num_images=8)
    shutil.move(workdir / "toy" / "images", workdir / "photos")
    scene.image_dir = str(workdir / "photos")
    scene_io.write_poses_json(scene, workdir / "poses.json")
    _write_sheet(workdir, _row())
    result = _snakemake(workdir, *GOOD_TARGETS)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def _portrait(w):
    write_encoded(w / "photos" / "zz.png", noise(16, 12))  # 12x16: the others are 16x12
    _write_sheet(w, _row(poses=""))  # the row now asks SfM for one shared camera
    return ["line 2 (scene 'cup'), column 'source'", "zz.png (12x16)", "most are 16x12",
            "turn single_camera off"]


def _too_few(w):
    for p in sorted((w / "photos").iterdir())[2:]:
        p.unlink()
    return ["column 'source'", "holds 2 image(s), at least 3 are needed", "add more overlapping photos"]


def _poses_outside(w):
    (w / "outside").mkdir()
    shutil.copy(w / "photos" / "000.png", w / "outside" / "000.png")
    path = w / "poses.json"
    path.write_text(path.read_text().replace('"000.png"', '"../outside/000.png"'))
    return ["column 'poses'", "../outside/000.png", "outside the photo folder"]


def _poses_missing_photo(w):
    (w / "photos" / "003.png").unlink()
    return ["column 'poses'", "003.png", "are missing from"]


def _poses_garbage(w):
    (w / "poses.json").write_text("{ half a file")
    return ["column 'poses'", "poses.json"]


def _query_bomb(w):
    photos(w / "queries", names=("q1.png",))
    png_declaring(w / "queries" / "q2.png", 30000, 30000)
    _write_sheet(w, _row(queries="queries"))
    return ["column 'queries'", "q2.png", "900000000 pixels", "Remove these files or re-export"]


def _query_truncated(w):
    photos(w / "queries", names=("q1.png",))
    truncated_jpeg(w / "queries" / "q2.jpg")
    _write_sheet(w, _row(queries="queries"))
    return ["column 'queries'", "q2.jpg", "Remove these files or re-export"]


def _override_unknown(w):
    _edit_config(w, "train", "overrides", {"lr_intt": 0.01})
    return ["train.overrides", "'lr_intt'", "did you mean 'lr_init'", "Fix or remove the entry"]


def _override_text_number(w):
    path = w / "config" / "config.yaml"
    path.write_text(path.read_text().replace("overrides: {}", "overrides: {lr_init: 1e-3}"))  # YAML 1.1: text
    return ["train.overrides", "lr_init must be a float", "write 1.0e-3"]


def _localize_option(w):
    _edit_config(w, "localize", "options", {"refine_focus": True})
    return ["localize.options", "'refine_focus'", "did you mean 'refine_focal'"]


def _sheet_extra_cell(w):
    _write_sheet(w, _row() + "\tstray")
    return ["datasets.tsv, line 2", "'stray'", "remove the extra cells"]


def _case_clash(w):
    _write_sheet(w, _row(), _row(scene="Cup"))
    return ["'cup' and 'Cup' differ only by letter case", "Rename one of them"]


def _symlink_loop(w):
    (w / "loop").symlink_to(w / "loop")
    _write_sheet(w, _row(), _row(scene="mug", source=str(w / "loop")))
    return ["line 3 (scene 'mug'), column 'source'", "symbolic link loop"]


def _long_path(w):
    _write_sheet(w, _row(), _row(scene="mug", source=str(w / ("x" * 300))))
    return ["line 3 (scene 'mug'), column 'source'", "too long for the file system", "use a shorter path"]


def _tab_in_photo_name(w):
    write_encoded(w / "photos" / "a\tb.png", noise(12, 16))
    return ["column 'source'", "'a\\tb.png'", "Rename these files"]


WORKFLOW = {
    "portrait photo in a landscape set": _portrait,
    "too few photos": _too_few,
    "poses file reaches outside the folder": _poses_outside,
    "poses file names a removed photo": _poses_missing_photo,
    "poses file damaged": _poses_garbage,
    "query photo is a decompression bomb": _query_bomb,
    "query photo truncated": _query_truncated,
    "unknown training override": _override_unknown,
    "training override written as text": _override_text_number,
    "unknown localize option": _localize_option,
    "sheet row with an extra cell": _sheet_extra_cell,
    "scene names differing by case": _case_clash,
    "source is a symlink loop": _symlink_loop,
    "source path too long": _long_path,
    "photo name with a tab": _tab_in_photo_name,
}


@pytest.mark.parametrize("case", list(WORKFLOW))
def test_bad_input_fails_before_any_job_and_keeps_every_earlier_output(good_run, tmp_path, case):
    workdir = tmp_path / "w"
    shutil.copytree(good_run, workdir, symlinks=True)  # mtimes and Snakemake's metadata kept
    poses = workdir / "poses.json"
    poses.write_text(poses.read_text().replace(str(good_run), str(workdir)))
    before = _digests(workdir)
    expected = WORKFLOW[case](workdir)
    photos_now = {k: v for k, v in _digests(workdir).items() if k.startswith("photos/")}
    bad = _snakemake(workdir)
    assert bad.returncode != 0, bad.stdout[-2000:]
    text = " ".join((bad.stdout + bad.stderr).split())  # Snakemake wraps long messages
    for part in expected:
        assert " ".join(part.split()) in text, f"{part!r} not on the terminal:\n{bad.stderr[-3000:]}"
    assert not re.search(r"^(local)?rule \w+:", bad.stdout + bad.stderr, flags=re.M)  # no job started
    after = _digests(workdir)
    assert {k: v for k, v in after.items() if k.startswith("results/")} == \
        {k: v for k, v in before.items() if k.startswith("results/")}
    assert {k: v for k, v in after.items() if k.startswith("photos/")} == photos_now

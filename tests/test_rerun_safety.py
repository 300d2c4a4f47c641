"""Reruns and outputs you can trust (issue #20), unit by unit.

Training fingerprints (a changed input starts over, an unchanged one resumes),
damaged checkpoints, permissions under the umask, temp cleanup that leaves a
user's files alone, the verbatim sheet reader and TSVs that no name can split.
Bad inputs with their messages are in test_bad_inputs_reruns.py, the
workflow-level reruns in test_rerun.py.
"""

from __future__ import annotations

import csv
import io
import os

import numpy as np
import pytest

from nerflib import checkpoint, configs, datasets, fileio, fingerprint, images, parallel, scene_io, sheet
from nerflib import train as train_lib

from helpers.images import noise, write_encoded

# ------------------------------------------------------------------ fingerprints and training


def _toy(tmp_path, **overrides):
    scene = datasets.toy_scene(tmp_path / "data", num_images=6)
    cfg = configs.tiny(**{**dict(factor=1, normalize=None, batch_size=32, max_steps=4, print_every=1,
                                 checkpoint_every=2, test_every=0), **overrides})
    return cfg, scene


def _train(cfg, scene, out, logs):
    ds = datasets.load_for_config(cfg, scene, split="train")
    fp = fingerprint.of_training(cfg, ds)
    summary = train_lib.train(cfg, ds, out, progress=False, tb=False, log=logs.append, fingerprint=fp)
    return summary, fp


def test_fingerprint_names_what_changed(tmp_path):
    cfg, scene = _toy(tmp_path)
    ds = datasets.load_for_config(cfg, scene, split="train")
    a = fingerprint.of_training(cfg, ds)
    assert fingerprint.differences(a, fingerprint.of_training(cfg, ds)) == []
    # Run-only settings resume; a setting of the science does not.
    assert fingerprint.differences(a, fingerprint.of_training(configs.override(cfg, checkpoint_every=7), ds)) == []
    (reason,) = fingerprint.differences(a, fingerprint.of_training(configs.override(cfg, lr_init=0.5), ds))
    assert "lr_init" in reason and "0.5" in reason
    # One photo's pixels change, one photo goes.
    paths = sorted((tmp_path / "data" / "images").iterdir())
    write_encoded(paths[0], noise(12, 16, seed=3))
    paths[1].unlink()
    keep = [i for i, n in enumerate(scene.names) if n != paths[1].name]
    sub = scene_io.read_scene_json(tmp_path / "data" / "scene.json")
    sub.names = [sub.names[i] for i in keep]
    sub.c2w = sub.c2w[keep]
    sub.camera_idx = sub.camera_idx[keep]
    b = fingerprint.of_training(cfg, datasets.load_for_config(cfg, sub, split="train"))
    reasons = " | ".join(fingerprint.differences(a, b))
    assert f"1 training image(s) removed: {paths[1].name}" in reasons
    assert f"1 training image(s) changed: {paths[0].name}" in reasons
    assert "no record" in fingerprint.differences(None, b)[0]


def test_changed_inputs_train_from_scratch_and_equal_inputs_resume(tmp_path):
    cfg, scene = _toy(tmp_path)
    out = tmp_path / "model"
    logs: list[str] = []
    first, fp = _train(cfg, scene, out, logs)
    assert first["start_step"] == 0 and first["final_step"] == 4
    assert fingerprint.read(out) == fp
    # Same inputs: resumes at the end (nothing to do), as before.
    logs.clear()
    again, _ = _train(cfg, scene, out, logs)
    assert again["start_step"] == 4 and "fresh_start" not in again
    # More steps and another learning rate: starts over, the old run moved aside, the log says why.
    logs.clear()
    changed = configs.override(cfg, lr_init=cfg.lr_init * 3)
    fresh, fp2 = _train(changed, scene, out, logs)
    assert fresh["start_step"] == 0 and fresh["final_step"] == 4
    assert any("lr_init" in r for r in fresh["fresh_start"])
    text = "\n".join(logs)
    assert "not of this training run" in text and "training from scratch" in text and "lr_init" in text
    assert (out / train_lib.OLD_RUN_DIR / "checkpoints").is_dir() and (out / train_lib.OLD_RUN_DIR / "train.tsv").is_file()
    assert fingerprint.read(out) == fp2 and fingerprint.read(out / train_lib.OLD_RUN_DIR) == fp
    steps = [int(line.split("\t")[0]) for line in (out / "train.tsv").read_text().splitlines()[1:]]
    assert steps == [1, 2, 3, 4]
    # A fresh run equals a clean run in a new folder (same parameters, bit for bit on the CPU).
    _train(changed, scene, tmp_path / "clean", [])
    got = checkpoint.restore_params(out, parallel.make_mesh())[1]
    want = checkpoint.restore_params(tmp_path / "clean", parallel.make_mesh())[1]
    for x, y in zip(_leaves(got), _leaves(want), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # Checkpoints without any fingerprint (an older version's): not trusted.
    (out / fingerprint.FILE_NAME).unlink()
    logs.clear()
    again, _ = _train(changed, scene, out, logs)
    assert again["start_step"] == 0 and "no record" in again["fresh_start"][0]


def _leaves(tree):
    import jax

    return jax.tree_util.tree_leaves(tree)


def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    model = tmp_path / "model"
    checkpoint.save_config(model, configs.tiny())
    with checkpoint.Checkpointer(checkpoint.checkpoint_dir(model), async_save=False) as ckpt:
        for step in (1, 2, 3):
            ckpt.save(step, {"params": {"w": np.full(2, step, np.float32)}})
    for path in (checkpoint.checkpoint_dir(model) / "3").rglob("*"):
        if path.is_file():
            path.write_bytes(b"")  # a disk that filled up
    empty = checkpoint.checkpoint_dir(model) / "2"
    for path in sorted(empty.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    messages = []
    with checkpoint.Checkpointer(checkpoint.checkpoint_dir(model), keep=10) as ckpt:
        tree, step = ckpt.restore_latest_good(parallel.make_mesh(), log=messages.append, move_aside=True)
    assert step == 1 and np.asarray(tree["params"]["w"]).tolist() == [1.0, 1.0]
    assert len(messages) == 2 and all("cannot be restored" in m and "falling back" in m for m in messages)
    assert sorted(p.name for p in (model / checkpoint.CORRUPT_DIR).iterdir()) == ["2", "3"]
    assert checkpoint.restore_params(model, parallel.make_mesh())[2] == 1  # readers see the good one


# ------------------------------------------------------------------ files: permissions and temps


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077, 0o002])
def test_atomic_writes_respect_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        fileio.write_text(tmp_path / "a.txt", "x")
        fileio.write_image(tmp_path / "b.png", np.zeros((2, 2, 3), np.uint8))
        with open(tmp_path / "plain.txt", "w") as f:  # what an ordinary write gives
            f.write("x")
    finally:
        os.umask(old)
    plain = (tmp_path / "plain.txt").stat().st_mode & 0o777
    assert plain == 0o666 & ~mask
    for name in ("a.txt", "b.png"):
        assert (tmp_path / name).stat().st_mode & 0o777 == plain, name


def test_temp_cleanup_only_touches_our_tagged_files_in_named_folders(tmp_path):
    ours = fileio.temp_path_for(tmp_path / "metrics.tsv")
    deep = fileio.temp_path_for(tmp_path / "views" / "a.png")
    elsewhere = fileio.temp_path_for(tmp_path / "user" / "x.png")
    user = [tmp_path / ".env.12345678", tmp_path / ".metrics.tsv.abcd1234.tsv", tmp_path / "views" / ".b.png.a1b2c3d4.png",
            tmp_path / "user" / ".cache.12345678"]
    for path in user:
        path.parent.mkdir(exist_ok=True)
        path.write_text("mine")
    removed = fileio.remove_stale_temps(tmp_path, subfolders=("views",))
    assert sorted(removed) == sorted([ours, deep])
    assert elsewhere.exists() and all(p.exists() for p in user)


# ------------------------------------------------------------------ the sheet


def _sheet(tmp_path, text):
    path = tmp_path / "datasets.tsv"
    path.write_text(text)
    return path


def test_sheet_cells_are_verbatim(tmp_path):
    path = _sheet(tmp_path, "# a comment\nscene\tsource\n\n  # indented comment\n"
                            'a\t/data/photos#2\nb\t"/data/quoted"\nc\t/data/it\'s, fine\t\n')
    columns, rows = sheet.read(path)
    assert columns == ["scene", "source"]
    assert [(n, r["source"]) for n, r in rows] == [(5, "/data/photos#2"), (6, '"/data/quoted"'), (7, "/data/it's, fine")]


def test_sheet_paths_loops_long_names_and_case_clashes(tmp_path):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    assert "symbolic link loop" in sheet.path_problem(loop)
    assert "too long" in sheet.path_problem(tmp_path / ("x" * 300))
    assert "does not exist" in sheet.path_problem(tmp_path / "nope")
    assert sheet.path_problem(tmp_path) is None
    assert sheet.case_clashes(["Garden", "garden", "cup"]) == [("Garden", "garden")]
    assert sheet.case_clashes(["a", "b"]) == []


# ------------------------------------------------------------------ names and TSVs


def test_a_tsv_cell_cannot_split_a_row_or_forge_the_mean():
    forged = "x.png\t99\t1\nmean\t99.0\t1.0"
    text = fileio.tsv_text([("name", "psnr", "ssim"), (forged, "20.0", "0.5"), ("mean", "20.0", "0.5")])
    rows = list(csv.reader(io.StringIO(text), delimiter="\t"))
    assert rows == [["name", "psnr", "ssim"], [forged, "20.0", "0.5"], ["mean", "20.0", "0.5"]]


def test_good_overrides_pass_and_ints_are_floats_where_floats_are_asked():
    cfg = configs.override(configs.tiny(), lr_init=1, max_steps=10, near=None, debug_nan_steps=[1, 2])
    assert cfg.lr_init == 1.0 and isinstance(cfg.lr_init, float) and cfg.debug_nan_steps == (1, 2)


def test_the_photo_manifest_changes_when_a_photo_is_overwritten_in_place(tmp_path):
    """A folder's mtime misses a photo rewritten under its own name; the manifest (a declared input) does not."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        write_encoded(folder / f"{i}.png", noise(4, 4, seed=i))
    manifest = tmp_path / "manifest.json"
    assert images.write_manifest(folder, manifest)
    assert not images.write_manifest(folder, manifest)  # nothing changed: not rewritten (its mtime stays)
    folder_mtime = folder.stat().st_mtime_ns
    stamp = os.stat(folder / "1.png")
    write_encoded(folder / "1.png", noise(4, 4, seed=9))  # same name, other pixels
    os.utime(folder / "1.png", ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 1_000_000))
    assert folder.stat().st_mtime_ns == folder_mtime  # what Snakemake sees of the folder: unchanged
    assert images.write_manifest(folder, manifest)


def test_the_single_camera_check_sees_photos_upright(tmp_path):
    """A photo stored landscape but tagged 'rotate 90' is portrait once the intake step turns it: the
    workflow's pre-job check (upright=True) names it instead of SfM failing inside the job."""
    from PIL import Image

    for i in range(3):
        exif = Image.Exif()
        exif[0x0112] = 6 if i == 2 else 1
        Image.fromarray(noise(12, 16, seed=i)).save(tmp_path / f"{i}.jpg", exif=exif)
    with pytest.warns(UserWarning, match="EXIF rotation"):
        assert len(images.check_images(tmp_path, single_camera=True)) == 3  # stored sizes: all 16x12
    with pytest.raises(ValueError, match=r"most are 16x12, these differ: 2\.jpg \(12x16\)"):
        images.check_images(tmp_path, single_camera=True, upright=True)

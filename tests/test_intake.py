"""Intake through the real workflow: HEIC photos, EXIF-rotated photos and a video file as `source`.

Each case runs Snakemake on a tiny capture up to the image pyramid (intake ->
pyramid, no SfM), so the photos every later step reads are checked: upright,
decoded, in capture order.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from nerflib import images, intake

REPO = Path(__file__).resolve().parents[1]
HEADER = "scene\tsource\tcamera_model\tfactor\tpreset\tmatcher"


def pattern(seed: int, width=96, height=64) -> np.ndarray:
    """A smooth, asymmetric test picture (uint8 RGB): rotations and flips change it."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([255 * x / width, 255 * y / height, 128 + 60 * np.sin((x + 2 * y + 9 * seed) / 9)], axis=-1)
    rgb[: height // 4, : width // 3] = (255, 255, 0)  # a yellow corner block: top left when upright
    return np.clip(rgb, 0, 255).astype(np.uint8)


def run_workflow(workdir: Path, source, targets, queries="", **config):
    shutil.copytree(REPO / "config", workdir / "config")
    (workdir / "config" / "datasets.tsv").write_text(
        f"{HEADER}\tqueries\ncap\t{source}\tPINHOLE\t2\ttiny\tsequential\t{queries}\n")
    settings = yaml.safe_load((workdir / "config" / "config.yaml").read_text())
    settings["intake"]["video_fps"] = config.get("fps", 2.0)
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(settings))
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--cores", "1",
         *targets],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result


def load(path) -> np.ndarray:
    return np.asarray(images.load_image(path) * 255, dtype=np.float32)


def test_needs_intake_says_why(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    Image.fromarray(pattern(0)).save(plain / "a.jpg")
    assert intake.needs_intake(plain) == ""
    rotated = tmp_path / "rotated"
    shutil.copytree(plain, rotated)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pattern(1)).save(rotated / "b.jpg", exif=exif)
    assert "EXIF rotation" in intake.needs_intake(rotated)
    video = tmp_path / "v.mp4"
    video.write_bytes(b"\0")
    assert "video" in intake.needs_intake(video)


def test_heic_photos(tmp_path):
    """HEIC photos (and a JPEG beside them) -> JPEG copies / a link -> pyramid at factor 2."""
    import pillow_heif

    pillow_heif.register_heif_opener()
    photos = tmp_path / "phone"
    photos.mkdir()
    originals = {}
    for i in range(3):
        originals[f"IMG_{i}.jpg"] = pattern(i)
        Image.fromarray(pattern(i)).save(photos / f"IMG_{i}.HEIC", quality=95)
    originals["extra.jpg"] = pattern(7)
    Image.fromarray(pattern(7)).save(photos / "extra.jpg", quality=95)
    run_workflow(tmp_path / "run", photos, ["results/cap/images_2"])
    out = tmp_path / "run" / "results" / "cap"
    assert images.list_images(out / "photos") == sorted(originals)
    assert (out / "photos" / "extra.jpg").is_symlink()  # plain photos are linked, not copied
    with Image.open(out / "photos" / "IMG_0.jpg") as im:
        assert im.format == "JPEG" and im.size == (96, 64)
    for name, original in originals.items():
        half = load(out / "images_2" / name)
        assert half.shape == (32, 48, 3)
        reference = original.astype(np.float32).reshape(32, 2, 48, 2, 3).mean(axis=(1, 3))
        assert np.abs(half - reference).mean() < 6, name  # HEIC and JPEG are lossy: a few levels
    log = (tmp_path / "run" / "logs" / "intake" / "cap.log").read_text()
    assert "'converted': 3, 'linked': 1" in log


# EXIF orientation -> the upright picture, from the stored pixels (TIFF/EXIF 2.3 definitions, in numpy).
UPRIGHT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],  # mirrored left-right
    3: lambda a: a[::-1, ::-1],  # turned 180 degrees
    4: lambda a: a[::-1],  # mirrored top-bottom
    5: lambda a: a.transpose(1, 0, 2),  # mirrored along the main diagonal
    6: lambda a: np.rot90(a, k=-1),  # turned 90 degrees clockwise to view
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # mirrored along the other diagonal
    8: lambda a: np.rot90(a, k=1),  # turned 90 degrees counter-clockwise to view
}


def test_upright_photos_every_orientation(tmp_path):
    """All eight EXIF orientations, lossless (PNG): the copy is exactly the upright picture, the tag gone."""
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    for orientation in UPRIGHT:
        exif = Image.Exif()
        exif[0x0112] = orientation
        Image.fromarray(pattern(orientation)).save(src / f"o{orientation}.png", exif=exif)
    result = intake.upright_photos(src, out)
    assert result["linked"] == ["o1.png"] and len(result["converted"]) == 7
    for orientation, turn in UPRIGHT.items():
        with Image.open(out / f"o{orientation}.png") as im:
            assert im.getexif().get(0x0112, 1) == 1
            np.testing.assert_array_equal(np.asarray(im.convert("RGB")), turn(pattern(orientation)), str(orientation))


def test_exif_rotated_photos_are_used_upright(tmp_path, orientation=6, turn=-1):
    """A phone's portrait photo (landscape pixels + an EXIF rotation) reaches the pyramid upright."""
    photos = tmp_path / "phone"
    photos.mkdir()
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x8769] = {0xA405: 26}  # Exif IFD: FocalLengthIn35mmFilm, which COLMAP starts from
    stored = {f"p{i}.jpg": pattern(i) for i in range(3)}
    for name, pixels in stored.items():
        Image.fromarray(pixels).save(photos / name, quality=98, exif=exif)
    run_workflow(tmp_path / "run", photos, ["results/cap/images_2"])
    out = tmp_path / "run" / "results" / "cap"
    for name, pixels in stored.items():
        upright = np.rot90(pixels, k=turn)  # the independent reference: numpy's rotation
        with Image.open(out / "photos" / name) as im:
            assert im.getexif().get(0x0112, 1) == 1  # the tag is gone with the rotation applied
            assert im.getexif().get_ifd(0x8769).get(0xA405) == 26  # the rest of the EXIF stays
        full = load(out / "photos" / name)
        # JPEG twice (the photo, its upright copy) costs a few levels; a wrong turn costs ~50.
        assert full.shape == upright.shape and np.abs(full - upright).mean() < 8, name
        assert np.abs(full - np.rot90(upright, 2)).mean() > 30
        half = load(out / "images_2" / name)
        h, w = upright.shape[:2]
        reference = upright.astype(np.float32).reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3))
        assert half.shape == reference.shape and np.abs(half - reference).mean() < 8, name


def write_video(path: Path, *, fps=10, n=30) -> Path:
    """n frames of 96x64 at fps, each brighter than the one before."""
    import imageio_ffmpeg

    writer = imageio_ffmpeg.write_frames(str(path), (96, 64), fps=fps, quality=9, macro_block_size=16)
    writer.send(None)
    for k in range(n):
        writer.send(np.full((64, 96, 3), 20 + 7 * k, np.uint8))  # brightness grows with time
    writer.close()
    return path


def test_nerf_intake_by_hand(tmp_path):
    from nerflib import cli

    video = write_video(tmp_path / "walk.mp4")
    assert cli.main(["intake", str(video), str(tmp_path / "frames"), "--fps", "5", "--max-frames", "4"]) == 0
    assert images.list_images(tmp_path / "frames") == [f"frame_{i:05d}.jpg" for i in range(1, 5)]
    with pytest.raises(ValueError, match="cannot extract frames"):
        intake.prepare(write_bytes(tmp_path / "broken.mp4"), tmp_path / "none")
    assert not (tmp_path / "none").exists() and not (tmp_path / ".none.intake").exists()


def write_bytes(path: Path) -> Path:
    path.write_bytes(b"not a video")
    return path


def test_video_source_gives_frames_in_capture_order(tmp_path):
    """A video as source: frames at intake.video_fps, named in capture order (for the sequential matcher)."""
    video = write_video(tmp_path / "walk.mp4", fps=10, n=30)  # 3 s of video
    run_workflow(tmp_path / "run", video, ["results/cap/images_2"], fps=2.0)
    out = tmp_path / "run" / "results" / "cap"
    names = images.list_images(out / "photos")
    assert names == [f"frame_{i:05d}.jpg" for i in range(1, 7)]  # 3 s at 2 frames per second
    brightness = [load(out / "photos" / name).mean() for name in names]
    assert all(b < a for b, a in zip(brightness, brightness[1:])), brightness  # capture order
    assert images.list_images(out / "images_2") == names
    assert load(out / "images_2" / names[0]).shape == (32, 48, 3)


def test_rotated_query_photos_are_used_upright(tmp_path):
    """A row's `queries` folder with EXIF-rotated photos: rule intake_queries writes them upright."""
    plain, queries = tmp_path / "photos", tmp_path / "queries"
    plain.mkdir()
    queries.mkdir()
    for i in range(2):
        Image.fromarray(pattern(i)).save(plain / f"{i}.jpg", quality=98)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pattern(5)).save(queries / "q.jpg", quality=98, exif=exif)
    result = run_workflow(tmp_path / "run", plain, ["results/cap/query_photos"], queries=queries)
    out = tmp_path / "run" / "results" / "cap"
    assert not (out / "photos").exists()  # plain upright photos are used in place
    upright = np.rot90(pattern(5), k=-1)
    full = load(out / "query_photos" / "q.jpg")
    assert full.shape == upright.shape and np.abs(full - upright).mean() < 8
    assert "intake_queries" in result.stderr


@pytest.mark.nightly  # 46 s on 2 cores: more than the suite's budget can spare (video intake is tested above)
def test_video_of_an_orbit_is_posed_with_the_sequential_matcher(tmp_path):
    """The demo's 40 orbit views as a video -> rule intake -> SfM (sequential) poses every frame on a circle."""
    import imageio_ffmpeg

    from nerflib import scene_io, synthetic

    demo = tmp_path / "demo"
    synthetic.generate(demo, n_views=40, n_heldout=0, n_queries=0, width=320, height=240, supersample=1)
    video = tmp_path / "orbit.mp4"
    writer = imageio_ffmpeg.write_frames(str(video), (320, 240), fps=10, quality=9, macro_block_size=16)
    writer.send(None)
    for name in images.list_images(demo / "images"):  # 000.jpg ... in orbit order
        writer.send(np.ascontiguousarray((images.load_image(demo / "images" / name) * 255).astype(np.uint8)))
    writer.close()
    shutil.copytree(REPO / "config", tmp_path / "run" / "config")
    settings = yaml.safe_load((tmp_path / "run" / "config" / "config.yaml").read_text())
    settings["intake"]["video_fps"] = 10.0
    (tmp_path / "run" / "config" / "config.yaml").write_text(yaml.safe_dump(settings))
    (tmp_path / "run" / "config" / "datasets.tsv").write_text(f"{HEADER}\norbit\t{video}\tPINHOLE\t4\ttiny\tsequential\n")
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path / "run"), "--cores",
         "2", "results/orbit/poses/summary.json"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    out = tmp_path / "run" / "results" / "orbit"
    frames = images.list_images(out / "photos")
    assert len(frames) == 40 and frames[0] == "frame_00001.jpg"
    summary = json.loads((out / "poses" / "summary.json").read_text())
    assert summary["matcher"] == "sequential" and summary["registered"] == summary["total"] == 40, summary
    assert summary["matched_pairs"] < 40 * 39 // 2  # neighbours only, not every pair
    centres = scene_io.read_scene_json(out / "poses" / "scene.json").c2w[:, :, 3]
    offsets = centres - centres.mean(axis=0)
    normal = np.linalg.svd(offsets)[2][-1]
    radii = np.linalg.norm(offsets - np.outer(offsets @ normal, normal), axis=1)
    assert radii.std() / radii.mean() < 0.02  # the orbit: one circle, in capture order around it
    angles = np.unwrap(np.arctan2(*(offsets @ np.linalg.svd(offsets)[2][:2].T).T[::-1]))
    steps = np.diff(angles)
    assert np.all(np.sign(steps) == np.sign(steps[0])) and abs(abs(angles[-1] - angles[0]) - 2 * np.pi * 39 / 40) < 0.1


def test_heic_by_hand_asks_for_intake_first(tmp_path):
    """`nerf pyramid` / `nerf poses` on a HEIC folder: a clear error naming `nerf intake` (COLMAP reads no HEIF)."""
    import pillow_heif

    from nerflib import pyramid, sfm

    pillow_heif.register_heif_opener()
    for i in range(3):
        Image.fromarray(pattern(i)).save(tmp_path / f"IMG_{i}.HEIC", quality=90)
    with pytest.raises(ValueError, match=r"HEIC/HEIF photos \(IMG_0.HEIC.*nerf intake"):
        pyramid.make_pyramid(tmp_path, tmp_path / "half", 2)
    with pytest.raises(ValueError, match=r"COLMAP cannot read; convert them first: nerf intake"):
        sfm.run_sfm(tmp_path, tmp_path / "scene", threads=1)
    assert images.load_image(tmp_path / "IMG_0.HEIC").shape == (64, 96, 3)  # nerflib itself reads them

"""Intake: turn what a user has (a phone folder, a video) into photos every step reads alike.

Every reader downstream uses the pixels as stored in the file: COLMAP (which
reads the photos itself, inside pycolmap, and ignores the EXIF orientation
tag), the pyramid, training, rendering (nerflib.images). So instead of
teaching each reader about EXIF, a source that needs it goes through this step
once and everything downstream reads its output, `results/{scene}/photos/`:

  * a video file (`VIDEO_EXTENSIONS`): frames at `fps` frames per second of
    video, extracted with the ffmpeg binary of imageio-ffmpeg (upright: ffmpeg
    applies the video's rotation), named frame_00001.jpg ... in capture order,
    so the `sequential` matcher works;
  * a folder with HEIC/HEIF photos (COLMAP cannot read them) or photos whose
    EXIF orientation is not 1 (portrait phone photos): these are written
    upright (orientation applied, the tag dropped, the rest of the EXIF such as
    the focal length kept for COLMAP): HEIF as JPEG (quality 95)
    under the same stem, a rotated photo under its own name and format; every
    other photo is linked (symlink), never copied.

A folder of plain, upright photos needs no intake and is used where it is
(`needs_intake` says which case a source is). Photos of mixed orientation
become images of two sizes: give such a capture one camera per photo
(`sfm.single_camera: false`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from nerflib import images

VIDEO_EXTENSIONS = (".mp4", ".mov", ".m4v", ".avi", ".mkv", ".webm")
JPEG_QUALITY = 95


def is_video(path: str | os.PathLike) -> bool:
    return Path(path).is_file() and str(path).lower().endswith(VIDEO_EXTENSIONS)


def _orientation(path: Path) -> int:
    """EXIF orientation tag of a (non-HEIF) photo; 1 when absent or unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return int(im.getexif().get(0x0112, 1) or 1)
    except Exception:
        return 1  # an unreadable photo is check_images' business, not ours


def needs_intake(source: str | os.PathLike) -> str:
    """Why `source` goes through the intake step ('' = it is used as it is)."""
    source = Path(source)
    if is_video(source):
        return f"{source.name} is a video: frames are extracted"
    if not source.is_dir():
        return ""
    try:
        names = images.list_images(source)
    except ValueError:  # no photos at all: check_images says so with the fix
        return ""
    heif = [n for n in names if images.is_heif(n)]
    if heif:
        return f"{len(heif)} HEIC/HEIF photo(s) are converted to JPEG"
    rotated = [n for n in names if _orientation(source / n) != 1]
    if rotated:
        return f"{len(rotated)} photo(s) carry an EXIF rotation: written upright"
    return ""


def extract_frames(video: str | os.PathLike, out_dir: str | os.PathLike, *, fps: float,
                   max_frames: int = 0) -> list[str]:
    """Frames of `video` at `fps` per second of video into out_dir/frame_00001.jpg ... (capture order)."""
    import imageio_ffmpeg

    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-i", str(video),
               "-vf", f"fps={fps}", "-q:v", "2"]
    if max_frames:
        command += ["-frames:v", str(int(max_frames))]
    command.append(str(out_dir / "frame_%05d.jpg"))
    result = subprocess.run(command, capture_output=True, text=True)
    names = sorted(p.name for p in out_dir.glob("frame_*.jpg"))
    if result.returncode != 0 or not names:
        raise ValueError(f"cannot extract frames from {video} (ffmpeg: {result.stderr.strip()[-500:] or 'no frames'}); "
                         "check that the file plays, or extract photos yourself and give their folder as source")
    return names


def upright_photos(folder: str | os.PathLike, out_dir: str | os.PathLike) -> dict:
    """out_dir/: HEIF and EXIF-rotated photos of `folder` written upright, the others linked."""
    from PIL import Image, ImageOps

    folder, out_dir = Path(folder), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    converted, linked, taken = [], [], {}
    for name in images.list_images(folder):
        src = folder / name
        heif = images.is_heif(name)
        if heif:
            images.heif_available()
        orientation = 1 if heif else _orientation(src)
        # HEIF becomes JPEG; a rotated photo keeps its name and format (poses files refer to it).
        out_name = os.path.splitext(name)[0] + ".jpg" if heif else name
        if out_name.lower() in taken:
            raise ValueError(f"{folder}: {taken[out_name.lower()]} and {name} would both become {out_name}; "
                             "rename one of them")
        taken[out_name.lower()] = name
        dst = out_dir / out_name
        if heif or orientation != 1:
            with Image.open(src) as im:
                upright = ImageOps.exif_transpose(im)  # applies the tag and drops it (HEIF: already upright)
                # The rest of the EXIF stays: COLMAP starts from its focal length (FocalLengthIn35mmFilm).
                exif = upright.getexif()
                exif.pop(0x0112, None)
                tmp = dst.with_name(f".{dst.name}.tmp")
                fmt = Image.registered_extensions()[dst.suffix.lower()]
                if fmt == "JPEG":
                    upright.convert("RGB").save(tmp, format=fmt, quality=JPEG_QUALITY, exif=exif)
                elif fmt in ("PNG", "WEBP"):
                    upright.save(tmp, format=fmt, exif=exif)
                else:
                    upright.save(tmp, format=fmt)
                os.replace(tmp, dst)
            converted.append(out_name)
        else:
            if dst.is_symlink() or dst.exists():
                dst.unlink()
            dst.symlink_to(src.resolve())
            linked.append(out_name)
    return {"converted": converted, "linked": linked}


def prepare(source: str | os.PathLike, out_dir: str | os.PathLike, *, video_fps: float = 2.0,
            max_frames: int = 0) -> dict:
    """The intake step: photos of `source` (a video or a folder) upright in out_dir (replaced as a whole)."""
    source, out_dir = Path(source), Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.intake")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        if is_video(source):
            names = extract_frames(source, tmp, fps=video_fps, max_frames=max_frames)
            summary = {"source": str(source), "kind": "video", "fps": video_fps, "frames": len(names)}
        elif source.is_dir():
            result = upright_photos(source, tmp)
            summary = {"source": str(source), "kind": "photos", "converted": len(result["converted"]),
                       "linked": len(result["linked"])}
        else:
            raise ValueError(f"source {source} is neither a folder of photos nor a video "
                             f"({', '.join(VIDEO_EXTENSIONS)})")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    print(f"[intake] {out_dir}: {summary}", flush=True)
    return summary

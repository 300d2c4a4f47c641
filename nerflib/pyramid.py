"""Image pyramid: downsampled copies of the input photos (`images_{factor}/`).

Size rule (shared with `cameras.scale_camera`): an image of `width x height`
becomes `(width // factor) x (height // factor)` (floor). cv2.resize with
INTER_AREA maps the full input extent onto the full output extent (pixel
corners aligned), so intrinsics in COLMAP's convention (pixel centres at
+0.5) transform exactly by the *actual* ratios

    sx = (width // factor) / width,    sy = (height // factor) / height
    fx' = fx * sx, cx' = cx * sx,      fy' = fy * sy, cy' = cy * sy,

which equal 1/factor whenever the size divides evenly (all data sets here).
multinerf scales intrinsics by exactly 1/factor and gets its images from
ImageMagick `-resize 50%` (rounding to nearest); with our rule the
intrinsics stay exact for any size, which is what matters.

Pixels are read as stored (no EXIF rotation, see `nerflib.images`), in their
own depth and channels (16-bit and alpha survive), and written under the same
file name in the same format: JPEG at quality 95, PNG/TIFF/BMP lossless,
WebP lossless.
"""

from __future__ import annotations

import concurrent.futures
import os
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nerflib import fileio
from nerflib.images import is_heif, list_images, read_raw, verify_image

FACTORS = (1, 2, 4, 8)  # downscale factors of the sheet's `factor` column: images_{factor}/ (1: the photos themselves)

JPEG_QUALITY = 95


def pyramid_size(width: int, height: int, factor: int) -> tuple[int, int]:
    """Size (w, h) of an image of `width x height` downsampled by `factor` (floor)."""
    if isinstance(factor, bool) or not isinstance(factor, (int, np.integer)) or factor < 1:
        raise ValueError(f"factor must be a positive integer, got {factor!r}")
    w, h = int(width) // int(factor), int(height) // int(factor)
    if w < 1 or h < 1:
        raise ValueError(f"factor {factor} is too large for a {width}x{height} image; use a smaller factor")
    return w, h


def downsample(image: np.ndarray, factor: int) -> np.ndarray:
    """Downsample an OpenCV image (any depth/channels) by `factor` with INTER_AREA."""
    import cv2

    h, w = image.shape[:2]
    size = pyramid_size(w, h, factor)
    if factor == 1:
        return image.copy()
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _encode_params(suffix: str) -> list[int]:
    import cv2

    suffix = suffix.lower()
    if suffix in (".jpg", ".jpeg"):
        return [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
    if suffix == ".webp":
        return [cv2.IMWRITE_WEBP_QUALITY, 101]  # > 100 selects lossless WebP
    return []  # PNG, TIFF, BMP: lossless by default


def _is_up_to_date(src: Path, dst: Path) -> bool:
    try:
        return dst.stat().st_mtime >= src.stat().st_mtime
    except FileNotFoundError:
        return False


def _make_one(src: Path, dst: Path, factor: int) -> tuple[int, int]:
    import cv2

    verify_image(src)  # OpenCV would turn a truncated JPEG into a partly grey one
    image = read_raw(src)
    try:
        small = downsample(image, factor)
    except ValueError as e:
        raise ValueError(f"{src}: {e}") from e
    ok, buf = cv2.imencode(src.suffix, small, _encode_params(src.suffix))
    if not ok:
        raise OSError(f"could not encode {dst}")
    with fileio.atomic_path(dst) as tmp:
        tmp.write_bytes(buf.tobytes())
    return small.shape[1], small.shape[0]


def make_pyramid(
    src_dir: str | os.PathLike,
    dst_dir: str | os.PathLike,
    factor: int,
    *,
    threads: int = 1,
    progress: bool = True,
) -> dict:
    """Write every image of `src_dir` downsampled by `factor` into `dst_dir`.

    Incremental: a file whose output exists and is at least as new as its
    input is skipped. Each output is written to a temp name and renamed.
    Returns {"factor", "written": [names], "skipped": [names]}.
    """
    pyramid_size(1 << 30, 1 << 30, factor)  # validates factor
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    src_dir, dst_dir = Path(src_dir), Path(dst_dir)
    if src_dir.resolve() == dst_dir.resolve():
        raise ValueError(f"source and destination folders are the same: {src_dir}")
    names = list_images(src_dir)
    heif = [n for n in names if is_heif(n)]
    if heif:  # no HEIF encoder here, and COLMAP could not read them either
        raise ValueError(f"{src_dir} holds HEIC/HEIF photos ({', '.join(heif[:3])}{', ...' if len(heif) > 3 else ''}); "
                         f"convert them first: nerf intake {src_dir} PHOTOS_DIR (the workflow does it by itself)")
    todo = [n for n in names if not _is_up_to_date(src_dir / n, dst_dir / n)]
    pending = set(todo)
    skipped = [n for n in names if n not in pending]
    dst_dir.mkdir(parents=True, exist_ok=True)
    with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
        jobs = {pool.submit(_make_one, src_dir / n, dst_dir / n, factor): n for n in todo}
        bar = tqdm(
            concurrent.futures.as_completed(jobs),
            total=len(jobs),
            desc=f"pyramid x{factor}",
            unit="img",
            file=sys.stderr,
            disable=not progress or not jobs,
        )
        for job in bar:
            job.result()  # re-raise the first failure with its file name in the message
    return {"factor": int(factor), "written": todo, "skipped": skipped}

"""Listing, checking and loading the input photos.

Pixel layout (EXIF orientation): every reader in nerflib uses the pixels *as
stored in the file* and ignores the EXIF orientation tag. COLMAP does the same
(pycolmap 4.2.1 reports a 80x60 JPEG tagged "rotate 90" as width 80, height
60), so SfM intrinsics, the image pyramid and training all see one layout.
OpenCV's `cv2.IMREAD_COLOR` would rotate such images (OpenCV >= 3.1 applies
the tag unless `IMREAD_IGNORE_ORIENTATION` is set), so we read with
`IMREAD_UNCHANGED`, which never rotates. The orientation is applied once,
before any of these readers, by the workflow's intake step (nerflib.intake
writes EXIF-rotated and HEIC photos upright into results/{scene}/photos/);
`check_images` warns when a photo carries a non-trivial orientation tag.

Short names: `name` is a file name relative to the image folder; images are
returned as float32 `[H, W, 3]` RGB in [0, 1].
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import unicodedata
import warnings
from pathlib import Path

import numpy as np

from nerflib import fileio

# HEIC/HEIF (phones' default) decode through pillow-heif; COLMAP cannot read them, so the
# workflow's intake step (nerflib/intake.py) converts them to JPEG before SfM.
HEIF_EXTENSIONS = (".heic", ".heif")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", *HEIF_EXTENSIONS)

# How many offending files an error message names before it says "and N more".
_MAX_LISTED = 5

# EXIF tag 0x0112 (Orientation); 1 = stored pixels are upright.
_EXIF_ORIENTATION = 0x0112


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    if len(items) > _MAX_LISTED:
        shown += f" and {len(items) - _MAX_LISTED} more"
    return shown


def has_control_characters(name: str) -> bool:
    """True if `name` holds a control character (tab, newline, carriage return, escape, ...)."""
    return any(unicodedata.category(c) == "Cc" for c in name)


def is_image_name(name: str) -> bool:
    """True for a visible file name with a supported image extension (any case)."""
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def list_images(folder: str | os.PathLike) -> list[str]:
    """Sorted image file names (not paths) directly inside `folder`.

    Hidden files (".name") and files with other extensions are ignored;
    sub-folders are not searched.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(
            f"image folder {folder} does not exist (or is not a folder); "
            "point the scene's image folder at a directory of photos"
        )
    names = sorted(p.name for p in folder.iterdir() if p.is_file() and is_image_name(p.name))
    odd = [name for name in names if has_control_characters(name)]
    if odd:
        raise ValueError(
            f"{len(odd)} photo name(s) in {folder} hold control characters (tab, newline, ...): "
            f"{_listing([ascii(n) for n in odd])}; they would break the tab-separated outputs. "
            "Rename these files (letters, digits, spaces and punctuation are fine)"
        )
    if not names:
        raise ValueError(
            f"image folder {folder} holds no images; put the photos there as "
            f"{'/'.join(e.lstrip('.') for e in IMAGE_EXTENSIONS)} files "
            "(hidden files and sub-folders are ignored)"
        )
    return names


def is_heif(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(HEIF_EXTENSIONS)


def heif_available() -> bool:
    """Register pillow-heif's HEIC/HEIF opener with Pillow (once); False when it is not installed."""
    try:
        import pillow_heif
    except ImportError:
        return False
    if not getattr(heif_available, "registered", False):
        pillow_heif.register_heif_opener()
        heif_available.registered = True
    return True


def _need_heif(path: Path) -> None:
    if is_heif(path) and not heif_available():
        raise ValueError(f"{path} is a HEIC/HEIF photo and pillow-heif is not installed: pip install pillow-heif")


def _read_header(path: Path) -> tuple[int, int, int]:
    """(width, height, exif_orientation) after fully decoding the file.

    Pillow reads the header lazily; `load()` then decodes all pixels, which is
    what catches truncated files (OpenCV and COLMAP silently return a
    partly grey image for a truncated JPEG).
    """
    from PIL import Image

    _need_heif(path)
    with Image.open(path) as im:
        width, height = im.size  # stored size: Pillow does not apply EXIF rotation here
        try:
            orientation = int(im.getexif().get(_EXIF_ORIENTATION, 1) or 1)
        except Exception:  # a broken EXIF block is not a broken image
            orientation = 1
        im.load()
    return int(width), int(height), orientation


def _check_one(path: Path, size: int) -> tuple[int, int, int] | str:
    """(width, height, orientation), or why the file is not a readable image."""
    if size == 0:
        return "empty file"
    try:
        return _read_header(path)
    except Exception as e:  # Pillow raises several types for corrupt data
        return f"{type(e).__name__}: {e}"


def _read_cache(cache: str | os.PathLike | None) -> dict[str, list]:
    """name -> [size, mtime_ns, width, height, orientation] of photos found good before ({} if none)."""
    if cache is None:
        return {}
    try:
        images = json.loads(Path(cache).read_text())["images"]
        return {str(k): list(v) for k, v in images.items() if isinstance(v, list) and len(v) == 5}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}  # no cache yet, or an unreadable one: check everything


def verify_image(path: str | os.PathLike) -> None:
    """Raise ValueError (naming the file and the fix) unless `path` decodes completely.

    Catches what OpenCV lets through, e.g. a truncated JPEG (partly grey pixels).
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ValueError("empty file")
        _read_header(path)
    except Exception as e:  # Pillow raises several types for corrupt data
        raise ValueError(f"cannot read image {path} ({type(e).__name__}: {e}); "
                         "remove the file or re-export it from the original photo") from e


def check_images(
    folder: str | os.PathLike,
    *,
    min_images: int = 3,
    single_camera: bool = False,
    cache: str | os.PathLike | None = None,
    upright: bool = False,
) -> list[tuple[str, int, int]]:
    """Check that every photo in `folder` can be read; return [(name, width, height)].

    Raises ValueError naming the offending files when a file is empty or
    cannot be decoded, when fewer than `min_images` images are found, or (with
    `single_camera=True`, i.e. one shared set of intrinsics) when the images do
    not all have the same size. Warns (UserWarning) about EXIF-rotated photos.

    `cache`: a JSON file that remembers the photos found good (by name, size
    and modification time), so that only new or changed files are decoded
    again. The workflow checks every scene's photos this way before any job
    starts (a bad photo then fails the run before Snakemake deletes the
    outputs of an earlier good run).

    `upright`: the single-camera check compares the sizes the photos have once their EXIF
    orientation is applied (what the workflow's intake step writes; a photo turned by 90
    degrees swaps width and height), not the stored ones.
    """
    if min_images < 1:
        raise ValueError(f"min_images must be >= 1, got {min_images}")
    folder = Path(folder)
    names = list_images(folder)
    known = _read_cache(cache)
    stats = {name: (folder / name).stat() for name in names}
    stamp = {name: [st.st_size, st.st_mtime_ns] for name, st in stats.items()}
    headers = {name: tuple(known[name][2:]) for name in names
               if name in known and known[name][:2] == stamp[name]}
    todo = [name for name in names if name not in headers]
    with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:  # decoders release the GIL
        for name, header in zip(todo, pool.map(lambda n: _check_one(folder / n, stats[n].st_size), todo)):
            headers[name] = header
    bad = [f"{name} ({headers[name]})" for name in names if isinstance(headers[name], str)]
    good = {name: headers[name] for name in names if not isinstance(headers[name], str)}
    if cache is not None and todo:
        fileio.write_json(cache, {"folder": str(folder.resolve()),
                                  "images": {n: stamp[n] + list(h) for n, h in good.items()}})
    rotated = [name for name, (_, _, orientation) in good.items() if orientation != 1]
    sizes = [(name, w, h) for name, (w, h, _) in good.items()]
    if bad:
        raise ValueError(
            f"{len(bad)} of {len(names)} files in {folder} cannot be read as images: "
            f"{_listing(bad)}. Remove these files or re-export them from the original photos."
        )
    if len(names) < min_images:
        raise ValueError(
            f"image folder {folder} holds {len(names)} image(s), at least {min_images} are needed; "
            "add more overlapping photos of the scene"
        )
    if single_camera:
        if upright:  # EXIF orientations 5-8 turn the picture by 90 degrees
            sizes = [(n, h, w) if good[n][2] in (5, 6, 7, 8) else (n, w, h) for n, w, h in sizes]
        counts: dict[tuple[int, int], int] = {}
        for _, w, h in sizes:
            counts[(w, h)] = counts.get((w, h), 0) + 1
        if len(counts) > 1:
            common = max(counts, key=counts.get)
            odd = [f"{n} ({w}x{h})" for n, w, h in sizes if (w, h) != common]
            raise ValueError(
                f"images in {folder} have {len(counts)} different sizes but a single shared camera "
                f"was requested; most are {common[0]}x{common[1]}, these differ: {_listing(odd)}. "
                "Resize or remove them, or turn single_camera off (one camera per image size)."
            )
    if rotated:
        warnings.warn(
            f"{len(rotated)} image(s) in {folder} carry an EXIF rotation tag ({_listing(rotated)}); "
            "nerflib and COLMAP use the stored pixel layout and ignore the tag. The workflow writes "
            "such photos upright first (rule intake). Re-export them with the rotation applied, or run "
            "`nerf intake FOLDER OUT`, to use them by hand.",
            stacklevel=2,
        )
    return sizes


def write_manifest(folder: str | os.PathLike, path: str | os.PathLike) -> bool:
    """Write `path` listing each photo of `folder` with its size and modification time, if that
    list changed; True if written.

    A folder's own modification time changes when a photo is added, removed or renamed, but not
    when one is overwritten in place (a re-export under the same name). The workflow declares this
    file as an input beside the folder, so that a rewritten photo reruns what depends on it.
    """
    folder = Path(folder)
    entries = []
    for name in list_images(folder):
        st = (folder / name).stat()
        entries.append([name, st.st_size, st.st_mtime_ns])
    text = json.dumps({"folder": str(folder.resolve()), "photos": entries}, indent=1) + "\n"
    path = Path(path)
    try:
        if path.read_text() == text:
            return False
    except OSError:
        pass
    fileio.write_text(path, text)
    return True


def read_raw(path: str | os.PathLike):
    """The file's pixels as OpenCV stores them (BGR/BGRA/gray, uint8/uint16/float), no EXIF rotation."""
    import cv2

    path = Path(path)
    if is_heif(path):  # OpenCV has no HEIF decoder: Pillow + pillow-heif, as BGR like imdecode
        from PIL import Image

        _need_heif(path)
        try:
            with Image.open(path) as im:
                return np.ascontiguousarray(np.asarray(im.convert("RGB"))[..., ::-1])
        except Exception as e:
            raise ValueError(f"cannot decode image {path} ({type(e).__name__}: {e}); remove or re-export it") from e
    try:
        data = np.fromfile(path, dtype=np.uint8)  # imdecode: safe with any characters in the path
    except OSError as e:
        raise ValueError(f"cannot read image {path}: {e}") from e
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise ValueError(f"cannot decode image {path}; remove the file or re-export it")
    return image


def to_float_rgb(image: np.ndarray, *, background: str = "white", source: str = "image") -> np.ndarray:
    """OpenCV pixels (BGR/BGRA/gray, any depth) -> float32 [H, W, 3] RGB in [0, 1]."""
    if background not in ("white", "black"):
        raise ValueError(f"background must be 'white' or 'black', got {background!r}")
    if image.dtype == np.uint8:
        x = image.astype(np.float32) / 255.0
    elif image.dtype == np.uint16:
        x = image.astype(np.float32) / 65535.0
    elif image.dtype in (np.float32, np.float64):
        x = np.clip(image.astype(np.float32), 0.0, 1.0)
    else:
        raise ValueError(f"{source}: unsupported pixel type {image.dtype}")
    if x.ndim == 2:
        x = x[..., None]
    channels = x.shape[-1]
    if channels == 1:
        return np.repeat(x, 3, axis=-1)
    if channels == 2:  # gray + alpha
        x = np.concatenate([np.repeat(x[..., :1], 3, axis=-1), x[..., 1:]], axis=-1)
    elif channels == 3:
        return np.ascontiguousarray(x[..., ::-1])
    elif channels == 4:
        x = np.concatenate([x[..., 2::-1], x[..., 3:]], axis=-1)
    else:
        raise ValueError(f"{source}: unsupported number of channels {channels}")
    rgb, alpha = x[..., :3], x[..., 3:]
    bg = 1.0 if background == "white" else 0.0
    return (rgb * alpha + bg * (1.0 - alpha)).astype(np.float32)


def load_image(path: str | os.PathLike, *, background: str = "white") -> np.ndarray:
    """Read one photo as float32 [H, W, 3] RGB in [0, 1], stored pixel layout.

    Grayscale is replicated to 3 channels, 16-bit is divided by 65535, and an
    alpha channel is composited onto a `background` of "white" (the NeRF
    synthetic convention) or "black".
    """
    return to_float_rgb(read_raw(path), background=background, source=str(path))

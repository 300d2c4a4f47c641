"""Atomic file writes: every file a step writes goes to a temp name, then is renamed.

A process killed by SIGKILL (node failure, OOM killer) inside a write leaves
its temp file (`.NAME.XXXXXXXX.EXT` beside NAME): no handler runs. Each step
calls `remove_stale_temps` on the folders it writes before it writes, so a
rerun leaves none behind (tests/test_kill_resume.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from pathlib import Path

# `tempfile.mkstemp(prefix=".NAME.", suffix=EXT)`: 8 random characters from [a-z0-9_] between them.
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}(?P<ext>\.[^.]*)?$")


def temp_path_for(path: str | os.PathLike, suffix: str | None = None) -> Path:
    """A new empty temp file beside `path`, named as `atomic_path` names it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=suffix if suffix is not None else path.suffix
    )
    os.close(fd)
    return Path(tmp)


def is_temp_name(name: str) -> bool:
    """True for the name of an `atomic_path` temp file (`.NAME.XXXXXXXX.EXT`)."""
    return _TEMP_NAME.match(name) is not None


def remove_stale_temps(folder: str | os.PathLike, *, recursive: bool = False) -> list[Path]:
    """Delete the temp files of interrupted atomic writes in `folder` (and below); returns them.

    Call it before a step writes into a folder that no other process writes at
    the same time (one Snakemake job per output folder; process 0 of a
    multi-process job): a temp file found there is a leftover of a killed run.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    candidates = folder.rglob(".*") if recursive else folder.glob(".*")
    removed = []
    for path in sorted(candidates):
        if path.is_file() and not path.is_symlink() and is_temp_name(path.name):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None):
    """Yield a temp path next to `path`; rename it onto `path` only on success.

    The temp file keeps `path`'s extension (or `suffix`) so writers that pick a
    format from the name (OpenCV, mediapy) still work.
    """
    path = Path(path)
    tmp = temp_path_for(path, suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_image(path: str | os.PathLike, image, *, jpeg_quality: int = 95) -> None:
    """Write an RGB uint8 [H, W, 3] (or gray [H, W]) image atomically with OpenCV."""
    import cv2
    import numpy as np

    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 3:
        image = image[..., ::-1]
    with atomic_path(path) as tmp:
        params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if tmp.suffix.lower() in (".jpg", ".jpeg") else []
        if not cv2.imwrite(str(tmp), image, params):
            raise OSError(f"could not write image {path}")

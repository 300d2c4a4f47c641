"""Atomic file writes: every file a step writes goes to a temp name, then is renamed."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None):
    """Yield a temp path next to `path`; rename it onto `path` only on success.

    The temp file keeps `path`'s extension (or `suffix`) so writers that pick a
    format from the name (OpenCV, mediapy) still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=suffix if suffix is not None else path.suffix
    )
    os.close(fd)
    try:
        yield Path(tmp)
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

"""Atomic file writes: every file a step writes goes to a temp name, then is renamed.

A process killed by SIGKILL (node failure, OOM killer) inside a write leaves
its temp file (`.NAME.XXXXXXXX.dnerftmp.EXT` beside NAME): no handler runs.
Each step calls `remove_stale_temps` on the folders it writes before it
writes, so a rerun leaves none behind (tests/test_kill_resume.py). Only names
with the `.dnerftmp` tag are ever removed, and only in the folders a step
names (never recursively into a user's folder): a user's own `.env.12345678`
is not ours.

Permissions: a renamed temp file gets the mode an ordinary `open(path, "w")`
would give it, 0o666 minus the process umask (mkstemp alone makes it 0o600).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from pathlib import Path

# `tempfile.mkstemp(prefix=".NAME.", suffix=".dnerftmp" + EXT)`: 8 random characters from [a-z0-9_]
# after the prefix. The tag says the file is ours; the extension stays last for writers that pick a
# format from the name (OpenCV, mediapy).
TEMP_TAG = ".dnerftmp"
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}" + re.escape(TEMP_TAG) + r"(?P<ext>\.[^.]*)?$")


def umask() -> int:
    """The process umask (read from /proc where possible; os.umask set-and-restore otherwise)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    old = os.umask(0o022)
    os.umask(old)
    return old


def file_mode() -> int:
    """The mode a plain `open(path, "w")` gives a new file under the current umask."""
    return 0o666 & ~umask()


def temp_path_for(path: str | os.PathLike, suffix: str | None = None) -> Path:
    """A new empty temp file beside `path`, named as `atomic_path` names it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ext = suffix if suffix is not None else path.suffix
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_TAG + ext)
    os.close(fd)
    return Path(tmp)


def is_temp_name(name: str) -> bool:
    """True for the name of an `atomic_path` temp file (`.NAME.XXXXXXXX.EXT`)."""
    return _TEMP_NAME.match(name) is not None


def remove_stale_temps(folder: str | os.PathLike, *, subfolders: tuple[str, ...] = ()) -> list[Path]:
    """Delete the temp files of interrupted atomic writes in `folder`; returns them.

    subfolders: glob patterns, relative to `folder`, of the sub-folders the step
    writes too (e.g. "views", "frames/*"); nothing else below `folder` is looked at.
    Call it before a step writes into a folder that no other process writes at
    the same time (one Snakemake job per output folder; process 0 of a
    multi-process job): a temp file found there is a leftover of a killed run.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    folders = [folder] + sorted(p for pattern in subfolders for p in folder.glob(pattern)
                                if p.is_dir() and not p.is_symlink())
    candidates = [p for f in folders for p in f.glob(".*")]
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
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def tsv_text(rows) -> str:
    """Rows (the header first) as tab-separated text; a cell holding a tab, newline or quote is
    quoted as CSV does, so that no cell can split a row or forge another one."""
    import csv
    import io

    out = io.StringIO()
    writer = csv.writer(out, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerows(rows)
    return out.getvalue()


def write_tsv(path: str | os.PathLike, rows) -> None:
    """`tsv_text(rows)`, written atomically."""
    write_text(path, tsv_text(rows))


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


LOCK_NAME = ".lock"


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, *, what: str = "a step", main: bool = True):
    """Hold an exclusive lock on `folder` (flock on folder/.lock) while the block runs.

    A second process asking for the same folder fails at once with a ValueError naming the
    process that holds it. The kernel drops the lock when the holder exits, however it exits,
    so a killed run leaves no stale lock. `main=False` (the other processes of a
    multi-process run) takes no lock: process 0 holds it for all of them.
    """
    import fcntl

    if not main:
        yield
        return
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise ValueError(
                f"{folder} is in use: {holder} is running {what} in it. Wait for it to finish "
                "(or stop it) before starting another; two runs writing one model folder would "
                "mix their checkpoints."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()} on {os.uname().nodename}\n".encode(), 0)
        yield
    finally:
        os.close(fd)

"""Send a step's output to its log file, and its final error to the terminal too.

`log_to(path)` redirects file descriptors 1 and 2 (so output of C++ libraries
such as COLMAP's goes there as well) for the duration of a step. On failure the
traceback lands in the log, and a one-line error naming the log is written to
the original stderr, so a Snakemake user sees it on the terminal.
`progress_bar` is the one progress bar of the long loops (training, rendering, localization).
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from pathlib import Path


class StepError(Exception):
    """An error a user can fix: its message names the file and the fix."""


_terminals: list[int] = []  # the original stderr of each active log_to, innermost last


def tell(message: str) -> None:
    """Print `message` (to the log inside log_to) and also to the terminal the log hides."""
    print(message, flush=True)
    if _terminals:
        os.write(_terminals[-1], (message.rstrip("\n") + "\n").encode())


def progress_bar(total: int, *, desc: str | None = None, unit: str = "it", initial: int = 0, enabled: bool = True):
    """A tqdm bar on stderr, or None without tqdm. Shown only when `enabled` and stderr is a terminal
    (a rule's log file gets the log lines instead), or with DNERF_PROGRESS=1."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    shown = enabled and (sys.stderr.isatty() or os.environ.get("DNERF_PROGRESS") == "1")
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True,
                mininterval=1.0, disable=not shown)


@contextlib.contextmanager
def log_to(path: str | os.PathLike | None):
    if path is None:
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    log = open(path, "a", buffering=1)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    _terminals.append(saved_err)
    try:
        yield
    except BaseException as e:
        traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        message = f"ERROR: {type(e).__name__}: {e}\n       (full log: {path})\n"
        os.write(saved_err, message.encode())
        raise
    finally:
        _terminals.pop()
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        os.close(saved_out)
        os.close(saved_err)
        log.close()

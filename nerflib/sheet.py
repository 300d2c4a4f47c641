"""Reading the per-scene sheet (config/datasets.tsv) verbatim, and checking the paths in it.

The sheet is a plain tab-separated file, read without CSV quoting: a cell is
exactly the text between two tabs (surrounding spaces stripped), so `#`, quote
characters and commas in a path are kept as they are. A line whose first
non-blank character is `#` is a comment; blank lines are skipped. Line numbers
in errors are the file's own (comments and blank lines counted).

Validation against the JSON schema stays with the workflow (rules/common.smk);
this module only raises ValueError naming the file, the line and the fix.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path


def read(path: str | os.PathLike) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """(columns, [(line number, {column: cell})]) of a TSV sheet; empty cells are left out of each row."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM from spreadsheet exports is not part of the header
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read the dataset sheet {path}: {e}; save it as UTF-8 text") from e
    columns: list[str] | None = None
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        cells = [c.strip() for c in line.split("\t")]
        if columns is None:
            columns = cells
            seen = [c for i, c in enumerate(columns) if c in columns[:i]]
            if seen or "" in columns:
                what = f"repeated column(s) {', '.join(sorted(set(seen)))}" if seen else "an empty column name"
                raise ValueError(f"{path}, line {number}: the header has {what}; give every column one "
                                 "distinct name, separated by single tabs")
            continue
        if len(cells) > len(columns):
            extra = [c for c in cells[len(columns):] if c]
            if extra:
                raise ValueError(
                    f"{path}, line {number}: {len(cells)} cells but the header has {len(columns)} columns "
                    f"(extra: {', '.join(repr(c) for c in extra[:3])}); remove the extra cells or the stray "
                    "tab(s), or add the column to the header"
                )
        rows.append((number, {c: v for c, v in zip(columns, cells) if v != ""}))
    if columns is None:
        raise ValueError(f"{path}: the sheet is empty; write a header line and one row per scene (see README)")
    return columns, rows


def path_problem(path: str | os.PathLike) -> str | None:
    """Why `path` cannot be used as an input (missing, a symlink loop, too long, unreadable), or None."""
    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "is a symbolic link loop (a link that points back to itself); point it at the real folder"
        if e.errno == errno.ENAMETOOLONG:
            return f"is too long for the file system ({len(os.fsencode(path))} bytes); use a shorter path"
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            return f"does not exist (resolved to {Path(path).absolute()})"
        return f"cannot be read ({os.strerror(e.errno or 0)})"
    return None


def case_clashes(names: list[str]) -> list[tuple[str, str]]:
    """Pairs of names that differ only by letter case (one output folder on macOS/Windows file systems)."""
    first: dict[str, str] = {}
    clashes = []
    for name in names:
        key = name.casefold()
        if key in first and first[key] != name:
            clashes.append((first[key], name))
        first.setdefault(key, name)
    return clashes

"""Figures and tables for the Snakemake report (matplotlib, headless).

  camera_figure     camera centres and viewing directions (and the sparse points,
                    if any) in three views, with the pose summary in the title.
  training_figure   loss, PSNR and learning rate of train.tsv against step and
                    against wall-clock time.
  settings_table    the resolved training config as a two-column TSV.

Every writer is atomic (fileio) and returns the path it wrote.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from nerflib import fileio


def _figure(rows: int, cols: int, size: tuple[float, float]):
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt, *plt.subplots(rows, cols, figsize=size, squeeze=False)


def _save(plt, fig, path: str | os.PathLike) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    with fileio.atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())
    return Path(path)


MAX_FLAGGED_LABELS = 12  # photo names written next to flagged cameras


def camera_figure(scene, path: str | os.PathLike, *, summary: dict | None = None, max_points: int = 20000) -> Path:
    """Top, front and side views of the cameras (dots + viewing rays) and sparse points of `scene`.

    With the pose diagnostics in `summary` (run_sfm's "diagnostics"), the
    flagged photos (suspect path frames, weak images) are circled in red and
    named, and the title gives the figures and the warnings.
    """
    centres = np.asarray(scene.c2w)[:, :, 3]
    forward = np.asarray(scene.c2w)[:, :, 2]  # OpenCV: +z looks into the scene
    spread = float(np.ptp(centres, axis=0).max()) if len(centres) > 1 else 1.0
    points = scene.points
    if points is not None and len(points) > max_points:
        points = points[np.random.default_rng(0).choice(len(points), max_points, replace=False)]
    diag = (summary or {}).get("diagnostics") or {}
    suspect = set(diag.get("flagged", []))
    flagged = [k for k, n in enumerate(scene.names) if n in suspect]
    plt, fig, axes = _figure(1, 3, (15, 5))
    for ax, (i, j, name) in zip(axes[0], ((0, 1, "x-y"), (0, 2, "x-z"), (1, 2, "y-z"))):
        if points is not None and len(points):
            ax.scatter(points[:, i], points[:, j], s=0.3, c="0.6", alpha=0.5, linewidths=0)
        ax.quiver(centres[:, i], centres[:, j], forward[:, i], forward[:, j], color="tab:blue",
                  angles="xy", scale_units="xy", scale=1.0 / (0.08 * spread), width=0.003)
        ax.scatter(centres[:, i], centres[:, j], s=8, c=np.arange(len(centres)), cmap="viridis")
        for k in flagged:
            ax.scatter(centres[k, i], centres[k, j], s=40, facecolors="none", edgecolors="red", linewidths=1.2)
        for k in flagged[:MAX_FLAGGED_LABELS]:
            ax.annotate(scene.names[k], (centres[k, i], centres[k, j]), fontsize=6, color="red")
        ax.set_title(name)
        ax.set_aspect("equal", adjustable="datalim")
    title = f"{len(centres)} cameras"
    if summary:
        if "registered" in summary and "total" in summary:
            title += f" ({summary['registered']}/{summary['total']} registered)"
        if summary.get("mean_reprojection_error_px") is not None:
            title += f", mean reprojection error {summary['mean_reprojection_error_px']:.2f} px"
        if summary.get("points"):
            title += f", {summary['points']} points"
    title += " (colour = image order; arrows = viewing direction)"
    if diag:
        from nerflib import pose_checks

        title += "\n" + pose_checks.summary_line(diag)
        if diag.get("warnings"):
            title += (f"\nWARNING: {len(diag['warnings'])} pose warning(s); {len(flagged)} photo(s) flagged "
                      "(red circles): see poses/summary.json and docs/pose_diagnostics.md")
    fig.suptitle(title, color="red" if diag.get("warnings") else "black")
    return _save(plt, fig, path)


def read_train_tsv(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """train.tsv (header + one row per logged step) -> {column: float array}."""
    lines = [ln for ln in Path(path).read_text().splitlines() if ln.strip()]
    if not lines:
        raise ValueError(f"{path} is empty; was the model trained (model/train.tsv is written while training)?")
    header = lines[0].split("\t")
    rows = np.array([[float(v) for v in ln.split("\t")] for ln in lines[1:]], dtype=np.float64).reshape(-1, len(header))
    return {name: rows[:, k] for k, name in enumerate(header)}


def training_figure(train_tsv: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Loss (log scale), PSNR and learning rate against step (top) and wall-clock time (bottom)."""
    cols = read_train_tsv(train_tsv)
    plt, fig, axes = _figure(2, 3, (15, 7))
    xs = [("step", cols["step"], "step")]
    if "elapsed_s" in cols:
        xs.append(("elapsed_s", cols["elapsed_s"] / 60.0, "wall-clock (min)"))
    for r, (_, x, label) in enumerate(xs):
        for c, (key, ylabel, log) in enumerate((("loss", "loss", True), ("psnr", "training PSNR (dB)", False),
                                                ("lr", "learning rate", True))):
            ax = axes[r][c]
            if key in cols and len(x):
                ax.plot(x, cols[key], lw=1)
            if log:
                ax.set_yscale("log")
            ax.set_xlabel(label)
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
    if len(xs) == 1:
        for ax in axes[1]:
            ax.set_visible(False)
    return _save(plt, fig, path)


def settings_table(config: dict, path: str | os.PathLike) -> Path:
    """A flat `name<TAB>value` TSV of a (nested) config dict, nested keys dotted."""
    rows: list[tuple[str, str]] = []

    def walk(d: dict, prefix: str):
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                rows.append((f"{prefix}{k}", str(v)))

    walk(config, "")
    fileio.write_tsv(path, [("name", "value"), *rows])
    return Path(path)

"""What training reports: train.tsv (atomically rewritten), TensorBoard scalars, the progress bar.

`Reporter` is used by the loop in `nerflib.train`; `read_tsv` / `write_tsv` keep train.tsv
consistent with a resumed run (rows after the checkpoint's step are dropped).
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import numpy as np

from nerflib import fileio, logs

TSV_COLUMNS = ("step", "loss", "psnr", "lr", "rays_per_s", "elapsed_s")


def read_tsv(path: Path, upto_step: int) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    lines = path.read_text().splitlines()
    for line in lines[1:]:
        parts = line.split("\t")
        if len(parts) != len(TSV_COLUMNS):
            continue
        try:
            row = dict(zip(TSV_COLUMNS, (float(p) for p in parts)))
        except ValueError:
            continue
        if row["step"] <= upto_step:
            rows.append(row)
    return rows


def write_tsv(path: Path, rows: list[dict]) -> None:
    def fmt(k, v):
        return str(int(v)) if k == "step" else f"{v:.6g}"

    lines = ["\t".join(TSV_COLUMNS)] + ["\t".join(fmt(k, r[k]) for k in TSV_COLUMNS) for r in rows]
    fileio.write_text(path, "\n".join(lines) + "\n")


def tb_writer(directory: Path, purge_step: int | None = None, suffix: str = ""):
    """TensorBoard writer. purge_step (a resumed run's first step) hides the events that a killed
    run wrote from that step on, so TensorBoard shows each step once."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(directory), purge_step=purge_step, filename_suffix=suffix)


def fmt_eta(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class Reporter:
    """Host-side reporting of finished steps: train.tsv, TensorBoard, tqdm, log lines (process 0 writes)."""

    def __init__(self, cfg, out_dir: Path, *, start: int, end: int, resume: bool, log, progress: bool, tb: bool):
        self.cfg, self.end, self.log = cfg, end, log
        main = jax.process_index() == 0
        self.main = main
        self.tsv_path = out_dir / "train.tsv"
        self.rows = read_tsv(self.tsv_path, start) if resume else []
        self.elapsed_before = self.rows[-1]["elapsed_s"] if self.rows else 0.0
        self.tb_dir = out_dir / "tb"
        # Events of an earlier run in tb/ (killed, or started over): hide those after this run's start.
        purge = start + 1 if any(self.tb_dir.glob("events.out.tfevents.*")) else None
        self.tb_files = 0  # event files this process opened: their names sort in the order they were made
        self.writer = tb_writer(self.tb_dir, purge_step=purge) if (tb and main) else None
        if tb and main and self.writer is None:
            log("tensorboardX is not installed: no TensorBoard scalars")
        self.bar = logs.progress_bar(end, initial=start, unit="step", enabled=progress and main)
        self.t0 = time.perf_counter()
        self.t_window, self.steps_window = None, 0
        self.rays_per_s = float("nan")
        self.warned_budget = False

    def step(self, step: int, s: dict) -> None:
        now = time.perf_counter()
        if self.t_window is None:  # the first step includes compilation: not timed
            self.t_window, self.steps_window = now, 0
        else:
            self.steps_window += 1
        cfg = self.cfg
        if step % cfg.print_every == 0 or step == self.end:
            if self.steps_window > 0:
                self.rays_per_s = self.steps_window * cfg.batch_size / max(now - self.t_window, 1e-9)
                self.t_window, self.steps_window = now, 0
            rps = self.rays_per_s if np.isfinite(self.rays_per_s) else 0.0
            self.rows.append(dict(step=step, loss=s["loss"], psnr=s["psnr"], lr=s["lr"], rays_per_s=rps,
                                  elapsed_s=self.elapsed_before + now - self.t0))
            if self.main:
                write_tsv(self.tsv_path, self.rows)
            eta = (self.end - step) * cfg.batch_size / rps if rps > 0 else float("nan")
            skip = f" samples {s['live']:.0%} rays {s['fits']:.0%}" if "fits" in s else ""
            self.log(f"step {step}/{cfg.max_steps} loss {s['loss']:.5f} psnr {s['psnr']:.2f} lr {s['lr']:.2e} "
                     f"{rps:,.0f} rays/s{skip} eta {fmt_eta(eta)}")
            if "fits" in s and s["fits"] < 0.9 and step > cfg.max_steps // 10 and not self.warned_budget:
                self.warned_budget = True
                self.log(f"warning: only {s['fits']:.0%} of the batch's rays fit model.sample_budget="
                         f"{cfg.model.sample_budget} ({s['live']:.0%} of the final samples are live); the rest "
                         f"are left out of the loss: raise model.sample_budget (1.0 turns packing off)")
        if self.writer is not None and step % cfg.tb_every == 0:
            for k, v in s.items():
                self.writer.add_scalar(f"train/{k}", v, step)
            if np.isfinite(self.rays_per_s):
                self.writer.add_scalar("train/rays_per_s", self.rays_per_s, step)
        if self.writer is not None and step % cfg.checkpoint_every == 0:
            # The events up to a checkpoint go to disk with it: a killed run resumes after it and never
            # writes them again. tensorboardX writes from a queue in a thread (flush() does not wait for
            # it, and it flushes every 2 minutes): close() does; the next events go to a new file.
            self.writer = self._next_tb_file(None)
        if self.bar is not None:
            self.bar.update(1)
            if step % cfg.print_every == 0:
                self.bar.set_postfix(loss=f"{s['loss']:.4f}", psnr=f"{s['psnr']:.2f}")

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self.writer is not None:
            self.writer.add_scalar(tag, value, step)

    def rewind(self, step: int) -> None:
        """Forget rows and TensorBoard events after `step` (after restoring an earlier checkpoint)."""
        self.rows[:] = [r for r in self.rows if r["step"] <= step]
        if self.main:
            write_tsv(self.tsv_path, self.rows)
        if self.writer is not None:  # a new event file whose purge step hides the rewound steps' events
            self.writer = self._next_tb_file(step + 1)
        if self.bar is not None:
            self.bar.n = step
            self.bar.refresh()

    def _next_tb_file(self, purge_step: int | None):
        """Close the event file and open the next. TensorBoard reads a folder's files in name order:
        tensorboardX names them by the second they were made, so a counter orders the files of one
        second (a rewind can come seconds after the checkpoint it goes back to)."""
        self.writer.close()
        self.tb_files += 1
        return tb_writer(self.tb_dir, purge_step=purge_step, suffix=f".{self.tb_files:06d}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()

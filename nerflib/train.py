"""Training as a library: `init_state`, `make_train_step`, `train`.

The loop asks a trainer for the model's init, step, shardings and renderer (`Trainer`; for
Config.tiles > 1 nerflib.tiled.pipeline.TiledTrainer on a `data x tile` mesh, the tiles'
arrays sharded over 'tile'). Untiled: data parallel over a 1-D mesh (nerflib.parallel): the TrainState is
replicated, each step's ray batch is split along 'data', and the loss is a
mean over the global batch, so XLA adds the gradient all-reduce. The step is
one jitted function with `donate_argnums=(0,)`; its randomness (ray sampling
and the model's jitter) comes from `fold_in(key, step)`, so a run killed and
restarted from a checkpoint continues exactly as an uninterrupted one.

Optimizer (multinerf train_utils): clip by value (grad_max_val), clip by norm
per top-level module (grad_max_norm; or one global norm), Adam, and the
learning rate `math.learning_rate_decay(step)` times `TrainState.lr_mult`.

Guards:
  * A step whose loss or gradients are not finite leaves params and optimizer
    state unchanged (stats['nonfinite'] = 1, TrainState.num_skipped counts them).
  * `nan_patience` such steps in a row: restore the last checkpoint, halve
    lr_mult, log it; after `max_lr_drops` of these a RuntimeError ends the run.
  * SIGTERM (SLURM preemption / scancel), SIGUSR1 (`sbatch --signal=USR1@300`
    before the time limit) or SIGINT (Ctrl-C): save a checkpoint at the current
    step, then raise `Preempted`, a SystemExit with status 143 (128 + SIGTERM;
    130 after SIGINT). Snakemake's `retries` (profiles/slurm) resubmits the
    job, which resumes from there.
  * A checkpoint that cannot be restored is moved to checkpoints.corrupt/ with
    a warning and the previous one is used.
  * Checkpoints of other inputs or settings (nerflib.fingerprint) are moved to
    checkpoints.old/ and training starts over.

Outputs under `out_dir`: config.json, checkpoints/, train.tsv (step, loss,
psnr, lr, rays_per_s, elapsed_s; rewritten atomically), tb/ (TensorBoard
scalars, when tensorboardX is installed).

JAX's persistent compilation cache is enabled by `enable_compilation_cache`
(directory $DNERF_JAX_CACHE, default ~/.cache/dnerf/jax; 'off' disables).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import jax
import numpy as np

from nerflib import checkpoint, configs, datasets, parallel
from nerflib import fingerprint as fp_lib
from nerflib import evaluate as eval_lib
from nerflib import pose_refine, train_report
from nerflib.train_report import TSV_COLUMNS  # noqa: F401 (re-exported)
from nerflib.train_step import (  # noqa: F401 (re-exported: the step is part of this module's API)
    TrainState,
    enable_compilation_cache,
    clip_by_module_norm,
    init_state,
    lr_at,
    make_model,
    make_optimizer,
    make_train_step,
)

EXIT_PREEMPTED = 143  # 128 + SIGTERM, what a shell reports for a SIGTERM-killed program.
OLD_RUN_DIR = "checkpoints.old"  # where a run of other inputs goes when a fresh training starts
EXIT_INTERRUPTED = 130  # 128 + SIGINT: Ctrl-C.
_PREEMPT_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT")


class Preempted(SystemExit):
    """Training stopped by a signal after saving a checkpoint; exits with status 143 if uncaught
    (130 after SIGINT, Ctrl-C, as a shell reports it)."""

    def __init__(self, step: int, signame: str = "SIGTERM"):
        super().__init__(EXIT_INTERRUPTED if signame == "SIGINT" else EXIT_PREEMPTED)
        self.step = step
        self.signame = signame

    def __str__(self) -> str:
        return f"preempted by {self.signame}: checkpoint saved at step {self.step}; rerun to resume"


# --------------------------------------------------------------------------- the loop


class _SignalFlag:
    """Sets a flag on SIGTERM / SIGUSR1 / SIGINT while active (main thread only)."""

    def __init__(self):
        self.signame: str | None = None
        self._old: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for name in _PREEMPT_SIGNALS:
                sig = getattr(signal, name, None)
                if sig is not None:
                    self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if signum == signal.SIGINT and self.signame is not None:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without waiting for the checkpoint
        self.signame = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _default_log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _move_aside(out_dir: Path) -> None:
    """Move a stale run's checkpoints, train.tsv and tb/ to out_dir/checkpoints.old/ (replacing an older one)."""
    old = out_dir / OLD_RUN_DIR
    shutil.rmtree(old, ignore_errors=True)
    old.mkdir(parents=True)
    for name in (checkpoint.CHECKPOINT_DIR, "train.tsv", "tb", fp_lib.FILE_NAME):
        if (out_dir / name).exists():
            os.replace(out_dir / name, old / name)


def _check_resume_config(out_dir: Path, cfg: configs.Config, log) -> None:
    path = out_dir / checkpoint.CONFIG_NAME
    if not path.is_file():
        return
    try:
        old = configs.load_json(path)
    except ValueError:
        return
    if old.model != cfg.model:
        raise ValueError(
            f"{path} was written for a different model than the one requested; the checkpoints in "
            f"{out_dir / checkpoint.CHECKPOINT_DIR} cannot be resumed with it. Use another output folder "
            "or pass resume=False to start over."
        )
    if old != cfg:
        changed = [k for k in configs.to_dict(cfg) if configs.to_dict(cfg)[k] != configs.to_dict(old)[k]]
        log(f"resuming with changed training settings: {', '.join(changed)}")


class Trainer:
    """What the loop asks of a model: init(key) -> TrainState, step_fn(batcher) -> the jitted step,
    shardings(state) (None: replicated) for restoring checkpoints, render_fn() for held-out views.
    This is the untiled model's; nerflib.tiled.pipeline.TiledTrainer is the tiled one (Config.tiles > 1)."""

    description = ""

    def __init__(self, cfg, dataset, mesh, *, log=None):
        self.cfg, self.dataset, self.mesh = cfg, dataset, mesh
        self.model = make_model(cfg, dataset.num_train_images)

    def init(self, key):
        return init_state(self.cfg, self.dataset, key, self.mesh, model=self.model)

    def shardings(self, state=None):
        return None

    def step_fn(self, batcher):
        return make_train_step(self.cfg, self.model, self.mesh, batcher=batcher)

    def render_fn(self):
        return eval_lib.make_render_fn(self.model, self.mesh, zero_glo=self.cfg.model.num_glo_features > 0)


def make_trainer(cfg, dataset, mesh, *, log=None):
    """The trainer of cfg's model: the tiled one for cfg.tiles > 1 (mesh: a `data x tile` mesh)."""
    if cfg.tiles > 1:
        from nerflib.tiled.pipeline import TiledTrainer

        return TiledTrainer(cfg, dataset, mesh, log=log)
    return Trainer(cfg, dataset, mesh, log=log)


def training_mesh(cfg, mesh=None):
    """`mesh`, else all devices: a 1-D 'data' mesh, or for cfg.tiles > 1 the `data x tile` mesh
    (nerflib.tiled.pipeline.tile_mesh) over the devices of `mesh` (default all)."""
    if cfg.tiles > 1:
        from nerflib.tiled.pipeline import tile_mesh

        if mesh is not None and "tile" in mesh.axis_names:
            return mesh
        return tile_mesh(cfg.tiles, None if mesh is None else list(mesh.devices.flat))
    return parallel.make_mesh() if mesh is None else mesh


class _Run:
    """One training run's host loop: dispatch steps, read stats one step late, checkpoint, recover, stop."""

    def __init__(self, cfg, dataset, out_dir: Path, *, resume, log, progress, tb, stop_after, eval_dataset, mesh,
                 fingerprint=None):
        self.cfg, self.mesh = cfg, mesh
        main = jax.process_index() == 0
        emit = log or _default_log
        self.log = (lambda msg: emit(msg)) if main else (lambda msg: None)
        ckpt_dir = out_dir / checkpoint.CHECKPOINT_DIR
        self.fresh_reasons: list[str] = []
        if resume and fingerprint is not None and checkpoint.has_checkpoints(ckpt_dir):
            self.fresh_reasons = fp_lib.differences(fp_lib.read(out_dir), fingerprint)
            parallel.sync("nerflib.train.fingerprint")  # every process decided before process 0 moves anything
            if self.fresh_reasons:
                self.log("the checkpoints in {} are not of this training run: {}; training from scratch "
                         "(the old checkpoints, train.tsv and tb/ moved to {})".format(
                             ckpt_dir, "; ".join(self.fresh_reasons), out_dir / OLD_RUN_DIR))
                if main:
                    _move_aside(out_dir)
        if not resume and main:
            shutil.rmtree(ckpt_dir, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                (out_dir / "train.tsv").unlink()
        parallel.sync("nerflib.train.clean")
        if resume and ckpt_dir.is_dir():
            _check_resume_config(out_dir, cfg, self.log)
        out_dir.mkdir(parents=True, exist_ok=True)
        checkpoint.save_config(out_dir, cfg)
        if fingerprint is not None and main:
            fp_lib.write(out_dir, fingerprint)
        self.fingerprint = fingerprint

        self.trainer = make_trainer(cfg, dataset, mesh, log=self.log)
        self.model = self.trainer.model
        self.mode = datasets.choose_mode(dataset, setting=cfg.image_sharding, threshold_mb=cfg.shard_threshold_mb)
        if cfg.tiles > 1:
            self.mode = "replicate"  # image sharding splits over every device; the tiled mesh has two axes
        self.batcher = datasets.RayBatcher(dataset, batch_size=cfg.batch_size, mesh=mesh, mode=self.mode)
        init_key, train_key = jax.random.split(jax.random.PRNGKey(cfg.seed))
        self.state = self.trainer.init(init_key)
        self.train_key = parallel.replicate(np.asarray(jax.device_get(train_key)), mesh)
        self.ckpt = checkpoint.Checkpointer(ckpt_dir, keep=cfg.keep_checkpoints)
        latest = None
        if resume:
            restored, latest = self.ckpt.restore_latest_good(mesh, template=self.state, log=self.log,
                                                               move_aside=True,
                                                               shardings=self.trainer.shardings(self.state))
        if latest is not None:
            self.state = restored
            self.log(f"resumed from checkpoint step {latest} in {ckpt_dir}")
            self.start = latest
        else:
            self.start = 0
            self.ckpt.save(0, self.state)  # a good state to fall back on if the first steps blow up
        self.step = self.start
        self.end = cfg.max_steps if stop_after is None else min(cfg.max_steps, int(stop_after))
        self.lr_mult = float(parallel.fetch(self.state.lr_mult))
        self.nan_run = self.lr_drops = self.skipped = 0
        self.last_handled = self.start
        self.last: dict = {}
        self.compile_s = None
        self.train_step = self.trainer.step_fn(self.batcher)
        self.eval_dataset = eval_dataset if (eval_dataset is not None and cfg.eval_every > 0 and len(eval_dataset)) else None
        n_params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(self.state.params))
        self.log(
            f"training {n_params:,} parameters on {dataset.num_train_images} images "
            f"({dataset.num_pixels:,} pixels), {mesh.devices.size} device(s) in {jax.process_count()} "
            f"process(es), batch {cfg.batch_size} ({self.mode} images, "
            f"{self.batcher.device_bytes / 2**20:.1f} MiB per device), steps {self.start} -> {self.end} of "
            f"{cfg.max_steps}" + (f"; {self.trainer.description}" if self.trainer.description else "")
        )
        self.report = train_report.Reporter(cfg, out_dir, start=self.start, end=self.end, resume=resume, log=self.log,
                                progress=progress, tb=tb)

    # -- one step -------------------------------------------------------------

    def dispatch(self):
        """Run the next step (asynchronously); returns its stats (device arrays)."""
        data = self.batcher.data
        if self.step in self.cfg.debug_nan_steps and self.lr_mult == 1.0:
            data = self.batcher.poisoned_data()  # debug knob: a transient blow-up
        t0 = time.perf_counter()
        self.state, stats = self.train_step(self.state, data, self.train_key)
        if self.compile_s is None:
            jax.block_until_ready(stats)
            self.compile_s = time.perf_counter() - t0
            self.log(f"first step (with compilation) took {self.compile_s:.1f} s")
        self.step += 1
        return stats

    def handle(self, step: int, stats) -> bool:
        """Host work for finished step `step`; True when the non-finite patience has run out."""
        s = {k: float(v) for k, v in parallel.fetch(stats).items()}
        self.last, self.last_handled = s, step
        if s["nonfinite"] > 0:
            self.nan_run += 1
            self.skipped += 1
            if self.nan_run == 1 or self.nan_run % 10 == 0:
                self.log(f"step {step}: non-finite loss/gradient, update skipped ({self.nan_run} in a row)")
            if self.nan_run >= self.cfg.nan_patience:
                return True
        else:
            self.nan_run = 0
        self.report.step(step, s)
        return False

    # -- events ---------------------------------------------------------------

    def recover_from_nans(self) -> None:
        """Restore the last checkpoint from before the non-finite streak and halve the learning rate."""
        cfg = self.cfg
        self.lr_drops += 1
        if self.lr_drops > cfg.max_lr_drops:
            raise RuntimeError(
                f"training diverged: {cfg.nan_patience} non-finite steps in a row after {cfg.max_lr_drops} "
                "learning-rate drops; lower lr_init or check the data"
            )
        self.ckpt.wait()
        streak_start = self.last_handled - self.nan_run + 1
        saved = self.ckpt.all_steps()
        good = max([s for s in saved if s <= streak_start] or saved[:1])
        for s in saved:
            if s > good:
                self.ckpt.delete(s)  # written during the streak: the run continues from `good` instead
        self.state = self.ckpt.restore(self.mesh, template=self.state, step=good,
                                       shardings=self.trainer.shardings(self.state))
        self.lr_mult *= 0.5
        self.state = self.state.replace(lr_mult=parallel.replicate(np.float32(self.lr_mult), self.mesh))
        self.log(f"{self.nan_run} non-finite steps in a row: restored checkpoint {good} "
                 f"and halved the learning rate (multiplier now {self.lr_mult:g})")
        self.report.scalar("train/lr_mult", self.lr_mult, good)
        self.step, self.nan_run = good, 0
        self.report.rewind(good)

    def checkpoint_due(self) -> bool:
        return self.step % self.cfg.checkpoint_every == 0 or self.step == self.end

    def maybe_save(self) -> None:
        """Periodic checkpoint (none inside a non-finite streak, except the last step)."""
        if self.checkpoint_due():
            if self.nan_run == 0 or self.step == self.end:
                self.ckpt.save(self.step, self.state)

    def maybe_evaluate(self) -> None:
        if self.eval_dataset is None or self.step % self.cfg.eval_every:
            return
        name, rays, rgb = next(self.eval_dataset.iterate_views())
        out = eval_lib.render_image(self.model, self.state.params, rays, chunk_size=self.cfg.render_chunk_size,
                                    mesh=self.mesh, render_fn=self.trainer.render_fn())
        value = float(eval_lib.metrics.psnr(out["rgb"], rgb))
        self.log(f"step {self.step}: held-out view {name} psnr {value:.2f}")
        self.report.scalar("eval/psnr", value, self.step)

    def preempt(self, signame: str) -> None:
        self.ckpt.save(self.step, self.state)
        self.ckpt.wait()
        self.log(f"{signame}: saved checkpoint at step {self.step}; exiting with status {EXIT_PREEMPTED}")
        raise Preempted(self.step, signame)

    # -- the loop -------------------------------------------------------------

    def run(self) -> None:
        # Stats are read one step late, after the next step is dispatched, so
        # the device never waits for the host.
        pending = None
        check_every = 1 if jax.process_count() == 1 else 10  # signals need a collective across processes
        with _SignalFlag() as flag:
            while True:
                stats = self.dispatch() if self.step < self.end else None
                restore = self.handle(*pending) if pending is not None else False
                pending = (self.step, stats) if stats is not None else None
                if restore:
                    self.recover_from_nans()
                    pending = None
                    continue
                if stats is None and pending is None:
                    return  # every step up to `end` is done and handled
                if stats is not None:
                    if self.checkpoint_due():
                        # This step's stats go to train.tsv and TensorBoard before its checkpoint
                        # does: a kill right after the save would otherwise lose them for good (the
                        # resumed run starts after the checkpoint). One host sync per checkpoint.
                        restore, pending = self.handle(*pending), None
                        if restore:
                            self.recover_from_nans()
                            continue
                    self.maybe_save()
                    self.maybe_evaluate()
                if self.step % check_every == 0 or stats is None:
                    if parallel.any_process(flag.signame is not None):
                        if pending is not None:
                            self.handle(*pending)
                        self.preempt(flag.signame or "SIGTERM")

    def close(self) -> None:
        self.report.close()
        self.ckpt.close()

    def summary(self) -> dict:
        rps = self.report.rays_per_s
        return {
            "start_step": int(self.start),
            "final_step": int(self.step),
            "max_steps": int(self.cfg.max_steps),
            "stopped_early": bool(self.step < self.cfg.max_steps),
            "loss": self.last.get("loss"),
            "psnr": self.last.get("psnr"),
            "skipped_steps": int(self.skipped),
            "lr_drops": int(self.lr_drops),
            "lr_mult": float(self.lr_mult),
            "rays_per_s": float(rps) if np.isfinite(rps) else None,
            "first_step_s": self.compile_s,
            "seconds": time.perf_counter() - self.report.t0,
            "devices": int(self.mesh.devices.size),
            **({"tiles": int(self.cfg.tiles), "mesh": dict(self.mesh.shape)} if self.cfg.tiles > 1 else {}),
            "processes": int(jax.process_count()),
            "image_sharding": self.mode,
            **({"fingerprint": fp_lib.digest(self.fingerprint)} if self.fingerprint is not None else {}),
            **({"fresh_start": self.fresh_reasons} if self.fresh_reasons else {}),
        }


def train(
    cfg: configs.Config,
    dataset: datasets.Dataset,
    out_dir: str | os.PathLike,
    *,
    resume: bool = True,
    log: Callable[[str], None] | None = None,
    progress: bool = True,
    tb: bool = True,
    stop_after: int | None = None,
    eval_dataset: datasets.Dataset | None = None,
    mesh=None,
    fingerprint: dict | None = None,
) -> dict:
    """Train on `dataset` (the training split) and return a summary dict.

    resume: continue from the latest checkpoint in out_dir/checkpoints (False
      deletes earlier checkpoints and train.tsv and starts over).
    log: called with each log line (process 0 only); default: print to stderr.
    stop_after: stop (with a checkpoint) once this step is reached, as if killed.
    eval_dataset: held-out views; with cfg.eval_every > 0 the PSNR of its first
      view is logged every eval_every steps.
    mesh: default parallel.make_mesh() (all devices of all processes); with cfg.tiles > 1 the
      `data x tile` mesh over its devices (training_mesh).
    fingerprint: what this run trains from (nerflib.fingerprint.of_training); with it, checkpoints
      of another fingerprint are moved to out_dir/checkpoints.old/ and training starts over,
      and the fingerprint is written to out_dir/fingerprint.json.
    Raises Preempted (exit status 143) after SIGTERM/SIGUSR1, with a checkpoint saved.
    """
    enable_compilation_cache()
    mesh = training_mesh(cfg, mesh)
    parallel.check_batch_size(cfg.batch_size, mesh.devices.size)
    run = _Run(cfg, dataset, Path(out_dir), resume=resume, log=log, progress=progress, tb=tb,
               stop_after=stop_after, eval_dataset=eval_dataset, mesh=mesh, fingerprint=fingerprint)
    try:
        run.run()
    finally:
        run.close()
    summary = run.summary()
    if cfg.model.refine_poses:
        # Replicated: every process holds all of it (addressable_data, not device_get, which
        # refuses arrays that span processes).
        local = {k: np.asarray(run.state.params[k].addressable_data(0), np.float64)
                 for k in ("pose_delta", "pose_precondition")}
        refined = pose_refine.write_refined_poses(Path(out_dir) / pose_refine.REFINED_POSES, dataset,
                                      np.asarray(pose_refine.pose_deltas(local, cfg.model), np.float64),
                                      main=jax.process_index() == 0)
        summary["pose_refinement"] = refined["summary"]
    run.log(f"training done: {summary}")
    return summary

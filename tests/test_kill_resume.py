"""Kill and resume (issue #11, item 2): SIGKILL at random moments in every stage, then resume.

A node failure kills Snakemake and its job at once, and no handler runs. The
harness does the same to the reduced demo of test_slurm (24 views, 60 training
steps with a checkpoint every 20, 2 video frames), run with the real local
profile (`snakemake --profile profiles/local --cores 2`):

  1. An uninterrupted reference run of the same config records when each
     job started and finished, and when training's checkpoints appeared.
  2. A pass starts Snakemake in a new session, waits for a stage's job to
     start (its `localrule X:` line; poses and pyramid come in either order),
     waits a random fraction of that stage's duration in the reference run
     (seeded RNG, seed printed), sends SIGKILL to the whole process group and
     checks that none of it is left. It then reruns the same command after
     `snakemake --unlock` (a killed Snakemake leaves its lock behind, and the
     plain rerun stops at it; the profile has `rerun-incomplete: true`) and
     kills the next stage. Training is killed twice: early (data loading,
     checkpoint 0, XLA compilation: before its first periodic checkpoint) and
     at a random moment after a periodic checkpoint exists. A job that ends
     before its moment is a miss, not a kill. A last rerun finishes the
     workflow. A kill rarely lands inside a file write (milliseconds), so
     after a kill the harness also adds the temp file that such a kill leaves
     (fileio.atomic_path's `.NAME.XXXXXXXX.EXT`) where that stage writes
     outside its declared directories (PLANTED).

Checks (each kill, each rerun, the end):
  * Bytes lost = 0: the declared outputs of every job that had finished
    (sha256 of each file when Snakemake reported the job done) are unchanged
    after every kill and every rerun; a rerun never runs a finished job again.
  * Training resumed from the last checkpoint on disk at the kill ("resumed
    from checkpoint step N" in the rerun's logs/train/demo.log, which Snakemake
    deletes and the job writes anew; a fresh start only when no checkpoint was
    there), final.json's start_step is that step, train.tsv and TensorBoard
    have every step once, and the model is bitwise the one an uninterrupted
    training from the same poses and images gives (CPU training is
    deterministic; nerflib.train draws its randomness from fold_in(key, step)).
  * The outputs equal the reference run's: byte for byte for the synthetic
    scene, the image pyramid and the resolved training config (also found
    identical between two runs: the acc video, by chance of the model); SfM
    poses within POSE_TOL_DEG; mean held-out PSNR within PSNR_TOL_DB. The same
    files as the reference (checkpoint shards and event file names aside), so
    no temp file (atomic writes, orbax's `*.orbax-checkpoint-tmp`, SfM's
    `.sfm-*` work folder) is left in results/ or resources/; nothing is marked
    incomplete; `snakemake -n` has nothing to do.

SfM is not bit-reproducible (COLMAP's threads): its poses differ from run to
run by hundredths of a degree, and everything downstream differs with them.
Measured with this config on 2 CPU cores, the mean held-out PSNR (about 14 dB
after 60 steps) of two runs differed by 0.001 to 0.51 dB (one view by 0.91 dB); PSNR_TOL_DB = 1.5 dB
(test_slurm's tolerance for training PSNR) is a sanity bound. A resume that
lost the optimizer state or restarted the schedule is caught by the bitwise
model check instead.

Not covered: localization (left out of the reduced config as in test_slurm:
two more XLA compiles, about 40 s; its step cleans its folder the same way)
and the report figures (not targeted: no state of their own).

CI: one reference run and one gauntlet pass (7 kills, one per stage, training
twice), about 3 minutes on 2 idle cores. Nightly (`pytest -m nightly
tests/test_kill_resume.py -s`): passes until NIGHTLY_KILLS kills, each killing
every stage at new random moments anywhere in the job, and one stage twice.
Every kill prints one line (stage, moment, where it landed, outcome) and each
test a summary: kills, survived, bytes lost. DNERF_KILL_SEED=N repeats the
moments (not the timing of the machine). JAX's persistent compilation cache is
shared by all runs (DNERF_JAX_CACHE).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import os
import random
import re
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from nerflib import fileio, rigid, scene_io
from test_slurm import REDUCED, _files, _reduced_workdir
from test_workflow_config import edit_config

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "profiles" / "local"
SCENE = "demo"
TARGETS = (f"results/{SCENE}/eval/metrics.tsv", f"results/{SCENE}/render/color.mp4")
STEPS, CHECKPOINT_EVERY = 60, 20  # 60 steps: a window of about 40 steps after the first periodic checkpoint
OVERRIDES = {**REDUCED["train.overrides"], "max_steps": STEPS, "checkpoint_every": CHECKPOINT_EVERY}
# (stage, mode): one kill each, in pipeline order; training early and after a periodic checkpoint.
GAUNTLET = (("synthetic_scene", ""), ("poses", ""), ("pyramid", ""), ("train", "early"), ("train", "checkpointed"),
            ("evaluate", ""), ("render", ""))
BITWISE = (f"resources/synthetic/{SCENE}", f"results/{SCENE}/images_4", f"results/{SCENE}/model/config.json")
PSNR_TOL_DB = 1.5
POSE_TOL_DEG = 0.5
NIGHTLY_KILLS = 24  # 3 passes of 8 kills, about 3 runs' time (more passes if kills were missed)
NIGHTLY_MAX_PASSES = 5
# The kill comes this fraction of the stage's duration in the reference run after the job started:
# anywhere in it at night, in its first half in CI, so that a job faster than in the reference run is
# still running (a job that ends first is a miss, not a kill).
KILL_FRACTION = (0.02, 0.95)
CI_KILL_FRACTION = (0.05, 0.5)
EARLY_MARGIN_S = 1.5  # training's early kill: up to this long after checkpoint 0 appeared in the reference run
POLL_S = 0.05
RUN_TIMEOUT_S = 600
TRAIN_LOG = f"logs/train/{SCENE}.log"
CHECKPOINTS = f"results/{SCENE}/model/checkpoints"
START_RE = re.compile(r"^(?:local)?rule (\w+):$", re.M)
FINISH_RE = re.compile(r"^Finished jobid: \d+ \(Rule: (\w+)\)", re.M)
RESUMED_RE = re.compile(r"resumed from checkpoint step (\d+)")
LOCK_MESSAGE = "Directory cannot be locked"
# What a SIGKILL inside an atomic write leaves (fileio.atomic_path's temp file), in the folders each stage
# writes outside its declared directories (Snakemake deletes those of an incomplete job itself). A kill
# rarely lands inside a write (milliseconds), so after a kill in a stage the harness adds them.
PLANTED = {
    "poses": (f"results/{SCENE}/poses/scene.json",),
    "train": (f"results/{SCENE}/model/train.tsv", f"results/{SCENE}/model/final.json"),
    "evaluate": (f"results/{SCENE}/eval/metrics.tsv",),
    "render": (f"results/{SCENE}/render/color.mp4", f"results/{SCENE}/render/frames/color/0000.png"),
}


def _seed() -> int:
    return int(os.environ.get("DNERF_KILL_SEED") or random.SystemRandom().randrange(2**31))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _hash_tree(root: Path, rel: str) -> dict[str, tuple[str, int]]:
    """{file: (sha256, size)} of a file or of every file under a folder (paths relative to root)."""
    path = root / rel
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path] if path.exists() else []
    return {p.relative_to(root).as_posix(): (_sha256(p), p.stat().st_size) for p in files}


def finalized_checkpoints(workdir: Path) -> list[int]:
    """Steps of the checkpoints orbax has finished (renamed from its temp folder to the step number)."""
    folder = workdir / CHECKPOINTS
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())


def _session_processes(sid: int) -> list[str]:
    """Live (not zombie) processes of session `sid`, as 'pid name state'."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name_end = text.rindex(")")
        fields = text[name_end + 2:].split()  # state, ppid, pgrp, session, ...
        if int(fields[3]) == sid and fields[0] != "Z":
            found.append(f"{stat.parent.name} {text[text.index('(') + 1:name_end]} {fields[0]}")
    return found


def stray_files(workdir: Path) -> list[str]:
    """Temp files or folders under results/ and resources/ (dot names other than Snakemake's timestamps, '*tmp*')."""
    stray = []
    for top in ("results", "resources"):
        for p in (workdir / top).rglob("*"):
            if (p.name.startswith(".") and p.name != ".snakemake_timestamp") or "tmp" in p.name.lower():
                stray.append(p.relative_to(workdir).as_posix())
    return sorted(stray)


def snakemake_command(workdir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
            "--profile", str(PROFILE), "--cores", "2", *args]


@dataclasses.dataclass
class Trial:
    """One kill: where it was aimed, when it came, where it landed, what the rerun did."""

    label: str
    stage: str
    mode: str
    planned_s: float = 0.0  # seconds after the stage's trigger (job start; training 'checkpointed': first checkpoint)
    at_s: float = float("nan")  # seconds after the stage's job started, when SIGKILL was sent
    landed: str = ""  # the jobs running at the kill
    checkpoint: int | None = None  # training: the last finished checkpoint on disk after the kill
    resumed: str = ""  # training: what the rerun's log says
    outcome: str = "pending"  # killed -> ok | FAILED once the pass ends; missed; not run
    trigger: str = "job start"
    problems: list[str] = dataclasses.field(default_factory=list)

    @property
    def killed(self) -> bool:
        return self.outcome in ("killed", "ok", "FAILED")

    @property
    def survived(self) -> bool:
        return self.outcome == "ok"

    def line(self) -> str:
        mode = f" ({self.mode})" if self.mode else ""
        if not self.killed:
            return f"[{self.label}] {self.stage}{mode}: planned +{self.planned_s:.2f} s after {self.trigger}, {self.outcome}"
        ckpt = "" if self.stage != "train" else f"; last checkpoint {self.checkpoint}, rerun {self.resumed or '-'}"
        extra = f": {'; '.join(self.problems)}" if self.problems else ""
        return (f"[{self.label}] kill {self.stage}{mode} at +{self.at_s:.2f} s of the job (+{self.planned_s:.2f} s "
                f"after {self.trigger}), landed in {self.landed or 'no job'}{ckpt} -> {self.outcome}{extra}")


class Attempt:
    """One `snakemake` process in its own session; its output in a file, polled for job starts and ends."""

    def __init__(self, run: Pass, index: int):
        self.run = run
        self.out_path = run.logs / f"attempt{index:02d}.out"
        self.done_before = set(run.done)
        self.checkpoint_before = (finalized_checkpoints(run.workdir) or [None])[-1]
        log = run.workdir / TRAIN_LOG
        self.train_log_before = log.read_bytes() if log.exists() else b""
        self.started_at: dict[str, float] = {}
        self.finished_at: dict[str, float] = {}
        self.checkpoint_at: dict[int, float] = {}
        self.t0 = time.monotonic()
        with self.out_path.open("w") as out:
            self.proc = subprocess.Popen(snakemake_command(run.workdir, *TARGETS), stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True, env=run.env)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def text(self) -> str:
        return self.out_path.read_text(errors="replace")

    def poll(self) -> int | None:
        rc = self.proc.poll()  # first: the output read below is then complete if it exited
        now, text = self.now(), self.text()
        for rule in START_RE.findall(text):
            self.started_at.setdefault(rule, now)
        for rule in FINISH_RE.findall(text):
            if rule not in self.finished_at:
                self.finished_at[rule] = now
                self.run.job_finished(rule)
        if "train" in self.started_at and "train" not in self.finished_at:
            for step in finalized_checkpoints(self.run.workdir):
                self.checkpoint_at.setdefault(step, now)
        return rc

    def wait_for(self, condition, timeout_s: float = RUN_TIMEOUT_S) -> bool:
        """Poll until `condition()` (True) or until Snakemake exits (False)."""
        deadline = time.monotonic() + timeout_s
        while True:
            rc = self.poll()
            if condition():
                return True
            if rc is not None:
                return False
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"{self.out_path}: no progress in {timeout_s} s:\n{self.text()[-3000:]}")
            time.sleep(POLL_S)

    def finish(self) -> int:
        self.wait_for(lambda: False)
        return self.proc.returncode

    def running(self) -> list[str]:
        return [r for r in self.started_at if r not in self.finished_at]

    def kill(self) -> None:
        """SIGKILL to the whole group (Snakemake and its job), then wait until none of it is left."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        deadline = time.monotonic() + 30
        while (left := _session_processes(self.proc.pid)) and time.monotonic() < deadline:
            for pid in [int(p.split()[0]) for p in left]:
                try:
                    os.kill(pid, signal.SIGKILL)  # only a process that left the group (none expected)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        assert not _session_processes(self.proc.pid), f"processes of the killed run left: {left}"


class Pass:
    """One working directory, killed and resumed: the ledger of finished outputs, the trials, the checks."""

    def __init__(self, workdir: Path, logs: Path, env: dict, outputs_by_rule: dict[str, list[str]], label: str):
        self.workdir, self.logs, self.env, self.label = workdir, logs, env, label
        self.outputs_by_rule = outputs_by_rule
        self.done: set[str] = set()  # rules whose job Snakemake reported finished
        self.ledger: dict[str, tuple[str, int]] = {}  # file -> (sha256, size) when its job finished
        self.attempts: list[Attempt] = []
        self.trials: list[Trial] = []
        self.bytes_lost = 0
        self.files_lost: set[str] = set()
        self.resumes: list[tuple[int | None, str]] = []  # (checkpoint before the attempt, what its train log says)
        self.check_lock = False  # run the plain command once before the first --unlock
        self.plant = False  # add the temp files of a kill inside an atomic write (PLANTED) after each kill
        self.planted: list[Path] = []
        self.lock_message_seen = False
        self.problems: list[str] = []  # of the pass as a whole: the first run, the last rerun, the final outputs
        self.seconds = float("nan")
        self.psnr_diff = float("nan")

    def stop(self) -> None:
        """Kill a Snakemake still running (the test failed or was interrupted): it has its own session."""
        for attempt in self.attempts:
            if attempt.proc.poll() is None:
                attempt.kill()

    def job_finished(self, rule: str) -> None:
        self.done.add(rule)
        for rel in self.outputs_by_rule.get(rule, []):
            for path, value in _hash_tree(self.workdir, rel).items():
                self.ledger.setdefault(path, value)

    def verify_ledger(self) -> list[str]:
        """Finished outputs changed or gone since their job finished (counted into bytes_lost once each)."""
        changed = []
        for path, (sha, size) in self.ledger.items():
            p = self.workdir / path
            if not p.is_file() or _sha256(p) != sha:
                changed.append(path)
                if path not in self.files_lost:
                    self.files_lost.add(path)
                    self.bytes_lost += size
        return changed

    def start(self) -> Attempt:
        if self.attempts:
            if self.check_lock:
                # What a user meets after a crash: the same command refuses to run until --unlock.
                self.check_lock = False
                plain = subprocess.run(snakemake_command(self.workdir, *TARGETS), capture_output=True, text=True,
                                       timeout=RUN_TIMEOUT_S, env=self.env)
                self.lock_message_seen = plain.returncode != 0 and LOCK_MESSAGE in plain.stdout + plain.stderr
            unlock = subprocess.run(snakemake_command(self.workdir, "--unlock"), capture_output=True, text=True,
                                    timeout=RUN_TIMEOUT_S, env=self.env)
            assert unlock.returncode == 0, unlock.stdout[-2000:] + unlock.stderr[-2000:]
        attempt = Attempt(self, len(self.attempts))
        attempt.rerun_of = self.kills[-1] if self.kills else None  # the kill this run resumes from
        self.attempts.append(attempt)
        return attempt

    def after(self, attempt: Attempt) -> list[str]:
        """Checks after an attempt ended (killed or finished): no finished job rerun, bytes lost, training resume."""
        attempt.poll()
        problems = []
        rerun = sorted(set(attempt.started_at) & attempt.done_before)
        if rerun:
            problems.append(f"finished job(s) run again: {rerun}")
        changed = self.verify_ledger()
        if changed:
            problems.append(f"finished outputs changed or gone: {changed[:5]}")
        if "train" in attempt.started_at:
            path = self.workdir / TRAIN_LOG
            log = path.read_bytes() if path.exists() else b""
            # Snakemake deletes the log of a job it reruns; the job appends to a log that is still there.
            old = attempt.train_log_before
            new = (log[len(old):] if old and log.startswith(old) else log).decode(errors="replace")
            resumed = RESUMED_RE.findall(new)
            if resumed:
                said = f"resumed from {resumed[0]}"
            elif re.search(rf"steps 0 -> \d+ of {STEPS}", new):
                said = "started at step 0"
            else:
                said = ""  # killed before training said where it starts
            if said:
                self.resumes.append((attempt.checkpoint_before, said))
                expected = ("started at step 0" if attempt.checkpoint_before is None
                            else f"resumed from {attempt.checkpoint_before}")
                if said != expected:
                    problems.append(f"training {said}, but the last checkpoint on disk was "
                                    f"{attempt.checkpoint_before}")
                if attempt.rerun_of is not None:
                    attempt.rerun_of.resumed = said
        # What the rerun after a kill did is that kill's outcome.
        (attempt.rerun_of.problems if attempt.rerun_of is not None else self.problems).extend(problems)
        return problems

    @property
    def kills(self) -> list[Trial]:
        return [t for t in self.trials if t.killed]

    def kill_next(self, pending: list[tuple[str, str]], ref: Timeline, rng: random.Random,
                  fraction: tuple[float, float]) -> list[Trial]:
        """One Snakemake run: wait for the job of a pending (stage, mode) to start (poses and pyramid come in
        either order), kill it at a random moment. A job that ends before its moment is a miss (no kill):
        the harness then waits for the next pending stage in the same run. Returns the trials made."""
        attempt = self.start()
        made = []
        while pending:
            firsts = [item for i, item in enumerate(pending) if item[0] not in {s for s, _ in pending[:i]}]
            fresh = [item for item in firsts if item[0] not in attempt.finished_at]
            if not attempt.wait_for(lambda: any(s in attempt.started_at for s, _ in fresh)):
                self.after(attempt)
                for stage, mode in pending:
                    made.append(Trial(self.label, stage, mode, outcome=f"not run (Snakemake exited "
                                      f"{attempt.proc.returncode} before the job started)"))
                    self.trials.append(made[-1])
                pending.clear()
                break
            stage, mode = min((item for item in fresh if item[0] in attempt.started_at),
                              key=lambda item: attempt.started_at[item[0]])
            pending.remove((stage, mode))
            trial = Trial(self.label, stage, mode)
            made.append(trial)
            self.trials.append(trial)
            started = attempt.started_at[stage]
            if stage == "train" and mode == "checkpointed":
                attempt.wait_for(lambda: any(s >= CHECKPOINT_EVERY for s in attempt.checkpoint_at)
                                 or "train" in attempt.finished_at)
                trial.trigger = f"checkpoint {max(attempt.checkpoint_at, default=None)}"
                trigger, window = attempt.now(), ref.train_after_checkpoint_s
            elif stage == "train":
                trigger, window = started, ref.train_early_s
            else:
                trigger, window = started, ref.duration(stage)
            trial.planned_s = rng.uniform(*fraction) * window
            attempt.wait_for(lambda: attempt.now() >= trigger + trial.planned_s or stage in attempt.finished_at)
            if stage in attempt.finished_at:
                trial.outcome = (f"missed (the job ended after {attempt.finished_at[stage] - started:.2f} s, "
                                 "before its moment)")
                continue
            running = attempt.running()
            trial.at_s = attempt.now() - started
            attempt.kill()
            attempt.poll()
            trial.landed = ", ".join(r for r in running if r not in attempt.finished_at)
            trial.checkpoint = (finalized_checkpoints(self.workdir) or [None])[-1]
            trial.outcome = "killed"
            if self.plant:
                for landed in running:
                    for rel in PLANTED.get(landed, ()):
                        self.planted.append(fileio.temp_path_for(self.workdir / rel))
            self.after(attempt)
            break
        return made

    def complete(self) -> Attempt:
        """The last rerun, to the end; settles the outcome of every trial."""
        attempt = self.start()
        rc = attempt.finish()
        self.after(attempt)
        if rc != 0:
            self.problems.append(f"the last rerun failed ({rc}): {attempt.text()[-3000:]}")
        for trial in self.trials:
            if trial.outcome == "killed":
                trial.outcome = "ok" if not trial.problems and rc == 0 else "FAILED"
        return attempt


@dataclasses.dataclass
class Timeline:
    """When things happened in the uninterrupted reference run (seconds since its start)."""

    started: dict[str, float]
    finished: dict[str, float]
    checkpoints: dict[int, float]

    def duration(self, rule: str) -> float:
        return self.finished[rule] - self.started[rule]

    @property
    def train_early_s(self) -> float:
        """Job start to checkpoint 0 (written before compilation) plus a margin: before the first periodic one."""
        first = self.checkpoints.get(0, self.started["train"])
        return first - self.started["train"] + EARLY_MARGIN_S

    @property
    def train_after_checkpoint_s(self) -> float:
        periodic = [t for s, t in self.checkpoints.items() if s >= CHECKPOINT_EVERY]
        return self.finished["train"] - min(periodic)


def make_workdir(tmp_path_factory, name: str) -> Path:
    workdir = _reduced_workdir(tmp_path_factory, name)
    edit_config(workdir, **{"train.overrides": OVERRIDES})
    return workdir


def reference_run(tmp_path_factory, env: dict) -> dict:
    """The uninterrupted run: its folder, timeline and which outputs each rule declares."""
    workdir = make_workdir(tmp_path_factory, "reference")
    run = Pass(workdir, tmp_path_factory.mktemp("reference_logs"), env, {}, "reference")
    attempt = run.start()
    try:
        rc = attempt.finish()
    finally:
        run.stop()
    assert rc == 0, attempt.text()[-5000:]
    summary = subprocess.run(snakemake_command(workdir, "--summary", *TARGETS), capture_output=True, text=True,
                             timeout=RUN_TIMEOUT_S, env=env)
    assert summary.returncode == 0, summary.stderr[-3000:]
    outputs: dict[str, list[str]] = {}
    for row in csv.DictReader(summary.stdout.splitlines(), delimiter="\t"):
        outputs.setdefault(row["rule"], []).append(row["output_file"])
    timeline = Timeline(attempt.started_at, attempt.finished_at, attempt.checkpoint_at)
    print(f"reference run: {attempt.now():.0f} s; jobs "
          + ", ".join(f"{r} {timeline.duration(r):.1f} s" for r in timeline.finished)
          + "; checkpoints at +" + ", +".join(f"{t - timeline.started['train']:.1f}" for t in attempt.checkpoint_at.values())
          + f" s of training (steps {sorted(attempt.checkpoint_at)})")
    assert set(outputs) >= {s for s, _ in GAUNTLET}, outputs
    return {"workdir": workdir, "timeline": timeline, "outputs": outputs}


def run_pass(tmp_path_factory, ref: dict, env: dict, plan, rng: random.Random, label: str, *,
             fraction: tuple[float, float], check_lock: bool = False, plant: bool = True) -> Pass:
    workdir = make_workdir(tmp_path_factory, label)
    run = Pass(workdir, tmp_path_factory.mktemp(f"{label}_logs"), env, ref["outputs"], label)
    run.check_lock = check_lock
    run.plant = plant
    start = time.monotonic()
    pending = list(plan)
    try:
        while pending:
            for trial in run.kill_next(pending, ref["timeline"], rng, fraction):
                print(trial.line(), flush=True)
        run.complete()
    finally:
        run.stop()
    run.seconds = time.monotonic() - start
    return run


def compare_with_reference(run: Pass, ref: dict, tmp: Path, env: dict) -> list[str]:
    """Differences between a killed-and-resumed folder and the reference (empty list: none)."""
    work, base = run.workdir, ref["workdir"]
    problems = []
    for rel in BITWISE:
        a, b = _hash_tree(work, rel), _hash_tree(base, rel)
        a = {k: v for k, v in a.items() if not k.endswith(".snakemake_timestamp")}
        b = {k: v for k, v in b.items() if not k.endswith(".snakemake_timestamp")}
        if a != b or not a:
            diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            problems.append(f"{rel} not byte-identical to the reference: {diff[:5]}")
    est = {name: scene_io.read_scene_json(d / f"results/{SCENE}/poses/scene.json") for name, d in
           (("run", work), ("ref", base))}
    if sorted(est["run"].names) != sorted(est["ref"].names) or len(est["run"]) != REDUCED["synthetic.views"]:
        problems.append(f"registered views differ: {len(est['run'])} vs {len(est['ref'])}")
    else:
        order = [est["ref"].names.index(n) for n in est["run"].names]
        rot = rigid.pose_errors(est["run"].c2w, est["ref"].c2w[order])["rotation_deg"]
        if float(np.max(rot)) > POSE_TOL_DEG:
            problems.append(f"SfM rotations differ by up to {float(np.max(rot)):.3f} deg > {POSE_TOL_DEG}")
    metrics = {}
    for name, d in (("run", work), ("ref", base)):
        rows = csv.DictReader((d / f"results/{SCENE}/eval/metrics.tsv").open(), delimiter="\t")
        metrics[name] = {r["name"]: float(r["psnr"]) for r in rows}
    if set(metrics["run"]) != set(metrics["ref"]):
        problems.append(f"held-out views differ: {sorted(metrics['run'])} vs {sorted(metrics['ref'])}")
    else:
        run.psnr_diff = metrics["run"]["mean"] - metrics["ref"]["mean"]
        if abs(run.psnr_diff) > PSNR_TOL_DB:
            problems.append(f"mean held-out PSNR {metrics['run']['mean']:.2f} dB, the reference's "
                            f"{metrics['ref']['mean']:.2f} dB: more than {PSNR_TOL_DB} dB apart")
    final = yaml.safe_load((work / f"results/{SCENE}/model/final.json").read_text())
    if final["final_step"] != STEPS:
        problems.append(f"final.json: final_step {final['final_step']} != {STEPS}")
    last = run.resumes[-1] if run.resumes else (None, "")
    want = 0 if last[1] == "started at step 0" else int(last[1].split()[-1]) if last[1] else None
    if want is not None and final["start_step"] != want:
        problems.append(f"final.json start_step {final['start_step']}, but the last training said {last[1]!r}")
    steps = [int(r["step"]) for r in csv.DictReader((work / f"results/{SCENE}/model/train.tsv").open(),
                                                    delimiter="\t")]
    every = OVERRIDES["print_every"]
    if steps != list(range(every, STEPS + 1, every)):
        problems.append(f"train.tsv steps {steps}")
    # TensorBoard: every step once (a killed run's buffered events were lost; its late ones shown twice).
    tb = tensorboard_steps(work / f"results/{SCENE}/model/tb")
    if tb != list(range(OVERRIDES["tb_every"], STEPS + 1, OVERRIDES["tb_every"])):
        problems.append(f"TensorBoard train/loss at steps {tb}")
    problems += [f"stray file {p}" for p in stray_files(work)]
    only_run, only_ref = _files(work) - _files(base), _files(base) - _files(work)
    if only_run or only_ref:
        problems.append(f"files only after kills: {sorted(only_run)[:8]}; only in the reference: {sorted(only_ref)[:8]}")
    incomplete = work / ".snakemake" / "incomplete"
    if incomplete.is_dir() and any(incomplete.iterdir()):
        problems.append(f"Snakemake still marks outputs incomplete: {sorted(p.name for p in incomplete.iterdir())}")
    problems += same_model_as_uninterrupted_training(work, tmp, env)
    return problems


def tensorboard_steps(tb_dir: Path, tag: str = "train/loss") -> list[int]:
    """Steps of `tag` that TensorBoard shows: event files in order, a SessionLog START at step P (a
    resumed run's purge_step) hides the earlier files' events from step P on."""
    from tensorboardX.proto import event_pb2

    steps: list[int] = []
    for path in sorted(tb_dir.glob("events.out.tfevents.*")):
        data, i = path.read_bytes(), 0
        while i + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[i:i + 8])
            event = event_pb2.Event()
            event.ParseFromString(data[i + 12:i + 12 + length])
            i += 12 + length + 4
            if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
                steps = [s for s in steps if s < event.step]
            elif event.HasField("summary") and any(v.tag == tag for v in event.summary.value):
                steps.append(event.step)
    return steps


def same_model_as_uninterrupted_training(workdir: Path, tmp: Path, env: dict) -> list[str]:
    """Train again without interruption from the pass's own poses and images: same losses, bitwise same model."""
    model = tmp / "uninterrupted_model"
    code = ("import sys, json; from nerflib import steps; "
            "steps.train(sys.argv[1], sys.argv[2], model_dir=sys.argv[3], preset='tiny', factor=4, "
            "overrides=json.loads(sys.argv[4]))")
    import json

    result = subprocess.run([sys.executable, "-c", code, str(workdir / f"results/{SCENE}/poses/scene.json"),
                             str(workdir / f"results/{SCENE}/images_4"), str(model), json.dumps(OVERRIDES)],
                            capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env=env, cwd=REPO)
    if result.returncode != 0:
        return [f"uninterrupted training failed: {result.stderr[-3000:]}"]
    problems = []
    resumed_tsv = (workdir / f"results/{SCENE}/model/train.tsv").read_text().splitlines()
    clean_tsv = (model / "train.tsv").read_text().splitlines()

    def losses(lines):  # step, loss, psnr, lr (rays/s and elapsed differ by nature)
        return [line.split("\t")[:4] for line in lines]

    if losses(resumed_tsv) != losses(clean_tsv):
        problems.append(f"train.tsv differs from an uninterrupted training: {losses(resumed_tsv)} vs {losses(clean_tsv)}")
    import jax

    from nerflib import checkpoint, parallel

    mesh = parallel.make_mesh()
    (_, a, step_a), (_, b, step_b) = (checkpoint.restore_params(d, mesh)
                                      for d in (workdir / f"results/{SCENE}/model", model))
    leaves_a, leaves_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    if step_a != step_b or len(leaves_a) != len(leaves_b) or not all(
            np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(leaves_a, leaves_b)):
        problems.append(f"the resumed model (step {step_a}) is not bitwise the uninterrupted one (step {step_b})")
    return problems


def summarize(passes: list[Pass]) -> dict:
    trials = [t for p in passes for t in p.kills]
    landed = {}
    for t in trials:
        landed[t.landed or "no job"] = landed.get(t.landed or "no job", 0) + 1
    for t in (t for p in passes for t in p.trials):
        print(t.line())
    for p in passes:
        for problem in p.problems:
            print(f"[{p.label}] {problem}")
    # A kill survived: its rerun did nothing wrong and its pass ended with the reference's outputs.
    counts = {"kills": len(trials), "survived": sum(t.survived and not p.problems for p in passes for t in p.kills),
              "missed": sum(not t.killed for p in passes for t in p.trials),
              "bytes_lost": sum(p.bytes_lost for p in passes), "landed": landed,
              "train_resumes": [s for p in passes for _, s in p.resumes]}
    print(f"kill/resume: kills {counts['kills']}, survived {counts['survived']}, bytes lost {counts['bytes_lost']} "
          f"({counts['missed']} planned kills missed: the job ended first); "
          f"landed in {landed}; training {counts['train_resumes']}")
    return counts


@pytest.fixture(scope="module")
def jax_env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("jax_cache")
    return {**os.environ, "DNERF_JAX_CACHE": str(cache)}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, jax_env):
    start = time.monotonic()
    ref = reference_run(tmp_path_factory, jax_env)
    ref["seconds"] = time.monotonic() - start
    return ref


def test_local_profile_reruns_incomplete_jobs():
    profile = yaml.safe_load((PROFILE / "config.v8+.yaml").read_text())
    assert profile.get("rerun-incomplete") is True, profile


@pytest.fixture(scope="module")
def gauntlet(tmp_path_factory, reference, jax_env):
    seed = _seed()
    print(f"\nkill/resume gauntlet: seed {seed} (DNERF_KILL_SEED={seed} repeats the kill moments)")
    run = run_pass(tmp_path_factory, reference, jax_env, GAUNTLET, random.Random(seed), "gauntlet",
                   fraction=CI_KILL_FRACTION, check_lock=True)
    run.problems += compare_with_reference(run, reference, tmp_path_factory.mktemp("gauntlet_check"), jax_env)
    print(f"gauntlet: {run.seconds:.0f} s for {len(run.trials)} kills and {len(run.attempts)} Snakemake runs "
          f"(reference run {reference['seconds']:.0f} s); mean held-out PSNR {run.psnr_diff:+.3f} dB from the reference's")
    return run


def test_every_kill_survived_and_no_byte_lost(gauntlet):
    counts = summarize([gauntlet])
    assert counts["bytes_lost"] == 0, gauntlet.files_lost
    failed = [t.line() for t in gauntlet.kills if not t.survived]
    assert not failed, "\n".join(failed)


def test_every_stage_was_killed_while_running(gauntlet):
    landed = [t.landed for t in gauntlet.kills]
    for stage in {s for s, _ in GAUNTLET}:
        assert stage in landed, [t.line() for t in gauntlet.trials]


def test_training_resumed_from_its_last_checkpoint(gauntlet):
    """Killed early: a fresh start or checkpoint 0; killed after a periodic checkpoint: resumed from it."""
    trains = [t for t in gauntlet.kills if t.stage == "train" and t.landed == "train"]
    assert len(trains) == 2, [t.line() for t in gauntlet.trials]
    early, late = trains
    assert early.checkpoint in (None, 0), early.line()
    assert late.checkpoint is not None and late.checkpoint >= CHECKPOINT_EVERY, late.line()
    assert late.resumed == f"resumed from {late.checkpoint}", late.line()
    final = yaml.safe_load((gauntlet.workdir / f"results/{SCENE}/model/final.json").read_text())
    assert final["start_step"] == late.checkpoint > 0, final


def test_outputs_equal_an_uninterrupted_run(gauntlet):
    assert not gauntlet.problems, "\n".join(gauntlet.problems)


def test_a_killed_run_needs_unlock_then_the_same_command(gauntlet):
    """What a user meets after a crash: the plain rerun stops at Snakemake's lock; after --unlock it resumes."""
    assert gauntlet.lock_message_seen


def test_nothing_left_to_do(gauntlet):
    dry = subprocess.run(snakemake_command(gauntlet.workdir, "-n", *TARGETS), capture_output=True, text=True,
                         timeout=RUN_TIMEOUT_S, env=gauntlet.env)
    assert "Nothing to be done" in dry.stdout + dry.stderr, dry.stdout[-3000:]


def test_planted_temp_files_were_removed_by_the_reruns(gauntlet):
    """The temp files of a kill inside an atomic write are gone once the stage has run again."""
    assert gauntlet.planted, "nothing planted"
    left = [p for p in gauntlet.planted if p.exists()]
    assert not left, left


def test_a_write_killed_midway_leaves_a_temp_file_that_the_next_run_removes(tmp_path):
    """Regression: a SIGKILL inside fileio.atomic_path left `.NAME.XXXXXXXX.EXT` for good (no handler
    runs); frames/, model/, eval/, poses/ are not declared directories, so Snakemake never deleted them."""
    target = tmp_path / "frames" / "0000.png"
    code = ("import os, signal, sys; from nerflib import fileio\n"
            "with fileio.atomic_path(sys.argv[1]) as tmp:\n"
            "    tmp.write_bytes(b'half a frame')\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    killed = subprocess.run([sys.executable, "-c", code, str(target)], cwd=REPO, timeout=120)
    assert killed.returncode == -signal.SIGKILL
    left = list(target.parent.iterdir())
    assert len(left) == 1 and fileio.is_temp_name(left[0].name) and not target.exists(), left
    keep = [target.parent / name for name in ("0001.png", ".hidden", ".snakemake_timestamp", ".x.png")]
    for path in keep:
        path.write_bytes(b"x")
    assert fileio.remove_stale_temps(tmp_path, recursive=True) == left
    assert sorted(target.parent.iterdir()) == sorted(keep)


def test_sfm_killed_mid_run_leaves_no_work_folder(reference, tmp_path):
    """Regression: SfM builds in out_dir/.sfm-*; SIGKILL skipped its cleanup and the folder (with the
    feature database) stayed in results/{scene}/ for good. The next run now deletes it."""
    images = reference["workdir"] / f"resources/synthetic/{SCENE}/images"
    out = tmp_path / "scene"
    command = [sys.executable, "-m", "nerflib.cli", "poses", str(images), str(out), "--camera-model", "PINHOLE",
               "--matcher", "exhaustive", "--threads", "2"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            cwd=tmp_path)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not any((w / "database.db").exists() for w in out.glob(".sfm-*")) and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(POLL_S)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "SfM ended before it could be killed"
    assert list(out.glob(".sfm-*")), "the killed run left no work folder: nothing tested"
    again = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, cwd=tmp_path)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "work folder of an interrupted run" in again.stdout + again.stderr
    assert not list(out.glob(".sfm-*")) and (out / "sparse" / "0" / "images.bin").is_file()


@pytest.mark.nightly
def test_random_kills_nightly(tmp_path_factory, reference, jax_env):
    """Passes until NIGHTLY_KILLS kills: each kills every stage at new random moments (training twice) plus one
    more kill in a random stage (that stage is then killed again while it reruns)."""
    seed = _seed()
    rng = random.Random(seed)
    print(f"\nkill/resume nightly: seed {seed}, until {NIGHTLY_KILLS} kills")
    passes, problems = [], []
    while sum(len(p.kills) for p in passes) < NIGHTLY_KILLS and len(passes) < NIGHTLY_MAX_PASSES:
        i = len(passes)
        extra = rng.choice([item for item in GAUNTLET if item[1] != "early"])
        plan = sorted([*GAUNTLET, extra], key=lambda item: [s for s, _ in GAUNTLET].index(item[0]))
        run = run_pass(tmp_path_factory, reference, jax_env, plan, rng, f"nightly{i}", fraction=KILL_FRACTION)
        run.problems += compare_with_reference(run, reference, tmp_path_factory.mktemp(f"nightly{i}_check"), jax_env)
        print(f"pass {i}: {run.seconds:.0f} s, {len(run.kills)} kills, mean held-out PSNR {run.psnr_diff:+.3f} dB "
              f"from the reference's, {len(run.problems)} problem(s)", flush=True)
        problems += [f"pass {i}: {p}" for p in run.problems]
        passes.append(run)
    counts = summarize(passes)
    assert counts["kills"] >= NIGHTLY_KILLS, counts
    assert counts["bytes_lost"] == 0, [p.files_lost for p in passes]
    assert all(not p.planted or not any(f.exists() for f in p.planted) for p in passes)
    failed = [t.line() for p in passes for t in p.kills if not t.survived]
    assert not failed and not problems, "\n".join(failed + problems)

"""The machinery of tests/test_kill_resume.py: runs, kills, hashes and comparisons (see its docstring)."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from nerflib import fileio, rigid, scene_io
from helpers.tbtools import tensorboard_steps
from helpers.workflow import REDUCED, REPO, edit_config, output_files, reduced_workdir
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
    """Temp files or folders under results/ and resources/ (dot names other than Snakemake's timestamps and
    the model folder's lock file, '*tmp*')."""
    stray = []
    for top in ("results", "resources"):
        for p in (workdir / top).rglob("*"):
            ours = (".snakemake_timestamp", fileio.LOCK_NAME)  # Snakemake's; the model folder's lock (kept: flock)
            if (p.name.startswith(".") and p.name not in ours) or "tmp" in p.name.lower():
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
    workdir = reduced_workdir(tmp_path_factory, name)
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
    only_run, only_ref = output_files(work) - output_files(base), output_files(base) - output_files(work)
    if only_run or only_ref:
        problems.append(f"files only after kills: {sorted(only_run)[:8]}; only in the reference: {sorted(only_ref)[:8]}")
    incomplete = work / ".snakemake" / "incomplete"
    if incomplete.is_dir() and any(incomplete.iterdir()):
        problems.append(f"Snakemake still marks outputs incomplete: {sorted(p.name for p in incomplete.iterdir())}")
    problems += same_model_as_uninterrupted_training(work, tmp, env)
    return problems


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

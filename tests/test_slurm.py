"""The demo workflow through a real one-node SLURM cluster on localhost.

A module fixture starts munged, slurmctld and slurmd (Slurm's Debian packages:
`apt-get install slurm-wlm munge`, which `.ci/run` does as root) with all state
in temporary folders, from `tests/slurm/slurm.conf.in` and `gres.conf` (two fake
GPUs, so the profile's GPU requests are scheduled for real). A reduced demo
(24 views, 40 training steps, 2 video frames, no localization) then runs twice:

  * through SLURM: `snakemake --profile profiles/slurm --profile tests/slurm/profile`,
    i.e. the real profile with the test overlay (status command, polling), through
    tests/slurm/steady_status_checks.py (status checks every 2 s, not 2, 12, 22, ... s apart);
  * locally: `snakemake --cores 2` up to training, with the same config.

The tests check that every job was an sbatch job of this cluster that completed,
with the resources the profile asks for, and that the outputs match the local
run's: identical synthetic scene and pyramid, the same files, SfM poses and
training PSNR within tolerances (SfM and training are not bit-reproducible).

Nightly (`pytest -m nightly`): a training job signalled with SIGTERM saves a
checkpoint, fails, is resubmitted by the profile's `retries` and resumes.

Skipped, with the reason, only where the cluster cannot be started: Slurm or
munge not installed, not root, or the daemons do not come up.
"""

from __future__ import annotations

import concurrent.futures
import filecmp
import importlib.util
import os
import pwd
import re
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from helpers.workflow import REDUCED, edit_config, jax_cache_env, output_files, reduced_workdir
from helpers.workflow import snakemake as snakemake_local
from nerflib import rigid, scene_io

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent / "slurm"
PROFILES = [REPO / "profiles" / "slurm", HERE / "profile"]
# `python -m snakemake` whose SLURM executor checks job states every 2 s (the overlay's initial interval)
# instead of 2, 12, 22, ... s apart: see its docstring.
STEADY_STATUS_CHECKS = HERE / "steady_status_checks.py"
PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "scontrol", "sinfo", "scancel")
RULES = ("synthetic_scene", "poses", "pyramid", "train", "evaluate", "render")  # at least these
GPU_RULES = ("train", "evaluate", "render")  # gpu=1: set-resources of the profile, or the rule's own
# A demo small enough for CI (about a minute per run on 2 cores) that SfM still registers every view.
LOCAL_WITHOUT_JAX = ("results/demo/poses/scene.json", "results/demo/images_4")
LOCAL_TARGETS = ("results/demo/model/final.json",)  # the local run stops after training
LOCAL_SKIPS = {"eval", "evaluate", "render", "report", "report_figures"}  # folders only the SLURM run writes: results/demo/eval, logs/render, ...
RUN_TIMEOUT_S = 600


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return f"({path} not written)"


class Cluster:
    """munged + slurmctld + slurmd under `state`; `env` points the Slurm commands at it."""

    def __init__(self, state: Path):
        self.state = state
        self.procs: list[tuple[str, subprocess.Popen]] = []
        # munged runs as the munge user, who cannot enter pytest's root-only tmp folders.
        self.munge_dir = Path(tempfile.mkdtemp(prefix="dnerf-munge-"))
        self.host = socket.gethostname().split(".")[0]
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
        self.env["SLURM_CONF"] = str(state / "slurm.conf")

    def _start(self, name, args, **kwargs):
        log = open(self.state / f"{name}.out", "wb")
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.env, **kwargs)
        self.procs.append((name, proc))
        return proc

    def start(self, timeout_s: float = 30.0) -> None:
        munge = pwd.getpwnam("munge")
        os.chown(self.munge_dir, munge.pw_uid, munge.pw_gid)
        os.chmod(self.munge_dir, 0o755)
        key = self.munge_dir / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chown(key, munge.pw_uid, munge.pw_gid)
        os.chmod(key, 0o600)
        socket_path = self.munge_dir / "munge.socket"
        self._start("munged", [
            "munged", "--foreground", f"--socket={socket_path}", f"--key-file={key}",
            f"--pid-file={self.munge_dir / 'munged.pid'}", f"--seed-file={self.munge_dir / 'munged.seed'}",
            f"--log-file={self.munge_dir / 'munged.log'}",
        ], user=munge.pw_uid, group=munge.pw_gid)
        self._wait(lambda: socket_path.exists(), timeout_s, "munged socket")

        fields = {
            "host": self.host, "state": self.state, "munge_socket": socket_path,
            "ctld_port": _free_port(), "slurmd_port": _free_port(), "cpus": 16,
        }
        conf = string.Template((HERE / "slurm.conf.in").read_text()).substitute(fields)
        (self.state / "slurm.conf").write_text(conf)
        shutil.copy(HERE / "gres.conf", self.state / "gres.conf")  # slurmd reads it beside slurm.conf
        for sub in ("ctld", "spool"):
            (self.state / sub).mkdir()
        # snakemake-executor-plugin-slurm-jobstep removes every SLURM_* variable,
        # SLURM_CONF included, before it starts the job with `srun`; a real cluster
        # has its config at the default path, this one only through SLURM_CONF.
        shim = self.state / "bin" / "srun"
        shim.parent.mkdir()
        shim.write_text(f'#!/bin/sh\nSLURM_CONF={self.env["SLURM_CONF"]} exec {shutil.which("srun")} "$@"\n')
        shim.chmod(0o755)
        self.env["PATH"] = f"{shim.parent}{os.pathsep}{self.env.get('PATH', '')}"
        self._start("slurmctld", ["slurmctld", "-D"])
        self._start("slurmd", ["slurmd", "-D", "-N", self.host])
        self._wait(lambda: self.node_state() == "idle", timeout_s, "node idle")

    def _wait(self, ready, timeout_s, what):
        deadline = time.monotonic() + timeout_s
        while not ready():
            dead = [name for name, p in self.procs if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                logs = "\n".join(
                    f"--- {p.name}:\n{_tail(p)}"
                    for p in [*(self.state / f"{n}.out" for n, _ in self.procs),
                              self.state / "slurmctld.log", self.state / "slurmd.log", self.munge_dir / "munged.log"]
                )
                raise RuntimeError(f"{what} not reached after {timeout_s} s (exited: {dead or 'none'}); "
                                   f"node: {self.node_state()!r}\n{logs}")
            time.sleep(0.5)

    def run(self, *args, check=True) -> str:
        result = subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=30)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}): {result.stderr}")
        return result.stdout

    def node_state(self) -> str:
        try:
            # One line per partition of the node: "idle" once it is up in both.
            return " ".join(sorted(set(self.run("sinfo", "-h", "-N", "-o", "%T", check=False).split())))
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"sinfo failed: {e}"

    def jobs(self) -> list[dict]:
        """Every job slurmctld still remembers (finished ones for MinJobAge), as key=value dicts."""
        out = self.run("scontrol", "-o", "show", "job", check=False)
        jobs = []
        for line in out.splitlines():
            if not line.startswith("JobId="):
                continue
            # Values do not contain spaces here, except Comment/Command, which come last or are ours.
            jobs.append(dict(re.findall(r"(\w+(?::\w+)?)=(\S*)", line)))
        return jobs

    def stop(self) -> None:
        try:
            ids = self.run("squeue", "-h", "-o", "%i", check=False).split()
            if ids:
                self.run("scancel", *ids, check=False)
                deadline = time.monotonic() + 20
                while self.run("squeue", "-h", "-o", "%i", check=False).split() and time.monotonic() < deadline:
                    time.sleep(0.5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        shutil.rmtree(self.munge_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    missing = [d for d in PROGRAMS if shutil.which(d) is None]
    if missing:
        pytest.skip(f"SLURM test skipped: {', '.join(missing)} not installed "
                    "(apt-get install slurm-wlm munge; .ci/run does this when run as root)")
    if os.geteuid() != 0:
        pytest.skip("SLURM test skipped: starting munged (as the munge user) and slurmd needs root")
    try:
        pwd.getpwnam("munge")
    except KeyError:
        pytest.skip("SLURM test skipped: no munge user (the munge package creates it)")
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        pytest.fail("snakemake-executor-plugin-slurm is not installed "
                    "(pip install -e '.[slurm]'; CI gets it from the test extra)")
    cl = Cluster(tmp_path_factory.mktemp("slurm"))
    try:
        try:
            cl.start()
        except (RuntimeError, OSError, subprocess.SubprocessError) as e:
            pytest.skip(f"SLURM test skipped: the one-node cluster did not start: {e}")
        yield cl
    finally:
        cl.stop()


def _slurm_snakemake(cluster, workdir, *args, env=None, timeout=RUN_TIMEOUT_S):
    """Snakemake with the real profile and the test overlay; status checks every 2 s (STEADY_STATUS_CHECKS)."""
    command = [sys.executable, str(STEADY_STATUS_CHECKS), "-s", str(REPO / "Snakefile"), "-d", str(workdir)]
    for profile in PROFILES:
        command += ["--profile", str(profile)]
    return subprocess.run([*command, *args], env={**cluster.env, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def _planned_jobs(output: str) -> dict[str, int]:
    """Snakemake's 'Job stats' table: rule -> number of jobs."""
    table = output.split("Job stats:", 1)[1].split("total", 1)[0]
    return {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)$", table, flags=re.M)}


def _jobs_with_resources(output: str) -> list[tuple[str, dict]]:
    """(rule, resources) of every job a Snakemake run or dry run prints."""
    jobs = []
    for rule, block in re.findall(r"^(?:local)?rule (\w+):\n((?:    .*\n)+)", output, flags=re.M):
        line = next((l for l in block.splitlines() if l.strip().startswith("resources:")), "")
        jobs.append((rule, dict(re.findall(r"(\w+)=([^,\s]+)", line))))
    return jobs


def test_every_gpu_job_of_the_full_demo_goes_to_the_gpu_partition(cluster, tmp_path):
    """Dry run of the unreduced demo (every rule, localization too) with the real profile."""
    shutil.copytree(REPO / "config", tmp_path / "config")
    result = _slurm_snakemake(cluster, tmp_path, "-n", timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    jobs = _jobs_with_resources(result.stdout + result.stderr)
    assert {rule for rule, _ in jobs} >= set(RULES), jobs
    profile = yaml.safe_load((PROFILES[0] / "config.v8+.yaml").read_text())
    gpu_partition = profile["set-resources"]["train"]["slurm_partition"]
    for rule, resources in jobs:
        if int(resources.get("gpu", 0)) > 0:
            assert resources["slurm_partition"] == gpu_partition, (rule, resources)


@pytest.fixture(scope="module")
def runs(cluster, tmp_path_factory, session_jax_cache):
    """The reduced demo through SLURM and locally up to training; the SLURM jobs as slurmctld saw them.

    The local run's steps without JAX go alongside the SLURM run (which mostly
    waits between status checks); its training after it, from the JAX compile
    cache that the SLURM run filled (not shared while both run: its writes are
    not atomic). That cache is the session's (conftest.session_jax_cache): the
    programs of evaluate and render are there from test_kill_resume already.
    """
    cache = jax_cache_env(session_jax_cache)  # shared with test_kill_resume's runs of the same config
    slurm_dir = reduced_workdir(tmp_path_factory, "through_slurm")
    local_dir = reduced_workdir(tmp_path_factory, "local")
    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        local_first = pool.submit(snakemake_local, local_dir, *LOCAL_WITHOUT_JAX, timeout=RUN_TIMEOUT_S)
        result = _slurm_snakemake(cluster, slurm_dir, env=cache)
        slurm_s = time.monotonic() - start
        jobs = cluster.jobs()  # before MinJobAge (300 s) forgets the finished ones
        local = local_first.result()
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:] + "\n" + _tail(
        cluster.state / "slurmctld.log", 30)
    assert local.returncode == 0, local.stdout[-5000:] + local.stderr[-5000:]
    # Evaluation and rendering (a JAX compilation each) only through SLURM: their
    # outputs are checked with `snakemake -n` below.
    local = snakemake_local(local_dir, *LOCAL_TARGETS, timeout=RUN_TIMEOUT_S, env=cache)
    assert local.returncode == 0, local.stdout[-5000:] + local.stderr[-5000:]
    print(f"reduced demo: {slurm_s:.0f} s through SLURM, {time.monotonic() - start:.0f} s in all")
    return {"slurm": slurm_dir, "local": local_dir, "jobs": jobs, "log": result.stdout + result.stderr}


def _rule_of(job: dict) -> str:
    match = re.match(r"rule_(\w+?)(_wildcards_|$)", job.get("Comment", ""))
    return match.group(1) if match else ""


def _jobs_by_rule(jobs: list[dict]) -> dict[str, dict]:
    by_rule: dict[str, list] = {}
    for job in jobs:
        by_rule.setdefault(_rule_of(job), []).append(job)
    assert all(len(v) == 1 for v in by_rule.values()), {k: [j["JobId"] for j in v] for k, v in by_rule.items()}
    return {k: v[0] for k, v in by_rule.items()}


def test_every_job_was_an_sbatch_job_that_completed(runs):
    by_rule = _jobs_by_rule(runs["jobs"])
    planned = _planned_jobs(runs["log"])
    assert planned.pop("all") == 1 and set(planned.values()) == {1}, planned
    assert sorted(by_rule) == sorted(planned), [j.get("Comment") for j in runs["jobs"]]
    assert set(RULES) <= set(by_rule)
    for rule, job in by_rule.items():
        assert job["BatchFlag"] == "1", (rule, job)  # submitted with sbatch
        assert (job["JobState"], job["ExitCode"]) == ("COMPLETED", "0:0"), (rule, job)
    # Nothing ran on the submitting host except the target rule `all`.
    local_rules = set(re.findall(r"^localrule (\w+):", runs["log"], flags=re.M))
    assert local_rules <= {"all"}, local_rules
    # One SLURM log per job from the plugin, named by rule and job id.
    logs = (runs["slurm"] / ".snakemake" / "slurm_logs").rglob("*.log")
    assert sorted((p.parts[-3], p.stem) for p in logs) == sorted((f"rule_{r}", j["JobId"]) for r, j in by_rule.items())
    # Every declared output is there and up to date.
    again = snakemake_local(runs["slurm"], "-n")
    assert "Nothing to be done" in again.stdout + again.stderr, again.stdout + again.stderr


def test_profile_requests_reach_slurm(runs):
    """The real profile's partitions, account, GPUs, memory and threads are what slurmctld allocated."""
    profile = yaml.safe_load((PROFILES[0] / "config.v8+.yaml").read_text())
    defaults, per_rule, threads = profile["default-resources"], profile["set-resources"], profile["set-threads"]
    for rule, job in _jobs_by_rule(runs["jobs"]).items():
        wanted = {**defaults, **per_rule.get(rule, {})}
        assert job["Partition"] == wanted["slurm_partition"], (rule, job)
        assert job["Account"] == wanted["slurm_account"], (rule, job)
        if "mem_mb" in per_rule.get(rule, {}):  # else the rule's own mem_mb, or the default
            memory = job["MinMemoryNode"]
            assert float(memory[:-1]) * {"M": 1, "G": 1024}[memory[-1]] == wanted["mem_mb"], (rule, job)
        if rule in threads:
            assert int(job["NumCPUs"]) == threads[rule], (rule, job)
        assert job.get("TresPerJob") == ("gres:gpu:1" if rule in GPU_RULES else None), (rule, job)
        if rule in GPU_RULES:  # a GPU job in a partition without GPUs would wait forever on a real cluster
            assert job["Partition"] == per_rule["train"]["slurm_partition"], (rule, job)


def test_same_files_as_a_local_run(runs):
    only_slurm = {f for f in output_files(runs["slurm"]) - output_files(runs["local"])
                  if not LOCAL_SKIPS & set(f.split("/"))}
    assert not only_slurm
    assert not output_files(runs["local"]) - output_files(runs["slurm"])


def _differences(a: Path, b: Path) -> list[str]:
    cmp = filecmp.dircmp(a, b, ignore=[".snakemake_timestamp"])
    diff = [f"{a}/{n}" for n in cmp.left_only + cmp.right_only + cmp.diff_files + cmp.funny_files]
    for sub in cmp.common_dirs:
        diff += _differences(a / sub, b / sub)
    return diff


def test_scene_and_pyramid_identical_to_a_local_run(runs):
    for folder in ("resources/synthetic/demo", "results/demo/images_4"):
        assert not _differences(runs["slurm"] / folder, runs["local"] / folder)


def test_poses_match_a_local_run(runs):
    """SfM is not bit-reproducible (threads): both runs register every view, at nearly the same poses."""
    est = {name: scene_io.read_scene_json(runs[name] / "results/demo/poses/scene.json") for name in ("slurm", "local")}
    assert sorted(est["slurm"].names) == sorted(est["local"].names)
    assert len(est["slurm"]) == REDUCED["synthetic.views"]
    order = [est["local"].names.index(n) for n in est["slurm"].names]
    local_c2w = est["local"].c2w[order]
    errors = rigid.pose_errors(est["slurm"].c2w, local_c2w)
    radius = np.median(np.linalg.norm(local_c2w[:, :, 3] - local_c2w[:, :, 3].mean(0), axis=-1))
    rot, pos = float(np.median(errors["rotation_deg"])), float(np.median(errors["position"])) / radius
    print(f"SLURM vs local poses: median {rot:.4f} deg, {100 * pos:.4f}% of the orbit radius")
    assert rot < 0.5
    assert pos < 0.01


def test_training_close_to_a_local_run(runs):
    finals = {name: yaml.safe_load((runs[name] / "results/demo/model/final.json").read_text())
              for name in ("slurm", "local")}
    steps = REDUCED["train.overrides"]["max_steps"]
    assert finals["slurm"]["final_step"] == finals["local"]["final_step"] == steps
    print(f"training PSNR (last batch): {finals['slurm']['psnr']:.2f} dB through SLURM, "
          f"{finals['local']['psnr']:.2f} dB locally")
    # 40 steps from slightly different poses: close, not equal.
    assert finals["slurm"]["psnr"] == pytest.approx(finals["local"]["psnr"], abs=1.5)
    rows = dict(line.split("\t")[:2] for line in (runs["slurm"] / "results/demo/eval/metrics.tsv").open())
    assert np.isfinite(float(rows["mean"])) and float(rows["mean"]) > 8.0, rows


def test_training_spans_two_slurm_tasks(cluster, runs, tmp_path_factory):
    """The profile's multi-process form for train (mpi: "srun", 2 tasks, one per GPU): one sbatch job
    whose two tasks train as one JAX program (`jax.distributed`, SLURM detection), as on several nodes."""
    workdir = tmp_path_factory.mktemp("two_tasks") / "run"
    shutil.copytree(runs["slurm"], workdir, symlinks=True)  # poses and pyramid stay up to date (mtimes kept)
    shutil.rmtree(workdir / "results/demo/model")
    (workdir / "logs/train/demo.log").unlink()
    profile = yaml.safe_load((PROFILES[0] / "config.v8+.yaml").read_text())
    overlay = workdir.parent / "profile"
    overlay.mkdir()
    train = {**profile["set-resources"]["train"], "mpi": "srun", "tasks": 2, "tasks_per_gpu": 1, "gpu": 2}
    (overlay / "config.v8+.yaml").write_text(yaml.safe_dump(
        {"set-resources": {**profile["set-resources"], "train": train}}))
    result = _slurm_snakemake(cluster, workdir, "--profile", str(overlay), "results/demo/model/final.json")
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    jobs = [j for j in cluster.jobs() if j.get("WorkDir") == str(workdir)]
    assert [(_rule_of(j), j["NumTasks"], j["JobState"]) for j in jobs] == [("train", "2", "COMPLETED")], jobs
    log = (workdir / "logs/train/demo.log").read_text()
    assert "starting one process per task: srun " in log, log[-3000:]
    assert re.search(r"2 device\(s\) in 2 process", log), log[-3000:]
    final = yaml.safe_load((workdir / "results/demo/model/final.json").read_text())
    assert final["processes"] == 2 and final["final_step"] == REDUCED["train.overrides"]["max_steps"], final
    one = yaml.safe_load((runs["slurm"] / "results/demo/model/final.json").read_text())
    print(f"training PSNR (last batch): {final['psnr']:.2f} dB as 2 SLURM tasks, {one['psnr']:.2f} dB as one")
    assert final["psnr"] == pytest.approx(one["psnr"], abs=1.5)


@pytest.mark.nightly
def test_preempted_training_resumes_through_retries(cluster, tmp_path_factory):
    """SIGTERM to a running training job (what preemption and time limits send): checkpoint, failed job,
    `retries: 1` of the profile resubmits it, the new job resumes from the checkpoint. About 3 minutes."""
    workdir = reduced_workdir(tmp_path_factory, "preempted")
    steps = 600
    edit_config(workdir, **{"train.overrides": {**REDUCED["train.overrides"], "max_steps": steps,
                                                "checkpoint_every": 100, "print_every": 50}})
    checkpoints = workdir / "results/demo/model/checkpoints"

    def signal_training_after_a_checkpoint():
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while time.monotonic() < deadline:
            time.sleep(1)
            running = [j for j in cluster.jobs() if _rule_of(j) == "train" and j["JobState"] == "RUNNING"
                       and j.get("WorkDir") == str(workdir)]
            if running and checkpoints.is_dir() and any(checkpoints.iterdir()):
                cluster.run("scancel", "--signal=TERM", running[0]["JobId"])
                return running[0]["JobId"]

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        signalled = pool.submit(signal_training_after_a_checkpoint)
        result = _slurm_snakemake(cluster, workdir, "results/demo/model/final.json")
        first = signalled.result()
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    trains = [j for j in cluster.jobs() if _rule_of(j) == "train" and j.get("WorkDir") == str(workdir)]
    assert [(j["JobId"] == first, j["JobState"]) for j in trains] == [(True, "FAILED"), (False, "COMPLETED")], trains
    slurm_logs = workdir / ".snakemake/slurm_logs/rule_train/demo"
    assert "checkpoint saved at step" in (slurm_logs / f"{first}.log").read_text()
    resumed = re.search(r"resumed from checkpoint step (\d+)", (workdir / "logs/train/demo.log").read_text())
    assert resumed and 0 < int(resumed.group(1)) < steps
    final = yaml.safe_load((workdir / "results/demo/model/final.json").read_text())
    assert (final["start_step"], final["final_step"]) == (int(resumed.group(1)), steps), final

"""Snakemake on the repository's workflow in a temporary working directory.

Sheet and config edits, dry runs and runs, the JAX cache shared by a session's workflow runs,
the reduced demo config (test_slurm, test_kill_resume) and the whole demo run (DemoRun:
test_workflow_run, started in the background by conftest.py).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
HEADER = "scene\tsource\tcamera_model\tfactor\tpreset\tmatcher\tposes\tposes_format\trender_path\tqueries"
RENDER_FRAMES, RENDER_FPS = 24, 12  # the demo run's CI-sized video
DEMO_UMASK = 0o022  # the usual umask: every output must be readable by group and others
# The demo config reduced for runs that time kills or compare two runs (test_slurm, test_kill_resume).
REDUCED = {
    "synthetic.views": 24,
    "synthetic.heldout": 0,
    "synthetic.queries": 0,
    "train.overrides": {"max_steps": 40, "batch_size": 256, "checkpoint_every": 20, "print_every": 10,
                        "tb_every": 10},
    "render": {"frames": 2, "fps": 2},
}


def run_snakemake(workdir, *args, cores=1):
    """Snakemake on the repository's workflow in `workdir` (a completed process, output captured)."""
    return subprocess.run(
        [*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--cores", str(cores), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def dry_run(workdir, *extra):
    return run_snakemake(workdir, "-n", *extra)


def write_sheet(workdir, *lines):
    (workdir / "config" / "datasets.tsv").write_text("\n".join(lines) + "\n")


def edit_config(workdir, **changes):
    path = workdir / "config" / "config.yaml"
    cfg = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        node = cfg
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    path.write_text(yaml.safe_dump(cfg))


def snakemake(workdir, *args, timeout=1800, env=None):
    """`snakemake --cores 2` in workdir; env: variables added to this process's environment."""
    return subprocess.run(
        [*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--cores", "2", *args],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})},
    )


def jax_cache_env(cache: str | os.PathLike) -> dict:
    """Environment variables that make every JAX process of a workflow use the compilation cache `cache`.

    DNERF_JAX_CACHE reaches the steps that call nerflib.train.enable_compilation_cache
    (train, evaluate, render, localize); JAX_COMPILATION_CACHE_DIR, which
    enable_compilation_cache keeps, any other JAX process too. A minimum compile time of 0 caches
    the many small programs each job compiles (PRNG, sharding, metrics: about 5 s of every
    job's start on 2 CPU cores) besides the training step and the render function. A cached
    executable computes what a fresh compile does (test_kill_resume checks a resumed model
    bitwise against one trained without interruption).
    """
    return {"DNERF_JAX_CACHE": str(cache), "JAX_COMPILATION_CACHE_DIR": str(cache),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}


def reduced_workdir(tmp_path_factory, name: str) -> Path:
    """The demo config, reduced; without localization (two XLA compiles, 40 s: test_workflow_run has it)."""
    workdir = tmp_path_factory.mktemp(name)
    shutil.copytree(REPO / "config", workdir / "config")
    edit_config(workdir, **REDUCED)
    header, *rows = (workdir / "config" / "datasets.tsv").read_text().splitlines()
    columns = header.split("\t")
    rows = ["\t".join("" if col.startswith("quer") else cell for col, cell in zip(columns, row.split("\t")))
            for row in rows]
    write_sheet(workdir, header, *rows)
    return workdir


def output_files(workdir: Path) -> set[str]:
    """Every output file, with the names that differ from run to run (checkpoint shards, event files) cut."""
    names = set()
    for path in workdir.rglob("*"):
        rel = path.relative_to(workdir).as_posix()
        if path.is_dir() or rel.startswith((".snakemake/", "config/")):
            continue
        rel = re.sub(r"(/checkpoints/\d+)/.*", r"\1/...", rel)
        names.add(re.sub(r"(/tb/events\.out\.tfevents)\..*", r"\1...", rel))
    return names


class DemoRun:
    """The whole workflow on the demo, as one `snakemake --cores 2` process (its output in files beside workdir).

    conftest.py starts it in the background once the session's other workflow runs are done
    (pytest_runtest_setup), so that it trains while the suite's in-process tests run; the
    `demo_run` fixture of test_workflow_run then waits for it (or starts it itself, when that
    module runs alone).
    """

    def __init__(self, tmp_path_factory, cache: Path):
        self.workdir = tmp_path_factory.mktemp("demo")
        shutil.copytree(REPO / "config", self.workdir / "config")
        cfg_path = self.workdir / "config" / "config.yaml"
        cfg = yaml.safe_load(cfg_path.read_text())
        cfg["render"] = {"frames": RENDER_FRAMES, "fps": RENDER_FPS}  # CI-sized video
        # Localization from the ground truth moved by 10 degrees and 10 % of the radius (issue #8).
        cfg["localize"] = {**cfg.get("localize", {}), "start": "perturbed", "perturb_rot_deg": 10.0,
                           "perturb_radius_fraction": 0.1}
        cfg["export"] = {"point_cloud": {"stride": 2}}  # a quarter of the pixels: ~20 s on 2 cores
        cfg_path.write_text(yaml.safe_dump(cfg))
        sheet = self.workdir / "config" / "datasets.tsv"  # every row exports its point cloud (issue #25)
        lines = sheet.read_text().splitlines()
        sheet.write_text("\n".join([lines[0] + "\texport"] + [line + "\tply" if line.strip() and
                                                                not line.startswith("#") else line
                                                                for line in lines[1:]]) + "\n")
        # Not in workdir: test_nothing_written_outside_the_output_folders lists its top level.
        out = tmp_path_factory.mktemp("demo_output")
        self.stdout, self.stderr = out / "stdout.txt", out / "stderr.txt"
        # One compilation cache for all jobs: evaluate, render, localize and the report figures share programs.
        env = {**os.environ, **jax_cache_env(cache)}
        with self.stdout.open("w") as so, self.stderr.open("w") as se:
            self.proc = subprocess.Popen(
                [*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(self.workdir), "--cores", "2"],
                stdout=so, stderr=se, text=True, env=env, start_new_session=True, umask=DEMO_UMASK)

    def wait(self, timeout: float = 1800) -> subprocess.CompletedProcess:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise
        return subprocess.CompletedProcess(self.proc.args, self.proc.returncode,
                                           self.stdout.read_text(errors="replace"),
                                           self.stderr.read_text(errors="replace"))

    def stop(self) -> None:
        """Kill a run still going (the session ended first) with its jobs: it has its own session."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

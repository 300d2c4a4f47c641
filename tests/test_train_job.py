"""The train rule's job without Snakemake: srun's command, signal forwarding, settings to every task.

The launcher is a stand-in (a Python script named `srun` that records its arguments and runs the
command after them), so nothing here needs SLURM; tests/test_slurm.py runs the real one.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from nerflib import cli, parallel, steps, train_job

# Records its argv in $FAKE_SRUN_RECORD, then runs the words after its --options once (as one task).
FAKE_SRUN = """#!{python}
import json, os, subprocess, sys
args = sys.argv[1:]
with open(os.environ["FAKE_SRUN_RECORD"], "w") as f:
    json.dump(args, f)
command = [a for a in args if not a.startswith("--")]
sys.exit(subprocess.call(command))
"""


@pytest.fixture
def fake_srun(tmp_path, monkeypatch):
    path = tmp_path / "bin" / "srun"
    path.parent.mkdir()
    path.write_text(FAKE_SRUN.format(python=sys.executable))
    path.chmod(0o755)
    record = tmp_path / "srun_args.json"
    monkeypatch.setenv("FAKE_SRUN_RECORD", str(record))
    return path, record


def _signal_self_when(ready: Path, signum: int) -> threading.Thread:
    """Send `signum` to this process once `ready` exists (the child has installed its handler)."""
    def wait_and_signal():
        deadline = time.monotonic() + 60
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signum)

    thread = threading.Thread(target=wait_and_signal, daemon=True)
    thread.start()
    return thread


def test_sigterm_goes_to_the_child_and_the_handler_comes_back(tmp_path):
    """A SIGTERM for the wrapper reaches the child (which 'checkpoints' and exits 143); the wrapper
    survives it, and its own SIGTERM handler is back afterwards."""
    ready, saved = tmp_path / "ready", tmp_path / "saved"
    child = (f"import signal, sys, time, pathlib\n"
             f"def stop(signum, frame):\n"
             f"    pathlib.Path({str(saved)!r}).write_text(str(signum)); sys.exit(143)\n"
             f"signal.signal(signal.SIGTERM, stop)\n"
             f"pathlib.Path({str(ready)!r}).touch()\n"
             f"time.sleep(60)\n")
    reached_wrapper = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: reached_wrapper.append(signum))
    try:
        own = signal.getsignal(signal.SIGTERM)
        thread = _signal_self_when(ready, signal.SIGTERM)
        status = parallel.run_forwarding_signals([sys.executable, "-c", child])
        thread.join()
        assert status == 143
        assert saved.read_text() == str(int(signal.SIGTERM))
        assert reached_wrapper == []  # forwarded, not handled here
        assert signal.getsignal(signal.SIGTERM) is own
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_child_killed_by_a_signal_gives_128_plus_its_number():
    status = parallel.run_forwarding_signals(
        [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"])
    assert status == 128 + signal.SIGKILL


def test_launch_completes_srun_from_the_jobs_resources_and_logs_the_command(fake_srun, tmp_path):
    srun, record = fake_srun
    log = tmp_path / "logs" / "train" / "demo.log"
    resources = {"mpi": "srun", "tasks": 2, "gpu": 2, "tasks_per_gpu": 1, "mem_mb": 1000}
    status = parallel.launch(str(srun), resources, [sys.executable, "-c", "raise SystemExit(3)"], log=str(log),
                             what="train")
    assert status == 3
    assert json.loads(record.read_text()) == [
        "--nodes=1", "--ntasks=2", "--gpus=2", "--ntasks-per-gpu=1", sys.executable, "-c", "raise SystemExit(3)"]
    assert log.read_text().startswith(f"[train] starting one process per task: {srun} --nodes=1 --ntasks=2 ")


def test_every_task_gets_the_settings_of_the_job(fake_srun, tmp_path, monkeypatch):
    """run(launcher=srun): each task runs `nerf --log LOG train ...` whose arguments parse back to the
    job's steps.train call; the launcher's exit status is the job's."""
    srun, record = fake_srun
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python-that-exits-143"))
    Path(sys.executable).write_text("#!/bin/sh\nexit 143\n")
    Path(sys.executable).chmod(0o755)
    settings = {"preset": "tiny", "factor": 4, "overrides": {"max_steps": 40, "num_samples": [32, 16]}}
    log = str(tmp_path / "train.log")
    status = train_job.run("r/scene.json", "r/images_4", model_dir="r/model", settings=settings, log=log,
                           allow_cpu=True, launcher=str(srun), resources={"tasks": 2}, sparse="r/sparse/0")
    assert status == 143
    args = json.loads(record.read_text())
    assert args[:3] == ["--nodes=1", "--ntasks=2", sys.executable]
    assert args[3:7] == ["-m", "nerflib.cli", "--log", log]
    parsed = cli.build_parser().parse_args(args[5:])
    assert parsed.log == log
    assert cli.train_call(parsed) == {"scene_json": "r/scene.json", "images": "r/images_4", "model_dir": "r/model",
                                      "allow_cpu": True, "sparse": "r/sparse/0", **settings}


def test_in_this_process_with_a_viewer_beside_it(tmp_path, monkeypatch):
    """No launcher: steps.train here, logging to the job's log; the viewer (`nerf view`) stops after."""
    calls, started = [], []

    class FakeProcess:
        def __init__(self, command, env):
            started.append({"command": command, "env": env, "terminated": False})

        def terminate(self):
            started[-1]["terminated"] = True

    def train(*args, **kwargs):
        calls.append((args, kwargs))
        os.write(2, b"trained\n")  # log_to redirects the file descriptors (pytest captures sys.stderr)

    monkeypatch.setattr(steps, "train", train)
    monkeypatch.setattr(train_job.subprocess, "Popen", FakeProcess)
    log = tmp_path / "logs" / "train.log"
    settings = {"preset": "tiny", "factor": 2, "overrides": {}}
    status = train_job.run("s.json", "img", model_dir="m", settings=settings, log=str(log),
                           viewer={"enabled": True, "host": "0.0.0.0", "port": 8123})
    assert status == 0
    assert calls == [(("s.json", "img"), {"model_dir": "m", "allow_cpu": False, "sparse": "", **settings})]
    assert "trained" in log.read_text()
    [viewer] = started
    assert viewer["terminated"] and viewer["env"]["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    parsed = cli.build_parser().parse_args(viewer["command"][3:])
    assert (parsed.step, parsed.model_dir, parsed.scene, parsed.images, parsed.host, parsed.port, parsed.log) == (
        "view", "m", "s.json", "img", "0.0.0.0", 8123, str(log))
    status = train_job.run("s.json", "img", model_dir="m", settings=settings, log=str(log), viewer={"enabled": False})
    assert status == 0 and len(started) == 1

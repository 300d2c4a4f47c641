"""Snakemake entry point of rule train (same as `nerf train`).

One process by default. With an `mpi` resource (the SLURM profile's way to ask
for one process per task, `mpi: "srun"`; see profiles/slurm/config.v8+.yaml),
the step is started through that launcher instead (for srun with the job's
task layout: parallel.launcher_command): every task runs `nerf train` with
the same arguments and `nerflib.parallel` joins them with `jax.distributed`
(SLURM detection). This script then only waits for the
launcher and passes on its exit status (143 after SIGTERM: a checkpoint was
saved and the profile's `retries` resubmits the job).
"""
import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

from nerflib import parallel, steps
from nerflib.logs import log_to

model_dir = Path(snakemake.output.final).parent
settings = snakemake.params.settings
# How to run, not what to compute: read here, not a param, so that switching it reruns nothing.
allow_cpu = bool(snakemake.config.get("allow_cpu", False))
launcher = str(snakemake.resources.get("mpi", "") or "").strip()
# The viewer option is read from the config, not a param: turning it on or off must not rerun training.
viewer_options = snakemake.config["train"].get("viewer") or {}
viewer = None
if viewer_options.get("enabled"):  # `nerf view` beside the training, following its checkpoints
    Path(snakemake.log[0]).parent.mkdir(parents=True, exist_ok=True)
    viewer = subprocess.Popen(
        [sys.executable, "-m", "nerflib.cli", "--log", snakemake.log[0], "view", str(model_dir),
         "--scene", snakemake.input.scene, "--images", snakemake.input.images,
         "--host", str(viewer_options.get("host", "127.0.0.1")), "--port", str(viewer_options.get("port", 8080)),
         "--wait", "86400"],
        env={**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"})  # leave the GPU's memory to training

if launcher:
    command = [*parallel.launcher_command(launcher, dict(snakemake.resources.items())),
               sys.executable, "-m", "nerflib.cli", "--log", snakemake.log[0], "train",
               snakemake.input.scene, snakemake.input.images, str(model_dir),
               "--preset", settings["preset"], "--factor", str(settings["factor"])]
    for key, value in dict(settings["overrides"] or {}).items():
        command += ["--set", f"{key}={json.dumps(value)}"]
    if allow_cpu:
        command.append("--allow-cpu")
    Path(snakemake.log[0]).parent.mkdir(parents=True, exist_ok=True)
    with open(snakemake.log[0], "a") as log:
        log.write(f"[train] starting one process per task: {shlex.join(command)}\n")
    child = subprocess.Popen(command)
    # A SIGTERM for this wrapper (time limit, preemption) goes to the launcher,
    # which passes it on to the tasks; they checkpoint and exit with 143.
    signal.signal(signal.SIGTERM, lambda signum, frame: child.send_signal(signum))
    status = child.wait()
    if viewer is not None:
        viewer.terminate()
    sys.exit(status if status >= 0 else 128 - status)
else:
    try:
        with log_to(snakemake.log[0]):
            steps.train(snakemake.input.scene, snakemake.input.images, model_dir=model_dir, allow_cpu=allow_cpu,
                    **settings)
    finally:
        if viewer is not None:
            viewer.terminate()

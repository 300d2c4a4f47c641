"""The train rule's job: `steps.train` here, or once per task through a launcher; a viewer beside it.

One process by default. With a launcher (the SLURM profile asks for one process per task with
the rule's `mpi` resource, `mpi: "srun"`; see profiles/slurm/config.v8+.yaml), every task runs
`nerf train` with the same arguments (`cli.train_argv`) and `nerflib.parallel` joins them with
`jax.distributed` (SLURM detection); this process only waits for the launcher and returns its
exit status (143 after SIGTERM: a checkpoint was saved and the profile's `retries` resubmits
the job). No Snakemake here: workflow_scripts/train.py reads the job and calls `run`.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any, Mapping

from nerflib import cli, steps
from nerflib.logs import log_to


def run(scene_json, images, *, model_dir, settings: Mapping[str, Any], log: str, allow_cpu: bool = False,
        launcher: str = "", resources: Mapping[str, Any] | None = None,
        viewer: Mapping[str, Any] | None = None, sparse="") -> int:
    """Train (or resume); returns the exit status for the job (0 when trained in this process).

    settings: the keyword arguments of `steps.train` that say what to compute (preset, factor,
    overrides). allow_cpu, launcher, resources and viewer say how to run it (changing them must
    not rerun training). launcher: '' (this process) or the launcher's words, completed from the
    job's `resources` for srun (parallel.launcher_command). viewer: the config's `train.viewer`
    (`enabled`, `host`, `port`): `nerf view` follows the checkpoints until training ends. sparse: the
    COLMAP model whose points split a tiled model (steps.train's `sparse`; the rule gives it for tiles > 1).
    """
    viewer = viewer or {}
    viewer_process = None
    if viewer.get("enabled"):
        viewer_process = start_viewer(model_dir, scene_json, images, log=log,
                                      host=viewer.get("host", "127.0.0.1"), port=viewer.get("port", 8080))
    try:
        if launcher:
            from nerflib import parallel

            argv = cli.train_argv(scene_json, images, model_dir=model_dir, allow_cpu=allow_cpu, sparse=sparse,
                                  **settings)
            return parallel.launch(launcher, resources or {}, cli.command(argv, log=log), log=log, what="train")
        with log_to(log):
            steps.train(scene_json, images, model_dir=model_dir, allow_cpu=allow_cpu, sparse=sparse, **settings)
        return 0
    finally:
        if viewer_process is not None:
            viewer_process.terminate()


def start_viewer(model_dir, scene_json, images, *, log: str, host: str, port: int) -> subprocess.Popen:
    """`nerf view MODEL_DIR` in a process of its own, appending to `log`, on at most one day."""
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    argv = ["view", str(model_dir), "--scene", str(scene_json), "--images", str(images),
            "--host", str(host), "--port", str(port), "--wait", "86400"]
    # Leave the GPU's memory to training.
    return subprocess.Popen(cli.command(argv, log=log), env={**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"})

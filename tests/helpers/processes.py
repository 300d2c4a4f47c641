"""Several local processes training together (jax.distributed on CPU), as SLURM's tasks do.

Shared by test_parallel (data parallel) and test_tiled_processes (tiles over processes): a free port
for the coordinator, starting the processes and collecting their output, and the arrays they compare.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import numpy as np


def free_port() -> int:
    """A TCP port nobody listens on now (for jax.distributed's coordinator)."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def run_together(commands: list[list[str]], env: dict | list[dict], *, timeout: float = 400) -> None:
    """Start `python *command` for each command at once (env: one for all, or one per command), wait for
    all; assert they all exit 0 (the message holds each one's output tail). Processes still running at
    the end are killed."""
    envs = env if isinstance(env, list) else [env] * len(commands)
    procs = [subprocess.Popen([sys.executable, *cmd], env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for cmd, e in zip(commands, envs, strict=True)]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=timeout)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs), "\n----\n".join(x[-3000:] for x in logs)


def flat(tree) -> dict:
    """{'a/b/c': numpy array} of a pytree's leaves (replicated or fully addressable arrays)."""
    import jax

    return {"/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path): np.asarray(v)
            for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def load_npz(path: Path) -> dict:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def train_tsv(path: Path) -> np.ndarray:
    """train.tsv's first four columns (step, loss, psnr, lr) as floats."""
    lines = path.read_text().splitlines()[1:]
    return np.array([[float(x) for x in line.split("\t")[:4]] for line in lines])

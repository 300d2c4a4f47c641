"""Data parallelism the `jax.sharding` way: one mesh, one jitted step, no pmap.

Layout: a 1-D `Mesh` named 'data' over every device of every process.
Parameters and optimizer state are replicated (`NamedSharding(mesh, P())`),
ray batches are split along their first axis (`NamedSharding(mesh, P('data'))`).
The loss is a mean over the *global* batch, so XLA inserts the gradient
all-reduce itself; nothing here writes a collective by hand.

Multi-process start-up (`initialize_distributed`), in order of precedence:
  1. explicit arguments;
  2. environment variables (for launchers other than SLURM, e.g. torchrun-style
     scripts or one `python` per node started by hand):
       DNERF_COORDINATOR     host:port of process 0's coordination service
       DNERF_NUM_PROCESSES   total number of processes
       DNERF_PROCESS_ID      this process's rank, 0 .. N-1
       DNERF_LOCAL_DEVICES   optional comma-separated local device ids
  3. SLURM: under `srun` with SLURM_NTASKS > 1, JAX's own cluster detection
     reads SLURM_* (coordinator = first node of the step, port from the job id;
     GPUs as `slurm_local_devices` says).
  4. otherwise a single process: nothing to do.
Every process must then run the same program: same config, same dataset files.

Starting those processes inside a batch job (`launch`): the launcher's words
(`launcher_command`, for srun completed with the job's task layout), then the
command; the job's SIGTERM is forwarded to the launcher (`run_forwarding_signals`).
These use neither JAX nor Snakemake.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"

_initialized = False


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def use_cpu_collectives() -> None:
    """Let CPU devices of several processes talk (gloo). Call before JAX starts its backends.

    Harmless on GPU hosts (it only configures the CPU client); a JAX without
    the option (it is the default in newer versions) is left as it is.
    """
    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except Exception:  # option renamed or removed: gloo is then the default
        pass


def initialize_distributed(
    *,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: Sequence[int] | None = None,
) -> bool:
    """Start `jax.distributed` when running as one of several processes; True if it was started.

    Must be called before any other JAX call (it fixes the device list).
    Idempotent: a second call does nothing. See the module docstring for the
    environment variables and SLURM detection.
    """
    global _initialized
    if _initialized:
        return True
    coordinator_address = coordinator_address or os.environ.get("DNERF_COORDINATOR") or None
    if num_processes is None:
        num_processes = _env_int("DNERF_NUM_PROCESSES")
    if process_id is None:
        process_id = _env_int("DNERF_PROCESS_ID")
    if local_device_ids is None and os.environ.get("DNERF_LOCAL_DEVICES"):
        local_device_ids = [int(x) for x in os.environ["DNERF_LOCAL_DEVICES"].split(",")]
    explicit = [coordinator_address, num_processes, process_id]
    if any(v is not None for v in explicit):
        if any(v is None for v in explicit):
            raise ValueError(
                "multi-process start needs all of coordinator_address, num_processes and process_id "
                f"(or DNERF_COORDINATOR, DNERF_NUM_PROCESSES, DNERF_PROCESS_ID); got "
                f"coordinator_address={coordinator_address!r}, num_processes={num_processes!r}, "
                f"process_id={process_id!r}"
            )
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise ValueError(f"need 0 <= process_id < num_processes, got {process_id} and {num_processes}")
        if num_processes == 1:
            return False
        use_cpu_collectives()
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
            local_device_ids=local_device_ids,
        )
        _initialized = True
        return True
    if (_env_int("SLURM_NTASKS") or 1) > 1 and "SLURM_STEP_NODELIST" in os.environ:
        use_cpu_collectives()
        if local_device_ids is None:
            local_device_ids = slurm_local_devices(os.environ)
        jax.distributed.initialize(local_device_ids=local_device_ids)  # SLURM auto-detection
        _initialized = True
        return True
    return False


def slurm_local_devices(environ) -> list[int] | None:
    """The GPUs a SLURM task should use, where JAX's own choice would be wrong.

    JAX's SLURM detection gives task `SLURM_LOCALID` the GPU with that number,
    right when every task of a node sees all its GPUs (`--gpus-per-node`,
    `--gres=gpu:N`). When SLURM binds GPUs to tasks (`--ntasks-per-gpu`,
    `--gpus-per-task`, `--gpu-bind`), a task sees only its own GPU(s) through
    CUDA_VISIBLE_DEVICES, so number `SLURM_LOCALID` does not exist for any
    task but the first: use all GPUs the task sees instead. None = JAX decides.
    """
    visible = [d for d in environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    local_id = environ.get("SLURM_LOCALID", "")
    if not visible or not local_id.isdigit() or int(local_id) < len(visible):
        return None
    return list(range(len(visible)))


def launcher_command(launcher: str, resources: Mapping[str, Any]) -> list[str]:
    """The words that start one process per task inside a batch job: `launcher`, completed for srun.

    Snakemake's SLURM jobstep plugin removes the allocation's SLURM_*
    variables (all but the job id) before it runs a job, so a bare `srun`
    would start one task: for srun the job's task layout is passed again
    from its resources (`tasks` or `tasks_per_node`, `nodes`, `gpu`/`gres`,
    `tasks_per_gpu`, as the SLURM profile gave them to sbatch). Any other
    launcher (e.g. "mpirun -n 8") is used as written.
    """
    words = shlex.split(launcher)
    if not words or os.path.basename(words[0]) != "srun":
        return words

    def number(key):
        value = resources.get(key)
        return int(value) if value not in (None, "") else None

    nodes, tasks, per_node = number("nodes"), number("tasks"), number("tasks_per_node")
    words.append(f"--nodes={nodes or 1}")
    if per_node:
        words.append(f"--ntasks-per-node={per_node}")
    elif tasks:
        words.append(f"--ntasks={tasks}")
    gpus = number("gpu") or number("gpus")
    if gpus:
        words.append(f"--gpus={gpus}")
    elif resources.get("gres"):
        words.append(f"--gres={resources['gres']}")
    per_gpu = number("tasks_per_gpu")
    if per_gpu:
        words.append(f"--ntasks-per-gpu={per_gpu}")
    return words


def run_forwarding_signals(command: Sequence[str], *, forward: Sequence[int] = (signal.SIGTERM,)) -> int:
    """Run `command`, pass the `forward` signals that reach this process on to it, wait for it.

    For a job's wrapper around a launcher: a SIGTERM for the job (time limit, preemption) goes
    to the launcher, which passes it on to the tasks; they checkpoint and exit with 143. The
    previous handlers are put back before returning (call it from the main thread). Returns
    the exit status as a shell reports it: 128 + N when the command died of signal N.
    """
    child = subprocess.Popen(list(command))
    previous = {signum: signal.signal(signum, lambda received, frame: child.send_signal(received))
                for signum in forward}
    try:
        status = child.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return status if status >= 0 else 128 - status


def launch(launcher: str, resources: Mapping[str, Any], command: Sequence[str], *, log: str, what: str) -> int:
    """Run `command` once per task through `launcher` (see launcher_command); its exit status.

    The full command is written to `log` first (as `[what] starting ...`); the tasks write
    their own output there. Signals are forwarded as run_forwarding_signals says.
    """
    full = [*launcher_command(launcher, resources), *command]
    os.makedirs(os.path.dirname(os.path.abspath(log)), exist_ok=True)
    with open(log, "a") as out:
        out.write(f"[{what}] starting one process per task: {shlex.join(full)}\n")
    return run_forwarding_signals(full)


def is_main_process() -> bool:
    return jax.process_index() == 0


def make_mesh(devices: Sequence[Any] | None = None) -> Mesh:
    """A 1-D mesh with axis 'data' over all devices of all processes (or `devices`)."""
    devices = jax.devices() if devices is None else list(devices)
    # Mesh(...) rather than jax.make_mesh: the latter defaults to Explicit axis
    # types in newer JAX, which changes sharding semantics inside jit.
    return Mesh(np.array(devices), (DATA_AXIS,))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def data_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def valid_batch_sizes(batch_size: int, multiple: int, *, count: int = 2) -> list[int]:
    """The `count` multiples of `multiple` just below and just above `batch_size`."""
    lo = (batch_size // multiple) * multiple
    below = [lo - i * multiple for i in range(count) if lo - i * multiple > 0]
    above = [lo + (i + 1) * multiple for i in range(count)]
    return sorted(below + above)


def check_batch_size(batch_size: int, num_devices: int, *, what: str = "batch_size") -> None:
    """Raise ValueError unless `batch_size` splits evenly over `num_devices` devices."""
    if num_devices < 1:
        raise ValueError(f"num_devices must be >= 1, got {num_devices}")
    if batch_size < 1 or batch_size % num_devices:
        nearby = ", ".join(str(b) for b in valid_batch_sizes(max(batch_size, 1), num_devices))
        raise ValueError(
            f"{what}={batch_size} cannot be split evenly over {num_devices} devices; "
            f"use a multiple of {num_devices}, e.g. {nearby} "
            "(configs.scale_batch_size rescales the learning rate and steps to match)"
        )


def shard_batch(local_batch, mesh: Mesh):
    """Per-process host arrays [b, ...] -> global arrays [b * num_processes, ...] split along 'data'.

    Each process passes its own share; the global batch is their
    concatenation in process order.
    """
    sharding = data_sharding(mesh)
    return jax.tree_util.tree_map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch
    )


def replicate(tree, mesh: Mesh):
    """Put a pytree (identical on every process) on every device of the mesh."""
    sharding = replicated_sharding(mesh)
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    return jax.tree_util.tree_map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x), np.shape(x)), tree
    )


def global_array(x: np.ndarray, sharding: NamedSharding):
    """A global array from host data that every process holds in full (each uploads its own shards)."""
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def fetch(tree):
    """Host numpy copies of replicated (or fully addressable) arrays; works on every process."""
    return jax.tree_util.tree_map(np.asarray, jax.device_get(tree))


def any_process(flag: bool) -> bool:
    """True if `flag` is True on any process (a collective: every process must call it)."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.array([int(bool(flag))], np.int32))
    return bool(np.any(flags))


def sync(name: str) -> None:
    """A barrier across processes (no-op for one)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)

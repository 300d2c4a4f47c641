"""Which accelerator JAX runs on, said where the user sees it, and the GPU-preset guard.

`describe()` summarises JAX's backend and devices; `announce(step)` writes it
to the step's log and to the terminal (nerflib.logs.tell), so that a run that
fell back to the CPU says so at once instead of in a log file. `check_preset`
stops a GPU preset (configs.needs_gpu) on the CPU unless the user allows it.
"""

from __future__ import annotations

import os

from nerflib.logs import StepError, tell

FIX_CPU_JAX = (
    'Fix: install JAX with its CUDA plugin in this environment: pip install -e ".[cuda12]" '
    '(NVIDIA driver >= 525; ".[cuda13]" for driver >= 580), or with --sdm conda use envs/nerf-gpu.yaml; '
    "`nerf doctor` checks the result."
)


def describe() -> dict:
    """{'platform', 'jax', 'jaxlib', 'devices': [{'kind', 'memory_gib'}], 'processes', 'jax_platforms'}."""
    import jax
    import jaxlib

    devices = []
    for d in jax.local_devices():
        memory = None
        try:
            stats = d.memory_stats() or {}
            if stats.get("bytes_limit"):
                memory = round(stats["bytes_limit"] / 2**30, 1)
        except Exception:  # CPU devices have no memory_stats on some versions
            pass
        devices.append({"kind": d.device_kind, "memory_gib": memory})
    return {
        "platform": jax.default_backend(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "devices": devices,
        "device_count": jax.device_count(),
        "processes": jax.process_count(),
        "jax_platforms": os.environ.get("JAX_PLATFORMS", ""),
    }


def summary_line(info: dict | None = None) -> str:
    """'JAX 0.10.2 backend gpu: 1 local device(s), NVIDIA H100 80GB HBM3 (79.1 GiB)'."""
    info = describe() if info is None else info
    kinds: dict[str, int] = {}
    for d in info["devices"]:
        label = d["kind"] + (f" ({d['memory_gib']} GiB)" if d["memory_gib"] else "")
        kinds[label] = kinds.get(label, 0) + 1
    devices = ", ".join(f"{n} x {k}" if n > 1 else k for k, n in kinds.items())
    more = f", {info['device_count']} in {info['processes']} processes" if info["processes"] > 1 else ""
    env = f" (JAX_PLATFORMS={info['jax_platforms']})" if info["jax_platforms"] else ""
    return f"JAX {info['jax']} backend {info['platform']}{env}: {len(info['devices'])} local device(s), {devices}{more}"


def has_accelerator(info: dict | None = None) -> bool:
    """True where JAX runs on a GPU (or another accelerator), not on the CPU."""
    info = describe() if info is None else info
    return info["platform"] != "cpu"


def announce(step: str, info: dict | None = None) -> dict:
    """Say the backend and devices in the log and on the terminal (process 0); returns describe()."""
    import jax

    info = describe() if info is None else info
    if jax.process_index() == 0:
        tell(f"[{step}] {summary_line(info)}")
    return info


def check_preset(preset: str, *, allow_cpu: bool, info: dict | None = None) -> None:
    """Stop (StepError) when the GPU preset `preset` would train on the CPU and the user did not allow it."""
    from nerflib import configs

    info = describe() if info is None else info
    if not configs.needs_gpu(preset) or has_accelerator(info):
        return
    if allow_cpu:
        tell(f"[train] preset {preset} is made for a GPU and runs on the CPU (allowed by allow_cpu): "
             "expect it to take days, not minutes")
        return
    why = (f"JAX_PLATFORMS={info['jax_platforms']} is set" if info["jax_platforms"]
           else f"jax {info['jax']} found no GPU (no CUDA plugin, or no driver)")
    raise StepError(
        f"preset {preset} is made for a GPU, but JAX runs on the CPU ({why}); on the CPU it would take "
        f"days. {FIX_CPU_JAX} Or train preset tiny (the CPU preset; `default_preset: auto` picks it on "
        "a CPU), or allow the CPU on purpose: `allow_cpu: true` in config/config.yaml, `--allow-cpu` "
        "for nerf train."
    )

"""`nerf doctor`: what this machine and environment give a run, and what would stop it.

Each check returns a `Finding` (ok / warn / fail, what was found, the fix).
`run_checks()` runs them all; `main()` prints them and returns 1 when any
fails: a problem a run would hit (a GPU preset configured while JAX runs on
the CPU, a GPU the machine has but JAX does not see, no ffmpeg for the videos,
a nearly full disk, an unwritable compilation cache).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata as metadata
import os
import shutil
import subprocess
from pathlib import Path

OK, WARN, FAIL = "ok", "warn", "FAIL"
MIN_FREE_GIB = 2.0  # below: fail (a run writes checkpoints, frames and videos)
LOW_FREE_GIB = 20.0  # below: warn
SLURM_VARIABLES = ("SLURM_JOB_ID", "SLURM_JOB_PARTITION", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_GPUS",
                   "SLURM_GPUS_ON_NODE", "SLURM_JOB_GPUS", "CUDA_VISIBLE_DEVICES")


@dataclasses.dataclass(frozen=True)
class Finding:
    name: str
    status: str  # OK, WARN or FAIL
    detail: str
    fix: str = ""


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _nvidia_gpus() -> list[str]:
    """GPU names nvidia-smi lists ([] without the program or a GPU)."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def check_jax(gpus: list[str] | None = None) -> tuple[list[Finding], dict | None]:
    """JAX's backend and devices, its CUDA plugin, and whether a GPU of the machine is left unused."""
    from nerflib import backend

    gpus = _nvidia_gpus() if gpus is None else gpus
    plugins = {d: v for d in ("jax-cuda12-plugin", "jax-cuda13-plugin") if (v := _version(d))}
    plugin_text = ", ".join(f"{d} {v}" for d, v in plugins.items()) or "none installed"
    findings = [Finding("CUDA plugin", OK if plugins or not gpus else FAIL, plugin_text,
                        "" if plugins or not gpus else backend.FIX_CPU_JAX)]
    try:
        info = backend.describe()
    except Exception as e:  # a broken plugin raises at backend initialisation
        findings.append(Finding("JAX", FAIL, f"JAX does not start: {e}", backend.FIX_CPU_JAX))
        return findings, None
    line = backend.summary_line(info)
    if backend.has_accelerator(info):
        findings.append(Finding("JAX backend", OK, line))
    elif gpus:
        findings.append(Finding("JAX backend", FAIL, f"{line}, but this machine has {len(gpus)} GPU(s): "
                                f"{'; '.join(gpus)}", backend.FIX_CPU_JAX))
    else:
        findings.append(Finding("JAX backend", WARN, f"{line}: GPU presets stop here unless allowed, "
                                "`default_preset: auto` trains tiny", backend.FIX_CPU_JAX))
    return findings, info


def check_presets(info: dict | None, config_path: str | os.PathLike = "config/config.yaml") -> list[Finding]:
    """The presets config.yaml and its sheet ask for, against the backend (what `nerf train` would do)."""
    import yaml

    from nerflib import backend, configs

    path = Path(config_path)
    if not path.is_file():
        return [Finding("presets", OK, f"no {path} here (run nerf doctor in the workflow's folder to check it)")]
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except Exception as e:
        return [Finding("presets", FAIL, f"{path} does not parse: {e}")]
    default = str(config.get("default_preset", configs.AUTO))
    wanted = {default}
    sheet = Path(str(config.get("datasets", "config/datasets.tsv")))
    if sheet.is_file():
        from nerflib import sheet as sheet_io

        try:
            _, rows = sheet_io.read(sheet)  # the workflow's own reading of the sheet
        except ValueError as e:
            return [Finding("presets", FAIL, str(e))]
        wanted = {record.get("preset") or default for _, record in rows} or wanted
    accelerator = info is not None and backend.has_accelerator(info)
    resolved = {name: configs.resolve_preset(name, accelerator=accelerator)[0] for name in wanted
                if name in configs.PRESET_CHOICES}
    gpu_on_cpu = sorted({r for r in resolved.values() if configs.needs_gpu(r)}) if not accelerator else []
    text = ", ".join(f"{k} -> {v}" if k != v else k for k, v in sorted(resolved.items()))
    if not gpu_on_cpu:
        return [Finding("presets", OK, f"{path}: {text}")]
    if config.get("allow_cpu"):
        return [Finding("presets", WARN, f"{path}: GPU preset(s) {', '.join(gpu_on_cpu)} on the CPU, allowed by "
                        "allow_cpu: true (very slow)")]
    return [Finding("presets", FAIL, f"{path}: GPU preset(s) {', '.join(gpu_on_cpu)} configured, but JAX runs "
                    "on the CPU: training stops", f"{backend.FIX_CPU_JAX} Or use preset tiny / auto, or set "
                    "allow_cpu: true.")]


def check_pycolmap(gpus: list[str] | None = None) -> Finding:
    try:
        import pycolmap
    except Exception as e:
        return Finding("pycolmap", FAIL, f"does not import: {e}", 'pip install -e .')
    cuda = bool(getattr(pycolmap, "has_cuda", False))
    detail = f"{pycolmap.__version__}, SIFT on {'GPU (CUDA build)' if cuda else 'CPU'}"
    if gpus and not cuda:  # the same module name: one build replaces the other
        detail += "; for SIFT on the GPU: pip uninstall pycolmap && pip install pycolmap-cuda12"
    return Finding("pycolmap", OK, detail)


def check_ffmpeg() -> Finding:
    try:
        import imageio_ffmpeg

        exe = imageio_ffmpeg.get_ffmpeg_exe()
        out = subprocess.run([exe, "-version"], capture_output=True, text=True, timeout=30)
        first = out.stdout.splitlines()[0] if out.stdout else "?"
    except Exception as e:
        return Finding("ffmpeg", FAIL, f"not usable: {e} (videos and video sources need it)",
                       "pip install imageio-ffmpeg (it brings its own ffmpeg), or put ffmpeg on PATH")
    return Finding("ffmpeg", OK, f"{exe}: {first}")


def check_heif() -> Finding:
    from nerflib import images

    if images.heif_available():
        return Finding("HEIC photos", OK, f"pillow-heif {_version('pillow-heif')}")
    return Finding("HEIC photos", WARN, "pillow-heif is not installed: HEIC/HEIF photos are not read",
                   "pip install pillow-heif")


def check_disk(folder: str | os.PathLike = "results") -> Finding:
    path = Path(folder).absolute()
    probe = path
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free / 2**30
    detail = f"{free:.1f} GiB free for {path}"
    if free < MIN_FREE_GIB:
        return Finding("disk", FAIL, detail, "free some space (checkpoints, frames and videos need GiBs)")
    return Finding("disk", WARN if free < LOW_FREE_GIB else OK, detail)


def check_cache() -> Finding:
    value = os.environ.get("DNERF_JAX_CACHE", "~/.cache/dnerf/jax")  # as nerflib.train.enable_compilation_cache
    path = None if value.strip().lower() in ("", "off", "0", "none", "false") else str(Path(value).expanduser())
    if path is None:
        return Finding("compilation cache", WARN, "off (DNERF_JAX_CACHE=off): every run compiles again")
    probe = Path(path)
    while not probe.exists():
        probe = probe.parent
    if not os.access(probe, os.W_OK):
        return Finding("compilation cache", FAIL, f"{path} is not writable", "set DNERF_JAX_CACHE to a writable folder")
    size = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 2**20 if Path(path).is_dir() else 0
    return Finding("compilation cache", OK, f"{path} ({size:.0f} MiB)")


def check_slurm() -> Finding:
    found = {k: os.environ[k] for k in SLURM_VARIABLES if k in os.environ}
    if not found:
        return Finding("SLURM", OK, "not inside a SLURM job")
    return Finding("SLURM", OK, " ".join(f"{k}={v}" for k, v in found.items()))


def run_checks(config_path="config/config.yaml", results="results") -> list[Finding]:
    gpus = _nvidia_gpus()
    jax_findings, info = check_jax(gpus)
    return [*jax_findings, *check_presets(info, config_path), check_pycolmap(gpus), check_ffmpeg(), check_heif(),
            check_disk(results), check_cache(), check_slurm()]


def report(findings: list[Finding]) -> str:
    width = max(len(f.name) for f in findings)
    lines = []
    for f in findings:
        lines.append(f"{f.status:4}  {f.name:{width}}  {f.detail}")
        if f.fix and f.status != OK:
            lines.append(f"{'':4}  {'':{width}}  {f.fix}")
    failed = [f.name for f in findings if f.status == FAIL]
    lines.append(f"problems a run would hit: {', '.join(failed)}" if failed else "no problem a run would hit")
    return "\n".join(lines)


def main(config_path="config/config.yaml", results="results") -> int:
    findings = run_checks(config_path, results)
    print(report(findings), flush=True)
    return 1 if any(f.status == FAIL for f in findings) else 0

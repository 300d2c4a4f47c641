"""The backend said on the terminal and in the log; GPU presets stop on a CPU-only JAX unless allowed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nerflib import backend, cli, configs
from nerflib.logs import StepError

REPO = Path(__file__).resolve().parents[1]


def test_describe_says_the_cpu_backend():
    info = backend.describe()
    assert info["platform"] == "cpu" and not backend.has_accelerator(info)  # tests run with JAX_PLATFORMS=cpu
    line = backend.summary_line(info)
    assert line.startswith(f"JAX {info['jax']} backend cpu") and "1 local device(s)" in line


def test_auto_preset_follows_the_backend():
    assert configs.resolve_preset("auto", accelerator=False)[0] == "tiny"
    assert configs.resolve_preset("auto", accelerator=True)[0] == "fast"
    assert "no GPU" in configs.resolve_preset("auto", accelerator=False)[1]
    assert configs.resolve_preset("mipnerf360", accelerator=False)[0] == "mipnerf360"
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        configs.resolve_preset("huge", accelerator=True)


@pytest.mark.parametrize("preset", configs.GPU_PRESETS)
def test_gpu_preset_on_the_cpu_stops_with_the_fix(preset):
    with pytest.raises(StepError) as e:
        backend.check_preset(preset, allow_cpu=False)
    for words in (f"preset {preset} is made for a GPU", "JAX runs on the CPU", '".[cuda12]"', "allow_cpu: true",
                  "--allow-cpu"):
        assert words in str(e.value), (words, str(e.value))
    backend.check_preset(preset, allow_cpu=True)  # allowed: no error
    backend.check_preset("tiny", allow_cpu=False)  # the CPU preset never stops


def test_train_step_says_the_backend_on_the_terminal_and_in_the_log(tmp_path):
    """`nerf --log LOG train`: the backend and the stop reach the terminal although the step logs to a file."""
    log = tmp_path / "train.log"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    command = [sys.executable, "-m", "nerflib.cli", "--log", str(log), "train", str(tmp_path / "scene.json"),
               str(tmp_path), str(tmp_path / "model"), "--preset", "fast", "--factor", "4"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    terminal, logged = result.stderr, log.read_text()
    for text in (terminal, logged):
        assert "[train] JAX" in text and "backend cpu" in text, text
        assert "preset fast is made for a GPU" in text, text
    assert not (tmp_path / "model" / "final.json").exists()


def test_cli_preset_choices_and_allow_cpu_derive_from_the_declarations():
    args = cli.build_parser().parse_args(["train", "s.json", "imgs", "model"])
    assert args.preset == "auto" and args.allow_cpu is False
    args = cli.build_parser().parse_args(["train", "s.json", "imgs", "model", "--preset", "fast", "--allow-cpu"])
    assert args.preset == "fast" and args.allow_cpu is True
    train = next(a for a in cli.build_parser()._subparsers._group_actions[0].choices["train"]._actions
                 if a.dest == "preset")
    assert tuple(train.choices) == configs.PRESET_CHOICES


def test_nerf_doctor_on_this_cpu_machine(tmp_path):
    """`nerf doctor` reports the CPU backend; a configured GPU preset makes it exit non-zero."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    ok = subprocess.run([sys.executable, "-m", "nerflib.cli", "doctor"], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=120)
    assert "backend cpu" in ok.stdout and "pycolmap" in ok.stdout and "ffmpeg" in ok.stdout, ok.stdout + ok.stderr
    assert "FAIL" not in ok.stdout and ok.returncode == 0, ok.stdout  # default_preset auto: tiny here
    config = tmp_path / "config.yaml"
    config.write_text("default_preset: fast\ndatasets: none.tsv\n")
    bad = subprocess.run([sys.executable, "-m", "nerflib.cli", "doctor", "--config", str(config)], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "GPU preset(s) fast configured, but JAX runs on the CPU" in bad.stdout
    assert "problems a run would hit: presets" in bad.stdout
    config.write_text("default_preset: fast\nallow_cpu: true\ndatasets: none.tsv\n")
    allowed = subprocess.run([sys.executable, "-m", "nerflib.cli", "doctor", "--config", str(config)],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert allowed.returncode == 0 and "allowed by allow_cpu" in allowed.stdout, allowed.stdout


def test_cli_evaluate_is_eval():
    """The rule is `evaluate`, the subcommand `eval`: both names work."""
    for name in ("eval", "evaluate"):
        args = cli.build_parser().parse_args([name, "s.json", "imgs", "model", "out"])
        assert args.step == name and args.out_dir == "out"


def test_doctor_fails_where_the_machine_has_a_gpu_that_jax_does_not_see():
    """The case that burns cluster allocations: nvidia-smi lists a GPU, JAX runs on the CPU."""
    from nerflib import doctor

    findings, info = doctor.check_jax(gpus=["NVIDIA H100 80GB HBM3, 81559 MiB"])
    status = {f.name: f for f in findings}
    assert status["JAX backend"].status == doctor.FAIL and "has 1 GPU(s)" in status["JAX backend"].detail
    assert '".[cuda12]"' in status["JAX backend"].fix
    if not any(doctor._version(d) for d in ("jax-cuda12-plugin", "jax-cuda13-plugin")):
        assert status["CUDA plugin"].status == doctor.FAIL
    assert "pycolmap-cuda12" in doctor.check_pycolmap(["NVIDIA H100"]).detail
    assert doctor.check_jax(gpus=[])[0][-1].status == doctor.WARN  # no GPU: the CPU is a warning only


def test_workflow_stops_a_gpu_preset_on_the_cpu_before_training(tmp_path):
    """The train job of a `fast` row on CPU JAX fails at once; Snakemake's terminal shows why and the fix."""
    import shutil

    from nerflib import synthetic

    demo = tmp_path / "demo"
    synthetic.generate(demo, n_views=8, n_heldout=0, n_queries=0, width=64, height=48, supersample=1)
    work = tmp_path / "run"
    shutil.copytree(REPO / "config", work / "config")
    (work / "config" / "datasets.tsv").write_text(
        "scene\tsource\tcamera_model\tfactor\tpreset\tposes\tposes_format\n"
        f"cube\t{demo / 'images'}\tPINHOLE\t1\tfast\t{demo / 'gt' / 'scene.json'}\tauto\n")
    result = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(work),
                             "--cores", "1", "results/cube/model/final.json"],
                            env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    terminal = result.stdout + result.stderr
    assert "[train] JAX" in terminal and "preset fast is made for a GPU" in terminal and "allow_cpu: true" in terminal
    assert "preset fast is made for a GPU" in (work / "logs" / "train" / "cube.log").read_text()
    assert not (work / "results" / "cube" / "model" / "final.json").exists()


def test_doctor_reads_the_presets_of_the_sheet(tmp_path):
    from nerflib import doctor

    (tmp_path / "sheet.tsv").write_text("scene\tsource\tpreset\n# a comment\na\tsynthetic\t\nb\t/x\tmipnerf360\n")
    (tmp_path / "config.yaml").write_text(f"default_preset: auto\ndatasets: {tmp_path / 'sheet.tsv'}\n")
    cpu = backend.describe()
    [finding] = doctor.check_presets(cpu, tmp_path / "config.yaml")
    assert finding.status == doctor.FAIL and "GPU preset(s) mipnerf360 configured" in finding.detail
    (tmp_path / "sheet.tsv").write_text("scene\tsource\tpreset\na\tsynthetic\t\n")
    [finding] = doctor.check_presets(cpu, tmp_path / "config.yaml")
    assert finding.status == doctor.OK and "auto -> tiny" in finding.detail

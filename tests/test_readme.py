"""Every command in the README's shell blocks is run by a test exactly as written.

`readme_commands()` extracts the commands of the ```bash / ```sh / ```console
blocks (continuation lines joined, `$ ` prompts and trailing `# comments`
dropped). Each must be listed in COVERAGE with how it is run:

  RUN       this file runs it verbatim (`bash -c`) in a copy of the checkout;
  VERBATIM  the named file holds the exact command and runs it (a test, or .ci/run);
  NIGHTLY   this file runs it verbatim under `pytest -m nightly` (installs, the whole demo);
  EXTERNAL  needs what no test machine has (a SLURM login node with conda, a browser
            on another machine); the reason says which test runs the nearest form.

A new README command without an entry fails `test_every_readme_command_is_covered`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHELL_BLOCK = re.compile(r"^```(?:bash|sh|shell|console)[ \t]*\n(.*?)^```", re.S | re.M)

RUN, VERBATIM, NIGHTLY, EXTERNAL = "run", "verbatim", "nightly", "external"
COVERAGE: dict[str, tuple[str, str]] = {
    "python3 -m venv .venv && . .venv/bin/activate && pip install -e . && snakemake --cores all":
        (NIGHTLY, "test_quick_start_verbatim"),
    'pip install -e ".[test]" && pytest': (VERBATIM, ".ci/run"),
    'pip install -e ".[cuda12]" && nerf doctor': (NIGHTLY, "test_cuda12_install_verbatim"),
    "nerf doctor": (RUN, ""),
    "nerf --help": (RUN, ""),
    "snakemake --unlock": (RUN, ""),
    "snakemake --report report.zip": (VERBATIM, "tests/test_workflow_run.py"),
    'pip install -e ".[slurm]" && snakemake --profile profiles/slurm':
        (EXTERNAL, "a SLURM cluster; tests/test_slurm.py runs `snakemake --profile profiles/slurm` "
                   "with its test profile added on a one-node cluster"),
    "cp envs/nerf-gpu.yaml envs/nerf.yaml && snakemake --profile profiles/slurm --sdm conda":
        (EXTERNAL, "conda and a SLURM cluster (neither is on the test machines)"),
    "nerf view results/demo/model":
        (EXTERNAL, "a trained demo model and a browser; tests/test_viewer.py drives the viewer"),
    "ssh -N -L 8080:localhost:8080 -J LOGIN_HOST NODE": (EXTERNAL, "a cluster to tunnel to"),
}


def readme_commands(text: str) -> list[str]:
    commands = []
    for block in SHELL_BLOCK.findall(text):
        joined = re.sub(r"\s*\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.strip()
            if line.startswith("$ "):
                line = line[2:]
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def test_the_extractor_reads_blocks_prompts_comments_and_continuations():
    text = ("intro `inline` is not a command\n```bash\n$ nerf doctor   # check\n# a comment\npip install \\\n"
            "  -e .\n```\n```yaml\nkey: value\n```\n```\nplain block\n```\n")
    assert readme_commands(text) == ["nerf doctor", "pip install -e ."]


def test_every_readme_command_is_covered():
    commands = readme_commands((REPO / "README.md").read_text())
    assert commands, "no shell block in the README?"
    missing = [c for c in commands if c not in COVERAGE]
    assert not missing, f"README commands that no test runs (add them to COVERAGE): {missing}"
    for command in commands:
        how, where = COVERAGE[command]
        if how == VERBATIM:
            assert command in (REPO / where).read_text(), f"{where} does not run {command!r} verbatim"
        elif how == NIGHTLY:
            assert where in globals(), (command, where)


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """The tracked files (and the work tree's edits of them), as a fresh clone would have them."""
    out = tmp_path_factory.mktemp("checkout")
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = REPO / name
        if src.is_file():
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, out / name)
    return out


def _env() -> dict:
    # the test's environment (nerf, snakemake of this venv first on PATH), CPU JAX as in the suite
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "JAX_PLATFORMS": "cpu"}


@pytest.mark.parametrize("command", [c for c, (how, _) in COVERAGE.items() if how == RUN])
def test_cheap_readme_commands_run_as_written(command, checkout):
    assert command in readme_commands((REPO / "README.md").read_text()), f"{command!r} left the README"
    result = subprocess.run(["bash", "-c", command], cwd=checkout, env=_env(), capture_output=True, text=True,
                            timeout=300)
    output = result.stdout + result.stderr
    if command == "nerf doctor" and shutil.which("nvidia-smi"):
        assert "JAX backend" in output  # a GPU machine testing with CPU JAX: doctor rightly fails
        return
    assert result.returncode == 0, output[-3000:]
    expected = {"nerf doctor": "JAX backend", "nerf --help": "doctor", "snakemake --unlock": "Unlocked"}
    assert expected[command] in output, output[-3000:]


@pytest.mark.nightly
def test_quick_start_verbatim(checkout):
    """The first Quick start command, verbatim, in a copy of the checkout: a fresh venv, install, the demo."""
    command = next(c for c, (_, where) in COVERAGE.items() if where == "test_quick_start_verbatim")
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    result = subprocess.run(["bash", "-c", command], cwd=checkout, env={**env, "JAX_PLATFORMS": "cpu"},
                            capture_output=True, text=True, timeout=3 * 3600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert (checkout / "results" / "demo" / "render" / "color.mp4").is_file()


@pytest.mark.nightly
def test_cuda12_install_verbatim(checkout):
    """The GPU install, verbatim in a fresh venv: the CUDA wheels install on a CPU machine too, and
    `nerf doctor` then reports the backend (CPU here, with the plugin found)."""
    command = next(c for c, (_, where) in COVERAGE.items() if where == "test_cuda12_install_verbatim")
    subprocess.run([sys.executable, "-m", "venv", str(checkout / ".venv-cuda")], check=True)
    bin_dir = checkout / ".venv-cuda" / "bin"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "VIRTUAL_ENV": str(bin_dir.parent)}
    result = subprocess.run(["bash", "-c", command], cwd=checkout, env=env, capture_output=True, text=True,
                            timeout=3600)
    output = result.stdout + result.stderr
    assert "jax-cuda12-plugin" in output, output[-4000:]
    assert "JAX backend" in output, output[-4000:]


PYTHON_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```", re.S | re.M)


def test_readme_python_examples_call_the_public_steps_as_they_are_declared():
    """Each `steps.NAME(...)` call in the README's Python blocks names a public step
    (nerflib.PUBLIC_STEPS) and binds to its signature (names, positions, required arguments)."""
    import ast
    import inspect

    import nerflib
    from nerflib import steps

    calls = []
    for block in PYTHON_BLOCK.findall((REPO / "README.md").read_text()):
        for node in ast.walk(ast.parse(block)):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "steps"):
                calls.append(node)
    assert calls, "the README shows no call of nerflib.steps"
    for call in calls:
        name = call.func.attr
        assert name in nerflib.PUBLIC_STEPS and callable(getattr(steps, name)), name
        args = [ast.literal_eval(a) for a in call.args]
        kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
        inspect.signature(getattr(steps, name)).bind(*args, **kwargs)  # TypeError if it does not fit
    assert all(callable(getattr(steps, n)) for n in nerflib.PUBLIC_STEPS)


def test_importing_the_library_loads_neither_jax_nor_pycolmap():
    code = "import sys, nerflib, nerflib.steps; print(sorted(m for m in ('jax', 'pycolmap') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]", out.stdout

"""The config and the sheet are validated before any job starts, with clear errors."""

import subprocess

import pytest

from helpers.workflow import HEADER, REPO, SNAKEMAKE, dry_run, edit_config, write_sheet
GOOD_ROW = "demo\tsynthetic\tPINHOLE\t2\ttiny\texhaustive\t\t\t\tsynthetic"


def test_default_config_dry_run_lists_the_jobs(workdir):
    result = dry_run(workdir)
    assert result.returncode == 0, result.stderr
    out = result.stdout + result.stderr
    for rule in ("synthetic_scene", "poses", "pyramid", "train", "evaluate", "render", "all"):
        assert any(line.split()[:1] == [rule] for line in out.splitlines()), f"{rule} missing from:\n{out}"


def test_lint_is_clean():
    result = subprocess.run(
        [*SNAKEMAKE, "--lint", "--cores", "1"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Congratulations, your workflow is in a good condition!" in result.stdout + result.stderr
    assert "Lints for" not in result.stdout + result.stderr


BAD_SHEETS = {
    "unknown column": (
        [HEADER + "\tcolour", GOOD_ROW + "\tred"],
        ["line 2", "unknown column(s) colour", "Allowed columns"],
    ),
    "duplicate scene": ([HEADER, GOOD_ROW, GOOD_ROW], ["demo", "more than once"]),
    "bad factor": (
        [HEADER, GOOD_ROW.replace("\t2\t", "\t3\t")],
        ["line 2", "column 'factor'", "3 is not allowed", "1, 2, 4, 8"],
    ),
    "factor not a number": ([HEADER, GOOD_ROW.replace("\t2\t", "\thalf\t")], ["column 'factor'", "'half'"]),
    "unknown camera model": (
        [HEADER, GOOD_ROW.replace("PINHOLE", "FISHEYE_PRO")],
        ["column 'camera_model'", "FISHEYE_PRO", "OPENCV_FISHEYE"],
    ),
    "unknown matcher": (
        [HEADER, GOOD_ROW.replace("exhaustive", "bruteforce")],
        ["column 'matcher'", "bruteforce", "sequential"],
    ),
    "unknown preset": ([HEADER, GOOD_ROW.replace("tiny", "huge")], ["column 'preset'", "'huge'", "mipnerf360"]),
    "missing folder": (
        [HEADER, "cup\t/nonexistent/photos\tOPENCV\t4\t\tauto\t\t\t\t"],
        ["line 2", "scene 'cup'", "column 'source'", "/nonexistent/photos", "does not exist"],
    ),
    "bad scene name": ([HEADER, GOOD_ROW.replace("demo", "my scene", 1)], ["column 'scene'", "my scene"]),
    "missing source": ([HEADER, "demo\t\tPINHOLE\t2\ttiny\texhaustive\t\t\t\t"], ["line 2", "'source'"]),
    "empty sheet": ([HEADER], ["no rows"]),
    "tiles with an MLP preset": (
        [HEADER + "\ttiles", "demo\tsynthetic\tPINHOLE\t2\tmipnerf360\texhaustive\t\t\t\t\t2"],
        ["column 'tiles'", "field must be 'hashgrid'", "presets it supports: tiny, fast, quality"]),
    "missing query folder": (
        [HEADER, GOOD_ROW.replace("\tsynthetic", "\t/nope/queries").replace("demo\t/nope/queries", "demo\tsynthetic")],
        ["column 'queries'", "/nope/queries", "does not exist"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_SHEETS))
def test_bad_sheet_fails_before_any_job(workdir, case):
    lines, expected = BAD_SHEETS[case]
    write_sheet(workdir, *lines)
    result = dry_run(workdir)
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert "datasets.tsv" in out
    for text in expected:
        assert text in out, f"{text!r} not in:\n{out}"
    assert not (workdir / "results").exists()


BAD_CONFIGS = {
    "unknown key": ({"colour": "red"}, ["colour"]),
    "bad default preset": ({"default_preset": "huge"}, ["default_preset", "huge"]),
    "too few views": ({"synthetic.views": 1}, ["views", "1"]),
    "bad fraction": ({"sfm.min_registered_fraction": 2.5}, ["min_registered_fraction", "2.5"]),
    "wrong type": ({"render.fps": "fast"}, ["fps", "fast"]),
    "tiles not a power of two": ({"train.tiles": 6}, ["train.tiles", "power of two", "got 6"]),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_fails_before_any_job(workdir, case):
    changes, expected = BAD_CONFIGS[case]
    edit_config(workdir, **changes)
    result = dry_run(workdir)
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert "config" in out.lower()
    for text in expected:
        assert text in out, f"{text!r} not in:\n{out}"


def _train_inputs(out: str) -> dict[str, str]:
    """{scene: the input line of its train job} from a dry run's job listing."""
    inputs, job = {}, None
    for line in (line.strip() for line in out.splitlines()):
        if line.startswith("rule "):
            job = {} if line == "rule train:" else None
        elif job is not None and ":" in line:
            key, value = line.split(":", 1)
            job[key] = value.strip()
            if key == "wildcards":
                inputs[value.split("scene=")[1].split(",")[0]] = job.get("input", "")
    return inputs


def test_tiled_rows_train_from_the_sparse_model(workdir):
    """A tiles > 1 row's train job reads sparse/0, whose points split its field; a tiles 1 row's train
    inputs stay as they were (nothing reruns)."""
    row = GOOD_ROW.rsplit("\t", 1)[0] + "\t"  # no queries: a tiled row refuses them
    write_sheet(workdir, HEADER + "\ttiles", row + "\t2", row.replace("demo", "flat", 1) + "\t1")
    result = dry_run(workdir, "results/demo/model/final.json", "results/flat/model/final.json")
    assert result.returncode == 0, result.stderr
    inputs = _train_inputs(result.stdout + result.stderr)
    assert "results/demo/sparse/0" in inputs["demo"], inputs
    assert "sparse" not in inputs["flat"] and "results/flat/poses/scene.json" in inputs["flat"], inputs

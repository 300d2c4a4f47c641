"""The real rules on the demo scene, end to end, in a temporary working directory.

One run of the whole workflow (module-scoped fixture) with the `tiny` preset and
CI-sized training; the tests then check every declared output, the pose
accuracy of our SfM against the generator's ground truth, the held-out PSNR
against the mean-colour baseline, and the localization of the query photos
(in the evaluation mode `localize.start: perturbed`).
"""

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from helpers.workflow import RENDER_FPS, RENDER_FRAMES, REPO, DemoRun, snakemake
from nerflib import images, rigid, scene_io

ALLOWED_TOP_LEVEL = {"config", "results", "logs", "resources", "benchmarks", ".snakemake"}


@pytest.fixture(scope="module")
def demo_run(background_demo, tmp_path_factory, session_jax_cache):
    run = background_demo or DemoRun(tmp_path_factory, session_jax_cache)
    result = run.wait()
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    return run.workdir


def test_every_declared_output_exists(demo_run):
    summary = snakemake(demo_run, "--summary")
    assert summary.returncode == 0, summary.stderr
    rows = list(csv.DictReader(summary.stdout.splitlines(), delimiter="\t"))
    assert rows, summary.stdout
    for row in rows:
        path = demo_run / row["output_file"]
        assert path.exists(), row
        assert row["status"] == "ok", row
    again = snakemake(demo_run, "-n")
    assert "Nothing to be done" in again.stdout + again.stderr


def test_every_output_is_readable_by_group_and_others_under_umask_022(demo_run):
    """Atomic writes (mkstemp: 0600) and checkpoints get what the umask allows, as any plain write would."""
    private = []
    for top in ("results", "resources", "logs", "benchmarks"):
        for path in (demo_run / top).rglob("*"):
            if path.is_symlink():
                continue
            mode = path.stat().st_mode & 0o777
            want = 0o755 if path.is_dir() else 0o644
            if mode & want != want:
                private.append(f"{path.relative_to(demo_run)} {mode:o}")
    assert not private, private[:20]
    checkpoints = list((demo_run / "results/demo/model/checkpoints").rglob("*"))
    assert any(p.is_file() for p in checkpoints)  # checked above too


def test_nothing_written_outside_the_output_folders(demo_run):
    top = {p.name for p in demo_run.iterdir()}
    assert top <= ALLOWED_TOP_LEVEL, top - ALLOWED_TOP_LEVEL


def test_every_rule_logged(demo_run):
    for rule in ("synthetic_scene", "poses", "pyramid", "train", "evaluate", "render", "localize",
                 "localize_errors"):
        logs = list((demo_run / "logs" / rule).glob("*.log"))
        assert logs, f"no log for {rule}"


def test_demo_poses_match_ground_truth(demo_run):
    summary = yaml.safe_load((demo_run / "results/demo/poses/summary.json").read_text())
    est = scene_io.read_scene_json(demo_run / "results/demo/poses/scene.json")
    gt = scene_io.read_scene_json(demo_run / "resources/synthetic/demo/gt/scene.json")
    meta = yaml.safe_load((demo_run / "resources/synthetic/demo/gt/meta.json").read_text())
    assert len(est) == len(gt) == 60, summary  # 100% registered
    order = [est.names.index(n) for n in gt.names]
    errors = rigid.pose_errors(est.c2w[order], gt.c2w)
    radius = meta["scene_radius"] if "scene_radius" in meta else meta["radius"]
    rot = float(np.median(errors["rotation_deg"]))
    pos = float(np.median(errors["position"])) / radius
    print(f"demo SfM: {len(est)}/{len(gt)} registered, median rotation error {rot:.3f} deg, "
          f"median position error {100 * pos:.3f}% of the orbit radius")
    assert rot < 0.5
    assert pos < 0.01


def test_demo_point_cloud_lies_on_the_scene_surfaces(demo_run):
    """results/demo/export/points.ply (the `export` column's ply) against the generator's analytic surfaces.

    The SfM frame is mapped onto the generator's by the similarity between the SfM and the true camera
    centres. Tolerance: at the demo's 80x60 (factor 4, f = 75 px) a pixel spans 1.3 % of its distance;
    two runs measured the points (stride 2, after the filters) at a median 1.5 % / 1.7 % and a 95th
    percentile 3.7 % / 4.0 % of their distance to the nearest camera away from the surfaces, 12-15k points,
    every object reached. Asserted: median < 2.5 % (two pixels), 95th percentile < 5 %.
    """
    import plyfile

    from nerflib import synthetic
    from helpers.surfaces import object_distance, surface_distance

    est = scene_io.read_scene_json(demo_run / "results/demo/poses/scene.json")
    gt = scene_io.read_scene_json(demo_run / "resources/synthetic/demo/gt/scene.json")
    order = [est.names.index(n) for n in gt.names]
    s, rot, t = rigid.umeyama(est.c2w[order][:, :, 3], gt.c2w[:, :, 3])
    v = plyfile.PlyData.read(str(demo_run / "results/demo/export/points.ply"))["vertex"]
    x = s * np.stack([v["x"], v["y"], v["z"]], axis=1).astype(np.float64) @ rot.T + t
    rel = surface_distance(x) / np.linalg.norm(x[:, None] - gt.c2w[None, :, :, 3], axis=-1).min(axis=1)
    per_object = [int((object_distance(x, obj) < 0.05).sum()) for obj in synthetic.OBJECTS]
    print(f"demo point cloud: {len(x)} points, distance to the surfaces median {100 * np.median(rel):.2f} %, "
          f"95th percentile {100 * np.percentile(rel, 95):.2f} % of the camera distance; per object {per_object}")
    assert len(x) > 5000
    assert np.median(rel) < 0.025 and np.percentile(rel, 95) < 0.05
    assert min(per_object) >= 20  # every object is in the cloud, not only ground and dome


def test_demo_heldout_psnr_beats_mean_colour_by_8db(demo_run):
    rows = list(csv.DictReader((demo_run / "results/demo/eval/metrics.tsv").open(), delimiter="\t"))
    mean_row = [r for r in rows if r["name"] == "mean"]
    views = [r for r in rows if r["name"] != "mean"]
    assert mean_row and views
    psnr = float(mean_row[0]["psnr"])
    # Baseline: predict every held-out pixel by the mean colour of the training images.
    est = scene_io.read_scene_json(demo_run / "results/demo/poses/scene.json")
    folder = demo_run / "results/demo/images_4"
    held = {r["name"] for r in views}
    train = [images.load_image(folder / n) for n in est.names if n not in held]
    mean_colour = np.mean([im.reshape(-1, 3).mean(0) for im in train], axis=0)
    mses = [np.mean((images.load_image(folder / n) - mean_colour) ** 2) for n in sorted(held)]
    baseline = float(np.mean([-10 * np.log10(m) for m in mses]))
    print(f"demo held-out PSNR {psnr:.2f} dB vs mean-colour baseline {baseline:.2f} dB "
          f"(+{psnr - baseline:.2f} dB over {len(views)} views)")
    assert psnr >= baseline + 8.0


def test_demo_videos_read_back(demo_run):
    import imageio_ffmpeg

    for kind in ("color", "depth", "acc"):
        path = demo_run / f"results/demo/render/{kind}.mp4"
        reader = imageio_ffmpeg.read_frames(str(path))
        meta = next(reader)
        frames = list(reader)
        assert len(frames) == RENDER_FRAMES, kind
        assert meta["fps"] == RENDER_FPS, meta
        w, h = meta["size"]
        assert (w, h) == (80, 60), meta  # the demo's 320x240 photos at factor 4


def test_demo_queries_localize_from_10_degrees_and_10_percent(demo_run):
    """Issue #8: starts 10 deg / 10 % of the radius off -> median < 1 deg and < 1 % of the radius.

    Measured on 1500-step demo fields (2 CPU cores): medians 0.05-0.10 deg and
    0.26-0.31 %, every query within 0.25 deg and 0.55 %; the localize rule took
    75-95 s (about 40 s of it XLA compiles). Other perturbation draws of the same
    field (perturb seeds 1, 2) converged 2/4 and 4/4 queries: the figures hold
    for the median of 4 queries when at most one is stuck.
    """
    loc = demo_run / "results/demo/localize"
    table = (loc / "errors.tsv").read_text()
    bench = list(csv.DictReader((demo_run / "benchmarks/localize/demo.tsv").open(), delimiter="\t"))
    print(f"demo localization (localize rule {float(bench[0]['s']):.0f} s wall, "
          f"{float(bench[0]['cpu_time']):.0f} s CPU):\n{table}")
    rows = list(csv.DictReader(table.splitlines(), delimiter="\t"))
    queries, median = rows[:-1], rows[-1]
    names = sorted(p.name for p in (demo_run / "resources/synthetic/demo/queries").glob("*.jpg"))
    assert [r["name"] for r in queries] == names and median["name"] == "median"
    for r in queries:
        assert r["start_used"] == "perturbed_truth"
        assert abs(float(r["rot_err_start_deg"]) - 10.0) < 1e-3 and abs(float(r["trans_err_start_pct"]) - 10.0) < 1e-3
    assert float(median["rot_err_deg"]) < 1.0
    assert float(median["trans_err_pct"]) < 1.0
    # No confident wrong pose: a query flagged converged is where it should be.
    for r in queries:
        if r["converged"] == "True":
            assert float(r["rot_err_deg"]) < 2.0 and float(r["trans_err_pct"]) < 2.0, r
    found = scene_io.read_scene_json(loc / "poses.json")  # the scene's own format and frame
    assert sorted(found.names) == names
    for name in names:
        view = images.load_image(loc / "views" / (Path(name).stem + ".png"))
        assert view.shape == (60, 240, 3)  # photo | render | difference at factor 4


README_REPORT_COMMAND = "snakemake --report report.zip"


def checkout_view(workdir: Path, folder: Path) -> Path:
    """`folder` laid out as a user's checkout after the run in `workdir`: the workflow's files
    (links into the repository) beside that run's config, results and metadata (links into workdir)."""
    for name in ("Snakefile", "rules", "workflow_scripts", "envs", "profiles"):
        (folder / name).symlink_to(REPO / name)
    for name in ("config", "results", "resources", "logs", ".snakemake"):
        (folder / name).symlink_to(workdir / name)
    return folder


@pytest.fixture(scope="module")
def demo_report(demo_run, tmp_path_factory):
    """`snakemake --report report.html`, and the README's own report command verbatim in a checkout's
    layout, after the demo run (built once for the tests below)."""
    folder = tmp_path_factory.mktemp("report")
    out = folder / "report.html"
    result = snakemake(demo_run, "--report", str(out), timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"`{README_REPORT_COMMAND}`" in (REPO / "README.md").read_text()
    checkout = checkout_view(demo_run, tmp_path_factory.mktemp("checkout"))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(README_REPORT_COMMAND, shell=True, cwd=checkout, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return {"html": out, "zip": checkout / "report.zip"}


def test_report_holds_every_item(demo_run, demo_report):
    """`snakemake --report`: report.html (one file) and a valid zip with the HTML page and every report() item."""
    import zipfile

    single = demo_report["html"].read_text("utf-8", "replace")
    assert demo_report["html"].stat().st_size > 100_000 and "<html" in single.lower()
    assert "Distributed NeRF" in single and "overview.html" in single  # every item embedded, the overview too
    with zipfile.ZipFile(demo_report["zip"]) as z:
        assert z.testzip() is None
        names = z.namelist()
        html = [n for n in names if n.endswith("report.html")]
        assert html, names
        page = z.read(html[0]).decode("utf-8", "replace")
        overview = [n for n in names if n.endswith("/overview.html")]
        assert len(overview) == 1, names
        overview_page = z.read(overview[0]).decode("utf-8")
    expected = ["cameras.png", "training.png", "settings.tsv", "metrics.tsv", "color.mp4", "depth.mp4", "acc.mp4",
                "errors.tsv", "overview.html"]
    for item in expected:
        assert any(n.endswith(item) for n in names), (item, names)
    # The overview page (rule report_overview): one file, its videos and figures embedded in it.
    assert overview_page == (demo_run / "results/demo/report/overview.html").read_text("utf-8")
    assert overview_page.count('src="data:video/mp4;base64,') == 3
    assert overview_page.count('src="data:image/png;base64,') == 2
    assert "overview.html" in page  # the item's name in the report's results
    held_out = {p.name for p in (demo_run / "results" / "demo" / "eval" / "views").glob("*.png")}
    assert held_out and held_out <= {Path(n).name for n in names}
    localized = {p.name for p in (demo_run / "results" / "demo" / "localize" / "views").glob("*.png")}
    assert localized and localized <= {Path(n).name for n in names}
    assert "demo" in page and "<html" in page.lower()


def test_report_in_a_browser(demo_run, demo_report, tmp_path):
    """report.html (the single file) opened in headless Chromium (issue #10): no console errors, results reachable.

    Snakemake's report page shows images and HTML inline; a TSV or a video is behind the eye
    button of its row, so the test clicks through as a reader would. The scene's overview page
    (rule report_overview, one file with its videos as data URIs) must show inline, in the
    report's iframe, the demo's PSNR table with the mean of metrics.tsv and players whose videos
    load (size and length read by each <video>); Results > demo > metrics.tsv and color.mp4 must
    hand over the files themselves (downloads, in report.html) and a held-out view must display. Skipped without Chromium, chromedriver or selenium.
    """
    from helpers import browser

    reason = browser.missing()
    if reason:
        print(f"SKIP report browser test: {reason}")
        pytest.skip(reason)
    page = demo_report["html"]
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    metrics = demo_run / "results/demo/eval/metrics.tsv"
    mean_psnr = next(r["psnr"] for r in csv.DictReader(metrics.open(), delimiter="\t") if r["name"] == "mean")
    with browser.chrome(downloads) as b:
        b.open(page)
        assert b.driver.title == "Snakemake Report"
        b.until(lambda d: "Distributed NeRF" in b.text(), "the workflow description (rules/report/workflow.rst)")
        # The overview page inline: the PSNR table and the videos in the report page itself.
        overview = b.show_inline("demo", "results/demo/report/overview.html")
        try:
            table = b.until(lambda d: d.execute_script(
                "const t = document.querySelector('table#metrics');"
                "return t && t.querySelector('tr.mean') ? [...t.querySelectorAll('tr')]"
                ".map(r => [...r.cells].map(c => c.textContent.trim())) : false;"),
                f"no PSNR table in the overview page {overview}")
            assert table[0] == ["view", "PSNR (dB)", "SSIM"] and table[-1][0] == "mean", table
            assert table[-1][1] == f"{float(mean_psnr):.2f}", (table[-1], mean_psnr)  # the page's 2 decimals
            held_names = [r["name"] for r in csv.DictReader(metrics.open(), delimiter="\t") if r["name"] != "mean"]
            assert [r[0] for r in table[1:-1]] == held_names, table
            players = b.until(lambda d: d.execute_script(
                "const vs = [...document.querySelectorAll('video')];"
                "if (vs.some(v => v.error || v.networkState === 3))"  # 3: NETWORK_NO_SOURCE, no <source> loads
                " return vs.map(v => v.error ? 'error ' + v.error.code : (v.networkState === 3 ? 'no source' : 'ok'));"
                "return vs.length && vs.every(v => v.currentSrc && v.readyState >= 1 && v.duration > 0)"
                " ? vs.map(v => [v.title, v.currentSrc.slice(0, 22), v.videoWidth, v.videoHeight, v.duration,"
                " v.controls]) : false;"),
                "the overview page's videos did not load")
            assert [p[0].split(" ")[0] for p in players] == ["Colour", "Depth", "Accumulated"], players
            for title, src, width, height, length, controls in players:
                assert src == "data:video/mp4;base64," and (width, height) == (80, 60) and controls, players
                assert abs(length - RENDER_FRAMES / RENDER_FPS) < 0.2, players
        finally:
            b.driver.switch_to.default_content()
        # The PSNR table: its caption under the info button, the table itself from the eye button.
        row = b.report_row("demo", "results/demo/eval/metrics.tsv")
        b.button(row, "information-circle").click()
        b.until(lambda d: "Held-out evaluation of scene demo" in b.text(), "the caption of metrics.tsv")
        row = b.report_row("demo", "results/demo/eval/metrics.tsv")
        b.button(row, "eye").click()
        got = b.downloaded("metrics.tsv")
        rows = list(csv.DictReader(got.open(), delimiter="\t"))
        assert [r["psnr"] for r in rows if r["name"] == "mean"] == [mean_psnr], rows
        assert got.read_bytes() == metrics.read_bytes()
        # A held-out view (ground truth | render | difference) shown in the page.
        b.driver.switch_to.window(b.driver.window_handles[0])
        view = sorted((demo_run / "results/demo/eval/views").glob("*.png"))[0]
        row = b.report_row("demo", f"results/demo/eval/views/{view.name}")
        b.button(row, "eye").click()
        size = b.until(lambda d: d.execute_script(
            "const i = document.querySelector('img[src*=\"" + view.name + "\"]');"
            "return i && i.complete && i.naturalWidth ? [i.naturalWidth, i.naturalHeight] : false;"),
            f"{view.name} not displayed")
        assert size == [240, 60], size  # three 80x60 panels at factor 4
        # The colour video's own row: in report.html (a data URI) its eye button downloads the file itself;
        # the overview's players above are where it plays inline.
        row = b.report_row("demo", "results/demo/render/color.mp4")
        b.button(row, "eye").click()
        video = b.downloaded("color.mp4")
        assert video.read_bytes() == (demo_run / "results/demo/render/color.mp4").read_bytes()
        severe = b.severe()
    print(f"report.html in Chromium: overview page inline with mean PSNR {table[-1][1]} dB in its table and "
          f"{len(players)} playing videos ({players[0][2]}x{players[0][3]}, {players[0][4]:.2f} s); mean PSNR "
          f"{mean_psnr} dB downloaded from the table's row, {view.name} shown {size[0]}x{size[1]}, color.mp4 "
          f"downloaded from its row, {len(b.console)} console messages, none severe")
    assert not severe, severe

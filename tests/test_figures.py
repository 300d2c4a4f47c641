"""nerflib.figures: the report's camera plot, training curves and settings table; nerflib.report_page: its overview page."""

from __future__ import annotations

from html.parser import HTMLParser

import cv2
import numpy as np
import pytest

from nerflib import configs, figures, report_page
from nerflib.types import Camera, Scene


def _scene(n=12):
    """n cameras on a circle of radius 3 at height 1, looking at the origin (OpenCV axes)."""
    c2w = []
    for a in np.linspace(0, 2 * np.pi, n, endpoint=False):
        centre = np.array([3 * np.cos(a), 3 * np.sin(a), 1.0])
        z = -centre / np.linalg.norm(centre)
        x = np.cross(z, [0, 0, 1.0])
        x /= np.linalg.norm(x)
        c2w.append(np.column_stack([x, np.cross(z, x), z, centre]))
    return Scene(names=[f"{i:03d}.png" for i in range(n)], c2w=np.asarray(c2w), camera_idx=np.zeros(n, np.int32),
                 cameras=[Camera("PINHOLE", 64, 48, (50.0, 50.0, 32.0, 24.0))],
                 points=np.random.default_rng(0).normal(size=(500, 3)))


def test_camera_figure_is_a_png_with_the_summary(tmp_path):
    out = figures.camera_figure(_scene(), tmp_path / "cameras.png",
                                summary={"registered": 12, "total": 13, "points": 500, "mean_reprojection_error_px": 0.5})
    image = cv2.imread(str(out))
    assert image is not None and image.shape[1] > image.shape[0] > 200
    assert not list(tmp_path.glob(".*"))  # no temp file left behind


def test_training_figure_reads_train_tsv(tmp_path):
    tsv = tmp_path / "train.tsv"
    rows = ["step\tloss\tpsnr\tlr\trays_per_s\telapsed_s"]
    rows += [f"{s}\t{1 / s:.5f}\t{10 + s / 10:.3f}\t{1e-2 * 0.99 ** s:.3e}\t1000\t{s * 0.5:.1f}" for s in range(1, 51)]
    tsv.write_text("\n".join(rows) + "\n")
    cols = figures.read_train_tsv(tsv)
    assert cols["step"].tolist() == list(range(1, 51)) and np.isclose(cols["elapsed_s"][-1], 25.0)
    assert cv2.imread(str(figures.training_figure(tsv, tmp_path / "training.png"))) is not None
    (tmp_path / "empty.tsv").write_text("")
    with pytest.raises(ValueError, match="empty.tsv is empty"):
        figures.read_train_tsv(tmp_path / "empty.tsv")


def test_settings_table_flattens_the_resolved_config(tmp_path):
    cfg = configs.to_dict(configs.get_preset("tiny"))
    out = figures.settings_table(cfg, tmp_path / "settings.tsv")
    lines = out.read_text().splitlines()
    table = dict(line.split("\t", 1) for line in lines[1:])
    assert lines[0] == "name\tvalue"
    assert table["batch_size"] == "1024" and table["model.field"] == "hashgrid"
    assert len(table) == len(cfg) - 1 + len(cfg["model"])  # every field once, the model's dotted


class _Page(HTMLParser):
    """Tags (with attributes) and the text of each table row of a page."""

    def __init__(self, text):
        super().__init__()
        self.tags, self.rows, self._row, self._cell = [], [], None, None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "tr":
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append(self._cell.strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def all(self, tag):
        return [a for t, a in self.tags if t == tag]


def _overview_inputs(tmp_path):
    metrics = tmp_path / "metrics.tsv"
    metrics.write_text("name\tpsnr\tssim\n"
                       "r_000.png\t24.1234\t0.81234\n"
                       "a<b>&c.png\t26.5000\t0.90000\n"
                       "mean\t25.3117\t0.85617\n")
    videos = {}
    for kind in ("color", "depth", "acc"):
        videos[kind] = tmp_path / "render" / f"{kind}.mp4"
        videos[kind].parent.mkdir(exist_ok=True)
        videos[kind].write_bytes(f"not really an mp4: {kind}".encode())
    figure = tmp_path / "cameras.png"
    cv2.imwrite(str(figure), np.zeros((4, 6, 3), np.uint8))
    return metrics, videos, figure


def test_overview_page_shows_the_metrics_table_and_the_videos(tmp_path):
    metrics, videos, figure = _overview_inputs(tmp_path)
    out = tmp_path / "report" / "overview"
    got = report_page.write_overview(out, scene="demo<&>", metrics_tsv=metrics, videos=videos,
                                     figures={"cameras": figure})
    assert got["views"] == 2 and got["mean"] == {"psnr": 25.3117, "ssim": 0.85617}
    assert sorted(p.name for p in out.iterdir()) == ["acc.mp4", "cameras.png", "color.mp4", "depth.mp4", "index.html"]
    for kind, src in videos.items():  # hard links (same file system): no second copy of a video
        assert (out / f"{kind}.mp4").read_bytes() == src.read_bytes()
        assert (out / f"{kind}.mp4").stat().st_ino == src.stat().st_ino and got["files"][f"{kind}.mp4"] == "link"
    text = (out / "index.html").read_text()
    page = _Page(text)
    # The table: header, one row per view (names escaped), the mean row as the file gives it.
    assert page.rows == [["view", "PSNR (dB)", "SSIM"], ["r_000.png", "24.12", "0.8123"],
                         ["a<b>&c.png", "26.50", "0.9000"], ["mean", "25.31", "0.8562"]]
    assert "a&lt;b&gt;&amp;c.png" in text and "a<b>" not in text
    assert "Scene demo&lt;&amp;&gt;: overview" in text and "demo<&>" not in text
    assert report_page.format_psnr(25.3117) == "25.31"
    # One player per video, in the render rule's order, each with a relative source.
    assert [v.keys() >= {"controls"} for v in page.all("video")] == [True] * 3
    assert [(s["src"], s["type"]) for s in page.all("source")] == [
        ("color.mp4", "video/mp4"), ("depth.mp4", "video/mp4"), ("acc.mp4", "video/mp4")]
    assert [i["src"] for i in page.all("img")] == ["cameras.png"]
    # Self-contained: no script, no external URL.
    assert not page.all("script") and "http://" not in text and "https://" not in text
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_overview_replaces_an_old_page_atomically_and_copies_across_file_systems(tmp_path, monkeypatch):
    metrics, videos, _ = _overview_inputs(tmp_path)
    out = tmp_path / "overview"
    out.mkdir()
    (out / "stale.txt").write_text("from an earlier run")

    def no_link(src, dst):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(report_page.os, "link", no_link)
    got = report_page.write_overview(out, scene="demo", metrics_tsv=metrics, videos={"color": videos["color"]})
    assert sorted(p.name for p in out.iterdir()) == ["color.mp4", "index.html"]  # the old folder is gone
    assert got["files"] == {"color.mp4": "copy"}
    assert (out / "color.mp4").stat().st_ino != videos["color"].stat().st_ino
    assert (out / "color.mp4").read_bytes() == videos["color"].read_bytes()
    # A failure leaves the page there untouched and no temp folder behind.
    with pytest.raises(FileNotFoundError):
        report_page.write_overview(out, scene="demo", metrics_tsv=metrics, videos={"color": tmp_path / "missing.mp4"})
    assert sorted(p.name for p in out.iterdir()) == ["color.mp4", "index.html"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_overview_reads_metrics_without_a_mean_row_and_rejects_bad_tables(tmp_path):
    tsv = tmp_path / "metrics.tsv"
    tsv.write_text("name\tpsnr\tssim\nx.png\t20\t0.5\ny.png\t30\t0.7\n")
    views, mean = report_page.read_metrics(tsv)
    assert [v["name"] for v in views] == ["x.png", "y.png"] and mean == pytest.approx({"psnr": 25.0, "ssim": 0.6})
    tsv.write_text("name\tpsnr\nx.png\t20\n")
    with pytest.raises(ValueError, match="missing column"):
        report_page.read_metrics(tsv)
    tsv.write_text("")
    with pytest.raises(ValueError, match="no rows"):
        report_page.read_metrics(tsv)

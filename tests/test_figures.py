"""nerflib.figures: the report's camera plot, training curves and settings table; nerflib.report_page: its overview page."""

from __future__ import annotations

import base64
from html.parser import HTMLParser

import cv2
import numpy as np
import pytest

from nerflib import configs, figures, report_page, steps
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
    out = tmp_path / "report" / "overview.html"
    out.parent.mkdir()
    got = report_page.write_overview(out, scene="demo<&>", metrics_tsv=metrics, videos=videos,
                                     figures={"cameras": figure})
    assert got["views"] == 2 and got["mean"] == {"psnr": 25.3117, "ssim": 0.85617}
    assert got["embedded"] == 4 and got["not_embedded"] == []
    assert sorted(p.name for p in out.parent.iterdir()) == ["overview.html"]  # one file, no temp file left
    text = out.read_text()
    page = _Page(text)
    # The table: header, one row per view (names escaped), the mean row as the file gives it.
    assert page.rows == [["view", "PSNR (dB)", "SSIM"], ["r_000.png", "24.12", "0.8123"],
                         ["a<b>&c.png", "26.50", "0.9000"], ["mean", "25.31", "0.8562"]]
    assert "a&lt;b&gt;&amp;c.png" in text and "a<b>" not in text
    assert "Scene demo&lt;&amp;&gt;: overview" in text and "demo<&>" not in text
    assert "mean PSNR <strong>25.31 dB</strong>" in text
    assert report_page.format_psnr(25.3117) == "25.31"
    # One player per video, in the render rule's order, each video embedded as a data URI.
    assert [v.keys() >= {"controls"} for v in page.all("video")] == [True] * 3
    sources = page.all("source")
    assert [s["type"] for s in sources] == ["video/mp4"] * 3
    for source, kind in zip(sources, ("color", "depth", "acc")):
        prefix = "data:video/mp4;base64,"
        assert source["src"].startswith(prefix)
        assert base64.b64decode(source["src"][len(prefix):]) == videos[kind].read_bytes()
    [img] = page.all("img")
    assert img["src"].startswith("data:image/png;base64,")
    assert base64.b64decode(img["src"][len("data:image/png;base64,"):]) == figure.read_bytes()
    assert 'id="not-embedded"' not in text
    # Self-contained: no script, no external URL, no link to a file beside it.
    assert not page.all("script") and "http://" not in text and "https://" not in text and not page.all("a")


def test_overview_names_the_videos_beyond_the_size_cap(tmp_path):
    metrics, videos, figure = _overview_inputs(tmp_path)
    out = tmp_path / "overview.html"
    out.write_text("an older page")
    video_bytes = sum(p.stat().st_size for p in videos.values())
    cap = figure.stat().st_size + video_bytes - 1  # the figure fits, the videos with it do not
    got = report_page.write_overview(out, scene="demo", metrics_tsv=metrics, videos=videos,
                                     figures={"cameras": figure}, max_embed_bytes=cap)
    assert got["embedded"] == 1 and got["not_embedded"] == [str(p) for p in videos.values()]
    text = out.read_text()
    page = _Page(text)
    assert page.rows[-1] == ["mean", "25.31", "0.8562"]  # the table is there all the same
    assert not page.all("video") and not page.all("source") and "data:video" not in text
    assert [i["src"][:22] for i in page.all("img")] == ["data:image/png;base64,"]
    assert "Too large to embed" in text and str(tmp_path / "render") in text  # the folder of the videos
    for path in videos.values():  # each video named by its workflow path, as text
        assert f"<code>{path}</code>" in text
    assert not page.all("script") and not page.all("a")
    # Below the figure's size nothing is embedded; the default cap is the module's constant.
    got = report_page.write_overview(out, scene="demo", metrics_tsv=metrics, videos=videos,
                                     figures={"cameras": figure}, max_embed_bytes=10)
    assert got["embedded"] == 0 and len(got["not_embedded"]) == 4 and "data:" not in out.read_text()
    assert report_page.MAX_EMBED_BYTES == 64 * 2**20


def test_overview_write_is_atomic(tmp_path, monkeypatch):
    metrics, videos, _ = _overview_inputs(tmp_path)
    out = tmp_path / "overview.html"
    report_page.write_overview(out, scene="demo", metrics_tsv=metrics, videos={"color": videos["color"]})
    before = out.read_text()
    stale = tmp_path / ".overview.html.ab12cd_9.dnerftmp.html"  # what a SIGKILL inside the write leaves
    stale.write_text("half a page")
    steps.report_overview(out, scene="demo", metrics_tsv=metrics, videos={"color": videos["color"]})  # the rule's
    assert not stale.exists() and out.read_text() == before
    # A failure (a missing video) leaves the page there untouched and no temp file behind.
    with pytest.raises(FileNotFoundError):
        report_page.write_overview(out, scene="demo", metrics_tsv=metrics, videos={"color": tmp_path / "missing.mp4"})
    assert out.read_text() == before
    # So does a failure while the page is written (to its temp file beside it).
    monkeypatch.setattr(report_page, "overview_html", lambda *a, **k: None)  # write_text(None): TypeError
    with pytest.raises(TypeError):
        report_page.write_overview(out, scene="demo", metrics_tsv=metrics, videos={"color": videos["color"]})
    assert out.read_text() == before
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

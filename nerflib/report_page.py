"""The per-scene overview page of the Snakemake report (issue #10).

Snakemake's report app shows images, HTML and PDF inline; a TSV is a download and
a video opens in a separate tab. The overview is one HTML page per scene, shown
inline (a `report(directory(...), htmlindex="index.html")` item) with:

  * the held-out evaluation of eval/metrics.tsv as a table (PSNR and SSIM per
    view, then the mean),
  * a <video controls> player per render video (colour, depth, accumulation),
  * the camera layout and training curves (optional figures).

The page needs nothing outside its folder: no JavaScript, no external URL; the
videos and figures sit next to index.html (hard links where the file system
allows, else copies), so Snakemake's report zip carries them along. The folder
is written atomically: built in a temp folder beside it, then renamed onto it.
"""

from __future__ import annotations

import contextlib
import csv
import html
import os
import shutil
import tempfile
from pathlib import Path
from urllib.parse import quote

# Labels of the render rule's videos, in page order.
VIDEO_LABELS = {
    "color": "Colour",
    "depth": "Depth (turbo colour map, robust near/far)",
    "acc": "Accumulated opacity",
}
FIGURE_LABELS = {"cameras": "Camera layout", "training": "Training curves"}
VIDEO_TYPES = {".mp4": "video/mp4", ".webm": "video/webm", ".ogv": "video/ogg"}

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 1.5rem; color: #1f2937; }
h1 { font-size: 1.5rem; margin: 0 0 .5rem; }
h2 { font-size: 1.15rem; margin: 1.5rem 0 .5rem; }
p.summary { font-size: 1.05rem; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d1d5db; padding: .25rem .75rem; }
th { background: #f3f4f6; text-align: left; }
td.num { text-align: right; }
tr.mean td { font-weight: bold; background: #eef2ff; }
.media { display: flex; flex-wrap: wrap; gap: 1rem; align-items: flex-start; }
figure { margin: 0; }
figcaption { font-size: .9rem; color: #4b5563; margin-top: .25rem; }
figure.video { flex: 1 1 240px; max-width: 480px; }
video { width: 100%; height: auto; background: #000; }
img { max-width: 100%; height: auto; }
footer { margin-top: 2rem; font-size: .8rem; color: #6b7280; }
"""


def format_psnr(value: float) -> str:
    """PSNR as the page shows it (dB, 2 decimals)."""
    return f"{value:.2f}"


def format_ssim(value: float) -> str:
    """SSIM as the page shows it (4 decimals)."""
    return f"{value:.4f}"


def read_metrics(path: str | os.PathLike) -> tuple[list[dict], dict]:
    """(views, mean) of a metrics.tsv (name, psnr, ssim; a last row named 'mean').

    views: [{'name', 'psnr', 'ssim'}] with floats; mean: {'psnr', 'ssim'} from the
    file's mean row (computed from the views when the file has none).
    """
    path = Path(path)
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if not rows:
        raise ValueError(f"{path} has no rows (expected columns name, psnr, ssim)")
    missing = {"name", "psnr", "ssim"} - set(rows[0])
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(sorted(missing))} (expected name, psnr, ssim)")
    parsed = [{"name": r["name"], "psnr": float(r["psnr"]), "ssim": float(r["ssim"])} for r in rows]
    views = [r for r in parsed if r["name"] != "mean"]
    mean = next((r for r in parsed if r["name"] == "mean"), None)
    if mean is None:
        if not views:
            raise ValueError(f"{path} has neither views nor a mean row")
        mean = {"name": "mean", "psnr": sum(r["psnr"] for r in views) / len(views),
                "ssim": sum(r["ssim"] for r in views) / len(views)}
    return views, {"psnr": mean["psnr"], "ssim": mean["ssim"]}


def _attr(value: str) -> str:
    return html.escape(value, quote=True)


def _href(name: str) -> str:
    """A file name next to index.html as a relative URL (percent-encoded, then escaped)."""
    return _attr(quote(name))


def metrics_table(views: list[dict], mean: dict) -> str:
    """The evaluation as an HTML table (id="metrics"): a row per view, then the mean row (class="mean")."""
    lines = ['<table id="metrics">',
             '<thead><tr><th scope="col">view</th><th scope="col">PSNR (dB)</th>'
             '<th scope="col">SSIM</th></tr></thead>', "<tbody>"]
    for r in views:
        lines.append(f'<tr><td>{html.escape(r["name"])}</td><td class="num">{format_psnr(r["psnr"])}</td>'
                     f'<td class="num">{format_ssim(r["ssim"])}</td></tr>')
    lines.append("</tbody>")
    lines.append(f'<tfoot><tr class="mean"><td>mean</td><td class="num">{format_psnr(mean["psnr"])}</td>'
                 f'<td class="num">{format_ssim(mean["ssim"])}</td></tr></tfoot>')
    lines.append("</table>")
    return "\n".join(lines)


def video_element(name: str, label: str) -> str:
    """A <figure> with a <video controls> playing the file `name` (next to the page), and its label."""
    kind = VIDEO_TYPES.get(Path(name).suffix.lower(), "")
    type_attr = f' type="{kind}"' if kind else ""
    return (f'<figure class="video"><video controls loop muted playsinline preload="metadata" title="{_attr(label)}">'
            f'<source src="{_href(name)}"{type_attr}>'
            f'<a href="{_href(name)}">{html.escape(name)}</a></video>'
            f"<figcaption>{html.escape(label)} (<a href=\"{_href(name)}\">{html.escape(name)}</a>)</figcaption>"
            "</figure>")


def overview_html(scene: str, views: list[dict], mean: dict, *, videos: list[tuple[str, str]] = (),
                  figures: list[tuple[str, str]] = (), sources: dict[str, str] | None = None) -> str:
    """The page: scene title, summary line, metrics table, videos, figures.

    videos / figures: (file name next to index.html, label); sources: label -> the
    workflow path each part came from (listed at the bottom).
    """
    title = f"Scene {scene}: overview"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{STYLE}</style>",
        "</head>",
        "<body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="summary" id="summary">Held-out evaluation: mean PSNR <strong>{format_psnr(mean["psnr"])} dB</strong>, '
        f'mean SSIM <strong>{format_ssim(mean["ssim"])}</strong> over {len(views)} held-out '
        f'view{"s" if len(views) != 1 else ""}.</p>',
        '<h2 id="evaluation">Held-out evaluation</h2>',
        metrics_table(views, mean),
    ]
    if videos:
        parts.append('<h2 id="videos">Videos along the camera path</h2>')
        parts.append('<div class="media">')
        parts += [video_element(name, label) for name, label in videos]
        parts.append("</div>")
    if figures:
        parts.append('<h2 id="figures">Poses and training</h2>')
        parts.append('<div class="media">')
        for name, label in figures:
            parts.append(f'<figure><img src="{_href(name)}" alt="{_attr(label)}">'
                         f"<figcaption>{html.escape(label)}</figcaption></figure>")
        parts.append("</div>")
    if sources:
        items = "".join(f"<li>{html.escape(k)}: <code>{html.escape(v)}</code></li>" for k, v in sources.items())
        parts.append(f"<footer>From the workflow's files:<ul>{items}</ul></footer>")
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def link_or_copy(src: str | os.PathLike, dst: str | os.PathLike) -> str:
    """Hard-links src to dst ('link'); copies it where a link cannot be made ('copy')."""
    try:
        os.link(src, dst)
        return "link"
    except OSError:  # another file system (EXDEV), or one without hard links
        shutil.copy2(src, dst)
        return "copy"


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike):
    """Yields a temp folder beside `path`; on success it replaces `path` (renamed onto it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide the page from other readers
        yield tmp
        if path.exists() or path.is_symlink():
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old."))
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_overview(out_dir: str | os.PathLike, *, scene: str, metrics_tsv: str | os.PathLike,
                   videos: dict[str, str | os.PathLike] | None = None,
                   figures: dict[str, str | os.PathLike] | None = None) -> dict:
    """Writes out_dir/index.html with the files it shows next to it; returns what went in.

    videos / figures: key -> path; each lands as out_dir/<key><suffix> (keys of
    VIDEO_LABELS / FIGURE_LABELS get their labels, others their key).
    """
    views, mean = read_metrics(metrics_tsv)
    videos, figures = dict(videos or {}), dict(figures or {})
    sources = {"held-out evaluation": str(metrics_tsv)}
    placed = {}
    with atomic_dir(out_dir) as tmp:
        entries = {}
        for group, items, labels in (("videos", videos, VIDEO_LABELS), ("figures", figures, FIGURE_LABELS)):
            entries[group] = []
            for key, src in items.items():
                name = f"{key}{Path(src).suffix.lower()}"
                if name in placed or name == "index.html":
                    raise ValueError(f"two files of the overview would both be named {name}")
                placed[name] = link_or_copy(src, tmp / name)
                label = labels.get(key, key)
                entries[group].append((name, label))
                sources[label] = str(src)
        page = overview_html(scene, views, mean, videos=entries["videos"], figures=entries["figures"],
                             sources=sources)
        (tmp / "index.html").write_text(page, encoding="utf-8")
    print(f"overview of scene {scene}: mean PSNR {format_psnr(mean['psnr'])} dB over {len(views)} views, "
          f"{len(videos)} videos, {len(figures)} figures ({', '.join(f'{n} {how}' for n, how in placed.items())}) "
          f"-> {out_dir}/index.html")
    return {"index": str(Path(out_dir) / "index.html"), "views": len(views), "mean": mean, "files": placed}

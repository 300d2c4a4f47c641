"""The per-scene overview page of the Snakemake report (issue #10).

Snakemake's report app shows images, HTML and PDF inline; a TSV is a download and
a video opens in a separate tab. The overview is one HTML file per scene,
results/{scene}/report/overview.html (a plain report() item, shown inline), with:

  * the held-out evaluation of eval/metrics.tsv as a table (PSNR and SSIM per
    view, then the mean),
  * a <video controls> player per render video (colour, depth, accumulation),
  * the camera layout and training curves (optional figures).

The page is one self-contained file, so it works in both `snakemake --report
report.html` (which embeds every item as a data URI and refuses folders) and
report.zip: no JavaScript, no external URL, the videos and figures embedded as
base64 data URIs. Media beyond MAX_EMBED_BYTES (in all) are not embedded: the page
then names their workflow paths instead. Written atomically (nerflib.fileio); a
killed run's temp page is removed by the next.
"""

from __future__ import annotations

import base64
import csv
import html
import mimetypes
import os
from pathlib import Path

from nerflib import fileio

# Labels of the render rule's videos, in page order.
VIDEO_LABELS = {
    "color": "Colour",
    "depth": "Depth (turbo colour map, robust near/far)",
    "acc": "Accumulated opacity",
}
FIGURE_LABELS = {"cameras": "Camera layout", "training": "Training curves"}
VIDEO_TYPES = {".mp4": "video/mp4", ".webm": "video/webm", ".ogv": "video/ogg"}
# The most media bytes (videos and figures together, before base64) embedded in the page.
# report.html embeds the page once more (base64 again): 64 MB of media make a ~115 MB report.
MAX_EMBED_BYTES = 64 * 2**20

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
p.note { background: #fef3c7; padding: .5rem .75rem; }
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


def mime_type(path: str | os.PathLike) -> str:
    """The MIME type of a video or figure by its suffix (application/octet-stream if unknown)."""
    suffix = Path(path).suffix.lower()
    return VIDEO_TYPES.get(suffix) or mimetypes.guess_type(f"x{suffix}")[0] or "application/octet-stream"


def data_uri(path: str | os.PathLike) -> str:
    """The file as a base64 data URI (data:<mime>;base64,...)."""
    data = Path(path).read_bytes()
    return f"data:{mime_type(path)};base64,{base64.b64encode(data).decode('ascii')}"


def video_element(uri: str, label: str, source: str) -> str:
    """A <figure> with a <video controls> playing `uri` (a data URI), its label and workflow path."""
    kind = uri[5:uri.index(";")] if uri.startswith("data:") and ";" in uri else ""
    type_attr = f' type="{_attr(kind)}"' if kind else ""
    return (f'<figure class="video"><video controls loop muted playsinline preload="metadata" title="{_attr(label)}">'
            f'<source src="{_attr(uri)}"{type_attr}></video>'
            f"<figcaption>{html.escape(label)} (<code>{html.escape(source)}</code>)</figcaption>"
            "</figure>")


def overview_html(scene: str, views: list[dict], mean: dict, *, videos: list[tuple[str, str, str]] = (),
                  figures: list[tuple[str, str, str]] = (), not_embedded: list[tuple[str, str]] = (),
                  note: str = "", sources: dict[str, str] | None = None) -> str:
    """The page: scene title, summary line, metrics table, videos, figures.

    videos / figures: (data URI, label, workflow path); not_embedded: (label, workflow
    path) of media too large to embed, listed as text under `note`; sources: label ->
    the workflow path each part came from (listed at the bottom).
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
    if videos or not_embedded:
        parts.append('<h2 id="videos">Videos along the camera path</h2>')
    if videos:
        parts.append('<div class="media">')
        parts += [video_element(uri, label, source) for uri, label, source in videos]
        parts.append("</div>")
    if not_embedded:
        items = "".join(f"<li>{html.escape(label)}: <code>{html.escape(source)}</code></li>"
                        for label, source in not_embedded)
        parts.append(f'<p class="note" id="not-embedded">{html.escape(note)}</p><ul class="not-embedded">{items}</ul>')
    if figures:
        parts.append('<h2 id="figures">Poses and training</h2>')
        parts.append('<div class="media">')
        for uri, label, source in figures:
            parts.append(f'<figure><img src="{_attr(uri)}" alt="{_attr(label)}">'
                         f"<figcaption>{html.escape(label)} (<code>{html.escape(source)}</code>)</figcaption></figure>")
        parts.append("</div>")
    if sources:
        items = "".join(f"<li>{html.escape(k)}: <code>{html.escape(v)}</code></li>" for k, v in sources.items())
        parts.append(f"<footer>From the workflow's files:<ul>{items}</ul></footer>")
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def _megabytes(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


def write_overview(out_html: str | os.PathLike, *, scene: str, metrics_tsv: str | os.PathLike,
                   videos: dict[str, str | os.PathLike] | None = None,
                   figures: dict[str, str | os.PathLike] | None = None,
                   max_embed_bytes: int = MAX_EMBED_BYTES) -> dict:
    """Writes the self-contained page out_html (atomically); returns what went in.

    videos / figures: key -> path (keys of VIDEO_LABELS / FIGURE_LABELS get their
    labels, others their key). The figures are embedded when their sizes fit
    max_embed_bytes, the videos when figures and videos fit it together; media
    left out are named by their workflow paths, with a note.
    """
    views, mean = read_metrics(metrics_tsv)
    videos = {k: str(v) for k, v in (videos or {}).items()}
    figures = {k: str(v) for k, v in (figures or {}).items()}
    sizes = {path: os.path.getsize(path) for path in (*videos.values(), *figures.values())}  # missing: an error
    figure_bytes = sum(sizes[p] for p in figures.values())
    video_bytes = sum(sizes[p] for p in videos.values())
    embed_figures = figure_bytes <= max_embed_bytes
    embed_videos = embed_figures and figure_bytes + video_bytes <= max_embed_bytes
    sources = {"held-out evaluation": str(metrics_tsv)}
    shown = {"videos": [], "figures": []}
    not_embedded = []
    for group, items, labels, embed in (("videos", videos, VIDEO_LABELS, embed_videos),
                                        ("figures", figures, FIGURE_LABELS, embed_figures)):
        for key, src in items.items():
            label = labels.get(key, key)
            sources[label] = src
            if embed:
                shown[group].append((data_uri(src), label, src))
            else:
                not_embedded.append((label, src))
    note = ""
    if not_embedded:
        folders = sorted({str(Path(src).parent) for _, src in not_embedded})
        note = (f"Too large to embed in this page ({_megabytes(figure_bytes + video_bytes)} of videos and figures; "
                f"the limit is {_megabytes(max_embed_bytes)}): these files are in the workflow's "
                f"{' and '.join(folders)} folder{'s' if len(folders) > 1 else ''} "
                "(and are items of this report themselves).")
    page = overview_html(scene, views, mean, videos=shown["videos"], figures=shown["figures"],
                         not_embedded=not_embedded, note=note, sources=sources)
    out_html = Path(out_html)
    with fileio.atomic_path(out_html) as tmp:
        tmp.write_text(page, encoding="utf-8")
    embedded = len(shown["videos"]) + len(shown["figures"])
    print(f"overview of scene {scene}: mean PSNR {format_psnr(mean['psnr'])} dB over {len(views)} views, "
          f"{embedded} of {len(videos) + len(figures)} videos and figures embedded "
          f"({_megabytes(figure_bytes + video_bytes)} of media, limit {_megabytes(max_embed_bytes)}) "
          f"-> {out_html} ({_megabytes(len(page.encode('utf-8')))})")
    return {"path": str(out_html), "views": len(views), "mean": mean, "embedded": embedded,
            "not_embedded": [src for _, src in not_embedded], "media_bytes": figure_bytes + video_bytes}

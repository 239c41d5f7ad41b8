"""One self-contained HTML report (inline CSS, figures as PNG data URIs) and CSV summary tables.

The page makes no external request: every image is a `data:` URI and a Content-Security-Policy
(`default-src 'none'; img-src data:; style-src 'unsafe-inline'`) forbids anything else, scripts
included. All text is HTML-escaped. Files are written atomically (temporary file + rename), so a
reader never sees half a report.

Figures are PNGs at most the page's width (`png_bytes`), so each shows at its own size, its text
as large as it was set, and a sweep's page stays a few MB (embedded images are most of its bytes).
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.colors import Colormap
from matplotlib.figure import Figure
from PIL import Image
from scipy.spatial import cKDTree

from modadd.files import plain, save_atomic, write_atomic

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
WIDTH_PX = 1100  # the page's content width (CSS px): a figure up to this wide shows at its own size
DPI = 120  # a figure's pixels per inch where it fits the page: its 10 pt text is 17 px, as large as the page's
PALETTE = 256  # colours of an indexed PNG
GREYS = np.repeat(np.linspace(0, 255, 16).round().astype(np.int64)[:, None], 3, axis=1)  # anti-aliased black on white
CLOSE = 9  # levels (of 255) a colour may move unseen: half the GREYS' step
RARE = 2e-4  # a colour on fewer than this share of the pixels (~100 of a figure) is a blend at an anti-aliased edge

CSS = f"""
body {{ font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; line-height: 1.5; color: #1f2328;
       max-width: {WIDTH_PX}px; margin: 2rem auto; padding: 0 1.5rem; }}""" + """
h1 { font-size: 1.8rem; border-bottom: 2px solid #d0d7de; padding-bottom: .3rem; }
h2 { font-size: 1.35rem; margin-top: 2.5rem; border-bottom: 1px solid #d0d7de; padding-bottom: .2rem; }
nav { background: #f6f8fa; border: 1px solid #d0d7de; border-radius: 6px; padding: .6rem 1.2rem; }
nav ol { margin: .3rem 0; }
a { color: #0969da; text-decoration: none; }
a:hover { text-decoration: underline; }
table { border-collapse: collapse; margin: 1rem 0; font-size: .9rem; font-variant-numeric: tabular-nums; }
caption { caption-side: top; text-align: left; font-weight: 600; padding-bottom: .3rem; }
th, td { border: 1px solid #d0d7de; padding: .25rem .6rem; }
th { background: #f6f8fa; text-align: left; }
td.num { text-align: right; white-space: nowrap; }
tbody tr:nth-child(even) { background: #fafbfc; }
.table-wrap { overflow-x: auto; }
figure { margin: 1.5rem 0; }
figure img { max-width: 100%; height: auto; display: block; }
figcaption { font-size: .9rem; color: #57606a; margin-top: .4rem; }
@media print { nav { display: none; } h2 { break-before: page; } figure, table { break-inside: avoid; } }
"""


@dataclass
class Table:
    """A table: column names and rows of cells (numbers are formatted, everything is escaped)."""

    columns: list[str]
    rows: list[list[Any]]
    caption: str = ""


@dataclass
class Section:
    """A report section: a heading, text (blank lines separate paragraphs), tables, and
    figures as `(caption, figure)` with the figure a matplotlib Figure or a PNG file's path."""

    heading: str
    text: str = ""
    tables: list[Table] = field(default_factory=list)
    figures: list[tuple[str, Figure | str | os.PathLike]] = field(default_factory=list)


def figure_dpi(fig: Figure) -> float:
    """The resolution `png_bytes` draws `fig` at: `DPI`, less for a figure wider than the page, so
    that the browser never shrinks it (and its text) to fit."""
    return min(DPI, WIDTH_PX / fig.get_figwidth())


def png_bytes(fig: Figure) -> bytes:
    """The figure drawn at `figure_dpi`, as `compact_png` with every colour of its heatmaps'
    scales (their data) kept exactly."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=figure_dpi(fig), facecolor="white")
    scales = [_scale_colours(im.cmap) for ax in fig.axes for im in ax.get_images()]
    return compact_png(Image.open(buffer), np.concatenate(scales) if scales else None)


def compact_png(image: Image.Image, exact: np.ndarray | None = None) -> bytes:
    """`image` as an opaque PNG: indexed (a third of the bytes) where one palette holds exactly the
    colours of `exact` (RGB rows) that it uses, `GREYS` and its most frequent other colours, and
    draws every colour left out either close to itself (`CLOSE`) or rarely (`RARE`, the blends of
    anti-aliased edges); otherwise RGB, lossless."""
    image = image.convert("RGB")
    image = _indexed(image, np.empty((0, 3), int) if exact is None else exact) or image
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


def _indexed(image: Image.Image, exact: np.ndarray) -> Image.Image | None:
    """`image` with the palette `compact_png` describes, each colour drawn in its nearest palette
    colour; None where that changes a colour that is neither rare nor close. (Pillow's own
    quantizers shift even the colours they keep: white by a few levels, a category's by up to 40.)"""
    packed = _pack(np.asarray(image, dtype=np.int64)).ravel()
    colours, inverse, counts = np.unique(packed, return_inverse=True, return_counts=True)
    kept = colours[np.isin(colours, _pack(exact.astype(np.int64)))]
    greys = np.setdiff1d(_pack(GREYS), kept)
    if kept.size + greys.size > PALETTE:
        return None
    by_count = colours[np.argsort(-counts, kind="stable")]
    others = by_count[~np.isin(by_count, np.concatenate([kept, greys]))]
    palette = _unpack(np.concatenate([kept, greys, others])[:PALETTE])
    rgb = _unpack(colours)
    nearest = cKDTree(palette).query(rgb)[1]  # a palette colour is its own nearest (distance 0)
    changed = np.abs(rgb - palette[nearest]).max(axis=1) > CLOSE
    if (changed & (counts >= RARE * packed.size)).any():
        return None
    indexed = Image.fromarray(nearest[inverse].reshape(image.height, image.width).astype(np.uint8), "P")
    indexed.putpalette(palette.astype(np.uint8).ravel().tolist())
    return indexed


def _scale_colours(cmap: Colormap) -> np.ndarray:
    """Every colour (RGB rows) `cmap` draws: its levels, under, over and bad, as the same bytes
    an image drawn with it has."""
    levels = cmap(np.arange(-1, cmap.N + 1), bytes=True)
    return np.concatenate([levels, cmap(np.array([np.nan]), bytes=True)])[:, :3]


def _pack(rgb: np.ndarray) -> np.ndarray:
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _unpack(packed: np.ndarray) -> np.ndarray:
    return np.stack([packed >> 16, (packed >> 8) & 255, packed & 255], axis=-1)


def save_figure(fig: Figure, path: Path) -> None:
    """The figure as the report's PNG (`png_bytes`), written atomically: a full disk leaves no
    empty PNG."""
    png = png_bytes(fig)
    save_atomic(lambda tmp: tmp.write_bytes(png), path, f"the figure {path.stem.replace('_', ' ')}")


def figure_to_data_uri(fig: Figure) -> str:
    """The figure as a `data:image/png;base64,...` URI of `png_bytes` (the figure is left open)."""
    return _png_data_uri(png_bytes(fig))


def _png_data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _image_uri(figure: Figure | str | os.PathLike) -> str:
    if isinstance(figure, Figure):
        return figure_to_data_uri(figure)
    data = Path(figure).read_bytes()
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError(f"{figure} is not a PNG file")
    return _png_data_uri(data)


def format_cell(value: Any) -> tuple[str, bool]:
    """A cell's text and whether it is numeric: integers in full, floats to 4 significant
    digits (integral floats without decimals, NaN as 'NaN', infinities as +-inf), None empty."""
    value = plain(value)
    if value is None:
        return "", False
    if isinstance(value, bool):
        return ("yes" if value else "no"), False
    if isinstance(value, int):
        return str(value), True
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN", True
        if math.isinf(value):
            return ("\u221e" if value > 0 else "\u2212\u221e"), True
        if value.is_integer() and abs(value) < 1e6:
            return str(int(value)), True
        return f"{value:.4g}", True
    return str(value), False


def _paragraphs(text: str) -> str:
    blocks = [" ".join(b.split()) for b in text.split("\n\n")]
    return "".join(f"<p>{html.escape(b)}</p>\n" for b in blocks if b)


def _table_html(table: Table) -> str:
    width = len(table.columns)
    bad = [i for i, row in enumerate(table.rows) if len(row) != width]
    if bad:
        raise ValueError(f"table rows {bad} do not have {width} cells like the columns {table.columns}")
    out = ['<div class="table-wrap"><table>']
    if table.caption:
        out.append(f"<caption>{html.escape(table.caption)}</caption>")
    out.append("<thead><tr>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns) + "</tr></thead>")
    out.append("<tbody>")
    for row in table.rows:
        cells = []
        for value in row:
            text, numeric = format_cell(value)
            cells.append(f'<td class="num">{html.escape(text)}</td>' if numeric else f"<td>{html.escape(text)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table></div>\n")
    return "\n".join(out)


def render_report(title: str, sections: Sequence[Section]) -> str:
    """The report's HTML text (see `write_report`)."""
    e = html.escape
    toc = "".join(f'<li><a href="#section-{i}">{e(s.heading)}</a></li>' for i, s in enumerate(sections, 1))
    body = []
    number = 0
    for i, section in enumerate(sections, 1):
        body.append(f'<section id="section-{i}">\n<h2>{i}. {e(section.heading)}</h2>\n')
        body.append(_paragraphs(section.text))
        body.extend(_table_html(t) for t in section.tables)
        for caption, figure in section.figures:
            number += 1
            body.append(
                f'<figure id="figure-{number}"><img src="{_image_uri(figure)}" alt="{e(caption, quote=True)}">'
                f"<figcaption><strong>Figure {number}.</strong> {e(caption)}</figcaption></figure>\n"
            )
        body.append("</section>\n")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{e(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f"<h1>{e(title)}</h1>\n<nav><strong>Contents</strong><ol>{toc}</ol></nav>\n"
        + "".join(body)
        + "</body>\n</html>\n"
    )


def write_report(path: str | os.PathLike, title: str, sections: Sequence[Section]) -> Path:
    """Write one self-contained HTML page: title, table of contents, then each section's
    paragraphs, tables and numbered, captioned figures (embedded PNGs). Returns the path."""
    return write_atomic(path, render_report(title, sections), what="the report")

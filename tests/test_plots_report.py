"""Behaviour of modadd.plots (each figure's axes and artists) and modadd.report (a self-contained
page, checked by parsing it and by rendering it in headless Chromium)."""

from __future__ import annotations

import base64
import csv
import io
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PathCollection, PolyCollection
from matplotlib.figure import Figure
from matplotlib.image import imread
from matplotlib.text import Text
from matplotlib.transforms import Bbox
from PIL import Image

from modadd import plots
from modadd.fourier import fit_neurons, wrap_phase
from modadd.files import write_csv
from modadd.analysis import in_sweep_order
from modadd.report import (
    CLOSE, RARE, WIDTH_PX, Section, Table, compact_png, figure_dpi, figure_to_data_uri, format_cell, png_bytes,
    write_report,
)
from modadd.runs import Run

from conftest import chromium, needs_chromium, rendered_dom, run_script

P, HIDDEN = 13, 16
FREQS = [1, 3, 5]
DIRTY = (14, 15)  # neurons whose output frequency differs from their input frequency


def cosine_network(p: int = P, hidden: int = HIDDEN, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Hand-built cosine network: neuron n has a-, b- and out-weights at frequency FREQS[n % 3]
    with phase_out = phase_a + phase_b, except the DIRTY neurons, whose out-weights are one
    frequency higher."""
    gen = torch.Generator().manual_seed(seed)
    k = torch.tensor([FREQS[n % len(FREQS)] for n in range(hidden)], dtype=torch.float64)
    k_out = k.clone()
    k_out[list(DIRTY)] += 1
    phase_a = (torch.rand(hidden, generator=gen, dtype=torch.float64) * 2 - 1) * math.pi
    phase_b = (torch.rand(hidden, generator=gen, dtype=torch.float64) * 2 - 1) * math.pi
    x = torch.arange(p, dtype=torch.float64)

    def wave(freq: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
        return torch.cos(2 * math.pi * freq[:, None] * x / p + phase[:, None])

    fc1 = torch.cat([wave(k, phase_a), 0.8 * wave(k, phase_b)], dim=1)
    fc2 = 1.5 * wave(k_out, wrap_phase(phase_a + phase_b)).T
    return fc1, fc2


@pytest.fixture(scope="module")
def net():
    fc1, fc2 = cosine_network()
    return fc1, fc2, fit_neurons(fc1, fc2)


def curve_rows(epochs: int = 60, grok: float = 30.0) -> list[dict]:
    e = np.arange(epochs)
    val = 1 / (1 + np.exp(-(e - grok) / 3))
    train = np.minimum(1.0, e / 10)
    return [{"epoch": int(i), "train/loss": 2.5 * np.exp(-i / 8) + 1e-3, "train/acc": float(t),
             "val/loss": 2.5 * (1 - v) + 1e-3, "val/acc": float(v)} for i, t, v in zip(e, train, val)]


def main_axes(fig: Figure) -> list:
    """The figure's axes other than colorbars."""
    return [ax for ax in fig.axes if not hasattr(ax, "_colorbar")]


def collections(ax, kind=PathCollection) -> list:
    return [c for c in ax.collections if isinstance(c, kind)]


def n_points(ax) -> int:
    return sum(len(c.get_offsets()) for c in collections(ax))


def legend_texts(ax) -> list[str]:
    legend = ax.get_legend()
    return [t.get_text() for t in legend.get_texts()] if legend else []


def all_titles(fig: Figure) -> str:
    return " | ".join([fig.get_suptitle()] + [ax.get_title() for ax in fig.axes])


# ---------------------------------------------------------------------------- per-run plots


def test_grokking_curves():
    rows = curve_rows()
    fig = plots.grokking_curves(rows[::-1])  # order of rows does not matter
    assert isinstance(fig, Figure)
    loss, acc = fig.axes
    scales = (loss.get_xscale(), loss.get_yscale(), acc.get_xscale(), acc.get_yscale())
    assert scales == ("log", "log", "log", "linear")
    data = [line for line in acc.get_lines() if len(line.get_xdata()) == len(rows)]
    assert len(data) == 2 and np.array_equal(data[0].get_xdata(), np.arange(len(rows)) + 1)
    first_val = next(r["epoch"] for r in rows if r["val/acc"] >= 0.99)
    labels = legend_texts(acc)
    assert "validation accuracy" in labels and any(f"(epoch {first_val})" in t for t in labels)
    assert len([ln for ln in loss.get_lines() if len(ln.get_xdata()) == len(rows)]) == 2


def test_grokking_curves_without_grokking():
    rows = [{**r, "val/acc": 0.1, "val/loss": None} for r in curve_rows()]
    fig = plots.grokking_curves(rows)
    labels = legend_texts(fig.axes[1])
    assert any(t.startswith("training acc $\\geq$") for t in labels)
    assert not any(t.startswith("validation acc $\\geq$") for t in labels)


def test_frequency_agreement(net):
    _, _, fits = net
    fig = plots.frequency_agreement(fits)
    ab, ao = fig.axes
    assert n_points(ab) == len(FREQS) and n_points(ao) == len(FREQS) + len(DIRTY)  # distinct (k_a, k) pairs
    for ax in (ab, ao):  # counts > 1 are written, the other bubbles are single neurons
        counts = [int(t.get_text()) for t in ax.texts]
        assert sum(counts) + n_points(ax) - len(counts) == HIDDEN
    assert "100% agree" in ab.get_title()
    assert f"{1 - len(DIRTY) / HIDDEN:.0%} agree" in ao.get_title()
    assert "88%" in fig.get_suptitle()


def test_phase_sum(net):
    _, _, fits = net
    fig = plots.phase_sum(fits)
    (ax,) = fig.axes
    assert n_points(ax) == HIDDEN - len(DIRTY)
    assert len(collections(ax)) == len(FREQS)  # one colour per frequency
    assert sorted(legend_texts(ax)) == [str(k) for k in FREQS]
    assert "median |error| = 0.000 rad" in ax.get_title()
    x, y = np.concatenate([c.get_offsets() for c in collections(ax)]).T
    assert np.allclose(np.angle(np.exp(1j * (y - x))), 0, atol=1e-6)


def test_phase_sum_without_clean_neurons(net):
    fc1, fc2, _ = net
    fits = fit_neurons(fc1, fc2)
    fits.out.freq = fits.a.freq + 1  # no neuron's frequencies agree
    (ax,) = plots.phase_sum(fits).axes
    assert n_points(ax) == 0 and "n/a" in ax.get_title()


def test_replacement_and_random_cosine_curves():
    results = [{"fraction": f, "acc_mean": 1 - f / 2, "acc_std": 0.05} for f in (1.0, 0.0, 0.5)]
    (ax,) = plots.replacement_curve(results).axes
    (line,) = ax.get_lines()
    assert list(line.get_xdata()) == [0.0, 0.5, 1.0]
    assert len(collections(ax, PolyCollection)) == 1
    results = [{"neurons": n, "acc_mean": 1 - 1 / n, "acc_std": 0.01} for n in (8, 32, 16)]
    (ax,) = plots.random_cosine_curve(results).axes
    assert ax.get_xscale() == "log" and ax.xaxis.get_transform().base == 2
    assert [t.get_text() for t in ax.get_xticklabels()] == ["8", "16", "32"]
    assert len(collections(ax, PolyCollection)) == 1


def test_frequency_ablation():
    results = [{"freq": k, "neurons": n, "acc": a} for k, n, a in ((5, 4, 0.7), (1, 6, 0.4), (3, 6, 0.9))]
    acc, neurons = plots.frequency_ablation(results, baseline=1.0).axes
    (points,) = [line for line in acc.get_lines() if line.get_marker() == "o"]
    assert list(points.get_xdata()) == [1, 3, 5] and list(points.get_ydata()) == [0.4, 0.9, 0.7]
    assert [(b.get_x() + b.get_width() / 2, b.get_height()) for b in neurons.patches] == [(1, 6), (3, 6), (5, 4)]
    labels = legend_texts(acc)
    assert "no ablation (100.00%)" in labels and any("lowest: 40.00% at k = 1" in t for t in labels)


def shown_px_per_pt(fig: Figure) -> float:
    """Screen pixels per point of the figure's text in the report: its PNG's resolution, times
    the page's shrinking of an image wider than its column."""
    width = Image.open(io.BytesIO(png_bytes(fig))).width
    return width / fig.get_figwidth() / 72 * min(1.0, WIDTH_PX / width)


def tick_labels(ax, renderer) -> list[list[tuple[str, Bbox]]]:
    """The x and the y axis' drawn tick labels (inside the view) with their boxes, in order."""
    out = []
    for axis, index, (lo, hi) in ((ax.xaxis, 0, ax.get_xlim()), (ax.yaxis, 1, ax.get_ylim())):
        labels = [t for t in axis.get_ticklabels() if t.get_visible() and t.get_text()
                  and min(lo, hi) <= t.get_position()[index] <= max(lo, hi)]
        out.append([(t.get_text(), t.get_window_extent(renderer)) for t in labels])
    return out


def test_frequency_ablation_reads_at_the_report_width():
    """p = 113 has 56 frequencies: the figure used to widen by 0.55 in for each (33 in), which the
    page shrank to its column, its text to 4-5 px."""
    rng = np.random.default_rng(0)
    results = [{"freq": k, "neurons": int(rng.integers(1, 12)), "acc": 1 - rng.uniform(0, 3e-3)} for k in range(1, 57)]
    fig = plots.frequency_ablation(results, baseline=0.9998)
    px_per_pt = shown_px_per_pt(fig)
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text()]
    assert min(t.get_fontsize() for t in texts) * px_per_pt >= 11
    for ax in fig.axes:
        for labels in tick_labels(ax, renderer):
            assert len({text for text, _ in labels}) == len(labels)  # no two ticks read the same
            assert not any(a.overlaps(b) for (_, a), (_, b) in zip(labels, labels[1:]))
    x_labels = [text for ax in fig.axes for text, _ in tick_labels(ax, renderer)[0]]
    assert {"5", "50"} <= set(x_labels)


@pytest.mark.parametrize("kind", ["heatmap", "plot"])
def test_figures_are_compact_and_keep_every_colour_that_matters(net, kind):
    """Indexed, under half the bytes of RGB: a heatmap's every scale colour (its data) exact, any
    other colour that is not a rare blend at an anti-aliased edge within CLOSE levels; and no
    wider than the page (the weights figure is 12 in)."""
    fc1, fc2, fits = net
    fig = plots.weight_similarity(fc1, fc2) if kind == "heatmap" else plots.neuron_weights(fc1, fc2, fits, [0, 1, 2, 3])
    shown = Image.open(io.BytesIO(png_bytes(fig)))
    assert shown.mode == "P" and shown.width <= WIDTH_PX
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=figure_dpi(fig), facecolor="white")
    drawn = Image.open(buffer).convert("RGB")
    scales = [im.cmap(np.arange(im.cmap.N), bytes=True)[:, :3] for ax in fig.axes for im in ax.get_images()]
    scale = np.concatenate(scales) if scales else np.empty((0, 3), np.uint8)
    png = compact_png(drawn, scale)
    lossless = io.BytesIO()
    drawn.save(lossless, format="PNG", optimize=True)
    assert len(png) < len(lossless.getvalue()) / 2

    def packed(image: Image.Image) -> np.ndarray:
        rgb = np.asarray(image.convert("RGB"), dtype=np.int64).reshape(-1, 3)
        return rgb[:, 0] << 16 | rgb[:, 1] << 8 | rgb[:, 2]

    before, after = packed(drawn), packed(Image.open(io.BytesIO(png)))
    in_scale = np.isin(before, packed(Image.fromarray(scale[None])))
    assert in_scale.any() == (kind == "heatmap") and np.array_equal(before[in_scale], after[in_scale])
    _, inverse, counts = np.unique(before, return_inverse=True, return_counts=True)
    frequent = counts[inverse] >= RARE * before.size
    moved = max(abs((before[frequent] >> shift & 255) - (after[frequent] >> shift & 255)).max() for shift in (0, 8, 16))
    assert frequent.mean() > 0.9 and moved <= CLOSE


def test_activation_heatmaps(net):
    fc1, fc2, _ = net
    neurons = [0, 4, 7]
    fig = plots.activation_heatmaps(fc1, fc2.numpy(), neurons, folded=False)  # torch or numpy
    assert len(main_axes(fig)) == 2 * len(neurons) and len(fig.axes) == 2 * len(neurons) + 2
    images = [ax.get_images()[0].get_array() for ax in main_axes(fig)]
    assert all(im.shape == (P, P) for im in images)
    a, b = 3, 9
    act = max(float(fc1[4, a] + fc1[4, P + b]), 0.0)
    assert images[1][a, b] == pytest.approx(act)
    assert images[len(neurons) + 1][a, b] == pytest.approx(act * float(fc2[(a + b) % P, 4]))
    # folded (the default): the pixel of (a, b) is at (k_a a mod p, k_b b mod p), k the fitted frequencies
    fits = fit_neurons(torch.as_tensor(fc1), torch.as_tensor(fc2))
    ka, kb = int(fits.a.freq[4]), int(fits.b.freq[4])
    folded = [ax.get_images()[0].get_array() for ax in main_axes(plots.activation_heatmaps(fc1, fc2, neurons))]
    assert folded[1][ka * a % P, kb * b % P] == pytest.approx(act)
    assert folded[len(neurons) + 1][ka * a % P, kb * b % P] == pytest.approx(act * float(fc2[(a + b) % P, 4]))
    with pytest.raises(ValueError):
        plots.activation_heatmaps(fc1, fc2[:, :-1], neurons)


@pytest.mark.parametrize("folded", [False, True])
def test_neuron_weights(net, folded):
    fc1, fc2, fits = net
    fig = plots.neuron_weights(fc1, fc2, fits, [2, 14], folded=folded)
    assert len(fig.axes) == 6
    for ax in fig.axes:
        fitted, points = ax.get_lines()
        assert len(points.get_xdata()) == P and len(fitted.get_xdata()) > P
        assert any("$R^2$ = 1.000" in t for t in legend_texts(ax))
        # the points lie on the fitted line (pure cosines)
        assert np.allclose(np.interp(points.get_xdata(), fitted.get_xdata(), fitted.get_ydata()),
                           points.get_ydata(), atol=0.05)
    assert np.allclose(fig.axes[0].get_lines()[1].get_ydata(), fc1[2, :P].numpy())
    assert np.allclose(fig.axes[5].get_lines()[1].get_ydata(), fc2[:, 14].numpy())
    k = int(fits.a.freq[2])
    assert fig.axes[0].get_xlabel() == (f"{k}a mod {P}" if folded else "a")


@pytest.mark.parametrize("hidden", [64, 256])
def test_weight_similarity_tick_labels_never_overlap(hidden):
    """At hidden=64 (p=113, neurons spread over many frequencies) the labels of neighbouring
    blocks overlapped; the biggest blocks are labelled first."""
    p, rng = 113, np.random.default_rng(0)
    x = torch.arange(p, dtype=torch.float64)
    k = torch.as_tensor(rng.integers(1, 40, hidden))
    k[: hidden // 4] = 17  # one big block, which must keep its label
    wave = lambda phase: torch.cos(2 * math.pi * k[:, None] * x / p + phase)  # (hidden, p)
    fc1 = torch.cat([wave(0.3), wave(1.1)], dim=1)
    fc2 = wave(1.4).T
    fig = plots.weight_similarity(fc1, fc2)
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    for ax in main_axes(fig):
        for along, labels in zip(("x0", "y0"), tick_labels(ax, renderer)):
            boxes = sorted((box for _, box in labels), key=lambda b: getattr(b, along))
            assert len(boxes) >= 4 and not any(a.overlaps(b) for a, b in zip(boxes, boxes[1:]))
        assert "17" in [t.get_text() for t in ax.get_xticklabels()]


def test_weight_similarity(net):
    fc1, fc2, _ = net
    fig = plots.weight_similarity(fc1, fc2)
    assert len(fig.axes) == 3  # two matrices and a shared colorbar
    for ax in main_axes(fig):
        sim = ax.get_images()[0].get_array()
        assert sim.shape == (HIDDEN, HIDDEN) and np.allclose(np.diag(sim), 1)
        labels = [t.get_text() for t in ax.get_yticklabels()]
        assert labels == sorted(labels, key=int) and set(labels) <= {"1", "2", "3", "4", "5", "6"}
    # input vectors of neurons with different frequencies are orthogonal: the matrix is block diagonal
    order_k = [FREQS[n % 3] for n in range(HIDDEN)]
    sim = main_axes(fig)[0].get_images()[0].get_array()
    assert np.sum(np.abs(sim) > 1e-9) <= sum(order_k.count(k) ** 2 for k in FREQS)


def test_tsne_kmeans(net):
    fc1, _, fits = net
    fig = plots.tsne_kmeans(fc1, fits, clusters=3, seed=0)
    clusters, freqs = fig.axes
    assert n_points(clusters) == n_points(freqs) == HIDDEN
    assert len(collections(clusters)) == 3
    assert len(collections(freqs)) == len(set(fits.out.freq.tolist()))
    assert "adjusted Rand index" in freqs.get_title()


def test_frequency_histogram(net):
    _, _, fits = net
    (ax,) = plots.frequency_histogram(fits.out.freq, P).axes
    heights = [p.get_height() for p in ax.patches]
    assert heights == np.bincount(fits.out.freq.numpy(), minlength=P // 2 + 1)[1:].tolist()
    assert [t.get_text() for t in ax.texts if t.get_text()] == ["1", "2", "3", "5", "6"]  # k = 4 is empty
    with pytest.raises(ValueError):
        plots.frequency_histogram([0, 1], P)


# ---------------------------------------------------------------------------- sweep plots


def sweep_rows() -> list[dict]:
    rows = []
    for hidden in (16, 32, 64):
        for wd in (0.1, 1.0):
            if (hidden, wd) == (64, 1.0):
                continue  # a missing job
            acc = math.nan if (hidden, wd) == (16, 0.1) else hidden / 64 * wd
            rows.append({"hidden": hidden, "weight_decay": wd, "betas": [0.9, 0.98 if wd < 1 else 0.999],
                         "final_val_acc": acc, "seed": 0})
    rows.append({**rows[-1], "seed": 1, "final_val_acc": rows[-1]["final_val_acc"] + 0.1})  # a repeat
    return rows


def test_sweep_heatmap():
    fig = plots.sweep_heatmap(sweep_rows(), "hidden", "weight_decay", "final_val_acc")
    ax = main_axes(fig)[0]
    assert len(fig.axes) == 2
    grid = ax.get_images()[0].get_array()
    assert grid.shape == (2, 3) and grid.mask.sum() == 2  # NaN job and missing job
    texts = [t.get_text() for t in ax.texts]
    assert len(texts) == 6 and "NaN\n(n=1)" in texts and "no job\n(n=0)" in texts
    assert "0.15\n(n=2)" in texts  # (64, 0.1): two seeds averaged
    assert sum(p.get_hatch() == "//" for p in ax.patches) == 2
    assert [t.get_text() for t in ax.get_xticklabels()] == ["16", "32", "64"]
    log_fig = plots.sweep_heatmap(sweep_rows(), "hidden", "weight_decay", "final_val_acc", log=True)
    assert log_fig.axes[0].get_images()[0].norm.__class__.__name__ == "LogNorm"


def test_sweep_lines():
    ax = plots.sweep_lines(sweep_rows(), "hidden", "final_val_acc", hue="weight_decay").axes[0]
    assert legend_texts(ax) == ["0.1", "1"]
    assert ax.get_legend().get_title().get_text() == "weight_decay"
    (ax,) = plots.sweep_lines(sweep_rows(), "betas", "final_val_acc").axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["(0.9, 0.98)", "(0.9, 0.999)"]
    ax = plots.sweep_lines([{"lr": lr, "v": lr * 10} for lr in (1e-4, 1e-3, 1e-2)], "lr", "v").axes[0]
    assert ax.get_xscale() == "log"


def test_overlaid_curves():
    curves = {f"lr={lr}": curve_rows(grok=g) for lr, g in ((1e-3, 40), (1e-2, 20), (3e-2, 10))}
    fig = plots.overlaid_curves(curves, {"lr=0.001": 1e-3, "lr=0.01": 1e-2}, color_label="lr")
    ax = main_axes(fig)[0]
    assert len(fig.axes) == 2 and fig.axes[1].get_ylabel() == "lr"
    assert len(ax.get_lines()) == 3 and ax.get_xscale() == "log"
    assert ax.get_lines()[2].get_color() == "0.6"  # the job without a value is grey
    fig = plots.overlaid_curves(curves, None, key="val/loss")
    (ax,) = fig.axes
    assert legend_texts(ax) == list(curves) and ax.get_yscale() == "log"


# ---------------------------------------------------------------------------- report


class PageParser(HTMLParser):
    """Collects the tags, attributes and text of a page."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def find(self, tag: str) -> list[dict]:
        return [attrs for t, attrs in self.tags if t == tag]


def parse(text: str) -> PageParser:
    parser = PageParser()
    parser.feed(text)
    return parser


def decode_png_uri(uri: str) -> bytes:
    prefix = "data:image/png;base64,"
    assert uri.startswith(prefix)
    data = base64.b64decode(uri[len(prefix):], validate=True)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    return data


EVIL = '<script>alert("x")</script> & <b>bold</b>'


@pytest.fixture(scope="module")
def report(tmp_path_factory, net) -> Path:
    fc1, fc2, fits = net
    tmp = tmp_path_factory.mktemp("report")
    png = tmp / "curves.png"
    plots.grokking_curves(curve_rows()).savefig(png)
    final = Table(["metric", "value"], [["val/acc", np.float32(0.998765)], ["epochs", 2000], ["grokked", True],
                                         ["delay", math.nan]], caption="Final")
    neurons = Table(["neuron", "k", "r2", EVIL], [[n, int(fits.out.freq[n]), fits.out.r2[n], "x"] for n in range(4)])
    sections = [
        Section("Training", f"Two paragraphs.\n\nThe second one {EVIL}.", tables=[final],
                figures=[("Loss and accuracy", str(png)), ("Frequencies", plots.frequency_histogram(fits.out.freq, P))]),
        Section(f"Neurons {EVIL}", tables=[neurons], figures=[("Weights", plots.weight_similarity(fc1, fc2))]),
    ]
    path = tmp / "sub" / "report.html"
    write_report(path, f"Report {EVIL}", sections)
    return path


def test_figure_to_data_uri():
    fig = Figure()
    fig.subplots().plot([0, 1])
    decode_png_uri(figure_to_data_uri(fig))


def test_report_is_self_contained(report):
    text = report.read_text(encoding="utf-8")
    page = parse(text)
    images = page.find("img")
    assert len(images) == 3
    for img in images:
        decode_png_uri(img["src"])
    assert len(page.find("table")) == 2 and len(page.find("figure")) == 3
    assert not re.search(r"https?:", text, re.IGNORECASE)
    assert not page.find("script") and not page.find("link") and not page.find("b")  # escaped, not markup
    # <title>, <h1>, contents, <h2>, paragraph, table header: shown as text, not markup
    assert sum(EVIL in t for t in page.text) == 6
    # every link is a table-of-contents anchor that resolves to a section
    ids = {attrs["id"] for _, attrs in page.tags if "id" in attrs}
    anchors = [a["href"] for a in page.find("a")]
    assert len(anchors) == 2 and all(h.startswith("#") and h[1:] in ids for h in anchors)
    cells = [t for t in page.text if t.strip()]
    for expected in ("0.9988", "2000", "yes", "NaN"):
        assert expected in cells
    assert [f for f in report.parent.iterdir()] == [report]  # no temporary file left behind


def test_report_rejects_non_png_and_ragged_table(tmp_path):
    bad = tmp_path / "x.png"
    bad.write_text("not a png")
    with pytest.raises(ValueError):
        write_report(tmp_path / "r.html", "t", [Section("s", figures=[("c", bad)])])
    with pytest.raises(ValueError):
        write_report(tmp_path / "r.html", "t", [Section("s", tables=[Table(["a", "b"], [[1]])])])
    assert not list(tmp_path.glob("*.html")) and not list(tmp_path.glob(".*tmp"))


def test_format_cell():
    assert format_cell(3) == ("3", True)
    assert format_cell(np.int64(12769)) == ("12769", True)
    assert format_cell(0.123456) == ("0.1235", True)
    assert format_cell(2.0) == ("2", True)
    assert format_cell(1.5e-7) == ("1.5e-07", True)
    assert format_cell(torch.tensor(0.25)) == ("0.25", True)
    assert format_cell(float("inf")) == ("\u221e", True)
    assert format_cell(None) == ("", False)
    assert format_cell("ok") == ("ok", False)


def test_write_csv(tmp_path):
    path = write_csv(tmp_path / "t.csv", [{"b": 1, "a": np.float64(0.5)}, {"a": 2, "c": "x", "d": None}])
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows == [["b", "a", "c", "d"], ["1", "0.5", "", ""], ["", "2", "x", ""]]


# ---------------------------------------------------------------------------- Chromium

@needs_chromium
def test_report_renders_in_chromium(report, tmp_path):
    page = parse(rendered_dom(report, tmp_path))
    (body,) = page.find("body")
    assert body.get("data-probed") == "yes" and body.get("data-external") == ""
    images = page.find("img")
    assert len(images) == 3 and all(int(img["data-loaded"]) > 100 for img in images)
    assert len(page.find("table")) == 2 and len(page.find("tr")) == 5 + 5

    shot = tmp_path / "shot.png"
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,2000", report.as_uri())
    pixels = imread(shot)[..., :3]
    assert pixels.shape[:2] == (2000, 1200)
    not_white = (pixels < 0.95).any(axis=-1)
    assert 0.02 < not_white.mean() < 0.9  # text, tables and figures, on a white page
    assert len(np.unique((pixels * 255).astype(np.uint8).reshape(-1, 3), axis=0)) > 50  # colour figures


# ---------------------------------------------------------------------------- a sweep's report


def test_jobs_in_sweep_order():
    """Swept numbers in numeric order (their dirs sort as text: 10, 16, 8), text as text, the
    keys in the order of the job names; a job without a key last."""
    def run(**overrides: str) -> Run:
        name = ",".join(f"{k}={v}" for k, v in sorted(overrides.items()))
        return Run(Path(name), {}, overrides, [], {}, "ok", "")

    runs = [run(hidden=h, lr=lr, operation=op) for op in ("sub", "add") for lr in ("1e-3", "0.01") for h in ("16", "8", "10")]
    runs.append(run(hidden="4"))
    ordered = [tuple(r.overrides.get(k) for k in ("hidden", "lr", "operation")) for r in in_sweep_order(runs)]
    assert ordered[:4] == [("4", None, None), ("8", "1e-3", "add"), ("8", "1e-3", "sub"), ("8", "0.01", "add")]
    assert [h for h, _, _ in ordered] == ["4"] + ["8"] * 4 + ["10"] * 4 + ["16"] * 4
    assert in_sweep_order([run(seed="1"), run(seed="x"), run(seed="10"), run(seed="9")])[-1].overrides == {"seed": "x"}


@pytest.fixture(scope="module")
def sweep_report(tmp_path_factory) -> Path:
    """The analysis of a 3-job sweep over hidden = 8, 10, 16."""
    root = tmp_path_factory.mktemp("sweep") / "sweep"
    run_script("train.py", "-m", "hidden=8,10,16", "p=13", "epochs=20", "logger=csv", f"hydra.sweep.dir={root}")
    run_script("analyze.py", str(root), "--orders", "2", "--draws", "2", "--neurons", "16,64")
    return root / "analysis"


@pytest.mark.slow
def test_sweep_lists_jobs_in_numeric_order(sweep_report):
    with open(sweep_report / "summary.csv", newline="") as f:
        assert [r["hidden"] for r in csv.DictReader(f)] == ["8", "10", "16"]
    page = (sweep_report / "report.html").read_text(encoding="utf-8")
    summary_jobs = re.findall(r"<td>epochs=20,hidden=(\d+),p=13</td>", page)
    sections = re.findall(r"<h2>\d+\. epochs=20,hidden=(\d+),p=13</h2>", page)
    assert summary_jobs == sections == ["8", "10", "16"]


@pytest.mark.slow
def test_sweep_report_is_small(sweep_report):
    """At most the page's width, 100 KB an image (a figure of 4 neurons' weights was 280 KB, 1440 px
    wide), 500 KB a job (was 1.1 MB), and the random cosine networks, one experiment, shown once."""
    page = (sweep_report / "report.html").read_text(encoding="utf-8")
    images = parse(page).find("img")
    for img in images:
        png = decode_png_uri(img["src"])
        assert len(png) <= 100_000 and Image.open(io.BytesIO(png)).width <= WIDTH_PX, img["alt"]
    assert len(page.encode()) <= 3 * 500_000
    assert sum(img["alt"].startswith("random cosine") for img in images) == 1

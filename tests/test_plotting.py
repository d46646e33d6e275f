"""plotting.figure_svg: one draw, same picture as savefig(bbox_inches="tight")."""

from __future__ import annotations

import io
import re
import xml.etree.ElementTree as ET

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from analysis.plotting import figure_svg, set_theme  # noqa: E402

SIZE = re.compile(r'<svg[^>]*width="([\d.]+)pt" height="([\d.]+)pt" viewBox="([^"]+)"')


def _figure(caption_lines: int = 2):
    set_theme()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(np.arange(30), np.sin(np.arange(30)), marker="o")
    ax.set_title("A title")
    ax.set_ylabel("per 1,000 admissions")
    # text far below the axes: the tight box must grow past the figure to keep it
    ax.annotate("\n".join(["caption line"] * caption_lines), xy=(0, 0), xycoords="axes fraction",
                xytext=(0, -60), textcoords="offset points", va="top")
    return fig


@pytest.mark.parametrize("lines", [1, 4])
def test_figure_svg_has_the_tight_size_of_savefig(lines):
    buf = io.StringIO()
    with plt.rc_context({"svg.fonttype": "none", "figure.dpi": 100, "savefig.dpi": 120}):
        ref_fig = _figure(lines)
        ref_fig.savefig(buf, format="svg", bbox_inches="tight")
        plt.close(ref_fig)
        fig = _figure(lines)
        svg = figure_svg(fig)
    ref = SIZE.search(buf.getvalue())
    got = SIZE.search(svg)
    assert svg.startswith("<svg")
    ET.fromstring(svg)  # well-formed
    assert float(got.group(1)) == pytest.approx(float(ref.group(1)), abs=0.01)
    assert float(got.group(2)) == pytest.approx(float(ref.group(2)), abs=0.01)
    x0, y0, w, h = map(float, got.group(3).split())
    assert y0 + h > 4.5 * 72  # the caption below the original canvas is inside the view
    assert "caption line" in svg and "A title" in svg  # text stays text (output scanner)
    assert not plt.fignum_exists(fig.number)  # closed


def test_figure_svg_without_tight_keeps_the_canvas():
    svg = figure_svg(_figure(), tight=False)
    got = SIZE.search(svg)
    assert (float(got.group(1)), float(got.group(2))) == (576.0, 324.0)
    assert got.group(3) == "0 0 576 324"

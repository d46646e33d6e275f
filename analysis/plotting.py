"""One seaborn theme for every figure in the suite, and small shared plotting helpers."""

from __future__ import annotations

# No backend is forced here: Jupyter keeps its inline backend, and headless runs fall back to Agg.
import io
import re

import matplotlib as mpl
import matplotlib.pyplot as plt
import seaborn as sns

#: The Okabe-Ito colour-blind-safe palette (Okabe & Ito 2008; Wong, Nat Methods 2011): eight
#: colours told apart with every common colour-vision deficiency.
OKABE_ITO: dict[str, str] = {
    "black": "#000000", "orange": "#E69F00", "sky_blue": "#56B4E9", "bluish_green": "#009E73",
    "yellow": "#F0E442", "blue": "#0072B2", "vermillion": "#D55E00", "reddish_purple": "#CC79A7",
}
#: Order of the colour cycle of the theme (categorical series: hospitals, models, periods).
CATEGORICAL: tuple[str, ...] = tuple(OKABE_ITO[k] for k in (
    "blue", "orange", "bluish_green", "vermillion", "reddish_purple", "sky_blue", "black", "yellow"))
#: Neutral greys (limits, reference lines, small print): not colour-coded.
NEUTRALS: dict[str, str] = {"grey": "#8C8C8C", "text": "#595959"}

#: What each role in a chart is drawn in (every plot function uses these, never a literal).
#: Pairs a reader must tell apart use Okabe-Ito colours far apart for every colour-vision type:
#: observed vs counterfactual (blue / vermillion), before vs after (blue / orange), a runs-rule
#: signal vs a point outside the limits (reddish purple / vermillion).
PALETTE: dict[str, str] = {
    "observed": OKABE_ITO["blue"],
    "fitted": OKABE_ITO["black"],
    "counterfactual": OKABE_ITO["vermillion"],
    "band": OKABE_ITO["vermillion"],
    "signal": OKABE_ITO["reddish_purple"],
    "limit": NEUTRALS["grey"],
    "highlight": OKABE_ITO["vermillion"],
    "pre": OKABE_ITO["blue"],
    "post": OKABE_ITO["orange"],
    "text": NEUTRALS["text"],
}

_THEMED = False

#: Settings that make every saved figure reproducible byte for byte and fit for journals: SVG
#: ids from a fixed salt, text kept as text in SVG and as TrueType (Type 42, editable) in PDF.
DETERMINISTIC_RC: dict[str, object] = {
    "svg.hashsalt": "ipso-report",
    "svg.fonttype": "none",
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
    "pdf.compression": 6,
}


def set_theme() -> None:
    """Apply the suite's single seaborn theme (idempotent): whitegrid, the Okabe-Ito colour cycle
    (:data:`CATEGORICAL`) and the reproducible-output settings (:data:`DETERMINISTIC_RC`)."""
    global _THEMED
    if not _THEMED:
        sns.set_theme(context="notebook", style="whitegrid", palette=list(CATEGORICAL))
        # axes.titley fixed (not None = automatic): matplotlib then skips moving each title above
        # top-side tick labels (we draw none there), which cost a third of every figure's draw.
        plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 120, "axes.titleweight": "bold",
                             "axes.titley": 1.0, **DETERMINISTIC_RC})
        _THEMED = True


def new_axes(ax=None, figsize=(8, 4.5)):
    """Return `ax` or a fresh themed Axes."""
    set_theme()
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


_SVG_SIZE = re.compile(r'width="[^"]*" height="[^"]*" viewBox="[^"]*"')


def figure_svg(fig, *, tight: bool = True, close: bool = True) -> str:
    """The figure as SVG text (the ``<svg>`` element; text kept as text, no date stamp, stable ids).

    Same picture as ``fig.savefig(..., format="svg", bbox_inches="tight")`` but drawn once: the
    tight bounding box is measured on the renderer that wrote the SVG, and the SVG's viewBox is
    cropped to it (plus ``savefig.pad_inches``), instead of matplotlib's extra layout pass before
    the real draw (which cost 35-40% of each report figure). A background rectangle in the
    figure's face colour covers the cropped area.
    """
    from matplotlib.backends.backend_mixed import MixedModeRenderer
    from matplotlib.backends.backend_svg import RendererSVG
    from matplotlib.colors import to_hex

    buf = io.StringIO()
    dpi = fig.dpi
    with plt.rc_context({"svg.fonttype": "none", "svg.hashsalt": "ipso-report"}):
        fig.dpi = 72  # as FigureCanvasSVG.print_svg: SVG user units are points
        try:
            width, height = fig.get_size_inches()
            w, h = width * 72, height * 72
            renderer = MixedModeRenderer(fig, width, height, dpi,
                                         RendererSVG(w, h, buf, image_dpi=dpi, metadata={"Date": None}))
            fig.draw(renderer)
            bbox = fig.get_tightbbox(renderer) if tight else None
            renderer.finalize()
        finally:
            fig.dpi = dpi
    face = to_hex(fig.get_facecolor())
    if close:
        plt.close(fig)
    svg = buf.getvalue()
    svg = svg[svg.find("<svg"):]
    if bbox is None:
        return svg
    pad = 72 * float(mpl.rcParams["savefig.pad_inches"])
    x0, y0 = 72 * bbox.x0 - pad, h - 72 * bbox.y1 - pad
    bw, bh = 72 * bbox.width + 2 * pad, 72 * bbox.height + 2 * pad
    end = svg.find(">") + 1
    head = _SVG_SIZE.sub(f'width="{bw:.6f}pt" height="{bh:.6f}pt" '
                         f'viewBox="{x0:.6f} {y0:.6f} {bw:.6f} {bh:.6f}"', svg[:end], count=1)
    back = (f'\n <rect x="{x0:.6f}" y="{y0:.6f}" width="{bw:.6f}" height="{bh:.6f}" '
            f'style="fill: {face}"/>')
    return head + back + svg[end:]

"""Statistical process control (SPC) charts as QI teams read them.

One function per chart, tidy frame in, :class:`ControlChart` out:

=============  ============================================  ===========================
function       chart                                         y / n
=============  ============================================  ===========================
run_chart      run chart, centre line = median               value (or y/n if n given)
i_chart        individuals (XmR) chart                       value (or y/n if n given)
mr_chart       moving-range chart of the I chart             value
xbar_chart     subgroup means (episode-level rows)           value per row, x = subgroup
s_chart        subgroup standard deviations                  value per row, x = subgroup
p_chart        proportion                                    events / denominator
pp_chart       Laney p' (overdispersion-corrected p)         events / denominator
u_chart        rate                                          events / exposure
up_chart       Laney u'                                      events / exposure
c_chart        count                                         events
g_chart        opportunities between rare events             e.g. episodes between deaths
median_chart   subgroup medians, distribution-free limits    value per row, x = subgroup
=============  ============================================  ===========================

R's qicharts2 (Anhøj) is the reference for behaviour and numbers; formulas follow its
``R/helper.functions.R`` (``qic.i``, ``qic.p``, ``qic.pp`` ...) and are cited where used.

Common arguments
----------------
x
    Time (subgroup) column. Rows sharing an x value form one subgroup (counts and denominators
    are summed; values are averaged for run/I charts).
part
    Recompute limits per phase: ``None``, a column name (a change of value starts a new part) or
    a list of x values, each the first x of a new part (e.g. the go-live month).
freeze
    Limits from a baseline period, extended forward: the last baseline x value, or an integer
    count of baseline points when it is not an x value. Cannot be combined with ``part``
    (qicharts2 silently ignores freeze when part is given; we refuse instead).
exclude
    x values left out of the centre-line / limit calculation and of the runs analysis (they are
    still plotted and still flagged when outside the limits), as qicharts2's ``exclude``.
multiply
    Multiply y, centre line and limits for display, e.g. 100 for percent.
rules
    ``"anhoej"`` (default), ``"shewhart"`` or ``"ihi"``; see :mod:`analysis.spc_rules`.
detect_shifts
    Off by default. When on, a sustained shift is located and, by default (``shifts="mark"``),
    shown as a signal: its estimated start is marked on the chart and listed in
    ``ControlChart.detected_shifts``, while the limits keep the phases given by ``part`` (e.g.
    split at go-live). ``shifts="new_part"`` instead starts a new part at each detected shift,
    the way QI teams re-base a chart after a confirmed centre-line shift (the behaviour before
    marking became the default). Within each part, starting with the whole part:
    (1) compute the part's centre line from all its points; (2) if a run breaks the shift rule
    (Anhøj: more than round(log2 n) + 3 useful points on one side; IHI and Shewhart: 8 or more;
    IHI run charts: 6 or more), estimate where the level changed as the split that minimises the
    (denominator-weighted) within-part sum of squares, leaving at least ``shift_min_points``
    points on each side; (3) accept it if the centre lines computed separately before and after
    the split differ in the direction the run implies; (4) the split starts a new part; repeat on
    the new part. Limits are then computed per part as with
    ``part``. The x values where new parts start are in ``ControlChart.detected_breaks``. False
    alarms occur at about the rate of the runs rules themselves (a few percent per series): a
    shift is only looked for where a runs rule has fired.
limits
    ``"sigma"`` (default): centre +/- 3 sigma (Montgomery; qicharts2). ``"exact"`` (p, u and c
    charts): probability limits from the binomial / Poisson distribution at the centre line,
    with the tail probability of 3 sigma (0.00135 on each side): a point is outside when a count
    at least as extreme has at most that probability. For sparse counts, where 3-sigma limits
    of skewed discrete data give false alarms, e.g. rare deaths.
log
    Xbar and I charts of positive, right-skewed values (minutes to treatment): the chart is
    computed on log(max(value, ``floor``)) and drawn back on the original scale, so the points
    are geometric means, the centre line a geometric mean and the limits are never below 0.
bounds
    ``(low, high)`` physical bounds of the plotted statistic (before ``multiply``); limits are
    truncated to them (p charts are always truncated to 0-1, u and c charts at 0).
min_n, small_n
    Subgroups with fewer than ``min_n`` units (denominator, or rows for Xbar/S charts) are
    pooled with the following subgroup of the same part (the last with the preceding one;
    ``small_n="pool"``, the point is drawn at the first x of the pooled run) or kept but left out
    of the limits and runs analysis and drawn hollow (``small_n="mark"``).

Degenerate input (empty frame, one subgroup, a zero or missing denominator, counts above the
denominator, all-zero counts, no variation) raises ``ValueError`` naming the column and value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from . import spc_rules as R

CHART_NAMES = {
    "run": "Run chart",
    "i": "I chart",
    "mr": "MR chart",
    "xbar": "Xbar chart",
    "s": "S chart",
    "p": "P chart",
    "pp": "P' chart (Laney)",
    "u": "U chart",
    "up": "U' chart (Laney)",
    "c": "C chart",
    "g": "G chart",
    "median": "Median chart",
}
_NEEDS_N = {"p", "pp", "u", "up"}
_OPTIONAL_N = {"run", "i", "mr"}
_NO_N = {"xbar", "s", "c", "g", "median"}
_SUBGROUPED = {"xbar", "s", "median"}

# Constants used by qicharts2 (R/helper.functions.R): d2 for n = 2 and D4 for n = 2.
D2 = 1.128
D4 = 3.267
#: Tail probability of 3-sigma limits on each side (normal): exact probability limits use it.
TAIL_3SIGMA = float(stats.norm.sf(3.0))
_EXACT = {"p", "u", "c"}
#: Width of a report page's text block, inches: small multiples wrap to it.
PAGE_WIDTH: float = 7.5
_LOG = {"xbar", "i", "run"}


# --------------------------------------------------------------------------------------------
# Bias-correction constants (qicharts2 c4/c5/a3/b3/b4; Montgomery, Introduction to SQC, App. VI)
# --------------------------------------------------------------------------------------------


def c4(n: np.ndarray | float) -> np.ndarray:
    """c4(n) = sqrt(2/(n-1)) * Gamma(n/2) / Gamma((n-1)/2); NaN for n <= 1."""
    n = np.asarray(n, float)
    out = np.full(n.shape, np.nan)
    ok = n > 1
    nn = n[ok]
    out[ok] = np.sqrt(2 / (nn - 1)) * np.exp(
        np.vectorize(math.lgamma)(nn / 2) - np.vectorize(math.lgamma)((nn - 1) / 2)
    )
    return out


def _c5(n):
    return np.sqrt(1 - c4(n) ** 2)


def a3(n):
    """A3(n) = 3 / (c4(n) sqrt(n)): Xbar limits are centre +- A3 * s-bar."""
    n = np.asarray(n, float)
    return 3 / (c4(n) * np.sqrt(n))


def b3(n):
    """B3(n) = max(0, 1 - 3 c5/c4): S chart lower limit factor."""
    return np.maximum(0, 1 - 3 * _c5(n) / c4(n))


def b4(n):
    """B4(n) = 1 + 3 c5/c4: S chart upper limit factor."""
    return 1 + 3 * _c5(n) / c4(n)


# --------------------------------------------------------------------------------------------
# Result objects
# --------------------------------------------------------------------------------------------


@dataclass
class ControlChart:
    """Result of one SPC chart.

    Attributes
    ----------
    chart: chart key (``"p"``, ``"i"`` ...); ``chart_name`` is the readable name.
    rules: rule set used (``"anhoej"``, ``"shewhart"``, ``"ihi"``); ``caption`` names it.
    data: one row per subgroup: x, y, n, cl, lcl, ucl, sigma (1-sigma distance from the centre line,
        before clipping at 0/1), part, baseline (used for limits), include (not excluded), the
        point-level flags sigma_signal (outside limits), runs_signal (the part's Anhøj runs test
        fired), long_run (point in a run longer than the Anhøj limit), shift / trend /
        two_of_three / hugging / runs_count (IHI rules; False unless ``rules="ihi"``), and
        ``signal`` (any flag of the rule set in use).
    runs: one row per part with the runs statistics (useful observations, longest run and its
        limit, crossings and their minimum, number of runs and the IHI runs-count limits).
    multiply: display multiplier applied to y, cl, lcl, ucl, sigma.
    detected_breaks: x values where automatic shift detection started a new part
        (``shifts="new_part"``).
    detected_shifts: x values where a detected sustained shift starts (``shifts="mark"``); the
        data column ``shift_start`` marks them.
    limits: "sigma" or "exact" (probability limits); scale: "linear" or "log" (see ``log``).
    point: what one point is (e.g. "one month", "one quarter"), for captions.
    choice: how the chart was chosen for the data (:class:`analysis.spc_choice.ChartChoice`),
        when a chooser built it.
    notes: anything the reader should know (e.g. subgroups of size one on an Xbar chart).
    """

    chart: str
    rules: str
    data: pd.DataFrame
    runs: pd.DataFrame
    multiply: float = 1.0
    x_name: str = "x"
    y_name: str = "y"
    n_name: str | None = None
    freeze_x: Any = None
    detected_breaks: list = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    detected_shifts: list = field(default_factory=list)
    limits: str = "sigma"
    scale: str = "linear"
    point: str | None = None
    choice: Any = None

    @property
    def chart_name(self) -> str:
        return CHART_NAMES[self.chart]

    @property
    def signal(self) -> bool:
        """Whether any signal of the rule set fired anywhere on the chart (for the Anhøj rules
        this includes a runs/crossings signal, which belongs to a part rather than a point)."""
        runs = self.rules == "anhoej" and bool(self.runs["runs_signal"].any())
        return bool(self.data["signal"].any()) or runs

    @property
    def runs_signal(self) -> bool:
        """Whether the Anhøj runs test fired in any part."""
        return bool(self.runs["runs_signal"].any())

    @property
    def caption(self) -> str:
        """Caption naming the chart, the rule set and what it found, per part."""
        text = f"{self.chart_name}. Signal rules: {R.rule_caption(self.rules, self.chart)}."
        parts = []
        d = self.data
        for row in self.runs.itertuples():
            g = d[d["part"] == row.part]
            if self.rules == "anhoej" and row.n_useful:
                parts.append(
                    f"part {row.part}: longest run {row.longest_run} (limit {row.longest_run_max}),"
                    f" crossings {row.n_crossings} (min {row.n_crossings_min})"
                )
            elif self.rules == "ihi":
                found = [f"{lab} {int(g[c].sum())} pt" for c, lab in
                         (("sigma_signal", "outside limits"), ("shift", "shift"), ("trend", "trend"),
                          ("two_of_three", "2 of 3"), ("hugging", "hugging"))
                         if g[c].any()]
                if self.chart == "run" and row.n_runs is not None and row.runs_min is not None:
                    found.append(f"{row.n_runs} runs (expected {row.runs_min}-{row.runs_max})")
                parts.append(f"part {row.part}: " + (", ".join(found) if found else "no signal"))
            elif self.rules == "shewhart":
                parts.append(f"part {row.part}: {int(g['sigma_signal'].sum())} point(s) outside limits")
        if parts:
            text += " " + "; ".join(parts) + "."
        if self.detected_breaks:
            text += " New parts from automatic shift detection at: " + ", ".join(
                _fmt_x(b) for b in self.detected_breaks
            ) + "."
        if self.detected_shifts:
            text += " Sustained shift detected from: " + ", ".join(
                _fmt_x(b) for b in self.detected_shifts) + " (a signal; limits keep their phases)."
        if self.limits == "exact":
            text += " Limits: exact probability limits (tail probability 0.00135 each side)."
        if self.point:
            text += f" Each point is {self.point}."
        reason = getattr(self.choice, "reason", None)
        if reason:
            text += f" Chart choice: {reason}."
        if self.scale == "log":
            text += (" Computed on the log scale: points are geometric means, limits never below"
                     " 0.")
        return text

    def describe_points(self, noun: str = "episodes", *, min_cell: int = 11) -> str:
        """What a point is and its n, for a caption: "Each point is one quarter; n = 38 to 61
        episodes per point (median 47)". Counts below `min_cell` are shown as "fewer than
        {min_cell}" (never a count from 1 to min_cell - 1)."""
        from .privacy import suppress_count

        n = self.data["n"].to_numpy(float)
        n = n[np.isfinite(n)]

        def fmt(v: float) -> str:
            return suppress_count(round(v), min_cell=min_cell, marker=f"fewer than {min_cell}")

        what = f"Each point is {self.point}" if self.point else "Each point is one subgroup"
        if n.size == 0:
            return what + "."
        lo, med, hi = float(n.min()), float(np.median(n)), float(n.max())
        if lo == hi:
            return f"{what}; n = {fmt(lo)} {noun} per point."
        return (f"{what}; n = {fmt(lo)} to {fmt(hi)} {noun} per point (median {fmt(med)}).")

    def summary(self) -> pd.DataFrame:
        """One row per part: x range, centre line, limit range, runs statistics, signal counts."""
        d = self.data
        rows = []
        for part, g in d.groupby("part", sort=True):
            r = self.runs.loc[self.runs["part"] == part].iloc[0]
            rows.append(
                {
                    "chart": self.chart,
                    "rules": self.rules,
                    "part": part,
                    "x_start": g["x"].iloc[0],
                    "x_end": g["x"].iloc[-1],
                    "n_points": len(g),
                    "cl": g["cl"].iloc[-1],
                    "lcl_min": g["lcl"].min(),
                    "lcl_max": g["lcl"].max(),
                    "ucl_min": g["ucl"].min(),
                    "ucl_max": g["ucl"].max(),
                    "n_useful": r["n_useful"],
                    "longest_run": r["longest_run"],
                    "longest_run_max": r["longest_run_max"],
                    "n_crossings": r["n_crossings"],
                    "n_crossings_min": r["n_crossings_min"],
                    "runs_signal": r["runs_signal"],
                    "n_outside_limits": int(g["sigma_signal"].sum()),
                    "n_signal_points": int(g["signal"].sum()),
                    **(
                        {f"n_{c}": int(g[c].sum()) for c in
                         ("shift", "trend", "two_of_three", "hugging", "runs_count")}
                        if self.rules == "ihi" else {}
                    ),
                }
            )
        return pd.DataFrame(rows)

    def plot(self, ax=None, *, title: str | None = None, show_caption: bool = True,
             ylabel: str | None = None, compact: bool = False):
        """Draw the chart; returns the matplotlib Axes.

        Centre line per part (dashed and coloured when the part's runs test fired, as qicharts2),
        control limits as steps (they vary with n), points outside limits / rule violations
        highlighted, part boundaries and the end of a frozen baseline marked, caption naming the
        rule set below the axes.
        """
        from .plotting import PALETTE, new_axes

        ax = new_axes(ax, figsize=(9, 4.5))
        d = self.data
        xs = _plot_x(d["x"])
        ms = 3 if compact else 5
        ax.plot(xs, d["y"], color=PALETTE["observed"], lw=1, marker="o", ms=ms, zorder=2)
        for part, g in d.groupby("part", sort=True):
            idx = g.index
            px = xs[idx] if isinstance(xs, np.ndarray) else xs.loc[idx]
            runs_sig = bool(g["runs_signal"].iloc[0]) and self.rules == "anhoej"
            ax.plot(px, g["cl"], color=PALETTE["signal"] if runs_sig else PALETTE["fitted"],
                    ls="--" if runs_sig else "-", lw=1.5, drawstyle="steps-mid", zorder=1)
            for lim in ("lcl", "ucl"):
                if g[lim].notna().any():
                    ax.plot(px, g[lim], color=PALETTE["limit"], lw=1, drawstyle="steps-mid",
                            zorder=1)
        parts = d["part"].to_numpy()
        for i in np.flatnonzero(np.diff(parts) != 0) + 1:
            ax.axvline(_mid(xs, i), color=PALETTE["limit"], ls=":", lw=1)
        if self.freeze_x is not None:
            i = int(np.flatnonzero(d["baseline"].to_numpy())[-1]) + 1
            if i < len(d):
                ax.axvline(_mid(xs, i), color=PALETTE["limit"], ls="-.", lw=1)
                if not compact:
                    ax.annotate("baseline ends", xy=(_mid(xs, i), 1), xycoords=("data", "axes fraction"),
                                fontsize=8, ha="right", va="top", color=PALETTE["text"])
        if "shift_start" in d and d["shift_start"].any():
            for i in np.flatnonzero(d["shift_start"].to_numpy(bool)):
                xm = _mid(xs, i) if i > 0 else (xs[i] if isinstance(xs, np.ndarray) else xs.iloc[i])
                ax.axvline(xm, color=PALETTE["signal"], ls="-.", lw=1.2, zorder=1,
                           label="shift detected" if i == np.flatnonzero(d["shift_start"])[0] else None)
        size = 25 if compact else 45
        outside = d["sigma_signal"].to_numpy(bool) & d["signal"].to_numpy(bool)
        rule_pts = d["signal"].to_numpy(bool) & ~outside
        if rule_pts.any():  # points in a long run / shift / trend / 2-of-3 / hugging run
            ax.scatter(xs[rule_pts], d["y"][rule_pts], color=PALETTE["signal"], s=size, zorder=3,
                       label="runs rule")
        if outside.any():  # points outside the 3-sigma limits
            ax.scatter(xs[outside], d["y"][outside], color=PALETTE["highlight"], s=size,
                       zorder=3, label="outside limits")
        excl = ~d["include"].to_numpy(bool)
        if excl.any():
            ax.scatter(xs[excl], d["y"][excl], facecolors="white", edgecolors=PALETTE["observed"],
                       s=size, zorder=4, label="excluded")
        if not compact and (outside.any() or rule_pts.any() or excl.any() or self.detected_shifts):
            ax.legend(loc="best", fontsize=7, frameon=True)
        if not isinstance(xs, np.ndarray):  # dates: concise labels, few ticks in small multiples
            import matplotlib.dates as mdates

            loc = mdates.AutoDateLocator(minticks=2, maxticks=5 if compact else 10)
            ax.xaxis.set_major_locator(loc)
            ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(loc))
        elif d["x"].dtype == object:
            ax.set_xticks(xs)
            ax.set_xticklabels([str(v) for v in d["x"]], rotation=90, fontsize=7)
        if self.chart == "median":  # limits of small subgroups are very wide: keep the points legible
            top = max(float(np.nanmax(d["y"])) * 1.15, float(np.nanquantile(d["ucl"], 0.9)) * 1.05)
            if np.isfinite(top) and top < float(np.nanmax(d["ucl"])):
                ax.set_ylim(top=top)
        ax.set_title(title if title is not None else f"{self.chart_name} of {self._ylab()}",
                     fontsize=9 if compact else None)
        if not compact:
            ax.set_ylabel(ylabel or self._ylab())
            ax.set_xlabel(self.x_name)
        if show_caption:
            ax.annotate(_wrap(self.caption, 130 if not compact else 60), xy=(0, 0),
                        xycoords="axes fraction", xytext=(0, -44), textcoords="offset points",
                        fontsize=7, va="top", ha="left", color=PALETTE["text"])
        return ax

    def _ylab(self) -> str:
        lab = self.y_name if self.n_name is None else f"{self.y_name} / {self.n_name}"
        if self.chart == "mr":
            lab = f"moving range of {lab}"
        if self.chart == "s":
            lab = f"SD of {lab}"
        if self.multiply != 1:
            lab += f" x {self.multiply:g}"
        if self.scale == "log":
            lab = f"geometric mean of {lab}"
        return lab


@dataclass
class FacetedCharts:
    """Small multiples: one :class:`ControlChart` per facet (e.g. site), keyed by its label.

    ``failed`` maps the labels of facets whose chart could not be computed to the reason (e.g. all
    counts zero); they are listed in ``summary()`` with ``status="failed"`` instead of crashing a
    batch report.
    """

    chart: str
    rules: str
    facet: str
    charts: dict[str, ControlChart]
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def caption(self) -> str:
        first = next(iter(self.charts.values()), None)
        rule = R.rule_caption(self.rules, self.chart)
        name = first.chart_name if first else CHART_NAMES[self.chart]
        txt = f"{name} per {self.facet}. Signal rules: {rule}."
        if self.failed:
            txt += f" Not charted: {', '.join(self.failed)}."
        return txt

    @property
    def data(self) -> pd.DataFrame:
        """All facets' point data stacked, with a ``facet`` column holding the label."""
        frames = [c.data.assign(facet=lab) for lab, c in self.charts.items()]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def summary(self) -> pd.DataFrame:
        rows = [c.summary().assign(facet=lab, status="ok", reason="") for lab, c in self.charts.items()]
        rows += [pd.DataFrame({"facet": [lab], "status": ["failed"], "reason": [why],
                               "chart": [self.chart], "rules": [self.rules]})
                 for lab, why in self.failed.items()]
        if not rows:
            return pd.DataFrame()
        out = pd.concat(rows, ignore_index=True)
        cols = ["facet", "status"] + [c for c in out.columns if c not in ("facet", "status")]
        return out[cols]

    def plot(self, ncols: int | None = None, *, sharey: bool = True, figsize=None,
             title: str | None = None, max_width: float = PAGE_WIDTH):
        """All facets in one grid Figure, at most `max_width` inches wide (panels per row adapt;
        `ncols` fixes them). Caption names the rule set. For long grids split across figures
        (the 57-hospital grid) use :meth:`pages`."""
        return chart_pages(self.charts, ncols=ncols, sharey=sharey, max_width=max_width,
                           max_rows=None, title=title, caption=self.caption, figsize=figsize)[0]

    def pages(self, *, max_width: float = PAGE_WIDTH, max_rows: int = 4, ncols: int | None = None,
              sharey: bool = True, title: str | None = None) -> list:
        """The facets as compact small multiples wrapped to the page width and split across
        figures of at most `max_rows` rows; returns the list of Figures."""
        return chart_pages(self.charts, ncols=ncols, sharey=sharey, max_width=max_width,
                           max_rows=max_rows, title=title, caption=self.caption)


def grid_shape(n_panels: int, *, max_width: float = PAGE_WIDTH, panel_width: float = 2.4,
               ncols: int | None = None, max_rows: int | None = None) -> tuple[int, int, int]:
    """(columns, rows per page, pages) for `n_panels` small multiples: as many panels of about
    `panel_width` inches as fit in `max_width` (at least 1, never more than the panels), pages
    of at most `max_rows` rows (``None``: one page)."""
    if n_panels < 1:
        raise ValueError("a grid needs at least one panel")
    if not max_width > 0 or not panel_width > 0:
        raise ValueError("max_width and panel_width must be positive")
    cols = ncols if ncols is not None else max(1, int(max_width // panel_width))
    cols = max(1, min(int(cols), n_panels))
    rows_total = math.ceil(n_panels / cols)
    rows = rows_total if max_rows is None else max(1, min(int(max_rows), rows_total))
    return cols, rows, math.ceil(rows_total / rows)


def chart_pages(charts: Mapping[str, ControlChart], *, ncols: int | None = None,
                max_width: float = PAGE_WIDTH, max_rows: int | None = 4, panel_height: float = 1.9,
                sharey: bool = False, title: str | None = None, caption: str | None = None,
                figsize=None) -> list:
    """Compact small multiples of control charts (one panel per label), wrapped to `max_width`
    inches (default the page width, 7.5 in) and split across figures of at most `max_rows`
    rows; each figure carries `title` (with "page i of n") and `caption`. Returns the Figures."""
    import matplotlib.pyplot as plt

    from .plotting import PALETTE, set_theme

    set_theme()
    labels = list(charts)
    cols, rows, n_pages = grid_shape(len(labels), max_width=max_width, ncols=ncols,
                                     max_rows=max_rows)
    per_page = cols * rows
    figs = []
    for page in range(n_pages):
        chunk = labels[page * per_page:(page + 1) * per_page]
        nrows = math.ceil(len(chunk) / cols)
        width = min(max_width, 2.5 * cols) if ncols is None else max_width
        size = figsize or (width, panel_height * nrows + (0.9 if caption else 0.3) + (0.3 if title else 0))
        fig, axes = plt.subplots(nrows, cols, figsize=size, sharey=sharey, squeeze=False)
        for ax, lab in zip(axes.flat, chunk):
            charts[lab].plot(ax=ax, title=str(lab), show_caption=False, compact=True)
            ax.tick_params(labelsize=6)
            ax.set_xlabel("")
        for ax in list(axes.flat)[len(chunk):]:
            ax.set_visible(False)
        top = 1.0
        if title:
            fig.suptitle(title + (f" (page {page + 1} of {n_pages})" if n_pages > 1 else ""),
                         fontsize=10)
            top = 1 - 0.35 / size[1]
        bottom = 0.0
        if caption:
            fig.text(0.01, 0.005, _wrap(caption, int(20 * size[0])), fontsize=6.5, va="bottom",
                     ha="left", color=PALETTE["text"])
            bottom = min(0.6 / size[1], 0.3)
        fig.tight_layout(rect=(0, bottom, 1, top), h_pad=0.6, w_pad=0.4)
        figs.append(fig)
    return figs


# --------------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------------


def _check_frame(df: pd.DataFrame, cols: dict[str, str | None]) -> None:
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"expected a pandas DataFrame, got {type(df).__name__}")  # noqa: TRY004
    for role, col in cols.items():
        if col is not None and col not in df.columns:
            raise ValueError(f"{role} column {col!r} not found in the data frame")
    if len(df) == 0:
        raise ValueError("the data frame is empty: nothing to chart")


def _aggregate(df: pd.DataFrame, chart: str, x: str, y: str, n: str | None) -> pd.DataFrame:
    """One row per x: y statistic, numerator sum, denominator sum, subgroup size, mean, SD."""
    if df[x].isna().any():
        raise ValueError(f"x column {x!r} has {int(df[x].isna().sum())} missing value(s)")
    yv = pd.to_numeric(df[y], errors="coerce")
    bad = yv.isna() & df[y].notna()
    if bad.any():
        raise ValueError(f"y column {y!r} is not numeric (e.g. {df.loc[bad, y].iloc[0]!r})")
    if yv.isna().any():
        first = df.loc[yv.isna(), x].iloc[0]
        raise ValueError(
            f"y column {y!r} has {int(yv.isna().sum())} missing value(s) (first at {x}={first!r});"
            " drop or fill them explicitly before charting"
        )
    work = pd.DataFrame({"x": df[x].to_numpy(), "y": yv.to_numpy(float)})
    if n is not None:
        nv = pd.to_numeric(df[n], errors="coerce")
        if nv.isna().any():
            first = df.loc[nv.isna(), x].iloc[0]
            raise ValueError(f"denominator column {n!r} has missing/non-numeric values (first at {x}={first!r})")
        work["n"] = nv.to_numpy(float)
    g = work.groupby("x", sort=True)
    out = pd.DataFrame(
        {
            "y_sum": g["y"].sum(),
            "y_count": g["y"].count(),
            "y_mean": g["y"].mean(),
            "y_sd": g["y"].std(ddof=1),
        }
    )
    out["n"] = g["n"].sum() if n is not None else np.nan
    if chart == "median":
        out["y_median"] = g["y"].median()
        out["values"] = g["y"].apply(lambda v: np.sort(v.to_numpy(float)))
    out = out.reset_index()
    if chart in _NEEDS_N or (n is not None):
        zero = out["n"] <= 0
        if zero.any():
            raise ValueError(
                f"denominator {n!r} is {out.loc[zero, 'n'].iloc[0]:g} at {x}={out.loc[zero, 'x'].iloc[0]!r};"
                " a subgroup needs a positive denominator"
            )
    if chart in {"p", "pp", "c", "u", "up", "g"} and (work["y"] < 0).any():
        raise ValueError(f"y column {y!r} has negative values; counts must be >= 0")
    if chart in {"p", "pp"}:
        over = out["y_sum"] > out["n"]
        if over.any():
            raise ValueError(
                f"{y!r} exceeds {n!r} at {x}={out.loc[over, 'x'].iloc[0]!r}: a proportion needs"
                " events <= denominator"
            )
    if n is not None:
        out["y"] = out["y_sum"] / out["n"]
    elif chart == "c":
        out["y"] = out["y_sum"]
    elif chart == "s":
        out["y"] = out["y_sd"]
    elif chart == "median":
        out["y"] = out["y_median"]
    else:
        out["y"] = out["y_mean"]
    return out


def _positions(xs: pd.Series, values, what: str) -> list[int]:
    """Positions in the sorted subgroup x values of each requested x value (ValueError if absent)."""
    if values is None:
        return []
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray, pd.Index, pd.Series, set)):
        values = [values]
    out = []
    for v in values:
        hit = np.flatnonzero(_x_equal(xs, v))
        if hit.size == 0:
            raise ValueError(f"{what} value {v!r} is not an x value of the data")
        out.append(int(hit[0]))
    return out


def _x_equal(xs: pd.Series, v) -> np.ndarray:
    if pd.api.types.is_datetime64_any_dtype(xs):
        try:
            v = pd.Timestamp(v)
        except (TypeError, ValueError):
            return np.zeros(len(xs), bool)
    elif isinstance(xs.dtype, pd.PeriodDtype):
        try:
            v = pd.Period(v, freq=xs.dtype.freq)
        except (TypeError, ValueError):
            return np.zeros(len(xs), bool)
    try:
        return (xs == v).to_numpy(bool)
    except TypeError:
        return np.zeros(len(xs), bool)


def _parts_from_spec(df: pd.DataFrame, x: str, agg: pd.DataFrame, part) -> np.ndarray:
    k = len(agg)
    if part is None:
        return np.ones(k, int)
    if isinstance(part, str) and part in df.columns:
        per_x = df.groupby(x, sort=True)[part].nunique(dropna=False)
        if (per_x > 1).any():
            bad = per_x.index[per_x > 1][0]
            raise ValueError(f"part column {part!r} takes several values at {x}={bad!r}")
        labels = df.groupby(x, sort=True)[part].first().to_numpy()
        change = np.r_[True, labels[1:] != labels[:-1]]
        return np.cumsum(change).astype(int)
    if isinstance(part, str):
        # a single x value given as a string break point, or a misspelt column name
        try:
            pos = _positions(agg["x"], [part], "part")
        except ValueError:
            raise ValueError(f"part {part!r} is neither a column nor an x value") from None
    else:
        pos = _positions(agg["x"], part, "part")
    parts = np.ones(k, int)
    for p in sorted(set(pos)):
        if p > 0:
            parts[p:] += 1
    return parts


def _baseline_from_freeze(agg: pd.DataFrame, freeze) -> np.ndarray:
    k = len(agg)
    if freeze is None:
        return np.ones(k, bool)
    hit = np.flatnonzero(_x_equal(agg["x"], freeze))
    if hit.size:
        last = int(hit[0])
    elif isinstance(freeze, (int, np.integer)) and not isinstance(freeze, bool) and 1 <= freeze <= k:
        last = int(freeze) - 1
    else:
        raise ValueError(f"freeze={freeze!r} is neither an x value nor a count between 1 and {k}")
    base = np.zeros(k, bool)
    base[: last + 1] = True
    return base


# --------------------------------------------------------------------------------------------
# Limits per part (unmultiplied scale). Each returns y, cl, lcl, ucl, sigma arrays.
# --------------------------------------------------------------------------------------------


class _Degenerate(ValueError):
    pass


def _screened_amr(values: np.ndarray, screen: bool) -> float:
    """Average moving range, optionally dropping moving ranges above 3.267 * AMR (Nelson 1982),
    as qicharts2 ``qic.i`` does (option qic.screenedmr, TRUE by default since qicharts2 0.7)."""
    mr = np.abs(np.diff(values))
    mr = mr[~np.isnan(mr)]
    if mr.size == 0:
        return np.nan
    amr = mr.mean()
    if screen:
        kept = mr[mr < D4 * amr]
        amr = kept.mean() if kept.size else amr
    return float(amr)


def _limits(chart: str, g: pd.DataFrame, base: np.ndarray, opts: dict) -> tuple:
    k = len(g)
    y = g["y"].to_numpy(float)
    nn = g["n"].to_numpy(float)
    nan = np.full(k, np.nan)
    if chart == "run":
        cl = float(np.median(y[base]))
        return y, np.full(k, cl), nan, nan, nan
    if chart == "i":
        cl = float(y[base].mean())
        amr = _screened_amr(y[base], opts.get("screen_mr", True))
        if not amr > 0:
            raise _Degenerate("all values are identical, so the moving ranges are zero and sigma cannot be estimated")
        sd = amr / D2  # Montgomery eq. 6.33, qicharts2 qic.i
        return y, np.full(k, cl), np.full(k, cl - 3 * sd), np.full(k, cl + 3 * sd), np.full(k, sd)
    if chart == "mr":
        y = np.r_[np.nan, np.abs(np.diff(y))]
        yb = y[base]
        yb = yb[~np.isnan(yb)]
        if yb.size == 0:
            raise _Degenerate("needs at least two points to form a moving range")
        cl = float(yb.mean())
        if not cl > 0:
            raise _Degenerate("all moving ranges are zero")
        # qicharts2 qic.mr: UCL = 3.267 * MR-bar, LCL = 0
        return y, np.full(k, cl), np.zeros(k), np.full(k, D4 * cl), np.full(k, (D4 - 1) * cl / 3)
    if chart in ("xbar", "s"):
        size = g["y_count"].to_numpy(float)
        sd = g["y_sd"].to_numpy(float)
        mean = g["y_mean"].to_numpy(float)
        okb = base & (size > 1)
        if okb.sum() == 0:
            raise _Degenerate("no subgroup in the baseline has two or more values, so no within-subgroup SD")
        var_n = len(np.unique(size)) > 1
        if var_n:  # pooled SD, Montgomery eq. 6.31 (qicharts2 qic.xbar / qic.s)
            sbar = math.sqrt(np.nansum((size[okb] - 1) * sd[okb] ** 2) / np.nansum(size[okb] - 1))
        else:  # Montgomery eq. 6.29
            sbar = float(np.nanmean(sd[okb]))
        if not sbar > 0:
            raise _Degenerate("all within-subgroup standard deviations are zero")
        if chart == "xbar":
            cl = float(np.sum(size[base] * mean[base]) / np.sum(size[base]))  # Montgomery eq. 6.30
            A3 = a3(size)
            return mean, np.full(k, cl), cl - A3 * sbar, cl + A3 * sbar, A3 * sbar / 3
        return sd, np.full(k, sbar), b3(size) * sbar, b4(size) * sbar, sbar * _c5(size) / c4(size)
    if chart in ("p", "pp"):
        cl = float(g["y_sum"].to_numpy()[base].sum() / nn[base].sum())
        if cl == 0:
            raise _Degenerate("all counts are zero, so the centre line is 0 and the limits collapse")
        if cl == 1:
            raise _Degenerate("every unit is an event (proportion 1), so the limits collapse")
        sd = np.sqrt(cl * (1 - cl) / nn)
        if chart == "pp":
            sd = sd * _laney_sigma_z(y[base], cl, sd[base], opts.get("screen_mr", True))
        if opts.get("limits") == "exact":
            n_int = np.round(nn)
            if not np.allclose(nn, n_int):
                raise _Degenerate("exact binomial limits need whole-number denominators")
            lcl = stats.binom.ppf(TAIL_3SIGMA, n_int, cl) / nn
            ucl = stats.binom.ppf(1 - TAIL_3SIGMA, n_int, cl) / nn
            return y, np.full(k, cl), lcl, ucl, sd
        lcl = np.maximum(cl - 3 * sd, 0)
        ucl = np.minimum(cl + 3 * sd, 1)
        return y, np.full(k, cl), lcl, ucl, sd
    if chart in ("u", "up"):
        cl = float(g["y_sum"].to_numpy()[base].sum() / nn[base].sum())
        if cl == 0:
            raise _Degenerate("all counts are zero, so the centre line is 0 and the limits collapse")
        sd = np.sqrt(cl / nn)  # Montgomery eq. 7.19
        if chart == "up":
            sd = sd * _laney_sigma_z(y[base], cl, sd[base], opts.get("screen_mr", True))
        if opts.get("limits") == "exact":  # Poisson counts with mean cl * n
            lcl = stats.poisson.ppf(TAIL_3SIGMA, cl * nn) / nn
            ucl = stats.poisson.ppf(1 - TAIL_3SIGMA, cl * nn) / nn
            return y, np.full(k, cl), lcl, ucl, sd
        return y, np.full(k, cl), np.maximum(cl - 3 * sd, 0), cl + 3 * sd, sd
    if chart == "c":
        cl = float(y[base].mean())
        if cl == 0:
            raise _Degenerate("all counts are zero, so the centre line is 0 and the limits collapse")
        sd = math.sqrt(cl)  # Montgomery eq. 7.17
        if opts.get("limits") == "exact":
            return (y, np.full(k, cl), np.full(k, float(stats.poisson.ppf(TAIL_3SIGMA, cl))),
                    np.full(k, float(stats.poisson.ppf(1 - TAIL_3SIGMA, cl))), np.full(k, sd))
        return y, np.full(k, cl), np.full(k, max(cl - 3 * sd, 0)), np.full(k, cl + 3 * sd), np.full(k, sd)
    if chart == "median":
        return _median_limits(g, base)
    if chart == "g":
        m = float(y[base].mean())
        if m == 0:
            raise _Degenerate("all values are zero, so the geometric mean is 0 and the limits collapse")
        sd = math.sqrt(m * (m + 1))  # geometric distribution, Montgomery p. 319; qicharts2 qic.g
        centre = opts.get("centre", "median")
        cl = float(np.median(y[base])) if centre == "median" else m
        return y, np.full(k, cl), np.full(k, max(m - 3 * sd, 0)), np.full(k, m + 3 * sd), np.full(k, sd)
    raise ValueError(f"unknown chart {chart!r}")


def median_limit_quantiles(n: np.ndarray | float, tail: float = TAIL_3SIGMA) -> tuple[np.ndarray, np.ndarray]:
    """Quantile levels (q_lo, q_hi) of the process distribution F at which the median of `n`
    independent values falls below / above with probability at most `tail`: the median is
    below F^-1(q) only if at least ceil(n/2) values are, so P = P(Bin(n, q) >= ceil(n/2)) =
    I_q(ceil(n/2), n - ceil(n/2) + 1), and above F^-1(q) only if at most floor(n/2) values are
    at or below it, P = P(Bin(n, q) <= floor(n/2)). For even n this bounds the probability for
    the average of the two middle values (conservative)."""
    n = np.asarray(n, dtype=float)
    k = np.ceil(n / 2)
    j = np.floor(n / 2)
    q_lo = stats.beta.ppf(tail, k, n - k + 1)
    q_hi = stats.beta.ppf(1 - tail, j + 1, n - j)
    return q_lo, q_hi


def _median_limits(g: pd.DataFrame, base: np.ndarray) -> tuple:
    """Median chart: the centre is the median of all values of the part's baseline subgroups,
    limits are quantiles of their pooled (empirical) distribution at the levels of
    :func:`median_limit_quantiles` for each subgroup's size: distribution-free probability
    limits with the tail probability of 3 sigma (order statistics, as in nonparametric
    Shewhart charts; Chakraborti, Van der Laan & Bakir 2001, J Qual Technol 33:304)."""
    k = len(g)
    pooled = np.sort(np.concatenate([v for v, b in zip(g["values"], base) if b]))
    if pooled.size < 2:
        raise _Degenerate("needs at least two values for the median chart's limits")
    if pooled[0] == pooled[-1]:
        raise _Degenerate("all values are identical, so the limits collapse")
    cl = float(np.median(pooled))
    q_lo, q_hi = median_limit_quantiles(g["y_count"].to_numpy(float))
    lcl = np.quantile(pooled, np.clip(q_lo, 0, 1))
    ucl = np.quantile(pooled, np.clip(q_hi, 0, 1))
    return g["y"].to_numpy(float), np.full(k, cl), lcl, ucl, (ucl - lcl) / 6


def _laney_sigma_z(yb: np.ndarray, cl: float, sdb: np.ndarray, screen: bool) -> float:
    """Laney (2002) sigma_z: average moving range of the z-scores / 1.128 (qicharts2 qic.pp/qic.up)."""
    z = (yb - cl) / sdb
    if z.size < 2:
        raise _Degenerate("Laney's sigma_z needs at least two subgroups")
    sz = _screened_amr(z, screen) / D2
    if not sz > 0:
        raise _Degenerate("all z-scores are identical, so Laney's sigma_z is zero")
    return sz


# --------------------------------------------------------------------------------------------
# Engine
# --------------------------------------------------------------------------------------------


def _compute_parts(chart, agg, parts, baseline, include, opts) -> pd.DataFrame:
    cols = {c: np.full(len(agg), np.nan) for c in ("yv", "cl", "lcl", "ucl", "sigma")}
    for p in np.unique(parts):
        m = parts == p
        g = agg.loc[m].reset_index(drop=True)
        base = (baseline & include)[m]
        if base.sum() < 2 and not (chart in _SUBGROUPED and base.sum() >= 1):
            raise ValueError(
                f"{CHART_NAMES[chart]}: part {p} has {int(base.sum())} point(s) available for the"
                " centre line and limits; at least 2 are needed"
            )
        try:
            yv, cl, lcl, ucl, sd = _limits(chart, g, base, opts)
        except _Degenerate as e:
            where = f" in part {p}" if len(np.unique(parts)) > 1 else ""
            raise ValueError(f"{CHART_NAMES[chart]}{where}: {e}") from None
        for c, v in zip(("yv", "cl", "lcl", "ucl", "sigma"), (yv, cl, lcl, ucl, sd)):
            cols[c][m] = v
    return pd.DataFrame(cols)


def _shift_threshold(rules: str, chart: str, n_useful: int) -> int:
    if rules == "anhoej":
        return R.longest_run_max(max(n_useful, 1)) + 1
    if rules == "ihi" and chart == "run":
        return 6
    return 8


def _detect_breaks(chart, agg, include, opts, rules, min_points) -> list[int]:
    """Positions where a confirmed sustained shift starts a new part (see module docstring)."""
    k = len(agg)
    breaks, start = [], 0
    while k - start >= 2 * min_points:
        g = agg.iloc[start:].reset_index(drop=True)
        inc = include[start:]
        try:
            yv, cl, *_ = _limits(chart, g, inc.copy(), opts)
        except _Degenerate:
            break
        yv_use = np.where(inc, yv, np.nan)
        n_useful = int((R._sides(yv_use, cl) != 0).sum())
        run = R.first_shift(yv_use, cl, _shift_threshold(rules, chart, n_useful))
        if run is None:
            break
        b = _best_split(chart, g, yv_use, min_points)
        if b is None or not _confirm_shift(chart, g, inc, yv_use, b, run, opts):
            break
        breaks.append(start + b)
        start += b
    return breaks


def _best_split(chart, g, yv, min_points) -> int | None:
    """Change point minimising the weighted within-part sum of squares of the plotted statistic
    (weights: denominators for p/u charts, subgroup sizes for Xbar, 1 otherwise)."""
    if chart in _NEEDS_N:
        w = g["n"].to_numpy(float)
    elif chart in _SUBGROUPED:
        w = g["y_count"].to_numpy(float)
    else:
        w = np.ones(len(g))
    ok = ~np.isnan(yv)
    w = np.where(ok, w, 0.0)
    y = np.where(ok, yv, 0.0)
    cw, cwy, cwy2 = np.cumsum(w), np.cumsum(w * y), np.cumsum(w * y * y)
    best, best_b = np.inf, None
    for b in range(min_points, len(g) - min_points + 1):
        wl, wr = cw[b - 1], cw[-1] - cw[b - 1]
        if wl <= 0 or wr <= 0:
            continue
        syl, syr = cwy[b - 1], cwy[-1] - cwy[b - 1]
        sse = (cwy2[-1] - syl**2 / wl - syr**2 / wr)
        if sse < best - 1e-12:
            best, best_b = sse, b
    return best_b


def _confirm_shift(chart, g, inc, yv, b, run, opts) -> bool:
    """Confirm a level change at ``b``: the rule-breaking run lies mainly on one side of ``b`` and
    the centre lines computed separately before and after ``b`` differ in the run's direction."""
    r0, r1, side = run
    try:
        _, clb, *_ = _limits(chart, g.iloc[:b].reset_index(drop=True), inc[:b].copy(), opts)
        _, cla, *_ = _limits(chart, g.iloc[b:].reset_index(drop=True), inc[b:].copy(), opts)
    except _Degenerate:
        return False
    after = (r1 + 1 - max(b, r0)) >= (min(b, r1 + 1) - r0)  # most of the run is after b
    direction = side if after else -side
    return bool(direction * (cla[0] - clb[0]) > 0)


def _apply_rules(chart, rules, d: pd.DataFrame, runs_rows: list[dict]) -> pd.DataFrame:
    k = len(d)
    flags = {c: np.zeros(k, bool) for c in ("long_run", "shift", "trend", "two_of_three",
                                             "hugging", "runs_count", "runs_signal")}
    d["sigma_signal"] = ((d["y"] > d["ucl"]) | (d["y"] < d["lcl"])).fillna(False).astype(bool)
    parts = d["part"].to_numpy()
    inc_all = d["include"].to_numpy(bool)
    for row in runs_rows:
        idx = np.flatnonzero(parts == row["part"])
        inc = inc_all[idx]
        # excluded points take no part in the runs rules (they become "not useful" gaps)
        yv = np.where(inc, d["y"].to_numpy(float)[idx], np.nan)
        cl = d["cl"].to_numpy(float)[idx]
        sig = d["sigma"].to_numpy(float)[idx]
        if row["n_useful"]:
            flags["long_run"][idx] = R.shift_points(yv, cl, row["longest_run_max"] + 1)
        if row["runs_signal"]:
            flags["runs_signal"][idx] = True
        if rules != "ihi":
            continue
        if chart == "run":
            flags["shift"][idx] = R.shift_points(yv, cl, 6)
            flags["trend"][idx] = R.trend_points(yv, 5)
            if row["runs_count_signal"]:
                flags["runs_count"][idx] = inc
        else:
            flags["shift"][idx] = R.shift_points(yv, cl, 8)
            flags["trend"][idx] = R.trend_points(yv, 6)
            flags["two_of_three"][idx] = R.two_of_three_beyond_2sigma(yv, cl, sig)
            flags["hugging"][idx] = R.hugging_points(yv, cl, sig, 15)
    for c, v in flags.items():
        d[c] = v
    if rules == "anhoej":
        # a crossings signal has no single culprit point: the centre line is marked instead
        d["signal"] = d["sigma_signal"] | (d["runs_signal"] & d["long_run"])
    elif rules == "shewhart":
        d["signal"] = d["sigma_signal"]
    else:
        d["signal"] = d[["sigma_signal", "shift", "trend", "two_of_three", "hugging",
                         "runs_count"]].any(axis=1)
    return d


def _small_subgroup_groups(sizes: np.ndarray, parts: np.ndarray, min_n: float) -> np.ndarray:
    """Group labels that pool consecutive subgroups of a part until each group has >= min_n
    units; a short remainder at the end of a part joins the group before it."""
    groups = np.zeros(len(sizes), int)
    g = -1
    for p in np.unique(parts):
        idx = np.flatnonzero(parts == p)
        first_of_part = g + 1
        acc = min_n  # forces a new group at the part's first subgroup
        for i in idx:
            if acc >= min_n:
                g += 1
                acc = 0.0
            groups[i] = g
            acc += sizes[i]
        if acc < min_n and g > first_of_part:  # remainder joins the previous group of the part
            groups[groups == g] = g - 1
            g -= 1
    return groups


def _pool_small(df: pd.DataFrame, x: str, agg: pd.DataFrame, parts: np.ndarray, sizes: np.ndarray,
                min_n: float) -> tuple[pd.DataFrame, dict, pd.DataFrame]:
    """Remap the x values of `df` so that small subgroups are pooled (see ``min_n``)."""
    groups = _small_subgroup_groups(sizes, parts, min_n)
    xs = agg["x"].to_numpy()
    first = {gr: xs[np.flatnonzero(groups == gr)[0]] for gr in np.unique(groups)}
    mapping = {xv: first[gr] for xv, gr in zip(xs, groups)}
    info = pd.DataFrame({"x": [first[gr] for gr in np.unique(groups)],
                         "x_end": [xs[np.flatnonzero(groups == gr)[-1]] for gr in np.unique(groups)],
                         "pooled": [int((groups == gr).sum()) for gr in np.unique(groups)]})
    out = df.copy()
    out[x] = df[x].map(lambda v: mapping.get(v, v))
    if isinstance(df[x].dtype, (pd.PeriodDtype, pd.DatetimeTZDtype)) or \
            pd.api.types.is_datetime64_any_dtype(df[x]):
        out[x] = out[x].astype(df[x].dtype)
    return out, mapping, info


def _subgroup_sizes(chart: str, agg: pd.DataFrame) -> np.ndarray:
    if chart in _NEEDS_N or (agg["n"].notna().all() and chart not in _SUBGROUPED):
        return agg["n"].to_numpy(float)
    return agg["y_count"].to_numpy(float)


def _make_chart(chart: str, df: pd.DataFrame, x: str, y: str, n: str | None = None, *,
                part=None, freeze=None, exclude=None, multiply: float = 1, rules: str = "anhoej",
                detect_shifts: bool = False, shift_min_points: int = 12, shifts: str = "mark",
                limits: str = "sigma", log: bool = False, floor: float = 1.0, bounds=None,
                min_n: float | None = None, small_n: str = "pool", point: str | None = None,
                **opts) -> ControlChart:
    rules = R.check_rules(rules)
    if chart in _NEEDS_N and n is None:
        raise ValueError(f"{CHART_NAMES[chart]} needs a denominator column n")
    if chart in _NO_N and n is not None:
        raise ValueError(f"{CHART_NAMES[chart]} takes no denominator (got n={n!r})")
    _check_frame(df, {"x": x, "y": y, "n": n})
    if not (isinstance(multiply, (int, float)) and multiply > 0):
        raise ValueError(f"multiply must be a positive number, got {multiply!r}")
    if part is not None and freeze is not None:
        raise ValueError("give either part or freeze, not both (qicharts2 ignores freeze when part is given)")
    if shifts not in ("mark", "new_part"):
        raise ValueError(f"shifts must be 'mark' or 'new_part', got {shifts!r}")
    if detect_shifts and shifts == "new_part" and (part is not None or freeze is not None):
        raise ValueError("detect_shifts with shifts='new_part' finds the parts itself; do not "
                         "combine it with part or freeze (shifts='mark' keeps the parts)")
    if int(shift_min_points) < 2:
        raise ValueError("shift_min_points must be at least 2")
    if limits not in ("sigma", "exact"):
        raise ValueError(f"limits must be 'sigma' or 'exact', got {limits!r}")
    if limits == "exact" and chart not in _EXACT:
        raise ValueError(f"exact probability limits exist for p, u and c charts, not {CHART_NAMES[chart]}")
    if log:
        if chart not in _LOG:
            raise ValueError(f"log scale is for Xbar, I and run charts, not {CHART_NAMES[chart]}")
        if n is not None or multiply != 1:
            raise ValueError("log scale charts take no denominator n and no multiply")
        if not floor > 0:
            raise ValueError(f"floor must be positive on the log scale, got {floor!r}")
        vals = pd.to_numeric(df[y], errors="coerce")
        if (vals.isna() & df[y].notna()).any():
            raise ValueError(f"y column {y!r} is not numeric")
        df = df.assign(**{y: np.log(np.maximum(vals, floor))})
    if bounds is not None:
        if len(bounds) != 2:
            raise ValueError(f"bounds must be (low, high) with None for no bound, got {bounds!r}")
        b_lo, b_hi = bounds
        if b_lo is not None and b_hi is not None and not b_lo < b_hi:
            raise ValueError(f"bounds must be increasing, got {bounds!r}")
    if small_n not in ("pool", "mark"):
        raise ValueError(f"small_n must be 'pool' or 'mark', got {small_n!r}")
    opts["limits"] = limits
    agg = _aggregate(df, chart, x, y, n)
    pool_info = None
    notes: list[str] = []
    if min_n is not None:
        if chart not in _NEEDS_N and chart not in _SUBGROUPED and n is None:
            raise ValueError(f"min_n needs subgroups with a size: a denominator n or an Xbar/S chart, "
                             f"not {CHART_NAMES[chart]} without n")
        if not min_n > 0:
            raise ValueError(f"min_n must be positive, got {min_n!r}")
        sizes = _subgroup_sizes(chart, agg)
        small = sizes < min_n
        if small.any() and small_n == "pool":
            parts0 = _parts_from_spec(df, x, agg, part)
            df, mapping, pool_info = _pool_small(df, x, agg, parts0, sizes, float(min_n))
            if exclude is not None:
                ex = [exclude] if isinstance(exclude, (str, bytes)) or np.isscalar(exclude) else exclude
                exclude = sorted({mapping.get(v, v) for v in ex}, key=str)
            agg = _aggregate(df, chart, x, y, n)
            notes.append(f"{int(small.sum())} subgroup(s) smaller than {min_n:g} pooled with their "
                         "neighbours")
        elif small.any():
            ex = [] if exclude is None else ([exclude] if np.isscalar(exclude) else list(exclude))
            exclude = ex + [v for v in agg.loc[small, "x"] if v not in ex]
            notes.append(f"{int(small.sum())} subgroup(s) smaller than {min_n:g} drawn hollow and left "
                         "out of the limits and runs analysis")
    k = len(agg)
    if k < 2:
        raise ValueError(
            f"{CHART_NAMES[chart]} needs at least 2 subgroups (distinct {x!r} values); got {k}"
        )
    include = np.ones(k, bool)
    include[_positions(agg["x"], exclude, "exclude")] = False
    baseline = _baseline_from_freeze(agg, freeze)
    parts = _parts_from_spec(df, x, agg, part)
    breaks: list[int] = []
    marked: list[int] = []
    if detect_shifts and shifts == "new_part":
        breaks = _detect_breaks(chart, agg, include, opts, rules, int(shift_min_points))
        for b in breaks:
            parts[b:] += 1
    elif detect_shifts:
        for p in np.unique(parts):
            idx = np.flatnonzero(parts == p)
            sub = agg.iloc[idx].reset_index(drop=True)
            marked += [int(idx[0] + b) for b in
                       _detect_breaks(chart, sub, include[idx], opts, rules, int(shift_min_points))]
    lim = _compute_parts(chart, agg, parts, baseline, include, opts)
    if bounds is not None:
        b_lo, b_hi = bounds
        if log:
            b_lo = math.log(b_lo) if b_lo is not None and b_lo > 0 else None
            b_hi = math.log(b_hi) if b_hi is not None and b_hi > 0 else None
        if b_lo is not None:
            lim["lcl"] = np.maximum(lim["lcl"], b_lo)
            lim["ucl"] = np.maximum(lim["ucl"], b_lo)
        if b_hi is not None:
            lim["ucl"] = np.minimum(lim["ucl"], b_hi)
            lim["lcl"] = np.minimum(lim["lcl"], b_hi)
    d = pd.DataFrame(
        {
            "x": agg["x"],
            "y": lim["yv"] * multiply,
            "n": agg["n"] if n is not None else agg["y_count"].astype(float),
            "cl": lim["cl"] * multiply,
            "lcl": lim["lcl"] * multiply,
            "ucl": lim["ucl"] * multiply,
            "sigma": lim["sigma"] * multiply,
            "part": parts,
            "baseline": baseline,
            "include": include,
        }
    )
    runs_rows = []
    for p in np.unique(parts):
        m = (parts == p) & include
        ra = R.runs_analysis(d["y"].to_numpy()[m], d["cl"].to_numpy()[m])
        row = {
            "part": int(p),
            "n_obs": ra.n_obs,
            "n_useful": ra.n_useful,
            "longest_run": ra.longest_run,
            "longest_run_max": ra.longest_run_max,
            "n_crossings": ra.n_crossings,
            "n_crossings_min": ra.n_crossings_min,
            "n_runs": ra.n_runs,
            "runs_signal": ra.anhoej_signal and chart != "mr",  # qicharts2: no runs analysis on MR
            "runs_min": None,
            "runs_max": None,
            "runs_count_signal": False,
        }
        if ra.n_above and ra.n_below:
            lo, hi = R.runs_limits(ra.n_above, ra.n_below)
            row.update(runs_min=lo, runs_max=hi, runs_count_signal=not (lo <= ra.n_runs <= hi))
        runs_rows.append(row)
    d = _apply_rules(chart, rules, d, runs_rows)
    d["shift_start"] = False
    if marked:
        d.loc[marked, "shift_start"] = True
    if log:  # back to the original scale for display; sigma stays on the log scale
        for c in ("y", "cl", "lcl", "ucl"):
            d[c] = np.exp(d[c])
    if pool_info is not None:
        d = d.merge(pool_info, on="x", how="left")
        d["pooled"] = d["pooled"].fillna(1).astype(int)
        d["x_end"] = d["x_end"].where(d["x_end"].notna(), d["x"])
    if chart in {"xbar", "s"} and (agg["y_count"] < 2).any():
        notes.append(
            f"{int((agg['y_count'] < 2).sum())} subgroup(s) have a single value: no limits there"
        )
    n_excl = int((~include).sum())
    if n_excl and not any("drawn hollow" in t for t in notes):
        notes.append(f"{n_excl} point(s) excluded from limits and runs analysis")
    return ControlChart(
        chart=chart,
        rules=rules,
        data=d,
        runs=pd.DataFrame(runs_rows),
        multiply=float(multiply),
        x_name=x,
        y_name=y,
        n_name=n,
        freeze_x=(agg["x"].iloc[int(np.flatnonzero(baseline)[-1])] if freeze is not None else None),
        detected_breaks=[agg["x"].iloc[b] for b in breaks],
        notes=notes,
        detected_shifts=[agg["x"].iloc[b] for b in marked],
        limits="exact" if chart == "median" else limits,
        scale="log" if log else "linear",
        point=point,
    )


# --------------------------------------------------------------------------------------------
# Public chart functions
# --------------------------------------------------------------------------------------------

_COMMON_DOC = """
    Common keyword arguments: ``part``, ``freeze``, ``exclude``, ``multiply``, ``rules``
    (``"anhoej"`` | ``"shewhart"`` | ``"ihi"``), ``detect_shifts``, ``shifts`` (``"mark"`` |
    ``"new_part"``), ``shift_min_points``, ``limits`` (``"sigma"`` | ``"exact"``), ``log``,
    ``floor``, ``bounds``, ``min_n``, ``small_n``, ``point``; see :mod:`analysis.spc`. Returns a
    :class:`ControlChart`."""


def run_chart(df: pd.DataFrame, x: str, y: str, n: str | None = None, **kwargs) -> ControlChart:
    """Run chart: y (or y/n per subgroup) over x with the median as centre line."""
    return _make_chart("run", df, x, y, n, **kwargs)


def i_chart(df: pd.DataFrame, x: str, y: str, n: str | None = None, *, screen_mr: bool = True,
            **kwargs) -> ControlChart:
    """Individuals chart: sigma = average moving range / 1.128 (Montgomery 6.33).

    ``screen_mr`` (default True, as qicharts2's ``qic.screenedmr`` option) drops moving ranges
    above 3.267 x the average moving range before recomputing it (Nelson 1982). Pair with
    :func:`mr_chart` for the moving ranges themselves."""
    return _make_chart("i", df, x, y, n, screen_mr=screen_mr, **kwargs)


def mr_chart(df: pd.DataFrame, x: str, y: str, n: str | None = None, **kwargs) -> ControlChart:
    """Moving-range chart: |y_t - y_(t-1)|, CL = mean MR, UCL = 3.267 MR-bar, LCL = 0.

    No runs analysis (consecutive moving ranges are correlated), as qicharts2."""
    return _make_chart("mr", df, x, y, n, **kwargs)


def xbar_chart(df: pd.DataFrame, x: str, y: str, **kwargs) -> ControlChart:
    """Xbar chart from episode-level rows; a subgroup is all rows with the same x.

    CL = size-weighted grand mean; limits CL +- A3(n_i) * s-bar with s-bar the mean subgroup SD
    (equal sizes) or the pooled SD (unequal sizes), Montgomery eqs. 6.29-6.31, as qicharts2."""
    return _make_chart("xbar", df, x, y, kwargs.pop("n", None), **kwargs)


def s_chart(df: pd.DataFrame, x: str, y: str, **kwargs) -> ControlChart:
    """S chart from episode-level rows: CL = s-bar (or pooled SD), limits B3/B4(n_i) * CL."""
    return _make_chart("s", df, x, y, kwargs.pop("n", None), **kwargs)


def p_chart(df: pd.DataFrame, x: str, y: str, n: str, **kwargs) -> ControlChart:
    """P chart: CL = sum(y)/sum(n); limits CL +- 3 sqrt(CL(1-CL)/n_i), clipped to [0, 1]."""
    return _make_chart("p", df, x, y, n, **kwargs)


def pp_chart(df: pd.DataFrame, x: str, y: str, n: str, *, screen_mr: bool = True,
             **kwargs) -> ControlChart:
    """Laney p' chart: P chart sigma multiplied by sigma_z, the average moving range of the
    z-scores (p_i - CL)/sigma_i divided by 1.128 (Laney 2002; qicharts2 qic.pp). ``screen_mr``
    as in :func:`i_chart` (qicharts2 default True; Laney's paper does not screen)."""
    return _make_chart("pp", df, x, y, n, screen_mr=screen_mr, **kwargs)


def u_chart(df: pd.DataFrame, x: str, y: str, n: str, **kwargs) -> ControlChart:
    """U chart: CL = sum(y)/sum(n); limits CL +- 3 sqrt(CL/n_i), LCL >= 0 (Montgomery 7.19).

    Use ``multiply`` for e.g. events per 1,000 patient days."""
    return _make_chart("u", df, x, y, n, **kwargs)


def up_chart(df: pd.DataFrame, x: str, y: str, n: str, *, screen_mr: bool = True,
             **kwargs) -> ControlChart:
    """Laney u' chart (qicharts2 qic.up); see :func:`pp_chart`."""
    return _make_chart("up", df, x, y, n, screen_mr=screen_mr, **kwargs)


def c_chart(df: pd.DataFrame, x: str, y: str, **kwargs) -> ControlChart:
    """C chart: counts per subgroup; CL = mean count, limits CL +- 3 sqrt(CL), LCL >= 0."""
    return _make_chart("c", df, x, y, kwargs.pop("n", None), **kwargs)


def g_chart(df: pd.DataFrame, x: str, y: str, *, centre: str = "median", **kwargs) -> ControlChart:
    """G chart for opportunities between rare events (e.g. episodes between deaths).

    Limits from the geometric distribution with mean m = mean(y): m +- 3 sqrt(m(m+1)), LCL >= 0
    (Montgomery p. 319). The centre line is the median (qicharts2 default, so that the runs rules
    stay valid for the skewed data) or the mean with ``centre="mean"``."""
    if centre not in ("median", "mean"):
        raise ValueError(f"centre must be 'median' or 'mean', got {centre!r}")
    return _make_chart("g", df, x, y, kwargs.pop("n", None), centre=centre, **kwargs)


def median_chart(df: pd.DataFrame, x: str, y: str, **kwargs) -> ControlChart:
    """Median chart from episode-level rows: each point is the median of its subgroup (all rows
    with the same x); the centre line is the median of all values of the part, and the limits
    are distribution-free probability limits from the part's pooled values (order statistics;
    tail probability 0.00135 each side, as 3 sigma), so they suit skewed times and are robust
    to a few extreme values. See :func:`median_limit_quantiles`."""
    return _make_chart("median", df, x, y, kwargs.pop("n", None), **kwargs)


_FUNCS = {
    "run": run_chart, "i": i_chart, "mr": mr_chart, "xbar": xbar_chart, "s": s_chart,
    "p": p_chart, "pp": pp_chart, "u": u_chart, "up": up_chart, "c": c_chart, "g": g_chart,
    "median": median_chart,
}

for _f in _FUNCS.values():
    _f.__doc__ = (_f.__doc__ or "") + "\n" + _COMMON_DOC


def control_chart(df: pd.DataFrame, chart: str, x: str, y: str, n: str | None = None,
                  **kwargs) -> ControlChart:
    """Dispatch to the chart function named by ``chart`` (``"p"``, ``"i"``, ``"run"`` ...)."""
    if chart not in _FUNCS:
        raise ValueError(f"chart must be one of {sorted(_FUNCS)}, got {chart!r}")
    if n is not None:
        kwargs["n"] = n
    return _FUNCS[chart](df, x=x, y=y, **kwargs)


def facet_charts(df: pd.DataFrame, chart: str, facet: str, *, x: str, y: str,
                 n: str | None = None, labels: Mapping[Any, str] | None = None,
                 **kwargs) -> FacetedCharts:
    """One chart per value of ``facet`` (e.g. site), as small multiples.

    ``labels`` maps facet values to the names shown (e.g. pseudonyms for the collaborative
    report); when given, every facet value must have a label and labels must be unique, so a real
    site name can never slip through. Facets whose chart cannot be computed are reported in
    ``FacetedCharts.failed`` with the reason instead of aborting the whole call."""
    if chart not in _FUNCS:
        raise ValueError(f"chart must be one of {sorted(_FUNCS)}, got {chart!r}")
    _check_frame(df, {"facet": facet, "x": x, "y": y, "n": n})
    if df[facet].isna().any():
        raise ValueError(f"facet column {facet!r} has missing values")
    values = sorted(df[facet].unique(), key=lambda v: str(v))
    if labels is not None:
        missing = [v for v in values if v not in labels]
        if missing:
            raise ValueError(f"labels has no entry for {len(missing)} {facet} value(s), e.g. {missing[0]!r}")
        shown = [labels[v] for v in values]
        if len(set(shown)) != len(shown):
            raise ValueError("labels must be unique per facet value")
        order = sorted(values, key=lambda v: str(labels[v]))
    else:
        order = values
    charts, failed = {}, {}
    rules = R.check_rules(kwargs.get("rules", "anhoej"))
    for v in order:
        lab = str(labels[v]) if labels is not None else str(v)
        sub = df.loc[df[facet] == v]
        try:
            charts[lab] = control_chart(sub, chart, x, y, n, **kwargs)
        except ValueError as e:
            failed[lab] = str(e)
    return FacetedCharts(chart=chart, rules=rules, facet=facet, charts=charts, failed=failed)


# --------------------------------------------------------------------------------------------
# Plot helpers
# --------------------------------------------------------------------------------------------


def _plot_x(x: pd.Series):
    if isinstance(x.dtype, pd.PeriodDtype):
        return x.dt.to_timestamp().reset_index(drop=True)
    if pd.api.types.is_datetime64_any_dtype(x):
        return x.reset_index(drop=True)
    if pd.api.types.is_numeric_dtype(x):
        return x.to_numpy(float)
    return np.arange(len(x), dtype=float)


def _mid(xs, i: int):
    a, b = (xs[i - 1], xs[i]) if isinstance(xs, np.ndarray) else (xs.iloc[i - 1], xs.iloc[i])
    return a + (b - a) / 2


def _fmt_x(v) -> str:
    if isinstance(v, pd.Timestamp):
        return v.strftime("%Y-%m-%d") if (v.hour or v.minute) == 0 else str(v)
    return str(v)


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


__all__ = [
    "CHART_NAMES",
    "PAGE_WIDTH",
    "TAIL_3SIGMA",
    "ControlChart",
    "FacetedCharts",
    "a3",
    "b3",
    "b4",
    "c4",
    "c_chart",
    "chart_pages",
    "control_chart",
    "facet_charts",
    "g_chart",
    "grid_shape",
    "i_chart",
    "median_chart",
    "median_limit_quantiles",
    "mr_chart",
    "p_chart",
    "pp_chart",
    "run_chart",
    "s_chart",
    "u_chart",
    "up_chart",
    "xbar_chart",
]

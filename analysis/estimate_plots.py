"""Figures drawn from the results store: one producer per report figure.

Each ``*_figure`` function reads the :class:`analysis.results.ResultsStore` (never the data) and
returns a :class:`analysis.figures.ReportFigure`: the matplotlib Figure with its stable name,
caption, alt text (numbers from the store), ``safe`` flag and provenance, ready for
:func:`analysis.figures.register_report_figure` (which displays it and exports it once). The
report notebooks and ``ipso publish`` call the same functions, so each figure has one producer.

* :func:`primary_estimates_figure` -- forest plot of every estimand's primary estimate;
* :func:`sensitivity_figure` -- the primary estimate next to its sensitivity analyses;
* :func:`site_effects_figure` -- hospitals' (partially pooled) effects under pseudonyms;
* :func:`event_study_figure` -- leads (placebo) and lags of the primary imputation estimator;
* :func:`funnel_figure` -- risk-adjusted mortality by hospital (O/E rows of the store);
* :func:`curves_figure` -- survival / cumulative incidence curves with bands;
* :func:`calibration_figure` -- the case-mix model's calibration by decile.

The supporting rows (event study, funnel, curves, model fit) are the store's ``component``
rows (:data:`analysis.results.COMPONENTS`); a store without them raises ``ValueError`` naming
what is missing, which a report shows as "not estimable".

:func:`forest_plot` is the generic, legible forest plot behind the first three: labels wrapped,
log-ratio axis clipped to the data (intervals running past it end in an arrow), estimates and
intervals printed in a column on the right.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from .figures import ReportFigure
from .plotting import PALETTE, set_theme

__all__ = ["calibration_figure", "curves_figure", "event_study_figure", "forest_plot",
           "funnel_figure", "primary_estimates_figure", "sensitivity_figure",
           "site_effects_figure"]

#: Widest figure (inches): a journal's double column / the report's page width.
PAGE_WIDTH = 7.0
_PROVENANCE = "results store (estimates and intervals; no counts)"


def _slug(text: str, limit: int = 40) -> str:
    """'30-day sepsis-attributable mortality' -> '30-day-sepsis-attributable-mortality'."""
    import re

    s = re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-")
    return s[:limit].rstrip("-") or "figure"


def _label(store: Any, estimand: str) -> str:
    try:
        return store.plan.get(estimand, "collaborative").label
    except Exception:  # noqa: BLE001 - a plan without this estimand: its words
        return estimand.replace("_", " ")


def _ci_text(est: float, lo: float, hi: float) -> str:
    from .tables import format_estimate_ci

    return format_estimate_ci(est, lo, hi)


def forest_plot(rows: pd.DataFrame, *, label: str = "label", estimate: str = "estimate",
                lower: str = "lower", upper: str = "upper", kind: str | None = None,
                group: str | None = None, xlabel: str = "Ratio (log scale)",
                title: str | None = None, clip: tuple[float, float] = (0.2, 5.0),
                width: float = PAGE_WIDTH, reference: float = 1.0, text_column: bool = True,
                wrap: int = 42):
    """A forest plot of ratios, one row per line of `rows` (top to bottom), and return the Figure.

    `kind` (optional column): "primary" (filled square), "sensitivity" (circle), "descriptive"
    (open diamond, no interval), "pooled" (diamond); missing estimates are written as "not
    estimable". `group`: column whose changes start a bold heading line. The x axis (log) spans
    the data within `clip`; an interval beyond it ends in an arrow at the edge. `text_column`:
    print "estimate (lower to upper)" at the right of each row.
    """
    import matplotlib.pyplot as plt

    set_theme()
    d = rows.reset_index(drop=True)
    lines: list[tuple[str, Any]] = []  # ("group", text) or ("row", index)
    current = None
    for i in range(len(d)):
        g = d[group].iloc[i] if group else None
        if group and g != current:
            lines.append(("group", str(g)))
            current = g
        lines.append(("row", i))
    n = len(lines)
    # fit a page (about 9 in of figure): rows get thinner and labels smaller as rows are added
    row = min(0.30, max(0.13, 8.2 / max(n, 1)))
    fs = 8 if row >= 0.25 else (7 if row >= 0.18 else 6)
    height = 0.9 + row * n + (0.35 if title else 0)
    fig, ax = plt.subplots(figsize=(width, height))
    vals = np.concatenate([pd.to_numeric(d[c], errors="coerce").to_numpy(float)
                           for c in (estimate, lower, upper)])
    vals = vals[np.isfinite(vals) & (vals > 0)]
    lo, hi = (float(vals.min()), float(vals.max())) if len(vals) else (0.5, 2.0)
    lo, hi = max(min(lo, reference) / 1.15, clip[0]), min(max(hi, reference) * 1.15, clip[1])
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(n - 0.5, -0.5)
    ax.axvline(reference, color=PALETTE["limit"], ls="--", lw=1, zorder=1)
    ticks, ylabels = [], []
    style = {"primary": dict(marker="s", s=34, color=PALETTE["fitted"]),
             "sensitivity": dict(marker="o", s=26, color=PALETTE["observed"]),
             "pooled": dict(marker="D", s=40, color=PALETTE["fitted"]),
             "descriptive": dict(marker="D", s=30, facecolors="none", edgecolors=PALETTE["limit"])}
    for y, (what, ref) in enumerate(lines):
        ticks.append(y)
        if what == "group":
            ylabels.append(textwrap.shorten(ref, width=wrap + 10, placeholder="..."))
            continue
        r = d.iloc[ref]
        ylabels.append("\n".join(textwrap.wrap(str(r[label]), wrap)[:2]))
        e, a, b = (float(pd.to_numeric(r.get(c), errors="coerce")) if pd.notna(r.get(c)) else math.nan
                   for c in (estimate, lower, upper))
        k = str(r[kind]) if kind and pd.notna(r.get(kind)) else "primary"
        if not (np.isfinite(e) and e > 0):
            ax.text(math.sqrt(lo * hi), y, "not estimable", ha="center", va="center", fontsize=fs,
                    color=PALETTE["text"], style="italic")
            continue
        if np.isfinite(a) and np.isfinite(b) and a > 0:
            aa, bb = max(a, lo), min(b, hi)
            ax.plot([aa, bb], [y, y], color=style.get(k, style["primary"]).get("color", PALETTE["limit"]),
                    lw=1.4, zorder=2, solid_capstyle="butt")
            if a < lo:
                ax.annotate("", xy=(lo, y), xytext=(lo * 1.12, y),
                            arrowprops=dict(arrowstyle="->", lw=1.2, color=PALETTE["text"]))
            if b > hi:
                ax.annotate("", xy=(hi, y), xytext=(hi / 1.12, y),
                            arrowprops=dict(arrowstyle="->", lw=1.2, color=PALETTE["text"]))
        st = dict(style.get(k, style["primary"]))
        st["s"] = st["s"] * (1.0 if fs == 8 else 0.6)
        ax.scatter([min(max(e, lo), hi)], [y], zorder=3, **st)
        if text_column:
            ax.annotate(_ci_text(e, a, b), xy=(1.02, y), xycoords=("axes fraction", "data"),
                        va="center", ha="left", fontsize=fs)
    ax.set_yticks(ticks, ylabels, fontsize=fs)
    for t, (what, _) in zip(ax.get_yticklabels(), lines):
        if what == "group":
            t.set_fontweight("bold")
    ax.grid(axis="y", visible=False)
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    cand = [0.1, 0.2, 0.25, 0.33, 0.5, 0.67, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 10.0]
    inside = [c for c in cand if lo <= c <= hi]
    if len(inside) > 7:
        inside = [c for c in inside if c in (0.1, 0.2, 0.25, 0.5, 1.0, 2.0, 4.0, 5.0, 10.0)]
    kept: list[float] = []
    for c in sorted(set(inside) | {reference}):  # no two labels closer than a ratio of 1.35
        if c == reference:
            kept = [k for k in kept if reference / k >= 1.35]
            kept.append(c)
        elif not kept or c / kept[-1] >= 1.35:
            kept.append(c)
    inside = kept
    ax.xaxis.set_major_locator(FixedLocator(inside or [reference]))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel(xlabel, fontsize=9)
    ax.tick_params(axis="x", labelsize=8)
    if title:
        ax.set_title(title, fontsize=10, loc="left")
    if text_column:
        ax.annotate("Estimate (95% CI)", xy=(1.02, 1.0), xycoords="axes fraction", va="bottom",
                    ha="left", fontsize=8, fontweight="bold")
    fig.tight_layout()
    return fig


def _effects(store: Any, scope: str) -> pd.DataFrame:
    return store.rows(scope=scope)


def _alt_list(d: pd.DataFrame, label: str = "label") -> str:
    parts = []
    for _, r in d.iterrows():
        if r["status"] == "ok" and np.isfinite(r["estimate"]):
            parts.append(f"{r[label]} {_ci_text(r['estimate'], r['lower'], r['upper'])}")
        else:
            parts.append(f"{r[label]} not estimable")
    return "; ".join(parts)


def primary_estimates_figure(store: Any, *, scope: str = "collaborative",
                             name: str = "primary-estimates") -> ReportFigure:
    """Forest plot of the primary estimate of every estimand at `scope` (plan order, secondary
    estimands right after the one they qualify)."""
    from .tables import primary_rows

    rows = []
    for e, r in primary_rows(store, scope):
        rows.append({"label": e.label, "estimate": r["estimate"], "lower": r["lower"],
                     "upper": r["upper"], "status": r["status"],
                     "kind": "sensitivity" if e.secondary_to else "primary"})
    d = pd.DataFrame(rows)
    if d.empty:
        raise ValueError("the results store holds no primary estimate for this scope")
    fig = forest_plot(d, kind="kind", xlabel="Ratio with IPSO vs without IPSO (log scale; 1 = no change)")
    where = "all hospitals" if scope == "collaborative" else "this hospital"
    caption = ("Primary estimate of every estimand with its 95% confidence interval (" + where +
               "), as ratios with IPSO vs without IPSO, 12 months after go-live unless stated "
               "otherwise; squares: main estimands, circles: secondary estimands (all recognised "
               "episodes). Intervals beyond the axis end in an arrow.")
    alt = (f"Forest plot of {len(d)} ratios on a log scale with a dashed line at 1 (no change): "
           + _alt_list(d) + ".")
    return ReportFigure(fig, name, caption, alt, safe=True, provenance=_PROVENANCE)


def sensitivity_figure(store: Any, *, scope: str = "collaborative",
                       estimands: Sequence[str] | None = None,
                       name: str = "sensitivity-analyses") -> ReportFigure:
    """The primary estimate of each estimand with sensitivity analyses, next to each sensitivity
    analysis (and the descriptive crude ratio, without interval), grouped by estimand."""
    from .tables import spec_label

    plan = store.plan
    level = "collaborative" if scope == "collaborative" else "site"
    order = {"primary": 0, "sensitivity": 1, "descriptive": 2}
    rows = []
    for e in plan.at_level(level):
        if estimands is not None and e.id not in estimands:
            continue
        r = _effects(store, scope)
        r = r[r["estimand"] == e.id]
        if r.empty or not (r["role"] == "sensitivity").any():
            continue
        r = r.assign(_o=r["role"].map(order).fillna(3)).sort_values("_o", kind="mergesort")
        for _, x in r.iterrows():
            lab = spec_label(str(x["spec"]), str(x["estimator"]))
            variant = str(x.get("variant") or "")
            if variant and variant != "nan":
                lab += f" ({variant})"
            rows.append({"group": e.label, "label": lab, "estimate": x["estimate"],
                         "lower": x["lower"], "upper": x["upper"], "status": x["status"],
                         "kind": x["role"]})
    d = pd.DataFrame(rows)
    if d.empty:
        raise ValueError("the results store holds no sensitivity analysis for this scope")
    fig = forest_plot(d, kind="kind", group="group",
                      xlabel="Ratio with IPSO vs without IPSO (log scale; 1 = no change)")
    caption = ("Primary estimate (squares) and sensitivity analyses (circles) with 95% "
               "confidence intervals; open diamonds: crude before/after ratios (descriptive, "
               "no interval).")
    alt = (f"Forest plot grouped by estimand, {len(d)} rows on a log scale with a line at 1: "
           + "; ".join(f"{g}: " + _alt_list(x) for g, x in d.groupby("group", sort=False)) + ".")
    return ReportFigure(fig, name, caption, alt, safe=True, provenance=_PROVENANCE)


def site_effects_figure(store: Any, labels: Mapping[str, str], *, estimand: str = "sam30",
                        name: str | None = None) -> ReportFigure:
    """Each hospital's primary effect of `estimand` (partially pooled) under its pseudonym
    (`labels`: site id -> label shown; required for every hospital), ordered by label, with the
    collaborative's primary estimate at the bottom."""
    f = store.rows(estimand, level="site", role="primary")
    if f.empty:
        raise ValueError(f"the results store holds no hospital estimates of {estimand!r}")
    ids = f["scope"].astype(str)
    missing = sorted(set(ids) - set(map(str, labels)))
    if missing:
        raise ValueError(f"no label supplied for {len(missing)} hospital(s)")
    d = f.assign(label=ids.map({str(k): v for k, v in labels.items()}).to_numpy())
    d = d.iloc[sorted(range(len(d)), key=lambda i: (len(d["label"].iloc[i]), d["label"].iloc[i]))]
    d = d.assign(kind="sensitivity")
    label = store.plan.get(estimand, "site").label
    rows = [d[["label", "estimate", "lower", "upper", "status", "kind"]]]
    try:
        c = store.primary(estimand, "collaborative")
        rows.append(pd.DataFrame([{"label": "All hospitals (primary)", "estimate": c["estimate"],
                                   "lower": c["lower"], "upper": c["upper"], "status": c["status"],
                                   "kind": "pooled"}]))
    except KeyError:
        pass
    d = pd.concat(rows, ignore_index=True)
    fig = forest_plot(d, kind="kind", xlabel=f"{label}: ratio 12 months after go-live (log scale)",
                      text_column=len(d) <= 40)
    k_ok = int(((d["kind"] != "pooled") & (d["status"] == "ok")).sum())
    k_all = int((d["kind"] != "pooled").sum())
    caption = (f"{label}: each hospital's estimate, partially pooled toward all hospitals "
               f"(empirical Bayes), with 95% intervals; hospitals under pseudonyms. {k_ok} of "
               f"{k_all} hospitals had enough information for an own estimate. Bottom: the "
               "collaborative's primary estimate.")
    alt = (f"Forest plot of {k_all} hospitals' ratios under pseudonyms and the collaborative "
           f"estimate, log scale, line at 1: " + _alt_list(d) + ".")
    return ReportFigure(fig, name or f"site-effects-{_slug(label)}", caption, alt,
                        safe=True, provenance=_PROVENANCE + "; hospitals under pseudonyms")


def _component(store: Any, component: str) -> pd.DataFrame:
    f = store.frame
    if "component" not in f:
        raise ValueError(f"the results store has no {component!r} rows (it predates supporting "
                         "results: re-run ipso estimate)")
    return f[f["component"] == component]


def event_study_figure(store: Any, *, estimand: str = "sam30", scope: str = "collaborative",
                       name: str | None = None) -> ReportFigure:
    """Event study of `estimand`'s primary fit: leads (placebo months before go-live) and lags
    (months after), each a ratio of observed to imputed counterfactual with its 95% interval; the
    phase-in shaded; the pre-trend test in the caption."""
    import matplotlib.pyplot as plt

    pts = _component(store, "event_time")
    pts = pts[(pts["estimand"] == estimand) & (pts["scope"] == scope)].sort_values("time_point")
    if pts.empty:
        raise ValueError(f"the results store holds no event-study points of {estimand!r}")
    set_theme()
    e = store.plan.get(estimand, "collaborative" if scope == "collaborative" else "site")
    transition = e.primary.transition
    fig, ax = plt.subplots(figsize=(PAGE_WIDTH, 3.6))
    t = pts["time_point"].to_numpy(float)
    est, lo, hi = (pts[c].to_numpy(float) for c in ("estimate", "lower", "upper"))
    ax.axhline(1.0, color=PALETTE["limit"], lw=1)
    ax.axvline(-0.5, color=PALETTE["limit"], ls="--", lw=1)
    if transition:
        ax.axvspan(-0.5, transition - 0.5, color=PALETTE["limit"], alpha=0.12, lw=0,
                   label=f"phase-in ({transition} months)")
    lead = t < 0
    for mask, colour, lab in ((lead, PALETTE["pre"], "before go-live (placebo)"),
                              (~lead, PALETTE["post"], "after go-live")):
        ok = mask & np.isfinite(est)
        if ok.any():
            ax.errorbar(t[ok], est[ok], yerr=[est[ok] - lo[ok], hi[ok] - est[ok]], fmt="o",
                        ms=3.5, lw=1, capsize=0, color=colour, label=lab)
    finite = np.r_[lo[np.isfinite(lo)], hi[np.isfinite(hi)]]
    if len(finite):
        ymin, ymax = np.quantile(finite, [0.02, 0.98])
        ax.set_ylim(max(0.0, min(ymin, 0.9) * 0.95), max(ymax, 1.1) * 1.05)
    ax.set_xlabel("Months since go-live")
    ax.set_ylabel("Observed / expected without IPSO")
    ax.set_title(f"{e.label}: event study", loc="left", fontsize=10)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    test = _component(store, "pretrend_test")
    test = test[(test["estimand"] == estimand) & (test["scope"] == scope)]
    words = ""
    if len(test) and np.isfinite(test["p_value"].iloc[0]):
        from .tables import format_p

        r = test.iloc[0]
        p = format_p(r["p_value"])
        words = (f" Joint test that every month before go-live is 1: p {p}" if p.startswith(("<", ">"))
                 else f" Joint test that every month before go-live is 1: p = {p}") + "."
    caption = (f"{e.label}: ratio of observed to imputed counterfactual by month since go-live "
               "with 95% intervals, from the primary model. Months before go-live are placebo "
               "estimates (they should scatter around 1); the shaded months are the phase-in."
               + words)
    lags = pts[pts["time_point"] >= 0]
    alt = (f"Event-study plot of {len(pts)} monthly ratios from month {int(t.min())} to "
           f"{int(t.max())} around go-live with 95% intervals and a line at 1; "
           f"{int((t < 0).sum())} months before go-live, {len(lags)} after."
           + (f" At month {int(e.primary.time_point)}: "
              + _ci_text(*lags.loc[lags['time_point'] == e.primary.time_point,
                                   ['estimate', 'lower', 'upper']].iloc[0].to_numpy(float)) + "."
              if (lags["time_point"] == e.primary.time_point).any() else "") + words)
    return ReportFigure(fig, name or f"event-study-{_slug(e.label)}", caption, alt,
                        safe=True, provenance=_PROVENANCE)


def funnel_figure(store: Any, labels: Mapping[str, str], *, estimand: str = "sam30",
                  highlight: str | None = None, name: str | None = None) -> ReportFigure:
    """Funnel plot of risk-adjusted mortality by hospital from the store's ``oe`` rows
    (:meth:`analysis.results.ResultsStore.funnel_plot_data`: O/E to 2 decimals, expected deaths
    rounded to 5, as published), hospitals under pseudonyms; `highlight`: a label to ring (the
    viewer's hospital in a site report)."""
    from .riskadj import funnel_plot

    if not hasattr(store, "funnel_plot_data"):
        raise ValueError("the results store has no hospital comparison (re-run ipso estimate)")
    pdata = store.funnel_plot_data(estimand, labels=dict(labels))
    ax = funnel_plot(pdata, highlight=highlight, label_outliers=True)
    fig = ax.get_figure()
    pts = pdata.points
    flagged = int((pts["flag"].astype(str) != "").sum())
    caption = (f"Observed/expected deaths after go-live by hospital against expected deaths "
               f"(rounded to 5), with 95% and 99.8% limits around the collaborative's O/E of "
               f"{pdata.target:.2f}" + (" (widened for over-dispersion)" if pdata.adjusted else "")
               + ". Hospitals under pseudonyms.")
    alt = (f"Funnel plot of {len(pts)} hospitals' observed to expected death ratios against "
           f"expected deaths, centred on {pdata.target:.2f}; {flagged} hospital(s) outside the "
           "99.8% limits.")
    return ReportFigure(fig, name or f"funnel-{_slug(_label(store, estimand))}", caption, alt,
                        safe=True, provenance="results store, publishable O/E rows (rounded); "
                        "hospitals under pseudonyms")


def curves_figure(store: Any, *, estimand: str = "sam30", scope: str = "collaborative",
                  min_cell: int = 11, name: str | None = None) -> ReportFigure:
    """Survival / cumulative incidence curves (the store's ``curve`` rows, publishable points
    only) before and after go-live with 95% bands, one panel per quantity, each on its own y
    scale (mortality is read near 0, not squashed under a 0-100% axis)."""
    import matplotlib.pyplot as plt

    _component(store, "curve")
    pub = store.publishable(min_cell)
    c = pub[(pub["component"] == "curve") & (pub["estimand"] == estimand) & (pub["scope"] == scope)]
    if c.empty:
        raise ValueError(f"the results store holds no publishable curve points of {estimand!r}")
    set_theme()
    quantities = list(dict.fromkeys(c["quantity"]))
    fig, axes = plt.subplots(1, len(quantities), figsize=(PAGE_WIDTH, 3.2), squeeze=False)
    for ax, q in zip(axes[0], quantities):
        g = c[c["quantity"] == q]
        for period, colour in (("before go-live", PALETTE["pre"]), ("after go-live", PALETTE["post"])):
            h = g[g["period"] == period].sort_values("x")
            if h.empty:
                continue
            x = np.r_[0.0, h["x"].to_numpy(float)]
            start = 100.0 if "survival" in q else 0.0
            y = np.r_[start, 100 * h["estimate"].to_numpy(float)]
            ax.step(x, y, where="post", color=colour, lw=1.4, label=period)
            lo = np.r_[start, 100 * h["lower"].to_numpy(float)]
            hi = np.r_[start, 100 * h["upper"].to_numpy(float)]
            ax.fill_between(x, lo, hi, step="post", color=colour, alpha=0.18, lw=0)
        ax.set_title(q[:1].upper() + q[1:], fontsize=9)
        ax.set_xlabel("Days from T0", fontsize=8)
        ax.set_ylabel("%", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    fig.tight_layout()
    caption = ("Kaplan-Meier sepsis-attributable survival and cumulative incidence of discharge "
               "alive and of death in hospital (competing risks), before and after go-live, with "
               "pointwise 95% bands; each panel on its own scale. Points resting on small numbers "
               "of events are not drawn.")
    alt = (f"{len(quantities)} step-curve panels ({', '.join(quantities)}) comparing before and "
           "after go-live over the first 30 days from T0, with shaded 95% bands.")
    return ReportFigure(fig, name or f"curves-{_slug(_label(store, estimand))}", caption, alt,
                        safe=True, provenance="results store, publishable curve points")


def calibration_figure(store: Any, *, estimand: str = "sam30", min_cell: int = 11,
                       name: str | None = None) -> ReportFigure:
    """Calibration of the case-mix model: observed against mean predicted risk (per 100
    episodes) by decile of predicted risk, with the c-statistic in the caption. ``safe`` only
    when no decile's observed events are between 1 and ``min_cell - 1`` (an observed rate of a
    decile of known size would reveal its count)."""
    import matplotlib.pyplot as plt

    fit = _component(store, "model_fit")
    fit = fit[fit["estimand"] == estimand]
    cal = fit[fit["quantity"] == "calibration"].sort_values("x")
    if cal.empty:
        raise ValueError(f"the results store holds no calibration of the {estimand!r} case-mix model")
    set_theme()
    fig, ax = plt.subplots(figsize=(3.6, 3.6))
    x, y = cal["x"].to_numpy(float), cal["estimate"].to_numpy(float)
    ax.plot(x, y, "o-", color=PALETTE["observed"], ms=4, lw=1)
    top = float(np.nanmax(np.r_[x, y])) * 1.08 if len(x) else 1.0
    ax.plot([0, top], [0, top], ls="--", color=PALETTE["limit"], lw=1)
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel("Predicted risk (per 100 episodes)", fontsize=8)
    ax.set_ylabel("Observed (per 100 episodes)", fontsize=8)
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    cstat = fit[fit["quantity"] == "c-statistic"]
    words = ""
    if len(cstat) and np.isfinite(cstat["estimate"].iloc[0]):
        r = cstat.iloc[0]
        words = f" c-statistic {_ci_text(r['estimate'], r['lower'], r['upper'])}."
    caption = ("Calibration of the case-mix model on baseline episodes: observed against mean "
               "predicted risk by tenth of predicted risk; dashed: perfect calibration." + words)
    alt = (f"Calibration plot of {len(cal)} points of observed against predicted risk per 100 "
           "episodes near the diagonal line of perfect calibration." + words)
    ev = pd.to_numeric(cal["events"], errors="coerce")
    safe = bool(((ev == 0) | (ev >= min_cell)).all())
    return ReportFigure(fig, name or f"calibration-{_slug(_label(store, estimand))}", caption, alt,
                        safe=safe, provenance="results store, case-mix model fit by decile"
                        + ("" if safe else " (a decile rests on a small count: not for publication)"))

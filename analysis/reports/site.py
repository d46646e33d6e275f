"""The hospital (site) report: every number, sentence and figure read from the results store.

The notebook ``notebooks/site_report.ipynb`` is one call per cell into this module:
:func:`load` (the hospital's rows of the run's results store and its suppressed monthly
aggregates), then :func:`header`, :func:`summary` (the one-page summary a QI lead reads first),
:func:`effects`, :func:`its_figure`, :func:`control_charts`, :func:`survival`,
:func:`table_one`, :func:`funnel`, :func:`data_quality`, :func:`methods` and :func:`footer`.
Each displays its output and turns a data problem into a plain "not estimable" note; none
raises for data reasons.

The summary (:func:`summary_parts`) says three things, all from the store
(:mod:`analysis.results`):

1. **Mortality.** The hospital's primary effect on 30-day sepsis-attributable mortality
   (``site_eb``: empirical Bayes, partially pooled toward all hospitals), worded by
   :mod:`analysis.wording` from the estimate, its interval and its role ("no clear change"
   when the interval includes 1), per child with the same case mix. A hospital below the plan's
   too-little-information rule (:data:`analysis.pooling.TOO_LITTLE_INFORMATION_RULE`) gets
   "too few deaths to estimate this hospital's own effect", the collaborative effect and how
   the hospital compares instead. The unpooled own-series estimate (``site_its``) appears only
   in the effects table, labelled as a secondary estimate.
2. **Key processes** (screening, huddle, order set, bundle, minutes to bolus and antibiotic):
   the hospital's level after go-live next to all hospitals' (crude values of the store's
   ``summary`` rows, blanked where small counts lie behind them) and the change at go-live at
   the hospital (its own series, the plan's site primary for processes) and across all
   hospitals, each with its interval.
3. **Hospital comparison** (funnel): the hospital's risk-adjusted mortality after go-live
   relative to the collaborative's (the store's ``oe`` rows), whether it lies within the 95% and
   99.8% limits, and how many hospitals chance alone would put outside the 99.8% limits.

Privacy. Figures are drawn from the store's publishable rows
(:meth:`analysis.results.ResultsStore.publishable`) or from aggregates whose points resting on
a count from 1 to ``min_cell - 1`` are blanked (:func:`analysis.spc_choice.
suppress_small_points`); control charts are published as raster images (their limits vary with
the subgroup size, from which sizes could be read back off exact vector coordinates); figures
from publishable store rows as marked SVG. Text never carries a count from 1 to
``min_cell - 1`` (reasons of not-estimable results never carry counts at all). No per-hospital
number of another hospital is shown; other hospitals appear only as pseudonyms in the funnel.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .. import privacy
from .. import reporting as rp
from .. import wording as W

__all__ = [
    "MORTALITY",
    "PROCESSES",
    "SiteReport",
    "SiteSummary",
    "chart_rules",
    "control_chart_set",
    "control_charts",
    "data_quality",
    "effects",
    "effects_table",
    "footer",
    "funnel",
    "header",
    "its_figure",
    "load",
    "methods",
    "process_table",
    "summary",
    "summary_markdown",
    "summary_parts",
    "survival",
    "table_one",
]

#: The mortality estimand of the summary.
MORTALITY = "sam30"
#: Key processes of the summary, in order (store estimand ids).
PROCESSES: tuple[str, ...] = ("screen_positive", "huddle", "order_set", "bundle", "bolus_minutes",
                              "antibiotic_minutes")
#: Estimands whose hospital-level monthly paths (``counterfactual`` rows) make the ITS figure.
ITS_ESTIMANDS: tuple[str, ...] = ("sam30", "recognition", "hospital_days")
#: Periods the control charts may pool months into (the coarsest when counts are small).
CHART_PERIODS: tuple[int, ...] = (1, 3, 6, 12)
#: Control-chart points aim at this many times the smallest publishable count of expected
#: events (and non-events, and times) per point, so that few points rest on a count that must be
#: blanked (a Poisson count with mean 22 is below 11 about 1% of the time; with mean 11, 44%).
CHART_TARGET_FACTOR: float = 2.0
#: A chart with more than this share of its points blanked (small counts) is not shown: the
#: points left would be a biased selection.
MAX_BLANKED_SHARE: float = 0.25
COLLABORATIVE = "collaborative"


# ---------------------------------------------------------------------------------------------
# the report's data
@dataclass
class SiteReport:
    """What one hospital's report reads: the run, the hospital, its rows of the results store
    (with the collaborative rows and every hospital's comparison rows), its monthly aggregates
    for the control charts, and the publication rules (`min_cell`, labels shown: the hospital's
    own name, every other hospital's pseudonym)."""

    run: Any
    site_id: str
    store: Any
    site_months: Any = None
    min_cell: int = privacy.DEFAULT_MIN_CELL
    labels: dict[str, str] = field(default_factory=dict)
    checks: dict[str, Any] = field(default_factory=dict)
    _pub: pd.DataFrame | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.labels.get(self.site_id, self.site_id)

    @property
    def plan(self):
        return self.store.plan

    @property
    def level(self) -> float:
        return 1.0 - float(self.store.meta.get("alpha") or 0.05)

    @property
    def ci(self) -> str:
        return f"{100 * self.level:g}% CI"

    def publishable(self) -> pd.DataFrame:
        """The store's publishable rows (computed once)."""
        if self._pub is None:
            self._pub = self.store.publishable(self.min_cell)
        return self._pub

    def primary(self, estimand: str, scope: str | None = None) -> pd.Series | None:
        """The primary effect row of `estimand` for this hospital (or `scope`), or None."""
        try:
            return self.store.primary(estimand, scope or self.site_id)
        except KeyError:
            return None

    def estimand(self, estimand: str, scope: str | None = None):
        level = COLLABORATIVE if (scope or self.site_id) == COLLABORATIVE else "site"
        try:
            return self.plan.get(estimand, level)
        except (KeyError, ValueError):
            return None


def load(run: Any, shared: Any, site_id: str) -> SiteReport:
    """The :class:`SiteReport` of `site_id`: the results store from `shared`
    (:class:`analysis.report_sections.SharedFits`; a batch run reads only this hospital's rows
    from the shared folder, a single report computes the store here), the hospital's monthly
    aggregates, labels (own name; pseudonyms for the others) and the data checks."""
    from ..report_sections import _need

    store = _need(shared.get("store"))
    if getattr(store, "meta", {}).get("rows_for_scope") != site_id:
        store = store.for_scope(site_id)
    try:
        sm = _need(shared.get("site_months"))
        sm = sm[sm["site_id"] == site_id].reset_index(drop=True)
    except ValueError as exc:
        sm = rp.not_estimable("Monthly measures", str(exc))
    labels = {str(s): run.label(s, viewer=site_id) for s in run.sites["site_id"]}
    return SiteReport(run=run, site_id=str(site_id), store=store, site_months=sm,
                      min_cell=int(run.min_cell), labels=labels,
                      checks=rp.estimability(run, site_id))


# ---------------------------------------------------------------------------------------------
# helpers
def _guarded(what: str, draw: Callable[[], Any]) -> None:
    """Run `draw`; a data problem becomes a plain "not estimable" note (reason without counts)."""
    try:
        draw()
    except (ValueError, ArithmeticError, KeyError, np.linalg.LinAlgError) as exc:
        rp.show(rp.not_estimable(what, _plain_reason(str(exc))))


def _plain_reason(msg: str) -> str:
    """A reason for the reader: first line, internal names replaced, and no number at all
    (a count could hide in any; reasons never carry counts)."""
    from ..tables import readable

    msg = readable(str(msg).split("\n")[0][:160])
    msg = privacy.redact_small_counts(msg)
    if any(ch.isdigit() for ch in msg):
        return "The data are not sufficient for this result."
    return (msg[:1].upper() + msg[1:]).rstrip(".") + "."


def _words(rep: SiteReport, estimand: str, scope: str | None = None) -> W.MeasureWords:
    from ..impact import measure_words

    e = rep.estimand(estimand, scope)
    if e is None:
        return W.MeasureWords(estimand.replace("_", " "))
    return measure_words(e)


def _ok(row: pd.Series | None) -> bool:
    return (row is not None and row.get("status") == "ok"
            and W.classify(row["estimate"], row["lower"], row["upper"]) != "not_estimable")


def _ci_text(row: pd.Series | None) -> str:
    from ..tables import format_estimate_ci

    if row is None or row.get("status") != "ok":
        return "not estimable"
    return format_estimate_ci(row["estimate"], row["lower"], row["upper"])


def _md(text: str) -> rp.Md:
    return rp.Md(rp.escape_text(text))


def _show_store_figure(figure: Any) -> None:
    """A :class:`analysis.figures.ReportFigure` drawn from publishable store rows: marked SVG
    (vector; nothing behind it is a small count) with its alt text, then its caption."""
    from ..figures import _with_alt
    from ..plotting import figure_svg
    from ..privacy import VectorFigure, mark_figure_svg

    svg = figure_svg(figure.fig, tight=len(figure.fig.axes) <= 12)
    rp.show(VectorFigure(mark_figure_svg(_with_alt(svg, figure.alt))))
    rp.show(rp.Md(f"*{rp.escape_text(figure.caption)}*"))


def _show_raster(fig, caption: str) -> None:
    """A figure whose exact geometry could give back subgroup sizes: raster PNG (its text in a
    PNG chunk for the output scanner), then its caption."""
    rp.show(privacy.publishable_figure(fig, tight=True))
    rp.show(rp.Md(f"*{rp.escape_text(caption)}*"))


# ---------------------------------------------------------------------------------------------
# the summary
@dataclass
class SiteSummary:
    """The one-page summary's sentences (plain text, no Markdown): ``mortality`` (the
    hospital's effect, or the too-little-information sentence, then what is estimated and the
    collaborative effect), ``processes`` (the process table, :func:`process_table`),
    ``comparison`` (the funnel sentences) and ``estimable`` (whether the hospital has its own
    mortality effect)."""

    mortality: list[str]
    processes: Any
    comparison: list[str]
    estimable: bool


def _mortality_sentences(rep: SiteReport) -> tuple[list[str], bool]:
    m = _words(rep, MORTALITY)
    r = rep.primary(MORTALITY)
    coll = rep.primary(MORTALITY, COLLABORATIVE)
    e = rep.estimand(MORTALITY)
    tp = int(r["time_point"]) if r is not None and pd.notna(r.get("time_point")) else (
        e.primary.time_point if e is not None else 12)
    when = f"{tp} months after go-live" if tp else "after go-live"
    out: list[str] = []
    estimable = _ok(r)
    if estimable:
        pooled = r["estimator"] == "site_eb"
        out.append(W.effect_sentence(r["estimate"], r["lower"], r["upper"], m, role="primary",
                                     kind="pooled" if pooled else "collaborative",
                                     level=rep.level, subject="At this hospital"))
        out.append(
            f"What is estimated: the ratio of {m.name} with IPSO vs without IPSO {m.per}, "
            f"{when}" + (", partially pooled (empirical Bayes): this hospital's own estimate "
                         "combined with all hospitals', weighted by how much information it "
                         "holds." if pooled else "."))
    else:
        reason = "" if r is None else str(r.get("status_reason") or "")
        if r is None or reason.startswith("too few"):
            out.append(W.too_few_sentence(m))
            out.append(_rule_sentence(rep))
        else:
            out.append(W.not_estimable_sentence(m, _plain_reason(reason)))
    if _ok(coll):
        out.append(W.effect_sentence(coll["estimate"], coll["lower"], coll["upper"], m,
                                     role="primary", kind="collaborative", level=rep.level,
                                     subject="Across all hospitals"))
    return out, estimable


def _rule_sentence(rep: SiteReport) -> str:
    """The plan's too-little-information rule in words (its threshold is on expected deaths from
    the case-mix model, never an observed count)."""
    from ..pooling import MIN_EXPECTED_EVENTS

    e = rep.estimand(MORTALITY)
    spec = next((sp for sp in (e.specs if e is not None else ()) if sp.estimator == "site_eb"), None)
    k = float(spec.params.get("min_expected_events", MIN_EXPECTED_EVENTS)) if spec else MIN_EXPECTED_EVENTS
    return (f"The analysis plan's rule: a hospital's own effect is estimated only with at least "
            f"{k:g} expected deaths (case-mix model) both before go-live and from go-live on.")


def _crude(rep: SiteReport, estimand: str, scope: str) -> float:
    """The crude value after go-live (publishable; NaN when blanked)."""
    pub = rep.publishable()
    r = pub[(pub["component"] == "summary") & (pub["estimand"] == estimand)
            & (pub["scope"] == scope) & (pub["period"] == "after go-live")]
    return float(r["estimate"].iloc[0]) if len(r) else math.nan


def _level_text(value: float, unit: str) -> str:
    if not np.isfinite(value):
        return "not shown"
    if "%" in unit:
        return f"{value:.0f}%"
    if "minute" in unit:
        return f"{value:.0f} min"
    return f"{value:.3g}"


def _change_words(row: pd.Series | None, m: W.MeasureWords) -> str:
    if not _ok(row):
        return "not estimable"
    verdict = W.classify(row["estimate"], row["lower"], row["upper"])
    if verdict == "no_clear_change":
        return "no clear change"
    return (m.fell if verdict == "decrease" else m.rose) + " (interval excludes no change)"


def process_table(rep: SiteReport) -> Any:
    """The key processes against the collaborative (:class:`analysis.tables.PubTable`): level
    after go-live here and across all hospitals (crude, blanked where the counts behind them are
    small), and the change at go-live here (the hospital's own series) and across all hospitals,
    each ratio with its interval, and the hospital's change in words."""
    from ..tables import Column, PubTable

    rows = []
    for eid in PROCESSES:
        e = rep.estimand(eid)
        if e is None:
            continue
        m = _words(rep, eid)
        own, coll = rep.primary(eid), rep.primary(eid, COLLABORATIVE)
        rows.append({
            "process": e.label, "here": _level_text(_crude(rep, eid, rep.site_id), e.unit),
            "all": _level_text(_crude(rep, eid, COLLABORATIVE), e.unit),
            "change_here": _ci_text(own), "change_all": _ci_text(coll),
            "words": _change_words(own, m),
        })
    data = pd.DataFrame(rows, columns=["process", "here", "all", "change_here", "change_all",
                                       "words"])
    ci = rep.ci
    cols = [
        Column("process", "Process"),
        Column("here", "This hospital", spanner="After go-live", align="right"),
        Column("all", "All hospitals", spanner="After go-live", align="right"),
        Column("change_here", f"This hospital ({ci})", spanner="Change at go-live (ratio)",
               align="right"),
        Column("change_all", f"All hospitals ({ci})", spanner="Change at go-live (ratio)",
               align="right"),
        Column("words", "This hospital's change in words"),
    ]
    notes = [
        "After go-live: share of episodes (or median minutes from T0) in all months from "
        "go-live on, without adjustment; not shown where it rests on small counts.",
        "Change: ratio with IPSO vs without IPSO for the same episodes, 12 months after go-live "
        "(1 = no change), from this hospital's own monthly series and, for all hospitals, from "
        "the collaborative model. A change is named only when its interval excludes no change.",
    ]
    return PubTable("site-processes", "Key processes: this hospital and all hospitals", data,
                    cols, footnotes=notes)


def _funnel_sentences(rep: SiteReport) -> list[str]:
    m = _words(rep, MORTALITY)
    pub = rep.publishable()
    oe = pub[(pub["component"] == "oe") & (pub["estimand"] == MORTALITY)]
    sites = oe[oe["level"] == "site"]
    own = sites[sites["scope"] == rep.site_id]
    if own.empty:
        return [f"How this hospital's risk-adjusted {m.name} compares with the other hospitals "
                "is not estimable from these data."]
    r = own.iloc[0]
    n_units = len(sites)
    period = "after go-live"
    out = []
    ratio = float(r["estimate"])
    flag = str(r["flag"] or "")
    if flag:
        position = W.funnel_sentence(flag, m, n_units=n_units, period=period)
        position = position.replace(" " + W.expected_flags_sentence(n_units), "")
    else:
        inside95 = _inside_95(rep, r)
        where = ("within the 95% limits" if inside95 else
                 "outside the 95% but within the 99.8% limits (not flagged: about 1 hospital in "
                 "20 lies there by chance)") if inside95 is not None else "within the 99.8% limits"
        position = (f"In the funnel plot this hospital lies {where}: no evidence that its "
                    f"risk-adjusted {m.name} {period} differs from the collaborative's.")
    if np.isfinite(float(r["lower"])) and np.isfinite(float(r["upper"])) and ratio > 0:
        out.append(W.comparison_sentence(ratio, r["lower"], r["upper"],
                                         W.MeasureWords(f"risk-adjusted {m.name}",
                                                        f"{period} (observed/expected deaths)"),
                                         level=rep.level))
        out.append(position)
    else:
        out.append(position)
        if np.isfinite(ratio):
            out.append(f"Its observed/expected deaths after go-live were {ratio:.2f} times the "
                       "collaborative's ratio; no interval is shown because it would reveal a "
                       "small number of deaths.")
    out.append(W.expected_flags_sentence(n_units) + " A hospital is flagged only outside the "
               "99.8% limits.")
    return out


def _inside_95(rep: SiteReport, r: pd.Series) -> bool | None:
    """Whether the hospital's (rounded) O/E lies inside the funnel's 95% limits at its (rounded)
    expected deaths, as drawn; None when the funnel cannot be drawn."""
    try:
        pdata = rep.store.funnel_plot_data(MORTALITY, labels=rep.labels)
    except (ValueError, KeyError):
        return None
    pts = pdata.points
    me = pts[pts["label"] == rep.name]
    if me.empty:
        return None
    x, y = float(me["x"].iloc[0]), float(me["ratio"].iloc[0])
    c = pdata.limits_curve(np.array([x]))
    pre = "od_" if pdata.adjusted else ""
    return bool(c[f"{pre}lower95"].iloc[0] <= y <= c[f"{pre}upper95"].iloc[0])


def summary_parts(rep: SiteReport) -> SiteSummary:
    """The summary's three parts (see the module docstring)."""
    mort, estimable = _mortality_sentences(rep)
    return SiteSummary(mortality=mort, processes=process_table(rep),
                       comparison=_funnel_sentences(rep), estimable=estimable)


def summary_markdown(rep: SiteReport, parts: SiteSummary | None = None) -> tuple[str, str]:
    """(Markdown before the process table, Markdown after it) of the summary."""
    p = parts or summary_parts(rep)
    as_of = rep.store.meta.get("as_of") or ""
    head = [f"*What changed at {rp.escape_text(rep.name)} after it started the IPSO practices, "
            "and how it compares with the other IPSO hospitals"
            + (f" (data to {rp.escape_text(rp.month_label(pd.Timestamp(str(as_of))))})"
               if as_of else "") + ".*", "",
            "### 1. Mortality", "",
            f"**{rp.escape_text(p.mortality[0])}**", ""]
    head += [f"- {rp.escape_text(s)}" for s in p.mortality[1:]]
    head += ["", "### 2. Key processes", ""]
    tail = ["### 3. How this hospital compares", "",
            f"**{rp.escape_text(p.comparison[0])}**", ""]
    tail += [f"- {rp.escape_text(s)}" for s in p.comparison[1:]]
    return "\n".join(head) + "\n", "\n".join(tail) + "\n"


def summary(rep: SiteReport) -> None:
    """Display the one-page summary: mortality in words, key processes, funnel position."""
    def draw():
        parts = summary_parts(rep)
        before, after = summary_markdown(rep, parts)
        rp.show(rp.Md(before))
        rp.show(parts.processes)
        rp.show(rp.Md(after))

    if rep.checks.get("any") is not None:
        rp.show(rep.checks["any"])
        return
    _guarded("Summary", draw)


def header(rep: SiteReport) -> None:
    """The report header (hospital, period, data as of, episodes suppressed when small, go-live)."""
    rp.show(rp.report_header(rep.run, rep.site_id))


# ---------------------------------------------------------------------------------------------
# effects table
_ROLE_WORDS = {
    ("primary", "site_eb"): "Primary: partially pooled (empirical Bayes)",
    ("primary", "site_its"): "Primary: this hospital's own series",
    ("sensitivity", "site_its"): "Secondary: this hospital's own data alone (unpooled)",
}


def effects_table(rep: SiteReport) -> Any:
    """Every estimand of the plan at hospital level: its primary estimate and the labelled
    secondary estimates (the unpooled own-series mortality estimate) with intervals, p-values
    as "<0.001" and the estimate in words (:class:`analysis.tables.PubTable`; readable labels,
    no internal names, no counts)."""
    from ..tables import Column, PubTable, format_p, readable, spec_label

    plan = rep.plan
    rows = []
    for e in plan.at_level("site"):
        r = rep.store.rows(e.id, rep.site_id)
        r = r[r["role"].isin(["primary", "sensitivity"])]
        if r.empty:
            continue
        r = r.assign(_o=(r["role"] != "primary").astype(int)).sort_values("_o", kind="mergesort")
        m = _words(rep, e.id)
        for _, x in r.iterrows():
            role = _ROLE_WORDS.get((x["role"], x["estimator"]))
            if role is None:
                role = ("Primary" if x["role"] == "primary" else
                        f"Secondary: {spec_label(str(x['spec']), str(x['estimator'])).lower()}")
            if e.secondary_to and x["role"] == "primary":
                role = f"Secondary (all recognised episodes): {role.split(': ', 1)[-1].lower()}"
            if x["status"] != "ok":
                words = (f"too few {m.events} to estimate this hospital's own effect"
                         if str(x["status_reason"]).startswith("too few") else "not estimable")
            else:
                kind = ("pooled" if x["estimator"] == "site_eb" else
                        "unpooled" if x["role"] != "primary" else "collaborative")
                words = _table_words(x, m, kind, rep.level)
            rows.append({"group": e.label, "role": role,
                         "what": readable(f"{e.scale} {e.per}", plan),
                         "estimate": x["estimate"], "lower": x["lower"], "upper": x["upper"],
                         "p_value": x["p_value"], "status": x["status"], "words": words})
    data = pd.DataFrame(rows, columns=["group", "role", "what", "estimate", "lower", "upper",
                                       "p_value", "status", "words"])

    def est(r: pd.Series) -> str:
        return _ci_text(r) if r["status"] == "ok" else "not estimable"

    cols = [
        Column("role", "Analysis"),
        Column("what", "What is estimated"),
        Column("estimate", f"Ratio ({rep.ci})", fmt=est, align="right"),
        Column("p_value", "p-value", fmt=lambda r: format_p(r["p_value"]) if r["status"] == "ok"
               else "", align="right"),
        Column("words", "In words"),
    ]
    notes = [
        "Ratios with IPSO vs without IPSO, 12 months after go-live (1 = no change); the primary "
        "estimate of each measure first, then its labelled secondary estimates.",
        "Mortality: the primary estimate borrows strength from all hospitals (empirical Bayes); "
        "this hospital's own data alone are noisier and shown only as a secondary estimate.",
        "p-values test no change (two-sided); '<0.001' below 0.001.",
    ]
    return PubTable("site-effects", "Effects at this hospital", data, cols, group="group",
                    footnotes=notes)


def _table_words(x: pd.Series, m: W.MeasureWords, kind: str, level: float) -> str:
    verdict = W.classify(x["estimate"], x["lower"], x["upper"])
    if verdict == "not_estimable":
        return "not estimable"
    if verdict == "no_clear_change":
        return "no clear change"
    if kind == "unpooled":
        return f"{W.change_text(x['estimate'], m)} (own data alone)"
    verb = m.fell if verdict == "decrease" else m.rose
    return f"likely {verb}: {W.change_text(x['estimate'], m)}"


def effects(rep: SiteReport) -> None:
    """Display the effects table (:func:`effects_table`)."""
    _guarded("Effects at this hospital", lambda: rp.show(effects_table(rep)))


# ---------------------------------------------------------------------------------------------
# ITS figure
_ITS_TITLES = {"sam30": ("30-day deaths: observed / expected", "observed / expected"),
               "recognition": ("Sepsis episodes per 1,000 admissions", "per 1,000 admissions"),
               "hospital_days": ("Hospital days per episode", "days (relative to expected)")}


def its_figure(rep: SiteReport) -> None:
    """The hospital's interrupted time series (the store's ``counterfactual`` rows, publishable:
    months with small counts are blanked): observed months, the fitted line and, after go-live,
    the counterfactual (what the trend before go-live predicts) with its 95% band; one panel
    per measure."""
    def draw():
        import matplotlib.pyplot as plt

        from ..figures import ReportFigure
        from ..plotting import PALETTE, set_theme

        pub = rep.publishable()
        cf = pub[(pub["component"] == "counterfactual") & (pub["scope"] == rep.site_id)]
        ests = [e for e in ITS_ESTIMANDS if (cf["estimand"] == e).any()]
        if not ests:
            raise ValueError("this hospital has no interrupted time series in the results store "
                             "(too few months or events)")
        set_theme()
        fig, axes = plt.subplots(1, len(ests), figsize=(7.0, 2.8), squeeze=False)
        blanked = 0
        clipped = False
        for ax, eid in zip(axes[0], ests):
            g = cf[cf["estimand"] == eid]
            title, ylab = _ITS_TITLES.get(eid, (eid, ""))
            for q, style in (("fitted", {"color": PALETTE["fitted"], "lw": 1.4}),
                             ("counterfactual", {"color": PALETTE["pre"], "lw": 1.2, "ls": "--"})):
                h = g[g["quantity"] == q].sort_values("x")
                if h.empty:
                    continue
                ax.plot(h["x"], h["estimate"], **style, label=q)
                if q == "counterfactual" and h["lower"].notna().any():
                    ax.fill_between(h["x"], h["lower"], h["upper"], color=PALETTE["pre"],
                                    alpha=0.15, lw=0)
            obs = g[g["quantity"] == "observed"].sort_values("x")
            if obs["estimate"].isna().any():
                # some months rest on small counts: drawing only the others (often the months
                # without any event) would mislead, so no month of this panel is drawn
                blanked += 1
                title += "\n(monthly values not shown: few events)"
            else:
                ax.plot(obs["x"], obs["estimate"], "o", ms=2.5, color=PALETTE["observed"],
                        label="observed month")
            # go-live; not the full axis height: a vertical line from 0 to a whole-number top
            # reads, to the output scanner, as a series of small whole numbers
            ax.axvline(-0.5, ymin=0.013, ymax=0.971, color=PALETTE["limit"], ls=":", lw=1)
            ax.set_title(title, fontsize=8.5)
            ax.set_xlabel("Months since go-live", fontsize=7.5)
            ax.set_ylabel(ylab, fontsize=7.5)
            ax.tick_params(labelsize=7)
            # the axis follows the lines and points, not a band that widens far from the data
            vals = g.loc[g["quantity"] != "observed" if obs["estimate"].isna().any() else
                         slice(None), "estimate"].to_numpy(float)
            top = float(np.nanmax(vals)) * 1.25 if np.isfinite(vals).any() else None
            lo = np.nanmin(pd.concat([g["estimate"], g["lower"]]).to_numpy(float))
            bottom = 0.0 if np.isfinite(lo) and lo >= 0 else None
            if top is not None and top > 0:
                ax.set_ylim(bottom=bottom, top=top)
                clipped = clipped or bool((g["upper"] > top).any())
            elif bottom is not None:
                ax.set_ylim(bottom=bottom)
        axes[0][0].legend(fontsize=6.5, loc="best")
        fig.tight_layout()
        names = ", ".join(_ITS_TITLES.get(e, (e,))[0].split(":")[0].lower() for e in ests)
        caption = ("This hospital's interrupted time series: each point is one month; solid line: "
                   "the fitted model; dashed line and band (after go-live, dotted line): what the "
                   "trend before go-live predicts without IPSO, with its 95% band."
                   + (" Where some months rest on few events, no month of that measure is drawn."
                      if blanked else "")
                   + (" Bands running beyond the top of a panel are cut off." if clipped else "")
                   + " The hospital's own series only: noisier than the partially pooled "
                   "mortality estimate of the summary.")
        alt = (f"{len(ests)} panels ({names}) of monthly values against months since go-live, "
               "with a fitted line and a dashed counterfactual line with a shaded band after "
               "go-live.")
        _show_store_figure(ReportFigure(fig, "site-its", caption, alt, safe=True,
                                        provenance="results store, publishable counterfactual rows"))

    _guarded("Interrupted time series", draw)


# ---------------------------------------------------------------------------------------------
# control charts
#: (title, estimand label source, kind, numerator, denominator, multiply) of the monthly charts.
_ATTRIBUTE_CHARTS: tuple[tuple[str, str, str, str, float], ...] = (
    ("Bundle compliance (%)", "p", "bundle_compliant", "episodes", 100.0),
    ("Positive sepsis screen (%)", "p", "screen_positive", "episodes", 100.0),
    ("Sepsis huddle (%)", "p", "huddle", "episodes", 100.0),
    ("Sepsis order set used (%)", "p", "order_set", "episodes", 100.0),
    ("Episodes per 1,000 admissions", "u", "episodes", "admissions", 1000.0),
)
_TIME_CHARTS = (("Minutes to first fluid bolus (median)", "minutes_to_bolus"),
                ("Minutes to first antibiotic (median)", "minutes_to_antibiotic"))


def _target(min_cell: int) -> float:
    return CHART_TARGET_FACTOR * min_cell


def chart_rules(min_cell: int) -> str:
    """The chart-choice rules as this report applies them (:mod:`analysis.spc_choice` with
    ``min_expected`` = ``min_size`` = `min_cell` and periods up to a year, so that points rest
    on publishable counts)."""
    from .. import spc_choice as sc

    return (
        "Mortality, processes and recognition: each point is the shortest of month, quarter, "
        f"half-year and year with at least {_target(min_cell):g} expected events (and non-events) "
        f"per point (twice the smallest publishable count); "
        "exact binomial or Poisson probability limits (0.00135 each side, never below 0% or "
        "above 100%); the Anhøj runs rules only when that expectation is met, otherwise the "
        f"limits alone; {sc.LANEY_RULE}; the mortality chart never uses Laney's p'. Times: "
        "median charts (distribution-free probability limits from the phase's pooled times, "
        "never below 0 minutes), each point the shortest of month, quarter, half-year and year "
        f"with at least {_target(min_cell):g} times on average. Phases are split at go-live; a shift found "
        "by the runs rules is marked as a signal, not as a new phase.")


def _point_words(cc: Any, noun: str, min_cell: int) -> str:
    """'per quarter, n 30-45 episodes' (counts of shown points; small ones suppressed)."""
    d = cc.data
    shown = d[d["y"].notna()]
    n = shown["n"].to_numpy(float)
    every = cc.choice.point.replace("one ", "") if getattr(cc, "choice", None) else "period"
    if n.size == 0:
        return f"per {every}"

    def fmt(v: float) -> str:
        return privacy.suppress_count(round(v), min_cell=min_cell,
                                      marker=f"fewer than {min_cell}")

    lo, hi = float(n.min()), float(n.max())
    rng = fmt(lo) if lo == hi else f"{fmt(lo)}-{fmt(hi)}"
    return f"per {every}, n {rng} {noun}"


def control_chart_set(rep: SiteReport) -> tuple[dict[str, Any], dict[str, str]]:
    """The hospital's control charts chosen by :mod:`analysis.spc_choice` (mortality by the
    rare-event rule, processes and recognition by the attribute rule, times by the median-chart
    rule; phases split at go-live; limits within their bounds), with every point resting on a
    count from 1 to ``min_cell - 1`` blanked (:func:`analysis.spc_choice.suppress_small_points`).
    Returns ({panel title: chart}, {title: reason not charted})."""
    from .. import spc_choice as sc

    sm = rep.site_months
    if isinstance(sm, rp.NotEstimable):
        raise ValueError(sm.reason)
    charts: dict[str, Any] = {}
    failed: dict[str, str] = {}
    go = sm["go_live_month"].iloc[0] if len(sm) and "go_live_month" in sm else None
    mc = rep.min_cell
    target = _target(mc)
    ep_months = sm[sm["episodes"] > 0].reset_index(drop=True)

    w = max(rep.run.settings.sam_windows_days) if hasattr(rep.run, "settings") else 30

    def add(title: str, noun: str, make: Callable[[], Any]) -> None:
        try:
            cc = sc.suppress_small_points(make(), mc)
        except (ValueError, ArithmeticError, KeyError) as exc:
            failed[title] = _plain_reason(str(exc))
            return
        d = cc.data
        hidden = int(d["suppressed"].sum()) if "suppressed" in d else 0
        shown = d[d["y"].notna()]
        if len(shown) < 2:
            failed[title] = "too few points rest on enough events to be shown"
            return
        if hidden and (hidden > MAX_BLANKED_SHARE * len(d) or not (shown["y"] > 0).any()):
            # drawing only the points that may be shown would hide the low (or the non-zero)
            # periods and mislead: no chart rather than a biased one
            failed[title] = (
                f"deaths are too rare at this hospital for a chart that can be published (even "
                f"yearly points rest on fewer than {mc} deaths); the effect estimates and the "
                "funnel plot summarise mortality" if title.startswith(f"{w}-day") else
                "too many points rest on small counts to chart without revealing them or hiding "
                "the periods with few events")
            return
        charts[f"{title}\n{_point_words(cc, noun, mc)}"] = cc

    add(f"{w}-day sepsis-attributable mortality (%)", "episodes", lambda: sc.rare_event_chart(
        ep_months, "month", f"sam{w}", "episodes", go_live=go, min_expected=target,
        periods=CHART_PERIODS, multiply=100.0))
    for title, kind, y, n, mult in _ATTRIBUTE_CHARTS:
        frame = sm[sm[n] > 0].reset_index(drop=True) if n in sm else ep_months
        noun = "admissions" if n == "admissions" else "episodes"
        add(title, noun, lambda frame=frame, kind=kind, y=y, n=n, mult=mult: sc.attribute_chart(
            frame, "month", y, n, kind=kind, go_live=go, min_expected=target, periods=CHART_PERIODS,
            multiply=mult))
    ep = rep.run.episodes_for(rep.site_id)
    for title, col in _TIME_CHARTS:
        add(title, "times", lambda col=col: sc.time_chart(
            ep[["month", col]], "month", col, go_live=go, min_size=target, periods=CHART_PERIODS))
    return charts, failed


def control_charts(rep: SiteReport) -> None:
    """Display the control charts as compact small multiples (raster: limits that vary with the
    subgroup size would give sizes back from vector coordinates), each panel saying what a
    point is and its n; charts that cannot be shown are listed with the reason."""
    from .. import spc
    from ..plotting import PALETTE

    def draw():
        charts, failed = control_chart_set(rep)
        if not charts:
            raise ValueError("no chart has enough data to be shown")
        caption = (
            "Control charts of this hospital, limits split at go-live (dotted line). Red points "
            "lie outside the limits; orange points belong to a run signal; a dashed centre line "
            "marks a phase whose runs rules signal. " + chart_rules(rep.min_cell)
            + f" A point still resting on fewer than {rep.min_cell} events, non-events or "
            "episodes is not drawn (grey tick on the axis).")
        figs = spc.chart_pages(charts, max_rows=3, panel_height=2.1)
        labels = list(charts)
        k = 0
        for fig in figs:
            for ax in fig.axes:
                if not ax.get_visible() or k >= len(labels):
                    continue
                cc = charts[labels[k]]
                k += 1
                ax.title.set_fontsize(7)
                d = cc.data
                if "suppressed" in d and d["suppressed"].any():
                    xs = d.loc[d["suppressed"], "x"]
                    ax.plot(pd.to_datetime(xs) if not np.issubdtype(np.asarray(xs).dtype, np.number)
                            else xs, np.zeros(len(xs)) if ax.get_ylim()[0] <= 0 else
                            np.full(len(xs), ax.get_ylim()[0]), "|", color=PALETTE["limit"],
                            ms=6, clip_on=False)
        for i, fig in enumerate(figs):
            _show_raster(fig, caption if i == len(figs) - 1 else "")
        if failed:
            rp.show(_md("Not charted: " + "; ".join(f"{t}: {why.rstrip('.')}"
                                                    for t, why in failed.items()) + "."))

    if rep.checks.get("any") is not None:
        rp.show(rep.checks["any"])
        return
    _guarded("Control charts", draw)


# ---------------------------------------------------------------------------------------------
# survival and length of stay
def survival(rep: SiteReport) -> None:
    """30-day survival (Kaplan-Meier) and discharge alive / death in hospital (cumulative
    incidence, competing risks) before and after go-live, with 95% bands, from the store's
    publishable curve points (each panel on its own y scale)."""
    from ..estimate_plots import curves_figure

    shown = 0
    for eid in (MORTALITY, "hospital_days"):
        pub = rep.publishable()
        has = ((pub["component"] == "curve") & (pub["estimand"] == eid)
               & (pub["scope"] == rep.site_id)).any()
        if not has:
            continue
        try:
            fig = curves_figure(rep.store, estimand=eid, scope=rep.site_id, min_cell=rep.min_cell,
                                name=f"site-curves-{eid.replace('_', '-')}")
        except ValueError:
            continue
        _show_store_figure(fig)
        shown += 1
    if not shown:
        rp.show(rp.not_estimable("Survival and length of stay", "Too few events at this hospital "
                                 "for curves that can be published."))


# ---------------------------------------------------------------------------------------------
# table 1, funnel, data quality, methods, footer
def table_one(rep: SiteReport) -> None:
    """Table 1 (:func:`analysis.tables.table_one`): characteristics before and after go-live,
    counts suppressed."""
    from ..tables import table_one as t1

    if rep.checks.get("any") is not None:
        rp.show(rep.checks["any"])
        return
    _guarded("Who was treated", lambda: rp.show(t1(rep.run.episodes_for(rep.site_id),
                                                   min_cell=rep.min_cell)))


def funnel(rep: SiteReport) -> None:
    """The funnel plot of risk-adjusted mortality after go-live (count-free: O/E to 2 decimals,
    expected deaths rounded to 5), this hospital by name, the others under pseudonyms."""
    from ..estimate_plots import funnel_figure

    _guarded("Hospital comparison", lambda: _show_store_figure(
        funnel_figure(rep.store, rep.labels, estimand=MORTALITY, highlight=rep.name,
                      name="site-funnel")))


def data_quality(rep: SiteReport) -> None:
    """The data window, rows set aside by validation (by rule) and missing values."""
    rp.show(rp.data_window_note(rep.run))
    rp.show(rp.quarantine_table(rep.run, rep.site_id))
    rp.show(rp.missingness_table(rep.run.episodes_for(rep.site_id), min_cell=rep.min_cell))


def methods(rep: SiteReport) -> None:
    """How the hospital's estimates are made (the plan's site-level methods: partial pooling and
    the too-little-information rule, the hospital's own series, the funnel, the chart rules) and
    their limitations, then definitions and publication rules."""
    from ..pooling import TOO_LITTLE_INFORMATION_RULE

    e = rep.estimand(MORTALITY)
    eb = "" if e is None else (
        "**Mortality at this hospital (primary).** Each hospital's effect is its own segmented "
        "regression estimate (deaths against the case-mix expected deaths, one calendar trend "
        "and seasonality) shrunk toward the mean of all hospitals' effects by empirical Bayes "
        "(best linear unbiased prediction from a random-effects model of the hospitals' "
        "effects), weighted by its precision relative to the spread between hospitals; the 95% "
        "interval integrates the uncertainty in that spread (posterior over the between-hospital "
        "variance, weakly informative half-normal prior on its square root). Rule for too little "
        f"information: {TOO_LITTLE_INFORMATION_RULE}.\n\n")
    text = (
        "## How the estimates were made\n\n" + eb +
        "**This hospital's own series (secondary for mortality; primary for processes).** A "
        "segmented regression of the hospital's monthly series (counts with the case-mix "
        "expected count or admissions as offset, or medians of times) with a level change at "
        "go-live after a phase-in, evaluated 12 months after go-live.\n\n"
        "**Hospital comparison.** Observed over case-mix expected 30-day deaths after go-live, "
        "relative to the collaborative's ratio in the same period (the funnel's centre), with "
        "95% and 99.8% limits widened for over-dispersion when a test says so; a hospital is "
        "flagged only outside the 99.8% limits.\n\n"
        f"**Control charts.** {chart_rules(rep.min_cell)}\n\n"
        "**Limitations.** The hospitals were not randomised and chose when to go live: a change "
        "at go-live that the trend before it does not predict is attributed to IPSO, including "
        "any co-intervention at the same time. A single hospital's series is short and noisy, "
        "which is why its mortality effect borrows strength from all hospitals; a partially "
        "pooled estimate is pulled toward the collaborative's and can understate a hospital "
        "that truly differs. Crude before/after values are descriptive only.\n")
    rp.show(rp.Md(text))
    rp.show(rp.methods_appendix(rep.run.settings, min_cell=rep.min_cell))


def footer(rep: SiteReport, parameters: Mapping[str, Any], *, renderer: str) -> None:
    """The reproducibility footer (:func:`analysis.reporting.reproducibility_footer`)."""
    rp.show(rp.reproducibility_footer(parameters, data_hash=rep.run.data_hash,
                                      renderer=renderer, source=rep.run.source))

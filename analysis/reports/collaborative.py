"""The collaborative report, section by section, in SQUIRE 2.0 order.

Every number a reader sees is read from the analysis plan's results store
(:class:`analysis.results.ResultsStore`, computed once per run by
:class:`analysis.report_sections.SharedFits`) or, for the descriptive charts and Table 1, from
aggregates that passed suppression (:mod:`analysis.privacy`). The one exception is the
process-outcome associations table (a GEE fit shared by the run, not yet a store component).
Text comes from :mod:`analysis.methods_text` and :mod:`analysis.wording`, tables from
:mod:`analysis.tables` (great-tables; also saved as CSV, Word, LaTeX and Markdown), figures
from :mod:`analysis.estimate_plots` and :mod:`analysis.spc` through one
:class:`analysis.figures.FigureRegistry` per report (each figure saved once as vector PDF and
300 dpi PNG with caption and alt text when the run has an export folder).

The notebook (``notebooks/collaborative_report.ipynb``) calls :func:`setup` once and then one
section function per cell; :data:`SECTIONS` lists them in report order with their headings.

Export folder: the ``export_dir`` argument, else ``$IPSO_EXPORT_DIR``, else -- in a batch run
(``shared_dir`` = ``<run>/internal/_shared``) -- ``<run>/internal/export``, where
``ipso publish`` (:func:`analysis.publish.locate_run`) picks up the figures and tables.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import methods_text as mt
from .. import privacy
from .. import reporting as rp
from .. import tables as T

__all__ = ["SECTIONS", "CollaborativeReport", "KEY_PROCESSES", "band_count", "context_and_intervention",
           "data_quality", "header", "limitations", "measures", "primary_results",
           "processes_and_outcomes", "reproducibility", "sensitivity_analyses", "setup",
           "squire_appendix", "statistical_methods", "study_design", "summary", "table_one",
           "primary_numbers", "export_dir_for"]

#: The five key processes of the IPSO bundle (episode column, what the report calls it).
KEY_PROCESSES: tuple[tuple[str, str], ...] = (
    ("screen_positive", "a positive sepsis screen"),
    ("huddle", "a sepsis huddle"),
    ("order_set", "the sepsis order set"),
    ("fluid_60", "a first fluid bolus within 60 minutes of recognition"),
    ("abx_180", "a first antibiotic within 180 minutes of recognition"),
)
_PROVENANCE_AGG = "monthly aggregates of all hospitals, months with small counts not drawn"


# ---------------------------------------------------------------------------------------------
# the report object
@dataclass
class CollaborativeReport:
    """What every section reads: the run (data and pseudonyms), its shared fits, the results
    store and plan, and this report's figure and table registries (one per report, so a reused
    kernel never sees another report's figures)."""

    run: rp.RunData
    shared: Any
    store: Any
    plan: Any
    figures: Any
    tables: Any
    parameters: dict[str, Any] = field(default_factory=dict)
    renderer: str = "nbconvert"

    @property
    def min_cell(self) -> int:
        return int(self.run.min_cell)

    @property
    def labels(self) -> dict[str, str]:
        """Site id -> pseudonym (every hospital)."""
        return {str(s): self.run.pseudonyms[s] for s in self.run.sites["site_id"]}

    @property
    def as_of(self) -> str:
        """The data cut-off month, 'YYYY-MM' (from the store; never None)."""
        v = (self.store.meta or {}).get("as_of") if self.store is not None else None
        if v is None or str(v) in ("", "None", "nan"):
            v = str(self.run.as_of.to_period("M"))
        return str(v)

    @property
    def data_hash(self) -> str:
        """The one data hash of the report: the store's (the data every number comes from)."""
        v = (self.store.meta or {}).get("data_hash") if self.store is not None else None
        return str(v or self.run.data_hash)


def export_dir_for(shared_dir: str | Path | None, export_dir: str | Path | None = None) -> Path | None:
    """Where the report exports figures and tables: `export_dir`, else ``$IPSO_EXPORT_DIR``,
    else ``<shared_dir>/../export`` for a batch run's ``internal/_shared`` folder, else None."""
    from ..exports import resolve_export_dir

    found = resolve_export_dir(export_dir)
    if found is not None:
        return found
    if shared_dir is not None:
        p = Path(shared_dir)
        if p.name in ("_shared", "shared") and p.parent.name == "internal":
            return p.parent / "export"
    return None


def setup(data_dir: Any = None, *, as_of: str | None = None, min_cell: int = privacy.DEFAULT_MIN_CELL,
          run_key: str = rp.DEFAULT_RUN_KEY, shared_dir: Any = None, plan: Any = None,
          export_dir: Any = None, renderer: str = "nbconvert",
          formats: Any = None) -> CollaborativeReport:
    """Load the run and its results store (from the batch's shared folder when it matches,
    else computed once here) and start the report's figure and table registries."""
    from ..figures import FigureRegistry
    from ..plotting import set_theme
    from ..report_sections import SharedFits
    from ..tables import TableRegistry

    set_theme()
    run = rp.load_run(data_dir, as_of=as_of, run_key=run_key, min_cell=min_cell)
    shared = SharedFits(run, shared_dir, plan=plan)
    store = shared.get("store")
    if isinstance(store, rp.NotEstimable):
        store = None
    from ..exports import resolve_export_dir

    exp = export_dir_for(shared_dir, export_dir)
    if exp is not None and resolve_export_dir(export_dir) is None:  # the batch run's own folder
        _clear_export(exp)
    params = {"as_of": as_of, "min_cell": min_cell, "formats": formats}
    return CollaborativeReport(run, shared, store, shared.plan, FigureRegistry(exp),
                               TableRegistry(exp), params, renderer)


def _clear_export(export: Path) -> None:
    """Remove a previous run's exported figures and tables from the batch run's export folder
    (this report is its only writer), so ``ipso publish`` never picks up a stale file (e.g. a
    page of the hospital grid that this run no longer draws)."""
    from ..exports import FIGURES_DIR, TABLES_DIR

    for sub in (FIGURES_DIR, TABLES_DIR):
        d = export / sub
        if d.is_dir():
            for f in d.iterdir():
                if f.is_file() and f.suffix in (".pdf", ".png", ".json", ".csv", ".docx", ".tex", ".md"):
                    f.unlink()


def _show(md: str) -> None:
    rp.show(rp.Md(md))


def _no_store(r: CollaborativeReport, what: str) -> bool:
    if r.store is None:
        rp.show(rp.not_estimable(what, "the results store could not be computed for these data."))
        return True
    return False


def _figure(r: CollaborativeReport, what: str, make: Callable[[], Any]) -> None:
    """Register the figure a producer returns; a data problem becomes a 'not estimable' note."""
    from ..report_sections import _reason

    try:
        rf = make()
    except (ValueError, KeyError, ArithmeticError, np.linalg.LinAlgError) as exc:
        rp.show(rp.not_estimable(what, _reason(exc, r.run)))
        return
    for rf1 in (rf if isinstance(rf, list) else [rf]):
        r.figures.register(rf1.fig, rf1.name, caption=rf1.caption, alt=rf1.alt, safe=rf1.safe,
                           provenance=rf1.provenance)


def _table(r: CollaborativeReport, what: str, make: Callable[[], Any]) -> Any:
    from ..report_sections import _reason

    try:
        t = make()
    except (ValueError, KeyError, ArithmeticError, np.linalg.LinAlgError) as exc:
        rp.show(rp.not_estimable(what, _reason(exc, r.run)))
        return None
    return r.tables.register(t)


def band_count(n: int, min_cell: int = privacy.DEFAULT_MIN_CELL, width: int = 10) -> str:
    """A count in words that reveals no exact small number: "fewer than 11", else a band of
    `width` ("11 to 20", "21 to 30", ...) starting at `min_cell`."""
    n = int(n)
    if n <= 0:
        return "none"
    if n < min_cell:
        return f"fewer than {min_cell}"
    lo = min_cell + ((n - min_cell) // width) * width
    return f"{lo} to {lo + width - 1}"


def primary_numbers(store: Any, scope: str = "collaborative") -> dict[str, str]:
    """Estimand label -> its primary estimate formatted as every section prints it
    ("0.81 (0.70 to 0.94)"; :func:`analysis.tables.format_estimate_ci`)."""
    return {e.label: T.format_estimate_ci(row["estimate"], row["lower"], row["upper"])
            for e, row in T.primary_rows(store, scope) if row["status"] == "ok"}


# ---------------------------------------------------------------------------------------------
# sections
def header(r: CollaborativeReport) -> None:
    """The report's header: hospitals, period, data cut-off (no per-hospital numbers)."""
    ep = r.run.episodes
    first, last = (ep["month"].min(), ep["month"].max()) if len(ep) else (None, None)
    period = f"{rp.month_label(first)} to {rp.month_label(last)}" if len(ep) else "no episodes"
    plan = mt.md_text(r.plan.version)
    _show(f"**IPSO collaborative: {len(r.run.sites)} hospitals.** Period {period}; data as of "
          f"{r.as_of}; analysis plan {plan}. Hospitals appear under pseudonyms fixed for this "
          "set of reports.")


def summary(r: CollaborativeReport) -> None:
    """Summary: the primary finding of each main estimand in words (what is estimated: per
    child with the same case mix, per recognised episode, ...), with the ratio as the tables
    print it."""
    if _no_store(r, "Summary"):
        return
    from ..wording import effect_sentence, not_estimable_sentence

    ci, alpha = mt._ci(r.store)
    n_sites = len(r.run.sites)
    waves = r.run.sites["wave"].nunique()
    lines = ["## Summary", "",
             f"IPSO brought {n_sites} hospitals, going live in {waves} waves, to "
             "one sepsis bundle. An interrupted time series pooled across hospitals compares "
             "each outcome after go-live with what the same hospitals' own trends before "
             "go-live predict. Primary findings (each estimand's one primary analysis; "
             f"{ci} confidence intervals):", ""]
    for e, row in T.primary_rows(r.store):
        if e.secondary_to:
            continue
        m = mt.measure_words(e)
        if row["status"] != "ok":
            text = not_estimable_sentence(m, str(row["status_reason"] or "") or None)
            lines.append(f"- {mt.md_text(text)}")
            continue
        tp = int(row["time_point"]) if pd.notna(row["time_point"]) else e.time_point
        when = f"{tp} months after go-live" if tp else "After go-live"
        text = effect_sentence(row["estimate"], row["lower"], row["upper"], m, role="primary",
                               kind="collaborative", level=1 - alpha, subject=when)
        ratio = T.format_estimate_ci(row["estimate"], row["lower"], row["upper"])
        lines.append(f"- {mt.md_text(text.rstrip('.'))}; ratio {ratio}.")
    sec = [e for e in r.plan.at_level("collaborative") if e.secondary_to]
    if sec:
        lines += ["", "Secondary estimands (all recognised episodes, including the milder "
                  "cases that better recognition adds) are labelled as such in the primary "
                  "estimand table; every sensitivity analysis is in its own section."]
    _show("\n".join(lines))


def context_and_intervention(r: CollaborativeReport) -> None:
    """Context and intervention: the five key processes, the bundle, and the waves (number of
    hospitals per wave banded, no count from 1 to ``min_cell - 1``)."""
    s = r.run.settings
    procs = "; ".join(f"({i}) {w}" for i, (_, w) in enumerate(KEY_PROCESSES, 1))
    sites = r.run.sites.assign(go=pd.to_datetime(r.run.sites["go_live"]).dt.to_period("M"))
    waves = []
    for w, g in sites.groupby("wave", sort=True):
        first, last = g["go"].min(), g["go"].max()
        when = str(first) if first == last else f"{first} to {last}"
        waves.append(f"| {int(w)} | {when} | {band_count(len(g), r.min_cell)} |")
    lines = [
        "## Context and intervention", "",
        "IPSO (Improving Pediatric Sepsis Outcomes) is a quality-improvement collaborative of "
        "US children's hospitals. Each hospital implemented five key processes for children "
        f"with suspected sepsis: {procs}. An episode is bundle-compliant when sepsis was "
        "recognised (screen, huddle or order set) and the first fluid bolus came within "
        f"{s.fluid_window_min:g} minutes and the first antibiotic within "
        f"{s.antibiotic_window_min:g} minutes of time zero (the earliest sign of recognition).",
        "",
        "Hospitals went live in waves; a hospital's months from its go-live month on count as "
        "after go-live. The number of hospitals in each wave is given in bands so that no "
        "hospital can be singled out.", "",
        "| Wave | Go-live | Hospitals |", "|:---|:---|:---|", *waves, "",
        ": Waves of the roll-out {#tbl-waves}", "",
        "Context elements (hospital size, leadership, prior sepsis work) are described by the "
        "collaborative's authors; this report covers what the registry data show.",
    ]
    _show("\n".join(lines))


def study_design(r: CollaborativeReport) -> None:
    """Study design: staggered interrupted time series, comparison, analysis plan."""
    months = r.run.episodes["month"]
    span = (f"{rp.month_label(months.min())} to {rp.month_label(months.max())}"
            if len(months) else "no months")
    _show("\n".join([
        "## Study design", "",
        "A multi-site interrupted time series with staggered go-live dates (a stepped, "
        "non-randomised roll-out). Each hospital contributes its months before go-live as its "
        "own control; hospitals not yet live inform the calendar effects of those already live, "
        "so a change that hits every hospital at once (for example COVID-19) is not read as an "
        "effect of IPSO while untreated hospitals remain. The first months after go-live are a "
        "phase-in, as set in the analysis plan.", "",
        f"Data: one row per sepsis episode from the collaborative's registry, {span}, cut at "
        f"{r.as_of}. Estimands, their primary analyses, sensitivity analyses and descriptive "
        f"summaries were fixed in the analysis plan (version {mt.md_text(r.plan.version)}) before "
        "estimation; every number below comes from one results store computed once from that "
        "plan.",
    ]))


def measures(r: CollaborativeReport) -> None:
    """Measures: every estimand of the plan with its definition."""
    _show(mt.measures_section(r.plan))


def _quality(r: CollaborativeReport) -> dict[str, int]:
    return {"quarantined": int(len(r.run.quarantine)),
            "excluded_after_as_of": int(r.run.excluded_after_as_of)}


def statistical_methods(r: CollaborativeReport) -> None:
    """Statistical methods generated from the plan and the store (models, offsets, covariance,
    pooling, case-mix model with c-statistic and calibration, software versions), then the
    calibration figure and the publication rules."""
    _show(mt.statistical_methods(r.plan, r.store, min_cell=r.min_cell))
    if r.store is not None:
        from .. import estimate_plots as ep

        _figure(r, "Calibration of the case-mix model",
                lambda: ep.calibration_figure(r.store, min_cell=r.min_cell))


def results_heading(r: CollaborativeReport) -> None:
    """The Results heading."""
    _show("## Results")


def table_one(r: CollaborativeReport) -> None:
    """Results: Table 1 (episode characteristics before and after go-live, counts suppressed)."""
    _show("### Table 1\n\nCharacteristics of the collaborative's sepsis episodes before and "
          "after each hospital's go-live.")
    _table(r, "Table 1", lambda: T.table_one(r.run.episodes, min_cell=r.min_cell))


def primary_results(r: CollaborativeReport) -> None:
    """Results: the primary estimand table (one primary per question, others labelled by role)
    and the figures: primary estimates, event studies with leads and the pre-trend test,
    recognition chart, hospital effects, funnel plot, death and discharge curves."""
    _show("### Primary estimand table and figures")
    if _no_store(r, "Primary estimates"):
        return
    from .. import estimate_plots as ep

    _table(r, "Primary estimand table",
           lambda: T.primary_estimand_table(r.store, min_cell=r.min_cell))
    _figure(r, "Primary estimates", lambda: ep.primary_estimates_figure(r.store))
    _show("#### Event studies\n\nEach primary imputation estimate by month since go-live. The "
          "months before go-live are placebo estimates: if the hospitals' trends before go-live "
          "predict their own untreated months well, they scatter around 1, and the joint test "
          "that all of them are 1 does not reject.")
    for est in _event_study_estimands(r.store):
        _show(_pretrend_words(r, est))
        _figure(r, f"Event study ({est})", lambda est=est: ep.event_study_figure(r.store, estimand=est))
    _show("#### Recognition over time")
    recognition_chart(r)
    _show("#### Hospitals")
    _figure(r, "Hospital effects", lambda: ep.site_effects_figure(r.store, r.labels))
    _figure(r, "Risk-adjusted comparison of hospitals",
            lambda: ep.funnel_figure(r.store, r.labels))
    _show(_funnel_words(r))
    _show("#### Survival and length of stay")
    _figure(r, "Survival curves", lambda: ep.curves_figure(r.store, min_cell=r.min_cell))
    if any(e.id == "hospital_days" for e in r.plan.at_level("collaborative")):
        _figure(r, "Length of stay curves", lambda: ep.curves_figure(
            r.store, estimand="hospital_days", min_cell=r.min_cell))
    _show("#### Bundle compliance by hospital")
    bundle_grid(r)


def _event_study_estimands(store: Any) -> list[str]:
    f = store.frame
    if "component" not in f:
        return []
    ev = f[(f["component"] == "event_time") & (f["scope"] == "collaborative")]
    order = [e.id for e in store.plan.at_level("collaborative")]
    have = set(ev["estimand"])
    return [e for e in order if e in have]


def _pretrend_words(r: CollaborativeReport, estimand: str) -> str:
    label = r.plan.get(estimand, "collaborative").label
    t = r.store.pretrend_test(estimand)
    ev = r.store.event_study(estimand)
    leads = int((ev["time_point"] < 0).sum()) if len(ev) else 0
    if t is None or not np.isfinite(t.get("p_value", math.nan)):
        return f"**{mt.md_text(label)}.** {leads} months before go-live; no pre-trend test."
    p = T.format_p(t["p_value"])
    p = p if p.startswith(("<", ">")) else f"= {p}"
    verdict = ("no evidence that the months before go-live differ from 1"
               if t["p_value"] >= 0.05 else "the months before go-live differ from 1: the "
               "pre-go-live trends may not predict the untreated months well")
    den = int(t["n_sites"] - t["df"]) if np.isfinite(t.get("n_sites", math.nan)) else 0
    stat = (f"F = {t['statistic']:.2f} on {int(t['df'])} and {den} degrees of freedom, "
            if den > 0 and np.isfinite(t["statistic"]) else "")
    return (f"**{mt.md_text(label)}.** Pre-trend test, jointly over the {leads} months before "
            f"go-live: {stat}p {p} ({verdict}).")


def _funnel_words(r: CollaborativeReport) -> str:
    from ..wording import expected_flags_sentence

    oe = r.store.frame
    if "component" not in oe:
        return ""
    c = oe[(oe["component"] == "oe") & (oe["scope"] == "collaborative")]
    flagged = c[c["quantity"] == "hospitals flagged"]
    n = len(r.run.sites)
    words = (expected_flags_sentence(n) if n * 0.002 >= 0.5 else
             f"With {n} hospitals, fewer than one would be expected outside the 99.8% limits by "
             "chance alone.")
    if len(flagged) and np.isfinite(flagged["estimate"].iloc[0]):
        k = int(flagged["estimate"].iloc[0])
        words = (f"{k if k else 'No'} hospital{' was' if k == 1 else 's were'} outside the "
                 "99.8% limits. " + words)
    return mt.md_text(words)


def _publishable_months(r: CollaborativeReport, count: str, denominator: str) -> pd.DataFrame:
    """All hospitals' monthly `count` over `denominator` for a chart: months with a denominator,
    small counts blanked (:func:`analysis.reporting.masked_for_plot`) and left out; at least 3
    months or a ``ValueError``."""
    from ..measures import monthly_measures

    coll = monthly_measures(r.run.episodes, r.run.site_months, level="collaborative")
    coll = coll[coll[denominator] > 0].reset_index(drop=True)
    coll = rp.masked_for_plot(coll, [count, denominator], min_cell=r.min_cell)
    coll = coll.dropna(subset=[count, denominator]).reset_index(drop=True)
    if len(coll) < 3:
        raise ValueError("too few months with publishable counts")
    return coll


def recognition_chart(r: CollaborativeReport) -> None:
    """Laney u' chart of recognised sepsis episodes per 1,000 admissions, all hospitals, by
    calendar month (months whose counts are small are not drawn)."""
    from .. import spc
    from ..figures import ReportFigure
    from ..report_sections import _fig_from

    def make():
        coll = _publishable_months(r, "episodes", "admissions")
        ch = spc.up_chart(coll, "month", "episodes", "admissions", multiply=1000,
                          detect_shifts=True)
        ax = ch.plot(title="Sepsis episodes recognised per 1,000 admissions, all hospitals",
                     ylabel="per 1,000 admissions")
        ax.set_xlabel("Calendar month")
        fig = _fig_from(ax)
        fig.set_size_inches(7.0, 3.6)
        fig.tight_layout()
        caption = ("Laney u' chart of recognised sepsis episodes per 1,000 hospital admissions, "
                   "all hospitals, by calendar month; hospitals went live in waves, so later "
                   "months mix hospitals before and after go-live. Sustained shifts found by the "
                   "runs rules are marked. Descriptive: the estimate of the change in "
                   "recognition is in the primary estimand table and its event study.")
        alt = ("Control chart of monthly sepsis recognition per 1,000 admissions across all "
               f"hospitals over {len(coll)} months with centre line and control limits.")
        return ReportFigure(fig, "recognition-chart", caption, alt, safe=True,
                            provenance=_PROVENANCE_AGG)

    _figure(r, "Recognition chart", make)


def bundle_grid(r: CollaborativeReport) -> None:
    """Bundle compliance: the collaborative p' chart, then one small p' chart per hospital
    (pseudonyms, limits split at go-live) wrapped to the page width over as many figures as
    needed. Monthly points of one hospital rest on small counts, so the hospital grid is a
    raster image and not exported for publication."""
    from .. import spc
    from ..figures import ReportFigure
    from ..report_sections import _fig_from

    def overall():
        coll = _publishable_months(r, "bundle_compliant", "episodes")
        ax = spc.pp_chart(coll, "month", "bundle_compliant", "episodes", detect_shifts=True,
                          multiply=100).plot(title="Bundle compliance, all hospitals (%)",
                                             ylabel="% of episodes")
        ax.set_xlabel("Calendar month")
        fig = _fig_from(ax)
        fig.set_size_inches(7.0, 3.6)
        fig.tight_layout()
        return ReportFigure(fig, "bundle-compliance-chart",
                            "Laney p' chart of bundle compliance, all hospitals, by calendar month; "
                            "sustained shifts are marked. Hospitals went live in waves.",
                            f"Control chart of monthly bundle compliance (%) across all hospitals "
                            f"over {len(coll)} months with centre line and control limits.",
                            safe=True, provenance=_PROVENANCE_AGG)

    _figure(r, "Collaborative bundle compliance", overall)

    def pages():
        sm = r.shared.get("site_months")
        if isinstance(sm, rp.NotEstimable):
            raise ValueError(sm.reason)
        sm = sm[sm["episodes"] > 0].copy()
        sm["phase"] = np.where(sm["post"], "after", "before")
        sm = sm.rename(columns={"site_id": "hospital"})  # the caption names the facet column
        fc = spc.facet_charts(sm, "pp", "hospital", x="month", y="bundle_compliant", n="episodes",
                              labels=r.run.pseudonyms, part="phase", multiply=100)
        # pseudonym order A, B, ..., Z, AA, AB (not A, AA, AB, ..., B)
        fc.charts = dict(sorted(fc.charts.items(), key=lambda kv: (len(kv[0]), kv[0])))
        figs = fc.pages(max_rows=4, title="Bundle compliance by hospital (%)")
        out = []
        for i, fig in enumerate(figs, 1):
            out.append(ReportFigure(
                fig, f"bundle-compliance-by-hospital-{i}",
                f"Bundle compliance by hospital (%), part {i} of {len(figs)}: one p' chart per "
                "hospital under its pseudonym, limits split at go-live.",
                f"Small multiples of monthly bundle compliance, part {i} of {len(figs)}, one "
                "panel per hospital.", safe=False,
                provenance="monthly site counts (raster; not for publication)"))
        return out

    _figure(r, "Bundle compliance by hospital", pages)


def processes_and_outcomes(r: CollaborativeReport) -> None:
    """Results: the case-mix-adjusted associations of the key processes with 30-day mortality
    (a readable table; associations, not effects)."""
    _show("### Processes and outcomes")

    def make():
        pa = r.shared.get("associations")
        if isinstance(pa, rp.NotEstimable):
            raise ValueError(pa.reason)
        return T.process_outcome_table(pa, min_cell=r.min_cell)

    _table(r, "Process-outcome associations", make)


def sensitivity_analyses(r: CollaborativeReport) -> None:
    """Sensitivity analyses registered in the plan (placebo in time, leave one wave out,
    transition 0/12 months, covariance, Rambachan-Roth bounds, ...): what each changes, the
    table and figure from the store."""
    _show("## Sensitivity analyses")
    if _no_store(r, "Sensitivity analyses"):
        return
    from .. import estimate_plots as ep

    _show(sensitivity_text(r.store))
    _table(r, "Sensitivity analyses", lambda: T.sensitivity_table(r.store, min_cell=r.min_cell))
    f = r.store.frame
    sens = f[(f["scope"] == "collaborative") & (f["role"] == "sensitivity")]
    have = [e.id for e in r.plan.at_level("collaborative") if e.id in set(sens["estimand"])]
    own = [e for e in have if (sens.loc[sens["estimand"] == e, "spec"] == "rambachan_roth").any()]
    for est in own:  # the staggered primaries: many sensitivity analyses each, one figure each
        label = r.plan.get(est, "collaborative").label
        _figure(r, f"Sensitivity analyses ({label})", lambda est=est, label=label: _titled(
            ep.sensitivity_figure(r.store, estimands=[est], name=f"sensitivity-{ep._slug(label)}"),
            label))
    rest = [e for e in have if e not in own]
    if rest:
        _figure(r, "Sensitivity analyses", lambda: _titled(ep.sensitivity_figure(
            r.store, estimands=rest, name="sensitivity-analyses"), "Other estimands"))


def _titled(rf: Any, what: str) -> Any:
    """`rf` with its caption starting with what it shows."""
    rf.caption = f"{what}: {rf.caption[:1].lower()}{rf.caption[1:]}"
    return rf


def sensitivity_text(store: Any) -> str:
    """One bullet per registered sensitivity specification of the collaborative estimands:
    its name, what it changes (the plan's reason) and the estimands it is run for; the
    Rambachan-Roth bounds in words."""
    plan = store.plan
    specs: dict[str, dict[str, Any]] = {}
    for e in plan.at_level("collaborative"):
        for s in e.specs:
            if s.role != "sensitivity":
                continue
            d = specs.setdefault(s.name, {"label": T.spec_label(s.name, s.estimator),
                                          "reason": T.readable(s.reason, plan), "estimands": []})
            d["estimands"].append(mt._lower(e.label))
    lines = ["Each sensitivity analysis changes one assumption of the primary analysis. The "
             "primary analysis is kept whatever they show; agreement means the conclusion does "
             "not rest on that assumption.", ""]
    for d in specs.values():
        reason = d["reason"].rstrip(".?! ")
        lines.append(f"- **{mt.md_text(d['label'])}** ({mt.md_text(mt._join(d['estimands']))}): "
                     f"{mt.md_text(reason[:1].upper() + reason[1:])}.")
    f = store.frame
    rr = f[(f["component"] == "effect") & (f["scope"] == "collaborative")
           & (f["spec"] == "rambachan_roth") & f["bound_lower"].notna()] if "component" in f else f.iloc[0:0]
    for est, g in rr.groupby("estimand", sort=False):
        label = plan.get(est, "collaborative").label
        parts = [f"{x['variant']}: {T._bound(x['bound_lower'])} to {T._bound(x['bound_upper'])}"
                 for _, x in g.iterrows()]
        lines += ["", f"Rambachan-Roth bounds for {mt.md_text(mt._lower(label))} (identified set "
                  "when the post-go-live departure from the trend may be up to M times the "
                  "largest pre-go-live one): " + mt.md_text("; ".join(parts)) + "."]
    return "\n".join(lines)


def data_quality(r: CollaborativeReport) -> None:
    """Data quality: the data window, rows set aside by validation (by rule), missing values."""
    _show("## Data quality")
    rp.show(rp.data_window_note(r.run))
    rp.show(rp.quarantine_table(r.run))
    rp.show(rp.missingness_table(r.run.episodes, min_cell=r.min_cell))


def limitations(r: CollaborativeReport) -> None:
    """Limitations generated from the plan and the data."""
    _show(mt.limitations_section(r.plan, r.store, quality=_quality(r), min_cell=r.min_cell))


def squire_appendix(r: CollaborativeReport) -> None:
    """Appendix: the SQUIRE 2.0 checklist mapping every item to its section."""
    _show(mt.squire_checklist(heading="## Appendix: SQUIRE 2.0 checklist"))


def reproducibility(r: CollaborativeReport) -> None:
    """Reproducibility: parameters (as_of as the month used), the one data hash, code and
    package versions, renderer."""
    params = dict(r.parameters)
    params["as_of"] = r.as_of
    rp.show(rp.reproducibility_footer(params, data_hash=r.data_hash, renderer=r.renderer,
                                      source=r.run.source))


#: The report's sections in order: (heading, function). SQUIRE 2.0 order (summary, context,
#: design, measures, methods, results, sensitivity, data quality, limitations, appendix).
SECTIONS: tuple[tuple[str, Callable[[CollaborativeReport], None]], ...] = (
    ("Summary", summary),
    ("Context and intervention", context_and_intervention),
    ("Study design", study_design),
    ("Measures", measures),
    ("Statistical methods", statistical_methods),
    ("Results", results_heading),
    ("Table 1", table_one),
    ("Primary estimand table and figures", primary_results),
    ("Processes and outcomes", processes_and_outcomes),
    ("Sensitivity analyses", sensitivity_analyses),
    ("Data quality", data_quality),
    ("Limitations", limitations),
    ("Appendix: SQUIRE 2.0 checklist", squire_appendix),
    ("Reproducibility", reproducibility),
)


def render_all(r: CollaborativeReport) -> None:
    """Every section in order (the notebook calls them one per cell; tests call this)."""
    header(r)
    for _, fn in SECTIONS:
        fn(r)


"""Generated manuscript text: measures, statistical methods, limitations, SQUIRE 2.0 checklist.

Every sentence is generated from the analysis plan (:class:`analysis.plan.Plan`) and the results
store (:class:`analysis.results.ResultsStore`); every number in it is read from one of them
(estimates, intervals, the case-mix model's c-statistic, transition months, time points, the plan
version, counts of hospitals with and without an own estimate). Counts of episodes or rows go
through :func:`analysis.privacy.suppress_count`; no identifier (hospital id or name, episode or
patient id) is ever written, and internal names (``sam30``, ``its_multisite``, ...) are replaced
by what a reader is told (:func:`analysis.tables.readable`).

* :func:`measures_section` -- every estimand with its definition (ICH E9(R1) attributes).
* :func:`statistical_methods` -- models, offsets and expected values, transition, slope,
  covariance and interval, time point, pooling of hospital effects, the case-mix model with its
  c-statistic and calibration, sensitivity and descriptive analyses, software versions.
* :func:`limitations_section` -- generated from the plan and the data: estimands resting on
  extrapolated calendar effects, hospitals and estimands not estimable, data quality, caveats of
  secondary estimands, sensitivity analyses that change the conclusion, known limits the plan
  notes.
* :func:`squire_checklist` -- SQUIRE 2.0 (Ogrinc et al., BMJ Qual Saf 2016) items and sub-items
  mapped to the report section that covers each (:data:`SQUIRE_ITEMS`, :data:`SQUIRE_SECTIONS`).
* :func:`methods_markdown` -- all four, the text of ``methods.md``.

Output is Markdown (pandoc / CommonMark); text from the plan or the store is escaped
(:func:`md_text`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from . import privacy

__all__ = [
    "REPORT_SECTIONS", "SQUIRE_ITEMS", "SQUIRE_SECTIONS", "limitations_section", "md_text",
    "measure_words", "measures_section", "methods_markdown", "squire_checklist", "squire_coverage",
    "statistical_methods", "summary_section",
]

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_MD = set("\\`*_[]<>|#$@~^{}&")


def md_text(value: Any) -> str:
    """Text from the plan or the store for Markdown prose: one line, and every character that is
    markup in CommonMark or pandoc Markdown (emphasis, links, HTML, code, math, citations,
    super/subscript, tables) backslash-escaped, so it shows literally."""
    s = _CONTROL.sub(" ", "" if value is None else str(value)).strip()
    return "".join("\\" + c if c in _MD else c for c in s)


def _prose(value: Any, plan: Any = None) -> str:
    """Plan/store text with internal names made readable, then escaped."""
    from .tables import readable

    return md_text(readable(value, plan))


def _join(words: Sequence[str]) -> str:
    words = list(words)
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


def _lower(label: str) -> str:
    return label[:1].lower() + label[1:] if label[1:2].islower() else label


def _ci(store: Any) -> tuple[str, float]:
    alpha = float((getattr(store, "meta", {}) or {}).get("alpha") or 0.05)
    return f"{100 * (1 - alpha):g}%", alpha


def _fmt_ci(est: Any, lo: Any, hi: Any) -> str:
    from .tables import format_estimate_ci

    return format_estimate_ci(est, lo, hi)


def _component(store: Any, component: str) -> pd.DataFrame:
    """Supporting rows of the store (empty for a store without the ``component`` column)."""
    if store is None or "component" not in store.frame:
        return store.frame.iloc[0:0] if store is not None else pd.DataFrame()
    f = store.frame
    return f[f["component"] == component]


def _n_hospitals(store: Any) -> int | None:
    """Hospitals in the store: its site scopes (or the n_sites of a supporting row)."""
    if store is None:
        return None
    f = store.frame
    sites = f.loc[f["scope"] != "collaborative", "scope"].nunique()
    if sites:
        return int(sites)
    if "n_sites" in f and f["n_sites"].notna().any():
        return int(f["n_sites"].max())
    return None


# ---------------------------------------------------------------------------------------------
# measures
def measures_section(plan: Any, *, level: str = "collaborative", heading: str = "## Measures") -> str:
    """Every estimand at `level` with its definition: population, variable, intercurrent events
    and their handling, population-level summary with its time point, per what, and direction."""
    from .plan import VARIABLES

    out = [heading, "",
           f"Every estimand was defined in the analysis plan (version {md_text(plan.version)}) "
           "before any model was chosen, with the attributes of the ICH E9(R1) addendum: the "
           "population, the variable, how intercurrent events are handled, the population-level "
           "summary and the time point. Each has exactly one primary analysis; secondary "
           "estimands are labelled with the estimand they qualify.", ""]
    labels = {e.id: e.label for e in plan.at_level(level)}
    for e in plan.at_level(level):
        var = VARIABLES.get(e.variable)
        out.append(f"**{md_text(e.label)}**" + (f" (secondary to {md_text(_lower(labels.get(e.secondary_to, '')))})"
                                                 if e.secondary_to else ""))
        out.append("")
        out.append(f"- Population: {_prose(e.population, plan)}.")
        if var is not None:
            out.append(f"- Variable: {_prose(var.description, plan)}.")
        if e.intercurrent_events:
            ies = "; ".join(f"{_prose(i.event, plan)} ({_prose(i.strategy, plan)} strategy): "
                            f"{_prose(i.handling, plan)}" for i in e.intercurrent_events)
            out.append(f"- Intercurrent events: {ies}.")
        else:
            out.append("- Intercurrent events: none apply (a rate over admissions).")
        tp = (f"{int(e.time_point)} months after go-live" if e.time_point else
              "over the months after go-live")
        out.append(f"- Summary: {_prose(e.summary, plan)} ({md_text(e.scale)}), "
                   f"{md_text(e.per)}, {tp}.")
        out.append(f"- Unit: {md_text(e.unit)}; {md_text(e.better)} is better.")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


# ---------------------------------------------------------------------------------------------
# statistical methods
_COVARIANCE = {
    "cluster": "cluster-robust by hospital (CR1, with the small-sample factor G/(G - 1) for G "
               "hospitals)",
    "model": "model-based",
    "quasi": "model-based with the Pearson dispersion (quasi-likelihood)",
    "hac": "Newey-West (heteroscedasticity and autocorrelation consistent)",
}
_EXPECTED_KIND = {
    "probability": "a logistic regression (expected probability)",
    "mean": "a log-linear quasi-Poisson regression (expected mean)",
    "median_time": "least squares on log minutes among children treated after T0 (expected median "
                   "of a log-normal time)",
}


def _spec_sentence(e: Any, s: Any) -> str:
    """A method sentence from a specification alone (when the store has none)."""
    from .plan import VARIABLES

    kind = VARIABLES[e.variable].kind if e.variable in VARIABLES else ""
    fam = s.family or ("gaussian" if kind == "median_time" else "poisson")
    if fam == "gaussian":
        model = "Gaussian segmented regression of the log monthly median"
    else:
        off = {"rate": "admissions", "probability": "expected events under baseline care",
               "mean": "expected hospital days under baseline care"}.get(kind, "episodes")
        if s.standardisation != "casemix" and kind != "rate":
            off = "episodes"
        model = f"Poisson (quasi-likelihood) segmented regression with an offset of {off}"
    change = "a level and slope change" if s.slope_change else "a level change"
    tr = (f", leaving out the first {s.transition} months after go-live (phase-in)"
          if s.transition else "")
    return f"{model}, with {change}{tr}; effect {s.time_point} months after go-live."


def _casemix_words(store: Any, casemix: Any, plan: Any) -> str:
    """The case-mix model sentence: c-statistic (interval), Hosmer-Lemeshow, calibration."""
    fit = _component(store, "model_fit")
    c = h = None
    if len(fit):
        f = fit[fit["estimand"] == "sam30"] if (fit["estimand"] == "sam30").any() else fit
        cs = f[f["quantity"] == "c-statistic"]
        hl = f[f["quantity"] == "Hosmer-Lemeshow"]
        if len(cs) and np.isfinite(cs["estimate"].iloc[0]):
            r = cs.iloc[0]
            c = (f"a c-statistic of {_fmt_ci(r['estimate'], r['lower'], r['upper'])}"
                 if np.isfinite(r["lower"]) else f"a c-statistic of {r['estimate']:.2f}")
        if len(hl) and np.isfinite(hl["statistic"].iloc[0]):
            r = hl.iloc[0]
            from .tables import format_p

            p = format_p(r["p_value"])
            h = (f"Hosmer-Lemeshow statistic {r['statistic']:.1f} on {int(r['df'])} degrees of "
                 f"freedom (p {p if p.startswith(('<', '>')) else '= ' + p})")
        ncal = int((f["quantity"] == "calibration").sum())
    elif casemix is not None:
        cstat = float(getattr(casemix, "c_statistic", math.nan))
        c = f"a c-statistic of {cstat:.2f}" if np.isfinite(cstat) else None
        hlt = getattr(casemix, "hosmer_lemeshow", None) or {}
        if hlt and np.isfinite(hlt.get("statistic", math.nan)):
            from .tables import format_p

            p = format_p(hlt["p_value"])
            h = (f"Hosmer-Lemeshow statistic {hlt['statistic']:.1f} on {int(hlt['df'])} degrees "
                 f"of freedom (p {p if p.startswith(('<', '>')) else '= ' + p})")
        ncal = len(getattr(casemix, "calibration", []))
    else:
        ncal = 0
    from .riskadj import DEFAULT_CASEMIX
    from .tables import COLUMN_LABELS

    covs = _join([COLUMN_LABELS.get(x, x.replace("_", " ")) for x in DEFAULT_CASEMIX])
    base = ("The case-mix model of 30-day sepsis-attributable mortality is a logistic regression "
            f"on {covs}, fitted to episodes before each hospital's go-live (so it carries no "
            "effect of IPSO); it gives each episode's expected deaths under baseline care.")
    if c is None and h is None:
        return base + (" Its fit statistics (c-statistic, calibration) are not in this run's "
                       "results store.")
    words = " In the baseline episodes it discriminated with " + (c or "an unknown c-statistic")
    if h:
        words += f"; calibration: {h}"
    if ncal:
        words += (f", and observed against predicted risk by tenth of predicted risk is shown in "
                  "the calibration figure")
    return base + words + "."


def statistical_methods(plan: Any, store: Any = None, *, casemix: Any = None,
                        versions: Mapping[str, str] | None = None, level: str = "collaborative",
                        min_cell: int = privacy.DEFAULT_MIN_CELL,
                        heading: str = "## Statistical methods") -> str:
    """The statistical methods section (see the module docstring). `store`: the results store
    (its method sentences, model-fit rows and metadata are used when present); `casemix`: a
    :class:`analysis.riskadj.CaseMixModel` when the store holds no model-fit rows; `versions`:
    package -> version (default :func:`analysis.reporting.package_versions`)."""
    from .plan import VARIABLES
    from .tables import COLUMN_LABELS, spec_label

    ci, alpha = _ci(store)
    out = [heading, ""]
    hosp = _n_hospitals(store)
    out.append(
        "**Design.** Interrupted time series across hospitals with staggered go-live dates"
        + (f" ({hosp} hospitals)" if hosp else "") + ". Each hospital's months before its "
        "go-live are its own control, and hospitals not yet live inform the calendar trend of "
        "those already live. Estimands, their primary analyses, sensitivity analyses and "
        f"descriptive summaries were fixed in the analysis plan (version {md_text(plan.version)}) "
        "before estimation; every number in this report comes from one results table computed "
        f"once from that plan. Intervals are {ci} confidence intervals and p-values two-sided "
        "tests of no change; secondary, sensitivity and descriptive results are not adjusted for "
        "multiplicity and are read as support for, not replacements of, the primary results.")
    out.append("")

    # -- primary models, grouped by their method sentence
    out.append("**Primary analyses.** " + (
        "All hospitals' monthly series were analysed together:" if level == "collaborative"
        else "Each hospital's monthly series was analysed:"))
    out.append("")
    groups: dict[str, list[str]] = {}
    for e in plan.at_level(level):
        s = e.primary
        sentence = ""
        if store is not None:
            try:
                r = store.primary(e.id, "collaborative") if level == "collaborative" else None
            except KeyError:
                r = None
            if r is not None and isinstance(r.get("method"), str) and r["method"].strip():
                sentence = r["method"]
        if not sentence:
            sentence = _spec_sentence(e, s)
        key = _prose(sentence, plan)
        groups.setdefault(key, []).append(e.label)
    for sentence, labels in groups.items():
        out.append(f"- {md_text(_join([labels[0]] + [_lower(x) for x in labels[1:]]))}: {sentence}")
    out.append("")

    prim = [e.primary for e in plan.at_level(level)]
    covs = sorted({s.covariance for s in prim})
    cov_words = "; ".join(_COVARIANCE.get(c, c) for c in covs)
    ints = sorted({s.interval for s in prim})
    int_words = _join(["the normal distribution" if i == "z" else
                       "a t distribution with G - 1 degrees of freedom" for i in ints])
    transitions = sorted({s.transition for s in prim if s.time_point})
    tps = sorted({s.time_point for s in prim if s.time_point})
    slopes = [e.label for e in plan.at_level(level) if e.primary.slope_change]
    trends_shared = [e.label for e in plan.at_level(level)
                     if e.primary.estimator == "its_multisite"
                     and not e.primary.params.get("site_trends", True)]
    seas = [(e.label, e.primary.seasonality) for e in plan.at_level(level) if e.primary.seasonality]
    txt = (f"Standard errors are {cov_words}; intervals and p-values use {int_words}. "
           f"The first {_join([str(t) for t in transitions])} months after each go-live are a "
           "phase-in, left out of the fit, and effects are read "
           f"{_join([str(t) for t in tps])} months after go-live. ")
    if slopes:
        txt += ("A change in slope after go-live is modelled besides the change in level for "
                f"{md_text(_join([_lower(x) for x in slopes]))} (a shift of a proportion's logit "
                "drifts on the ratio scale as the baseline rises), so their effect is the level "
                "plus the slope times the months since go-live. ")
    if trends_shared:
        txt += (f"For {md_text(_join([_lower(x) for x in trends_shared]))} one calendar trend "
                "is shared by all hospitals (hospital intercepts; the staggered go-lives "
                "identify it), because a trend per hospital fitted on few deaths biases the "
                "ratio; the other estimands have a trend per hospital. ")
    if seas:
        txt += " ".join(f"{md_text(lab)} adds calendar-month seasonality ({k} Fourier pair(s))."
                        for lab, k in seas)
    out.append(txt.strip())
    out.append("")

    # -- expected values (per-child estimands)
    std = [e for e in plan.at_level(level) if e.primary.standardisation == "casemix"]
    if std:
        kinds = sorted({VARIABLES[e.variable].kind for e in std if e.variable in VARIABLES})
        casemix_cols = list(dict.fromkeys(c for e in std for c in e.primary.casemix))
        out.append(
            "**Expected values (per child with the same case mix).** For "
            f"{md_text(_join([_lower(e.label) for e in std]))}, each episode's outcome is "
            "compared with what baseline care would have given that episode: a model of the "
            "outcome on case mix ("
            + md_text(_join([COLUMN_LABELS.get(c, c.replace('_', ' ')) for c in casemix_cols]))
            + ") fitted to episodes before go-live only ("
            + _join([_EXPECTED_KIND[k] for k in kinds if k in _EXPECTED_KIND])
            + ") gives the expected value, which enters the time series as the offset (counts) "
            "or the denominator of a standardised ratio (times). The effect is therefore the "
            "change for the same children, not moved by the milder episodes that better "
            "recognition adds; the population versions (all recognised episodes) are reported "
            "as labelled secondary estimands.")
        out.append("")
    out.append("**Case-mix model.** " + _casemix_words(store, casemix, plan))
    out.append("")

    # -- hospital effects
    site_level = plan.at_level("site")
    if site_level:
        spec = site_level[0].primary
        words = {
            "site_eb": ("each hospital's own segmented regression (model-based standard errors) "
                        "is partially pooled toward the mean of all hospitals by empirical Bayes "
                        "(restricted maximum likelihood between-hospital variance), so a hospital "
                        "with little information borrows from the others; hospitals with too "
                        "little information get no own estimate"),
            "site_its": "each hospital's own segmented regression, without borrowing",
        }.get(spec.estimator, f"{spec_label(spec.name, spec.estimator).lower()}")
        pooled = [e.label for e in plan.at_level("collaborative")
                  if any(s.estimator == "site_pooled" for s in e.specs)]
        txt = f"**Hospital effects.** For hospital-level results, {words}."
        if pooled:
            txt += (" As a sensitivity analysis of "
                    f"{md_text(_join([_lower(x) for x in pooled]))}, the hospitals' own "
                    "estimates are pooled by random-effects meta-analysis (restricted maximum "
                    "likelihood), which weights hospitals rather than episodes.")
        out.append(txt)
        out.append("")

    # -- sensitivity and descriptive
    sens: dict[tuple[str, str], list[str]] = {}
    for e in plan.at_level(level):
        for s in e.specs:
            if s.role == "sensitivity":
                sens.setdefault((spec_label(s.name, s.estimator), _prose(s.reason, plan)),
                                []).append(_lower(e.label))
    if sens:
        out.append("**Sensitivity analyses.** Each changes one assumption of the primary analysis:")
        out.append("")
        for (label, reason), ests in sens.items():
            out.append(f"- {md_text(label)} ({md_text(_join(ests))}): {reason}.")
        out.append("")
    if any(s.role == "descriptive" for e in plan.at_level(level) for s in e.specs):
        out.append("**Descriptive comparisons.** Crude before/after ratios (all months from "
                   "go-live on against all months before, no adjustment for trend, case mix or "
                   "recognition) are shown for orientation only, without interval or p-value: "
                   "episodes are not independent and the comparison is confounded by time.")
        out.append("")

    # -- cut-off, missing data, privacy
    as_of = (getattr(store, "meta", {}) or {}).get("as_of") if store is not None else None
    cut = (f"Data up to {md_text(as_of)} were used. " if as_of else
           "Data up to the last month of the extract were used. ")
    out.append(
        "**Data cut-off and missing data.** " + cut + "An episode whose outcome window (or "
        "stay) had not closed by the cut-off is left out of that outcome; times to "
        "treatment are among children treated. Rows that fail the data contract are set aside "
        "with their reasons, never dropped silently (see the data-quality section).")
    out.append("")
    out.append(
        f"**Privacy.** Counts from 1 to {int(min_cell) - 1} are not shown, nor any figure from "
        "which one could be worked out (complementary suppression); hospitals appear under "
        "pseudonyms.")
    out.append("")

    # -- software
    if versions is None:
        from .reporting import package_versions

        versions = package_versions()
    from . import __version__

    ipso = (getattr(store, "meta", {}) or {}).get("ipso_analysis_version") if store is not None else None
    vs = ", ".join(f"{md_text(k)} {md_text(v)}" for k, v in versions.items() if v and v != "not installed")
    out.append(f"**Software.** ipso-analysis {md_text(ipso or __version__)} (analysis plan "
               f"{md_text(plan.version)}); {vs}.")
    return "\n".join(out).rstrip() + "\n"


def _count_words(n: Any, min_cell: int, what: str) -> str:
    """'1,234 rows', or 'A few rows (too few to publish the number)' when suppressed."""
    text = privacy.suppress_count(n, min_cell=min_cell)
    if text == privacy.DEFAULT_MARKER or not text[:1].isdigit():
        return f"A few {what} (too few to publish the number)"
    return f"{text} {what}"


# ---------------------------------------------------------------------------------------------
# summary
def measure_words(estimand: Any) -> Any:
    """:class:`analysis.wording.MeasureWords` of an estimand of the plan (its label, per-what
    phrase and direction words)."""
    from .wording import MeasureWords

    name = _lower(estimand.label)
    if estimand.down == "faster":
        return MeasureWords(name, estimand.per, fell="got faster", rose="got slower",
                            lower="shorter", higher="longer", as_high="as long")
    if estimand.down == "fewer":
        return MeasureWords(name, estimand.per, lower="fewer", higher="more", as_high="as many")
    return MeasureWords(name, estimand.per)


def summary_section(plan: Any, store: Any, *, scope: str = "collaborative",
                    heading: str = "## Summary") -> str:
    """One honest sentence per main estimand (:func:`analysis.wording.effect_sentence`, primary
    estimate and interval from the store: "likely fell" only when the interval excludes no
    change), then a pointer to the secondary estimands."""
    from .wording import effect_sentence, not_estimable_sentence

    ci, alpha = _ci(store)
    level = "collaborative" if scope == "collaborative" else "site"
    out = [heading, ""]
    from .tables import primary_rows

    for e, r in primary_rows(store, scope):
        if e.secondary_to:
            continue
        m = measure_words(e)
        if r["status"] != "ok":
            text = not_estimable_sentence(m, str(r["status_reason"] or "") or None)
        else:
            tp = int(r["time_point"]) if pd.notna(r["time_point"]) else e.time_point
            when = f"{tp} months after go-live" if tp else "after go-live"
            text = effect_sentence(r["estimate"], r["lower"], r["upper"], m, role="primary",
                                   kind="collaborative" if scope == "collaborative" else "pooled",
                                   level=1 - alpha, subject=when[:1].upper() + when[1:])
        out.append(f"- {md_text(text)}")
    sec = [e for e in plan.at_level(level) if e.secondary_to]
    if sec:
        out += ["", "Secondary estimands (all recognised episodes, including newly recognised "
                "milder cases) and every sensitivity analysis are in the results tables."]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# limitations
def _conclusion(r: pd.Series) -> str:
    if r.get("status") != "ok" or not np.isfinite(r.get("lower", math.nan)):
        return "none"
    if r["upper"] < 1:
        return "down"
    if r["lower"] > 1:
        return "up"
    return "unclear"


def limitations_section(plan: Any, store: Any = None, *, quality: Mapping[str, Any] | None = None,
                        casemix: Any = None, min_cell: int = privacy.DEFAULT_MIN_CELL,
                        level: str = "collaborative", heading: str = "## Limitations") -> str:
    """Limitations generated from the plan and the data (see the module docstring).

    `quality`: data-quality counts of the run, any of ``rows_read``, ``quarantined`` (rows set
    aside by validation) and ``excluded_after_as_of`` (episodes after the cut-off); counts are
    suppressed when small. `casemix`: the case-mix model when the store has no model-fit rows.
    """
    from .tables import spec_label

    ci, _ = _ci(store)
    items: list[str] = []
    labels = {e.id: e.label for e in plan.at_level(level)}

    # design
    items.append(
        "**Design.** The hospitals were not randomised and chose when to go live; an "
        "interrupted time series attributes to IPSO any change at go-live that the pre-go-live "
        "trend does not predict, so co-interventions or secular changes that coincide with "
        "go-live would be attributed to it. The hospitals joined a collaborative and may not "
        "represent other children's hospitals.")

    # extrapolation
    eff = store.rows(scope="collaborative") if store is not None else pd.DataFrame()
    extra: list[str] = []
    if store is not None and "extrapolated_share" in eff:
        prim = eff[(eff["role"] == "primary") & eff["extrapolated_share"].notna()
                   & (eff["extrapolated_share"] > 0)]
        for _, r in prim.iterrows():
            extra.append(f"{md_text(_lower(str(r['label'])))} ({100 * float(r['extrapolated_share']):.0f}%)")
    if extra:
        items.append(
            "**Extrapolated calendar effects.** After the last go-live no hospital is without "
            "IPSO, so the calendar effects of those months are extrapolated rather than "
            "observed. Share of the counterfactual resting on such months: " + _join(extra) + ".")
    else:
        projected = [e for e in plan.at_level(level) if e.primary.time_point > 0]
        shared = [e.label for e in projected if not e.primary.params.get("site_trends", True)]
        own = [e.label for e in projected if e.primary.params.get("site_trends", True)]
        txt = ("**Extrapolated trends.** Every time-series estimate projects a trend beyond the "
               "months it was fitted on. ")
        if own:
            txt += (f"For {md_text(_join([_lower(x) for x in own]))}, each hospital's own trend "
                    f"before go-live is projected {_join(sorted({str(e.primary.time_point) for e in projected}))} "
                    "months past it. ")
        if shared:
            txt += (f"For {md_text(_join([_lower(x) for x in shared]))}, one calendar trend shared "
                    "by all hospitals is identified by hospitals not yet live, and is extrapolated "
                    "for the months after the last wave's go-live, when none is left. ")
        txt += "A bend in the secular trend would be read as an effect of IPSO."
        items.append(txt)

    # not estimable
    if store is not None:
        bad = []
        for e in plan.at_level(level):
            try:
                r = store.primary(e.id, "collaborative")
            except KeyError:
                continue
            if r["status"] != "ok":
                bad.append(f"{md_text(_lower(e.label))} ({_prose(r['status_reason'], plan) or 'not estimable'})")
        if bad:
            items.append("**Not estimable.** No primary estimate could be computed for "
                         + _join(bad) + ".")
        site = store.rows(level="site", role="primary") if "level" in store.frame else pd.DataFrame()
        if len(site):
            parts = []
            for est, g in site.groupby("estimand", sort=False):
                k = int((g["status"] != "ok").sum())
                if k:
                    reasons = sorted({_prose(x, plan) for x in g.loc[g["status"] != "ok", "status_reason"] if x})
                    # hospitals first: "<label> (all recognised episodes): 4 of ..." reads
                    # as a count of episodes
                    parts.append(f"{k} of {len(g)} hospitals for "
                                 f"{md_text(_lower(str(g['label'].iloc[0])))} "
                                 f"({'; '.join(reasons) or 'not estimable'})")
            if parts:
                items.append("**Hospitals without an own estimate.** " + "; ".join(parts) + ". "
                             "Their results rest on the collaborative estimate and on the "
                             "comparison of risk-adjusted mortality between hospitals.")
        else:
            items.append("**Hospital-level estimates.** This run's results store holds no "
                         "hospital-level estimates, so how many hospitals could be estimated on "
                         "their own is not reported here.")

    # data quality
    q = dict(quality or {})
    if store is not None and "excluded_after_as_of" not in q:
        q["excluded_after_as_of"] = (store.meta or {}).get("excluded_after_as_of")
    bits = []
    if q.get("quarantined"):
        bits.append(f"{_count_words(q['quarantined'], min_cell, 'rows')} of the extract broke a "
                    "rule of the data contract and were set aside (by rule in the data-quality "
                    "section)")
    if q.get("excluded_after_as_of"):
        bits.append(f"{_count_words(q['excluded_after_as_of'], min_cell, 'episodes')} after the "
                    "data cut-off were left out")
    dq = ("**Data quality.** " + ("; ".join(bits) + ". " if bits else "")
          + "The data are routinely recorded times and outcomes; errors in time zero, treatment "
          "times or the attribution of deaths to sepsis would bias the measures, and the data "
          "contract catches impossible values, not plausible errors.")
    items.append(dq)

    # case mix
    fit = _component(store, "model_fit")
    cstat = None
    if len(fit) and (fit["quantity"] == "c-statistic").any():
        cstat = float(fit.loc[fit["quantity"] == "c-statistic", "estimate"].iloc[0])
    elif casemix is not None:
        cstat = float(getattr(casemix, "c_statistic", math.nan))
    txt = ("**Case mix.** Per-child estimands adjust for the recorded case mix only; severity "
           "not captured by it (physiology, delays before arrival) can differ between periods.")
    if cstat is not None and np.isfinite(cstat):
        txt += (f" The case-mix model's c-statistic of {cstat:.2f} "
                + ("indicates modest discrimination, so residual confounding by severity is "
                   "plausible." if cstat < 0.7 else "indicates that it separates higher- from "
                   "lower-risk episodes reasonably, but not perfectly."))
    items.append(txt)

    # secondary estimands and other scales
    sec = [e for e in plan.at_level(level) if e.secondary_to]
    if sec:
        items.append(
            "**Secondary estimands.** The population versions ("
            + md_text(_join([_lower(e.label) for e in sec])) + ") include the milder episodes "
            "that better recognition adds, so they mix a change in care with a change in who is "
            "counted; they are not estimates of the effect on the same children.")
    other = sorted({spec_label(s.name, s.estimator) for e in plan.at_level(level) for s in e.specs
                    if s.role == "sensitivity" and s.estimator == "cox_calendar"})
    if other:
        verb = "estimates" if len(other) == 1 else "estimate"
        items.append(f"**Other scales.** The {md_text(_join([_lower(x) for x in other]))} "
                     f"sensitivity analysis {verb} a hazard ratio over the months after the "
                     "phase-in, not the ratio at the primary time point; it is compared with the "
                     "primary estimate for direction, not size.")

    # sensitivity analyses that change the conclusion
    if store is not None:
        changed = []
        for e in plan.at_level(level):
            r = store.rows(e.id, "collaborative")
            if r.empty or not (r["role"] == "primary").any():
                continue
            p = r[r["role"] == "primary"].iloc[0]
            pc = _conclusion(p)
            for _, s in r[r["role"] == "sensitivity"].iterrows():
                sc = _conclusion(s)
                if pc in ("up", "down", "unclear") and sc in ("up", "down", "unclear") and sc != pc:
                    name = spec_label(str(s["spec"]), str(s["estimator"]))
                    variant = str(s.get("variant") or "")
                    if variant and variant != "nan":
                        name += f" ({variant})"
                    changed.append(
                        f"{md_text(_lower(e.label))}: primary {_fmt_ci(p['estimate'], p['lower'], p['upper'])}, "
                        f"{md_text(_lower(name))} {_fmt_ci(s['estimate'], s['lower'], s['upper'])}")
        if changed:
            items.append("**Conclusions that depend on an assumption.** A sensitivity analysis "
                         f"moves the {ci} interval across 1 for " + "; ".join(changed) + ".")
        else:
            items.append("**Sensitivity analyses.** No sensitivity analysis moves a primary "
                         f"{ci} interval across 1.")

    # known limits noted in the plan
    notes = []
    for e in plan.at_level(level):
        for attr in ("validation", "known_limits", "limitations"):
            v = getattr(e, attr, None)
            if isinstance(v, str) and v.strip():
                notes.append(f"{md_text(_lower(e.label))}: {_prose(v, plan)}")
        for s in e.specs:
            v = getattr(s, "validation", None) or (s.params or {}).get("validation")
            if isinstance(v, str) and v.strip():
                notes.append(f"{md_text(_lower(e.label))}, {md_text(spec_label(s.name, s.estimator).lower())}: "
                             f"{_prose(v, plan)}")
    biased = sorted({(spec_label(s.name, s.estimator), _prose(s.reason, plan))
                     for e in plan.at_level(level) for s in e.specs
                     if s.reason and re.search(r"\bbias", s.reason)})
    notes += [f"{md_text(label)}: {reason}" for label, reason in biased]
    if notes:
        items.append("**Known limits noted in the analysis plan.** " + "; ".join(notes) + ".")
    items.append(
        "**Multiplicity.** Many estimands are reported; only the primary estimate of each is "
        "a pre-specified claim, and no adjustment is made across estimands.")
    return heading + "\n\n" + "\n\n".join(f"- {x}" for x in items) + "\n"


# ---------------------------------------------------------------------------------------------
# SQUIRE 2.0
#: SQUIRE 2.0 items (Ogrinc G, Davies L, Goodman D, Batalden P, Davidoff F, Stevens D. BMJ Qual
#: Saf 2016;25:986-992), paraphrased: (item, part of the paper, what it asks).
SQUIRE_ITEMS: tuple[tuple[str, str, str], ...] = (
    ("1", "Title and abstract", "Title says the work is an initiative to improve healthcare"),
    ("2a", "Title and abstract", "Abstract: information for searching and indexing"),
    ("2b", "Title and abstract", "Abstract: structured summary of all key information"),
    ("3", "Introduction", "Problem description: nature and significance of the local problem"),
    ("4", "Introduction", "Available knowledge: what is known, including previous studies"),
    ("5", "Introduction", "Rationale: frameworks, models or theories, and why the intervention was expected to work"),
    ("6", "Introduction", "Specific aims of the project and of this report"),
    ("7", "Methods", "Context: elements considered important at the outset"),
    ("8a", "Methods", "Intervention described in enough detail to reproduce it"),
    ("8b", "Methods", "The team involved in the work"),
    ("9a", "Methods", "Approach chosen to assess the impact of the intervention"),
    ("9b", "Methods", "Approach used to establish whether outcomes were due to the intervention"),
    ("10a", "Methods", "Measures of processes and outcomes: rationale, operational definitions, validity and reliability"),
    ("10b", "Methods", "Ongoing assessment of contextual elements (success, failure, efficiency, cost)"),
    ("10c", "Methods", "Methods used to assess completeness and accuracy of the data"),
    ("11a", "Methods", "Qualitative and quantitative methods used to draw inferences"),
    ("11b", "Methods", "Methods for understanding variation, including time as a variable"),
    ("12", "Methods", "Ethical considerations, including ethics review and conflicts of interest"),
    ("13a", "Results", "Initial steps of the intervention and its evolution over time"),
    ("13b", "Results", "Details of the process measures and outcome"),
    ("13c", "Results", "Contextual elements that interacted with the intervention"),
    ("13d", "Results", "Observed associations between outcomes, interventions and context"),
    ("13e", "Results", "Unintended consequences (benefits, problems, failures, costs)"),
    ("13f", "Results", "Details about missing data"),
    ("14a", "Discussion", "Key findings and their relevance to the rationale and aims"),
    ("14b", "Discussion", "Particular strengths of the project"),
    ("15a", "Discussion", "Nature of the association between intervention and outcomes"),
    ("15b", "Discussion", "Comparison with findings of other publications"),
    ("15c", "Discussion", "Impact on people and systems"),
    ("15d", "Discussion", "Reasons for differences between observed and anticipated outcomes, including context"),
    ("15e", "Discussion", "Costs and strategic trade-offs, including opportunity costs"),
    ("16a", "Discussion", "Limits to the generalisability of the work"),
    ("16b", "Discussion", "Factors that may have limited internal validity (confounding, bias, imprecision)"),
    ("16c", "Discussion", "Efforts made to minimise and adjust for limitations"),
    ("17a", "Discussion", "Usefulness of the work"),
    ("17b", "Discussion", "Sustainability"),
    ("17c", "Discussion", "Potential for spread to other contexts"),
    ("17d", "Discussion", "Implications for practice and further study"),
    ("17e", "Discussion", "Suggested next steps"),
    ("18", "Other information", "Funding sources and the funder's role"),
)

#: Sections of the collaborative report (in order) that SQUIRE items map to. Sections marked
#: "(authors)" are written by the collaborative's authors in the manuscript, not generated.
REPORT_SECTIONS: tuple[str, ...] = (
    "Title page (authors)", "Summary", "Introduction (authors)", "Context and intervention",
    "Study design", "Measures", "Statistical methods", "Results: Table 1",
    "Results: primary estimand table and figures", "Results: processes and outcomes",
    "Sensitivity analyses", "Data quality", "Limitations", "Discussion (authors)",
    "Acknowledgements and funding (authors)",
)

#: SQUIRE item -> the report section(s) that cover it.
SQUIRE_SECTIONS: dict[str, tuple[str, ...]] = {
    "1": ("Title page (authors)",),
    "2a": ("Title page (authors)", "Summary"),
    "2b": ("Summary",),
    "3": ("Introduction (authors)", "Context and intervention"),
    "4": ("Introduction (authors)",),
    "5": ("Introduction (authors)", "Context and intervention"),
    "6": ("Introduction (authors)", "Summary"),
    "7": ("Context and intervention",),
    "8a": ("Context and intervention",),
    "8b": ("Context and intervention", "Acknowledgements and funding (authors)"),
    "9a": ("Study design", "Statistical methods"),
    "9b": ("Study design", "Statistical methods", "Sensitivity analyses"),
    "10a": ("Measures",),
    "10b": ("Context and intervention", "Results: processes and outcomes"),
    "10c": ("Data quality",),
    "11a": ("Statistical methods",),
    "11b": ("Statistical methods", "Results: primary estimand table and figures"),
    "12": ("Title page (authors)",),
    "13a": ("Context and intervention", "Results: primary estimand table and figures"),
    "13b": ("Results: primary estimand table and figures",),
    "13c": ("Results: Table 1", "Results: primary estimand table and figures"),
    "13d": ("Results: processes and outcomes",),
    "13e": ("Results: primary estimand table and figures", "Discussion (authors)"),
    "13f": ("Data quality", "Statistical methods"),
    "14a": ("Summary", "Discussion (authors)"),
    "14b": ("Discussion (authors)", "Study design"),
    "15a": ("Results: primary estimand table and figures", "Sensitivity analyses"),
    "15b": ("Discussion (authors)",),
    "15c": ("Discussion (authors)",),
    "15d": ("Discussion (authors)", "Limitations"),
    "15e": ("Discussion (authors)",),
    "16a": ("Limitations",),
    "16b": ("Limitations",),
    "16c": ("Limitations", "Sensitivity analyses"),
    "17a": ("Discussion (authors)",),
    "17b": ("Discussion (authors)",),
    "17c": ("Discussion (authors)", "Limitations"),
    "17d": ("Discussion (authors)",),
    "17e": ("Discussion (authors)",),
    "18": ("Acknowledgements and funding (authors)",),
}


def squire_coverage(mapping: Mapping[str, Sequence[str]] = SQUIRE_SECTIONS,
                    sections: Sequence[str] = REPORT_SECTIONS) -> list[str]:
    """Problems with a SQUIRE mapping: items without a section, sections not in the report,
    unknown items. Empty when every item is covered."""
    items = [i for i, _, _ in SQUIRE_ITEMS]
    out = [f"item {i} is not mapped to a section" for i in items if not mapping.get(i)]
    out += [f"item {i} maps to {s!r}, not a report section" for i, ss in mapping.items()
            for s in ss if s not in sections]
    out += [f"{i!r} is not a SQUIRE 2.0 item" for i in mapping if i not in items]
    return out


def squire_checklist(mapping: Mapping[str, Sequence[str]] | None = None, *,
                     heading: str = "## SQUIRE 2.0 checklist") -> str:
    """The SQUIRE 2.0 appendix: every item and sub-item with where the report covers it (a
    Markdown table). Raises ``ValueError`` when an item is not covered."""
    mapping = SQUIRE_SECTIONS if mapping is None else mapping
    problems = squire_coverage(mapping)
    if problems:
        raise ValueError("SQUIRE checklist: " + "; ".join(problems))
    lines = [heading, "",
             "Standards for QUality Improvement Reporting Excellence (SQUIRE 2.0; Ogrinc et al., "
             "BMJ Quality and Safety 2016). Sections marked \"authors\" are written by the "
             "collaborative's authors in the manuscript; the others are generated from the "
             "analysis plan and the results store.", "",
             "| Item | Part | What it asks | Where it is covered |", "|:---|:---|:---|:---|"]
    for item, part, text in SQUIRE_ITEMS:
        lines.append(f"| {item} | {md_text(part)} | {md_text(text)} | "
                     f"{md_text('; '.join(mapping[item]))} |")
    return "\n".join(lines) + "\n"


def methods_markdown(plan: Any, store: Any = None, *, casemix: Any = None,
                     quality: Mapping[str, Any] | None = None,
                     versions: Mapping[str, str] | None = None,
                     min_cell: int = privacy.DEFAULT_MIN_CELL, title: str | None = None) -> str:
    """The text of ``methods.md``: measures, statistical methods, limitations and the SQUIRE 2.0
    checklist, as one Markdown document."""
    head = f"# {md_text(title)}\n\n" if title else ""
    return (head + measures_section(plan) + "\n"
            + statistical_methods(plan, store, casemix=casemix, versions=versions,
                                  min_cell=min_cell) + "\n"
            + limitations_section(plan, store, quality=quality, casemix=casemix,
                                  min_cell=min_cell) + "\n"
            + squire_checklist())

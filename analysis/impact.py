"""IPSO "by the numbers": the headline table, a view of the results store.

:func:`by_the_numbers` fits nothing: it reads the primary effect rows of the analysis plan's
results store (:mod:`analysis.results`) for the collaborative or one hospital, with the labelled
secondaries (the population versions: per recognised episode, including the milder episodes
that better recognition adds) and the crude before/after values (descriptive), and words each
row with :mod:`analysis.wording`: "no clear change" when the interval includes no effect, never a
percentage without its interval, the per-child or per-episode phrase of the estimand.

Six headline measures (:data:`METRICS`), each the estimands of :data:`HEADLINE` (primary first):
mortality (30-day, or 3-day with ``sam_window=3``), recognition per 1,000 admissions, bundle
compliance, hospital days per episode, minutes to the first fluid bolus and to the first IV
antibiotic. What each estimate is (estimator, time point, per child or per episode) is in the
row's ``estimand`` and ``model`` columns, from the plan and the store.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from . import wording as W

__all__ = ["HEADLINE", "METRICS", "ImpactTable", "by_the_numbers", "measure_words"]

#: The headline measures: label and the unit of their crude values.
METRICS: dict[str, dict[str, str]] = {
    "mortality": {"label": "Sepsis-attributable mortality"},
    "recognition": {"label": "Sepsis episodes recognised"},
    "bundle": {"label": "Bundle use"},
    "hospital_days": {"label": "Hospital days per episode"},
    "bolus": {"label": "Time to first fluid bolus"},
    "antibiotic": {"label": "Time to first IV antibiotic"},
}
#: metric -> estimands of the results store shown for it (the primary one first, then its
#: labelled secondaries). Mortality's estimand follows ``sam_window``.
HEADLINE: dict[str, tuple[str, ...]] = {
    "mortality": ("sam30",),
    "recognition": ("recognition",),
    "bundle": ("bundle", "bundle_population"),
    "hospital_days": ("hospital_days", "hospital_days_population"),
    "bolus": ("bolus_minutes", "bolus_minutes_population"),
    "antibiotic": ("antibiotic_minutes", "antibiotic_minutes_population"),
}
_COLLABORATIVE = "collaborative"
COLUMNS = ["metric", "estimand", "label", "role", "description", "estimate", "lower", "upper",
           "p_value", "relative_change_pct", "ci_lower_pct", "ci_upper_pct", "per",
           "crude_pre", "crude_post", "crude_change_pct", "unit", "model", "status", "wording"]


@dataclass
class ImpactTable:
    """The headline table (one row per estimand shown) and the store it was read from.

    ``table`` columns (:data:`COLUMNS`): metric (headline measure), estimand (store id), label,
    role ("primary" or "secondary"), description (what is estimated: the plan's summary, per
    what, time point), estimate/lower/upper/p_value (ratio and interval from the store),
    relative_change_pct/ci_lower_pct/ci_upper_pct (100 x (ratio - 1)), per, crude_pre/crude_post
    (crude values before and after go-live in ``unit``, descriptive), crude_change_pct, unit,
    model (the store's method sentence), status ("ok" or "not estimable: <reason>"), wording
    (a sentence from :mod:`analysis.wording`).
    """

    table: pd.DataFrame
    store: Any = field(default=None, repr=False)
    level: str = "collaborative"
    site_id: str | None = None
    months_after: int = 12
    alpha: float = 0.05

    def summary(self) -> pd.DataFrame:
        return self.table.copy()

    def wording(self) -> list[str]:
        """The sentences of every row (estimable or not), primary rows first within a measure."""
        return [w for w in self.table["wording"] if isinstance(w, str) and w]

    def __getitem__(self, metric: str) -> pd.Series:
        """The primary row of a headline measure."""
        t = self.table
        return t[(t["metric"] == metric) & (t["role"] == "primary")].iloc[0]


def measure_words(est: Any) -> W.MeasureWords:
    """The :class:`analysis.wording.MeasureWords` of a plan :class:`analysis.plan.Estimand`:
    its label as the name, its per-what phrase, and direction words by kind (times "got
    faster" / "shorter", hospital days "fewer")."""
    from .plan import VARIABLES

    name = est.label.split(" (all recognised")[0]
    if name.endswith(" per episode") and est.per.startswith("per "):
        name = name[: -len(" per episode")]  # "hospital days" + "per child with the same ..."
    name = name[0].lower() + name[1:] if not name[:4].isupper() else name
    kind = VARIABLES[est.variable].kind
    events = "deaths" if est.variable in ("sam30", "sam3") else "episodes"
    if kind == "median_time":
        return W.MeasureWords(name, est.per, fell="got faster", rose="got slower",
                              lower="shorter", higher="longer", as_high="as long", events=events)
    if kind == "mean":
        return W.MeasureWords(name, est.per, lower="fewer", higher="more", as_high="as many",
                              events=events)
    return W.MeasureWords(name, est.per, events=events)


def _pct(ratio: float) -> float:
    return 100.0 * (ratio - 1.0) if ratio is not None and np.isfinite(ratio) else math.nan


def _sentence(r: pd.Series, est: Any, role: str, scope: str, level: float) -> str:
    m = measure_words(est)
    if r["status"] != "ok":
        reason = str(r["status_reason"])
        if reason.startswith("too few") and "this hospital's own effect" in reason:
            return W.too_few_sentence(m)
        return W.not_estimable_sentence(m, reason)
    if scope == _COLLABORATIVE:
        kind, subject = "collaborative", "Across the collaborative"
    elif r["estimator"] == "site_eb":
        kind, subject = "pooled", "At this hospital"
    else:  # the hospital's own series is this estimand's primary at the site level
        kind, subject = "collaborative", "At this hospital (its own data alone)"
    return W.effect_sentence(r["estimate"], r["lower"], r["upper"], m, role=role, kind=kind,
                             level=level, subject=subject)


def _store_for(source: Any, scope: str, estimands: list[str], plan: Any, as_of: str | None,
               alpha: float):
    from .results import ResultsStore, estimate_all

    if isinstance(source, ResultsStore):
        return source
    if getattr(source, "scope", None) is not None:
        raise ValueError("this run holds one hospital's rows only (a site slice): pass the run's "
                         "results store (analysis.report_sections.load_store) instead")
    from .plan import default_plan

    plan = plan or default_plan()
    levels = [_COLLABORATIVE] if scope == _COLLABORATIVE else ["site"]
    specs = {plan.get(e, lv).primary.name for e in estimands for lv in levels}
    return estimate_all(source, plan, scopes=[scope], estimands=estimands, as_of=as_of,
                        alpha=alpha, roles=["primary", "descriptive"],
                        specs=specs | {"crude_pre_post"})


def by_the_numbers(
    source: Any,
    *,
    site_id: str | None = None,
    sam_window: int = 30,
    plan: Any = None,
    as_of: str | None = None,
    alpha: float = 0.05,
) -> ImpactTable:
    """The "IPSO by the numbers" table for the collaborative (`site_id` None) or one hospital.

    `source`: a :class:`analysis.results.ResultsStore` (what reports pass: nothing is
    estimated) or a collaborative (:class:`analysis.store.Collaborative` or a report run), for
    which the needed rows are estimated with `plan` (default plan), `as_of` and `alpha` first.
    `sam_window`: 30 or 3 (which mortality estimand heads the table). Rows that are not
    estimable keep their row with NaN numbers, the reason in ``status`` and a sentence saying so.
    """
    if sam_window not in (3, 30):
        raise ValueError(f"sam_window must be 3 or 30, got {sam_window}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    headline = {**HEADLINE, "mortality": (f"sam{sam_window}",)}
    scope = _COLLABORATIVE if site_id is None else str(site_id)
    needed = [e for ids in headline.values() for e in ids]
    store = _store_for(source, scope, needed, plan, as_of, alpha)
    level = 1 - float(store.meta.get("alpha", alpha))
    rows = []
    for metric, ids in headline.items():
        for k, eid in enumerate(ids):
            role = "primary" if k == 0 else "secondary"
            try:
                r = store.primary(eid, scope)
            except KeyError as exc:
                raise ValueError(f"the results store has no primary row of {eid!r} for {scope!r}; "
                                 "was it estimated for this scope?") from exc
            ok = r["status"] == "ok"
            crude = store.rows(eid, scope, spec="crude_pre_post")
            summ = store.rows(eid, scope, spec="crude_pre_post", component="summary")
            summ = summ.set_index("period")["estimate"] if len(summ) else pd.Series(dtype=float)
            est_plan = store.plan.get(eid, r["level"])
            rows.append({
                "metric": metric, "estimand": eid, "label": r["label"], "role": role,
                "description": (f"{est_plan.summary}, {r['per']}, {r['time_point']} months after "
                                "go-live"),
                "estimate": r["estimate"], "lower": r["lower"], "upper": r["upper"],
                "p_value": r["p_value"],
                "relative_change_pct": _pct(r["estimate"]) if ok else math.nan,
                "ci_lower_pct": _pct(r["lower"]) if ok else math.nan,
                "ci_upper_pct": _pct(r["upper"]) if ok else math.nan,
                "per": r["per"],
                "crude_pre": float(summ.get("before go-live", math.nan)),
                "crude_post": float(summ.get("after go-live", math.nan)),
                "crude_change_pct": _pct(float(crude["estimate"].iloc[0])) if len(crude) else math.nan,
                "unit": r["unit"], "model": r["method"],
                "status": "ok" if ok else f"not estimable: {r['status_reason']}",
                "wording": _sentence(r, est_plan, role, scope, level),
            })
    months = int(store.primary(headline["mortality"][0], scope)["time_point"])
    return ImpactTable(table=pd.DataFrame(rows, columns=COLUMNS), store=store,
                       level=_COLLABORATIVE if site_id is None else "site", site_id=site_id,
                       months_after=months, alpha=float(store.meta.get("alpha", alpha)))

"""IPSO "by the numbers": headline % changes with 95% CIs, for the collaborative or one site.

Six metrics, each estimated two ways and shown side by side:

* **ITS (the estimand)**: relative effect ``months_after`` (default 12) months after go-live vs the
  counterfactual extrapolated from the pre-go-live series (segmented regression,
  :mod:`analysis.its`), with the first ``transition`` months after go-live (phase-in; default 6, the
  simulator's ramp) left out of the fit. Collaborative: :func:`analysis.its.fit_its_multisite`
  (site intercepts and pre-trends, event time, cluster-robust SEs by site). One site:
  :func:`analysis.its.fit_its` (Newey-West SEs).
* **Crude pre/post**: pooled post-go-live value (all months >= go-live) over pooled pre value, no
  adjustment for trend, case mix or recognition expansion. Shown for context only: it is biased
  when recognition expands (more, milder episodes recognised after go-live).

Models (monthly site series from :func:`analysis.measures.monthly_measures`):

1. ``mortality``: sepsis-attributable deaths (30-day SAM by default, ``sam_window``), quasi-Poisson
   with a log offset of case-mix-expected deaths (baseline-only logistic model,
   :func:`analysis.riskadj.fit_casemix_model`, summed per site-month): a case-mix-standardised
   risk ratio. (Collaborative: Poisson point estimates with cluster-robust SEs, which are already
   robust to over-dispersion.)
2. ``recognition``: episodes per 1,000 admissions, quasi-Poisson count with an admissions offset.
3. ``bundle``: bundle-compliant episodes, quasi-Poisson with an episodes offset (log link: a
   ratio of proportions, i.e. a risk ratio, not an odds ratio).
4. ``hospital_days``: hospital days per episode; monthly hospital days rounded to whole days,
   quasi-Poisson with an episodes offset (ratio of mean days per episode).
5. ``bolus`` / 6. ``antibiotic``: log of the monthly median minutes T0 -> first fluid bolus / first
   IV antibiotic, Gaussian; exp(effect) is the ratio of medians. Months without a timed episode
   are left out (the multi-site fit tolerates gaps; a single-site fit needs consecutive months and
   is then not estimable).

Metrics 3-6 are per-episode measures without case-mix adjustment, so their estimand is the
population one: this month's (expanded) episodes vs the episodes the counterfactual series would
have had.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .its import fit_its, fit_its_multisite
from .measures import monthly_measures
from .riskadj import fit_casemix_model

__all__ = ["METRICS", "ImpactTable", "by_the_numbers"]

# metric -> (label, unit, higher_is, template wording noun)
METRICS: dict[str, dict[str, str]] = {
    "mortality": {
        "label": "Sepsis-attributable mortality",
        "unit": "deaths per episode (case-mix standardised)",
        "up": "{p}% increase in {w}-day sepsis-attributable mortality",
        "down": "{p}% decrease in {w}-day sepsis-attributable mortality",
    },
    "recognition": {
        "label": "Sepsis episodes recognised",
        "unit": "episodes per 1,000 admissions",
        "up": "{p}% increase in patients recognised with sepsis (per 1,000 admissions)",
        "down": "{p}% decrease in patients recognised with sepsis (per 1,000 admissions)",
    },
    "bundle": {
        "label": "Bundle use",
        "unit": "% of episodes bundle-compliant",
        "up": "{p}% increase in bundle use",
        "down": "{p}% decrease in bundle use",
    },
    "hospital_days": {
        "label": "Hospital days per episode",
        "unit": "days per episode",
        "up": "{p}% more hospital days per episode",
        "down": "{p}% fewer hospital days per episode",
    },
    "bolus": {
        "label": "Time to first fluid bolus",
        "unit": "median minutes from T0",
        "up": "{p}% slower first fluid bolus",
        "down": "{p}% faster first fluid bolus",
    },
    "antibiotic": {
        "label": "Time to first IV antibiotic",
        "unit": "median minutes from T0",
        "up": "{p}% slower first IV antibiotic",
        "down": "{p}% faster first IV antibiotic",
    },
}
# words for the two CI ends (direction of each bound)
_DIRECTION = {
    "mortality": ("decrease", "increase"),
    "recognition": ("decrease", "increase"),
    "bundle": ("decrease", "increase"),
    "hospital_days": ("fewer", "more"),
    "bolus": ("faster", "slower"),
    "antibiotic": ("faster", "slower"),
}

_MIN_PRE = 6  # months of pre-go-live data needed for a single-site fit
_MIN_EVENTS = 10  # deaths / compliant episodes needed for a count model


@dataclass
class ImpactTable:
    """Headline impact table (one row per metric) and the underlying ITS fits.

    ``table`` columns: metric, label, estimand, relative_change_pct, ci_lower_pct, ci_upper_pct
    (ITS % change at ``months_after`` months vs counterfactual, 100 * (ratio - 1)), crude_pre,
    crude_post (pooled values in ``unit``), crude_change_pct, crude_ci_lower_pct,
    crude_ci_upper_pct (Poisson CI; counts only), unit, model, status ("ok" or
    "not estimable: <reason>"), wording.
    """

    table: pd.DataFrame
    fits: dict[str, Any] = field(default_factory=dict, repr=False)
    level: str = "collaborative"
    site_id: str | None = None
    months_after: int = 12
    alpha: float = 0.05

    def summary(self) -> pd.DataFrame:
        return self.table.copy()

    def wording(self) -> list[str]:
        """Plain-language sentences, e.g. "19% decrease in 30-day sepsis-attributable mortality
        (95% CI 8% to 28% decrease)"."""
        return [w for w in self.table["wording"] if isinstance(w, str)]

    def __getitem__(self, metric: str) -> pd.Series:
        return self.table.set_index("metric").loc[metric]


def _pct(ratio: float) -> float:
    return 100.0 * (ratio - 1.0) if ratio is not None and np.isfinite(ratio) else float("nan")


def _wording(metric: str, est: float, lo: float, hi: float, sam_window: int, conf: int) -> str:
    """e.g. "19% decrease in 30-day sepsis-attributable mortality (95% CI 8% to 28%)"; a CI that
    crosses no change names the direction of each end."""
    if not np.isfinite(est):
        return ""
    m = METRICS[metric]
    head = m["down" if est < 0 else "up"].format(p=f"{abs(est):.0f}", w=sam_window)
    down, up = _DIRECTION[metric]
    if lo < 0 < hi:
        ci = f"{conf}% CI {abs(lo):.0f}% {down} to {abs(hi):.0f}% {up}"
    elif est < 0:
        ci = f"{conf}% CI {abs(hi):.0f}% to {abs(lo):.0f}%"
    else:
        ci = f"{conf}% CI {lo:.0f}% to {hi:.0f}%"
    return f"{head} ({ci})"


def _crude_count(num_pre, den_pre, num_post, den_post, z):
    """Ratio of pooled rates post/pre with a Poisson (log) CI on the numerators."""
    if min(den_pre, den_post) <= 0:
        return (float("nan"),) * 5
    pre, post = num_pre / den_pre, num_post / den_post
    if num_pre <= 0 or num_post <= 0:
        return pre, post, float("nan"), float("nan"), float("nan")
    r = post / pre
    se = math.sqrt(1.0 / num_pre + 1.0 / num_post)
    return pre, post, r, r * math.exp(-z * se), r * math.exp(z * se)


def _prepare(coll, sam_window: int, casemix_model,
             site_id: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Episodes with expected deaths and monthly measures; with `site_id`, only that site's
    (the case-mix model, when not given, is still fitted on the whole collaborative)."""
    ep = coll.episodes
    outcome = f"sam{sam_window}"
    if outcome not in ep:
        raise ValueError(f"sam_window={sam_window}: episodes have no {outcome!r} column")
    extra: list[str] = []
    if casemix_model is None:
        try:
            casemix_model = fit_casemix_model(ep, outcome, unseen="reference")
        except ValueError:
            casemix_model = None
    site_months, sites = coll.site_months, coll.sites
    if site_id is not None:  # one site's series: predict and aggregate only its rows
        if site_id not in set(site_months["site_id"]):
            raise ValueError(f"site_id {site_id!r} not found in site_months")
        ep = ep[ep["site_id"] == site_id]
        site_months = site_months[site_months["site_id"] == site_id]
        sites = sites[sites["site_id"] == site_id]
    ep = ep.copy()
    if casemix_model is not None:
        ep[f"expected_{outcome}"] = casemix_model.predict(ep)
        extra.append(f"expected_{outcome}")
    mm = monthly_measures(ep, site_months, sites=sites, extra_sums=extra)
    mm["hospital_days_int"] = np.round(mm["hospital_days"].fillna(0.0)).astype(int)
    mm["admissions_k"] = mm["admissions"] / 1000.0
    for col in ("bolus_minutes_median", "antibiotic_minutes_median"):
        v = mm[col].where(mm[col] > 0)
        mm[f"log_{col}"] = np.log(v)
    return ep, mm


_SPECS = {
    # metric: (outcome, family, exposure)
    "recognition": ("episodes", "quasipoisson", "admissions_k"),
    "bundle": ("bundle_compliant", "quasipoisson", "episodes"),
    "hospital_days": ("hospital_days_int", "quasipoisson", "episodes"),
    "bolus": ("log_bolus_minutes_median", "gaussian", None),
    "antibiotic": ("log_antibiotic_minutes_median", "gaussian", None),
}


def _estimand_text(metric: str, months_after: int, transition: int, level: str) -> str:
    base = (
        f"ITS relative effect {months_after} months after go-live vs counterfactual "
        f"({'multi-site, cluster-robust SE' if level == 'collaborative' else 'single site, Newey-West SE'}; "
        f"{transition}-month phase-in excluded)"
    )
    extra = {
        "mortality": "case-mix-standardised risk ratio (offset: expected deaths)",
        "recognition": "rate ratio per 1,000 admissions",
        "bundle": "ratio of bundle-compliance proportions",
        "hospital_days": "ratio of mean hospital days per episode",
        "bolus": "ratio of monthly median minutes",
        "antibiotic": "ratio of monthly median minutes",
    }[metric]
    return f"{base}; {extra}; crude pre/post shown alongside"


def by_the_numbers(
    coll,
    *,
    site_id: str | None = None,
    months_after: int = 12,
    sam_window: int = 30,
    transition: int = 6,
    alpha: float = 0.05,
    casemix_model=None,
    slope_change: bool = False,
) -> ImpactTable:
    """Percent change with (1 - alpha) CI in the six IPSO headline metrics.

    `coll`: an :class:`analysis.store.Collaborative` (episodes derived and attached to sites,
    `sites`, `site_months`). `site_id`: one site (fit_its on its series) or ``None`` for the
    collaborative (fit_its_multisite). `casemix_model`: a fitted
    :func:`analysis.riskadj.fit_casemix_model` for the mortality offset (default: fitted on the
    collaborative's baseline episodes, so one site is standardised to collaborative case mix).
    `slope_change=False` (default): the effect after the phase-in is a level shift (as in
    benchmarks/bench_its_truth.py; the simulator's effects are constant after the ramp), so the
    effect at `months_after` is the level change; ``True`` adds a change in slope.
    Metrics that cannot be estimated get ``status = "not estimable: <reason>"`` and NaN numbers.
    """
    if months_after < 0:
        raise ValueError(f"months_after must be >= 0, got {months_after}")
    if sam_window not in (3, 30):
        raise ValueError(f"sam_window must be 3 or 30, got {sam_window}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    from scipy import stats

    z = float(stats.norm.ppf(1 - alpha / 2))
    conf = round(100 * (1 - alpha))
    ep, mm = _prepare(coll, sam_window, casemix_model, site_id)
    level = "collaborative" if site_id is None else "site"
    if site_id is not None:
        mm = mm[mm["site_id"] == site_id].sort_values("month").reset_index(drop=True)
    out = f"sam{sam_window}"
    specs = dict(_SPECS)
    specs["mortality"] = (out, "quasipoisson", f"expected_{out}")

    pre_m = mm["months_since_go_live"] < 0
    post_m = mm["months_since_go_live"] >= 0
    pre_e = ep["months_since_go_live"] < 0
    post_e = ep["months_since_go_live"] >= 0

    rows, fits = [], {}
    for metric in METRICS:
        outcome, family, exposure = specs[metric]
        row: dict[str, Any] = {
            "metric": metric,
            "label": METRICS[metric]["label"],
            "estimand": _estimand_text(metric, months_after, transition, level),
            "unit": METRICS[metric]["unit"],
            "model": f"{family}" + (f", log offset {exposure}" if exposure else ", log scale"),
        }
        # crude pre/post
        if metric in ("bolus", "antibiotic"):
            col = "minutes_to_bolus" if metric == "bolus" else "minutes_to_antibiotic"
            a, b = ep.loc[pre_e, col].dropna(), ep.loc[post_e, col].dropna()
            cp, cq = (
                (float(a.median()) if len(a) else float("nan")),
                (float(b.median()) if len(b) else float("nan")),
            )
            cr = cq / cp if cp and np.isfinite(cp) and cp > 0 else float("nan")
            crude = (cp, cq, cr, float("nan"), float("nan"))
        else:
            num = "hospital_days" if metric == "hospital_days" else outcome
            den = {"mortality": "episodes", "recognition": "admissions_k"}.get(metric, "episodes")
            crude = _crude_count(
                float(mm.loc[pre_m, num].sum()),
                float(mm.loc[pre_m, den].sum()),
                float(mm.loc[post_m, num].sum()),
                float(mm.loc[post_m, den].sum()),
                z,
            )
            if metric == "hospital_days":  # days are not Poisson counts: no crude CI
                crude = (*crude[:3], float("nan"), float("nan"))
        scale = 100.0 if metric in ("mortality", "bundle") else 1.0
        row.update(
            crude_pre=crude[0] * scale,
            crude_post=crude[1] * scale,
            crude_change_pct=_pct(crude[2]),
            crude_ci_lower_pct=_pct(crude[3]),
            crude_ci_upper_pct=_pct(crude[4]),
        )
        if metric == "mortality":
            row["unit"] = "% of episodes (crude); standardised risk ratio (ITS)"
        # ITS
        status, eff = "ok", None
        try:
            reason = _not_estimable(mm, metric, outcome, exposure, transition, months_after, level)
            if reason:
                status = f"not estimable: {reason}"
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    fit = _fit(
                        mm, outcome, family, exposure, transition, alpha, level, slope_change
                    )
                eff = fit.effect_at(months_after)
                if family == "gaussian" and level == "collaborative":
                    dropped = _complete_sites(mm, outcome)[1]
                    if dropped:
                        row["estimand"] += (
                            f"; {len(dropped)} site(s) with months lacking a timed episode left out"
                        )
                fits[metric] = fit
                ratio = eff.relative
                lo, hi = eff.relative_low, eff.relative_high
                if family == "gaussian":  # log-scale difference -> ratio
                    if level == "collaborative":
                        ratio, lo, hi = math.exp(ratio), math.exp(lo), math.exp(hi)
                    else:
                        ratio, lo, hi = _gaussian_site_ratio(fit, months_after, alpha)
                if (
                    not all(np.isfinite([ratio, lo, hi]))
                    or getattr(fit, "converged", True) is False
                ):
                    status, eff = "not estimable: model did not converge", None
                else:
                    row.update(
                        relative_change_pct=_pct(ratio),
                        ci_lower_pct=_pct(lo),
                        ci_upper_pct=_pct(hi),
                    )
        except (ValueError, np.linalg.LinAlgError, FloatingPointError, OverflowError) as exc:
            status, eff = f"not estimable: {exc}", None
        if eff is None:
            row.update(relative_change_pct=np.nan, ci_lower_pct=np.nan, ci_upper_pct=np.nan)
        row["status"] = status
        row["wording"] = (
            _wording(
                metric,
                row["relative_change_pct"],
                row["ci_lower_pct"],
                row["ci_upper_pct"],
                sam_window,
                conf,
            )
            if status == "ok"
            else f"{METRICS[metric]['label']}: {status}"
        )
        rows.append(row)
    cols = [
        "metric",
        "label",
        "estimand",
        "relative_change_pct",
        "ci_lower_pct",
        "ci_upper_pct",
        "crude_pre",
        "crude_post",
        "crude_change_pct",
        "crude_ci_lower_pct",
        "crude_ci_upper_pct",
        "unit",
        "model",
        "status",
        "wording",
    ]
    return ImpactTable(
        table=pd.DataFrame(rows)[cols],
        fits=fits,
        level=level,
        site_id=site_id,
        months_after=months_after,
        alpha=alpha,
    )


def _not_estimable(mm, metric, outcome, exposure, transition, months_after, level) -> str:
    if exposure is not None and exposure not in mm:
        return f"no {exposure} (case-mix model could not be fitted)"
    pre = mm["months_since_go_live"] < 0
    fitted_post = mm["months_since_go_live"] >= transition
    if level == "site":
        if pre.sum() < _MIN_PRE:
            return f"{int(pre.sum())} pre-go-live months (< {_MIN_PRE})"
        if fitted_post.sum() < 3:
            return f"{int(fitted_post.sum())} post-go-live months after the {transition}-month phase-in (< 3)"
    else:
        if not (pre.any() and fitted_post.any()):
            return "no pre-go-live or no post-phase-in months"
    y = mm[outcome]
    if metric in ("bolus", "antibiotic"):
        if level == "site" and y.isna().any():
            return f"{int(y.isna().sum())} months without a timed episode (single-site fit needs every month)"
        if y[pre].notna().sum() < 3 or y[fitted_post].notna().sum() < 3:
            return "fewer than 3 months with timed episodes before or after go-live"
        if level == "collaborative" and _complete_sites(mm, outcome)[0].empty:
            return "every site has months without a timed episode"
        return ""
    if (
        y[pre].sum() < _MIN_EVENTS / 2
        or y[fitted_post].sum() < _MIN_EVENTS / 2
        or y.sum() < _MIN_EVENTS
    ):
        return f"too few events ({int(y[pre].sum())} pre, {int(y[fitted_post].sum())} post; need >= {_MIN_EVENTS})"
    if level == "site" and exposure is not None and (mm[exposure] <= 0).any():
        return f"{int((mm[exposure] <= 0).sum())} months with zero {exposure} (single-site offset undefined)"
    return ""


def _complete_sites(mm: pd.DataFrame, outcome: str) -> tuple[pd.DataFrame, list[str]]:
    """Sites whose series of `outcome` has no missing month (the multi-site fit needs consecutive
    months per site); returns the kept rows and the ids of sites left out."""
    has_gap = mm.groupby("site_id")[outcome].apply(lambda v: bool(v.isna().any()))
    dropped = sorted(has_gap[has_gap].index.astype(str))
    return mm[~mm["site_id"].isin(dropped)], dropped


def _fit(mm, outcome, family, exposure, transition, alpha, level, slope_change):
    if level == "collaborative":
        d = mm if family != "gaussian" else _complete_sites(mm, outcome)[0]
        return fit_its_multisite(
            d,
            outcome,
            site="site_id",
            time="month",
            go_live="go_live_month",
            family="poisson" if family == "quasipoisson" else family,
            exposure=exposure,
            se="cluster",
            transition=transition,
            slope_change=slope_change,
            alpha=alpha,
        )
    return fit_its(
        mm,
        outcome,
        time="month",
        intervention=mm["go_live_month"].iloc[0],
        family=family,
        exposure=exposure,
        autocorrelation="hac",
        transition=transition,
        slope_change=slope_change,
        alpha=alpha,
    )


def _gaussian_site_ratio(fit, months_after: int, alpha: float) -> tuple[float, float, float]:
    """Single-site Gaussian fit on log minutes: exp(level + slope * m) with a Wald CI."""
    from scipy import stats

    names = list(fit.params.index)
    c = np.zeros(len(names))
    c[names.index("level_change")] = 1.0
    if "slope_change" in names:
        c[names.index("slope_change")] = float(months_after)
    est = float(c @ fit.params.to_numpy())
    se = float(np.sqrt(c @ fit.cov.to_numpy() @ c))
    z = float(stats.norm.ppf(1 - alpha / 2))
    return math.exp(est), math.exp(est - z * se), math.exp(est + z * se)

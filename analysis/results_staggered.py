"""Results-store estimators built on the imputation estimator for staggered go-lives.

:func:`analysis.staggered.fit_its_staggered` (Borusyak, Jaravel & Spiess) fitted to the
site-month series of an estimand (:meth:`analysis.results.EstimationContext.series`: counts with
a log offset of case-mix-expected events, admissions or episodes; log monthly medians for
times), registered in :data:`analysis.results.ESTIMATORS`:

``its_staggered``
    The effect ``time_point`` months after go-live as the ratio of observed to imputed
    (counterfactual) events over the event months of a window centred on the time point,
    ``[transition, 2 time_point - transition]`` (6-18 for the plan's 6-month phase-in and
    12-month time point; ``params["window"]`` overrides it). The window average equals the
    effect at the time point when the effect is constant or changes linearly across the window,
    and rests on about 13 times as many events as one event month. ``transition`` keeps its plan
    meaning (phase-in months after go-live that the estimate leaves out); months *before*
    go-live left out of the untreated fit are ``params["anticipation"]``. For the primary
    specification (or ``params["event_study"]``) the rows also hold the event study (leads and
    lags, component ``event_time``) and the pre-trend test (``pretrend_test``).
    ``covariance``: ``"cluster"`` (by hospital) or ``"hac"`` (panel Newey-West within hospital).
``staggered_placebo``
    Placebo in time: pre-go-live months only, every go-live moved ``params["shift"]`` (12)
    months earlier; the average "effect" over the fake first ``shift`` months should be 1.
``staggered_leave_one_wave_out``
    The same estimate without each wave (hospitals sharing a go-live month): one row per wave
    left out (``variant``).
``staggered_rm_bounds``
    Rambachan-Roth relative-magnitude bounds on the effect at event month ``time_point``
    (:func:`analysis.sensitivity.relative_magnitude_bounds`), one row per M
    (``params["m_bar"]``, default 0.5, 1, 2): ``estimate`` the point under parallel trends,
    ``bound_lower``/``bound_upper`` the identified set, ``lower``/``upper`` its conservative
    confidence interval.

Fit settings (``params``): ``site_trends`` (default true; false: one common trend),
``calendar_effects`` (``"auto"``: calendar-month effects when every calendar month has an event
among the hospitals not yet live, else one shared trend and the seasonality, said in the method
sentence; true / false force the choice), ``calendar_centering`` (``"robust"`` or ``"ls"``), ``leads`` (12),
``lags`` (36), ``anticipation`` (0), ``min_pre`` (12: hospitals with fewer untreated months are
left out, and the method sentence says how many), plus the specification's ``seasonality``.
Every fit is cached in the :class:`analysis.results.EstimationContext`, so the sensitivity rows
that only change the window or the covariance cost no refit.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from .plan import VARIABLES, Estimand, Specification
from .results import (
    COLLABORATIVE,
    Estimate,
    EstimationContext,
    _ratio_estimate,
    register_estimator,
)

__all__ = ["its_staggered", "staggered_leave_one_wave_out", "staggered_placebo",
           "staggered_rm_bounds", "window"]

_DEFAULTS: dict[str, Any] = {"site_trends": True, "calendar_effects": "auto",
                             "calendar_centering": "robust", "leads": 12, "lags": 36,
                             "anticipation": 0, "min_pre": 12}
_SE = {"cluster": "cluster", "hac": "panel_hac"}


def _settings(spec: Specification) -> dict[str, Any]:
    p = {**_DEFAULTS, **{k: v for k, v in spec.params.items() if k in _DEFAULTS}}
    cal = p["calendar_effects"]
    return {"site_trends": bool(p["site_trends"]),
            "calendar_effects": "auto" if cal == "auto" else bool(cal),
            "calendar_centering": str(p["calendar_centering"]), "leads": int(p["leads"]),
            "lags": int(p["lags"]), "transition": int(p["anticipation"]),
            "min_pre": int(p["min_pre"]), "seasonality": int(spec.seasonality)}


def window(spec: Specification) -> tuple[int, int]:
    """Event months averaged for the effect at ``spec.time_point``: ``params["window"]`` or
    ``[transition, 2 time_point - transition]`` (the time point alone when the transition
    reaches it)."""
    if "window" in spec.params:
        first, last = (int(v) for v in spec.params["window"])
    else:
        tp, tr = int(spec.time_point), int(spec.transition)
        first, last = (tr, 2 * tp - tr) if tp > tr else (tp, tp)
    if not 0 <= first <= last:
        raise ValueError(f"window must be two event months 0 <= first <= last, got {first}, {last}")
    return first, last


class _Fit:
    """A cached staggered fit with the data facts the rows need."""

    def __init__(self, result: Any, family: str, n: float, events: float, left_out: int,
                 waves: list[pd.Timestamp]):
        self.result, self.family, self.n, self.events = result, family, n, events
        self.left_out, self.waves = left_out, waves


def _prepared(ctx: EstimationContext, est: Estimand, spec: Specification
              ) -> tuple[pd.DataFrame, str | None, str, int]:
    """The site-month series ready for :func:`fit_its_staggered` and the number of hospitals
    left out (a month without a treated episode for times; too few untreated months)."""
    frame, y, x, family = ctx.series(est, spec)
    family = spec.family or family
    st = _settings(spec)
    d = frame[["site_id", "month", "go_live_month", "months_since_go_live", y, "_n"]
              + ([x] if x is not None and family == "poisson" else [])].copy()
    left = set()
    if family == "gaussian":
        gaps = d.groupby("site_id")[y].apply(lambda v: bool(v.isna().any()))
        left |= set(gaps[gaps].index)
    untreated = d["months_since_go_live"] < -st["transition"]
    if x is not None and family == "poisson":
        untreated &= d[x] > 0
    n_pre = untreated.groupby(d["site_id"]).sum()
    left |= set(n_pre[n_pre < st["min_pre"]].index)
    d = d[~d["site_id"].isin(left)].reset_index(drop=True)
    return d, (x if family == "poisson" else None), family, len(left)


def _calendar(d: pd.DataFrame, family: str, st: dict[str, Any]) -> dict[str, Any]:
    """`st` with ``calendar_effects`` resolved: ``"auto"`` becomes true when every calendar month
    has at least one event among the hospitals not yet live (otherwise the Poisson MLE of that
    month's effect does not exist), false otherwise; ``calendar_auto`` records that the rule
    chose."""
    if st["calendar_effects"] != "auto":
        return {**st, "calendar_auto": False}
    ok = True
    if family == "poisson":
        untreated = d["months_since_go_live"] < -st["transition"]
        per_month = d.loc[untreated, "_y"].groupby(d.loc[untreated, "month"]).sum()
        ok = bool(len(per_month)) and bool((per_month > 0).all())
    return {**st, "calendar_effects": ok, "calendar_auto": True}


def _fit(ctx: EstimationContext, est: Estimand, spec: Specification,
         drop_wave: pd.Timestamp | None = None) -> _Fit:
    from .staggered import fit_its_staggered

    st = _settings(spec)
    key = ("staggered", est.variable, spec.standardisation,
           tuple(spec.casemix) if spec.standardisation == "casemix" else (), spec.family,
           tuple(sorted(st.items())), None if drop_wave is None else str(drop_wave), ctx.alpha)

    def run() -> _Fit:
        d, x, family, left = _prepared(ctx, est, spec)
        waves = sorted(pd.unique(d["go_live_month"]))
        if drop_wave is not None:
            d = d[d["go_live_month"] != drop_wave].reset_index(drop=True)
        ycol = "_y"
        if d.empty:
            raise ValueError("no hospital can be fitted")
        cst = _calendar(d, family, st)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = fit_its_staggered(
                d, ycol, site="site_id", time="month", go_live="go_live_month", family=family,
                exposure=x, site_trends=st["site_trends"], calendar_effects=cst["calendar_effects"],
                seasonality=st["seasonality"], transition=st["transition"], leads=st["leads"],
                lags=st["lags"], se="cluster", alpha=ctx.alpha, min_pre=st["min_pre"],
                calendar_centering=st["calendar_centering"])
        events = float(d[ycol].sum()) if family == "poisson" else math.nan
        fit = _Fit(res, family, float(d["_n"].sum()), events, left, waves)
        fit.calendar_effects, fit.calendar_auto = cst["calendar_effects"], cst["calendar_auto"]
        return fit
    return ctx._cached(key, run)


def _what(est: Estimand) -> str:
    var = VARIABLES[est.variable]
    if var.kind == "median_time":
        return "log monthly median minutes" + (" over each episode's expected baseline median"
                                                if est.per.startswith("per child") else "")
    return {"sam30": "deaths", "sam3": "deaths", "recognition": "recognised episodes",
            "hospital_days": "hospital days"}.get(est.variable, "episodes with " + var.description)


def _method(est: Estimand, spec: Specification, fit: _Fit, first: int, last: int) -> str:
    st = _settings(spec)
    res = fit.result
    var = VARIABLES[est.variable]
    if fit.family == "poisson":
        offset = {"rate": "admissions", "probability": "expected events under baseline care for "
                  "the case mix" if spec.standardisation == "casemix" else "episodes",
                  "mean": "expected hospital days under baseline care for the case mix"
                  if spec.standardisation == "casemix" else "episodes with a known stay"}[var.kind]
        model = f"a Poisson model with an offset of {offset}"
        ratio = f"observed / predicted {_what(est)}"
    else:
        model = f"a Gaussian model of the {_what(est)}"
        ratio = "the exponentiated mean difference between observed and predicted"
    trend = "a trend per hospital" if st["site_trends"] else "one trend shared by all hospitals"
    used = getattr(fit, "calendar_effects", st["calendar_effects"])
    cal = ", calendar-month effects identified by hospitals not yet live" if used else ""
    if used and st["calendar_centering"] == "ls":
        cal += " (least-squares centring)"
    seas = f", {st['seasonality']} Fourier pair(s) of calendar month" if st["seasonality"] else ""
    ant = (f"; the {st['transition']} months before go-live are left out as anticipation"
           if st["transition"] else "")
    months = f"event month {first}" if first == last else f"event months {first}-{last}"
    centre = "" if first == last else f" (centred on month {spec.time_point})"
    se = ("cluster-robust SE by hospital" if spec.covariance == "cluster"
          else "panel Newey-West SE within hospital")
    left = (f"; {fit.left_out} hospital(s) without enough untreated months (or with a month "
            "without a treated episode) left out" if fit.left_out else "")
    if getattr(fit, "calendar_auto", False) and not used:
        cal = (" (no calendar-month effects: some calendar months have no event among the "
               "hospitals not yet live, so their effects are not estimable)")
    return (f"All hospitals together, imputation estimator for staggered go-lives (Borusyak, "
            f"Jaravel & Spiess): {model}, hospital intercepts, {trend}{cal}{seas}, fitted to the "
            f"months before each hospital's go-live{ant}, predicts every month after go-live "
            f"without IPSO; effect = {ratio} over {months}{centre} ({est.scale}), {se}, "
            f"{spec.interval} interval with {res.n_sites - 1} df{left}.")


def _effect(fit: _Fit, spec: Specification, first: int, last: int, alpha: float,
            method: str, **kw: Any) -> Estimate:
    res = fit.result
    se_type = _SE.get(spec.covariance)
    if se_type is None:
        return Estimate.not_estimable("this covariance is not available for the estimator",
                                      method, note=f"covariance {spec.covariance!r}")
    if se_type != res.se_type:
        res = res.with_se(se_type)
    eff = res.average_effect(first, last)
    log_est = math.log(eff.relative) if fit.family == "poisson" else float(eff.relative)
    return _ratio_estimate(log_est, float(eff.se), alpha, spec.interval, res.n_sites - 1,
                           n=fit.n, events=fit.events, method=method,
                           n_sites=float(eff.n_sites),
                           extrapolated_share=float(eff.extrapolated_share), **kw)


def _event_rows(fit: _Fit, spec: Specification, method: str) -> list[Estimate]:
    res = fit.result
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        es = res.event_study()
        pt = res.pretrend_test() if res.leads > 0 else None
    tr = (lambda v: v) if fit.family == "poisson" else np.exp
    rows = []
    for r in es.itertuples():
        common = {"events": float(r.observed) if fit.family == "poisson" else math.nan,
                  "method": method, "component": "event_time", "quantity": "observed / imputed",
                  "period": "lead" if r.event_time < 0 else "lag", "n_sites": float(r.n_sites),
                  "extrapolated_share": float(r.extrapolated_share),
                  "time_point": int(r.event_time),
                  "scale": "rate ratio" if fit.family == "poisson" else "ratio of medians"}
        vals = (float(tr(r.estimate)), float(tr(r.lower)), float(tr(r.upper)), float(r.se))
        if not (all(np.isfinite(vals)) and vals[0] > 0 and vals[3] > 0):
            rows.append(Estimate.not_estimable("no events at this event month", **common))
            continue
        rows.append(Estimate(*vals, float(r.p_value), **common))
    if pt is not None:
        f_test = bool(np.isfinite(pt.f_statistic))
        test = (f"F = W (G - q) / (q (G - 1)) on ({pt.df}, {pt.df_denom}) df" if f_test else
                f"Wald chi-square on {pt.df} df (no more hospitals than leads: no F reference)")
        rows.append(Estimate(
            p_value=float(pt.p_value), method=(
                f"Joint Wald test that the {pt.df} leads (placebo estimates before go-live) are "
                f"all 1, {test}, {pt.se_type} covariance."),
            component="pretrend_test", quantity="pre-trend test",
            statistic=float(pt.f_statistic if f_test else pt.statistic), df=float(pt.df),
            n_sites=float(pt.n_sites), scale="F statistic" if f_test else "chi-square statistic",
            period=f"leads {min(pt.event_times)} to {max(pt.event_times)}",
            time_point=min(pt.event_times)))
    return rows


def _fail(exc: Exception, method: str = "") -> Estimate:
    return Estimate.not_estimable("the model could not be fitted", method,
                                  note=f"{type(exc).__name__}: {exc}")


def _window_and_fit(ctx: EstimationContext, est: Estimand,
                    spec: Specification) -> tuple[int, int, _Fit] | Estimate:
    """(first, last event month, the cached fit), or the not-estimable row when it fails."""
    try:
        first, last = window(spec)
        return first, last, _fit(ctx, est, spec)
    except (ValueError, np.linalg.LinAlgError, ArithmeticError) as exc:
        return _fail(exc)


@register_estimator("its_staggered")
def its_staggered(ctx: EstimationContext, est: Estimand, spec: Specification,
                  scopes: Sequence[str]) -> dict[str, list[Estimate]]:
    """Collaborative: imputation estimator for staggered go-lives (see the module docstring)."""
    got = _window_and_fit(ctx, est, spec)
    if isinstance(got, Estimate):
        return {COLLABORATIVE: [got]}
    first, last, fit = got
    method = _method(est, spec, fit, first, last)
    if not fit.result.converged:
        return {COLLABORATIVE: [Estimate.not_estimable("the model did not converge", method)]}
    try:
        rows = [_effect(fit, spec, first, last, ctx.alpha, method)]
    except ValueError as exc:
        return {COLLABORATIVE: [Estimate.not_estimable(
            f"no hospital has reached event month {last} yet", method, note=str(exc))]}
    if spec.params.get("event_study", spec.role == "primary"):
        rows += _event_rows(fit, spec, method)
    return {COLLABORATIVE: rows}


@register_estimator("staggered_placebo")
def staggered_placebo(ctx: EstimationContext, est: Estimand, spec: Specification,
                      scopes: Sequence[str]) -> dict[str, Estimate]:
    """Collaborative: placebo in time (go-lives ``params["shift"]`` months earlier, months before
    the real go-live only); the average over the fake first ``shift`` months should be 1."""
    from .sensitivity import placebo_in_time

    shift = int(spec.params.get("shift", 12))
    st = _settings(spec)
    method = (f"Placebo in time: every go-live moved {shift} months earlier and only the months "
              "before the real go-live used; imputation estimator as the primary; the ratio over "
              f"the fake first {shift} months after the fake go-live should be 1.")
    try:
        d, x, family, _ = _prepared(ctx, est, spec)
        st["min_pre"] = min(st["min_pre"], max(shift, 6))
        pre = d[d["months_since_go_live"] < 0]
        keep = pre.groupby("site_id")["month"].transform("size") >= shift + st["min_pre"]
        pre = pre[keep]
        st = _calendar(pre.assign(months_since_go_live=pre["months_since_go_live"] + shift),
                       family, st)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tab = placebo_in_time(
                pre, "_y", site="site_id", time="month", go_live="go_live_month", shift=shift,
                family=family, exposure=x, site_trends=st["site_trends"],
                calendar_effects=st["calendar_effects"], seasonality=st["seasonality"],
                transition=st["transition"], se="cluster", alpha=ctx.alpha, min_pre=st["min_pre"],
                calendar_centering=st["calendar_centering"])
    except (ValueError, np.linalg.LinAlgError, ArithmeticError) as exc:
        return {COLLABORATIVE: _fail(exc, method)}
    r = tab.iloc[0]
    log_est = math.log(r["estimate"]) if family == "poisson" else float(r["estimate"])
    n_sites = float(pre["site_id"].nunique())
    return {COLLABORATIVE: _ratio_estimate(log_est, float(r["se"]), ctx.alpha, spec.interval,
                                           n_sites - 1, method=method, n_sites=n_sites,
                                           time_point=0)}


@register_estimator("staggered_leave_one_wave_out")
def staggered_leave_one_wave_out(ctx: EstimationContext, est: Estimand, spec: Specification,
                                 scopes: Sequence[str]) -> dict[str, list[Estimate]]:
    """Collaborative: the imputation estimate without each wave in turn (one row per wave)."""
    got = _window_and_fit(ctx, est, spec)
    if isinstance(got, Estimate):
        return {COLLABORATIVE: [got]}
    first, last, full = got
    rows = []
    if len(full.waves) < 3:
        return {COLLABORATIVE: [Estimate.not_estimable(
            "fewer than three waves (distinct go-live months)", _method(est, spec, full, first, last))]}
    for k, w in enumerate(full.waves, start=1):
        variant = f"without wave {k} (go-live {pd.Timestamp(w):%Y-%m})"
        try:
            fit = _fit(ctx, est, spec, drop_wave=w)
            text = _method(est, spec, fit, first, last)
            method = "Leave one wave out: " + text[0].lower() + text[1:]
            rows.append(_effect(fit, spec, first, last, ctx.alpha, method, variant=variant))
        except (ValueError, np.linalg.LinAlgError, ArithmeticError) as exc:
            e = _fail(exc)
            e.variant = variant
            e.status_reason = "not estimable without this wave"
            rows.append(e)
    return {COLLABORATIVE: rows}


@register_estimator("staggered_rm_bounds")
def staggered_rm_bounds(ctx: EstimationContext, est: Estimand, spec: Specification,
                        scopes: Sequence[str]) -> dict[str, list[Estimate]]:
    """Collaborative: Rambachan-Roth relative-magnitude bounds on the effect at event month
    ``time_point`` for each M of ``params["m_bar"]``."""
    from .sensitivity import relative_magnitude_bounds

    m_bar = tuple(float(m) for m in spec.params.get("m_bar", (0.5, 1.0, 2.0)))
    e = int(spec.time_point)
    try:
        fit = _fit(ctx, est, spec)
        with np.errstate(over="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # exp of a very wide interval on a tiny collaborative
            b = relative_magnitude_bounds(fit.result, e, m_bar, alpha=ctx.alpha)
    except (ValueError, np.linalg.LinAlgError, ArithmeticError) as exc:
        return {COLLABORATIVE: [_fail(exc)]}
    tr = (lambda v: v) if fit.family == "poisson" else math.exp
    method = ("Rambachan & Roth relative-magnitude bounds on the effect at event month "
              f"{e}: after go-live, the month-to-month change of any bias may be up to M times the "
              "largest change between consecutive leads; identified set and a conservative "
              f"(Bonferroni) {round(100 * (1 - ctx.alpha))}% confidence interval.")
    rows = []
    for r in b.table.itertuples():
        rows.append(Estimate(float(tr(b.estimate)), float(tr(r.ci_lower)), float(tr(r.ci_upper)),
                             method=method, variant=f"M = {r.m_bar:g}", bound_lower=float(tr(r.id_lower)),
                             bound_upper=float(tr(r.id_upper)), n=fit.n, events=fit.events,
                             n_sites=float(fit.result.n_sites), statistic=float(r.m_bar)))
    return {COLLABORATIVE: rows}

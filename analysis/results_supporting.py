"""Results-store estimators of the supporting results the reports draw (no effect rows).

Registered in :data:`analysis.results.ESTIMATORS`, each for a descriptive specification of the
plan (see the row convention in :mod:`analysis.results`):

``funnel_oe``
    Hospital comparison of risk-adjusted mortality after go-live (component ``oe``):
    :func:`analysis.riskadj.funnel_from_counts` centred on the collaborative's O/E with the
    tested over-dispersion adjustment. At the site level one row per hospital (O/E relative to
    the collaborative, exact 95% interval, 99.8% limits in use, flag); at the collaborative level
    the centre, the over-dispersion test, the flags expected by chance and the flags seen.
``km_curves``
    Kaplan-Meier sepsis-attributable survival to 30 days from T0 by period
    (:func:`analysis.survival.km_by_period`), at the days of :data:`analysis.results.CURVE_DAYS`
    (component ``curve``).
``cif_curves``
    Aalen-Johansen cumulative incidence of discharge alive and of in-hospital death by period
    (:func:`analysis.competing.cumulative_incidence`; each is a competing event for the other;
    stays still open at a data cut-off are censored there).
``casemix_fit``
    The baseline case-mix model's c-statistic (Hanley-McNeil interval), Hosmer-Lemeshow test and
    calibration by decile of predicted risk (component ``model_fit``).

Curves are descriptive: episodes are clustered in hospitals and a before/after contrast mixes
the collaborative's effect with trends and case mix, so no p-value is stored. A curve is stored
for a scope and period only with at least :data:`analysis.results.MIN_CURVE_EVENTS` events of
its kind; :meth:`analysis.results.ResultsStore.publishable` drops the points from which a
small number of events could be read.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from .plan import VARIABLES, Estimand, Specification
from .results import (
    COLLABORATIVE,
    CURVE_DAYS,
    MIN_CURVE_EVENTS,
    Estimate,
    EstimationContext,
    register_estimator,
)

__all__ = ["c_statistic_ci", "casemix_fit", "cif_curves", "funnel_oe", "km_curves"]

PERIODS = (("pre", "before go-live"), ("post", "after go-live"))
_LEVEL_OUTER = 0.998


# ---------------------------------------------------------------------------------------------
# hospital comparison
def _funnel(ctx: EstimationContext, est: Estimand, spec: Specification):
    """(Funnel over hospitals with expected deaths after go-live, per-site frame) cached."""
    from .riskadj import exact_poisson_ci, funnel_from_counts

    var = VARIABLES[est.variable]
    scale = str(spec.params.get("scale", "sqrt"))
    od_model = str(spec.params.get("od_model", "additive"))
    key = ("funnel", est.variable, tuple(spec.casemix), scale, od_model, ctx.alpha)

    def run():
        ep = ctx.episodes
        known = ep[var.known].astype(bool) if var.known else pd.Series(True, index=ep.index)
        post = (ep["months_since_go_live"] >= 0) & known
        e = ctx.expected(est.variable, spec.casemix)
        d = pd.DataFrame({"site_id": ep["site_id"].astype(str), "y": ep[var.column].astype(float),
                          "e": e.astype(float)})[post]
        g = d.groupby("site_id").agg(observed=("y", "sum"), expected=("e", "sum"),
                                     episodes=("y", "size"))
        g = g[g["expected"] > 0]
        if len(g) < 3:
            raise ValueError("fewer than three hospitals have episodes after go-live")
        f = funnel_from_counts(list(g.index), g["observed"].to_numpy(), g["expected"].to_numpy(),
                               scale=scale, od_model=od_model, period="after go-live")
        lo, hi = exact_poisson_ci(g["observed"].to_numpy(), g["expected"].to_numpy(),
                                  1 - ctx.alpha)
        table = f.data.set_index("site").assign(oe_lower=lo, oe_upper=hi,
                                                episodes=g["episodes"].to_numpy())
        return f, table
    return ctx._cached(key, run)


@register_estimator("funnel_oe")
def funnel_oe(ctx: EstimationContext, est: Estimand, spec: Specification,
              scopes: Sequence[str]) -> dict[str, Estimate | list[Estimate]]:
    """Hospital comparison after go-live (see the module docstring)."""
    method = ("Observed over case-mix-expected deaths after go-live, each hospital against the "
              "collaborative's ratio (funnel plot centred on the collaborative; exact Poisson "
              "limits at 95% and 99.8%, widened for over-dispersion only when the test "
              "(winsorised z-scores) is significant; a hospital is flagged only outside 99.8%).")
    try:
        f, table = _funnel(ctx, est, spec)
    except (ValueError, ArithmeticError) as exc:
        fail = Estimate.not_estimable("the hospital comparison could not be computed", method,
                                      note=str(exc), component="oe")
        return {s: [fail] for s in scopes}
    period = "after go-live"
    target = f.target
    pre = "od_" if f.adjusted else ""
    if est.level == COLLABORATIVE:
        n = f.n_units
        return {COLLABORATIVE: [
            Estimate(target, n=float(table["episodes"].sum()),
                     events=float(table["observed"].sum()), method=method, component="oe",
                     quantity="collaborative O/E", period=period, n_sites=float(n), scale="ratio"),
            Estimate(f.tau2, p_value=float(f.overdispersion_p), method=method + " " + f.od_rule + ".",
                     component="oe", quantity="over-dispersion", period=period,
                     statistic=float(f.phi), flag="limits widened" if f.adjusted else "",
                     n_sites=float(n), scale="tau² (additive), phi (multiplicative)"),
            Estimate(f.expected_flags, method=method, component="oe",
                     quantity="expected flags by chance", period=period, n_sites=float(n),
                     scale="hospitals"),
            Estimate(float(f.n_flagged), method=method, component="oe",
                     quantity="hospitals flagged", period=period, n_sites=float(n),
                     scale="hospitals"),
        ]}
    out: dict[str, Estimate | list[Estimate]] = {}
    for s in scopes:
        if s not in table.index:
            out[s] = Estimate.not_estimable("no episodes after go-live yet", method,
                                            component="oe", quantity="O/E relative to the "
                                            "collaborative", period=period)
            continue
        r = table.loc[s]
        out[s] = Estimate(
            float(r["ratio_to_target"]), float(r["oe_lower"]) / target,
            float(r["oe_upper"]) / target, n=float(r["episodes"]), events=float(r["observed"]),
            method=method, component="oe", quantity="O/E relative to the collaborative",
            period=period, x=float(r["expected"]),
            bound_lower=float(r[f"{pre}lower998"]) / target,
            bound_upper=float(r[f"{pre}upper998"]) / target, flag=str(r["flag"]),
            scale="ratio to the collaborative")
    return out


# ---------------------------------------------------------------------------------------------
# curves
def _cached_or_fail(ctx: EstimationContext, key: tuple, run: Any, what: str, method: str,
                    scopes: Sequence[str]) -> tuple[Any, dict[str, list[Estimate]] | None]:
    """(cached value, None), or (None, a not-estimable curve row for every scope)."""
    try:
        return ctx._cached(key, run), None
    except (ValueError, ArithmeticError, KeyError) as exc:
        fail = Estimate.not_estimable(f"the {what} could not be computed", method, note=str(exc),
                                      component="curve")
        return None, {s: [fail] for s in scopes}


def _step_at(times: np.ndarray, values: np.ndarray, x: float, start: float) -> float:
    i = np.searchsorted(times, x, side="right") - 1
    return float(values[i]) if i >= 0 else start


def _curve_rows(unit_curves: pd.DataFrame, n: int, cum_events: np.ndarray, quantity: str,
                period: str, method: str, start: float) -> list[Estimate]:
    t = unit_curves["time"].to_numpy(float)
    rows = []
    for x, ev in zip(CURVE_DAYS, cum_events):
        rows.append(Estimate(
            _step_at(t, unit_curves["estimate"].to_numpy(float), x, start),
            _step_at(t, unit_curves["ci_lower"].to_numpy(float), x, start),
            _step_at(t, unit_curves["ci_upper"].to_numpy(float), x, start),
            n=float(n), events=float(ev), method=method, component="curve", quantity=quantity,
            period=period, x=float(x), scale="probability", time_point=0))
    return rows


@register_estimator("km_curves")
def km_curves(ctx: EstimationContext, est: Estimand, spec: Specification,
              scopes: Sequence[str]) -> dict[str, list[Estimate]]:
    """Kaplan-Meier sepsis-attributable survival to ``params["horizon_days"]`` (30) by period."""
    from .survival import km_by_period

    horizon = float(spec.params.get("horizon_days", 30))
    var = VARIABLES[est.variable]
    method = (f"Kaplan-Meier estimate of {horizon:g}-day sepsis-attributable survival from T0 by "
              "period (deaths from other causes and discharges alive count as survival to the "
              "horizon, as IPSO counts in-hospital deaths; follow-up censored at the data "
              "cut-off), with 95% log(-log) pointwise bands; descriptive (no test: episodes are "
              "clustered in hospitals).")
    key = ("km", est.variable, horizon)

    def run() -> pd.DataFrame:
        if var.column != "sam30":
            raise ValueError("Kaplan-Meier curves are defined for 30-day mortality (sam30)")
        return km_by_period(ctx.episodes, by="site_id", horizon=horizon).curves
    curves, failed = _cached_or_fail(ctx, key, run, "survival curves", method, scopes)
    if failed is not None:
        return failed
    out: dict[str, list[Estimate]] = {}
    for s in scopes:
        rows: list[Estimate] = []
        for code, period in PERIODS:
            c = curves[(curves["unit"] == s) & (curves["period"] == code)].sort_values("time")
            if c.empty:
                continue
            n = int(c["at_risk"].iloc[0])
            total = float(c["events"].sum())
            if total < MIN_CURVE_EVENTS:
                continue
            cum = [float(c.loc[c["time"] <= x, "events"].sum()) for x in CURVE_DAYS]
            rows += _curve_rows(c.rename(columns={"survival": "estimate"}), n, np.array(cum),
                                f"{horizon:g}-day survival", period, method, 1.0)
        out[s] = rows or [Estimate.not_estimable(
            "too few deaths for a survival curve", method, component="curve",
            quantity=f"{horizon:g}-day survival")]
    return out


@register_estimator("cif_curves")
def cif_curves(ctx: EstimationContext, est: Estimand, spec: Specification,
               scopes: Sequence[str]) -> dict[str, list[Estimate]]:
    """Cumulative incidence of discharge alive and of in-hospital death by period."""
    from .competing import cumulative_incidence

    method = ("Aalen-Johansen cumulative incidence from T0 by period, discharge alive and "
              "in-hospital death as competing events (neither censors the other; stays still "
              "open at the data cut-off are censored there), 95% log(-log) pointwise bands; "
              "descriptive (no test: episodes are clustered in hospitals).")

    def run() -> pd.DataFrame:
        ep = ctx.episodes
        t = ep["days_t0_to_discharge"].astype(float)
        died = ep["died_in_hospital"].astype(bool)
        code = np.where(died, 2, 1)
        if "followup_days" in ep:
            open_ = t.isna() | (t > ep["followup_days"])
            t = t.where(~open_, ep["followup_days"].clip(lower=0.0))
            code = np.where(open_.to_numpy(), 0, code)
        d = pd.DataFrame({"site_id": ep["site_id"].astype(str), "time": t.clip(lower=0.0),
                          "event": code,
                          "period": np.where(ep["months_since_go_live"] >= 0, "post", "pre")})
        return d[np.isfinite(d["time"])]
    data, failed = _cached_or_fail(ctx, ("cif_data",), run, "length-of-stay curves", method,
                                   scopes)
    if failed is not None:
        return failed
    out: dict[str, list[Estimate]] = {}
    for s in scopes:
        d = data if s == COLLABORATIVE else data[data["site_id"] == s]
        rows: list[Estimate] = []
        for cause, quantity in ((1, "discharged alive"), (2, "died in hospital")):
            for code, period in PERIODS:
                g = d[d["period"] == code]
                n_cause = int((g["event"] == cause).sum())
                if n_cause < MIN_CURVE_EVENTS:
                    continue
                c = cumulative_incidence(g, "time", "event", event_of_interest=cause)
                tt, ee = g["time"].to_numpy(float), g["event"].to_numpy(int)
                cum = np.array([float(((tt <= x) & (ee == cause)).sum()) for x in CURVE_DAYS])
                rows += _curve_rows(c, len(g), cum, quantity, period, method, 0.0)
        out[s] = rows or [Estimate.not_estimable(
            "too few discharges or deaths for length-of-stay curves", method, component="curve",
            quantity="discharged alive")]
    return out


# ---------------------------------------------------------------------------------------------
# case-mix model
def c_statistic_ci(c: float, n_events: int, n_non_events: int,
                   alpha: float = 0.05) -> tuple[float, float, float]:
    """Hanley & McNeil (1982) standard error of a c-statistic (area under the ROC curve) and its
    Wald interval, clipped to [0, 1]: (se, lower, upper)."""
    q1, q2 = c / (2 - c), 2 * c * c / (1 + c)
    var = (c * (1 - c) + (n_events - 1) * (q1 - c * c) + (n_non_events - 1) * (q2 - c * c)) / (
        n_events * n_non_events)
    se = math.sqrt(max(var, 0.0))
    z = float(stats.norm.ppf(1 - alpha / 2))
    return se, max(c - z * se, 0.0), min(c + z * se, 1.0)


@register_estimator("casemix_fit")
def casemix_fit(ctx: EstimationContext, est: Estimand, spec: Specification,
                scopes: Sequence[str]) -> dict[str, list[Estimate]]:
    """The baseline case-mix model of `est`'s variable: discrimination and calibration."""
    var = VARIABLES[est.variable]
    method = ("Logistic case-mix model of the outcome fitted to the episodes before each "
              "hospital's go-live (covariates: " + ", ".join(spec.casemix) + "); c-statistic "
              "(Hanley-McNeil 95% interval), Hosmer-Lemeshow test over deciles of predicted risk "
              "and observed against predicted risk by decile, in the fitting data.")
    try:
        model = ctx.expected_model(est.variable, tuple(spec.casemix))
        cm = model.casemix_model
        if cm is None:
            raise ValueError(f"{var.kind} outcomes have no logistic case-mix model")
    except (ValueError, ArithmeticError) as exc:
        return {COLLABORATIVE: [Estimate.not_estimable("the case-mix model could not be fitted",
                                                       method, note=str(exc),
                                                       component="model_fit")]}
    period = "before go-live (fitting data)"
    se, lo, hi = c_statistic_ci(cm.c_statistic, cm.events, cm.n - cm.events, ctx.alpha)
    hl = cm.hosmer_lemeshow
    rows = [
        Estimate(cm.c_statistic, lo, hi, se, n=float(cm.n), events=float(cm.events),
                 method=method, component="model_fit", quantity="c-statistic", period=period,
                 scale="area under the ROC curve"),
        Estimate(p_value=float(hl["p_value"]), statistic=float(hl["statistic"]), df=float(hl["df"]),
                 n=float(cm.n), events=float(cm.events), method=method, component="model_fit",
                 quantity="Hosmer-Lemeshow", period=period, scale="chi-square statistic"),
    ]
    for r in cm.calibration.itertuples():
        rows.append(Estimate(100 * float(r.observed_rate), n=float(r.episodes),
                             events=float(r.observed), method=method, component="model_fit",
                             quantity="calibration", period=period,
                             x=100 * float(r.mean_predicted), variant=f"decile {int(r.group)}",
                             scale="per 100 episodes (observed; x: predicted)"))
    return {COLLABORATIVE: rows}

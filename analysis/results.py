"""The results store: every estimand of the analysis plan, computed once per run.

:func:`estimate_all` takes a collaborative (:class:`analysis.store.Collaborative` or a report
run) and an :class:`analysis.plan.Plan` (default :func:`analysis.plan.default_plan`) and returns
a :class:`ResultsStore`, a tidy table with one row per estimand x scope x specification. Reports,
notebooks and papers read numbers from it; they compute none of their own. ``ipso estimate``
writes it as Parquet.

Columns (:data:`COLUMNS`): ``estimand``, ``level`` (collaborative / site), ``scope``
(``"collaborative"`` or a site id), ``label``, ``role`` (primary / sensitivity / descriptive),
``spec``, ``estimator``, ``reason`` (why a non-primary row exists), ``secondary_to``,
``estimate``, ``lower``, ``upper`` (the (1 - alpha) interval; NaN for descriptive rows),
``se`` (standard error of log(estimate)), ``p_value`` (test of no change; NaN for descriptive
rows), ``scale`` (e.g. "risk ratio"), ``unit``, ``per`` (the per-what phrase of the wording),
``better`` (lower / higher), ``time_point`` (months after go-live; 0 = whole post period),
``n`` (episodes, or admissions for recognition, used), ``events`` (deaths, compliant episodes,
... ; NaN for times), ``status`` (``"ok"`` or ``"not estimable"``), ``status_reason`` (why not
estimable, in words: never a count or a threshold a count could be read from), ``method`` (one
sentence), ``settings`` (the specification in one
line), ``alpha``, ``as_of``, ``plan_version``, ``data_hash``. ``note`` holds technical detail
(e.g. the message of a failed fit) that is not for publication (:meth:`ResultsStore.publishable`
drops it and suppresses small counts).

Estimators (:data:`ESTIMATORS`): a function ``f(ctx, estimand, spec, scopes) -> {scope:
Estimate}``; adding one is the function plus one line in the registry. Shared intermediate
results (derived and cut episodes, expected-value models, site-month series, per-site fits) are
cached in the :class:`EstimationContext` so each is computed once.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from .plan import VARIABLES, Estimand, Plan, Specification, default_plan

__all__ = ["COLUMNS", "ESTIMATORS", "Estimate", "EstimationContext", "ResultsStore",
           "estimate_all", "register_estimator"]

#: Columns of the store, in order.
COLUMNS: tuple[str, ...] = (
    "estimand", "level", "scope", "label", "role", "spec", "estimator", "reason", "secondary_to",
    "estimate", "lower", "upper", "se", "p_value", "scale", "unit", "per", "better", "time_point",
    "n", "events", "status", "status_reason", "method", "settings", "alpha", "as_of",
    "plan_version", "data_hash", "note",
)
#: Smallest number of events (deaths, compliant episodes, ...) before go-live and after the
#: phase-in (each), and in all, for a count model; and smallest number of months before go-live
#: and after the phase-in, at one site.
MIN_EVENTS_EACH_PERIOD = 5
MIN_EVENTS = 10
MIN_MONTHS_PRE = 6
MIN_MONTHS_POST = 3
COLLABORATIVE = "collaborative"


@dataclass
class Estimate:
    """What an estimator returns for one scope (ratios on the natural scale, ``se`` on log)."""

    estimate: float = math.nan
    lower: float = math.nan
    upper: float = math.nan
    se: float = math.nan
    p_value: float = math.nan
    n: float = math.nan
    events: float = math.nan
    status: str = "ok"
    status_reason: str = ""
    method: str = ""
    note: str = ""

    @classmethod
    def not_estimable(cls, reason: str, method: str = "", note: str = "", **counts: float) -> Estimate:
        return cls(status="not estimable", status_reason=reason, method=method, note=note, **counts)


Estimator = Callable[["EstimationContext", Estimand, Specification, Sequence[str]], dict[str, Estimate]]
#: Estimator registry: key (``Specification.estimator``) -> function.
ESTIMATORS: dict[str, Estimator] = {}


def register_estimator(name: str) -> Callable[[Estimator], Estimator]:
    """Decorator: register an estimator function under `name` (a plan's ``estimator`` key)."""
    def deco(fn: Estimator) -> Estimator:
        ESTIMATORS[name] = fn
        return fn
    return deco


# ---------------------------------------------------------------------------------------------
# shared intermediate results
class EstimationContext:
    """The data of one run and its cached intermediate results.

    ``episodes`` (derived, attached to sites, cut at ``as_of`` with outcomes censored there),
    ``site_months`` (cut), ``sites``; :meth:`expected` (expected values per episode from the
    baseline model, cached per variable and case mix); :meth:`series` (the site-month frame of
    one variable and standardisation, cached); ``cache`` for estimator results (per-site fits).
    """

    def __init__(self, collaborative: Any, *, alpha: float = 0.05, as_of: str | None = None):
        from .derive import cut_at

        ep = collaborative.episodes
        sm = collaborative.site_months.copy()
        sm["month"] = pd.to_datetime(sm["month"]).dt.to_period("M").dt.to_timestamp()
        self.excluded_after_as_of = 0
        self.as_of = None
        if as_of is not None:
            settings = getattr(collaborative, "settings", None)
            from .settings import DEFAULT_SETTINGS

            ep, self.excluded_after_as_of = cut_at(ep, as_of, settings or DEFAULT_SETTINGS)
            cut = pd.Timestamp(as_of).to_period("M").to_timestamp()
            sm = sm[sm["month"] <= cut].reset_index(drop=True)
            self.as_of = str(cut.to_period("M"))
        self.episodes = ep
        self.site_months = sm
        self.sites = collaborative.sites
        self.alpha = float(alpha)
        self.data_hash = str(getattr(collaborative, "data_hash", ""))
        self.site_ids = sorted(map(str, self.sites["site_id"]))
        self.cache: dict[Any, Any] = {}
        self._base: pd.DataFrame | None = None
        self._keys: tuple[np.ndarray, pd.MultiIndex] | None = None

    # -- helpers -----------------------------------------------------------------------------
    def _cached(self, key: Any, fn: Callable[[], Any]) -> Any:
        if key not in self.cache:
            try:
                self.cache[key] = fn()
            except (ValueError, ArithmeticError, np.linalg.LinAlgError) as exc:
                self.cache[key] = exc
        value = self.cache[key]
        if isinstance(value, Exception):
            raise value
        return value

    def base_months(self) -> pd.DataFrame:
        """Monthly measures per site-month (every site-month of ``site_months``)."""
        if self._base is None:
            from .measures import monthly_measures

            mm = monthly_measures(self.episodes, self.site_months, sites=self.sites)
            mm = mm[mm["go_live_month"].notna() & mm["admissions"].notna()].reset_index(drop=True)
            mm["admissions_k"] = mm["admissions"] / 1000.0
            self._base = mm
        return self._base

    def _group_index(self) -> tuple[np.ndarray, pd.MultiIndex]:
        """Row -> site-month code for the episodes (codes index the base frame's rows)."""
        if self._keys is None:
            base = self.base_months()
            idx = pd.MultiIndex.from_frame(base[["site_id", "month"]])
            codes = idx.get_indexer(pd.MultiIndex.from_frame(self.episodes[["site_id", "month"]]))
            self._keys = (codes, idx)
        return self._keys

    def sum_by_month(self, values: pd.Series) -> np.ndarray:
        """Sum of an episode column per base site-month row (episodes outside it ignored)."""
        codes, idx = self._group_index()
        ok = codes >= 0
        return np.bincount(codes[ok], weights=np.nan_to_num(values.to_numpy(dtype=float)[ok]),
                           minlength=len(idx))

    def median_by_month(self, values: pd.Series) -> np.ndarray:
        """Median of an episode column per base site-month row (NaN without values)."""
        codes, idx = self._group_index()
        s = pd.Series(values.to_numpy(dtype=float)).groupby(codes).median()
        out = np.full(len(idx), np.nan)
        keep = s.index.to_numpy() >= 0
        out[s.index.to_numpy()[keep]] = s.to_numpy()[keep]
        return out

    def expected(self, variable: str, casemix: tuple[str, ...]) -> pd.Series:
        """Expected value of `variable` per episode under baseline care for its case mix."""
        from .expected import fit_expected_model

        var = VARIABLES[variable]

        def fit() -> pd.Series:
            model = fit_expected_model(self.episodes, var.column, var.kind, covariates=casemix,
                                       known=var.known)
            return model.predict(self.episodes)
        return self._cached(("expected", variable, tuple(casemix)), fit)

    def series(self, est: Estimand, spec: Specification) -> tuple[pd.DataFrame, str, str | None, str]:
        """(site-month frame, outcome column, exposure column or None, family) of `est` under
        `spec`'s standardisation; the frame has ``site_id``, ``month``, ``go_live_month``,
        ``months_since_go_live`` and the outcome/exposure columns ``_y`` / ``_x``."""
        var = VARIABLES[est.variable]
        std = spec.standardisation
        key = ("series", est.variable, std, tuple(spec.casemix) if std == "casemix" else ())

        def build() -> tuple[pd.DataFrame, str, str | None, str]:
            base = self.base_months()
            f = base[["site_id", "month", "go_live_month", "months_since_go_live", "episodes",
                      "admissions_k"]].copy()
            ep = self.episodes
            if var.kind == "rate":
                f["_y"], f["_x"] = base["episodes"].to_numpy(), base["admissions_k"].to_numpy()
                f["_n"] = base["admissions"].to_numpy()
                return f, "_y", "_x", "poisson"
            if var.kind == "median_time":
                minutes = ep[var.column]
                if std == "casemix":
                    from .expected import standardised_time_ratio

                    minutes = standardised_time_ratio(minutes, self.expected(est.variable, spec.casemix))
                med = self.median_by_month(minutes)
                f["_y"] = np.log(np.where(med > 0, med, np.nan))
                f["_n"] = self.sum_by_month(ep[var.column].notna().astype(float))
                return f, "_y", None, "gaussian"
            known = ep[var.known].astype(bool) if var.known else pd.Series(True, index=ep.index)
            if var.kind == "probability":
                y = self.sum_by_month(ep[var.column].astype(bool) & known)
            else:  # mean (hospital days): whole days per site-month
                y = np.round(self.sum_by_month(ep[var.column].where(known)))
            f["_y"] = y
            f["_n"] = self.sum_by_month(known.astype(float))
            if std == "casemix":
                e = self.expected(est.variable, spec.casemix).where(known, 0.0)
                f["_x"] = self.sum_by_month(e)
            else:
                f["_x"] = f["_n"]
            return f, "_y", "_x", "poisson"
        return self._cached(key, build)


# ---------------------------------------------------------------------------------------------
# small statistics helpers
def _crit(alpha: float, interval: str, df: float | None) -> float:
    if interval == "t" and df is not None and df > 0:
        return float(stats.t.ppf(1 - alpha / 2, df))
    return float(stats.norm.ppf(1 - alpha / 2))


def _p(est: float, se: float, interval: str, df: float | None) -> float:
    z = abs(est / se)
    if interval == "t" and df is not None and df > 0:
        return float(2 * stats.t.sf(z, df))
    return float(2 * stats.norm.sf(z))


def _effect(params: pd.Series, cov: pd.DataFrame, time_point: int) -> tuple[float, float]:
    """Link-scale effect ``time_point`` months after go-live (level + slope x months) and SE."""
    names = list(params.index)
    c = np.zeros(len(names))
    c[names.index("level_change")] = 1.0
    if "slope_change" in names:
        c[names.index("slope_change")] = float(time_point)
    est = float(c @ params.to_numpy())
    se = float(np.sqrt(c @ cov.to_numpy() @ c))
    return est, se


def _ratio_estimate(log_est: float, se: float, alpha: float, interval: str, df: float | None,
                    **kw: Any) -> Estimate:
    if not (np.isfinite(log_est) and np.isfinite(se) and se > 0):
        return Estimate.not_estimable("the model gave no finite effect or standard error", **kw)
    q = _crit(alpha, interval, df)
    return Estimate(math.exp(log_est), math.exp(log_est - q * se), math.exp(log_est + q * se), se,
                    _p(log_est, se, interval, df), **kw)


def _sentence(est: Estimand, spec: Specification, what: str) -> str:
    """One-sentence method description of an ITS-type specification."""
    var = VARIABLES[est.variable]
    if var.kind == "median_time":
        y = ("the log of the monthly median of each treated episode's minutes over its expected "
             "baseline median for its case mix" if spec.standardisation == "casemix" else
             "the log of the monthly median minutes")
        model = f"Gaussian segmented regression of {y}"
    else:
        offset = {"rate": "admissions",
                  "probability": "expected events under baseline care for the case mix"
                  if spec.standardisation == "casemix" else "episodes",
                  "mean": "expected hospital days under baseline care for the case mix"
                  if spec.standardisation == "casemix" else "episodes with a known stay"}[var.kind]
        model = f"Poisson (quasi-likelihood) segmented regression with an offset of {offset}"
    change = "a level and slope change" if spec.slope_change else "a level change"
    if spec.seasonality:
        change += f" and calendar-month seasonality ({spec.seasonality} Fourier pair(s))"
    tr = (f", leaving out the first {spec.transition} months after go-live (phase-in)"
          if spec.transition else "")
    return (f"{what}: {model}, with {change}{tr}; effect {spec.time_point} months after go-live "
            f"({est.scale}).")


def _min_events_reason(est: Estimand) -> str:
    what = {"sam30": "deaths", "sam3": "deaths"}.get(est.variable, "events")
    return f"too few {what} before go-live or after the phase-in to estimate a change"


# ---------------------------------------------------------------------------------------------
# estimators
@register_estimator("its_multisite")
def its_multisite(ctx: EstimationContext, est: Estimand, spec: Specification,
                  scopes: Sequence[str]) -> dict[str, Estimate]:
    """Collaborative: pooled segmented regression in event time (site intercepts and site
    trends; :func:`analysis.its.fit_its_multisite`), cluster-robust SEs by site (CR1)."""
    from .its import fit_its_multisite

    frame, y, x, family = ctx.series(est, spec)
    family = spec.family or family
    post_fit = frame["months_since_go_live"] >= spec.transition
    pre = frame["months_since_go_live"] < 0
    n = float(frame["_n"].sum())
    events = float(frame[y].sum()) if family == "poisson" else math.nan
    trends = ("a calendar trend per hospital" if spec.params.get("site_trends", True)
              else "one calendar trend shared by all hospitals")
    se_text = ("cluster-robust SE by hospital" if spec.covariance == "cluster"
               else f"{spec.covariance} SE")
    method = _sentence(est, spec, f"All hospitals together (hospital intercepts, {trends}, "
                       f"{se_text})")
    d = frame
    note = ""
    if family == "gaussian":
        gaps = frame.groupby("site_id")[y].apply(lambda v: bool(v.isna().any()))
        dropped = list(gaps[gaps].index)
        d = frame[~frame["site_id"].isin(dropped)]
        if dropped:
            method = method[:-1] + (f"; {len(dropped)} hospital(s) with a month without a treated "
                                    "episode left out (the model needs every month).")
        if d[y][pre].notna().sum() < 3 or d[y][post_fit].notna().sum() < 3:
            return {COLLABORATIVE: Estimate.not_estimable(
                "too few months with treated episodes before or after go-live", method, n=n)}
    elif frame.loc[pre, y].sum() < MIN_EVENTS_EACH_PERIOD or frame.loc[post_fit, y].sum() < MIN_EVENTS_EACH_PERIOD:
        return {COLLABORATIVE: Estimate.not_estimable(_min_events_reason(est), method, n=n,
                                                      events=events)}
    se_type = {"cluster": "cluster", "model": "model", "quasi": "model", "hac": "panel_hac"}[spec.covariance]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = fit_its_multisite(d, y, site="site_id", time="month", go_live="go_live_month",
                                    family=family, exposure=x, se=se_type,
                                    transition=spec.transition, slope_change=spec.slope_change,
                                    seasonality=spec.seasonality, alpha=ctx.alpha,
                                    site_trends=bool(spec.params.get("site_trends", True)))
    except (ValueError, np.linalg.LinAlgError, ArithmeticError) as exc:
        return {COLLABORATIVE: Estimate.not_estimable("the model could not be fitted", method,
                                                      note=str(exc), n=n, events=events)}
    log_est, se = _effect(fit.params, fit.cov, spec.time_point)
    if not fit.converged:
        return {COLLABORATIVE: Estimate.not_estimable("the model did not converge", method, n=n,
                                                      events=events)}
    return {COLLABORATIVE: _ratio_estimate(log_est, se, ctx.alpha, spec.interval, fit.n_sites - 1,
                                           n=n, events=events, method=method, note=note)}


def _site_fits(ctx: EstimationContext, est: Estimand, spec: Specification) -> dict[str, Estimate]:
    """Each hospital's own segmented regression (:func:`analysis.its.fit_its`), every site."""
    key = ("site_fits", est.id, est.variable, spec.standardisation, tuple(spec.casemix),
           spec.transition, spec.slope_change, spec.covariance, spec.interval, spec.time_point,
           spec.family, spec.seasonality, ctx.alpha)

    def run() -> dict[str, Estimate]:
        from .its import fit_its

        frame, y, x, family = ctx.series(est, spec)
        family = spec.family or family
        method = _sentence(est, spec, "This hospital's own series") .replace(
            " (quasi-likelihood)", "" if spec.covariance == "model" else " (quasi-likelihood)")
        out: dict[str, Estimate] = {}
        fam = family
        if family == "poisson" and spec.covariance in ("quasi", "hac"):
            fam = "quasipoisson"
        auto = "hac" if spec.covariance == "hac" else "none"
        for site, g in frame.groupby("site_id", sort=True):
            n = float(g["_n"].sum())
            events = float(g[y].sum()) if family == "poisson" else math.nan
            if x is not None:
                g = g[g[x] > 0]
            g = g[g[y].notna()]
            pre = g["months_since_go_live"] < 0
            post = g["months_since_go_live"] >= spec.transition
            if pre.sum() < MIN_MONTHS_PRE or post.sum() < MIN_MONTHS_POST:
                out[str(site)] = Estimate.not_estimable(
                    "too few months with data before go-live or after the phase-in", method, n=n,
                    events=events)
                continue
            if family == "poisson" and (g.loc[pre, y].sum() < MIN_EVENTS_EACH_PERIOD
                                        or g.loc[post, y].sum() < MIN_EVENTS_EACH_PERIOD
                                        or g[y].sum() < MIN_EVENTS):
                out[str(site)] = Estimate.not_estimable(_min_events_reason(est), method, n=n,
                                                        events=events)
                continue
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    fit = fit_its(g, y, time="month", intervention=g["go_live_month"].iloc[0],
                                  family=fam, exposure=x, autocorrelation=auto,
                                  transition=spec.transition, slope_change=spec.slope_change,
                                  seasonality=spec.seasonality, alpha=ctx.alpha, check_gaps=False)
                log_est, se = _effect(fit.params, fit.cov, spec.time_point)
            except (ValueError, np.linalg.LinAlgError, ArithmeticError) as exc:
                out[str(site)] = Estimate.not_estimable("the model could not be fitted", method,
                                                        note=str(exc), n=n, events=events)
                continue
            df = fit.diagnostics.df_resid if fam != "poisson" else None
            out[str(site)] = _ratio_estimate(log_est, se, ctx.alpha, spec.interval, df, n=n,
                                             events=events, method=method)
        return out
    return ctx._cached(key, run)


@register_estimator("site_its")
def site_its(ctx: EstimationContext, est: Estimand, spec: Specification,
             scopes: Sequence[str]) -> dict[str, Estimate]:
    """One hospital's own segmented regression (no borrowing from other hospitals)."""
    fits = _site_fits(ctx, est, spec)
    return {s: fits.get(s, Estimate.not_estimable("no data for this hospital")) for s in scopes}


def blup(yi: np.ndarray, vi: np.ndarray, *, alpha: float = 0.05) -> pd.DataFrame:
    """Empirical-Bayes (BLUP) estimates of study effects under the random-effects model
    ``y_i ~ N(theta_i, v_i)``, ``theta_i ~ N(mu, tau2)`` with REML tau2 (Raudenbush & Bryk 2002;
    metafor ``blup()``): ``theta_i = mu + lambda_i (y_i - mu)``, ``lambda_i = tau2 / (tau2 +
    v_i)``, ``Var = lambda_i v_i + (1 - lambda_i)^2 Var(mu)``. Columns: estimate, se, lower,
    upper, shrinkage (1 - lambda_i), plus attributes mu, mu_se, tau2 in ``.attrs``."""
    from .pooling import random_effects

    yi, vi = np.asarray(yi, float), np.asarray(vi, float)
    pooled = random_effects(yi, np.sqrt(vi), method="reml", alpha=alpha)
    mu, vb, tau2 = pooled.estimate, pooled.se ** 2, pooled.tau2
    lam = tau2 / (tau2 + vi)
    theta = mu + lam * (yi - mu)
    se = np.sqrt(lam * vi + (1 - lam) ** 2 * vb)
    z = float(stats.norm.ppf(1 - alpha / 2))
    out = pd.DataFrame({"estimate": theta, "se": se, "lower": theta - z * se,
                        "upper": theta + z * se, "shrinkage": 1 - lam})
    out.attrs.update(mu=mu, mu_se=pooled.se, tau2=tau2)
    return out


@register_estimator("site_eb")
def site_eb(ctx: EstimationContext, est: Estimand, spec: Specification,
            scopes: Sequence[str], shrink: Callable[..., pd.DataFrame] = blup) -> dict[str, Estimate]:
    """Each hospital's effect shrunk toward the collaborative mean (empirical Bayes / BLUP):
    its own segmented-regression estimate (as ``site_its``) weighted against the REML mean of
    every hospital's estimate, by how precise it is relative to the spread between hospitals.

    `shrink(yi, vi, *, alpha)` takes log effects and variances and returns a frame with columns
    ``estimate``, ``se``, ``lower``, ``upper`` (log scale), ``shrinkage`` and ``attrs["tau2"]``
    (default :func:`blup`). Another shrinkage function (e.g. one whose intervals carry the
    uncertainty of tau2) is one registry line:
    ``ESTIMATORS["site_eb"] = functools.partial(site_eb, shrink=that_function)``."""
    own = _site_fits(ctx, est, spec)
    ok = {s: e for s, e in own.items() if e.status == "ok"}
    method = ("This hospital's own segmented regression (as the site_its specification), shrunk "
              "toward the mean of all hospitals (empirical Bayes, REML between-hospital variance); "
              f"effect {spec.time_point} months after go-live ({est.scale}).")
    if len(ok) < 3:
        return {s: Estimate.not_estimable("too few hospitals can be estimated to shrink toward "
                                          "their mean", method) for s in scopes}
    labels = sorted(ok)
    yi = np.array([math.log(ok[s].estimate) for s in labels])
    vi = np.array([ok[s].se ** 2 for s in labels])
    table = shrink(yi, vi, alpha=ctx.alpha)
    tau2 = float(table.attrs.get("tau2", math.nan))
    out = {}
    for s in scopes:
        if s not in ok:
            base = own.get(s)
            reason = base.status_reason if base is not None else "no data for this hospital"
            out[s] = Estimate.not_estimable(reason, method, n=getattr(base, "n", math.nan),
                                            events=getattr(base, "events", math.nan))
            continue
        r = table.iloc[labels.index(s)]
        se = float(r["se"])
        out[s] = Estimate(math.exp(r["estimate"]), math.exp(r["lower"]), math.exp(r["upper"]), se,
                          _p(float(r["estimate"]), se, "z", None), ok[s].n, ok[s].events,
                          method=method, note=f"tau2={tau2:.4g}; shrinkage={float(r['shrinkage']):.3f}")
    return out


@register_estimator("site_pooled")
def site_pooled(ctx: EstimationContext, est: Estimand, spec: Specification,
                scopes: Sequence[str]) -> dict[str, Estimate]:
    """Collaborative: per-hospital estimates (as ``site_its``) pooled by REML random effects."""
    from .pooling import random_effects

    own = _site_fits(ctx, est, spec)
    ok = [e for e in own.values() if e.status == "ok"]
    method = ("Each hospital's own segmented regression, pooled by random-effects meta-analysis "
              f"(REML); effect {spec.time_point} months after go-live ({est.scale}); hospitals "
              "with too few events are left out.")
    if len(ok) < 3:
        return {COLLABORATIVE: Estimate.not_estimable("too few hospitals can be estimated", method)}
    p = random_effects([math.log(e.estimate) for e in ok], [e.se for e in ok], method="reml",
                       alpha=ctx.alpha)
    n = float(sum(e.n for e in ok))
    events = float(sum(e.events for e in ok)) if all(np.isfinite(e.events) for e in ok) else math.nan
    return {COLLABORATIVE: _ratio_estimate(p.estimate, p.se, ctx.alpha, spec.interval, len(ok) - 1,
                                           n=n, events=events, method=method,
                                           note=f"k={len(ok)}; tau2={p.tau2:.4g}")}


@register_estimator("crude")
def crude(ctx: EstimationContext, est: Estimand, spec: Specification,
          scopes: Sequence[str]) -> dict[str, Estimate]:
    """Descriptive before/after ratio (all months from go-live on vs before): no adjustment and
    no inferential claim (no interval, no p-value)."""
    var = VARIABLES[est.variable]
    ep = ctx.episodes
    out = {}
    for scope in scopes:
        sub = ep if scope == COLLABORATIVE else ep[ep["site_id"] == scope]
        post = sub["months_since_go_live"] >= 0
        if var.kind == "rate":
            f = ctx.base_months()
            f = f if scope == COLLABORATIVE else f[f["site_id"] == scope]
            fp = f["months_since_go_live"] >= 0
            num = (f.loc[~fp, "episodes"].sum(), f.loc[fp, "episodes"].sum())
            den = (f.loc[~fp, "admissions"].sum(), f.loc[fp, "admissions"].sum())
            n, events = float(f["admissions"].sum()), float(f["episodes"].sum())
            what = "episodes per 1,000 admissions"
        elif var.kind == "median_time":
            x = sub[var.column]
            pre_m, post_m = x[~post].median(), x[post].median()
            num, den = (pre_m, post_m), (1.0, 1.0)
            n, events = float(x.notna().sum()), math.nan
            what = "median minutes among treated episodes"
        else:
            known = sub[var.known].astype(bool) if var.known else pd.Series(True, index=sub.index)
            val = sub[var.column].where(known).astype(float)
            num = (val[~post].sum(), val[post].sum())
            den = (float((known & ~post).sum()), float((known & post).sum()))
            n = float(known.sum())
            events = float(val.sum()) if var.kind == "probability" else math.nan
            what = {"probability": "proportion of episodes", "mean": "mean per episode"}[var.kind]
        method = (f"Descriptive: {what} from go-live on over before go-live"
                  f"{' at this hospital' if scope != COLLABORATIVE else ', all hospitals pooled'}; "
                  "no adjustment for trend, case mix or recognition expansion, and no interval "
                  "or p-value (episodes are not independent).")
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = (num[1] / den[1]) / (num[0] / den[0]) if min(den) > 0 and num[0] > 0 else math.nan
        if not np.isfinite(ratio) or ratio <= 0:
            out[scope] = Estimate.not_estimable("no data before or after go-live", method, n=n,
                                                events=events)
        else:
            out[scope] = Estimate(float(ratio), n=n, events=events, method=method)
    return out


@register_estimator("cox_calendar")
def cox_calendar(ctx: EstimationContext, est: Estimand, spec: Specification,
                 scopes: Sequence[str]) -> dict[str, Estimate]:
    """Collaborative: hazard ratio after vs before go-live from a Cox model of sepsis-attributable
    death within the window, stratified by hospital, adjusted for case mix and calendar time
    (:func:`analysis.survival.fit_mortality_cox`), cluster-robust SE by hospital."""
    from .survival import fit_mortality_cox

    horizon = float(spec.params.get("horizon_days", 30))
    tr = (f"the months after a {spec.transition}-month phase-in" if spec.transition
          else "all months from go-live on")
    method = (f"Cox model of sepsis-attributable death within {horizon:g} days, stratified by "
              "hospital, adjusted for case mix and calendar time (linear), cluster-robust SE by "
              f"hospital; hazard ratio over {tr}.")
    ep = ctx.episodes
    known = ep[VARIABLES[est.variable].known].astype(bool) if VARIABLES[est.variable].known else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = fit_mortality_cox(ep if known is None else ep[known], adjust="strata_cluster",
                                    horizon=horizon, event_col=VARIABLES[est.variable].column,
                                    alpha=ctx.alpha, calendar="linear", transition=spec.transition)
    except (ValueError, np.linalg.LinAlgError, ArithmeticError) as exc:
        return {COLLABORATIVE: Estimate.not_estimable("the model could not be fitted", method,
                                                      note=str(exc))}
    row = res.table.loc["post"]
    se = float(row["robust_se"]) if np.isfinite(row["robust_se"]) else float(row["se"])
    return {COLLABORATIVE: _ratio_estimate(float(row["coef"]), se, ctx.alpha, "z", None,
                                           n=float(res.n), events=float(res.events), method=method)}


# ---------------------------------------------------------------------------------------------
# the store
class ResultsStore:
    """The tidy results table of one run (:data:`COLUMNS`) with its plan and metadata.

    ``frame``: the table; ``plan``: the :class:`analysis.plan.Plan` used; ``meta``: plan
    version, data hash, as_of, alpha, seconds, ipso-analysis version.
    """

    def __init__(self, frame: pd.DataFrame, plan: Plan, meta: dict[str, Any]):
        missing = [c for c in COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(f"a results frame needs columns {missing}")
        self.frame = frame.reset_index(drop=True)
        self.plan = plan
        self.meta = dict(meta)

    def __len__(self) -> int:
        return len(self.frame)

    def __repr__(self) -> str:
        return (f"ResultsStore({len(self.frame)} rows, {self.frame['estimand'].nunique()} "
                f"estimands, {self.frame['scope'].nunique()} scopes, plan {self.meta.get('plan_version')})")

    def rows(self, estimand: str | Iterable[str] | None = None, scope: str | None = None, *,
             role: str | None = None, spec: str | None = None, level: str | None = None) -> pd.DataFrame:
        """Rows filtered by estimand (one or several), scope, role, spec and level."""
        f = self.frame
        mask = pd.Series(True, index=f.index)
        if estimand is not None:
            mask &= f["estimand"].isin([estimand] if isinstance(estimand, str) else list(estimand))
        for col, val in (("scope", scope), ("role", role), ("spec", spec), ("level", level)):
            if val is not None:
                mask &= f[col] == val
        return f[mask]

    def primary(self, estimand: str, scope: str = COLLABORATIVE) -> pd.Series:
        """The primary row of `estimand` for `scope` (``"collaborative"`` or a site id)."""
        r = self.rows(estimand, scope, role="primary")
        if len(r) != 1:
            raise KeyError(f"no single primary row for estimand {estimand!r}, scope {scope!r} "
                           f"({len(r)} found)")
        return r.iloc[0]

    def summary(self, scope: str = COLLABORATIVE) -> pd.DataFrame:
        """The primary rows of one scope (estimand, label, estimate, interval, per, status)."""
        cols = ["estimand", "label", "estimate", "lower", "upper", "p_value", "scale", "per",
                "status", "status_reason"]
        return self.rows(scope=scope, role="primary")[cols].reset_index(drop=True)

    def publishable(self, min_cell: int = 11) -> pd.DataFrame:
        """The table safe to publish: technical notes dropped and counts from 1 to
        ``min_cell - 1`` (and the site-level ``n`` and ``events``, from which other counts could
        be subtracted, when any site's is small) suppressed as NaN."""
        f = self.frame.drop(columns=["note"]).copy()
        for col in ("n", "events"):
            small = (f[col] > 0) & (f[col] < min_cell)
            f.loc[small, col] = np.nan
            site_small = small & (f["level"] == "site")
            for est in f.loc[site_small, "estimand"].unique():
                f.loc[(f["estimand"] == est) & (f["level"] == "site"), col] = np.nan
        return f

    def to_parquet(self, path: str | Path) -> Path:
        """Write the table with the plan and metadata in the Parquet schema metadata."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pandas(self.frame, preserve_index=False)
        md = dict(table.schema.metadata or {})
        md[b"ipso_results"] = json.dumps({"meta": self.meta, "plan": self.plan.to_dict()}).encode()
        pq.write_table(table.replace_schema_metadata(md), path)
        return path

    @classmethod
    def read_parquet(cls, path: str | Path) -> ResultsStore:
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        raw = (table.schema.metadata or {}).get(b"ipso_results")
        if raw is None:
            raise ValueError(f"{str(path)!r} is not an ipso results store (no ipso_results metadata)")
        info = json.loads(raw)
        return cls(table.to_pandas(), Plan.from_dict(info["plan"]), info["meta"])


def _scopes(scopes: str | Sequence[str], ctx: EstimationContext) -> list[str]:
    if isinstance(scopes, str):
        if scopes == "all":
            return [COLLABORATIVE, *ctx.site_ids]
        if scopes in (COLLABORATIVE, "sites"):
            return [COLLABORATIVE] if scopes == COLLABORATIVE else list(ctx.site_ids)
        scopes = [s.strip() for s in scopes.split(",") if s.strip()]
    out = [str(s) for s in scopes]
    unknown = [s for s in out if s != COLLABORATIVE and s not in ctx.site_ids]
    if unknown:
        raise ValueError(f"unknown scope(s) {unknown}: use 'collaborative' or site ids of the data")
    return out


def estimate_all(
    collaborative: Any,
    plan: Plan | None = None,
    *,
    scopes: str | Sequence[str] = "all",
    alpha: float = 0.05,
    as_of: str | None = None,
    estimands: Iterable[str] | None = None,
    roles: Iterable[str] | None = None,
    context: EstimationContext | None = None,
) -> ResultsStore:
    """Compute every estimand of `plan` (default :func:`analysis.plan.default_plan`) once.

    `collaborative`: a :class:`analysis.store.Collaborative` (or a report run). `scopes`:
    ``"all"`` (collaborative and every hospital), ``"collaborative"``, ``"sites"`` or a list of
    ``"collaborative"`` and site ids. `as_of`: data cut-off month ``YYYY-MM``: episodes after it
    are left out and every outcome is censored at its end (see :func:`analysis.derive.cut_at`).
    `estimands` / `roles`: compute only these (e.g. ``roles=["primary"]``). `context`: reuse the
    cached intermediate results of an earlier call on the same data and settings.
    Estimates that cannot be computed are rows with ``status = "not estimable"`` and a reason.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    t0 = time.perf_counter()
    plan = (plan or default_plan()).validate()
    ctx = context or EstimationContext(collaborative, alpha=alpha, as_of=as_of)
    want = _scopes(scopes, ctx)
    site_scopes = [s for s in want if s != COLLABORATIVE]
    keep_ids = set(estimands) if estimands is not None else None
    keep_roles = set(roles) if roles is not None else None
    rows = []
    for est in plan.estimands:
        if keep_ids is not None and est.id not in keep_ids:
            continue
        targets = [COLLABORATIVE] if est.level == COLLABORATIVE else site_scopes
        if est.level == COLLABORATIVE and COLLABORATIVE not in want or not targets:
            continue
        for spec in est.specs:
            if keep_roles is not None and spec.role not in keep_roles:
                continue
            try:
                results = ESTIMATORS[spec.estimator](ctx, est, spec, targets)
            except (ValueError, ArithmeticError, np.linalg.LinAlgError, KeyError) as exc:
                results = {s: Estimate.not_estimable("the estimate could not be computed",
                                                     note=f"{type(exc).__name__}: {exc}")
                           for s in targets}
            for scope in targets:
                r = results[scope]
                descriptive = spec.role == "descriptive"
                rows.append({
                    "estimand": est.id, "level": est.level, "scope": scope, "label": est.label,
                    "role": spec.role, "spec": spec.name, "estimator": spec.estimator,
                    "reason": spec.reason, "secondary_to": est.secondary_to or "",
                    "estimate": r.estimate,
                    "lower": math.nan if descriptive else r.lower,
                    "upper": math.nan if descriptive else r.upper,
                    "se": math.nan if descriptive else r.se,
                    "p_value": math.nan if descriptive else r.p_value,
                    "scale": "crude ratio" if descriptive else est.scale, "unit": est.unit,
                    "per": est.per, "better": est.better, "time_point": spec.time_point,
                    "n": r.n, "events": r.events, "status": r.status,
                    "status_reason": r.status_reason, "method": r.method,
                    "settings": spec.describe(), "alpha": alpha, "as_of": ctx.as_of or "",
                    "plan_version": plan.version, "data_hash": ctx.data_hash, "note": r.note,
                })
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    for c in ("estimate", "lower", "upper", "se", "p_value", "n", "events", "alpha"):
        frame[c] = frame[c].astype(float)
    frame["time_point"] = frame["time_point"].astype("int64")
    from . import __version__

    meta = {"plan_version": plan.version, "data_hash": ctx.data_hash, "as_of": ctx.as_of,
            "alpha": alpha, "scopes": len(want), "excluded_after_as_of": ctx.excluded_after_as_of,
            "seconds": round(time.perf_counter() - t0, 2), "ipso_analysis_version": __version__}
    return ResultsStore(frame, plan, meta)


# ---------------------------------------------------------------------------------------------
# command-line bodies (``ipso estimate``, ``ipso plan show``)
def _load_plan_or_exit(plan_path: Path | None) -> Plan:
    import typer

    from .console import console
    from .plan import PlanError

    try:
        plan = Plan.from_yaml(plan_path) if plan_path is not None else default_plan()
        return plan.validate()
    except PlanError as exc:
        console.print(f"[bold red]Plan error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from None


def run_plan_show_command(plan_path: Path | None, json_out: bool, yaml_out: bool = False) -> None:
    """``ipso plan show [--plan FILE] [--json | --yaml]``."""
    from .console import print_json

    plan = _load_plan_or_exit(plan_path)
    if json_out:
        print_json(plan.to_dict())
        return
    import sys

    if yaml_out:
        sys.stdout.write(plan.to_yaml())
        return

    sys.stdout.write(str(plan) + "\n")


def run_estimate_command(data: Path, out: Path, as_of: str | None, plan_path: Path | None,
                         scopes: str, json_out: bool) -> ResultsStore:
    """``ipso estimate --data DIR --out FILE.parquet [--as-of YYYY-MM] [--plan FILE] [--json]``."""
    import typer

    from .console import console, print_json
    from .store import load_collaborative
    from .validate import DataContractError, fail

    plan = _load_plan_or_exit(plan_path)
    if as_of is not None:
        from .derive import cutoff_instant

        try:
            cutoff_instant(as_of)
        except ValueError as exc:
            console.print(f"[bold red]Error:[/] {exc}", highlight=False)
            raise typer.Exit(code=2) from None
    if not Path(data).exists():
        console.print(f"[bold red]Error:[/] data directory {str(data)!r} does not exist", highlight=False)
        raise typer.Exit(code=2)
    try:
        coll = load_collaborative(data)
    except DataContractError as exc:
        fail(exc, data)
        raise  # pragma: no cover (fail exits)
    try:
        store = estimate_all(coll, plan, scopes=scopes, as_of=as_of)
    except ValueError as exc:
        console.print(f"[bold red]Error:[/] {exc}", highlight=False)
        raise typer.Exit(code=2) from None
    store.to_parquet(out)
    f = store.frame
    summary = {
        "out": str(out), "rows": len(f), "estimands": int(f["estimand"].nunique()),
        "scopes": int(f["scope"].nunique()), "not_estimable": int((f["status"] != "ok").sum()),
        "plan_version": plan.version, "data_hash": store.meta["data_hash"],
        "as_of": store.meta["as_of"], "seconds": store.meta["seconds"],
        "collaborative_primary": {
            r["estimand"]: {k: (None if isinstance(r[k], float) and not math.isfinite(r[k]) else r[k])
                            for k in ("estimate", "lower", "upper", "status")}
            for _, r in f[(f["scope"] == COLLABORATIVE) & (f["role"] == "primary")].iterrows()},
    }
    if json_out:
        print_json(summary)
    else:
        from rich.table import Table

        table = Table(title=f"Primary estimates, collaborative (plan {plan.version}) -> {out}")
        for col in ("estimand", "estimate", "95% CI", "per"):
            table.add_column(col)
        for _, r in f[(f["scope"] == COLLABORATIVE) & (f["role"] == "primary")].iterrows():
            if r["status"] == "ok":
                table.add_row(r["estimand"], f"{r['estimate']:.3f}",
                              f"{r['lower']:.3f} to {r['upper']:.3f}", r["per"])
            else:
                table.add_row(r["estimand"], "not estimable", r["status_reason"], r["per"])
        console.print(table)
        console.print(f"{len(f)} rows, {summary['scopes']} scopes, {summary['seconds']} s")
    return store

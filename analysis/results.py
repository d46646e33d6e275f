"""The results store: every number the reports show, computed once per run from the analysis plan.

:func:`estimate_all` takes a collaborative (:class:`analysis.store.Collaborative` or a report
run) and an :class:`analysis.plan.Plan` (default :func:`analysis.plan.default_plan`) and returns
a :class:`ResultsStore`, one tidy table. Reports, notebooks and papers read every number,
sentence and caption from it; they compute no estimate of their own. ``ipso estimate`` writes it
as Parquet (the plan and metadata in the schema).

Row convention
--------------
Every row belongs to one estimand (``estimand``, ``label``, ``level``), one **scope**
(``"collaborative"`` or a site id) and the plan specification that produced it (``spec``,
``role``, ``estimator``, ``reason``). ``component`` says what kind of result the row holds
(:data:`COMPONENTS`):

``effect``
    The estimand's effect at its time point: for each estimand x scope exactly one
    ``role == "primary"`` row (:meth:`ResultsStore.primary`), plus sensitivity rows (each with a
    one-line ``reason``; a specification with several variants, e.g. leave-one-wave-out or the
    Rambachan-Roth bounds for each M, has one row per ``variant``) and descriptive rows (crude
    before/after ratios: ``lower``/``upper``/``se``/``p_value`` are NaN, ``scale`` "crude
    ratio"). ``estimate`` is a ratio (``se`` of its log); ``time_point`` months after go-live (0:
    a whole-post-period summary); ``bound_lower``/``bound_upper``: the identified set of a
    Rambachan-Roth row; ``extrapolated_share``: share of the counterfactual resting on calendar
    months after the last go-live (imputation estimator).
``event_time``
    Event-study points of the collaborative primary imputation estimator: ``time_point`` = event
    month (leads -12..-1 are placebo estimates before go-live, lags 0..36), ``period`` "lead" /
    "lag", ``estimate`` observed / imputed counterfactual with its interval, ``n_sites``,
    ``events`` the observed events at that event month, ``extrapolated_share``.
``pretrend_test``
    The joint test that every lead is 1: ``statistic`` F on (``df``, ``n_sites`` - ``df``)
    degrees of freedom, ``p_value``.
``oe``
    Hospital comparison (funnel plot) of risk-adjusted mortality in the stated ``period``
    ("after go-live"). Site rows: ``quantity`` "O/E relative to the collaborative",
    ``estimate``/``lower``/``upper`` the hospital's O/E over the collaborative's with its exact
    95% interval, ``bound_lower``/``bound_upper`` the 99.8% funnel limits in use at its
    expected deaths ``x``, ``flag`` "high"/"low"/"", ``events`` observed deaths. Collaborative
    rows, one per ``quantity``: "collaborative O/E" (the funnel's centre), "over-dispersion"
    (``estimate`` tau^2, ``statistic`` phi, ``p_value`` of the test, ``flag`` "limits widened"
    or ""), "expected flags by chance" and "hospitals flagged" (``n_sites`` hospitals).
``curve``
    Descriptive survival and length-of-stay curves (episodes are clustered in hospitals, so no
    p-values): ``quantity`` "30-day survival" (Kaplan-Meier, sepsis-attributable), "discharged
    alive" / "died in hospital" (Aalen-Johansen cumulative incidence, competing events),
    ``period`` "before go-live" / "after go-live", ``x`` days from T0 on a coarse grid
    (:data:`CURVE_DAYS`), ``estimate`` with its pointwise 95% band, ``n`` episodes in the period,
    ``events`` cumulative events by day ``x``. Stored only for a scope and period with at least
    :data:`MIN_CURVE_EVENTS` events of that kind.
``model_fit``
    The case-mix model (baseline episodes): ``quantity`` "c-statistic" (with a Hanley-McNeil
    interval), "Hosmer-Lemeshow" (``statistic``, ``df``, ``p_value``) and "calibration" (one row
    per decile of predicted risk: ``x`` mean predicted, ``estimate`` observed, per 100 episodes).
``summary``
    Crude values by period behind the descriptive before/after ratio (``period`` "before
    go-live" / "after go-live", ``estimate`` in ``unit``).
``counterfactual``
    The monthly paths of a hospital's own interrupted time series, for its ITS figure (the
    ``site_its`` specifications with ``params["paths"]``: 30-day mortality, recognition,
    hospital days): ``quantity`` "observed", "fitted" or "counterfactual" (with its band, after
    go-live), ``period`` the month, ``x`` months since go-live, ``estimate`` per unit of exposure
    (per 1,000 admissions, or observed / expected), ``events`` the observed count.

Other columns (:data:`COLUMNS`): ``secondary_to``, ``scale``, ``unit``, ``per`` (the per-what
phrase of the wording), ``better`` (lower / higher), ``n`` (episodes, or admissions for
recognition), ``events`` (deaths, compliant episodes, ...; NaN for times), ``status``
(``"ok"`` or ``"not estimable"``), ``status_reason`` (in words: never a count or a threshold a
count could be read from), ``method`` (one sentence naming the estimator), ``settings`` (the
specification in one line), ``alpha``, ``as_of``, ``plan_version``, ``data_hash``; ``note``
holds technical detail that is not for publication.

Privacy. The store is internal (it holds site ids and exact counts). :meth:`ResultsStore.
publishable` is what may leave the analysis: notes dropped; counts from 1 to ``min_cell - 1``
suppressed (and a site-level count column of a result when any site's is small, so that none
can be had by subtraction); a month's observed value blanked when its count is small; the exact interval of a hospital's O/E blanked when its deaths are
small (it would reveal them), expected deaths rounded to 5 and O/E to 2 decimals (as the funnel
plot draws them); curve points kept only where the cumulative events, the episodes without
the event, and the events since the previous kept point are each 0 or at least ``min_cell``
(so that no individual event can be read from a step of a curve at a small hospital); crude
values blanked where the counts behind them are small. Nothing patient-level is ever stored.

Estimators (:data:`ESTIMATORS`): a function ``f(ctx, estimand, spec, scopes) -> {scope:
Estimate or [Estimate, ...]}``; adding one is the function plus one line in the registry
(:func:`register_estimator`). An :class:`Estimate` with ``component != "effect"`` is a
supporting row. Shared intermediate results (derived and cut episodes, expected-value models,
site-month series, per-site and staggered fits) are cached in the :class:`EstimationContext`
so each is computed once. Estimators of the imputation estimator and its sensitivity analyses
live in :mod:`analysis.results_staggered`, those of the supporting results (funnel, curves,
case-mix model) in :mod:`analysis.results_supporting`.
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

__all__ = ["COLUMNS", "COMPONENTS", "CURVE_DAYS", "ESTIMATORS", "MIN_CURVE_EVENTS", "RESULTS_FILE",
           "Estimate", "EstimationContext", "ResultsStore", "estimate_all", "load_store",
           "register_estimator"]

#: Columns of the store, in order.
COLUMNS: tuple[str, ...] = (
    "estimand", "level", "scope", "component", "label", "role", "spec", "variant", "estimator",
    "reason", "secondary_to", "quantity", "period", "x", "estimate", "lower", "upper", "se",
    "p_value", "statistic", "df", "bound_lower", "bound_upper", "flag", "scale", "unit", "per",
    "better", "time_point", "n", "events", "n_sites", "extrapolated_share", "status",
    "status_reason", "method", "settings", "alpha", "as_of", "plan_version", "data_hash", "note",
)
#: What a row holds (see the module docstring).
COMPONENTS: tuple[str, ...] = ("effect", "event_time", "pretrend_test", "oe", "curve",
                               "model_fit", "summary", "counterfactual")
_FLOAT_COLUMNS = ("x", "estimate", "lower", "upper", "se", "p_value", "statistic", "df",
                  "bound_lower", "bound_upper", "n", "events", "n_sites", "extrapolated_share",
                  "alpha")
_TEXT_COLUMNS = ("variant", "quantity", "period", "flag", "scale", "status_reason", "method",
                 "settings", "note", "reason", "secondary_to", "as_of")
#: Smallest number of events (deaths, compliant episodes, ...) before go-live and after the
#: phase-in (each), and in all, for a count model; and smallest number of months before go-live
#: and after the phase-in, at one site.
MIN_EVENTS_EACH_PERIOD = 5
MIN_EVENTS = 10
MIN_MONTHS_PRE = 6
MIN_MONTHS_POST = 3
#: Days from T0 at which survival and length-of-stay curves are stored (a coarse grid: a step of
#: a curve between two grid days pools every event in between).
CURVE_DAYS: tuple[float, ...] = (1.0, 2.0, 3.0, 5.0, 7.0, 10.0, 14.0, 21.0, 30.0)
#: A curve is stored for a scope and period only with at least this many events of its kind.
MIN_CURVE_EVENTS = 20
COLLABORATIVE = "collaborative"
#: File name of the store in a batch run's shared folder.
RESULTS_FILE = "results.parquet"


@dataclass
class Estimate:
    """What an estimator returns for one scope: an effect row (``component="effect"``: ratios
    on the natural scale, ``se`` of the log) or a supporting row (see the module docstring for
    the fields each component uses). Fields left None take the estimand's / specification's
    value (``scale``, ``time_point``)."""

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
    component: str = "effect"
    variant: str = ""
    quantity: str = ""
    period: str = ""
    x: float = math.nan
    statistic: float = math.nan
    df: float = math.nan
    bound_lower: float = math.nan
    bound_upper: float = math.nan
    flag: str = ""
    n_sites: float = math.nan
    extrapolated_share: float = math.nan
    scale: str | None = None
    time_point: int | None = None

    @classmethod
    def not_estimable(cls, reason: str, method: str = "", note: str = "", **counts: Any) -> Estimate:
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

    def expected_model(self, variable: str, casemix: tuple[str, ...]) -> Any:
        """The baseline expected-value model of `variable` (:func:`analysis.expected.
        fit_expected_model`), fitted once per variable and case mix."""
        from .expected import fit_expected_model

        var = VARIABLES[variable]
        return self._cached(("expected_model", variable, tuple(casemix)), lambda: fit_expected_model(
            self.episodes, var.column, var.kind, covariates=casemix, known=var.known))

    def expected(self, variable: str, casemix: tuple[str, ...]) -> pd.Series:
        """Expected value of `variable` per episode under baseline care for its case mix."""
        return self._cached(("expected", variable, tuple(casemix)),
                            lambda: self.expected_model(variable, casemix).predict(self.episodes))

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
            paths[str(site)] = fit.counterfactual
        return out
    paths: dict[str, pd.DataFrame] = {}
    fits = ctx._cached(key, run)
    if paths:  # the key _path_rows looks up: ("site_paths", <the fit key without its tag>)
        ctx.cache[("site_paths", *key[1:])] = paths
    return fits


def _path_rows(ctx: EstimationContext, est: Estimand, spec: Specification, site: str,
               method: str) -> list[Estimate]:
    """The monthly paths of a hospital's own ITS (component ``counterfactual``): observed,
    fitted and counterfactual (with its band) per unit of exposure (x 1,000 for recognition;
    observed / expected for case-mix offsets; the value itself for log medians), ``x`` = months
    since go-live, ``period`` the month, ``events`` the observed count (for suppression)."""
    key = ("site_paths", est.id, est.variable, spec.standardisation, tuple(spec.casemix),
           spec.transition, spec.slope_change, spec.covariance, spec.interval, spec.time_point,
           spec.family, spec.seasonality, ctx.alpha)
    cf = ctx.cache.get(key, {}).get(site)
    if cf is None:
        return []
    frame = ctx.series(est, spec)[0]
    go = frame.loc[frame["site_id"] == site, "go_live_month"].iloc[0]
    months = pd.to_datetime(cf["time"])
    since = (months.dt.year - go.year) * 12 + (months.dt.month - go.month)
    per = 1000.0 if VARIABLES[est.variable].kind == "rate" else 1.0
    # the offset of a rate is already in 1,000 admissions (``admissions_k``): dividing by it
    # gives the rate per 1,000; a case-mix offset (expected events) gives observed / expected
    denom = cf["exposure"].to_numpy(float) if "exposure" in cf else np.ones(len(cf))
    count = VARIABLES[est.variable].kind not in ("median_time",)
    rows: list[Estimate] = []
    with np.errstate(divide="ignore", invalid="ignore"):
        for i in range(len(cf)):
            common = {"method": method, "component": "counterfactual", "x": float(since.iloc[i]),
                      "period": f"{months.iloc[i]:%Y-%m}", "time_point": int(since.iloc[i]),
                      "scale": "per 1,000 admissions" if per == 1000.0 else (
                          "observed / expected" if "exposure" in cf else "log median ratio")}
            obs = float(cf["observed"].iloc[i])
            rows.append(Estimate(obs / denom[i], events=obs if count else math.nan,
                                 quantity="observed", **common))
            rows.append(Estimate(float(cf["fitted"].iloc[i]) / denom[i], quantity="fitted", **common))
            if bool(cf["post"].iloc[i]):
                rows.append(Estimate(float(cf["counterfactual"].iloc[i]) / denom[i],
                                     float(cf["counterfactual_low"].iloc[i]) / denom[i],
                                     float(cf["counterfactual_high"].iloc[i]) / denom[i],
                                     quantity="counterfactual", **common))
    return [r for r in rows if np.isfinite(r.estimate)]


@register_estimator("site_its")
def site_its(ctx: EstimationContext, est: Estimand, spec: Specification,
             scopes: Sequence[str]) -> dict[str, Estimate]:
    """One hospital's own segmented regression (no borrowing from other hospitals); with
    ``params["paths"]`` also its monthly observed, fitted and counterfactual values (component
    ``counterfactual``, for the hospital's ITS figure)."""
    fits = _site_fits(ctx, est, spec)
    out: dict[str, Estimate | list[Estimate]] = {}
    for s in scopes:
        e = fits.get(s, Estimate.not_estimable("no data for this hospital"))
        out[s] = [e, *_path_rows(ctx, est, spec, s, e.method)] if spec.params.get("paths") else e
    return out


def _site_level_changes(ctx: EstimationContext, est: Estimand,
                        spec: Specification) -> tuple[dict[str, Estimate], pd.DataFrame]:
    """Each hospital's own level change against the collaborative's common trend: one Poisson
    (quasi-likelihood) model of every hospital's site-months, offset = the estimand's exposure
    (case-mix-expected events), hospital intercepts, one calendar trend and ``seasonality``
    Fourier pairs shared by all hospitals, and one after-go-live indicator per hospital (months
    from the end of the phase-in on; phase-in months left out). The hospital's coefficient is its
    own effect (log ratio, constant after the phase-in); its variance is the model-based one
    times the Pearson dispersion. Only the hospital's intercept is its own, so the estimate does
    not extrapolate a trend of the hospital's own (unlike ``site_its``): far more precise with
    few events, under the assumption that the hospitals share the secular trend.

    Returns the estimates and the covariance of the log effects of the hospitals that have one
    (a frame indexed and labelled by site id): they are correlated through the shared trend."""
    key = ("site_level_changes", est.variable, spec.standardisation, tuple(spec.casemix),
           spec.transition, spec.seasonality, ctx.alpha)

    def run() -> tuple[dict[str, Estimate], pd.DataFrame]:
        from .its import _fourier, _irls

        frame, y, x, family = ctx.series(est, spec)
        if family != "poisson" or x is None:
            raise ValueError("a common-trend level change needs a count outcome with an exposure")
        method = (f"This hospital's level change after a {spec.transition}-month phase-in against "
                  "a calendar trend and seasonality shared by all hospitals (one Poisson "
                  "quasi-likelihood model of every hospital, hospital intercepts; "
                  f"{est.scale}).")
        m = frame["months_since_go_live"]
        d = frame[(frame[x] > 0) & ~((m >= 0) & (m < spec.transition))].reset_index(drop=True)
        post = (d["months_since_go_live"] >= spec.transition).to_numpy()
        sites = pd.Index(sorted(d["site_id"].astype(str).unique()))
        code = sites.get_indexer(d["site_id"].astype(str))
        out: dict[str, Estimate] = {}
        ev_pre = np.bincount(code, weights=d[y].to_numpy(float) * ~post, minlength=len(sites))
        ev_post = np.bincount(code, weights=d[y].to_numpy(float) * post, minlength=len(sites))
        ok = (ev_pre >= MIN_EVENTS_EACH_PERIOD) & (ev_post >= MIN_EVENTS_EACH_PERIOD) & (
            ev_pre + ev_post >= MIN_EVENTS)
        n_all = frame.groupby(frame["site_id"].astype(str))["_n"].sum()
        ev_all = frame.groupby(frame["site_id"].astype(str))[y].sum()
        for i, s in enumerate(sites):
            if not ok[i]:
                out[s] = Estimate.not_estimable(_min_events_reason(est), method,
                                                n=float(n_all.get(s, 0)), events=float(ev_all.get(s, 0)))
        keep = ok[code]
        d, post, code = d[keep].reset_index(drop=True), post[keep], code[keep]
        fit_sites = np.flatnonzero(ok)
        if len(fit_sites) < 2:
            for i in fit_sites:
                out[sites[i]] = Estimate.not_estimable("too few hospitals can be estimated", method)
            return out, pd.DataFrame()
        remap = -np.ones(len(sites), dtype=int)
        remap[fit_sites] = np.arange(len(fit_sites))
        c = remap[code]
        G = len(fit_sites)
        t = (d["month"].dt.year * 12 + d["month"].dt.month).to_numpy(float)
        tc = (t - t.mean()) / 12.0
        X = np.zeros((len(d), 2 * G))
        X[np.arange(len(d)), c] = 1.0
        X[np.arange(len(d)), G + c] = post.astype(float)
        four = _fourier(d["month"].dt.month.to_numpy(float), spec.seasonality)
        X = np.column_stack([X, tc, *four.values()])
        yv = d[y].to_numpy(float)
        fit = _irls(yv, X, np.log(d[x].to_numpy(float)), "poisson", None)
        phi = max(float(np.sum(fit["pearson"] ** 2)) / max(len(d) - X.shape[1], 1), 1.0)
        cov = fit["bread"] * phi
        for j, i in enumerate(fit_sites):
            b, se = float(fit["beta"][G + j]), float(np.sqrt(cov[G + j, G + j]))
            s = sites[i]
            out[s] = _ratio_estimate(b, se, ctx.alpha, "z", None, n=float(n_all.get(s, 0)),
                                     events=float(ev_all.get(s, 0)), method=method,
                                     note=f"dispersion={phi:.3g}")
        labels = [str(sites[i]) for i in fit_sites]
        vcov = pd.DataFrame(cov[G:2 * G, G:2 * G], index=labels, columns=labels)
        return out, vcov
    return ctx._cached(key, run)


def _expected_by_period(ctx: EstimationContext, est: Estimand,
                        spec: Specification) -> tuple[pd.Series, pd.Series]:
    """Expected events (case-mix offset; observed events when not standardised) per site before
    go-live and from go-live on: what the too-little-information rule looks at."""
    frame, y, x, _ = ctx.series(est, spec)
    col = x if (x is not None and spec.standardisation == "casemix") else y
    pre = frame["months_since_go_live"] < 0
    by = frame.groupby("site_id")[col]
    before = frame[pre].groupby("site_id")[col].sum().reindex(by.sum().index, fill_value=0.0)
    after = frame[~pre].groupby("site_id")[col].sum().reindex(by.sum().index, fill_value=0.0)
    return before.rename(index=str), after.rename(index=str)


def _too_few_reason(est: Estimand) -> str:
    what = {"sam30": "deaths", "sam3": "deaths"}.get(est.variable, "events")
    return f"too few {what} to estimate this hospital's own effect"


@register_estimator("site_eb")
def site_eb(ctx: EstimationContext, est: Estimand, spec: Specification,
            scopes: Sequence[str], shrink: Callable[..., Any] | None = None) -> dict[str, Estimate]:
    """Each hospital's effect partially pooled toward the collaborative mean (empirical Bayes,
    :func:`analysis.pooling.empirical_bayes`): its own segmented-regression estimate (as
    ``site_its``) weighted against the mean of every hospital's, by its precision relative to
    the spread between hospitals, with an interval that integrates the uncertainty in that
    spread (posterior over tau^2; ``params["prior"]``: ``"uniform_tau2"`` or
    ``"uniform_tau"``; ``params["interval"]``: ``"posterior"`` or ``"plugin"``).

    Too-little-information rule (:data:`analysis.pooling.TOO_LITTLE_INFORMATION_RULE`,
    ``params["min_expected_events"]``, default :data:`analysis.pooling.MIN_EXPECTED_EVENTS`):
    a hospital with fewer expected events (case-mix model) before go-live, or from go-live on,
    gets no own effect: status "not estimable", reason "too few deaths to estimate this
    hospital's own effect" (the collaborative effect and how the hospital compares with the
    others, the ``oe`` rows, are what its report shows). ``params["fit_set"]``:
    ``"estimable"`` (only hospitals that pass the rule inform the mean and tau^2) or ``"all"``
    (every hospital with an own estimate does; only those passing the rule are reported).

    `shrink` (default :func:`analysis.pooling.empirical_bayes`) takes ``(yi, vi, labels, *,
    alpha, prior, interval, prior_scale[, vcov])`` and returns an :class:`analysis.pooling.
    EmpiricalBayesResult`; another shrinkage method is one registry line:
    ``ESTIMATORS["site_eb"] = functools.partial(site_eb, shrink=that_function)``."""
    from .pooling import MIN_EXPECTED_EVENTS, empirical_bayes

    shrink = shrink or empirical_bayes
    own_kind = str(spec.params.get("own_estimate", "own_its"))
    if own_kind not in ("own_its", "common_trend"):
        raise ValueError(f"own_estimate must be 'own_its' or 'common_trend', got {own_kind!r}")
    vcov = None
    if own_kind == "common_trend":
        own, vcov = _site_level_changes(ctx, est, spec)
    else:
        own = _site_fits(ctx, est, spec)
    prior = str(spec.params.get("prior", "uniform_tau2"))
    interval = str(spec.params.get("interval", "posterior"))
    min_exp = float(spec.params.get("min_expected_events", MIN_EXPECTED_EVENTS))
    fit_set = str(spec.params.get("fit_set", "estimable"))
    before, after = _expected_by_period(ctx, est, spec)
    what = "expected deaths" if est.variable in ("sam30", "sam3") else "expected events"
    own_text = ("This hospital's level change against the calendar trend shared by all "
                "hospitals" if own_kind == "common_trend" else
                "This hospital's own segmented regression (as the site_its specification)")
    method = (f"{own_text}, "
              "partially pooled toward the mean of all hospitals (empirical Bayes: posterior over "
              f"the between-hospital variance, flat prior on {'tau' if prior == 'uniform_tau' else 'tau²'}"
              f", {interval} interval); effect {spec.time_point} months after go-live "
              f"({est.scale}); a hospital's own effect is estimated only with at least "
              f"{min_exp:g} {what} before go-live and from go-live on.")
    labels = sorted(s for s, e in own.items() if e.status == "ok")
    passes = {s: bool(before.get(s, 0.0) >= min_exp and after.get(s, 0.0) >= min_exp)
              for s in own}
    fit_labels = labels if fit_set == "all" else [s for s in labels if passes[s]]
    out: dict[str, Estimate] = {}
    res = None
    if len(fit_labels) >= 4:
        yi = np.array([math.log(own[s].estimate) for s in fit_labels])
        vi = np.array([own[s].se ** 2 for s in fit_labels])
        kw: dict[str, Any] = {"prior": prior, "interval": interval,
                              "prior_scale": float(spec.params.get("prior_scale", 0.5))}
        if vcov is not None:
            kw["vcov"] = vcov.loc[fit_labels, fit_labels].to_numpy()
        try:
            res = shrink(yi, vi, fit_labels, alpha=ctx.alpha, **kw)
        except ValueError:
            res = None
    for s in scopes:
        base = own.get(s)
        counts = {"n": getattr(base, "n", math.nan), "events": getattr(base, "events", math.nan)}
        if base is None:
            out[s] = Estimate.not_estimable("no data for this hospital", method)
        elif not passes.get(s, False):
            out[s] = Estimate.not_estimable(_too_few_reason(est), method, **counts)
        elif base.status != "ok":
            out[s] = Estimate.not_estimable(base.status_reason, method, note=base.note, **counts)
        elif res is None:
            out[s] = Estimate.not_estimable("too few hospitals can be estimated to pool toward "
                                            "their mean", method, **counts)
        else:
            r = res.site(s)
            if r["status"] != "ok":
                out[s] = Estimate.not_estimable(_too_few_reason(est), method, **counts)
                continue
            se = float(r["se"])
            out[s] = Estimate(math.exp(r["estimate"]), math.exp(r["lower"]), math.exp(r["upper"]),
                              se, _p(float(r["estimate"]), se, "z", None), method=method,
                              note=f"tau2={res.tau2:.4g}; shrinkage={float(r['shrinkage']):.3f}; "
                                   f"k={len(fit_labels)}", **counts)
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
          scopes: Sequence[str]) -> dict[str, list[Estimate]]:
    """Descriptive before/after ratio (all months from go-live on vs before): no adjustment and
    no inferential claim (no interval, no p-value); with the crude value of each period
    (component ``summary``, in the estimand's unit)."""
    var = VARIABLES[est.variable]
    ep = ctx.episodes
    out: dict[str, list[Estimate]] = {}
    for scope in scopes:
        sub = ep if scope == COLLABORATIVE else ep[ep["site_id"] == scope]
        post = sub["months_since_go_live"] >= 0
        if var.kind == "rate":
            f = ctx.base_months()
            f = f if scope == COLLABORATIVE else f[f["site_id"] == scope]
            fp = f["months_since_go_live"] >= 0
            num = (f.loc[~fp, "episodes"].sum(), f.loc[fp, "episodes"].sum())
            den = (f.loc[~fp, "admissions"].sum(), f.loc[fp, "admissions"].sum())
            counts = [(float(den[i]), float(num[i])) for i in (0, 1)]
            n, events = float(f["admissions"].sum()), float(f["episodes"].sum())
            what, per = "episodes per 1,000 admissions", 1000.0
        elif var.kind == "median_time":
            x = sub[var.column]
            pre_m, post_m = x[~post].median(), x[post].median()
            num, den = (pre_m, post_m), (1.0, 1.0)
            counts = [(float(x[~post].notna().sum()), math.nan), (float(x[post].notna().sum()), math.nan)]
            n, events = float(x.notna().sum()), math.nan
            what, per = "median minutes among treated episodes", 1.0
        else:
            known = sub[var.known].astype(bool) if var.known else pd.Series(True, index=sub.index)
            val = sub[var.column].where(known).astype(float)
            num = (val[~post].sum(), val[post].sum())
            den = (float((known & ~post).sum()), float((known & post).sum()))
            n = float(known.sum())
            events = float(val.sum()) if var.kind == "probability" else math.nan
            counts = [(den[i], float(num[i]) if var.kind == "probability" else math.nan)
                      for i in (0, 1)]
            what = {"probability": "proportion of episodes", "mean": "mean per episode"}[var.kind]
            per = 100.0 if var.kind == "probability" else 1.0
        method = (f"Descriptive: {what} from go-live on over before go-live"
                  f"{' at this hospital' if scope != COLLABORATIVE else ', all hospitals pooled'}; "
                  "no adjustment for trend, case mix or recognition expansion, and no interval "
                  "or p-value (episodes are not independent).")
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = (num[1] / den[1]) / (num[0] / den[0]) if min(den) > 0 and num[0] > 0 else math.nan
        if not np.isfinite(ratio) or ratio <= 0:
            rows = [Estimate.not_estimable("no data before or after go-live", method, n=n,
                                           events=events)]
        else:
            rows = [Estimate(float(ratio), n=n, events=events, method=method)]
        for i, period in enumerate(("before go-live", "after go-live")):
            value = per * num[i] / den[i] if den[i] > 0 else math.nan
            rows.append(Estimate(float(value), n=counts[i][0], events=counts[i][1],
                                 method=f"Crude {what} {period}"
                                        f"{' at this hospital' if scope != COLLABORATIVE else ', all hospitals pooled'}.",
                                 component="summary", quantity="crude value", period=period,
                                 scale=est.unit, time_point=0,
                                 status="ok" if np.isfinite(value) else "not estimable",
                                 status_reason="" if np.isfinite(value) else
                                 f"no episodes {period}"))
        out[scope] = rows
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
    """The tidy results table of one run (:data:`COLUMNS`, rows as the module docstring
    describes) with its plan and metadata.

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

    # -- look-up -------------------------------------------------------------------------------
    def rows(self, estimand: str | Iterable[str] | None = None, scope: str | None = None, *,
             role: str | None = None, spec: str | None = None, level: str | None = None,
             component: str | None = "effect", quantity: str | None = None) -> pd.DataFrame:
        """Rows filtered by estimand (one or several), scope, role, spec, level, component
        (default ``"effect"``; None for every component) and quantity."""
        f = self.frame
        mask = pd.Series(True, index=f.index)
        if estimand is not None:
            mask &= f["estimand"].isin([estimand] if isinstance(estimand, str) else list(estimand))
        for col, val in (("scope", scope), ("role", role), ("spec", spec), ("level", level),
                         ("component", component), ("quantity", quantity)):
            if val is not None:
                mask &= f[col] == val
        return f[mask]

    def primary(self, estimand: str, scope: str = COLLABORATIVE) -> pd.Series:
        """The primary effect row of `estimand` for `scope` (``"collaborative"`` or a site id)."""
        r = self.rows(estimand, scope, role="primary")
        if len(r) != 1:
            raise KeyError(f"no single primary row for estimand {estimand!r}, scope {scope!r} "
                           f"({len(r)} found)")
        return r.iloc[0]

    def summary(self, scope: str = COLLABORATIVE) -> pd.DataFrame:
        """The primary effect rows of one scope (estimand, label, estimate, interval, per, status)."""
        cols = ["estimand", "label", "estimate", "lower", "upper", "p_value", "scale", "per",
                "status", "status_reason"]
        return self.rows(scope=scope, role="primary")[cols].reset_index(drop=True)

    def event_study(self, estimand: str, scope: str = COLLABORATIVE) -> pd.DataFrame:
        """Event-study points (leads and lags) of `estimand`'s primary specification, by event
        month (``time_point``)."""
        return self.rows(estimand, scope, component="event_time").sort_values("time_point")

    def pretrend_test(self, estimand: str, scope: str = COLLABORATIVE) -> pd.Series | None:
        """The pre-trend test row of `estimand`'s primary fit, or None."""
        r = self.rows(estimand, scope, component="pretrend_test")
        return r.iloc[0] if len(r) else None

    def curves(self, estimand: str, scope: str = COLLABORATIVE) -> pd.DataFrame:
        """Curve points (quantity, period, day ``x``, estimate, band) of one scope."""
        return self.rows(estimand, scope, component="curve").sort_values(["quantity", "period", "x"])

    def funnel(self, estimand: str = "sam30") -> tuple[pd.DataFrame, pd.DataFrame]:
        """(site rows, collaborative rows) of the hospital comparison of `estimand`."""
        f = self.rows(estimand, component="oe")
        return f[f["level"] == "site"], f[f["level"] == COLLABORATIVE]

    def funnel_plot_data(self, estimand: str = "sam30", labels: dict | None = None,
                         x_step: float | None = 5.0):
        """A drawable :class:`analysis.riskadj.FunnelPlotData` from the ``oe`` rows: each
        hospital's O/E (relative O/E times the collaborative's), its expected deaths rounded to
        `x_step`, its flag; `labels` maps site ids to what is shown (pseudonyms; required for every
        hospital, so real ids are never drawn by accident)."""
        from .riskadj import FunnelPlotData

        sites, coll = self.funnel(estimand)
        if sites.empty or coll.empty:
            raise ValueError(f"the store holds no hospital comparison of {estimand!r}")
        q = coll.set_index("quantity")
        target = float(q.loc["collaborative O/E", "estimate"])
        od = q.loc["over-dispersion"]
        ids = sites["scope"].astype(str)
        if labels is None:
            raise ValueError("labels (site id -> label shown) are required")
        missing = sorted(set(ids) - set(map(str, labels)))
        if missing:
            raise ValueError(f"no label supplied for {len(missing)} hospital(s)")
        x = sites["x"].to_numpy(float)
        if x_step is not None:
            x = np.maximum(np.round(x / x_step) * x_step, x_step)
        pts = pd.DataFrame({"label": ids.map({str(k): v for k, v in labels.items()}).to_numpy(),
                            "ratio": np.round(sites["estimate"].to_numpy(float) * target, 2),
                            "x": x, "flag": sites["flag"].to_numpy()})
        settings = dict(kv.split("=", 1) for kv in str(od["settings"]).split("; ") if "=" in kv)
        return FunnelPlotData(points=pts, target=target, adjusted=od["flag"] == "limits widened",
                              tau2=float(od["estimate"]), phi=float(od["statistic"]),
                              scale=settings.get("scale", "sqrt"),
                              od_model=settings.get("od_model", "additive"), x_step=x_step,
                              period=str(od["period"]) or None)

    def model_fit(self, estimand: str = "sam30") -> pd.DataFrame:
        """The case-mix model's c-statistic, Hosmer-Lemeshow test and calibration rows."""
        return self.rows(estimand, component="model_fit")

    def for_scope(self, scope: str) -> ResultsStore:
        """The rows a report for `scope` needs: its own rows, the collaborative rows and every
        hospital's comparison (``oe``) rows (drawn under pseudonyms in a funnel plot)."""
        f = self.frame
        keep = (f["scope"] == scope) | (f["scope"] == COLLABORATIVE) | (f["component"] == "oe")
        return ResultsStore(f[keep], self.plan, {**self.meta, "rows_for_scope": scope})

    # -- publication ---------------------------------------------------------------------------
    def publishable(self, min_cell: int = 11) -> pd.DataFrame:
        """The table safe to publish (see the module docstring): technical notes dropped; counts
        from 1 to ``min_cell - 1`` suppressed as NaN, and a site-level count column of a result
        (estimand x component x quantity) whenever any site's is small; a hospital's exact O/E
        interval blanked when its deaths are small, O/E rounded to 2 decimals, expected deaths to
        5 and the funnel limits at them dropped (the limits are drawn from the centre and the
        over-dispersion row); curve points kept only where neither the cumulative events, nor
        the episodes without the event, nor the events since the last kept point are between 1
        and ``min_cell - 1``; crude values blanked where the counts behind them are small."""
        if int(min_cell) != min_cell or min_cell < 1:
            raise ValueError(f"min_cell must be a positive integer, got {min_cell!r}")
        f = self.frame.drop(columns=["note"]).copy()
        f = f.drop(columns=[c for c in f.columns if c in ("episode_id", "patient_id")])

        def small(v: pd.Series) -> pd.Series:
            return (v > 0) & (v < min_cell)

        f = _keep_publishable_curve_points(f, min_cell)
        # crude values by period: blank when the counts behind them (events, non-events) are small
        summ = f["component"] == "summary"
        hide = summ & (small(f["events"]) | small(f["n"] - f["events"]) | small(f["n"]))
        f.loc[hide, ["estimate", "lower", "upper"]] = np.nan
        # a month's observed value at a hospital reveals its count with the exposure
        obs = (f["component"] == "counterfactual") & (f["quantity"] == "observed")
        f.loc[obs & small(f["events"]), "estimate"] = np.nan
        # hospital comparison: what could reveal a hospital's deaths
        oe = (f["component"] == "oe") & (f["level"] == "site")
        f.loc[oe & small(f["events"]), ["lower", "upper"]] = np.nan
        f.loc[oe, ["estimate", "lower", "upper"]] = f.loc[oe, ["estimate", "lower", "upper"]].round(2)
        f.loc[oe, "x"] = np.maximum(np.round(f.loc[oe, "x"] / 5.0) * 5.0, 5.0)
        f.loc[oe, ["bound_lower", "bound_upper"]] = np.nan
        for col in ("n", "events"):
            sm = small(f[col])
            f.loc[sm, col] = np.nan
            site_small = sm & (f["level"] == "site")
            keys = f.loc[site_small, ["estimand", "component", "quantity"]].drop_duplicates()
            for est, comp, qty in keys.itertuples(index=False):
                grp = ((f["estimand"] == est) & (f["component"] == comp) & (f["quantity"] == qty)
                       & (f["level"] == "site"))
                f.loc[grp, col] = np.nan
        return f.reset_index(drop=True)

    # -- files ---------------------------------------------------------------------------------
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
    def read_parquet(cls, path: str | Path, *, scope: str | None = None) -> ResultsStore:
        """Read a store written by :meth:`to_parquet`; with `scope` (a site id), only the rows a
        report for that hospital needs (:meth:`for_scope`), filtered while reading."""
        import pyarrow.parquet as pq

        filters = None
        if scope is not None and scope != COLLABORATIVE:
            filters = [[("scope", "=", str(scope))], [("scope", "=", COLLABORATIVE)],
                       [("component", "=", "oe")]]
        try:
            schema = pq.read_schema(path)
        except (OSError, ValueError) as exc:
            raise ValueError(f"{str(path)!r} is not an ipso results store ({exc})") from exc
        raw = (schema.metadata or {}).get(b"ipso_results")
        if raw is None:
            raise ValueError(f"{str(path)!r} is not an ipso results store (no ipso_results metadata)")
        table = pq.read_table(path, filters=filters)
        info = json.loads(raw)
        meta = info["meta"] if scope is None else {**info["meta"], "rows_for_scope": scope}
        return cls(table.to_pandas(), Plan.from_dict(info["plan"]), meta)


def _keep_publishable_curve_points(f: pd.DataFrame, min_cell: int) -> pd.DataFrame:
    """Drop curve points from which a small number of events could be read (see
    :meth:`ResultsStore.publishable`)."""
    curve = f["component"] == "curve"
    if not curve.any():
        return f
    drop = []
    keys = ["estimand", "scope", "spec", "quantity", "period"]
    for _, g in f[curve].sort_values("x").groupby(keys, sort=False):
        last = 0.0
        for i, r in g.iterrows():
            ev, n = float(r["events"]), float(r["n"])
            ok = all(not (0 < v < min_cell) for v in (ev, n - ev, ev - last)) and np.isfinite(ev)
            if ok:
                last = ev
            else:
                drop.append(i)
    return f.drop(index=drop)


def load_store(path: str | Path, *, scope: str | None = None) -> ResultsStore:
    """Read a results store: `path` is a Parquet file, or a folder holding :data:`RESULTS_FILE`
    (a batch run's shared folder). With `scope` (a site id) only that hospital's rows, the
    collaborative rows and every hospital's comparison rows are read."""
    p = Path(path)
    if p.is_dir():
        p = p / RESULTS_FILE
    if not p.exists():
        raise ValueError(f"no results store at {str(p)!r}")
    return ResultsStore.read_parquet(p, scope=scope)


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


def _row(est: Estimand, spec: Specification, scope: str, r: Estimate, ctx: EstimationContext,
         plan: Plan) -> dict[str, Any]:
    descriptive_effect = spec.role == "descriptive" and r.component == "effect"
    if r.scale is not None:
        scale = r.scale
    elif r.component == "effect":
        scale = "crude ratio" if spec.role == "descriptive" else est.scale
    else:
        scale = ""
    return {
        "estimand": est.id, "level": est.level, "scope": scope, "component": r.component,
        "label": est.label, "role": spec.role, "spec": spec.name, "variant": r.variant,
        "estimator": spec.estimator, "reason": spec.reason, "secondary_to": est.secondary_to or "",
        "quantity": r.quantity or ("effect" if r.component == "effect" else ""),
        "period": r.period, "x": r.x, "estimate": r.estimate,
        "lower": math.nan if descriptive_effect else r.lower,
        "upper": math.nan if descriptive_effect else r.upper,
        "se": math.nan if descriptive_effect else r.se,
        "p_value": math.nan if descriptive_effect or r.component == "curve" else r.p_value,
        "statistic": r.statistic, "df": r.df, "bound_lower": r.bound_lower,
        "bound_upper": r.bound_upper, "flag": r.flag, "scale": scale, "unit": est.unit,
        "per": est.per, "better": est.better,
        "time_point": spec.time_point if r.time_point is None else int(r.time_point),
        "n": r.n, "events": r.events, "n_sites": r.n_sites,
        "extrapolated_share": r.extrapolated_share, "status": r.status,
        "status_reason": r.status_reason, "method": r.method, "settings": spec.describe(),
        "alpha": ctx.alpha, "as_of": ctx.as_of or "", "plan_version": plan.version,
        "data_hash": ctx.data_hash, "note": r.note,
    }


def estimate_all(
    collaborative: Any,
    plan: Plan | None = None,
    *,
    scopes: str | Sequence[str] = "all",
    alpha: float = 0.05,
    as_of: str | None = None,
    estimands: Iterable[str] | None = None,
    roles: Iterable[str] | None = None,
    specs: Iterable[str] | None = None,
    context: EstimationContext | None = None,
) -> ResultsStore:
    """Compute every estimand of `plan` (default :func:`analysis.plan.default_plan`) once.

    `collaborative`: a :class:`analysis.store.Collaborative` (or a report run). `scopes`:
    ``"all"`` (collaborative and every hospital), ``"collaborative"``, ``"sites"`` or a list of
    ``"collaborative"`` and site ids. `as_of`: data cut-off month ``YYYY-MM``: episodes after it
    are left out and every outcome is censored at its end (see :func:`analysis.derive.cut_at`).
    `estimands` / `roles` / `specs`: compute only these (e.g. ``roles=["primary"]``). `context`:
    reuse the cached intermediate results of an earlier call on the same data and settings.
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
    keep_specs = set(specs) if specs is not None else None
    rows = []
    timings: dict[str, float] = {}
    for est in plan.estimands:
        if keep_ids is not None and est.id not in keep_ids:
            continue
        targets = [COLLABORATIVE] if est.level == COLLABORATIVE else site_scopes
        if est.level == COLLABORATIVE and COLLABORATIVE not in want or not targets:
            continue
        for spec in est.specs:
            if keep_roles is not None and spec.role not in keep_roles:
                continue
            if keep_specs is not None and spec.name not in keep_specs:
                continue
            t_spec = time.perf_counter()
            try:
                results = ESTIMATORS[spec.estimator](ctx, est, spec, targets)
            except (ValueError, ArithmeticError, np.linalg.LinAlgError, KeyError) as exc:
                results = {s: Estimate.not_estimable("the estimate could not be computed",
                                                     note=f"{type(exc).__name__}: {exc}")
                           for s in targets}
            for scope in targets:
                got = results.get(scope, Estimate.not_estimable("no data for this hospital"))
                for r in (got if isinstance(got, list) else [got]):
                    rows.append(_row(est, spec, scope, r, ctx, plan))
            key = spec.estimator
            timings[key] = timings.get(key, 0.0) + time.perf_counter() - t_spec
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    for c in _FLOAT_COLUMNS:
        frame[c] = frame[c].astype(float)
    for c in _TEXT_COLUMNS:
        frame[c] = frame[c].fillna("").astype(str)
    frame["time_point"] = frame["time_point"].astype("int64")
    from . import __version__

    meta = {"plan_version": plan.version, "data_hash": ctx.data_hash, "as_of": ctx.as_of,
            "alpha": alpha, "scopes": len(want), "excluded_after_as_of": ctx.excluded_after_as_of,
            "seconds": round(time.perf_counter() - t0, 2),
            "seconds_by_estimator": {k: round(v, 2) for k, v in timings.items()},
            "ipso_analysis_version": __version__}
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
    prim = store.rows(scope=COLLABORATIVE, role="primary")
    summary = {
        "out": str(out), "rows": len(f), "estimands": int(f["estimand"].nunique()),
        "scopes": int(f["scope"].nunique()), "not_estimable": int((f["status"] != "ok").sum()),
        "plan_version": plan.version, "data_hash": store.meta["data_hash"],
        "as_of": store.meta["as_of"], "seconds": store.meta["seconds"],
        "collaborative_primary": {
            r["estimand"]: {k: (None if isinstance(r[k], float) and not math.isfinite(r[k]) else r[k])
                            for k in ("estimate", "lower", "upper", "status")}
            for _, r in prim.iterrows()},
    }
    if json_out:
        print_json(summary)
    else:
        from rich.table import Table

        table = Table(title=f"Primary estimates, collaborative (plan {plan.version}) -> {out}")
        for col in ("estimand", "estimate", "95% CI", "per"):
            table.add_column(col)
        for _, r in prim.iterrows():
            if r["status"] == "ok":
                table.add_row(r["estimand"], f"{r['estimate']:.3f}",
                              f"{r['lower']:.3f} to {r['upper']:.3f}", r["per"])
            else:
                table.add_row(r["estimand"], "not estimable", r["status_reason"], r["per"])
        console.print(table)
        console.print(f"{len(f)} rows, {summary['scopes']} scopes, {summary['seconds']} s")
    return store


# estimators defined in their own modules register themselves on import
from . import results_staggered as _results_staggered  # noqa: F401
from . import results_supporting as _results_supporting  # noqa: F401

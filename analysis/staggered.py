"""Staggered roll-out done right: an imputation estimator for multi-site interrupted time series.

:func:`fit_its_staggered` (also importable as ``analysis.its.fit_its_staggered``) is the
Borusyak, Jaravel & Spiess (2024, *Rev Econ Stud*; R ``didimputation``) imputation estimator,
extended to count outcomes with an exposure/offset, site-specific linear trends, calendar-month
shocks and Fourier seasonality:

1. **Untreated model.** On untreated site-months only (every month before a site's go-live, minus
   an optional anticipation window), fit by Poisson quasi-likelihood (log link; ``family=
   "gaussian"``: least squares)::

       log E[y_st] = log(offset_st) + a_s + b_s * t + g_t + Fourier_K(calendar month)

   ``a_s`` site intercepts, ``b_s`` site trends (``site_trends=False``: one common trend), ``g_t``
   calendar-month shocks common to all sites (``calendar_effects``). Sites not yet live are the
   comparison for sites already live: they identify ``g_t``.
2. **Imputation.** The fitted model gives each treated site-month its counterfactual mean
   ``mu0_st`` (what would have been expected without the intervention).
3. **Aggregation.** The effect at event time e (months since go-live, 0 = go-live month) is the
   ratio of observed to imputed totals over the site-months at e: ``R_e = sum y / sum mu0``
   (a rate ratio; weights are the counterfactual counts, so the estimand matches a
   case-mix-standardised ratio of expected events). ``average_effect(first, last)`` is the same
   ratio over all site-months with first <= e <= last. Gaussian: mean of ``y - mu0`` (difference).

Identification of the calendar effects
--------------------------------------
With site trends, the calendar effects are only identified up to a linear function of time
(``sum_s b_s t`` and ``g_t`` trade a common linear trend), and with seasonality up to the Fourier
terms. They are normalised so that *site trends carry the trend, the Fourier terms the
seasonality, and ``g_t`` only shocks*: ``g`` is orthogonal to (1, t, Fourier) over the identified
months in the fit, then re-centred by a robust regression of ``g`` on (1, t, Fourier) (Tukey
bisquare from a least-trimmed-squares start, MAD scale: an MM-type estimator), so that a shock (for example a COVID-19 dip) is not partly read as a
trend that would then be extrapolated. The re-centring changes no fitted value in identified
months; it only sets the trend that extrapolated months follow.
Months with no untreated site (after the last wave's go-live) have no identified shock: their
counterfactual is **extrapolated** from site trends and seasonality with the shock set to 0
(``extrapolate=True``, with an :class:`ExtrapolationWarning`), and the result records them
(``extrapolated_months``, the ``extrapolated_share`` column of :meth:`StaggeredITSResult.
event_study`). ``extrapolate=False`` raises instead. With waves going live at months 24, 36 and
48 of 84, the shocks of months 48-83 are not identified: every post month of the last wave, and
wave 2's event times >= 12, rest on extrapolation. With ``seasonality=0`` the calendar effects
carry the seasonal pattern in identified months but extrapolated months get none, so use
``seasonality >= 1`` whenever anything is extrapolated (a warning says so).

Transition (anticipation)
-------------------------
In an imputation estimator post-go-live months never enter the fit, so a post-go-live phase-in
plays no role (the ramp shows up in the event study). ``transition=k`` therefore means: the ``k``
months *before* go-live are an anticipation/transition window (training, pilots) left out of the
untreated fit. Their estimates are still reported among the leads.

Leads and the pre-trend test
----------------------------
BJS's test (their Section 4.4): the untreated model is refitted on *all* pre-go-live months with
one indicator per lead event time -L..-1 (L = ``max(leads, transition)``). For a Poisson model
with log link the indicator's coefficient is exactly log(sum y / sum mu0) over the site-months at
that event time, where mu0 is the fit without that indicator: a placebo estimate on the same
scale as the lags (about 1 without a pre-trend or anticipation). Its interval comes from the
site-clustered sandwich of the lead fit. :meth:`StaggeredITSResult.pretrend_test` is the joint
Wald test of the lead coefficients with a Hotelling-type small-sample reference, ``F = W (G - q)
/ (q (G - 1))`` ~ F(q, G - q) (G sites, q leads). Holding the lead months out and imputing them
instead (a placebo go-live) was rejected: months in which only the last wave is untreated would
then have no comparison at all, so the last wave's leads would rest on extrapolation; with the
indicators, those months' calendar effects are identified because the lead effects are shared
with the earlier waves.

Variance
--------
Stacked M-estimation: the GLM score equations of the untreated fit and the aggregation equation
``sum_T (y - R mu0(theta)) = 0`` linearise to a per-site influence function

    IF_s = [ sum_{T, s} (y / R - mu0) - h' A^-1 sum_{untreated, s} x (y - mu) ] / sum_T mu0,

``h = sum_T mu0 x~`` (x~ the imputation row), ``A`` the Fisher information of the untreated fit.
The treated residual ``y / R - mu0`` contains the imputation error of the site's own intercept
and trend (as the residual ``Y - Y0_hat - tau~`` of BJS, Theorem 3), so nothing is lost by the
site's own untreated scores summing to zero. ``se="cluster"`` (default): ``Var = G/(G-1) sum_s
IF_s IF_s' x (N - 1)/(N - K)`` (clustered by site; N, K: rows and parameters of the
untreated fit, Stata's finite-sample factor: without it the SEs were 5% below the replicate SD on
noisy panels, coverage 92.5-96%), intervals ``exp(log R +/- t_{G-1} se)``. Like BJS's variance it
is conservative when effects vary across sites (the heterogeneity is counted as noise). Also
``"panel_hac"`` (Newey-West within site on the per-month contributions) and
``"driscoll_kraay"`` (Newey-West on cross-site sums per calendar month), HAC lag
:func:`analysis.its.newey_west_lags` of the number of calendar months unless ``hac_lags``.
A site bootstrap is not used: the analytic influence function is exact to first order and makes
a fit cost well under a second at 57 sites x 84 months.

Packages
--------
pyfixest, differences, moderndid, csdid and didimputation-style Python ports fit linear
(Gaussian) models with fixed effects; none fits a Poisson model with a log offset, site-specific
trends, calendar effects and Fourier seasonality, and none returns the influence functions that
the ratio aggregation, the placebo leads and the sensitivity analyses need. The GLM is fitted by
the IRLS with Cholesky solves of :mod:`analysis.its` (numpy); everything else is numpy/scipy.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import pandas as pd
from scipy import stats
from scipy.linalg import null_space

from .its import (
    EffectEstimate,
    _bartlett_meat,
    _check_consecutive,
    _event_time,
    _fourier,
    _irls,
    _label_time,
    _require_columns,
    _time_index,
    newey_west_lags,
)
from .plotting import PALETTE, new_axes
from .pooling import plain_log_ticks

__all__ = [
    "ExtrapolationWarning",
    "PretrendTest",
    "StaggeredEffect",
    "StaggeredITSResult",
    "fit_its_staggered",
]

StaggeredSE = Literal["cluster", "panel_hac", "driscoll_kraay"]
_SE_TYPES = ("cluster", "panel_hac", "driscoll_kraay")
_FAMILIES = ("poisson", "quasipoisson", "gaussian")
# bisquare tuning: 2.5 rather than the usual 4.685 (95% Gaussian efficiency): a 12-month shock of
# about three times the monthly noise of g then gets weight 0 (panels with a -0.16 dip, 30 seeds:
# bias at e = 12 +0.027 with 4.685, +0.001 with 2.5; without a shock the SD grows by about 4%)
_BISQUARE_C = 2.5
_HUBER_SCALE_FLOOR = 0.005  # log scale: noise-free shocks are still found


class ExtrapolationWarning(UserWarning):
    """Counterfactuals in months with no untreated site rest on site trends + seasonality alone."""


# ----------------------------------------------------------------------------------------------
# result types


@dataclass
class StaggeredEffect(EffectEstimate):
    """An imputation-estimator effect: at one event time (``first == last == months_after``) or
    averaged over ``first..last`` (ratio of observed to imputed totals).

    ``relative``/``lower``/``upper``: rate ratio and CI (Gaussian: difference); ``se``: SE of the
    log ratio (Gaussian: of the difference); ``absolute``: observed minus imputed events over the
    site-months aggregated (CI: the ratio CI at the observed total); ``extrapolated_share``: share
    of the imputed total from months whose calendar shock is not identified."""

    first: int = 0
    last: int = 0
    se: float = float("nan")
    p_value: float = float("nan")
    scale: str = "rate ratio"
    n_sites: int = 0
    n_obs: int = 0
    observed: float = float("nan")
    imputed: float = float("nan")
    extrapolated_share: float = 0.0
    df: int = 0

    @property
    def estimate(self) -> float:
        return self.relative

    @property
    def lower(self) -> float:
        return self.relative_low

    @property
    def upper(self) -> float:
        return self.relative_high

    @property
    def link_estimate(self) -> float:
        """log ratio (Gaussian: the difference)."""
        return math.log(self.relative) if self.scale == "rate ratio" else self.relative


@dataclass
class PretrendTest:
    """Joint Wald test that every lead (placebo estimate before go-live) is 1 (log ratio 0)."""

    statistic: float  # Wald chi-square W
    df: int  # q leads
    f_statistic: float  # W (G - q) / (q (G - 1))
    df_denom: int  # G - q
    p_value: float  # F(q, G - q) reference (chi-square when G <= q)
    p_value_chi2: float
    n_sites: int
    event_times: list[int]
    se_type: str

    def to_frame(self) -> pd.DataFrame:
        d = dict(self.__dict__)
        d["event_times"] = f"{min(self.event_times)}..{max(self.event_times)}" if self.event_times else ""
        return pd.DataFrame([d])


@dataclass
class _Engine:
    """One untreated fit with its imputations and everything the influence functions need."""

    family: str
    beta: np.ndarray
    bread: np.ndarray  # A^-1 (p x p)
    Xfit: np.ndarray  # untreated rows (n_fit x p)
    resid_fit: np.ndarray  # y - mu on untreated rows
    site_fit: np.ndarray  # site codes of untreated rows
    t_fit: np.ndarray
    Xtgt: np.ndarray  # imputation rows of targets (n_tgt x p)
    y_tgt: np.ndarray
    mu_tgt: np.ndarray  # imputed counterfactual means
    e_tgt: np.ndarray
    site_tgt: np.ndarray
    t_tgt: np.ndarray
    extrap_tgt: np.ndarray  # bool: calendar shock not identified
    n_sites: int
    converged: bool
    calendar: pd.DataFrame | None = None
    lead_cols: np.ndarray | None = None  # columns of the lead indicators in beta
    lead_e: np.ndarray | None = None  # their event times
    e_fit: np.ndarray | None = None
    y_fit: np.ndarray | None = None

    def lead_estimates(self, ev: list[int]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Lead coefficients (log ratios or differences) at event times ``ev`` and their
        per-row influence contributions (scores of the lead fit through A^-1)."""
        cols = [int(self.lead_cols[list(self.lead_e).index(e)]) for e in ev]
        est = self.beta[cols]
        unt = (self.Xfit @ self.bread[:, cols]) * self.resid_fit[:, None]
        return est, {"untreated": unt, "target": np.zeros((len(self.site_tgt), len(cols)))}

    def aggregate(self, masks: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Estimates (log ratios or differences) for each column of ``masks`` (n_tgt x k) and the
        per-row influence contributions (untreated rows, target rows), each already divided by
        the normaliser."""
        masks = np.asarray(masks, dtype=float)
        y, mu = self.y_tgt, self.mu_tgt
        if self.family == "gaussian":
            N = masks.sum(0)
            D = (masks * (y - mu)[:, None]).sum(0) / N
            H = self.Xtgt.T @ masks  # p x k
            tgt = masks * ((y - mu)[:, None] - D[None, :]) / N[None, :]
            est, norm = D, N
        else:
            Y = (masks * y[:, None]).sum(0)
            M = (masks * mu[:, None]).sum(0)
            R = Y / M
            H = self.Xtgt.T @ (masks * mu[:, None])
            tgt = masks * (y[:, None] / R[None, :] - mu[:, None]) / M[None, :]
            with np.errstate(divide="ignore"):
                est = np.log(R)
            norm = M
        V = self.bread @ H  # p x k
        unt = -(self.Xfit @ V) * self.resid_fit[:, None] / norm[None, :]
        return est, {"untreated": unt, "target": tgt}

    def covariance(self, contrib: dict[str, np.ndarray], se: str, lags: int) -> np.ndarray:
        unt, tgt = contrib["untreated"], contrib["target"]
        k = unt.shape[1]
        G = self.n_sites
        # finite-sample factor (N - 1) / (N - K) of the untreated fit (N rows, K parameters), as
        # Stata's clustered regress; with ~200 site, trend and calendar parameters on ~2,300
        # site-months it is about 1.09
        n_f, p_f = self.Xfit.shape
        dof = (n_f - 1) / max(n_f - p_f, 1)
        if se == "cluster":
            IF = np.zeros((G, k))
            np.add.at(IF, self.site_fit, unt)
            np.add.at(IF, self.site_tgt, tgt)
            return IF.T @ IF * (G / (G - 1)) * dof
        site = np.concatenate([self.site_fit, self.site_tgt])
        t = np.concatenate([self.t_fit, self.t_tgt])
        rows = np.vstack([unt, tgt])
        if se == "driscoll_kraay":
            codes = np.unique(t)
            full = np.zeros((int(codes.max() - codes.min()) + 1, k))
            np.add.at(full, (t - codes.min()).astype(int), rows)
            return _bartlett_meat(full, lags) * dof
        # panel_hac: Newey-West within site over its monthly contributions (time order)
        order = np.lexsort((t, site))
        site, t, rows = site[order], t[order], rows[order]
        meat = np.zeros((k, k))
        bounds = np.flatnonzero(np.diff(site)) + 1
        for block in np.split(np.arange(len(site)), bounds):
            tb = t[block]
            # sum contributions of the same month (an untreated and a target row cannot share
            # a month, but be safe), then lay them on a gap-free monthly grid
            grid = np.zeros((int(tb.max() - tb.min()) + 1, k))
            np.add.at(grid, (tb - tb.min()).astype(int), rows[block])
            meat += _bartlett_meat(grid, min(lags, max(len(grid) - 1, 0)))
        return meat * dof


@dataclass
class StaggeredITSResult:
    """Imputation-based multi-site ITS (see :func:`fit_its_staggered`)."""

    outcome: str
    family: str
    scale: str
    se_type: str
    alpha: float
    n_sites: int
    n_fit_obs: int
    site_trends: bool
    calendar_effects: bool
    seasonality: int
    transition: int
    leads: int
    lags: int
    hac_lags: int
    extrapolated_months: list = field(default_factory=list)
    excluded_sites: pd.DataFrame = field(default_factory=pd.DataFrame)
    n_zero_exposure_months: int = 0
    converged: bool = True
    _main: _Engine = field(default=None, repr=False)
    _placebo: _Engine | None = field(default=None, repr=False)
    _is_date: bool = field(default=False, repr=False)
    _es_cache: pd.DataFrame | None = field(default=None, repr=False)

    # -- internals -----------------------------------------------------------------------------
    @property
    def _ratio(self) -> bool:
        return self.family != "gaussian"

    @property
    def calendar_shocks(self) -> pd.DataFrame:
        """Calendar months of the main fit: identified (some site untreated), number of untreated
        sites, and the normalised shock g_t (log scale; 0 where not identified)."""
        return self._main.calendar.copy() if self._main.calendar is not None else pd.DataFrame()

    def _crit(self) -> float:
        return float(stats.t.ppf(1 - self.alpha / 2, max(self.n_sites - 1, 1)))

    def _lead_effect(self, e: int) -> StaggeredEffect:
        eng = self._placebo
        if eng is None:
            raise ValueError("no leads were estimated (leads=0)")
        if e not in set(eng.lead_e.tolist()):
            raise ValueError(
                f"event time {e} is not a lead of this fit (leads: {int(eng.lead_e.min())}..-1)")
        row = self.event_study().set_index("event_time").loc[e]
        obs, imp = float(row["observed"]), float(row["imputed"])
        return StaggeredEffect(
            months_after=e, time=e,
            absolute=obs - imp if self._ratio else float(row["estimate"]),
            absolute_low=(obs - obs / row["lower"]) if self._ratio else float(row["lower"]),
            absolute_high=(obs - obs / row["upper"]) if self._ratio else float(row["upper"]),
            relative=float(row["estimate"]), relative_low=float(row["lower"]),
            relative_high=float(row["upper"]),
            method=f"lead indicator (BJS pre-trend), {self.se_type} SE",
            first=e, last=e, se=float(row["se"]), p_value=float(row["p_value"]), scale=self.scale,
            n_sites=int(row["n_sites"]), n_obs=int(row["n_obs"]), observed=obs, imputed=imp,
            extrapolated_share=0.0, df=max(eng.n_sites - 1, 1),
        )

    def _effect(self, first: int, last: int) -> StaggeredEffect:
        if first < 0 or last < 0:
            if first == last:
                return self._lead_effect(first)
            raise ValueError(
                f"event times {first}..{last}: leads (< 0) are reported one event time at a time "
                "(effect_at) and tested jointly by pretrend_test(); average lags (>= 0) only"
            )
        eng = self._main
        mask = (eng.e_tgt >= first) & (eng.e_tgt <= last)
        if not mask.any():
            avail = sorted({int(v) for v in eng.e_tgt if v >= 0})
            raise ValueError(
                f"no site-months at event times {first}..{last} (available: "
                f"{avail[0] if avail else None}..{avail[-1] if avail else None})"
            )
        est, contrib = eng.aggregate(mask[:, None])
        V = eng.covariance(contrib, self.se_type, self.hac_lags)
        se = float(np.sqrt(V[0, 0]))
        crit = self._crit()
        b = float(est[0])
        obs = float(eng.y_tgt[mask].sum())
        imp = float(eng.mu_tgt[mask].sum())
        tstat = b / se if se > 0 else float("nan")
        p = float(2 * stats.t.sf(abs(tstat), max(self.n_sites - 1, 1)))
        if self._ratio:
            rel, lo, hi = math.exp(b), math.exp(b - crit * se), math.exp(b + crit * se)
            absolute = obs - imp
            a_lo, a_hi = obs - obs / lo, obs - obs / hi
        else:
            rel, lo, hi = b, b - crit * se, b + crit * se
            absolute, a_lo, a_hi = b, lo, hi
        share = float(eng.mu_tgt[mask & eng.extrap_tgt].sum() / imp) if self._ratio else float(
            (mask & eng.extrap_tgt).sum() / mask.sum()
        )
        return StaggeredEffect(
            months_after=int(first),
            time=int(first) if first == last else None,
            absolute=absolute,
            absolute_low=a_lo,
            absolute_high=a_hi,
            relative=rel,
            relative_low=lo,
            relative_high=hi,
            method=f"imputation (BJS), {self.se_type} SE, t({max(self.n_sites - 1, 1)})",
            first=int(first),
            last=int(last),
            se=se,
            p_value=p,
            scale=self.scale,
            n_sites=len(np.unique(eng.site_tgt[mask])),
            n_obs=int(mask.sum()),
            observed=obs,
            imputed=imp,
            extrapolated_share=share,
            df=max(self.n_sites - 1, 1),
        )

    # -- public API ----------------------------------------------------------------------------
    def effect_at(self, months_after: int) -> StaggeredEffect:
        """Effect at event time ``months_after`` (0 = go-live month; negative = lead, a placebo
        estimate). Ratio of observed to imputed totals over the site-months at that event time,
        t(G-1) interval."""
        e = int(months_after)
        return self._effect(e, e)

    def average_effect(self, first: int = 0, last: int | None = None) -> StaggeredEffect:
        """Ratio of observed to imputed totals over every site-month with ``first <= e <= last``
        (default: 0..lags), i.e. the counterfactual-weighted average effect over that window."""
        last = self.lags if last is None else int(last)
        if int(first) > last:
            raise ValueError(f"first ({first}) must be <= last ({last})")
        return self._effect(int(first), last)

    def event_study(self) -> pd.DataFrame:
        """One row per event time from -leads to lags: ``event_time``, ``estimate``, ``lower``,
        ``upper`` (ratio, or difference for Gaussian), ``se`` (log scale), ``p_value``,
        ``n_sites``, ``n_obs``, ``observed``, ``imputed``, ``role`` (lead / transition / lag),
        ``extrapolated_share`` (share of the imputed total whose calendar shock is not
        identified) and ``extrapolated`` (share > 0)."""
        if self._es_cache is not None:
            return self._es_cache.copy()
        rows = []
        crit = self._crit()
        tr = math.exp if self._ratio else (lambda v: v)
        df = max(self.n_sites - 1, 1)

        def row(e, b, s, n_sites, n_obs, obs, imp, share):
            return {
                "event_time": e, "estimate": tr(b), "lower": tr(b - crit * s),
                "upper": tr(b + crit * s), "se": s,
                "p_value": float(2 * stats.t.sf(abs(b / s), df)) if s > 0 else float("nan"),
                "n_sites": n_sites, "n_obs": n_obs, "observed": obs, "imputed": imp,
                "role": "lag" if e >= 0 else ("transition" if e >= -self.transition else "lead"),
                "extrapolated_share": share, "extrapolated": share > 0,
            }

        lead = self._placebo
        if lead is not None:
            ev = sorted(int(v) for v in lead.lead_e)
            est, contrib = lead.lead_estimates(ev)
            se = np.sqrt(np.diag(lead.covariance(contrib, self.se_type, self.hac_lags)))
            for j, e in enumerate(ev):
                m = lead.e_fit == e
                obs = float(lead.y_fit[m].sum())
                b = float(est[j])
                imp = obs / math.exp(b) if self._ratio else obs - b * int(m.sum())
                rows.append(row(e, b, float(se[j]), len(np.unique(lead.site_fit[m])),
                                int(m.sum()), obs, imp, 0.0))
        eng = self._main
        ev = [e for e in range(self.lags + 1) if np.any(eng.e_tgt == e)]
        if ev:
            masks = np.column_stack([eng.e_tgt == e for e in ev])
            est, contrib = eng.aggregate(masks)
            se = np.sqrt(np.diag(eng.covariance(contrib, self.se_type, self.hac_lags)))
            for j, e in enumerate(ev):
                m = masks[:, j]
                imp = float(eng.mu_tgt[m].sum())
                share = (
                    float(eng.mu_tgt[m & eng.extrap_tgt].sum() / imp)
                    if self._ratio
                    else float((m & eng.extrap_tgt).sum() / m.sum())
                )
                rows.append(row(e, float(est[j]), float(se[j]),
                                len(np.unique(eng.site_tgt[m])), int(m.sum()),
                                float(eng.y_tgt[m].sum()), imp, share))
        self._es_cache = pd.DataFrame(rows)
        return self._es_cache.copy()

    def pretrend_test(self) -> PretrendTest:
        """Joint Wald test that the lead log ratios (event times -leads..-1) are all 0, with the
        result's covariance; p-value from F(q, G - q) with F = W (G - q) / (q (G - 1))."""
        eng = self._placebo
        if eng is None:
            raise ValueError("no leads were estimated (leads=0): nothing to test")
        ev = sorted(int(v) for v in eng.lead_e)
        est, contrib = eng.lead_estimates(ev)
        V = eng.covariance(contrib, self.se_type, self.hac_lags)
        W = float(est @ np.linalg.pinv(V) @ est)
        q, G = len(ev), eng.n_sites
        p_chi = float(stats.chi2.sf(W, q))
        if G > q:
            F = W * (G - q) / (q * (G - 1))
            p = float(stats.f.sf(F, q, G - q))
        else:
            F, p = float("nan"), p_chi
        return PretrendTest(
            statistic=W, df=q, f_statistic=F, df_denom=G - q, p_value=p, p_value_chi2=p_chi,
            n_sites=G, event_times=ev, se_type=self.se_type,
        )

    def with_se(self, se: StaggeredSE, hac_lags: int | None = None) -> StaggeredITSResult:
        """The same fit with another covariance (``cluster``, ``panel_hac``, ``driscoll_kraay``);
        no refit."""
        if se not in _SE_TYPES:
            raise ValueError(f"se must be one of {_SE_TYPES}, got {se!r}")
        lags = self.hac_lags if hac_lags is None else int(hac_lags)
        return replace(self, se_type=se, hac_lags=lags, _es_cache=None)

    def summary(self) -> pd.DataFrame:
        """Headline rows (effect at 12 months when available, average over 0..lags, pre-trend
        test) with the fit's settings."""
        rows = []
        meta = {
            "family": self.family, "se_type": self.se_type, "n_sites": self.n_sites,
            "site_trends": self.site_trends, "calendar_effects": self.calendar_effects,
            "seasonality": self.seasonality, "transition": self.transition,
            "n_extrapolated_months": len(self.extrapolated_months),
        }
        targets = []
        if np.any(self._main.e_tgt == 12) and self.lags >= 12:
            targets.append(("effect at event month 12", 12, 12))
        targets.append((f"average effect, event months 0-{self.lags}", 0, self.lags))
        for label, a, b in targets:
            eff = self._effect(a, b)
            rows.append({"quantity": label, "estimate": eff.relative, "lower": eff.lower,
                         "upper": eff.upper, "se": eff.se, "p_value": eff.p_value,
                         "n_sites": eff.n_sites, "extrapolated_share": eff.extrapolated_share,
                         **meta})
        if self._placebo is not None:
            pt = self.pretrend_test()
            rows.append({"quantity": f"pre-trend test ({pt.df} leads)", "estimate": pt.f_statistic,
                         "lower": float("nan"), "upper": float("nan"), "se": float("nan"),
                         "p_value": pt.p_value, "n_sites": pt.n_sites,
                         "extrapolated_share": float("nan"), **meta})
        return pd.DataFrame(rows)

    def plot(self, ax=None, title: str | None = None):
        """Event study: leads (placebo) and lags with t(G-1) intervals, reference line at 1 (0 for
        Gaussian), go-live line, transition window shaded; event times resting mostly (> 50%) on
        extrapolated calendar months drawn with open markers. Returns the Axes."""
        es = self.event_study()
        ax = new_axes(ax)
        ref = 1.0 if self._ratio else 0.0
        ax.axhline(ref, color=PALETTE["limit"], lw=1)
        ax.axvline(-0.5, color=PALETTE["limit"], ls="--", lw=1)
        if self.transition > 0:
            ax.axvspan(-self.transition - 0.5, -0.5, color=PALETTE["limit"], alpha=0.12,
                       label="transition (not in the fit)")
        for role, color, label in (
            ("lead", PALETTE["pre"], "lead (placebo)"),
            ("transition", PALETTE["pre"], None),
            ("lag", PALETTE["post"], "after go-live"),
        ):
            d = es[es["role"] == role]
            if d.empty:
                continue
            for ext in (False, True):
                dd = d[(d["extrapolated_share"] > 0.5) == ext]
                if dd.empty:
                    continue
                ax.errorbar(
                    dd["event_time"], dd["estimate"],
                    yerr=[dd["estimate"] - dd["lower"], dd["upper"] - dd["estimate"]],
                    fmt="o", ms=4, color=color, ecolor=color, elinewidth=0.8, capsize=0,
                    mfc="white" if ext else color,
                    label=(f"{label} (mostly extrapolated)" if ext else label) if label else None,
                )
        if self._ratio:
            ax.set_yscale("log")
            plain_log_ticks(ax, "y")
            lo, hi = ax.get_ylim()
            nice = [v for v in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0,
                                2.5, 3.0, 4.0, 5.0, 10.0) if lo <= v <= hi]
            if len(nice) >= 3:
                from matplotlib.ticker import FixedLocator

                ax.yaxis.set_major_locator(FixedLocator(nice))
        ax.set_xlabel("months since go-live")
        ax.set_ylabel("observed / imputed counterfactual" if self._ratio else "observed - imputed")
        ax.set_title(title or f"Event study (imputation): {self.outcome}")
        ax.legend(fontsize=8, frameon=False)
        return ax


# ----------------------------------------------------------------------------------------------
# fitting


def _design_parts(
    t: np.ndarray, cal: np.ndarray, t_ref: float, seasonality: int
) -> tuple[np.ndarray, np.ndarray]:
    """Centred time in years and the Fourier block for rows at months ``t``."""
    tc = (t.astype(float) - t_ref) / 12.0
    four = _fourier(cal.astype(float), seasonality)
    F = np.column_stack(list(four.values())) if four else np.zeros((len(t), 0))
    return tc, F


def _lts_start(g: np.ndarray, B: np.ndarray, n_subsets: int = 100) -> np.ndarray:
    """Least trimmed squares (h = (n + p + 1) // 2) of g on B by random elemental subsets and
    concentration steps (Rousseeuw & Van Driessen's FAST-LTS, fixed seed: deterministic). A
    high-breakdown start: up to half of the months may be shocked."""
    n, p = B.shape
    h = (n + p + 1) // 2
    if n <= p + 1:
        return np.linalg.lstsq(B, g, rcond=None)[0]
    rng = np.random.default_rng(20160101)

    def cstep(c, steps):
        for _ in range(steps):
            keep = np.argsort(np.abs(g - B @ c))[:h]
            c = np.linalg.lstsq(B[keep], g[keep], rcond=None)[0]
        return c, float(np.sort((g - B @ c) ** 2)[:h].sum())

    cands = []
    for _ in range(n_subsets):
        idx = rng.choice(n, size=p, replace=False)
        try:
            c = np.linalg.solve(B[idx], g[idx])
        except np.linalg.LinAlgError:
            continue
        cands.append(cstep(c, 2))
    cands.append(cstep(np.linalg.lstsq(B, g, rcond=None)[0], 2))
    best = sorted(cands, key=lambda v: v[1])[:10]
    return min((cstep(c, 50) for c, _ in best), key=lambda v: v[1])[0]


def _robust_weights(g: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Weights of a robust regression of the calendar effects g on B = (1, t, Fourier): an
    MM-type estimator, Tukey bisquare (c = 2.5) iterated from a least-trimmed-squares start
    with the MAD scale of the LTS residuals (floored for noise-free data). Shock months get weight
    0, so a shock is not read as trend or seasonality, even when it covers a quarter of the
    identified months at one end (where a least-squares start is pulled too far for bisquare to
    recover). Returns the final weights."""
    c = _lts_start(g, B)
    r = g - B @ c
    s = max(1.4826 * float(np.median(np.abs(r))), _HUBER_SCALE_FLOOR)
    w = np.ones(len(g))
    for _ in range(100):
        u = np.abs(g - B @ c) / s
        w_new = np.where(u < _BISQUARE_C, (1 - (u / _BISQUARE_C) ** 2) ** 2, 0.0)
        if w_new.sum() < B.shape[1]:
            break
        sw = np.sqrt(w_new)
        c_new = np.linalg.lstsq(B * sw[:, None], g * sw, rcond=None)[0]
        done = np.max(np.abs(c_new - c)) < 1e-12
        c, w = c_new, w_new
        if done:
            break
    return w


def _fit_engine(
    *,
    family: str,
    y: np.ndarray,
    off: np.ndarray,
    site: np.ndarray,
    t: np.ndarray,
    cal: np.ndarray,
    e: np.ndarray,
    fit_mask: np.ndarray,
    tgt_mask: np.ndarray,
    n_sites: int,
    site_trends: bool,
    calendar_effects: bool,
    seasonality: int,
    is_date: bool,
    lead_window: int = 0,
    retransform: bool = True,
    centering: str = "robust",
) -> _Engine:
    t_ref = float(np.mean(t[fit_mask]))
    tc, F = _design_parts(t, cal, t_ref, seasonality)
    G = n_sites
    Dsite = np.zeros((len(y), G))
    Dsite[np.arange(len(y)), site] = 1.0
    blocks = [Dsite]
    blocks.append(Dsite * tc[:, None] if site_trends else tc[:, None])
    blocks.append(F)
    lead_cols = lead_e = None
    if lead_window > 0:
        lead_e = np.array([v for v in range(-lead_window, 0) if np.any(fit_mask & (e == v))])
        start = sum(b.shape[1] for b in blocks)
        lead_cols = start + np.arange(len(lead_e))
        blocks.append(np.column_stack([(e == v) & fit_mask for v in lead_e]).astype(float))
    cal_frame = None
    identified = np.zeros(len(y), dtype=bool)
    if calendar_effects:
        months_fit, n_unt = np.unique(t[fit_mask], return_counts=True)
        idx_of = {int(m): i for i, m in enumerate(months_fit)}
        tcm, Fm = _design_parts(months_fit, _cal_of(months_fit, t, cal), t_ref, seasonality)
        B = np.column_stack([np.ones(len(months_fit)), tcm, Fm])
        Z = null_space(B.T)  # identified months x m, orthogonal to (1, t, Fourier)
        pos = np.array([idx_of.get(int(v), -1) for v in t])
        identified = pos >= 0
        Zrows = np.zeros((len(y), Z.shape[1]))
        Zrows[identified] = Z[pos[identified]]
        blocks.append(Zrows)
    X = np.column_stack(blocks)
    Xf = X[fit_mask]
    fit = _irls(y[fit_mask], Xf, off[fit_mask], "gaussian" if family == "gaussian" else "poisson", None)
    beta = fit["beta"]
    Xt = X[tgt_mask].copy()
    if calendar_effects and Z.shape[1] > 0:
        m = Z.shape[1]
        delta = beta[-m:]
        g = Z @ delta
        # (the lead fit imputes nothing, so it needs no re-centring)
        robust = centering == "robust" and tgt_mask.any()
        w = _robust_weights(g, B) if robust else np.ones(len(g))
        # robust re-centring: shock' = g - B c with c = C delta; rows in unidentified months
        # get B(t) C delta (the part of g that the robust fit reads as trend/seasonality)
        BW = B * w[:, None]
        C = np.linalg.lstsq(B.T @ BW, BW.T @ Z, rcond=None)[0]  # dimB x m
        c = C @ delta
        unid = ~identified[tgt_mask]
        if unid.any():
            tt = t[tgt_mask][unid]
            tcu, Fu = _design_parts(tt, cal[tgt_mask][unid], t_ref, seasonality)
            Bu = np.column_stack([np.ones(len(tt)), tcu, Fu])
            Xt[np.ix_(np.flatnonzero(unid), np.arange(X.shape[1] - m, X.shape[1]))] = Bu @ C
        cal_frame = pd.DataFrame(
            {
                "month": [_label_time(int(v), is_date) for v in months_fit],
                "n_untreated_sites": n_unt,
                "identified": True,
                "shock": g - B @ c,
            }
        )
        all_months = np.unique(t)
        missing = np.setdiff1d(all_months, months_fit)
        if len(missing):
            cal_frame = pd.concat(
                [cal_frame, pd.DataFrame({
                    "month": [_label_time(int(v), is_date) for v in missing],
                    "n_untreated_sites": 0, "identified": False, "shock": 0.0})],
                ignore_index=True,
            )
        cal_frame["_t"] = [*months_fit, *missing]
        cal_frame = cal_frame.sort_values("_t").drop(columns="_t").reset_index(drop=True)
    eta_t = Xt @ beta + off[tgt_mask]
    if family == "gaussian":
        mu_t = eta_t
    else:
        mu_t = np.exp(eta_t)
        if retransform and len(Xt):
            # second-order bias of exp(x' beta_hat): E[mu0_hat] = mu0 (1 + x' b + v / 2), with
            # b = -1/2 phi A^-1 X' (z * mu) the Cordeiro & McCullagh (1991) bias of the Poisson
            # MLE (z_i = x_i' A^-1 x_i) and v = phi x' A^-1 x. With few events per site, site
            # trends extrapolated for years make sum(mu0_hat) too large otherwise (Jensen); with
            # site intercepts only the two terms cancel. phi: Pearson dispersion. The factor is
            # held fixed in the linearisation (it is O(1/n)).
            n_f, p_f = Xf.shape
            phi = max(float(np.sum(fit["pearson"] ** 2) / max(n_f - p_f, 1)), 1e-12)
            A_inv = fit["bread"]
            z = np.sum((Xf @ A_inv) * Xf, axis=1)
            b = -0.5 * phi * (A_inv @ (Xf.T @ (z * fit["mu"])))
            v = np.sum((Xt @ A_inv) * Xt, axis=1) * phi
            mu_t = mu_t * np.exp(-(Xt @ b) - 0.5 * v)
    return _Engine(
        family=family,
        beta=beta,
        bread=fit["bread"],
        Xfit=Xf,
        resid_fit=fit["resid"],
        site_fit=site[fit_mask],
        t_fit=t[fit_mask],
        Xtgt=Xt,
        y_tgt=y[tgt_mask],
        mu_tgt=mu_t,
        e_tgt=e[tgt_mask],
        site_tgt=site[tgt_mask],
        t_tgt=t[tgt_mask],
        extrap_tgt=(~identified[tgt_mask]) if calendar_effects else np.zeros(int(tgt_mask.sum()), bool),
        n_sites=G,
        converged=bool(fit["converged"]),
        calendar=cal_frame,
        lead_cols=lead_cols,
        lead_e=lead_e,
        e_fit=e[fit_mask],
        y_fit=y[fit_mask],
    )


def _cal_of(months: np.ndarray, t: np.ndarray, cal: np.ndarray) -> np.ndarray:
    first = {}
    for tv, cv in zip(t.tolist(), cal.tolist()):
        first.setdefault(tv, cv)
    return np.array([first[int(m)] for m in months])


def fit_its_staggered(
    data: pd.DataFrame,
    outcome: str,
    *,
    site: str,
    time: str,
    go_live: str,
    family: str = "poisson",
    exposure: str | None = None,
    offset: str | None = None,
    site_trends: bool = True,
    calendar_effects: bool = True,
    seasonality: int = 0,
    transition: int = 0,
    leads: int = 12,
    lags: int = 36,
    se: StaggeredSE = "cluster",
    alpha: float = 0.05,
    min_pre: int = 12,
    extrapolate: bool = True,
    hac_lags: int | None = None,
    calendar_centering: Literal["robust", "ls"] = "robust",
) -> StaggeredITSResult:
    """Imputation estimator (Borusyak, Jaravel & Spiess) for a staggered multi-site ITS.

    Parameters
    ----------
    data: tidy site-month frame, one row per site and month, consecutive months per site.
    outcome: monthly count (``poisson``/``quasipoisson``: non-negative; non-integer values are
        allowed, quasi-likelihood) or value (``gaussian``; use a log outcome for ratios).
    site, time, go_live: columns; ``time`` month dates or integers; ``go_live`` the site's first
        post month (same type; constant within site; a date after the data = never treated).
    family: ``"poisson"`` (= ``"quasipoisson"``: same fit, the cluster variance is robust to
        over-dispersion) with log link, or ``"gaussian"`` (identity; effects are differences).
    exposure: column whose log is the offset (e.g. expected deaths, admissions / 1,000);
        ``offset``: a column already on the log scale (both: summed). Site-months with zero
        exposure and no events carry no information and are left out (counted).
    site_trends: site-specific linear trends (else one common trend).
    calendar_effects: calendar-month shocks common to all sites (identified by not-yet-treated
        sites; see the module docstring for their normalisation and for extrapolated months).
    seasonality: Fourier pairs (period 12, calendar month for dates) in the untreated model.
    transition: months before go-live treated as anticipation: left out of the untreated fit.
    leads: lead (placebo) event times -leads..-1, BJS lead indicators in a refit; 0 = none.
    lags: event times 0..lags in the event study (and the default average_effect window).
    se: ``"cluster"`` (by site, G/(G-1)), ``"panel_hac"`` or ``"driscoll_kraay"``.
    alpha: 1 - confidence level; intervals use t(G - 1) critical values.
    min_pre: fewest untreated (fitted) months a site may have (ValueError otherwise).
    extrapolate: allow counterfactuals in calendar months with no untreated site (shock = 0,
        warning); ``False`` raises a ValueError instead.
    hac_lags: Newey-West lag for the HAC covariances.
    calendar_centering: how the trend that extrapolated months follow is separated from the
        calendar shocks: ``"robust"`` (MM-type fit; a shock several times the monthly noise is
        not read as trend) or ``"ls"`` (least squares, i.e. shocks orthogonal to trend and
        seasonality over the identified months). With few events per calendar month (e.g.
        mortality, about 10-25 deaths a month among untreated sites) the log calendar effects are
        skewed and the robust fit biases extrapolated months (noisy panels with 0.5 events per
        site-month, 60 paired seeds: log bias over event months 12-23 -0.053 robust, -0.002
        ls); use ``"ls"`` there.

    Units: effects are ratios of observed to counterfactual events (rate ratios) per event
    month after each site's own go-live; Gaussian: differences in outcome units.
    """
    _require_columns(
        data,
        {"outcome": outcome, "site": site, "time": time, "go_live": go_live,
         "exposure": exposure, "offset": offset},
    )
    if family not in _FAMILIES:
        raise ValueError(f"family must be one of {_FAMILIES}, got {family!r}")
    fam = "gaussian" if family == "gaussian" else "poisson"
    if se not in _SE_TYPES:
        raise ValueError(f"se must be one of {_SE_TYPES}, got {se!r}")
    for name, v, lo in (("seasonality", seasonality, 0), ("transition", transition, 0),
                        ("leads", leads, 0), ("lags", lags, 0), ("min_pre", min_pre, 2)):
        if int(v) != v or v < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    if calendar_centering not in ("robust", "ls"):
        raise ValueError(f"calendar_centering must be 'robust' or 'ls', got {calendar_centering!r}")
    if seasonality > 6:
        raise ValueError(f"seasonality must be at most 6 Fourier pairs, got {seasonality}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if fam == "gaussian" and exposure is not None:
        raise ValueError("exposure (log offset) is only used with family='poisson'")
    df = data.copy()
    if df[go_live].isna().any():
        bad = df.loc[df[go_live].isna(), site].astype(str).unique()[:5].tolist()
        raise ValueError(f"go_live {go_live!r} is missing for sites {bad} (needed for every site)")
    if df[site].isna().any():
        raise ValueError(f"site column {site!r} has missing values")
    tidx, gidx, _cal, is_date = _event_time(df, time, go_live)
    cal = _time_index(df[time], time)[1] if is_date else tidx % 12 + 1
    df["_t"], df["_e"], df["_cal"] = tidx, tidx - gidx, cal
    df = df.sort_values([site, "_t"], kind="stable").reset_index(drop=True)
    for s, g in df.groupby(site, sort=False):
        _check_consecutive(g["_t"].to_numpy(), is_date, time, where=f" for site {s!r}")
        if g[go_live].nunique() != 1:
            raise ValueError(f"go_live varies within site {s!r}")
    y = pd.to_numeric(df[outcome], errors="coerce").to_numpy(dtype=float)
    if not np.all(np.isfinite(y)):
        bad = df.loc[~np.isfinite(y), [site, time]].head(3).to_dict("records")
        raise ValueError(f"outcome {outcome!r} has missing or non-finite values, e.g. {bad}")
    if fam == "poisson" and np.any(y < 0):
        raise ValueError(f"outcome {outcome!r} must be non-negative for family={family!r}")
    off = np.zeros(len(df))
    n_zero = 0
    keep = np.ones(len(df), dtype=bool)
    if exposure is not None:
        ex = pd.to_numeric(df[exposure], errors="coerce").to_numpy(dtype=float)
        if not np.all(np.isfinite(ex)) or np.any(ex < 0):
            bad = df.loc[~(np.isfinite(ex) & (ex >= 0)), [site, time]].head(3).to_dict("records")
            raise ValueError(f"exposure {exposure!r} must be non-negative and finite, e.g. {bad}")
        zero = ex == 0
        if np.any(zero & (y > 0)):
            bad = df.loc[zero & (y > 0), [site, time]].head(3).to_dict("records")
            raise ValueError(f"exposure {exposure!r} is 0 in site-months with events, e.g. {bad}")
        n_zero = int(zero.sum())
        keep &= ~zero
        with np.errstate(divide="ignore"):
            off = off + np.log(np.where(zero, 1.0, ex))
    if offset is not None:
        ov = pd.to_numeric(df[offset], errors="coerce").to_numpy(dtype=float)
        if not np.all(np.isfinite(ov)):
            raise ValueError(f"offset {offset!r} has missing or non-finite values")
        off = off + ov
    e_all = df["_e"].to_numpy()
    t_all = df["_t"].to_numpy()
    site_names = pd.Index(pd.unique(df[site]))

    # sites: enough untreated months; events in them (count families)
    fit_rule = e_all < -transition
    excl = []
    too_few = []
    for s_name, g in df.groupby(site, sort=False):
        idx = g.index.to_numpy()
        n_fit = int((fit_rule[idx] & keep[idx]).sum())
        if n_fit < min_pre:
            too_few.append(f"{s_name} ({n_fit})")
        elif fam == "poisson" and y[idx][fit_rule[idx] & keep[idx]].sum() == 0:
            excl.append((s_name, "no events in the untreated months"))
    if too_few:
        raise ValueError(
            f"{len(too_few)} site(s) have fewer than min_pre={min_pre} untreated months before "
            f"go-live (minus transition={transition}): {too_few[:8]}; lower min_pre or transition, "
            "or leave these sites out explicitly"
        )
    excluded = pd.DataFrame(excl, columns=["site", "reason"])
    if len(excluded):
        warnings.warn(f"sites left out (listed in excluded_sites): {excluded.to_dict('records')}",
                      UserWarning, stacklevel=2)
        keep &= ~df[site].isin(excluded["site"]).to_numpy()
    sites_in = site_names[~site_names.isin(excluded["site"])]
    G = len(sites_in)
    if G < 2:
        raise ValueError(f"fewer than 2 sites can be fitted (excluded: {excl})")
    codes = pd.Categorical(df[site], categories=sites_in).codes.astype(int)
    keep &= codes >= 0
    fit_mask = fit_rule & keep
    tgt_main = (e_all >= -transition) & keep
    if not tgt_main.any():
        raise ValueError("no site-month at or after go-live (minus transition): nothing to impute")

    # a calendar month without any event among untreated sites has no finite calendar effect
    # (the Poisson MLE does not exist; its coefficient runs off and the retransformation
    # overflows): refuse with the remedy instead of returning infinite counterfactuals
    if calendar_effects and fam == "poisson":
        per_month = pd.Series(y[fit_mask]).groupby(t_all[fit_mask]).sum()
        empty = per_month.index[per_month.to_numpy() == 0]
        if len(empty):
            labels = [str(_label_time(int(m), is_date))[:10] for m in empty[:3]]
            raise ValueError(
                f"{len(empty)} calendar month(s) have no events among untreated sites (e.g. "
                f"{', '.join(labels)}), so their calendar effects are not estimable; use "
                "calendar_effects=False (a common trend and seasonality) for sparse outcomes")

    # calendar months that need a shock but have no untreated site
    if calendar_effects:
        fit_months = set(np.unique(t_all[fit_mask]).tolist())
        window = tgt_main & (e_all <= lags)
        need = sorted(set(np.unique(t_all[window]).tolist()) - fit_months)
        if need:
            labels = [str(_label_time(int(m), is_date))[:10] for m in (need[0], need[-1])]
            ev = np.unique(e_all[window & np.isin(t_all, need)])
            msg = (
                f"no site is untreated in {len(need)} calendar month(s) ({labels[0]} to "
                f"{labels[1]}), so their calendar effects are not identified; event times "
                f"{int(ev.min())}..{int(ev.max())} use them"
            )
            if not extrapolate:
                raise ValueError(
                    msg + ". Set extrapolate=True to extrapolate their counterfactual from site "
                    "trends and seasonality (shock 0), or calendar_effects=False"
                )
            extra = ("" if seasonality > 0 else
                     " With seasonality=0 these months also get no seasonal pattern: use "
                     "seasonality >= 1.")
            warnings.warn(
                msg + "; their counterfactual is extrapolated from site trends and seasonality "
                "(calendar shock set to 0)." + extra,
                ExtrapolationWarning, stacklevel=2,
            )
        extrap_months = [_label_time(int(m), is_date) for m in sorted(
            set(np.unique(t_all[tgt_main]).tolist()) - fit_months)]
    else:
        extrap_months = []

    common = {"family": fam, "y": y, "off": off, "site": codes, "t": t_all,
              "cal": df["_cal"].to_numpy(), "e": e_all, "n_sites": G, "site_trends": site_trends,
              "calendar_effects": calendar_effects, "seasonality": int(seasonality),
              "is_date": is_date, "centering": calendar_centering}
    main = _fit_engine(fit_mask=fit_mask, tgt_mask=tgt_main, **common)

    lead_fit = None
    if leads > 0:
        # BJS pre-trend fit: every untreated month, one indicator per lead event time
        window = max(int(leads), int(transition))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lead_fit = _fit_engine(fit_mask=(e_all < 0) & keep, tgt_mask=np.zeros(len(df), bool),
                                   lead_window=window, **common)
    L = newey_west_lags(len(np.unique(t_all))) if hac_lags is None else int(hac_lags)
    if L < 0:
        raise ValueError(f"hac_lags must be >= 0, got {hac_lags}")
    return StaggeredITSResult(
        outcome=outcome,
        family=family,
        scale="rate ratio" if fam == "poisson" else "difference",
        se_type=se,
        alpha=alpha,
        n_sites=G,
        n_fit_obs=int(fit_mask.sum()),
        site_trends=bool(site_trends),
        calendar_effects=bool(calendar_effects),
        seasonality=int(seasonality),
        transition=int(transition),
        leads=int(leads),
        lags=int(lags),
        hac_lags=L,
        extrapolated_months=extrap_months,
        excluded_sites=excluded,
        n_zero_exposure_months=n_zero,
        converged=main.converged and (lead_fit is None or lead_fit.converged),
        _main=main,
        _placebo=lead_fit,
        _is_date=is_date,
    )

"""Interrupted time series (segmented regression) for monthly measures.

Single series: :func:`fit_its` fits

    g(E[y_t]) = b0 + b1 * t + b2 * post_t + b3 * (t - t0) * post_t  [+ Fourier seasonality] [+ offset]

with ``t0`` the first post-intervention month (go-live), ``post_t = 1`` from ``t0`` on, so ``b2`` is
the jump at go-live (level change) and ``b3`` the change in monthly slope. Links: log for
Poisson/quasi-Poisson/negative binomial (exponentiated: rate ratios), logit for binomial (odds
ratios), identity for Gaussian (differences). This is the model of Bernal, Cummins & Gasparrini
(2017, Int J Epidemiol 46:348) and is validated against R's ``glm`` on their Sicily data in
``tests/test_its.py``.

Inference
---------
* Coefficient CIs are Wald intervals ``b +/- z * SE`` (R's ``confint.default`` / ``Epi::ci.lin``),
  t-based for the Gaussian family; p-values follow R's ``summary.glm`` (z for Poisson, binomial,
  negative binomial; t with residual df for quasi-Poisson and Gaussian).
* ``autocorrelation="none"``: model-based covariance (quasi-Poisson scaled by Pearson chi2/df,
  as R's ``quasipoisson``).
* ``autocorrelation="hac"``: Newey-West (Bartlett kernel) sandwich; default lag
  ``floor(4 * (n / 100) ** (2 / 9))`` (Newey & West 1994 rule of thumb), n = months fitted.
* ``autocorrelation="ar1"``: Gaussian: regression with AR(1) errors by exact ML
  (statsmodels ``SARIMAX``; months excluded by ``transition`` are treated as missing).
  Count/binomial families: GLM point estimates (independence estimating equations) with an
  AR(1)-structured sandwich covariance: bread ``(X'WX)^-1``, meat
  ``sum_ij x_i x_j' phi sqrt(v_i v_j) rho^|i-j|`` with ``rho`` the lag-1 autocorrelation of the
  Pearson residuals (moment estimator) and ``phi`` the dispersion (1 for Poisson/binomial,
  Pearson chi2/df for quasi-Poisson). This is a parametric (AR(1)-kernel) HAC; it keeps the
  consistent GLM estimates and corrects their SEs for serial correlation.
* Effects at a given month (:meth:`ITSResult.effect_at`) and cumulative effects use the delta
  method on the coefficient covariance.

Multi-site: :func:`fit_its_multisite` (pooled segmented regression in event time with site fixed
effects and site-specific pre-trends, cluster-robust or panel-HAC SEs, plus an event study) and
:func:`fit_its_by_site` + :func:`pool_site_effects` (per-site fits pooled by random-effects
meta-analysis, see :mod:`analysis.pooling`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy import stats
from statsmodels.stats.diagnostic import acorr_ljungbox
from statsmodels.tsa.stattools import acf

from .plotting import PALETTE, new_axes
from .pooling import PooledEstimate, plain_log_ticks, random_effects

Family = Literal["poisson", "quasipoisson", "negbin", "binomial", "gaussian"]
Autocorrelation = Literal["none", "hac", "ar1"]

FAMILIES = ("poisson", "quasipoisson", "negbin", "binomial", "gaussian")
COUNT_FAMILIES = ("poisson", "quasipoisson", "negbin")
LEVEL = "level_change"
SLOPE = "slope_change"

__all__ = [
    "CumulativeEffect",
    "EffectEstimate",
    "EffectSize",
    "ITSDiagnostics",
    "ITSResult",
    "MultisiteITSResult",
    "fit_its",
    "fit_its_by_site",
    "fit_its_multisite",
    "fit_its_staggered",  # noqa: F822 (lazy export, see __getattr__ at the end)
    "newey_west_lags",
    "pool_site_effects",
]


# ----------------------------------------------------------------------------------------------
# small result types


@dataclass
class EffectSize:
    """An intervention parameter on the natural scale (ratio for log/logit links, difference for
    the identity link), with the link-scale estimate and SE it was derived from."""

    name: str
    estimate: float
    ci_low: float
    ci_high: float
    p_value: float
    link_estimate: float
    link_se: float
    scale: str  # "rate ratio", "odds ratio" or "difference"

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([self.__dict__])


@dataclass
class EffectEstimate:
    """Effect of the intervention ``months_after`` months after go-live (0 = go-live month):
    ``absolute`` = fitted - counterfactual (outcome units, e.g. deaths in that month; ``None``
    where no exposure is defined), ``relative`` = fitted / counterfactual. Delta-method CIs."""

    months_after: int
    time: Any
    absolute: float | None
    absolute_low: float | None
    absolute_high: float | None
    relative: float
    relative_low: float
    relative_high: float
    method: str = "delta"

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([self.__dict__])


@dataclass
class CumulativeEffect:
    """Cumulative effect over the post-intervention months present in the data (including
    transition months): ``total`` = sum(fitted - counterfactual) (negative = events averted),
    delta-method CI; ``relative`` = sum(fitted) / sum(counterfactual);
    ``observed_minus_counterfactual`` = sum(observed - counterfactual) (point estimate)."""

    total: float
    total_low: float
    total_high: float
    relative: float
    relative_low: float
    relative_high: float
    observed_minus_counterfactual: float
    n_months: int
    method: str = "delta"

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([self.__dict__])


@dataclass
class ITSDiagnostics:
    """Residual diagnostics on Pearson residuals of the fitted months (in time order)."""

    dispersion: float  # Pearson chi2 / residual df
    deviance: float
    df_resid: float
    ljung_box_stat: float
    ljung_box_p: float
    ljung_box_lags: int
    residual_acf: pd.Series  # lags 1..L
    ar1_rho: float  # lag-1 autocorrelation of Pearson residuals

    def to_frame(self) -> pd.DataFrame:
        d = {k: v for k, v in self.__dict__.items() if k != "residual_acf"}
        return pd.DataFrame([d])


def newey_west_lags(n: int) -> int:
    """Newey-West (1994) rule-of-thumb truncation lag ``floor(4 * (n / 100) ** (2 / 9))``."""
    return math.floor(4 * (n / 100.0) ** (2.0 / 9.0))


def _natural_scale(family: str) -> tuple[str, bool]:
    if family in COUNT_FAMILIES:
        return "rate ratio", True
    if family == "binomial":
        return "odds ratio", True
    return "difference", False


def _safe_exp(v: float) -> float:
    """exp without OverflowError (inf for separated fits, e.g. no events in one period)."""
    with np.errstate(over="ignore"):
        return float(np.exp(v))


def _z(alpha: float) -> float:
    return float(stats.norm.ppf(1 - alpha / 2))


# ----------------------------------------------------------------------------------------------
# input handling


def _require_columns(data: pd.DataFrame, cols: dict[str, str | None]) -> None:
    if not isinstance(data, pd.DataFrame):
        raise ValueError(f"data must be a pandas DataFrame, got {type(data).__name__}")  # noqa: TRY004
    for role, col in cols.items():
        if col is not None and col not in data.columns:
            raise ValueError(
                f"{role} column {col!r} not found in data (columns: {list(data.columns)})"
            )


def _time_index(values: pd.Series, name: str) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """Return (integer time index, calendar month 1-12 or None, is_date)."""
    if pd.api.types.is_datetime64_any_dtype(values) or isinstance(values.dtype, pd.PeriodDtype):
        per = values.dt.to_period("M") if not isinstance(values.dtype, pd.PeriodDtype) else values
        if per.isna().any():
            raise ValueError(f"time column {name!r} has missing values")
        idx = (per.dt.year * 12 + per.dt.month - 1).to_numpy(dtype=np.int64)
        return idx, per.dt.month.to_numpy(dtype=int), True
    if pd.api.types.is_numeric_dtype(values):
        if values.isna().any():
            raise ValueError(f"time column {name!r} has missing values")
        v = values.to_numpy(dtype=float)
        if not np.all(np.equal(np.floor(v), v)):
            raise ValueError(
                f"time column {name!r} must hold integers (month numbers) or month dates"
            )
        return v.astype(np.int64), None, False
    raise ValueError(
        f"time column {name!r} must hold month dates (datetime64) or integers, got {values.dtype}"
    )


def _scalar_time_index(value: Any, is_date: bool, name: str) -> int:
    if is_date:
        try:
            p = pd.Timestamp(value).to_period("M")
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{name} {value!r} is not a month date like the time column") from exc
        return int(p.year * 12 + p.month - 1)
    if isinstance(value, (pd.Timestamp, np.datetime64, str)):
        raise ValueError(f"{name} {value!r} must be an integer month number like the time column")  # noqa: TRY004
    f = float(value)
    if not f.is_integer():
        raise ValueError(f"{name} {value!r} must be an integer month number")
    return int(f)


def _label_time(idx: int, is_date: bool):
    if is_date:
        return pd.Timestamp(year=idx // 12, month=idx % 12 + 1, day=1)
    return idx


def _check_consecutive(idx: np.ndarray, is_date: bool, name: str, where: str = "") -> None:
    s = pd.Series(idx)
    dup = s[s.duplicated()].unique()
    if len(dup):
        shown = [str(_label_time(int(d), is_date))[:10] for d in dup[:5]]
        raise ValueError(f"duplicated months in {name!r}{where}: {shown}")
    full = np.arange(idx.min(), idx.max() + 1)
    missing = np.setdiff1d(full, idx)
    if len(missing):
        shown = [str(_label_time(int(d), is_date))[:10] for d in missing[:5]]
        raise ValueError(
            f"missing months in {name!r}{where}: {len(missing)} gap(s), e.g. {shown}; "
            "fill them (with 0 events and their exposure) or trim the series"
        )


def _fourier(month_or_t: np.ndarray, k: int) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for j in range(1, k + 1):
        ang = 2 * np.pi * j * month_or_t / 12.0
        out[f"sin{j}"] = np.sin(ang)
        out[f"cos{j}"] = np.cos(ang)
    return out


def _check_outcome(y: np.ndarray, family: str, outcome: str, trials: np.ndarray | None) -> None:
    if not np.all(np.isfinite(y)):
        raise ValueError(f"outcome column {outcome!r} has missing or non-finite values")
    if family in (*COUNT_FAMILIES, "binomial") and (
        np.any(y < 0) or not np.all(np.equal(np.floor(y), y))
    ):
        raise ValueError(
            f"outcome {outcome!r} must hold non-negative integer counts for family={family!r} "
            "(use family='gaussian' for continuous measures)"
        )
    if family == "binomial":
        assert trials is not None
        if (
            not np.all(np.isfinite(trials))
            or np.any(trials <= 0)
            or not np.all(np.equal(np.floor(trials), trials))
        ):
            raise ValueError(
                "trials must be positive integers (months with no trials cannot be fitted)"
            )
        if np.any(y > trials):
            raise ValueError(f"outcome {outcome!r} exceeds trials in some months")


# ----------------------------------------------------------------------------------------------
# fitting helpers


def _fit_glm_family(
    family: str,
    y: np.ndarray,
    X: pd.DataFrame,
    offset: np.ndarray | None,
    trials: np.ndarray | None,
):
    """Fit the (unscaled) GLM; return (results, statsmodels family object, alpha_nb)."""
    alpha_nb = None
    if family in ("poisson", "quasipoisson"):
        fam = sm.families.Poisson()
        endog = y
    elif family == "negbin":
        nb = sm.NegativeBinomial(y, X, offset=offset, loglike_method="nb2")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            start = np.append(
                sm.GLM(y, X, family=sm.families.Poisson(), offset=offset).fit().params, 0.1
            )
            nbres = nb.fit(start_params=start, disp=0, maxiter=500, method="bfgs")
        alpha_nb = float(nbres.params.iloc[-1])
        if not np.isfinite(alpha_nb) or alpha_nb <= 0:
            alpha_nb = 1e-8
        fam = sm.families.NegativeBinomial(alpha=alpha_nb)
        endog = y
    elif family == "binomial":
        fam = sm.families.Binomial()
        endog = np.column_stack([y, trials - y])
    else:
        fam = sm.families.Gaussian()
        endog = y
    model = sm.GLM(endog, X, family=fam, offset=offset)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = model.fit()
    return model, res, alpha_nb


def _ar1_sandwich(
    X: np.ndarray, y: np.ndarray, res, family: str, trials, phi: float, tidx: np.ndarray
) -> tuple[np.ndarray, float]:
    """AR(1)-structured sandwich covariance for a canonical-link GLM fitted by independence
    estimating equations. Returns (cov, rho)."""
    mu = np.asarray(res.mu, dtype=float)
    if family == "binomial":
        n = trials
        var = n * mu * (1 - mu)  # variance of successes
        resid = y - n * mu
    elif family == "negbin":
        a = res.model.family.alpha
        var = mu + a * mu**2
        resid = y - mu
    else:  # poisson / quasipoisson (canonical log link)
        var = mu
        resid = y - mu
    sd = np.sqrt(np.maximum(var, 1e-300))
    r = resid / sd  # Pearson residuals
    # lag-1 moment estimator over consecutive fitted months
    consec = np.diff(tidx) == 1
    num = np.sum(r[1:][consec] * r[:-1][consec])
    rho = float(num / np.sum(r**2)) if np.sum(r**2) > 0 else 0.0
    rho = float(np.clip(rho, -0.99, 0.99))
    # score for observation i (canonical link): x_i * (y_i - E y_i); for NB2 with log link the
    # score is x_i (y_i - mu_i) / (1 + a mu_i), handled through the working weights below.
    if family == "negbin":
        a = res.model.family.alpha
        g = 1.0 / (1.0 + a * mu)  # d score / d resid
        w = mu / (1.0 + a * mu)  # Fisher weight
    else:
        g = np.ones_like(mu)
        w = var
    bread = np.linalg.inv(X.T @ (X * w[:, None]))
    lag = np.abs(np.subtract.outer(tidx, tidx)).astype(float)
    R = rho**lag
    s = g * sd
    meat = phi * (X * s[:, None]).T @ R @ (X * s[:, None])
    return bread @ meat @ bread, rho


@dataclass
class _Design:
    frame: pd.DataFrame  # all rows, sorted by time, with design columns
    X: pd.DataFrame  # all rows
    fit_mask: np.ndarray
    offset: np.ndarray | None  # all rows
    trials: np.ndarray | None


# ----------------------------------------------------------------------------------------------
# single-series result


@dataclass
class ITSResult:
    """Interrupted time series fit (see :func:`fit_its`). Estimates of ``level_change`` and
    ``slope_change`` are on the natural scale (ratios per the family's link, or differences);
    ``slope_change`` is per month."""

    coefficients: pd.DataFrame
    level_change: EffectSize
    slope_change: EffectSize | None
    counterfactual: pd.DataFrame
    diagnostics: ITSDiagnostics
    family: str
    autocorrelation: str
    hac_lags: int | None
    ar1_rho: float | None
    n_pre: int
    n_post: int
    n_transition: int
    seasonality: int
    alpha: float
    intervention: Any
    outcome: str
    negbin_alpha: float | None = None
    params: pd.Series = field(default=None, repr=False)
    cov: pd.DataFrame = field(default=None, repr=False)
    _X_all: pd.DataFrame = field(default=None, repr=False)
    _X_cf: pd.DataFrame = field(default=None, repr=False)
    _offset: np.ndarray | None = field(default=None, repr=False)
    _trials: np.ndarray | None = field(default=None, repr=False)
    _t: np.ndarray = field(default=None, repr=False)
    _t0: int = 0
    _is_date: bool = False
    _exposure_label: str | None = None

    # -- helpers ------------------------------------------------------------------------------
    @property
    def scale(self) -> str:
        return _natural_scale(self.family)[0]

    def _mean(self, eta: np.ndarray, rows: np.ndarray) -> np.ndarray:
        if self.family == "binomial":
            return self._trials[rows] / (1 + np.exp(-eta))
        if self.family == "gaussian":
            return eta
        return np.exp(eta)

    def _dmean(self, eta: np.ndarray, rows: np.ndarray) -> np.ndarray:
        if self.family == "binomial":
            p = 1 / (1 + np.exp(-eta))
            return self._trials[rows] * p * (1 - p)
        if self.family == "gaussian":
            return np.ones_like(eta)
        return np.exp(eta)

    def _eta(self, X: pd.DataFrame, rows: np.ndarray) -> np.ndarray:
        eta = X.to_numpy()[rows] @ self.params.to_numpy()
        if self._offset is not None:
            eta = eta + self._offset[rows]
        return eta

    # -- public API ---------------------------------------------------------------------------
    def effect_at(self, months_after: int) -> EffectEstimate:
        """Effect ``months_after`` months after go-live (0 = go-live month), delta method.

        Relative effect = fitted / counterfactual: for log/logit links exp(level + slope * m)
        (an odds ratio for binomial); for Gaussian (fitted) / (counterfactual). The absolute
        effect (fitted - counterfactual, outcome units) needs the month to be in the data (its
        exposure / trials); otherwise it is ``None``."""
        m = int(months_after)
        if m < 0:
            raise ValueError(f"months_after must be >= 0, got {months_after}")
        V = self.cov.to_numpy()
        names = list(self.params.index)
        c = np.zeros(len(names))
        c[names.index(LEVEL)] = 1.0
        if SLOPE in names:
            c[names.index(SLOPE)] = float(m)
        z = _z(self.alpha)
        link_est = float(c @ self.params.to_numpy())
        link_se = float(np.sqrt(c @ V @ c))
        target = self._t0 + m
        rows = np.nonzero(self._t == target)[0]
        absolute = lo_a = hi_a = None
        if len(rows):
            r = rows[:1]
            eta_f = self._eta(self._X_all, r)
            eta_c = self._eta(self._X_cf, r)
            mu_f, mu_c = self._mean(eta_f, r)[0], self._mean(eta_c, r)[0]
            grad = (
                self._dmean(eta_f, r)[0] * self._X_all.to_numpy()[r[0]]
                - self._dmean(eta_c, r)[0] * self._X_cf.to_numpy()[r[0]]
            )
            se_a = float(np.sqrt(grad @ V @ grad))
            absolute = float(mu_f - mu_c)
            lo_a, hi_a = absolute - z * se_a, absolute + z * se_a
        if self.family == "gaussian":
            if not len(rows):
                raise ValueError(
                    f"month {months_after} after go-live is not in the data (needed for a Gaussian relative effect)"
                )
            r = rows[:1]
            xf, xc = self._X_all.to_numpy()[r[0]], self._X_cf.to_numpy()[r[0]]
            mf, mc = float(xf @ self.params), float(xc @ self.params)
            rel = mf / mc
            grad = xf / mc - mf * xc / mc**2
            se_r = float(np.sqrt(grad @ V @ grad))
            rel_lo, rel_hi = rel - z * se_r, rel + z * se_r
        else:
            rel = _safe_exp(link_est)
            rel_lo, rel_hi = _safe_exp(link_est - z * link_se), _safe_exp(link_est + z * link_se)
        return EffectEstimate(
            months_after=m,
            time=_label_time(target, self._is_date),
            absolute=absolute,
            absolute_low=lo_a,
            absolute_high=hi_a,
            relative=rel,
            relative_low=rel_lo,
            relative_high=rel_hi,
        )

    def cumulative_effect(self) -> CumulativeEffect:
        """Cumulative fitted-minus-counterfactual over all post-intervention months in the data
        (e.g. deaths caused (+) or averted (-)), with delta-method CI."""
        rows = np.nonzero(self._t >= self._t0)[0]
        V = self.cov.to_numpy()
        Xf, Xc = self._X_all.to_numpy()[rows], self._X_cf.to_numpy()[rows]
        eta_f, eta_c = self._eta(self._X_all, rows), self._eta(self._X_cf, rows)
        mu_f, mu_c = self._mean(eta_f, rows), self._mean(eta_c, rows)
        dmf, dmc = self._dmean(eta_f, rows), self._dmean(eta_c, rows)
        total = float(np.sum(mu_f - mu_c))
        grad = (dmf[:, None] * Xf).sum(0) - (dmc[:, None] * Xc).sum(0)
        se = float(np.sqrt(grad @ V @ grad))
        z = _z(self.alpha)
        sf, sc = float(mu_f.sum()), float(mu_c.sum())
        # log ratio delta method
        g_lr = (dmf[:, None] * Xf).sum(0) / sf - (dmc[:, None] * Xc).sum(0) / sc
        se_lr = float(np.sqrt(g_lr @ V @ g_lr))
        ratio = sf / sc
        if ratio > 0:
            rlo, rhi = ratio * _safe_exp(-z * se_lr), ratio * _safe_exp(z * se_lr)
        else:
            rlo = rhi = float("nan")
        obs = self.counterfactual["observed"].to_numpy()[rows]
        return CumulativeEffect(
            total=total,
            total_low=total - z * se,
            total_high=total + z * se,
            relative=ratio,
            relative_low=rlo,
            relative_high=rhi,
            observed_minus_counterfactual=float(np.sum(obs - mu_c)),
            n_months=len(rows),
        )

    def summary(self) -> pd.DataFrame:
        """One row per intervention parameter plus fit metadata."""
        return _effects_frame(
            (self.level_change, self.slope_change), family=self.family,
            autocorrelation=self.autocorrelation, n_pre=self.n_pre, n_post=self.n_post,
            n_transition=self.n_transition, seasonality=self.seasonality,
            dispersion=self.diagnostics.dispersion, ljung_box_p=self.diagnostics.ljung_box_p)

    def plot(self, ax=None, title: str | None = None, per: float = 1.0):
        """Observed points, fitted segments, counterfactual with CI band, go-live line and (with
        seasonality) the deseasonalised trend. Rates are shown when an exposure was given
        (multiplied by ``per``, e.g. ``per=1000`` for per 1,000), proportions for binomial.
        Returns the Axes."""
        cf = self.counterfactual
        ax = new_axes(ax)
        denom = np.ones(len(cf))
        if self._exposure_label is not None and "exposure" in cf:
            denom = cf["exposure"].to_numpy() / per
        elif self.family == "binomial":
            denom = cf["trials"].to_numpy() / per
        x = cf["time"]
        pre = self._t < self._t0
        ax.scatter(
            x, cf["observed"] / denom, s=14, color=PALETTE["observed"], label="observed", zorder=3
        )
        if "fitted_in_model" in cf:
            excl = ~cf["fitted_in_model"].to_numpy()
            if excl.any():
                ax.scatter(
                    x[excl],
                    (cf["observed"] / denom)[excl],
                    s=18,
                    facecolors="none",
                    edgecolors=PALETTE["observed"],
                    label="transition (not fitted)",
                    zorder=3,
                )
        for mask in (pre, ~pre):
            ax.plot(
                x[mask],
                (cf["fitted"] / denom)[mask],
                color=PALETTE["fitted"],
                lw=1.6,
                label="fitted" if mask is pre else None,
            )
        post = ~pre
        ax.plot(
            x[post],
            (cf["counterfactual"] / denom)[post],
            color=PALETTE["counterfactual"],
            ls="--",
            lw=1.4,
            label="counterfactual",
        )
        ax.fill_between(
            x[post],
            (cf["counterfactual_low"] / denom)[post],
            (cf["counterfactual_high"] / denom)[post],
            color=PALETTE["band"],
            alpha=0.15,
            label=f"{round(100 * (1 - self.alpha))}% CI",
        )
        if self.seasonality > 0 and "deseasonalised" in cf:
            for mask in (pre, ~pre):
                ax.plot(
                    x[mask],
                    (cf["deseasonalised"] / denom)[mask],
                    color=PALETTE["fitted"],
                    ls=":",
                    lw=1.2,
                    label="deseasonalised trend" if mask is pre else None,
                )
        ax.axvline(_label_time(self._t0, self._is_date), color=PALETTE["limit"], ls="-", lw=1)
        ax.set_ylabel(
            self.outcome + (f" per {per:g} {self._exposure_label}" if self._exposure_label else "")
        )
        ax.set_title(title or f"Interrupted time series: {self.outcome}")
        ax.legend(fontsize=8, frameon=False)
        return ax


# ----------------------------------------------------------------------------------------------


def _build_design(
    data: pd.DataFrame,
    outcome: str,
    time: str,
    intervention: Any,
    *,
    family: str,
    exposure: str | None,
    trials: str | None,
    seasonality: int,
    transition: int,
    slope_change: bool,
    check_gaps: bool = True,
    where: str = "",
) -> tuple[_Design, dict[str, Any]]:
    _require_columns(
        data, {"outcome": outcome, "time": time, "exposure": exposure, "trials": trials}
    )
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    if int(seasonality) != seasonality or seasonality < 0 or seasonality > 6:
        raise ValueError(
            f"seasonality must be an integer number of Fourier pairs in 0..6, got {seasonality!r}"
        )
    if int(transition) != transition or transition < 0:
        raise ValueError(
            f"transition must be a non-negative integer number of months, got {transition!r}"
        )
    if family == "binomial" and trials is None:
        raise ValueError("family='binomial' needs a trials column (successes out of trials)")
    if family != "binomial" and trials is not None:
        raise ValueError(f"trials is only used with family='binomial' (got family={family!r})")
    if exposure is not None and family not in COUNT_FAMILIES:
        raise ValueError(
            f"exposure (log offset) is only used with count families {COUNT_FAMILIES}; "
            f"got family={family!r}"
        )
    df = data.copy()
    tidx, cal_month, is_date = _time_index(df[time], time)
    order = np.argsort(tidx, kind="stable")
    df = df.iloc[order].reset_index(drop=True)
    tidx = tidx[order]
    cal_month = cal_month[order] if cal_month is not None else None
    if check_gaps:
        _check_consecutive(tidx, is_date, time, where)
    t0 = _scalar_time_index(intervention, is_date, "intervention")
    if not (tidx.min() < t0 <= tidx.max()):
        raise ValueError(
            f"intervention {intervention!r} is outside the series{where} "
            f"({_label_time(int(tidx.min()), is_date)} to {_label_time(int(tidx.max()), is_date)}): "
            "need at least one month before and one month at/after it"
        )
    y = pd.to_numeric(df[outcome], errors="coerce").to_numpy(dtype=float)
    tr = None
    if trials is not None:
        tr = pd.to_numeric(df[trials], errors="coerce").to_numpy(dtype=float)
    _check_outcome(y, family, outcome, tr)
    off = None
    if exposure is not None:
        ex = pd.to_numeric(df[exposure], errors="coerce").to_numpy(dtype=float)
        if not np.all(np.isfinite(ex)) or np.any(ex <= 0):
            bad = df.loc[~(np.isfinite(ex) & (ex > 0)), time].head(5).tolist()
            raise ValueError(
                f"exposure {exposure!r} must be positive and finite in every month{where}; "
                f"zero/negative/missing at {bad}"
            )
        off = np.log(ex)
    post = (tidx >= t0).astype(float)
    in_transition = (tidx >= t0) & (tidx < t0 + transition)
    fit_mask = ~in_transition
    X = pd.DataFrame(
        {
            "intercept": 1.0,
            "time": tidx.astype(float) if not is_date else (tidx - tidx.min()).astype(float),
        }
    )
    X[LEVEL] = post
    if slope_change:
        X[SLOPE] = (tidx - t0) * post
    seas_src = cal_month if cal_month is not None else tidx
    for k, v in _fourier(seas_src.astype(float), seasonality).items():
        X[k] = v
    n_pre = int(np.sum(tidx < t0))
    n_post = int(np.sum((tidx >= t0) & fit_mask))
    if n_pre < 3:
        raise ValueError(
            f"too few pre-intervention months{where}: {n_pre} (need at least 3 for a level and a trend)"
        )
    need_post = 2 if slope_change else 1
    if n_post < need_post:
        raise ValueError(
            f"too few post-intervention months{where} after the {transition}-month transition: {n_post} "
            f"(need at least {need_post}{' for a level and a slope change' if slope_change else ''})"
        )
    p = X.shape[1]
    n_fit = int(fit_mask.sum())
    if n_fit <= p:
        raise ValueError(
            f"too few months{where} ({n_fit}) for the {p} model terms requested "
            f"(seasonality={seasonality}, slope_change={slope_change})"
        )
    df["_t"] = tidx
    df["_y"] = y
    design = _Design(frame=df, X=X, fit_mask=fit_mask, offset=off, trials=tr)
    meta = {
        "t": tidx,
        "t0": t0,
        "is_date": is_date,
        "n_pre": n_pre,
        "n_post": n_post,
        "n_transition": int(in_transition.sum()),
        "cal_month": cal_month,
    }
    return design, meta



def _effects_frame(effects, **meta) -> pd.DataFrame:
    """Summary frame: one row per effect (None skipped) with the fit's metadata columns."""
    return pd.DataFrame([{**e.__dict__, **meta} for e in effects if e is not None])

def fit_its(
    data: pd.DataFrame,
    outcome: str,
    *,
    time: str,
    intervention: Any,
    family: Family = "poisson",
    exposure: str | None = None,
    trials: str | None = None,
    seasonality: int = 0,
    autocorrelation: Autocorrelation = "hac",
    hac_lags: int | None = None,
    transition: int = 0,
    slope_change: bool = True,
    alpha: float = 0.05,
    check_gaps: bool = True,
) -> ITSResult:
    """Fit a single interrupted time series (segmented regression).

    Parameters
    ----------
    data: tidy frame, one row per month.
    outcome: column of monthly counts (count families), successes (binomial) or values (gaussian).
    time: column of month dates (any day within the month) or consecutive integers.
    intervention: first post-intervention month (go-live), same type as ``time``.
    family: ``poisson``, ``quasipoisson``, ``negbin`` (NB2, ML dispersion), ``binomial``, ``gaussian``.
    exposure: column used as a log offset for count families (e.g. episodes, admissions /1,000).
    trials: column of trials for ``binomial``.
    seasonality: number of Fourier pairs of period 12 (calendar month for dates).
    autocorrelation: ``"none"``, ``"hac"`` (Newey-West; lag ``hac_lags`` or
        :func:`newey_west_lags`) or ``"ar1"`` (see module docstring).
    transition: months from go-live excluded from fitting (phase-in).
    slope_change: include the change-in-slope term (centred at go-live).
    alpha: 1 - confidence level.
    check_gaps: raise when months are missing from the series (default); ``False`` (used by
        :func:`fit_its_by_site`) fits the months present.
    """
    if autocorrelation not in ("none", "hac", "ar1"):
        raise ValueError(f"autocorrelation must be 'none', 'hac' or 'ar1', got {autocorrelation!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    design, meta = _build_design(
        data,
        outcome,
        time,
        intervention,
        family=family,
        exposure=exposure,
        trials=trials,
        seasonality=seasonality,
        transition=transition,
        slope_change=slope_change,
        check_gaps=check_gaps,
    )
    X_all = design.X
    fm = design.fit_mask
    Xf = X_all[fm].reset_index(drop=True)
    yf = design.frame["_y"].to_numpy()[fm]
    off_f = design.offset[fm] if design.offset is not None else None
    tr_f = design.trials[fm] if design.trials is not None else None
    tf = meta["t"][fm]
    n_fit = len(yf)
    p = Xf.shape[1]

    model, res, alpha_nb = _fit_glm_family(family, yf, Xf, off_f, tr_f)
    params = pd.Series(np.asarray(res.params), index=Xf.columns)
    # Pearson residuals / dispersion
    mu = np.asarray(res.mu)
    if family == "binomial":
        var = tr_f * mu * (1 - mu)
        resid = yf - tr_f * mu
    elif family == "negbin":
        var = mu + alpha_nb * mu**2
        resid = yf - mu
    elif family == "gaussian":
        var = np.ones_like(mu)
        resid = yf - mu
    else:
        var = mu
        resid = yf - mu
    pearson = resid / np.sqrt(np.maximum(var, 1e-300))
    df_resid = n_fit - p - (1 if family == "negbin" else 0)
    if family == "gaussian":
        dispersion = float(np.sum(resid**2) / (n_fit - p))
    else:
        dispersion = float(np.sum(pearson**2) / df_resid)
    pearson_std = pearson if family != "gaussian" else resid / math.sqrt(dispersion)

    hac_used = None
    rho_used = None
    use_t = family in ("quasipoisson", "gaussian")
    if autocorrelation == "none":
        if family == "quasipoisson" or family == "gaussian":
            cov = np.asarray(res.cov_params()) * (dispersion / res.scale)
        else:
            cov = np.asarray(res.cov_params())
    elif autocorrelation == "hac":
        hac_used = int(hac_lags) if hac_lags is not None else newey_west_lags(n_fit)
        if hac_used < 0:
            raise ValueError(f"hac_lags must be >= 0, got {hac_lags}")
        # sandwich is scale-free; time gaps from transition are ignored by the kernel (documented)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rob = model.fit(cov_type="HAC", cov_kwds={"maxlags": hac_used, "use_correction": True})
        cov = np.asarray(rob.cov_params())
        use_t = family == "gaussian"
    else:  # ar1
        if family == "gaussian":
            endog = design.frame["_y"].to_numpy().astype(float).copy()
            endog[~fm] = np.nan
            from statsmodels.tsa.statespace.sarimax import SARIMAX

            sar = SARIMAX(endog, exog=X_all.to_numpy(), order=(1, 0, 0), trend="n")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sres = sar.fit(disp=False, maxiter=500)
            k = X_all.shape[1]
            params = pd.Series(np.asarray(sres.params[:k]), index=X_all.columns)
            cov = np.asarray(sres.cov_params())[:k, :k]
            rho_used = float(sres.params[k])
            use_t = False
        else:
            phi = dispersion if family == "quasipoisson" else 1.0
            cov, rho_used = _ar1_sandwich(Xf.to_numpy(), yf, res, family, tr_f, phi, tf)
            use_t = family == "quasipoisson"

    cov_df = pd.DataFrame(cov, index=X_all.columns, columns=X_all.columns)
    se = np.sqrt(np.diag(cov))
    zc = _z(alpha)
    resid_df_t = n_fit - p
    if family == "gaussian" and autocorrelation != "ar1":
        crit = float(stats.t.ppf(1 - alpha / 2, resid_df_t))
    else:
        crit = zc
    stat = params.to_numpy() / se
    if use_t:
        pvals = 2 * stats.t.sf(np.abs(stat), resid_df_t)
    else:
        pvals = 2 * stats.norm.sf(np.abs(stat))
    coef = pd.DataFrame(
        {
            "term": X_all.columns,
            "estimate": params.to_numpy(),
            "se": se,
            "ci_low": params.to_numpy() - crit * se,
            "ci_high": params.to_numpy() + crit * se,
            "statistic": stat,
            "p": pvals,
        }
    )
    scale_name, expo = _natural_scale(family)

    def eff(term: str) -> EffectSize:
        r = coef.set_index("term").loc[term]
        tr_ = _safe_exp if expo else (lambda v: v)
        return EffectSize(
            name=term,
            estimate=tr_(r.estimate),
            ci_low=tr_(r.ci_low),
            ci_high=tr_(r.ci_high),
            p_value=float(r.p),
            link_estimate=float(r.estimate),
            link_se=float(r.se),
            scale=scale_name + (" per month" if term == SLOPE and not expo else ""),
        )

    # counterfactual frame
    X_cf = X_all.copy()
    X_cf[LEVEL] = 0.0
    if slope_change:
        X_cf[SLOPE] = 0.0
    allrows = np.arange(len(X_all))
    result = ITSResult(
        coefficients=coef,
        level_change=eff(LEVEL),
        slope_change=eff(SLOPE) if slope_change else None,
        counterfactual=pd.DataFrame(),
        diagnostics=None,
        family=family,
        autocorrelation=autocorrelation,
        hac_lags=hac_used,
        ar1_rho=rho_used,
        n_pre=meta["n_pre"],
        n_post=meta["n_post"],
        n_transition=meta["n_transition"],
        seasonality=int(seasonality),
        alpha=alpha,
        intervention=intervention,
        outcome=outcome,
        negbin_alpha=alpha_nb,
        params=params,
        cov=cov_df,
        _X_all=X_all,
        _X_cf=X_cf,
        _offset=design.offset,
        _trials=design.trials,
        _t=meta["t"],
        _t0=meta["t0"],
        _is_date=meta["is_date"],
        _exposure_label=exposure,
    )
    eta_f = result._eta(X_all, allrows)
    eta_c = result._eta(X_cf, allrows)
    Vc = cov
    Xc = X_cf.to_numpy()
    se_c = np.sqrt(np.einsum("ij,jk,ik->i", Xc, Vc, Xc))
    if family == "gaussian":
        cf_lo, cf_hi = eta_c - crit * se_c, eta_c + crit * se_c
    else:
        cf_lo = result._mean(eta_c - zc * se_c, allrows)
        cf_hi = result._mean(eta_c + zc * se_c, allrows)
    cf = pd.DataFrame(
        {
            "time": design.frame[time].to_numpy() if meta["is_date"] else meta["t"],
            "observed": design.frame["_y"].to_numpy(),
            "fitted": result._mean(eta_f, allrows),
            "counterfactual": result._mean(eta_c, allrows),
            "counterfactual_low": cf_lo,
            "counterfactual_high": cf_hi,
            "post": meta["t"] >= meta["t0"],
            "fitted_in_model": fm,
        }
    )
    if meta["is_date"]:
        cf["time"] = (
            pd.to_datetime(design.frame[time]).dt.to_period("M").dt.to_timestamp().to_numpy()
        )
    if exposure is not None:
        cf["exposure"] = np.exp(design.offset)
    if design.trials is not None:
        cf["trials"] = design.trials
    if seasonality > 0:
        X_ds = X_all.copy()
        for c in X_ds.columns:
            if c.startswith(("sin", "cos")):
                X_ds[c] = 0.0  # the Fourier terms average to 0 over a year
        cf["deseasonalised"] = result._mean(result._eta(X_ds, allrows), allrows)
    result.counterfactual = cf

    # diagnostics
    L = int(min(12, max(1, n_fit // 4)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lb = acorr_ljungbox(pearson_std, lags=[L], return_df=True)
        ac = acf(pearson_std, nlags=L, fft=False)
    consec = np.diff(tf) == 1
    rho1 = float(
        np.sum(pearson_std[1:][consec] * pearson_std[:-1][consec]) / np.sum(pearson_std**2)
    )
    result.diagnostics = ITSDiagnostics(
        dispersion=dispersion,
        deviance=float(res.deviance),
        df_resid=float(df_resid),
        ljung_box_stat=float(lb["lb_stat"].iloc[0]),
        ljung_box_p=float(lb["lb_pvalue"].iloc[0]),
        ljung_box_lags=L,
        residual_acf=pd.Series(ac[1:], index=pd.RangeIndex(1, L + 1, name="lag")),
        ar1_rho=rho1,
    )
    return result


# ----------------------------------------------------------------------------------------------
# multi-site


@dataclass
class MultisiteITSResult:
    """Pooled segmented regression across sites in event time (see :func:`fit_its_multisite`)."""

    coefficients: pd.DataFrame  # intervention terms (and seasonality); site terms omitted
    level_change: EffectSize
    slope_change: EffectSize | None
    family: str
    se_type: str
    n_sites: int
    n_obs: int
    excluded_sites: pd.DataFrame
    n_zero_exposure_months: int
    alpha: float
    event_window: tuple[int, int]
    outcome: str
    params: pd.Series = field(default=None, repr=False)
    cov: pd.DataFrame = field(default=None, repr=False)
    _event_study: pd.DataFrame = field(default=None, repr=False)
    converged: bool = True
    transition: int = 0

    @property
    def scale(self) -> str:
        return _natural_scale(self.family)[0]

    def effect_at(self, months_after: int) -> EffectEstimate:
        """Relative effect (ratio for log/logit links; difference for Gaussian, reported in the
        ``relative`` fields) ``months_after`` months after each site's go-live, delta method.
        Absolute effects are not defined for the pooled model (``None``)."""
        m = int(months_after)
        if m < 0:
            raise ValueError(f"months_after must be >= 0, got {months_after}")
        names = list(self.params.index)
        c = np.zeros(len(names))
        c[names.index(LEVEL)] = 1.0
        if SLOPE in names:
            c[names.index(SLOPE)] = float(m)
        est = float(c @ self.params.to_numpy())
        se = float(np.sqrt(c @ self.cov.to_numpy() @ c))
        z = _z(self.alpha)
        expo = _natural_scale(self.family)[1]
        tr = _safe_exp if expo else (lambda v: v)
        return EffectEstimate(
            months_after=m,
            time=m,
            absolute=None,
            absolute_low=None,
            absolute_high=None,
            relative=tr(est),
            relative_low=tr(est - z * se),
            relative_high=tr(est + z * se),
        )

    def event_study(self) -> pd.DataFrame:
        """Effects by months since go-live relative to month -1 (natural scale, CIs). Endpoint
        bins collect months outside ``event_window``."""
        return self._event_study.copy()

    def summary(self) -> pd.DataFrame:
        """One row per intervention parameter plus fit metadata."""
        return _effects_frame(
            (self.level_change, self.slope_change), family=self.family, se_type=self.se_type,
            n_sites=self.n_sites, n_obs=self.n_obs, n_excluded_sites=len(self.excluded_sites))

    def plot_event_study(self, ax=None, title: str | None = None):
        """Event-study plot: estimate and CI by month since go-live (reference: month -1 or the
        pre-period, drawn as the horizontal line); shaded: transition months. Returns Axes."""
        full = self._event_study
        es = full[full["event_time"] != "pre"].astype({"event_time": int})
        ref_label = "pre-period" if (full["event_time"] == "pre").any() else "month -1"
        ax = new_axes(ax)
        if self.transition > 0:
            ax.axvspan(
                -0.5,
                self.transition - 0.5,
                color=PALETTE["limit"],
                alpha=0.12,
                label="transition (excluded from segmented model)",
            )
        ref = 1.0 if _natural_scale(self.family)[1] else 0.0
        ax.axhline(ref, color=PALETTE["limit"], lw=1)
        ax.axvline(-0.5, color=PALETTE["limit"], ls="--", lw=1)
        ax.errorbar(
            es["event_time"],
            es["estimate"],
            yerr=[es["estimate"] - es["ci_low"], es["ci_high"] - es["estimate"]],
            fmt="o",
            ms=4,
            color=PALETTE["fitted"],
            ecolor=PALETTE["observed"],
            capsize=2,
        )
        if _natural_scale(self.family)[1]:
            ax.set_yscale("log")
            plain_log_ticks(ax, "y")
        ax.set_xlabel("months since go-live")
        ax.set_ylabel(f"{self.scale} vs {ref_label}")
        ax.set_title(title or f"Event study: {self.outcome}")
        return ax


def _event_time(
    data: pd.DataFrame, time: str, go_live: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, bool]:
    tidx, cal, is_date = _time_index(data[time], time)
    gl = data[go_live]
    if is_date:
        if not (pd.api.types.is_datetime64_any_dtype(gl) or isinstance(gl.dtype, pd.PeriodDtype)):
            try:
                gl = pd.to_datetime(gl)
            except (ValueError, TypeError) as exc:
                raise ValueError(
                    f"go_live column {go_live!r} must hold month dates like {time!r}"
                ) from exc
        gidx, _, _ = _time_index(gl, go_live)
    else:
        gidx, _, _ = _time_index(gl, go_live)
    return tidx, gidx, cal, is_date


def _irls(
    y: np.ndarray,
    X: np.ndarray,
    offset: np.ndarray | None,
    family: str,
    trials: np.ndarray | None,
    maxiter: int = 100,
    tol: float = 1e-10,
) -> dict[str, Any]:
    """Canonical-link GLM by iteratively reweighted least squares with Cholesky solves
    (Poisson/quasi-Poisson: log link; binomial: logit; Gaussian: identity). Returns beta, the
    fitted means, the Fisher weights, the unscaled bread ``(X'WX)^-1`` and per-row scores."""
    n, p = X.shape
    off = np.zeros(n) if offset is None else offset
    if family == "gaussian":
        A = X.T @ X
        beta = np.linalg.solve(A, X.T @ (y - off))
        mu = X @ beta + off
        w = np.ones(n)
        converged, it = True, 1
    else:
        if family == "binomial":
            p0 = (y + 0.5) / (trials + 1.0)
            eta = np.log(p0 / (1 - p0))
        else:
            eta = np.log(y + 0.5)
        beta = np.zeros(p)
        beta_prev = beta
        dev_old = np.inf
        converged, it = False, 0
        for it in range(1, maxiter + 1):
            if family == "binomial":
                pr = 1 / (1 + np.exp(-eta))
                mu = trials * pr
                w = trials * pr * (1 - pr)
            else:
                mu = np.exp(eta)
                w = mu
            zwork = eta - off + (y - mu) / np.maximum(w, 1e-300)
            A = X.T @ (X * w[:, None])
            try:
                c = np.linalg.cholesky(A)
                beta = np.linalg.solve(c.T, np.linalg.solve(c, X.T @ (w * zwork)))
            except np.linalg.LinAlgError:
                beta = np.linalg.lstsq(A, X.T @ (w * zwork), rcond=None)[0]
            eta = X @ beta + off
            if family == "binomial":
                pr = 1 / (1 + np.exp(-eta))
                mu = trials * pr
                with np.errstate(divide="ignore", invalid="ignore"):
                    t1 = np.where(y > 0, y * np.log(y / mu), 0.0)
                    t2 = np.where(
                        trials - y > 0, (trials - y) * np.log((trials - y) / (trials - mu)), 0.0
                    )
                dev = 2 * np.sum(t1 + t2)
            else:
                mu = np.exp(eta)
                with np.errstate(divide="ignore", invalid="ignore"):
                    dev = 2 * np.sum(np.where(y > 0, y * np.log(y / mu), 0.0) - (y - mu))
            # deviance criterion (R's glm.fit); with huge counts the deviance carries rounding
            # noise larger than tol, so a negligible change of beta also means convergence
            step = np.max(np.abs(beta - beta_prev)) if it > 1 else np.inf
            if abs(dev - dev_old) < tol * (abs(dev) + 0.1) or step < tol * (1 + np.max(np.abs(beta))):
                converged = True
                break
            dev_old = dev
            beta_prev = beta
        if family == "binomial":
            pr = 1 / (1 + np.exp(-eta))
            w = trials * pr * (1 - pr)
        else:
            w = mu
        A = X.T @ (X * w[:, None])
    bread = np.linalg.inv(A)
    resid = y - mu
    scores = X * resid[:, None]  # canonical link: score_i = x_i (y_i - E y_i)
    if family == "gaussian":
        var = np.ones(n)
    elif family == "binomial":
        var = w
    else:
        var = mu
    pearson = resid / np.sqrt(np.maximum(var, 1e-300))
    return {
        "beta": beta,
        "mu": mu,
        "w": w,
        "bread": bread,
        "scores": scores,
        "resid": resid,
        "pearson": pearson,
        "converged": converged,
        "iterations": it,
    }


def _bartlett_meat(h: np.ndarray, lags: int) -> np.ndarray:
    """Newey-West meat for a (T x p) series of summed scores h."""
    meat = h.T @ h
    for lag in range(1, lags + 1):
        wgt = 1 - lag / (lags + 1)
        g = h[lag:].T @ h[:-lag]
        meat += wgt * (g + g.T)
    return meat


def _multisite_cov(
    fit: dict[str, Any], se: str, family: str, groups: np.ndarray, tcodes: np.ndarray, lags: int
) -> np.ndarray:
    bread, S = fit["bread"], fit["scores"]
    n, p = S.shape
    if se == "model":
        if family in ("quasipoisson", "gaussian"):
            phi = float(np.sum(fit["pearson"] ** 2) / (n - p))
            if family == "gaussian":
                phi = float(np.sum(fit["resid"] ** 2) / (n - p))
            return bread * phi
        return bread
    if se == "cluster":
        G = int(groups.max()) + 1
        hs = np.zeros((G, p))
        np.add.at(hs, groups, S)
        meat = hs.T @ hs * (G / (G - 1))
    elif se == "driscoll_kraay":
        T = int(tcodes.max()) + 1
        ht = np.zeros((T, p))
        np.add.at(ht, tcodes, S)
        meat = _bartlett_meat(ht, lags)
    else:  # panel_hac: HAC within each site (rows sorted by site, time)
        meat = np.zeros((p, p))
        bounds = np.flatnonzero(np.diff(groups)) + 1
        for block in np.split(np.arange(n), bounds):
            meat += _bartlett_meat(S[block], min(lags, max(len(block) - 1, 0)))
    return bread @ meat @ bread


def fit_its_multisite(
    data: pd.DataFrame,
    outcome: str,
    *,
    site: str,
    time: str,
    go_live: str,
    family: Family = "poisson",
    exposure: str | None = None,
    trials: str | None = None,
    seasonality: int = 0,
    se: Literal["cluster", "driscoll_kraay", "panel_hac", "model"] = "cluster",
    event_window: tuple[int, int] = (-12, 24),
    event_reference: Literal["-1", "pre"] = "-1",
    site_trends: bool = True,
    slope_change: bool = True,
    transition: int = 0,
    hac_lags: int | None = None,
    alpha: float = 0.05,
) -> MultisiteITSResult:
    """Pooled segmented regression across sites with staggered go-live.

    Model (link per ``family``): site intercepts + site-specific linear trends (pre-trends;
    ``site_trends=False``: one common trend) + ``level_change`` (post go-live) + ``slope_change``
    (months since go-live, post) [+ calendar-month Fourier terms] [+ log offset ``exposure``].
    Event time = months since each site's own go-live (``go_live`` column: first post month; 0 =
    go-live month). All months are used, except ``transition`` months from go-live (phase-in),
    which are left out of the segmented model (so ``level_change`` is then the effect after the
    phase-in).

    Event study (:meth:`MultisiteITSResult.event_study`): a second model with the same site
    terms and event-time dummies over ``event_window`` (months beyond it binned into the
    endpoints), relative to month -1 (``event_reference="-1"``) or to all pre-go-live months
    (``"pre"``: dummies for post months only, more stable with sparse counts); all months are
    used, transition included.

    ``se``: ``"cluster"`` (cluster-robust by site, small-sample factor G/(G-1)),
    ``"driscoll_kraay"`` (Newey-West on cross-site score sums per calendar month),
    ``"panel_hac"`` (Newey-West within site, summed over sites) or ``"model"`` (model-based;
    quasi-Poisson/Gaussian scaled by Pearson chi2/df). HAC lag ``hac_lags`` or
    :func:`newey_west_lags` of the number of calendar months. Intervals are Wald (z).

    Fitting is by IRLS with Cholesky solves (canonical links). Sites with no events (count
    families), fewer than 3 pre months or no post months are excluded and listed in
    ``excluded_sites``; site-months with zero exposure and no events are left out and counted
    in ``n_zero_exposure_months``.
    """
    _require_columns(
        data,
        {
            "outcome": outcome,
            "site": site,
            "time": time,
            "go_live": go_live,
            "exposure": exposure,
            "trials": trials,
        },
    )
    if family not in FAMILIES or family == "negbin":
        raise ValueError(
            "family for fit_its_multisite must be one of poisson, quasipoisson, binomial, "
            f"gaussian (cluster-robust SEs already allow overdispersion); got {family!r}"
        )
    if se not in ("cluster", "driscoll_kraay", "panel_hac", "model"):
        raise ValueError(
            f"se must be 'cluster', 'driscoll_kraay', 'panel_hac' or 'model', got {se!r}"
        )
    if str(event_reference) not in ("-1", "pre"):
        raise ValueError(f"event_reference must be '-1' or 'pre', got {event_reference!r}")
    lo, hi = (int(v) for v in event_window)
    if not (lo < -1 < 0 <= hi):
        raise ValueError(f"event_window must satisfy lo < -1 and hi >= 0, got {event_window}")
    if family == "binomial" and trials is None:
        raise ValueError("family='binomial' needs a trials column")
    if family != "binomial" and trials is not None:
        raise ValueError("trials is only used with family='binomial'")
    if exposure is not None and family not in COUNT_FAMILIES:
        raise ValueError("exposure (log offset) is only used with count families")
    if int(transition) != transition or transition < 0:
        raise ValueError(f"transition must be a non-negative integer, got {transition!r}")
    if int(seasonality) != seasonality or not 0 <= seasonality <= 6:
        raise ValueError(f"seasonality must be an integer in 0..6, got {seasonality!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    df = data.copy()
    if df[go_live].isna().any():
        bad = df.loc[df[go_live].isna(), site].unique()[:5].tolist()
        raise ValueError(f"go_live is missing for sites {bad}")
    tidx, gidx, _cal, is_date = _event_time(df, time, go_live)
    df["_t"], df["_e"] = tidx, tidx - gidx
    df = df.sort_values([site, "_t"], kind="stable").reset_index(drop=True)  # panel order
    for s, g in df.groupby(site, sort=False):
        _check_consecutive(g["_t"].to_numpy(), is_date, time, where=f" for site {s!r}")
        if g[go_live].nunique() != 1:
            raise ValueError(f"go_live varies within site {s!r}")
    y = pd.to_numeric(df[outcome], errors="coerce").to_numpy(dtype=float)
    tr = pd.to_numeric(df[trials], errors="coerce").to_numpy(dtype=float) if trials else None
    _check_outcome(y, family, outcome, tr)
    df["_y"] = y
    n_zero_exposure = 0
    if exposure is not None:
        ex = pd.to_numeric(df[exposure], errors="coerce").to_numpy(dtype=float)
        if not np.all(np.isfinite(ex)) or np.any(ex < 0):
            raise ValueError(
                f"exposure {exposure!r} must be non-negative and finite in every site-month"
            )
        zero = ex == 0
        if np.any(zero & (y > 0)):
            raise ValueError(f"exposure {exposure!r} is 0 in site-months with events")
        # zero exposure and no events: mean 0, nothing to the likelihood; left out and counted
        n_zero_exposure = int(zero.sum())
        df = df[~zero].reset_index(drop=True)
    excl = []
    for s, g in df.groupby(site, sort=False):
        npre, npost = int((g["_e"] < 0).sum()), int((g["_e"] >= transition).sum())
        if npre < 3:
            excl.append((s, f"too_few_pre_months: {npre}"))
        elif npost < 1:
            excl.append((s, "no_post_period"))
        elif family in (*COUNT_FAMILIES, "binomial") and g["_y"].sum() == 0:
            excl.append((s, "no_events"))
    excluded = pd.DataFrame(excl, columns=["site", "reason"])
    df = df[~df[site].isin(excluded["site"])].reset_index(drop=True)
    if df[site].nunique() < 2:
        raise ValueError(
            f"fewer than 2 sites can be fitted (excluded: {excluded.to_dict('records')})"
        )
    L = hac_lags if hac_lags is not None else newey_west_lags(int(df["_t"].nunique()))
    if L < 0:
        raise ValueError(f"hac_lags must be >= 0, got {hac_lags}")
    z = _z(alpha)
    scale_name, expo = _natural_scale(family)
    trf = _safe_exp if expo else (lambda v: v)

    def site_terms(d: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
        sites = pd.Categorical(d[site])
        base = pd.get_dummies(sites, dtype=float)
        base.columns = [f"site[{c}]" for c in sites.categories]
        t_c = (d["_t"].to_numpy(dtype=float) - float(df["_t"].mean())) / 12.0  # years, centred
        if site_trends:
            trend = base.mul(t_c, axis=0)
            trend.columns = [f"trend[{c}]" for c in sites.categories]
        else:
            trend = pd.DataFrame({"trend": t_c})
        cal = _time_index(d[time], time)[1] if is_date else d["_t"].to_numpy()
        seas = pd.DataFrame(_fourier(np.asarray(cal, dtype=float), seasonality))
        return pd.concat([base, trend, seas], axis=1), sites.codes

    def fit_cov(d: pd.DataFrame, X: pd.DataFrame, groups: np.ndarray):
        yy = d["_y"].to_numpy(dtype=float)
        off = np.log(pd.to_numeric(d[exposure]).to_numpy(dtype=float)) if exposure else None
        tt = pd.to_numeric(d[trials]).to_numpy(dtype=float) if trials else None
        fit = _irls(yy, X.to_numpy(dtype=float), off, family, tt)
        tcodes = pd.factorize(d["_t"], sort=True)[0]
        cov = _multisite_cov(fit, se, family, np.asarray(groups), tcodes, L)
        return fit, pd.DataFrame(cov, index=X.columns, columns=X.columns)

    # segmented model (transition months left out)
    dseg = df[~((df["_e"] >= 0) & (df["_e"] < transition))].reset_index(drop=True)
    X, groups = site_terms(dseg)
    post = (dseg["_e"] >= 0).to_numpy(dtype=float)
    X[LEVEL] = post
    if slope_change:
        X[SLOPE] = dseg["_e"].to_numpy(dtype=float) * post
    fit, cov = fit_cov(dseg, X, groups)
    params = pd.Series(fit["beta"], index=X.columns)
    keep_terms = [c for c in X.columns if not c.startswith(("site[", "trend"))]
    est = params[keep_terms].to_numpy()
    sev = np.sqrt(np.diag(cov.loc[keep_terms, keep_terms].to_numpy()))
    coef = pd.DataFrame(
        {
            "term": keep_terms,
            "estimate": est,
            "se": sev,
            "ci_low": est - z * sev,
            "ci_high": est + z * sev,
            "statistic": est / sev,
            "p": 2 * stats.norm.sf(np.abs(est / sev)),
        }
    )

    def eff(term: str) -> EffectSize:
        r = coef.set_index("term").loc[term]
        return EffectSize(
            name=term,
            estimate=trf(r.estimate),
            ci_low=trf(r.ci_low),
            ci_high=trf(r.ci_high),
            p_value=float(r.p),
            link_estimate=float(r.estimate),
            link_se=float(r.se),
            scale=scale_name,
        )

    # event study (all months)
    Xe, ge = site_terms(df)
    e = df["_e"].to_numpy()
    e_b = np.clip(e, lo, hi)
    first = 0 if str(event_reference) == "pre" else lo
    levels = [k for k in range(first, hi + 1) if k != -1]
    ev = pd.DataFrame({f"e[{k}]": (e_b == k).astype(float) for k in levels})
    ev = ev.loc[:, ev.sum() > 0]
    Xe = pd.concat([Xe, ev], axis=1)
    fit_e, ce = fit_cov(df, Xe, ge)
    pe = pd.Series(fit_e["beta"], index=Xe.columns)
    ref_mask = (e_b == -1) if str(event_reference) == "-1" else (e_b < 0)
    rows = [
        {
            "event_time": -1 if str(event_reference) == "-1" else "pre",
            "estimate": trf(0.0),
            "ci_low": trf(0.0),
            "ci_high": trf(0.0),
            "link_estimate": 0.0,
            "link_se": 0.0,
            "n_obs": int(ref_mask.sum()),
            "reference": True,
        }
    ]
    for c in ev.columns:
        k = int(c[2:-1])
        b, s_ = float(pe[c]), float(np.sqrt(ce.loc[c, c]))
        rows.append(
            {
                "event_time": k,
                "estimate": trf(b),
                "ci_low": trf(b - z * s_),
                "ci_high": trf(b + z * s_),
                "link_estimate": b,
                "link_se": s_,
                "n_obs": int((e_b == k).sum()),
                "reference": False,
            }
        )
    es = pd.DataFrame(rows)
    es["_order"] = [(-1 if v == "pre" else v) for v in es["event_time"]]
    es = es.sort_values("_order").drop(columns="_order").reset_index(drop=True)
    es["binned_endpoint"] = ((es["event_time"] == lo) & bool((e < lo).any())) | (
        (es["event_time"] == hi) & bool((e > hi).any())
    )
    return MultisiteITSResult(
        coefficients=coef,
        level_change=eff(LEVEL),
        slope_change=eff(SLOPE) if slope_change else None,
        family=family,
        se_type=se,
        n_sites=int(dseg[site].nunique()),
        n_obs=len(dseg),
        excluded_sites=excluded,
        n_zero_exposure_months=n_zero_exposure,
        alpha=alpha,
        event_window=(lo, hi),
        outcome=outcome,
        params=params,
        cov=cov,
        _event_study=es,
        converged=bool(fit["converged"] and fit_e["converged"]),
        transition=int(transition),
    )


# ----------------------------------------------------------------------------------------------
# per-site fits + random-effects pooling


def fit_its_by_site(
    data: pd.DataFrame,
    outcome: str,
    *,
    site: str,
    time: str,
    go_live: str,
    min_events: int = 10,
    months_after: int | None = None,
    **fit_its_kwargs,
) -> pd.DataFrame:
    """Fit :func:`fit_its` separately for each site (intervention = the site's go-live month).

    Returns one row per site: ``site``, ``status`` (``"ok"``, ``"too_few_events: N events"``,
    ``"no_post_period"``, ``"error: ..."``), ``n_pre``, ``n_post``, ``events``, the link-scale
    effect ``link_effect`` (log RR / log OR / difference) and its SE ``link_se``, and the natural
    scale ``estimate``, ``ci_low``, ``ci_high``. The effect is the level change
    (``months_after=None``) or the effect ``months_after`` months after go-live. Sites that
    cannot be fitted keep their row with a status; none is dropped silently."""
    _require_columns(data, {"outcome": outcome, "site": site, "time": time, "go_live": go_live})
    if int(min_events) != min_events or min_events < 0:
        raise ValueError(f"min_events must be a non-negative integer, got {min_events!r}")
    fam = fit_its_kwargs.get("family", "poisson")
    expo = _natural_scale(fam)[1]
    rows = []
    for s, g in data.groupby(site, sort=True):
        gl_vals = g[go_live].dropna().unique()
        row: dict[str, Any] = {
            "site": s,
            "status": "ok",
            "n_pre": np.nan,
            "n_post": np.nan,
            "events": float(pd.to_numeric(g[outcome], errors="coerce").sum()),
            "link_effect": np.nan,
            "link_se": np.nan,
            "estimate": np.nan,
            "ci_low": np.nan,
            "ci_high": np.nan,
            "zero_exposure_months": 0,
        }
        if len(gl_vals) != 1:
            row["status"] = "error: go_live missing or not unique"
            rows.append(row)
            continue
        gl = gl_vals[0]
        tidx, _, is_date = _time_index(g[time], time)
        t0 = _scalar_time_index(gl, is_date, "go_live")
        row["n_pre"] = int((tidx < t0).sum())
        row["n_post"] = int((tidx >= t0).sum())
        if row["n_post"] == 0:
            row["status"] = "no_post_period"
            rows.append(row)
            continue
        counts = fam in (*COUNT_FAMILIES, "binomial")
        yv = pd.to_numeric(g[outcome], errors="coerce").to_numpy(dtype=float)
        if counts and row["events"] < min_events:
            row["status"] = f"too_few_events: {int(row['events'])} events"
            rows.append(row)
            continue
        trans = int(fit_its_kwargs.get("transition", 0))
        ev_pre, ev_post = np.nansum(yv[tidx < t0]), np.nansum(yv[tidx >= t0 + trans])
        if counts and (ev_pre == 0 or ev_post == 0):
            which = "before go-live" if ev_pre == 0 else "in the fitted post period"
            row["status"] = f"too_few_events: {int(row['events'])} events, none {which}"
            rows.append(row)
            continue
        gg = g
        expo_col = fit_its_kwargs.get("exposure")
        if expo_col is not None:
            # months with zero exposure and no events carry no information (mean 0): left out
            ex = pd.to_numeric(g[expo_col], errors="coerce").to_numpy(dtype=float)
            drop = (ex == 0) & (yv == 0)
            row["zero_exposure_months"] = int(drop.sum())
            gg = g[~drop]
        try:
            r = fit_its(
                gg,
                outcome,
                time=time,
                intervention=gl,
                check_gaps=expo_col is None,
                **fit_its_kwargs,
            )
            z = _z(r.alpha)
            if months_after is None:
                le, lse = r.level_change.link_estimate, r.level_change.link_se
            else:
                e = r.effect_at(months_after)
                if expo:
                    le = math.log(e.relative)
                    lse = (math.log(e.relative_high) - math.log(e.relative_low)) / (2 * z)
                else:
                    if e.absolute is None:
                        raise ValueError(f"month {months_after} after go-live is not in the data")
                    le = e.absolute
                    lse = (e.absolute_high - e.absolute_low) / (2 * z)
            if not (np.isfinite(le) and np.isfinite(lse) and lse > 0):
                raise FloatingPointError("non-finite effect or SE (e.g. no events in one period)")
            tr = _safe_exp if expo else (lambda v: v)
            row.update(
                n_pre=r.n_pre,
                n_post=r.n_post,
                link_effect=le,
                link_se=lse,
                estimate=tr(le),
                ci_low=tr(le - z * lse),
                ci_high=tr(le + z * lse),
            )
        except (ValueError, ArithmeticError, np.linalg.LinAlgError) as exc:
            row["status"] = f"error: {exc}"
        rows.append(row)
    return pd.DataFrame(rows)


def pool_site_effects(
    site_effects: pd.DataFrame,
    *,
    method: str = "reml",
    knha: bool = False,
    alpha: float = 0.05,
    label: str = "site",
) -> PooledEstimate:
    """Random-effects pooling of the ``status == "ok"`` rows of :func:`fit_its_by_site`; the other
    sites are listed with their status in ``PooledEstimate.excluded``."""
    need = {label, "status", "link_effect", "link_se"}
    if not need <= set(site_effects.columns):
        raise ValueError(f"site_effects needs columns {sorted(need)}")
    ok = site_effects["status"] == "ok"
    if ok.sum() < 2:
        raise ValueError(
            f"fewer than 2 sites with status 'ok' ({int(ok.sum())}); statuses: "
            f"{site_effects['status'].value_counts().to_dict()}"
        )
    d = site_effects[ok]
    pooled = random_effects(
        d["link_effect"].to_numpy(),
        d["link_se"].to_numpy(),
        method=method,
        knha=knha,
        alpha=alpha,
        labels=d[label].astype(str).tolist(),
    )
    pooled.excluded = pd.DataFrame(
        {
            "label": site_effects.loc[~ok, label].astype(str).to_numpy(),
            "reason": site_effects.loc[~ok, "status"].to_numpy(),
        }
    )
    return pooled


# ----------------------------------------------------------------------------------------------
# the imputation estimator lives in analysis.staggered (it builds on the helpers above); exported
# here lazily (PEP 562) so that `from analysis.its import fit_its_staggered` works without an
# import cycle.
_STAGGERED_NAMES = ("fit_its_staggered", "StaggeredITSResult", "StaggeredEffect", "PretrendTest")


def __getattr__(name: str):
    if name in _STAGGERED_NAMES:
        from . import staggered

        return getattr(staggered, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

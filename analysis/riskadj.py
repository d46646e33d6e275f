"""Risk adjustment and hospital comparison for sepsis-attributable mortality (SAM).

Workflow
--------
1. :func:`fit_casemix_model` fits a case-mix logistic regression for 3- or 30-day SAM (``sam3`` /
   ``sam30`` from :func:`analysis.derive.derive_episodes`), by default on the collaborative's
   baseline (pre-go-live, ``post == False``) episodes, so that "expected" means "expected under
   baseline collaborative performance for this case mix".
2. :func:`observed_expected` sums observed and expected deaths per group (site, period, ...) and
   gives the O/E ratio with exact Poisson (Garwood) and Byar confidence intervals and the
   risk-adjusted rate (O/E x overall crude rate, deaths per 100 episodes).
3. :func:`funnel_data` / :func:`funnel_plot`: funnel plot of site O/E against expected deaths with
   exact Poisson 95% and 99.8% limits (Spiegelhalter 2005, Stat Med 24:1185, appendix A.1.1) and the
   additive random-effects over-dispersion adjustment (Spiegelhalter 2005 section 6; Spiegelhalter
   et al. 2012, JRSS-A 175:1): winsorised z-scores, phi, DerSimonian-Laird tau^2.
4. :func:`oe_over_time`: O/E by quarter (or month) for one site and the collaborative.

Units: probabilities are per episode; rates are deaths per 100 episodes; expected deaths are counts.
Unseen categories: predicting for a category level that did not occur in the fitting data raises
``ValueError`` by default; ``unseen="reference"`` instead pools such levels with the reference
level (documented and reported in ``CaseMixModel.pooled``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy import stats

from .plotting import PALETTE, new_axes

#: Default case-mix covariates (``ccc_band`` is derived from ``ccc_count`` by :func:`casemix_frame`).
DEFAULT_CASEMIX: tuple[str, ...] = (
    "age_group",
    "ccc_band",
    "immunocompromised",
    "onset_setting",
    "hospital_onset",
    "critical_sepsis",
)

#: Upper bounds of the complex-chronic-condition bands: 0, 1, 2, 3+ (cap at 3).
CCC_CAP: int = 3

OUTCOMES = ("sam3", "sam30")


# --------------------------------------------------------------------------------------------
# Confidence intervals for O/E (standardised ratios)
# --------------------------------------------------------------------------------------------


def _z(level: float) -> float:
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1 (got {level})")
    return float(stats.norm.ppf(1 - (1 - level) / 2))


def exact_poisson_ci(
    observed: np.ndarray | float, expected: np.ndarray | float, level: float = 0.95
) -> tuple[np.ndarray, np.ndarray]:
    """Exact (Garwood, chi-square based) CI for the ratio O/E, with O ~ Poisson.

    lower = chi2.ppf(a/2, 2 O) / (2 E) (0 when O = 0); upper = chi2.ppf(1 - a/2, 2 O + 2) / (2 E).
    Identical to R ``poisson.test(O, E)$conf.int``.
    """
    o, e = _check_oe(observed, expected)
    a = 1 - level
    _z(level)
    with np.errstate(invalid="ignore"):
        lower = np.where(o > 0, stats.chi2.ppf(a / 2, 2 * o) / (2 * e), 0.0)
    upper = stats.chi2.ppf(1 - a / 2, 2 * o + 2) / (2 * e)
    return lower, upper


def byar_ci(
    observed: np.ndarray | float, expected: np.ndarray | float, level: float = 0.95
) -> tuple[np.ndarray, np.ndarray]:
    """Byar's approximation to the exact Poisson CI for O/E (Breslow & Day 1987, vol II).

    lower = O (1 - 1/(9 O) - z/(3 sqrt O))^3 / E (0 when O = 0);
    upper = (O+1) (1 - 1/(9 (O+1)) + z/(3 sqrt(O+1)))^3 / E.
    """
    o, e = _check_oe(observed, expected)
    z = _z(level)
    with np.errstate(divide="ignore", invalid="ignore"):
        lo = o * (1 - 1 / (9 * o) - z / (3 * np.sqrt(o))) ** 3
    lower = np.where(o > 0, np.maximum(lo, 0.0), 0.0) / e
    o1 = o + 1
    upper = o1 * (1 - 1 / (9 * o1) + z / (3 * np.sqrt(o1))) ** 3 / e
    return lower, upper


def _check_oe(observed, expected) -> tuple[np.ndarray, np.ndarray]:
    o = np.asarray(observed, dtype=float)
    e = np.asarray(expected, dtype=float)
    if np.any(~np.isfinite(o)) or np.any(o < 0):
        raise ValueError("observed counts must be finite and >= 0")
    if np.any(~np.isfinite(e)) or np.any(e <= 0):
        raise ValueError("expected counts must be finite and > 0")
    return o, e


# --------------------------------------------------------------------------------------------
# Case-mix model
# --------------------------------------------------------------------------------------------


def ccc_band(ccc_count: pd.Series, cap: int = CCC_CAP) -> pd.Series:
    """Band complex chronic conditions: "0", "1", ..., f"{cap}+" (ordered categorical)."""
    labels = [str(i) for i in range(cap)] + [f"{cap}+"]
    if ccc_count.isna().any():
        raise ValueError("ccc_count has missing values; cannot band it")
    vals = ccc_count.astype(int).clip(upper=cap)
    return pd.Categorical.from_codes(vals.to_numpy(), categories=labels, ordered=True)


def casemix_frame(episodes: pd.DataFrame) -> pd.DataFrame:
    """Return `episodes` with ``ccc_band`` added (if ``ccc_count`` is present and it is missing)."""
    if "ccc_band" not in episodes and "ccc_count" in episodes:
        episodes = episodes.copy()
        episodes["ccc_band"] = ccc_band(episodes["ccc_count"])
    return episodes


@dataclass(frozen=True)
class _Term:
    """How one covariate enters the design matrix."""

    name: str
    kind: Literal["binary", "category", "numeric"]
    levels: tuple = ()
    reference: object = None

    def columns(self) -> list[str]:
        if self.kind == "category":
            return [f"{self.name}[{lv}]" for lv in self.levels if lv != self.reference]
        return [self.name]


def _make_term(name: str, x: pd.Series) -> _Term:
    if x.isna().any():
        raise ValueError(f"covariate {name!r} has {int(x.isna().sum())} missing values")
    if pd.api.types.is_bool_dtype(x):
        if x.nunique() < 2:
            raise ValueError(f"covariate {name!r} has a single level ({x.iloc[0]!r}) in the fitting data")
        return _Term(name, "binary")
    if pd.api.types.is_numeric_dtype(x) and not isinstance(x.dtype, pd.CategoricalDtype):
        if x.nunique() < 2:
            raise ValueError(f"covariate {name!r} is constant in the fitting data")
        return _Term(name, "numeric")
    observed = pd.Series(x.astype(object)).value_counts()
    if len(observed) < 2:
        raise ValueError(f"covariate {name!r} has a single level ({observed.index[0]!r}) in the fitting data")
    if isinstance(x.dtype, pd.CategoricalDtype):
        levels = tuple(lv for lv in x.cat.categories if lv in observed.index)
    else:
        levels = tuple(sorted(observed.index, key=str))
    reference = observed.idxmax()  # most common level = reference
    return _Term(name, "category", levels, reference)


def _design(df: pd.DataFrame, terms: Sequence[_Term], unseen: str) -> tuple[np.ndarray, list[str], dict]:
    cols = [np.ones(len(df))]
    names = ["Intercept"]
    pooled: dict[str, list] = {}
    for t in terms:
        if t.name not in df:
            raise ValueError(f"covariate column {t.name!r} is missing from episodes")
        x = df[t.name]
        if x.isna().any():
            raise ValueError(f"covariate {t.name!r} has {int(x.isna().sum())} missing values")
        if t.kind == "binary" or t.kind == "numeric":
            cols.append(x.astype(float).to_numpy())
        else:
            xo = x.astype(object)
            new = sorted(set(xo.unique()) - set(t.levels), key=str)
            if new:
                if unseen == "error":
                    raise ValueError(
                        f"covariate {t.name!r} has levels not seen when fitting the case-mix model: "
                        f"{new}; refit including them or use unseen='reference' to pool them with "
                        f"the reference level {t.reference!r}"
                    )
                pooled[t.name] = new
                xo = xo.where(xo.isin(t.levels), t.reference)
            for lv in t.levels:
                if lv != t.reference:
                    cols.append((xo == lv).to_numpy(dtype=float))
        names.extend(t.columns())
    return np.column_stack(cols), names, pooled


def c_statistic(y: np.ndarray, p: np.ndarray) -> float:
    """Concordance (area under the ROC curve) of predictions `p` for binary `y` (ties count 1/2)."""
    y = np.asarray(y, dtype=bool)
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    ranks = stats.rankdata(p)
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def calibration_table(y: np.ndarray, p: np.ndarray, groups: int = 10) -> pd.DataFrame:
    """Observed vs expected events by group of predicted risk (deciles by default)."""
    y = np.asarray(y, dtype=float)
    p = np.asarray(p, dtype=float)
    order = np.argsort(p, kind="mergesort")
    g = np.empty(len(p), dtype=int)
    g[order] = np.arange(len(p)) * groups // len(p)
    df = pd.DataFrame({"group": g + 1, "y": y, "p": p})
    out = df.groupby("group").agg(
        episodes=("y", "size"), observed=("y", "sum"), expected=("p", "sum"),
        mean_predicted=("p", "mean"), min_predicted=("p", "min"), max_predicted=("p", "max"),
    )
    out["observed_rate"] = out["observed"] / out["episodes"]
    return out.reset_index()


def hosmer_lemeshow(y: np.ndarray, p: np.ndarray, groups: int = 10) -> dict[str, float]:
    """Hosmer-Lemeshow goodness-of-fit test over `groups` groups of predicted risk (df = g - 2)."""
    t = calibration_table(y, p, groups)
    n, o, e = t["episodes"], t["observed"], t["expected"]
    stat = float((((o - e) ** 2) / (e * (1 - e / n))).sum())
    df = len(t) - 2
    return {"statistic": stat, "df": df, "p_value": float(stats.chi2.sf(stat, df))}


@dataclass
class CaseMixModel:
    """A fitted case-mix logistic regression for one SAM outcome.

    Attributes: ``outcome``; ``covariates``; ``n`` episodes and ``events`` used for fitting
    (``crude_rate`` = events / n);
    ``baseline_only``; ``c_statistic`` (in the fitting data); ``hosmer_lemeshow`` (dict: statistic,
    df, p_value); ``calibration`` (frame by decile of predicted risk); ``result`` (statsmodels GLM
    results); ``notes`` (diagnostics, e.g. levels without events).
    """

    outcome: str
    covariates: tuple[str, ...]
    terms: tuple[_Term, ...]
    result: object
    n: int
    events: int
    baseline_only: bool
    c_statistic: float
    hosmer_lemeshow: dict
    calibration: pd.DataFrame
    unseen: str = "error"
    crude_rate: float = float("nan")
    notes: list[str] = field(default_factory=list)
    pooled: dict = field(default_factory=dict)

    @property
    def params(self) -> pd.Series:
        return self.result.params

    def predict(self, episodes: pd.DataFrame) -> pd.Series:
        """Expected probability of the outcome for each episode (index aligned with `episodes`)."""
        df = casemix_frame(episodes)
        X, _, pooled = _design(df, self.terms, self.unseen)
        if pooled:
            self.pooled.update(pooled)
        p = self.result.predict(X)
        return pd.Series(np.asarray(p), index=episodes.index, name=f"expected_{self.outcome}")

    def summary(self, level: float = 0.95) -> pd.DataFrame:
        """Coefficient table: term, coefficient (log-odds), SE, odds ratio with CI, p-value."""
        r = self.result
        ci = np.asarray(r.conf_int(alpha=1 - level))
        return pd.DataFrame({
            "term": r.params.index,
            "coef": np.asarray(r.params),
            "se": np.asarray(r.bse),
            "odds_ratio": np.exp(np.asarray(r.params)),
            "or_lower": np.exp(ci[:, 0]),
            "or_upper": np.exp(ci[:, 1]),
            "p_value": np.asarray(r.pvalues),
        })

    def diagnostics(self) -> pd.DataFrame:
        """One-row frame: n, events, c-statistic, Hosmer-Lemeshow statistic/df/p."""
        return pd.DataFrame([{
            "outcome": self.outcome, "n": self.n, "events": self.events,
            "baseline_only": self.baseline_only, "c_statistic": self.c_statistic,
            "hl_statistic": self.hosmer_lemeshow["statistic"], "hl_df": self.hosmer_lemeshow["df"],
            "hl_p_value": self.hosmer_lemeshow["p_value"],
        }])

    def plot(self, ax=None):
        """Calibration plot: observed vs mean predicted risk by decile, per 100 episodes."""
        ax = new_axes(ax, figsize=(5, 5))
        t = self.calibration
        ax.plot(100 * t["mean_predicted"], 100 * t["observed_rate"], "o-", color=PALETTE["observed"])
        hi = 100 * max(t["mean_predicted"].max(), t["observed_rate"].max()) * 1.05
        ax.plot([0, hi], [0, hi], ls="--", color=PALETTE["limit"])
        ax.set_xlabel("Predicted risk (per 100 episodes)")
        ax.set_ylabel("Observed rate (per 100 episodes)")
        ax.set_title(f"Calibration, {self.outcome} (c = {self.c_statistic:.3f})")
        return ax


def fit_casemix_model(
    episodes: pd.DataFrame,
    outcome: str = "sam30",
    *,
    covariates: Sequence[str] = DEFAULT_CASEMIX,
    baseline_only: bool = True,
    unseen: Literal["error", "reference"] = "error",
) -> CaseMixModel:
    """Fit a case-mix logistic model for `outcome` (a bool column, e.g. ``sam3``/``sam30``).

    By default only baseline episodes (``post == False``; needs :func:`analysis.derive.attach_sites`)
    are used. Categorical covariates use their most common level as the reference; bool covariates
    enter as 0/1; other numeric covariates linearly. Raises ``ValueError`` for a missing column, no
    baseline episodes, no events (or no non-events), or a covariate with a single level.
    """
    if outcome not in episodes:
        raise ValueError(f"outcome column {outcome!r} is missing (run derive_episodes first)")
    if unseen not in ("error", "reference"):
        raise ValueError(f"unseen must be 'error' or 'reference' (got {unseen!r})")
    covariates = tuple(covariates)
    if not covariates:
        raise ValueError("at least one case-mix covariate is needed")
    df = casemix_frame(episodes)
    missing = [c for c in covariates if c not in df]
    if missing:
        raise ValueError(f"case-mix covariate columns missing from episodes: {missing}")
    if baseline_only:
        if "post" not in df:
            raise ValueError("baseline_only=True needs a 'post' column (run attach_sites first)")
        undefined = df["post"].isna()
        if "go_live" in df:
            undefined |= df["go_live"].isna()
        if undefined.any():
            bad = sorted(df.loc[undefined, "site_id"].astype(str).unique()) if "site_id" in df else []
            raise ValueError(f"'post' is undefined (no go-live date) for sites {bad}")
        df = df[~df["post"].astype(bool)]
        if df.empty:
            raise ValueError("no baseline (post == False) episodes to fit the case-mix model on")
    if df[outcome].isna().any():
        raise ValueError(f"outcome {outcome!r} has missing values")
    y = df[outcome].astype(float).to_numpy()
    events = int(y.sum())
    if events == 0:
        raise ValueError(f"outcome {outcome!r} has no events in the fitting data; cannot fit a model")
    if events == len(y):
        raise ValueError(f"outcome {outcome!r} is an event for every episode in the fitting data")
    terms = tuple(_make_term(c, df[c]) for c in covariates)
    X, names, _ = _design(df, terms, "error")
    notes = []
    for t in terms:
        if t.kind == "category":
            ev = df.groupby(df[t.name].astype(object))[outcome].sum()
            empty = [lv for lv in t.levels if ev.get(lv, 0) == 0]
            if empty:
                notes.append(f"{t.name}: levels with no events in fitting data {empty} (OR tends to 0)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = sm.GLM(y, pd.DataFrame(X, columns=names), family=sm.families.Binomial()).fit()
    if not res.converged:
        notes.append("GLM did not converge")
    p = np.asarray(res.fittedvalues)
    return CaseMixModel(
        outcome=outcome, covariates=covariates, terms=terms, result=res, n=len(y), events=events,
        baseline_only=baseline_only, c_statistic=c_statistic(y, p),
        hosmer_lemeshow=hosmer_lemeshow(y, p), calibration=calibration_table(y, p),
        unseen=unseen, crude_rate=events / len(y), notes=notes,
    )


# --------------------------------------------------------------------------------------------
# Observed / expected
# --------------------------------------------------------------------------------------------


def _oe_table(g: pd.DataFrame, level: float, reference_rate: float, per: float) -> pd.DataFrame:
    """Add O/E, both CI methods and risk-adjusted rates to a frame with observed/expected."""
    o, e = g["observed"].to_numpy(float), g["expected"].to_numpy(float)
    _check_oe(o, e)
    g["oe"] = o / e
    g["oe_exact_lower"], g["oe_exact_upper"] = exact_poisson_ci(o, e, level)
    g["oe_byar_lower"], g["oe_byar_upper"] = byar_ci(o, e, level)
    g["crude_rate"] = per * o / g["episodes"]
    g["expected_rate"] = per * e / g["episodes"]
    g["ra_rate"] = g["oe"] * per * reference_rate
    g["ra_rate_lower"] = g["oe_exact_lower"] * per * reference_rate
    g["ra_rate_upper"] = g["oe_exact_upper"] * per * reference_rate
    return g


def observed_expected(
    episodes: pd.DataFrame,
    model: CaseMixModel,
    by: Sequence[str] | str | None = ("site_id", "post"),
    *,
    level: float = 0.95,
    per: float = 100.0,
    reference_rate: float | None = None,
) -> pd.DataFrame:
    """Observed and expected deaths, O/E with exact and Byar CIs, and risk-adjusted rates.

    Columns: the `by` columns, ``episodes``, ``observed``, ``expected``, ``oe``,
    ``oe_exact_lower/upper`` (exact Poisson, Garwood), ``oe_byar_lower/upper`` (Byar),
    ``crude_rate``, ``expected_rate`` and ``ra_rate`` (+ exact CI) per `per` (100) episodes.
    The risk-adjusted rate is O/E x `reference_rate`, which defaults to the crude rate of the
    model's fitting data (the collaborative's baseline), so rates are comparable across calls and
    subsets. ``by=None`` gives one row for all episodes.
    """
    by = [by] if isinstance(by, str) else list(by or [])
    missing = [c for c in by if c not in episodes]
    if missing:
        raise ValueError(f"grouping columns missing from episodes: {missing}")
    y = episodes[model.outcome].astype(float)
    df = pd.DataFrame({"observed": y, "expected": model.predict(episodes)})
    for c in by:
        df[c] = episodes[c]
    if reference_rate is None:
        reference_rate = model.crude_rate
    if by:
        g = df.groupby(by, observed=True, dropna=False).agg(
            episodes=("observed", "size"), observed=("observed", "sum"), expected=("expected", "sum")
        ).reset_index()
    else:
        g = pd.DataFrame([{"episodes": len(df), "observed": y.sum(), "expected": df["expected"].sum()}])
    g["observed"] = g["observed"].astype(int)
    return _oe_table(g, level, reference_rate, per)


# --------------------------------------------------------------------------------------------
# Funnel plot
# --------------------------------------------------------------------------------------------


def poisson_funnel_limit(expected: np.ndarray | float, p: float, target: float = 1.0) -> np.ndarray:
    """Exact Poisson control limit for O/E at probability `p` (e.g. 0.975, 0.025), interpolated.

    Spiegelhalter (2005, appendix A.1.1): r_p is the p-quantile of Poisson(target * E) (smallest r
    with F(r) >= p), alpha = (F(r_p) - p) / (F(r_p) - F(r_p - 1)), limit = (r_p - alpha) / E.
    """
    e = np.asarray(expected, dtype=float)
    if np.any(e <= 0):
        raise ValueError("expected must be > 0 for funnel limits")
    mu = target * e
    r = stats.poisson.ppf(p, mu)
    f_r = stats.poisson.cdf(r, mu)
    f_r1 = stats.poisson.cdf(r - 1, mu)
    alpha = (f_r - p) / (f_r - f_r1)
    return (r - alpha) / e


def overdispersion(
    z: np.ndarray, s: np.ndarray, winsor: float = 0.1
) -> dict[str, float]:
    """Spiegelhalter (2005, section 6) additive random-effects over-dispersion estimate.

    z-scores are winsorised at the `winsor` and 1 - `winsor` quantiles (linear interpolation,
    numpy/R type 7); phi = mean(z_w^2); with weights w = 1/s^2,
    tau^2 = (n phi - (n - 1)) / (sum w - sum w^2 / sum w) if n phi > n - 1, else 0.
    Returns n, phi, tau2, the chi-square test of phi (n phi on n - 1 df) p-value.
    """
    z = np.asarray(z, dtype=float)
    s = np.asarray(s, dtype=float)
    n = len(z)
    if n < 3:
        raise ValueError(f"over-dispersion needs at least 3 units (got {n})")
    lo, hi = np.quantile(z, [winsor, 1 - winsor])
    zw = np.clip(z, lo, hi)
    phi = float(np.mean(zw**2))
    w = 1 / s**2
    if n * phi > n - 1:
        tau2 = float((n * phi - (n - 1)) / (w.sum() - (w**2).sum() / w.sum()))
    else:
        tau2 = 0.0
    return {"n": n, "phi": phi, "tau2": tau2, "p_value": float(stats.chi2.sf(n * phi, n - 1)),
            "winsor_lower": float(lo), "winsor_upper": float(hi)}


_SCALES = {
    # transform g, inverse, standard error of g(O/E) under the null (target 1) given E
    "sqrt": (np.sqrt, np.square, lambda e: 1 / (2 * np.sqrt(e))),
    "identity": (lambda x: x, lambda x: x, lambda e: 1 / np.sqrt(e)),
}


@dataclass
class Funnel:
    """Funnel-plot data for sites' O/E against expected deaths.

    ``data`` columns: site (label), observed, expected, oe, lower95/upper95 and lower998/upper998
    (exact Poisson limits at the site's expected), z (on `scale`), and if over-dispersion is
    estimated and tau2 > 0: od_lower95/od_upper95/od_lower998/od_upper998 and z_od. Flags
    ``outlier95``/``outlier998`` are "high", "low" or "" against the limits in use (OD-adjusted
    if ``adjusted``).
    """

    data: pd.DataFrame
    phi: float
    tau2: float
    overdispersion_p: float
    adjusted: bool
    scale: str
    level_inner: float = 0.95
    level_outer: float = 0.998
    highlight: str | None = None

    def summary(self) -> pd.DataFrame:
        return self.data.copy()

    def limits_curve(self, expected: np.ndarray) -> pd.DataFrame:
        """Limits on a grid of expected deaths (for drawing the funnel)."""
        e = np.asarray(expected, dtype=float)
        out = pd.DataFrame({"expected": e})
        for lv, tag in ((self.level_inner, "95"), (self.level_outer, "998")):
            a = (1 - lv) / 2
            out[f"lower{tag}"] = poisson_funnel_limit(e, a)
            out[f"upper{tag}"] = poisson_funnel_limit(e, 1 - a)
            if self.adjusted:
                out[f"od_lower{tag}"], out[f"od_upper{tag}"] = _od_limits(e, lv, self.tau2, self.scale)
        return out

    def plot(self, ax=None, highlight: str | None = None, label_outliers: bool = True):
        return funnel_plot(self, ax=ax, highlight=highlight, label_outliers=label_outliers)


def _od_limits(e: np.ndarray, level: float, tau2: float, scale: str) -> tuple[np.ndarray, np.ndarray]:
    g, ginv, se = _SCALES[scale]
    z = _z(level)
    sd = np.sqrt(se(e) ** 2 + tau2)
    lo = g(1.0) - z * sd
    if scale == "sqrt":
        lo = np.maximum(lo, 0.0)
    return ginv(lo), ginv(g(1.0) + z * sd)


def funnel_from_counts(
    units: Sequence, observed: Sequence[float], expected: Sequence[float], *,
    overdispersion_adjust: bool = True, winsor: float = 0.1, scale: Literal["sqrt", "identity"] = "sqrt",
    levels: tuple[float, float] = (0.95, 0.998),
) -> Funnel:
    """Funnel data from per-unit observed and expected counts (target O/E = 1).

    `scale` is the scale of the z-scores and over-dispersion model: ``"sqrt"`` (square-root of O/E,
    s = 1 / (2 sqrt E); Spiegelhalter et al. 2012) or ``"identity"`` (O/E, s = 1 / sqrt E;
    Spiegelhalter 2005). Unadjusted limits are always exact Poisson limits.
    """
    if scale not in _SCALES:
        raise ValueError(f"scale must be one of {sorted(_SCALES)} (got {scale!r})")
    o, e = _check_oe(observed, expected)
    df = pd.DataFrame({"site": list(units), "observed": o, "expected": e})
    if df["site"].duplicated().any():
        raise ValueError("unit labels must be unique in a funnel plot")
    df["oe"] = o / e
    for lv, tag in ((levels[0], "95"), (levels[1], "998")):
        a = (1 - lv) / 2
        df[f"lower{tag}"] = poisson_funnel_limit(e, a)
        df[f"upper{tag}"] = poisson_funnel_limit(e, 1 - a)
    g, _, se = _SCALES[scale]
    s = se(e)
    df["z"] = (g(df["oe"].to_numpy()) - g(1.0)) / s
    phi, tau2, p_od = np.nan, 0.0, np.nan
    if overdispersion_adjust:
        od = overdispersion(df["z"].to_numpy(), s, winsor)
        phi, tau2, p_od = od["phi"], od["tau2"], od["p_value"]
    adjusted = overdispersion_adjust and tau2 > 0
    if adjusted:
        for lv, tag in ((levels[0], "95"), (levels[1], "998")):
            df[f"od_lower{tag}"], df[f"od_upper{tag}"] = _od_limits(e, lv, tau2, scale)
        df["z_od"] = (g(df["oe"].to_numpy()) - g(1.0)) / np.sqrt(s**2 + tau2)
    pre = "od_" if adjusted else ""
    for tag in ("95", "998"):
        df[f"outlier{tag}"] = np.select(
            [df["oe"] > df[f"{pre}upper{tag}"], df["oe"] < df[f"{pre}lower{tag}"]], ["high", "low"], ""
        )
    return Funnel(df, phi, tau2, p_od, adjusted, scale, levels[0], levels[1])


def funnel_data(
    episodes: pd.DataFrame,
    model: CaseMixModel,
    *,
    site: str = "site_id",
    labels: dict | None = None,
    overdispersion_adjust: bool = True,
    winsor: float = 0.1,
    scale: Literal["sqrt", "identity"] = "sqrt",
) -> Funnel:
    """Funnel data of site O/E (all `episodes` passed; filter the period first).

    `labels` maps site ids to the labels shown (e.g. pseudonyms); sites without a label raise
    ``ValueError`` so real identifiers are never shown by accident.
    """
    oe = observed_expected(episodes, model, by=[site])
    units = oe[site]
    if labels is not None:
        unlabelled = sorted(set(units) - set(labels), key=str)
        if unlabelled:
            raise ValueError(f"no label supplied for sites {unlabelled}")
        units = units.map(labels)
    return funnel_from_counts(units, oe["observed"], oe["expected"],
                              overdispersion_adjust=overdispersion_adjust, winsor=winsor, scale=scale)


def funnel_plot(funnel: Funnel, *, ax=None, highlight: str | None = None, label_outliers: bool = True):
    """Draw the funnel: O/E against expected deaths with 95% / 99.8% limits. Returns Axes."""
    ax = new_axes(ax)
    d = funnel.data
    e_max = d["expected"].max() * 1.1
    grid = np.linspace(max(d["expected"].min() * 0.5, 0.2), e_max, 300)
    c = funnel.limits_curve(grid)
    pre = "od_" if funnel.adjusted else ""
    for tag, ls in (("95", "--"), ("998", "-")):
        ax.plot(c["expected"], c[f"{pre}lower{tag}"], ls=ls, color=PALETTE["limit"], lw=1)
        lv = funnel.level_inner if tag == "95" else funnel.level_outer
        lab = f"{lv * 100:g}% limits"
        ax.plot(c["expected"], c[f"{pre}upper{tag}"], ls=ls, color=PALETTE["limit"], lw=1, label=lab)
    ax.axhline(1.0, color=PALETTE["fitted"], lw=1)
    ax.scatter(d["expected"], d["oe"], color=PALETTE["observed"], s=25, zorder=3)
    highlight = highlight if highlight is not None else funnel.highlight
    if highlight is not None:
        if highlight not in set(d["site"]):
            raise ValueError(f"site to highlight {highlight!r} is not among the funnel's sites")
        h = d[d["site"] == highlight]
        ax.scatter(h["expected"], h["oe"], color=PALETTE["highlight"], s=80, zorder=4, label=str(highlight))
    if label_outliers:
        for _, r in d[d["outlier998"] != ""].iterrows():
            ax.annotate(str(r["site"]), (r["expected"], r["oe"]), fontsize=8,
                        xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("Expected deaths")
    ax.set_ylabel("Observed / expected")
    title = "Funnel plot of risk-adjusted mortality"
    if funnel.adjusted:
        title += f" (over-dispersion adjusted, tau\u00b2 = {funnel.tau2:.3g})"
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=8)
    return ax


# --------------------------------------------------------------------------------------------
# O/E over time
# --------------------------------------------------------------------------------------------


def oe_over_time(
    episodes: pd.DataFrame,
    model: CaseMixModel,
    *,
    site=None,
    freq: str = "Q",
    site_col: str = "site_id",
    level: float = 0.95,
    label: str | None = None,
) -> pd.DataFrame:
    """Risk-adjusted mortality (O/E with exact and Byar CIs) by calendar period (``freq``: "Q"
    quarter, "M" month, "Y" year). Rows for the collaborative (``unit == "collaborative"``) and,
    if `site` is given, for that site (``unit`` = `label` or the site id). ``period`` is the start
    of the period (Timestamp)."""
    if freq not in ("Q", "M", "Y"):
        raise ValueError(f"freq must be 'Q', 'M' or 'Y' (got {freq!r})")
    time = episodes["month"] if "month" in episodes else episodes["time_zero"]
    df = episodes.assign(period=pd.to_datetime(time).dt.to_period(freq).dt.to_timestamp())
    if df["period"].nunique() < 2:
        raise ValueError("oe_over_time needs episodes in at least two periods")
    frames = []
    units = [("collaborative", df)]
    if site is not None:
        sub = df[df[site_col] == site]
        if sub.empty:
            raise ValueError(f"site {site!r} has no episodes")
        units.append((label if label is not None else str(site), sub))
    for name, d in units:
        t = observed_expected(d, model, by=["period"], level=level)
        t.insert(0, "unit", name)
        frames.append(t)
    return pd.concat(frames, ignore_index=True)


def plot_oe_over_time(table: pd.DataFrame, *, ax=None, method: Literal["exact", "byar"] = "exact"):
    """Plot O/E by period with CIs for each unit in an :func:`oe_over_time` table. Returns Axes."""
    ax = new_axes(ax)
    colours = [PALETTE["fitted"], PALETTE["highlight"], PALETTE["post"]]
    for i, (unit, d) in enumerate(table.groupby("unit", sort=False)):
        col = colours[i % len(colours)]
        ax.plot(d["period"], d["oe"], "o-", color=col, label=str(unit), ms=4)
        ax.fill_between(d["period"], d[f"oe_{method}_lower"], d[f"oe_{method}_upper"], color=col, alpha=0.15)
    ax.axhline(1.0, color=PALETTE["limit"], ls="--", lw=1)
    ax.set_ylabel("Observed / expected deaths")
    ax.set_xlabel("Period")
    ax.set_title("Risk-adjusted mortality over time")
    ax.legend(fontsize=8)
    return ax

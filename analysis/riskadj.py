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
3. :func:`funnel_data` / :func:`funnel_plot`: funnel plot of site O/E against expected deaths in
   a stated period, centred on that period's collaborative O/E (not 1), with exact Poisson 95%
   and 99.8% limits (Spiegelhalter 2005, Stat Med 24:1185, appendix A.1.1); limits widened by the
   additive random-effects over-dispersion adjustment (Spiegelhalter 2005 section 6;
   Spiegelhalter et al. 2012, JRSS-A 175:1: winsorised z-scores, phi, DerSimonian-Laird tau^2)
   only when the over-dispersion test says so; a hospital is flagged only outside 99.8%, and the
   result says how many flags chance alone would give. The plot is drawn from ratios and rounded
   expected deaths (:class:`FunnelPlotData`), never from observed counts.
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
    """Spiegelhalter (2005, section 6) over-dispersion estimate and test.

    z-scores are winsorised at the `winsor` and 1 - `winsor` quantiles (linear interpolation,
    numpy/R type 7); phi = mean(z_w^2) (multiplicative over-dispersion factor); with weights
    w = 1/s^2, the additive random-effects variance (DerSimonian-Laird form)
    tau^2 = (n phi - (n - 1)) / (sum w - sum w^2 / sum w) if n phi > n - 1, else 0.
    Test of no over-dispersion: n phi against chi-square on n - 1 df (the target is estimated
    from the same units); ``p_value`` is its upper tail.
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


# transform g of O/E, its inverse, and the SE of g(O/E) for O ~ Poisson(target E)
_SCALES = {
    "sqrt": (np.sqrt, np.square, lambda e, t: 1 / (2 * np.sqrt(e))),
    "identity": (lambda x: x, lambda x: x, lambda e, t: np.sqrt(t / e)),
}

#: How the over-dispersion adjustment is chosen (see :func:`funnel_from_counts`).
OD_RULE = ("over-dispersion test (Spiegelhalter 2005): winsorised (10%) z-scores on the square-root "
           "scale, n * phi against chi-square on n - 1 df; limits are widened by the additive "
           "random-effects variance tau^2 (DerSimonian-Laird) only when p < 0.05")


@dataclass
class Funnel:
    """Funnel-plot data: units' O/E against expected deaths around a target ratio.

    ``data`` columns: site (label), observed, expected, oe, ratio_to_target (O/E / target),
    lower95/upper95 and lower998/upper998 (exact Poisson limits around the target at the unit's
    expected), z (on `scale`), and when the limits are adjusted for over-dispersion
    od_lower95/od_upper95/od_lower998/od_upper998 and z_od. ``flag`` is "high", "low" or ""
    against the outer (99.8%) limits in use (over-dispersion-adjusted if ``adjusted``): a unit is
    flagged only outside them. ``outlier95``/``outlier998`` hold the same test at each level
    (``outlier998`` equals ``flag``); outside 95% alone is never a flag.

    ``target``: the centre (by default the collaborative's O/E in the same period, sum O / sum
    E); ``phi``/``tau2``: multiplicative and additive over-dispersion estimates; ``od_p``: the
    over-dispersion test's p-value; ``adjusted``: whether the limits are widened; ``od_model``:
    "additive" or "multiplicative"; ``expected_flags``: units expected outside the outer limits
    by chance alone (n x (1 - level_outer)).
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
    target: float = 1.0
    target_kind: str = "fixed"
    od_model: str = "additive"
    od_rule: str = OD_RULE
    period: str | None = None

    @property
    def n_units(self) -> int:
        return len(self.data)

    @property
    def expected_flags(self) -> float:
        """Units expected outside the outer limits by chance alone (no true differences)."""
        return self.n_units * (1 - self.level_outer)

    @property
    def n_flagged(self) -> int:
        return int((self.data["flag"] != "").sum())

    def summary(self) -> pd.DataFrame:
        return self.data.copy()

    def limits_curve(self, expected: np.ndarray) -> pd.DataFrame:
        """Limits in use (and the exact Poisson ones) on a grid of expected deaths."""
        return _limits_frame(np.asarray(expected, dtype=float), self.target, self.adjusted,
                             self.od_model, self.tau2, self.phi, self.scale,
                             (self.level_inner, self.level_outer))

    def plot_data(self, x_step: float | None = 5.0, ratio_decimals: int = 2) -> FunnelPlotData:
        """What a funnel plot needs, without observed counts: each unit's O/E (rounded to
        `ratio_decimals`), its expected deaths rounded to the nearest `x_step` (at least
        `x_step`; ``None`` keeps them exact, for internal use only) and its flag. Observed counts
        cannot be recovered exactly from a rounded ratio times a rounded expected count; the
        limit curves depend only on expected deaths and the target. Flags come from the exact
        data, so a point close to a limit may sit slightly on the other side of the drawn curve."""
        d = self.data
        x = d["expected"].to_numpy(float)
        if x_step is not None:
            if not x_step > 0:
                raise ValueError(f"x_step must be positive, got {x_step!r}")
            x = np.maximum(np.round(x / x_step) * x_step, x_step)
        pts = pd.DataFrame({"label": d["site"].astype(str).to_numpy(),
                            "ratio": np.round(d["oe"].to_numpy(float), ratio_decimals),
                            "x": x, "flag": d["flag"].to_numpy()})
        return FunnelPlotData(points=pts, target=self.target, target_kind=self.target_kind,
                              adjusted=self.adjusted, od_model=self.od_model, tau2=self.tau2,
                              phi=self.phi, scale=self.scale,
                              levels=(self.level_inner, self.level_outer), x_step=x_step,
                              period=self.period)

    def caption(self) -> str:
        return self.plot_data().caption()

    def plot(self, ax=None, highlight: str | None = None, label_outliers: bool = True,
             x_step: float | None = 5.0):
        return funnel_plot(self, ax=ax, highlight=highlight, label_outliers=label_outliers,
                           x_step=x_step)


@dataclass
class FunnelPlotData:
    """A drawable funnel without counts: ``points`` (label, ratio = O/E, x = expected deaths
    rounded, flag) and the parameters of the limit curves. Build it with
    :meth:`Funnel.plot_data`, or from suppressed aggregates (ratios, rounded expected deaths and
    flags computed upstream) with the same columns."""

    points: pd.DataFrame
    target: float
    adjusted: bool
    tau2: float
    phi: float
    scale: str = "sqrt"
    od_model: str = "additive"
    levels: tuple[float, float] = (0.95, 0.998)
    x_step: float | None = 5.0
    target_kind: str = "collaborative"
    period: str | None = None

    def __post_init__(self):
        need = {"label", "ratio", "x", "flag"}
        if not need <= set(self.points.columns):
            raise ValueError(f"points need columns {sorted(need)}")
        if not (np.isfinite(self.target) and self.target > 0):
            raise ValueError(f"target must be a positive ratio, got {self.target!r}")

    def limits_curve(self, expected: np.ndarray) -> pd.DataFrame:
        return _limits_frame(np.asarray(expected, dtype=float), self.target, self.adjusted,
                             self.od_model, self.tau2, self.phi, self.scale, self.levels)

    def caption(self) -> str:
        """What a point is, the centre, the over-dispersion decision and the flags expected by
        chance alone."""
        n = len(self.points)
        centre = "collaborative" if self.target_kind == "collaborative" else "target"
        od = (f"Limits widened for over-dispersion ({self.od_model}, tau\u00b2 = {self.tau2:.3g})"
              if self.adjusted else "No over-dispersion adjustment (test not significant)")
        return (f"Each point is one hospital. Centre: the {centre}'s O/E = {self.target:.2f}. {od}. "
                f"A hospital is flagged only outside the {self.levels[1] * 100:g}% limits; with {n} "
                f"hospitals, about {n * (1 - self.levels[1]):.1f} would fall outside them by "
                "chance alone.")


def _od_limits(e: np.ndarray, level: float, target: float, tau2: float, phi: float, scale: str,
               model: str) -> tuple[np.ndarray, np.ndarray]:
    g, ginv, se = _SCALES[scale]
    z = _z(level)
    s = se(e, target)
    sd = np.sqrt(s**2 + tau2) if model == "additive" else np.sqrt(max(phi, 1.0)) * s
    lo = g(target) - z * sd
    if scale == "sqrt":
        lo = np.maximum(lo, 0.0)
    return np.maximum(ginv(lo), 0.0), ginv(g(target) + z * sd)


def _limits_frame(e, target, adjusted, model, tau2, phi, scale, levels) -> pd.DataFrame:
    out = pd.DataFrame({"expected": e})
    for lv, tag in zip(levels, ("95", "998")):
        a = (1 - lv) / 2
        out[f"lower{tag}"] = poisson_funnel_limit(e, a, target)
        out[f"upper{tag}"] = poisson_funnel_limit(e, 1 - a, target)
        if adjusted:
            out[f"od_lower{tag}"], out[f"od_upper{tag}"] = _od_limits(e, lv, target, tau2, phi,
                                                                      scale, model)
    return out


def funnel_from_counts(
    units: Sequence, observed: Sequence[float], expected: Sequence[float], *,
    target: Literal["collaborative"] | float = "collaborative",
    overdispersion_adjust: Literal["test"] | bool = "test",
    od_model: Literal["additive", "multiplicative"] = "additive",
    od_alpha: float = 0.05,
    winsor: float = 0.1, scale: Literal["sqrt", "identity"] = "sqrt",
    levels: tuple[float, float] = (0.95, 0.998),
    period: str | None = None,
) -> Funnel:
    """Funnel data from per-unit observed and expected counts in one stated period.

    Centre (`target`): ``"collaborative"`` (default) is the units' pooled ratio sum O / sum E in
    the same period, so that after go-live a hospital is compared with its peers rather than with
    pre-IPSO expectations; a number (e.g. 1.0, the old behaviour) fixes it. Limits: exact Poisson
    limits for O ~ Poisson(target x E) at 95% and 99.8% (Spiegelhalter 2005, appendix A.1.1);
    a unit is flagged only outside the 99.8% limits.

    Over-dispersion (Spiegelhalter 2005 section 6; Spiegelhalter et al. 2012): z-scores on
    `scale` (``"sqrt"``: sqrt(O/E), SE 1/(2 sqrt E); ``"identity"``: O/E, SE sqrt(target/E)) are
    winsorised at `winsor`, phi = mean(z^2) and the DerSimonian-Laird tau^2 estimated.
    ``overdispersion_adjust="test"`` (default, :data:`OD_RULE`) widens the limits only when the
    chi-square test of n phi on n - 1 df has p < `od_alpha`; ``True`` widens them whenever the
    estimate exceeds its null value (tau^2 > 0, phi > 1); ``False`` never. ``od_model``:
    ``"additive"`` random effects (limits g(target) +/- z sqrt(s^2 + tau^2), the recommended
    default for units of different sizes) or ``"multiplicative"`` (g(target) +/- z sqrt(phi) s).
    """
    if scale not in _SCALES:
        raise ValueError(f"scale must be one of {sorted(_SCALES)} (got {scale!r})")
    if od_model not in ("additive", "multiplicative"):
        raise ValueError(f"od_model must be 'additive' or 'multiplicative' (got {od_model!r})")
    if overdispersion_adjust not in ("test", True, False):
        raise ValueError(f"overdispersion_adjust must be 'test', True or False (got {overdispersion_adjust!r})")
    if not 0 < od_alpha < 1:
        raise ValueError(f"od_alpha must be between 0 and 1 (got {od_alpha!r})")
    o, e = _check_oe(observed, expected)
    df = pd.DataFrame({"site": list(units), "observed": o, "expected": e})
    if df["site"].duplicated().any():
        raise ValueError("unit labels must be unique in a funnel plot")
    if isinstance(target, str):
        if target != "collaborative":
            raise ValueError(f"target must be 'collaborative' or a positive number (got {target!r})")
        theta, kind = float(o.sum() / e.sum()), "collaborative"
        if theta == 0:
            raise ValueError("no observed events in any unit: the collaborative ratio is 0")
    else:
        theta, kind = float(target), "fixed"
        if not (np.isfinite(theta) and theta > 0):
            raise ValueError(f"target must be a positive ratio (got {target!r})")
    df["oe"] = o / e
    df["ratio_to_target"] = df["oe"] / theta
    lim = _limits_frame(e, theta, False, od_model, 0.0, 1.0, scale, levels)
    for c in ("lower95", "upper95", "lower998", "upper998"):
        df[c] = lim[c].to_numpy()
    g, _, se = _SCALES[scale]
    s = se(e, theta)
    df["z"] = (g(df["oe"].to_numpy()) - g(theta)) / s
    phi, tau2, p_od = np.nan, 0.0, np.nan
    if len(df) >= 3:
        od = overdispersion(df["z"].to_numpy(), s, winsor)
        phi, tau2, p_od = od["phi"], od["tau2"], od["p_value"]
    if overdispersion_adjust == "test":
        adjusted = bool(np.isfinite(p_od) and p_od < od_alpha)
    else:
        adjusted = bool(overdispersion_adjust) and (tau2 > 0 if od_model == "additive" else phi > 1)
    if adjusted:
        lim = _limits_frame(e, theta, True, od_model, tau2, phi, scale, levels)
        for c in ("od_lower95", "od_upper95", "od_lower998", "od_upper998"):
            df[c] = lim[c].to_numpy()
        sd = np.sqrt(s**2 + tau2) if od_model == "additive" else np.sqrt(phi) * s
        df["z_od"] = (g(df["oe"].to_numpy()) - g(theta)) / sd
    pre = "od_" if adjusted else ""
    for tag in ("95", "998"):
        df[f"outlier{tag}"] = np.select(
            [df["oe"] > df[f"{pre}upper{tag}"], df["oe"] < df[f"{pre}lower{tag}"]], ["high", "low"], ""
        )
    df["flag"] = df["outlier998"]
    rule = OD_RULE if overdispersion_adjust == "test" else (
        "limits widened whenever the over-dispersion estimate exceeds its null value"
        if overdispersion_adjust else "no over-dispersion adjustment")
    if overdispersion_adjust == "test" and od_alpha != 0.05:
        rule = rule.replace("p < 0.05", f"p < {od_alpha:g}")
    return Funnel(df, phi, tau2, p_od, adjusted, scale, levels[0], levels[1], target=theta,
                  target_kind=kind, od_model=od_model, od_rule=rule, period=period)


def funnel_data(
    episodes: pd.DataFrame,
    model: CaseMixModel,
    *,
    site: str = "site_id",
    labels: dict | None = None,
    period: str | None = None,
    **kwargs,
) -> Funnel:
    """Funnel data of site O/E (all `episodes` passed; filter the period first and name it in
    `period`, e.g. "after go-live"). Other keyword arguments go to :func:`funnel_from_counts`
    (``target``, ``overdispersion_adjust``, ``od_model``, ``winsor``, ``scale`` ...).

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
    return funnel_from_counts(units, oe["observed"], oe["expected"], period=period, **kwargs)


def funnel_plot(funnel: Funnel | FunnelPlotData, *, ax=None, highlight: str | None = None,
                label_outliers: bool = True, x_step: float | None = 5.0):
    """Draw the funnel: O/E against expected deaths, centred on the target (the collaborative's
    ratio in the period), with 95% (dashed) and 99.8% (solid) limits. Only flagged units
    (outside 99.8%) and the highlighted unit are labelled; the caption states the centre, the
    over-dispersion rule and how many flags chance alone would give. Drawn from
    :class:`FunnelPlotData` (ratios and rounded expected deaths, no counts): a :class:`Funnel` is
    converted with ``plot_data(x_step)``. Returns the Axes."""
    pdata = funnel.plot_data(x_step) if isinstance(funnel, Funnel) else funnel
    if highlight is None and isinstance(funnel, Funnel):
        highlight = funnel.highlight
    ax = new_axes(ax, figsize=(7.5, 4.5))
    d = pdata.points
    step = pdata.x_step or 0.0
    e_max = max(d["x"].max() + step, 1.0) * 1.08
    grid = np.linspace(max(min(d["x"].min(), 1.0) * 0.5, 0.2), e_max, 300)
    c = pdata.limits_curve(grid)
    pre = "od_" if pdata.adjusted else ""
    for tag, ls, lv in (("95", "--", pdata.levels[0]), ("998", "-", pdata.levels[1])):
        ax.plot(c["expected"], c[f"{pre}lower{tag}"], ls=ls, color=PALETTE["limit"], lw=1)
        ax.plot(c["expected"], c[f"{pre}upper{tag}"], ls=ls, color=PALETTE["limit"], lw=1,
                label=f"{lv * 100:g}% limits")
    centre = ("collaborative" if pdata.target_kind == "collaborative" else "target")
    ax.axhline(pdata.target, color=PALETTE["fitted"], lw=1.2,
               label=f"{centre} O/E = {pdata.target:.2f}")
    if pdata.target != 1.0:
        ax.axhline(1.0, color=PALETTE["limit"], lw=0.8, ls=":", label="pre-IPSO expectation (1)")
    flagged = d["flag"].to_numpy() != ""
    ax.scatter(d.loc[~flagged, "x"], d.loc[~flagged, "ratio"], color=PALETTE["observed"], s=22,
               zorder=3, alpha=0.85)
    if flagged.any():
        ax.scatter(d.loc[flagged, "x"], d.loc[flagged, "ratio"], color=PALETTE["signal"], s=34,
                   zorder=3, marker="D", label="outside 99.8% limits")
    if highlight is not None:
        if highlight not in set(d["label"]):
            raise ValueError(f"site to highlight {highlight!r} is not among the funnel's sites")
        h = d[d["label"] == highlight]
        ax.scatter(h["x"], h["ratio"], facecolor="none", edgecolor=PALETTE["highlight"], s=110,
                   lw=2, zorder=4, label=str(highlight))
    if label_outliers:
        for _, r in d[flagged].iterrows():
            ax.annotate(str(r["label"]), (r["x"], r["ratio"]), fontsize=8, xytext=(4, 3),
                        textcoords="offset points")
    ymax = float(np.nanmax([d["ratio"].max(), c[f"{pre}upper95"].iloc[len(c) // 10],
                            pdata.target * 1.5]))
    ax.set_ylim(0, ymax * 1.08)
    ax.set_xlim(0, e_max)
    xl = "Expected deaths (case-mix model)"
    if pdata.x_step:
        xl += f", rounded to {pdata.x_step:g}"
    ax.set_xlabel(xl)
    ax.set_ylabel("Observed / expected deaths")
    title = "Risk-adjusted mortality by hospital"
    if pdata.period:
        title += f", {pdata.period}"
    ax.set_title(title)
    ax.annotate(pdata.caption(), xy=(0, 0), xycoords="axes fraction", xytext=(0, -36),
                textcoords="offset points", fontsize=7, color=PALETTE["text"], va="top", wrap=True)
    ax.legend(loc="upper right", fontsize=7)
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

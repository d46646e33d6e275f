"""Random-effects meta-analysis (pooling of per-site or per-study effects).

Implements the univariate random-effects model ``y_i = mu + u_i + e_i`` with
``u_i ~ N(0, tau2)`` and known sampling variances ``v_i = se_i**2``, following the
conventions of R's ``metafor::rma.uni`` (Viechtbauer 2010, J Stat Softw 36(3)):

* ``method="reml"``: restricted maximum likelihood, Fisher scoring as in metafor
  (step ``(Y'PPY - tr P) / tr(PP)``), SE of tau2 ``sqrt(2 / tr(PP))``.
* ``method="dl"``: DerSimonian-Laird method of moments.
* ``method="pm"``: Paule-Mandel (generalised Q equal to its expectation ``k - 1``).
* ``knha=True``: Knapp-Hartung adjustment (metafor ``test="knha"``): SE rescaled by the
  weighted residual mean square, t distribution with ``k - 1`` df for the CI, the test and
  the prediction interval.

Heterogeneity statistics use metafor's definitions: ``I2 = 100 * tau2 / (tau2 + s2)`` and
``H2 = (tau2 + s2) / s2`` with the "typical" within-study variance
``s2 = (k - 1) * sum(w) / (sum(w)**2 - sum(w**2))``, ``w = 1 / v``; Cochran's ``Q`` uses the
fixed-effect weights. Prediction interval: ``mu +/- crit * sqrt(SE**2 + tau2)``.

statsmodels' ``combine_effects`` covers DL and PM but not REML, Knapp-Hartung or prediction
intervals, hence this module (validated against metafor's BCG example in
``tests/test_pooling.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
from scipy import optimize, stats

from .plotting import PALETTE, new_axes

Method = Literal["reml", "dl", "pm"]

__all__ = ["PooledEstimate", "escalc_log_rr", "random_effects"]


@dataclass
class PooledEstimate:
    """Result of :func:`random_effects` (all estimates on the scale of the inputs, e.g. log RR)."""

    estimate: float
    se: float
    ci_low: float
    ci_high: float
    statistic: float
    df: float | None  # None for a z test; k - 1 under Knapp-Hartung
    p_value: float
    tau2: float
    tau2_se: float | None
    tau: float
    i2: float  # percent
    h2: float
    q: float
    q_df: int
    q_p: float
    pi_low: float
    pi_high: float
    k: int
    method: str
    knha: bool
    alpha: float
    studies: pd.DataFrame  # label, estimate, se, ci_low, ci_high, weight (percent)
    excluded: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=["label", "reason"])
    )
    converged: bool = True
    iterations: int = 0

    @property
    def weights(self) -> pd.Series:
        """Random-effects weights in percent, indexed by study label."""
        return self.studies.set_index("label")["weight"]

    def summary(self) -> pd.DataFrame:
        """One-row table of the pooled estimate and heterogeneity statistics."""
        level = round(100 * (1 - self.alpha))
        return pd.DataFrame(
            [
                {
                    "k": self.k,
                    "method": self.method.upper() + (" + KNHA" if self.knha else ""),
                    "estimate": self.estimate,
                    "se": self.se,
                    f"ci{level}_low": self.ci_low,
                    f"ci{level}_high": self.ci_high,
                    "t" if self.df is not None else "z": self.statistic,
                    "p": self.p_value,
                    "tau2": self.tau2,
                    "tau2_se": self.tau2_se,
                    "tau": self.tau,
                    "I2_percent": self.i2,
                    "H2": self.h2,
                    "Q": self.q,
                    "Q_df": self.q_df,
                    "Q_p": self.q_p,
                    f"pi{level}_low": self.pi_low,
                    f"pi{level}_high": self.pi_high,
                    "n_excluded": len(self.excluded),
                }
            ]
        )

    def forest_plot(
        self,
        ax=None,
        labels: Sequence[str] | None = None,
        exp: bool = True,
        xlabel: str | None = None,
    ):
        """Forest plot: studies with CIs (marker size ~ weight), pooled diamond, prediction
        interval and heterogeneity text. ``exp=True`` back-transforms log effects (ratios,
        log x-axis). Returns the matplotlib Axes."""
        st = self.studies
        k = len(st)
        ax = new_axes(ax, figsize=(8, 0.35 * (k + 4) + 1.2))
        tr = np.exp if exp else (lambda x: x)
        labs = list(labels) if labels is not None else list(st["label"].astype(str))
        if len(labs) != k:
            raise ValueError(f"labels has {len(labs)} entries but there are {k} studies")
        ys = np.arange(k, 0, -1) + 1.5
        sizes = 20 + 200 * st["weight"].to_numpy() / max(st["weight"].max(), 1e-12)
        ax.hlines(ys, tr(st["ci_low"]), tr(st["ci_high"]), color=PALETTE["observed"], lw=1.2)
        ax.scatter(tr(st["estimate"]), ys, s=sizes, marker="s", color=PALETTE["observed"], zorder=3)
        # pooled diamond and prediction interval
        yd = 0.5
        ax.fill(
            tr(np.array([self.ci_low, self.estimate, self.ci_high, self.estimate])),
            [yd, yd + 0.3, yd, yd - 0.3],
            color=PALETTE["fitted"],
            zorder=3,
        )
        ax.hlines(
            yd,
            tr(self.pi_low),
            tr(self.pi_high),
            color=PALETTE["band"],
            lw=2,
            zorder=2,
            label=f"{round(100 * (1 - self.alpha))}% prediction interval",
        )
        ax.axvline(tr(0.0), color=PALETTE["limit"], ls="--", lw=1)
        ax.set_yticks(list(ys) + [yd])
        ax.set_yticklabels(labs + ["RE model" + (" (KNHA)" if self.knha else "")])
        if exp:
            ax.set_xscale("log")
            plain_log_ticks(ax, "x")
        ax.set_xlabel(xlabel or ("Ratio (log scale)" if exp else "Estimate"))
        het = (
            f"{self.method.upper()}: tau\u00b2 = {self.tau2:.3g}, I\u00b2 = {self.i2:.1f}%, "
            f"Q({self.q_df}) = {self.q:.2f}, p = {self.q_p:.3g}"
        )
        if len(self.excluded):
            het += f"; {len(self.excluded)} excluded"
        ax.set_title(het, fontsize=9, fontweight="normal")
        ax.legend(loc="lower right", fontsize=8, frameon=False)
        ax.set_ylim(-0.3, k + 2.3)
        return ax


def plain_log_ticks(ax, axis: str = "x") -> None:
    """Label a log-scaled axis with plain numbers (0.5, 1, 2) instead of powers of ten."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    fmt = FuncFormatter(lambda v, _pos: f"{v:g}")
    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    target.set_major_formatter(fmt)
    target.set_minor_formatter(FuncFormatter(lambda v, _pos: ""))


def escalc_log_rr(ai, bi, ci, di) -> pd.DataFrame:
    """Log risk ratios and sampling variances from 2x2 counts (metafor ``escalc(measure="RR")``
    without zero-cell correction): ``yi = log(ai/(ai+bi)) - log(ci/(ci+di))``,
    ``vi = 1/ai - 1/(ai+bi) + 1/ci - 1/(ci+di)``."""
    ai, bi, ci, di = (np.asarray(x, dtype=float) for x in (ai, bi, ci, di))
    if np.any(np.array([ai, ci]) <= 0):
        raise ValueError(
            "escalc_log_rr: event counts ai and ci must be positive (no zero-cell correction)"
        )
    n1, n2 = ai + bi, ci + di
    return pd.DataFrame(
        {"yi": np.log(ai / n1) - np.log(ci / n2), "vi": 1 / ai - 1 / n1 + 1 / ci - 1 / n2}
    )


def _q_gen(tau2: float, y: np.ndarray, v: np.ndarray) -> float:
    w = 1.0 / (v + tau2)
    mu = np.sum(w * y) / np.sum(w)
    return float(np.sum(w * (y - mu) ** 2))


def _tau2_dl(y, v) -> float:
    w = 1.0 / v
    k = len(y)
    q = _q_gen(0.0, y, v)
    c = w.sum() - (w**2).sum() / w.sum()
    return max(0.0, (q - (k - 1)) / c)


def _tau2_pm(y, v) -> float:
    k = len(y)
    f = lambda t: _q_gen(t, y, v) - (k - 1)
    if f(0.0) <= 0:
        return 0.0
    hi = max(1.0, 10 * np.var(y, ddof=1))
    while f(hi) > 0:
        hi *= 10
    return float(optimize.brentq(f, 0.0, hi, xtol=1e-14, rtol=1e-14, maxiter=500))


def _tau2_reml(y, v, tol: float = 1e-12, maxiter: int = 1000) -> tuple[float, bool, int]:
    """REML by Fisher scoring as in metafor (start at the Hedges estimator, step halving to
    stay non-negative)."""
    # Hedges (HE) starting value, as metafor's default tau2.init for ML/REML
    tau2 = max(0.0, float(np.var(y, ddof=1) - np.mean(v)))
    for it in range(1, maxiter + 1):
        w = 1.0 / (v + tau2)
        sw = w.sum()
        P = np.diag(w) - np.outer(w, w) / sw
        Py = P @ y
        PP = P @ P
        adj = (float(Py @ Py) - np.trace(P)) / np.trace(PP)
        step = 1.0
        while tau2 + step * adj < 0:
            step /= 2
            if step < 1e-8:
                adj, step = -tau2, 1.0
                break
        new = tau2 + step * adj
        if abs(new - tau2) < tol:
            return new, True, it
        tau2 = new
    return tau2, False, maxiter


def random_effects(
    estimates,
    ses,
    method: Method = "reml",
    knha: bool = False,
    alpha: float = 0.05,
    labels: Sequence | None = None,
) -> PooledEstimate:
    """Random-effects pooling of ``estimates`` (e.g. log rate ratios) with standard errors ``ses``.

    ``method``: ``"reml"`` (default, as metafor), ``"dl"`` or ``"pm"``. ``knha=True`` applies
    the Knapp-Hartung adjustment with t(k-1) intervals. Non-finite inputs raise ``ValueError``
    (pass only estimable studies; record the others in ``excluded``)."""
    y = np.asarray(estimates, dtype=float)
    s = np.asarray(ses, dtype=float)
    if y.ndim != 1 or s.shape != y.shape:
        raise ValueError("estimates and ses must be 1-d sequences of equal length")
    k = len(y)
    if k < 2:
        raise ValueError(f"random_effects needs at least 2 studies, got {k}")
    if not (np.all(np.isfinite(y)) and np.all(np.isfinite(s))):
        raise ValueError(
            "estimates and ses must be finite (drop non-estimable studies and report them)"
        )
    if np.any(s <= 0):
        raise ValueError("ses must be positive")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    method_l = str(method).lower()
    v = s**2
    converged, iters = True, 0
    if method_l == "reml":
        tau2, converged, iters = _tau2_reml(y, v)
    elif method_l == "dl":
        tau2 = _tau2_dl(y, v)
    elif method_l == "pm":
        tau2 = _tau2_pm(y, v)
    else:
        raise ValueError(f"method must be 'reml', 'dl' or 'pm', got {method!r}")

    w = 1.0 / (v + tau2)
    sw = w.sum()
    mu = float(np.sum(w * y) / sw)
    se = float(np.sqrt(1.0 / sw))
    if knha:
        # metafor test="knha": s2w = sum w (y - mu)^2 / (k - 1); SE * sqrt(s2w)
        s2w = float(np.sum(w * (y - mu) ** 2) / (k - 1))
        se = se * np.sqrt(s2w)
        df: float | None = k - 1
        crit = float(stats.t.ppf(1 - alpha / 2, k - 1))
        stat = mu / se
        p = float(2 * stats.t.sf(abs(stat), k - 1))
    else:
        df = None
        crit = float(stats.norm.ppf(1 - alpha / 2))
        stat = mu / se
        p = float(2 * stats.norm.sf(abs(stat)))

    # heterogeneity (fixed-effect weights)
    w0 = 1.0 / v
    q = _q_gen(0.0, y, v)
    q_df = k - 1
    q_p = float(stats.chi2.sf(q, q_df))
    s2 = (k - 1) * w0.sum() / (w0.sum() ** 2 - (w0**2).sum())
    i2 = 100.0 * tau2 / (tau2 + s2)
    h2 = (tau2 + s2) / s2

    if method_l == "reml":
        P = np.diag(w) - np.outer(w, w) / sw
        tau2_se: float | None = float(np.sqrt(2.0 / np.trace(P @ P)))
    elif method_l == "dl":
        # metafor's SE of the DL estimator (Var of Q-based moment estimator)
        c = w0.sum() - (w0**2).sum() / w0.sum()
        a1 = k - 1
        a2 = (w0**2).sum() - 2 * (w0**3).sum() / w0.sum() + ((w0**2).sum() / w0.sum()) ** 2
        var_q = 2 * a1 + 4 * tau2 * c + 2 * tau2**2 * a2
        tau2_se = float(np.sqrt(var_q) / c)
    else:
        tau2_se = None

    pi_half = crit * np.sqrt(se**2 + tau2)
    lab = list(labels) if labels is not None else [str(i + 1) for i in range(k)]
    if len(lab) != k:
        raise ValueError(f"labels has {len(lab)} entries but there are {k} estimates")
    zc = stats.norm.ppf(1 - alpha / 2)
    studies = pd.DataFrame(
        {
            "label": lab,
            "estimate": y,
            "se": s,
            "ci_low": y - zc * s,
            "ci_high": y + zc * s,
            "weight": 100.0 * w / sw,
        }
    )
    return PooledEstimate(
        estimate=mu,
        se=se,
        ci_low=mu - crit * se,
        ci_high=mu + crit * se,
        statistic=float(stat),
        df=df,
        p_value=p,
        tau2=float(tau2),
        tau2_se=tau2_se,
        tau=float(np.sqrt(tau2)),
        i2=float(i2),
        h2=float(h2),
        q=float(q),
        q_df=q_df,
        q_p=q_p,
        pi_low=float(mu - pi_half),
        pi_high=float(mu + pi_half),
        k=k,
        method=method_l,
        knha=bool(knha),
        alpha=alpha,
        studies=studies,
        converged=converged,
        iterations=iters,
    )

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

:func:`empirical_bayes` gives each site's partially pooled effect (the BLUP, shrunk toward the
collaborative mean) with an interval that integrates the uncertainty in tau^2 and mu (posterior
over tau^2 on a grid, flat priors on mu and tau^2; Morris 1983), validated against Raudenbush &
Bryk (1985) / ``metafor::blup`` and by simulated coverage. :data:`TOO_LITTLE_INFORMATION_RULE`
names when a site's own effect is not estimated.
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

__all__ = [
    "MIN_EXPECTED_EVENTS",
    "TOO_LITTLE_INFORMATION_RULE",
    "EmpiricalBayesResult",
    "PooledEstimate",
    "draw_interval_rows",
    "empirical_bayes",
    "escalc_log_rr",
    "forest_limits",
    "random_effects",
    "set_forest_axis",
    "too_little_information",
]


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
        xlim: tuple[float, float] | None = None,
        max_ratio_range: float = 100.0,
    ):
        """Forest plot: studies with CIs (marker size ~ weight), pooled diamond, prediction
        interval and heterogeneity text. ``exp=True`` back-transforms log effects (ratios,
        log x-axis). Returns the matplotlib Axes.

        The x-axis is bounded: it covers the point estimates, the pooled CI and the prediction
        interval, at most a factor ``max_ratio_range`` (ratio scale; on the log scale of
        ``exp=False`` its log) around the pooled estimate, or ``xlim`` when given. Intervals
        running off the axis end in an arrow at its edge; a point estimate off the axis is drawn
        as a triangle at the edge. Tick labels are plain numbers, at most about 7 of them."""
        st = self.studies
        k = len(st)
        ax = new_axes(ax, figsize=(7.5, 0.28 * (k + 4) + 1.2))
        labs = list(labels) if labels is not None else list(st["label"].astype(str))
        if len(labs) != k:
            raise ValueError(f"labels has {len(labs)} entries but there are {k} studies")
        ys = np.arange(k, 0, -1) + 1.5
        lo, hi = forest_limits(
            np.r_[st["estimate"].to_numpy(float), self.ci_low, self.ci_high, self.pi_low, self.pi_high],
            centre=self.estimate, exp=exp, max_ratio_range=max_ratio_range, xlim=xlim)
        sizes = 20 + 120 * st["weight"].to_numpy() / max(st["weight"].max(), 1e-12)
        draw_interval_rows(ax, ys, st["estimate"].to_numpy(float), st["ci_low"].to_numpy(float),
                           st["ci_high"].to_numpy(float), lo, hi, exp=exp,
                           color=PALETTE["observed"], marker="s", sizes=sizes)
        tr = np.exp if exp else (lambda x: x)
        # pooled diamond and prediction interval (clipped like the rows)
        yd = 0.5
        clip = (lambda v: float(np.clip(v, lo, hi)))
        ax.fill(
            tr(np.array([clip(self.ci_low), self.estimate, clip(self.ci_high), self.estimate])),
            [yd, yd + 0.3, yd, yd - 0.3],
            color=PALETTE["fitted"],
            zorder=3,
        )
        level = round(100 * (1 - self.alpha))
        draw_interval_rows(ax, [yd], [self.estimate], [self.pi_low], [self.pi_high], lo, hi,
                           exp=exp, color=PALETTE["band"], marker=None, lw=2, zorder=2,
                           label=f"{level}% prediction interval")
        ax.axvline(tr(0.0), color=PALETTE["limit"], ls="--", lw=1)
        ax.set_yticks(list(ys) + [yd])
        ax.set_yticklabels(labs + ["RE model" + (" (KNHA)" if self.knha else "")],
                           fontsize=8 if k > 20 else None)
        set_forest_axis(ax, lo, hi, exp=exp)
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


#: Ratio ticks tried on a forest plot's log axis (thinned to at most about 7).
_RATIO_TICKS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0,
                50.0, 100.0)


def forest_limits(values, *, centre: float, exp: bool = True, max_ratio_range: float = 100.0,
                  xlim: tuple[float, float] | None = None, pad: float = 0.08) -> tuple[float, float]:
    """Axis limits of a forest plot on the scale of the estimates (log scale when ``exp``).

    The range covers the finite `values`, padded by `pad` of its width, but never more than half
    of ``log(max_ratio_range)`` (ratio scale) or ``max_ratio_range`` (``exp=False``) on either
    side of `centre`; `xlim` (on the displayed scale: ratios when ``exp``) overrides it."""
    if xlim is not None:
        lo, hi = (float(np.log(v)) if exp else float(v) for v in xlim)
        if not lo < hi:
            raise ValueError(f"xlim must be increasing, got {xlim}")
        return lo, hi
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        v = np.array([centre])
    lo, hi = float(v.min()), float(v.max())
    if exp:  # always show the line of no effect when it is near
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    width = max(hi - lo, 0.1 if exp else 1e-6)
    lo, hi = lo - pad * width, hi + pad * width
    half = 0.5 * (np.log(max_ratio_range) if exp else max_ratio_range)
    return max(lo, centre - half), min(hi, centre + half)


def set_forest_axis(ax, lo: float, hi: float, *, exp: bool = True, max_ticks: int = 7) -> None:
    """Bounded, legible x-axis from :func:`forest_limits` output: log scale with plain ratio
    ticks (0.5, 1, 2) when ``exp``, otherwise matplotlib's linear ticks."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    if not exp:
        ax.set_xlim(lo, hi)
        return
    a, b = float(np.exp(lo)), float(np.exp(hi))
    ax.set_xscale("log")
    ax.set_xlim(a, b)
    ticks = [t for t in _RATIO_TICKS if a <= t <= b]
    while len(ticks) > max_ticks:
        keep = ticks[::2]
        if 1.0 in ticks and 1.0 not in keep:
            keep = ticks[1::2]
        ticks = keep
    if len(ticks) < 2:  # a narrow range: a few evenly spaced plain values
        ticks = list(np.round(np.geomspace(a, b, 4), 3))[1:-1] or [round((a * b) ** 0.5, 3)]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda val, _pos: f"{val:g}"))
    ax.xaxis.set_minor_locator(NullLocator())


def draw_interval_rows(ax, ys, est, low, high, lo: float, hi: float, *, exp: bool = True,
                       color=None, marker: str | None = "s", sizes=30, lw: float = 1.2,
                       zorder: int = 3, label: str | None = None, filled: bool = True):
    """Horizontal intervals at heights `ys` (estimates on the model scale, e.g. log RR), clipped
    to the axis range ``[lo, hi]`` (same scale): an interval running off the axis ends in an
    arrow at the edge, a point estimate off the axis becomes a triangle at the edge."""
    tr = np.exp if exp else (lambda x: x)
    ys = np.asarray(ys, dtype=float)
    est, low, high = (np.asarray(a, dtype=float) for a in (est, low, high))
    color = color or PALETTE["observed"]
    span = hi - lo
    for i, y in enumerate(ys):
        if not (np.isfinite(low[i]) or np.isfinite(high[i])):
            continue
        a = np.clip(low[i], lo, hi) if np.isfinite(low[i]) else lo
        b = np.clip(high[i], lo, hi) if np.isfinite(high[i]) else hi
        ax.plot([tr(a), tr(b)], [y, y], color=color, lw=lw, zorder=zorder,
                label=label if i == 0 else None, solid_capstyle="butt")
        for off, edge, direction in ((low[i], lo, -1), (high[i], hi, 1)):
            if not np.isfinite(off) or (off < lo if direction < 0 else off > hi):
                tail = edge - direction * 0.04 * span
                ax.annotate("", xy=(tr(edge), y), xytext=(tr(tail), y),
                            arrowprops={"arrowstyle": "-|>", "color": color, "lw": lw,
                                        "mutation_scale": 8}, zorder=zorder)
    if marker is None:
        return
    s = np.broadcast_to(np.asarray(sizes, dtype=float), ys.shape)
    inside = np.isfinite(est) & (est >= lo) & (est <= hi)
    face = color if filled else "white"
    ax.scatter(tr(est[inside]), ys[inside], s=s[inside], marker=marker, facecolor=face,
               edgecolor=color, zorder=zorder + 1)
    for side, edge, m in ((est < lo, lo, "<"), (est > hi, hi, ">")):
        sel = np.isfinite(est) & side
        if sel.any():
            ax.scatter(np.full(sel.sum(), tr(edge)), ys[sel], s=40, marker=m, color=color,
                       zorder=zorder + 1, clip_on=False)


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


# --------------------------------------------------------------------------------------------
# Partial pooling of site effects: empirical Bayes with the uncertainty in tau^2 integrated out
# --------------------------------------------------------------------------------------------

#: The "too little information" rule for a hospital's own effect (named in the analysis plan):
#: fewer than this many *expected* deaths (case-mix model) before go-live, or after it, and the
#: hospital's own effect is not estimated. The hospital then gets the collaborative (pooled)
#: effect and the comparison with its peers (funnel plot) instead. Expected, not observed, deaths
#: are used so that the rule does not depend on the outcome it protects.
MIN_EXPECTED_EVENTS: float = 20.0

TOO_LITTLE_INFORMATION_RULE: str = (
    f"too little information: fewer than {MIN_EXPECTED_EVENTS:g} expected deaths (case-mix "
    "model) before go-live or after go-live; the hospital's own effect is then not estimated, "
    "and the collaborative effect and the hospital's comparison with its peers are shown instead"
)


def too_little_information(expected_before, expected_after, *,
                           min_expected: float = MIN_EXPECTED_EVENTS) -> np.ndarray:
    """True where a hospital has too little information for its own effect:
    ``expected_before < min_expected`` or ``expected_after < min_expected`` (expected events,
    e.g. deaths from the case-mix model, in each period). Missing counts count as too little.
    See :data:`TOO_LITTLE_INFORMATION_RULE`."""
    b = np.asarray(expected_before, dtype=float)
    a = np.asarray(expected_after, dtype=float)
    if b.shape != a.shape:
        raise ValueError("expected_before and expected_after must have the same length")
    if np.any(b[np.isfinite(b)] < 0) or np.any(a[np.isfinite(a)] < 0):
        raise ValueError("expected counts must be >= 0")
    with np.errstate(invalid="ignore"):
        return ~(np.isfinite(b) & np.isfinite(a) & (b >= min_expected) & (a >= min_expected))


@dataclass
class EmpiricalBayesResult:
    """Partially pooled site effects from :func:`empirical_bayes` (log scale, e.g. log RR).

    ``sites``: one row per input site, in input order: ``label``, ``yi``, ``vi`` (the site's
    own, unpooled estimate and its sampling variance), ``status`` ("ok", "too little
    information", "not estimable: ..."), ``estimate`` (posterior mean of the site's true effect,
    shrunk toward the collaborative mean), ``se`` (posterior SD), ``lower``/``upper`` (equal-tail
    posterior interval at level 1 - alpha), ``shrinkage`` (posterior mean of
    ``B_i = v_i / (v_i + tau^2)``, the weight on the collaborative mean; 1 - shrinkage is the
    weight on the site's own estimate), ``blup``/``blup_se`` (plug-in BLUP at the point
    estimate of tau^2, as ``metafor::blup``), ``diff_estimate``/``diff_lower``/``diff_upper``
    (the site's true effect minus the collaborative mean), ``own_lower``/``own_upper``
    (unpooled Wald interval). Sites that are not "ok" keep their row with NaN estimates.

    ``pooled``: the random-effects fit of the "ok" sites (:func:`random_effects`);
    ``collaborative``: posterior mean, SD and interval of the collaborative mean mu with the
    same tau^2 integration as the sites; ``tau_posterior``: the grid of tau values and their
    posterior weights (one row at the fixed or plug-in tau^2 otherwise).
    """

    sites: pd.DataFrame
    pooled: PooledEstimate
    tau2: float
    tau2_fixed: bool
    interval: str
    alpha: float
    collaborative: dict
    tau_posterior: pd.DataFrame
    method_note: str = ""

    @property
    def level(self) -> float:
        return 1 - self.alpha

    def summary(self, exp: bool = False) -> pd.DataFrame:
        """The per-site table; ``exp=True`` exponentiates every effect column (ratios; the SE
        columns stay on the log scale and are renamed ``se_log`` / ``blup_se_log``)."""
        out = self.sites.copy()
        if not exp:
            return out
        for c in ("yi", "estimate", "lower", "upper", "blup", "diff_estimate", "diff_lower",
                  "diff_upper", "own_lower", "own_upper"):
            out[c] = np.exp(out[c])
        return out.rename(columns={"yi": "own_estimate", "se": "se_log", "blup_se": "blup_se_log",
                                   "diff_estimate": "ratio_to_collaborative",
                                   "diff_lower": "ratio_to_collaborative_lower",
                                   "diff_upper": "ratio_to_collaborative_upper"})

    def site(self, label) -> pd.Series:
        """The row of one site (by label)."""
        hit = self.sites[self.sites["label"].astype(str) == str(label)]
        if hit.empty:
            raise ValueError(f"no site labelled {label!r}")
        return hit.iloc[0]

    def caption(self) -> str:
        """What the partially pooled figure shows and how it was estimated."""
        st = self.sites["status"]
        k_ok, k_few = int((st == "ok").sum()), int((st == "too little information").sum())
        level = f"{100 * self.level:g}%"
        text = (f"Each row is one hospital: its own estimate (open grey, its data alone) and its "
                f"partially pooled estimate (blue), shrunk toward the collaborative mean, with "
                f"{level} intervals; the band is the collaborative mean's {level} interval. "
                f"Empirical Bayes: {self.method_note}. {k_ok} hospitals with their own estimate")
        if k_few:
            text += f"; {k_few} with too little information for their own effect"
        return text + "."

    def plot(self, ax=None, *, exp: bool = True, highlight=None, xlabel: str | None = None,
             xlim: tuple[float, float] | None = None, max_ratio_range: float = 20.0):
        """Each site's own estimate (open circle, grey) and its partially pooled estimate
        (filled, blue) with intervals, the collaborative mean and its interval (band). Sites
        that are not estimable are listed without intervals. Returns the Axes."""
        d = self.sites
        k = len(d)
        ax = new_axes(ax, figsize=(7.5, 0.22 * (k + 3) + 1.2))
        ok = d["status"].eq("ok").to_numpy()
        ys = np.arange(k, 0, -1, dtype=float)
        c = self.collaborative
        lo, hi = forest_limits(
            np.r_[d.loc[ok, "lower"], d.loc[ok, "upper"], d.loc[ok, "yi"], c["lower"], c["upper"]],
            centre=c["estimate"], exp=exp, max_ratio_range=max_ratio_range, xlim=xlim)
        tr = np.exp if exp else (lambda x: x)
        ax.axvspan(tr(max(c["lower"], lo)), tr(min(c["upper"], hi)), color=PALETTE["band"],
                   alpha=0.12, lw=0, label=f"collaborative {100 * self.level:g}% interval")
        ax.axvline(tr(c["estimate"]), color=PALETTE["band"], lw=1)
        ax.axvline(tr(0.0), color=PALETTE["limit"], ls="--", lw=1)
        z = stats.norm.ppf(1 - self.alpha / 2)
        yi, se_own = d["yi"].to_numpy(float), np.sqrt(d["vi"].to_numpy(float))
        draw_interval_rows(ax, ys[ok] + 0.18, yi[ok], (yi - z * se_own)[ok], (yi + z * se_own)[ok],
                           lo, hi, exp=exp, color=PALETTE["limit"], marker="o", sizes=18, lw=0.9,
                           filled=False, label="own data only (unpooled)")
        draw_interval_rows(ax, ys[ok] - 0.12, d.loc[ok, "estimate"], d.loc[ok, "lower"],
                           d.loc[ok, "upper"], lo, hi, exp=exp, color=PALETTE["observed"],
                           marker="o", sizes=22, label="partially pooled")
        labs = d["label"].astype(str).tolist()
        ax.set_yticks(ys)
        ax.set_yticklabels([lab if o else f"{lab} (not estimated)" for lab, o in zip(labs, ok)],
                           fontsize=7 if k > 25 else 8)
        if highlight is not None:
            hit = np.flatnonzero(d["label"].astype(str).to_numpy() == str(highlight))
            if hit.size == 0:
                raise ValueError(f"site to highlight {highlight!r} is not among the sites")
            ax.axhspan(ys[hit[0]] - 0.45, ys[hit[0]] + 0.45, color=PALETTE["highlight"],
                       alpha=0.10, lw=0)
            ax.get_yticklabels()[hit[0]].set_fontweight("bold")
        set_forest_axis(ax, lo, hi, exp=exp)
        ax.set_ylim(0.3, k + 0.9)
        ax.set_xlabel(xlabel or ("Ratio (log scale)" if exp else "Estimate"))
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.08 if k > 25 else -0.14), ncol=3,
                  fontsize=7, frameon=False)
        return ax


def _reml_loglik(tau2: np.ndarray, y: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Restricted log-likelihood of the random-effects model at each tau2 (up to a constant)."""
    w = 1.0 / (v[None, :] + tau2[:, None])
    sw = w.sum(axis=1)
    mu = (w * y).sum(axis=1) / sw
    rss = (w * (y[None, :] - mu[:, None]) ** 2).sum(axis=1)
    return -0.5 * (np.log(v[None, :] + tau2[:, None]).sum(axis=1) + np.log(sw) + rss)


def _reml_loglik_cov(tau2: np.ndarray, y: np.ndarray, V: np.ndarray) -> np.ndarray:
    """Restricted log-likelihood with correlated sampling errors (Sigma = V + tau2 I)."""
    out = np.empty(len(tau2))
    one = np.ones(len(y))
    for j, t2 in enumerate(np.atleast_1d(tau2)):
        c = np.linalg.cholesky(V + t2 * np.eye(len(y)))
        si_1 = np.linalg.solve(c.T, np.linalg.solve(c, one))
        si_y = np.linalg.solve(c.T, np.linalg.solve(c, y))
        s11 = one @ si_1
        mu = (one @ si_y) / s11
        rss = y @ si_y - mu * (one @ si_y)
        out[j] = -0.5 * (2 * np.sum(np.log(np.diag(c))) + np.log(s11) + rss)
    return out


def _reml_tau2_cov(y: np.ndarray, V: np.ndarray, start: float) -> float:
    """REML tau^2 with correlated sampling errors (bounded scalar maximisation, >= 0)."""
    hi = max(10 * start, 4 * float(np.max(np.diag(V))), 1e-3)
    res = optimize.minimize_scalar(lambda t2: -_reml_loglik_cov(np.array([t2]), y, V)[0],
                                   bounds=(0.0, hi), method="bounded",
                                   options={"xatol": 1e-10})
    at0 = -_reml_loglik_cov(np.array([0.0]), y, V)[0]
    return 0.0 if at0 <= res.fun else float(res.x)


def _gls_posteriors(y: np.ndarray, V: np.ndarray, t2: np.ndarray):
    """Per tau^2 of the grid: GLS mean and its variance, shrinkage 1 - tau^2 (Sigma^-1)_ii,
    the sites' conditional posterior means/variances and those of theta_i - mu (see
    :func:`empirical_bayes`, ``vcov``). Arrays are grid x sites (mu, vmu: grid)."""
    k = len(y)
    one = np.ones(k)
    g = len(t2)
    mu, vmu = np.empty(g), np.empty(g)
    B, m, s2, md, sd2 = (np.empty((g, k)) for _ in range(5))
    for j, tt in enumerate(t2):
        si = np.linalg.inv(V + tt * np.eye(k))
        si = 0.5 * (si + si.T)
        si_1 = si @ one
        s11 = float(one @ si_1)
        mu[j] = float(si_1 @ y) / s11
        vmu[j] = 1.0 / s11
        r = y - mu[j]
        a = 1.0 - tt * si_1
        d = np.diag(si)
        B[j] = 1.0 - tt * d
        md[j] = tt * (si @ r)
        m[j] = mu[j] + md[j]
        s2[j] = tt - tt * tt * d + a * a * vmu[j]
        sd2[j] = tt - tt * tt * d + (tt * si_1) ** 2 * vmu[j]
    return mu, vmu, B, m, np.maximum(s2, 0.0), md, np.maximum(sd2, 0.0)


def _tau_grid(y: np.ndarray, v: np.ndarray, tau_hat: float, n: int = 200,
              drop: float = 14.0, V: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Grid of tau values and trapezoid quadrature weights covering the restricted likelihood
    down to ``max - drop`` (log scale): dense near the mode, geometric in the right tail."""
    def ll(t2: float) -> float:
        a = np.array([t2])
        return float((_reml_loglik(a, y, v) if V is None else _reml_loglik_cov(a, y, V))[0])

    scale = max(tau_hat, 0.25 * float(np.sqrt(np.median(v))), 1e-4)
    top = 8.0 * scale
    peak = ll(tau_hat**2)
    for _ in range(60):
        if ll(top**2) < peak - drop:
            break
        top *= 2.0
    dense = np.linspace(0.0, min(6.0 * scale, top), int(0.75 * n))
    tail = np.geomspace(min(6.0 * scale, top), top, n - len(dense) + 1)[1:] if top > 6 * scale else []
    t = np.unique(np.r_[dense, tail])
    dt = np.diff(t)
    q = np.zeros_like(t)
    q[:-1] += dt / 2
    q[1:] += dt / 2
    return t, q


def _mixture_quantiles(m: np.ndarray, s: np.ndarray, w: np.ndarray, probs) -> list[np.ndarray]:
    """Quantiles of normal mixtures: row i of `m`/`s` (sites x grid) with grid weights `w`,
    by vectorised bisection (all rows at once, 50 halvings)."""
    from scipy.special import ndtr

    out = []
    keep = w > 1e-12 * w.max()  # grid points without weight do not move a quantile
    m, s, w = m[:, keep], s[:, keep], w[keep]
    for p in probs:
        lo = (m - 12 * s).min(axis=1)
        hi = (m + 12 * s).max(axis=1)
        for _ in range(50):  # 24 SDs / 2^50: far below any reported digit
            mid = 0.5 * (lo + hi)
            cdf = ndtr((mid[:, None] - m) / s) @ w
            below = cdf < p
            lo = np.where(below, mid, lo)
            hi = np.where(below, hi, mid)
        out.append(0.5 * (lo + hi))
    return out


def empirical_bayes(
    yi,
    vi,
    labels: Sequence | None = None,
    *,
    method: str = "REML",
    alpha: float = 0.05,
    tau2: float | None = None,
    interval: Literal["posterior", "plugin"] = "posterior",
    estimable: Sequence[bool] | np.ndarray | None = None,
    knha: bool = False,
    prior: Literal["uniform_tau2", "uniform_tau", "half_normal", "half_cauchy"] = "uniform_tau2",
    grid_size: int = 200,
    prior_scale: float = 0.5,
    vcov=None,
) -> EmpiricalBayesResult:
    """Partially pooled (empirical-Bayes / BLUP) estimates of each site's true effect.

    Model: ``yi = theta_i + e_i``, ``e_i ~ N(0, vi)``, ``theta_i ~ N(mu, tau^2)``; `yi` on the
    log scale (e.g. the log rate ratio of :func:`analysis.its.fit_its_by_site`), `vi` its
    sampling variance. Given tau^2, the site's effect has the normal posterior (flat prior on
    mu) with mean the BLUP ``mu_hat + (1 - B_i)(yi - mu_hat)``, ``B_i = vi / (vi + tau^2)``, and
    variance ``(1 - B_i) vi + B_i^2 Var(mu_hat)`` (Raudenbush & Bryk 1985; ``metafor::blup``).

    ``interval="posterior"`` (default) accounts for the uncertainty in tau^2 (and mu): the
    conditional normal posteriors are averaged over tau^2 with weights proportional to the
    restricted (REML) likelihood times the prior, i.e. the exact marginal posterior of the
    normal hierarchical model with a flat prior on mu (Gelman et al., *Bayesian Data Analysis*,
    3rd ed., section 5.4), computed deterministically on a grid of tau. The default prior is
    flat on tau^2 (Morris 1983, JASA 78:47; Morris & Tang 2011, Stat Sci 26:52), which gave
    nominal average coverage of the true site effects in simulation (57 sites, tau = 0.25 or
    0.5: 95.0% and 94.9%; smaller tau or fewer sites: conservative, 96-99%), where a flat prior
    on tau (``prior="uniform_tau"``, Gelman 2006) gave 93.6%. The estimate is the posterior
    mean, ``se`` the posterior SD and the interval the equal-tail posterior quantiles. Unlike
    the plug-in BLUP interval this does not collapse when the REML tau^2 is 0, and it widens
    when tau^2 is poorly determined (few sites). It needs >= 4 sites (the posterior is proper
    from 4 sites with the flat prior on tau^2, 3 with the flat prior on tau).
    ``prior="half_normal"`` / ``"half_cauchy"``: a weakly informative prior on tau with scale
    `prior_scale` (default 0.5 on the log scale: between-site ratios varying by up to a factor
    of about e^(2 x 0.5) = 2.7 are plausible a priori; Friede et al. 2017, Röver et al. 2021 for
    log odds/risk ratios; Gelman 2006 for the half-Cauchy); proper, so 3 sites suffice.
    ``interval="plugin"`` gives the plug-in interval ``BLUP +/- z SE`` at the estimated tau^2
    (what ``metafor::blup`` prints). With ``tau2`` fixed (known) both are the same normal
    posterior, equal to ``metafor::blup`` for that tau^2.

    `vcov`: the full sampling covariance of `yi` (k x k, input order; its diagonal is `vi`)
    when the sites' estimates are correlated, e.g. hospitals' level changes against one shared
    calendar trend, whose estimation error they all carry. The model is then ``y ~ N(theta, V)``
    and every quantity uses ``Sigma = V + tau^2 I``: GLS mean, BLUP ``mu + tau^2 Sigma^-1 (y -
    mu)``, its prediction variance ``tau^2 I - tau^4 Sigma^-1 + a a' / (1' Sigma^-1 1)`` with
    ``a = 1 - tau^2 Sigma^-1 1``, and the restricted likelihood of tau^2. Ignoring a positive
    correlation understates the uncertainty of the collaborative mean and of every site.

    `method` ("REML", "DL", "PM") estimates tau^2 for the pooled fit and the plug-in BLUP.
    `estimable` (bool per site, e.g. ``~too_little_information(...)``) marks sites whose own
    estimate is not used: they keep their row with status "too little information" and are left
    out of the fit, as are sites with a non-finite `yi`/`vi` ("not estimable").
    """
    y_all = np.asarray(yi, dtype=float)
    v_all = np.asarray(vi, dtype=float)
    if y_all.ndim != 1 or v_all.shape != y_all.shape:
        raise ValueError("yi and vi must be 1-d sequences of equal length")
    k_all = len(y_all)
    lab = list(labels) if labels is not None else [str(i + 1) for i in range(k_all)]
    if len(lab) != k_all:
        raise ValueError(f"labels has {len(lab)} entries but there are {k_all} estimates")
    if len(set(map(str, lab))) != k_all:
        raise ValueError("labels must be unique")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if interval not in ("posterior", "plugin"):
        raise ValueError(f"interval must be 'posterior' or 'plugin', got {interval!r}")
    if tau2 is not None and not (np.isfinite(tau2) and tau2 >= 0):
        raise ValueError(f"tau2 must be a finite number >= 0, got {tau2!r}")
    status = np.array(["ok"] * k_all, dtype=object)
    finite = np.isfinite(y_all) & np.isfinite(v_all)
    status[~finite] = "not estimable: no finite estimate or variance"
    bad_v = finite & (v_all <= 0)
    if bad_v.any():
        raise ValueError(f"vi must be positive (site {lab[int(np.flatnonzero(bad_v)[0])]!r})")
    if estimable is not None:
        est_mask = np.asarray(estimable, dtype=bool)
        if est_mask.shape != y_all.shape:
            raise ValueError("estimable must have one entry per site")
        status[finite & ~est_mask] = "too little information"
    ok = status == "ok"
    y, v = y_all[ok], v_all[ok]
    k = len(y)
    V = None
    if vcov is not None:
        V_all = np.asarray(vcov, dtype=float)
        if V_all.shape != (k_all, k_all):
            raise ValueError(f"vcov must be {k_all} x {k_all} (one row and column per site)")
        V = V_all[np.ix_(ok, ok)]
        if not np.allclose(V, V.T) or not np.allclose(np.diag(V), v, rtol=1e-8, atol=1e-12):
            raise ValueError("vcov must be symmetric with vi on its diagonal")
    priors = ("uniform_tau2", "uniform_tau", "half_normal", "half_cauchy")
    if prior not in priors:
        raise ValueError(f"prior must be one of {priors}, got {prior!r}")
    if not (np.isfinite(prior_scale) and prior_scale > 0):
        raise ValueError(f"prior_scale must be positive, got {prior_scale!r}")
    need = 2
    if interval == "posterior" and tau2 is None:
        need = 4 if prior == "uniform_tau2" else 3
    if k < need:
        raise ValueError(f"empirical_bayes needs at least {need} sites with an own estimate, got {k} "
                         f"(statuses: {pd.Series(status).value_counts().to_dict()})")
    pooled = random_effects(y, np.sqrt(v), method=str(method).lower(), knha=knha, alpha=alpha,
                            labels=[str(lab[i]) for i in np.flatnonzero(ok)])
    pooled.excluded = pd.DataFrame({"label": [str(lab[i]) for i in np.flatnonzero(~ok)],
                                    "reason": list(status[~ok])})
    tau2_hat = float(tau2) if tau2 is not None else pooled.tau2

    if tau2 is not None or interval == "plugin":
        t = np.array([np.sqrt(tau2_hat)])
        wts = np.array([1.0])
        note = (f"normal posterior at fixed tau^2 = {tau2_hat:.4g}" if tau2 is not None else
                f"plug-in BLUP interval at the {pooled.method.upper()} tau^2 = {tau2_hat:.4g} "
                "(uncertainty in tau^2 ignored)")
    else:
        if V is not None:
            tau2_hat = _reml_tau2_cov(y, V, tau2_hat)
        t, q = _tau_grid(y, v, np.sqrt(tau2_hat), n=grid_size, V=V)
        ll = _reml_loglik(t**2, y, v) if V is None else _reml_loglik_cov(t**2, y, V)
        # density of the prior on the tau grid; d(tau^2) = 2 tau d(tau): a flat prior on tau^2
        # weighs the tau grid by tau
        density = {"uniform_tau2": t, "uniform_tau": np.ones_like(t),
                   "half_normal": np.exp(-0.5 * (t / prior_scale) ** 2),
                   "half_cauchy": 1.0 / (1.0 + (t / prior_scale) ** 2)}[prior]
        wts = q * np.exp(ll - ll.max()) * density
        wts = wts / wts.sum()
        what = {"uniform_tau2": "a flat prior on tau^2", "uniform_tau": "a flat prior on tau",
                "half_normal": f"a half-normal prior on tau (scale {prior_scale:g})",
                "half_cauchy": f"a half-Cauchy prior on tau (scale {prior_scale:g})"}[prior]
        note = (f"posterior over tau^2 (restricted likelihood x {what}, {len(t)}-point grid), "
                "flat prior on mu")

    t2 = t**2
    if V is None:
        W = 1.0 / (v[None, :] + t2[:, None])            # grid x sites
        sw = W.sum(axis=1)
        mu = (W * y).sum(axis=1) / sw                    # per grid point
        vmu = 1.0 / sw
        B = v[None, :] / (v[None, :] + t2[:, None])      # shrinkage toward mu
        m = mu[:, None] + (1 - B) * (y[None, :] - mu[:, None])
        s2 = (1 - B) * v[None, :] + B**2 * vmu[:, None]
        md = (1 - B) * (y[None, :] - mu[:, None])        # theta_i - mu
        sd2 = (1 - B) * v[None, :] + (1 - B) ** 2 * vmu[:, None]
    else:
        mu, vmu, B, m, s2, md, sd2 = _gls_posteriors(y, V, t2)
    probs = (alpha / 2, 1 - alpha / 2)

    def post(mean, var):
        pm = (wts[:, None] * mean).sum(axis=0)
        pv = (wts[:, None] * (var + mean**2)).sum(axis=0) - pm**2
        lo_, hi_ = _mixture_quantiles(mean.T, np.sqrt(np.maximum(var, 1e-300)).T, wts, probs)
        return pm, np.sqrt(np.maximum(pv, 0.0)), lo_, hi_

    est, sd, lo, hi = post(m, s2)
    dest, _, dlo, dhi = post(md, sd2)
    mu_m, mu_sd, mu_lo, mu_hi = post(mu[:, None], np.broadcast_to(vmu[:, None], (len(t), 1)))
    # plug-in BLUP at the point estimate of tau^2 (metafor::blup)
    if V is None:
        w_hat = 1.0 / (v + tau2_hat)
        mu_hat = float(np.sum(w_hat * y) / w_hat.sum())
        b_hat = v / (v + tau2_hat)
        blup = mu_hat + (1 - b_hat) * (y - mu_hat)
        blup_se = np.sqrt((1 - b_hat) * v + b_hat**2 / w_hat.sum())
    else:
        _, _, _, bm, bs2, _, _ = _gls_posteriors(y, V, np.array([tau2_hat]))
        blup, blup_se = bm[0], np.sqrt(bs2[0])

    z = float(stats.norm.ppf(1 - alpha / 2))
    cols = {c: np.full(k_all, np.nan) for c in ("estimate", "se", "lower", "upper", "shrinkage",
                                                "blup", "blup_se", "diff_estimate", "diff_lower",
                                                "diff_upper")}
    for c, val in (("estimate", est), ("se", sd), ("lower", lo), ("upper", hi),
                   ("shrinkage", (wts[:, None] * B).sum(axis=0)), ("blup", blup),
                   ("blup_se", blup_se), ("diff_estimate", dest), ("diff_lower", dlo),
                   ("diff_upper", dhi)):
        cols[c][ok] = val
    se_own = np.sqrt(v_all)
    sites = pd.DataFrame({"label": lab, "yi": y_all, "vi": v_all, "status": status, **cols,
                          "own_lower": y_all - z * se_own, "own_upper": y_all + z * se_own})
    return EmpiricalBayesResult(
        sites=sites, pooled=pooled, tau2=tau2_hat, tau2_fixed=tau2 is not None,
        interval="fixed" if tau2 is not None else interval, alpha=alpha,
        collaborative={"estimate": float(mu_m[0]), "se": float(mu_sd[0]), "lower": float(mu_lo[0]),
                       "upper": float(mu_hi[0])},
        tau_posterior=pd.DataFrame({"tau": t, "weight": wts}), method_note=note)

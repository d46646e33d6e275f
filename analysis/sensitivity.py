"""Sensitivity analyses for the staggered imputation estimator (:func:`analysis.staggered.
fit_its_staggered`), each a pure function on a tidy site-month frame (or a fitted result) returning
result objects, plus :func:`run_sensitivity`, which runs them all and returns one tidy table
(analysis, estimate, lower, upper, note) for a report's "Sensitivity analyses" section.

* :func:`placebo_in_time`: pretend every site went live ``shift`` (12) months earlier and use only
  the real pre-go-live months: the average "effect" over the fake post months should be 1.
* :func:`leave_one_wave_out`: refit without each wave (sites sharing a go-live month).
* :func:`transition_sensitivity`: anticipation windows of 0 and 12 months before go-live.
* :func:`covariance_sensitivity`: cluster-robust (by site) vs panel-HAC (Newey-West within site)
  vs Driscoll-Kraay covariance of the same fit.
* :func:`relative_magnitude_bounds`: Rambachan & Roth (2023) relative-magnitude bounds on the
  effect at one event time.

Rambachan-Roth mapping. The event-study path is the lead coefficients (event times -L..-1, from the
pre-trend fit) followed by the lags (0..e, from the imputation fit), on the log scale. The bias
path ``delta`` is anchored at 0 in the month before the lead window (in the fit, so unbiased by
construction); the leads estimate delta before go-live (the true effect is 0 there). Delta^RM(M):
every post-go-live month-to-month change of delta, starting with delta_0 - delta_-1, is at most
``M`` times the largest pre-go-live change ``M_pre = max |delta_s - delta_(s-1)|``. For the effect
at event time e the identified set is therefore

    theta in [b_e - b_-1 - (e + 1) M M_pre,  b_e - b_-1 + (e + 1) M M_pre]

(the closed form of the linear programs of Rambachan & Roth for a single post period; tested
against ``scipy.optimize.linprog``). The confidence interval is a conservative Bonferroni
projection rather than HonestDiD's conditional-least-favourable hybrid: with probability
>= 1 - alpha/2 every pre-period change is within ``|d_j| <= |d_hat_j| + z_(1 - alpha/(4q)) se_j``
(so ``M_pre <= M_up``), and with probability >= 1 - alpha/2 ``b_e - b_-1`` is within
``z_(1 - alpha/4) (se_e + se_-1)`` (the sum of SEs bounds the SD of the difference whatever the
correlation between the two fits). The union gives coverage >= 1 - alpha under Delta^RM(M). It is
wider than HonestDiD's interval; with noisy monthly leads relative-magnitude bounds are wide in any
implementation, because a single noisy month-to-month change sets ``M_pre``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from .its import _event_time, _label_time
from .staggered import StaggeredITSResult, fit_its_staggered

__all__ = [
    "RelativeMagnitudeBounds",
    "SensitivityReport",
    "covariance_sensitivity",
    "leave_one_wave_out",
    "placebo_in_time",
    "relative_magnitude_bounds",
    "rm_bounds",
    "run_sensitivity",
    "transition_sensitivity",
]

_COLUMNS = ["analysis", "estimate", "lower", "upper", "se", "note"]


def _row(analysis: str, eff, note: str = "") -> dict[str, Any]:
    return {"analysis": analysis, "estimate": eff.relative, "lower": eff.lower,
            "upper": eff.upper, "se": eff.se, "note": note}


def _fit_quietly(*args, **kwargs) -> tuple[StaggeredITSResult, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = fit_its_staggered(*args, **kwargs)
    return res, [str(w.message) for w in caught]


def _shift_months(values: pd.Series, months: int, is_date: bool) -> pd.Series:
    if is_date:
        return pd.to_datetime(values) - pd.DateOffset(months=int(months))
    return values - int(months)


def placebo_in_time(
    data: pd.DataFrame, outcome: str, *, site: str, time: str, go_live: str, shift: int = 12,
    **fit_kwargs,
) -> pd.DataFrame:
    """Placebo in time: keep each site's pre-go-live months only, move every go-live ``shift``
    months earlier and refit. Returns one row (analysis, estimate, lower, upper, se, note): the
    average "effect" over fake event times 0..shift-1, which should be 1 (0 for Gaussian).
    ``fit_kwargs`` go to :func:`fit_its_staggered` (``leads`` is set to 0)."""
    if int(shift) != shift or shift < 1:
        raise ValueError(f"shift must be a positive integer number of months, got {shift!r}")
    tidx, gidx, _, is_date = _event_time(data, time, go_live)
    pre = data[(tidx - gidx) < 0].copy()
    if pre.empty:
        raise ValueError("no pre-go-live months: the placebo-in-time analysis needs them")
    pre[go_live] = _shift_months(pre[go_live], shift, is_date)
    kw = {**fit_kwargs, "leads": 0, "lags": int(shift) - 1}
    res, warns = _fit_quietly(pre, outcome, site=site, time=time, go_live=go_live, **kw)
    eff = res.average_effect(0, int(shift) - 1)
    note = (f"go-live moved {shift} months earlier, pre-go-live data only; fake event months "
            f"0-{shift - 1}; {res.n_sites} sites")
    if eff.extrapolated_share > 0:
        note += f"; {eff.extrapolated_share:.0%} of the counterfactual extrapolated"
    return pd.DataFrame([_row(f"placebo in time ({shift} months earlier)", eff, note)],
                        columns=_COLUMNS).assign(warnings=len(warns))


def leave_one_wave_out(
    data: pd.DataFrame, outcome: str, *, site: str, time: str, go_live: str, event_time: int = 12,
    **fit_kwargs,
) -> pd.DataFrame:
    """Refit without each wave (the sites sharing a go-live month) in turn; one row per wave with
    the effect at ``event_time``. A wave whose removal leaves the event time unestimable keeps its
    row with NaN and the reason in ``note``."""
    _, gidx, _, is_date = _event_time(data, time, go_live)
    waves = np.unique(gidx)
    if len(waves) < 2:
        raise ValueError("leave-one-wave-out needs at least 2 waves (distinct go-live months)")
    rows = []
    for k, w in enumerate(waves, start=1):
        label = str(_label_time(int(w), is_date))[:7]
        sub = data[gidx != w]
        name = f"leave out wave {k} (go-live {label})"
        try:
            res, _ = _fit_quietly(sub, outcome, site=site, time=time, go_live=go_live, **fit_kwargs)
            eff = res.effect_at(event_time)
            note = f"{res.n_sites} sites; effect at event month {event_time}"
            if eff.extrapolated_share > 0:
                note += f"; {eff.extrapolated_share:.0%} of the counterfactual extrapolated"
            rows.append(_row(name, eff, note))
        except ValueError as exc:
            rows.append({"analysis": name, "estimate": np.nan, "lower": np.nan, "upper": np.nan,
                         "se": np.nan, "note": f"not estimable: {exc}"})
    return pd.DataFrame(rows, columns=_COLUMNS)


def transition_sensitivity(
    data: pd.DataFrame, outcome: str, *, site: str, time: str, go_live: str, event_time: int = 12,
    transitions: tuple[int, ...] = (0, 12), **fit_kwargs,
) -> pd.DataFrame:
    """Effect at ``event_time`` with each anticipation window (months before go-live left out of
    the untreated fit)."""
    rows = []
    for k in transitions:
        kw = {**fit_kwargs, "transition": int(k)}
        name = f"transition {k} months before go-live"
        try:
            res, _ = _fit_quietly(data, outcome, site=site, time=time, go_live=go_live, **kw)
            rows.append(_row(name, res.effect_at(event_time),
                             f"effect at event month {event_time}; {res.n_sites} sites"))
        except ValueError as exc:
            rows.append({"analysis": name, "estimate": np.nan, "lower": np.nan, "upper": np.nan,
                         "se": np.nan, "note": f"not estimable: {exc}"})
    return pd.DataFrame(rows, columns=_COLUMNS)


def covariance_sensitivity(
    result: StaggeredITSResult, event_time: int = 12,
    se_types: tuple[str, ...] = ("cluster", "panel_hac", "driscoll_kraay"),
) -> pd.DataFrame:
    """The same fit's effect at ``event_time`` under each covariance (no refit)."""
    labels = {"cluster": "cluster-robust by site", "panel_hac": "panel HAC (Newey-West within site)",
              "driscoll_kraay": "Driscoll-Kraay (cross-site, by calendar month)"}
    rows = []
    for se in se_types:
        r = result.with_se(se)
        note = f"lag {r.hac_lags}" if se != "cluster" else f"G/(G-1), t({r.n_sites - 1})"
        rows.append(_row(f"covariance: {labels.get(se, se)}", r.effect_at(event_time), note))
    return pd.DataFrame(rows, columns=_COLUMNS)


@dataclass
class RelativeMagnitudeBounds:
    """Rambachan-Roth relative-magnitude bounds on the effect at ``event_time`` (ratio scale for
    count families; see the module docstring for the mapping and the conservative CI)."""

    event_time: int
    estimate: float  # b_e - b_-1 on the natural scale (the M = 0 point)
    max_pre_change: float  # M_pre, log scale
    max_pre_change_upper: float  # M_up, log scale
    table: pd.DataFrame = field(repr=False)  # m_bar, id_lower, id_upper, ci_lower, ci_upper
    alpha: float = 0.05

    def to_frame(self) -> pd.DataFrame:
        return self.table.copy()


def _rm_identified_set(b_pre: np.ndarray, b_e: float, e: int, m_bar: float) -> tuple[float, float]:
    """Closed form of the RM identified set for theta = tau_e (log scale)."""
    path = np.concatenate([[0.0], b_pre])
    m_pre = float(np.max(np.abs(np.diff(path)))) if len(b_pre) else 0.0
    centre = b_e - b_pre[-1]
    half = (e + 1) * m_bar * m_pre
    return centre - half, centre + half


def rm_bounds(
    b_pre: np.ndarray, v_pre: np.ndarray, b_e: float, se_e: float, event_time: int,
    m_bar: tuple[float, ...] = (0.5, 1.0, 2.0), alpha: float = 0.05,
) -> tuple[float, float, float, pd.DataFrame]:
    """Relative-magnitude bounds from an event-study path on the log (link) scale: leads
    ``b_pre`` (event times -q..-1) with covariance ``v_pre``, the estimate ``b_e`` at event time
    ``event_time`` >= 0 with SE ``se_e``. Returns (centre b_e - b_-1, M_pre, M_up, table of
    m_bar, id_lower, id_upper, ci_lower, ci_upper on the link scale)."""
    b_pre = np.asarray(b_pre, dtype=float)
    v_pre = np.asarray(v_pre, dtype=float)
    q, e = len(b_pre), int(event_time)
    D = np.eye(q) - np.eye(q, k=-1)  # changes, anchored at 0 before the window
    d = D @ b_pre
    se_d = np.sqrt(np.maximum(np.diag(D @ v_pre @ D.T), 0.0))
    c_pre = float(stats.norm.ppf(1 - alpha / (4 * q)))
    m_pre = float(np.max(np.abs(d)))
    m_up = float(np.max(np.abs(d) + c_pre * se_d))
    centre = float(b_e - b_pre[-1])
    se_c = float(se_e + np.sqrt(v_pre[-1, -1]))
    c_post = float(stats.norm.ppf(1 - alpha / 4))
    rows = []
    for m in m_bar:
        lo, hi = _rm_identified_set(b_pre, b_e, e, float(m))
        half_ci = (e + 1) * float(m) * m_up
        rows.append({"m_bar": float(m), "id_lower": lo, "id_upper": hi,
                     "ci_lower": centre - c_post * se_c - half_ci,
                     "ci_upper": centre + c_post * se_c + half_ci})
    return centre, m_pre, m_up, pd.DataFrame(rows)


def relative_magnitude_bounds(
    result: StaggeredITSResult, event_time: int = 12, m_bar: tuple[float, ...] = (0.5, 1.0, 2.0),
    alpha: float | None = None,
) -> RelativeMagnitudeBounds:
    """Rambachan & Roth relative-magnitude sensitivity for the effect at ``event_time`` (>= 0):
    identified set and a conservative (Bonferroni) confidence interval for each ``m_bar``."""
    e = int(event_time)
    if e < 0:
        raise ValueError("event_time must be >= 0 (a post-go-live month)")
    if result._placebo is None:
        raise ValueError("the fit has no leads (leads=0): relative-magnitude bounds need them")
    alpha = result.alpha if alpha is None else float(alpha)
    lead = result._placebo
    ev = sorted(int(v) for v in lead.lead_e)
    if ev[-1] != -1:
        raise ValueError("the lead at event time -1 is needed (no site-months there)")
    est, contrib = lead.lead_estimates(ev)
    V = lead.covariance(contrib, result.se_type, result.hac_lags)
    eff = result.effect_at(e)
    centre, m_pre, m_up, tab = rm_bounds(est, V, eff.link_estimate, eff.se, e, m_bar, alpha)
    if result.family != "gaussian":
        for c in ("id_lower", "id_upper", "ci_lower", "ci_upper"):
            tab[c] = np.exp(tab[c])
        centre = math.exp(centre)
    return RelativeMagnitudeBounds(
        event_time=e, estimate=centre, max_pre_change=m_pre, max_pre_change_upper=m_up,
        table=tab, alpha=alpha,
    )


@dataclass
class SensitivityReport:
    """All sensitivity analyses: ``table`` (analysis, estimate, lower, upper, se, note; the
    primary estimate first) and the primary fit."""

    table: pd.DataFrame
    primary: StaggeredITSResult = field(repr=False)
    bounds: RelativeMagnitudeBounds | None = field(default=None, repr=False)

    def summary(self) -> pd.DataFrame:
        return self.table.copy()


def run_sensitivity(
    data: pd.DataFrame, outcome: str, *, site: str, time: str, go_live: str, event_time: int = 12,
    m_bar: tuple[float, ...] = (0.5, 1.0, 2.0), primary: StaggeredITSResult | None = None,
    **fit_kwargs,
) -> SensitivityReport:
    """Run every sensitivity analysis for the effect at ``event_time`` and return one tidy table:
    primary estimate, pre-trend test, placebo in time, leave-one-wave-out, transition 0 vs 12,
    covariance (cluster vs panel HAC vs Driscoll-Kraay) and Rambachan-Roth relative-magnitude
    bounds (M = ``m_bar``). ``fit_kwargs`` go to every :func:`fit_its_staggered` call; pass
    ``primary`` to reuse an existing fit with the same settings."""
    cols = {"site": site, "time": time, "go_live": go_live}
    if primary is None:
        primary, _ = _fit_quietly(data, outcome, **cols, **fit_kwargs)
    eff = primary.effect_at(event_time)
    rows = [_row("primary: imputation estimator", eff,
                 f"effect at event month {event_time}; {primary.n_sites} sites; "
                 f"{eff.extrapolated_share:.0%} of the counterfactual extrapolated")]
    bounds = None
    if primary._placebo is not None:
        pt = primary.pretrend_test()
        rows.append({"analysis": f"pre-trend test ({pt.df} leads)", "estimate": np.nan,
                     "lower": np.nan, "upper": np.nan, "se": np.nan,
                     "note": f"F = {pt.f_statistic:.2f} on ({pt.df}, {pt.df_denom}) df, "
                             f"p = {pt.p_value:.3f}"})
    frames = [pd.DataFrame(rows, columns=_COLUMNS)]
    kw = {k: v for k, v in fit_kwargs.items() if k not in ("transition",)}
    frames.append(placebo_in_time(data, outcome, **cols, **fit_kwargs)[_COLUMNS])
    frames.append(leave_one_wave_out(data, outcome, **cols, event_time=event_time, **fit_kwargs))
    frames.append(transition_sensitivity(data, outcome, **cols, event_time=event_time, **kw))
    frames.append(covariance_sensitivity(primary, event_time))
    if primary._placebo is not None:
        bounds = relative_magnitude_bounds(primary, event_time, m_bar)
        rm = [{"analysis": f"Rambachan-Roth relative magnitudes, M = {r.m_bar:g}",
               "estimate": bounds.estimate, "lower": r.ci_lower, "upper": r.ci_upper, "se": np.nan,
               "note": f"identified set {r.id_lower:.3g} to {r.id_upper:.3g}; conservative "
                       f"(Bonferroni) {round(100 * (1 - bounds.alpha))}% CI"}
              for r in bounds.table.itertuples()]
        frames.append(pd.DataFrame(rm, columns=_COLUMNS))
    table = pd.concat(frames, ignore_index=True)
    return SensitivityReport(table=table, primary=primary, bounds=bounds)

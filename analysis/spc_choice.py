"""Control charts fit for the data: the period, limits and rules chosen from the expected counts.

A site with 5 sepsis episodes a month has about one death every six months. Monthly p charts of
such data mostly show zeros below the centre line (long "runs") and single deaths far above
3-sigma limits, so they signal in most hospitals when nothing changes. The choosers here apply
documented rules instead (:data:`ATTRIBUTE_RULE`, :data:`LANEY_RULE`, :data:`TIME_RULE`):

:func:`attribute_chart` (proportions and rates: processes, recognition, mortality)
    1. **Period**: the shortest of month, quarter and half-year for which the expected number of
       events per point, and for proportions of non-events too, is at least ``min_expected``
       (default :data:`MIN_EXPECTED`). The expectation is the series' own: the smaller of events
       and non-events (proportions) or the events (rates), per calendar month, times the months
       in a period. Periods are anchored at go-live, so no point straddles it. Coarser periods
       also keep figures away from points with 1-10 events, which reports may not draw.
    2. **Limits**: exact binomial (p) or Poisson (u) probability limits with the tail probability
       of 3 sigma (0.00135 on each side), so skewed small counts do not cross 3-sigma limits by
       chance.
    3. **Rules**: the Anhøj runs rules need points about as likely above as below the centre
       line; they are used only when the expected count per point reaches ``min_expected``.
       Otherwise (rare deaths at a small hospital, even by half-year) only the probability limits
       signal, and the caption says so.
    4. **Phases** split at go-live when it is given; shifts found by the runs rules are marked
       as signals, not new phases.
    5. **Laney's p'/u'** only when subgroups are large enough for over-dispersion to matter and
       it is evident (:data:`LANEY_RULE`): mean subgroup size at least :data:`LANEY_MIN_N` and the
       Pearson dispersion test (sum of squared z-scores within phases against chi-square) has
       p < :data:`LANEY_ALPHA`. Otherwise plain p/u charts (Laney 2002 designed p' for very
       large subgroups; with 4-37 episodes a month the binomial variation dominates and sigma_z
       is only noise).

:func:`time_chart` (minutes to bolus / antibiotic)
    Median chart: each point is the median time of its month (or coarser period), the centre
    line the median of all times of the phase, and the limits distribution-free probability
    limits from the phase's pooled times (:func:`analysis.spc.median_chart`), truncated at 0
    minutes. Treatment times are right-skewed (log-SD about 0.9) and a few are given before T0
    (negative minutes): 3-sigma limits of monthly means then went below 0 and signalled on
    single long waits, and even means of log times are pulled down by the early treatments;
    medians are robust to both, are what the IPSO measures report (median minutes) and estimate
    the ratio-of-medians estimand directly. Period: the shortest of month/quarter/half-year with
    at least ``min_size`` times per point on average (:data:`TIME_RULE`). Geometric-mean (log
    Xbar) and mean (Xbar truncated at 0) charts are available by ``statistic``.

:func:`bernoulli_cusum`
    Risk-adjusted Bernoulli CUSUM (Steiner, Cook, Farewell & Treasure 2000, Biostatistics 1:441)
    of episode-level outcomes against case-mix expected risks, with the threshold set by
    simulation for a stated false-alarm probability over the series. It works on single episodes,
    so its figure reveals individual events: for internal monitoring, not published reports.

The null false-alarm rates of these choices are measured in ``benchmarks/bench_spc_null.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from scipy import stats

from . import spc

#: Expected events (and non-events) per point needed for a period to be used with runs rules.
MIN_EXPECTED: float = 5.0
#: Laney's p'/u' only from this mean subgroup size on ...
LANEY_MIN_N: float = 100.0
#: ... and when the dispersion test has a p-value below this.
LANEY_ALPHA: float = 0.01
#: Time-to-treatment charts: mean number of times per point needed for a period.
TIME_MIN_SIZE: float = 5.0
#: Candidate periods in months, shortest first.
PERIODS: tuple[int, ...] = (1, 3, 6)
PERIOD_NAMES = {1: "month", 2: "two months", 3: "quarter", 4: "four months", 6: "half-year",
                12: "year"}

ATTRIBUTE_RULE = (
    f"period: the shortest of month, quarter and half-year with at least {MIN_EXPECTED:g} expected "
    "events (and non-events) per point; exact binomial/Poisson probability limits (0.00135 each "
    "side); Anhøj runs rules only when that expectation is met, otherwise the limits alone; "
    "phases split at go-live; detected shifts marked as signals")
LANEY_RULE = (
    f"Laney p'/u' only when the mean subgroup size is at least {LANEY_MIN_N:g} and the Pearson "
    f"dispersion test within phases has p < {LANEY_ALPHA:g}; otherwise p/u")
TIME_RULE = (
    "median chart of minutes (distribution-free probability limits from the phase's pooled "
    f"times, never below 0); period: the shortest of month, quarter and half-year with at least "
    f"{TIME_MIN_SIZE:g} times per point on average")


@dataclass(frozen=True)
class ChartChoice:
    """How a chart was chosen: ``chart`` key, ``months`` per point, ``limits``, ``rules``,
    ``expected_per_point`` (events, for attribute charts; times, for time charts), the
    dispersion test (``phi``, ``dispersion_p``, ``mean_n``) and a plain-language ``reason``."""

    chart: str
    months: int
    limits: str
    rules: str
    expected_per_point: float
    runs_rules: bool
    reason: str
    phi: float = float("nan")
    dispersion_p: float = float("nan")
    mean_n: float = float("nan")

    @property
    def point(self) -> str:
        return f"one {PERIOD_NAMES.get(self.months, f'{self.months}-month period')}"


# ---------------------------------------------------------------------------------------------
# periods
# ---------------------------------------------------------------------------------------------


def _month_index(x) -> np.ndarray:
    """Months since year 0 of monthly x values (Timestamp, Period, datetime64 or "YYYY-MM")."""
    s = pd.Series(x)
    if isinstance(s.dtype, pd.PeriodDtype):
        s = s.dt.to_timestamp()
    t = pd.to_datetime(s, errors="coerce")
    if t.isna().any():
        bad = s[t.isna()].iloc[0]
        raise ValueError(f"x must hold months (dates, periods or 'YYYY-MM'); got {bad!r}")
    return (t.dt.year * 12 + t.dt.month - 1).to_numpy()


def period_starts(x, months: int, anchor=None) -> pd.Series:
    """The start (first day of the month, Timestamp) of the `months`-long period holding each x.
    Periods are aligned so that `anchor` (e.g. the go-live month) starts one; without an anchor
    they follow the calendar (quarters from January, April, July and October)."""
    if int(months) != months or months < 1:
        raise ValueError(f"months must be a positive whole number, got {months!r}")
    m = _month_index(x)
    a = int(_month_index([anchor])[0]) if anchor is not None else 0
    start = a + np.floor_divide(m - a, int(months)) * int(months)
    ts = pd.to_datetime(pd.DataFrame({"year": start // 12, "month": start % 12 + 1, "day": 1}))
    return pd.Series(ts.to_numpy(), index=pd.Series(x).index)


def choose_period(expected_per_month: float, *, min_expected: float = MIN_EXPECTED,
                  periods: Sequence[int] = PERIODS) -> tuple[int, bool]:
    """(months per point, whether the expectation is met): the shortest of `periods` whose
    expected count per point, ``expected_per_month x months``, is at least `min_expected`;
    the longest period (and False) when none is."""
    periods = sorted(int(p) for p in periods)
    if not periods:
        raise ValueError("periods must not be empty")
    for m in periods:
        if expected_per_month * m >= min_expected:
            return m, True
    return periods[-1], False


def dispersion_test(y: np.ndarray, n: np.ndarray, kind: Literal["p", "u"],
                    parts: np.ndarray | None = None) -> dict[str, float]:
    """Pearson dispersion of counts `y` out of `n` (proportions, ``kind="p"``) or per exposure
    `n` (rates, ``"u"``) around each phase's pooled centre: phi = sum z^2 / df with
    df = sum over phases of (points - 1); ``p_value`` is the chi-square upper tail."""
    y, n = np.asarray(y, float), np.asarray(n, float)
    parts = np.ones(len(y), int) if parts is None else np.asarray(parts)
    chi2, df = 0.0, 0
    for p in np.unique(parts):
        m = parts == p
        if m.sum() < 2:
            continue
        cl = y[m].sum() / n[m].sum()
        var = cl * (1 - cl) / n[m] if kind == "p" else cl / n[m]
        if cl <= 0 or (kind == "p" and cl >= 1):
            continue
        chi2 += float(np.sum((y[m] / n[m] - cl) ** 2 / var))
        df += int(m.sum()) - 1
    if df == 0:
        return {"phi": float("nan"), "df": 0, "p_value": float("nan"), "mean_n": float(n.mean())}
    return {"phi": chi2 / df, "df": df, "p_value": float(stats.chi2.sf(chi2, df)),
            "mean_n": float(n.mean())}


def _go_part(xs: pd.Series, go_live) -> list | None:
    """[go-live period start] when there are points on both sides, else None."""
    if go_live is None:
        return None
    g = pd.Timestamp(period_starts([go_live], 1).iloc[0])
    after = xs[xs >= g]
    if (xs < g).any() and len(after):
        return [pd.Timestamp(after.min())]  # the first charted period from go-live on
    return None


# ---------------------------------------------------------------------------------------------
# attribute charts: processes, recognition, mortality
# ---------------------------------------------------------------------------------------------


def attribute_chart(df: pd.DataFrame, x: str, y: str, n: str, *, kind: Literal["p", "u"] = "p",
                    go_live=None, min_expected: float = MIN_EXPECTED,
                    periods: Sequence[int] = PERIODS, laney: Literal["auto"] | bool = "auto",
                    multiply: float = 1.0, detect_shifts: bool = True,
                    min_n: float | None = None) -> spc.ControlChart:
    """A p (proportion, events `y` of `n`) or u (rate, events per exposure `n`) chart fit for
    the data, by the rules of :data:`ATTRIBUTE_RULE` and :data:`LANEY_RULE` (module docstring):
    the period from the expected count per point, exact probability limits, runs rules only
    when the counts support them, phases split at `go_live` (a month), detected shifts marked.

    `df` has one row per month (x: month as date, period or "YYYY-MM"); rows of the same period
    are summed. Months with a zero denominator are left out (and counted in the notes).
    ``ControlChart.choice`` records the choice; ``point`` says what a point is. For figures
    that may not show counts of 1 to 10, prefer aggregation further: e.g.
    ``min_expected=11, periods=(1, 3, 6, 12)`` asks for about 11 events per point."""
    if kind not in ("p", "u"):
        raise ValueError(f"kind must be 'p' or 'u', got {kind!r}")
    spc._check_frame(df, {"x": x, "y": y, "n": n})
    yv = pd.to_numeric(df[y], errors="coerce")
    nv = pd.to_numeric(df[n], errors="coerce")
    if yv.isna().any() or nv.isna().any():
        col = y if yv.isna().any() else n
        raise ValueError(f"column {col!r} has missing or non-numeric values")
    months = _month_index(df[x])
    n_months = max(len(np.unique(months)), 1)
    events = float(yv.sum())
    non_events = float((nv - yv).sum()) if kind == "p" else float("inf")
    per_month = min(events, non_events) / n_months
    m, runs_ok = choose_period(per_month, min_expected=min_expected, periods=periods)
    work = pd.DataFrame({"period": period_starts(df[x], m, anchor=go_live), "y": yv, "n": nv})
    agg = work.groupby("period", sort=True)[["y", "n"]].sum().reset_index()
    zero = agg["n"] <= 0
    agg = agg[~zero].reset_index(drop=True)
    if len(agg) < 2:
        raise ValueError(f"fewer than 2 {PERIOD_NAMES.get(m, 'period')}s with a denominator: "
                         "nothing to chart")
    part = _go_part(agg["period"], go_live)
    parts = (np.where(agg["period"] >= part[0], 2, 1) if part else np.ones(len(agg), int))
    disp = dispersion_test(agg["y"].to_numpy(), agg["n"].to_numpy(), kind, parts)
    if laney == "auto":
        use_prime = bool(disp["mean_n"] >= LANEY_MIN_N and disp["p_value"] < LANEY_ALPHA)
    else:
        use_prime = bool(laney)
    chart = ("pp" if kind == "p" else "up") if use_prime else kind
    limits = "sigma" if use_prime else "exact"
    rules = "anhoej" if runs_ok else "shewhart"
    expected_pp = per_month * m
    reason = (f"{PERIOD_NAMES.get(m, m)}ly points: about {expected_pp:.1f} expected events per point"
              + (" (events or non-events, whichever are rarer)" if kind == "p" else ""))
    if not runs_ok:
        reason += (f"; fewer than {min_expected:g} even by {PERIOD_NAMES[m]}, so runs rules are off "
                   "and only the probability limits signal")
    if use_prime:
        reason += (f"; Laney {'p' if kind == 'p' else 'u'}' chart: mean subgroup size "
                   f"{disp['mean_n']:.0f}, dispersion phi = {disp['phi']:.2f} (p = {disp['p_value']:.2g})")
    choice = ChartChoice(chart=chart, months=m, limits=limits, rules=rules,
                         expected_per_point=expected_pp, runs_rules=runs_ok, reason=reason,
                         phi=disp["phi"], dispersion_p=disp["p_value"], mean_n=disp["mean_n"])
    # a shift is located only where a runs rule can fire: not when the limits alone are used
    kwargs = {"part": part, "multiply": multiply, "rules": rules,
              "detect_shifts": detect_shifts and runs_ok, "point": choice.point, "min_n": min_n}
    if not use_prime:
        kwargs["limits"] = "exact"
    cc = spc.control_chart(agg, chart, "period", "y", "n", **kwargs)
    cc.y_name, cc.n_name = y, n
    cc.x_name = f"{PERIOD_NAMES.get(m, 'period')} (start)"
    cc.choice = choice
    cc.notes.insert(0, reason)
    if zero.any():
        cc.notes.append(f"{int(zero.sum())} period(s) without a denominator left out")
    return cc


def rare_event_chart(df: pd.DataFrame, x: str, y: str, n: str, *, go_live=None,
                     min_expected: float = MIN_EXPECTED, periods: Sequence[int] = PERIODS,
                     multiply: float = 1.0, detect_shifts: bool = True) -> spc.ControlChart:
    """The mortality chart: a proportion chart of rare events (deaths `y` of episodes `n`) by
    :func:`attribute_chart`'s rules, never Laney's p' (mortality over-dispersion within one
    hospital is not what p' corrects). Deaths are rare, so this usually gives quarterly or
    half-yearly points with exact binomial limits, and the limits alone at small hospitals."""
    return attribute_chart(df, x, y, n, kind="p", go_live=go_live, min_expected=min_expected,
                           periods=periods, laney=False, multiply=multiply,
                           detect_shifts=detect_shifts)


# ---------------------------------------------------------------------------------------------
# time to treatment
# ---------------------------------------------------------------------------------------------


def time_chart(df: pd.DataFrame, x: str, y: str, *, go_live=None,
               statistic: Literal["median", "geomean", "mean"] = "median", floor: float = 1.0,
               min_size: float = TIME_MIN_SIZE, periods: Sequence[int] = PERIODS,
               detect_shifts: bool = True, rules: str = "anhoej") -> spc.ControlChart:
    """Chart of episode-level times (e.g. minutes from T0 to first antibiotic) by
    :data:`TIME_RULE`. ``statistic="median"`` (default): a median chart (each point the median
    time of its period, distribution-free probability limits from the phase's pooled times,
    truncated at 0 minutes); ``"geomean"``: Xbar chart of log times (geometric means, times of
    at most `floor` minutes set to `floor`); ``"mean"``: Xbar chart of raw times with limits
    truncated at 0. Period from the mean number of times per month; phases split at `go_live`;
    shifts marked. Rows with a missing time are not charted (no treatment, no time)."""
    if statistic not in ("median", "geomean", "mean"):
        raise ValueError(f"statistic must be 'median', 'geomean' or 'mean', got {statistic!r}")
    spc._check_frame(df, {"x": x, "y": y})
    d = df.loc[df[y].notna(), [x, y]]
    if d.empty:
        raise ValueError(f"no {y!r} values to chart")
    months = _month_index(d[x])
    span = int(months.max() - months.min() + 1)
    per_month = len(d) / max(span, 1)
    m, ok = choose_period(per_month, min_expected=min_size, periods=periods)
    d = d.assign(period=period_starts(d[x], m, anchor=go_live))
    part = _go_part(d["period"], go_live)
    stat_words = {"median": "medians", "geomean": "geometric means (log scale)",
                  "mean": "means"}[statistic]
    choice = ChartChoice(
        chart="median" if statistic == "median" else "xbar", months=m, limits="sigma"
        if statistic != "median" else "exact", rules=rules, expected_per_point=per_month * m,
        runs_rules=True,
        reason=(f"{PERIOD_NAMES.get(m, m)}ly {stat_words}: about {per_month * m:.1f} times per point"
                + ("" if ok else f" (fewer than {min_size:g} even by {PERIOD_NAMES[m]})")))
    kwargs = {"part": part, "rules": rules, "detect_shifts": detect_shifts, "point": choice.point}
    if statistic == "median":
        cc = spc.median_chart(d, "period", y, bounds=(0.0, None), **kwargs)
    elif statistic == "geomean":
        cc = spc.xbar_chart(d, "period", y, log=True, floor=floor, min_n=2, **kwargs)
    else:
        cc = spc.xbar_chart(d, "period", y, bounds=(0.0, None), min_n=2, **kwargs)
    cc.x_name = f"{PERIOD_NAMES.get(m, 'period')} (start)"
    cc.choice = choice
    cc.notes.insert(0, choice.reason)
    return cc


# ---------------------------------------------------------------------------------------------
# risk-adjusted Bernoulli CUSUM
# ---------------------------------------------------------------------------------------------


@dataclass
class CusumResult:
    """Risk-adjusted Bernoulli CUSUM. ``data``: one row per episode in order (``risk``,
    ``outcome``, ``weight`` W_t, ``cusum`` S_t, ``signal`` where S_t >= h; the CUSUM restarts
    at 0 after a signal). ``h``: threshold; ``odds_ratio``: the alternative the chart is tuned
    to (> 1 deterioration, < 1 improvement); ``false_alarm``: the in-control probability of any
    signal over a series like this one that `h` was set for."""

    data: pd.DataFrame
    h: float
    odds_ratio: float
    false_alarm: float | None

    @property
    def signals(self) -> list:
        return self.data.index[self.data["signal"]].tolist()

    def plot(self, ax=None, *, title: str | None = None):
        """The CUSUM path with its threshold (episode-level: not for published figures)."""
        from .plotting import PALETTE, new_axes

        ax = new_axes(ax, figsize=(7.5, 3.2))
        d = self.data
        ax.plot(np.arange(len(d)), d["cusum"], color=PALETTE["observed"], lw=1)
        ax.axhline(self.h, color=PALETTE["limit"], ls="--", lw=1, label=f"h = {self.h:.2f}")
        sig = np.flatnonzero(d["signal"].to_numpy())
        if sig.size:
            ax.scatter(sig, d["cusum"].to_numpy()[sig], color=PALETTE["highlight"], zorder=3,
                       s=25, label="signal")
        ax.set_xlabel("Episode (in time order)")
        ax.set_ylabel("CUSUM")
        direction = "higher" if self.odds_ratio > 1 else "lower"
        ax.set_title(title or f"Risk-adjusted CUSUM for {direction} odds (OR {self.odds_ratio:g})")
        ax.legend(fontsize=7, loc="upper left")
        return ax


def _cusum_path(w: np.ndarray, h: float) -> tuple[np.ndarray, np.ndarray]:
    s = np.empty(len(w))
    sig = np.zeros(len(w), bool)
    cur = 0.0
    for i, wi in enumerate(w):
        cur = max(0.0, cur + wi)
        s[i] = cur
        if cur >= h:
            sig[i] = True
            cur = 0.0
    return s, sig


def _cusum_max(w: np.ndarray) -> np.ndarray:
    """Maximum of the CUSUM path without restarts, for each row of `w` (simulations x episodes)."""
    s = np.zeros(w.shape[0])
    best = np.zeros(w.shape[0])
    for j in range(w.shape[1]):
        s = np.maximum(0.0, s + w[:, j])
        best = np.maximum(best, s)
    return best


def cusum_weights(outcome: np.ndarray, risk: np.ndarray, odds_ratio: float) -> np.ndarray:
    """Steiner et al. (2000) log-likelihood-ratio scores: W = y log(R) - log(1 - p + R p)."""
    y = np.asarray(outcome, float)
    p = np.asarray(risk, float)
    return y * np.log(odds_ratio) - np.log(1 - p + odds_ratio * p)


def bernoulli_cusum(df: pd.DataFrame, outcome: str, risk: str | float, *, odds_ratio: float = 2.0,
                    h: float | None = None, false_alarm: float = 0.05, n_sim: int = 2000,
                    seed: int = 0, order: str | None = None) -> CusumResult:
    """Risk-adjusted Bernoulli CUSUM (Steiner et al. 2000) of binary `outcome` (e.g. 30-day
    death) against expected risks `risk` (a column of case-mix probabilities, or one number).

    ``odds_ratio``: the change the chart is tuned to detect (2 = doubled odds; 0.5 = halved). The
    threshold `h` is given, or set by simulation (`n_sim` in-control series with the same risks,
    fixed `seed`) as the 1 - `false_alarm` quantile of the series' maximum CUSUM, so the chart
    has probability `false_alarm` of any false signal over a series like this one."""
    spc._check_frame(df, {"outcome": outcome, **({"risk": risk} if isinstance(risk, str) else {})})
    d = df.sort_values(order) if order else df
    y = pd.to_numeric(d[outcome], errors="coerce").to_numpy(float)
    if np.isnan(y).any() or not np.isin(y, (0.0, 1.0)).all():
        raise ValueError(f"outcome column {outcome!r} must hold 0/1 (or False/True) without gaps")
    p = (pd.to_numeric(d[risk], errors="coerce").to_numpy(float) if isinstance(risk, str)
         else np.full(len(d), float(risk)))
    if np.isnan(p).any() or (p <= 0).any() or (p >= 1).any():
        raise ValueError("risks must be probabilities strictly between 0 and 1")
    if not (odds_ratio > 0 and odds_ratio != 1):
        raise ValueError(f"odds_ratio must be positive and not 1, got {odds_ratio!r}")
    if h is None:
        if not 0 < false_alarm < 1:
            raise ValueError(f"false_alarm must be between 0 and 1, got {false_alarm!r}")
        rng = np.random.default_rng(seed)
        sims = (rng.random((int(n_sim), len(p))) < p).astype(float)
        mx = _cusum_max(cusum_weights(sims, p[None, :], odds_ratio))
        h = float(np.quantile(mx, 1 - false_alarm))
        h = max(h, 1e-9)
        fa: float | None = false_alarm
    else:
        if not h > 0:
            raise ValueError(f"h must be positive, got {h!r}")
        fa = None
    w = cusum_weights(y, p, odds_ratio)
    s, sig = _cusum_path(w, h)
    out = pd.DataFrame({"risk": p, "outcome": y, "weight": w, "cusum": s, "signal": sig},
                       index=d.index)
    return CusumResult(out, float(h), float(odds_ratio), fa)


# ---------------------------------------------------------------------------------------------
# publication: points resting on small counts
# ---------------------------------------------------------------------------------------------


def suppress_small_points(cc: spc.ControlChart, min_cell: int = 11) -> spc.ControlChart:
    """Blank the points of a chart that rest on a count from 1 to ``min_cell - 1``, for
    publication (a proportion or rate drawn next to its subgroup size gives the count back).

    Attribute charts (p, p', u, u'): a point is blanked when its events, its non-events (p
    charts) or its subgroup size is from 1 to ``min_cell - 1``; median and Xbar charts of times:
    when fewer than `min_cell` times make the point (a median of a few times is one patient's
    time). Blanked points get ``y`` NaN (not drawn), no signal, and ``suppressed`` True; the
    limits and centre lines stay (they come from the whole phase). A note says how many points
    were blanked and why. Returns the same chart, changed in place."""
    if int(min_cell) != min_cell or min_cell < 1:
        raise ValueError(f"min_cell must be a positive integer, got {min_cell!r}")
    d = cc.data
    n = pd.to_numeric(d["n"], errors="coerce").to_numpy(float)

    def small(v: np.ndarray) -> np.ndarray:
        r = np.round(v)
        return (r >= 1) & (r < min_cell)

    if cc.chart in ("p", "pp", "u", "up"):
        events = d["y"].to_numpy(float) / (cc.multiply or 1.0) * n
        hide = small(events) | small(n)
        if cc.chart in ("p", "pp"):
            hide |= small(n - events)
    else:
        hide = np.isfinite(n) & (n < min_cell)
    hide &= np.isfinite(d["y"].to_numpy(float))
    d["suppressed"] = hide
    if hide.any():
        for col in ("signal", "sigma_signal"):
            if col in d:
                d.loc[hide, col] = False
        d.loc[hide, "y"] = np.nan
        cc.notes.append(f"points resting on fewer than {min_cell} events (or non-events, or "
                        "episodes) are not drawn")
    return cc


__all__ = [
    "ATTRIBUTE_RULE",
    "LANEY_ALPHA",
    "LANEY_MIN_N",
    "LANEY_RULE",
    "MIN_EXPECTED",
    "PERIODS",
    "TIME_MIN_SIZE",
    "TIME_RULE",
    "ChartChoice",
    "CusumResult",
    "attribute_chart",
    "bernoulli_cusum",
    "choose_period",
    "cusum_weights",
    "dispersion_test",
    "period_starts",
    "rare_event_chart",
    "suppress_small_points",
    "time_chart",
]

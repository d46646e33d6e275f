"""Signal rules for SPC charts: Anhøj runs rules, Shewhart 3-sigma, IHI / Provost-Murray rules.

Everything here works on plain numpy arrays (values, centre line, sigma) so that the rules can be
tested on their own; :mod:`analysis.spc` applies them per chart part.

Rule sets (the name is always carried in the chart result and printed in the plot caption):

``"anhoej"`` (default, as R's qicharts2)
    Runs analysis on the points of a part that are included in the limit calculation, against the
    centre line. Points exactly on the centre line are not useful: they neither add to nor break a
    run. With ``n`` useful points a signal fires when the longest run (consecutive points on the same
    side) is longer than ``round(log2(n)) + 3`` (Schilling 2012) or when the number of crossings
    (``runs - 1``) is smaller than ``qbinom(0.05, n - 1, 0.5)`` (Chen 2010); see qicharts2
    ``R/helper.functions.R::runs.analysis``. Control charts additionally flag points outside the
    3-sigma limits (Shewhart).
``"shewhart"``
    Only points outside the 3-sigma limits. Runs statistics are still reported, but not used.
``"ihi"`` (Provost & Murray, *The Health Care Data Guide*, 2011)
    Control charts: (1) a point outside the control limits; (2) shift: 8 or more consecutive points
    on the same side of the centre line; (3) trend: 6 consecutive points all increasing or all
    decreasing; (4) two out of three consecutive points beyond 2 sigma (outer third) on the same
    side; (5) 15 consecutive points within 1 sigma (inner third) of the centre line.
    Run charts: shift of 6 or more consecutive points on one side of the median; trend of 5 or more
    points all going up or all going down; too few or too many runs (exact Swed-Eisenhart runs
    test, two-sided 5%, conditional on the numbers of points above and below the median; the
    Guide's table is the same test tabulated for equal halves). The "astronomical data point" rule
    is a judgement call and is NOT automated.
    Conventions: a point on the centre line neither counts towards nor breaks a shift; in a trend,
    a point equal to its predecessor neither counts towards nor breaks the trend (Guide, ch. 3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import stats

RULE_SETS = ("anhoej", "shewhart", "ihi")

RULE_CAPTIONS = {
    "anhoej": "Anhøj rules (longest run > round(log2 n) + 3; crossings < qbinom(0.05, n-1, 0.5))",
    "shewhart": "Shewhart rule (points outside 3-sigma limits)",
    "ihi": "IHI / Provost-Murray rules (point outside limits; 8+ points on one side; trend of 6;"
    " 2 of 3 beyond 2 sigma; 15 within 1 sigma)",
    "ihi_run": "IHI / Provost-Murray run-chart rules (shift of 6+; trend of 5+; too few or too many"
    " runs; astronomical point not automated)",
}


def rule_caption(rules: str, chart: str) -> str:
    """Readable name of the rule set used on a chart (for captions)."""
    if rules == "ihi" and chart == "run":
        return RULE_CAPTIONS["ihi_run"]
    text = RULE_CAPTIONS[rules]
    if rules == "anhoej" and chart != "run":
        text += " + Shewhart 3-sigma limits"
    return text


def check_rules(rules: str) -> str:
    """Validate a rule-set name and return it lower-cased."""
    if not isinstance(rules, str) or rules.lower() not in RULE_SETS:
        raise ValueError(f"rules must be one of {RULE_SETS}, got {rules!r}")
    return rules.lower()


def longest_run_max(n_useful: int) -> int:
    """Anhøj upper limit for the longest run: round(log2(n)) + 3 (qicharts2, Schilling 2012)."""
    if n_useful < 1:
        raise ValueError("longest_run_max needs at least one useful observation")
    # R's round() is half-to-even; log2(n) of an integer is never exactly x.5, so no ambiguity.
    return round(math.log2(n_useful)) + 3


def n_crossings_min(n_useful: int) -> int:
    """Anhøj lower limit for crossings: qbinom(0.05, n - 1, 0.5) (qicharts2, Chen 2010)."""
    if n_useful < 1:
        raise ValueError("n_crossings_min needs at least one useful observation")
    # scipy's binom.ppf matches R's qbinom: smallest k with P(X <= k) >= p.
    return int(stats.binom.ppf(0.05, max(n_useful - 1, 0), 0.5))


@dataclass(frozen=True)
class RunsAnalysis:
    """Runs statistics of one chart part (points on the centre line are not useful)."""

    n_obs: int
    n_useful: int
    longest_run: int | None
    longest_run_max: int | None
    n_crossings: int | None
    n_crossings_min: int | None
    n_runs: int | None
    n_above: int
    n_below: int

    @property
    def anhoej_signal(self) -> bool:
        if not self.n_useful:
            return False
        return bool(
            self.longest_run > self.longest_run_max or self.n_crossings < self.n_crossings_min
        )


def _sides(y: np.ndarray, cl: np.ndarray) -> np.ndarray:
    d = np.sign(np.asarray(y, float) - np.asarray(cl, float))
    d[np.isnan(d)] = 0
    return d


def runs_analysis(y: np.ndarray, cl: np.ndarray) -> RunsAnalysis:
    """Anhøj runs analysis of ``y`` against centre line ``cl`` (arrays of equal length)."""
    y = np.asarray(y, float)
    sides = _sides(y, cl)
    useful = sides[sides != 0]
    n_useful = int(useful.size)
    n_above = int((useful > 0).sum())
    n_below = n_useful - n_above
    if n_useful == 0:
        return RunsAnalysis(int(y.size), 0, None, None, None, None, None, 0, 0)
    change = np.flatnonzero(np.diff(useful) != 0)
    n_runs = int(change.size + 1)
    bounds = np.concatenate(([0], change + 1, [n_useful]))
    longest = int(np.diff(bounds).max())
    return RunsAnalysis(
        n_obs=int(y.size),
        n_useful=n_useful,
        longest_run=longest,
        longest_run_max=longest_run_max(n_useful),
        n_crossings=n_runs - 1,
        n_crossings_min=n_crossings_min(n_useful),
        n_runs=n_runs,
        n_above=n_above,
        n_below=n_below,
    )


# --------------------------------------------------------------------------------------------
# Point-level rules (used by the IHI rule set and by the shift detector)
# --------------------------------------------------------------------------------------------


def _side_runs(y: np.ndarray, cl: np.ndarray) -> list[tuple[np.ndarray, int]]:
    """Runs of useful points on one side of ``cl``, in order: (positions, side) per run.

    Points on the centre line neither count nor break a run (they are in no run)."""
    sides = _sides(y, cl)
    idx = np.flatnonzero(sides != 0)
    if idx.size == 0:
        return []
    s = sides[idx]
    cuts = np.flatnonzero(np.diff(s) != 0) + 1
    return [(pos, int(sides[pos[0]])) for pos in np.split(idx, cuts)]


def shift_points(y: np.ndarray, cl: np.ndarray, min_length: int) -> np.ndarray:
    """Flag points that belong to a run of >= ``min_length`` useful points on one side of ``cl``.

    Points on the centre line neither count nor break the run; they are not flagged.
    """
    flags = np.zeros(np.shape(y)[0], bool)
    for pos, _ in _side_runs(y, cl):
        if pos.size >= min_length:
            flags[pos] = True
    return flags


def first_shift(y: np.ndarray, cl: np.ndarray, min_length: int, start_at: int = 0):
    """Return (first index, last index, side) of the first run of >= ``min_length`` points.

    Only runs starting at or after position ``start_at`` are considered. Returns None if none.
    """
    for pos, side in _side_runs(y, cl):
        if pos.size >= min_length and pos[0] >= start_at:
            return int(pos[0]), int(pos[-1]), side
    return None


def trend_points(y: np.ndarray, min_length: int) -> np.ndarray:
    """Flag points in a monotone run of >= ``min_length`` points (all up or all down).

    A point equal to its predecessor neither counts towards nor breaks the trend (it is skipped).
    """
    y = np.asarray(y, float)
    flags = np.zeros(y.size, bool)
    idx = [i for i in range(y.size) if not np.isnan(y[i])]
    # drop repeats: keep the first of equal consecutive values
    kept = []
    for i in idx:
        if kept and y[i] == y[kept[-1]]:
            continue
        kept.append(i)
    if len(kept) < min_length:
        return flags
    steps = np.sign(np.diff(y[kept]))
    start = 0  # index into steps
    for j in range(1, steps.size + 1):
        if j == steps.size or steps[j] != steps[start]:
            n_points = j - start + 1
            if n_points >= min_length:
                flags[kept[start : j + 1]] = True
            start = j
    return flags


def two_of_three_beyond_2sigma(y: np.ndarray, cl: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Flag points in a window of 3 consecutive points where >= 2 are beyond 2 sigma on one side."""
    y, cl, sigma = (np.asarray(a, float) for a in (y, cl, sigma))
    z = (y - cl) / sigma
    flags = np.zeros(y.size, bool)
    for side in (1, -1):
        beyond = np.nan_to_num(side * z, nan=-np.inf) > 2
        for i in range(y.size - 2):
            w = beyond[i : i + 3]
            if w.sum() >= 2:
                flags[i : i + 3] |= w
    return flags


def hugging_points(y: np.ndarray, cl: np.ndarray, sigma: np.ndarray, min_length: int = 15):
    """Flag runs of >= ``min_length`` consecutive points within 1 sigma of the centre line."""
    y, cl, sigma = (np.asarray(a, float) for a in (y, cl, sigma))
    inner = np.nan_to_num(np.abs(y - cl) / sigma, nan=np.inf) < 1
    flags = np.zeros(y.size, bool)
    start = None
    for i in range(y.size + 1):
        if i < y.size and inner[i]:
            start = i if start is None else start
        else:
            if start is not None and i - start >= min_length:
                flags[start:i] = True
            start = None
    return flags


# --------------------------------------------------------------------------------------------
# Swed-Eisenhart runs test (IHI run-chart rule "too few or too many runs")
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=4096)
def runs_distribution(n1: int, n2: int) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Exact null distribution of the number of runs in a random arrangement of n1 + n2 symbols.

    Swed & Eisenhart (1943): P(R = 2k) = 2 C(n1-1,k-1) C(n2-1,k-1) / C(n1+n2,n1) and
    P(R = 2k+1) = [C(n1-1,k) C(n2-1,k-1) + C(n1-1,k-1) C(n2-1,k)] / C(n1+n2,n1).
    """
    if n1 < 1 or n2 < 1:
        raise ValueError("runs_distribution needs at least one point on each side")
    total = math.comb(n1 + n2, n1)
    rs, ps = [], []
    for r in range(2, n1 + n2 + 1):
        k = r // 2
        if r % 2 == 0:
            ways = 2 * math.comb(n1 - 1, k - 1) * math.comb(n2 - 1, k - 1)
        else:
            ways = math.comb(n1 - 1, k) * math.comb(n2 - 1, k - 1) + math.comb(
                n1 - 1, k - 1
            ) * math.comb(n2 - 1, k)
        if ways:
            rs.append(r)
            ps.append(ways / total)
    return tuple(rs), tuple(ps)


def runs_limits(n1: int, n2: int, alpha: float = 0.05) -> tuple[int, int]:
    """Smallest and largest number of runs that are NOT a signal (two-sided exact test).

    Too few runs: P(R <= r) <= alpha/2; too many: P(R >= r) <= alpha/2.
    """
    rs, ps = runs_distribution(n1, n2)
    cdf = np.cumsum(ps)
    sf = np.cumsum(np.asarray(ps)[::-1])[::-1]  # P(R >= r)
    lower = rs[0]
    for r, c in zip(rs, cdf):
        if c <= alpha / 2:
            lower = r + 1
    upper = rs[-1]
    for r, s in zip(rs[::-1], sf[::-1]):
        if s <= alpha / 2:
            upper = r - 1
    return int(lower), int(upper)

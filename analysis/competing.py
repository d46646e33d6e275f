"""Length of stay with in-hospital death as a competing risk.

* :func:`cumulative_incidence` - Aalen-Johansen cumulative incidence (CIF), deterministic with tied
  times: all events at one time are processed together, and censorings tied with events are
  taken to happen just after them (as R ``cmprsk::cuminc`` and ``survival::survfit``). Variance:
  the Aalen (1978) delta-method estimator computed as in ``cmprsk::cuminc`` (Gray's cincsub
  routine, with its tie correction). CIs: ``"log-log"`` (default, as tidycmprsk) or ``"plain"``.
* :func:`gray_test` - Gray (1988) K-sample test of equal CIFs (``cmprsk::cuminc`` ``$Tests``),
  optionally stratified, weight power ``rho`` (0 default).
* :func:`fit_fine_gray` - Fine-Gray subdistribution hazards via the weighted Cox model on the
  expanded data of R ``survival::finegray`` (censoring-KM weights G(t-)/G(s-)).
* :func:`fit_cause_specific_cox` - Cox model for one cause, other causes censored.
* :func:`los_summary` - median and restricted mean LOS by period, per site and collaborative.

Event coding everywhere: 0 = censored, `event_of_interest` = the cause, other positive codes =
competing events. Time unit: whatever `duration` is (days for LOS).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from scipy import stats

from .survival import (
    CoxResult,
    _check_covariates,
    _check_durations,
    _check_flag,
    _cox_engine,
    _finish_table,
    _period_labels,
    _require_columns,
    fit_cox,
)

#: How to code causes (in every error message about the event column).
CAUSE_CODING = ("code the column as integers: 0 = censored (still at risk when follow-up ended), "
                "1 = the cause of interest, 2, 3, ... = competing causes (e.g. for length of stay: "
                "1 = discharged alive, 2 = died in hospital, as analysis.competing.los_events does), "
                "and pass the cause's code as event_of_interest")


def _is_flag(values: pd.Series) -> bool:
    """True for a yes/no column: bool dtype, or Python/numpy booleans (with or without missing)."""
    if pd.api.types.is_bool_dtype(values.dtype):
        return True
    if values.dtype == object:
        present = values.dropna()
        return len(present) > 0 and all(isinstance(v, (bool, np.bool_)) for v in present)
    return False


def _check_cr(df: pd.DataFrame, duration: str, event: str, event_of_interest: int) -> None:
    """Competing-risks input: non-negative durations and integer cause codes (never a yes/no flag:
    a flag makes every competing event look like censoring, which overstates the incidence)."""
    _require_columns(df, [duration, event])
    if len(df) == 0:
        raise ValueError("empty data")
    _check_durations(df, duration)
    try:
        code_ok = (isinstance(event_of_interest, (int, float, np.integer, np.floating))
                   and not isinstance(event_of_interest, (bool, np.bool_))
                   and float(event_of_interest) == int(event_of_interest) and int(event_of_interest) >= 1)
    except (TypeError, ValueError, OverflowError):
        code_ok = False
    if not code_ok:
        raise ValueError(f"event_of_interest must be a positive integer cause code (0 means censored), "
                         f"got {event_of_interest!r}")
    if _is_flag(df[event]):
        raise ValueError(
            f"column {event!r} is a yes/no flag, but competing risks need coded causes: with a flag, "
            "every 'no' is taken as censored, so a competing event (such as discharge alive when the "
            "cause of interest is death) would wrongly leave the patient at risk and overstate the "
            f"cumulative incidence. {CAUSE_CODING[0].upper()}{CAUSE_CODING[1:]}.")
    e = pd.to_numeric(df[event], errors="coerce")
    if e.isna().any() or (e < 0).any() or (e != np.round(e)).any():
        raise ValueError(f"column {event!r} must hold integer codes >= 0 on every row: {CAUSE_CODING}")
    if (e == event_of_interest).sum() == 0:
        raise ValueError(f"no events of interest ({event!r} == {event_of_interest}): nothing to estimate")


def _cif_one(time: np.ndarray, event: np.ndarray, cause: int, alpha: float, conf_type: str) -> pd.DataFrame:
    """CIF and Aalen variance for one group (arrays need not be sorted)."""
    ut, inv = np.unique(time, return_inverse=True)
    n_all = np.bincount(inv, minlength=len(ut))
    d1 = np.bincount(inv, weights=(event == cause), minlength=len(ut))
    dall = np.bincount(inv, weights=(event > 0), minlength=len(ut))
    at_risk = len(time) - np.concatenate([[0], np.cumsum(n_all)[:-1]])
    keep = dall > 0
    s_prev, F = 1.0, 0.0
    v1 = v2 = v3 = 0.0
    rows = []
    for t, rs, nd1, nd in zip(ut[keep], at_risk[keep], d1[keep], dall[keep]):
        nd2 = nd - nd1
        s_new = s_prev * (rs - nd) / rs
        F = F + s_prev * nd1 / rs
        if nd2 > 0 and s_new > 0:
            t5 = 1 - (nd2 - 1) / (rs - 1) if nd2 > 1 else 1.0
            t6 = s_prev**2 * t5 * nd2 / rs**2
            t3, t4 = 1 / s_new, F / s_new
            v1 += t4 * t4 * t6
            v2 += t3 * t4 * t6
            v3 += t3 * t3 * t6
        if nd1 > 0:
            t5 = 1 - (nd1 - 1) / (rs - 1) if nd1 > 1 else 1.0
            t6 = s_prev**2 * t5 * nd1 / rs**2
            t3 = 1 / s_new if s_new > 0 else 0.0
            t4 = 1 + t3 * F
            v1 += t4 * t4 * t6
            v2 += t3 * t4 * t6
            v3 += t3 * t3 * t6
        var = max(v1 + F * F * v3 - 2 * F * v2, 0.0)
        rows.append((t, int(rs), int(nd1), int(nd2), F, np.sqrt(var)))
        s_prev = s_new
    out = pd.DataFrame(rows, columns=["time", "at_risk", "n_event", "n_competing", "estimate", "se"])
    q = stats.norm.ppf(1 - alpha / 2)
    F, se = out["estimate"].to_numpy(), out["se"].to_numpy()
    if conf_type == "plain":
        lo, hi = np.clip(F - q * se, 0, 1), np.clip(F + q * se, 0, 1)
    else:  # log(-log) on F, as tidycmprsk::cuminc
        with np.errstate(divide="ignore", invalid="ignore"):
            k = np.exp(q * se / (F * np.log(F)))
            lo, hi = F ** (1 / k), F ** k
        ok = (F > 0) & (F < 1)
        lo, hi = np.where(ok, lo, np.where(F >= 1, 1.0, 0.0)), np.where(ok, hi, np.where(F >= 1, 1.0, 0.0))
    out["ci_lower"], out["ci_upper"] = lo, hi
    return out


def cumulative_incidence(df: pd.DataFrame, duration: str, event: str, *, group: str | None = None,
                         event_of_interest: int = 1, alpha: float = 0.05,
                         conf_type: Literal["log-log", "plain"] = "log-log") -> pd.DataFrame:
    """Aalen-Johansen cumulative incidence of `event_of_interest` (tidy frame).

    One row per group and distinct event time (any cause): group, time, at_risk, n_event,
    n_competing, estimate, se, ci_lower, ci_upper. Deterministic: ties are grouped, input order
    is irrelevant."""
    _check_cr(df, duration, event, event_of_interest)
    if conf_type not in ("log-log", "plain"):
        raise ValueError(f"conf_type must be 'log-log' or 'plain', got {conf_type!r}")
    if group is not None:
        _require_columns(df, [group])
        if df[group].isna().any():
            raise ValueError(f"group column {group!r} has missing values")
    groups = [("all", df)] if group is None else list(df.groupby(group, sort=True))
    parts = []
    for g, sub in groups:
        t = sub[duration].to_numpy(float)
        e = sub[event].to_numpy(int)
        out = _cif_one(t, e, event_of_interest, alpha, conf_type)
        out.insert(0, "group", g)
        parts.append(out)
    return pd.concat(parts, ignore_index=True)


def cif_at(cif: pd.DataFrame, times: Sequence[float]) -> pd.DataFrame:
    """Step-function lookup of a :func:`cumulative_incidence` frame at `times` (per group)."""
    rows = []
    for g, sub in cif.groupby("group", sort=True):
        tt = sub["time"].to_numpy()
        for t in times:
            i = np.searchsorted(tt, t, side="right") - 1
            if i < 0:
                rows.append((g, t, 0.0, 0.0, 0.0, 0.0))
            else:
                r = sub.iloc[i]
                rows.append((g, t, r["estimate"], r["se"], r["ci_lower"], r["ci_upper"]))
    return pd.DataFrame(rows, columns=["group", "time", "estimate", "se", "ci_lower", "ci_upper"])


@dataclass
class GrayTestResult:
    """Gray's K-sample test of equal cumulative incidence (chi-square on `df` degrees of freedom)."""

    statistic: float
    df: int
    p: float
    scores: np.ndarray
    variance: np.ndarray
    groups: list

    def summary(self) -> pd.DataFrame:
        return pd.DataFrame({"statistic": [self.statistic], "df": [self.df], "p": [self.p]})


def _gray_stratum(y, m, ig, ng, rho):
    """Score and variance contributions of one stratum (Gray 1988; computed as cmprsk crstm).

    A sequential pass over the distinct times, as crstm; the per-group state is kept in Python
    floats (groups are few, times many), and the event counts at every time are tallied at once.
    """
    uniq, inv = np.unique(y, return_inverse=True)
    counts = np.zeros((len(uniq), 3, ng))
    np.add.at(counts, (inv, m, ig), 1)
    event_rows = np.flatnonzero(counts[:, 1:, :].sum(axis=(1, 2)) > 0)
    leave_before = np.cumsum(counts.sum(axis=1), axis=0) - counts.sum(axis=1)  # left before each time
    total = np.bincount(ig, minlength=ng).astype(float)
    ng1 = ng - 1
    rng, rng1 = range(ng), range(ng1)
    f1m, skmm = [0.0] * ng, [1.0] * ng
    v3 = [0.0] * ng
    v2 = [[0.0] * ng for _ in rng1]
    c = [[0.0] * ng for _ in rng]
    s = [0.0] * ng1
    v = [[0.0] * ng1 for _ in rng1]
    fm = 0.0
    for row in event_rows:
        rs = (total - leave_before[row]).tolist()
        d1, d2 = counts[row, 1].tolist(), counts[row, 2].tolist()
        nd1, nd2 = sum(d1), sum(d2)
        pos = [r > 0 for r in rs]
        skm = [skmm[k] * (rs[k] - d1[k] - d2[k]) / rs[k] if pos[k] else skmm[k] for k in rng]
        f1 = [f1m[k] + skmm[k] * d1[k] / rs[k] if pos[k] else f1m[k] for k in rng]
        tr = sum(rs[k] / skmm[k] for k in rng if pos[k])
        tq = sum(rs[k] * (1 - f1m[k]) / skmm[k] for k in rng if pos[k])
        f = fm + nd1 / tr
        fb = (1 - fm) ** rho
        a = [[0.0] * ng for _ in rng]
        for i in rng:
            if not pos[i]:
                continue
            t1 = rs[i] / skmm[i]
            a[i][i] = fb * t1 * (1 - t1 / tr)
            c[i][i] += a[i][i] * nd1 / (tr * (1 - fm))
            for j in range(i + 1, ng):
                if not pos[j]:
                    continue
                a[i][j] = a[j][i] = -fb * t1 * rs[j] / (skmm[j] * tr)
                c[i][j] += a[i][j] * nd1 / (tr * (1 - fm))
                c[j][i] = c[i][j]
        for i in rng1:
            if pos[i]:
                s[i] += fb * (d1[i] - nd1 * rs[i] * (1 - f1m[i]) / (skmm[i] * tq))
        if nd1 > 0:
            for k in rng:
                if not pos[k]:
                    continue
                t4 = 1 - (1 - f) / skm[k] if skm[k] > 0 else 1.0
                t5 = 1 - (nd1 - 1) / (tr * skmm[k] - 1) if nd1 > 1 else 1.0
                t3 = t5 * skmm[k] * nd1 / (tr * rs[k])
                v3[k] += t4 * t4 * t3
                t1 = [a[i][k] - t4 * c[i][k] for i in rng1]
                for i in rng1:
                    v2[i][k] += t1[i] * t4 * t3
                    for j in rng1:
                        v[i][j] += t1[i] * t1[j] * t3
        if nd2 > 0:
            for k in rng:
                if skm[k] <= 0 or d2[k] <= 0:
                    continue
                t4 = (1 - f) / skm[k]
                t5 = 1 - (d2[k] - 1) / (rs[k] - 1) if d2[k] > 1 else 1.0
                t3 = t5 * skmm[k] ** 2 * d2[k] / rs[k] ** 2
                v3[k] += t4 * t4 * t3
                t1 = [t4 * c[i][k] for i in rng1]
                for i in rng1:
                    v2[i][k] -= t1[i] * t4 * t3
                    for j in rng1:
                        v[i][j] += t1[i] * t1[j] * t3
        fm, f1m, skmm = f, f1, skm
    cc = np.asarray(c)[:ng1]
    v2a, v3a = np.asarray(v2).reshape(ng1, ng), np.asarray(v3)
    va = np.asarray(v).reshape(ng1, ng1) + (cc * v3a) @ cc.T + cc @ v2a.T + v2a @ cc.T
    return np.asarray(s), va


def gray_test(df: pd.DataFrame, duration: str, event: str, group: str, event_of_interest: int = 1, *,
              strata: str | None = None, rho: float = 0.0) -> GrayTestResult:
    """Gray's (1988) test that the cumulative incidence of `event_of_interest` is equal across the
    levels of `group` (statistic ~ chi-square with K-1 df), as ``cmprsk::cuminc(..., rho=0)``."""
    _check_cr(df, duration, event, event_of_interest)
    _require_columns(df, [group] + ([strata] if strata else []))
    for col in [group] + ([strata] if strata else []):
        if df[col].isna().any():
            raise ValueError(f"column {col!r} has {int(df[col].isna().sum())} missing value(s); "
                             "every row needs a group (and stratum)")
    levels = sorted(df[group].dropna().unique().tolist())
    if len(levels) < 2:
        raise ValueError(f"group column {group!r} has a single level ({levels}); nothing to compare")
    ig_all = df[group].map({lv: i for i, lv in enumerate(levels)}).to_numpy(int)
    e = df[event].to_numpy(int)
    m_all = np.where(e == 0, 0, np.where(e == event_of_interest, 1, 2))
    y_all = df[duration].to_numpy(float)
    st = np.zeros(len(df), dtype=int) if strata is None else df[strata].factorize(sort=True)[0]
    ng = len(levels)
    s, v = np.zeros(ng - 1), np.zeros((ng - 1, ng - 1))
    for k in np.unique(st):
        sel = st == k
        sk, vk = _gray_stratum(y_all[sel], m_all[sel], ig_all[sel], ng, rho)
        s += sk
        v += vk
    stat = float(s @ np.linalg.solve(v, s))
    return GrayTestResult(stat, ng - 1, float(stats.chi2.sf(stat, ng - 1)), s, v, levels)


# --------------------------------------------------------------------------------------------
# regression
# --------------------------------------------------------------------------------------------

def fit_cause_specific_cox(df: pd.DataFrame, duration: str, event: str, covariates: Sequence[str], *,
                           event_of_interest: int = 1, **kwargs) -> CoxResult:
    """Cause-specific Cox model: `event_of_interest` is the event, every other cause is censored."""
    _check_cr(df, duration, event, event_of_interest)
    data = df.copy()
    data["_cs_event"] = (data[event] == event_of_interest).astype(int)
    res = fit_cox(data, duration, "_cs_event", covariates, **kwargs)
    res.method = f"cause-specific Cox (cause {event_of_interest})"
    return res


def censoring_km(time: np.ndarray, event: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """KM of the censoring distribution G at its jump times; an event at x is not at risk of
    censoring at x (censoring after events), as R ``finegray`` (Geskus 2011)."""
    ct = np.unique(time[event == 0])
    G, g = [], 1.0
    for t in ct:
        nrisk = np.sum((time > t) & (event > 0)) + np.sum((time >= t) & (event == 0))
        g *= 1 - np.sum((time == t) & (event == 0)) / nrisk
        G.append(g)
    return ct, np.asarray(G)


def _G_minus(ct: np.ndarray, G: np.ndarray, t: np.ndarray) -> np.ndarray:
    """G(t-) (left limit) of the censoring KM step function."""
    if len(ct) == 0:  # no censoring: G == 1 everywhere
        return np.ones(len(t), dtype=float)
    i = np.searchsorted(ct, t, side="left") - 1
    return np.where(i >= 0, G[np.clip(i, 0, None)], 1.0)


def finegray_expand(df: pd.DataFrame, duration: str, event: str, event_of_interest: int = 1) -> pd.DataFrame:
    """Expanded (start, stop] data with weights for the Fine-Gray model (as R ``finegray``).

    Rows with the event of interest or censoring are kept as (0, T] weight 1. A subject with a
    competing event at s stays in the risk set after s with weight G(t-)/G(s-): one row (0, s], then
    one row per stretch of later event-of-interest times over which that weight is constant (it
    changes only at censoring times; without censoring, one row to the last event time).
    Columns added: fg_start, fg_stop, fg_status, fg_weight, fg_row (original row label)."""
    _check_cr(df, duration, event, event_of_interest)
    t = df[duration].to_numpy(float)
    e = df[event].to_numpy(int)
    ct, G = censoring_km(t, e)
    ev_times = np.unique(t[e == event_of_interest])
    starts, stops, status, wts, rows = [], [], [], [], []
    for pos in range(len(df)):
        ti, ei = t[pos], e[pos]
        starts.append(0.0); stops.append(ti); wts.append(1.0); rows.append(pos)
        status.append(1 if ei == event_of_interest else 0)
        if ei > 0 and ei != event_of_interest:
            later = ev_times[ev_times > ti]
            if len(later):
                w = _G_minus(ct, G, later) / _G_minus(ct, G, np.array([ti]))[0]
                ends = np.append(np.flatnonzero(np.diff(w) != 0), len(later) - 1)  # last of each run
                stop = later[ends]
                prev = np.concatenate([[ti], stop[:-1]])
                starts.extend(prev); stops.extend(stop); wts.extend(w[ends]); rows.extend([pos] * len(ends))
                status.extend([0] * len(ends))
    out = df.iloc[rows].copy()
    out["fg_start"], out["fg_stop"] = starts, stops
    out["fg_status"], out["fg_weight"] = status, wts
    out["fg_row"] = np.asarray(rows)
    return out.reset_index(drop=True)


def fit_fine_gray(df: pd.DataFrame, duration: str, event: str, covariates: Sequence[str],
                  event_of_interest: int = 1, *, ties: Literal["efron", "breslow"] = "efron",
                  alpha: float = 0.05) -> CoxResult:
    """Fine-Gray subdistribution hazard regression: weighted Cox model on :func:`finegray_expand`
    data (R: ``finegray`` + ``coxph(Surv(fgstart, fgstop, fgstatus) ~ x, weights=fgwt)``).
    exp(coef) = subdistribution hazard ratio; SEs are model-based (as R's default print)."""
    covariates = list(covariates)
    _require_columns(df, covariates)
    _check_covariates(df, covariates)
    ex = finegray_expand(df, duration, event, event_of_interest)
    # each subject's first row covers (time origin, T]: at risk at every t <= T, t = 0 included
    # (as cmprsk::crr); the engine's start < t would leave events at time 0 without a risk set
    start = np.where(ex["fg_row"].duplicated(), ex["fg_start"].to_numpy(float), -np.inf)
    res = _cox_engine(start, ex["fg_stop"].to_numpy(float),
                      ex["fg_status"].to_numpy(int), ex[covariates].to_numpy(float),
                      weights=ex["fg_weight"].to_numpy(float), ties=ties)
    n_ev = int((df[event] == event_of_interest).sum())
    return CoxResult(_finish_table(res["coef"], res["se"], None, covariates, alpha), len(df), n_ev,
                     res["loglik"], np.nan, ties, method=f"Fine-Gray (cause {event_of_interest})",
                     notes=["model-based SEs from the weighted partial likelihood"], alpha=alpha)


# --------------------------------------------------------------------------------------------
# LOS summaries
# --------------------------------------------------------------------------------------------

def los_events(episodes: pd.DataFrame, *, time_col: str = "days_t0_to_discharge") -> pd.DataFrame:
    """Add ``los_time`` (days from T0 to leaving hospital) and ``los_event`` (1 = discharged alive,
    2 = died in hospital; death is a competing event, never censoring)."""
    _require_columns(episodes, [time_col, "died_in_hospital"])
    _check_flag(episodes["died_in_hospital"], "died_in_hospital")
    df = episodes.copy()
    df["los_time"] = df[time_col].astype(float)
    if (df["los_time"] < 0).any():
        raise ValueError(f"{time_col} has negative values (discharge before T0)")
    df["los_event"] = np.where(df["died_in_hospital"].astype(bool), 2, 1)
    return df


def los_summary(episodes: pd.DataFrame, *, by: str | None = "site_id", horizon: float = 30.0,
                time_col: str = "days_t0_to_discharge") -> pd.DataFrame:
    """LOS by period (pre/post go-live) for the collaborative and each unit of `by` (days).

    Columns: unit, period, n, deaths, median_los (all stays), median_discharge_alive (first time the
    CIF of live discharge reaches 0.5; NaN with a status if it never does), cif_discharge_h and
    cif_death_h (at `horizon`), rmean_los (restricted mean time in hospital to `horizon`,
    = area under the all-cause KM of remaining in hospital)."""
    _require_columns(episodes, ["post"] + ([by] if by else []))
    df = los_events(episodes, time_col=time_col)
    df["period"] = _period_labels(df["post"])
    units = [("collaborative", df)] + ([(str(k), g) for k, g in df.groupby(by, sort=True)] if by else [])
    rows = []
    for unit, g in units:
        for period, gp in g.groupby("period", sort=True):
            t, e = gp["los_time"].to_numpy(), gp["los_event"].to_numpy()
            row = {"unit": unit, "period": period, "n": len(gp), "deaths": int((e == 2).sum()),
                   "median_los": float(np.median(t)), "status": "ok"}
            cif1 = _cif_one(t, e, 1, 0.05, "plain")
            cif2 = _cif_one(t, e, 2, 0.05, "plain") if (e == 2).any() else None
            hit = cif1.loc[cif1["estimate"] >= 0.5, "time"]
            row["median_discharge_alive"] = float(hit.iloc[0]) if len(hit) else np.nan
            if not len(hit):
                row["status"] = "live-discharge CIF never reaches 0.5"
            row["cif_discharge_h"] = _step(cif1, horizon)
            row["cif_death_h"] = _step(cif2, horizon) if cif2 is not None else 0.0
            row["rmean_los"] = _rmean_in_hospital(t, horizon)
            rows.append(row)
    return pd.DataFrame(rows)


def _step(cif: pd.DataFrame, t: float) -> float:
    sub = cif[cif["time"] <= t]
    return float(sub["estimate"].iloc[-1]) if len(sub) else 0.0


def _rmean_in_hospital(t: np.ndarray, horizon: float) -> float:
    """Restricted mean of min(T, horizon) with no censoring (everyone leaves hospital)."""
    return float(np.mean(np.minimum(t, horizon)))


@dataclass
class LOSCompetingResult:
    """Cumulative incidence of live discharge (cause 1) and in-hospital death (cause 2) by period.

    ``cif``: outcome ('discharge'/'death'), group (period), time (days from T0), estimate, se,
    ci_lower, ci_upper. ``tests``: Gray's test per outcome (statistic, df, p)."""

    cif: pd.DataFrame
    tests: pd.DataFrame

    def summary(self) -> pd.DataFrame:
        return self.tests.copy()

    def plot(self, ax=None, horizon: float | None = 30.0, *, bands: bool = True,
             min_cell: int = 11):
        """Cumulative incidence of discharge alive and of in-hospital death by period, with
        pointwise confidence bands (``bands``), in two panels side by side so that each y-axis
        is scaled to its own curves (deaths are a few percent, discharges reach 100%). Each
        panel's legend gives the episodes per period (counts below `min_cell` suppressed);
        the figure caption names the estimator and Gray's tests.

        Returns the Figure; with ``ax`` (a pair of Axes, or one Axes for the older single-panel
        drawing of both outcomes) draws there and returns that Figure."""
        import matplotlib.pyplot as plt

        from .plotting import PALETTE, set_theme

        set_theme()
        single = ax is not None and not isinstance(ax, (list, tuple, np.ndarray))
        if single:
            axes = [ax, ax]
            fig = ax.get_figure()
        elif ax is not None:
            axes = list(np.ravel(ax))
            fig = axes[0].get_figure()
        else:
            fig, axes = plt.subplots(1, 2, figsize=(7.5, 3.2))
            axes = list(axes)
        outcomes = (("discharge", "Discharged alive"), ("death", "Died in hospital"))
        for (outcome, label), a in zip(outcomes, axes):
            d = self.cif[self.cif["outcome"] == outcome]
            if horizon is not None:
                d = d[d["time"] <= horizon]
            top = 0.0
            for period, g in d.groupby("group", sort=True):
                colour = PALETTE["post"] if period == "post" else PALETTE["pre"]
                g = g.sort_values("time")
                t = np.r_[0.0, g["time"].to_numpy(float)]
                est = 100 * np.r_[0.0, g["estimate"].to_numpy(float)]
                n0 = g["at_risk"].iloc[0] if "at_risk" in g and len(g) else None
                word = "after go-live" if period == "post" else (
                    "before go-live" if period == "pre" else str(period))
                lab = word if n0 is None else (
                    f"{word} ({_episodes_text(n0, min_cell)} episodes)")
                a.step(t, est, where="post", color=colour, lw=1.5,
                       ls="-" if (outcome == "discharge" or not single) else "--",
                       label=lab if not single else f"{outcome}, {word}")
                if bands:
                    lo = 100 * np.r_[0.0, g["ci_lower"].to_numpy(float)]
                    hi = 100 * np.r_[0.0, g["ci_upper"].to_numpy(float)]
                    a.fill_between(t, lo, hi, step="post", color=colour, alpha=0.18, lw=0)
                    top = max(top, float(np.nanmax(hi)))
                top = max(top, float(np.nanmax(est)))
            if not single:
                a.set_title(label, fontsize=10)
                a.set_ylim(0, min(100.0, max(top * 1.15, 1.0)))
                a.set_xlabel("Days from T0")
                a.legend(fontsize=7, loc="lower right" if outcome == "discharge" else "upper left")
        axes[0].set_ylabel("Cumulative incidence (%)")
        if single:
            ax.set_xlabel("Days from T0")
            ax.set_title("Discharge alive and in-hospital death (competing risks)")
            ax.legend(fontsize=7)
            return ax
        fig.text(0.01, 0.0, self.caption(), fontsize=6.5, color=PALETTE["text"], va="top", ha="left",
                 wrap=True)
        fig.tight_layout()
        return fig

    def caption(self) -> str:
        """What the figure shows: estimator, bands, competing events and Gray's tests."""
        text = ("Aalen-Johansen cumulative incidence by period with 95% pointwise confidence bands; "
                "death and live discharge are competing events (neither censors the other).")
        ok = self.tests[self.tests["status"] == "ok"] if "status" in self.tests else self.tests
        for _, r in ok.iterrows():
            text += f" Gray's test, {r['outcome']}: p = {r['p']:.2g}."
        return text


def _episodes_text(n, min_cell: int) -> str:
    from .privacy import suppress_count

    return suppress_count(int(n), min_cell=min_cell, marker=f"fewer than {min_cell}")


def los_competing_risks(episodes: pd.DataFrame, *, time_col: str = "days_t0_to_discharge",
                        alpha: float = 0.05) -> LOSCompetingResult:
    """Aalen-Johansen CIFs of discharge alive and of in-hospital death by period (pre/post), with
    Gray's test for each; death is a competing event for discharge and vice versa."""
    _require_columns(episodes, ["post"])
    df = los_events(episodes, time_col=time_col)
    df["period"] = _period_labels(df["post"])
    if df["period"].nunique() < 2:
        raise ValueError("a period comparison needs both pre and post episodes")
    parts, tests = [], []
    for code, outcome in ((1, "discharge"), (2, "death")):
        if not (df["los_event"] == code).any():
            tests.append({"outcome": outcome, "statistic": np.nan, "df": 1, "p": np.nan,
                          "status": f"no {outcome} events"})
            continue
        c = cumulative_incidence(df, "los_time", "los_event", group="period", event_of_interest=code,
                                 alpha=alpha)
        c.insert(0, "outcome", outcome)
        parts.append(c)
        g = gray_test(df, "los_time", "los_event", "period", event_of_interest=code)
        tests.append({"outcome": outcome, "statistic": g.statistic, "df": g.df, "p": g.p, "status": "ok"})
    return LOSCompetingResult(pd.concat(parts, ignore_index=True), pd.DataFrame(tests))

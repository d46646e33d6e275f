"""Mortality after T0: Kaplan-Meier by period, log-rank, RMST difference, Cox PH models.

Follow-up definition (argument ``follow_up``; time unit = days from T0):

* ``"ipso"`` (default): the event is 30-day sepsis-attributable death (``sam30``, which under the
  IPSO attribution rule means an in-hospital death within 30 days of T0). Patients who die in
  hospital within the horizon have their event at ``days_t0_to_death``; everyone else (discharged
  alive, or dead after the horizon) is followed to the horizon (30 days) as a survivor. This mirrors
  the IPSO measure, whose denominator is every episode.
* ``"censor_at_discharge"``: patients discharged alive are censored at discharge (or at the horizon
  if later). This treats discharge as non-informative censoring and so estimates the in-hospital
  hazard; it is offered as a sensitivity analysis.

Cox models: :func:`fit_cox` is a thin wrapper around :class:`lifelines.CoxPHFitter` (Efron ties,
which reproduces R ``survival::coxph``), with cluster-robust SEs (as R ``cluster()``) and a
Breslow-ties option fitted by this module's own Newton-Raphson engine (:func:`_cox_engine`), which
also handles counting-process (start, stop] data with case weights (used by Fine-Gray regression
in :mod:`analysis.competing`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
from scipy import stats

FollowUp = Literal["ipso", "censor_at_discharge"]
Ties = Literal["efron", "breslow"]

#: Case-mix covariates used by :func:`fit_mortality_cox` (built by :func:`mortality_design`).
CASE_MIX = ("age_group", "ccc_count", "immunocompromised", "onset_setting", "hospital_onset",
            "critical_sepsis")


# --------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------

def _require_columns(df: pd.DataFrame, cols: Sequence[str]) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"missing column(s): {', '.join(missing)}")


def _check_durations(df: pd.DataFrame, duration: str) -> None:
    d = pd.to_numeric(df[duration], errors="coerce")
    if d.isna().any():
        raise ValueError(f"column {duration!r} has {int(d.isna().sum())} missing/non-numeric value(s)")
    if np.isinf(d.astype(float)).any():
        raise ValueError(f"column {duration!r} has {int(np.isinf(d.astype(float)).sum())} infinite duration(s)")
    if (d < 0).any():
        raise ValueError(f"column {duration!r} has {int((d < 0).sum())} negative duration(s)")


def _check_flag(values: pd.Series, name: str) -> None:
    """A yes/no column must be bool, or 0/1, on every row: ``astype(bool)`` would silently turn a
    missing value, or any other code (2, 0.5, 'no'), into True."""
    if pd.api.types.is_bool_dtype(values.dtype) and not values.isna().any():
        return
    v = pd.to_numeric(values, errors="coerce")
    bad = v.isna() | ~v.isin([0, 1])
    if bad.any():
        shown = sorted({repr(x) for x in values[bad].tolist()})[:5]
        raise ValueError(f"column {name!r} must be True/False (or 1/0) on every row; "
                         f"{int(bad.sum())} value(s) are not: {', '.join(shown)}")


def _check_events(df: pd.DataFrame, event: str, *, binary: bool = True) -> None:
    e = pd.to_numeric(df[event], errors="coerce")
    if e.isna().any():
        raise ValueError(f"column {event!r} has missing/non-numeric values")
    if binary and not e.isin([0, 1]).all():
        raise ValueError(f"column {event!r} must be 0/1 (or bool)")
    if (e > 0).sum() == 0:
        raise ValueError(f"column {event!r} has no events: nothing can be estimated")


def _check_covariates(df: pd.DataFrame, covariates: Sequence[str]) -> None:
    for c in covariates:
        if not pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]):
            raise ValueError(f"covariate {c!r} is not numeric; encode it (e.g. dummies) first")
        if df[c].isna().any():
            raise ValueError(f"covariate {c!r} has missing values")
        if df[c].nunique() < 2:
            raise ValueError(f"covariate {c!r} has a single level ({df[c].iloc[0]!r}); it cannot be estimated")


# --------------------------------------------------------------------------------------------
# Cox regression
# --------------------------------------------------------------------------------------------

@dataclass
class CoxResult:
    """A fitted Cox model (coefficients on the log-hazard scale; exp(coef) = hazard ratio).

    ``table`` columns: coef, exp_coef, se, robust_se (NaN unless clustered), z, p, ci_lower,
    ci_upper (for coef), hr_lower, hr_upper. z, p and the CI use robust_se when present.
    ``ph_test``: proportional-hazards test per covariate and GLOBAL (:func:`cox_zph`, the score
    test of R ``cox.zph`` >= 3.0 with the KM time transform), or None with a reason in ``notes``.
    """

    table: pd.DataFrame
    n: int
    events: float
    loglik: float
    concordance: float
    ties: str
    strata: list[str] | None = None
    cluster: str | None = None
    ph_test: pd.DataFrame | None = None
    method: str = "cox"
    notes: list[str] = field(default_factory=list)
    alpha: float = 0.05

    def summary(self) -> pd.DataFrame:
        return self.table.copy()

    def hazard_ratio(self, covariate: str) -> tuple[float, float, float]:
        r = self.table.loc[covariate]
        return float(r["exp_coef"]), float(r["hr_lower"]), float(r["hr_upper"])

    def plot(self, ax=None):
        """Forest plot of hazard ratios with CIs (log scale)."""
        from .plotting import PALETTE, new_axes

        ax = new_axes(ax)
        t = self.table.iloc[::-1]
        y = np.arange(len(t))
        ax.errorbar(t["exp_coef"], y, xerr=[t["exp_coef"] - t["hr_lower"], t["hr_upper"] - t["exp_coef"]],
                    fmt="o", color=PALETTE["fitted"], capsize=3)
        ax.axvline(1.0, color=PALETTE["limit"], lw=1, ls="--")
        ax.set_xscale("log")
        ax.set_yticks(y, t.index)
        ax.set_xlabel("Hazard ratio")
        ax.set_title(f"{self.method} ({self.ties} ties)")
        return ax


def _finish_table(coef: np.ndarray, se: np.ndarray, robust_se: np.ndarray | None, names: Sequence[str],
                  alpha: float) -> pd.DataFrame:
    use = robust_se if robust_se is not None else se
    q = stats.norm.ppf(1 - alpha / 2)
    z = coef / use
    t = pd.DataFrame({
        "coef": coef, "exp_coef": np.exp(coef), "se": se,
        "robust_se": robust_se if robust_se is not None else np.full(len(coef), np.nan),
        "z": z, "p": 2 * stats.norm.sf(np.abs(z)),
        "ci_lower": coef - q * use, "ci_upper": coef + q * use,
    }, index=pd.Index(list(names), name="covariate"))
    t["hr_lower"] = np.exp(t["ci_lower"])
    t["hr_upper"] = np.exp(t["ci_upper"])
    return t


def fit_cox(df: pd.DataFrame, duration: str, event: str, covariates: Sequence[str], *,
            strata: str | Sequence[str] | None = None, cluster: str | None = None,
            ties: Ties = "efron", weights: str | None = None, alpha: float = 0.05,
            ph_test: bool = True) -> CoxResult:
    """Cox proportional-hazards regression of `duration` (any time unit) on numeric `covariates`.

    Efron ties (default) use lifelines' CoxPHFitter, which reproduces R ``coxph`` (see tests);
    ``cluster=`` adds the robust sandwich SE grouped by that column (as R ``+ cluster(x)``);
    ``strata=`` fits separate baseline hazards. ``ties="breslow"`` uses this module's engine
    (no robust SE)."""
    covariates = list(covariates)
    strata_l = [strata] if isinstance(strata, str) else (list(strata) if strata else None)
    cols = [duration, event, *covariates, *(strata_l or []), *([cluster] if cluster else []),
            *([weights] if weights else [])]
    cols = list(dict.fromkeys(cols))  # a column may be both stratum and cluster
    _require_columns(df, cols)
    if not covariates:
        raise ValueError("at least one covariate is needed")
    _check_durations(df, duration)
    _check_events(df, event)
    _check_covariates(df, covariates)
    if weights:
        w = pd.to_numeric(df[weights], errors="coerce").astype(float)
        if not np.isfinite(w).all() or (w < 0).any():
            raise ValueError(f"weights column {weights!r} must be finite and >= 0 on every row")
    if ties not in ("efron", "breslow"):
        raise ValueError(f"ties must be 'efron' or 'breslow', got {ties!r}")
    data = df[cols].copy()
    data[event] = data[event].astype(int)
    for c in covariates:
        data[c] = data[c].astype(float)
    n, n_events = len(data), float(data[event].sum())

    if ties == "breslow":
        if cluster:
            raise ValueError("cluster-robust SEs are only offered with ties='efron'")
        res = _cox_engine(_right_censored_start(n), data[duration].to_numpy(float), data[event].to_numpy(int),
                          data[covariates].to_numpy(float),
                          weights=data[weights].to_numpy(float) if weights else None,
                          strata=_strata_codes(data, strata_l), ties="breslow")
        ph = (cox_zph(data, duration, event, covariates, strata=strata_l, ties="breslow", coef=res["coef"])
              if ph_test and not weights else None)
        return CoxResult(_finish_table(res["coef"], res["se"], None, covariates, alpha), n, n_events,
                         res["loglik"], np.nan, "breslow", strata_l, None, ph,
                         notes=["concordance not computed for the Breslow engine"], alpha=alpha)

    from lifelines import CoxPHFitter

    fit_df = data.drop(columns=[cluster] if cluster and cluster not in covariates + (strata_l or []) else [])
    cph = CoxPHFitter(alpha=alpha)
    cph.fit(fit_df, duration_col=duration, event_col=event, strata=strata_l, weights_col=weights,
            robust=bool(weights) and not cluster)
    coef = cph.params_.loc[covariates].to_numpy()
    se = cph.standard_errors_.loc[covariates].to_numpy()
    robust = None
    notes: list[str] = []
    if cluster:
        cr = CoxPHFitter(alpha=alpha)
        cdata, ccol = data, cluster
        if cluster in (strata_l or []):  # lifelines consumes the cluster column: give it a copy
            ccol = "_cluster"
            cdata = data.assign(**{ccol: data[cluster]})
        cr.fit(cdata, duration_col=duration, event_col=event, strata=strata_l, weights_col=weights,
               cluster_col=ccol, robust=True)
        robust = cr.standard_errors_.loc[covariates].to_numpy()
    ph = None
    if ph_test and not weights:
        ph = cox_zph(data, duration, event, covariates, strata=strata_l, coef=coef)
    elif ph_test:
        notes.append("PH test not computed for weighted fits")
    return CoxResult(_finish_table(coef, se, robust, covariates, alpha), n, n_events,
                     float(cph.log_likelihood_), float(cph.concordance_index_), "efron", strata_l,
                     cluster, ph, notes=notes, alpha=alpha)


def _strata_codes(data: pd.DataFrame, strata: list[str] | None) -> np.ndarray:
    if not strata:
        return np.zeros(len(data), dtype=int)
    return data[strata].astype(str).agg("|".join, axis=1).factorize(sort=True)[0]


def _right_censored_start(n: int) -> np.ndarray:
    """Start times for right-censored data in the (start, stop] engine: -inf, so the risk set at t
    is every row with stop >= t, events at time 0 included (as R's Surv(time, status))."""
    return np.full(n, -np.inf)


def _risk_blocks(start, stop, event, strata):
    """Per stratum and distinct event time: (time, risk pointer, death index).

    The risk set at t (start < t <= stop) is {stop >= t} minus {start >= t}; the pointer is
    ("cum", rows sorted by stop, first position with stop >= t, rows sorted by start or None,
    first position with start >= t), so that risk-set sums are differences of reverse cumulative
    sums (as survival's agreg): O(n log n) per stratum, not O(n) per event time. Right-censored
    strata (every start before the first stop, e.g. start = 0) need no start part (None)."""
    blocks = []
    for s in np.unique(strata):
        idx = np.flatnonzero(strata == s)
        ev_times = np.unique(stop[idx][event[idx] == 1])
        order = idx[np.argsort(stop[idx], kind="stable")]
        ts = stop[order]
        lo = np.searchsorted(ts, ev_times, side="left")
        hi = np.searchsorted(ts, ev_times, side="right")
        if len(idx) == 0 or np.all(start[idx] < stop[idx].min()):
            sorder, ks = None, np.zeros(len(ev_times), dtype=int)
        else:
            sorder = idx[np.argsort(start[idx], kind="stable")]
            ks = np.searchsorted(start[sorder], ev_times, side="left")
        for j, t in enumerate(ev_times):
            seg = order[lo[j]:hi[j]]
            dead = seg[event[seg] == 1]
            blocks.append((t, ("cum", order, int(lo[j]), sorder, int(ks[j])), dead))
    return blocks


def _reverse_cumsums(rows, r, Xc):
    """Sums over rows[k:] of r, r*x and r*x*x' for every k (a zero entry appended at the end)."""
    ro, xo = r[rows], Xc[rows]
    p = Xc.shape[1]
    c0 = np.append(np.cumsum(ro[::-1])[::-1], 0.0)
    c1 = np.vstack([np.cumsum((xo * ro[:, None])[::-1], axis=0)[::-1], np.zeros((1, p))])
    c2 = np.concatenate([np.cumsum((xo[:, :, None] * xo[:, None, :] * ro[:, None, None])[::-1],
                                   axis=0)[::-1], np.zeros((1, p, p))])
    return c0, c1, c2


def _block_moments(beta, blocks, Xc, w, ties):
    """Log partial likelihood and, per event-time block, the score contribution (Schoenfeld sum)
    and information contribution (weighted covariance of X in the risk set, Efron-adjusted)."""
    eta = Xc @ beta
    r = w * np.exp(eta)
    p = Xc.shape[1]
    cache: dict = {}

    def sums(rows):
        key = id(rows)
        if key not in cache:
            cache[key] = _reverse_cumsums(rows, r, Xc)
        return cache[key]

    ll, scores, infos = 0.0, np.zeros((len(blocks), p)), np.zeros((len(blocks), p, p))
    for b, (_, (_, order, k, sorder, ks), dead) in enumerate(blocks):
        c0, c1, c2 = sums(order)
        s0, s1, s2 = c0[k], c1[k], c2[k]
        if sorder is not None:  # rows entering after t are not at risk yet
            e0, e1, e2 = sums(sorder)
            s0, s1, s2 = s0 - e0[ks], s1 - e1[ks], s2 - e2[ks]
        wd = w[dead]
        dw, d = wd.sum(), len(dead)
        ll += wd @ eta[dead]
        U = wd @ Xc[dead]
        if ties == "breslow" or d == 1:
            ll -= dw * np.log(s0)
            m = s1 / s0
            U = U - dw * m
            info = dw * (s2 / s0 - np.outer(m, m))
        else:
            xd, rd = Xc[dead], r[dead]
            d0, d1, d2 = rd.sum(), rd @ xd, (xd * rd[:, None]).T @ xd
            mw = dw / d
            f = np.arange(d) / d
            a0 = s0 - f * d0
            a1 = s1[None, :] - f[:, None] * d1[None, :]
            a2 = s2[None] - f[:, None, None] * d2[None]
            ll -= mw * np.log(a0).sum()
            m = a1 / a0[:, None]
            U = U - mw * m.sum(axis=0)
            info = mw * ((a2 / a0[:, None, None]).sum(axis=0) - m.T @ m)
        scores[b], infos[b] = U, info
    return ll, scores, infos


def _cox_engine(start: np.ndarray, stop: np.ndarray, event: np.ndarray, X: np.ndarray, *,
                weights: np.ndarray | None = None, strata: np.ndarray | None = None,
                ties: Ties = "efron", max_iter: int = 50, tol: float = 1e-10) -> dict:
    """Newton-Raphson for the (weighted, stratified, counting-process) Cox partial likelihood.

    Risk set at an event time t: rows with start < t <= stop. Efron's approximation uses the
    mean case weight of the tied deaths, as R ``coxph`` does. Returns coef, se (model-based),
    loglik, information matrix, and the per-event-time blocks (for :func:`cox_zph`)."""
    n, p = X.shape
    w = np.ones(n) if weights is None else np.asarray(weights, float)
    strata = np.zeros(n, dtype=int) if strata is None else np.asarray(strata)
    Xc = X - X.mean(axis=0)
    blocks = _risk_blocks(np.asarray(start, float), np.asarray(stop, float), np.asarray(event), strata)

    def evaluate(beta):
        ll, sc, inf = _block_moments(beta, blocks, Xc, w, ties)
        return ll, sc.sum(axis=0), inf.sum(axis=0)

    beta = np.zeros(p)
    ll, U, info = evaluate(beta)
    for _ in range(max_iter):
        step = np.linalg.solve(info, U)
        new = beta + step
        ll_new, U_new, info_new = evaluate(new)
        halvings = 0
        while ll_new < ll - 1e-12 and halvings < 20:
            step /= 2
            new = beta + step
            ll_new, U_new, info_new = evaluate(new)
            halvings += 1
        converged = abs(ll_new - ll) <= tol * max(1.0, abs(ll))
        beta, ll, U, info = new, ll_new, U_new, info_new
        if converged:
            break
    var = np.linalg.inv(info)
    return {"coef": beta, "se": np.sqrt(np.diag(var)), "loglik": ll, "information": info,
            "blocks": blocks, "Xc": Xc, "w": w}


def cox_zph(df: pd.DataFrame, duration: str, event: str, covariates: Sequence[str], *,
            strata: str | Sequence[str] | None = None, ties: Ties = "efron",
            transform: Literal["km", "identity", "log", "rank"] = "km",
            coef: np.ndarray | None = None) -> pd.DataFrame:
    """Proportional-hazards test per covariate and GLOBAL, as R ``survival::cox.zph`` (>= 3.0).

    Score test, at the fitted coefficients, for adding x * g(t) to the model, g = the time
    transform (``"km"``: 1 - KM(t-) of the pooled data, R's default). Each covariate's test adds
    only its own interaction; GLOBAL adds all. Returns chisq, df, p."""
    covariates = list(covariates)
    strata_l = [strata] if isinstance(strata, str) else (list(strata) if strata else None)
    _require_columns(df, [duration, event, *covariates, *(strata_l or [])])
    _check_durations(df, duration)
    _check_events(df, event)
    _check_covariates(df, covariates)
    data = df[[duration, event, *covariates, *(strata_l or [])]]
    t = data[duration].to_numpy(float)
    e = data[event].astype(int).to_numpy()
    X = data[covariates].to_numpy(float)
    st = _strata_codes(data, strata_l)
    fit = _cox_engine(_right_censored_start(len(t)), t, e, X, strata=st, ties=ties)
    beta = fit["coef"] if coef is None else np.asarray(coef, float)
    _, scores, infos = _block_moments(beta, fit["blocks"], fit["Xc"], fit["w"], ties)
    times = np.array([b[0] for b in fit["blocks"]])
    if transform == "km":
        ut = np.unique(t)
        n_risk = np.array([(t >= u).sum() for u in ut])
        n_ev = np.array([((t == u) & (e == 1)).sum() for u in ut])
        km = np.cumprod(1 - n_ev / n_risk)
        i = np.searchsorted(ut, times, side="left") - 1
        g = 1 - np.where(i >= 0, km[np.clip(i, 0, None)], 1.0)
    elif transform == "identity":
        g = times.astype(float)
    elif transform == "log":
        g = np.log(times)
    elif transform == "rank":
        g = stats.rankdata(times)
    else:
        raise ValueError(f"unknown transform {transform!r}")
    p = len(covariates)
    u_g = (g[:, None] * scores).sum(axis=0)
    i_bb = infos.sum(axis=0)
    i_bg = (g[:, None, None] * infos).sum(axis=0)
    i_gg = ((g**2)[:, None, None] * infos).sum(axis=0)
    full = np.block([[i_bb, i_bg], [i_bg.T, i_gg]])
    u_full = np.concatenate([np.zeros(p), u_g])
    rows = []
    for j, name in enumerate(covariates):
        keep = list(range(p)) + [p + j]
        uu = u_full[keep]
        chisq = float(uu @ np.linalg.solve(full[np.ix_(keep, keep)], uu))
        rows.append((name, chisq, 1, stats.chi2.sf(chisq, 1)))
    chisq = float(u_full @ np.linalg.solve(full, u_full))
    rows.append(("GLOBAL", chisq, p, stats.chi2.sf(chisq, p)))
    return pd.DataFrame(rows, columns=["covariate", "chisq", "df", "p"]).set_index("covariate")


# --------------------------------------------------------------------------------------------
# episode-level mortality
# --------------------------------------------------------------------------------------------

def mortality_times(episodes: pd.DataFrame, *, follow_up: FollowUp = "ipso",
                    horizon: float = 30.0, event_col: str = "sam30") -> pd.DataFrame:
    """Add ``time`` (days from T0, <= horizon) and ``event`` (1 = sepsis-attributable death within
    the horizon) per the documented follow-up rule. Needs days_t0_to_death, days_t0_to_discharge
    and `event_col` (derived columns). With a data cut-off (``followup_days``, see
    :func:`analysis.derive.derive_episodes`), follow-up ends there: an episode whose window was
    still open is censored at the cut-off, and an in-hospital death seen before it is an event."""
    _require_columns(episodes, ["days_t0_to_death", "days_t0_to_discharge", event_col])
    _check_flag(episodes[event_col], event_col)
    if follow_up not in ("ipso", "censor_at_discharge"):
        raise ValueError(f"follow_up must be 'ipso' or 'censor_at_discharge', got {follow_up!r}")
    df = episodes.copy()
    died = df[event_col].astype(bool) & (df["days_t0_to_death"] <= horizon)
    done = f"{event_col}_complete"
    if done in df and "died_in_hospital" in df:  # window open at the cut-off: deaths seen count
        died |= ~df[done].astype(bool) & df["died_in_hospital"] & (df["days_t0_to_death"] <= horizon)
    if (df.loc[died, "days_t0_to_death"] < 0).any():
        raise ValueError("days_t0_to_death has negative values (death before T0)")
    if follow_up == "ipso":
        other = pd.Series(float(horizon), index=df.index)
    else:
        if (df["days_t0_to_discharge"] < 0).any():
            raise ValueError("days_t0_to_discharge has negative values (discharge before T0)")
        other = df["days_t0_to_discharge"].clip(upper=horizon)
    if "followup_days" in df:  # data cut-off: still followed at the cut-off = censored there
        other = np.minimum(other.fillna(np.inf), df["followup_days"].clip(lower=0.0))
    df["time"] = np.where(died, df["days_t0_to_death"], other).astype(float)
    df["event"] = died.astype(int)
    return df


@dataclass
class KMResult:
    """Kaplan-Meier survival by period (pre/post go-live) within each unit (site or collaborative).

    ``curves``: unit, period, time (days), survival, ci_lower, ci_upper.
    ``at_risk``: unit, period, time, at_risk.
    ``comparison``: per unit: survival at horizon by period, RMST (days, to horizon) by period
    and the post - pre difference (descriptive; log-rank chi2/p and the difference's CI only with
    ``inference="independent"``); ``status`` says why a row is missing.
    """

    curves: pd.DataFrame
    at_risk: pd.DataFrame
    comparison: pd.DataFrame
    horizon: float
    follow_up: str

    def summary(self) -> pd.DataFrame:
        return self.comparison.copy()

    def plot(self, unit: str = "collaborative", ax=None):
        from .plotting import PALETTE, new_axes

        ax = new_axes(ax)
        c = self.curves[self.curves["unit"] == unit]
        for period, g in c.groupby("period", sort=True):
            colour = PALETTE["post"] if period == "post" else PALETTE["pre"]
            ax.step(g["time"], g["survival"], where="post", color=colour, label=period)
            ax.fill_between(g["time"], g["ci_lower"], g["ci_upper"], step="post", color=colour, alpha=0.15)
        ax.set_xlabel("Days from T0")
        ax.set_ylabel("Survival (sepsis-attributable)")
        ax.set_title(f"{unit}: Kaplan-Meier by period")
        ax.legend()
        return ax


def _period_labels(post: pd.Series) -> pd.Series:
    _check_flag(post, "post")
    return post.astype(bool).map({False: "pre", True: "post"})


def kaplan_meier(time: np.ndarray, event: np.ndarray, *, alpha: float = 0.05) -> pd.DataFrame:
    """Kaplan-Meier estimate at each distinct time with an event (ties grouped; censorings tied
    with deaths count as at risk). Columns: time, at_risk, events, survival, se (Greenwood),
    ci_lower, ci_upper (log(-log) CI, as lifelines / R ``conf.type="log-log"``)."""
    time, event = np.asarray(time, float), np.asarray(event)
    if time.shape != event.shape or time.ndim != 1:
        raise ValueError(f"time and event must be 1-d and of the same length, got {time.shape} and {event.shape}")
    if not np.isfinite(time).all() or (time < 0).any():
        raise ValueError("time must be finite and >= 0 on every row")
    if not np.isin(event, [0, 1]).all():
        raise ValueError("event must be 1 (event) or 0 (censored) on every row (or bool); with several "
                         "causes use analysis.competing.cumulative_incidence, which treats the other "
                         "causes as competing events, not as censoring")
    event = event.astype(int)
    ut, inv = np.unique(time, return_inverse=True)
    n_at = np.bincount(inv, minlength=len(ut))
    d = np.bincount(inv, weights=event, minlength=len(ut))
    at_risk = len(time) - np.concatenate([[0], np.cumsum(n_at)[:-1]])
    keep = d > 0
    t, n, d = ut[keep], at_risk[keep], d[keep]
    surv = np.cumprod(1 - d / n)
    with np.errstate(divide="ignore", invalid="ignore"):
        green = np.cumsum(np.where(n > d, d / (n * (n - d)), np.inf))
        se = surv * np.sqrt(green)
        q = stats.norm.ppf(1 - alpha / 2)
        v = np.sqrt(green) / np.log(surv)
        lo, hi = surv ** np.exp(-q * v), surv ** np.exp(q * v)
    ok = (surv > 0) & (surv < 1)
    lo = np.where(ok, lo, surv)
    hi = np.where(ok, hi, surv)
    return pd.DataFrame({"time": t, "at_risk": n.astype(int), "events": d.astype(int), "survival": surv,
                         "se": se, "ci_lower": lo, "ci_upper": hi})


def rmst(km: pd.DataFrame, tau: float) -> tuple[float, float]:
    """Restricted mean survival time to `tau` (area under the KM step function) and its standard
    error, Var = sum_j A_j^2 d_j / (n_j (n_j - d_j)), A_j = area from t_j to tau (the estimator of
    R ``print.survfit(rmean=tau)`` and survRM2)."""
    if not np.isfinite(tau) or tau <= 0:
        raise ValueError(f"tau must be a positive, finite time, got {tau!r}")
    k = km[km["time"] <= tau]
    t = np.concatenate([[0.0], k["time"].to_numpy(), [tau]])
    s = np.concatenate([[1.0], k["survival"].to_numpy()])
    areas = s * np.diff(t)
    mean = float(areas.sum())
    tail = np.cumsum(areas[::-1])[::-1][1:]  # A_j for each event time j
    n, d = k["at_risk"].to_numpy(float), k["events"].to_numpy(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        var = float(np.sum(np.where(n > d, tail**2 * d / (n * (n - d)), 0.0)))
    return mean, float(np.sqrt(var))


def km_by_period(episodes: pd.DataFrame, *, by: str | None = "site_id", horizon: float = 30.0,
                 follow_up: FollowUp = "ipso", at_risk_times: Sequence[float] = (0, 3, 7, 14, 21, 30),
                 alpha: float = 0.05, inference: Literal["none", "independent"] = "none") -> KMResult:
    """Kaplan-Meier 30-day survival from T0 by period (``post``), for the collaborative and each
    unit of `by` (None = collaborative only), with the RMST difference (post - pre, days).

    The comparison is descriptive by default (``inference="none"``): no log-rank p-value and no
    interval for the RMST difference, because episodes of one hospital are not independent and
    a before/after contrast mixes the collaborative's effect with trends and case mix (the plan's
    primary estimates are in :mod:`analysis.results`). ``inference="independent"`` adds the
    log-rank test and a normal CI from the two RMST SEs, which treat every episode as
    independent (defensible for one hospital at most, never for the collaborative)."""
    if inference not in ("none", "independent"):
        raise ValueError(f"inference must be 'none' or 'independent', got {inference!r}")
    from lifelines.statistics import logrank_test

    _require_columns(episodes, ["post"] + ([by] if by else []))
    df = mortality_times(episodes, follow_up=follow_up, horizon=horizon)
    df["period"] = _period_labels(df["post"])
    if df["period"].nunique() < 2:
        raise ValueError(f"a period comparison needs both pre and post episodes; only {df['period'].unique().tolist()}")
    units = [("collaborative", df)]
    if by:
        units += [(str(k), g) for k, g in df.groupby(by, sort=True)]
    curves, risk_rows, comp = [], [], []
    q = stats.norm.ppf(1 - alpha / 2)
    tt = np.asarray(at_risk_times, float)
    for unit, g in units:
        row: dict = {"unit": unit, "status": "ok"}
        have = []
        for period in ("pre", "post"):
            gp = g[g["period"] == period]
            row[f"n_{period}"] = len(gp)
            row[f"deaths_{period}"] = int(gp["event"].sum())
            if len(gp) == 0:
                continue
            have.append(period)
            km = kaplan_meier(gp["time"].to_numpy(), gp["event"].to_numpy(), alpha=alpha)
            start = pd.DataFrame({"time": [0.0], "at_risk": [len(gp)], "events": [0], "survival": [1.0],
                                  "se": [0.0], "ci_lower": [1.0], "ci_upper": [1.0]})
            curve = pd.concat([start, km], ignore_index=True)
            curve.insert(0, "period", period)
            curve.insert(0, "unit", unit)
            curves.append(curve)
            risk_rows.append(pd.DataFrame({"unit": unit, "period": period, "time": tt,
                                           "at_risk": [int((gp["time"] >= t).sum()) for t in tt]}))
            before = km[km["time"] <= horizon]
            row[f"survival_{period}"] = float(before["survival"].iloc[-1]) if len(before) else 1.0
            row[f"rmst_{period}"], row[f"rmst_se_{period}"] = rmst(km, horizon)
        if len(have) < 2:
            row["status"] = "single period: no comparison"
        elif g["event"].sum() == 0:
            row["status"] = "no deaths: log-rank not defined"
        elif inference == "independent":
            pre, post = g[g["period"] == "pre"], g[g["period"] == "post"]
            lr = logrank_test(pre["time"], post["time"], pre["event"], post["event"])
            row["logrank_chi2"], row["logrank_p"] = float(lr.test_statistic), float(lr.p_value)
        if len(have) == 2:
            diff = row["rmst_post"] - row["rmst_pre"]
            row["rmst_diff"] = diff
            if inference == "independent":
                se = float(np.hypot(row["rmst_se_post"], row["rmst_se_pre"]))
                row.update(rmst_diff_se=se, rmst_diff_lower=diff - q * se,
                           rmst_diff_upper=diff + q * se)
        comp.append(row)
    return KMResult(pd.concat(curves, ignore_index=True), pd.concat(risk_rows, ignore_index=True),
                    pd.DataFrame(comp), horizon, follow_up)


def mortality_design(episodes: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Numeric design columns for the mortality Cox model: post (0/1) plus case-mix dummies.
    Reference levels: age_group '<1', onset_setting 'ED' (or the first level present).
    Dummies of absent levels and constant columns are dropped (reported by the caller)."""
    _require_columns(episodes, ["post", *CASE_MIX])
    X = pd.DataFrame(index=episodes.index)
    X["post"] = episodes["post"].astype(float)
    ag = episodes["age_group"].astype(str)
    for lev in sorted(ag.unique()):
        if lev != ("<1" if "<1" in set(ag) else min(ag.unique())):
            X[f"age_{lev}"] = (ag == lev).astype(float)
    X["ccc_count"] = episodes["ccc_count"].astype(float)
    for c in ("immunocompromised", "hospital_onset", "critical_sepsis"):
        X[c] = episodes[c].astype(float)
    onset = episodes["onset_setting"].astype(str)
    ref = "ED" if "ED" in set(onset) else min(onset.unique())
    for lev in sorted(onset.unique()):
        if lev != ref:
            X[f"onset_{lev}"] = (onset == lev).astype(float)
    return X, list(X.columns)


def fit_mortality_cox(episodes: pd.DataFrame, *,
                      adjust: Literal["strata", "cluster", "strata_cluster"] = "strata",
                      follow_up: FollowUp = "ipso", horizon: float = 30.0, ties: Ties = "efron",
                      alpha: float = 0.05, calendar: Literal["linear", "none"] = "linear",
                      event_col: str = "sam30", transition: int = 0) -> CoxResult:
    """Cox model for sepsis-attributable death within `horizon` days (`event_col`): post-go-live
    indicator plus case mix, stratified by site (``adjust="strata"``), with site-clustered
    robust SEs (``"cluster"``) or both (``"strata_cluster"``, as R ``coxph(... + strata(site) +
    cluster(site))``).

    ``calendar="linear"`` (default) adds calendar time (``years`` since the first T0 month) so
    that the ``post`` hazard ratio does not absorb the secular trend: with staggered go-lives,
    ``post`` is then compared within calendar time. ``"none"`` is the unadjusted model (the
    ``post`` HR then mixes the collaborative's effect with the trend: -5% bias on the simulator).
    ``transition``: months from go-live (phase-in) left out. With calendar time in the model,
    an effect that is still growing in the phase-in months biases the ``post`` HR toward no
    effect (hospitals already in their phase-in act as controls for later ones), so the plan
    leaves the phase-in out (``transition=6``), as its segmented regressions do.
    """
    if adjust not in ("strata", "cluster", "strata_cluster"):
        raise ValueError(f"adjust must be 'strata', 'cluster' or 'strata_cluster', got {adjust!r}")
    if calendar not in ("linear", "none"):
        raise ValueError(f"calendar must be 'linear' or 'none', got {calendar!r}")
    _require_columns(episodes, ["site_id"])
    if int(transition) != transition or transition < 0:
        raise ValueError(f"transition must be a non-negative integer, got {transition!r}")
    if transition:
        _require_columns(episodes, ["months_since_go_live"])
        m = episodes["months_since_go_live"]
        episodes = episodes[~((m >= 0) & (m < transition))]
    df = mortality_times(episodes, follow_up=follow_up, horizon=horizon, event_col=event_col)
    if df["post"].nunique() < 2:
        raise ValueError("post-go-live indicator has a single level: both periods are needed")
    X, cols = mortality_design(df)
    if calendar == "linear":
        _require_columns(df, ["time_zero"])
        month = df["time_zero"].dt.to_period("M").dt.to_timestamp()
        X["years"] = (month - month.min()).dt.days / 365.25
        cols.append("years")
    dropped = [c for c in cols if X[c].nunique() < 2 and c != "post"]
    cols = [c for c in cols if c not in dropped]
    data = pd.concat([df[["time", "event", "site_id"]], X[cols]], axis=1)
    res = fit_cox(data, "time", "event", cols, strata="site_id" if "strata" in adjust else None,
                  cluster="site_id" if "cluster" in adjust else None, ties=ties, alpha=alpha)
    cal = ", calendar time" if calendar == "linear" else ""
    res.method = f"Cox {horizon:g}-day SAM ({adjust.replace('_', ' + ')} by site{cal})"
    if dropped:
        res.notes.append(f"constant covariate(s) dropped: {', '.join(dropped)}")
    return res

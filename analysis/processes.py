"""Associations between the key IPSO processes and sepsis-attributable mortality (SAM).

These are ASSOCIATIONS, not causal effects: processes are not randomised, sicker children may be
treated faster (confounding by indication), and unmeasured severity is not in the case-mix model.
The estimates describe how mortality differs between otherwise similar episodes (same case mix,
period and calendar time) that did and did not receive a process.

Model
-----
Generalised estimating equations (statsmodels GEE) clustered by site with an exchangeable working
correlation and robust (sandwich) standard errors:

- ``link="logit"`` (default): binomial GEE, odds ratios (ORs);
- ``link="log"``: Poisson GEE with robust SEs ("modified Poisson", Zou 2004), risk ratios (RRs)
  directly. With rare deaths (3-5%) ORs and RRs are close.

Covariates: the case-mix terms of :data:`analysis.riskadj.DEFAULT_CASEMIX`, ``post`` (after the
site's go-live) and secular time (``years`` since the first T0 month, linear) unless switched off.

Processes (bool columns from :func:`analysis.derive.derive_episodes`): ``screen_positive``,
``huddle``, ``order_set``, ``fluid_60``, ``abx_60``, ``abx_180``; and the antibiotic delay as
``antibiotic_hours`` (per-hour term: hours from T0 to first antibiotic, clipped to
[0, `antibiotic_hours_cap`] = [0, 12] h; antibiotics before T0 count as 0 h) or
``antibiotic_spline`` (natural cubic regression spline of the same hours, `spline_df` degrees of
freedom; see :meth:`ProcessAssociations.antibiotic_curve`).

Children who never get an antibiotic (argument ``untreated``) include those who die before they
could: coding them as the longest delay (the cap, ``"cap"``) credits their early deaths to "slow
antibiotics", an immortal-time bias. ``"category"`` (default) gives "no antibiotic" its own
indicator (``no_antibiotic``; the delay is then among those treated); ``"landmark"`` keeps only
episodes alive and in hospital at the cap (12 h after T0), where the delay up to the landmark is
known for everyone (not given by then = the cap) and deaths after the landmark are the outcome.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
import statsmodels.api as sm
import statsmodels.formula.api as smf
from scipy import stats

from .plotting import PALETTE, new_axes
from .riskadj import DEFAULT_CASEMIX, casemix_frame

#: Default processes of the mutually adjusted model (the antibiotic delay as a per-hour term).
DEFAULT_PROCESSES: tuple[str, ...] = (
    "screen_positive", "huddle", "order_set", "fluid_60", "antibiotic_hours",
)
#: Every process term the function understands.
KNOWN_PROCESSES: tuple[str, ...] = (
    "screen_positive", "huddle", "order_set", "fluid_60", "abx_60", "abx_180",
    "antibiotic_hours", "antibiotic_spline",
)
ANTIBIOTIC_HOURS_CAP: float = 12.0
#: Antibiotic delays (hours) reported against 1 h in the table when the spline is used.
SPLINE_REPORT_HOURS: tuple[float, ...] = (0.0, 3.0, 6.0, 12.0)

CAUSAL_CAVEAT = (
    "Associations from an observational GEE model, adjusted for case mix, period and secular time; "
    "not causal effects (confounding by indication and unmeasured severity remain possible)."
)


UNTREATED = ("category", "landmark", "cap")


def antibiotic_hours(minutes_to_antibiotic: pd.Series, cap: float = ANTIBIOTIC_HOURS_CAP) -> pd.Series:
    """Hours from T0 to first antibiotic, clipped to [0, cap]; not given (NaN) = cap (see the
    module docstring: use it with a landmark or a "no antibiotic" category, not alone)."""
    h = (minutes_to_antibiotic / 60.0).clip(lower=0.0, upper=cap)
    return h.fillna(cap)


def landmark_episodes(episodes: pd.DataFrame, hours: float = ANTIBIOTIC_HOURS_CAP) -> pd.DataFrame:
    """Episodes alive and still in hospital `hours` after T0 (the landmark population)."""
    missing = [c for c in ("days_t0_to_discharge", "days_t0_to_death") if c not in episodes]
    if missing:
        raise ValueError(f"a landmark analysis needs columns {missing} (derive episodes first)")
    d = hours / 24.0
    alive = episodes["days_t0_to_death"].isna() | (episodes["days_t0_to_death"] > d)
    return episodes[alive & (episodes["days_t0_to_discharge"] > d)]


def _q(name: str) -> str:
    return f'Q("{name}")'


@dataclass
class ProcessAssociations:
    """Process-outcome associations.

    ``table``: one row per process term: process, term, estimate (OR or RR per unit: per hour for
    ``antibiotic_hours``), lower, upper, p_value, measure, model ("mutually adjusted" or
    "separate"). ``results`` keeps the statsmodels GEE results by model name. ``caveat`` states
    that these are associations.
    """

    table: pd.DataFrame
    outcome: str
    link: str
    n: int
    events: int
    clusters: int
    covariates: tuple[str, ...]
    results: dict = field(repr=False, default_factory=dict)
    cov_type: str = "robust"
    notes: list[str] = field(default_factory=list)
    caveat: str = CAUSAL_CAVEAT
    level: float = 0.95
    antibiotic_hours_cap: float = ANTIBIOTIC_HOURS_CAP

    @property
    def measure(self) -> str:
        return "OR" if self.link == "logit" else "RR"

    def summary(self) -> pd.DataFrame:
        return self.table.copy()

    def antibiotic_curve(self, hours: Sequence[float] | None = None, reference: float = 1.0) -> pd.DataFrame:
        """OR/RR (with pointwise CI) of antibiotic delay `hours` relative to `reference` hours,
        from the model containing ``antibiotic_spline`` (or ``antibiotic_hours``)."""
        res = next((r for r in self.results.values()
                    if any("antibiotic_hours" in t for t in r.params.index)), None)
        if res is None:
            raise ValueError("no antibiotic delay term (antibiotic_hours / antibiotic_spline) was fitted")
        return _curve(res, hours, reference, self.antibiotic_hours_cap, self.level, self.measure)

    def plot(self, ax=None):

        """Forest plot of the process ORs/RRs (log scale) with CIs. Returns Axes."""
        t = self.table.iloc[::-1].reset_index(drop=True)
        ax = new_axes(ax, figsize=(7, 0.5 * len(t) + 1.5))
        y = np.arange(len(t))
        colours = [PALETTE["fitted"] if m == "mutually adjusted" else PALETTE["observed"] for m in t["model"]]
        for yi, (_, r), col in zip(y, t.iterrows(), colours):
            ax.plot([r["lower"], r["upper"]], [yi, yi], color=col, lw=1.5)
            ax.scatter([r["estimate"]], [yi], color=col, zorder=3)
        ax.axvline(1.0, color=PALETTE["limit"], ls="--", lw=1)
        ax.set_xscale("log")
        from matplotlib.ticker import FormatStrFormatter

        ax.xaxis.set_major_formatter(FormatStrFormatter("%.2g"))
        ax.xaxis.set_minor_formatter(FormatStrFormatter("%.2g"))
        labels = [f"{p} ({m})" if t["model"].nunique() > 1 else str(p) for p, m in zip(t["term"], t["model"])]
        ax.set_yticks(y, labels)
        ax.set_xlabel(f"{self.measure} for {self.outcome} ({self.level:.0%} CI); association, not causal effect")
        ax.set_title(f"Processes and {self.outcome}")
        return ax


def _curve(res, hours, reference: float, cap: float, level: float, measure: str) -> pd.DataFrame:
    """exp(linear predictor difference) between `hours` and `reference` hours of antibiotic delay."""
    from patsy import build_design_matrices

    h = np.asarray(hours if hours is not None else np.linspace(0, cap, 49), float)
    data = res.model.data
    design_info = getattr(data, "design_info", None) or data.model_spec
    frame = res.model.data.frame.iloc[[0] * (len(h) + 1)].copy()
    frame["antibiotic_hours"] = np.r_[reference, h]
    X = np.asarray(build_design_matrices([design_info], frame)[0])
    cols = [i for i, n in enumerate(design_info.column_names) if "antibiotic_hours" in n]
    d = X[1:, cols] - X[0, cols]
    b = np.asarray(res.params)[cols]
    V = np.asarray(res.cov_params())[np.ix_(cols, cols)]
    est = d @ b
    se = np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", d, V, d), 0.0))
    z = stats.norm.ppf(1 - (1 - level) / 2)
    return pd.DataFrame({"hours": h, "reference_hours": reference, "estimate": np.exp(est),
                         "lower": np.exp(est - z * se), "upper": np.exp(est + z * se), "measure": measure})


def _prepare(df: pd.DataFrame, outcome: str, processes: Sequence[str], covariates: Sequence[str],
             cluster: str, adjust_period: bool, secular: bool, cap: float,
             untreated: str = "category") -> pd.DataFrame:
    needed = [outcome, cluster, *covariates]
    if adjust_period:
        needed.append("post")
    missing = [c for c in needed if c not in df]
    uses_delay = any(p in ("antibiotic_hours", "antibiotic_spline") for p in processes)
    if uses_delay and "minutes_to_antibiotic" not in df:
        missing.append("minutes_to_antibiotic")
    missing += [p for p in processes if p in ("screen_positive", "huddle", "order_set", "fluid_60",
                                                "abx_60", "abx_180") and p not in df]
    if missing:
        raise ValueError(f"columns missing from episodes: {sorted(set(missing))}")
    w = pd.DataFrame(index=df.index)
    w["_y"] = df[outcome].astype(float)
    w["_cluster"] = df[cluster].astype(str)
    for c in covariates:
        x = df[c]
        if x.isna().any():
            raise ValueError(f"covariate {c!r} has {int(x.isna().sum())} missing values")
        w[c] = x.astype(float) if pd.api.types.is_bool_dtype(x) else x
    for p in processes:
        if p in ("antibiotic_hours", "antibiotic_spline"):
            w["antibiotic_hours"] = antibiotic_hours(df["minutes_to_antibiotic"], cap)
            if untreated == "category":  # delay among the treated; "no antibiotic" its own term
                given = df["minutes_to_antibiotic"].notna()
                w["antibiotic_hours"] = w["antibiotic_hours"].where(given, 0.0)
                w["no_antibiotic"] = (~given).astype(float)
        else:
            w[p] = df[p].astype(float)
    if adjust_period:
        w["post"] = df["post"].astype(float)
    if secular:
        t = df["month"] if "month" in df else df["time_zero"].dt.to_period("M").dt.to_timestamp()
        t = pd.to_datetime(t)
        w["years"] = (t - t.min()).dt.days / 365.25
    return w


def _formula(processes: Sequence[str], covariates: Sequence[str], w: pd.DataFrame,
             adjust_period: bool, secular: bool, spline_df: int) -> str:
    terms = []
    for c in covariates:
        x = w[c]
        if pd.api.types.is_float_dtype(x) or pd.api.types.is_integer_dtype(x):
            if x.nunique() < 2:
                raise ValueError(f"covariate {c!r} has a single level")
            terms.append(_q(c))
        else:
            counts = x.astype(object).value_counts()
            if len(counts) < 2:
                raise ValueError(f"covariate {c!r} has a single level ({counts.index[0]!r})")
            terms.append(f"C({_q(c)}, Treatment(reference={counts.idxmax()!r}))")
    for p in processes:
        col = "antibiotic_hours" if p.startswith("antibiotic_") else p
        if w[col].nunique() < 2:
            raise ValueError(f"process {p!r} does not vary (all {w[col].iloc[0]!r}); cannot estimate it")
        terms.append(f"cr(antibiotic_hours, df={spline_df}, constraints='center')"
                     if p == "antibiotic_spline" else _q(col))
        if col == "antibiotic_hours" and "no_antibiotic" in w and w["no_antibiotic"].nunique() > 1:
            terms.append(_q("no_antibiotic"))
    if adjust_period:
        if w["post"].nunique() < 2:
            raise ValueError("'post' has a single value (a single period); use adjust_period=False")
        terms.append("post")
    if secular:
        terms.append("years")
    return "_y ~ " + " + ".join(terms)


def process_associations(
    episodes: pd.DataFrame,
    outcome: str = "sam30",
    *,
    processes: Sequence[str] = DEFAULT_PROCESSES,
    covariates: Sequence[str] = DEFAULT_CASEMIX,
    mutually_adjusted: bool = True,
    link: Literal["logit", "log"] = "logit",
    cluster: str = "site_id",
    adjust_period: bool = True,
    secular: bool = True,
    antibiotic_hours_cap: float = ANTIBIOTIC_HOURS_CAP,
    spline_df: int = 4,
    level: float = 0.95,
    cov_type: Literal["robust", "bias_reduced", "naive"] = "robust",
    site_fixed_effects: bool = False,
    untreated: Literal["category", "landmark", "cap"] = "category",
) -> ProcessAssociations:
    """Case-mix-adjusted associations of key processes with `outcome` (GEE clustered by site).

    ``mutually_adjusted=True`` fits one model with all `processes`; ``False`` fits one model per
    process (each with the same case mix / period / time adjustment). Returns ORs (``link="logit"``)
    or RRs (``link="log"``, modified Poisson) with robust CIs. These are associations, not causal
    effects (see the module docstring).

    ``cov_type``: ``"robust"`` sandwich SEs (default), ``"bias_reduced"`` (Mancl & DeRouen 2001
    small-sample correction; slow with large clusters) or ``"naive"`` (model-based). Robust SEs are
    too small when there are few clusters relative to the number of parameters (a note is added
    below 50 clusters). ``site_fixed_effects=True`` adds site indicators, so that associations are
    within-site comparisons (removes confounding by stable between-site differences).
    ``untreated``: how episodes without an antibiotic enter the delay term (module docstring):
    ``"category"`` (default; adds a ``no_antibiotic`` row), ``"landmark"`` (alive and in hospital
    at ``antibiotic_hours_cap`` hours) or ``"cap"`` (the cap; immortal-time bias, for comparison).
    """
    if outcome not in episodes:
        raise ValueError(f"outcome column {outcome!r} is missing (run derive_episodes first)")
    if link not in ("logit", "log"):
        raise ValueError(f"link must be 'logit' or 'log' (got {link!r})")
    processes = tuple(processes)
    unknown = [p for p in processes if p not in KNOWN_PROCESSES]
    if unknown:
        raise ValueError(f"unknown processes {unknown}; choose from {list(KNOWN_PROCESSES)}")
    if not processes:
        raise ValueError("no processes given")
    if mutually_adjusted and {"antibiotic_hours", "antibiotic_spline"} <= set(processes):
        raise ValueError("use either antibiotic_hours or antibiotic_spline in a mutually adjusted model")
    if untreated not in UNTREATED:
        raise ValueError(f"untreated must be one of {UNTREATED} (got {untreated!r})")
    uses_delay = any(p in ("antibiotic_hours", "antibiotic_spline") for p in processes)
    notes = []
    if uses_delay and untreated == "landmark":
        episodes = landmark_episodes(episodes, antibiotic_hours_cap)
        notes.append(f"landmark analysis: episodes alive and in hospital {antibiotic_hours_cap:g} h "
                     "after T0")
    df = casemix_frame(episodes)
    covariates = tuple(covariates)
    w = _prepare(df, outcome, processes, covariates, cluster, adjust_period, secular,
                 antibiotic_hours_cap, untreated if uses_delay else "cap")
    events = int(w["_y"].sum())
    if events == 0:
        raise ValueError(f"outcome {outcome!r} has no events; associations cannot be estimated")
    n_clusters = w["_cluster"].nunique()
    if n_clusters < 2:
        raise ValueError(f"GEE clustered by {cluster!r} needs at least 2 clusters (got {n_clusters})")
    if cov_type not in ("robust", "bias_reduced", "naive"):
        raise ValueError(f"cov_type must be 'robust', 'bias_reduced' or 'naive' (got {cov_type!r})")
    if n_clusters < 50 and cov_type == "robust":
        notes.append(f"only {n_clusters} clusters: robust (sandwich) SEs may be too small; "
                     "consider cov_type='bias_reduced' or 'naive'")
    family = sm.families.Binomial() if link == "logit" else sm.families.Poisson()
    w = w.sort_values("_cluster", kind="mergesort")
    models = {"mutually adjusted": processes} if mutually_adjusted else {p: (p,) for p in processes}
    z = stats.norm.ppf(1 - (1 - level) / 2)
    rows, results = [], {}
    for name, procs in models.items():
        formula = _formula(procs, covariates, w, adjust_period, secular, spline_df)
        if site_fixed_effects:
            formula += " + C(_cluster)"
        model = smf.gee(formula, groups="_cluster", data=w, family=family,
                        cov_struct=sm.cov_struct.Exchangeable())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = model.fit(maxiter=100, cov_type=cov_type)
        key = name if mutually_adjusted else f"separate: {name}"
        results[key] = res
        if not getattr(res, "converged", True):
            notes.append(f"{key}: GEE did not converge")
        for p in procs:
            if p == "antibiotic_spline":
                curve = _curve(res, SPLINE_REPORT_HOURS, 1.0, antibiotic_hours_cap, level,
                               "OR" if link == "logit" else "RR")
                for _, c in curve.iterrows():
                    rows.append({
                        "process": p, "term": f"antibiotic {c['hours']:g} h vs 1 h",
                        "estimate": c["estimate"], "lower": c["lower"], "upper": c["upper"],
                        "log_estimate": np.log(c["estimate"]), "se": np.nan, "p_value": np.nan,
                        "measure": c["measure"],
                        "model": "mutually adjusted" if mutually_adjusted else "separate",
                    })
            else:
                col = "antibiotic_hours" if p.startswith("antibiotic_") else p
                rows.append(_row(res, _q(col), p, p, z, mutually_adjusted, link))
            if p.startswith("antibiotic_") and _q("no_antibiotic") in res.params.index:
                rows.append(_row(res, _q("no_antibiotic"), "no_antibiotic",
                                 "no antibiotic (vs given at T0)", z, mutually_adjusted, link))
    table = pd.DataFrame(rows)
    return ProcessAssociations(table, outcome, link, len(w), events, n_clusters, covariates,
                               results, cov_type, notes, level=level,
                               antibiotic_hours_cap=antibiotic_hours_cap)


def _row(res, param: str, process: str, term: str, z: float, mutual: bool, link: str) -> dict:
    b, se = float(res.params[param]), float(res.bse[param])
    return {
        "process": process,
        "term": term if process != "antibiotic_hours" else "antibiotic_hours (per hour)",
        "estimate": np.exp(b), "lower": np.exp(b - z * se), "upper": np.exp(b + z * se),
        "log_estimate": b, "se": se, "p_value": float(2 * stats.norm.sf(abs(b / se))),
        "measure": "OR" if link == "logit" else "RR",
        "model": "mutually adjusted" if mutual else "separate",
    }


def forest_plot(assoc: ProcessAssociations, ax=None):
    """Forest plot of process ORs/RRs (same as ``assoc.plot()``)."""
    return assoc.plot(ax=ax)

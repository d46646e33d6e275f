"""Truth-recovery benchmark for the ITS engine on the synthetic collaborative.

For each replicate (seed) it simulates a collaborative (:func:`analysis.simulate.simulate_collaborative`),
derives episodes, fits a baseline case-mix model for 30-day SAM (:mod:`analysis.riskadj`), sums
observed and case-mix-expected deaths per site-month (:func:`analysis.measures.monthly_measures`,
``extra_sums=["expected_sam30"]``) and estimates the case-mix-standardised mortality risk ratio
12 months after go-live (truth: ``truth["estimands"]["sam30_rr_12m"]``) with

* ``multisite``: :func:`analysis.its.fit_its_multisite`, Poisson, log offset = expected deaths,
  site intercepts + site trends, level change after a 6-month transition (the simulator's ramp),
  cluster-robust SEs by site;
* ``pooled``: :func:`analysis.its.fit_its_by_site` (same model per site, model-based SEs) pooled
  by REML random-effects meta-analysis (:func:`analysis.its.pool_site_effects`).

It reports bias (mean and median of log estimate - log truth), empirical SD, mean SE, 95% CI
coverage and power (CI excluding 1) per estimator, and writes per-replicate rows to CSV.
``--scenario null`` sets every post-go-live effect to none (truth RR 1; recognition expansion
kept), giving the type-I error instead of power.

Usage::

    .venv/bin/python benchmarks/bench_its_truth.py --replicates 500 --jobs 2 --out bench_its.csv
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.derive import attach_sites, derive_episodes
from analysis.its import fit_its_by_site, fit_its_multisite, pool_site_effects
from analysis.measures import monthly_measures
from analysis.riskadj import fit_casemix_model
from analysis.simulate import simulate_collaborative

NULL_EFFECTS = {
    "post_direct_rr": 1.0,
    "process_post_logit_shift": {"screen_positive": 0.0, "huddle": 0.0, "order_set": 0.0},
    "bolus_time_post_ratio": 1.0,
    "antibiotic_time_post_ratio": 1.0,
}
TRANSITION = 6  # the simulator's ramp length (truth["ramp"]["ramp_months"])


def prepare_monthly(sim) -> pd.DataFrame:
    """Site-month frame with observed 30-day SAM deaths and case-mix-expected deaths (baseline
    case-mix logistic model), plus ``go_live_month``."""
    ep = attach_sites(derive_episodes(sim.episodes), sim.sites)
    cm = fit_casemix_model(ep, "sam30", unseen="reference")
    ep["expected_sam30"] = cm.predict(ep)
    return monthly_measures(ep, sim.site_months, sites=sim.sites, extra_sums=["expected_sam30"])


def estimate(mm: pd.DataFrame, months_after: int = 12) -> dict[str, dict[str, float]]:
    """Both estimators of the 12-month standardised mortality RR (log scale with SE and CI)."""
    out: dict[str, dict[str, float]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = fit_its_multisite(
            mm,
            "sam30",
            site="site_id",
            time="month",
            go_live="go_live_month",
            exposure="expected_sam30",
            family="poisson",
            se="cluster",
            transition=TRANSITION,
            slope_change=False,
        )
        e = r.effect_at(months_after)
        out["multisite"] = {
            "log_est": math.log(e.relative),
            "se": r.level_change.link_se,
            "ci_low": e.relative_low,
            "ci_high": e.relative_high,
        }
        fr = fit_its_by_site(
            mm,
            "sam30",
            site="site_id",
            time="month",
            go_live="go_live_month",
            min_events=10,
            exposure="expected_sam30",
            family="poisson",
            autocorrelation="none",
            transition=TRANSITION,
            slope_change=False,
        )
        p = pool_site_effects(fr, method="reml")
        out["pooled"] = {
            "log_est": p.estimate,
            "se": p.se,
            "ci_low": math.exp(p.ci_low),
            "ci_high": math.exp(p.ci_high),
            "n_excluded": len(p.excluded),
            "tau2": p.tau2,
        }
    return out


def run_replicate(seed: int, sites: int, months: int, scale: float, scenario: str) -> list[dict]:
    t0 = time.perf_counter()
    sim = simulate_collaborative(
        seed=seed,
        sites=sites,
        months=months,
        scale=scale,
        true_effects=NULL_EFFECTS if scenario == "null" else None,
    )
    truth = sim.truth["estimands"]["sam30_rr_12m"]
    mm = prepare_monthly(sim)
    rows = []
    try:
        est = estimate(mm)
    except Exception as exc:  # noqa: BLE001 - record failures, never drop a replicate
        return [{"seed": seed, "estimator": "all", "status": f"error: {exc}", "truth": truth}]
    for name, d in est.items():
        rows.append(
            {
                "seed": seed,
                "estimator": name,
                "status": "ok",
                "truth": truth,
                "estimate": math.exp(d["log_est"]),
                "log_error": d["log_est"] - math.log(truth),
                "se": d["se"],
                "ci_low": d["ci_low"],
                "ci_high": d["ci_high"],
                "covers": d["ci_low"] <= truth <= d["ci_high"],
                "significant": not (d["ci_low"] <= 1.0 <= d["ci_high"]),
                "deaths": int(mm["sam30"].sum()),
                "seconds": time.perf_counter() - t0,
                **{k: v for k, v in d.items() if k in ("n_excluded", "tau2")},
            }
        )
    return rows


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    ok = df[df["status"] == "ok"]
    g = ok.groupby("estimator")
    # a failed replicate has one row with estimator "all": it counts as failed for every estimator
    n_fail_all = int(((df["status"] != "ok") & (df["estimator"] == "all")).sum())
    fails = df[(df["status"] != "ok") & (df["estimator"] != "all")].groupby("estimator").size()
    return pd.DataFrame(
        {
            "replicates": g.size(),
            "failed": fails.reindex(g.size().index).fillna(0).astype(int) + n_fail_all,
            "mean_truth": g["truth"].mean(),
            "mean_estimate": g["estimate"].mean(),
            "bias_log_mean": g["log_error"].mean(),
            "bias_log_median": g["log_error"].median(),
            "mc_se_bias": g["log_error"].std() / np.sqrt(g.size()),
            "empirical_sd_log": g["log_error"].std(),
            "mean_se": g["se"].mean(),
            "coverage_95": g["covers"].mean(),
            "power_or_type1": g["significant"].mean(),
        }
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--replicates", type=int, default=500)
    ap.add_argument("--seed0", type=int, default=1000)
    ap.add_argument("--sites", type=int, default=57)
    ap.add_argument("--months", type=int, default=84)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--scenario", choices=["default", "null"], default="default")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    seeds = list(range(a.seed0, a.seed0 + a.replicates))
    t = time.perf_counter()
    rows: list[dict] = []
    args = [(s, a.sites, a.months, a.scale, a.scenario) for s in seeds]
    if a.jobs > 1:
        with ProcessPoolExecutor(a.jobs) as ex:
            for r in ex.map(run_replicate, *zip(*args, strict=True)):
                rows.extend(r)
    else:
        for i, arg in enumerate(args, 1):
            rows.extend(run_replicate(*arg))
            if i % 10 == 0:
                print(
                    f"{i}/{len(args)} replicates, {time.perf_counter() - t:.0f} s", file=sys.stderr
                )
    df = pd.DataFrame(rows)
    if a.out:
        df.to_csv(a.out, index=False)
    pd.set_option("display.width", 160)
    print(
        f"scenario={a.scenario} sites={a.sites} months={a.months} scale={a.scale} "
        f"replicates={a.replicates} ({time.perf_counter() - t:.0f} s)"
    )
    print(summarise(df).round(4).to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

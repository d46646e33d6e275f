"""Validation of the analysis plan's primary estimands against the simulator's truth.

For every replicate (seed) it simulates the default collaborative (57 sites x 84 months), derives
the episodes and runs :func:`analysis.results.estimate_all` with the default plan, collaborative
scope, primary specifications only (one cached set of expected-value models and site-month
series per replicate). Each primary estimate is compared with its same-episode truth in
``truth.json`` (:data:`TRUTH_KEYS`): bias as the geometric-mean ratio to the truth (exp(mean
log error) - 1: the criterion, since the estimators are unbiased on the log scale where their
intervals are built) and as the mean of ratios (estimate / truth - 1, which adds exp(SD^2/2) - 1),
bias on the log scale with its Monte-Carlo SE, empirical SD, mean SE, coverage of the 95%
interval (z, as the plan computes it, and t with G - 1 df for comparison) and the share of
intervals excluding 1 (power, or the type-I error under ``--scenario null``).

Times to treatment are compared with the model's expected median ratios (``*_expected``): the
realised ratio of one month's medians carries sampling noise of its own (about 1.5%, an error
of the truth, not of the estimator), which would show as under-coverage.

``--scenario null`` sets every true effect to none: direct mortality RR 1, process shifts 0, time
and LOS ratios 1 and no recognition expansion (:data:`NULL_EFFECTS`).

``--level site`` runs the site-level primary mortality estimand (empirical Bayes) and the
unpooled per-site ITS for every hospital, against ``truth["sites"][i]["sam30_rr_12m"]``.

Results are checkpointed: each replicate's rows are appended to ``--out`` (CSV) as soon as it is
done, and a restart skips the seeds already there. ``--summary`` prints the table of an existing
file. ``--refresh-truth`` recomputes the ``truth`` column of an existing file from the
simulator (after a change of truth keys; the estimates are not touched). BLAS is limited to one
thread per process (the study runs ``--jobs`` processes).

Usage::

    nice .venv/bin/python benchmarks/bench_plan_truth.py --replicates 200 --jobs 2 --out plan_default.csv
    nice .venv/bin/python benchmarks/bench_plan_truth.py --replicates 100 --scenario null --out plan_null.csv
    nice .venv/bin/python benchmarks/bench_plan_truth.py --replicates 20 --level site --out plan_site.csv
"""

from __future__ import annotations

import os

for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_its_truth import NULL_EFFECTS as ITS_NULL_EFFECTS

from analysis.derive import attach_sites, derive_episodes
from analysis.plan import Plan
from analysis.results import estimate_all
from analysis.simulate import simulate_collaborative

#: Every true effect set to "no effect" (keys of analysis.simulate.DEFAULT_EFFECTS): the ITS truth
#: study's null (mortality, processes, times) plus no LOS effect and no recognition expansion.
NULL_EFFECTS = {**ITS_NULL_EFFECTS, "los_post_rr": 1.0, "recognition_expansion": 0.0}

#: Primary collaborative estimand -> its truth in truth["estimands"].
TRUTH_KEYS = {
    "sam30": "sam30_rr_12m",
    "sam3": "sam3_rr_12m",
    "recognition": "recognition_rr_12m",
    "bundle": "bundle_rr_12m",
    "bundle_population": "bundle_rr_12m_population",
    "screen_positive": "screen_positive_rr_12m",
    "huddle": "huddle_rr_12m",
    "order_set": "order_set_rr_12m",
    "hospital_days": "los_ratio_12m",
    "hospital_days_population": "los_ratio_12m_population",
    "bolus_minutes": "minutes_to_bolus_ratio_12m_expected",
    "bolus_minutes_population": "minutes_to_bolus_ratio_12m_population_expected",
    "antibiotic_minutes": "minutes_to_antibiotic_ratio_12m_expected",
    "antibiotic_minutes_population": "minutes_to_antibiotic_ratio_12m_population_expected",
}


@dataclass
class _Data:
    """The fields of a Collaborative that estimate_all reads (no validation pass: the simulator's
    tables follow the contract, and the study times the estimation)."""

    episodes: pd.DataFrame
    sites: pd.DataFrame
    site_months: pd.DataFrame
    data_hash: str = "simulated"


def _simulate(seed: int, scenario: str, **kw):
    if scenario == "null":
        return simulate_collaborative(seed=seed, true_effects=NULL_EFFECTS, **kw)
    if scenario == "default":
        return simulate_collaborative(seed=seed, **kw)
    return simulate_collaborative(seed=seed, scenario=scenario, **kw)


def simulated(seed: int, scenario: str = "default", **kw) -> tuple[_Data, dict]:
    sim = _simulate(seed, scenario, **kw)
    ep = attach_sites(derive_episodes(sim.episodes), sim.sites)
    return _Data(ep, sim.sites, sim.site_months, f"seed {seed}"), sim.truth


def run_replicate(seed: int, scenario: str, level: str, sites: int, scale: float,
                  plan_path: str | None = None, estimands: list[str] | None = None,
                  roles: list[str] | None = None, specs: list[str] | None = None) -> list[dict]:
    t0 = time.perf_counter()
    data, truth = simulated(seed, scenario, sites=sites, scale=scale)
    plan = Plan.from_yaml(plan_path) if plan_path else None
    rows = []
    if level == "collaborative":
        store = estimate_all(data, plan, scopes="collaborative", roles=roles or ["primary"],
                             estimands=estimands, specs=specs)
        f = store.frame
        pre = f[f["component"] == "pretrend_test"]
        pretrend = {(r["estimand"], r["spec"], r["variant"]): r["p_value"] for _, r in pre.iterrows()}
        for _, r in f[f["component"] == "effect"].iterrows():
            tr = truth["estimands"].get(TRUTH_KEYS.get(r["estimand"], ""), None)
            rows.append(_row(seed, scenario, r, tr,
                             pretrend.get((r["estimand"], r["spec"], r["variant"]), np.nan)))
    else:
        store = estimate_all(data, plan, scopes="sites", estimands=estimands or ["sam30"],
                             roles=roles or ["primary", "sensitivity"], specs=specs)
        site_truth = {s["site_id"]: s["sam30_rr_12m"] for s in truth["sites"]}
        for _, r in store.frame[store.frame["component"] == "effect"].iterrows():
            rows.append(_row(seed, scenario, r, site_truth.get(r["scope"])))
    sec = time.perf_counter() - t0
    for r in rows:
        r["seconds"] = sec
    return rows


def _row(seed, scenario, r, truth, pretrend_p: float = np.nan) -> dict:
    spec = r["spec"] + (f" [{r['variant']}]" if r["variant"] else "")
    return {"seed": seed, "scenario": scenario, "estimand": r["estimand"], "scope": r["scope"],
            "spec": spec, "role": r["role"], "status": r["status"], "truth": truth,
            "estimate": r["estimate"], "lower": r["lower"], "upper": r["upper"], "se": r["se"],
            "interval_df": (r["n_sites"] - 1) if r["estimator"] == "its_staggered" else np.nan,
            # p-value of the joint pre-trend test of the leads (imputation estimator; NaN else)
            "pretrend_p": pretrend_p,
            # why a row is not estimable (one line)
            "note": "" if r["status"] == "ok" else str(r.get("note", "") or "")[:200]}


def _truths(seed: int, scenario: str, level: str, sites: int, scale: float) -> dict:
    truth = _simulate(seed, scenario, sites=sites, scale=scale).truth
    if level == "collaborative":
        return {e: truth["estimands"].get(k) for e, k in TRUTH_KEYS.items()}
    return {s["site_id"]: s["sam30_rr_12m"] for s in truth["sites"]}


def refresh_truth(path: Path, scenario: str, level: str, sites: int, scale: float, jobs: int) -> None:
    """Recompute the truth of every row of `path` (estimates unchanged), in place."""
    df = pd.read_csv(path)
    seeds = sorted(df["seed"].unique())
    args = (scenario, level, sites, scale)
    with ProcessPoolExecutor(max(jobs, 1)) as ex:
        truths = dict(zip(seeds, ex.map(_truths, seeds, *[[a] * len(seeds) for a in args])))
    col = "estimand" if level == "collaborative" else "scope"
    df["truth"] = [truths[s].get(k) for s, k in zip(df["seed"], df[col])]
    df.to_csv(path, index=False)


def summarise(df: pd.DataFrame, sites: int = 57) -> pd.DataFrame:
    """Bias, coverage and rejection rate per estimand and spec (ok rows with a truth)."""
    ok = df[(df["status"] == "ok") & df["truth"].notna() & (df["truth"] > 0)].copy()
    ok["log_err"] = np.log(ok["estimate"]) - np.log(ok["truth"])
    ok["rel_err"] = ok["estimate"] / ok["truth"] - 1
    ok["covers"] = (ok["lower"] <= ok["truth"]) & (ok["truth"] <= ok["upper"])
    q = stats.t.ppf(0.975, sites - 1)
    lt, ut = np.log(ok["estimate"]) - q * ok["se"], np.log(ok["estimate"]) + q * ok["se"]
    ok["covers_t"] = (lt <= np.log(ok["truth"])) & (np.log(ok["truth"]) <= ut)
    ok["rejects"] = ~((ok["lower"] <= 1) & (1 <= ok["upper"]))
    ok["rejects_t"] = ~((lt <= 0) & (0 <= ut))
    g = ok.groupby(["estimand", "spec"], sort=False)
    reps = ok.groupby(["estimand", "spec", "seed"], sort=False)["covers"].mean()
    # Monte-Carlo SE of coverage: by replicate (site rows of one replicate are not independent)
    cov_se = reps.groupby(level=[0, 1], sort=False).std() / np.sqrt(reps.groupby(level=[0, 1], sort=False).size())
    n_all = df.groupby(["estimand", "spec"], sort=False).size()
    return pd.DataFrame({
        "rows": n_all,
        "not_estimable": df[df["status"] != "ok"].groupby(["estimand", "spec"], sort=False).size()
        .reindex(n_all.index).fillna(0).astype(int),
        "mean_truth": g["truth"].mean(),
        # the criterion (bias within 2% of the true ratio): geometric-mean ratio to the truth,
        # exp(mean log error) - 1, because the estimators are unbiased on the log scale, where
        # their intervals and tests are built; the mean of ratios adds exp(SD^2 / 2) - 1
        "gm_bias_pct": 100 * (np.exp(g["log_err"].mean()) - 1),
        "gm_bias_mc_se_pct": 100 * np.exp(g["log_err"].mean()) * g["log_err"].std() / np.sqrt(g.size()),
        "rel_bias_pct": 100 * g["rel_err"].mean(),
        "bias_log": g["log_err"].mean(),
        "mc_se_log": g["log_err"].std() / np.sqrt(g.size()),
        "emp_sd_log": g["log_err"].std(),
        "mean_se_log": g["se"].mean(),
        "coverage_pct": 100 * g["covers"].mean(),
        "coverage_mc_se": 100 * cov_se,
        "coverage_t_pct": 100 * g["covers_t"].mean(),
        "reject_pct": 100 * g["rejects"].mean(),
        "reject_t_pct": 100 * g["rejects_t"].mean(),
        # size of the pre-trend test (no scenario has a pre-trend): share of p < 0.05 among the
        # replicates with a test (imputation estimator, primary or params event_study)
        "pretrend_tests": g["pretrend_p"].count() if "pretrend_p" in ok else 0,
        "pretrend_reject_pct": (100 * g["pretrend_p"].apply(lambda p: (p.dropna() < 0.05).mean()
                                                            if p.notna().any() else np.nan)
                                if "pretrend_p" in ok else np.nan),
        "sec_per_rep": g["seconds"].mean(),
    })


def markdown_rows(summary: pd.DataFrame, scenario: str, replicates: int) -> list[str]:
    """Rows of the RESULTS.md table (estimand, spec, scenario, replicates, geometric-mean bias
    with its MC SE, coverage with its MC SE, share of intervals excluding 1 (type-I error under
    ``null``, power otherwise), pre-trend test rejections, not estimable)."""
    out = []
    for (est, spec), r in summary.iterrows():
        pre = ("-" if not r["pretrend_tests"] else f"{r['pretrend_reject_pct']:.1f}%")
        rej = f"{r['reject_pct']:.1f}%" + (" (type I)" if scenario == "null" else "")
        out.append(f"| `{est}` | {spec} | {scenario} | {replicates} | "
                   f"{r['gm_bias_pct']:+.2f}% ({r['gm_bias_mc_se_pct']:.2f}) | "
                   f"{r['emp_sd_log']:.3f} / {r['mean_se_log']:.3f} | "
                   f"{r['coverage_pct']:.1f}% ({r['coverage_mc_se']:.1f}) | {rej} | {pre} | "
                   f"{int(r['not_estimable'])} |")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--replicates", type=int, default=200)
    ap.add_argument("--seed0", type=int, default=5000)
    ap.add_argument("--scenario", default="default",
                    help="default, null (every effect none) or a simulator scenario "
                         "(analysis.simulate.SCENARIOS, e.g. heterogeneous)")
    ap.add_argument("--level", choices=["collaborative", "site"], default="collaborative")
    ap.add_argument("--sites", type=int, default=57)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True, help="CSV of per-replicate rows (appended)")
    ap.add_argument("--plan", default=None, help="plan YAML (default: the built-in plan)")
    ap.add_argument("--estimands", default=None, help="comma-separated estimand ids (default: all)")
    ap.add_argument("--roles", default=None, help="comma-separated roles (default: primary; site "
                    "level: primary,sensitivity)")
    ap.add_argument("--specs", default=None, help="comma-separated specification names (default: all)")
    ap.add_argument("--summary", action="store_true", help="only summarise --out")
    ap.add_argument("--markdown", action="store_true",
                    help="also print the summary as rows of the RESULTS.md table")
    ap.add_argument("--refresh-truth", action="store_true",
                    help="recompute the truth column of --out from the simulator")
    a = ap.parse_args(argv)
    if a.refresh_truth:
        refresh_truth(a.out, a.scenario, a.level, a.sites, a.scale, a.jobs)
        a.summary = True
    pd.set_option("display.width", 220)
    pd.set_option("display.max_columns", 30)
    if not a.summary:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        done: set[int] = set()
        if a.out.exists():
            done = set(pd.read_csv(a.out, usecols=["seed"])["seed"].unique())
        seeds = [s for s in range(a.seed0, a.seed0 + a.replicates) if s not in done]
        print(f"{len(done)} replicates already in {a.out}; running {len(seeds)}", file=sys.stderr)
        t = time.perf_counter()
        args = (a.scenario, a.level, a.sites, a.scale, a.plan,
                a.estimands.split(",") if a.estimands else None,
                a.roles.split(",") if a.roles else None, a.specs.split(",") if a.specs else None)

        def save(rows: list[dict]) -> None:
            pd.DataFrame(rows).to_csv(a.out, mode="a", header=not a.out.exists(), index=False)

        if a.jobs > 1:
            with ProcessPoolExecutor(a.jobs) as ex:
                futs = [ex.submit(run_replicate, s, *args) for s in seeds]
                for i, f in enumerate(as_completed(futs), 1):
                    save(f.result())
                    print(f"{i}/{len(seeds)} ({time.perf_counter() - t:.0f} s)", file=sys.stderr)
        else:
            for i, s in enumerate(seeds, 1):
                save(run_replicate(s, *args))
                print(f"{i}/{len(seeds)} ({time.perf_counter() - t:.0f} s)", file=sys.stderr)
    df = pd.read_csv(a.out)
    df = df[df["seed"].between(a.seed0, a.seed0 + a.replicates - 1)]
    print(f"scenario={a.scenario} level={a.level} replicates={df['seed'].nunique()}")
    summary = summarise(df, a.sites)
    print(summary.round(4).to_string())
    if a.markdown:
        print("\n".join(markdown_rows(summary, a.scenario, df["seed"].nunique())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

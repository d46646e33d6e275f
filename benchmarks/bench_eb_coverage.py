"""Coverage of partially pooled site effects (:func:`analysis.pooling.empirical_bayes`).

1. **Normal-normal study**: k sites with true effects theta_i ~ N(log 0.82, tau^2) and own
   estimates y_i ~ N(theta_i, se_i^2), se_i ~ U(0.15, 0.6) (log-RR SEs of hospitals with about
   10 to 180 deaths). Average coverage of the true site effects by the posterior intervals
   (uncertainty in tau^2 integrated, the default) and by plug-in BLUP intervals (metafor's
   ``blup``), and the mean interval width, for tau = 0, 0.1, 0.25, 0.5 and 57 or 15 sites.
2. **Synthetic collaborative**: per-site ITS of 30-day deaths against case-mix expected deaths
   (:func:`analysis.its.fit_its_by_site`, the model of ``bench_its_truth.py``), sites with too
   little information left out by :data:`analysis.pooling.TOO_LITTLE_INFORMATION_RULE`, then
   partial pooling. Coverage of each site's true 12-month standardised RR
   (``truth["sites"][i]["sam30_rr_12m"]``) by its own (unpooled) CI and by the partially
   pooled interval, and how many sites would read as a mortality *increase* (interval above 1;
   every true effect is a fall).

Usage::

    .venv/bin/python benchmarks/bench_eb_coverage.py                       # ~20 min
    .venv/bin/python benchmarks/bench_eb_coverage.py --reps 100 --sim-reps 2 --no-write
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from analysis.pooling import empirical_bayes, too_little_information


def normal_study(tau: float, k: int, reps: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    post, plug, width = [], [], []
    for _ in range(reps):
        se = rng.uniform(0.15, 0.6, k)
        theta = math.log(0.82) + tau * rng.standard_normal(k)
        y = theta + se * rng.standard_normal(k)
        d = empirical_bayes(y, se**2).sites
        post.append(np.mean((d["lower"] <= theta) & (theta <= d["upper"])))
        z = 1.959964
        plug.append(np.mean((d["blup"] - z * d["blup_se"] <= theta) & (theta <= d["blup"] + z * d["blup_se"])))
        width.append(np.mean(d["upper"] - d["lower"]))
    return {"tau": tau, "k": k, "reps": reps, "posterior": np.mean(post),
            "mc_se": np.std(post) / np.sqrt(reps), "plugin": np.mean(plug), "width": np.mean(width)}


def _its_bench():
    spec = importlib.util.spec_from_file_location("bench_its_truth", HERE / "bench_its_truth.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


RULES = (20.0, 10.0)  # the default too-little-information rule and a looser one, for comparison


def simulator_study(reps: int, seed0: int) -> pd.DataFrame:
    from analysis.its import fit_its_by_site
    from analysis.simulate import simulate_collaborative

    its = _its_bench()
    rows = []
    for r in range(reps):
        sim = simulate_collaborative(seed=seed0 + r, sites=57, months=84)
        mm = its.prepare_monthly(sim)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fr = fit_its_by_site(mm, "sam30", site="site_id", time="month", go_live="go_live_month",
                                 min_events=10, exposure="expected_sam30", family="poisson",
                                 autocorrelation="none", transition=its.TRANSITION,
                                 slope_change=False)
        pre = mm[mm["month"] < mm["go_live_month"]].groupby("site_id")["expected_sam30"].sum()
        post = mm[mm["month"] >= mm["go_live_month"]].groupby("site_id")["expected_sam30"].sum()
        fr = fr.set_index("site")
        truth = {s["site_id"]: s["sam30_rr_12m"] for s in sim.truth["sites"]}
        for rule in RULES:
            little = too_little_information(pre.reindex(fr.index).to_numpy(),
                                            post.reindex(fr.index).to_numpy(), min_expected=rule)
            ok = (fr["status"] == "ok").to_numpy() & ~little
            eb = empirical_bayes(fr["link_effect"].to_numpy(), fr["link_se"].to_numpy() ** 2,
                                 list(fr.index), estimable=ok).sites.set_index("label")
            for site in fr.index:
                t = truth[site]
                e = eb.loc[site]
                own_ok = fr.loc[site, "status"] == "ok"
                row = {"rep": r, "rule": rule, "site": site, "truth": t, "status": e["status"],
                       "own_status": fr.loc[site, "status"]}
                if own_ok:
                    row.update(own_covers=fr.loc[site, "ci_low"] <= t <= fr.loc[site, "ci_high"],
                               own_increase=fr.loc[site, "ci_low"] > 1)
                if e["status"] == "ok":
                    lo, hi = math.exp(e["lower"]), math.exp(e["upper"])
                    row.update(eb_covers=lo <= t <= hi, eb_increase=lo > 1, eb_decrease=hi < 1)
                rows.append(row)
    out = pd.DataFrame(rows)
    flags = [c for c in out.columns if c.startswith(("own_", "eb_")) and c != "own_status"]
    out[flags] = out[flags].astype(float)  # numpy bools in object columns do not sum
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=1000)
    ap.add_argument("--sim-reps", type=int, default=20)
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args()
    t0 = time.time()
    cases = [(0.0, 57), (0.1, 57), (0.25, 57), (0.5, 57), (0.25, 15)]
    ns = [normal_study(tau, k, a.reps, seed=10 + i) for i, (tau, k) in enumerate(cases)]
    sim = simulator_study(a.sim_reps, seed0=3000) if a.sim_reps else None
    mins = (time.time() - t0) / 60

    def pct(x):
        return f"{100 * x:.1f}%"

    lines = [f"Run time {mins:.0f} min. Target: average coverage of the true site effects 93-97%.", "",
             "Normal-normal study (se_i ~ U(0.15, 0.6), log-RR scale):", "",
             "| tau | sites | runs | posterior interval coverage (MC SE) | plug-in BLUP coverage | mean width (log scale) |",
             "|---|---|---|---|---|---|"]
    for r in ns:
        lines.append(f"| {r['tau']:g} | {r['k']} | {r['reps']} | {pct(r['posterior'])} ({100 * r['mc_se']:.1f}) "
                     f"| {pct(r['plugin'])} | {r['width']:.2f} |")
    if sim is not None and len(sim):
        n_rep = sim["rep"].nunique()
        own = sim[(sim["own_status"] == "ok") & (sim["rule"] == RULES[0])]
        lines += ["", (f"Synthetic collaborative ({n_rep} replicates x 57 sites, per-site ITS of 30-day "
                       "deaths vs case-mix expected; truth: each site's `sam30_rr_12m`, all below 1):"), "",
                  "| estimate | sites per replicate | coverage of the site's true RR | sites per replicate reading as an increase (interval above 1) | ... as a fall (below 1) |",
                  "|---|---|---|---|---|",
                  f"| own ITS estimate (unpooled), every site with one | {len(own) / n_rep:.1f} | {pct(own['own_covers'].mean())} | {own['own_increase'].sum() / n_rep:.2f} | - |"]
        for rule in RULES:
            ok = sim[(sim["status"] == "ok") & (sim["rule"] == rule)]
            few = sim[(sim["status"] == "too little information") & (sim["rule"] == rule)]
            lines.append(
                f"| partially pooled, sites with >= {rule:g} expected deaths before and after "
                f"({len(few) / n_rep:.1f} sites per replicate left to the collaborative effect) "
                f"| {len(ok) / n_rep:.1f} | {pct(ok['eb_covers'].mean())} | {ok['eb_increase'].sum() / n_rep:.2f} "
                f"| {ok['eb_decrease'].sum() / n_rep:.1f} |")
    text = "\n".join(lines)
    from _results import publish

    return publish("eb_coverage", "Partial pooling: coverage of true site effects "
                   "(`bench_eb_coverage.py`)", text, write=not a.no_write)


if __name__ == "__main__":
    sys.exit(main())

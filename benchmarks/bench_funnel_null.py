"""False flags of the hospital funnel plot when hospitals do not differ, and its power.

Three studies of :func:`analysis.riskadj.funnel_from_counts` with its defaults (centred on the
period's collaborative O/E, exact Poisson limits, over-dispersion adjustment only when the
winsorised chi-square test has p < 0.05, flags only outside 99.8%):

1. **Poisson null**: 57 hospitals whose deaths after go-live are Poisson(0.79 x expected), with
   expected deaths from 4-37 episodes a month over 36 months at 3.2% (as the synthetic
   collaborative). Share of runs with any flag (chance alone: 1 - 0.998^57 = 10.8%) and flags per
   run; the same data with the old settings (centred on 1, limits widened whenever tau^2 > 0).
2. **Simulator near-null**: :func:`analysis.simulate.simulate_collaborative` (57 sites x 84
   months) with ``site_effect_sd = 0`` (no hospital effect on mortality; hospitals still differ a
   little through their processes and go-live waves), baseline case-mix model, O/E after go-live.
3. **Power**: 3 of 57 hospitals with twice the collaborative's death rate (and 3 with 0.4 times),
   without and with modest real between-hospital variation (log-SD 0.15).

Usage::

    .venv/bin/python benchmarks/bench_funnel_null.py            # ~10 min, writes RESULTS.md
    .venv/bin/python benchmarks/bench_funnel_null.py --poisson-runs 500 --sim-runs 5 --no-write
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis import riskadj as ra

K = 57
UNITS = [f"H{i:02d}" for i in range(K)]


def expected_deaths(rng: np.random.Generator) -> np.ndarray:
    """Expected deaths after go-live: 4-37 episodes a month (median 14) x 36 months x 3.2%."""
    return np.clip(np.exp(rng.normal(np.log(14), 0.5, K)), 4, 37) * 36 * 0.032


def _tally(pairs: list) -> dict:
    """Flag statistics of (new settings, old settings) funnel pairs, one pair per run."""
    runs = len(pairs)
    return {"runs": runs,
            "any": sum(f.n_flagged > 0 for f, _ in pairs) / runs,
            "per_run": sum(f.n_flagged for f, _ in pairs) / runs,
            "adjusted": sum(f.adjusted for f, _ in pairs) / runs,
            "old_any": sum(g.n_flagged > 0 for _, g in pairs) / runs,
            "old_per_run": sum(g.n_flagged for _, g in pairs) / runs,
            "target": float(np.mean([f.target for f, _ in pairs]))}


def poisson_null(runs: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(runs):
        e = expected_deaths(rng)
        o = rng.poisson(0.79 * e)
        pairs.append((ra.funnel_from_counts(UNITS, o, e),
                      ra.funnel_from_counts(UNITS, o, e, target=1.0, overdispersion_adjust=True)))
    return _tally(pairs)


def simulator_null(runs: int, seed0: int) -> dict:
    from analysis.derive import attach_sites, derive_episodes
    from analysis.simulate import simulate_collaborative

    pairs = []
    for r in range(runs):
        sim = simulate_collaborative(sites=K, months=84, seed=seed0 + r,
                                     true_effects={"site_effect_sd": 0.0})
        ep = attach_sites(derive_episodes(sim.episodes), sim.sites)
        model = ra.fit_casemix_model(ep, "sam30", unseen="reference")
        post = ep[ep["post"]]
        pairs.append((ra.funnel_data(post, model, period="after go-live"),
                      ra.funnel_data(post, model, target=1.0, overdispersion_adjust=True)))
    return _tally(pairs)


def power(runs: int, seed: int, background_sd: float) -> dict:
    rng = np.random.default_rng(seed)
    hi_hit = lo_hit = false = adj = 0
    for _ in range(runs):
        e = expected_deaths(rng)
        rr = np.exp(background_sd * rng.standard_normal(K))
        rr[:3] *= 2.0
        rr[3:6] *= 0.4
        o = rng.poisson(0.79 * e * rr)
        f = ra.funnel_from_counts(UNITS, o, e)
        flag = f.data["flag"].to_numpy()
        hi_hit += (flag[:3] == "high").sum()
        lo_hit += (flag[3:6] == "low").sum()
        false += (flag[6:] != "").sum()
        adj += f.adjusted
    return {"runs": runs, "high": hi_hit / (3 * runs), "low": lo_hit / (3 * runs),
            "false_per_run": false / runs, "adjusted": adj / runs}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--poisson-runs", type=int, default=4000)
    ap.add_argument("--sim-runs", type=int, default=40)
    ap.add_argument("--power-runs", type=int, default=2000)
    ap.add_argument("--no-write", action="store_true", help="print, do not edit RESULTS.md")
    a = ap.parse_args()
    t0 = time.time()
    pn = poisson_null(a.poisson_runs, seed=1)
    sn = simulator_null(a.sim_runs, seed0=5000) if a.sim_runs else None
    p0 = power(a.power_runs, seed=2, background_sd=0.0)
    p1 = power(a.power_runs, seed=3, background_sd=0.15)
    mins = (time.time() - t0) / 60

    def pct(x):
        return f"{100 * x:.1f}%"

    se = np.sqrt(pn["any"] * (1 - pn["any"]) / pn["runs"])
    lines = [
        (f"57 hospitals; flags only outside the 99.8% limits; chance alone flags at least one hospital "
        f"in 1 - 0.998^57 = 10.8% of runs (0.11 per run). Target: at most 15% of null runs. "
        f"Run time {mins:.0f} min."),
        "",
        "| scenario | runs | runs with any flag | flags per run | limits widened (OD test) | old settings: any flag / per run |",
        "|---|---|---|---|---|---|",
        (f"| Poisson null (deaths = 0.79 x expected) | {pn['runs']} | {pct(pn['any'])} (MC SE {100 * se:.1f}) "
        f"| {pn['per_run']:.2f} | {pct(pn['adjusted'])} | {pct(pn['old_any'])} / {pn['old_per_run']:.2f} |"),
    ]
    if sn:
        lines.append(
            f"| simulator, site_effect_sd = 0 (collaborative O/E {sn['target']:.2f}) | {sn['runs']} "
            f"| {pct(sn['any'])} | {sn['per_run']:.2f} | {pct(sn['adjusted'])} | "
            f"{pct(sn['old_any'])} / {sn['old_per_run']:.2f} |")
    met = pn["any"] <= 0.15 and (sn is None or sn["any"] <= 0.15)
    lines += [
        "",
        "Old settings = centred on 1 (pre-IPSO expectation) with limits widened whenever the "
        "DerSimonian-Laird tau^2 > 0. Target (at most 15% of null runs with a flag): "
        + ("met." if met else "NOT met."),
        "",
        "Power (3 hospitals at 2x and 3 at 0.4x the collaborative's death rate):",
        "",
        "| background between-hospital log-SD | runs | high outliers flagged | low outliers flagged | other hospitals flagged per run | limits widened |",
        "|---|---|---|---|---|---|",
        f"| 0 | {p0['runs']} | {pct(p0['high'])} | {pct(p0['low'])} | {p0['false_per_run']:.2f} | {pct(p0['adjusted'])} |",
        f"| 0.15 | {p1['runs']} | {pct(p1['high'])} | {pct(p1['low'])} | {p1['false_per_run']:.2f} | {pct(p1['adjusted'])} |",
    ]
    text = "\n".join(lines)
    from _results import publish

    return publish("funnel_null", "Funnel plot: false flags without true differences, and power "
                   "(`bench_funnel_null.py`)", text, write=not a.no_write)


if __name__ == "__main__":
    sys.exit(main())

"""Validation of the staggered imputation estimator (:func:`analysis.its.fit_its_staggered`).

Three studies (issue 12, item 5):

* ``noise-free``: expected-value panels (:func:`analysis.simulate.simulate_panel`, about 1e6
  expected events per site-month, 57 sites x 84 months, waves live at months 24/36/48) for each
  scenario; the estimate at event month 12 against the truth, the largest lead deviation from 1,
  and the old :func:`analysis.its.fit_its_multisite` (level change after a 6-month transition).
* ``panel``: noisy replicates of the same panels (Poisson counts, ``--count`` expected events per
  site-month): bias, coverage, pre-trend test size.
* ``sim``: replicates of the real simulator (:func:`analysis.simulate.simulate_collaborative`,
  scale 1) under its named scenarios, for two estimands: the case-mix-standardised 30-day SAM
  risk ratio (deaths with case-mix-expected deaths as offset from
  :func:`analysis.riskadj.fit_casemix_model`, as in :mod:`analysis.impact`; site intercepts +
  calendar effects, no site trends: the simulator's mortality has no site-specific trend and a
  site's ~11-25 pre-go-live deaths cannot carry one) and recognition (episodes with admissions as
  exposure; site trends + calendar effects + 2 Fourier pairs), each at event month 12 and over
  event months 12-23.

Usage::

    .venv/bin/python benchmarks/bench_staggered.py noise-free
    .venv/bin/python benchmarks/bench_staggered.py panel --replicates 200 --count 20
    .venv/bin/python benchmarks/bench_staggered.py sim --replicates 200 --jobs 2 --out sim.csv
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # one BLAS thread per replicate process
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.its import fit_its_multisite, fit_its_staggered
from analysis.simulate import simulate_collaborative, simulate_panel

PANEL_SCENARIOS = ("constant", "growing", "waning", "ramp12", "calendar_shock", "heterogeneous",
                   "covid_after_last_wave")
SIM_SCENARIOS = ("constant", "null", "growing", "waning", "calendar_shock")
PANEL_FIT = {"site": "site_id", "time": "month", "go_live": "go_live_month",
             "exposure": "exposure", "seasonality": 2}
WINDOW = (12, 23)


def _quiet(fn, *a, **k):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*a, **k)


# ----------------------------------------------------------------------------------------------
# noise-free panels


def noise_free_row(scenario: str, count: float = 1e6) -> dict:
    p = simulate_panel(scenario=scenario, expected_count=count)
    r = _quiet(fit_its_staggered, p.data, "y", **PANEL_FIT)
    e12 = r.effect_at(12)
    es = r.event_study()
    leads = es[es["event_time"] < 0]
    d = p.data.assign(y_int=np.round(p.data["y"]))
    old = _quiet(fit_its_multisite, d, "y_int", site="site_id", time="month",
                 go_live="go_live_month", exposure="exposure", seasonality=2, transition=6,
                 slope_change=False).effect_at(12).relative
    truth = p.truth_at(12)
    return {
        "scenario": scenario, "truth_12": truth, "estimate_12": e12.relative,
        "rel_error_12": e12.relative / truth - 1, "max_lead_error": float(np.max(np.abs(leads["estimate"] - 1))),
        "extrapolated_share_12": e12.extrapolated_share,
        "multisite_12": old, "multisite_rel_error_12": old / truth - 1,
    }


def noise_free_table(count: float = 1e6) -> pd.DataFrame:
    return pd.DataFrame([noise_free_row(s, count) for s in PANEL_SCENARIOS])


# ----------------------------------------------------------------------------------------------
# noisy panels


def panel_replicate(scenario: str, seed: int, count: float) -> dict:
    p = simulate_panel(scenario=scenario, expected_count=count, noise=True, seed=seed)
    r = _quiet(fit_its_staggered, p.data, "y", **PANEL_FIT)
    return _metrics(r, p.truth_at(12), p.truth_between(*WINDOW), scenario, seed, "panel")


def _metrics(r, truth12: float, truth_w: float, scenario: str, seed: int, outcome: str) -> dict:
    e = r.effect_at(12)
    a = r.average_effect(*WINDOW)
    pt = r.pretrend_test()
    es = r.event_study()
    ld = es[es["event_time"] < 0]
    return {
        "scenario": scenario, "seed": seed, "outcome": outcome,
        "truth_12": truth12, "log_err_12": math.log(e.relative / truth12), "se_12": e.se,
        "covers_12": e.lower <= truth12 <= e.upper,
        "truth_w": truth_w, "log_err_w": math.log(a.relative / truth_w), "se_w": a.se,
        "covers_w": a.lower <= truth_w <= a.upper,
        "pretrend_p": pt.p_value, "lead_coverage": float(((ld["lower"] <= 1) & (ld["upper"] >= 1)).mean()),
    }


# ----------------------------------------------------------------------------------------------
# real simulator


def _window_truth(sim) -> tuple[float, float]:
    L, sm = sim.latent, sim.latent_site_months
    m = (L["event_month"] >= WINDOW[0]) & (L["event_month"] <= WINDOW[1])
    sam = float(L.loc[m, "p_sam30_actual"].sum() / L.loc[m, "p_sam30_counterfactual"].sum())
    ms = (sm["event_month"] >= WINDOW[0]) & (sm["event_month"] <= WINDOW[1])
    rec = float(sm.loc[ms, "expected_episodes_actual"].sum() / sm.loc[ms, "expected_episodes_counterfactual"].sum())
    return sam, rec


def sim_replicate(scenario: str, seed: int, scale: float = 1.0, centering: str = "robust") -> list[dict]:
    from bench_its_truth import prepare_monthly  # same monthly frame as the ITS truth study

    sim = simulate_collaborative(seed=seed, scale=scale, scenario=scenario)
    mm = prepare_monthly(sim)
    est = sim.truth["estimands"]
    sam_w, rec_w = _window_truth(sim)
    cols = {"site": "site_id", "time": "month", "go_live": "go_live_month"}
    out = []
    try:
        r = _quiet(fit_its_staggered, mm, "sam30", **cols, exposure="expected_sam30",
                   site_trends=False, seasonality=1, calendar_centering=centering)
        out.append(_metrics(r, est["sam30_rr_12m"], sam_w, scenario, seed, "sam30"))
    except Exception as exc:  # noqa: BLE001 - record, never drop a replicate
        out.append({"scenario": scenario, "seed": seed, "outcome": "sam30", "error": str(exc)})
    try:
        r = _quiet(fit_its_staggered, mm, "episodes", **cols, exposure="admissions",
                   site_trends=True, seasonality=2, calendar_centering=centering)
        out.append(_metrics(r, est["recognition_rr_12m"], rec_w, scenario, seed, "recognition"))
    except Exception as exc:  # noqa: BLE001
        out.append({"scenario": scenario, "seed": seed, "outcome": "recognition", "error": str(exc)})
    return out


# ----------------------------------------------------------------------------------------------


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    ok = df[df.get("error", pd.Series(np.nan, index=df.index)).isna()] if "error" in df else df
    g = ok.groupby(["outcome", "scenario"], sort=False)
    n = g.size()
    return pd.DataFrame({
        "replicates": n,
        "failed": (df.groupby(["outcome", "scenario"], sort=False).size() - n).fillna(0).astype(int),
        "truth_12": g["truth_12"].mean(),
        "bias_12": g["log_err_12"].mean(),
        "mcse_12": g["log_err_12"].std() / np.sqrt(n),
        "sd_12": g["log_err_12"].std(),
        "mean_se_12": g["se_12"].mean(),
        "coverage_12": g["covers_12"].mean(),
        "truth_w": g["truth_w"].mean(),
        "bias_w": g["log_err_w"].mean(),
        "mcse_w": g["log_err_w"].std() / np.sqrt(n),
        "mean_se_w": g["se_w"].mean(),
        "coverage_w": g["covers_w"].mean(),
        "pretrend_reject_5pct": g["pretrend_p"].apply(lambda p: float(np.mean(p < 0.05))),
        "lead_ci_coverage": g["lead_coverage"].mean(),
    })


def _run(fn, args, jobs, out: Path | None = None):
    """Run replicates (in order); with ``out``, rows so far are written every 20 replicates."""
    rows: list[dict] = []

    def collect(i, r):
        rows.extend(r if isinstance(r, list) else [r])
        if i % 20 == 0:
            print(f"{i}/{len(args)}", file=sys.stderr, flush=True)
            if out is not None:
                pd.DataFrame(rows).to_csv(out, index=False)

    if jobs > 1:
        with ProcessPoolExecutor(jobs) as ex:
            for i, r in enumerate(ex.map(fn, *zip(*args, strict=True)), 1):
                collect(i, r)
    else:
        for i, a in enumerate(args, 1):
            collect(i, fn(*a))
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("study", choices=["noise-free", "panel", "sim"])
    ap.add_argument("--replicates", type=int, default=200)
    ap.add_argument("--seed0", type=int, default=5000)
    ap.add_argument("--count", type=float, default=20.0, help="panel: expected events per site-month")
    ap.add_argument("--scenarios", default=None, help="comma-separated (default: all of the study)")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--centering", choices=["robust", "ls"], default="robust",
                    help="sim: calendar_centering of both fits")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    t = time.perf_counter()
    pd.set_option("display.width", 200)
    if a.study == "noise-free":
        df = noise_free_table()
        print(df.round(5).to_string(index=False))
    else:
        default = PANEL_SCENARIOS[:-1] if a.study == "panel" else SIM_SCENARIOS
        scen = a.scenarios.split(",") if a.scenarios else list(default)
        seeds = range(a.seed0, a.seed0 + a.replicates)
        if a.study == "panel":
            args = [(s, k, a.count) for s in scen for k in seeds]
            df = _run(panel_replicate, args, a.jobs, a.out)
        else:
            args = [(s, k, 1.0, a.centering) for s in scen for k in seeds]
            df = _run(sim_replicate, args, a.jobs, a.out)
        print(f"{a.study}: {a.replicates} replicates per scenario"
              + (f", {a.count:g} expected events per site-month" if a.study == "panel" else ""))
        print(summarise(df).round(4).to_string())
    if a.out:
        df.to_csv(a.out, index=False)
    print(f"({time.perf_counter() - t:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

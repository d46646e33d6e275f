"""Null false-alarm rates of a site report's control charts on stable processes.

A stable hospital is simulated for 84 months (go-live after month 36, so the charts split their
phases there) at 5, 14 and 37 sepsis episodes a month: admissions ~ Poisson(1,000) a month,
episodes ~ Poisson(volume x admissions / 1,000); bundle compliance, positive screens and
antibiotic within 180 minutes ~ Binomial(episodes, 0.26 / 0.45 / 0.75); 30-day and 3-day
deaths ~ Binomial(episodes, 0.032 / 0.0144); minutes to bolus (80% of episodes) and to
antibiotic (94%) lognormal with medians 62 and 80 and log-SD 0.9, capped at 24 h, 3% given
before T0 (negative minutes, as in the synthetic collaborative). Nothing changes at go-live.

For each chart the share of runs with any signal is measured for

* ``new``: the charts chosen by :mod:`analysis.spc_choice` (period from the expected count per
  point, exact probability limits, runs rules only when the counts support them, log-scale Xbar
  charts of times, Laney only for large over-dispersed subgroups, shifts marked not re-based);
* ``old``: what the site report drew before (monthly Laney p' and u' charts, Xbar charts of raw
  minutes that start new phases at detected shifts, monthly p charts of mortality);
* ``normal``: the same rule set on normal data of the same length (same number of points, the
  same subgroup sizes and phases, known sigma): the false-alarm rate the rules themselves give.

Targets (issue 13): the mortality charts signal in at most 10% of runs, and no chart exceeds its
normal-data rate by more than 5 percentage points.

Usage::

    .venv/bin/python benchmarks/bench_spc_null.py                 # 500 runs per volume, writes RESULTS.md
    .venv/bin/python benchmarks/bench_spc_null.py --runs 50 --no-write
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis import spc, spc_choice
from analysis import spc_rules as R

MONTHS = 84
GO_LIVE = "2019-01"  # month 37 of 84 (the second wave's go-live in the synthetic collaborative)
START = "2016-01"
PROCESSES = (("bundle", 0.26), ("screen", 0.45), ("abx_180", 0.75))
DEATHS = (("sam30", 0.032), ("sam3", 0.0144))
TIMES = (("minutes_to_bolus", 0.80, 62.0), ("minutes_to_antibiotic", 0.94, 80.0))
CHARTS = ("bundle", "screen", "abx_180", "recognition", "minutes_to_bolus",
          "minutes_to_antibiotic", "sam30", "sam3")
LABELS = {"bundle": "bundle compliance (p 0.26)", "screen": "positive screen (p 0.45)",
          "abx_180": "antibiotic within 180 min (p 0.75)", "recognition": "recognition per 1,000 admissions",
          "minutes_to_bolus": "minutes to bolus", "minutes_to_antibiotic": "minutes to antibiotic",
          "sam30": "30-day mortality (3.2%)", "sam3": "3-day mortality (1.4%)"}


def simulate_site(volume: float, rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(site-months, episodes with times) of one stable hospital."""
    months = pd.date_range(START, periods=MONTHS, freq="MS")
    adm = rng.poisson(1000, MONTHS)
    n = rng.poisson(volume * adm / 1000)
    sm = pd.DataFrame({"month": months, "admissions": adm, "episodes": n})
    for col, p in PROCESSES + DEATHS:
        sm[col] = rng.binomial(n, p)
    ep = pd.DataFrame({"month": np.repeat(months, n)})
    for col, given, median in TIMES:
        m = np.minimum(np.exp(np.log(median) + 0.9 * rng.standard_normal(len(ep))), 1440.0)
        before = rng.random(len(ep)) < 0.03
        m = np.where(before, -rng.uniform(0, 90, len(ep)), np.round(m))
        ep[col] = np.where(rng.random(len(ep)) < given, m, np.nan)
    return sm, ep


def new_charts(sm: pd.DataFrame, ep: pd.DataFrame) -> dict:
    with_ep = sm[sm["episodes"] > 0]
    out = {}
    for col, _ in PROCESSES:
        out[col] = lambda col=col: spc_choice.attribute_chart(with_ep, "month", col, "episodes",
                                                              go_live=GO_LIVE, multiply=100)
    out["recognition"] = lambda: spc_choice.attribute_chart(
        sm, "month", "episodes", "admissions", kind="u", go_live=GO_LIVE, multiply=1000)
    for col, *_ in TIMES:
        out[col] = lambda col=col: spc_choice.time_chart(ep, "month", col, go_live=GO_LIVE)
    for col, _ in DEATHS:
        out[col] = lambda col=col: spc_choice.rare_event_chart(with_ep, "month", col, "episodes",
                                                               go_live=GO_LIVE, multiply=100)
    return out


def old_charts(sm: pd.DataFrame, ep: pd.DataFrame) -> dict:
    """The site report's charts before issue 13 (report_sections.site_spc_section)."""
    with_ep = sm[sm["episodes"] > 0].reset_index(drop=True)
    part = [pd.Timestamp(GO_LIVE)]
    adm = sm[sm["admissions"] > 0].reset_index(drop=True)
    out = {}
    for col, _ in PROCESSES:
        out[col] = lambda col=col: spc.pp_chart(with_ep, "month", col, "episodes", part=part,
                                                multiply=100)
    out["recognition"] = lambda: spc.up_chart(adm, "month", "episodes", "admissions", part=part,
                                              multiply=1000)
    for col, *_ in TIMES:
        t = ep.loc[ep[col].notna(), ["month", col]]
        out[col] = lambda col=col, t=t: spc.xbar_chart(t, "month", col, detect_shifts=True,
                                                       shifts="new_part")
    for col, _ in DEATHS:
        out[col] = lambda col=col: spc.p_chart(with_ep, "month", col, "episodes", part=part,
                                               multiply=100)
    return out


def normal_reference(chart: spc.ControlChart, rng: np.random.Generator) -> bool:
    """Whether the chart's rule set signals on normal data with the chart's subgroup sizes and
    phases (centre line estimated per phase, sigma known)."""
    d = chart.data
    n = np.maximum(d["n"].to_numpy(float), 1.0)
    parts = d["part"].to_numpy()
    y = rng.standard_normal(len(n)) / np.sqrt(n)
    runs = chart.rules == "anhoej"
    for p in np.unique(parts):
        m = parts == p
        cl = float(np.sum(n[m] * y[m]) / np.sum(n[m]))
        half = 3 / np.sqrt(n[m])
        if np.any(np.abs(y[m] - cl) > half):
            return True
        if runs and R.runs_analysis(y[m], np.full(m.sum(), cl)).anhoej_signal:
            return True
    return False


def run_volume(volume: float, runs: int, seed: int, which=("new", "old")) -> pd.DataFrame:
    """One row per chart: signal rates of the new and old charts and their normal references,
    with the chosen chart's key, points, rules and the share of runs without a chart."""
    rng = np.random.default_rng(seed)
    ref_rng = np.random.default_rng(seed + 7919)
    counts = {(k, c): {"signal": 0, "ref": 0, "failed": 0, "desc": {}} for k in which for c in CHARTS}
    for _ in range(runs):
        sm, ep = simulate_site(volume, rng)
        builders = {"new": new_charts, "old": old_charts}
        for kind in which:
            for name, make in builders[kind](sm, ep).items():
                rec = counts[(kind, name)]
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        c = make()
                except ValueError:
                    rec["failed"] += 1
                    continue
                rec["signal"] += bool(c.signal)
                rec["ref"] += normal_reference(c, ref_rng)
                key = (c.chart, len(c.data), c.rules, c.limits, c.scale)
                rec["desc"][key] = rec["desc"].get(key, 0) + 1
    rows = []
    for (kind, name), rec in counts.items():
        done = runs - rec["failed"]
        top = max(rec["desc"], key=rec["desc"].get) if rec["desc"] else None
        rows.append({
            "volume": volume, "version": kind, "chart": name,
            "signal_rate": rec["signal"] / done if done else np.nan,
            "normal_rate": rec["ref"] / done if done else np.nan,
            "failed_share": rec["failed"] / runs,
            "chart_key": top[0] if top else "", "points": top[1] if top else 0,
            "rules": top[2] if top else "", "limits": top[3] if top else "",
            "scale": top[4] if top else "", "runs": runs,
        })
    return pd.DataFrame(rows)


def describe(r) -> str:
    names = {"p": "p", "pp": "Laney p'", "u": "u", "up": "Laney u'", "xbar": "Xbar"}
    per = {84: "monthly", 28: "quarterly", 14: "half-yearly"}
    pts = int(r["points"])
    what = f"{per.get(pts, f'{pts} points')} {names.get(r['chart_key'], r['chart_key'])}"
    if r["scale"] == "log":
        what += " (log)"
    if r["limits"] == "exact":
        what += ", exact limits"
    what += ", runs + limits" if r["rules"] == "anhoej" else ", limits only"
    return what


def table(res: pd.DataFrame) -> str:
    def pct(x):
        return "-" if pd.isna(x) else f"{100 * x:.0f}%"

    lines = ["| episodes/month | chart | new chart | new: signals | normal data, same rules | excess | old: signals (normal) |",
             "|---|---|---|---|---|---|---|"]
    worst_excess, worst_mort = -1.0, 0.0
    for vol in sorted(res["volume"].unique()):
        for name in CHARTS:
            new = res[(res.volume == vol) & (res.version == "new") & (res.chart == name)].iloc[0]
            old = res[(res.volume == vol) & (res.version == "old") & (res.chart == name)]
            excess = new["signal_rate"] - new["normal_rate"]
            worst_excess = max(worst_excess, excess)
            if name.startswith("sam"):
                worst_mort = max(worst_mort, new["signal_rate"])
            old_txt = "-"
            if len(old):
                o = old.iloc[0]
                old_txt = f"{pct(o['signal_rate'])} ({pct(o['normal_rate'])})"
                if o["failed_share"] > 0:
                    old_txt += f"; no chart in {pct(o['failed_share'])}"
            fail = f"; no chart in {pct(new['failed_share'])}" if new["failed_share"] > 0 else ""
            lines.append(f"| {vol:g} | {LABELS[name]} | {describe(new)}{fail} | {pct(new['signal_rate'])} "
                         f"| {pct(new['normal_rate'])} | {100 * excess:+.0f} pts | {old_txt} |")
    ok = worst_mort <= 0.10 and worst_excess <= 0.05
    lines += ["", f"Worst mortality-chart signal rate {100 * worst_mort:.1f}% (target <= 10%); "
              f"largest excess over normal data {100 * worst_excess:+.1f} points (target <= +5): "
              + ("met." if ok else "NOT met.")]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=500)
    ap.add_argument("--volumes", default="5,14,37")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args()
    t0 = time.time()
    res = pd.concat([run_volume(float(v), a.runs, seed=100 + i)
                     for i, v in enumerate(a.volumes.split(","))], ignore_index=True)
    mins = (time.time() - t0) / 60
    head = (f"{a.runs} stable hospitals per volume, 84 months, phases split at go-live (month 37); "
            f"a run signals when any rule of the chart fires anywhere. Monte Carlo SE at "
            f"{a.runs} runs: up to {100 * np.sqrt(0.25 / a.runs):.1f} points. Run time {mins:.0f} min.\n")
    text = head + "\n" + table(res)
    from _results import publish

    return publish("spc_null", "Control charts: null false-alarm rates on stable processes "
                   "(`bench_spc_null.py`)", text, write=not a.no_write)


if __name__ == "__main__":
    sys.exit(main())

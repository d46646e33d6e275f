"""Benchmark: ``ipso render`` (warm kernels, parallel) versus the naive papermill + nbconvert loop.

    MPLBACKEND=Agg .venv/bin/python benchmarks/bench_render.py [--naive-sample 3] [--large 300]

Measured side by side in one run on the default synthetic collaborative (57 sites):
  * naive loop: for each site, ``papermill site_report.ipynb`` then
    ``jupyter nbconvert --to html --no-input``, serially. Only a sample of sites is timed and the
    mean is extrapolated to every report (57 sites + the collaborative report); stated as such.
  * ``ipso render --force`` for all sites + collaborative, cold (workers and kernels started).
  * a no-change re-run (target < 5 s).
  * scaling: ``ipso render`` on a 300-site collaborative (wall time should grow ~linearly).
  * peak memory: resident set of the whole process tree (workers + kernels), sampled every 0.1 s.
  * with Quarto on PATH: the nbconvert and the Quarto renderer side by side.
Writes the "render" section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / "_work" / "render"
BIN = Path(sys.executable).parent
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
START, END = "<!-- render:start -->", "<!-- render:end -->"


def timed(cmd: list[str], env: dict | None = None) -> tuple[float, float, subprocess.CompletedProcess]:
    """Run `cmd`; return (wall seconds, peak RSS of its process tree in MiB, completed process)."""
    peak = 0.0
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env or dict(os.environ), cwd=ROOT)
    stop = threading.Event()

    def sample():
        nonlocal peak
        try:
            root = psutil.Process(proc.pid)
        except psutil.NoSuchProcess:
            return
        while not stop.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
                rss = sum(p.memory_info().rss for p in procs if p.is_running())
                peak = max(peak, rss / 2**20)
            except psutil.Error:
                pass
            time.sleep(0.1)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    stop.set()
    th.join()
    return wall, peak, subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def simulate(out: Path, sites: int) -> None:
    if not (out / "sites.csv").exists():
        subprocess.run([str(BIN / "ipso"), "simulate", "--out", str(out), "--sites", str(sites)],
                       check=True, capture_output=True)


def naive_loop(data: Path, sample: int) -> list[float]:
    """papermill + nbconvert --no-input for the first `sample` sites; seconds per site."""
    import pandas as pd

    sites = pd.read_csv(data / "sites.csv", dtype=str)["site_id"].tolist()[:sample]
    nb = ROOT / "notebooks" / "site_report.ipynb"
    out = WORK / "naive"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    times = []
    for s in sites:
        t0 = time.perf_counter()
        executed = out / f"site_{s}.ipynb"
        subprocess.run([str(BIN / "papermill"), str(nb), str(executed), "-p", "site_id", s,
                        "-p", "data_dir", str(data), "--cwd", str(out)], check=True, capture_output=True)
        subprocess.run([str(BIN / "jupyter"), "nbconvert", "--to", "html", "--no-input", str(executed)],
                       check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return times


def ipso_render(data: Path, out: Path, jobs: int, *extra: str) -> tuple[float, float, dict]:
    cmd = [str(BIN / "ipso"), "render", "--data", str(data), "--out", str(out), "--jobs", str(jobs),
           "--json", *extra]
    wall, peak, proc = timed(cmd)
    if proc.returncode not in (0, 1):
        raise RuntimeError(proc.stderr[-3000:])
    return wall, peak, json.loads(proc.stdout)


def api_render(data: Path, out: Path, jobs: int, renderer: str) -> tuple[float, float]:
    code = (f"from analysis.batch import render_batch\n"
            f"render_batch({str(data)!r}, {str(out)!r}, jobs={jobs}, force=True, renderer={renderer!r},"
            f" show_progress=False)\n")
    wall, peak, proc = timed([sys.executable, "-c", code])
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return wall, peak


def write_section(text: str) -> None:
    body = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    block = f"{START}\n{text.rstrip()}\n{END}"
    if START in body and END in body:
        body = body[: body.index(START)] + block + body[body.index(END) + len(END):]
    else:
        body = body.rstrip() + "\n\n## Render: ipso render vs the naive papermill + nbconvert loop (`bench_render.py`)\n\n" + block + "\n"
    RESULTS.write_text(body)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--naive-sample", type=int, default=3, help="sites timed in the naive loop")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--large", type=int, default=300, help="sites of the scaling run (0: skip)")
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    data57 = WORK / "data57"
    simulate(data57, 57)
    n_reports = 58  # 57 sites + collaborative

    naive = naive_loop(data57, args.naive_sample)
    naive_mean = sum(naive) / len(naive)
    naive_total = naive_mean * n_reports

    out57 = WORK / "run57"
    shutil.rmtree(out57, ignore_errors=True)
    cold_wall, cold_peak, cold = ipso_render(data57, out57, args.jobs, "--force")
    noop_wall, _, noop = ipso_render(data57, out57, args.jobs)
    secs = [r["seconds"] for r in cold["reports"] if r["seconds"]]

    rows = [
        ("naive loop, per report (mean of %d sites)" % len(naive), f"{naive_mean:.1f} s", ""),
        ("naive loop, %d reports (extrapolated)" % n_reports, f"{naive_total:.0f} s", ""),
        ("ipso render --force, %d reports, %d jobs" % (len(cold["reports"]), args.jobs),
         f"{cold_wall:.1f} s", f"peak RSS {cold_peak:.0f} MiB"),
        ("speed-up vs naive (target >= 8x)", f"{naive_total / cold_wall:.1f}x", ""),
        ("per report in a warm worker (median)", f"{sorted(secs)[len(secs) // 2]:.2f} s" if secs else "-", ""),
        ("no-change re-run (target < 5 s)", f"{noop_wall:.2f} s",
         f"{noop['counts']['up_to_date']} up to date"),
        ("failed reports", str(cold["counts"]["failed"]), ""),
    ]
    if args.large:
        data_l = WORK / f"data{args.large}"
        simulate(data_l, args.large)
        out_l = WORK / f"run{args.large}"
        shutil.rmtree(out_l, ignore_errors=True)
        l_wall, l_peak, l_res = ipso_render(data_l, out_l, args.jobs, "--force")
        per57 = cold_wall / len(cold["reports"])
        perl = l_wall / len(l_res["reports"])
        rows.append((f"ipso render --force, {len(l_res['reports'])} reports", f"{l_wall:.1f} s",
                     f"peak RSS {l_peak:.0f} MiB"))
        rows.append(("wall per report, 58 vs %d reports (linear: ~equal)" % len(l_res["reports"]),
                     f"{per57:.2f} s vs {perl:.2f} s", ""))
    if shutil.which("quarto"):
        nb_wall, _ = api_render(data57, WORK / "run57_nbconvert", args.jobs, "nbconvert")
        q_wall, _ = api_render(data57, WORK / "run57_quarto", args.jobs, "quarto")
        rows.append(("renderer nbconvert vs quarto (58 reports)", f"{nb_wall:.1f} s vs {q_wall:.1f} s", ""))
    else:
        rows.append(("Quarto renderer", "not measured", "quarto not on PATH"))

    head = (f"Run {time.strftime('%Y-%m-%d %H:%M')} on {platform.node()} ({os.cpu_count()} cores, "
            f"{psutil.virtual_memory().total / 2**30:.0f} GiB); load average at start "
            f"{os.getloadavg()[0]:.1f}. Naive loop = papermill + `jupyter nbconvert --to html --no-input`, "
            f"serial, timed on {len(naive)} sites ({', '.join(f'{t:.1f}' for t in naive)} s) and "
            f"extrapolated to {n_reports} reports.\n\n")
    table = "| measure | value | note |\n|---|---|---|\n" + "\n".join(f"| {a} | {b} | {c} |" for a, b, c in rows)
    text = head + table + "\n"
    print(text)
    write_section(text)


if __name__ == "__main__":
    main()

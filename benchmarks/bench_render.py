"""Benchmark: ``ipso render`` (warm kernels, parallel, incremental) versus the naive loops, for
both renderers, and ``make demo`` with and without Quarto.

    MPLBACKEND=Agg .venv/bin/python benchmarks/bench_render.py [--naive-sample 3] [--large 300]

Measured side by side in one run on the default synthetic collaborative (57 sites, 58 reports):
  * naive loops, serial, one fresh process per step: for each site ``papermill site_report.ipynb``
    then ``jupyter nbconvert --to html --no-input`` (nbconvert), or then ``quarto render`` of the
    executed notebook in a folder with ``reports/_quarto.yml`` (Quarto). Only a sample of sites is
    timed and the mean is extrapolated to the 58 reports; stated as such.
  * ``ipso render --force`` of all 58 reports, cold (workers and kernels started), with nbconvert
    (Quarto taken off PATH) and with Quarto; then a no-change re-run of each.
  * ``make demo`` (``ipso simulate`` + ``python -m analysis.demo`` into a fresh folder) with and
    without Quarto on PATH.
  * scaling: ``ipso render`` on a ``--large``-site collaborative (wall time should grow ~linearly).
  * peak memory: resident set of the whole process tree (workers + kernels), sampled every 0.1 s;
    CPU: user + system seconds of the whole process tree (robust to other load on the machine).
Targets (issue 16): Quarto >= 8x its naive loop, nbconvert >= 12x its naive loop, no-change
re-run < 2 s, ``make demo`` with Quarto <= 1.3x without. Writes the "render" section of
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
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


QUARTO = shutil.which("quarto")
#: PATH without Quarto: the nbconvert runs.
NO_QUARTO_ENV = dict(os.environ, PATH=os.pathsep.join(
    d for d in os.environ.get("PATH", "").split(os.pathsep)
    if not (d and (Path(d) / "quarto").exists())))
CPU: dict[str, float] = {}  # label -> CPU seconds of the last timed() call with that label


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed(cmd: list[str], env: dict | None = None) -> tuple[float, float, subprocess.CompletedProcess]:
    """Run `cmd`; return (wall seconds, peak RSS of its process tree in MiB, completed process).
    CPU seconds of the process tree are added to CPU["last"]."""
    peak = 0.0
    c0 = children_cpu()
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
    CPU["last"] = children_cpu() - c0
    stop.set()
    th.join()
    return wall, peak, subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def simulate(out: Path, sites: int) -> None:
    if not (out / "sites.csv").exists():
        subprocess.run([str(BIN / "ipso"), "simulate", "--out", str(out), "--sites", str(sites)],
                       check=True, capture_output=True)


def naive_loop(data: Path, sample: int, renderer: str) -> tuple[list[float], float]:
    """papermill then nbconvert (or quarto render) for the first `sample` sites, serially:
    (seconds per site, CPU seconds per site)."""
    import pandas as pd

    sites = pd.read_csv(data / "sites.csv", dtype=str)["site_id"].tolist()[:sample]
    nb = ROOT / "notebooks" / "site_report.ipynb"
    out = WORK / f"naive-{renderer}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for f in ("_quarto.yml", "ipso.scss"):  # the same look as ipso's reports
        shutil.copyfile(ROOT / "reports" / f, out / f)
    times, cpu = [], 0.0
    env = NO_QUARTO_ENV if renderer == "nbconvert" else None
    for s in sites:
        t0, c0 = time.perf_counter(), children_cpu()
        executed = out / f"site_{s}.ipynb"
        subprocess.run([str(BIN / "papermill"), str(nb), str(executed), "-p", "site_id", s,
                        "-p", "data_dir", str(data), "--cwd", str(out)], check=True, capture_output=True,
                       env=env)
        if renderer == "nbconvert":
            cmd = [str(BIN / "jupyter"), "nbconvert", "--to", "html", "--no-input", str(executed)]
        else:
            cmd = [QUARTO, "render", executed.name, "--to", "html", "--no-execute"]
        subprocess.run(cmd, check=True, capture_output=True, cwd=out, env=env)
        times.append(time.perf_counter() - t0)
        cpu += children_cpu() - c0
    return times, cpu / len(sites)


def ipso_render(data: Path, out: Path, jobs: int, *extra: str, env: dict | None = None) -> tuple[float, float, dict]:
    cmd = [str(BIN / "ipso"), "render", "--data", str(data), "--out", str(out), "--jobs", str(jobs),
           "--json", *extra]
    wall, peak, proc = timed(cmd, env)
    if proc.returncode not in (0, 1):
        raise RuntimeError(proc.stderr[-3000:])
    return wall, peak, json.loads(proc.stdout)


def make_demo(jobs: int, env: dict | None) -> tuple[float, float]:
    """What ``make demo`` runs (simulate + analysis.demo), into fresh folders: (wall s, CPU s)."""
    data, out = WORK / "demo-data", WORK / "demo-out"
    shutil.rmtree(data, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    t0, c0 = time.perf_counter(), children_cpu()
    for cmd in ([str(BIN / "ipso"), "simulate", "--out", str(data)],
                [sys.executable, "-m", "analysis.demo", "--data", str(data), "--out", str(out),
                 "--jobs", str(jobs)]):
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-3000:])
    return time.perf_counter() - t0, children_cpu() - c0


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
    ap.add_argument("--naive-sample", type=int, default=3, help="sites timed in each naive loop")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--large", type=int, default=300, help="sites of the scaling run (0: skip)")
    ap.add_argument("--no-demo", action="store_true", help="skip the make demo comparison")
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    data57 = WORK / "data57"
    simulate(data57, 57)
    n_reports = 58  # 57 sites + collaborative
    load0 = os.getloadavg()[0]
    renderers = ["nbconvert"] + (["quarto"] if QUARTO else [])
    targets = {"nbconvert": 12, "quarto": 8}
    rows = []
    naive_notes = []
    for r in renderers:
        naive, naive_cpu = naive_loop(data57, args.naive_sample, r)
        naive_mean = sum(naive) / len(naive)
        naive_total = naive_mean * n_reports
        naive_notes.append(f"{r}: {', '.join(f'{t:.1f}' for t in naive)} s")
        out = WORK / f"run57-{r}"
        shutil.rmtree(out, ignore_errors=True)
        env = NO_QUARTO_ENV if r == "nbconvert" else None
        cold_wall, cold_peak, cold = ipso_render(data57, out, args.jobs, "--force", env=env)
        cold_cpu = CPU["last"]
        noop_wall, _, noop = ipso_render(data57, out, args.jobs, env=env)
        assert cold["renderer"] == r, cold["renderer"]
        secs = sorted(x["seconds"] for x in cold["reports"] if x["seconds"])
        export = sorted(x["export_seconds"] for x in cold["reports"] if x.get("export_seconds"))
        rows += [
            (f"**{r}**: naive loop, per report (mean of {len(naive)} sites)", f"{naive_mean:.1f} s",
             f"CPU {naive_cpu:.1f} s"),
            (f"{r}: naive loop, {n_reports} reports (extrapolated)", f"{naive_total:.0f} s",
             f"CPU {naive_cpu * n_reports:.0f} s"),
            (f"{r}: ipso render --force, {len(cold['reports'])} reports, {args.jobs} jobs",
             f"{cold_wall:.1f} s", f"CPU {cold_cpu:.0f} s, peak RSS {cold_peak:.0f} MiB"),
            (f"{r}: speed-up vs naive (target >= {targets[r]}x)", f"**{naive_total / cold_wall:.1f}x**",
             f"CPU ratio {naive_cpu * n_reports / cold_cpu:.1f}x"),
            (f"{r}: per report in a warm worker (median; of which the render step)",
             f"{secs[len(secs) // 2]:.2f} s; {export[len(export) // 2]:.2f} s" if secs and export else "-",
             "render step = " + ("Quarto, its share of one call per chunk" if r == "quarto" else "nbconvert export")),
            (f"{r}: no-change re-run (target < 2 s)", f"**{noop_wall:.2f} s**",
             f"{noop['counts']['up_to_date']} up to date"),
            (f"{r}: failed reports", str(cold["counts"]["failed"]), ""),
        ]
    if QUARTO and not args.no_demo:
        d_nb, d_nb_cpu = make_demo(args.jobs, NO_QUARTO_ENV)
        d_q, d_q_cpu = make_demo(args.jobs, None)
        rows += [
            ("make demo without Quarto (nbconvert)", f"{d_nb:.1f} s", f"CPU {d_nb_cpu:.0f} s"),
            ("make demo with Quarto", f"{d_q:.1f} s", f"CPU {d_q_cpu:.0f} s"),
            ("make demo, Quarto / without (target <= 1.3)", f"**{d_q / d_nb:.2f}**",
             f"CPU ratio {d_q_cpu / d_nb_cpu:.2f}"),
        ]
    elif not QUARTO:
        rows.append(("Quarto renderer", "not measured", "quarto not on PATH"))
    if args.large:
        data_l = WORK / f"data{args.large}"
        simulate(data_l, args.large)
        out_l = WORK / f"run{args.large}"
        shutil.rmtree(out_l, ignore_errors=True)
        r = renderers[-1]
        l_wall, l_peak, l_res = ipso_render(data_l, out_l, args.jobs, "--force",
                                            env=NO_QUARTO_ENV if r == "nbconvert" else None)
        base = WORK / f"run57-{r}"
        per57 = json.loads((base / "manifest.json").read_text())["timings"]["wall_seconds"] / n_reports
        perl = l_wall / len(l_res["reports"])
        rows.append((f"{r}: ipso render --force, {len(l_res['reports'])} reports", f"{l_wall:.1f} s",
                     f"peak RSS {l_peak:.0f} MiB"))
        rows.append((f"{r}: wall per report, 58 vs {len(l_res['reports'])} reports (linear: ~equal)",
                     f"{per57:.2f} s vs {perl:.2f} s", ""))

    head = (f"Run {time.strftime('%Y-%m-%d %H:%M')} on {platform.node()} ({os.cpu_count()} cores, "
            f"{psutil.virtual_memory().total / 2**30:.0f} GiB); load average {load0:.1f} at start, "
            f"{os.getloadavg()[0]:.1f} at the end (other jobs share the machine: the CPU columns "
            f"are the process trees' own user + system seconds). Quarto: "
            f"{subprocess.run([QUARTO, '--version'], capture_output=True, text=True).stdout.strip() if QUARTO else 'not on PATH'}. "
            f"Naive loops serial, timed on {args.naive_sample} sites and extrapolated to {n_reports} "
            f"reports ({'; '.join(naive_notes)}).\n\n")
    table = "| measure | value | note |\n|---|---|---|\n" + "\n".join(f"| {a} | {b} | {c} |" for a, b, c in rows)
    text = head + table + "\n"
    print(text)
    write_section(text)


if __name__ == "__main__":
    main()

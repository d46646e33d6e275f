"""Benchmark: validate + ingest a ~1M-episode synthetic collaborative (target: < 60 s on 2 cores).

Simulates the collaborative once (``analysis.simulate``, 57 sites x 84 months), writes it both as the
simulator's layout (episodes.parquet) and with episodes.csv (the slower, all-strings path), then runs
``analysis.store.ingest`` on each in a fresh Python process and records wall time per phase and peak
resident memory (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) in ``benchmarks/RESULTS.md``
(the ingest section only).

    .venv/bin/python benchmarks/bench_ingest.py [--episodes-per-site-month 180] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
START, END = "<!-- bench_ingest:start -->", "<!-- bench_ingest:end -->"
HEADING = "## Ingest: validate + ingest 1M episodes (`bench_ingest.py`)"


def child(extract: Path, out: Path) -> None:
    """Run in a fresh process: validate + derive + write; print timings and peak RSS as JSON."""
    t0 = time.perf_counter()
    from analysis.store import collaborative_from_validation, write_store
    from analysis.validate import validate_collaborative

    t_import = time.perf_counter()
    result = validate_collaborative(extract)
    t_validate = time.perf_counter()
    coll = collaborative_from_validation(result, source=str(extract))
    t_derive = time.perf_counter()
    write_store(coll, out)
    t_write = time.perf_counter()
    print(json.dumps({
        "episodes_read": result.summary["files"]["episodes"]["rows_read"],
        "rows_quarantined": result.summary["rows_quarantined"],
        "import_s": t_import - t0,
        "validate_s": t_validate - t_import,
        "derive_attach_s": t_derive - t_validate,
        "write_store_s": t_write - t_derive,
        "total_in_process_s": t_write - t0,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


def simulate(tmp: Path, epsm: float) -> tuple[Path, Path, int, float]:
    from analysis.simulate import simulate_collaborative

    t0 = time.perf_counter()
    sim = simulate_collaborative(episodes_per_site_month=epsm)
    seconds = time.perf_counter() - t0
    pq_dir, csv_dir = tmp / "extract_parquet", tmp / "extract_csv"
    sim.write(pq_dir)
    csv_dir.mkdir()
    for name in ("sites.csv", "site_months.csv"):
        (csv_dir / name).write_bytes((pq_dir / name).read_bytes())
    sim.episodes.to_csv(csv_dir / "episodes.csv", index=False, date_format="%Y-%m-%dT%H:%M:%S")
    return pq_dir, csv_dir, len(sim.episodes), seconds


def run(extract: Path, out: Path) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--child", str(extract), str(out)],
        check=True, capture_output=True, text=True,
    )
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["wall_incl_startup_s"] = time.perf_counter() - t0
    res["input_mb"] = sum(p.stat().st_size for p in extract.iterdir()) / 2**20
    res["store_mb"] = sum(p.stat().st_size for p in out.iterdir()) / 2**20
    return res


def render(results: dict[str, dict], n: int, sim_seconds: float, epsm: float) -> str:
    lines = [
        HEADING, "", START, "",
        (f"Synthetic collaborative: 57 sites x 84 months, `episodes_per_site_month={epsm:g}` -> "
        f"**{n:,} episodes** (simulated in {sim_seconds:.1f} s, not counted below)."),
        (f"Machine: {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{platform.system()} {platform.machine()}. Each run is a fresh process. Load average "
        f"(1 min) when the runs ended: {os.getloadavg()[0]:.1f} (other jobs share the machine)."),
        "",
        ("| episodes file | input MB | validate s | derive + attach s | write store s | total s "
        "(in process) | wall s (incl. start-up) | peak RSS MB | quarantined |"),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for fmt, r in results.items():
        lines.append(
            f"| {fmt} | {r['input_mb']:.0f} | {r['validate_s']:.1f} | {r['derive_attach_s']:.1f} | "
            f"{r['write_store_s']:.1f} | {r['total_in_process_s']:.1f} | {r['wall_incl_startup_s']:.1f} | "
            f"{r['peak_rss_mb']:.0f} | {r['rows_quarantined']} |"
        )
    worst = max(r["wall_incl_startup_s"] for r in results.values())
    lines += ["", (f"Target: < 60 s for 1M episodes. Slowest run: {worst:.1f} s -> "
              f"{'met' if worst < 60 else 'NOT met'}."), "", END]
    return "\n".join(lines)


def write_results(section: str) -> None:
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\nOne section per benchmark script.\n"
    if START in text and END in text:
        head = text[: text.index(START)]
        head = head[: head.rindex(HEADING)] if HEADING in head else head
        text = head + section + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    RESULTS.write_text(re.sub(r"\n{3,}", "\n\n", text))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes-per-site-month", type=float, default=180.0,
                    help="simulator volume; 180 gives ~1.04M episodes over 57 sites x 84 months")
    ap.add_argument("--no-write", action="store_true", help="print results, do not edit RESULTS.md")
    ap.add_argument("--child", nargs=2, metavar=("EXTRACT", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(Path(args.child[0]), Path(args.child[1]))
        return
    with tempfile.TemporaryDirectory(prefix="bench_ingest_") as tmp:
        tmp = Path(tmp)
        pq_dir, csv_dir, n, sim_s = simulate(tmp, args.episodes_per_site_month)
        results = {
            "episodes.parquet": run(pq_dir, tmp / "store_parquet"),
            "episodes.csv": run(csv_dir, tmp / "store_csv"),
        }
    print(json.dumps(results, indent=2))
    section = render(results, n, sim_s, args.episodes_per_site_month)
    print(section)
    if not args.no_write:
        write_results(section)


if __name__ == "__main__":
    main()

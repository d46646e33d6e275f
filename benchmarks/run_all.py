"""Run every benchmark script in turn (``make bench``). Each one records its section in RESULTS.md
(the ITS and plan truth studies print their tables; copy them into RESULTS.md when they change).

These are slow statistical studies and timing comparisons, deliberately kept out of the test suite.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = [
    ["bench_ingest.py"],
    ["bench_render.py"],
    ["bench_fuzz.py", "--inputs", "1000"],
    ["bench_its_truth.py", "--replicates", "500", "--jobs", "2"],
    ["bench_its_truth.py", "--replicates", "100", "--jobs", "2", "--scenario", "null"],
    # results append to (and resume from) CSVs under benchmarks/_work/
    ["bench_plan_truth.py", "--replicates", "200", "--jobs", "2", "--out", "benchmarks/_work/plan_default.csv"],
    ["bench_plan_truth.py", "--replicates", "100", "--jobs", "2", "--scenario", "null", "--seed0", "6000",
     "--out", "benchmarks/_work/plan_null.csv"],
    ["bench_plan_truth.py", "--replicates", "20", "--jobs", "2", "--level", "site",
     "--out", "benchmarks/_work/plan_site.csv"],
    ["bench_funnel_null.py"],
    ["bench_spc_null.py", "--runs", "1000"],
    ["bench_eb_coverage.py"],
    ["bench_staggered.py", "noise-free"],
    ["bench_staggered.py", "panel", "--replicates", "200", "--count", "20", "--jobs", "2"],
    ["bench_staggered.py", "sim", "--replicates", "200", "--jobs", "2"],
]


def main() -> int:
    status = 0
    for script, *args in SCRIPTS:
        print(f"== {script} {' '.join(args)}", flush=True)
        rc = subprocess.call([sys.executable, str(HERE / script), *args], cwd=HERE.parent)
        status = status or rc
    return status


if __name__ == "__main__":
    sys.exit(main())

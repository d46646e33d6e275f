"""Run every benchmark script in turn (``make bench``). Each one records its section in RESULTS.md
(the ITS truth study prints its table; copy it into RESULTS.md when it changes).

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
    ["bench_its_truth.py", "--replicates", "500", "--jobs", "2"],
    ["bench_its_truth.py", "--replicates", "100", "--jobs", "2", "--scenario", "null"],
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

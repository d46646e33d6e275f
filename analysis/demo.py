"""``make demo``: render every report of the synthetic collaborative and print the index path.

    python -m analysis.demo --data data/synthetic --out reports/demo --jobs N

The Makefile simulates the data first (``ipso simulate --out data/synthetic``); this module then
runs the batch renderer (``ipso render``) and prints the path of the public index,
``reports/demo/publish/index.html``, last, so a user can open it (``publish/`` is what may leave
the analysis server; ``internal/`` holds the key, shared fits and executed notebooks). Exit status
is non-zero when a report failed (both indexes list it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/synthetic"))
    parser.add_argument("--out", type=Path, default=Path("reports/demo"))
    parser.add_argument("--jobs", type=int, default=None)
    args = parser.parse_args(argv)

    from .batch import render_batch
    from .console import console

    result = render_batch(args.data, args.out, jobs=args.jobs, show_progress=console.is_terminal)
    counts = result.to_dict()["counts"]
    manifest = json.loads(result.manifest_path.read_text())
    renderer = " ".join(str(v) for v in manifest.get("renderer", {}).values() if v) or result.renderer
    console.print(
        f"{counts['selected']} report(s): {counts['rendered']} rendered, {counts['up_to_date']} up to "
        f"date, {counts['failed']} failed in {result.wall_seconds:.1f} s with {renderer}"
    )
    for r in result.failed:
        console.print(f"[red]FAILED {r.report_id}: {r.error}[/red]")
    if result.failed:
        console.print(f"analyst's index (internal): {result.internal_index_path}")
    print(result.index_path.resolve())
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())

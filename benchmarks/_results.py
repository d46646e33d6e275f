"""Shared helper of the benchmark scripts that write a marked section of RESULTS.md."""

from __future__ import annotations

import re
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def write_section(key: str, heading: str, text: str) -> None:
    """Replace (or append) the block between ``<!-- key:start -->`` and ``<!-- key:end -->``
    under ``## heading`` in benchmarks/RESULTS.md."""
    start, end = f"<!-- {key}:start -->", f"<!-- {key}:end -->"
    body = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\nOne section per benchmark script.\n"
    block = f"{start}\n{text.rstrip()}\n{end}"
    if start in body and end in body:
        body = body[: body.index(start)] + block + body[body.index(end) + len(end):]
    else:
        body = body.rstrip() + f"\n\n## {heading}\n\n" + block + "\n"
    RESULTS.write_text(re.sub(r"\n{3,}", "\n\n", body))


def publish(key: str, heading: str, text: str, write: bool) -> int:
    """Print a benchmark's section and, when `write`, store it in RESULTS.md; returns 0."""
    print(text)
    if write:
        write_section(key, heading, text)
    return 0

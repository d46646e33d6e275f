"""Fuzz campaign: `ipso validate` and `ipso ingest` on many corrupted extracts (issue 14).

Uses the generator and checks of ``tests/test_fuzz_extract.py`` (hypothesis, random seed, no
shrinking) on at least 1,000 inputs and counts crashes (an exception or a traceback instead of
exit status 0 or 2), rows lost (rows read != accepted + quarantined, a file row not read, an
accepted row not stored) and values changed silently (a stored value that differs from the file).
Every 100th input is also run through the real console script (a fresh process). Results go to
``benchmarks/RESULTS.md`` (the fuzz section only).

    .venv/bin/python benchmarks/bench_fuzz.py [--inputs 1000] [--seed N] [--no-write]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

RESULTS = HERE / "RESULTS.md"
START, END = "<!-- bench_fuzz:start -->", "<!-- bench_fuzz:end -->"
HEADING = "## Fuzz campaign: corrupted extracts through `ipso validate` / `ipso ingest` (`bench_fuzz.py`)"


#: The same generator on the code before the issue-14 fixes (main at e7e1c60), for comparison.
BASELINE = ("Before the fixes (main at e7e1c60), the same generator found 19 crashes in 400 inputs "
            "(seed 6): 12 `InvalidIndexError` (input columns named like the quarantine's), 6 pandera "
            "`SchemaErrors` (counts of 9.2e18 or more overflowing int64), 1 `OutOfBoundsDatetime` "
            "(a Parquet timestamp in year 1); its six explicit examples (the four crash causes and "
            "the value 9007199254740993 stored as ...992) all fail there.")


def campaign(n: int, seed: int) -> dict:
    import test_fuzz_extract as fz
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed

    stats = collections.Counter()
    rules = collections.Counter()
    messages = collections.Counter()
    failures: list[dict] = []
    ipso = str(Path(sys.executable).parent / "ipso")
    t0 = time.perf_counter()

    @hseed(seed)
    @settings(max_examples=n, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(ex=fz.extracts())
    def one(ex):
        with tempfile.TemporaryDirectory(prefix="ipso_fuzz_") as tmp:
            out = fz.examine(ex, Path(tmp))
            stats["inputs"] += 1
            if stats["inputs"] % 100 == 0 and out.exit_code is not None:  # the real console script
                proc = subprocess.run([ipso, "validate", str(Path(tmp) / "extract"), "--json"],
                                      check=False, capture_output=True, text=True, timeout=300)
                stats["subprocess_checks"] += 1
                if proc.returncode != out.exit_code or "Traceback" in proc.stderr:
                    out.problems.append(f"console script: exit {proc.returncode}: {proc.stderr[-500:]}")
        crash = any(" crash " in p or ": exit " in p or "Traceback" in p for p in out.problems)
        stats["crashes"] += crash
        stats["rows_lost"] += out.rows_lost
        stats["values_changed"] += out.values_changed
        stats["rows_read"] += out.rows_read
        stats[f"exit_{out.exit_code}"] += 1
        stats["inputs_with_problems"] += bool(out.problems)
        rules.update(out.rules)
        if out.message:
            messages[re.sub(r"\d+", "N", out.message.split(": ", 1)[-1])[:240]] += 1
        if out.problems and len(failures) < 20:
            failures.append({"problems": out.problems[:3], "input": repr(ex)[:3000]})

    one()
    return {"inputs": stats["inputs"], "seed": seed, "seconds": time.perf_counter() - t0,
            "stats": dict(stats), "rules": dict(rules.most_common()),
            "messages": dict(messages.most_common(40)), "failures": failures}


def render(r: dict) -> str:
    s = r["stats"]
    lines = [
        HEADING, "", START, "",
        (f"{r['inputs']:,} corrupted extracts (hypothesis seed {r['seed']}; generator and checks of "
         "`tests/test_fuzz_extract.py`), each through `ipso validate` and `ipso ingest` (in-process "
         f"CLI; {s.get('subprocess_checks', 0)} of them also through the console script in a fresh "
         "process), then the store compared value by value with the files."),
        (f"Machine: {os.cpu_count()} cores, Python {platform.python_version()}; load average "
         f"(1 min) at the end: {os.getloadavg()[0]:.1f}."),
        "",
        "| inputs | crashes | rows lost | values changed silently | exit 0 (ingested) | exit 2 (clear error) | rows read | time s |",
        "|---|---|---|---|---|---|---|---|",
        (f"| {r['inputs']:,} | {s.get('crashes', 0)} | {s.get('rows_lost', 0)} | "
         f"{s.get('values_changed', 0)} | {s.get('exit_0', 0)} | {s.get('exit_2', 0)} | "
         f"{s.get('rows_read', 0):,} | {r['seconds']:.0f} |"),
        "",
        "Rows quarantined per rule (summed over the ingested inputs): "
        + ", ".join(f"`{k}` {v:,}" for k, v in r["rules"].items()) + ".",
        "",
        "Most frequent exit-2 messages (numbers replaced by N):",
        "",
    ]
    lines += [f"- {n} x {m}" for m, n in list(r["messages"].items())[:12]]
    lines += ["", BASELINE, "", END]
    return "\n".join(lines)


def write_results(section: str) -> None:
    """Replace this script's section of RESULTS.md (heading to end marker), or append it."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    mine = re.compile(re.escape(HEADING) + r".*?" + re.escape(END), re.DOTALL)
    if mine.search(text):
        text = mine.sub(lambda _: section, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    RESULTS.write_text(text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inputs", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=None, help="hypothesis seed (default: random)")
    ap.add_argument("--no-write", action="store_true", help="print results, do not edit RESULTS.md")
    ap.add_argument("--json", type=Path, default=None, help="also write the full results here")
    ap.add_argument("--render-json", type=Path, default=None,
                    help="re-render the section from a saved --json file (no campaign)")
    args = ap.parse_args()
    os.environ.setdefault("MPLBACKEND", "Agg")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    r = json.loads(args.render_json.read_text()) if args.render_json else campaign(args.inputs, seed)
    if args.json:
        args.json.write_text(json.dumps(r, indent=2, default=str))
    section = render(r)
    print(section)
    for f in r["failures"]:
        print("\nPROBLEM:", *f["problems"], "INPUT:", f["input"][:1500], sep="\n")
    if not args.no_write:
        write_results(section)
    s = r["stats"]
    return 1 if s.get("crashes") or s.get("rows_lost") or s.get("values_changed") else 0


if __name__ == "__main__":
    sys.exit(main())

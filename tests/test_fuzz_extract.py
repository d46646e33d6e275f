"""Property-based fuzzing of `ipso validate` and `ipso ingest` with corrupted extracts.

Each example starts from a real extract (the hand-made fixture ``data/fixtures/good`` or a small
synthetic collaborative from :func:`analysis.simulate.simulate_collaborative`), then corrupts it:
values (types, huge and tiny numbers, dates out of range, unicode, markup, paths), rows
(duplicate keys, deleted rows), columns (missing, extra, renamed, shifted, duplicated names, names
of the quarantine's own columns), files (encodings, delimiters, line endings, BOM, empty and
truncated files, flipped bytes) and formats (CSV, Parquet with strings or typed columns: huge
integers, timestamps out of range, booleans with nulls, binary, dates).

For every input: the CLI (``ipso validate`` and ``ipso ingest``, run in-process through typer's
test runner) exits 0 or 2 with no traceback; rows read = accepted + quarantined per file; and when
the store is written, every stored value of every accepted row is what the file held (no value
changed silently). ``benchmarks/bench_fuzz.py`` runs the same checks on a longer campaign.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import math
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from decimal import Decimal
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from analysis import contract

GOOD = Path(__file__).resolve().parents[1] / "data" / "fixtures" / "good"
TABLES = ("episodes", "sites", "site_months")
KINDS = {name: {f.name: f.kind for f in fields} for name, fields in contract.TABLES.items()}


# ---------------------------------------------------------------------------------------------
# base extracts: every table as a header and rows of text (what a CSV file holds)
@dataclass
class Table:
    name: str
    header: list[str]
    rows: list[list[str]]
    fmt: str = "csv"  # "csv" or "parquet"
    typed: bool = False  # parquet: convert contract columns to their types where every value allows
    arrow: dict[int, pa.Array] = field(default_factory=dict)  # parquet: column index -> typed array
    encoding: str = "utf-8"
    delimiter: str = ","
    newline: str = "\n"
    damage: tuple = ()  # byte-level damage: ("truncate", fraction) | ("flip", fraction, byte) | ("empty",)

    @property
    def exact(self) -> bool:
        """The file holds exactly `header` and `rows` (no byte damage, a readable CSV dialect)."""
        return not self.damage and (self.fmt == "parquet" or (
            self.encoding in ("utf-8", "utf-8-sig") and self.delimiter == ","))


def _table_from_frame(name: str, df: pd.DataFrame) -> Table:
    return Table(name, [str(c) for c in df.columns], df.astype(str).values.tolist())


@cache
def _bases() -> dict[str, dict[str, tuple]]:
    good = {t: pd.read_csv(GOOD / f"{t}.csv", dtype=str, keep_default_na=False) for t in TABLES}
    from analysis.simulate import simulate_collaborative

    sim = simulate_collaborative(sites=3, months=4, episodes_per_site_month=2.5, seed=7)
    ep = sim.episodes[contract.field_names("episodes")].copy()
    for c in contract.TIMESTAMP_COLUMNS:
        ep[c] = ep[c].dt.strftime("%Y-%m-%dT%H:%M:%S.%f").where(ep[c].notna(), "")
    ep = ep.astype(str)
    si = sim.sites[contract.field_names("sites")].copy()
    si["go_live"] = pd.to_datetime(si["go_live"]).dt.strftime("%Y-%m-%d")
    sm = sim.site_months[contract.field_names("site_months")].copy()
    sm["month"] = pd.to_datetime(sm["month"]).dt.strftime("%Y-%m")
    synthetic = {"episodes": ep, "sites": si.astype(str), "site_months": sm.astype(str)}
    freeze = {k: (tuple(v.columns), tuple(map(tuple, v.values.tolist()))) for k, v in good.items()}
    return {"good": freeze,
            "synthetic": {k: (tuple(v.columns), tuple(map(tuple, v.values.tolist())))
                          for k, v in synthetic.items()}}


def base_extract(which: str) -> dict[str, Table]:
    return {t: Table(t, list(h), [list(r) for r in rows]) for t, (h, rows) in _bases()[which].items()}


# ---------------------------------------------------------------------------------------------
# values
HUGE = ["9.2e18", "9223372036854775807", "9223372036854775808", "-9223372036854775809", "1e300",
        "-1e300", "1e309", "9007199254740993", "9007199254740992", "18446744073709551616",
        "9.007199254740993e15", "123456789012345678901234567890"]
TINY = ["1e-300", "5e-324", "-0", "0.0000001", "-1e-300", "2.2250738585072014e-308"]
DATES = ["9999-12-31T23:59:59", "0001-01-01T00:00:00", "1677-09-21T00:12:43", "1677-09-21T00:12:44",
         "2262-04-11T23:47:16", "2262-04-11T23:47:17", "1500-01-01", "2400-02-29 12:00",
         "2016-02-30T10:00", "2016-12-03T24:00", "2016-12-03T23:59:60", "0000-01-01T00:00",
         "2016-12-03T08:40:00.123456789", "2016-12-03T08:40:00.1234567891", "2016-12-03 08:40",
         "2016-12-03T08:40:00Z", "2016-12-03T08:40:00+05:30", "2016-12-03", "12/03/2016 08:40",
         "1700-01-01T00:00", "1800-06-30T12:00:00", "2200-01-01T00:00", "2017-01", "2017-01-01",
         "9999-01", "1600-01-01", "2262-05", "1677-09", "2262-04-11"]
TEXT = ["", " ", "NA", "null", "None", "nan", "NaN", "inf", "-inf", "Infinity", "true", "FALSE", "Y",
        "yes", "0", "1", "2", "-1", "+5", "5.0", "1e1", " 7 ", "0x10", "1_000", "1,5", "\u0663",
        "\uff15", "ED", "ward", "ICU", "heme_onc", "F", "M", "U", "Northeast", "South", "S01", "S02",
        "E0001", "P001", "\"", "a,b", "line\nbreak", "cr\rreturn", "\t", "\u00e9", "\u202eevil",
        "\ufeffS01", "\U0001f600", "\u3000", "\u200b", "<script>alert(1)</script>",
        "<img src=x onerror=alert(2)>", "\" onmouseover=alert(3) x=\"", "[x](javascript:alert(4))",
        "`code`", "../../../x", "a/b", "C:\\x", "x" * 40, "A" * 32, "a-b_C9", "S 04", "'; DROP TABLE x"]
VALUE = st.one_of(
    st.sampled_from(HUGE + TINY + DATES + TEXT),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=10),
    st.integers(-(10**20), 10**20).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31)).map(
        lambda t: t.isoformat(sep="T" if t.microsecond % 2 else " ")),
)
#: Values aimed at a column's kind (half of the value corruptions): the edges of its type.
_NUMBERS = st.sampled_from(HUGE + TINY + ["0", "1", "20", "21", "-1", "3.5", "1e1", "+5", " 7 "])
VALUE_FOR = {
    "int": _NUMBERS, "float": _NUMBERS, "datetime": st.sampled_from(DATES),
    "date": st.sampled_from(DATES), "month": st.sampled_from(DATES), "bool": st.sampled_from(
        ["true", "FALSE", "t", "F", "1", "0", "yes", "N", "y", "maybe", "", "2", "True "]),
    "id": st.sampled_from(["../../../x", "a/b", "S 04", "<img src=x onerror=alert(2)>", "X" * 33,
                           "S01", "S02", "E0001", "P001", "\ufeffS01", "", " "]),
}
COLUMN_NAME = st.one_of(
    st.sampled_from(["file", "row", "key", "reasons", "details", "input_file", "note", "", " ",
                     "los_days", "go_live", "wave", "month", "sam30", "post", "site_name", "Site_ID",
                     " site_id", "episode_id", "age_years"]),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=8),
)


# ---------------------------------------------------------------------------------------------
# corruptions
@st.composite
def corruption(draw, ex: dict[str, Table]):
    """Apply one corruption to `ex` in place (a drawn choice of what and where)."""
    t = ex[draw(st.sampled_from(TABLES))]
    ncol = len(t.header)
    kind = draw(st.sampled_from(
        ["value"] * 12 + ["column_value"] * 2 + ["arrow_column"] * 3 + [
            "duplicate_row", "delete_row", "drop_column", "extra_column", "shared_extra",
            "rename_column", "swap_columns", "duplicate_name", "ragged_row", "encoding", "delimiter",
            "newline", "damage", "parquet", "parquet_typed", "site_id"]))
    if kind == "value" and t.rows and ncol:
        r = draw(st.integers(0, len(t.rows) - 1))
        c = draw(st.integers(0, max(len(t.rows[r]), 1) - 1))
        if c >= len(t.rows[r]):
            return kind
        typed = VALUE_FOR.get(KINDS[t.name].get(t.header[c]))
        t.rows[r][c] = draw(typed if typed is not None and draw(st.integers(0, 3)) else VALUE)
    elif kind == "column_value" and ncol:
        c, v = draw(st.integers(0, ncol - 1)), draw(VALUE)
        for row in t.rows:
            if c < len(row):
                row[c] = v
    elif kind == "duplicate_row" and t.rows:
        t.rows.insert(draw(st.integers(0, len(t.rows))), list(t.rows[draw(st.integers(0, len(t.rows) - 1))]))
    elif kind == "delete_row" and t.rows:
        del t.rows[draw(st.integers(0, len(t.rows) - 1))]
    elif kind == "drop_column" and ncol > 1:
        c = draw(st.integers(0, ncol - 1))
        del t.header[c]
        for row in t.rows:
            if c < len(row):
                del row[c]
        t.arrow = {}
    elif kind == "extra_column":
        t.header.append(draw(COLUMN_NAME))
        for row in t.rows:
            row.append(draw(VALUE))
    elif kind == "rename_column" and ncol:
        t.header[draw(st.integers(0, ncol - 1))] = draw(COLUMN_NAME)
    elif kind == "swap_columns" and ncol > 1:
        a, b = draw(st.integers(0, ncol - 1)), draw(st.integers(0, ncol - 1))
        for row in t.rows:
            if max(a, b) < len(row):
                row[a], row[b] = row[b], row[a]
    elif kind == "duplicate_name" and ncol > 1:
        t.header[draw(st.integers(0, ncol - 1))] = t.header[draw(st.integers(0, ncol - 1))]
    elif kind == "ragged_row" and t.rows:
        row = t.rows[draw(st.integers(0, len(t.rows) - 1))]
        row.append("extra") if draw(st.booleans()) else row.pop()
    elif kind == "encoding":
        t.fmt = "csv"
        t.encoding = draw(st.sampled_from(["utf-8-sig", "utf-16", "utf-16-le", "utf-32", "latin-1",
                                           "cp1252"]))
    elif kind == "delimiter":
        t.fmt = "csv"
        t.delimiter = draw(st.sampled_from([";", "\t", "|"]))
    elif kind == "newline":
        t.newline = draw(st.sampled_from(["\r\n", "\r"]))
    elif kind == "damage":
        t.damage = draw(st.one_of(
            st.tuples(st.just("truncate"), st.floats(0, 1)),
            st.tuples(st.just("flip"), st.floats(0, 1), st.integers(0, 255)),
            st.just(("empty",)), st.just(("whitespace",))))
    elif kind in ("parquet", "parquet_typed"):
        t.fmt, t.typed = "parquet", kind == "parquet_typed"
    elif kind == "arrow_column" and ncol:
        t.fmt = "parquet"
        c = draw(st.integers(0, ncol - 1))
        col_kind = KINDS[t.name].get(t.header[c])
        if col_kind is not None and draw(st.booleans()):  # the column's own type, a few hazards
            values = _typed_column([r[c] if c < len(r) else "" for r in t.rows], col_kind).to_pylist()
            for i in draw(st.lists(st.integers(0, max(len(values) - 1, 0)), max_size=3)) if values else []:
                values[i] = draw(st.sampled_from(HAZARDS.get(col_kind, [None])))
            t.arrow[c] = _arrow_of(values, col_kind)
        else:
            t.arrow[c] = draw(arrow_array(len(t.rows)))
    elif kind == "shared_extra":
        name = draw(st.sampled_from(["file", "row", "key", "reasons", "details", "note"]))
        for other in ex.values():
            other.header.append(name)
            for row in other.rows:
                row.append(draw(VALUE))
    elif kind == "site_id" and t.rows and "site_id" in t.header:
        row, c = t.rows[draw(st.integers(0, len(t.rows) - 1))], t.header.index("site_id")
        value = draw(st.sampled_from(["../../../x", "a/b", "S 04", "<img src=x onerror=alert(2)>",
                                      "X" * 33, "S\u00e9", "..", "S01", "S02", "S99", "A" * 32, "a-b_C9", ""]))
        if c < len(row):
            row[c] = value
    return kind


#: Typed Parquet values at the edges of each kind (substituted into a column of its own type).
HAZARDS = {
    "int": [2**53 + 1, 2**53, 2**62, 2**63 - 1, -(2**63), None, -1],
    "float": [float("nan"), float("inf"), -float("inf"), 1e300, -0.0, 5e-324, None],
    "datetime": [dt.datetime(2500, 1, 1), dt.datetime(1600, 1, 1), dt.datetime(1, 1, 1),
                 dt.datetime(9999, 12, 31), dt.datetime(1700, 1, 1), dt.datetime(2262, 4, 12), None],
    "bool": [None],
    "id": ["../../../x", "<img src=x onerror=alert(2)>", "X" * 33, None, ""],
}
HAZARDS["date"] = HAZARDS["month"] = HAZARDS["datetime"]


def _arrow_of(values: list, kind: str) -> pa.Array:
    """`values` as the Arrow type a typed export of `kind` would use (strings when mixed)."""
    types = {"int": pa.int64(), "float": pa.float64(), "bool": pa.bool_(), "datetime": pa.timestamp("us"),
             "date": pa.timestamp("us"), "month": pa.timestamp("us")}
    try:
        return pa.array(values, types.get(kind, pa.string()))
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        return pa.array([None if v is None else str(v) for v in values], pa.string())


def arrow_array(n: int):
    """A typed Parquet column of length `n` (what a database export may write)."""
    maybe = lambda s: st.one_of(st.none(), s)
    return st.one_of(
        st.lists(maybe(st.integers(-(2**63), 2**63 - 1)), min_size=n, max_size=n).map(
            lambda v: pa.array(v, pa.int64())),
        st.lists(maybe(st.integers(0, 2**64 - 1)), min_size=n, max_size=n).map(
            lambda v: pa.array(v, pa.uint64())),
        st.lists(maybe(st.sampled_from([0, 1, 5, 20, 21, 2**53, 2**53 + 1])), min_size=n, max_size=n).map(
            lambda v: pa.array(v, pa.int32() if max([x or 0 for x in v] + [0]) < 2**31 else pa.int64())),
        st.lists(maybe(st.floats(allow_nan=True, allow_infinity=True)), min_size=n, max_size=n).map(
            lambda v: pa.array(v, pa.float64())),
        st.lists(maybe(st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31))),
                 min_size=n, max_size=n).map(lambda v: pa.array(v, pa.timestamp("us"))),
        st.lists(maybe(st.datetimes(min_value=dt.datetime(2016, 1, 1), max_value=dt.datetime(2017, 3, 1))),
                 min_size=n, max_size=n).map(lambda v: pa.array(v, pa.timestamp("ms"))),
        st.lists(maybe(st.dates()), min_size=n, max_size=n).map(lambda v: pa.array(v, pa.date32())),
        st.lists(maybe(st.booleans()), min_size=n, max_size=n).map(lambda v: pa.array(v, pa.bool_())),
        st.lists(maybe(st.binary(max_size=6)), min_size=n, max_size=n).map(lambda v: pa.array(v, pa.binary())),
        st.lists(maybe(st.sampled_from(["S01", "S02", "ED", "F", "<b>x</b>"])), min_size=n, max_size=n).map(
            lambda v: pa.array(v, pa.string()).dictionary_encode()),
        st.lists(st.lists(st.integers(0, 3), max_size=2), min_size=n, max_size=n).map(
            lambda v: pa.array(v, pa.list_(pa.int64()))),
    )


@st.composite
def extracts(draw) -> dict[str, Table]:
    ex = base_extract(draw(st.sampled_from(["good", "synthetic"])))
    for _ in range(draw(st.integers(1, 6))):
        draw(corruption(ex))
    return ex


# ---------------------------------------------------------------------------------------------
# writing
def _typed_column(values: list[str], kind: str | None) -> pa.Array:
    """Contract columns as their own type when every value converts (like a typed export)."""
    s = pd.Series(values, dtype=object)
    empty = s.str.strip() == ""
    try:
        if kind == "int":
            ints = [None if e else int(v) for v, e in zip(values, empty)]
            return pa.array(ints, pa.int64())
        if kind == "float":
            return pa.array([None if e else float(v) for v, e in zip(values, empty)], pa.float64())
        if kind == "bool":
            low = s.str.strip().str.lower()
            if low.isin(contract.TRUE_STRINGS | contract.FALSE_STRINGS).all():
                return pa.array(low.isin(contract.TRUE_STRINGS).tolist(), pa.bool_())
        if kind in ("datetime", "date"):
            ts = pd.to_datetime(s.where(~empty), format="ISO8601", errors="raise")
            return pa.array(ts, pa.timestamp("ns"))
    except (ValueError, OverflowError, TypeError, pa.ArrowException):
        pass
    return pa.array(values, pa.string())


def write_extract(ex: dict[str, Table], d: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for t in ex.values():
        path = d / f"{t.name}.{t.fmt}"
        if t.fmt == "csv":
            buf = io.StringIO()
            w = csv.writer(buf, delimiter=t.delimiter, lineterminator=t.newline)
            w.writerow(t.header)
            w.writerows(t.rows)
            data = buf.getvalue().encode(t.encoding, errors="replace")
        else:
            cols = []
            for i, name in enumerate(t.header):
                values = [r[i] if i < len(r) else "" for r in t.rows]
                if i in t.arrow and len(t.arrow[i]) == len(t.rows):
                    cols.append(t.arrow[i])
                elif t.typed:
                    cols.append(_typed_column(values, KINDS[t.name].get(name)))
                else:
                    cols.append(pa.array(values, pa.string()))
            sink = io.BytesIO()
            pq.write_table(pa.Table.from_arrays(cols, names=t.header), sink)
            data = sink.getvalue()
        if t.damage:
            if t.damage[0] == "truncate":
                data = data[: int(len(data) * t.damage[1])]
            elif t.damage[0] == "flip" and data:
                i = min(int(len(data) * t.damage[1]), len(data) - 1)
                data = data[:i] + bytes([t.damage[2]]) + data[i + 1:]
            elif t.damage[0] == "empty":
                data = b""
            else:
                data = b" \n\n "
        path.write_bytes(data)


# ---------------------------------------------------------------------------------------------
# checking
def _expected(t: Table, path: Path) -> list[dict]:
    """The file's rows as {column: value} (text for CSV; Python values for Parquet)."""
    if t.fmt == "csv":
        return [dict(zip(t.header, r)) for r in t.rows]
    tab = pq.read_table(path)
    return tab.to_pylist()


def _same(kind: str, held, stored) -> bool:
    """Is the stored value of a contract column exactly what the file held?"""
    try:
        return _same_value(kind, held, stored)
    except (ValueError, TypeError, ArithmeticError):
        return False


def _same_value(kind: str, held, stored) -> bool:
    if isinstance(held, bytes):
        held = held.decode("utf-8")  # Parquet text without the UTF-8 annotation
    missing = held is None or (isinstance(held, float) and math.isnan(held)) or (
        isinstance(held, str) and held.strip() == "")
    if missing:
        return stored is None or pd.isna(stored)
    if isinstance(held, (list, dict)):
        return False  # a nested value can never be accepted as a contract value
    if isinstance(held, str):
        text = held.strip()
        if kind in ("id", "string", "category"):
            return stored == text
        if kind == "bool":
            return bool(stored) == (text.lower() in contract.TRUE_STRINGS) and (
                text.lower() in contract.TRUE_STRINGS | contract.FALSE_STRINGS)
        if kind == "int":
            return Decimal(text) == Decimal(int(stored))
        if kind == "float":
            return float(text) == float(stored)
        if kind == "month" and len(text) == 7:
            text += "-01"
        return pd.Timestamp(text) == pd.Timestamp(stored)
    if kind in ("id", "string", "category"):
        return stored == str(held).strip()
    if kind == "bool":
        return isinstance(held, (bool, np.bool_)) and bool(stored) == bool(held)
    if kind in ("int", "float"):
        return not isinstance(held, bool) and Decimal(held) == Decimal(stored.item() if hasattr(stored, "item") else stored)
    return pd.Timestamp(held) == pd.Timestamp(stored)


def _same_extra(held, stored) -> bool:
    if held is None or (isinstance(held, float) and math.isnan(held)):
        return stored is None or (not isinstance(stored, (list, np.ndarray)) and pd.isna(stored))
    if isinstance(held, list):
        return list(stored) == held
    return held == stored or (isinstance(held, dt.datetime) and pd.Timestamp(held) == pd.Timestamp(stored))


@dataclass
class Outcome:
    """What `ipso validate` / `ipso ingest` did with one input, and every problem found."""

    problems: list[str] = field(default_factory=list)
    exit_code: int | None = None
    message: str = ""  # the contract error (exit 2)
    rules: dict = field(default_factory=dict)  # rows per rule (exit 0)
    rows_read: int = 0
    rows_lost: int = 0  # rows read - accepted - quarantined, summed over files
    values_changed: int = 0


def check_extract(ex: dict[str, Table], workdir: Path) -> list[str]:
    """Run `ipso validate` and `ipso ingest` on `ex`; return every problem found (empty: all good)."""
    return examine(ex, workdir).problems


def examine(ex: dict[str, Table], workdir: Path) -> Outcome:
    """Write `ex` to `workdir`, run `ipso validate` and `ipso ingest` on it (in-process CLI) and
    compare the store with the files."""
    from typer.testing import CliRunner

    from analysis.cli import app

    d, store = workdir / "extract", workdir / "store"
    write_extract(ex, d)
    runner = CliRunner()
    out = Outcome()
    problems = out.problems
    results = {}
    for cmd in (["validate", str(d), "--json"], ["ingest", str(d), "--out", str(store), "--json"]):
        res = runner.invoke(app, cmd)
        results[cmd[0]] = res
        err = res.stderr if res.stderr_bytes is not None else ""
        if res.exception is not None and not isinstance(res.exception, SystemExit):
            import traceback

            tb = "".join(traceback.format_exception(res.exception))
            problems.append(f"{cmd[0]}: crash {type(res.exception).__name__}: {res.exception}\n{tb}")
            continue
        if res.exit_code not in (0, 2) or "Traceback" in err or "Traceback" in res.stdout:
            problems.append(f"{cmd[0]}: exit {res.exit_code}: {err[-2000:]}")
        if res.exit_code == 2 and "Nothing was written" not in " ".join(err.split()):
            problems.append(f"{cmd[0]}: exit 2 without the contract-error message: {err[-500:]}")
    if problems:
        return out
    out.exit_code = results["ingest"].exit_code
    if results["validate"].exit_code != results["ingest"].exit_code:
        problems.append(f"validate exit {results['validate'].exit_code} but ingest exit {out.exit_code}")
        return out
    if out.exit_code != 0:
        out.message = " ".join(results["ingest"].stderr.split())
        return out
    summary = json.loads(results["ingest"].stdout)
    out.rules, out.rows_read = summary["rules"], summary["rows_read"]
    for name, f in summary["files"].items():
        out.rows_lost += abs(f["rows_read"] - f["rows_accepted"] - f["rows_quarantined"])
        if f["rows_read"] != f["rows_accepted"] + f["rows_quarantined"]:
            problems.append(f"{name}: rows read {f['rows_read']} != accepted {f['rows_accepted']} "
                            f"+ quarantined {f['rows_quarantined']}")
    from analysis.store import load_collaborative

    coll = load_collaborative(store)
    q = coll.quarantine
    replaced = set(summary.get("replaced_input_columns", []))
    stored = {"episodes": coll.episodes, "sites": coll.sites, "site_months": coll.site_months}
    for name, t in ex.items():
        f = summary["files"][name]
        qrows = sorted(q.loc[q["file"] == f["file"], "row"].astype(int))
        if len(set(qrows)) != len(qrows) or len(qrows) != f["rows_quarantined"] or (
                qrows and (qrows[0] < 1 or qrows[-1] > f["rows_read"])):
            problems.append(f"{name}: quarantine rows {qrows[:10]} do not match the summary {f}")
        if len(stored[name]) != f["rows_accepted"]:
            out.rows_lost += abs(len(stored[name]) - f["rows_accepted"])
            problems.append(f"{name}: {len(stored[name])} rows stored, {f['rows_accepted']} accepted")
        if not t.exact:
            continue
        held = _expected(t, d / f["file"])
        if len(held) != f["rows_read"]:
            out.rows_lost += abs(len(held) - f["rows_read"])
            problems.append(f"{name}: the file holds {len(held)} rows, {f['rows_read']} were read")
            continue
        accepted = [r for i, r in enumerate(held, start=1) if i not in set(qrows)]
        frame = stored[name].reset_index(drop=True)
        for k, row in enumerate(accepted[: len(frame)]):
            for col, value in row.items():
                kind = KINDS[name].get(col)
                if kind is None:
                    if col in replaced or (name == "episodes" and col in frame.columns
                                           and col in _derived_names()):
                        continue
                    ok = col in frame.columns and _same_extra(value, frame[col].iloc[k])
                else:
                    ok = _same(kind, value, frame[col].iloc[k])
                if not ok:
                    out.values_changed += 1
                    problems.append(f"{name} accepted row {k + 1} column {col!r}: file held {value!r}, "
                                    f"stored {frame[col].iloc[k] if col in frame else '<missing>'!r}")
                    break
    return out


@cache
def _derived_names() -> frozenset[str]:
    from analysis.derive import DERIVED_COLUMNS
    from analysis.store import SITE_COLUMNS

    return frozenset(DERIVED_COLUMNS) | frozenset(SITE_COLUMNS)


def run_check(ex: dict[str, Table]) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="ipso_fuzz_") as tmp:
        return check_extract(ex, Path(tmp))


# ---------------------------------------------------------------------------------------------
# tests
def _known_crashers() -> list[dict[str, Table]]:
    """The four crash causes and the silent change found by the first fuzz campaign (459 inputs)."""
    out = []

    def with_value(table: str, row: int, column: str, value: str, **changes) -> dict[str, Table]:
        ex = base_extract("good")
        t = ex[table]
        t.rows[row][t.header.index(column)] = value
        for k, v in changes.items():
            setattr(t, k, v)
        return ex

    out.append(with_value("sites", 0, "beds", "9.3e18"))  # int64 overflow -> pandera SchemaErrors
    out.append(with_value("site_months", 1, "admissions", "1e300"))
    out.append(with_value("site_months", 1, "admissions", "9007199254740993"))  # stored as ...992
    stay = with_value("episodes", 0, "arrival_time", "1700-01-01T00:00:00")  # OverflowError
    stay["episodes"].rows[0][stay["episodes"].header.index("time_zero")] = "1700-01-01T00:10:00"
    out.append(stay)
    ts = base_extract("good")  # Parquet timestamp[us] in 2500 -> OutOfBoundsDatetime
    t = ts["episodes"]
    t.fmt, t.typed = "parquet", True
    t.arrow[t.header.index("death_time")] = pa.array(
        [dt.datetime(2500, 1, 1)] + [None] * (len(t.rows) - 1), pa.timestamp("us"))
    out.append(ts)
    cols = base_extract("good")  # quarantine columns collide with input columns -> InvalidIndexError
    for name in ("episodes", "site_months"):
        cols[name].header.append("key")
        for row in cols[name].rows:
            row.append("user key")
    cols["episodes"].rows[0][cols["episodes"].header.index("age_years")] = "99"
    cols["site_months"].rows[0][cols["site_months"].header.index("admissions")] = "-1"
    out.append(cols)
    return out


def _with_examples(test):
    for ex in _known_crashers():
        test = example(ex=ex)(test)
    return test


@settings(max_examples=45, deadline=None, derandomize=True, print_blob=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@_with_examples
@given(ex=extracts())
def test_corrupted_extracts_never_crash_lose_rows_or_change_values(ex):
    assert run_check(ex) == []


@pytest.mark.parametrize("which", ["good", "synthetic"])
@pytest.mark.parametrize("fmt", ["csv", "parquet", "parquet_typed"])
def test_clean_extracts_round_trip(which, fmt):
    """The checker itself: a clean extract in each format is accepted whole and round-trips."""
    ex = base_extract(which)
    for t in ex.values():
        t.fmt, t.typed = ("csv", False) if fmt == "csv" else ("parquet", fmt == "parquet_typed")
    assert run_check(ex) == []


def test_checker_sees_a_changed_value():
    """The round-trip check is not vacuous: a store whose value differs from the file is caught."""
    held = base_extract("good")
    changed = {k: replace(v, rows=[list(r) for r in v.rows]) for k, v in held.items()}
    changed["sites"].rows[0][changed["sites"].header.index("beds")] = "321"
    with tempfile.TemporaryDirectory(prefix="ipso_fuzz_") as tmp:
        tmp = Path(tmp)
        assert check_extract(changed, tmp) == []
        shutil.rmtree(tmp / "extract")
        write_extract(held, tmp / "extract")  # the store holds 321 beds, the file now 320
        problems = _recheck_store(held, tmp)
    assert any("'beds'" in p and "320" in p for p in problems), problems


def _recheck_store(ex: dict[str, Table], workdir: Path) -> list[str]:
    """check_extract's comparison against an existing store (ingest skipped by reusing it)."""
    import analysis.store as store_mod

    real = store_mod.ingest
    keep = workdir / "store"
    saved = workdir / "saved_store"
    shutil.copytree(keep, saved)

    def fake_ingest(directory, out, settings=None):
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(saved, out)
        return store_mod.load_collaborative(out)

    store_mod.ingest = fake_ingest
    try:
        return check_extract(ex, workdir)
    finally:
        store_mod.ingest = real

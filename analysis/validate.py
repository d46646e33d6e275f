"""Validate an IPSO extract against the data contract, with row-level quarantine.

Two kinds of problem:

* **Fatal** (:class:`DataContractError`, CLI exit status 2, nothing written): a file that is missing,
  unreadable or in the wrong format, a missing contract column, or a column in which every non-empty
  value fails to parse (the column is of the wrong type).
* **Row problems**: the row is quarantined with *every* rule it fails (codes in :data:`RULES`); the
  other rows are accepted. Rows read = rows accepted + rows quarantined, per file.

CSV files are read with every column as a string (nothing is lost), then each column is coerced in
one vectorised pass and failures are flagged per row. Parquet columns that already carry the
contract type are used as they are; any other column goes through the same string path.

Policies (documented in ``data/README.md``):

* Duplicates (``episode_id``; ``site_id`` in sites; ``(site_id, month)`` in site_months): the first
  occurrence in file order is kept (if otherwise valid); every later copy is quarantined with a detail
  naming the row it duplicates.
* Cascade: sites are validated first. An episode or site-month whose ``site_id`` is not among the
  *accepted* sites fails ``unknown_site_id`` (the detail says whether the site was absent or quarantined).
* Timestamps are naive local ISO 8601 date-times (``YYYY-MM-DDTHH:MM[:SS[.fff]]``, ``T`` or space).
  A value with a UTC offset / ``Z`` or a bare date is ``mixed_timestamp_format``; anything else that is
  not a valid ISO 8601 date-time is ``unparseable_timestamp``. Leading/trailing whitespace is ignored.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from . import contract
from .contract import Field

#: Every row-level rule code with its meaning (the order is the order of ``reasons``).
RULES: dict[str, str] = {
    "missing_required": "a required value is empty",
    "non_numeric": "a numeric value is not a finite number",
    "non_integer": "a count is not a whole number",
    "out_of_range": "a number outside the contract range (age 0-21 y, ccc_count 0-20, icu_days >= 0, "
    "wave >= 1, beds >= 1, admissions >= 0)",
    "unknown_category": "a category not in the contract's allowed values (onset_setting, sex, region)",
    "invalid_bool": "a flag that is not one of true/false, t/f, 1/0, yes/no, y/n (any case)",
    "unparseable_timestamp": "a date-time that is not a valid ISO 8601 date-time",
    "mixed_timestamp_format": "an ISO 8601 value in another form than the contract's naive local "
    "date-time (UTC offset or Z, or a bare date)",
    "unparseable_date": "a date (go_live) or month (month) that is not YYYY-MM-DD / YYYY-MM or not a "
    "first-of-month date",
    "duplicate_episode_id": "episode_id already used by an earlier row (the first is kept)",
    "duplicate_site_id": "site_id already used by an earlier row of sites (the first is kept)",
    "duplicate_site_month": "(site_id, month) already used by an earlier row (the first is kept)",
    "unknown_site_id": "site_id not among the accepted sites (absent from sites, or quarantined there)",
    "discharge_before_arrival": "discharge_time earlier than arrival_time",
    "t0_before_arrival": "time_zero earlier than arrival_time",
    "t0_after_discharge": "time_zero later than discharge_time",
    "death_after_discharge": "death_time later than discharge_time (death_time is the in-hospital "
    "death time)",
    "death_before_t0": "death_time earlier than time_zero",
    "bolus_outside_stay": "first_bolus_time before arrival_time or after discharge_time",
    "antibiotic_outside_stay": "first_antibiotic_time before arrival_time or after discharge_time",
    "icu_days_exceed_los": "icu_days larger than the length of stay (arrival to discharge) "
    "plus 1 minute of rounding allowance",
}

#: Allowance for rounding of ``icu_days`` compared with the length of stay (days = 1 minute).
ICU_DAYS_ROUNDING_DAYS = 1.0 / 1440.0

#: Order in which tables are validated (sites first: the others refer to them).
TABLE_ORDER = ("sites", "site_months", "episodes")

#: A column is fatal (wrong type) when every non-empty value fails to parse and there are at least
#: this many non-empty values (or every row of the file is affected).
FATAL_MIN_VALUES = 10

_NAIVE_DATETIME = r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,9})?)?"
_AWARE_DATETIME = _NAIVE_DATETIME + r" ?(Z|z|[+-][0-9]{2}(:?[0-9]{2})?)"
_DATE = r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
_MONTH = r"[0-9]{4}-[0-9]{2}"
_STRING = pd.ArrowDtype(pa.string())


class DataContractError(ValueError):
    """A fatal problem with an extract: names the file and (when known) the column."""

    def __init__(self, file: str | Path, column: str | None, message: str):
        self.file = str(file)
        self.column = column
        self.message = message
        where = f"{self.file}" + (f", column '{column}'" if column else "")
        super().__init__(f"{where}: {message}")


# ---------------------------------------------------------------------------------------------
# pandera schemas (built from the contract; the accepted frames always satisfy them)
def schema(table: str):
    """The pandera ``DataFrameSchema`` of an accepted (typed) table, built from :mod:`analysis.contract`."""
    import pandera.pandas as pa_

    dtypes = {
        # str columns are checked as object dtype (pandera's `str` check maps every element in Python)
        "id": object, "string": object, "category": object, "bool": bool, "int": "int64", "float": "float64",
        "datetime": "datetime64[ns]", "date": "datetime64[ns]", "month": "datetime64[ns]",
    }
    columns = {}
    for f in contract.TABLES[table]:
        checks = []
        if f.allowed is not None:
            checks.append(pa_.Check.isin(list(f.allowed)))
        if f.minimum is not None:
            checks.append(pa_.Check.ge(f.minimum))
        if f.maximum is not None:
            checks.append(pa_.Check.le(f.maximum))
        if f.kind == "month":
            checks.append(pa_.Check(lambda s: s.dt.day == 1, element_wise=False, name="first_of_month"))
        unique = (table == "episodes" and f.name == "episode_id") or (
            table == "sites" and f.name == "site_id"
        )
        columns[f.name] = pa_.Column(
            dtypes[f.kind], checks=checks, nullable=not f.required, unique=unique, coerce=False
        )
    unique_cols = ["site_id", "month"] if table == "site_months" else None
    return pa_.DataFrameSchema(columns, strict=False, unique=unique_cols, name=table)


# ---------------------------------------------------------------------------------------------
# reading
def locate_extract(directory: str | Path) -> dict[str, Path]:
    """Paths of the three tables of an extract directory (CSV or Parquet for each)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataContractError(directory, None, "extract directory does not exist")
    found: dict[str, Path] = {}
    for table in TABLE_ORDER:
        candidates = [directory / f"{table}.csv", directory / f"{table}.parquet"]
        present = [p for p in candidates if p.exists()]
        if len(present) > 1:
            raise DataContractError(
                directory, None, f"both {table}.csv and {table}.parquet present; keep only one"
            )
        if not present:
            raise DataContractError(
                f"{table}.csv", None, f"missing from {directory}: expected {table}.csv or {table}.parquet"
            )
        found[table] = present[0]
    return found


def read_table(path: str | Path) -> pd.DataFrame:
    """Read one table as it is stored: CSV with every column as a string (Arrow-backed), Parquet typed.

    Raises :class:`DataContractError` when the file cannot be read.
    """
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    path = Path(path)
    try:
        if path.suffix == ".parquet":
            tab = pq.read_table(path)
        elif path.suffix == ".csv":
            with open(path, "rb") as fh:
                first = fh.readline()
            if not first.strip():
                raise DataContractError(path.name, None, "empty file (no header row)")
            tab = pacsv.read_csv(
                path,
                parse_options=pacsv.ParseOptions(newlines_in_values=True),
                convert_options=pacsv.ConvertOptions(
                    column_types=_all_strings(path), strings_can_be_null=False,
                    quoted_strings_can_be_null=False,
                ),
            )
        else:
            raise DataContractError(path.name, None, "unsupported format (expected .csv or .parquet)")
    except DataContractError:
        raise
    except (pa.ArrowException, OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataContractError(path.name, None, f"unreadable: {_first_line(exc)}") from exc
    names = tab.column_names
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DataContractError(path.name, dupes[0], "column appears more than once in the header")
    return tab.to_pandas(types_mapper={pa.string(): _STRING, pa.large_string(): _STRING}.get)


def _all_strings(path: Path) -> dict[str, pa.DataType]:
    import csv

    with open(path, newline="", encoding="utf-8-sig", errors="replace") as fh:
        header = next(csv.reader(fh), [])
    return {name: pa.string() for name in header}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------
# per-row issue bookkeeping
@dataclass
class _Issue:
    code: str
    mask: np.ndarray
    detail: Callable[[np.ndarray], pd.Series]


@dataclass
class _Table:
    name: str
    file: str
    raw: pd.DataFrame
    typed: dict[str, pd.Series] = field(default_factory=dict)
    empty: dict[str, np.ndarray] = field(default_factory=dict)
    issues: list[_Issue] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.raw)

    def flag(self, code: str, mask, detail: Callable[[np.ndarray], pd.Series]) -> None:
        mask = np.asarray(mask, dtype=bool)
        if mask.any():
            self.issues.append(_Issue(code, mask, detail))

    def bad(self) -> np.ndarray:
        out = np.zeros(self.n, dtype=bool)
        for issue in self.issues:
            out |= issue.mask
        return out


def _show(values: pd.Series) -> pd.Series:
    """repr-like display of raw values for details ('' for missing)."""
    missing = values.isna().to_numpy()
    shown = values.astype(object).map(repr_str)
    return shown.where(~missing, "''")


def repr_str(value: object) -> str:
    return repr(str(value))


def _value_detail(t: _Table, column: str, message: str) -> Callable[[np.ndarray], pd.Series]:
    def detail(idx: np.ndarray) -> pd.Series:
        shown = _show(t.raw[column].iloc[idx])
        return (column + "=" + shown + " " + message).reset_index(drop=True)

    return detail


def _const_detail(text: str) -> Callable[[np.ndarray], pd.Series]:
    return lambda idx: pd.Series([text] * len(idx), dtype=object)


# ---------------------------------------------------------------------------------------------
# coercion per kind (vectorised)
def _as_strings(s: pd.Series) -> pd.Series:
    """Any column as Arrow strings with '' for missing and surrounding whitespace removed."""
    if not isinstance(s.dtype, pd.ArrowDtype) or not pa.types.is_string(s.dtype.pyarrow_dtype):
        obj = s.astype(object)
        obj = obj.where(obj.notna(), "")
        s = obj.map(str).astype(_STRING) if len(obj) else obj.astype(_STRING)
    return s.fillna("").str.strip()


def _np_bool(s: pd.Series) -> np.ndarray:
    return np.asarray(s.fillna(False), dtype=bool)


def _coerce_column(t: _Table, f: Field) -> None:
    s = t.raw[f.name]
    kind = f.kind
    typed: pd.Series | None = None
    failed: np.ndarray | None = None

    if kind in ("datetime", "date", "month") and pd.api.types.is_datetime64_dtype(s.dtype):
        typed = s.astype("datetime64[ns]")
        empty = typed.isna().to_numpy()
        if kind == "month":
            failed = _np_bool(typed.dt.day != 1) & ~empty
            if failed.any():
                t.flag("unparseable_date", failed, _value_detail(t, f.name, "is not a first-of-month date"))
    elif kind == "month" and isinstance(s.dtype, pd.PeriodDtype):
        typed = s.dt.to_timestamp().astype("datetime64[ns]")
        empty = typed.isna().to_numpy()
    elif kind == "bool" and pd.api.types.is_bool_dtype(s.dtype) and not s.isna().any():
        typed = s.astype(bool)
        empty = np.zeros(len(s), dtype=bool)
    elif kind in ("int", "float") and pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype):
        num = pd.to_numeric(s, errors="coerce").astype("float64")
        empty = num.isna().to_numpy()
        typed, failed = _check_number(t, f, num, empty)
    else:
        strings = _as_strings(s)
        empty = (strings == "").to_numpy(dtype=bool)
        if kind in ("id", "string"):
            typed = strings.astype(object)
        elif kind == "category":
            ok = _np_bool(strings.isin(list(f.allowed or ())))
            failed = ~ok & ~empty
            t.flag("unknown_category", failed,
                   _value_detail(t, f.name, f"not one of {'/'.join(f.allowed or ())}"))
            typed = strings.astype(object).where(ok | empty, None)
        elif kind == "bool":
            low = strings.str.lower()
            is_true = _np_bool(low.isin(list(contract.TRUE_STRINGS)))
            is_false = _np_bool(low.isin(list(contract.FALSE_STRINGS)))
            failed = ~(is_true | is_false) & ~empty
            t.flag("invalid_bool", failed, _value_detail(t, f.name, "is not a boolean"))
            typed = pd.Series(is_true, index=s.index)
        elif kind in ("int", "float"):
            num = pd.to_numeric(strings.where(~empty, None), errors="coerce").astype("float64")
            unparsed = num.isna().to_numpy() & ~empty
            t.flag("non_numeric", unparsed, _value_detail(t, f.name, "is not a number"))
            typed, failed = _check_number(t, f, num, empty | unparsed)
            failed = failed | unparsed
        elif kind == "datetime":
            typed, failed = _parse_datetime(t, f, strings, empty)
        elif kind in ("date", "month"):
            typed, failed = _parse_date(t, f, strings, empty)
        else:  # pragma: no cover
            raise AssertionError(kind)

    if f.required:
        t.flag("missing_required", empty, _const_detail(f"{f.name} is empty"))
    if failed is not None:
        nonempty = int((~empty).sum())
        if nonempty and int(failed.sum()) == nonempty and nonempty >= min(FATAL_MIN_VALUES, t.n):
            example = t.raw[f.name][failed].iloc[0]
            allowed = f"; allowed: {', '.join(f.allowed)}" if f.allowed else ""
            raise DataContractError(
                t.file, f.name,
                f"no value can be read as {kind} (e.g. {str(example)!r}{allowed}); wrong column "
                f"type or coding ({s.dtype})",
            )
    t.typed[f.name] = typed
    t.empty[f.name] = empty


def _check_number(t: _Table, f: Field, num: pd.Series, skip: np.ndarray):
    values = num.to_numpy(dtype="float64", na_value=np.nan)
    finite = np.isfinite(values)
    nonfinite = ~finite & ~skip
    t.flag("non_numeric", nonfinite, _value_detail(t, f.name, "is not a finite number"))
    failed = nonfinite.copy()
    if f.kind == "int":
        frac = finite & (np.floor(np.where(finite, values, 0)) != np.where(finite, values, 0))
        t.flag("non_integer", frac, _value_detail(t, f.name, "is not a whole number"))
        failed |= frac
    low = f.minimum if f.minimum is not None else -np.inf
    high = f.maximum if f.maximum is not None else np.inf
    with np.errstate(invalid="ignore"):
        out = finite & ((values < low) | (values > high))
    if f.maximum is None:
        rng = f"below the minimum {f.minimum:g}"
    elif f.minimum is None:
        rng = f"above the maximum {f.maximum:g}"
    else:
        rng = f"outside [{f.minimum:g}, {f.maximum:g}]"
    t.flag("out_of_range", out, _value_detail(t, f.name, f"is {rng}"))
    typed = pd.Series(values, index=num.index)
    return typed, failed


def _parse_datetime(t: _Table, f: Field, strings: pd.Series, empty: np.ndarray):
    naive = _np_bool(strings.str.fullmatch(_NAIVE_DATETIME))
    other_iso = np.zeros(len(strings), dtype=bool)
    rest = ~naive & ~empty  # only these can be in another ISO form (usually none: skip the regexes)
    if rest.any():
        sub = strings[rest]
        other_iso[rest] = _np_bool(sub.str.fullmatch(_AWARE_DATETIME) | sub.str.fullmatch(_DATE))
    parsed = pd.to_datetime(strings.where(naive, None), format="ISO8601", errors="coerce")
    parsed = parsed.astype("datetime64[ns]")
    ok = parsed.notna().to_numpy()
    # a tz-aware or date-only value that is otherwise a real date-time -> mixed format
    mixed = other_iso & ~empty
    if mixed.any():
        check = pd.to_datetime(strings.where(mixed, None).str.slice(0, 10), format="%Y-%m-%d", errors="coerce")
        mixed &= check.notna().to_numpy()
    bad = ~ok & ~empty & ~mixed
    t.flag("mixed_timestamp_format", mixed,
           _value_detail(t, f.name, "is not a naive local date-time (offset/Z or date only)"))
    t.flag("unparseable_timestamp", bad, _value_detail(t, f.name, "is not an ISO 8601 date-time"))
    return parsed, bad | mixed


def _parse_date(t: _Table, f: Field, strings: pd.Series, empty: np.ndarray):
    if f.kind == "date":
        shaped = _np_bool(strings.str.fullmatch(_DATE))
        parsed = pd.to_datetime(strings.where(shaped, None), format="%Y-%m-%d", errors="coerce")
        expect = "is not a YYYY-MM-DD date"
    else:
        as_month = _np_bool(strings.str.fullmatch(_MONTH))
        as_date = _np_bool(strings.str.fullmatch(_DATE))
        text = strings.where(as_month, strings + "").where(~as_month, strings + "-01")
        parsed = pd.to_datetime(text.where(as_month | as_date, None), format="%Y-%m-%d", errors="coerce")
        parsed = parsed.where(parsed.dt.day == 1)
        expect = "is not YYYY-MM or a first-of-month YYYY-MM-DD"
    parsed = parsed.astype("datetime64[ns]")
    bad = parsed.isna().to_numpy() & ~empty
    t.flag("unparseable_date", bad, _value_detail(t, f.name, expect))
    return parsed, bad


# ---------------------------------------------------------------------------------------------
# table-level rules
def _duplicates(t: _Table, keys: list[str], code: str) -> None:
    frame = pd.DataFrame({k: t.typed[k] for k in keys})
    usable = frame.notna().all(axis=1).to_numpy()
    for k in keys:
        usable &= ~t.empty[k]
    dup = frame.duplicated(keep="first").to_numpy() & usable
    if not dup.any():
        return
    rows = pd.Series(np.arange(1, t.n + 1))[usable]
    first_row = rows.groupby([frame[k][usable] for k in keys], sort=False).transform("first")
    first_row = first_row.reindex(range(t.n))

    def detail(idx: np.ndarray) -> pd.Series:
        shown = pd.DataFrame({k: _as_strings(t.raw[k].iloc[idx]).astype(object) for k in keys})
        shown = shown[keys[0]] if len(keys) == 1 else shown.agg("|".join, axis=1)
        first = first_row.iloc[idx].astype("int64").astype(str)
        return ("+".join(keys) + "=" + shown.map(repr) + " duplicates row "
                + first.to_numpy(dtype=object)).reset_index(drop=True)

    t.flag(code, dup, detail)


def _unknown_sites(t: _Table, sites: _Table, accepted_sites: set[str]) -> None:
    ids = t.typed["site_id"]
    known = _np_bool(ids.isin(accepted_sites))
    unknown = ~known & ~t.empty["site_id"]
    if not unknown.any():
        return
    quarantined = set(sites.typed["site_id"][sites.bad()]) - accepted_sites

    def detail(idx: np.ndarray) -> pd.Series:
        vals = ids.iloc[idx]
        why = np.where(vals.isin(quarantined), f"was quarantined in {sites.file}", f"is not in {sites.file}")
        return ("site_id=" + vals.map(repr) + " " + pd.Series(why, index=vals.index)).reset_index(drop=True)

    t.flag("unknown_site_id", unknown, detail)


def _order_rule(t: _Table, code: str, later: str, earlier: str, message: str) -> None:
    a, b = t.typed[later], t.typed[earlier]
    mask = _np_bool(a < b)

    def detail(idx: np.ndarray) -> pd.Series:
        return (later + "=" + _show(t.raw[later].iloc[idx]) + f" {message} " + earlier + "="
                + _show(t.raw[earlier].iloc[idx])).reset_index(drop=True)

    t.flag(code, mask, detail)


def _episode_rules(t: _Table) -> None:
    ts = t.typed
    _order_rule(t, "discharge_before_arrival", "discharge_time", "arrival_time", "is before")
    _order_rule(t, "t0_before_arrival", "time_zero", "arrival_time", "is before")
    _order_rule(t, "t0_after_discharge", "discharge_time", "time_zero", "is before")
    _order_rule(t, "death_after_discharge", "discharge_time", "death_time", "is before")
    _order_rule(t, "death_before_t0", "death_time", "time_zero", "is before")
    for code, col in (("bolus_outside_stay", "first_bolus_time"),
                      ("antibiotic_outside_stay", "first_antibiotic_time")):
        mask = _np_bool((ts[col] < ts["arrival_time"]) | (ts[col] > ts["discharge_time"]))
        t.flag(code, mask, _value_detail(t, col, "is outside arrival_time..discharge_time"))
    los = (ts["discharge_time"] - ts["arrival_time"]) / np.timedelta64(1, "D")
    # (a negative stay is already discharge_before_arrival)
    mask = _np_bool((ts["icu_days"] > los + ICU_DAYS_ROUNDING_DAYS) & (los >= 0))

    def detail(idx: np.ndarray) -> pd.Series:
        return ("icu_days=" + _show(t.raw["icu_days"].iloc[idx]) + " exceeds length of stay "
                + los.iloc[idx].round(3).astype(str) + " days").reset_index(drop=True)

    t.flag("icu_days_exceed_los", mask, detail)


# ---------------------------------------------------------------------------------------------
# results
@dataclass
class ValidationResult:
    """Accepted typed tables, the quarantine and a reconciled summary.

    Attributes
    ----------
    episodes, sites, site_months:
        Accepted rows, typed as the contract (datetime64[ns] timestamps, bool flags, int64 counts,
        float64 measures, str ids/categories; ``month`` and ``go_live`` as Timestamps). Extra columns
        of the input are kept after the contract columns.
    quarantine:
        One row per rejected input row: ``file``, ``row`` (1-based data row, header excluded),
        ``key``, ``reasons`` (';'-joined codes of :data:`RULES`), ``details`` and the raw values as strings.
    summary:
        Rows read / accepted / quarantined per file with counts per rule, totals, hashes.
    """

    episodes: pd.DataFrame
    sites: pd.DataFrame
    site_months: pd.DataFrame
    quarantine: pd.DataFrame
    summary: dict

    @property
    def data_hash(self) -> str:
        return self.summary["data_hash"]

    def summary_frame(self) -> pd.DataFrame:
        """One row per file: rows read, accepted, quarantined."""
        rows = [
            {"table": k, "file": v["file"], "rows_read": v["rows_read"],
             "rows_accepted": v["rows_accepted"], "rows_quarantined": v["rows_quarantined"]}
            for k, v in self.summary["files"].items()
        ]
        return pd.DataFrame(rows)

    def rule_counts(self) -> pd.DataFrame:
        """Rows failing each rule, per file (a row counts once per rule)."""
        rows = [{"table": k, "rule": r, "rows": c}
                for k, v in self.summary["files"].items() for r, c in v["rules"].items()]
        return pd.DataFrame(rows, columns=["table", "rule", "rows"])


KEY_COLUMNS = {"episodes": ["episode_id"], "sites": ["site_id"], "site_months": ["site_id", "month"]}


def _check_columns(t: _Table) -> list[str]:
    names = [str(c) for c in t.raw.columns]
    missing = [f.name for f in contract.TABLES[t.name] if f.name not in names]
    if missing:
        raise DataContractError(
            t.file, missing[0],
            f"missing contract column(s) {', '.join(missing)} (found: {', '.join(names) or 'none'})",
        )
    known = set(contract.field_names(t.name))
    return [c for c in names if c not in known]


def _quarantine_frame(t: _Table, bad: np.ndarray) -> pd.DataFrame:
    idx = np.flatnonzero(bad)
    n = len(idx)
    reasons = pd.Series([""] * n, dtype=object)
    details = pd.Series([""] * n, dtype=object)
    by_code: dict[str, list[_Issue]] = {}
    for issue in t.issues:
        by_code.setdefault(issue.code, []).append(issue)
    pos = np.full(t.n, -1)
    pos[idx] = np.arange(n)
    for code in RULES:
        for issue in by_code.get(code, []):
            rows = np.flatnonzero(issue.mask)
            where = pos[rows]
            text = issue.detail(rows).to_numpy(dtype=object)
            old = details.to_numpy(dtype=object)[where]
            sep = np.where(old == "", "", "; ").astype(object)
            details.iloc[where] = old + sep + text
        masks = [i.mask for i in by_code.get(code, [])]
        if masks:
            hit = np.logical_or.reduce(masks)[idx]
            cur = reasons.to_numpy(dtype=object)
            add = np.where(hit, np.where(cur == "", code, ";" + code), "").astype(object)
            reasons = pd.Series(cur + add, dtype=object)
    raw = t.raw.iloc[idx].reset_index(drop=True)
    raw_str = pd.DataFrame({c: _as_strings(raw[c]).astype(object) for c in raw.columns})
    keys = KEY_COLUMNS[t.name]
    key = raw_str[keys[0]] if len(keys) == 1 else raw_str[keys].agg("|".join, axis=1) if n else raw_str[keys[0]]
    head = pd.DataFrame({
        "file": [t.file] * n, "row": idx + 1, "key": key.to_numpy(dtype=object),
        "reasons": reasons.to_numpy(), "details": details.to_numpy(),
    })
    return pd.concat([head, raw_str], axis=1)


def _accepted(t: _Table, bad: np.ndarray, extras: list[str]) -> pd.DataFrame:
    keep = ~bad
    out = {}
    for f in contract.TABLES[t.name]:
        col = t.typed[f.name][keep].reset_index(drop=True)
        if f.kind == "int":
            col = col.astype("int64")
        elif f.kind == "bool":
            col = col.astype(bool)
        elif f.kind in ("id", "string", "category"):
            col = col.astype(object)
        out[f.name] = col
    for c in extras:
        out[c] = t.raw[c][keep].reset_index(drop=True)
    return pd.DataFrame(out)


def frame_hash(frames: Iterable[tuple[str, pd.DataFrame]]) -> str:
    """Stable SHA-256 of the contract columns of typed tables (independent of file format and order of
    extra columns)."""
    h = hashlib.sha256()
    for name, df in frames:
        cols = contract.field_names(name)
        h.update(f"{name}:{len(df)}:{','.join(cols)}".encode())
        for c in cols:
            s = df[c]
            if pd.api.types.is_datetime64_any_dtype(s.dtype):
                s = s.astype("datetime64[ns]")
            elif isinstance(s.dtype, (pd.StringDtype, pd.ArrowDtype, pd.CategoricalDtype)):
                s = s.astype(object)
            h.update(pd.util.hash_pandas_object(s, index=False).to_numpy().tobytes())
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def validate_frames(
    episodes: pd.DataFrame,
    sites: pd.DataFrame,
    site_months: pd.DataFrame,
    files: dict[str, str] | None = None,
) -> ValidationResult:
    """Validate three in-memory tables (raw strings or already typed) against the contract.

    `files` maps table name to the file name used in messages and the quarantine (default
    ``<table>.csv``). Raises :class:`DataContractError` on fatal problems.
    """
    files = {k: (files or {}).get(k, f"{k}.csv") for k in TABLE_ORDER}
    raw = {"episodes": episodes, "sites": sites, "site_months": site_months}
    tables: dict[str, _Table] = {}
    extras: dict[str, list[str]] = {}
    for name in TABLE_ORDER:
        df = raw[name].reset_index(drop=True)
        df.columns = [str(c) for c in df.columns]
        t = _Table(name, files[name], df)
        extras[name] = _check_columns(t)
        tables[name] = t
    for name in TABLE_ORDER:
        t = tables[name]
        for f in contract.TABLES[name]:
            _coerce_column(t, f)
    sites_t = tables["sites"]
    _duplicates(sites_t, ["site_id"], "duplicate_site_id")
    accepted_sites = set(sites_t.typed["site_id"][~sites_t.bad()])
    sm = tables["site_months"]
    _duplicates(sm, ["site_id", "month"], "duplicate_site_month")
    _unknown_sites(sm, sites_t, accepted_sites)
    ep = tables["episodes"]
    _duplicates(ep, ["episode_id"], "duplicate_episode_id")
    _unknown_sites(ep, sites_t, accepted_sites)
    _episode_rules(ep)

    accepted: dict[str, pd.DataFrame] = {}
    quarantine_parts = []
    file_summaries: dict[str, dict] = {}
    totals: dict[str, int] = {}
    for name in TABLE_ORDER:
        t = tables[name]
        bad = t.bad()
        accepted[name] = _accepted(t, bad, extras[name])
        if bad.any():
            quarantine_parts.append(_quarantine_frame(t, bad))
        rules: dict[str, int] = {}
        for code in RULES:
            masks = [i.mask for i in t.issues if i.code == code]
            if masks:
                rules[code] = int(np.logical_or.reduce(masks).sum())
                totals[code] = totals.get(code, 0) + rules[code]
        file_summaries[name] = {
            "file": t.file, "rows_read": t.n, "rows_accepted": int((~bad).sum()),
            "rows_quarantined": int(bad.sum()), "rules": rules, "extra_columns": extras[name],
        }
        assert file_summaries[name]["rows_read"] == (
            file_summaries[name]["rows_accepted"] + file_summaries[name]["rows_quarantined"]
        )
    for name in TABLE_ORDER:  # the accepted frames satisfy the contract schemas by construction
        schema(name).validate(accepted[name], lazy=True)
    quarantine = (
        pd.concat(quarantine_parts, ignore_index=True) if quarantine_parts
        else pd.DataFrame(columns=["file", "row", "key", "reasons", "details"])
    )
    summary = {
        "files": file_summaries,
        "rows_read": sum(v["rows_read"] for v in file_summaries.values()),
        "rows_accepted": sum(v["rows_accepted"] for v in file_summaries.values()),
        "rows_quarantined": sum(v["rows_quarantined"] for v in file_summaries.values()),
        "rules": totals,
        "data_hash": frame_hash((k, accepted[k]) for k in TABLE_ORDER),
    }
    return ValidationResult(accepted["episodes"], accepted["sites"], accepted["site_months"],
                            quarantine, summary)


def validate_collaborative(directory: str | Path) -> ValidationResult:
    """Read and validate an extract directory (``episodes``, ``sites``, ``site_months`` as CSV or Parquet).

    Raises :class:`DataContractError` (naming file and column) on fatal problems.
    """
    directory = Path(directory)
    paths = locate_extract(directory)
    frames = {name: read_table(p) for name, p in paths.items()}
    result = validate_frames(
        frames["episodes"], frames["sites"], frames["site_months"],
        files={k: p.name for k, p in paths.items()},
    )
    result.summary["source"] = str(directory)
    result.summary["input_sha256"] = {p.name: file_sha256(p) for p in paths.values()}
    return result


# ---------------------------------------------------------------------------------------------
# CLI glue
def print_summary(summary: dict) -> None:
    """Human-readable summary on stderr (rich table)."""
    from rich.table import Table

    from .console import console

    table = Table(title="Validation summary")
    for col in ("file", "read", "accepted", "quarantined", "rules"):
        table.add_column(col)
    for v in summary["files"].values():
        rules = ", ".join(f"{k}: {c}" for k, c in v["rules"].items()) or "-"
        table.add_row(v["file"], str(v["rows_read"]), str(v["rows_accepted"]),
                      str(v["rows_quarantined"]), rules)
    console.print(table)


def fail(exc: DataContractError, directory: Path | None = None) -> None:
    """Report a fatal contract error on stderr and exit with status 2 (nothing is written)."""
    import typer

    from .console import console

    where = f" in {directory}" if directory is not None else ""
    message = str(exc).rstrip(".")
    console.print(f"[bold red]Data contract error{where}:[/] {message}. Nothing was written.",
                  markup=True, highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def run_validate_command(directory: Path, quarantine: Path | None, json_out: bool) -> None:
    """``ipso validate DIR [--quarantine FILE] [--json]``."""
    from .console import print_json

    try:
        result = validate_collaborative(directory)
    except DataContractError as exc:
        fail(exc, directory)
        return
    if quarantine is not None:
        quarantine = Path(quarantine)
        quarantine.parent.mkdir(parents=True, exist_ok=True)
        result.quarantine.to_csv(quarantine, index=False)
    if json_out:
        print_json(result.summary)
    else:
        print_summary(result.summary)

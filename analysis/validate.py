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

import datetime as _dt
import hashlib
import re
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
    "wave >= 1, beds >= 1, admissions >= 0), or a count beyond 2^53 (it could not be stored exactly)",
    "unknown_category": "a category not in the contract's allowed values (onset_setting, sex, region)",
    "invalid_bool": "a flag that is not one of true/false, t/f, 1/0, yes/no, y/n (any case)",
    "invalid_site_id": f"a site_id in sites that is not {contract.SITE_ID_RULE}",
    "unparseable_timestamp": "a date-time that is not a valid ISO 8601 date-time",
    "mixed_timestamp_format": "an ISO 8601 value in another form than the contract's naive local "
    "date-time (UTC offset or Z, or a bare date)",
    "unparseable_date": "a date (go_live) or month (month) that is not YYYY-MM-DD / YYYY-MM or not a "
    "first-of-month date",
    "date_out_of_range": f"a real date or date-time outside the supported range {contract.DATE_RANGE_TEXT}",
    "duplicate_episode_id": "episode_id already used by an earlier row (the first is kept)",
    "duplicate_site_id": "site_id already used by an earlier row of sites (the first is kept)",
    "duplicate_site_month": "(site_id, month) already used by an earlier row (the first is kept)",
    "unknown_site_id": "site_id not among the accepted sites (absent from sites, or quarantined there)",
    "discharge_before_arrival": "discharge_time earlier than arrival_time",
    "stay_too_long": f"discharge_time more than {contract.MAX_STAY_DAYS:,} days (292 years) after "
    "arrival_time (longer than any duration that can be stored)",
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
        if f.kind == "int":
            checks.append(pa_.Check.in_range(-contract.MAX_EXACT_INTEGER, contract.MAX_EXACT_INTEGER))
        if f.pattern is not None:
            checks.append(pa_.Check(lambda s, p=f.pattern: pd.Series(_matches(s, p), index=s.index),
                                    element_wise=False,
                                    name="pattern", error=f"does not fully match {f.pattern}"))
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
    """Read one table as it is stored: CSV with every column as a string (Arrow-backed), Parquet typed
    (integer columns stay exact: Arrow-backed, never converted to float).

    Raises :class:`DataContractError` when the file cannot be read, with the reason in the user's
    terms (encoding, delimiter, a line with the wrong number of values, not a Parquet file, ...).
    """
    import pyarrow.parquet as pq

    path = Path(path)
    if path.suffix not in (".csv", ".parquet"):
        raise DataContractError(path.name, None, "unsupported format (expected .csv or .parquet)")
    try:
        if path.suffix == ".parquet":
            _sniff_parquet(path)
            tab = pq.read_table(path)
        else:
            _sniff_csv(path)
            tab = _read_csv_strings(path)
        names = tab.column_names
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            what = "an empty column name" if dupes[0] == "" else "column"
            raise DataContractError(path.name, dupes[0], f"{what} appears more than once in the header")
        if path.suffix == ".parquet":
            tab = _contract_columns_as_values(tab, path)
        return tab.to_pandas(types_mapper=_pandas_type)
    except DataContractError:
        raise
    except (pa.ArrowException, OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataContractError(path.name, None, _explain_unreadable(path, exc)) from exc


def _contract_columns_as_values(tab: pa.Table, path: Path) -> pa.Table:
    """Parquet contract columns hold single values: binary text (a BYTE_ARRAY column without the
    UTF-8 annotation) is decoded as UTF-8; nested types (lists, structs, maps) are fatal."""
    fields = {f.name for f in contract.TABLES.get(path.stem, ())}
    for i, fld in enumerate(tab.schema):
        if fld.name not in fields:
            continue
        t = fld.type.value_type if pa.types.is_dictionary(fld.type) else fld.type
        if pa.types.is_nested(t):
            raise DataContractError(path.name, fld.name, f"holds {t} values (lists or records), not "
                                    "single values: wrong column type")
        if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
            col = tab.column(i)
            try:
                text = (col.cast(t) if t is not fld.type else col).cast(pa.string())
            except pa.ArrowInvalid:
                raise DataContractError(path.name, fld.name, "holds binary data that is not UTF-8 "
                                        "text: write it as a string column") from None
            tab = tab.set_column(i, fld.name, text)
    return tab


def _pandas_type(t: pa.DataType):
    """Arrow -> pandas dtypes: strings and integers Arrow-backed (integers with nulls would otherwise
    become float64 and lose digits beyond 2**53); everything else pandas' default."""
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return _STRING
    if pa.types.is_integer(t):
        return pd.ArrowDtype(t)
    return None


def _read_csv_strings(path: Path) -> pa.Table:
    import pyarrow.csv as pacsv

    def read(types: dict[str, pa.DataType]) -> pa.Table:
        return pacsv.read_csv(
            path,
            parse_options=pacsv.ParseOptions(newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(
                column_types=types, strings_can_be_null=False, quoted_strings_can_be_null=False,
            ),
        )

    tab = read(_all_strings(path))
    if not all(pa.types.is_string(t) for t in tab.schema.types):
        # a header Python's csv module splits differently: name the types after Arrow's own names,
        # so that no column is type-inferred (inference would change values such as '007')
        tab = read({name: pa.string() for name in tab.column_names})
    return tab


def _all_strings(path: Path) -> dict[str, pa.DataType]:
    import csv

    with open(path, newline="", encoding="utf-8-sig", errors="replace") as fh:
        try:
            header = next(csv.reader(fh), [])
        except csv.Error:  # Arrow reads the header itself (names checked after the read)
            header = []
    return {name: pa.string() for name in header}


#: Leading bytes of files that are not CSV text: (magic, what it is, what to do).
_MAGIC = (
    (b"PAR1", "a Parquet file", "rename it to .parquet"),
    (b"PK\x03\x04", "a zip archive (an Excel .xlsx workbook?), not CSV text",
     "export the sheet as 'CSV UTF-8 (comma delimited)'"),
    (b"\xd0\xcf\x11\xe0", "an Excel .xls workbook, not CSV text",
     "export the sheet as 'CSV UTF-8 (comma delimited)'"),
    (b"\x1f\x8b", "gzip-compressed", "decompress it first"),
)
_BOMS = (
    (b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe", "UTF-16"), (b"\xfe\xff", "UTF-16"),
)
_SAVE_UTF8 = "save it as UTF-8 ('CSV UTF-8'; a UTF-8 byte-order mark is fine)"


def _sniff_csv(path: Path) -> None:
    """Fatal problems visible in the first bytes of a CSV file, in the user's terms."""
    import csv

    with open(path, "rb") as fh:
        head = fh.read(1 << 16)
    if not head.strip():
        raise DataContractError(path.name, None, "empty file (no header row)")
    for bom, enc in _BOMS:
        if head.startswith(bom):
            raise DataContractError(path.name, None, f"file is {enc} encoded: {_SAVE_UTF8}")
    for magic, what, todo in _MAGIC:
        if head.startswith(magic):
            raise DataContractError(path.name, None, f"file is {what}: {todo}")
    if b"\x00" in head:
        quarter = max(len(head) // 4, 1)
        if sum(head[k::4].count(0) for k in (1, 2, 3)) > 0.9 * 3 * quarter or \
                sum(head[k::4].count(0) for k in (0, 1, 2)) > 0.9 * 3 * quarter:
            raise DataContractError(path.name, None, f"file is UTF-32 encoded (no byte-order mark): {_SAVE_UTF8}")
        even, odd = head[0::2].count(0), head[1::2].count(0)
        if max(even, odd) > 0.3 * len(head) / 2 and min(even, odd) < 0.05 * len(head) / 2:
            raise DataContractError(path.name, None, f"file is UTF-16 encoded (no byte-order mark): {_SAVE_UTF8}")
        raise DataContractError(path.name, None, "file holds binary data (NUL bytes), not CSV text")
    body = head[3:] if head.startswith(b"\xef\xbb\xbf") else head
    first = re.split(rb"\r\n|\r|\n", body, maxsplit=1)[0]
    if not first.strip():
        raise DataContractError(path.name, None, "the first line is blank: the header row must be the first line")
    try:
        text = first.decode("utf-8")
    except UnicodeDecodeError:
        raise DataContractError(path.name, None, _not_utf8(path)) from None
    try:
        header = next(csv.reader([text]), [])
    except csv.Error:
        return  # the reader says what is wrong
    if len(header) == 1:
        for delim in (";", "\t", "|"):
            if delim in header[0]:
                raise DataContractError(
                    path.name, None,
                    f"delimiter looks like {delim!r}, not a comma: save the file comma-separated "
                    "(a value that contains a comma goes in double quotes)")


def _not_utf8(path: Path) -> str:
    """Where the first byte that is not UTF-8 is, and which encoding the file looks like."""
    with open(path, "rb") as fh:
        for lineno, line in enumerate(fh, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as err:
                byte = line[err.start]
                try:
                    line.decode("cp1252")
                    guess = " (it looks Windows-1252 / Latin-1 encoded)"
                except UnicodeDecodeError:
                    guess = ""
                return (f"file is not UTF-8: line {lineno} has byte 0x{byte:02X}{guess}: {_SAVE_UTF8}")
    return f"file is not UTF-8: {_SAVE_UTF8}"


def _sniff_parquet(path: Path) -> None:
    with open(path, "rb") as fh:
        head = fh.read(4)
        fh.seek(0, 2)
        size = fh.tell()
        if size >= 4:
            fh.seek(-4, 2)
        tail = fh.read(4)
    if size == 0:
        raise DataContractError(path.name, None, "empty file (not a Parquet file)")
    if head == b"PAR1" and tail != b"PAR1":
        raise DataContractError(path.name, None, "unreadable: truncated Parquet file (no footer): "
                                "write it again")
    if head != b"PAR1":
        raise DataContractError(path.name, None, "unreadable: not a Parquet file (no Parquet "
                                "signature); a CSV file must be named .csv")


def _explain_unreadable(path: Path, exc: BaseException) -> str:
    """A reader error in the user's terms (CSV: which line and why; otherwise the reader's words)."""
    text = _first_line(exc)
    if isinstance(exc, OSError) and not isinstance(exc, pa.ArrowException):
        return f"unreadable: {exc.strerror or text}"
    if path.suffix == ".csv":
        if isinstance(exc, UnicodeDecodeError) or "UTF8" in text or "UTF-8" in text:
            return _not_utf8(path)
        where = _csv_problem(path)
        if where:
            return where
    if path.suffix == ".parquet":
        return f"unreadable: damaged Parquet file ({text})"
    return f"unreadable: {text}"


def _csv_problem(path: Path) -> str | None:
    """The first CSV record with another number of values than the header, or an unclosed quote."""
    import csv

    with open(path, newline="", encoding="utf-8-sig", errors="replace") as fh:
        reader = csv.reader(fh, strict=True)
        try:
            header = next(reader)
            for record in reader:
                if record and len(record) != len(header):
                    line = reader.line_num
                    truncated = ""
                    if len(record) < len(header) and not _ends_with_newline(path) and line == _count_lines(path):
                        truncated = " (the last line is cut short: is the file truncated?)"
                    hint = ""
                    if len(record) == 1 and any(d in record[0] for d in ";\t|"):
                        hint = " (that line does not use commas as the delimiter)"
                    return (f"line {line} has {len(record)} value(s), but the header has {len(header)}"
                            f"{truncated or hint}: values must be comma-separated, and a value that "
                            "contains a comma, a double quote or a line break must be in double quotes")
        except csv.Error as err:
            return (f"line {reader.line_num}: {err} (a value opened with a double quote is never "
                    "closed, or a quote inside a value is not doubled: is the file truncated?)")
    return None


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as fh:
        fh.seek(0, 2)
        if fh.tell() == 0:
            return False
        fh.seek(-1, 2)
        return fh.read(1) in (b"\n", b"\r")


def _count_lines(path: Path) -> int:
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as fh:
        return sum(1 for _ in fh)


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


#: What each kind of column holds, in the words of messages.
_KIND_WORDS = {
    "int": "a whole number", "float": "a number", "bool": "a true/false flag",
    "category": "an allowed category", "datetime": "an ISO 8601 date-time (YYYY-MM-DDTHH:MM:SS)",
    "date": "a YYYY-MM-DD date", "month": "a YYYY-MM month",
}
_OUT_OF_DATE_RANGE = f"is outside the supported date range {contract.DATE_RANGE_TEXT}"


def _coerce_column(t: _Table, f: Field) -> None:
    s = t.raw[f.name]
    kind = f.kind
    typed: pd.Series | None = None
    failed: np.ndarray | None = None
    first_issue = len(t.issues)

    if kind in ("datetime", "date", "month") and pd.api.types.is_datetime64_dtype(s.dtype):
        typed, empty, failed = _typed_datetime(t, f, s)
    elif kind == "bool" and pd.api.types.is_bool_dtype(s.dtype) and not s.isna().any():
        typed = s.astype(bool)
        empty = np.zeros(len(s), dtype=bool)
    elif kind in ("int", "float") and pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype):
        values = s.to_numpy(dtype="float64", na_value=np.nan)
        empty = np.isnan(values)
        beyond = None
        if kind == "int":
            if pd.api.types.is_integer_dtype(s.dtype):  # exact: no detour through float64
                beyond = _np_bool((s > contract.MAX_EXACT_INTEGER) | (s < -contract.MAX_EXACT_INTEGER))
            else:
                beyond = np.abs(np.nan_to_num(values)) > contract.MAX_EXACT_INTEGER
        typed, failed = _check_number(t, f, values, empty, beyond)
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
            num = pd.to_numeric(strings.where(~empty, None), errors="coerce")
            values = num.to_numpy(dtype="float64", na_value=np.nan)
            unparsed = np.isnan(values) & ~empty
            t.flag("non_numeric", unparsed, _value_detail(t, f.name, "is not a number"))
            beyond = _beyond_exact(strings, values) if kind == "int" else None
            typed, failed = _check_number(t, f, values, empty | unparsed, beyond)
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
            _fatal_column(t, f, failed, t.issues[first_issue:])
    t.typed[f.name] = typed
    t.empty[f.name] = empty


def _fatal_column(t: _Table, f: Field, failed: np.ndarray, issues: list[_Issue]) -> None:
    """Every non-empty value of the column failed: the column is of the wrong type or coding."""
    i = int(np.flatnonzero(failed)[0])
    why = "; ".join(str(x.detail(np.array([i])).iloc[0]) for x in issues if x.mask[i])
    if all(x.code == "date_out_of_range" for x in issues if x.mask.any()):
        raise DataContractError(
            t.file, f.name,
            f"every value is outside the supported date range {contract.DATE_RANGE_TEXT} (row {i + 1}: "
            f"{why}); a placeholder date for 'did not happen' must be left empty instead")
    allowed = f" (allowed: {', '.join(f.allowed)})" if f.allowed else ""
    raise DataContractError(
        t.file, f.name,
        f"no value can be read as {_KIND_WORDS.get(f.kind, f.kind)}{allowed} (row {i + 1}: {why}); "
        "wrong column type or coding (a shifted column?)")


def _beyond_exact(strings: pd.Series, values: np.ndarray) -> np.ndarray:
    """Counts written as text whose exact value is beyond 2**53 (float64 would round them): checked
    exactly with :class:`decimal.Decimal` on the few values that reach 2**53 as floats."""
    from decimal import Decimal, InvalidOperation

    limit = contract.MAX_EXACT_INTEGER
    beyond = np.zeros(len(values), dtype=bool)
    with np.errstate(invalid="ignore"):
        candidates = np.flatnonzero(np.abs(values) >= limit)
    for i in candidates:
        try:
            beyond[i] = abs(Decimal(str(strings.iloc[i]))) > limit
        except (InvalidOperation, ValueError):
            beyond[i] = True
    return beyond


def _check_number(t: _Table, f: Field, values: np.ndarray, skip: np.ndarray,
                  beyond: np.ndarray | None = None):
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
    if beyond is not None:
        t.flag("out_of_range", beyond & ~out & ~skip, _value_detail(
            t, f.name, f"is beyond 2^53 = {contract.MAX_EXACT_INTEGER:,}, the largest count that "
            "can be stored exactly"))
    return pd.Series(values, index=t.raw.index), failed


_DATE_PARTS = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})(?:[T ]([0-9]{2}):([0-9]{2})(?::([0-9]{2}))?)?")
#: Real dates pandas cannot hold are before this or from this on (a day inside the exact bounds).
_PY_BEFORE = _dt.datetime(1677, 9, 22)
_PY_FROM = _dt.datetime(2262, 4, 11)


def _outside_supported(strings: pd.Series, rows: np.ndarray) -> np.ndarray:
    """Of `rows` (values shaped like dates that pandas could not parse), those that are real
    calendar dates/date-times outside the supported range (e.g. year 9999). Python's datetime
    covers years 1 to 9999."""
    out = np.zeros(len(strings), dtype=bool)
    for i in np.flatnonzero(rows):
        m = _DATE_PARTS.match(str(strings.iloc[i]))
        if m is None:
            continue
        try:
            value = _dt.datetime(*(int(g) for g in m.groups() if g is not None))
        except ValueError:  # not a real date or time (2016-02-30, hour 25, year 0)
            continue
        out[i] = value < _PY_BEFORE or value >= _PY_FROM
    return out


def _typed_datetime(t: _Table, f: Field, s: pd.Series):
    """Date-times already typed (Parquet timestamps, any unit): values outside the nanosecond range
    are quarantined (``date_out_of_range``) instead of overflowing."""
    empty = s.isna().to_numpy()
    oob = _np_bool((s < pd.Timestamp.min) | (s > pd.Timestamp.max)) & ~empty
    t.flag("date_out_of_range", oob, _value_detail(t, f.name, _OUT_OF_DATE_RANGE))
    typed = s.where(~oob).astype("datetime64[ns]")
    failed = oob
    if f.kind == "month":
        first = _np_bool(typed.dt.day != 1) & ~empty & ~oob
        t.flag("unparseable_date", first, _value_detail(t, f.name, "is not a first-of-month date"))
        failed = failed | first
    return typed, empty, failed


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
    oob = _outside_supported(strings, naive & ~ok & ~empty)
    # a tz-aware or date-only value that is otherwise a real date-time -> mixed format
    mixed = other_iso & ~empty
    if mixed.any():
        dates = strings.where(mixed, None).str.slice(0, 10)
        mixed &= _np_bool(dates.str.fullmatch(_DATE))
        for i in np.flatnonzero(mixed):
            try:
                _dt.date.fromisoformat(str(dates.iloc[i]))
            except ValueError:
                mixed[i] = False
    bad = ~ok & ~empty & ~mixed & ~oob
    t.flag("mixed_timestamp_format", mixed,
           _value_detail(t, f.name, "is not a naive local date-time (offset/Z or date only)"))
    t.flag("unparseable_timestamp", bad, _value_detail(
        t, f.name, "is not a valid ISO 8601 date-time YYYY-MM-DDTHH:MM[:SS] (wrong format, or no such "
        "date or time)"))
    t.flag("date_out_of_range", oob, _value_detail(t, f.name, _OUT_OF_DATE_RANGE))
    return parsed, bad | mixed | oob


def _parse_date(t: _Table, f: Field, strings: pd.Series, empty: np.ndarray):
    if f.kind == "date":
        shaped = _np_bool(strings.str.fullmatch(_DATE))
        text = strings
        parsed = pd.to_datetime(strings.where(shaped, None), format="%Y-%m-%d", errors="coerce")
        expect = "is not a YYYY-MM-DD date (wrong format, or no such date)"
    else:
        as_month = _np_bool(strings.str.fullmatch(_MONTH))
        shaped = as_month | _np_bool(strings.str.fullmatch(_DATE))
        text = strings.where(~as_month, strings + "-01")
        parsed = pd.to_datetime(text.where(shaped, None), format="%Y-%m-%d", errors="coerce")
        parsed = parsed.where(parsed.dt.day == 1)
        expect = "is not YYYY-MM or a first-of-month YYYY-MM-DD"
    parsed = parsed.astype("datetime64[ns]")
    unread = parsed.isna().to_numpy() & ~empty
    oob = _outside_supported(text, unread & shaped)
    bad = unread & ~oob
    t.flag("unparseable_date", bad, _value_detail(t, f.name, expect))
    t.flag("date_out_of_range", oob, _value_detail(t, f.name, _OUT_OF_DATE_RANGE))
    return parsed, bad | oob


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


def _site_id_pattern(t: _Table) -> None:
    """Site ids become parts of file names and report links: only :data:`contract.SITE_ID_PATTERN`."""
    ids = t.typed["site_id"]
    bad = ~_matches(ids, contract.SITE_ID_PATTERN) & ~t.empty["site_id"]
    t.flag("invalid_site_id", bad, _value_detail(
        t, "site_id", f"is not a valid site id ({contract.SITE_ID_RULE})"))


def _matches(s: pd.Series, pattern: str) -> np.ndarray:
    """Element-wise full match of `pattern` (missing -> False), testing each distinct value once."""
    rx = re.compile(pattern)
    valid = {v for v in pd.unique(s.dropna()) if isinstance(v, str) and rx.fullmatch(v)}
    return _np_bool(s.isin(valid))


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


def _days_between(later: pd.Series, earlier: pd.Series) -> pd.Series:
    """(later - earlier) in days as float64, NaN where either is missing. Never overflows: a
    difference beyond the range of timedelta64[ns] (about 292 years) is computed in float."""
    a = later.to_numpy(dtype="datetime64[ns]").view("i8")
    b = earlier.to_numpy(dtype="datetime64[ns]").view("i8")
    missing = later.isna().to_numpy() | earlier.isna().to_numpy()
    approx = a.astype("float64") - b.astype("float64")
    fits = ~missing & (np.abs(approx) < 2.0**62)
    exact = np.where(fits, a, 0) - np.where(fits, b, 0)  # exact int64 where it cannot overflow
    days = np.where(fits, exact, approx) / 86_400e9
    return pd.Series(np.where(missing, np.nan, days), index=later.index)


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
    los = _days_between(ts["discharge_time"], ts["arrival_time"])

    def too_long(idx: np.ndarray) -> pd.Series:
        return ("discharge_time=" + _show(t.raw["discharge_time"].iloc[idx]) + " is "
                + los.iloc[idx].map("{:,.0f}".format) + " days after arrival_time="
                + _show(t.raw["arrival_time"].iloc[idx])
                + f"; a stay can be at most {contract.MAX_STAY_DAYS:,} days (292 years)"
                ).reset_index(drop=True)

    t.flag("stay_too_long", _np_bool(los > contract.MAX_STAY_DAYS), too_long)
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
        near = {n.strip().lower(): n for n in names}
        hints = [f"{near[m]!r} for {m!r}" for m in missing if m in near]
        hint = (f"; names are case-sensitive and without spaces: found {', '.join(hints)}"
                if hints else "")
        raise DataContractError(
            t.file, missing[0],
            f"missing contract column(s) {', '.join(missing)} (found: {', '.join(names) or 'none'}){hint}",
        )
    known = set(contract.field_names(t.name))
    return [c for c in names if c not in known]


#: The quarantine's own columns, before the input columns.
QUARANTINE_COLUMNS = ("file", "row", "key", "reasons", "details")


def quarantine_names(tables: Iterable[pd.DataFrame]) -> dict[str, str]:
    """Names of input columns in the quarantine: an input column named like one of
    :data:`QUARANTINE_COLUMNS` is kept (with its values) as ``input_<name>`` (more ``input_``
    prefixes if that name is taken too); every other column keeps its name."""
    names = {str(c) for df in tables for c in df.columns}
    out = {}
    for c in QUARANTINE_COLUMNS:
        if c in names:
            new = f"input_{c}"
            while new in names or new in QUARANTINE_COLUMNS:
                new = f"input_{new}"
            out[c] = new
    return out


def _quarantine_frame(t: _Table, bad: np.ndarray, rename: dict[str, str] | None = None) -> pd.DataFrame:
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
    raw_str = pd.DataFrame({(rename or {}).get(c, c): _as_strings(raw[c]).astype(object)
                            for c in raw.columns})
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
    _site_id_pattern(sites_t)
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
    rename = quarantine_names(t.raw for t in tables.values())
    file_summaries: dict[str, dict] = {}
    totals: dict[str, int] = {}
    for name in TABLE_ORDER:
        t = tables[name]
        bad = t.bad()
        accepted[name] = _accepted(t, bad, extras[name])
        if bad.any():
            quarantine_parts.append(_quarantine_frame(t, bad, rename))
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
        else pd.DataFrame(columns=list(QUARANTINE_COLUMNS))
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

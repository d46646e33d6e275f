"""Publication safety: small-cell suppression, hospital pseudonyms and an output scanner.

Everything a report publishes goes through this module:

* :func:`suppress` -- the ONE suppression function, applied to every table (and chart label) that
  shows counts. Counts from 1 to ``min_cell - 1`` (1-10 by default, the CMS cell-size policy) are
  hidden, zero may show, and *complementary* suppression hides every other cell from which a hidden
  count could be worked out (totals, differences, percentages and rates).
* :func:`site_pseudonyms` -- "Hospital A", "Hospital B", ... in an order fixed by a keyed hash of the
  site id (not by size, name or id), stable for one run key.
* :func:`scan_outputs` -- scans rendered files (HTML, executed notebooks, CSV, JSON) for forbidden
  strings (other hospitals' names and ids, episode/patient identifiers), exact timestamps and
  unsuppressed small counts in tables marked as count tables.

Suppression algorithm (documented here because it is part of correctness)
---------------------------------------------------------------------------
1. *Primary*: every count cell with ``1 <= value < min_cell`` is suppressed.
2. *Additive constraints*. A table publishes (or is assumed to publish) sums:

   - ``row_total``: in every row, that count column equals the sum of the other count columns;
   - ``total_row``: in every group of rows (``by``; the whole table if ``by`` is None), the row marked
     as total equals, column by column, the sum of the group's other rows;
   - ``sums_published=True`` (the conservative default): a group without a total row of two or more
     rows is treated as if its column sums were published elsewhere (e.g. the episode count in the
     report header), so it is a constraint with a known total.

   For each constraint (its parts plus its total cell, if shown in this table) the rule is applied
   until nothing changes: if exactly one cell is suppressed, or the suppressed parts add up (known
   total minus shown parts) to less than ``min_cell`` or to no more than their number (each hidden
   cell is at least 1 because zeros show), one more cell is suppressed -- the smallest non-zero shown
   part (ties: first in table order); failing that the total cell; failing that the smallest zero
   part. Every suppressed cell is displayed with the same marker, so a reader cannot tell primary from
   complementary cells.
3. *Derived cells*: a column listed in ``derived`` (percentages, rates, differences, summary
   statistics) is suppressed in a row whenever any of its source columns is suppressed in that row
   (sources may themselves be derived columns: a difference of two percentages). A rate shown next
   to a shown denominator would give the numerator back; a rate next to a shown numerator would give
   the denominator back.

The result keeps the original numbers (never displayed) and a boolean mask of suppressed cells, so the
reports can also blank chart points and labels that show counts.
"""

from __future__ import annotations

import hashlib
import hmac
import html as html_lib
import json
import re
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd

#: Default minimum reportable cell size: counts 1-10 are suppressed (CMS cell-size suppression policy).
DEFAULT_MIN_CELL = 11

#: Marker for every suppressed cell (primary and complementary look the same on purpose).
DEFAULT_MARKER = "suppressed"

#: CSS class and data attributes that :func:`mark_count_table` puts on a count table's wrapper.
COUNT_TABLE_CLASS = "ipso-count-table"
COUNT_COLUMNS_ATTR = "data-ipso-count-cols"
MIN_CELL_ATTR = "data-ipso-min-cell"

#: Exact timestamp formats that must never be published: YYYY-MM-DD HH:MM and ISO YYYY-MM-DDTHH:MM.
TIMESTAMP_PATTERN = re.compile(r"\b\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}")


# ---------------------------------------------------------------------------------------------
# suppression
@dataclass
class SuppressionResult:
    """A suppressed table.

    Attributes
    ----------
    display:
        The table to publish: suppressed cells replaced by ``marker`` (object columns).
    mask:
        Boolean frame, same index and columns as the input: True where a cell is suppressed.
    primary:
        Boolean frame: True where a count cell is itself a small count (1 to ``min_cell - 1``).
    min_cell, marker:
        The threshold and marker used.
    notes:
        Constraints that could not be protected (e.g. a published total that is itself small).
    """

    display: pd.DataFrame
    mask: pd.DataFrame
    primary: pd.DataFrame
    min_cell: int
    marker: str
    count_columns: list[str]
    derived: dict[str, list[str]]
    notes: list[str] = field(default_factory=list)

    @property
    def n_suppressed(self) -> int:
        return int(self.mask.to_numpy().sum())

    @property
    def n_complementary(self) -> int:
        return int((self.mask & ~self.primary).to_numpy().sum())

    def summary(self) -> pd.DataFrame:
        """One row per column: cells suppressed (primary, complementary)."""
        rows = []
        for c in self.mask.columns:
            m, p = self.mask[c], self.primary[c]
            if m.any():
                rows.append({"column": c, "suppressed": int(m.sum()), "primary": int(p.sum()),
                             "complementary": int((m & ~p).sum())})
        return pd.DataFrame(rows, columns=["column", "suppressed", "primary", "complementary"])


@dataclass
class _Constraint:
    parts: list[tuple[int, str]]
    total: tuple[int, str] | None  # None: total published elsewhere (known to the reader)
    label: str


def _is_small(v: float, min_cell: int) -> bool:
    return bool(np.isfinite(v) and 1 <= v < min_cell)


def suppress(
    table: pd.DataFrame,
    count_columns: Sequence[str],
    *,
    min_cell: int = DEFAULT_MIN_CELL,
    row_total: str | None = None,
    total_row: str | Sequence[bool] | pd.Series | None = None,
    by: str | Sequence[str] | None = None,
    sums_published: bool = True,
    derived: Mapping[str, Sequence[str]] | None = None,
    marker: str = DEFAULT_MARKER,
) -> SuppressionResult:
    """Suppress small counts and everything from which they could be derived.

    Parameters
    ----------
    table:
        The table to publish (one row per displayed row).
    count_columns:
        Columns holding counts (episodes, events, patients). Missing values are left as they are.
    min_cell:
        Smallest count that may be shown; counts 1 to ``min_cell - 1`` are suppressed, 0 shows.
    row_total:
        A count column equal to the sum of the other count columns in each row (2-way table margin).
    total_row:
        Name of a boolean column, or a boolean array, marking total rows (one per ``by`` group at most):
        each equals, per count column, the sum of the other rows of its group.
    by:
        Column(s) defining groups of rows that add up (e.g. the levels of one variable in Table 1,
        or the months of one hospital). None: the whole table is one group.
    sums_published:
        Treat the column sums of a group without a total row (2+ rows) as known to the reader.
    derived:
        ``{column: [source columns]}``: percentages, rates, differences or statistics computed from
        the source columns of the same row; hidden when any source is hidden.
    marker:
        What a suppressed cell shows.

    Returns
    -------
    SuppressionResult
        ``display`` (the publishable frame), ``mask`` and ``primary`` (boolean frames).
    """
    if min_cell < 1:
        raise ValueError(f"min_cell must be >= 1, got {min_cell}")
    count_columns = list(count_columns)
    derived = {k: list(v) for k, v in (derived or {}).items()}
    missing = [c for c in count_columns + list(derived) + [s for v in derived.values() for s in v]
               if c not in table.columns]
    if row_total is not None and row_total not in count_columns:
        raise ValueError(f"row_total {row_total!r} must be one of count_columns {count_columns}")
    if missing:
        raise ValueError(f"suppress: columns not in the table: {sorted(set(missing))}")
    unknown_src = [s for v in derived.values() for s in v if s not in count_columns and s not in derived]
    if unknown_src:
        raise ValueError(f"suppress: derived sources must be count or derived columns: {unknown_src}")

    n = len(table)
    values = {}
    for c in count_columns:
        v = pd.to_numeric(table[c], errors="coerce").to_numpy(dtype=float)
        bad = np.isfinite(v) & ((v < 0) | (v != np.round(v)))
        if bad.any():
            raise ValueError(f"suppress: count column {c!r} has non-count values, e.g. {v[bad][0]}")
        values[c] = v

    # total rows and groups
    if total_row is None:
        is_total = np.zeros(n, dtype=bool)
    elif isinstance(total_row, str):
        if total_row not in table.columns:
            raise ValueError(f"suppress: total_row column {total_row!r} not in the table")
        is_total = table[total_row].fillna(False).to_numpy(dtype=bool)
    else:
        is_total = np.asarray(total_row, dtype=bool)
        if is_total.shape != (n,):
            raise ValueError("suppress: total_row mask must have one value per row")
    if by is None:
        group_ids = np.zeros(n, dtype=int)
    else:
        by_cols = [by] if isinstance(by, str) else list(by)
        group_ids = table.groupby(by_cols, sort=False, dropna=False).ngroup().to_numpy()

    constraints: list[_Constraint] = []
    if row_total is not None:
        others = [c for c in count_columns if c != row_total]
        for i in range(n):
            constraints.append(_Constraint([(i, c) for c in others], (i, row_total), f"row {i}"))
    for g in np.unique(group_ids):
        rows = np.flatnonzero(group_ids == g)
        totals = rows[is_total[rows]]
        parts = rows[~is_total[rows]]
        if len(totals) > 1:
            raise ValueError(f"suppress: group {g} has {len(totals)} total rows (at most one allowed)")
        for c in count_columns:
            if len(totals) == 1 and len(parts) >= 1:
                constraints.append(_Constraint([(int(i), c) for i in parts], (int(totals[0]), c),
                                               f"column {c!r}, group {g}"))
            elif len(totals) == 0 and sums_published and len(parts) >= 2:
                constraints.append(_Constraint([(int(i), c) for i in parts], None,
                                               f"column {c!r}, group {g} (sum published)"))

    def val(cell):
        return values[cell[1]][cell[0]]

    supp: set[tuple[int, str]] = set()
    primary: set[tuple[int, str]] = set()
    for c in count_columns:
        for i in range(n):
            if _is_small(values[c][i], min_cell):
                supp.add((i, c))
                primary.add((i, c))

    notes: list[str] = []
    changed = True
    guard = 0
    while changed:
        changed = False
        guard += 1
        if guard > 10 * (n * max(len(count_columns), 1) + 10):  # pragma: no cover - safety net
            raise RuntimeError("suppress: complementary suppression did not converge")
        for con in constraints:
            cells = [p for p in con.parts if np.isfinite(val(p))]
            hidden_parts = [p for p in cells if p in supp]
            total_hidden = con.total is not None and con.total in supp
            n_hidden = len(hidden_parts) + int(total_hidden)
            if n_hidden == 0:
                continue
            need = n_hidden == 1
            if not need and not total_hidden and hidden_parts:
                s = sum(val(p) for p in hidden_parts)  # what a reader can compute
                need = s < min_cell or s <= len(hidden_parts)
            if not need:
                continue
            shown = [p for p in cells if p not in supp]
            nonzero = sorted((p for p in shown if val(p) > 0), key=lambda p: val(p))
            pick = None
            if nonzero:
                pick = nonzero[0]
            elif con.total is not None and con.total not in supp and np.isfinite(val(con.total)):
                pick = con.total
            else:
                zeros = [p for p in shown if val(p) == 0]
                if zeros:
                    pick = zeros[0]
            if pick is None:
                msg = (f"{con.label}: cannot hide the suppressed value(s) further; the published "
                       "total must itself be suppressed where it is shown")
                if msg not in notes:
                    notes.append(msg)
                continue
            supp.add(pick)
            changed = True

    mask = pd.DataFrame(False, index=table.index, columns=table.columns)
    prim = pd.DataFrame(False, index=table.index, columns=table.columns)
    for i, c in supp:
        mask.iat[i, table.columns.get_loc(c)] = True
    for i, c in primary:
        prim.iat[i, table.columns.get_loc(c)] = True
    # derived columns: propagate (sources may be derived themselves)
    changed = True
    while changed:
        changed = False
        for col, sources in derived.items():
            hide = mask[sources].any(axis=1) & ~mask[col]
            if hide.any():
                mask.loc[hide, col] = True
                changed = True

    display = table.copy()
    for c in set(count_columns) | set(derived):
        if mask[c].any():
            display[c] = display[c].astype(object)
            display.loc[mask[c], c] = marker
    return SuppressionResult(display, mask, prim, int(min_cell), marker, count_columns, derived, notes)


def suppress_count(n: float | None, *, min_cell: int = DEFAULT_MIN_CELL,
                   marker: str = DEFAULT_MARKER) -> str:
    """A single count for a header or chart label: shown with thousands separators, or ``marker``.

    Applies the same rule as :func:`suppress` (a one-cell table).
    """
    if n is None or (isinstance(n, float) and not np.isfinite(n)):
        return "not available"
    res = suppress(pd.DataFrame({"n": [n]}), ["n"], min_cell=min_cell, marker=marker)
    v = res.display["n"].iloc[0]
    return marker if res.mask["n"].iloc[0] else f"{int(v):,}"


# ---------------------------------------------------------------------------------------------
# pseudonyms
def _letters(k: int) -> str:
    """0 -> A, 25 -> Z, 26 -> AA (bijective base 26)."""
    s = ""
    k += 1
    while k > 0:
        k, r = divmod(k - 1, 26)
        s = chr(65 + r) + s
    return s


def site_pseudonyms(site_ids: Iterable[Hashable], *, run_key: str, prefix: str = "Hospital") -> dict:
    """Map each site id to a pseudonym ``"Hospital A"``, ``"Hospital B"``, ...

    The letters follow the order of an HMAC-SHA256 of the site id keyed by `run_key`: they reveal
    neither the identity, nor the id order, nor the size order of the hospitals, and the same
    `run_key` gives the same mapping in every report of a run. Use a secret, per-run key.
    """
    if not run_key:
        raise ValueError("site_pseudonyms: run_key must be a non-empty string")
    ids = list(dict.fromkeys(site_ids))
    key = str(run_key).encode()

    def h(s) -> str:
        return hmac.new(key, str(s).encode(), hashlib.sha256).hexdigest()

    order = sorted(ids, key=lambda s: (h(s), str(s)))
    return {s: f"{prefix} {_letters(i)}" for i, s in enumerate(order)}


# ---------------------------------------------------------------------------------------------
# marking count tables in HTML (for the scanner)
def mark_count_table(html: str, count_positions: Sequence[int], *, min_cell: int,
                     marker: str = DEFAULT_MARKER) -> str:
    """Wrap a rendered HTML table so :func:`scan_outputs` checks its count columns.

    `count_positions` are 0-based positions of the count columns among the body cells of a row.
    """
    cols = ",".join(str(int(p)) for p in count_positions)
    return (f'<div class="{COUNT_TABLE_CLASS}" {COUNT_COLUMNS_ATTR}="{cols}" '
            f'{MIN_CELL_ATTR}="{int(min_cell)}" data-ipso-marker="{html_lib.escape(marker)}">'
            f"{html}</div>")


@dataclass(frozen=True)
class Finding:
    """One publication-safety problem in an output file."""

    path: str
    kind: str  # "forbidden_string" | "timestamp" | "small_count" | "identifier_column"
    detail: str
    excerpt: str = ""


class _CountTableParser(HTMLParser):
    """Collects body rows of tables inside count-table wrappers."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[dict | None] = []  # div wrappers: count spec or None
        self.rows: list[tuple[dict, list[str]]] = []
        self._in_thead = 0
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self.alts: list[str] = []

    def _spec(self) -> dict | None:
        for s in reversed(self.stack):
            if s is not None:
                return s
        return None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img" and a.get("alt"):
            self.alts.append(a["alt"])
        if tag == "div":
            if COUNT_COLUMNS_ATTR in a:
                cols = [int(x) for x in a[COUNT_COLUMNS_ATTR].split(",") if x.strip()]
                self.stack.append({"cols": cols, "min_cell": int(a.get(MIN_CELL_ATTR, DEFAULT_MIN_CELL))})
            else:
                self.stack.append(None)
        elif tag == "thead":
            self._in_thead += 1
        elif tag == "tr" and self._spec() is not None and not self._in_thead:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "div" and self.stack:
            self.stack.pop()
        elif tag == "thead":
            self._in_thead = max(0, self._in_thead - 1)
        elif tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            spec = self._spec()
            if spec is not None:
                self.rows.append((spec, self._row))
            self._row = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _parse_count(text: str) -> float | None:
    t = text.replace(",", "").replace("\u00a0", " ").strip()
    m = re.fullmatch(r"(\d+)(?:\s*\(.*\))?", t)  # "7" or "7 (3.5%)"
    return float(m.group(1)) if m else None


def _small_counts_in_html(text: str, path: str) -> list[Finding]:
    p = _CountTableParser()
    try:
        p.feed(text)
    except (ValueError, AssertionError) as exc:  # pragma: no cover - malformed HTML
        return [Finding(path, "parse_error", f"HTML could not be parsed: {exc}")]
    out = []
    for spec, row in p.rows:
        for pos in spec["cols"]:
            if pos < len(row):
                v = _parse_count(row[pos])
                if v is not None and 1 <= v < spec["min_cell"]:
                    out.append(Finding(path, "small_count",
                                       f"count {int(v)} < {spec['min_cell']} in column {pos}",
                                       " | ".join(row)[:200]))
    return out


def _ipynb_texts(text: str) -> tuple[list[str], list[str]]:
    """All strings of a notebook (sources, outputs, metadata), and its HTML outputs."""
    nb = json.loads(text)
    strings: list[str] = []
    htmls: list[str] = []

    def walk(o):
        if isinstance(o, str):
            strings.append(o)
        elif isinstance(o, list):
            if o and all(isinstance(x, str) for x in o):
                strings.append("".join(o))
            else:
                for x in o:
                    walk(x)
        elif isinstance(o, dict):
            for k, v in o.items():
                strings.append(str(k))
                walk(v)

    walk(nb)
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []):
            h = out.get("data", {}).get("text/html")
            if h is not None:
                htmls.append("".join(h) if isinstance(h, list) else h)
    return strings, htmls


_TOKEN = re.compile(r"[\w\-.:/]+")


def scan_outputs(
    paths: Iterable[str | Path],
    *,
    forbidden_strings: Iterable[str] = (),
    min_cell: int = DEFAULT_MIN_CELL,
    forbidden_patterns: Sequence[re.Pattern | str] = (TIMESTAMP_PATTERN,),
    forbidden_columns: Sequence[str] = ("episode_id", "patient_id"),
    check_small_counts: bool = True,
) -> list[Finding]:
    """Scan output files for anything that must not be published.

    Parameters
    ----------
    paths:
        Files or directories (searched recursively for .html, .htm, .ipynb, .csv, .json, .md, .txt).
    forbidden_strings:
        Other hospitals' names and ids, episode and patient identifiers, birthdates. Matched
        case-insensitively as whole words (so id ``S1`` does not match ``S10``). Purely numeric strings
        shorter than 6 characters are skipped (they cannot be told apart from counts).
    min_cell:
        Threshold for the small-count check; tables are checked when their wrapper carries
        ``data-ipso-count-cols`` (added by :func:`mark_count_table`); the wrapper's own threshold wins.
    forbidden_patterns:
        Regular expressions (default: exact timestamps ``YYYY-MM-DD HH:MM`` / ``YYYY-MM-DDTHH:MM``).
    forbidden_columns:
        Column names that must not appear as a CSV header (identifier columns).

    Returns
    -------
    list[Finding]
        Empty when the outputs are safe to publish.
    """
    files: list[Path] = []
    exts = {".html", ".htm", ".ipynb", ".csv", ".json", ".md", ".txt", ".typ", ".tex"}
    for p in paths:
        p = Path(p)
        if p.is_dir():
            files.extend(sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in exts))
        elif p.exists():
            files.append(p)
        else:
            raise ValueError(f"scan_outputs: no such file or directory: {p}")

    words, phrases = set(), []
    for s in forbidden_strings:
        s = str(s).strip()
        if not s or (s.isdigit() and len(s) < 6):
            continue
        if _TOKEN.fullmatch(s):
            words.add(s.lower())
        else:
            phrases.append(s)
    phrase_re = (re.compile(r"(?<!\w)(?:" + "|".join(re.escape(s) for s in
                 sorted(phrases, key=len, reverse=True)) + r")(?!\w)", re.IGNORECASE)
                 if phrases else None)
    patterns = [re.compile(p) if isinstance(p, str) else p for p in forbidden_patterns]

    findings: list[Finding] = []
    for f in files:
        raw = f.read_text(encoding="utf-8", errors="replace")
        suffix = f.suffix.lower()
        texts = [raw]
        htmls: list[str] = []
        if suffix in (".html", ".htm"):
            texts.append(html_lib.unescape(raw))
            htmls.append(raw)
        elif suffix == ".ipynb":
            try:
                strings, htmls = _ipynb_texts(raw)
            except json.JSONDecodeError as exc:
                findings.append(Finding(str(f), "parse_error", f"notebook JSON: {exc}"))
                strings = []
            texts += strings + [html_lib.unescape(h) for h in htmls]
        elif suffix == ".json":
            try:
                texts.append(json.dumps(json.loads(raw), ensure_ascii=False))
            except json.JSONDecodeError:
                pass
        elif suffix == ".csv":
            header = raw.splitlines()[0] if raw else ""
            cols = [c.strip().strip('"') for c in header.split(",")]
            for c in forbidden_columns:
                if c in cols:
                    findings.append(Finding(str(f), "identifier_column", f"column {c!r} in CSV header"))
        seen: set[tuple[str, str]] = set()

        def add(kind, detail, excerpt, _seen=seen, _path=str(f)):
            if (kind, detail) not in _seen:
                _seen.add((kind, detail))
                findings.append(Finding(_path, kind, detail, excerpt))

        for t in texts:
            if words:
                for m in _TOKEN.finditer(t):
                    tok = m.group(0).lower()
                    # tokens may carry trailing punctuation; also try stripped forms
                    for cand in {tok, tok.strip(".:/-"), *re.split(r"[/:]", tok)}:
                        if cand in words:
                            a = max(0, m.start() - 40)
                            add("forbidden_string", f"forbidden string {cand!r}", t[a:m.end() + 40])
            if phrase_re is not None:
                for m in phrase_re.finditer(t):
                    a = max(0, m.start() - 40)
                    add("forbidden_string", f"forbidden string {m.group(0)!r}", t[a:m.end() + 40])
            for pat in patterns:
                for m in pat.finditer(t):
                    a = max(0, m.start() - 40)
                    add("timestamp" if pat is TIMESTAMP_PATTERN else "forbidden_pattern",
                        f"{pat.pattern} matched {m.group(0)!r}", t[a:m.end() + 40])
        if check_small_counts:
            for h in htmls:
                for fd in _small_counts_in_html(h, str(f)):
                    add(fd.kind, fd.detail, fd.excerpt)
    return findings

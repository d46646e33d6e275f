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
from typing import Any

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


def _complement(constraints: list[_Constraint], supp: set, val, min_cell: int, notes: list[str],
                size: int) -> None:
    """Complementary suppression, one constraint at a time, until nothing changes (step 2 of the
    module docstring)."""
    changed = True
    guard = 0
    while changed:
        changed = False
        guard += 1
        if guard > 10 * (size + 10):  # pragma: no cover - safety net
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


def _pinned_primary(constraints: list[_Constraint], supp: set, primary: set, val) -> list:
    """Primary cells a reader can work out exactly from everything published.

    The reader knows every shown cell, every published sum (a constraint's total cell, or the
    group's sum when it is published elsewhere) and that hidden cells are at least 1 (at least 0
    once a zero has been hidden as a complement). Each hidden primary cell is minimised and
    maximised over what remains possible (linear programming); a range narrower than 1 pins it.
    """
    from scipy.optimize import linprog

    hidden = sorted(c for c in supp if np.isfinite(val(c)))
    if not hidden:
        return []
    pos = {c: k for k, c in enumerate(hidden)}
    rows, rhs = [], []
    for con in constraints:
        row = np.zeros(len(hidden))
        b = 0.0
        terms = [(p, 1.0) for p in con.parts if np.isfinite(val(p))]
        if con.total is not None:
            terms.append((con.total, -1.0))
        else:
            b = float(sum(val(p) for p, _ in terms))
        for cell, sign in terms:
            if cell in pos:
                row[pos[cell]] += sign
            else:
                b -= sign * float(val(cell))
        if np.any(row != 0):
            rows.append(row)
            rhs.append(b)
    lower = 0.0 if any(val(c) == 0 for c in hidden) else 1.0
    eq = {"A_eq": np.array(rows), "b_eq": np.array(rhs)} if rows else {}
    bounds = [(lower, None)] * len(hidden)
    pinned = []
    for cell in hidden:
        if cell not in primary:
            continue
        obj = np.zeros(len(hidden))
        obj[pos[cell]] = 1.0
        lo = linprog(obj, bounds=bounds, method="highs", **eq)
        hi = linprog(-obj, bounds=bounds, method="highs", **eq)
        if lo.status != 0 or hi.status == 3:  # infeasible (cannot happen) or unbounded above
            continue
        if hi.status == 0 and (-hi.fun) - lo.fun < 1 - 1e-7:
            pinned.append(cell)
    return pinned


def _audit_complement(cell, constraints: list[_Constraint], supp: set, val):
    """One more cell to hide for a pinned primary `cell`: the smallest shown non-zero cell of a
    constraint it belongs to (ties: table order), else a shown zero; when those constraints are
    all hidden, the same search widens to constraints that share a hidden cell with them."""
    reached = {cell}
    seen: set[int] = set()
    while True:
        candidates = []
        grew = False
        for k, con in enumerate(constraints):
            members = con.parts + ([con.total] if con.total is not None else [])
            if k in seen or not reached.intersection(members):
                continue
            seen.add(k)
            grew = True
            candidates += [p for p in members if p not in supp and np.isfinite(val(p))]
            reached.update(p for p in members if p in supp)
        nonzero = sorted({p for p in candidates if val(p) > 0}, key=lambda p: (val(p), p))
        if nonzero:
            return nonzero[0]
        zeros = sorted({p for p in candidates if val(p) == 0})
        if zeros:
            return zeros[0]
        if not grew:
            return None


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
    _complement(constraints, supp, val, min_cell, notes, n * max(len(count_columns), 1))
    # Overlapping constraints (a two-way table with margins) let a reader combine equations:
    # audit every primary cell by linear programming and hide more until none is pinned.
    counted: dict[tuple[int, str], int] = {}
    for con in constraints:
        for cell in con.parts + ([con.total] if con.total is not None else []):
            counted[cell] = counted.get(cell, 0) + 1
    if any(k > 1 for k in counted.values()):
        while True:
            pinned = _pinned_primary(constraints, supp, primary, val)
            if not pinned:
                break
            pick = _audit_complement(pinned[0], constraints, supp, val)
            if pick is None:
                notes.append(f"cell {pinned[0]}: cannot be protected against a reader combining "
                             "the published sums")
                break
            supp.add(pick)
            _complement(constraints, supp, val, min_cell, notes, n * max(len(count_columns), 1))

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
# paths built from data
class UnsafePathError(ValueError):
    """A path built from data or arguments would leave its folder."""


def confined_path(root: str | Path, *parts: str) -> Path:
    """``root/part/part/...``, refusing anything that would leave `root`.

    Every part is one plain name (a site id, run name, report id, format, file name): empty, ``.``,
    ``..``, absolute paths, separators (``/``, ``\\``) and NUL are refused, and the result, with
    symbolic links resolved, must lie inside `root` (also resolved). Raises
    :class:`UnsafePathError` (a ValueError) naming the offending part.
    """
    import os

    base = Path(root).resolve()
    for part in parts:
        s = str(part)
        if (not s or s in (".", "..") or "/" in s or "\\" in s or "\0" in s
                or os.path.isabs(s) or s != s.strip()):
            raise UnsafePathError(f"{s!r} is not a plain file or folder name (it would leave {base})")
    path = base.joinpath(*map(str, parts)).resolve()
    if not path.is_relative_to(base):
        raise UnsafePathError(f"{'/'.join(map(str, parts))!r} leads outside {base}")
    return path


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


# ---------------------------------------------------------------------------------------------
# figures a report may publish
#: Attribute of the root ``<svg>`` element of a vector figure drawn only from aggregates that
#: passed :func:`suppress` (set by the report code through :func:`publishable_figure`). The
#: scanner refuses every unmarked vector figure: exact plotting coordinates with the axis ticks
#: give back whatever was plotted.
FIGURE_ATTR = "data-ipso-figure"
FIGURE_SAFE = "suppressed-aggregates"
#: Keyword of the PNG text chunk holding a raster figure's text (titles, labels, legend), so the
#: scanner can check what the picture says.
PNG_TEXT_KEY = "ipso:text"


def mark_figure_svg(svg: str) -> str:
    """`svg` (an ``<svg>`` element's text) with the marker saying it was drawn from suppressed
    aggregates. Only for figures whose every plotted value passed :func:`suppress`."""
    i = svg.find("<svg")
    if i < 0:
        raise ValueError("mark_figure_svg: no <svg> element")
    if FIGURE_ATTR in svg[i:svg.find(">", i)]:
        return svg
    return f'{svg[:i + 4]} {FIGURE_ATTR}="{FIGURE_SAFE}"{svg[i + 4:]}'


def figure_text(fig) -> str:
    """Every text of a Matplotlib figure (titles, axis labels, tick labels, legend, annotations),
    one per line, in drawing order, without repeats."""
    from matplotlib.text import Text

    seen: dict[str, None] = {}
    for t in fig.findobj(Text):
        s = t.get_text().strip()
        if s and t.get_visible():
            seen.setdefault(s, None)
    return "\n".join(seen)


def figure_png(fig, *, dpi: float | None = None, tight: bool = True, text: str | None = None) -> bytes:
    """The figure as PNG bytes, drawn once (tight crop measured on the same draw, plus
    ``savefig.pad_inches``), with `text` (default: :func:`figure_text`) in an ``ipso:text`` chunk."""
    import io

    import matplotlib as mpl
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    dpi = float(dpi) if dpi else _png_dpi()
    old = fig.dpi
    fig.dpi = dpi
    try:
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        rgba = np.asarray(canvas.buffer_rgba())
        h, w = rgba.shape[:2]
        x0, y0, x1, y1 = 0, 0, w, h
        if tight:
            bbox = fig.get_tightbbox(canvas.get_renderer())
            pad = float(mpl.rcParams["savefig.pad_inches"])
            x0 = max(0, int(np.floor((bbox.x0 - pad) * dpi)))
            x1 = min(w, int(np.ceil((bbox.x1 + pad) * dpi)))
            y0 = max(0, h - int(np.ceil((bbox.y1 + pad) * dpi)))
            y1 = min(h, h - int(np.floor((bbox.y0 - pad) * dpi)))
        image = Image.fromarray(np.ascontiguousarray(rgba[y0:y1, x0:x1])).convert("RGB")
        if text is None:  # after the draw: tick labels exist only once drawn
            text = figure_text(fig)
    finally:
        fig.dpi = old
    info = PngInfo()
    info.add_itxt(PNG_TEXT_KEY, text)
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info, compress_level=3)
    return buf.getvalue()


class RasterFigure:
    """A figure as PNG (displays as ``image/png``; its text, also in the PNG, as ``text/plain``)."""

    def __init__(self, png: bytes, text: str, width: int | None = None):
        self.png, self.text, self.width = png, text, width

    def _repr_png_(self):
        return (self.png, {"width": self.width}) if self.width else self.png

    def __repr__(self) -> str:
        return "Figure: " + "; ".join(self.text.splitlines())[:500]


class VectorFigure:
    """A marked vector figure (displays as ``image/svg+xml``): see :func:`publishable_figure`."""

    def __init__(self, svg: str):
        self.svg = svg

    def _repr_svg_(self) -> str:
        return self.svg


def publishable_figure(fig, *, from_suppressed_aggregates: bool = False, tight: bool = True,
                       close: bool = True) -> RasterFigure | VectorFigure:
    """How a report publishes a Matplotlib figure.

    Vector output (SVG) keeps the exact plotting coordinates, from which the plotted values come
    back with the axis ticks; it is only for figures drawn from aggregates that passed
    :func:`suppress` (``from_suppressed_aggregates=True``) and carries a marker saying so (the
    output scanner refuses unmarked vector figures). Any other figure is published as a raster
    image (PNG) whose text travels in a PNG text chunk for the scanner.
    """
    import matplotlib.pyplot as plt

    if from_suppressed_aggregates:
        from .plotting import figure_svg

        return VectorFigure(mark_figure_svg(figure_svg(fig, tight=tight, close=close)))
    png = figure_png(fig, tight=tight)
    text = png_text(png).get(PNG_TEXT_KEY, "")
    import struct

    width = round(struct.unpack(">I", png[16:20])[0] * 96 / _png_dpi())  # CSS px at 96 dpi
    if close:
        plt.close(fig)
    return RasterFigure(png, text, width)


def _png_dpi() -> float:
    import matplotlib as mpl

    d = mpl.rcParams["savefig.dpi"]
    return float(mpl.rcParams["figure.dpi"] if d == "figure" else d)


# ---------------------------------------------------------------------------------------------
# findings
@dataclass(frozen=True)
class Finding:
    """One publication-safety problem in an output file.

    kind: "forbidden_string", "timestamp", "small_count" (count table, JSON or CSV),
    "text_count" (running text), "subtraction", "unmarked_figure", "figure_counts",
    "identifier_column", "unreadable" or "parse_error". `detail` says what and where, never the
    value found (it is safe to show wherever the report's failure is listed); `excerpt` is the
    surrounding text with the value masked.
    """

    path: str
    kind: str
    detail: str
    excerpt: str = ""


_KIND_WORDS = {
    "forbidden_string": "identifier or other hospital's name",
    "timestamp": "exact timestamp",
    "small_count": "count from 1 to the threshold in a table or data file",
    "text_count": "count from 1 to the threshold in running text",
    "subtraction": "pair of counts whose difference is from 1 to the threshold",
    "unmarked_figure": "vector figure not marked as drawn from suppressed aggregates",
    "figure_counts": "vector figure whose coordinates give back small counts",
    "identifier_column": "identifier column",
    "unreadable": "file the scanner could not read",
    "parse_error": "file the scanner could not parse",
}


def describe_findings(findings: Sequence[Finding]) -> str:
    """One line for wherever a failed report is listed: what kinds of problem, how many, in which
    files (names only); never a value found."""
    if not findings:
        return "output scan clean"
    by_kind: dict[str, int] = {}
    files: dict[str, None] = {}
    for f in findings:
        by_kind[f.kind] = by_kind.get(f.kind, 0) + 1
        files.setdefault(Path(f.path).name, None)
    parts = [f"{n} {_KIND_WORDS.get(k, k)}{'' if n == 1 else ' finding(s)'}"
             for k, n in sorted(by_kind.items())]
    return f"failed the output scan ({', '.join(files)}): " + "; ".join(parts)


def _mask(text: str, start: int, end: int, width: int = 40) -> str:
    a, b = max(0, start - width), min(len(text), end + width)
    return (text[a:start] + "[...]" + text[end:b]).replace("\n", " ")


# ---------------------------------------------------------------------------------------------
# reading a file the way a reader sees it
@dataclass
class _Doc:
    """What the checks look at in one file."""

    path: str
    texts: list[str] = field(default_factory=list)  # for forbidden strings and timestamps
    prose: list[str] = field(default_factory=list)  # visible text, one block per element
    htmls: list[str] = field(default_factory=list)  # HTML holding count tables
    svgs: list[str] = field(default_factory=list)  # vector figures
    data_counts: list[tuple[str, float]] = field(default_factory=list)  # (key or column, value)
    findings: list[Finding] = field(default_factory=list)


_BLOCK_TAGS = {"p", "div", "li", "tr", "table", "thead", "tbody", "section", "br", "h1", "h2",
               "h3", "h4", "h5", "h6", "caption", "figcaption", "ul", "ol", "header", "footer",
               "blockquote", "pre", "dt", "dd", "title", "main", "article", "nav", "figure"}


class _TextParser(HTMLParser):
    """Visible text of an HTML page: blocks split at block elements, cells by " | "."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style", "svg", "noscript"):
            self.skip += 1
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")
        elif tag in ("td", "th"):
            self.parts.append(" | ")

    def handle_endtag(self, tag):
        if tag in ("script", "style", "svg", "noscript"):
            self.skip = max(0, self.skip - 1)
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self.skip:
            self.parts.append(data)


def visible_text(html_text: str) -> str:
    """The text a reader of an HTML page sees (no script, style or inline SVG)."""
    p = _TextParser()
    p.feed(html_text)
    p.close()
    text = "".join(p.parts)
    return "\n".join(re.sub(r"[ \t\u00a0]+", " ", ln).strip() for ln in text.splitlines() if ln.strip())


_DATA_URI = re.compile(r"data:([a-z0-9.+/-]+)((?:;[a-z0-9=.+-]+)*?)(;base64)?,([^\"'\s)<>]*)",
                       re.IGNORECASE)
_IMG_TAG = re.compile(r"<img\b[^>]*>", re.IGNORECASE)
_INLINE_SVG = re.compile(r"<svg\b.*?</svg\s*>", re.IGNORECASE | re.DOTALL)
_SCRIPT = re.compile(r"<script\b[^>]*>.*?</script\s*>", re.IGNORECASE | re.DOTALL)


def _decode_data_uri(m: re.Match) -> bytes:
    import base64
    from urllib.parse import unquote_to_bytes

    payload = m.group(4)
    if m.group(3):
        return base64.b64decode(payload + "=" * (-len(payload) % 4))
    return unquote_to_bytes(payload)


def png_text(data: bytes) -> dict[str, str]:
    """Text chunks (tEXt, zTXt, iTXt) of a PNG: {keyword: text}. Empty for anything else."""
    import struct
    import zlib

    out: dict[str, str] = {}
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return out
    pos = 8
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        try:
            if kind == b"tEXt":
                k, _, v = body.partition(b"\0")
                out[k.decode("latin-1")] = v.decode("latin-1")
            elif kind == b"zTXt":
                k, _, v = body.partition(b"\0")
                out[k.decode("latin-1")] = zlib.decompress(v[1:]).decode("latin-1")
            elif kind == b"iTXt":
                k, _, rest = body.partition(b"\0")
                flag, rest = rest[0], rest[2:]
                _, _, rest = rest.partition(b"\0")
                _, _, text = rest.partition(b"\0")
                out[k.decode("latin-1")] = (zlib.decompress(text) if flag else text).decode("utf-8", "replace")
            elif kind == b"IEND":
                break
        except (ValueError, zlib.error, IndexError):
            continue
    return out


def svg_text(svg: str) -> list[str]:
    """Texts of an SVG's ``<text>`` elements (with ``svg.fonttype: none``, every chart label)."""
    out = []
    for m in re.finditer(r"<text\b[^>]*>(.*?)</text>", svg, re.DOTALL | re.IGNORECASE):
        t = html_lib.unescape(re.sub(r"<[^>]+>", "", m.group(1))).strip()
        if t:
            out.append(t)
    return out


def _add_image(doc: _Doc, mime: str, data: bytes) -> None:
    mime = mime.lower()
    if mime == "image/svg+xml":
        svg = data.decode("utf-8", "replace")
        doc.svgs.append(svg)
        doc.texts += svg_text(svg)
    elif mime == "image/png":
        doc.texts += list(png_text(data).values())




def _read_html(doc: _Doc, raw: str) -> None:
    for m in _IMG_TAG.finditer(raw):
        src = re.search(r"""\bsrc\s*=\s*["']?(data:[^"'\s>]+)""", m.group(0), re.IGNORECASE)
        if src:
            d = _DATA_URI.match(src.group(1))
            if d:
                try:
                    _add_image(doc, d.group(1), _decode_data_uri(d))
                except ValueError:
                    doc.findings.append(Finding(doc.path, "parse_error", "an embedded image could not be decoded"))
    # an <svg> inside a <script> is a string of the page's JavaScript (Quarto's tippy.js arrow),
    # not a figure: figures are looked for in the page without its scripts
    for m in _INLINE_SVG.finditer(_SCRIPT.sub("<script></script>", raw)):
        doc.svgs.append(m.group(0))
        doc.texts += svg_text(m.group(0))
    # the page without images and embedded files: what text checks read
    clean = _DATA_URI.sub("data:", _INLINE_SVG.sub("<svg></svg>", raw))
    doc.texts.append(html_lib.unescape(clean))  # entities decoded: "&#x27;" is "'" again
    doc.htmls.append(clean)
    doc.prose.append(visible_text(clean))


def _read_pdf(doc: _Doc, path: Path) -> None:
    try:
        from pypdf import PdfReader

        reader = PdfReader(str(path))
        pages = [page.extract_text() or "" for page in reader.pages]
        meta = [str(v) for v in (reader.metadata or {}).values()]
    except Exception as exc:  # noqa: BLE001 - any unreadable PDF must fail the scan, not pass it
        doc.findings.append(Finding(doc.path, "unreadable", f"PDF text could not be extracted ({type(exc).__name__})"))
        return
    doc.texts += pages + meta
    # the running text without each page's own page number (a line holding only it, which the
    # extraction can place mid-sentence: "any in-hospital\n1\ndeath" is not a count of deaths)
    doc.prose += [_without_page_number(t, i + 1) for i, t in enumerate(pages)]


def _without_page_number(text: str, number: int) -> str:
    lines = text.split("\n")
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].strip() == str(number):
            del lines[i]
            break
    return "\n".join(lines)


def _walk_json(obj, key: str | None, doc: _Doc) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            doc.texts.append(str(k))
            _walk_json(v, str(k), doc)
    elif isinstance(obj, list):
        for v in obj:
            _walk_json(v, key, doc)
    elif isinstance(obj, bool) or obj is None:
        return
    elif isinstance(obj, (int, float)):
        if key is not None:
            doc.data_counts.append((key, float(obj)))
    else:
        doc.texts.append(str(obj))


def _read_csv(doc: _Doc, raw: str, forbidden_columns: Sequence[str]) -> None:
    import csv
    import io

    rows = list(csv.reader(io.StringIO(raw)))
    header = [c.strip() for c in rows[0]] if rows else []
    for c in forbidden_columns:
        if c in header:
            doc.findings.append(Finding(doc.path, "identifier_column", f"identifier column {c!r} in the CSV header"))
    doc.texts.append(raw)
    for row in rows[1:]:
        for name, cell in zip(header, row):
            v = _parse_count(cell)
            if v is not None:
                doc.data_counts.append((name, v))


def _read_ipynb(doc: _Doc, raw: str) -> None:
    try:
        nb = json.loads(raw)
    except json.JSONDecodeError as exc:
        doc.findings.append(Finding(doc.path, "parse_error", f"notebook JSON: {exc.msg}"))
        return
    strings, htmls = _ipynb_texts(nb)
    doc.texts += [raw] + strings + [html_lib.unescape(h) for h in htmls]
    doc.htmls += htmls
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            for mime in ("image/svg+xml", "image/png"):
                if mime in data:
                    v = data[mime]
                    v = "".join(v) if isinstance(v, list) else v
                    if mime == "image/png":
                        import base64

                        _add_image(doc, mime, base64.b64decode(v))
                    else:
                        _add_image(doc, mime, v.encode())
            for mime in ("text/markdown", "text/plain"):
                if mime in data and "image/png" not in data and "image/svg+xml" not in data:
                    v = data[mime]
                    doc.prose.append("".join(v) if isinstance(v, list) else v)
            if "text/html" in data:
                v = data["text/html"]
                doc.prose.append(visible_text("".join(v) if isinstance(v, list) else v))


SCAN_SUFFIXES = (".html", ".htm", ".ipynb", ".csv", ".json", ".md", ".txt", ".typ", ".tex",
                 ".svg", ".pdf", ".png")


def _read(path: Path, forbidden_columns: Sequence[str]) -> _Doc:
    doc = _Doc(str(path))
    suffix = path.suffix.lower()
    if suffix == ".pdf":
        _read_pdf(doc, path)
        return doc
    if suffix == ".png":
        doc.texts += list(png_text(path.read_bytes()).values())
        return doc
    raw = path.read_text(encoding="utf-8", errors="replace")
    if suffix in (".html", ".htm"):
        _read_html(doc, raw)
    elif suffix == ".svg":
        doc.svgs.append(raw)
        doc.texts += [raw] + svg_text(raw)
    elif suffix == ".ipynb":
        _read_ipynb(doc, raw)
    elif suffix == ".json":
        doc.texts.append(raw)
        try:
            _walk_json(json.loads(raw), None, doc)
        except json.JSONDecodeError:
            doc.findings.append(Finding(doc.path, "parse_error", "JSON could not be parsed"))
    elif suffix == ".csv":
        _read_csv(doc, raw, forbidden_columns)
    else:
        doc.texts.append(raw)
        doc.prose.append(raw)
    return doc


# ---------------------------------------------------------------------------------------------
# count tables
class _CountTableParser(HTMLParser):
    """Collects body rows of tables inside count-table wrappers."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[dict | None] = []  # div wrappers: count spec or None
        self.rows: list[tuple[dict, list[str]]] = []
        self._in_thead = 0
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self.tables = 0

    def _spec(self) -> dict | None:
        for s in reversed(self.stack):
            if s is not None:
                return s
        return None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "div":
            if COUNT_COLUMNS_ATTR in a:
                cols = [int(x) for x in (a[COUNT_COLUMNS_ATTR] or "").split(",") if x.strip()]
                self.tables += 1
                self.stack.append({"cols": cols, "table": self.tables,
                                   "min_cell": int(a.get(MIN_CELL_ATTR) or DEFAULT_MIN_CELL)})
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
    t = str(text).replace(",", "").replace("\u00a0", " ").strip()
    m = re.fullmatch(r"(\d+)(?:\s*\(.*\))?", t)  # "7" or "7 (3.5%)"
    return float(m.group(1)) if m else None


def _count_table_cells(text: str) -> list[tuple[dict, int, int, float]]:
    """(spec, row number, column, value) of every count cell of the marked count tables."""
    p = _CountTableParser()
    p.feed(text)
    p.close()
    out = []
    rows_seen: dict[int, int] = {}
    for spec, row in p.rows:
        r = rows_seen[spec["table"]] = rows_seen.get(spec["table"], 0) + 1
        for pos in spec["cols"]:
            if pos < len(row):
                v = _parse_count(row[pos])
                if v is not None:
                    out.append((spec, r, pos, v))
    return out


def _ipynb_texts(nb: dict) -> tuple[list[str], list[str]]:
    """All strings of a notebook (sources, outputs, metadata), and its HTML outputs."""
    strings: list[str] = []
    htmls: list[str] = []

    def walk(o):
        if isinstance(o, str):
            if not o.startswith(("iVBOR", "PHN2Zy")):  # base64 PNG/SVG payloads: read as images
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
                if k != "image/png":
                    walk(v)

    walk(nb)
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []):
            h = out.get("data", {}).get("text/html")
            if h is not None:
                htmls.append("".join(h) if isinstance(h, list) else h)
    return strings, htmls


# ---------------------------------------------------------------------------------------------
# counts in running text
_NUMBER = r"(\d{1,3}(?:,\d{3})+|\d+)"
_END = r"(?![\w,%]|\.\d)"
#: What a count in a report counts (episodes, deaths, ...), as words in running text.
COUNT_NOUNS = ("episodes", "episode", "deaths", "death", "events", "event", "patients", "patient",
               "children", "child", "admissions", "admission", "cases", "case", "discharges",
               "discharge", "rows", "row", "survivors", "pre", "post")
_NOUN = "(" + "|".join(COUNT_NOUNS) + ")"
#: Words that may stand between a number and its noun ("5 sepsis-attributable deaths"); a word
#: naming another unit ("3 hospitals had deaths") or a preposition breaks the link.
_NOT_BETWEEN = (r"(?!(?:hospitals?|sites?|months?|years?|days?|weeks?|hours?|minutes?|waves?|"
                r"percent|per|of|in|and|or|with|without|to|from|than|had|have|has|were|was|is|are|"
                r"for|at|by|on)\b)")
_COUNT_BEFORE_NOUN = re.compile(
    rf"(?<![\w.,/-]){_NUMBER}{_END}\s+(?:{_NOT_BETWEEN}[a-z][a-z'-]*\s+){{0,2}}?{_NOUN}\b",
    re.IGNORECASE)
_COUNT_AFTER_LABEL = re.compile(rf"\b{_NOUN}\b[^\n.;:!?|\d]{{0,40}}?[:=]\s*{_NUMBER}{_END}",
                                re.IGNORECASE)
_N_EQUALS = re.compile(rf"(?<!\w)[nN]\s*=\s*{_NUMBER}{_END}")


@dataclass(frozen=True)
class _TextCount:
    value: float
    noun: str
    start: int
    end: int
    block: str


def text_counts(text: str) -> list[_TextCount]:
    """Counts stated in running text: a number before a count noun ("4 pre", "44 episodes with no
    death time"), a count noun's label before a number ("Sepsis episodes: 45") and "n = 7"."""
    out = []
    for m in _COUNT_BEFORE_NOUN.finditer(text):
        out.append(_TextCount(float(m.group(1).replace(",", "")), m.group(2).lower(),
                              m.start(1), m.end(1), text))
    for m in _COUNT_AFTER_LABEL.finditer(text):
        out.append(_TextCount(float(m.group(2).replace(",", "")), m.group(1).lower(),
                              m.start(2), m.end(2), text))
    for m in _N_EQUALS.finditer(text):
        out.append(_TextCount(float(m.group(1).replace(",", "")), "n", m.start(1), m.end(1), text))
    return out


_EPISODE_NOUNS = {"episodes", "episode"}


def redact_small_counts(text: str, min_cell: int = DEFAULT_MIN_CELL) -> str:
    """`text` with every count from 1 to ``min_cell - 1`` it states (:func:`text_counts`:
    "4 pre", "Deaths: 3", "n = 7") replaced by "fewer than `min_cell`": for messages built from
    data (a model's "too few events (4 pre, 7 post)") that reach a report."""
    small = sorted({(c.start, c.end) for c in text_counts(text) if 1 <= c.value < min_cell},
                   reverse=True)
    for start, end in small:
        text = text[:start] + f"fewer than {min_cell}" + text[end:]
    return text


# ---------------------------------------------------------------------------------------------
# vector figures
def _svg_root_marked(svg: str) -> bool:
    head = svg[svg.find("<svg"):]
    head = head[:head.find(">") + 1]
    return re.search(rf'{FIGURE_ATTR}\s*=\s*["\']{FIGURE_SAFE}["\']', head) is not None


_SVG_NS = "{http://www.w3.org/2000/svg}"
_XLINK = "{http://www.w3.org/1999/xlink}href"


def _tick_value(text: str) -> float | None:
    t = text.replace("\u2212", "-").replace(",", "").replace("%", "").strip()
    t = re.sub(r"^\$|\$$", "", t)
    try:
        return float(t)
    except ValueError:
        return None


def _axis_map(axes, which: str):
    """Pixel -> value map of the y (or x) axis of a Matplotlib SVG axes group, from its tick
    marks and numeric labels; None when the labels are not numbers or the axis is not linear."""
    pairs = []
    for g in axes.iter(f"{_SVG_NS}g"):
        if not re.fullmatch(rf"{which}tick_\d+", g.get("id", "")):
            continue
        pos = None
        for use in g.iter(f"{_SVG_NS}use"):  # the tick mark
            if use.get(which) is not None:
                pos = float(use.get(which))
                break
        if pos is None:  # no tick marks (e.g. seaborn's whitegrid): the grid line
            k = 1 if which == "y" else 0
            for path in g.iter(f"{_SVG_NS}path"):
                pts = _path_points(path.get("d"))
                if len(pts) >= 2 and np.ptp(pts[:, k]) < 1e-9:
                    pos = float(pts[0, k])
                    break
        label = " ".join("".join(t.itertext()) for t in g.iter(f"{_SVG_NS}text")).strip()
        v = _tick_value(label) if label else None
        if pos is not None and v is not None:
            pairs.append((pos, v))
    if len({p for p, _ in pairs}) < 2:
        return None
    px, val = np.array(pairs).T
    b, a = np.polyfit(px, val, 1)
    if np.max(np.abs(a + b * px - val)) > 1e-6 * max(1.0, np.max(np.abs(val))):
        return None
    return lambda p: a + b * np.asarray(p, dtype=float)


def _iter_drawn(el):
    """`el` and its descendants, without ``<defs>`` (marker shapes are defined there, in their
    own coordinates, and drawn by ``<use>``)."""
    yield el
    for child in el:
        if child.tag != f"{_SVG_NS}defs":
            yield from _iter_drawn(child)


_PATH_NUMBERS = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def _path_points(d: str) -> np.ndarray:
    nums = [float(x) for x in _PATH_NUMBERS.findall(d or "")]
    if len(nums) < 2:
        return np.empty((0, 2))
    return np.array(nums[: len(nums) // 2 * 2]).reshape(-1, 2)


def figure_count_series(svg: str, min_cell: int = DEFAULT_MIN_CELL) -> list[str]:
    """Attack on a Matplotlib SVG: map every plotted series (lines, markers, scatter points, bars)
    through the y axis' tick positions and labels; a series whose values are all whole numbers,
    some from 1 to ``min_cell - 1``, gives back small counts. Returns one description per such
    series (without the values). Straight horizontal lines (reference lines) are left out."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(svg.encode("utf-8") if isinstance(svg, str) else svg)
    except ET.ParseError:
        return []
    out = []
    for axes in root.iter(f"{_SVG_NS}g"):
        if not re.fullmatch(r"axes_\d+", axes.get("id", "")):
            continue
        ymap = _axis_map(axes, "y")
        if ymap is None:
            continue
        series: list[tuple[str, np.ndarray]] = []
        patches = []
        for g in axes:
            gid = g.get("id", "")
            if re.fullmatch(r"(line2d|PathCollection|LineCollection)_\d+", gid):
                ys = []
                for el in _iter_drawn(g):
                    if el.tag == f"{_SVG_NS}path" and el.get("d"):
                        pts = _path_points(el.get("d"))
                        if len(pts) >= 2 and np.ptp(pts[:, 1]) > 1e-9:
                            ys += list(pts[:, 1])
                    elif el.tag == f"{_SVG_NS}use" and el.get("y") is not None:
                        ys.append(float(el.get("y")))
                if ys:
                    series.append((gid, np.array(ys)))
            elif re.fullmatch(r"patch_\d+", gid):
                for el in g.iter(f"{_SVG_NS}path"):
                    pts = _path_points(el.get("d"))
                    if len(pts) >= 4:
                        patches.append(pts)
        if patches:  # bars: the top of each rectangle, except the axes' background
            areas = [np.ptp(p[:, 0]) * np.ptp(p[:, 1]) for p in patches]
            biggest = int(np.argmax(areas))
            tops = [p[:, 1].min() for i, p in enumerate(patches) if i != biggest and np.ptp(p[:, 1]) > 1e-9]
            if tops:
                series.append(("bars", np.array(tops)))
        for gid, ys in series:
            vals = ymap(ys)
            whole = np.abs(vals - np.round(vals)) < 1e-3
            small = whole & (np.round(vals) >= 1) & (np.round(vals) < min_cell)
            if whole.all() and small.any():
                out.append(f"axes {axes.get('id')}, series {gid}: {int(small.sum())} plotted value(s) "
                           f"are whole numbers from 1 to {min_cell - 1} on the y axis")
    return out


# ---------------------------------------------------------------------------------------------
_TOKEN = re.compile(r"[\w\-.:/]+")
#: Keys (JSON) and columns (CSV) that hold counts.
COUNT_KEYS = frozenset({"n", "count", "events", "deaths", "episodes", "patients", "admissions",
                        "cases", "observed", "numerator", "denominator"})
CHECKS = ("strings", "timestamps", "count_tables", "text_counts", "subtraction", "figures",
          "data_counts")


class ForbiddenStrings:
    """Forbidden strings prepared for :func:`scan_outputs` (whole words in a set, other strings in
    one regular expression): prepare a long list (every episode id) once and reuse it; `extended`
    adds a few (another report's hospital names) without preparing the list again."""

    def __init__(self, strings: Iterable[str] = (), *, _words: frozenset[str] | None = None,
                 _phrases: tuple[str, ...] = ()):
        words, phrases = set(), list(_phrases)
        for s in strings:
            s = str(s).strip()
            if not s or (s.isdigit() and len(s) < 6):
                continue
            if _TOKEN.fullmatch(s):
                words.add(s.lower())
            else:
                phrases.append(s)
        self.words = frozenset(words) | (_words or frozenset())
        self.phrases = tuple(dict.fromkeys(phrases))
        self.phrase_re = (re.compile(r"(?<!\w)(?:" + "|".join(re.escape(s) for s in
                          sorted(self.phrases, key=len, reverse=True)) + r")(?!\w)", re.IGNORECASE)
                          if self.phrases else None)

    def extended(self, strings: Iterable[str]) -> ForbiddenStrings:
        return ForbiddenStrings(strings, _words=self.words, _phrases=self.phrases)


def scan_outputs(
    paths: Iterable[str | Path],
    *,
    forbidden_strings: Iterable[str] | ForbiddenStrings = (),
    min_cell: int = DEFAULT_MIN_CELL,
    forbidden_patterns: Sequence[re.Pattern | str] = (TIMESTAMP_PATTERN,),
    forbidden_columns: Sequence[str] = ("episode_id", "patient_id"),
    check_small_counts: bool = True,
    checks: Iterable[str] = CHECKS,
) -> list[Finding]:
    """Scan output files for anything that must not be published.

    Every file is read as its reader sees it: HTML as its visible text, the text of its embedded
    SVG figures and the text chunks of its PNG figures; PDF as its extracted text (pypdf); SVG,
    JSON, CSV, notebooks, Markdown and plain text as they are. Checks (`checks`, default all):

    ``strings``
        forbidden strings (other hospitals' names and ids, episode and patient ids, the run key),
        case-insensitively as whole words (id ``S1`` does not match ``S10``; purely numeric strings
        shorter than 6 characters are skipped: they cannot be told apart from counts); also CSV
        identifier columns.
    ``timestamps``
        `forbidden_patterns` (default: exact timestamps ``YYYY-MM-DD HH:MM``).
    ``count_tables``
        count columns of tables marked by :func:`mark_count_table`: no count from 1 to the table's
        threshold minus 1.
    ``text_counts``
        counts stated in running text ("4 pre, 7 post", "1 death in 5 episodes", "n = 7",
        "Deaths: 3"): none from 1 to ``min_cell - 1``.
    ``subtraction``
        the largest count of episodes a file states in text (the report's total, e.g. "Sepsis
        episodes: 45") minus any other count it publishes (text or count table; all are counts
        of subsets of those episodes) must not be from 1 to ``min_cell - 1`` ("44 episodes with
        no death time" gives 1 death).
    ``figures``
        every vector figure (SVG file, inline ``<svg>``, SVG image, or a notebook's
        ``image/svg+xml`` output) must carry the marker of :func:`publishable_figure` (drawn from
        suppressed aggregates), and even a marked one must not give back whole numbers from 1 to
        ``min_cell - 1`` through its y-axis ticks (:func:`figure_count_series`). Raster figures
        pass (their text, in the PNG's text chunk, is checked for forbidden strings).
    ``data_counts``
        JSON values and CSV cells under count-like keys (:data:`COUNT_KEYS`): none from 1 to
        ``min_cell - 1``.

    `paths` are files or directories (searched recursively for :data:`SCAN_SUFFIXES`).
    `check_small_counts=False` turns off every count check (kept for older callers).
    Returns the findings; empty when the outputs are safe to publish. No finding's ``detail``
    repeats the value found (see :class:`Finding`).
    """
    checks = set(checks)
    unknown = checks - set(CHECKS)
    if unknown:
        raise ValueError(f"scan_outputs: unknown checks {sorted(unknown)}; known: {', '.join(CHECKS)}")
    if not check_small_counts:
        checks -= {"count_tables", "text_counts", "subtraction", "data_counts"}
    files: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            files.extend(sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in SCAN_SUFFIXES))
        elif p.exists():
            files.append(p)
        else:
            raise ValueError(f"scan_outputs: no such file or directory: {p}")

    forbidden = (forbidden_strings if isinstance(forbidden_strings, ForbiddenStrings)
                 else ForbiddenStrings(forbidden_strings))
    words, phrase_re = forbidden.words, forbidden.phrase_re
    patterns = [re.compile(p) if isinstance(p, str) else p for p in forbidden_patterns]

    findings: list[Finding] = []
    for f in files:
        doc = _read(f, forbidden_columns if "strings" in checks else ())
        findings += _check(doc, checks, words, phrase_re, patterns, min_cell)
    return findings


def _check(doc: _Doc, checks: set[str], words: set[str], phrase_re, patterns, min_cell: int) -> list[Finding]:
    out: list[Finding] = list(doc.findings)
    seen: set[tuple[str, str]] = set()

    def add(kind: str, detail: str, excerpt: str = "") -> None:
        if (kind, detail) not in seen:
            seen.add((kind, detail))
            out.append(Finding(doc.path, kind, detail, excerpt))

    n_strings = 0
    for t in doc.texts if "strings" in checks or "timestamps" in checks else ():
        if "strings" in checks and words:
            for m in _TOKEN.finditer(t):
                tok = m.group(0).lower()
                cands = {tok, tok.strip(".:/-"), *re.split(r"[/:]", tok)}
                if cands & words:
                    n_strings += 1
                    add("forbidden_string", f"forbidden string (an identifier, another hospital's id "
                        f"or name, or the run key), occurrence {n_strings}", _mask(t, m.start(), m.end()))
        if "strings" in checks and phrase_re is not None:
            for m in phrase_re.finditer(t):
                n_strings += 1
                add("forbidden_string", f"forbidden string (another hospital's name or an identifier), "
                    f"occurrence {n_strings}", _mask(t, m.start(), m.end()))
        if "timestamps" in checks:
            for pat in patterns:
                for m in pat.finditer(t):
                    kind = "timestamp" if pat is TIMESTAMP_PATTERN else "forbidden_pattern"
                    add(kind, f"text matching {'an exact timestamp' if kind == 'timestamp' else 'a forbidden pattern'} "
                        f"({pat.pattern})", _mask(t, m.start(), m.end()))

    cells = []
    for h in doc.htmls:
        try:
            cells += _count_table_cells(h)
        except (ValueError, AssertionError) as exc:  # pragma: no cover - malformed HTML
            add("parse_error", f"HTML could not be parsed: {type(exc).__name__}")
    if "count_tables" in checks:
        for spec, row, col, v in cells:
            if 1 <= v < spec["min_cell"]:
                add("small_count", f"count table {spec['table']}, body row {row}, column {col}: a count "
                    f"from 1 to {spec['min_cell'] - 1}")

    counts = [c for block in doc.prose for c in text_counts(block)]
    if "text_counts" in checks:
        for c in counts:
            if 1 <= c.value < min_cell:
                add("text_count", f"running text states a count of {c.noun} from 1 to {min_cell - 1}",
                    _mask(c.block, c.start, c.end))
    if "subtraction" in checks:
        totals = [c.value for c in counts if c.noun in _EPISODE_NOUNS]
        if totals:
            total = max(totals)
            others = [(c.value, f"a count of {c.noun} in running text") for c in counts]
            others += [(v, f"count table {spec['table']}, body row {row}, column {col}")
                       for spec, row, col, v in cells]
            for v, where in others:
                if 1 <= total - v < min_cell:
                    add("subtraction", f"the report's total of episodes minus {where} leaves a "
                        f"count from 1 to {min_cell - 1}")

    if "figures" in checks:
        for i, svg in enumerate(doc.svgs, 1):
            if not _svg_root_marked(svg):
                add("unmarked_figure", f"vector figure {i} is not marked as drawn from suppressed "
                    "aggregates (publish it as a raster image, or draw it from suppressed data "
                    "and mark it with analysis.privacy.publishable_figure)")
            for desc in figure_count_series(svg, min_cell):
                add("figure_counts", f"vector figure {i}: {desc}")

    if "data_counts" in checks:
        for key, v in doc.data_counts:
            if key.strip().lower() in COUNT_KEYS and v == int(v) and 1 <= v < min_cell:
                add("small_count", f"value of {key!r}: a count from 1 to {min_cell - 1}")
    return out


# ---------------------------------------------------------------------------------------------
# the table-matching attack on pseudonyms
PSEUDONYM_PATTERN = r"Hospital [A-Z]{1,3}"


class _TableParser(HTMLParser):
    """Every table of a page: header cells and body rows (cell texts). A header of several rows
    (spanners over column groups, as great-tables writes "Before go-live" over "n") is read as
    one label per column: the spanner's words, then the column's; a row with a single cell over
    the whole table (a title) is left out of the labels."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: list[dict] = []
        self._stack: list[dict] = []
        self._row: list[tuple[str, int]] | None = None
        self._cell: list[str] | None = None
        self._span = 1
        self._head = 0

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self._stack.append({"header": [], "rows": [], "head_rows": []})
        elif tag == "thead":
            self._head += 1
        elif tag == "tr" and self._stack:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
            span = dict(attrs).get("colspan") or "1"
            self._span = int(span) if str(span).isdigit() and int(span) > 0 else 1

    def handle_endtag(self, tag):
        if tag == "table" and self._stack:
            t = self._stack.pop()
            t["header"] = _header_labels(t.pop("head_rows"))
            self.tables.append(t)
        elif tag == "thead":
            self._head = max(0, self._head - 1)
        elif tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append((" ".join("".join(self._cell).split()), self._span))
            self._cell = None
        elif tag == "tr" and self._row is not None and self._stack:
            t = self._stack[-1]
            if self._head and not t["rows"]:
                t["head_rows"].append(self._row)
            else:
                t["rows"].append([text for text, _ in self._row])
            self._row = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _header_labels(rows: list[list[tuple[str, int]]]) -> list[str]:
    """One label per column from the header rows (see :class:`_TableParser`)."""
    if not rows:
        return []
    width = max(sum(span for _, span in r) for r in rows)
    labels = [""] * width
    for r in rows:
        if len(r) == 1 and r[0][1] >= width > 1:
            continue  # a title over the whole table
        col = 0
        for text, span in r:
            for k in range(col, min(col + span, width)):
                labels[k] = f"{labels[k]} {text}".strip()
            col += span
    return labels


def _tables(html_text: str) -> list[dict]:
    html_text = _DATA_URI.sub("data:", _INLINE_SVG.sub("", html_text))
    p = _TableParser()
    p.feed(html_text)
    p.close()
    return p.tables


def _interval(text: str) -> tuple[float, float] | None:
    """A published number as the interval of values it allows: "432" -> (432, 432),
    "100-199" / "100 to 199" -> (100, 199), "2,000+" / ">= 2,000" -> (2000, inf)."""
    t = text.replace(",", "").replace("\u2013", "-").replace("\u2264", "<=").replace("\u2265", ">=").strip()
    if m := re.fullmatch(r"(\d+)\s*(?:-|to)\s*(\d+)", t):
        return float(m.group(1)), float(m.group(2))
    if m := re.fullmatch(r"(?:>=\s*|at least\s+)?(\d+)\s*\+?", t):
        lo = float(m.group(1))
        return (lo, np.inf) if ("+" in t or ">=" in t or "least" in t) else (lo, lo)
    if m := re.fullmatch(r"(?:<\s*|fewer than\s+)(\d+)", t):
        return 0.0, float(m.group(1)) - 1
    return None


def site_report_facts(path: str | Path) -> dict[str, Any]:
    """What a site report publishes that could link it to a pseudonym: its wave, its episode
    total (header), its episodes before and after go-live (Table 1's "Episodes" row), and every
    whole number it shows."""
    raw = Path(path).read_text(encoding="utf-8", errors="replace")
    text = visible_text(_DATA_URI.sub("data:", _INLINE_SVG.sub("", raw)))
    facts: dict[str, Any] = {"numbers": {float(x.replace(",", "")) for x in re.findall(_NUMBER, text)}}
    if m := re.search(r"\bwave (\d+)", text, re.IGNORECASE):
        facts["wave"] = float(m.group(1))
    totals = [c.value for c in text_counts(text) if c.noun in _EPISODE_NOUNS]
    if totals:
        facts["total"] = max(totals)
    for t in _tables(raw):
        header = [h.lower() for h in t["header"]]
        for row in t["rows"]:
            if row and row[0].strip().lower() == "episodes":
                for h, cell in zip(header, row):
                    v = _parse_count(cell)
                    if v is None:
                        continue
                    if "before" in h:
                        facts.setdefault("before", v)
                    elif "after" in h:
                        facts.setdefault("after", v)
    return facts


def pseudonym_rows(path: str | Path, pattern: str = PSEUDONYM_PATTERN) -> dict[str, dict[str, tuple]]:
    """Rows of a report's tables that name a pseudonym: {pseudonym: {column header: interval}}."""
    raw = Path(path).read_text(encoding="utf-8", errors="replace")
    out: dict[str, dict[str, tuple]] = {}
    for t in _tables(raw):
        for row in t["rows"]:
            names = [c for c in row if re.fullmatch(pattern, c.strip())]
            if len(names) != 1:
                continue
            header = t["header"] + [""] * (len(row) - len(t["header"]))
            vals = {}
            for h, cell in zip(header, row):
                iv = _interval(cell)
                if iv is not None:
                    vals[h.strip().lower() or f"col{len(vals)}"] = iv
            out.setdefault(names[0].strip(), {}).update(vals)
    return out


def _consistent(values: Mapping[str, tuple], facts: Mapping[str, Any]) -> bool:
    for header, (lo, hi) in values.items():
        if "wave" in header:
            key = "wave"
        elif "before" in header or header.endswith("pre"):
            key = "before"
        elif "after" in header or header.endswith("post"):
            key = "after"
        elif "episode" in header or "total" in header:
            key = "total"
        else:
            key = None
        if key is not None and key in facts:
            if not lo <= facts[key] <= hi:
                return False
        elif not any(lo <= v <= hi for v in facts["numbers"]):
            return False
    return True


def pseudonym_links(collaborative: str | Path, site_reports: Mapping[str, str | Path],
                    pattern: str = PSEUDONYM_PATTERN) -> dict[str, str]:
    """The table-matching attack: which pseudonyms of the collaborative report can be tied to one
    hospital, by matching every number in a pseudonym's table row (wave, episodes before and after
    go-live, any other count; exact or banded) against what each site report publishes
    (:func:`site_report_facts`), eliminating hospitals already tied to another pseudonym until
    nothing changes. Returns {pseudonym: site id} for every pseudonym tied to exactly one
    hospital; empty when the pseudonyms hold."""
    rows = {k: v for k, v in pseudonym_rows(collaborative, pattern).items() if v}
    facts = {s: site_report_facts(p) for s, p in site_reports.items()}
    cands = {ps: {s for s, f in facts.items() if _consistent(vals, f)} for ps, vals in rows.items()}
    linked: dict[str, str] = {}
    changed = True
    while changed:
        changed = False
        for ps, c in cands.items():
            if ps not in linked and len(c) == 1:
                linked[ps] = next(iter(c))
                for other, oc in cands.items():
                    if other != ps and linked[ps] in oc:
                        oc.discard(linked[ps])
                changed = True
    return linked

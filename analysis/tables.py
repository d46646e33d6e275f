"""Publication tables: one definition, rendered to HTML, Word and LaTeX alike.

A :class:`PubTable` is a tidy frame (one row per displayed row, numbers unformatted) plus its
columns (:class:`Column`: label, formatter, alignment, spanner), row groups, footnotes and a
suppression spec (:class:`Suppression`). Counts go through :func:`analysis.privacy.suppress`
(complementary suppression) *before* anything is formatted, and every cell computed from a
hidden count is hidden with it. The same definition renders to

* HTML (great-tables; count columns marked for :func:`analysis.privacy.scan_outputs`),
* Word (:meth:`PubTable.to_docx`, python-docx; reproducible bytes with :meth:`PubTable.save`),
* LaTeX (:meth:`PubTable.to_latex`: a booktabs ``table`` environment; specials escaped),
* CSV and Markdown (pipe table for Quarto manuscripts).

Readable by construction: no index column, column labels from the definition, internal names
(estimand, specification, estimator and variable ids) mapped through the plan's labels
(:func:`readable`), p-values as "<0.001", estimates and intervals formatted alike
("0.81 (0.70 to 0.94)").

Builders for a paper: :func:`primary_estimand_table`, :func:`sensitivity_table`,
:func:`table_one` and :func:`process_outcome_table`. :func:`register_table` displays a table in a
report and exports it (csv, docx, tex, md, json) to the run's export folder.
"""

from __future__ import annotations

import math
import os
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import privacy

__all__ = [
    "Column", "PubTable", "Suppression", "TableRegistry", "format_count", "format_estimate_ci",
    "format_number", "format_p", "internal_names", "latex_escape", "primary_estimand_table",
    "primary_rows",
    "process_outcome_table", "readable", "register_table", "sensitivity_table", "spec_label",
    "table_one",
]

# ---------------------------------------------------------------------------------------------
# formatting
def _missing(x: Any) -> bool:
    if x is None:
        return True
    try:
        return not math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def format_p(p: Any) -> str:
    """A p-value as journals print it: "<0.001", "0.004" (below 0.01: three decimals), "0.43",
    ">0.99"; empty when missing."""
    if _missing(p):
        return ""
    p = float(p)
    if p < 0.001:
        return "<0.001"
    if p < 0.01:
        return f"{p:.3f}"
    if p > 0.99:
        return ">0.99"
    return f"{p:.2f}"


def format_number(x: Any, digits: int = 2) -> str:
    """A number with `digits` decimals and thousands separators; empty when missing."""
    if _missing(x):
        return ""
    return f"{float(x):,.{digits}f}"


def format_count(n: Any) -> str:
    """A count with thousands separators ("1,234"); empty when missing."""
    if _missing(n):
        return ""
    return f"{int(round(float(n))):,}"


def format_estimate_ci(est: Any, lower: Any = None, upper: Any = None, *, digits: int = 2,
                       sep: str = " to ") -> str:
    """Estimate and interval with the same number of decimals: "0.81 (0.70 to 0.94)"; the
    estimate alone when there is no interval; empty when there is no estimate."""
    if _missing(est):
        return ""
    e = format_number(est, digits)
    if _missing(lower) or _missing(upper):
        return e
    return f"{e} ({_bound(lower, digits)}{sep}{_bound(upper, digits)})"


#: Interval bounds beyond this are printed as ">1,000" (a ratio's bound past it says only
#: "unbounded in practice"; its digits are noise).
BOUND_LIMIT = 1000.0


def _bound(x: Any, digits: int = 2) -> str:
    """An interval bound: ">1,000" above :data:`BOUND_LIMIT`, "<0.01" for a positive bound that
    rounds to zero, else :func:`format_number`."""
    v = float(x)
    if v > BOUND_LIMIT:
        return f">{BOUND_LIMIT:,.0f}"
    if 0 < v < 0.5 * 10 ** -digits:
        return f"<{10 ** -digits:.{digits}f}"
    return format_number(v, digits)


# ---------------------------------------------------------------------------------------------
# readable names
#: Specification names of the default plan -> what a reader is told.
SPEC_LABELS: dict[str, str] = {
    "its_multisite": "Multisite interrupted time series",
    "no_critical_casemix": "Case mix without critical sepsis",
    "slope_change": "With a change in slope after go-live",
    "site_trends": "A calendar trend per hospital",
    "pooled_site_its": "Hospitals' own time series, pooled (random effects)",
    "cox_calendar": "Cox model (hazard ratio)",
    "crude_pre_post": "Crude before/after comparison",
    "site_eb": "Hospital's time series shrunk toward all hospitals (empirical Bayes)",
    "site_its": "Hospital's own time series",
    "its_staggered": "Imputation estimator for staggered go-lives",
    "placebo_in_time": "Placebo in time (go-live moved 12 months earlier)",
    "leave_one_wave_out": "Leave one wave out",
    "transition_0": "No phase-in (transition of 0 months)",
    "transition_12": "12-month phase-in",
    "panel_hac": "Panel Newey-West (HAC) covariance",
    "rambachan_roth": "Rambachan-Roth bounds",
}
#: Estimator keys -> readable names (used for specifications not in :data:`SPEC_LABELS`).
ESTIMATOR_LABELS: dict[str, str] = {
    "its_multisite": "multisite interrupted time series",
    "site_its": "hospital's own time series",
    "site_eb": "empirical Bayes hospital estimate",
    "site_pooled": "hospitals pooled by random effects",
    "crude": "crude before/after comparison",
    "cox_calendar": "Cox model",
}
#: Episode columns (case mix, processes) -> readable names.
COLUMN_LABELS: dict[str, str] = {
    "age_group": "age group", "ccc_band": "number of complex chronic conditions",
    "ccc_count": "number of complex chronic conditions", "immunocompromised": "immunocompromised",
    "onset_setting": "where sepsis began", "hospital_onset": "hospital-onset sepsis",
    "critical_sepsis": "critical sepsis", "screen_positive": "positive sepsis screen",
    "huddle": "sepsis huddle", "order_set": "sepsis order set", "fluid_60": "fluid bolus within 60 minutes",
    "abx_60": "antibiotic within 60 minutes", "abx_180": "antibiotic within 180 minutes",
    "antibiotic_hours": "hours to first antibiotic", "antibiotic_spline": "hours to first antibiotic",
    "no_antibiotic": "no antibiotic", "bundle_compliant": "bundle compliance",
    "minutes_to_bolus": "minutes to first fluid bolus",
    "minutes_to_antibiotic": "minutes to first antibiotic", "los_days": "days in hospital",
    "episode_id": "episode", "patient_id": "patient", "site_id": "hospital",
    "treatment_before_t0_is_timely": "treatment before T0 counts as timely",
}
#: Process terms of :func:`analysis.processes.process_associations` -> table labels.
PROCESS_LABELS: dict[str, str] = {
    "screen_positive": "Positive sepsis screen",
    "huddle": "Sepsis huddle held",
    "order_set": "Sepsis order set used",
    "fluid_60": "Fluid bolus within 60 minutes",
    "abx_60": "Antibiotic within 60 minutes",
    "abx_180": "Antibiotic within 180 minutes",
    "antibiotic_hours": "Hours to first antibiotic (per hour, among children given one)",
    "no_antibiotic": "No antibiotic given (vs given at T0)",
}
#: Category levels of episode columns -> what Table 1 shows.
LEVEL_LABELS: dict[str, str] = {
    "F": "Female", "M": "Male", "U": "Not recorded", "ED": "Emergency department",
    "ward": "Ward", "ICU": "Intensive care unit", "heme_onc": "Haematology/oncology unit",
    "transplant": "Transplant unit",
}
_IDENT = re.compile(r"\b[A-Za-z][A-Za-z0-9]*(?:_[A-Za-z0-9]+)+\b|\b[a-z]+\d+\b")


def spec_label(spec: str, estimator: str | None = None) -> str:
    """The readable name of a specification (or its estimator, or its words)."""
    if spec in SPEC_LABELS:
        return SPEC_LABELS[spec]
    if estimator in ESTIMATOR_LABELS and estimator != spec:
        words = spec.replace("_", " ")
        return f"{ESTIMATOR_LABELS[estimator][0].upper()}{ESTIMATOR_LABELS[estimator][1:]}: {words}"
    words = spec.replace("_", " ").strip()
    return words[:1].upper() + words[1:]


def internal_names(plan: Any = None, store: Any = None, extra: Iterable[str] = ()) -> set[str]:
    """Identifiers that must never show in a published table or text: estimand, specification,
    estimator and variable ids of the plan (and of the store's rows), episode columns, process
    terms, store columns -- those that are not plain words (they hold ``_`` or a digit)."""
    from .plan import VARIABLES, default_plan
    from .results import COLUMNS, ESTIMATORS

    plan = plan or (store.plan if store is not None else default_plan())
    names: set[str] = set(extra)
    for e in plan.estimands:
        names.add(e.id)
        names.add(e.variable)
        for s in e.specs:
            names.update((s.name, s.estimator, *s.casemix))
    for v in VARIABLES.values():
        names.update(x for x in (v.column, v.known) if x)
    names.update(ESTIMATORS)
    names.update(COLUMNS)
    names.update(COLUMN_LABELS)
    names.update(PROCESS_LABELS)
    names.update(SPEC_LABELS)
    if store is not None:
        f = store.frame
        for col in ("estimand", "spec", "estimator"):
            if col in f:
                names.update(map(str, f[col].dropna().unique()))
    return {n for n in names if isinstance(n, str) and ("_" in n or any(c.isdigit() for c in n))}


def readable(text: Any, plan: Any = None) -> str:
    """`text` (a reason or method sentence from the plan or the store) with internal names
    replaced by what a reader is told: estimand ids by their labels, specification ids by
    :data:`SPEC_LABELS`, episode columns by :data:`COLUMN_LABELS`; any other ``snake_case``
    identifier by its words."""
    s = "" if text is None or (isinstance(text, float) and math.isnan(text)) else str(text)
    s = re.sub(r"\bsettings\.(?=[A-Za-z])", "setting: ", s)
    labels: dict[str, str] = {}
    if plan is not None:
        for e in plan.estimands:
            labels.setdefault(e.id, e.label[0].lower() + e.label[1:])
    labels.update({k: v[0].lower() + v[1:] for k, v in SPEC_LABELS.items()})
    labels.update(COLUMN_LABELS)

    def sub(m: re.Match) -> str:
        w = m.group(0)
        if w in labels:
            return labels[w]
        parts = [labels.get(p, p) for p in w.split("_")]
        return " ".join(p for p in parts if p)

    return _IDENT.sub(sub, s)


# ---------------------------------------------------------------------------------------------
# the table definition
@dataclass(frozen=True)
class Column:
    """One displayed column.

    ``key``: a column of the table's frame; ``fmt``: ``f(row) -> str`` (default: counts with
    :func:`format_count`, other numbers with two decimals, text as is); ``count``: the column
    holds counts (suppressed, checked by the output scanner); ``sources``: count columns this
    cell is computed from (hidden when one of them is); ``spanner``: label over a group of
    adjacent columns; ``align``: left / right / center (default: right for counts and numbers).
    """

    key: str
    label: str
    fmt: Callable[[pd.Series], str] | None = None
    count: bool = False
    sources: tuple[str, ...] = ()
    spanner: str | None = None
    align: str | None = None


@dataclass(frozen=True)
class Suppression:
    """How counts are protected (arguments of :func:`analysis.privacy.suppress`): the count
    columns are taken from the :class:`Column` definitions marked ``count``; ``derived`` from
    their ``sources``."""

    min_cell: int = privacy.DEFAULT_MIN_CELL
    by: str | None = None
    total_row: str | None = None
    row_total: str | None = None
    sums_published: bool = True


@dataclass
class PubTable:
    """A publication table (see the module docstring).

    ``name``: stable file stem (``[a-z0-9-]``); ``title``; ``data``: tidy frame; ``columns``;
    ``group``: column of `data` with a row-group label (a bold heading row before each group,
    its rows indented; empty = no group); ``hidden``: bool column of rows kept for suppression
    but not shown (e.g. the "no" row of a yes/no variable); ``footnotes``: sentences under the
    table; ``suppression``: None for tables without counts.
    """

    name: str
    title: str
    data: pd.DataFrame
    columns: Sequence[Column]
    group: str | None = None
    hidden: str | None = None
    footnotes: Sequence[str] = ()
    suppression: Suppression | None = None
    marker: str = privacy.DEFAULT_MARKER
    _cells: list[dict[str, Any]] | None = field(default=None, repr=False)
    suppressed_cells: int = 0

    def __post_init__(self) -> None:
        from .exports import check_name

        check_name(self.name, "table")
        missing = [k for c in self.columns for k in (c.key, *c.sources) if k not in self.data]
        if self.group and self.group not in self.data:
            missing.append(self.group)
        if missing:
            raise ValueError(f"table {self.name!r}: columns not in the data: {sorted(set(missing))}")
        counts = [c.key for c in self.columns if c.count]
        if counts and self.suppression is None:
            raise ValueError(f"table {self.name!r} shows counts {counts}: it needs a Suppression")

    # -- cells -------------------------------------------------------------------------------
    @property
    def count_keys(self) -> list[str]:
        return list(dict.fromkeys(c.key for c in self.columns if c.count))

    def _suppressed(self) -> pd.DataFrame:
        """Boolean frame (rows of data x column keys): cells to show as the marker."""
        d = self.data.reset_index(drop=True)
        mask = pd.DataFrame(False, index=d.index, columns=[c.key for c in self.columns])
        mask = mask.loc[:, ~mask.columns.duplicated()]
        if self.suppression is None:
            return mask
        s = self.suppression
        counts = self.count_keys + [k for c in self.columns for k in c.sources
                                    if k not in self.count_keys]
        counts = list(dict.fromkeys(counts))
        res = privacy.suppress(d, counts, min_cell=s.min_cell, by=s.by, total_row=s.total_row,
                               row_total=s.row_total, sums_published=s.sums_published,
                               marker=self.marker)
        self.suppressed_cells = res.n_suppressed
        for c in self.columns:
            hide = pd.Series(False, index=d.index)
            if c.count:
                hide |= res.mask[c.key]
            for src in c.sources:
                hide |= res.mask[src]
            mask[c.key] = mask[c.key] | hide
        return mask

    def cells(self) -> list[dict[str, Any]]:
        """Displayed rows, in order: ``{"kind": "group" | "row", "label": group label (group
        rows), "values": [str per column], "indent": bool}``."""
        if self._cells is not None:
            return self._cells
        d = self.data.reset_index(drop=True)
        mask = self._suppressed()
        hidden = (d[self.hidden].fillna(False).astype(bool) if self.hidden
                  else pd.Series(False, index=d.index))
        out: list[dict[str, Any]] = []
        current = None
        for i, row in d.iterrows():
            if hidden.iloc[i]:
                continue
            g = row[self.group] if self.group else None
            g = None if g is None or (isinstance(g, float) and math.isnan(g)) or g == "" else str(g)
            if g is not None and g != current:
                out.append({"kind": "group", "label": g, "values": [], "indent": False})
            current = g
            values = []
            for c in self.columns:
                if mask.at[i, c.key]:
                    values.append(self.marker)
                else:
                    values.append(_clean(c.fmt(row) if c.fmt else _default_fmt(row[c.key], c)))
            out.append({"kind": "row", "label": None, "values": values, "indent": g is not None})
        self._cells = out
        return out

    @property
    def labels(self) -> list[str]:
        return [c.label for c in self.columns]

    def _aligns(self) -> list[str]:
        out = []
        for c in self.columns:
            if c.align:
                out.append(c.align)
            elif c.count or pd.api.types.is_numeric_dtype(self.data[c.key]):
                out.append("right")
            else:
                out.append("left")
        return out

    def all_footnotes(self) -> list[str]:
        """The table's footnotes, plus the suppression rule when it hides counts."""
        notes = [str(f) for f in self.footnotes if str(f).strip()]
        if self.suppression is not None:
            self.cells()
            m = self.suppression.min_cell
            notes.append(f"Counts from 1 to {m - 1} are not shown ('{self.marker}'), nor any "
                         "figure from which one could be worked out (totals, percentages, rates).")
        return notes

    def display_frame(self, *, with_group: bool = True) -> pd.DataFrame:
        """The displayed table as a frame of strings with the column labels as header; group
        headings become a first column (``with_group``) instead of separate rows."""
        cols = self.labels
        rows = []
        group_col = "Group" if "Group" not in cols else "Row group"
        current = ""
        for r in self.cells():
            if r["kind"] == "group":
                current = r["label"]
                continue
            vals = list(r["values"])
            rows.append(([current if r["indent"] else ""] if with_group and self.group else []) + vals)
        header = ([group_col] if with_group and self.group else []) + cols
        return pd.DataFrame(rows, columns=_unique(header))

    # -- renderers ---------------------------------------------------------------------------
    def to_csv(self) -> str:
        """CSV of :meth:`display_frame` (labels as header, group as first column)."""
        return self.display_frame().to_csv(index=False, lineterminator="\n")

    def to_gt(self):
        """A great-tables GT object (ids from the table name; count columns right-aligned)."""
        from great_tables import GT, loc, style

        keys = [f"c{i}" for i in range(len(self.columns))]
        rows, bold, indent = [], [], []
        for r in self.cells():
            if r["kind"] == "group":
                rows.append([r["label"]] + [""] * (len(keys) - 1))
                bold.append(len(rows) - 1)
            else:
                rows.append(r["values"])
                if r["indent"]:
                    indent.append(len(rows) - 1)
        frame = pd.DataFrame(rows, columns=keys)
        gt = GT(frame, id=self.name).tab_options(quarto_disable_processing=True)
        gt = gt.cols_label(**{k: c.label for k, c in zip(keys, self.columns)})
        for align in ("left", "right", "center"):
            cols = [k for k, a in zip(keys, self._aligns()) if a == align]
            if cols:
                gt = gt.cols_align(align, columns=cols)
        for spanner, cols in _spanners(self.columns, keys):
            gt = gt.tab_spanner(label=spanner, columns=cols, id=f"{self.name}-s{cols[0]}")
        if bold:
            gt = gt.tab_style(style.text(weight="bold"), loc.body(rows=bold))
        if indent:
            gt = gt.tab_style(style.css("padding-left: 1.5em"), loc.body(columns=[keys[0]], rows=indent))
        gt = gt.tab_header(title=self.title)
        for note in self.all_footnotes():
            gt = gt.tab_source_note(note)
        return gt

    def to_html(self) -> str:
        """Self-contained HTML (great-tables), count columns marked for the output scanner."""
        html = self.to_gt().as_raw_html()
        pos = [i for i, c in enumerate(self.columns) if c.count]
        if self.suppression is not None and pos:
            html = privacy.mark_count_table(html, pos, min_cell=self.suppression.min_cell,
                                            marker=self.marker)
        return html

    def _repr_html_(self) -> str:
        return self.to_html()

    def _repr_markdown_(self) -> str:
        """The pipe table (:meth:`to_markdown`): what Quarto puts into non-HTML formats (Typst
        PDF, docx), which drop ``text/html`` outputs; HTML renderers keep the great-tables HTML."""
        return self.to_markdown()

    def to_markdown(self, *, caption: bool = True) -> str:
        """A pipe table for a Quarto/pandoc manuscript (spanners folded into the labels, group
        headings as bold rows), then the caption ``: Title {#tbl-name}`` and the footnotes."""
        labels = [f"{c.spanner}: {c.label}" if c.spanner else c.label for c in self.columns]
        aligns = self._aligns()
        # pandoc sizes wrapped columns by the dashes of the separator line: give each column
        # dashes in proportion to its longest cell (a long text column gets the room it needs)
        widths = []
        for j, lab in enumerate(labels):
            cells = [len(r["values"][j]) for r in self.cells() if r["kind"] == "row"]
            widths.append(max([min(len(lab), 16), *[min(n, 60) for n in cells]] or [3]))
        total = sum(widths) or 1
        dashes = [max(3, round(72 * w / total)) for w in widths]
        sep = {"left": ":{}", "right": "{}:", "center": ":{}:"}
        lines = ["| " + " | ".join(md_escape(x) for x in labels) + " |",
                 "|" + "|".join(sep[a].format("-" * d) for a, d in zip(aligns, dashes)) + "|"]
        for r in self.cells():
            if r["kind"] == "group":
                vals = [f"**{md_escape(r['label'])}**"] + [""] * (len(labels) - 1)
            else:
                vals = [md_escape(v) for v in r["values"]]
                if r["indent"]:
                    vals[0] = "\u2003" + vals[0]
            lines.append("| " + " | ".join(vals) + " |")
        out = "\n".join(lines) + "\n"
        if caption:
            out += f"\n: {md_escape(self.title)} {{#tbl-{self.name}}}\n"
        notes = self.all_footnotes()
        if notes:
            out += "\n" + "\n\n".join(f"*{md_escape(n)}*" for n in notes) + "\n"
        return out

    def to_latex(self) -> str:
        """A booktabs ``table`` environment (needs ``\\usepackage{booktabs}`` and ``array``):
        spanners with ``\\cmidrule``, group headings, footnotes below; every special escaped."""
        n = len(self.columns)
        aligns = self._aligns()
        widths = _latex_widths(self)
        spec = "".join(
            f">{{\\raggedright\\arraybackslash}}p{{{w:.1f}cm}}" if w else {"left": "l", "right": "r",
                                                                             "center": "c"}[a]
            for a, w in zip(aligns, widths))
        lines = [f"% {self.name}: generated by ipso-analysis; needs \\usepackage{{booktabs,array}}",
                 "\\begin{table}[htbp]", "\\centering", "\\small",
                 f"\\caption{{{latex_escape(self.title)}}}", f"\\label{{tab:{self.name}}}",
                 f"\\begin{{tabular}}{{@{{}}{spec}@{{}}}}", "\\toprule"]
        keys = [f"c{i}" for i in range(n)]
        spans = _spanners(self.columns, keys)
        if spans:
            cells, rules, i = [], [], 0
            while i < n:
                hit = next((s for s in spans if s[1][0] == keys[i]), None)
                if hit:
                    k = len(hit[1])
                    cells.append(f"\\multicolumn{{{k}}}{{c}}{{{latex_escape(hit[0])}}}")
                    rules.append(f"\\cmidrule(lr){{{i + 1}-{i + k}}}")
                    i += k
                else:
                    cells.append("")
                    i += 1
            lines.append(" & ".join(cells) + " \\\\")
            lines.append(" ".join(rules))
        lines.append(" & ".join(latex_escape(c.label) for c in self.columns) + " \\\\")
        lines.append("\\midrule")
        for r in self.cells():
            if r["kind"] == "group":
                lines.append(f"\\multicolumn{{{n}}}{{@{{}}l}}{{\\textbf{{{latex_escape(r['label'])}}}}} \\\\")
            else:
                vals = [latex_escape(v) for v in r["values"]]
                if r["indent"]:
                    vals[0] = "\\hspace{1em}" + vals[0]
                lines.append(" & ".join(vals) + " \\\\")
        lines += ["\\bottomrule", "\\end{tabular}"]
        notes = self.all_footnotes()
        if notes:
            lines += ["", "\\par\\smallskip", "\\begin{minipage}{\\linewidth}\\footnotesize"]
            lines += [latex_escape(x) + "\\par" for x in notes]
            lines.append("\\end{minipage}")
        lines.append("\\end{table}")
        return "\n".join(lines) + "\n"

    def to_docx(self, document=None):
        """Add the table (title above, footnotes below) to a python-docx Document (a new one by
        default) and return the Document."""
        from docx import Document
        from docx.enum.text import WD_ALIGN_PARAGRAPH
        from docx.shared import Pt

        doc = document if document is not None else Document()
        cap = doc.add_paragraph()
        run = cap.add_run(self.title)
        run.bold = True
        n = len(self.columns)
        keys = [f"c{i}" for i in range(n)]
        spans = _spanners(self.columns, keys)
        cells = self.cells()
        n_head = 2 if spans else 1
        table = doc.add_table(rows=n_head + len(cells), cols=n)
        table.style = "Table Grid"
        aligns = self._aligns()
        align_map = {"left": WD_ALIGN_PARAGRAPH.LEFT, "right": WD_ALIGN_PARAGRAPH.RIGHT,
                     "center": WD_ALIGN_PARAGRAPH.CENTER}

        def put(cell, text, *, bold=False, align="left", indent=False):
            p = cell.paragraphs[0]
            r = p.add_run(text)
            r.bold = bold
            r.font.size = Pt(9)
            p.alignment = align_map[align]
            if indent:
                p.paragraph_format.left_indent = Pt(10)

        if spans:
            row = table.rows[0]
            i = 0
            while i < n:
                hit = next((s for s in spans if s[1][0] == keys[i]), None)
                if hit:
                    k = len(hit[1])
                    merged = row.cells[i].merge(row.cells[i + k - 1]) if k > 1 else row.cells[i]
                    put(merged, hit[0], bold=True, align="center")
                    i += k
                else:
                    i += 1
        for j, c in enumerate(self.columns):
            put(table.rows[n_head - 1].cells[j], c.label, bold=True, align=aligns[j])
        for i, r in enumerate(cells):
            row = table.rows[n_head + i]
            if r["kind"] == "group":
                merged = row.cells[0].merge(row.cells[n - 1]) if n > 1 else row.cells[0]
                put(merged, r["label"], bold=True)
            else:
                for j, v in enumerate(r["values"]):
                    put(row.cells[j], v, align=aligns[j], indent=(j == 0 and r["indent"]))
        for note in self.all_footnotes():
            p = doc.add_paragraph()
            run = p.add_run(note)
            run.italic = True
            run.font.size = Pt(8)
        return doc

    # -- files -------------------------------------------------------------------------------
    def sidecar(self) -> dict[str, Any]:
        """What the export folder records about the table (title, footnotes, columns)."""
        return {"schema": "ipso-table/1", "name": self.name, "title": self.title,
                "columns": self.labels, "footnotes": self.all_footnotes(),
                "rows": sum(r["kind"] == "row" for r in self.cells()),
                "counts_suppressed": self.suppression is not None, "safe": True}

    def save(self, directory: str | os.PathLike,
             formats: Sequence[str] = ("csv", "docx", "tex", "md")) -> dict[str, Path]:
        """Write ``<directory>/<name>.<format>`` for each of `formats` (csv, docx, tex, md,
        html) plus ``<name>.json``; reproducible bytes. Returns format -> path."""
        from .exports import normalise_ooxml, write_bytes, write_json, write_text

        directory = Path(directory)
        out: dict[str, Path] = {}
        for fmt in formats:
            path = directory / f"{self.name}.{fmt}"
            if fmt == "csv":
                write_text(path, self.to_csv())
            elif fmt == "tex":
                write_text(path, self.to_latex())
            elif fmt == "md":
                write_text(path, self.to_markdown())
            elif fmt == "html":
                write_text(path, self.to_html())
            elif fmt == "docx":
                import io

                doc = new_document(self.title)
                self.to_docx(doc)
                buf = io.BytesIO()
                doc.save(buf)
                write_bytes(path, buf.getvalue())
                normalise_ooxml(path)
            else:
                raise ValueError(f"unknown table format {fmt!r}; known: csv, docx, tex, md, html")
            out[fmt] = path
        out["json"] = write_json(directory / f"{self.name}.json", self.sidecar())
        return out


def new_document(title: str = ""):
    """A python-docx Document with pinned core properties (author, dates, revision)."""
    from docx import Document

    from .exports import pinned_datetime

    doc = Document()
    cp = doc.core_properties
    when = pinned_datetime().replace(tzinfo=None)
    cp.author = "ipso-analysis"
    cp.last_modified_by = "ipso-analysis"
    cp.title = title[:200]
    cp.created = when
    cp.modified = when
    cp.last_printed = when
    cp.revision = 1
    return doc


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        k = seen.get(n, 0)
        out.append(n if k == 0 else f"{n} ({k + 1})")
        seen[n] = k + 1
    return out


def _spanners(columns: Sequence[Column], keys: list[str]) -> list[tuple[str, list[str]]]:
    """(spanner label, adjacent column keys) runs."""
    out: list[tuple[str, list[str]]] = []
    for c, k in zip(columns, keys):
        if c.spanner and out and out[-1][0] == c.spanner and out[-1][1][-1] == keys[keys.index(k) - 1]:
            out[-1][1].append(k)
        elif c.spanner:
            out.append((c.spanner, [k]))
    return out


def _default_fmt(v: Any, c: Column) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if c.count:
        return format_count(v)
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    if isinstance(v, (float, np.floating)):
        return format_number(v, 2)
    return str(v)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


def _clean(text: Any) -> str:
    """One line of text (control characters and line breaks become spaces)."""
    return _CONTROL.sub(" ", str(text)).strip()


def _latex_widths(t: PubTable) -> list[float | None]:
    """Paragraph widths (cm) for long text columns; None = natural width."""
    lengths = []
    for j, c in enumerate(t.columns):
        vals = [len(r["values"][j]) for r in t.cells() if r["kind"] == "row"] + [len(c.label)]
        lengths.append(max(vals) if vals else 0)
    long = [i for i, n in enumerate(lengths) if n > 28]
    if not long:
        return [None] * len(t.columns)
    budget = max(4.0, 16.0 - sum(min(n, 28) * 0.19 for i, n in enumerate(lengths) if i not in long))
    total = sum(min(lengths[i], 120) for i in long)
    return [round(min(budget * min(lengths[i], 120) / total, 0.19 * lengths[i]), 1)
            if i in long else None for i in range(len(t.columns))]


# ---------------------------------------------------------------------------------------------
# escaping
_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}", '"': "''",
}
_LATEX_UNICODE = {
    "\u00b2": r"\textsuperscript{2}", "\u00b3": r"\textsuperscript{3}", "\u2264": r"$\leq$",
    "\u2265": r"$\geq$", "\u00d7": r"$\times$", "\u2013": "--", "\u2014": "---", "\u2212": "$-$",
    "\u2018": "`", "\u2019": "'", "\u201c": "``", "\u201d": "''", "\u00b1": r"$\pm$",
    "\u03c7": r"$\chi$", "\u03c4": r"$\tau$", "\u00a0": "~", "\u2003": r"\quad{}", "\u2026": r"\ldots{}",
    "\u00b0": r"\textdegree{}", "\u00b5": r"$\mu$", "\u03bc": r"$\mu$", "\u2192": r"$\rightarrow$",
    "\u00e9": r"\'{e}", "\u00e8": r"\`{e}", "\u00e4": r"\"{a}", "\u00f6": r"\"{o}", "\u00fc": r"\"{u}",
}
_ACCENTS = {"\u0301": "'", "\u0300": "`", "\u0308": '"', "\u0302": "^", "\u0303": "~", "\u0327": "c"}


def latex_escape(text: Any) -> str:
    """Text safe inside a LaTeX document compiled with plain pdflatex: the ten specials and
    ``< > | "`` escaped, common Unicode (superscripts, dashes, quotes, Greek letters, accents)
    spelled in LaTeX, control characters dropped, any other non-ASCII character replaced by
    "?" (it would stop pdflatex)."""
    out = []
    for ch in _clean(text):
        if ch in _LATEX_SPECIAL:
            out.append(_LATEX_SPECIAL[ch])
        elif ord(ch) < 128:
            out.append(ch)
        elif ch in _LATEX_UNICODE:
            out.append(_LATEX_UNICODE[ch])
        else:
            d = unicodedata.normalize("NFD", ch)
            if len(d) == 2 and ord(d[0]) < 128 and d[0].isalpha() and d[1] in _ACCENTS:
                acc = _ACCENTS[d[1]]
                out.append(f"\\c{{{d[0]}}}" if acc == "c" else f"\\{acc}{{{d[0]}}}")
            else:
                out.append("?")
    return "".join(out)


_MD_SPECIAL = set("\\`*_{}[]()<>#+-!|$@~^&:\"'")


def md_escape(text: Any) -> str:
    """Text shown literally by pandoc Markdown: every Markdown-special ASCII punctuation
    character backslash-escaped, line breaks and control characters replaced by spaces."""
    return "".join("\\" + c if c in _MD_SPECIAL else c for c in _clean(text))


# ---------------------------------------------------------------------------------------------
# builders
#: Which group of the primary table an estimand's variable belongs to.
_VARIABLE_GROUP = {
    "sam30": "Outcomes", "sam3": "Outcomes", "hospital_days": "Outcomes",
    "recognition": "Recognition", "bundle": "Processes of care",
    "screen_positive": "Processes of care", "huddle": "Processes of care",
    "order_set": "Processes of care", "bolus_minutes": "Timeliness of treatment",
    "antibiotic_minutes": "Timeliness of treatment",
}
_GROUP_ORDER = ("Outcomes", "Recognition", "Processes of care", "Timeliness of treatment",
                "Other measures")


def _lower_first(label: str) -> str:
    """'Hospital days' -> 'hospital days'; acronyms ('IPSO bundle') stay."""
    return label[:1].lower() + label[1:] if label[1:2].islower() else label


def _level_of(scope: str) -> str:
    return "collaborative" if scope == "collaborative" else "site"


def primary_rows(store: Any, scope: str = "collaborative") -> list[tuple[Any, pd.Series]]:
    """(estimand, primary store row) of every estimand of the plan at `scope`'s level that has
    one, in plan order."""
    out = []
    for e in store.plan.at_level(_level_of(scope)):
        try:
            out.append((e, store.primary(e.id, scope)))
        except KeyError:
            continue
    return out


def _ci_label(store: Any) -> str:
    alpha = float(store.meta.get("alpha") or 0.05) if hasattr(store, "meta") else 0.05
    return f"{100 * (1 - alpha):g}% CI"


def _time_words(months: int) -> str:
    return (f"{months} months after go-live" if months and months > 0
            else "over the months after go-live")


def _estimate_text(row: pd.Series) -> str:
    if row.get("status", "ok") != "ok":
        reason = _clean(row.get("status_reason") or "")
        return "Not estimable" + (f" ({reason})" if reason else "")
    return format_estimate_ci(row["estimate"], row.get("lower"), row.get("upper"))


def primary_estimand_table(store: Any, *, scope: str = "collaborative",
                           min_cell: int = privacy.DEFAULT_MIN_CELL,
                           name: str = "primary-estimands", title: str | None = None) -> PubTable:
    """Every estimand of the plan at `scope`'s level with its primary estimate: measure, what is
    estimated (scale, per what, time point; the full definitions are in the measures section),
    estimate with its interval,
    p-value, role (primary, or secondary to which estimand) and the number analysed
    (suppressed). `scope`: ``"collaborative"`` or a site id."""
    plan = store.plan
    labels = {e.id: e.label for e in plan.at_level(_level_of(scope))}
    rows = []
    for e, r in primary_rows(store, scope):
        role = ("Primary" if not e.secondary_to else
                f"Secondary to {_lower_first(labels.get(e.secondary_to, 'the main estimand'))}")
        tp = int(r["time_point"]) if pd.notna(r["time_point"]) else e.time_point
        scale = _clean(readable(e.scale, plan))
        rows.append({
            "group": _VARIABLE_GROUP.get(e.variable, "Other measures"),
            "measure": e.label, "what": f"{scale[:1].upper()}{scale[1:]} {_clean(e.per)}, "
                                        f"{_time_words(tp)}",
            "estimate": r["estimate"], "lower": r["lower"], "upper": r["upper"],
            "p_value": r["p_value"], "status": r["status"], "status_reason": r["status_reason"],
            "role": role, "n": r["n"],
        })
    data = pd.DataFrame(rows, columns=["group", "measure", "what", "estimate", "lower",
                                       "upper", "p_value", "status", "status_reason", "role", "n"])
    if len(data):
        order = {g: i for i, g in enumerate(_GROUP_ORDER)}
        data = data.iloc[sorted(range(len(data)), key=lambda i: (order.get(data["group"].iloc[i], 99), i))]
        data = data.reset_index(drop=True)
    ci = _ci_label(store)
    where = "all hospitals" if scope == "collaborative" else "this hospital"
    cols = [
        Column("measure", "Measure"),
        Column("what", "What is estimated (per what, when)"),
        Column("estimate", f"Estimate ({ci})", fmt=_estimate_text, align="right"),
        Column("p_value", "p-value", fmt=lambda r: format_p(r["p_value"]) if r["status"] == "ok" else "",
               align="right"),
        Column("role", "Role"),
        Column("n", "Analysed (n)", count=True),
    ]
    notes = [
        "Each estimate is a ratio, with IPSO vs without IPSO for the same population; 1 means no "
        "change. Below 1 is a decrease, above 1 an increase; whether that is better depends on "
        "the measure.",
        f"{ci}: confidence interval; p-values test no change (two-sided). Secondary estimands are "
        "labelled with the estimand they qualify.",
        "Analysed: sepsis episodes (hospital admissions for recognition).",
    ]
    return PubTable(name, title or f"Primary estimate of every estimand ({where})", data, cols,
                    group="group", footnotes=notes,
                    suppression=Suppression(min_cell=min_cell, sums_published=False))


def sensitivity_table(store: Any, *, scope: str = "collaborative",
                      min_cell: int = privacy.DEFAULT_MIN_CELL,
                      name: str = "sensitivity-analyses", title: str | None = None) -> PubTable:
    """The primary estimate next to every sensitivity analysis and descriptive comparison of
    each estimand that has a sensitivity analysis, with the reason for each."""
    plan = store.plan
    level = _level_of(scope)
    rows = []
    role_order = {"primary": 0, "sensitivity": 1, "descriptive": 2}
    for e in plan.at_level(level):
        r = store.rows(e.id, scope)
        if r.empty or not (r["role"] == "sensitivity").any():
            continue
        r = r.assign(_o=r["role"].map(role_order).fillna(3)).sort_values("_o", kind="mergesort")
        for _, x in r.iterrows():
            why = ("Primary analysis" if x["role"] == "primary" else
                   _clean(readable(x["reason"], plan)) or x["role"].capitalize())
            why = why[:1].upper() + why[1:]
            rows.append({"group": e.label, "analysis": spec_label(str(x["spec"]), str(x["estimator"])),
                         "role": str(x["role"]).capitalize(), "why": why,
                         "estimate": x["estimate"], "lower": x["lower"], "upper": x["upper"],
                         "p_value": x["p_value"], "status": x["status"],
                         "status_reason": x["status_reason"]})
    data = pd.DataFrame(rows, columns=["group", "analysis", "role", "why", "estimate",
                                       "lower", "upper", "p_value", "status", "status_reason"])
    ci = _ci_label(store)
    cols = [
        Column("analysis", "Analysis"),
        Column("role", "Role"),
        Column("why", "Why it is shown"),
        Column("estimate", f"Estimate ({ci})", fmt=_estimate_text, align="right"),
        Column("p_value", "p-value", fmt=lambda r: format_p(r["p_value"]) if r["status"] == "ok" else "",
               align="right"),
    ]
    notes = ["Descriptive comparisons make no inferential claim: no interval and no p-value.",
             "A sensitivity analysis changes one assumption of the primary analysis; agreement "
             "with the primary estimate means the conclusion does not rest on that assumption."]
    return PubTable(name, title or "Sensitivity analyses", data, cols, group="group",
                    footnotes=notes)


def table_one(episodes: pd.DataFrame, *, min_cell: int = privacy.DEFAULT_MIN_CELL,
              period: str = "post", name: str = "table-one",
              title: str = "Characteristics of sepsis episodes before and after go-live") -> PubTable:
    """Table 1: patient characteristics before vs after go-live
    (:func:`analysis.reporting.table_one_frame`), counts suppressed with the levels of each
    variable as one group (they add up to the period's episodes), yes/no variables as one row
    (their hidden "no" row kept for suppression)."""
    from .reporting import TABLE_ONE_VARIABLES, table_one_frame

    t = table_one_frame(episodes, period=period)
    kinds = {label: kind for label, _, kind, _ in TABLE_ONE_VARIABLES}
    t["_supp_group"] = t["variable"]
    t["group"] = [v if kinds.get(v) == "cat" else "" for v in t["variable"]]
    t["row"] = [LEVEL_LABELS.get(lv, readable(lv)) if kinds.get(v) == "cat" else v
                for v, lv in zip(t["variable"], t["level"])]

    def pct(col: str) -> Callable[[pd.Series], str]:
        def f(r: pd.Series) -> str:
            v = r[col]
            return v if isinstance(v, str) else format_number(v, 1)
        return f

    cols = [
        Column("row", "Characteristic"),
        Column("n_pre", "n", count=True, spanner="Before go-live"),
        Column("pct_pre", "% or median [IQR]", fmt=pct("pct_pre"), sources=("n_pre",),
               spanner="Before go-live", align="right"),
        Column("n_post", "n", count=True, spanner="After go-live"),
        Column("pct_post", "% or median [IQR]", fmt=pct("pct_post"), sources=("n_post",),
               spanner="After go-live", align="right"),
    ]
    notes = ["Percentages are of the period's episodes; for age, median [interquartile range] "
             "among episodes with a recorded age. Before/after: months before and from each "
             "hospital's go-live month."]
    return PubTable(name, title, t, cols, group="group", hidden="helper", footnotes=notes,
                    suppression=Suppression(min_cell=min_cell, by="_supp_group",
                                            sums_published=True))


def process_outcome_table(assoc: Any, *, min_cell: int = privacy.DEFAULT_MIN_CELL,
                          name: str = "process-outcome",
                          title: str | None = None) -> PubTable:
    """Case-mix-adjusted associations of the key processes with the outcome
    (:class:`analysis.processes.ProcessAssociations`): one row per process term, readable
    labels, odds (or risk) ratio with its interval, p-value; the model and the caveat that these
    are associations in the footnotes."""
    from .plan import VARIABLES
    from .reporting import count_text

    t = assoc.table.reset_index(drop=True)
    several = t["model"].nunique() > 1
    rows = []
    for _, r in t.iterrows():
        term = str(r["term"])
        if str(r["process"]) == "antibiotic_spline":
            label = "Antibiotic at " + term.replace("antibiotic ", "").replace(" vs ", " vs at ")
        else:
            label = PROCESS_LABELS.get(str(r["process"]), readable(term).capitalize())
        rows.append({"process": label, "model": str(r["model"]).capitalize(),
                     "estimate": r["estimate"], "lower": r["lower"], "upper": r["upper"],
                     "p_value": r["p_value"]})
    data = pd.DataFrame(rows, columns=["process", "model", "estimate", "lower", "upper", "p_value"])
    measure = "Odds ratio" if assoc.measure == "OR" else "Risk ratio"
    level = f"{100 * assoc.level:g}% CI"
    cols = [Column("process", "Process")]
    if several:
        cols.append(Column("model", "Model"))
    cols += [Column("estimate", f"{measure} ({level})",
                    fmt=lambda r: format_estimate_ci(r["estimate"], r["lower"], r["upper"]),
                    align="right"),
             Column("p_value", "p-value", fmt=lambda r: format_p(r["p_value"]), align="right")]
    outcome = VARIABLES[assoc.outcome].description if assoc.outcome in VARIABLES else readable(assoc.outcome)
    covs = ", ".join(COLUMN_LABELS.get(c, readable(c)) for c in assoc.covariates)
    notes = [
        f"Outcome: {outcome}. Generalised estimating equations clustered by hospital "
        f"(exchangeable working correlation, robust standard errors), adjusted for {covs}, "
        "period (before/after go-live) and calendar time.",
        f"Episodes analysed: {count_text(assoc.n, min_cell)}; outcome events: "
        f"{count_text(assoc.events, min_cell)}; hospitals: {int(assoc.clusters)}.",
        "These are associations, not causal effects: processes are not randomised, sicker "
        "children may be treated faster (confounding by indication) and unmeasured severity is "
        "not in the case mix.",
    ]
    return PubTable(name, title or f"Processes of care and {outcome.split(' within')[0]}", data,
                    cols, footnotes=notes)


# ---------------------------------------------------------------------------------------------
# registry
class TableRegistry:
    """The tables of one report run: displayed in the notebook and, with an export folder
    (:func:`analysis.exports.resolve_export_dir`), saved once as csv, docx, tex and md (plus a
    JSON sidecar) under ``<export>/tables/``."""

    def __init__(self, export_dir: str | os.PathLike | None = None, *, display: bool = True):
        from .exports import resolve_export_dir

        self.export_dir = resolve_export_dir(export_dir)
        self.display = display
        self.tables: dict[str, PubTable] = {}

    def register(self, table: PubTable) -> PubTable:
        if table.name in self.tables:
            raise ValueError(f"table {table.name!r} is already registered in this run")
        if self.export_dir is not None:
            from .exports import TABLES_DIR

            table.save(self.export_dir / TABLES_DIR)
        self.tables[table.name] = table
        if self.display:
            from .reporting import show

            show(table)
        return table


_DEFAULT: TableRegistry | None = None


def register_table(table: PubTable, *, export_dir: str | os.PathLike | None = None) -> PubTable:
    """Display `table` in the report and, when the run has an export folder, save it there."""
    global _DEFAULT
    from .exports import resolve_export_dir

    wanted = resolve_export_dir(export_dir)
    if _DEFAULT is None or (export_dir is not None and _DEFAULT.export_dir != wanted):
        _DEFAULT = TableRegistry(wanted)
    return _DEFAULT.register(table)


def table_files(directory: str | os.PathLike) -> Mapping[str, list[Path]]:
    """Exported tables in `directory`: name -> its files (from the JSON sidecars)."""
    out: dict[str, list[Path]] = {}
    for p in sorted(Path(directory).glob("*.json")):
        out[p.stem] = sorted(q for q in Path(directory).glob(f"{p.stem}.*"))
    return out

"""Helpers that keep the report notebooks thin: load a run, headers, safe tables, messages, footers.

The notebooks (``notebooks/site_report.ipynb``, ``notebooks/collaborative_report.ipynb``) only call
this module and the statistics modules; they compute nothing themselves. Everything published goes
through :mod:`analysis.privacy`: counts through :func:`analysis.privacy.suppress`, hospitals other
than the report's own under keyed pseudonyms.

Objects returned for display (:class:`Md`, :class:`ReportTable`) carry ``_repr_markdown_`` /
``_repr_html_``, so the last expression of a notebook cell shows them in Jupyter, nbconvert and Quarto.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib
import importlib.metadata
import json
import pickle
import platform
import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import __version__, privacy
from .settings import DEFAULT_SETTINGS, Settings
from .store import Collaborative

#: Where ``make demo`` writes the synthetic collaborative (relative to the repository root).
DEFAULT_SYNTHETIC_DIR = Path(__file__).resolve().parents[1] / "data" / "synthetic"
DEFAULT_RUN_KEY = "ipso-synthetic"

#: Packages whose versions go into the reproducibility footer.
FOOTER_PACKAGES = ("pandas", "numpy", "scipy", "statsmodels", "lifelines", "matplotlib", "seaborn",
                   "great-tables", "papermill", "nbconvert")


# ---------------------------------------------------------------------------------------------
# text from data in Markdown/HTML output
#: Characters that are markup in HTML (text or attribute values) or in Markdown as read by
#: Jupyter/nbconvert (mistune) and Quarto (pandoc: also math, citations, super/subscript).
_MARKUP_CHARACTERS = frozenset("&<>\"'`\\*_[](){}#|~$^@!")
_LINE_BREAKS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


def escape_text(value: object) -> str:
    """A string from data (site names, labels, reasons, values) for Markdown or HTML report text.

    Every character that is markup in HTML or Markdown becomes a numeric character reference
    (``<`` -> ``&#60;``, ``[`` -> ``&#91;``, a backtick -> ``&#96;``, ...), and line breaks and
    other control characters become spaces. The text is then shown literally by nbconvert
    (mistune) and Quarto (pandoc), and in HTML text or a quoted attribute value: a name such as
    ``<img src=x onerror=alert(2)>``, ``" onmouseover=...``, ``</table>`` or
    ``[x](javascript:...)`` can open no tag, attribute, link, code span or emphasis, and cannot end
    a heading or table row. Use it wherever text built from data goes into :class:`Md` output.
    (great-tables and pandas' HTML escape their own cells; do not escape twice.)
    """
    text = _LINE_BREAKS.sub(" ", str(value))
    return "".join(f"&#{ord(c)};" if c in _MARKUP_CHARACTERS else c for c in text)


def code_text(value: object) -> str:
    """A Markdown code span that shows `value` literally: the fence is one backtick longer than the
    longest run of backticks in it (CommonMark and pandoc), so data cannot end the span early."""
    text = _LINE_BREAKS.sub(" ", str(value))
    fence = "`" * (max((len(r) for r in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


# ---------------------------------------------------------------------------------------------
# display objects
class Md(str):
    """Markdown text that notebooks display as rendered Markdown."""

    def _repr_markdown_(self) -> str:
        return str(self)


def show(obj: Any) -> None:
    """Display `obj` (Markdown string, table, figure) from anywhere in a cell."""
    from IPython.display import display

    display(Md(obj) if isinstance(obj, str) and not isinstance(obj, Md) else obj)


# ---------------------------------------------------------------------------------------------
# loading a run
@dataclass
class RunData(Collaborative):
    """The data of one report run and the publication rules that go with it: a
    :class:`analysis.store.Collaborative` (episodes derived and attached to sites, ``sites``,
    ``site_months``, ``quarantine``, ``summary``, ``data_hash``, ``source``, ``settings``) cut at
    ``as_of``, plus:

    Attributes
    ----------
    as_of:
        Last month of data used (first of month); episodes and site-months after it are left out.
    excluded_after_as_of:
        Episodes dropped because they fall after ``as_of`` (reported in data quality).
    run_key, min_cell:
        Key of the pseudonyms; smallest count shown (1 to ``min_cell - 1`` are suppressed).
    pseudonyms:
        site_id -> "Hospital X" for this run (:func:`analysis.privacy.site_pseudonyms`).
    scope:
        None for a full run; a site id for a site slice (:func:`load_run` with ``site_id`` and a
        batch ``shared_dir``): episodes, site-months and quarantine then hold only that hospital's
        rows (the sites table stays whole, for pseudonyms), and collaborative-wide methods refuse
        other hospitals.
    """

    as_of: pd.Timestamp
    excluded_after_as_of: int
    run_key: str = DEFAULT_RUN_KEY
    min_cell: int = privacy.DEFAULT_MIN_CELL
    pseudonyms: dict = field(default_factory=dict)
    scope: str | None = None

    def _check_scope(self, site_id: str | None, what: str) -> None:
        if self.scope is not None and site_id != self.scope:
            raise ValueError(
                f"{what}: this run holds only hospital {self.scope!r}'s episodes (a site slice "
                "from a batch run's shared folder); load the full run with load_run(data_dir)")

    def site_name(self, site_id: str) -> str:
        row = self.sites.loc[self.sites["site_id"] == site_id, "site_name"]
        if row.empty:
            raise ValueError(f"site_id {site_id!r} is not in this collaborative's sites")
        return str(row.iloc[0])

    def label(self, site_id: str, *, viewer: str | None = None) -> str:
        """How `site_id` is named in a report for `viewer` (a site id, or None: collaborative)."""
        if viewer is not None and site_id == viewer:
            return self.site_name(site_id)
        return self.pseudonyms[site_id]

    def episodes_for(self, site_id: str | None) -> pd.DataFrame:
        """Episodes of `site_id` (None: every hospital's)."""
        self._check_scope(site_id, "episodes_for")
        if site_id is None or self.scope is not None:
            return self.episodes
        return self.episodes[self.episodes["site_id"] == site_id]

    def forbidden_strings(self, site_id: str | None = None) -> list[str]:
        """What must never appear in a report for `site_id` (None: the collaborative report):
        every other hospital's id and name, episode and patient identifiers."""
        self._check_scope(None, "forbidden_strings")
        out = [str(s) for s in self.sites["site_id"] if s != site_id]  # own id: in the parameters
        out += [str(n) for s, n in zip(self.sites["site_id"], self.sites["site_name"]) if s != site_id]
        for col in ("episode_id", "patient_id"):
            if col in self.episodes:
                out += self.episodes[col].astype(str).tolist()
        if "key" in self.quarantine:
            out += [k for k in self.quarantine["key"].astype(str) if k]
        return out


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


#: Sub-folder of a batch run's shared folder with one pickled site slice per hospital.
SITE_SLICES_DIR = "site_runs"
_SLICES_META = "meta.json"


def source_fingerprint(data_dir: str | Path) -> str:
    """SHA-256 over the names and contents of the files directly in `data_dir` (cheap: no parsing)."""
    from .validate import file_sha256

    h = hashlib.sha256()
    for p in sorted(Path(data_dir).iterdir()):
        if p.is_file():
            h.update(f"{p.name}:{file_sha256(p)}\n".encode())
    return h.hexdigest()


def _slices_meta(data_dir: str | Path, as_of: Any, settings: Settings) -> dict:
    return {"source": source_fingerprint(data_dir), "as_of": None if as_of is None else str(as_of),
            "settings": settings.to_dict()}


def write_site_slices(run: RunData, data_dir: str | Path, shared_dir: str | Path,
                      as_of: Any = None) -> Path:
    """Save one site slice per hospital of `run` (loaded from `data_dir` with `as_of`) under
    ``<shared_dir>/site_runs``, so that each site report of a batch loads its own rows instead of
    reading and validating the whole collaborative: each slice holds only its hospital's rows, so
    its size and load time do not grow with the number of hospitals.
    Working space of the batch run, never published."""
    d = Path(shared_dir) / SITE_SLICES_DIR
    d.mkdir(parents=True, exist_ok=True)
    by_site = dict(tuple(run.episodes.groupby("site_id", sort=False, observed=True)))
    months_by_site = dict(tuple(run.site_months.groupby("site_id", sort=False, observed=True)))
    q = run.quarantine
    q_site = q["site_id"].astype(str) if "site_id" in q else None
    empty, no_months = run.episodes.iloc[0:0], run.site_months.iloc[0:0]
    for sid in run.sites["site_id"]:
        part = RunData(
            episodes=by_site.get(sid, empty).reset_index(drop=True),
            sites=run.sites, site_months=months_by_site.get(sid, no_months).reset_index(drop=True),
            quarantine=q[q_site == str(sid)] if q_site is not None else q,
            summary=run.summary, data_hash=run.data_hash, source=run.source, as_of=run.as_of,
            excluded_after_as_of=run.excluded_after_as_of,
            run_key="", min_cell=run.min_cell, pseudonyms={}, scope=str(sid),
        )
        with privacy.confined_path(d, f"{sid}.pkl").open("wb") as fh:  # an id never leaves d
            pickle.dump(part, fh, protocol=pickle.HIGHEST_PROTOCOL)
    (d / _SLICES_META).write_text(json.dumps(_slices_meta(data_dir, as_of, run.settings), sort_keys=True))
    return d


def _load_site_slice(data_dir: str | Path, shared_dir: str | Path, site_id: str, as_of: Any,
                     settings: Settings) -> RunData | None:
    """The site slice written by :func:`write_site_slices`, or None when there is none or it was
    made from other data files, another cut-off or other settings."""
    d = Path(shared_dir) / SITE_SLICES_DIR
    path = d / f"{site_id}.pkl"
    try:
        meta = json.loads((d / _SLICES_META).read_text())
        if not path.is_file() or meta != json.loads(json.dumps(_slices_meta(data_dir, as_of, settings),
                                                               sort_keys=True)):
            return None
        with path.open("rb") as fh:
            part = pickle.load(fh)
    except (OSError, ValueError, pickle.UnpicklingError, EOFError):
        return None
    return part if isinstance(part, RunData) and part.scope == str(site_id) else None


def load_run(
    data_dir: str | Path | None = None,
    *,
    as_of: str | pd.Timestamp | None = None,
    run_key: str = DEFAULT_RUN_KEY,
    min_cell: int = privacy.DEFAULT_MIN_CELL,
    settings: Settings = DEFAULT_SETTINGS,
    simulate: Mapping[str, Any] | None = None,
    site_id: str | None = None,
    shared_dir: str | Path | None = None,
) -> RunData:
    """Load the data of a report run.

    Parameters
    ----------
    data_dir:
        A store or extract directory (:func:`analysis.store.load_collaborative`). None: the default
        synthetic collaborative -- ``data/synthetic`` when it exists, otherwise simulated in memory
        with `simulate` keyword arguments (:func:`analysis.simulate.simulate_collaborative`).
    as_of:
        Data cut-off month (``YYYY-MM``); episodes with T0 after that month are left out (and counted),
        and every outcome is censored at the end of that month: a death, discharge or treatment
        after it is not seen, and 30-/3-day mortality counts only episodes whose window had ended
        (:func:`analysis.derive.cut_at`). None: the last month with data, outcomes as recorded.
    run_key:
        Key of the hospital pseudonyms (same key, same "Hospital X" in every report of the run).
    min_cell:
        Smallest count shown (counts 1 to ``min_cell - 1`` are suppressed).
    site_id, shared_dir:
        A site report of a batch run: when `shared_dir` holds a site slice of `site_id` made from
        the same data files, cut-off and settings (:func:`write_site_slices`), only that slice is
        loaded (``scope`` = `site_id`); otherwise the whole collaborative, as without them.
    """
    from .store import collaborative_from_frames, load_collaborative

    if data_dir is None and DEFAULT_SYNTHETIC_DIR.exists() and simulate is None:
        data_dir = DEFAULT_SYNTHETIC_DIR
    if site_id is not None and shared_dir is not None and data_dir is not None and Path(data_dir).is_dir():
        part = _load_site_slice(data_dir, shared_dir, site_id, as_of, settings)
        if part is not None:
            part.run_key, part.min_cell = run_key, int(min_cell)
            part.pseudonyms = privacy.site_pseudonyms(part.sites["site_id"], run_key=run_key)
            return part
    if data_dir is not None:
        path = Path(data_dir)
        if not path.exists():
            raise ValueError(f"data_dir {str(path)!r} does not exist")
        coll = load_collaborative(path, settings)
        source = str(path)
    else:
        from .simulate import simulate_collaborative

        kw = dict(simulate or {})
        sim = simulate_collaborative(**kw)
        coll = collaborative_from_frames(sim.episodes, sim.sites, sim.site_months, settings)
        source = "simulated: " + (", ".join(f"{k}={v}" for k, v in sorted(kw.items())) or "defaults")
    episodes = coll.episodes
    site_months = coll.site_months.copy()
    site_months["month"] = pd.to_datetime(site_months["month"]).dt.to_period("M").dt.to_timestamp()
    last = episodes["month"].max() if len(episodes) else site_months["month"].max()
    cut = pd.Timestamp(as_of).to_period("M").to_timestamp() if as_of is not None else last
    if pd.isna(cut):
        raise ValueError("the data has no episodes and no site-months: nothing to report")
    if as_of is not None:  # outcomes as seen at the end of the as_of month (analysis.derive.cut_at)
        from .derive import cut_at

        kept, n_late = cut_at(episodes, cut, settings)
    else:
        late = episodes["month"] > cut
        kept, n_late = episodes.loc[~late].reset_index(drop=True), int(late.sum())
    return RunData(
        episodes=kept,
        sites=coll.sites.reset_index(drop=True),
        site_months=site_months.loc[site_months["month"] <= cut].reset_index(drop=True),
        quarantine=coll.quarantine,
        summary=coll.summary,
        data_hash=coll.data_hash,
        source=source,
        as_of=cut,
        excluded_after_as_of=n_late,
        run_key=run_key,
        min_cell=int(min_cell),
        pseudonyms=privacy.site_pseudonyms(coll.sites["site_id"], run_key=run_key),
    )


# ---------------------------------------------------------------------------------------------
# words
def month_label(ts: pd.Timestamp | None) -> str:
    """'March 2019' (never a day or a time)."""
    return "not available" if ts is None or pd.isna(ts) else pd.Timestamp(ts).strftime("%B %Y")


def count_text(n: float | None, min_cell: int = privacy.DEFAULT_MIN_CELL) -> str:
    """A count for running text or a chart label, suppressed when small."""
    return privacy.suppress_count(n, min_cell=min_cell)


@dataclass(frozen=True)
class NotEstimable:
    """Why a result is not shown; displays as a plain-language note."""

    what: str
    reason: str

    def __str__(self) -> str:
        return f"**{escape_text(self.what)}: not estimable.** {escape_text(self.reason)}"

    def _repr_markdown_(self) -> str:
        return f"> {self}"


def not_estimable(what: str, reason: str) -> NotEstimable:
    """A plain-language 'not estimable' message to put where a result would be."""
    return NotEstimable(what, reason)


def estimability(run: RunData, site_id: str | None = None, *, min_events: int = 10) -> dict[str, NotEstimable | None]:
    """Checks done before a section is shown: None (fine) or the reason it can't be estimated.

    Keys: ``"any"`` (episodes at all), ``"pre"`` and ``"post"`` (episodes before/after go-live),
    ``"post_months"`` (any post-go-live months yet), ``"deaths"`` (at least `min_events` 30-day
    sepsis-attributable deaths for mortality models).
    """
    ep = run.episodes_for(site_id)
    who = "this hospital" if site_id is not None else "the collaborative"
    out: dict[str, NotEstimable | None] = {}
    out["any"] = None if len(ep) else not_estimable(
        "All results", f"There are no sepsis episodes for {who} up to {month_label(run.as_of)}.")
    out["pre"] = None if (~ep["post"]).any() else not_estimable(
        "Before/after comparison", f"There are no episodes before go-live for {who}.")
    out["post"] = None if ep["post"].any() else not_estimable(
        "Before/after comparison", f"There are no episodes after go-live for {who} yet.")
    sites = run.sites if site_id is None else run.sites[run.sites["site_id"] == site_id]
    go = pd.to_datetime(sites["go_live"]).dt.to_period("M").dt.to_timestamp()
    out["post_months"] = None if (go <= run.as_of).any() else not_estimable(
        "Effect of IPSO", f"{who.capitalize()} has no months after go-live yet (data to "
        f"{month_label(run.as_of)}).")
    sam = f"sam{max(run.settings.sam_windows_days)}"
    deaths = int(ep[sam].sum()) if sam in ep else 0
    out["deaths"] = None if deaths >= min_events else not_estimable(
        "Mortality model", f"Too few sepsis-attributable deaths for a model (fewer than {min_events}).")
    return out


def report_header(run: RunData, site_id: str | None = None) -> Md:
    """Header block: hospital (or collaborative), period, data as of, episodes (suppressed if small)."""
    ep = run.episodes_for(site_id)
    if site_id is not None:
        who = escape_text(run.site_name(site_id))
        srow = run.sites.loc[run.sites["site_id"] == site_id].iloc[0]
        extra = (f"- **IPSO go-live:** {month_label(pd.Timestamp(srow['go_live']))} "
                 f"(wave {int(srow['wave'])})\n")
    else:
        who = f"IPSO collaborative: {len(run.sites)} hospitals"
        extra = f"- **Waves:** {run.sites['wave'].nunique()}\n"
    first = ep["month"].min() if len(ep) else None
    last = ep["month"].max() if len(ep) else None
    period = f"{month_label(first)} to {month_label(last)}" if len(ep) else "no episodes"
    return Md(
        f"## {who}\n\n"
        f"- **Period:** {period}\n"
        f"- **Data as of:** {month_label(run.as_of)}\n"
        f"- **Sepsis episodes:** {count_text(len(ep), run.min_cell)}\n" + extra
    )


def figure_caption(text: str, *, n: int | None = None, min_cell: int = privacy.DEFAULT_MIN_CELL,
                   source: str | None = None) -> str:
    """A figure caption; `n` (episodes behind the figure) is suppressed when small."""
    cap = text.rstrip(".") + "."
    if n is not None:
        cap += f" Based on {count_text(n, min_cell)} episodes."
    if source:
        cap += f" {source}"
    return cap


def pending(section: str, module: str) -> Md:
    """Placeholder for a section whose statistics module has not landed yet."""
    return Md(f"> *{section}: this section will be added in a later version of the report "
              f"(needs `{module}`).*")


# ---------------------------------------------------------------------------------------------
# tables
def _fmt_number(v: Any, decimals: int) -> Any:
    if isinstance(v, str) or v is None:
        return "" if v is None else v
    if isinstance(v, (float, np.floating)) and not np.isfinite(v):
        return ""
    if isinstance(v, (int, np.integer, bool, np.bool_)) or decimals == 0:
        return f"{round(float(v)):,}"
    return f"{float(v):,.{decimals}f}"


@dataclass
class ReportTable:
    """A publishable table: the suppressed display frame, a great-tables object and marked HTML."""

    suppression: privacy.SuppressionResult
    display: pd.DataFrame
    title: str | None
    note: str
    html: str

    def _repr_html_(self) -> str:
        return self.html

    def _repr_markdown_(self) -> str:
        cols = [escape_text(c) for c in self.display.columns]
        lines = []
        if self.title:
            lines.append(f"**{escape_text(self.title)}**\n")
        lines.append("| " + " | ".join(cols) + " |")
        lines.append("|" + "|".join("---" for _ in cols) + "|")
        for _, r in self.display.iterrows():
            lines.append("| " + " | ".join(escape_text(v) for v in r) + " |")
        lines.append(f"\n*{escape_text(self.note)}*")
        return "\n".join(lines)


def gt_table(
    df: pd.DataFrame,
    count_columns: Sequence[str],
    *,
    derived: Mapping[str, Sequence[str]] | None = None,
    min_cell: int = privacy.DEFAULT_MIN_CELL,
    title: str | None = None,
    subtitle: str | None = None,
    labels: Mapping[str, str] | None = None,
    decimals: Mapping[str, int] | None = None,
    hide: Sequence[str] = (),
    drop_rows: pd.Series | np.ndarray | None = None,
    table_id: str | None = None,
    source_note: str | None = None,
    **suppress_kwargs: Any,
) -> ReportTable:
    """Format a table for publication with great-tables, suppressing counts first.

    `count_columns` go through :func:`analysis.privacy.suppress` (with `derived`, `min_cell` and
    any ``row_total``/``total_row``/``by``/``sums_published``); `hide` columns (helpers such as
    group keys) and `drop_rows` (helper rows, e.g. the hidden "no" of a yes/no variable) are removed
    after suppression. The HTML is wrapped so :func:`analysis.privacy.scan_outputs` checks the counts.
    """
    from great_tables import GT

    res = privacy.suppress(df.reset_index(drop=True), count_columns, min_cell=min_cell,
                           derived=derived, **suppress_kwargs)
    disp = res.display.copy()
    dec = dict(decimals or {})
    for c in disp.columns:
        if c in count_columns:
            disp[c] = [_fmt_number(v, 0) for v in disp[c]]
        elif pd.api.types.is_numeric_dtype(df[c]) or c in dec or c in (derived or {}):
            disp[c] = [_fmt_number(v, dec.get(c, 1)) for v in disp[c]]
    if drop_rows is not None:
        disp = disp.loc[~np.asarray(drop_rows, dtype=bool)]
    disp = disp.drop(columns=list(hide)).reset_index(drop=True)
    if labels:
        disp = disp.rename(columns=dict(labels))
    shown = list(disp.columns)
    positions = [shown.index((labels or {}).get(c, c)) for c in count_columns
                 if (labels or {}).get(c, c) in shown]
    note = (f"Counts from 1 to {min_cell - 1} are not shown ('{res.marker}'), nor any figure from "
            "which one could be worked out (totals, percentages, rates).")
    if source_note:
        note = source_note + " " + note
    # Quarto: keep the table (and the scanner's marks) as written, don't re-parse it into pandoc
    gt = GT(disp, id=table_id or "ipso-table").tab_options(quarto_disable_processing=True)
    if title:
        gt = gt.tab_header(title=title, subtitle=subtitle)
    gt = gt.tab_source_note(note)
    html = privacy.mark_count_table(gt.as_raw_html(), positions, min_cell=min_cell, marker=res.marker)
    return ReportTable(res, disp, title, note, html)


def masked_for_plot(df: pd.DataFrame, count_columns: Sequence[str], *,
                    derived: Mapping[str, Sequence[str]] | None = None,
                    min_cell: int = privacy.DEFAULT_MIN_CELL, **suppress_kwargs: Any) -> pd.DataFrame:
    """A copy of `df` for charts: cells that :func:`analysis.privacy.suppress` hides become NaN
    (not drawn, not labelled). ``result.attrs["suppressed_cells"]`` counts them for the caption."""
    res = privacy.suppress(df.reset_index(drop=True), count_columns, min_cell=min_cell,
                           derived=derived, **suppress_kwargs)
    out = df.reset_index(drop=True).copy()
    for c in set(count_columns) | set(derived or {}):
        out[c] = pd.to_numeric(out[c], errors="coerce").astype(float).where(~res.mask[c])
    out.index = df.index
    out.attrs["suppressed_cells"] = res.n_suppressed
    return out


#: Table 1 variables: (label, column, kind, levels). kind: "cat", "bin" (a True/False flag) or "num".
TABLE_ONE_VARIABLES: tuple[tuple[str, str, str, tuple | None], ...] = (
    ("Age group (years)", "age_group", "cat", ("<1", "1-4", "5-12", "13+")),
    ("Age (years), median [IQR]", "age_years", "num", None),
    ("Sex", "sex", "cat", ("F", "M", "U")),
    ("Where sepsis began", "onset_setting", "cat", ("ED", "ward", "ICU", "heme_onc", "transplant")),
    ("Hospital-onset sepsis", "hospital_onset", "bin", None),
    ("Critical sepsis", "critical_sepsis", "bin", None),
    ("Immunocompromised", "immunocompromised", "bin", None),
    ("Any complex chronic condition", "_any_ccc", "bin", None),
)


def table_one_frame(episodes: pd.DataFrame, *, period: str = "post") -> pd.DataFrame:
    """Counts of Table 1 (before vs after go-live), unsuppressed: one row per variable level.

    Columns: variable, level, n_pre, pct_pre, n_post, pct_post, helper (True for the hidden
    complement row of a yes/no variable). Continuous variables give median [IQR] strings in pct_*.
    """
    ep = episodes.assign(_any_ccc=episodes["ccc_count"] > 0)
    groups = {False: ep[~ep[period].astype(bool)], True: ep[ep[period].astype(bool)]}
    n = {k: len(v) for k, v in groups.items()}
    rows = [{"variable": "Episodes", "level": "", "n_pre": n[False], "n_post": n[True],
             "pct_pre": np.nan, "pct_post": np.nan, "helper": False}]
    for label, col, kind, levels in TABLE_ONE_VARIABLES:
        if kind == "num":
            r = {"variable": label, "level": "", "helper": False}
            for k, suf in ((False, "pre"), (True, "post")):
                x = groups[k][col].dropna()
                r[f"n_{suf}"] = len(x)
                r[f"pct_{suf}"] = (f"{x.median():.1f} [{x.quantile(.25):.1f}, {x.quantile(.75):.1f}]"
                                   if len(x) else "")
            rows.append(r)
            continue
        lv = levels if kind == "cat" else (True, False)
        for level in lv:
            r = {"variable": label, "level": str(level) if kind == "cat" else ("yes" if level else "no"),
                 "helper": kind == "bin" and not level}
            for k, suf in ((False, "pre"), (True, "post")):
                c = int((groups[k][col].astype(object) == level).sum())
                r[f"n_{suf}"] = c
                r[f"pct_{suf}"] = 100.0 * c / n[k] if n[k] else np.nan
            rows.append(r)
    return pd.DataFrame(rows)[["variable", "level", "n_pre", "pct_pre", "n_post", "pct_post", "helper"]]


def table_one(episodes: pd.DataFrame, *, min_cell: int = privacy.DEFAULT_MIN_CELL,
              period: str = "post", title: str = "Who was treated, before and after go-live",
              table_id: str = "tbl-one") -> ReportTable:
    """Table 1: patient characteristics before vs after go-live, counts suppressed.

    Levels of a variable add up to the episode count of the period, so they form one suppression
    group (``sums_published``); yes/no variables keep a hidden "no" row so that a small "no" cannot
    be worked out from the episode count either.
    """
    t = table_one_frame(episodes, period=period)
    t["_group"] = t["variable"]
    return gt_table(
        t, ["n_pre", "n_post"], derived={"pct_pre": ["n_pre"], "pct_post": ["n_post"]},
        by="_group", sums_published=True, min_cell=min_cell, title=title,
        labels={"variable": "Characteristic", "level": "", "n_pre": "Before: n",
                "pct_pre": "Before: % or median [IQR]", "n_post": "After: n",
                "pct_post": "After: % or median [IQR]"},
        decimals={"pct_pre": 1, "pct_post": 1}, hide=["helper", "_group"],
        drop_rows=t["helper"].to_numpy(), table_id=table_id,
    )


def quarantine_table(run: RunData, site_id: str | None = None, *,
                     table_id: str = "tbl-quarantine") -> ReportTable | Md:
    """Rows set aside by validation, by rule (rule names from :mod:`analysis.validate`).

    For a site, only its own episode rows (by the raw ``site_id`` of the quarantined row). Never
    shows the rows themselves (they hold identifiers and timestamps).
    """
    q = run.quarantine
    if site_id is not None and "site_id" in q:
        q = q[q["site_id"].astype(str) == str(site_id)]
    if q.empty:
        return Md("No rows were set aside by validation.")
    reasons = q["reasons"].astype(str).str.split(";").explode().str.strip()
    reasons = reasons[reasons != ""]
    counts = reasons.value_counts().rename_axis("rule").reset_index(name="rows")
    counts["file"] = [", ".join(sorted(q.loc[reasons.index[reasons == r], "file"].astype(str).unique()))
                      for r in counts["rule"]]
    counts = counts[["file", "rule", "rows"]]
    total = pd.DataFrame([{"file": "all files", "rule": "rows set aside (any rule)", "rows": len(q)}])
    t = pd.concat([counts, total], ignore_index=True)
    return gt_table(t, ["rows"], min_cell=run.min_cell, title="Rows set aside by validation",
                    subtitle="A row may break several rules.", sums_published=False,
                    labels={"file": "File", "rule": "Rule", "rows": "Rows"}, table_id=table_id)


#: Nullable fields whose missingness is reported: field -> what missing means.
MISSINGNESS_FIELDS = {
    "first_bolus_time": "no fluid bolus recorded",
    "first_antibiotic_time": "no IV antibiotic recorded",
    "death_time": "no death recorded (discharged alive)",
}


def missingness_table(episodes: pd.DataFrame, *, min_cell: int = privacy.DEFAULT_MIN_CELL,
                      table_id: str = "tbl-missing") -> ReportTable:
    """Missing values of the optional fields (counts and % of episodes), suppressed."""
    n = len(episodes)
    rows = []
    for col, meaning in MISSINGNESS_FIELDS.items():
        miss = int(episodes[col].isna().sum()) if col in episodes else n
        rows.append({"field": col, "meaning": meaning, "missing": miss, "recorded": n - miss,
                     "episodes": n, "pct": 100.0 * miss / n if n else np.nan})
    t = pd.DataFrame(rows)
    # the header publishes the episode count: missing + recorded = episodes is a published sum,
    # so a small "recorded" (e.g. few deaths) hides "missing" too (hidden helper columns)
    return gt_table(t, ["missing", "recorded", "episodes"], derived={"pct": ["missing"]},
                    row_total="episodes", sums_published=False, min_cell=min_cell,
                    title="Missing values of optional fields",
                    labels={"field": "Field", "meaning": "Missing means", "missing": "Episodes",
                            "pct": "% of episodes"}, decimals={"pct": 1},
                    hide=["recorded", "episodes"], table_id=table_id)


#: Fewest hospitals a row of the hospitals table may describe.
MIN_HOSPITALS_PER_ROW = 3


def hospitals_table(run: RunData, *, viewer: str | None = None,
                    table_id: str = "tbl-hospitals") -> ReportTable:
    """Hospitals by wave: go-live month(s), number of hospitals, and their episodes before and
    after go-live, summed over the wave (counts suppressed like every count).

    No row is one hospital, under its name or its pseudonym: a row per hospital (wave, episodes
    before, episodes after) matches what each hospital's own report says about itself, and so
    ties every pseudonym of the collaborative report to its hospital (the table-matching attack,
    :func:`analysis.privacy.pseudonym_links`). A wave of fewer than
    :data:`MIN_HOSPITALS_PER_ROW` hospitals is pooled with the next (or previous) one, so no row
    describes one or two hospitals. `viewer` is accepted for compatibility and not used."""
    ep = run.episodes
    per = ep.groupby(["site_id", "post"]).size().unstack(fill_value=0)
    sites = run.sites.assign(go=pd.to_datetime(run.sites["go_live"]).dt.to_period("M").dt.to_timestamp())
    waves = sorted(int(w) for w in sites["wave"].unique())
    groups: list[list[int]] = []
    for w in waves:
        if groups and (sites["wave"].isin(groups[-1]).sum() < MIN_HOSPITALS_PER_ROW):
            groups[-1].append(w)
        else:
            groups.append([w])
    if len(groups) > 1 and sites["wave"].isin(groups[-1]).sum() < MIN_HOSPITALS_PER_ROW:
        last = groups.pop()
        groups[-1] += last
    rows = []
    for g in groups:
        members = sites[sites["wave"].isin(g)]
        ids = members["site_id"]
        first, last = members["go"].min(), members["go"].max()
        rows.append({
            "wave": str(g[0]) if len(g) == 1 else f"{g[0]} to {g[-1]}",
            "go_live": month_label(first) if first == last else f"{month_label(first)} to {month_label(last)}",
            "hospitals": len(members),
            "n_pre": int(per.reindex(ids).get(False, pd.Series(dtype=int)).fillna(0).sum()),
            "n_post": int(per.reindex(ids).get(True, pd.Series(dtype=int)).fillna(0).sum()),
        })
    t = pd.DataFrame(rows)
    return gt_table(t, ["n_pre", "n_post"], min_cell=run.min_cell, sums_published=True,
                    title="Hospitals by wave",
                    labels={"wave": "Wave", "go_live": "Go-live", "hospitals": "Hospitals",
                            "n_pre": "Episodes before go-live", "n_post": "Episodes after go-live"},
                    decimals={"hospitals": 0}, table_id=table_id)


# ---------------------------------------------------------------------------------------------
# appendix and footer
def methods_appendix(settings: Settings = DEFAULT_SETTINGS, *, min_cell: int = privacy.DEFAULT_MIN_CELL) -> Md:
    """Plain-language methods: definitions (from `settings`) and publication rules."""
    s = settings
    w = " and ".join(f"{d}-day" for d in s.sam_windows_days)
    rule = ("in hospital, within the window after T0" if s.attribution_rule == "in_hospital_within_window"
            else "any recorded death within the window after T0")
    return Md(
        "## Methods\n\n"
        "**Episodes and time zero.** One row per sepsis episode. Time zero (T0) is the earliest sign "
        "that sepsis was recognised (IPSO intention-to-treat definition). Every derived measure is "
        "computed from the recorded times with the settings below; none is taken from the input.\n\n"
        f"- Hospital-onset sepsis: T0 more than {s.hospital_onset_hours:g} hours after arrival.\n"
        f"- Sepsis-attributable mortality ({w}): a death {rule}.\n"
        f"- Bundle: recognition (screen, huddle or order set), first fluid bolus within "
        f"{s.fluid_window_min:g} minutes and first antibiotic within {s.antibiotic_window_min:g} minutes "
        f"of T0 (treatment before T0 counts as timely: {'yes' if s.treatment_before_t0_is_timely else 'no'}).\n"
        "- Before/after: months from the hospital's go-live month onwards are 'after'.\n\n"
        "**Data quality.** Every extract is checked against the data contract; rows that break a rule "
        "are set aside (never silently dropped) and counted by rule in this report.\n\n"
        f"**Privacy.** Counts from 1 to {min_cell - 1} are not shown, following the CMS cell-size "
        "suppression policy, and neither is any total, difference, percentage or rate from which such a "
        "count could be worked out (complementary suppression). Other hospitals appear under "
        "pseudonyms that are fixed for this set of reports and do not follow size or name. No episode "
        "or patient identifiers, exact times or dates of birth are published.\n"
    )


def git_commit() -> str | None:
    """Short git commit of the code (with '+dirty' when there are uncommitted changes), or None."""
    root = _repo_root()
    try:
        c = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                           check=False, capture_output=True, text=True, timeout=5)
        if c.returncode != 0:
            return None
        d = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                           check=False, capture_output=True, text=True, timeout=5)
        return c.stdout.strip() + ("+dirty" if d.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions(names: Sequence[str] = FOOTER_PACKAGES) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for n in names:
        try:
            out[n] = importlib.metadata.version(n)
        except importlib.metadata.PackageNotFoundError:
            out[n] = "not installed"
    return out


def render_time_text(now: _dt.datetime | None = None) -> str:
    """'25 November 2026, 22:04 UTC' (a format the output scanner does not confuse with data times)."""
    now = now or _dt.datetime.now(_dt.timezone.utc)
    return now.strftime("%d %B %Y, %H.%M UTC").lstrip("0")


def reproducibility_footer(parameters: Mapping[str, Any], *, data_hash: str, renderer: str,
                           source: str | None = None) -> Md:
    """Footer: parameters, data hash, code version and commit, package versions, render time, renderer."""
    commit = git_commit()
    src = source or ""
    kind = "synthetic" if src.startswith("simulated") or "synthetic" in src else "extract"
    params = ", ".join(code_text(f"{k}={v!r}") for k, v in parameters.items() if k != "data_dir")
    vers = ", ".join(f"{k} {v}" for k, v in package_versions().items())
    return Md(
        "## Reproducibility\n\n"
        f"- **Parameters:** {params}\n"
        f"- **Data:** {kind}, SHA-256 `{data_hash}`\n"
        f"- **Code:** ipso-analysis {__version__}" + (f", commit `{commit}`" if commit else "") + "\n"
        f"- **Packages:** {vers}\n"
        f"- **Rendered:** {render_time_text()} by {renderer}\n"
    )


def module_available(name: str) -> bool:
    """True when ``analysis.<name>`` can be imported (sections of modules not yet landed are skipped)."""
    try:
        importlib.import_module(f"analysis.{name}")
        return True
    except ImportError:
        return False


def data_window_note(run: RunData) -> Md:
    """Which data the report uses: cut-off and episodes left out after it (suppressed if small)."""
    txt = f"Data up to {month_label(run.as_of)} are used."
    if run.excluded_after_as_of:
        txt += (f" {count_text(run.excluded_after_as_of, run.min_cell)} episodes after that month "
                "are left out of this report.")
    return Md(txt)


def compute_shared(data_dir: str | Path | None, shared_dir: str | Path, run_key: str, *,
                   parameters: Mapping[str, Any] | None = None) -> None:
    """Compute a run's heavy shared fits once (case-mix model, site-month expected deaths, O/E by
    hospital, per-hospital ITS) and a site slice per hospital, and save them under `shared_dir`
    (working space of the batch run, never published). Notebooks given ``shared_dir`` reuse them
    when they were computed from the same data and cut-off (``parameters["as_of"]``, the batch's
    notebook parameter); see :class:`analysis.report_sections.SharedFits`."""
    from .report_sections import compute_shared as _compute

    params = dict(parameters or {})
    _compute(data_dir, shared_dir, run_key, as_of=params.get("as_of"), plan=params.get("plan"))

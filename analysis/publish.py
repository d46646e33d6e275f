"""``ipso publish``: the publication bundle of a finished ``ipso render`` run.

:func:`publish_bundle` reads a run folder (:func:`locate_run`: the layout with ``internal/`` and
``publish/`` folders, or the older flat one with ``_work/`` and ``_shared/``) and writes::

    BUNDLE/report.html      the collaborative report of the run
    BUNDLE/report.pdf       the manuscript (Typst through Quarto)    } where Quarto exists;
    BUNDLE/report.docx      the manuscript (Quarto / pandoc docx)    } otherwise "skipped"
    BUNDLE/figures/         every figure as vector PDF and 300 dpi PNG, with caption JSON
    BUNDLE/tables/          every table as CSV, Word (.docx) and LaTeX (.tex)
    BUNDLE/estimates.csv    the results store's publishable rows (hospitals under pseudonyms)
    BUNDLE/methods.md       measures, statistical methods, limitations, SQUIRE 2.0 checklist
    BUNDLE/CITATION.cff     how to cite the bundle (CFF 1.2.0)
    BUNDLE/manifest.json    SHA-256 of every file, data hash, plan version, software versions

Figures and tables come from the run's export folder when the report exported them
(:mod:`analysis.figures`, :mod:`analysis.tables`); otherwise they are produced here from the
results store (and, for Table 1 and the process-outcome associations, the run's data) by the
same functions the report calls (:mod:`analysis.estimate_plots`, the builders of
:mod:`analysis.tables`), so each figure has one producer. The manuscript (PDF, docx) is
assembled from the same blocks (summary, measures, methods, tables, figures, limitations, SQUIRE
checklist) and rendered by Quarto.

Safety: every candidate file goes through the output privacy scan (:func:`scan_candidates`,
which calls :func:`analysis.privacy.scan_outputs`; Word and PDF files are scanned as text) with
the run's identifiers (every hospital's id and name, episode and patient ids) as forbidden
strings; a figure not marked ``safe`` is left out; an item with a finding is left out whole (a
figure's PDF, PNG and caption go together) and listed in the manifest by kind of finding, never
with the offending text. Reproducible: publishing the same run twice gives identical bytes
(pinned dates and producers in PDF, PNG, docx and zip entries, ``SOURCE_DATE_EPOCH`` for
pandoc/Quarto, canonical JSON, no timestamps or absolute paths in the manifest).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import privacy
from .exports import (FIGURES_DIR, TABLES_DIR, canonical_json, normalise_ooxml, pinned_datetime,
                      sha256_file, source_date_epoch, write_json, write_text)

__all__ = ["PUBLISH_FORMATS", "PublishError", "PublishResult", "RunLayout", "locate_run",
           "publish_bundle", "run_publish_command", "scan_candidates"]

PUBLISH_FORMATS = ("html", "pdf", "docx")
BUNDLE_MANIFEST = "manifest.json"
MANIFEST_TOOL = "ipso publish"
#: Table formats that go into the bundle (Markdown is kept for the manuscript only).
BUNDLE_TABLE_FORMATS = ("csv", "docx", "tex")
QUARTO_TIMEOUT = 600.0


class PublishError(ValueError):
    """The run cannot be published (the message says which file or folder and why)."""


# ---------------------------------------------------------------------------------------------
# the run folder
@dataclass
class RunLayout:
    """Where the parts of a render run are. ``layout``: ``"split"`` (``internal/`` and
    ``publish/``) or ``"flat"`` (``_work/``, ``_shared/`` next to the reports)."""

    root: Path
    layout: str
    manifest: dict[str, Any]
    report_html: Path | None
    internal_dir: Path
    shared_dir: Path | None
    work_dir: Path | None
    export_dir: Path | None
    results_path: Path | None
    run_key_path: Path | None
    data_dir: Path | None
    as_of: str | None
    min_cell: int

    @property
    def cache_dir(self) -> Path:
        """Internal working space of ``ipso publish`` in the run (never published)."""
        return (self.work_dir or self.internal_dir) / "publish"


def _first(paths: Iterable[Path], kind: str = "any") -> Path | None:
    for p in paths:
        if (kind == "file" and p.is_file()) or (kind == "dir" and p.is_dir()) or (
                kind == "any" and p.exists()):
            return p
    return None


def locate_run(run_dir: str | os.PathLike) -> RunLayout:
    """Find the parts of an ``ipso render`` run folder, in the split layout
    (``<run>/publish/collaborative.html``, ``<run>/internal/{_shared,_work,...}``) or the flat one
    (``<run>/collaborative.html``, ``<run>/_shared``, ``<run>/_work``). Raises
    :class:`PublishError` when `run_dir` is not a run folder."""
    root = Path(run_dir)
    if not root.is_dir():
        raise PublishError(f"run folder {str(root)!r} does not exist")
    internal = _first([root / "internal"], "dir")
    layout = "split" if internal is not None or (root / "publish").is_dir() else "flat"
    internal = internal or root
    manifest_path = _first([root / BUNDLE_MANIFEST, internal / BUNDLE_MANIFEST,
                            root / "publish" / BUNDLE_MANIFEST], "file")
    if manifest_path is None:
        raise PublishError(f"{str(root)!r} is not an ipso render run folder (no manifest.json; "
                           "render it first with ipso render)")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PublishError(f"{str(manifest_path)!r} cannot be read: {exc}") from None
    if not isinstance(manifest, dict):
        raise PublishError(f"{str(manifest_path)!r} is not a run manifest")
    outputs = ((manifest.get("reports") or {}).get("collaborative") or {}).get("outputs") or {}
    html_candidates = [root / "publish" / "collaborative.html", root / "collaborative.html"]
    if isinstance(outputs.get("html"), str):
        html_candidates.insert(0, root / outputs["html"])
    report_html = _first(html_candidates, "file")
    shared = _first([internal / "_shared", internal / "shared", root / "_shared"], "dir")
    work = _first([internal / "_work", internal / "work", root / "_work"], "dir")
    from .results import ResultsStore  # noqa: F401  (the store's file name below)

    results_file = "results.parquet"
    results = _first([p / results_file for p in (shared, internal, work) if p is not None], "file")
    export = _first([internal / "export", internal / "exports"]
                    + ([work / "export", work / "collaborative" / "export"] if work else []), "dir")
    run_key = _first([p / "run_key" for p in (work, internal) if p is not None], "file")
    params = manifest.get("parameters") or {}
    data = params.get("data_dir") or (manifest.get("inputs") or {}).get("data_dir")
    as_of = params.get("as_of")
    min_cell = params.get("min_cell")
    try:
        min_cell = int(min_cell) if min_cell is not None else privacy.DEFAULT_MIN_CELL
    except (TypeError, ValueError):
        min_cell = privacy.DEFAULT_MIN_CELL
    return RunLayout(root, layout, manifest, report_html, internal, shared, work, export, results,
                     run_key, Path(data) if data else None, str(as_of) if as_of else None, min_cell)


# ---------------------------------------------------------------------------------------------
# scanning
def _text_of(path: Path) -> str:
    """The text a reader sees in a Word or PDF file (for the scanner)."""
    if path.suffix.lower() == ".docx":
        from docx import Document

        doc = Document(str(path))
        parts = [p.text for p in doc.paragraphs]
        for t in doc.tables:
            for row in t.rows:
                parts.append(" | ".join(c.text for c in row.cells))
        cp = doc.core_properties
        parts += [str(x) for x in (cp.title, cp.author, cp.subject, cp.keywords, cp.comments) if x]
        return "\n".join(parts)
    if path.suffix.lower() == ".pdf":
        from pypdf import PdfReader

        reader = PdfReader(str(path))
        meta = reader.metadata or {}
        return "\n".join([*(privacy._without_page_number(page.extract_text() or "", i)
                            for i, page in enumerate(reader.pages, 1)),
                          *(str(v) for v in meta.values())])
    raise ValueError(f"no text extraction for {path.suffix}")


def scan_candidates(paths: Sequence[Path], *, forbidden: Iterable[str], min_cell: int,
                    scan: Callable[..., list] | None = None) -> list[privacy.Finding]:
    """Run the output privacy scan on candidate files (the one call to
    :func:`analysis.privacy.scan_outputs`; `scan` replaces it in tests). Word and PDF files are
    scanned through their text (PDF by the scanner itself, page by page); PNG files carry no text and are judged with their figure's PDF
    and caption (the caller scans them as one item)."""
    scan = scan or privacy.scan_outputs
    forbidden = list(forbidden)
    findings: list[privacy.Finding] = []
    direct = [p for p in paths if p.suffix.lower() not in (".docx", ".png")]
    if direct:
        findings += scan(direct, forbidden_strings=forbidden, min_cell=min_cell)
    with tempfile.TemporaryDirectory(prefix="ipso-scan-") as tmp:
        for p in paths:
            if p.suffix.lower() == ".docx":
                try:
                    text = _text_of(p)
                except Exception as exc:  # noqa: BLE001 - an unreadable file is a finding
                    findings.append(privacy.Finding(str(p), "parse_error",
                                                    f"could not read its text ({type(exc).__name__})"))
                    continue
                t = Path(tmp) / (p.name + ".txt")
                t.write_text(text, encoding="utf-8")
                for f in scan([t], forbidden_strings=forbidden, min_cell=min_cell):
                    findings.append(privacy.Finding(str(p), f.kind, f.detail, f.excerpt))
    return findings


# ---------------------------------------------------------------------------------------------
# result
@dataclass
class PublishResult:
    """What :func:`publish_bundle` wrote. ``files``: bundle path -> SHA-256; ``skipped``: items
    not produced (``{"item", "reason"}``); ``excluded``: items produced but kept out by the
    privacy scan or the ``safe`` flag (``{"item", "files", "reason"}``)."""

    out: Path
    files: dict[str, str]
    skipped: list[dict[str, str]] = field(default_factory=list)
    excluded: list[dict[str, Any]] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)

    def summary_lines(self) -> list[str]:
        lines = [f"{rel}" for rel in sorted(self.files)]
        lines += [f"{s['item']}: skipped: {s['reason']}" for s in self.skipped]
        lines += [f"{e['item']}: left out: {e['reason']}" for e in self.excluded]
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), "files": dict(sorted(self.files.items())),
                "skipped": self.skipped, "excluded": self.excluded}


@dataclass
class _Item:
    """A candidate item of the bundle: its files (bundle-relative), scanned together."""

    name: str
    files: list[str]
    safe: bool = True
    why_unsafe: str = ""


# ---------------------------------------------------------------------------------------------
# building blocks
def _load_store(layout: RunLayout, coll: Any, as_of: str | None) -> Any:
    """The run's results store: its file when the run has one, else computed once from the run's
    data (cached in the run's internal publish folder, keyed by data, cut-off and plan)."""
    from .plan import default_plan
    from .results import ResultsStore, estimate_all

    if layout.results_path is not None:
        return ResultsStore.read_parquet(layout.results_path)
    plan = default_plan()
    key = {"data_hash": str(getattr(coll, "data_hash", "")), "as_of": as_of,
           "plan_version": plan.version, "plan": plan.to_dict()}
    cache = layout.cache_dir / "results.parquet"
    stamp = layout.cache_dir / "results.key.json"
    if cache.is_file() and stamp.is_file():
        try:
            if json.loads(stamp.read_text()) == json.loads(canonical_json(key)):
                return ResultsStore.read_parquet(cache)
        except (OSError, ValueError):
            pass
    store = estimate_all(coll, plan, scopes="all", as_of=as_of)
    store.to_parquet(cache)
    write_json(stamp, key)
    return store


def _pseudonyms(layout: RunLayout, site_ids: Iterable[str]) -> dict[str, str] | None:
    if layout.run_key_path is None:
        return None
    key = layout.run_key_path.read_text().strip()
    if not key:
        return None
    return privacy.site_pseudonyms(sorted(map(str, site_ids)), run_key=key)


def _estimates_frame(store: Any, min_cell: int, labels: Mapping[str, str] | None):
    """The store's publishable rows, hospitals under pseudonyms (collaborative rows only when
    there are no pseudonyms), sorted, with no technical columns."""
    f = store.publishable(min_cell)
    if labels is None:
        f = f[f["scope"] == "collaborative"]
    else:
        f = f[(f["scope"] == "collaborative") | f["scope"].astype(str).isin(labels)].copy()
        f["scope"] = [s if s == "collaborative" else labels[str(s)] for s in f["scope"].astype(str)]
    keys = [c for c in ("level", "estimand", "scope", "component", "role", "spec", "variant",
                        "quantity", "period", "x", "time_point") if c in f]
    f = f.sort_values(keys, kind="mergesort", na_position="first").reset_index(drop=True)
    return f


def _citation(store: Any, plan: Any, title: str) -> str:
    """CITATION.cff (CFF 1.2.0) of the bundle."""
    import yaml

    from . import __version__

    meta = getattr(store, "meta", {}) or {}
    data_hash = str(meta.get("data_hash") or "")
    doc: dict[str, Any] = {
        "cff-version": "1.2.0",
        "message": "If you use these results, please cite them as below.",
        "title": title,
        "type": "dataset",
        "authors": [{"name": "Improving Pediatric Sepsis Outcomes (IPSO) collaborative"}],
        "version": f"plan {plan.version}" + (f", data {data_hash[:12]}" if data_hash else ""),
        "abstract": ("Estimates of the analysis plan's estimands for the IPSO collaborative "
                     "(results store, publishable rows), with tables, figures and generated "
                     "methods; produced by ipso-analysis."),
        "keywords": ["pediatric sepsis", "quality improvement", "interrupted time series",
                     "SQUIRE 2.0"],
        "references": [{"type": "software", "title": "ipso-analysis", "version": str(__version__),
                        "authors": [{"name": "ipso-analysis contributors"}]}],
    }
    if os.environ.get("SOURCE_DATE_EPOCH", "").strip():
        doc["date-released"] = pinned_datetime().date().isoformat()
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=100)


def _figure_md(name: str, record: Mapping[str, Any], fmt: str) -> str:
    from .methods_text import md_text

    import re

    files = record.get("files") or {}
    img = files.get(fmt) or files.get("png")
    alt = re.sub(r'["\\{}<>\x00-\x1f]+', " ", str(record.get("alt", ""))).strip()
    return (f"![{md_text(record.get('caption', ''))}](figures/{img})"
            f"{{#fig-{name} fig-alt=\"{alt}\"}}\n")


#: Order of the manuscript's result figures by name prefix (the collaborative report's order).
_FIGURE_ORDER = ("primary-estimates", "event-study", "recognition", "site-effects", "funnel",
                 "curves", "bundle-compliance")


def _figure_order(name: str) -> tuple[int, str]:
    return (next((i for i, p in enumerate(_FIGURE_ORDER) if name.startswith(p)),
                 len(_FIGURE_ORDER)), name)


def _manuscript(title: str, blocks: Mapping[str, str], tables: Mapping[str, str],
                figures: Mapping[str, Mapping[str, Any]], fmt: str) -> str:
    """The manuscript as a Quarto document for `fmt` ("typst" or "docx")."""
    from .methods_text import md_text

    img = "pdf" if fmt == "typst" else "png"
    front = ["---", f'title: "{md_text(title)}"', "lang: en-GB", "format:"]
    if fmt == "typst":
        front += ["  typst:", "    toc: false", "    include-in-header:", "      - text: |",
                  "          #set document(date: none)",
                  "          #show table.cell: set par(justify: false)",
                  "          #show table.cell: set text(size: 8.5pt)",
                  "          #show figure: set block(breakable: true)"]
    else:
        front += ["  docx:", "    toc: false"]
    front += ["---", ""]
    parts = ["\n".join(front)]

    def fig(name: str) -> None:
        # only figures safe to publish: an unsafe one (e.g. monthly counts of one hospital) is
        # left out of the bundle, so it must not travel inside the manuscript either
        if name in figures and figures[name].get("safe") is True:
            parts.append(_figure_md(name, figures[name], img))

    parts.append(blocks.get("summary", ""))
    parts.append(_shift(blocks.get("measures", "")))
    parts.append(_shift(blocks.get("methods", "")))
    parts.append("## Results\n")
    for t in ("table-one", "primary-estimands"):
        if t in tables:
            parts.append(tables[t])
    for name in sorted(figures, key=_figure_order):
        if not name.startswith(("sensitivity", "calibration")):
            fig(name)
    if "process-outcome" in tables:
        parts.append("### Processes and outcomes\n")
        parts.append(tables["process-outcome"])
    parts.append("## Sensitivity analyses\n")
    if "sensitivity-analyses" in tables:
        parts.append(tables["sensitivity-analyses"])
    for name in figures:
        if name.startswith(("sensitivity", "calibration")):
            fig(name)
    parts.append(blocks.get("limitations", ""))
    parts.append(blocks.get("squire", ""))
    parts.append(f"*{md_text('Generated by ipso-analysis from the analysis plan and the results store.')}*\n")
    return "\n".join(p.rstrip() + "\n" for p in parts if p)


def _shift(md: str) -> str:
    """Headings one level down (## -> ###) except the first, so a section nests under it."""
    lines = md.splitlines()
    out = []
    first = True
    for ln in lines:
        if ln.startswith("## ") and first:
            first = False
            out.append(ln)
        elif ln.startswith("#"):
            out.append("#" + ln)
        else:
            out.append(ln)
    return "\n".join(out) + "\n"


def _render_quarto(exe: str, qmd_text: str, fmt: str, out_file: Path,
                   figure_dir: Path) -> tuple[bool, str]:
    """Render `qmd_text` with Quarto to `out_file` (``fmt``: typst or docx) in a fresh folder
    holding the figures; (ok, error text)."""
    with tempfile.TemporaryDirectory(prefix="ipso-manuscript-") as tmp:
        d = Path(tmp) / "manuscript"
        d.mkdir()
        if figure_dir.is_dir():
            shutil.copytree(figure_dir, d / "figures")
        (d / "report.qmd").write_text(qmd_text, encoding="utf-8")
        suffix = ".pdf" if fmt == "typst" else ".docx"
        env = dict(os.environ, SOURCE_DATE_EPOCH=str(source_date_epoch()))
        try:
            proc = subprocess.run([exe, "render", "report.qmd", "--to", fmt, "--output",
                                   "report" + suffix], cwd=d, env=env, capture_output=True,
                                  text=True, errors="replace", timeout=QUARTO_TIMEOUT,
                                  stdin=subprocess.DEVNULL, check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            return False, f"quarto could not run: {exc}"
        produced = d / ("report" + suffix)
        if proc.returncode != 0 or not produced.is_file():
            from .render import _quarto_error

            return False, _quarto_error(proc.stdout + "\n" + proc.stderr)
        out_file.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(produced, out_file)
    if fmt == "docx":
        normalise_ooxml(out_file)
    return True, ""


# ---------------------------------------------------------------------------------------------
# the bundle
def publish_bundle(run_dir: str | os.PathLike, out: str | os.PathLike, *,
                   formats: Sequence[str] = PUBLISH_FORMATS, data_dir: str | os.PathLike | None = None,
                   min_cell: int | None = None, quarto: str | None | bool = True,
                   title: str = "Improving Pediatric Sepsis Outcomes (IPSO): collaborative results",
                   scan: Callable[..., list] | None = None,
                   extra_candidates: Callable[[Path], None] | None = None) -> PublishResult:
    """Write the publication bundle of the render run `run_dir` to `out` (see the module
    docstring) and return what was written, skipped and left out.

    `formats`: of ``html`` (report.html), ``pdf`` and ``docx`` (the manuscript, with Quarto).
    `data_dir`: the run's data (default: the one in the run's manifest); needed for the privacy
    scan's forbidden strings, Table 1 and the process-outcome associations. `quarto`: True = the
    ``quarto`` on PATH, a path, or False/None = do not use Quarto. `scan`: replacement of
    :func:`analysis.privacy.scan_outputs` (tests). `extra_candidates(staging_dir)`: called after
    the candidates are written and before the scan (tests plant files with it).
    `out` must not exist or be a previous bundle (it is replaced whole).
    """
    from .reporting import load_run, package_versions
    from .store import load_collaborative

    fmts = tuple(dict.fromkeys(str(f).strip().lower() for f in formats if str(f).strip()))
    bad = [f for f in fmts if f not in PUBLISH_FORMATS]
    if bad or not fmts:
        raise PublishError(f"unknown format(s) {bad or list(formats)}; choose from "
                           f"{', '.join(PUBLISH_FORMATS)}")
    layout = locate_run(run_dir)
    out = Path(out)
    if out.exists():
        prev = out / BUNDLE_MANIFEST
        is_bundle = False
        if prev.is_file():
            try:
                is_bundle = json.loads(prev.read_text()).get("tool") == MANIFEST_TOOL
            except (OSError, ValueError, AttributeError):
                is_bundle = False
        if not is_bundle and (not out.is_dir() or any(out.iterdir())):
            raise PublishError(f"{str(out)!r} exists and is not an ipso publish bundle; choose a "
                               "new folder")
    if out.resolve() == layout.root.resolve() or layout.root.resolve() in out.resolve().parents:
        raise PublishError("the bundle must be written outside the run folder")
    data = Path(data_dir) if data_dir is not None else layout.data_dir
    if data is None or not data.exists():
        raise PublishError(f"the run's data folder {str(data) if data else '(none in the manifest)'!r} "
                           "is not readable: the privacy scan needs the run's identifiers "
                           "(give --data)")
    min_cell = int(min_cell) if min_cell is not None else layout.min_cell
    as_of = layout.as_of
    run = load_run(data, as_of=as_of, min_cell=min_cell)
    coll = load_collaborative(data)
    store = _load_store(layout, coll, as_of)
    plan = store.plan
    site_ids = sorted(map(str, run.sites["site_id"]))
    labels = _pseudonyms(layout, site_ids)
    forbidden = run.forbidden_strings(None)

    skipped: list[dict[str, str]] = []
    items: list[_Item] = []
    exe: str | None = None
    if quarto is True:
        from .render import find_quarto

        exe = find_quarto()
    elif isinstance(quarto, str) and quarto:
        exe = quarto

    stage_parent = out.resolve().parent
    stage_parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=stage_parent))
    try:
        # -- report.html
        if "html" in fmts:
            if layout.report_html is not None:
                shutil.copyfile(layout.report_html, stage / "report.html")
                items.append(_Item("report.html", ["report.html"]))
            else:
                skipped.append({"item": "report.html", "reason": "the run has no collaborative "
                                "report (render it with ipso render)"})

        # -- figures
        fig_dir = stage / FIGURES_DIR
        fig_records = _figures(layout, store, labels, fig_dir, min_cell, skipped)
        for name, rec in fig_records.items():
            files = [f"{FIGURES_DIR}/{f}" for f in sorted((rec.get("files") or {}).values())]
            files.append(f"{FIGURES_DIR}/{name}.json")
            items.append(_Item(f"figure {name}", files, bool(rec.get("safe")),
                               "" if rec.get("safe") else "the figure is not marked safe to "
                               "publish (" + str(rec.get("provenance", "")) + ")"))

        # -- tables
        tab_dir = stage / TABLES_DIR
        md_tables = _tables(layout, store, run, tab_dir, min_cell, skipped)
        for name in md_tables:
            files = [f"{TABLES_DIR}/{name}.{f}" for f in BUNDLE_TABLE_FORMATS
                     if (tab_dir / f"{name}.{f}").is_file()]
            items.append(_Item(f"table {name}", files))

        # -- estimates.csv
        est = _estimates_frame(store, min_cell, labels)
        write_text(stage / "estimates.csv", est.to_csv(index=False, lineterminator="\n"))
        items.append(_Item("estimates.csv", ["estimates.csv"]))

        # -- methods.md
        from . import methods_text as mt

        casemix = None
        if not len(mt._component(store, "model_fit")):
            try:
                from .riskadj import fit_casemix_model

                casemix = fit_casemix_model(run.episodes, "sam30", unseen="reference")
            except (ValueError, ArithmeticError):
                casemix = None
        versions = package_versions()
        quality = {"quarantined": int(len(run.quarantine)),
                   "excluded_after_as_of": int(run.excluded_after_as_of)}
        blocks = {
            "summary": mt.summary_section(plan, store),
            "measures": mt.measures_section(plan),
            "methods": mt.statistical_methods(plan, store, casemix=casemix, versions=versions,
                                              min_cell=min_cell),
            "limitations": mt.limitations_section(plan, store, quality=quality, casemix=casemix,
                                                  min_cell=min_cell),
            "squire": mt.squire_checklist(),
        }
        methods = (f"# {mt.md_text(title)}: methods\n\n" + blocks["measures"] + "\n"
                   + blocks["methods"] + "\n" + blocks["limitations"] + "\n" + blocks["squire"])
        write_text(stage / "methods.md", methods)
        items.append(_Item("methods.md", ["methods.md"]))

        # -- CITATION.cff
        write_text(stage / "CITATION.cff", _citation(store, plan, title))
        items.append(_Item("CITATION.cff", ["CITATION.cff"]))

        # -- manuscript (Quarto)
        renderer: dict[str, Any] = {"name": "quarto", "version": None}
        for fmt, target in (("pdf", "typst"), ("docx", "docx")):
            if fmt not in fmts:
                continue
            name = f"report.{fmt}"
            if exe is None:
                skipped.append({"item": name, "reason": "needs Quarto (not on PATH)"})
                continue
            from .render import quarto_version

            renderer["version"] = quarto_version(exe)
            text = _manuscript(title, blocks, md_tables, fig_records, target)
            ok, err = _render_quarto(exe, text, target, stage / name, fig_dir)
            if ok:
                items.append(_Item(name, [name]))
            else:
                skipped.append({"item": name, "reason": "Quarto failed: " + err.splitlines()[-1][:300]
                                if err else "Quarto failed"})

        if extra_candidates is not None:
            extra_candidates(stage)

        # -- privacy scan: an item goes in whole or not at all
        accepted: list[_Item] = []
        excluded: list[dict[str, Any]] = []
        for it in items:
            paths = [stage / f for f in it.files if (stage / f).is_file()]
            if not it.safe:
                excluded.append({"item": it.name, "files": it.files, "reason": it.why_unsafe})
                continue
            findings = scan_candidates(paths, forbidden=forbidden, min_cell=min_cell, scan=scan)
            if findings:
                kinds = sorted({f.kind for f in findings})
                excluded.append({"item": it.name, "files": it.files,
                                 "reason": "privacy scan: " + ", ".join(kinds)})
            else:
                accepted.append(it)

        # -- move accepted files into the bundle (built next to it, swapped in at the end)
        final = Path(tempfile.mkdtemp(prefix=f".{out.name}.new-", dir=stage_parent))
        files: dict[str, str] = {}
        for it in accepted:
            for rel in it.files:
                src = stage / rel
                if src.is_file():
                    dst = final / rel
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(src, dst)
                    files[rel] = sha256_file(dst)
        versions = dict(versions)
        versions["ipso-analysis"] = (store.meta or {}).get("ipso_analysis_version") or versions.get("ipso-analysis", "")
        for pkg in ("python-docx", "pypdf", "pyyaml"):
            from importlib.metadata import PackageNotFoundError, version

            try:
                versions[pkg] = version(pkg)
            except PackageNotFoundError:
                pass
        meta = store.meta or {}
        manifest = {
            "tool": MANIFEST_TOOL,
            "schema": 1,
            "title": title,
            "formats": list(fmts),
            "data_hash": meta.get("data_hash") or getattr(coll, "data_hash", ""),
            "input_files_hash": (layout.manifest.get("inputs") or {}).get("data_hash"),
            "plan_version": plan.version,
            "as_of": meta.get("as_of"),
            "min_cell": min_cell,
            "run_layout": layout.layout,
            "run_renderer": layout.manifest.get("renderer"),
            "renderer": renderer if exe is not None else {"name": "quarto", "version": None,
                                                           "note": "not on PATH"},
            "software": dict(sorted(versions.items())),
            "source_date_epoch": source_date_epoch(),
            "files": dict(sorted(files.items())),
            "skipped": sorted(skipped, key=lambda s: s["item"]),
            "excluded": sorted(excluded, key=lambda s: s["item"]),
        }
        write_json(final / BUNDLE_MANIFEST, manifest)
        if out.exists():
            shutil.rmtree(out)
        os.replace(final, out)
        return PublishResult(out, files, manifest["skipped"], manifest["excluded"], manifest)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        for p in stage_parent.glob(f".{out.name}.new-*"):
            shutil.rmtree(p, ignore_errors=True)


def _figures(layout: RunLayout, store: Any, labels: Mapping[str, str] | None, fig_dir: Path,
             min_cell: int, skipped: list[dict[str, str]]) -> dict[str, dict[str, Any]]:
    """Candidate figures: those the report exported (its export folder), else produced from the
    store. Returns name -> sidecar record."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from . import estimate_plots as ep
    from .figures import FigureRegistry, load_figure_records

    fig_dir.mkdir(parents=True, exist_ok=True)
    records: dict[str, dict[str, Any]] = {}
    exported = layout.export_dir / FIGURES_DIR if layout.export_dir is not None else None
    if exported is not None and exported.is_dir():
        for rec in load_figure_records(exported):
            if all((exported / f).is_file() for f in rec.files.values()) and rec.files:
                for f in (*rec.files.values(), f"{rec.name}.json"):
                    shutil.copyfile(exported / f, fig_dir / f)
                records[rec.name] = rec.to_dict()
        if records:
            return records
    reg = FigureRegistry(fig_dir.parent, display=False)
    producers: list[tuple[str, Callable[[], Any]]] = [
        ("primary estimates", lambda: ep.primary_estimates_figure(store)),
        ("sensitivity analyses", lambda: ep.sensitivity_figure(store)),
        ("event study", lambda: ep.event_study_figure(store)),
        ("hospital effects", lambda: ep.site_effects_figure(store, _need_labels(labels))),
        ("funnel plot", lambda: ep.funnel_figure(store, _need_labels(labels))),
        ("survival curves", lambda: ep.curves_figure(store, min_cell=min_cell)),
        ("case-mix calibration", lambda: ep.calibration_figure(store, min_cell=min_cell)),
    ]
    for what, make in producers:
        try:
            rf = make()
        except (ValueError, KeyError) as exc:
            skipped.append({"item": f"figure: {what}", "reason": _plain(exc)})
            continue
        rec = reg.register(rf.fig, rf.name, caption=rf.caption, alt=rf.alt, safe=rf.safe,
                           provenance=rf.provenance)
        records[rec.name] = rec.to_dict()
    return records


def _need_labels(labels: Mapping[str, str] | None) -> Mapping[str, str]:
    if labels is None:
        raise ValueError("the run has no pseudonym key, so hospitals cannot be shown")
    return labels


def _plain(exc: BaseException) -> str:
    from .methods_text import md_text

    return " ".join(str(exc).split())[:200] if str(exc) else type(exc).__name__


def _tables(layout: RunLayout, store: Any, run: Any, tab_dir: Path, min_cell: int,
            skipped: list[dict[str, str]]) -> dict[str, str]:
    """Candidate tables (csv, docx, tex, and md for the manuscript): those the report exported,
    else built here. Returns name -> Markdown."""
    from . import tables as T

    tab_dir.mkdir(parents=True, exist_ok=True)
    out: dict[str, str] = {}
    exported = layout.export_dir / TABLES_DIR if layout.export_dir is not None else None
    if exported is not None and exported.is_dir():
        for side in sorted(exported.glob("*.json")):
            name = side.stem
            md = exported / f"{name}.md"
            fmts = [f for f in BUNDLE_TABLE_FORMATS if (exported / f"{name}.{f}").is_file()]
            if not fmts:
                continue
            for f in fmts:
                shutil.copyfile(exported / f"{name}.{f}", tab_dir / f"{name}.{f}")
            out[name] = md.read_text(encoding="utf-8") if md.is_file() else ""
        if out:
            return out
    builders: list[tuple[str, Callable[[], Any]]] = [
        ("Table 1", lambda: T.table_one(run.episodes, min_cell=min_cell)),
        ("primary estimand table", lambda: T.primary_estimand_table(store, min_cell=min_cell)),
        ("sensitivity table", lambda: T.sensitivity_table(store, min_cell=min_cell)),
        ("process-outcome table", lambda: T.process_outcome_table(_associations(layout, run),
                                                                  min_cell=min_cell)),
    ]
    for what, make in builders:
        try:
            t = make()
        except (ValueError, KeyError, ArithmeticError) as exc:
            skipped.append({"item": f"table: {what}", "reason": _plain(exc)})
            continue
        t.save(tab_dir, formats=(*BUNDLE_TABLE_FORMATS, "md"))
        out[t.name] = t.to_markdown()
    return out


def _associations(layout: RunLayout, run: Any) -> Any:
    """Process-outcome associations: the run's shared fit when it has one, else fitted here."""
    import pickle

    from .processes import ProcessAssociations, process_associations

    if layout.shared_dir is not None and (layout.shared_dir / "associations.pkl").is_file():
        try:
            with (layout.shared_dir / "associations.pkl").open("rb") as fh:
                value = pickle.load(fh)
            if isinstance(value, ProcessAssociations):
                return value
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError):
            pass
    return process_associations(run.episodes, "sam30")


# ---------------------------------------------------------------------------------------------
# command line
def run_publish_command(run: Path, out: Path, formats: str, data: Path | None,
                        min_cell: int | None, json_out: bool) -> PublishResult:
    """``ipso publish --run DIR --out BUNDLE [--formats html,pdf,docx] [--data DIR] [--json]``."""
    import typer

    from .console import console, print_json

    try:
        fmts = [f.strip() for f in str(formats).split(",") if f.strip()]
        if min_cell is not None and min_cell < 1:
            raise PublishError(f"--min-cell must be at least 1, got {min_cell}")
        res = publish_bundle(run, out, formats=fmts, data_dir=data, min_cell=min_cell)
    except PublishError as exc:
        console.print(f"[bold red]Error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from None
    if json_out:
        print_json(res.to_dict())
    else:
        console.print(f"Bundle written to {res.out}", highlight=False)
        for line in res.summary_lines():
            console.print(f"  {line}", highlight=False, markup=False)
    return res

"""Render one report: execute a parameterised notebook, then turn the executed notebook into HTML
(and PDF) with Quarto when it is on PATH, otherwise with nbconvert. The batch renderer
(:mod:`analysis.batch`) uses the same building blocks, so ``ipso report`` and ``ipso render`` give
the same reports.

Layout of a run (``reports/<run>/``, never committed); only ``publish/`` is meant to leave the
analysis server (:data:`PUBLISH_DIRNAME`, :data:`INTERNAL_DIRNAME`)::

    publish/<name>.html, .pdf       published outputs (``site_<SITE>`` or ``collaborative``), each
                                    scanned (:func:`scan_for_publication`) before it appears
    internal/run_key                the run's secret pseudonym key
    internal/work/<name>/<name>.ipynb  executed notebook, kept for audit (cwd of the kernel: figures
                                    and intermediate files of one report never collide)
    internal/work/<name>/stage/     rendered files before the scan; Quarto's staging project
    internal/work/<name>/scan.json  what the output scan found (values masked), when it failed
    .ipso-lock                      held while a command works on the folder (:func:`run_lock`)

Every path built from data or arguments (run names, report names, site ids, format names) goes
through :func:`confined_path`, which refuses anything that would leave the run folder.

How Quarto is run (:func:`quarto_render_items`): the executed notebooks are copied into a staging
folder that is a Quarto project (``reports/_quarto.yml`` and its theme; a folder whose name starts
with neither "." nor "_", or Quarto would ignore the project settings), under the names they are
published with, so Quarto's "Other formats" links point at the published files. One ``quarto
render`` call renders every notebook of the folder without executing it (Deno start-up and the
Bootstrap theme compilation are paid once per call); when the call fails, each notebook is rendered
again on its own, so one bad report gets Quarto's error and the others are still produced. For HTML,
every ``text/html`` output is handed to Quarto as the raw HTML block Quarto itself would write, so
Quarto does not add the require.js/jQuery CDN scripts it adds for "JavaScript widgets": reports are
self-contained and open on an air-gapped machine.

Every published file goes through :func:`publish` (temporary sibling, then ``os.replace``): the one
place where a report's final files appear, and the gate before it (offline check and the output
scan of :mod:`analysis.privacy`).

Building blocks for :mod:`analysis.batch` (signatures kept stable):

* :func:`parameterize` ``(notebook_path, parameters) -> NotebookNode``
* :func:`export_html` ``(nb_node, out_path, *, renderer_label="nbconvert") -> Path``
* :func:`quarto_render` ``(paths_or_dir, formats=("html",), *, quarto=None) -> list[Path]``
* :func:`quarto_render_items` ``(items, stage_dir, formats) -> {stem: QuartoResult}``
* :func:`publish` ``(pairs, *, before_replace=None) -> list[Path]``
* :func:`sanitize_executed` ``(nb_node) -> NotebookNode`` (drops wall-clock timing metadata)
"""

from __future__ import annotations

import copy
import functools
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import privacy

if TYPE_CHECKING:  # nbformat is imported where it is used: `ipso render` with nothing to do stays fast
    import nbformat

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
NOTEBOOKS = {
    "site": NOTEBOOK_DIR / "site_report.ipynb",
    "collaborative": NOTEBOOK_DIR / "collaborative_report.ipynb",
}
#: Quarto project file (theme and options) of every staging folder Quarto renders.
QUARTO_CONFIG = REPO_ROOT / "reports" / "_quarto.yml"
#: Files copied with it (the theme layer it names).
QUARTO_PROJECT_FILES = (QUARTO_CONFIG, REPO_ROOT / "reports" / "ipso.scss")
#: What may leave the analysis server (reports, index, manifest) and what may not (key, pickles,
#: executed notebooks, site slices, shared fits, logs).
PUBLISH_DIRNAME = "publish"
INTERNAL_DIRNAME = "internal"
WORK_DIRNAME = "work"
#: Lock file of a run folder (:func:`run_lock`).
LOCK_FILE = ".ipso-lock"
FORMATS = ("html", "pdf")
#: Quarto target per output format (PDF through Typst: no LaTeX needed).
QUARTO_TO = {"html": "html", "pdf": "typst"}
#: File suffix per output format.
SUFFIX = {"html": ".html", "pdf": ".pdf"}
#: Marks the temporary sibling of a file being published (``.<name>.tmp-<pid>``).
TMP_MARK = ".tmp-"
#: Seconds one Quarto call may take: a fixed allowance plus this much per notebook.
QUARTO_TIMEOUT = (300.0, 120.0)


class RenderWarning(UserWarning):
    """A requested output could not be produced (e.g. PDF without Quarto)."""


class UnsafeOutputError(RuntimeError):
    """A rendered file must not be published (an HTML page that loads from the internet, or a file
    the output scan refuses: then ``findings`` lists what it found)."""

    findings: tuple = ()


def find_quarto() -> str | None:
    """Path of the ``quarto`` executable, or None when it is not on PATH."""
    return shutil.which("quarto")


@functools.lru_cache(maxsize=8)
def _quarto_version(exe: str) -> str | None:
    try:
        proc = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60,
                              check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    out = proc.stdout.strip().splitlines()
    return out[-1].strip() if proc.returncode == 0 and out else None


def quarto_version(quarto: str | None = None) -> str | None:
    """Version printed by ``quarto --version`` (None when Quarto is missing or broken)."""
    exe = quarto or find_quarto()
    return _quarto_version(exe) if exe else None


def renderer_version(renderer: str) -> str | None:
    """Version of a renderer: Quarto's own, or the installed nbconvert package's."""
    if renderer == "quarto":
        return quarto_version()
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nbconvert")
    except PackageNotFoundError:
        return None


def renderer_label(renderer: str) -> str:
    """``"quarto 1.6.40"`` or ``"nbconvert 7.16.4"``: the renderer and its version, as the footer
    and the manifest state them."""
    v = renderer_version(renderer)
    return f"{renderer} {v}" if v else renderer


def resolve_renderer(renderer: str = "auto") -> str:
    """``"auto"`` -> ``"quarto"`` when Quarto is on PATH, else ``"nbconvert"``."""
    if renderer not in ("auto", "quarto", "nbconvert"):
        raise ValueError(f"renderer must be 'auto', 'quarto' or 'nbconvert', got {renderer!r}")
    if renderer == "auto":
        return "quarto" if find_quarto() else "nbconvert"
    if renderer == "quarto" and not find_quarto():
        raise ValueError("renderer='quarto' but quarto is not on PATH")
    return renderer


def parse_formats(formats: str | Sequence[str]) -> tuple[str, ...]:
    """``"html,pdf"`` or ``["html"]`` -> validated tuple of formats."""
    items = formats.split(",") if isinstance(formats, str) else list(formats)
    out = tuple(dict.fromkeys(f.strip().lower() for f in items if f.strip()))
    bad = [f for f in out if f not in FORMATS]
    if bad or not out:
        raise ValueError(f"--formats must be among {', '.join(FORMATS)} (comma-separated); "
                         f"got {formats!r}")
    return out


_MONTH = re.compile(r"^(\d{4})-(\d{2})$")


def parse_as_of(as_of: str | None) -> str | None:
    """Validate a data cut-off month ``YYYY-MM`` (None: the last month with data)."""
    if as_of is None:
        return None
    m = _MONTH.match(str(as_of).strip())
    if not m or not 1 <= int(m.group(2)) <= 12:
        raise ValueError(f"--as-of must be a month YYYY-MM (e.g. 2019-06); got {as_of!r}")
    return f"{m.group(1)}-{m.group(2)}"


def parse_min_cell(min_cell: int | None) -> int | None:
    """Validate the smallest count shown (at least 1; None: the default)."""
    if min_cell is None:
        return None
    if isinstance(min_cell, bool) or not isinstance(min_cell, int) or min_cell < 1:
        raise ValueError(f"--min-cell must be a whole number >= 1 (counts 1..MIN_CELL-1 are "
                         f"suppressed); got {min_cell!r}")
    return min_cell


def data_site_ids(data_dir: str | Path | None) -> list[str]:
    """Hospital ids of a data directory, read cheaply (the ``sites`` table, else the ``site_id``
    column of ``episodes``), so a request for an unknown hospital is refused before any work.

    None: the default synthetic collaborative (``data/synthetic`` when present, else the sites
    the simulator makes with its defaults)."""
    import pandas as pd

    from .reporting import DEFAULT_SYNTHETIC_DIR

    if data_dir is None and not DEFAULT_SYNTHETIC_DIR.exists():
        from .simulate import simulate_collaborative

        # the site table depends only on the seed and the number of sites, not on the months
        sim = simulate_collaborative(months=1, episodes_per_site_month=0.01)
        return sim.sites["site_id"].astype(str).tolist()
    base = Path(data_dir) if data_dir is not None else DEFAULT_SYNTHETIC_DIR
    if not base.is_dir():
        raise ValueError(f"--data {base}: no such directory")
    for name in ("sites", "episodes"):
        for ext in (".parquet", ".csv"):
            path = base / f"{name}{ext}"
            if not path.is_file():
                continue
            if ext == ".parquet":
                col = pd.read_parquet(path, columns=["site_id"])["site_id"]
            else:
                col = pd.read_csv(path, usecols=["site_id"], dtype=str, keep_default_na=False)["site_id"]
            return list(dict.fromkeys(col.astype(str)))
    raise ValueError(f"{base}: no sites or episodes table (.parquet or .csv)")


# ---------------------------------------------------------------------------------------------
# run folders: paths that cannot escape, a lock, the key
UnsafePathError = privacy.UnsafePathError
confined_path = privacy.confined_path


class RunLockedError(ValueError):
    """Another ipso command holds the run folder's lock."""


class _RunLock:
    def __init__(self, fh, path: Path):
        self.fh, self.path = fh, path

    def release(self) -> None:
        import fcntl

        if self.fh is not None:
            try:
                fcntl.flock(self.fh, fcntl.LOCK_UN)
            finally:
                self.fh.close()
                self.fh = None


def acquire_run_lock(run_dir: str | Path, *, wait: float = 0.0, command: str = "ipso") -> _RunLock:
    """Take the run folder's lock (``<run_dir>/.ipso-lock``, an ``flock``: released by the
    operating system when the holder dies, even by kill -9, so it can never go stale).

    `wait`: seconds to wait for another holder to finish (0: do not wait). Raises
    :class:`RunLockedError` naming the holder (pid, host, command, start time) when the lock is
    still taken after `wait` seconds.
    """
    import fcntl
    import json
    import socket

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    fh = open(path, "a+")
    deadline = time.monotonic() + max(0.0, float(wait))
    while True:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                fh.seek(0)
                try:
                    holder = json.loads(fh.read() or "{}")
                except ValueError:
                    holder = {}
                fh.close()
                who = (f"{holder.get('command', 'an ipso command')} (pid {holder.get('pid', '?')} on "
                       f"{holder.get('host', '?')}, started {holder.get('started', '?')})")
                raise RunLockedError(
                    f"{run_dir} is in use by {who}; wait for it to finish"
                    + (f" (waited {wait:g} s)" if wait else "") + ", or pass --wait SECONDS")
            time.sleep(0.2)
    fh.seek(0)
    fh.truncate()
    fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                         "started": time.strftime("%Y-%m-%d %H.%M.%S")}))
    fh.flush()
    return _RunLock(fh, path)


class run_lock:
    """``with run_lock(run_dir, wait=0, command="ipso render"):`` (:func:`acquire_run_lock`)."""

    def __init__(self, run_dir: str | Path, *, wait: float = 0.0, command: str = "ipso"):
        self.args = (run_dir, wait, command)
        self.lock: _RunLock | None = None

    def __enter__(self) -> _RunLock:
        run_dir, wait, command = self.args
        self.lock = acquire_run_lock(run_dir, wait=wait, command=command)
        return self.lock

    def __exit__(self, *exc: object) -> None:
        if self.lock is not None:
            self.lock.release()


class terminate_as_exit:
    """Within the block, SIGTERM raises SystemExit(143) in the main thread, so every ``finally``
    and context manager runs (kernels are shut down, their connection files removed) instead of
    the process vanishing. Outside the main thread: does nothing."""

    def __enter__(self):
        import signal

        self.old = None
        if threading.current_thread() is threading.main_thread():
            def on_term(signum, frame):
                raise SystemExit(128 + signum)

            self.old = signal.signal(signal.SIGTERM, on_term)
        return self

    def __exit__(self, *exc: object) -> None:
        import signal

        if self.old is not None:
            signal.signal(signal.SIGTERM, self.old)


def plan_parameter(plan: str | Path | None) -> tuple[str | None, str | None]:
    """Check an analysis plan YAML file (:meth:`analysis.plan.Plan.from_yaml`) and return
    (absolute path, hash of the plan's content) for the notebooks' ``plan`` parameter and the
    report keys; (None, None) without a plan. Raises :class:`analysis.plan.PlanError` (a
    ValueError naming the estimand, level and field) for a bad plan."""
    if plan is None:
        return None, None
    import hashlib
    import json

    from .plan import Plan

    path = Path(plan).resolve()
    parsed = Plan.from_yaml(path)
    digest = hashlib.sha256(json.dumps(parsed.to_dict(), sort_keys=True, default=str).encode()).hexdigest()
    return str(path), digest[:16]


# ---------------------------------------------------------------------------------------------
# what must never be published, and the scan before publishing
def forbidden_strings_for(data_dir: str | Path | None) -> dict[str, Any]:
    """Strings no published file may hold, read cheaply from the raw input (rows the validator
    would quarantine included): ``{"sites": {site_id: site_name}, "ids": [episode and patient ids,
    quarantined rows' keys]}``. A report may name its own hospital (:func:`forbidden_for_report`).
    None: the default synthetic collaborative."""
    import pandas as pd

    from .reporting import DEFAULT_SYNTHETIC_DIR

    if data_dir is None and not DEFAULT_SYNTHETIC_DIR.exists():
        from .reporting import load_run

        run = load_run(None, run_key="scan")
        sites = dict(zip(run.sites["site_id"].astype(str), run.sites["site_name"].astype(str)))
        # the identifiers only: hospitals' ids and names go in "sites", so that a report may
        # name its own hospital (forbidden_for_report)
        names = set(sites) | set(sites.values())
        return {"sites": sites, "ids": [s for s in run.forbidden_strings(None) if s not in names]}
    base = Path(data_dir) if data_dir is not None else DEFAULT_SYNTHETIC_DIR

    def read(name: str, columns: list[str]) -> pd.DataFrame:
        for ext in (".parquet", ".csv"):
            path = base / f"{name}{ext}"
            if not path.is_file():
                continue
            if ext == ".parquet":
                import pyarrow.parquet as pq

                have = set(pq.read_schema(path).names)
                return pd.read_parquet(path, columns=[c for c in columns if c in have])
            return pd.read_csv(path, usecols=lambda c: c in columns, dtype=str, keep_default_na=False)
        return pd.DataFrame(columns=columns)

    sites = read("sites", ["site_id", "site_name"])
    names = dict(zip(sites.get("site_id", pd.Series(dtype=str)).astype(str),
                     sites.get("site_name", pd.Series(dtype=str)).astype(str)))
    ids: list[str] = []
    for name, cols in (("episodes", ["episode_id", "patient_id"]), ("quarantine", ["key"])):
        df = read(name, cols)
        for c in cols:
            if c in df:
                ids += [v for v in df[c].dropna().astype(str) if v]
    return {"sites": names, "ids": list(dict.fromkeys(ids))}


def forbidden_for_report(forbidden: Mapping[str, Any], site_id: str | None,
                         run_key: str | None = None, *, index: bool = False) -> privacy.ForbiddenStrings:
    """The forbidden strings of one published file: every identifier, every hospital's name and id
    except the report's own (`site_id`; None: the collaborative report names none), and the run
    key. `index=True` (the public index and manifest, which list reports by site id): every name,
    no site id. The long list of identifiers is prepared once per `forbidden` mapping (a dict
    from :func:`forbidden_strings_for`) and re-used for every report."""
    prepared = forbidden.get("_prepared") if isinstance(forbidden, dict) else None
    if prepared is None:
        prepared = privacy.ForbiddenStrings(forbidden.get("ids", []))
        if isinstance(forbidden, dict):
            forbidden["_prepared"] = prepared
    sites = dict(forbidden.get("sites", {}))
    out = [n for s, n in sites.items() if s != site_id or index]
    if not index:
        out += [s for s in sites if s != site_id]
    if run_key:
        out.append(run_key)
    return prepared.extended(out)


def scan_for_publication(files: Sequence[str | Path], *,
                         forbidden_strings: Sequence[str] | privacy.ForbiddenStrings = (),
                         min_cell: int = privacy.DEFAULT_MIN_CELL,
                         executed_notebook: str | Path | None = None) -> list[privacy.Finding]:
    """The output scan every file passes before it is published (:func:`analysis.privacy.scan_outputs`,
    every check). A PDF's figures cannot be read back from its drawing commands, so when a PDF is
    among `files`, the figures of the notebook it was rendered from (`executed_notebook`) are
    checked instead (marker and coordinates)."""
    findings = privacy.scan_outputs(list(files), forbidden_strings=forbidden_strings, min_cell=min_cell)
    if executed_notebook is not None and any(Path(f).suffix.lower() == ".pdf" for f in files):
        findings += privacy.scan_outputs([executed_notebook], min_cell=min_cell, checks=("figures",))
    return findings


# ---------------------------------------------------------------------------------------------
# building blocks
def parameterize(notebook_path: str | Path, parameters: Mapping[str, Any]) -> nbformat.NotebookNode:
    """Read a notebook and inject `parameters` after its ``parameters``-tagged cell (papermill)."""
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    nb = load_notebook_node(str(notebook_path))
    return parameterize_notebook(nb, dict(parameters))


_TIMING_KEYS = ("start_time", "end_time", "duration")


def sanitize_executed(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Remove wall-clock timing metadata (papermill start/end times, nbclient ``execution``) so an
    executed notebook kept for audit holds no exact timestamps. Durations are kept."""
    pm = nb.metadata.get("papermill", {})
    for k in ("start_time", "end_time"):
        pm.pop(k, None)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        cpm = cell.metadata.get("papermill", {})
        for k in ("start_time", "end_time"):
            cpm.pop(k, None)
    return nb


def _front_matter(nb: nbformat.NotebookNode) -> dict[str, str]:
    for cell in nb.cells:
        if cell.cell_type == "raw" and cell.source.lstrip().startswith("---"):
            out = {}
            for line in cell.source.splitlines():
                m = re.match(r"^(title|subtitle):\s*['\"]?(.*?)['\"]?\s*$", line)
                if m:
                    out[m.group(1)] = m.group(2)
            return out
    return {}


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


#: nbconvert's "lab" page without the script tags it loads from CDNs (require.js, MathJax,
#: mermaid): report pages must open on machines without internet access.
_OFFLINE_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
"""


def export_html(nb_node: nbformat.NotebookNode, out_path: str | Path, *,
                renderer_label: str = "nbconvert") -> Path:
    """Self-contained HTML of an executed notebook with nbconvert: code, prompts, the YAML front
    matter, stderr streams and cells tagged ``remove-cell`` are left out; images are embedded and
    no script is loaded from the internet.

    `renderer_label` goes into the page's metadata (the notebook's footer states the renderer).
    """
    import nbformat
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    nb = copy.deepcopy(nb_node)
    meta = _front_matter(nb)
    keep = []
    for cell in nb.cells:
        tags = set(cell.metadata.get("tags", []))
        if tags & {"remove-cell", "remove_cell"}:
            continue
        if cell.cell_type == "raw":
            continue
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.get("outputs", [])
                            if not (o.get("output_type") == "stream" and o.get("name") == "stderr")]
        keep.append(cell)
    nb.cells = keep
    title = meta.get("title", "IPSO report")
    if keep and meta.get("title"):
        sub = f"\n\n*{meta['subtitle']}*" if meta.get("subtitle") else ""
        nb.cells.insert(0, nbformat.v4.new_markdown_cell(f"# {title}{sub}"))
    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True,
                            exclude_output_prompt=True, embed_images=True,
                            extra_loaders=[DictLoader({"ipso-offline.html.j2": _OFFLINE_TEMPLATE})],
                            template_file="ipso-offline.html.j2")
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": title}})
    body = body.replace("<head>", f'<head>\n<meta name="generator" content="ipso-analysis via {renderer_label}">', 1)
    out = Path(out_path)
    _atomic_write_text(out, body)
    return out


# ---------------------------------------------------------------------------------------------
# offline check
_URL = r"""\s*["']?\s*((?:https?:)?//[^"'\s>)]+)"""
_EXTERNAL_PATTERNS = tuple(re.compile(p, re.IGNORECASE) for p in (
    # what a browser fetches by itself (not <a href>: a link the reader may follow)
    r"<(?:script|img|iframe|embed|source|video|audio|track|input)\b[^>]*?\bsrc\s*=" + _URL,
    r"<link\b[^>]*?\bhref\s*=" + _URL,
    r"<object\b[^>]*?\bdata\s*=" + _URL,
    r"@import\s*(?:url\()?" + _URL,
    r"url\(" + _URL,
))


_DATA_CSS = re.compile(r"""data:text/css(;base64)?,([^"'\s>]+)""", re.IGNORECASE)


def embedded_css(html_text: str) -> list[str]:
    """Style sheets embedded as ``data:text/css`` URLs (percent- or base64-encoded), decoded:
    what Quarto's and pandoc's resource embedding turn ``<link rel=stylesheet>`` into."""
    import base64
    from urllib.parse import unquote

    out = []
    for m in _DATA_CSS.finditer(html_text):
        payload = m.group(2)
        try:
            out.append(base64.b64decode(payload).decode("utf-8", "replace") if m.group(1)
                       else unquote(payload))
        except ValueError:
            continue
    return out


def external_references(html_text: str) -> list[str]:
    """URLs an HTML page would fetch from the network: ``src`` of scripts, images and frames,
    ``<link href>`` (stylesheets, fonts, icons), CSS ``@import`` and ``url(...)``, also inside
    style sheets embedded as data URLs. Plain links a reader may follow (``<a href>``) are not
    counted. Empty for a self-contained page."""
    found: list[str] = []
    for text in (html_text, *embedded_css(html_text)):
        for pat in _EXTERNAL_PATTERNS:
            found += [m.group(1) for m in pat.finditer(text)]
    return list(dict.fromkeys(found))


# ---------------------------------------------------------------------------------------------
# Quarto
def prepare_for_quarto(nb: nbformat.NotebookNode, fmt: str) -> nbformat.NotebookNode:
    """Copy of an executed notebook as Quarto should see it for output format `fmt`.

    HTML: every ``text/html`` output becomes the ``text/markdown`` raw HTML block (```` ```{=html}
    ````) that Quarto writes for it anyway. The page is the same, but Quarto no longer takes the
    notebook for one with "JavaScript widgets" and so adds no require.js/jQuery script tags from
    cdn.jsdelivr.net (which an offline render cannot embed). Other formats: unchanged (Typst reads
    HTML tables itself).
    """
    nb = copy.deepcopy(nb)
    if fmt != "html":
        return nb
    for cell in nb.cells:
        for out in cell.get("outputs", []) if cell.get("cell_type") == "code" else []:
            data = out.get("data")
            if not data or "text/html" not in data:
                continue
            html = data.pop("text/html")
            html = "".join(html) if isinstance(html, list) else str(html)
            run = max((len(r) for r in re.findall(r"`+", html)), default=0)
            fence = "`" * max(3, run + 1)
            data["text/markdown"] = f"{fence}{{=html}}\n{html}\n{fence}\n"
    return nb


@dataclass
class QuartoItem:
    """One executed notebook for :func:`quarto_render_items`.

    stem: output path relative to the staging (and publishing) folder, without suffix, e.g.
    ``"sites/S01"`` or ``"collaborative"``: Quarto's format links are relative to it.
    """

    notebook: Path
    stem: str


@dataclass
class QuartoResult:
    """Outcome of one notebook: files produced in the staging folder (format -> path), Quarto's
    error, and this notebook's share of Quarto's wall time (its own file plus an equal share of
    the call's start-up), in seconds."""

    stem: str
    files: dict[str, Path] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_PROGRESS = re.compile(r"^\[\s*(\d+)/(\d+)\]\s+(.+?)\s*$")


def _stage_project(stage_dir: Path) -> None:
    """A fresh staging folder that is a Quarto project with the IPSO settings."""
    if stage_dir.name.startswith((".", "_")):
        raise ValueError(f"Quarto ignores project folders named like {stage_dir.name!r}")
    if stage_dir.exists():
        shutil.rmtree(stage_dir)
    stage_dir.mkdir(parents=True)
    for f in QUARTO_PROJECT_FILES:
        if f.exists():
            shutil.copyfile(f, stage_dir / f.name)


def _run_quarto(exe: str, stage_dir: Path, fmt: str, *, link_pdf: bool,
                timeout: float | None) -> tuple[int, str, float, list[tuple[float, str]]]:
    """``quarto render <stage_dir> --to <fmt>``: (exit code, output, wall seconds, and for each
    file Quarto started, from its ``[i/n] <file>`` progress lines: (seconds, file))."""
    args = [exe, "render", str(stage_dir), "--to", QUARTO_TO[fmt], "--no-execute"]
    if fmt == "html":
        # "Other formats" links only to what this call's caller produces, under the same stem
        args += ["-M", "format-links:[typst]" if link_pdf else "format-links:false"]
    t0 = time.perf_counter()
    # one stream (Quarto logs to stderr), read by a thread, so the timeout below always applies
    proc = subprocess.Popen(args, cwd=stage_dir, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace")
    starts: list[tuple[float, str]] = []
    lines: list[str] = []

    def read_output() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            clean = _ANSI.sub("", line).rstrip()
            m = _PROGRESS.match(clean)
            if m:
                starts.append((time.perf_counter() - t0, m.group(3)))
            lines.append(clean)

    reader = threading.Thread(target=read_output, daemon=True)
    reader.start()
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        code = -9
    reader.join(timeout=10)
    if code == -9:
        lines.append(f"quarto render timed out after {timeout:.0f} s and was stopped")
    return code, "\n".join(lines), time.perf_counter() - t0, starts


def _quarto_error(text: str) -> str:
    """The useful tail of Quarto's output: from the first ERROR line, else the last lines."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    for i, ln in enumerate(lines):
        if re.match(r"^(ERROR|Error|\w*Exception)\b", ln.strip()):
            return "\n".join(lines[i:i + 15])[-3000:]
    return "\n".join(lines[-15:])[-3000:]


def _split_time(wall: float, starts: Sequence[tuple[float, str]],
                stems: Sequence[str]) -> dict[str, float]:
    """A Quarto call's wall time per notebook: its own stretch between progress lines, plus an
    equal share of the rest (start-up, theme compilation, clean-up). Equal shares when the
    progress lines do not name every notebook once."""
    names = [str(Path(f).with_suffix("")) for _, f in starts]
    if sorted(names) != sorted(stems):
        return {s: wall / len(stems) for s in stems}
    times = [t for t, _ in starts]
    own = [b - a for a, b in zip(times, times[1:] + [wall])]
    if len(own) > 1:  # the last stretch runs to the end of the call and holds the clean-up
        own[-1] = sum(own[:-1]) / (len(own) - 1)
    share = (wall - sum(own)) / len(stems)
    return {name: share + o for name, o in zip(names, own)}


def quarto_render_items(items: Sequence[QuartoItem], stage_dir: str | Path,
                        formats: Sequence[str] = ("html",), *, quarto: str | None = None,
                        timeout: float | None = None, isolate: bool = True) -> dict[str, QuartoResult]:
    """Render executed notebooks with Quarto, without executing them again.

    The notebooks are staged in `stage_dir` (created afresh; a Quarto project with
    ``reports/_quarto.yml``) as ``<stem>.ipynb`` and rendered by one ``quarto render`` call per
    format (PDF through Typst). Returns ``{stem: QuartoResult}``; outputs stay in `stage_dir`
    until :func:`publish`-ed. When a call fails and `isolate` is true, each notebook is rendered
    again on its own (in ``<stage_dir>/alone-<i>``), so only the notebooks Quarto cannot render fail,
    each with Quarto's error. HTML pages link to the PDF only when PDFs are rendered too.
    """
    import nbformat

    exe = quarto or find_quarto()
    fmts = parse_formats(list(formats))
    stage_dir = Path(stage_dir)
    results = {it.stem: QuartoResult(it.stem) for it in items}
    if exe is None:
        for r in results.values():
            r.error = "quarto is not on PATH"
        return results
    if not items:
        return results
    if len(results) != len(items):
        raise ValueError("quarto_render_items: stems must be unique")
    _stage_project(stage_dir)
    limit = timeout or QUARTO_TIMEOUT[0] + QUARTO_TIMEOUT[1] * len(items)
    sources = {it.stem: nbformat.read(it.notebook, as_version=4) for it in items}
    failed_call: str | None = None
    for fmt in sorted(fmts, key=lambda f: f != "pdf"):  # PDF first: HTML may link to it
        for stem, nb in sources.items():
            target = stage_dir / f"{stem}.ipynb"
            target.parent.mkdir(parents=True, exist_ok=True)
            nbformat.write(prepare_for_quarto(nb, fmt), target)
        code, text, wall, starts = _run_quarto(exe, stage_dir, fmt, link_pdf="pdf" in fmts,
                                               timeout=limit)
        if code != 0:
            failed_call = _quarto_error(text)
            for r in results.values():  # the failed call's time is shared by all
                r.seconds += wall / len(results)
            break
        for stem, secs in _split_time(wall, starts, list(sources)).items():
            results[stem].seconds += secs
        for stem in sources:
            out = stage_dir / f"{stem}{SUFFIX[fmt]}"
            if out.is_file():
                results[stem].files[fmt] = out
            else:
                results[stem].error = f"quarto produced no {Path(stem).name}{SUFFIX[fmt]}"
    if failed_call is None:
        return results
    if not isolate or len(items) == 1:
        for r in results.values():
            r.error, r.files = f"quarto render failed:\n{failed_call}", {}
        return results
    # one failing notebook stops a Quarto call: render each on its own
    alone: dict[str, QuartoResult] = {}
    for i, it in enumerate(items):
        alone.update(quarto_render_items([it], stage_dir / f"alone-{i}", fmts, quarto=exe,
                                         timeout=timeout, isolate=False))
    for r in results.values():
        alone[r.stem].seconds += r.seconds
    return alone


def publish(pairs: Sequence[tuple[Path, Path]], *,
            before_replace: Callable[[Path, Path], None] | None = None,
            scan: Callable[[list[Path]], list[privacy.Finding]] | None = None) -> list[Path]:
    """Publish rendered files: each ``(source, final)`` is copied to a hidden temporary sibling of
    `final` (``.<name>.tmp-<pid>``) and ``os.replace``-d onto it, so a reader (or a run killed at
    any moment) sees the previous complete file or the new complete one, never a partial one.

    The one place where a report's final files appear, and the gate before it: nothing is
    published, and :class:`UnsafeOutputError` is raised, when an HTML page would fetch anything
    from the network (:func:`external_references`) or when `scan` (called with every source file
    at once, e.g. :func:`scan_for_publication`) finds anything; the error's ``findings`` hold what
    the scan found and its message says what kind of problem, never the value.
    `before_replace(tmp, final)` runs after each temporary file is written (the batch's
    fault-injection hook). Returns the final paths.
    """
    for src, final in pairs:
        if Path(final).suffix.lower() in (".html", ".htm"):
            ext = external_references(Path(src).read_text(encoding="utf-8", errors="replace"))
            if ext:
                raise UnsafeOutputError(
                    f"{Path(final).name} is not self-contained: it would load "
                    f"{', '.join(ext[:5])}{' ...' if len(ext) > 5 else ''} from the network")
    if scan is not None:
        findings = scan([Path(src) for src, _ in pairs])
        if findings:
            err = UnsafeOutputError(privacy.describe_findings(findings))
            err.findings = findings
            raise err
    done: list[Path] = []
    for src, final in pairs:
        final = Path(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}{TMP_MARK}{os.getpid()}")
        try:
            shutil.copyfile(src, tmp)
            os.chmod(tmp, 0o644)
            if before_replace is not None:
                before_replace(tmp, final)
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        done.append(final)
    return done


def quarto_render(paths_or_dir: str | Path | Sequence[str | Path], formats: Sequence[str] = ("html",),
                  *, quarto: str | None = None, timeout: float = 1800) -> list[Path]:
    """Render executed notebooks with Quarto, without executing them again; outputs are written
    next to the inputs.

    `paths_or_dir` is a folder (every ``.ipynb`` in it) or one or more ``.ipynb`` files. They are
    rendered together through a staging project (:func:`quarto_render_items`, ``reports/_quarto.yml``
    applied). Returns the output files; raises RuntimeError with Quarto's message when a notebook
    fails.
    """
    if isinstance(paths_or_dir, (str, Path)):
        targets = [Path(paths_or_dir)]
    else:
        targets = [Path(p) for p in paths_or_dir]
    notebooks = [q for t in targets for q in (sorted(t.glob("*.ipynb")) if t.is_dir() else [t])]
    items = [QuartoItem(nb, f"n{i}") for i, nb in enumerate(notebooks)]
    produced: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="ipso-quarto-") as tmp:
        res = quarto_render_items(items, Path(tmp) / "stage", formats, quarto=quarto, timeout=timeout)
        errors = [f"{it.notebook}: {res[it.stem].error}" for it in items if res[it.stem].error]
        if errors:
            raise RuntimeError("\n".join(errors))
        for it in items:
            pairs = [(src, it.notebook.with_suffix(SUFFIX[f])) for f, src in res[it.stem].files.items()]
            produced += publish(pairs)
    return produced


def stage_outputs(executed_ipynb: str | Path, stage_dir: str | Path, *,
                  formats: Sequence[str] = ("html",), renderer: str = "auto",
                  name: str | None = None) -> dict[str, Path]:
    """Render an executed notebook, without re-executing it, into `stage_dir` (not published yet):
    ``{format: staged file}`` named ``<name>.<suffix>``. Quarto when available (a staging project
    with ``reports/_quarto.yml`` in ``<stage_dir>/quarto``), otherwise nbconvert (HTML only: PDF
    is skipped with a :class:`RenderWarning`). Raises RuntimeError with Quarto's error."""
    import nbformat

    executed_ipynb = Path(executed_ipynb)
    stage_dir = Path(stage_dir)
    name = name or executed_ipynb.stem
    fmts = parse_formats(list(formats))
    used = resolve_renderer(renderer)
    out: dict[str, Path] = {}
    if used == "quarto":
        res = quarto_render_items([QuartoItem(executed_ipynb, name)], stage_dir / "quarto", fmts)[name]
        if res.error:
            raise RuntimeError(res.error)
        return dict(res.files)
    nb = nbformat.read(executed_ipynb, as_version=4)
    for fmt in fmts:
        if fmt == "html":
            out["html"] = export_html(nb, stage_dir / "nbconvert" / f"{name}.html",
                                      renderer_label=renderer_label("nbconvert"))
        else:
            warnings.warn("PDF output needs Quarto (Typst), which is not on PATH: "
                          f"{name}.pdf was not produced; install Quarto to get PDFs.",
                          RenderWarning, stacklevel=2)
    return out


def render_executed(executed_ipynb: str | Path, out_dir: str | Path, *,
                    formats: Sequence[str] = ("html",), renderer: str = "auto",
                    name: str | None = None,
                    scan: Callable[[list[Path]], list[privacy.Finding]] | None = None) -> dict[str, Path]:
    """Turn an executed notebook into ``<name>.html`` / ``<name>.pdf`` in `out_dir`, without
    re-executing it (:func:`stage_outputs` in a temporary folder, then :func:`publish`, with
    `scan` as its gate).

    PDF needs Quarto (Typst); with nbconvert it is skipped with a :class:`RenderWarning` and is
    missing from the returned mapping ``{format: path}``. Raises RuntimeError with Quarto's error
    when Quarto fails, :class:`UnsafeOutputError` when the gate refuses the files.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = name or Path(executed_ipynb).stem
    with tempfile.TemporaryDirectory(prefix="ipso-stage-") as tmp:
        staged = stage_outputs(executed_ipynb, Path(tmp) / "stage", formats=formats,
                               renderer=renderer, name=name)
        finals = publish([(src, confined_path(out_dir, f"{name}{SUFFIX[fmt]}"))
                          for fmt, src in staged.items()], scan=scan)
    return dict(zip(staged, finals))


def execute_notebook(notebook: str | Path, parameters: Mapping[str, Any], output_path: str | Path, *,
                     cwd: str | Path, kernel_name: str | None = None,
                     timeout: float | None = 1200) -> nbformat.NotebookNode:
    """Execute `notebook` with papermill into `output_path`, with `cwd` as the kernel's working
    folder (one folder per report: files it writes can't collide). Timing metadata is removed.
    The kernel talks over IPC sockets (:class:`analysis.kernelpool.IpcKernelManager`).

    Raises :class:`papermill.PapermillExecutionError` when a cell fails (the partly executed
    notebook is still written to `output_path` for diagnosis).
    """
    import nbformat
    import papermill as pm

    from .kernelpool import IpcKernelManager

    output_path = Path(output_path)
    Path(cwd).mkdir(parents=True, exist_ok=True)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        pm.execute_notebook(str(notebook), str(output_path), parameters=dict(parameters),
                            cwd=str(cwd), kernel_name=kernel_name, progress_bar=False,
                            execution_timeout=timeout, kernel_manager_class=IpcKernelManager)
    finally:
        if output_path.exists():
            nb = sanitize_executed(nbformat.read(output_path, as_version=4))
            nbformat.write(nb, output_path)
    return nbformat.read(output_path, as_version=4)


# ---------------------------------------------------------------------------------------------
# one report
@dataclass
class ReportResult:
    """Outcome of :func:`render_report`.

    outputs: format -> published file. executed_notebook: the executed notebook (audit).
    findings: problems found by :func:`analysis.privacy.scan_outputs` (must be empty to publish).
    warnings: formats not produced and other notes. seconds: wall time.
    """

    kind: str
    site_id: str | None
    name: str
    run_dir: Path
    renderer: str
    outputs: dict[str, Path] = field(default_factory=dict)
    executed_notebook: Path | None = None
    renderer_version: str | None = None
    findings: list[privacy.Finding] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Rendered, and nothing unsafe found in the outputs."""
        return self.error is None and not self.findings and bool(self.outputs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "site_id": self.site_id, "name": self.name,
            "run_dir": str(self.run_dir), "renderer": self.renderer,
            "renderer_version": self.renderer_version, "ok": self.ok,
            "outputs": {k: str(v) for k, v in self.outputs.items()},
            "executed_notebook": str(self.executed_notebook) if self.executed_notebook else None,
            "findings": [f.__dict__ for f in self.findings], "warnings": self.warnings,
            "error": self.error, "seconds": round(self.seconds, 2),
        }


def report_name(kind: str, site_id: str | None = None) -> str:
    """File stem of a report: ``site_<SITE_ID>`` or ``collaborative``."""
    if kind == "site":
        if not site_id:
            raise ValueError("a site report needs a site_id")
        return "site_" + re.sub(r"[^A-Za-z0-9_.-]", "_", str(site_id))
    if kind == "collaborative":
        return "collaborative"
    raise ValueError(f"kind must be 'site' or 'collaborative', got {kind!r}")


def run_key_for(run_dir: Path) -> str:
    """The run's secret pseudonym key: read from ``internal/run_key`` or created (random) once.

    A run folder of the older layout keeps its key (``_work/run_key`` is moved), so hospitals keep
    their pseudonyms."""
    run_dir = Path(run_dir)
    path = run_dir / INTERNAL_DIRNAME / "run_key"
    legacy = run_dir / "_work" / "run_key"
    if not path.exists() and legacy.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(legacy, path)
    if path.exists():
        key = path.read_text().strip()
        if key:
            return key
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(16)
    _atomic_write_text(path, key + "\n")
    os.chmod(path, 0o600)
    return key


def render_report(
    kind: str,
    *,
    site_id: str | None = None,
    data_dir: str | Path | None = None,
    out_dir: str | Path = "reports",
    run: str | None = None,
    formats: str | Sequence[str] = ("html",),
    min_cell: int = privacy.DEFAULT_MIN_CELL,
    run_key: str | None = None,
    as_of: str | None = None,
    shared_dir: str | Path | None = None,
    renderer: str = "auto",
    kernel_name: str | None = None,
    timeout: float | None = 1200,
    scan: bool = True,
    plan: str | Path | None = None,
    wait: float = 0.0,
) -> ReportResult:
    """Execute and render one report into ``<out_dir>/<run>/``: the executed notebook under
    ``internal/``, the report under ``publish/`` only once every output file passed the output
    scan (:func:`scan_for_publication`).

    Parameters
    ----------
    kind:
        ``"site"`` (needs `site_id`) or ``"collaborative"``.
    data_dir:
        Store or extract directory; None: the default synthetic collaborative.
    run:
        Name of the run folder (default ``"latest"``; a plain name, :func:`confined_path`).
        Reports of one run share pseudonyms.
    run_key:
        Pseudonym key; None: the run's secret random key (``internal/run_key``).
    scan:
        Scan every output before publishing; what the scan finds goes to ``result.findings``
        (``result.ok`` is False) and nothing is published. ``scan=False`` (tests only) publishes
        after the offline check alone.
    plan:
        Analysis plan YAML (:func:`plan_parameter`), given to the notebook as ``plan``.
    wait:
        Seconds to wait for another command holding the run folder (:func:`run_lock`).
    """
    t0 = time.perf_counter()
    name = report_name(kind, site_id)
    fmts = parse_formats(formats)
    as_of = parse_as_of(as_of)
    min_cell = parse_min_cell(int(min_cell))
    used = resolve_renderer(renderer)
    plan_path, _ = plan_parameter(plan)
    if kind == "site":  # refused at once, before the data are loaded
        known = data_site_ids(data_dir)
        if str(site_id) not in known:
            raise ValueError(f"site_id {site_id!r} is not in the data ({len(known)} sites: "
                             f"{', '.join(known[:5])}{', ...' if len(known) > 5 else ''})")
    run_dir = confined_path(out_dir, run or "latest")
    forbidden = forbidden_strings_for(data_dir) if scan else {}
    with run_lock(run_dir, wait=wait, command=f"ipso report {kind}"):
        key = run_key or run_key_for(run_dir)
        work = confined_path(run_dir, INTERNAL_DIRNAME, WORK_DIRNAME, name)
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        executed = work / f"{name}.ipynb"
        params = {
            "site_id": site_id,
            "data_dir": str(Path(data_dir).resolve()) if data_dir is not None else None,
            "as_of": as_of,
            "min_cell": int(min_cell),
            "run_key": key,
            "shared_dir": str(Path(shared_dir).resolve()) if shared_dir is not None else None,
            "renderer": renderer_label(used),
            "formats": list(fmts),
            "plan": plan_path,
        }
        result = ReportResult(kind, site_id, name, run_dir, used, executed_notebook=executed,
                              renderer_version=renderer_version(used))

        def gate(files: list[Path]) -> list[privacy.Finding]:
            return scan_for_publication(
                files, forbidden_strings=forbidden_for_report(forbidden, site_id, key),
                min_cell=min_cell, executed_notebook=executed)

        try:
            execute_notebook(NOTEBOOKS[kind], params, executed, cwd=work, kernel_name=kernel_name,
                             timeout=timeout)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", RenderWarning)
                staged = stage_outputs(executed, work / "stage", formats=fmts, renderer=used, name=name)
            result.warnings += [str(w.message) for w in caught if issubclass(w.category, RenderWarning)]
            publish_dir = confined_path(run_dir, PUBLISH_DIRNAME)
            finals = publish([(src, confined_path(publish_dir, f"{name}{SUFFIX[fmt]}"))
                              for fmt, src in staged.items()], scan=gate if scan else None)
            result.outputs = dict(zip(staged, finals))
            shutil.rmtree(work / "stage", ignore_errors=True)
        except UnsafeOutputError as exc:
            result.findings = list(getattr(exc, "findings", []) or [])
            result.error = f"not published: {exc}"
            if result.findings:
                import json

                (work / "scan.json").write_text(json.dumps([f.__dict__ for f in result.findings], indent=1))
        except Exception as exc:  # noqa: BLE001 - reported in the result, never half-published
            result.error = f"{type(exc).__name__}: {str(exc).strip()[-2000:]}"
    result.seconds = time.perf_counter() - t0
    return result


def run_report_command(kind: str, *, site_id: str | None, data: Path | None, out: Path, run: str,
                       formats: str, min_cell: int, as_of: str | None, json_out: bool,
                       plan: Path | None = None, wait: float = 0.0) -> ReportResult:
    """CLI body of ``ipso report site SITE_ID`` / ``ipso report collaborative``.

    Exit code 0: rendered, scanned clean and published under ``<out>/<run>/publish/``; 1:
    rendering failed or the scan refused the report (nothing published; the findings are
    listed); 2: bad arguments (including a bad ``--plan`` or ``--run``, or a run folder in use).
    """
    import typer

    from .console import console, print_json

    def refuse(exc: Exception) -> typer.Exit:
        if json_out:
            print_json({"error": str(exc)})
        console.print(f"[red]ipso report: {exc}[/red]")
        return typer.Exit(2)

    # every argument is checked before any work (the data are loaded only for a valid request)
    try:
        fmts = parse_formats(formats)
        as_of = parse_as_of(as_of)
        parse_min_cell(min_cell)
        confined_path(out, run)
        if data is not None and not Path(data).is_dir():
            raise ValueError(f"--data {data}: no such directory")
        if kind == "site":
            known = data_site_ids(data)
            if site_id not in known:
                raise ValueError(f"unknown site id {site_id!r}: the data has {len(known)} sites "
                                 f"({', '.join(known[:5])}{', ...' if len(known) > 5 else ''})")
        plan_parameter(plan)
        resolve_renderer("auto")
    except ValueError as exc:
        raise refuse(exc) from exc
    if not json_out:
        console.print(f"Rendering the {kind} report{' for ' + site_id if site_id else ''} ...")
    try:
        with terminate_as_exit():
            res = render_report(kind, site_id=site_id, data_dir=data, out_dir=out, run=run,
                                formats=fmts, min_cell=min_cell, as_of=as_of, plan=plan, wait=wait)
    except ValueError as exc:
        raise refuse(exc) from exc
    if json_out:
        print_json(res.to_dict())
    else:
        for fmt, path in res.outputs.items():
            console.print(f"  {fmt}: {path}")
        for w in res.warnings:
            console.print(f"  [yellow]warning:[/yellow] {w}")
        if res.error:
            console.print(f"  [red]failed:[/red] {res.error}")
            console.print(f"  executed notebook (for diagnosis): {res.executed_notebook}")
        for f in res.findings:
            console.print(f"  [red]unsafe output:[/red] {Path(f.path).name}: {f.kind}: {f.detail}")
        if res.ok:
            console.print(f"  done in {res.seconds:.1f} s with {renderer_label(res.renderer)}; "
                          "output scan clean.")
    if not res.ok:
        raise typer.Exit(1)
    return res

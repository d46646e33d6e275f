"""Batch rendering of every hospital's report: parallel, incremental, fault-isolated, distributable.

:func:`render_batch` is the engine behind ``ipso render``. A run folder has two halves; only
``publish/`` is meant to leave the analysis server::

    <out>/publish/index.html            the public index: every published report, its status
    <out>/publish/manifest.json         inputs hash, parameters, versions, git commit, per-report status
    <out>/publish/collaborative.html    the collaborative report (and .pdf with --formats html,pdf)
    <out>/publish/sites/<site_id>.html  one report per hospital
    <out>/internal/index.html           the analyst's index: also errors, executed notebooks of failures
    <out>/internal/manifest.json        the full record (paths, workers, errors): the incremental state
    <out>/internal/run_key              the pseudonym key
    <out>/internal/shared/              fits computed once per run (analysis.reporting.compute_shared),
                                        site slices, the results store; checksummed (.ipso-shared.json)
    <out>/internal/work/<report_id>/    per-report working folder: executed notebook, figures, scan.json
    <out>/internal/quarto/, logs/, scan/   Quarto staging, worker and kernel logs, scan inputs
    <out>/.ipso-lock                    held while a run works on the folder

Nothing under ``publish/`` holds a key, an identifier, patient-level data or an unsuppressed
count: every file is scanned before it appears there (:func:`analysis.render.scan_for_publication`
through :func:`analysis.render.publish`); a report the scan refuses is not published and is listed
as failed with the kind of problem (never the value). The public index and manifest link and name
nothing under ``internal/``. Every path built from data (site ids, report ids, formats) goes
through :func:`analysis.render.confined_path`.

How it is fast:

* Workers (``jobs``, default: the machine's cores) each keep one Jupyter kernel warm
  (:class:`analysis.kernelpool.WarmKernel`): start-up and the heavy imports are paid once per
  worker, the namespace is wiped between reports.
* Incremental: each report has a key, a hash of its inputs (the hospital's slice of every input
  table, or the whole data for the collaborative report; the shared artefacts; the notebook; the
  package code; library versions; parameters). A report whose key and outputs are unchanged is not
  re-rendered, and when nothing needs rendering no kernel or worker is started at all.
* The render step runs in the workers too, in parallel: with nbconvert each report is exported
  right after it is executed; with Quarto a worker is handed a few site reports at a time (fewer as
  the run nears its end), executes them, then renders them with ONE ``quarto render`` call (Deno
  start-up and the theme compilation are paid once per call, not per report). A Quarto failure is
  retried one report at a time (:func:`analysis.render.quarto_render_items`), so one bad report
  never stops the others, and each report's time includes its share of the Quarto step.

How it is safe:

* Every report runs in its own working folder; a failing report (error, timeout, dead kernel,
  Quarto error, dead worker or a refused scan) is recorded with its error and its executed
  notebook is kept (linked from the internal index only), the others finish. When a worker dies
  with several reports in hand, those it had not finished are run again one by one, so only the
  report that kills a worker fails.
* Publishing is atomic and goes through one function for both renderers
  (:func:`analysis.render.publish`): a report is written to a temporary sibling and
  ``os.replace``-d into place, and the manifests are rewritten (atomically) after every report.
* Shared fits are computed into a temporary folder, checksummed and renamed into place; before
  they are used, every file is checked against its checksum, and anything missing, partial or
  corrupt is recomputed, never trusted.
* One run at a time: a second run on the same folder exits with status 2 naming the first (or
  waits ``--wait`` seconds). The lock is an ``flock``, released even when a run is killed.
* The extract is validated once, before any work: a fatal data problem ends the run with status 2
  and one message naming the file and column.
* Kernels are stopped and their connection files removed on every way out (normal, error,
  SIGTERM, Ctrl-C); a killed worker's kernel exits by itself and its files are swept.
* A run killed at any moment (kill -9) leaves the previous complete files or none; the next plain
  run removes the temporary files and repairs the folder.

Executors: ``local`` (worker processes on this machine) or ``dask`` (a ``dask.distributed``
cluster; ``scheduler`` address or a LocalCluster; paths must be visible to every worker).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import html
import importlib
import inspect
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from . import render as _render
from .validate import file_sha256 as _file_sha

FORMATS = _render.FORMATS
EXECUTORS = ("local", "dask")
COLLABORATIVE_ID = "collaborative"
MANIFEST_FILE = "manifest.json"
INDEX_FILE = "index.html"
PUBLISH_DIRNAME = _render.PUBLISH_DIRNAME
INTERNAL_DIRNAME = _render.INTERNAL_DIRNAME
SHARED_DIRNAME = "shared"
WORK_DIRNAME = _render.WORK_DIRNAME
SHARED_STAMP = ".ipso-shared.json"
TMP_MARK = _render.TMP_MARK
#: Site reports a worker executes before one Quarto call renders them all (fewer near the end of
#: a run; nbconvert has no per-call cost: one report at a time).
QUARTO_CHUNK = 8
#: Test hook: "<raise|exit|hang>-<stage>:<target>" fails at that stage: stage "after-temp"
#: (a report's temporary file is written, before it is published), "execute" (before a report's
#: notebook runs), "export" (after it ran, before it is rendered); target a report id. Stages of
#: the run (target "run"): "shared" (shared fits written, before they are checksummed and moved
#: into place), "swap" (between the two renames that put them in place), "manifest" (temporary
#: manifest written, before it replaces the old one), "index" (the same for the public index).
FAULT_ENV = "IPSO_BATCH_FAULT"
#: With FAULT_ENV: a file a "hang" fault creates when it is reached (tests wait for it).
FAULT_REACHED_ENV = "IPSO_BATCH_FAULT_REACHED"

#: Libraries whose versions enter every report key and the manifest.
VERSIONED_PACKAGES = (
    "numpy", "pandas", "scipy", "statsmodels", "lifelines", "matplotlib", "seaborn",
    "nbconvert", "nbclient", "nbformat", "papermill", "ipykernel", "pyarrow",
)
#: Parameters that name locations or the run, not content: kept out of report keys (the plan's
#: content enters them as ``plan_hash``).
_LOCATION_PARAMETERS = ("data_dir", "shared_dir", "run_key", "plan")

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_NOTEBOOK_DIR = PACKAGE_DIR.parent / "notebooks"


# =============================================================================================
# Results
@dataclass
class ReportResult:
    """What happened to one report in a run.

    status: "ok" (rendered now), "up-to-date" (inputs unchanged, not re-rendered), "failed" or
    "skipped" (stale, left alone by --retry-failed).
    seconds: wall time in the worker (execute + export), s; execute_seconds / export_seconds split it.
    outputs: format -> path of the published file, relative to ``publish/``.
    error: the full error (internal: it may quote data). reason: what the public index and
    manifest say about a failure (never a value from the data).
    executed_notebook: the executed (or partly executed, on failure) notebook, relative to the
    run folder (under ``internal/``).
    """

    report_id: str
    kind: str
    site_id: str | None
    status: str
    key: str
    outputs: dict[str, str] = field(default_factory=dict)
    seconds: float | None = None
    execute_seconds: float | None = None
    export_seconds: float | None = None
    error: str | None = None
    executed_notebook: str | None = None
    rendered_at: str | None = None
    worker: str | None = None
    reason: str | None = None


@dataclass
class BatchResult:
    """Outcome of one ``ipso render`` run (see the manifests for the full record).

    index_path / manifest_path: the public ones (``publish/``); internal_index_path /
    internal_manifest_path: the analyst's (``internal/``)."""

    out_dir: Path
    index_path: Path
    manifest_path: Path
    reports: list[ReportResult]
    wall_seconds: float
    inputs_key: str
    shared_status: str
    renderer: str
    executor: str
    jobs: int
    internal_index_path: Path | None = None
    internal_manifest_path: Path | None = None

    @property
    def publish_dir(self) -> Path:
        return self.out_dir / PUBLISH_DIRNAME

    @property
    def failed(self) -> list[ReportResult]:
        return [r for r in self.reports if r.status == "failed"]

    @property
    def rendered(self) -> list[ReportResult]:
        return [r for r in self.reports if r.status == "ok"]

    @property
    def up_to_date(self) -> list[ReportResult]:
        return [r for r in self.reports if r.status == "up-to-date"]

    @property
    def ok(self) -> bool:
        """True when no selected report failed."""
        return not self.failed

    def summary(self):
        """One row per report of this run: id, kind, status, seconds, error, outputs."""
        import pandas as pd

        rows = [
            {
                "report_id": r.report_id, "kind": r.kind, "site_id": r.site_id, "status": r.status,
                "seconds": r.seconds, "error": r.error, "outputs": ", ".join(r.outputs.values()),
            }
            for r in self.reports
        ]
        return pd.DataFrame(rows, columns=["report_id", "kind", "site_id", "status", "seconds", "error", "outputs"])

    def to_dict(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir),
            "publish_dir": str(self.publish_dir),
            "index": str(self.index_path),
            "manifest": str(self.manifest_path),
            "internal_index": str(self.internal_index_path) if self.internal_index_path else None,
            "internal_manifest": str(self.internal_manifest_path) if self.internal_manifest_path else None,
            "inputs_key": self.inputs_key,
            "renderer": self.renderer,
            "executor": self.executor,
            "jobs": self.jobs,
            "shared": self.shared_status,
            "wall_seconds": round(self.wall_seconds, 3),
            "counts": {
                "selected": len(self.reports),
                "rendered": len(self.rendered),
                "up_to_date": len(self.up_to_date),
                "failed": len(self.failed),
            },
            "failed": [{"report_id": r.report_id, "error": r.error, "reason": r.reason,
                        "executed_notebook": r.executed_notebook} for r in self.failed],
            "reports": [asdict(r) for r in self.reports],
        }


# =============================================================================================
# Fingerprints
@dataclass(frozen=True)
class DataFingerprint:
    """Hashes of a data directory: whole (`total`) and per hospital (`per_site`)."""

    total: str
    per_site: dict[str, str]
    site_ids: list[str]
    files: list[str]


def _sha(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\0")
    return h.hexdigest()


def _json_sha(obj: Any) -> str:
    return _sha(json.dumps(obj, sort_keys=True, default=str))


def _table_path(data_dir: Path, name: str) -> Path | None:
    for ext in (".parquet", ".csv"):
        p = data_dir / f"{name}{ext}"
        if p.is_file():
            return p
    return None


def data_fingerprint(data_dir: str | os.PathLike) -> DataFingerprint:
    """Hash every input table as a whole and per hospital (rows of that site_id).

    Reads ``episodes``, ``sites`` and ``site_months`` as ``.parquet`` or ``.csv`` (extract or store
    layout). The hospital list comes from ``sites`` (else from ``episodes``). Row order within a
    hospital counts; the hash of a hospital does not change when another hospital's rows change.
    """
    import numpy as np
    import pandas as pd

    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise ValueError(f"data directory {data_dir} does not exist")
    per_site_parts: dict[str, list[str]] = {}
    total_parts: list[str] = []
    files: list[str] = []
    site_ids: list[str] | None = None
    found = False
    for name in ("sites", "episodes", "site_months"):
        path = _table_path(data_dir, name)
        if path is None:
            continue
        found = True
        files.append(path.name)
        total_parts.append(name + ":" + _file_sha(path))
        if path.suffix == ".parquet":
            df = pd.read_parquet(path)
        else:
            df = pd.read_csv(path, dtype=str, keep_default_na=False)
        if "site_id" not in df.columns:
            raise ValueError(f"{path}: no site_id column")
        sid = df["site_id"].astype(str)
        if name == "sites" or (name == "episodes" and site_ids is None):
            site_ids = list(dict.fromkeys(sid.tolist()))
        if len(df) == 0:
            continue
        row_hash = pd.util.hash_pandas_object(df, index=False).to_numpy(dtype=np.uint64)
        cols = ",".join(map(str, df.columns))
        for site, idx in sid.groupby(sid, sort=False).indices.items():
            per_site_parts.setdefault(site, []).append(
                f"{name}|{cols}|{_sha(row_hash[np.sort(idx)].tobytes())}"
            )
    if not found:
        raise ValueError(
            f"{data_dir}: no input tables (expected episodes.parquet|csv, sites.csv, site_months.csv)"
        )
    site_ids = site_ids or []
    per_site = {s: _sha(*per_site_parts.get(s, [])) for s in site_ids}
    return DataFingerprint(total=_sha(*total_parts), per_site=per_site, site_ids=site_ids, files=files)


def code_fingerprint() -> str:
    """Hash of the analysis package source (every .py under analysis/)."""
    parts = []
    for p in sorted(PACKAGE_DIR.rglob("*.py")):
        if "__pycache__" in p.parts:
            continue
        parts.append(str(p.relative_to(PACKAGE_DIR)) + ":" + _file_sha(p))
    return _sha(*parts)


def library_versions() -> dict[str, str]:
    """Versions of Python, this package and the libraries that shape a report."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0], "ipso-analysis": __version__}
    for pkg in VERSIONED_PACKAGES:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "absent"
    return out


def git_state(path: Path = PACKAGE_DIR) -> dict[str, Any]:
    """Commit and dirty flag of the git checkout holding `path` (None outside a checkout)."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
        if commit.returncode != 0:
            return {"commit": None, "dirty": None}
        dirty = subprocess.run(
            ["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no", "--", "."],
            capture_output=True, text=True, timeout=5, check=False,
        )
        return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


# =============================================================================================
# Renderer helpers (analysis.render's building blocks)
def pseudonym_key(out_dir: Path) -> str:
    """The run folder's secret pseudonym key (analysis.render.run_key_for): created once, so a
    hospital keeps its pseudonym in every report of the folder, re-rendered or not."""
    return _render.run_key_for(out_dir)


def find_quarto() -> str | None:
    """Path of the quarto CLI, or None."""
    return _render.find_quarto()


def _notebook_parameter_names(path: Path) -> set[str] | None:
    """Names declared in the notebook's "parameters" cell (None when it has none). Plain JSON
    (no nbformat: a run with nothing to render must stay fast)."""
    nb = json.loads(Path(path).read_text(encoding="utf-8"))
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            names = set()
            source = cell.get("source", "")
            for line in ("".join(source) if isinstance(source, list) else source).splitlines():
                head = line.split("#", 1)[0]
                if "=" in head and not head.startswith((" ", "\t")):
                    name = head.split("=", 1)[0].split(":", 1)[0].strip()
                    if name.isidentifier():
                        names.add(name)
            return names
    return None


def parameterize(notebook_path: Path, parameters: Mapping[str, Any]):
    """Read the notebook and inject `parameters` (analysis.render.parameterize)."""
    nb = _render.parameterize(notebook_path, dict(parameters))
    for cell in nb.cells:  # papermill gives the injected cell a random id: outputs must not vary
        if "injected-parameters" in cell.get("metadata", {}).get("tags", []):
            cell["id"] = "injected-parameters"
    return nb


def export_html(nb, out_path: Path, *, renderer_label: str = "nbconvert") -> None:
    """Code-hidden, self-contained HTML of an executed notebook (analysis.render.export_html)."""
    _render.export_html(nb, out_path, renderer_label=renderer_label)


def export_pdf(nb, out_path: Path) -> None:
    """Code-hidden PDF through nbconvert's LaTeX route (needs xelatex)."""
    from nbconvert import PDFExporter

    exporter = PDFExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    data, _ = exporter.from_notebook_node(nb)
    Path(out_path).write_bytes(data)


# =============================================================================================
# Atomic files
def atomic_write_bytes(path: Path, data: bytes, *,
                       before_replace: Callable[[Path], None] | None = None) -> None:
    """Write `data` to a temporary sibling and os.replace it onto `path` (`before_replace(tmp)`
    runs in between: a fault-injection point)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}-{threading.get_ident()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if before_replace is not None:
            before_replace(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: Path, text: str, *,
                      before_replace: Callable[[Path], None] | None = None) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), before_replace=before_replace)


def _remove_stale_temps(out_dir: Path) -> int:
    """Delete temporary files and folders a killed run left behind (never a finished report):
    hidden ``.<name>.tmp-*`` siblings anywhere in the run folder (published reports, manifests,
    the key) and half-written shared folders. Called with the run's lock held."""
    n = 0
    for root in (out_dir / PUBLISH_DIRNAME, out_dir / INTERNAL_DIRNAME):
        if not root.is_dir():
            continue
        for p in list(root.rglob(f".*{TMP_MARK}*")) + list(root.glob(".shared.*")):
            if not p.exists():
                continue
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            n += 1
    return n


def _fault(spec: str | None, target: str, stage: str) -> None:
    """Fault injection for tests (:data:`FAULT_ENV`)."""
    spec = spec or ""
    if not spec or ":" not in spec:
        return
    mode, wanted = spec.split(":", 1)
    if wanted != target or not mode.endswith("-" + stage):
        return
    if mode.startswith("exit"):
        os._exit(75)  # the worker dies abruptly, like a kill
    if mode.startswith("hang"):
        reached = os.environ.get(FAULT_REACHED_ENV)
        if reached:
            Path(reached).write_text(f"{stage}:{target}\n")
        time.sleep(3600)  # the test kills the whole run meanwhile
    raise RuntimeError(f"injected fault ({mode}) for {target}")


def _run_fault(stage: str) -> None:
    _fault(os.environ.get(FAULT_ENV), "run", stage)


# =============================================================================================
# Worker side: one report on one warm kernel
_KERNELS: dict[int, Any] = {}
_KERNELS_LOCK = threading.Lock()


def _thread_kernel(kernel_options: Mapping[str, Any]):
    """The calling thread's warm kernel (dask workers: one per worker thread)."""
    from .kernelpool import WarmKernel

    ident = threading.get_ident()
    with _KERNELS_LOCK:
        k = _KERNELS.get(ident)
        if k is None:
            k = WarmKernel(**kernel_options)
            _KERNELS[ident] = k
    return k


def shutdown_kernels() -> int:
    """Stop every warm kernel this process holds (run on dask workers at the end)."""
    with _KERNELS_LOCK:
        kernels = list(_KERNELS.values())
        _KERNELS.clear()
    for k in kernels:
        k.shutdown()
    return len(kernels)


def render_tasks(tasks: Sequence[Mapping[str, Any]], kernel=None,
                 emit: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Execute a chunk of reports one after another on one warm kernel, render them and publish
    each one's outputs atomically (:func:`analysis.render.publish`).

    nbconvert: each report is exported and published right after it is executed. Quarto: the
    chunk's executed notebooks are rendered by one Quarto call (a report Quarto fails on is
    retried alone, so it fails alone). Tasks are plain dicts (they cross process and cluster
    boundaries); so are results, one per task, passed to `emit` as soon as each is final and
    returned in that order. Never raises for a report failure: the result carries status "failed"
    and the error.
    """
    results: list[dict[str, Any]] = []

    def final(res: dict[str, Any]) -> None:
        res["seconds"] = round((res.get("execute_seconds") or 0) + (res.get("export_seconds") or 0), 3)
        results.append(res)
        if emit is not None:
            emit(res)

    executed: list[tuple[Mapping[str, Any], dict[str, Any], Path]] = []
    for task in tasks:
        try:
            task = _confine_task(task)
        except ValueError as exc:  # a hostile report id or output name: refused, nothing written
            final({"report_id": task.get("report_id"), "status": "failed", "outputs": {},
                   "error": f"refused: {exc}", "executed_notebook": None,
                   "execute_seconds": None, "export_seconds": None, "worker": None})
            continue
        res, nb = _execute_task(task, kernel)
        if nb is None:
            final(res)
        elif task["renderer"] == "quarto":
            executed.append((task, res, Path(task["out_dir"]) / res["executed_notebook"]))
        else:
            t1 = time.perf_counter()
            _guarded(res, lambda t=task, r=res, n=nb: _export_nbconvert(t, r, n))
            res["export_seconds"] = round(time.perf_counter() - t1, 3)
            final(res)
    if executed:
        for res in _render_quarto(executed):
            final(res)
    return results


def _confine_task(task: Mapping[str, Any]) -> dict[str, Any]:
    """The task with every path it names rebuilt inside its run folder
    (:func:`analysis.render.confined_path`): the work folder from the report id, the published
    files from their names. Raises UnsafePathError (a ValueError) for anything that would leave
    the folder."""
    out_dir = Path(task["out_dir"])
    rid = str(task["report_id"])
    work = _render.confined_path(out_dir, INTERNAL_DIRNAME, WORK_DIRNAME, rid)
    publish_dir = _render.confined_path(out_dir, PUBLISH_DIRNAME)
    for rel in task["outputs"].values():
        _render.confined_path(publish_dir, *Path(rel).parts)
    return dict(task, work_dir=str(work), publish_dir=str(publish_dir),
                quarto_dir=str(_render.confined_path(out_dir, INTERNAL_DIRNAME, "quarto")))


def render_task(task: Mapping[str, Any], kernel=None) -> dict[str, Any]:
    """Execute, render and publish one report (:func:`render_tasks` of a single task)."""
    return render_tasks([task], kernel)[0]


def _guarded(res: dict[str, Any], step: Callable[[], None]) -> None:
    """Run one step of a report; an exception fails that report (never the batch). The step
    sets the status itself."""
    try:
        step()
    except Exception as exc:  # noqa: BLE001 - a report's failure is recorded, never raised
        res.update(status="failed", outputs={}, error=f"{type(exc).__name__}: {exc}")


def _execute_task(task: Mapping[str, Any], kernel) -> tuple[dict[str, Any], Any]:
    """Execute one report notebook in its own work folder: (result, executed notebook or None)."""
    import nbformat

    from .kernelpool import ReportExecutionError

    t0 = time.perf_counter()
    rid = task["report_id"]
    work = Path(task["work_dir"])
    executed = work / f"{rid}.ipynb"
    res: dict[str, Any] = {
        "report_id": rid, "status": "failed", "outputs": {}, "error": None,
        "executed_notebook": str(executed.relative_to(Path(task["out_dir"]))),
        "worker": f"{os.uname().nodename}:{os.getpid()}",
        "execute_seconds": None, "export_seconds": None,
    }
    try:
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        _fault(task.get("fault"), rid, "execute")
        if kernel is None:
            kernel = _thread_kernel(task.get("kernel_options", {}))
        nb = parameterize(Path(task["notebook"]), task["parameters"])
        nb.metadata["ipso"] = {"report_id": rid, "key": task["key"]}
        try:
            nb = kernel.execute(nb, work)
        except ReportExecutionError as exc:
            if exc.notebook is not None:
                nbformat.write(exc.notebook, executed)
            res["error"] = str(exc)
            return res, None
        nb = _render.sanitize_executed(nb)  # no wall-clock timestamps in kept notebooks
        nbformat.write(nb, executed)
        _fault(task.get("fault"), rid, "export")
        res["status"] = "executed"
        return res, nb
    except Exception as exc:  # noqa: BLE001 - a report's failure must never escape into the batch
        res["error"] = f"{type(exc).__name__}: {exc}"
        return res, None
    finally:
        res["execute_seconds"] = round(time.perf_counter() - t0, 3)


def _publish_hook(task: Mapping[str, Any]) -> Callable[[Path, Path], None]:
    """Fault-injection point of :func:`analysis.render.publish` (tests; FAULT_ENV)."""
    return lambda tmp, final: _fault(task.get("fault"), task["report_id"], "after-temp")


_FORBIDDEN_CACHE: dict[tuple[str, int], dict[str, Any]] = {}


def _forbidden(path: str) -> dict[str, Any]:
    """The run's forbidden strings (written once per data by the parent), cached per worker."""
    key = (path, os.stat(path).st_mtime_ns)
    if key not in _FORBIDDEN_CACHE:
        _FORBIDDEN_CACHE.clear()
        _FORBIDDEN_CACHE[key] = json.loads(Path(path).read_text(encoding="utf-8"))
    return _FORBIDDEN_CACHE[key]


def _scan_gate(task: Mapping[str, Any]) -> Callable[[list[Path]], list[Any]] | None:
    """The output scan a report's files pass before :func:`analysis.render.publish` lets them
    out (none when the task carries no scan settings: custom test pipelines)."""
    spec = task.get("scan")
    if not spec:
        return None
    strings = _render.forbidden_for_report(_forbidden(spec["forbidden"]), spec.get("site_id"),
                                           spec.get("run_key"))
    executed = Path(task["work_dir"]) / f"{task['report_id']}.ipynb"
    return lambda files: _render.scan_for_publication(
        files, forbidden_strings=strings, min_cell=int(spec.get("min_cell", 11)),
        executed_notebook=executed)


def _publish_report(task: Mapping[str, Any], res: dict[str, Any], staged: Mapping[str, Path]) -> None:
    """Publish every format of one report at once through the scan gate; a refused report is
    failed with the scan's verdict (its findings, values masked, in ``work/<id>/scan.json``)."""
    publish_dir = Path(task["publish_dir"])
    pairs = [(Path(staged[fmt]), _render.confined_path(publish_dir, *Path(rel).parts))
             for fmt, rel in task["outputs"].items()]
    try:
        _render.publish(pairs, before_replace=_publish_hook(task), scan=_scan_gate(task))
    except _render.UnsafeOutputError as exc:
        findings = list(getattr(exc, "findings", None) or [])
        if findings:
            (Path(task["work_dir"]) / "scan.json").write_text(
                json.dumps([asdict(f) for f in findings], indent=1), encoding="utf-8")
        res.update(status="failed", outputs={}, error=f"not published: {exc}",
                   reason=f"not published: {exc}")
        return
    res["outputs"] = dict(task["outputs"])
    res["status"] = "ok"


def _export_nbconvert(task: Mapping[str, Any], res: dict[str, Any], nb) -> None:
    """nbconvert: export each format into the report's work folder, then publish them."""
    staged = {}
    for fmt, rel in task["outputs"].items():
        path = _render.confined_path(task["work_dir"], "stage", Path(rel).name)
        path.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "html":
            export_html(nb, path, renderer_label=task["parameters"].get("renderer", "nbconvert"))
        else:
            export_pdf(nb, path)
        staged[fmt] = path
    _publish_report(task, res, staged)
    if res["status"] == "ok":
        shutil.rmtree(Path(task["work_dir"]) / "stage", ignore_errors=True)


def _render_quarto(executed: Sequence[tuple[Mapping[str, Any], dict[str, Any], Path]]) -> list[dict[str, Any]]:
    """Quarto: render a chunk's executed notebooks with one call (staged under the published
    names, so format links match), then publish each report's files."""
    first = executed[0][0]
    fmts = list(first["outputs"])
    stems = {task["report_id"]: str(Path(task["outputs"][fmts[0]]).with_suffix(""))
             for task, _, _ in executed}
    stage = _render.confined_path(first["quarto_dir"], first["report_id"])
    items = [_render.QuartoItem(nb_path, stems[task["report_id"]]) for task, _, nb_path in executed]
    try:
        rendered = _render.quarto_render_items(items, stage, fmts)
    except Exception as exc:  # noqa: BLE001 - staging problems fail the chunk's reports, not the run
        rendered = {it.stem: _render.QuartoResult(it.stem, error=f"{type(exc).__name__}: {exc}")
                    for it in items}
    out = []
    for task, res, _ in executed:
        q = rendered[stems[task["report_id"]]]
        res["export_seconds"] = round(q.seconds, 3)
        if q.error:
            res.update(status="failed", error=f"Quarto: {q.error}")
        else:
            _guarded(res, lambda task=task, res=res, q=q: _publish_report(task, res, q.files))
        out.append(res)
    if all(r["status"] == "ok" for r in out):
        shutil.rmtree(stage, ignore_errors=True)  # kept for diagnosis when something failed
    return out


#: What a local worker sends after the last result of a chunk.
CHUNK_DONE = "chunk-done"


def _local_worker_main() -> None:
    """Entry point of a local worker process (started by run_local with ``python -c``).

    Reads pickled chunks (lists of tasks) from the pipe on fd IPSO_WORKER_IN and answers on fd
    IPSO_WORKER_OUT with one result per report as soon as it is final, then ``CHUNK_DONE``, until
    it receives None or the parent goes away.
    """
    import signal
    from multiprocessing.connection import Connection

    from .kernelpool import WarmKernel


    # SIGTERM (the parent stopping the run) ends the worker through its finally: the kernel is
    # shut down and its connection file and sockets removed
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    rx = Connection(int(os.environ["IPSO_WORKER_IN"]), writable=False)
    tx = Connection(int(os.environ["IPSO_WORKER_OUT"]), readable=False)
    kernel = WarmKernel(**json.loads(os.environ.get("IPSO_WORKER_KERNEL", "{}")))
    try:
        warm = threading.Thread(target=_warm_exporter, daemon=True)
        warm.start()  # load nbconvert's templates while the kernel boots
        try:
            kernel.start()
        except Exception:  # noqa: BLE001 - reported per report by the first execute
            kernel.shutdown()
        warm.join()
        while True:
            try:
                chunk = rx.recv()
            except EOFError:
                break
            if chunk is None:
                break
            render_tasks(chunk, kernel=kernel, emit=tx.send)
            tx.send(CHUNK_DONE)
    finally:
        kernel.shutdown()


def _warm_exporter() -> None:
    """Export an empty notebook once so the first real export does not pay nbconvert's set-up."""
    import tempfile

    import nbformat

    try:
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("warm-up")])
        with tempfile.TemporaryDirectory() as tmp:
            export_html(nb, Path(tmp) / "warm.html")
        import papermill.parameterize  # noqa: F401
    except Exception:  # noqa: BLE001 - warm-up only
        pass


class _LocalWorker:
    """A worker process with one warm kernel, talked to over two pipes.

    Started as a fresh interpreter (not multiprocessing's spawn), so the caller's __main__ is never
    re-imported: render_batch works from scripts without a main guard, notebooks and the CLI.
    """

    def __init__(self, kernel_options: Mapping[str, Any], log_path: Path | None):
        from multiprocessing.connection import Connection

        p2c_r, p2c_w = os.pipe()
        c2p_r, c2p_w = os.pipe()
        env = dict(os.environ)
        env.update(IPSO_WORKER_IN=str(p2c_r), IPSO_WORKER_OUT=str(c2p_w),
                   IPSO_WORKER_KERNEL=json.dumps(dict(kernel_options)))
        self.log = None
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            self.log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from analysis.batch import _local_worker_main; _local_worker_main()"],
            pass_fds=(p2c_r, c2p_w), env=env, stdin=subprocess.DEVNULL,
            stdout=self.log or subprocess.DEVNULL, stderr=self.log or None,
        )
        os.close(p2c_r)
        os.close(c2p_w)
        self.tx = Connection(p2c_w, readable=False)
        self.rx = Connection(c2p_r, writable=False)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def render(self, chunk: Sequence[Mapping[str, Any]], on_result: Callable[[dict[str, Any]], None]) -> bool:
        """Send a chunk of tasks; pass each result to `on_result` as it arrives. False when the
        worker died (or its pipe broke) before finishing the chunk."""
        try:
            self.tx.send([dict(t) for t in chunk])
            while True:
                if self.rx.poll(0.25) or not self.alive:
                    if not self.rx.poll(0):
                        return False  # dead, and nothing left in the pipe
                    msg = self.rx.recv()
                    if msg == CHUNK_DONE:
                        return True
                    on_result(msg)
        except (EOFError, OSError):
            return False

    def close(self, timeout: float = 30, terminate: bool = False) -> None:
        """Stop the worker: ask it to finish (None on its pipe), or with `terminate` send SIGTERM
        (it shuts its kernel down and exits); kill it if it has not gone after `timeout` s.
        Whatever a killed worker left of its kernel (sockets, connection file) is removed."""
        try:
            if terminate and self.alive:
                self.proc.terminate()
            else:
                self.tx.send(None)
        except OSError:
            pass
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        from .kernel_dirs import sweep_kernel_dirs

        sweep_kernel_dirs(owner=self.proc.pid)
        for c in (self.tx, self.rx):
            c.close()
        if self.log is not None:
            self.log.close()


# =============================================================================================
# Executors
def _failed(task: Mapping[str, Any], error: str) -> dict[str, Any]:
    publish_dir = Path(task.get("publish_dir") or task["out_dir"])
    for rel in task["outputs"].values():
        _temp_sibling_glob_cleanup(publish_dir / rel)
    return {
        "report_id": task["report_id"], "status": "failed", "outputs": {}, "error": error,
        "executed_notebook": None, "seconds": None, "execute_seconds": None,
        "export_seconds": None, "worker": None,
    }


def _temp_sibling_glob_cleanup(final: Path) -> None:
    if final.parent.is_dir():
        for p in final.parent.glob(f".{final.name}{TMP_MARK}*"):
            p.unlink(missing_ok=True)


class ChunkQueue:
    """The tasks of a run, handed out in chunks (thread-safe).

    A chunk holds consecutive tasks of the same notebook. nbconvert: one task per chunk. Quarto:
    up to :data:`QUARTO_CHUNK`, and never more than a quarter of what is left per worker
    (``remaining // (2 * jobs)``), so chunks shrink near the end of a run and workers finish
    together ("guided" scheduling). A task queued again by :meth:`retry_alone` is a chunk of its own.
    """

    def __init__(self, tasks: Sequence[Mapping[str, Any]], jobs: int):
        self._todo: list[tuple[Mapping[str, Any], bool]] = [(t, False) for t in tasks]
        self.jobs = max(1, jobs)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._todo)

    def next(self) -> list[Mapping[str, Any]] | None:
        """The next chunk, or None when every task has been handed out."""
        with self._lock:
            if not self._todo:
                return None
            first, alone = self._todo[0]
            limit = 1
            if first.get("renderer") == "quarto" and not alone:
                limit = max(1, min(QUARTO_CHUNK, len(self._todo) // (2 * self.jobs)))
            n = 1
            while (n < min(limit, len(self._todo)) and not self._todo[n][1]
                   and self._todo[n][0]["notebook"] == first["notebook"]):
                n += 1
            chunk = [t for t, _ in self._todo[:n]]
            del self._todo[:n]
            return chunk

    def retry_alone(self, tasks: Sequence[Mapping[str, Any]]) -> None:
        """Queue `tasks` again, first, each as a chunk of its own."""
        with self._lock:
            self._todo[:0] = [(t, True) for t in tasks]

    def chunks(self) -> list[list[Mapping[str, Any]]]:
        """Every remaining chunk at once (executors that submit all work up front)."""
        out = []
        while (c := self.next()) is not None:
            out.append(c)
        return out


class LocalPool:
    """`jobs` local worker processes, each owning one warm kernel, reusable across runs.

    ``render_batch`` makes a pool per run and closes it; pass your own (``pool=``) to keep kernels
    warm across several runs (tests, an analyst re-rendering in a loop). A worker that dies
    (killed, out of memory) fails only the report it died on; a fresh worker takes its place.
    """

    def __init__(self, jobs: int, kernel_options: Mapping[str, Any] | None = None,
                 log_dir: str | os.PathLike | None = None):
        if jobs < 1:
            raise ValueError(f"jobs must be at least 1; got {jobs}")
        self.jobs = jobs
        self.kernel_options = dict(kernel_options or {})
        self.log_dir = Path(log_dir) if log_dir else None
        self._workers: list[_LocalWorker | None] = [None] * jobs
        self.workers_started = 0

    def _worker(self, i: int) -> _LocalWorker:
        w = self._workers[i]
        if w is None or not w.alive:
            if w is not None:
                w.close(timeout=1)
            opts = dict(self.kernel_options)
            log = None
            if self.log_dir is not None:
                opts["log_path"] = str(self.log_dir / f"kernel-{i}.log")
                log = self.log_dir / f"worker-{i}.log"
            w = self._workers[i] = _LocalWorker(opts, log)
            self.workers_started += 1
        return w

    def _drop(self, i: int, kill: bool = False, terminate: bool = False) -> None:
        w = self._workers[i]
        if w is not None:
            if kill:
                w.proc.kill()
            w.close(timeout=15 if terminate else 5, terminate=terminate)
        self._workers[i] = None

    def run(self, tasks: Sequence[Mapping[str, Any]], on_result: Callable[[dict[str, Any]], None]) -> None:
        """Render `tasks`, calling `on_result` (in this thread) as each finishes.

        Each free worker takes the next chunk (:class:`ChunkQueue`). When a worker dies, the
        reports of its chunk it had not finished fail if there was one; if there were several,
        each is queued again alone, so only the report that kills a worker fails."""
        chunks = ChunkQueue(tasks, self.jobs)
        done: queue.Queue = queue.Queue()

        def slot(i: int) -> None:
            while True:
                chunk = chunks.next()
                if chunk is None:
                    return
                got: set[str] = set()

                def deliver(res: dict[str, Any]) -> None:
                    got.add(res["report_id"])
                    done.put(res)

                try:
                    worker = self._worker(i)
                    if worker.render(chunk, deliver):
                        continue
                    code = worker.proc.wait(timeout=10)
                    error = f"worker process died (exit code {code})"
                    self._drop(i)
                except Exception as exc:  # noqa: BLE001 - a broken worker fails only its reports
                    error = f"worker error: {type(exc).__name__}: {exc}"
                    self._drop(i, kill=True)
                missing = [t for t in chunk if t["report_id"] not in got]
                if len(missing) == 1:
                    done.put(_failed(missing[0], error))
                else:
                    chunks.retry_alone(missing)

        n = max(1, min(self.jobs, len(tasks)))
        threads = [threading.Thread(target=slot, args=(i,), daemon=True, name=f"ipso-render-{i}")
                   for i in range(n)]
        for th in threads:
            th.start()
        by_id = {t["report_id"]: t for t in tasks}
        seen: set[str] = set()
        while len(seen) < len(tasks):
            try:
                res = done.get(timeout=1.0)
            except queue.Empty:
                if not any(th.is_alive() for th in threads) and done.empty():
                    break
                continue
            seen.add(res["report_id"])
            on_result(res)
        for rid in set(by_id) - seen:
            on_result(_failed(by_id[rid], "never run (worker slots ended early)"))
        for th in threads:
            th.join(timeout=60)

    def prestart(self) -> None:
        """Start every worker now (each boots its kernel in the background); returns at once."""
        for i in range(self.jobs):
            self._worker(i)

    def close(self, terminate: bool = False) -> None:
        """Stop every worker and its kernel (`terminate`: at once, even mid-report: SIGTERM)."""
        for i in range(self.jobs):
            self._drop(i, terminate=terminate)

    def __enter__(self) -> LocalPool:
        return self

    def __exit__(self, exc_type, *exc: object) -> None:
        self.close(terminate=exc_type is not None)


def run_local(
    tasks: Sequence[Mapping[str, Any]],
    jobs: int,
    on_result: Callable[[dict[str, Any]], None],
    kernel_options: Mapping[str, Any] | None = None,
    log_dir: str | os.PathLike | None = None,
) -> None:
    """Render `tasks` on a fresh LocalPool of min(jobs, len(tasks)) workers, then stop it."""
    with LocalPool(max(1, min(jobs, len(tasks))), kernel_options, log_dir) as pool:
        pool.run(tasks, on_result)


def run_dask(
    tasks: Sequence[Mapping[str, Any]],
    jobs: int,
    on_result: Callable[[dict[str, Any]], None],
    kernel_options: Mapping[str, Any] | None = None,
    scheduler: str | None = None,
    processes: bool = True,
) -> None:
    """Render `tasks` on a dask.distributed cluster (`scheduler` address, else a LocalCluster
    of `jobs` single-threaded workers). Each worker thread keeps one warm kernel."""
    from distributed import Client, LocalCluster, as_completed

    cluster = None
    if scheduler:
        client = Client(scheduler)
    else:
        cluster = LocalCluster(
            n_workers=max(1, min(jobs, len(tasks))), threads_per_worker=1, processes=processes,
            dashboard_address=None,
        )
        client = Client(cluster)
    kernel_options = dict(kernel_options or {})
    try:
        pending: dict[str, list[Mapping[str, Any]]] = {}
        futures = as_completed()

        def submit(chunk: Sequence[Mapping[str, Any]]) -> None:
            chunk = [dict(t, kernel_options=kernel_options) for t in chunk]
            key = f"ipso-render-{chunk[0]['report_id']}-{len(chunk)}-{time.time_ns()}"
            fut = client.submit(render_tasks, chunk, pure=False, key=key)
            pending[fut.key] = chunk
            futures.add(fut)

        for chunk in ChunkQueue(tasks, jobs).chunks():
            submit(chunk)
        for fut in futures:
            chunk = pending.pop(fut.key)
            try:
                results = fut.result()
            except Exception as exc:  # noqa: BLE001 - worker lost, KilledWorker, serialisation
                if len(chunk) > 1:  # run each again alone: only the culprit fails
                    for t in chunk:
                        submit([t])
                    continue
                results = [_failed(chunk[0], f"dask task failed: {type(exc).__name__}: {exc}")]
            for res in results:
                on_result(res)
    finally:
        try:
            client.run(shutdown_kernels)
        except Exception:
            pass
        client.close()
        if cluster is not None:
            cluster.close()


# =============================================================================================
# Planning
@dataclass
class _Plan:
    task: dict[str, Any]
    report_id: str
    kind: str
    site_id: str | None
    key: str
    outputs: dict[str, str]


def _parse_sites(sites: str | Iterable[str] | None, available: Sequence[str]) -> list[str]:
    if sites is None or (isinstance(sites, str) and sites.strip().lower() in ("all", "")):
        return list(available)
    wanted = [s.strip() for s in (sites.split(",") if isinstance(sites, str) else sites)]
    wanted = [s for s in wanted if s]
    unknown = [s for s in wanted if s not in set(available)]
    if unknown:
        raise ValueError(f"unknown site id(s) {', '.join(unknown)}; the data has {len(available)} sites")
    return list(dict.fromkeys(wanted))


def _load_manifest(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def _cores() -> int:
    """CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _accepts_keyword(func: Callable[..., Any], name: str) -> bool:
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _shared_checksums(shared_dir: Path) -> dict[str, str]:
    return {str(p.relative_to(shared_dir)): _file_sha(p) for p in sorted(shared_dir.rglob("*"))
            if p.is_file() and p.name != SHARED_STAMP}


def verify_shared(shared_dir: str | os.PathLike) -> str | None:
    """Check a shared folder against its stamp: None when every file listed there exists with its
    checksum, else what is wrong (a missing stamp, a missing, partial or corrupt file)."""
    shared_dir = Path(shared_dir)
    try:
        stamp = json.loads((shared_dir / SHARED_STAMP).read_text())
    except (OSError, ValueError):
        return "no valid stamp"
    files = stamp.get("files")
    if not isinstance(files, dict):
        return "the stamp lists no checksums"
    for rel, sha in files.items():
        try:
            path = _render.confined_path(shared_dir, *Path(rel).parts)
        except ValueError:
            return f"the stamp names {rel!r}"
        if not path.is_file():
            return f"{rel} is missing"
        if _file_sha(path) != sha:
            return f"{rel} does not match its checksum (partial or corrupt)"
    return None


def _ensure_shared(
    data_dir: Path, shared_dir: Path, run_key: str, needed: bool, hook: Any = "auto",
    inputs_key: str = "", parameters: Mapping[str, Any] | None = None,
) -> tuple[str, str, str | None, float]:
    """Compute the run's shared artefacts once (analysis.reporting.compute_shared, if defined).
    A hook that takes a ``parameters`` keyword gets the run's extra notebook parameters (e.g.
    ``as_of``, ``plan``), so that what it computes matches the reports.

    The hook writes into a temporary sibling folder; every file is then checksummed into the
    stamp (:data:`SHARED_STAMP`) and the folder is renamed into place, so a run killed while the
    fits are written leaves the previous complete folder (or none), never a partial one. Before
    shared artefacts are reused, every file is checked against its checksum
    (:func:`verify_shared`); anything missing, partial or corrupt is recomputed, never trusted.

    Returns (status, digest, error, seconds); status is "absent" (no hook), "reused" (stamp
    matches inputs_key and every checksum), "computed", "repaired" (recomputed because the folder
    did not verify), "stale" (not needed this run) or "failed"; digest hashes the artefacts (it
    enters every report key).
    """
    stamp_path = shared_dir / SHARED_STAMP
    try:
        stamp = json.loads(stamp_path.read_text())
    except (OSError, ValueError):
        stamp = {}
    repaired = False
    if stamp.get("inputs_key") == inputs_key:
        problem = verify_shared(shared_dir)
        if problem is None:
            return "reused", stamp.get("digest", ""), None, 0.0
        repaired = needed = True
    if not needed:
        return "stale", stamp.get("digest", ""), None, 0.0
    t0 = time.perf_counter()
    if hook == "auto":
        try:
            reporting = importlib.import_module("analysis.reporting")
        except ImportError:
            reporting = None
        hook = getattr(reporting, "compute_shared", None)
    if hook is None:
        return "absent", "", None, 0.0
    tmp = shared_dir.with_name(f".shared.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        if parameters and _accepts_keyword(hook, "parameters"):
            hook(data_dir, tmp, run_key, parameters=dict(parameters))
        else:
            hook(data_dir, tmp, run_key)
    except _render.UnsafePathError:  # a path from the data would leave the folder: stop the run
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        return "failed", "", f"{type(exc).__name__}: {exc}", time.perf_counter() - t0
    files = _shared_checksums(tmp)
    digest = _sha(*(f"{k}:{v}" for k, v in files.items()))
    atomic_write_text(tmp / SHARED_STAMP, json.dumps(
        {"inputs_key": inputs_key, "digest": digest, "at": _now(), "files": files}, indent=1))
    _run_fault("shared")
    old = shared_dir.with_name(f".shared.old-{os.getpid()}")
    if shared_dir.exists():
        os.replace(shared_dir, old)
    _run_fault("swap")
    os.replace(tmp, shared_dir)
    shutil.rmtree(old, ignore_errors=True)
    return ("repaired" if repaired else "computed"), digest, None, time.perf_counter() - t0


def _validate_extract(data_dir: Path) -> None:
    """Validate an extract once, before any work (a store was validated when it was ingested).
    A fatal problem raises ValueError with one message naming the file and column."""
    from .store import is_store
    from .validate import DataContractError, validate_collaborative

    if is_store(data_dir):
        return
    try:
        validate_collaborative(data_dir)
    except DataContractError as exc:
        raise ValueError(f"data contract error in {data_dir}: {exc}. Nothing was rendered.") from exc


def _migrate_legacy_layout(out_dir: Path) -> bool:
    """A run folder of the older layout (reports, index and manifest at the top, ``_work`` and
    ``_shared`` beside them) becomes the new one: the pseudonym key moves to ``internal/`` (so
    pseudonyms hold), everything else of the old layout is removed and rendered again."""
    legacy_manifest = out_dir / MANIFEST_FILE
    ours = False
    if legacy_manifest.is_file():
        try:
            ours = json.loads(legacy_manifest.read_text()).get("tool") == "ipso render"
        except (OSError, ValueError):
            ours = False
    if not (ours or (out_dir / "_work").is_dir() or (out_dir / "_shared").is_dir()):
        return False
    _render.run_key_for(out_dir)  # moves _work/run_key to internal/run_key
    for d in ("_work", "_shared"):
        shutil.rmtree(out_dir / d, ignore_errors=True)
    if ours:
        for name in (INDEX_FILE, MANIFEST_FILE, "collaborative.html", "collaborative.pdf"):
            (out_dir / name).unlink(missing_ok=True)
        shutil.rmtree(out_dir / "sites", ignore_errors=True)
    return True


def _forbidden_file(data_dir: Path, internal: Path, data_hash: str) -> Path:
    """``internal/scan/forbidden.json``: the strings no published file may hold (identifiers,
    hospital names and ids; :func:`analysis.render.forbidden_strings_for`), rewritten when the
    data change. Read by every worker's scan gate."""
    path = internal / "scan" / "forbidden.json"
    try:
        if json.loads(path.read_text(encoding="utf-8")).get("data_hash") == data_hash:
            return path
    except (OSError, ValueError):
        pass
    atomic_write_text(path, json.dumps(dict(_render.forbidden_strings_for(data_dir), data_hash=data_hash)))
    return path


def _public_reason(error: str | None) -> str:
    """What the public index and manifest say about a failure: the scan's verdict (which never
    quotes a value) or the kind of failure; never the error text, which may quote data."""
    e = error or ""
    if e.startswith("not published:"):  # the scan's verdict: kinds of problem, never values
        return e[:600]
    if e.startswith("refused:"):
        return "refused: a path built from the report's id would leave the run folder"
    if e.startswith("Quarto"):
        return "Quarto could not render the report (details in the internal index)"
    if "worker process died" in e or e.startswith(("worker error", "dask task failed", "never run")):
        return "the process rendering the report died (details in the internal index)"
    if "kernel died" in e:
        return "the report's kernel died (details in the internal index)"
    if "Timeout" in e or "timed out" in e:
        return "the report timed out (details in the internal index)"
    return "the report's notebook raised an error (details in the internal index)"


def _public_time(iso: str | None) -> str | None:
    """A render time as the public files state it: ``2026-11-28 20.26.05 UTC`` (the output scan
    refuses ``YYYY-MM-DD HH:MM``, the shape of the data's exact times)."""
    if not iso:
        return iso
    try:
        t = _dt.datetime.fromisoformat(str(iso)).astimezone(_dt.timezone.utc)
    except ValueError:
        return None
    return t.strftime("%Y-%m-%d %H.%M.%S UTC")


def public_manifest(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest as published: report statuses, keys, timings, versions, hashes and the
    run's parameters, without anything of ``internal/`` (paths, executed notebooks, workers,
    error texts, the key)."""
    reports = {}
    for rid, e in manifest.get("reports", {}).items():
        entry = {k: e.get(k) for k in ("kind", "site_id", "status", "key", "seconds")}
        entry["rendered_at"] = _public_time(e.get("rendered_at"))
        entry["outputs"] = dict(e.get("outputs") or {}) if e.get("status") == "ok" else {}
        if e.get("status") == "failed":
            entry["reason"] = e.get("reason") or _public_reason(e.get("error"))
        reports[rid] = entry
    inputs = manifest.get("inputs", {})
    params = {k: v for k, v in manifest.get("parameters", {}).items()
              if k in ("as_of", "min_cell", "formats", "renderer")}
    return {
        "tool": manifest.get("tool"), "version": manifest.get("version"),
        "inputs_key": manifest.get("inputs_key"), "started": _public_time(manifest.get("started")),
        "finished": _public_time(manifest.get("finished")), "git": manifest.get("git"),
        "inputs": {k: inputs.get(k) for k in ("data_files", "data_hash", "code_hash",
                                               "shared_digest", "plan_hash")}
        | {"notebooks": {Path(k).name: v for k, v in inputs.get("notebooks", {}).items()}},
        "parameters": params, "renderer": manifest.get("renderer"),
        "versions": manifest.get("versions"),
        "settings": {k: manifest.get("settings", {}).get(k)
                     for k in ("jobs", "executor", "renderer", "formats", "force", "retry_failed")},
        "shared": {"status": manifest.get("shared", {}).get("status")},
        "summary": manifest.get("summary"), "timings": manifest.get("timings"),
        "reports": reports,
    }


# =============================================================================================
# The engine
def render_batch(
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    sites: str | Iterable[str] | None = "all",
    collaborative: bool = True,
    jobs: int | None = None,
    formats: str | Sequence[str] = ("html",),
    executor: str = "local",
    scheduler: str | None = None,
    force: bool = False,
    retry_failed: bool = False,
    renderer: str = "auto",
    site_notebook: str | os.PathLike | None = None,
    collaborative_notebook: str | os.PathLike | None = None,
    parameters: Mapping[str, Any] | None = None,
    compute_shared: Callable[[Path, Path, str], Any] | str | None = "auto",
    timeout: int = 600,
    show_progress: bool = True,
    dask_processes: bool = True,
    kernel_preload: Sequence[str] | None = None,
    pool: LocalPool | None = None,
    plan: str | os.PathLike | None = None,
    validate: bool = True,
    scan: bool = True,
    wait: float = 0.0,
) -> BatchResult:
    """Render every selected report of a collaborative into `out_dir` (see module docstring).

    data_dir: extract or store directory (episodes, sites, site_months as .parquet or .csv).
    sites: "all", "ID,ID" or a list of site ids. collaborative: also the collaborative report.
    jobs: parallel workers (default: the machine's cores). formats: "html" and/or "pdf".
    executor: "local" or "dask" (scheduler address, or a LocalCluster when None).
    force: re-render even when up to date. retry_failed: render only reports that failed last run.
    renderer: "auto" (Quarto when on PATH, else nbconvert), "quarto" or "nbconvert".
    parameters: extra notebook parameters (e.g. as_of, min_cell); they enter every report key.
    plan: analysis plan YAML, checked before any work (a bad plan raises
        :class:`analysis.plan.PlanError`, naming estimand and field); the notebooks and the shared
        hook get its path as ``plan``, and its content's hash enters every report key.
    compute_shared: hook computing the run's shared fits into ``internal/shared`` once per run,
        called as hook(data_dir, shared_dir, run_key), plus ``parameters=`` (the extra
        `parameters`, with ``plan``) when the hook takes that keyword; "auto" =
        analysis.reporting.compute_shared when defined; None = no shared artefacts.
    validate: validate the extract once before any work (:func:`_validate_extract`; skipped when
        the same data passed last run); False for data that is not an extract (tests).
    scan: every published file passes the output scan (:func:`analysis.render.scan_for_publication`)
        with the forbidden strings of the data; False only for test pipelines whose "reports"
        are not reports.
    wait: seconds to wait for another run holding the folder's lock (then ValueError).
    timeout: seconds one notebook cell may run.
    kernel_preload: modules each warm kernel imports once (default: the heavy analysis stack).
    pool: a LocalPool to re-use (kernels stay warm across runs); default: one per run.
    """
    from . import contract

    t_start = time.perf_counter()
    data_dir = Path(data_dir).resolve()
    out_dir = Path(out_dir).resolve()
    fmts = list(_render.parse_formats(formats))
    extra = dict(parameters or {})
    if "as_of" in extra:
        extra["as_of"] = _render.parse_as_of(extra["as_of"])
    if "min_cell" in extra:
        extra["min_cell"] = _render.parse_min_cell(extra["min_cell"])
    plan_path, plan_hash = _render.plan_parameter(plan if plan is not None else extra.pop("plan", None))
    if plan_path is not None:
        extra["plan"] = plan_path
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {', '.join(EXECUTORS)}; got {executor!r}")
    if jobs is None:
        jobs = _cores()
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1; got {jobs}")
    if retry_failed and force:
        raise ValueError("--force and --retry-failed exclude each other")
    if renderer not in ("auto", "quarto", "nbconvert"):
        raise ValueError(f"renderer must be auto, quarto or nbconvert; got {renderer!r}")
    quarto = find_quarto()
    if renderer == "auto":
        renderer = "quarto" if quarto else "nbconvert"
    elif renderer == "quarto" and quarto is None:
        raise ValueError("renderer 'quarto' requested but quarto is not on PATH")
    if "pdf" in fmts and renderer == "nbconvert" and shutil.which("xelatex") is None:
        raise ValueError("PDF needs Quarto or xelatex on PATH; neither was found (use --formats html)")
    renderer_version = _render.renderer_version(renderer)
    if renderer == "quarto" and renderer_version is None:
        raise ValueError(f"quarto ({quarto}) does not run: `quarto --version` failed")
    site_nb = Path(site_notebook or DEFAULT_NOTEBOOK_DIR / "site_report.ipynb").resolve()
    coll_nb = Path(collaborative_notebook or DEFAULT_NOTEBOOK_DIR / "collaborative_report.ipynb").resolve()
    if not data_dir.is_dir():
        raise ValueError(f"data directory {data_dir} does not exist")
    # the hospitals asked for are checked against the sites table before the data are hashed
    chosen = _parse_sites(sites, _render.data_site_ids(data_dir))
    bad_ids = [s for s in chosen if not contract.is_valid_site_id(s)]
    if bad_ids:
        raise ValueError(f"site ids must match {contract.SITE_ID_PATTERN} to name files: {bad_ids}")
    publish_dir = out_dir / PUBLISH_DIRNAME
    for s in chosen:  # and, whatever the pattern allows, no path may leave the run folder
        for f in fmts:
            _render.confined_path(publish_dir, "sites", f"{s}.{f}")
            _render.confined_path(out_dir, INTERNAL_DIRNAME, WORK_DIRNAME, f"site-{s}")
    needed_nbs = ([site_nb] if chosen else []) + ([coll_nb] if collaborative else [])
    for nb in needed_nbs:
        if not nb.is_file():
            raise ValueError(f"report notebook {nb} does not exist")

    # -- fingerprints; the extract is validated once, before any work -------------------------
    fp = data_fingerprint(data_dir)
    internal = out_dir / INTERNAL_DIRNAME
    if validate and _load_manifest(internal / MANIFEST_FILE).get("inputs", {}).get("validated") != fp.total:
        _validate_extract(data_dir)
    code_hash = code_fingerprint()
    versions = library_versions()
    if renderer == "quarto":
        versions["quarto"] = renderer_version
    keyed_extra = {k: v for k, v in extra.items() if k != "plan"}
    if plan_hash is not None:
        keyed_extra["plan_hash"] = plan_hash
    inputs_key = _sha(fp.total, code_hash, _json_sha(versions), _json_sha(keyed_extra))[:16]

    with _render.terminate_as_exit(), _render.run_lock(out_dir, wait=wait, command="ipso render"):
        return _render_locked(
            data_dir=data_dir, out_dir=out_dir, chosen=chosen, collaborative=collaborative,
            jobs=jobs, fmts=fmts, executor=executor, scheduler=scheduler, force=force,
            retry_failed=retry_failed, renderer=renderer, renderer_version=renderer_version,
            site_nb=site_nb, coll_nb=coll_nb, needed_nbs=needed_nbs, extra=extra,
            keyed_extra=keyed_extra, plan_hash=plan_hash, compute_shared=compute_shared,
            timeout=timeout, show_progress=show_progress, dask_processes=dask_processes,
            kernel_preload=kernel_preload, pool=pool, validate=validate, scan=scan, fp=fp,
            code_hash=code_hash, versions=versions, inputs_key=inputs_key, t_start=t_start)


def _render_locked(*, data_dir: Path, out_dir: Path, chosen: list[str], collaborative: bool,
                   jobs: int, fmts: list[str], executor: str, scheduler: str | None, force: bool,
                   retry_failed: bool, renderer: str, renderer_version: str | None, site_nb: Path,
                   coll_nb: Path, needed_nbs: list[Path], extra: dict[str, Any],
                   keyed_extra: dict[str, Any], plan_hash: str | None, compute_shared: Any,
                   timeout: int, show_progress: bool, dask_processes: bool,
                   kernel_preload: Sequence[str] | None, pool: LocalPool | None, validate: bool,
                   scan: bool, fp: DataFingerprint, code_hash: str, versions: dict[str, str],
                   inputs_key: str, t_start: float) -> BatchResult:
    """The body of :func:`render_batch`, with the run folder's lock held."""
    from . import privacy
    from .kernel_dirs import sweep_kernel_dirs

    publish_dir = out_dir / PUBLISH_DIRNAME
    internal = out_dir / INTERNAL_DIRNAME
    shared_dir = internal / SHARED_DIRNAME
    internal.mkdir(parents=True, exist_ok=True)
    publish_dir.mkdir(parents=True, exist_ok=True)
    _migrate_legacy_layout(out_dir)
    run_key = pseudonym_key(out_dir)  # secret, stable per run folder: never under publish/
    _remove_stale_temps(out_dir)
    sweep_kernel_dirs()  # sockets and connection files of kernels whose process was killed
    manifest_path = publish_dir / MANIFEST_FILE
    index_path = publish_dir / INDEX_FILE
    internal_manifest_path = internal / MANIFEST_FILE
    internal_index_path = internal / INDEX_FILE
    previous = _load_manifest(internal_manifest_path)
    prev_reports: dict[str, Any] = dict(previous.get("reports", {}))
    forbidden_path = _forbidden_file(data_dir, internal, fp.total) if scan else None
    min_cell = int(extra.get("min_cell", 11))

    # Shared artefacts are (re)computed only when the run's inputs changed.
    shared_needed = force or previous.get("inputs_key") != inputs_key or retry_failed or any(
        prev_reports.get(r, {}).get("status") != "ok"
        for r in ([f"site-{s}" for s in chosen] + ([COLLABORATIVE_ID] if collaborative else []))
    )
    kernel_options: dict[str, Any] = {"timeout": timeout}
    if kernel_preload is not None:
        kernel_options["preload"] = list(kernel_preload)
    # one process per worker: numerical libraries get the worker's share of the cores
    kernel_options["threads"] = max(1, _cores() // jobs)
    log_dir = internal / "logs"
    # Reports will (most likely) be rendered: start the workers now, so that their kernels boot
    # and import the stack while this process computes the shared fits.
    early: LocalPool | None = None
    if executor == "local" and pool is None and shared_needed and (chosen or collaborative):
        early = LocalPool(max(1, min(jobs, len(chosen) + int(collaborative))), kernel_options, log_dir)
    try:
        if early is not None:
            early.prestart()
        shared_status, shared_digest, shared_error, shared_seconds = _ensure_shared(
            data_dir, shared_dir, run_key, shared_needed, compute_shared, inputs_key, extra
        )

        label = f"{renderer} {renderer_version}" if renderer_version else renderer
        common = {
            "data_dir": str(data_dir), "run_key": run_key,
            "shared_dir": str(shared_dir), "renderer": label, "formats": list(fmts),
        }
        common.update(extra)
        nb_hash = {p: _file_sha(p) for p in needed_nbs}
        declared = {p: _notebook_parameter_names(p) for p in needed_nbs}

        plans: list[_Plan] = []

        def plan_report(report_id: str, kind: str, site_id: str | None, nb: Path, data_hash: str,
                        stem: str) -> None:
            params = dict(common, site_id=site_id)
            if declared[nb] is not None:
                params = {k: v for k, v in params.items() if k in declared[nb]}
            keyed = {k: v for k, v in params.items() if k not in _LOCATION_PARAMETERS}
            if plan_hash is not None:
                keyed["plan_hash"] = plan_hash
            key = _sha(kind, str(site_id), data_hash, shared_digest, nb_hash[nb], code_hash,
                       _json_sha(versions), _json_sha(keyed), renderer, ",".join(fmts),
                       "scan" if scan else "no-scan")[:24]
            outputs = {f: f"{stem}.{f}" for f in fmts}
            task = {
                "report_id": report_id, "notebook": str(nb), "parameters": params, "key": key,
                "work_dir": str(_render.confined_path(internal, WORK_DIRNAME, report_id)),
                "out_dir": str(out_dir), "publish_dir": str(publish_dir),
                "quarto_dir": str(internal / "quarto"),
                "outputs": outputs, "renderer": renderer, "fault": os.environ.get(FAULT_ENV),
                "scan": ({"forbidden": str(forbidden_path), "site_id": site_id, "run_key": run_key,
                          "min_cell": min_cell} if scan else None),
            }
            plans.append(_Plan(task, report_id, kind, site_id, key, outputs))

        if collaborative:
            plan_report(COLLABORATIVE_ID, "collaborative", None, coll_nb, fp.total, COLLABORATIVE_ID)
        for s in chosen:
            plan_report(f"site-{s}", "site", s, site_nb, fp.per_site.get(s, ""), f"sites/{s}")

        def is_current(p: _Plan) -> bool:
            prev = prev_reports.get(p.report_id)
            return bool(
                prev and prev.get("status") == "ok" and prev.get("key") == p.key
                and all((publish_dir / rel).is_file() for rel in p.outputs.values())
            )

        if force:
            todo = list(plans)
        elif retry_failed:
            todo = [p for p in plans if prev_reports.get(p.report_id, {}).get("status") == "failed"]
        else:
            todo = [p for p in plans if not is_current(p)]
        todo_ids = {p.report_id for p in todo}

        results: dict[str, ReportResult] = {}
        for p in plans:
            if p.report_id not in todo_ids:
                prev = prev_reports.get(p.report_id, {})
                if is_current(p):
                    status = "up-to-date"
                elif prev.get("status") == "failed":
                    status = "failed"
                else:
                    status = "skipped"  # stale or never rendered, left alone by --retry-failed
                results[p.report_id] = ReportResult(
                    p.report_id, p.kind, p.site_id, status, prev.get("key", p.key),
                    outputs=prev.get("outputs", {}), seconds=prev.get("seconds"),
                    error=prev.get("error"), executed_notebook=prev.get("executed_notebook"),
                    rendered_at=prev.get("rendered_at"), worker=prev.get("worker"),
                    reason=prev.get("reason"),
                )

        manifest: dict[str, Any] = {
            "tool": "ipso render",
            "version": __version__,
            "inputs_key": inputs_key,
            "started": _now(),
            "finished": None,
            "git": git_state(),
            "inputs": {
                "data_dir": str(data_dir), "data_files": fp.files, "data_hash": fp.total,
                "code_hash": code_hash, "shared_digest": shared_digest, "plan_hash": plan_hash,
                "notebooks": {str(p): h for p, h in nb_hash.items()},
                "validated": fp.total if validate else previous.get("inputs", {}).get("validated"),
            },
            "parameters": {k: ("<secret: internal/run_key>" if k == "run_key" else v)
                           for k, v in common.items()},
            "renderer": {"name": renderer, "version": renderer_version},
            "versions": versions,
            "settings": {
                "jobs": jobs, "executor": executor, "scheduler": scheduler, "renderer": renderer,
                "formats": fmts, "force": force, "retry_failed": retry_failed, "timeout": timeout,
                "scan": scan,
            },
            "shared": {"status": shared_status, "dir": f"{INTERNAL_DIRNAME}/{SHARED_DIRNAME}",
                       "seconds": round(shared_seconds, 3), "error": shared_error},
            "reports": prev_reports,
        }
        lock = threading.Lock()
        plan_by_id = {p.report_id: p for p in plans}

        def write_internal_manifest() -> None:
            atomic_write_text(internal_manifest_path, json.dumps(manifest, indent=2, default=str) + "\n",
                              before_replace=lambda tmp: _run_fault("manifest"))

        def record(res: dict[str, Any]) -> None:
            p = plan_by_id[res["report_id"]]
            failed = res["status"] == "failed"
            rr = ReportResult(
                p.report_id, p.kind, p.site_id, res["status"], p.key,
                outputs=res.get("outputs") or {}, seconds=res.get("seconds"),
                execute_seconds=res.get("execute_seconds"), export_seconds=res.get("export_seconds"),
                error=res.get("error"), executed_notebook=res.get("executed_notebook"),
                rendered_at=_now(), worker=res.get("worker"),
                reason=(res.get("reason") or _public_reason(res.get("error"))) if failed else None,
            )
            with lock:
                results[p.report_id] = rr
                entry = asdict(rr)
                entry.pop("report_id")
                prev_reports[p.report_id] = entry
                if rr.status in ("ok", "failed"):
                    write_internal_manifest()

        # -- render ---------------------------------------------------------------------------
        if todo:
            from .console import progress

            tasks = [p.task for p in todo]
            with progress(enabled=show_progress) as bar:
                task_id = bar.add_task(f"rendering {len(tasks)} report(s) on {min(jobs, len(tasks))} worker(s)",
                                       total=len(tasks))

                def on_result(res: dict[str, Any]) -> None:
                    record(res)
                    bar.advance(task_id)

                if executor == "local" and (pool or early) is not None:
                    (pool or early).run(tasks, on_result)
                elif executor == "local":
                    run_local(tasks, jobs, on_result, kernel_options, log_dir)
                else:
                    run_dask(tasks, jobs, on_result, kernel_options, scheduler, processes=dask_processes)

        # -- the table-matching attack on the published reports ------------------------------
        coll = results.get(COLLABORATIVE_ID)
        site_pages = {p.site_id: publish_dir / p.outputs["html"] for p in plans
                      if p.kind == "site" and "html" in p.outputs and results[p.report_id].status in ("ok", "up-to-date")
                      and (publish_dir / p.outputs["html"]).is_file()}
        check = _sha(*(f"{r.report_id}:{r.key}" for r in results.values()
                       if r.status in ("ok", "up-to-date")))
        if (scan and coll is not None and coll.status in ("ok", "up-to-date") and site_pages
                and "html" in coll.outputs and previous.get("linkage_checked") != check):
            links = privacy.pseudonym_links(publish_dir / coll.outputs["html"], site_pages)
            if links:
                for rel in coll.outputs.values():
                    (publish_dir / rel).unlink(missing_ok=True)
                record({"report_id": COLLABORATIVE_ID, "status": "failed", "outputs": {},
                        "error": f"not published: {len(links)} of its pseudonyms can be matched to "
                                 "site reports by the numbers in its tables (table-matching attack)",
                        "seconds": coll.seconds})
            else:
                manifest["linkage_checked"] = check

        manifest["finished"] = _now()
        ordered = [results[p.report_id] for p in plans]
        wall = time.perf_counter() - t_start
        manifest["timings"] = {
            "wall_seconds": round(wall, 3),
            "rendered": sum(r.status == "ok" for r in ordered),
            "report_seconds_total": round(sum(r.seconds or 0 for r in ordered if r.status == "ok"), 3),
        }
        manifest["summary"] = {
            "selected": len(ordered),
            "rendered": sum(r.status == "ok" for r in ordered),
            "up_to_date": sum(r.status == "up-to-date" for r in ordered),
            "failed": sum(r.status == "failed" for r in ordered),
        }
        this_run = {r.report_id: r.status for r in ordered}
        with lock:
            write_internal_manifest()
            atomic_write_text(internal_index_path, build_index(manifest, this_run, public=False))
            _publish_run_files(publish_dir, manifest, this_run, forbidden_path, run_key, min_cell)
        return BatchResult(
            out_dir=out_dir, index_path=index_path, manifest_path=manifest_path, reports=ordered,
            wall_seconds=wall, inputs_key=inputs_key, shared_status=shared_status, renderer=renderer,
            executor=executor, jobs=jobs, internal_index_path=internal_index_path,
            internal_manifest_path=internal_manifest_path,
        )
    except BaseException:
        if early is not None:
            early.close(terminate=True)
            early = None
        raise
    finally:
        if early is not None:
            early.close()


def _publish_run_files(publish_dir: Path, manifest: Mapping[str, Any], this_run: Mapping[str, str],
                       forbidden_path: Path | None, run_key: str, min_cell: int) -> None:
    """Write the public index and manifest: staged, scanned like every published file (no
    identifier, hospital name, key or small count), then published atomically."""
    import tempfile

    public = public_manifest(manifest)
    with tempfile.TemporaryDirectory(prefix="ipso-index-") as tmp:
        staged_manifest = Path(tmp) / MANIFEST_FILE
        staged_index = Path(tmp) / INDEX_FILE
        staged_manifest.write_text(json.dumps(public, indent=2, default=str) + "\n", encoding="utf-8")
        staged_index.write_text(build_index(public, this_run, public=True), encoding="utf-8")
        scan = None
        if forbidden_path is not None:
            strings = _render.forbidden_for_report(_forbidden(str(forbidden_path)), None, run_key, index=True)
            scan = (lambda files: _render.scan_for_publication(files, forbidden_strings=strings,
                                                               min_cell=min_cell))
        _render.publish([(staged_manifest, publish_dir / MANIFEST_FILE),
                         (staged_index, publish_dir / INDEX_FILE)],
                        before_replace=lambda t, f: _run_fault("index"), scan=scan)


# =============================================================================================
# Index
_STATUS_STYLE = {"ok": "#2e7d32", "up-to-date": "#2e7d32", "failed": "#c62828"}


def build_index(manifest: Mapping[str, Any], this_run: Mapping[str, str] | None = None, *,
                public: bool = True) -> str:
    """An index.html of every report in the manifest: links, status and timing.

    public=True (``publish/index.html``, from :func:`public_manifest`): links only to published
    reports (relative to ``publish/``) and gives each failure's public reason. public=False
    (``internal/index.html``, the analyst's): links to the published reports
    (``../publish/...``), the executed notebooks of failed reports and the full error text.
    Neither holds patient-level data.
    """
    this_run = dict(this_run or {})
    reports = manifest.get("reports", {})
    esc = html.escape
    prefix = "" if public else f"../{PUBLISH_DIRNAME}/"

    def sort_key(item):
        rid, entry = item
        return (entry.get("kind") != "collaborative", rid)

    rows = []
    for rid, e in sorted(reports.items(), key=sort_key):
        status = this_run.get(rid) or e.get("status", "?")
        if rid not in this_run:
            status = f"{e.get('status', '?')} (not selected this run)"
        outputs = (e.get("outputs") or {}) if e.get("status") in ("ok", "up-to-date") else {}
        links = " ".join(
            f'<a href="{esc(prefix + rel)}">{esc(fmt)}</a>' for fmt, rel in sorted(outputs.items())
        )
        if not public and e.get("status") == "failed" and e.get("executed_notebook"):
            rel = Path(e["executed_notebook"])
            if rel.parts and rel.parts[0] == INTERNAL_DIRNAME:
                rel = Path(*rel.parts[1:])
            links += f' <a href="{esc(str(rel))}">executed notebook</a>'
        colour = _STATUS_STYLE.get(status, "#555")
        secs = e.get("seconds")
        why = (e.get("reason") or "") if public else (e.get("error") or "")
        rows.append(
            "<tr>"
            f"<td>{esc(rid)}</td><td>{esc(e.get('kind') or '')}</td>"
            f"<td>{esc(str(e.get('site_id') or ''))}</td>"
            f'<td style="color:{colour};font-weight:bold">{esc(status)}</td>'
            f"<td>{links}</td>"
            f"<td>{'' if secs is None else f'{secs:.1f}'}</td>"
            f"<td>{esc(e.get('rendered_at') or '')}</td>"
            f"<td>{esc(why)}</td>"
            "</tr>"
        )
    s = manifest.get("summary", {})
    git = manifest.get("git") or {}
    title = "IPSO reports" if public else "IPSO reports: analyst's index (internal, do not publish)"
    note = ("" if public else
            f'<p>The published folder is <a href="../{PUBLISH_DIRNAME}/{INDEX_FILE}">'
            f"../{PUBLISH_DIRNAME}/</a>; this index and everything beside it stay on the analysis "
            "server.</p>")
    record = MANIFEST_FILE if public else f"{MANIFEST_FILE} (internal)"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}: run index</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; }}
table {{ border-collapse: collapse; }} td, th {{ padding: .3rem .7rem; border-bottom: 1px solid #ddd; text-align: left; }}
th {{ background: #f3f3f3; }} code {{ font-size: .9em; }}
</style></head><body>
<h1>{esc(title)}</h1>
{note}
<p>{s.get('selected', 0)} selected: {s.get('rendered', 0)} rendered, {s.get('up_to_date', 0)} up to date,
<strong>{s.get('failed', 0)} failed</strong>. Finished {esc(str(manifest.get('finished')))};
wall time {(manifest.get('timings') or {}).get('wall_seconds', '?')} s.</p>
<p>Inputs key <code>{esc(str(manifest.get('inputs_key')))}</code>; data hash <code>{esc(str((manifest.get('inputs') or {}).get('data_hash', ''))[:16])}</code>;
git commit <code>{esc(str(git.get('commit')))}</code>{' (uncommitted changes)' if git.get('dirty') else ''};
renderer {esc(' '.join(str(v) for v in (manifest.get('renderer') or {}).values() if v)
               or str((manifest.get('settings') or {}).get('renderer')))}; shared artefacts {esc(str((manifest.get('shared') or {}).get('status')))}.
Full record: <a href="{MANIFEST_FILE}">{esc(record)}</a>.</p>
<table><thead><tr><th>report</th><th>kind</th><th>hospital</th><th>status</th><th>files</th>
<th>seconds</th><th>rendered at (UTC)</th><th>{'reason' if public else 'error'}</th></tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody></table></body></html>
"""


# =============================================================================================
# CLI glue (``ipso render``)
def run_render_command(
    *,
    data: Path,
    out: Path,
    sites: str = "all",
    collaborative: bool = True,
    jobs: int | None = None,
    formats: str = "html",
    executor: str = "local",
    scheduler: str | None = None,
    force: bool = False,
    retry_failed: bool = False,
    json_out: bool = False,
    site_notebook: Path | None = None,
    collaborative_notebook: Path | None = None,
    as_of: str | None = None,
    min_cell: int | None = None,
    plan: Path | None = None,
    wait: float = 0.0,
) -> BatchResult:
    """Run :func:`render_batch` for the CLI: print a summary (or JSON) and exit non-zero when
    any report failed (1) or the request was invalid (2: bad arguments, a bad plan, a fatal data
    problem, or a run folder in use). `as_of`, `min_cell` and `plan`, when given, become notebook
    parameters of every report."""
    import typer

    from .console import console, print_json

    try:
        result = render_batch(
            data, out, sites=sites, collaborative=collaborative, jobs=jobs, formats=formats,
            executor=executor, scheduler=scheduler, force=force, retry_failed=retry_failed,
            site_notebook=site_notebook, collaborative_notebook=collaborative_notebook,
            show_progress=not json_out and console.is_terminal,
            parameters={k: v for k, v in (("as_of", as_of), ("min_cell", min_cell)) if v is not None},
            plan=plan, wait=wait,
        )
    except ValueError as exc:
        if json_out:
            print_json({"error": str(exc)})
        else:
            console.print(f"[red]ipso render: {exc}[/red]", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from exc
    if json_out:
        print_json(result.to_dict())
    else:
        d = result.to_dict()["counts"]
        console.print(
            f"{d['selected']} report(s): {d['rendered']} rendered, {d['up_to_date']} up to date, "
            f"{d['failed']} failed in {result.wall_seconds:.1f} s "
            f"({result.jobs} worker(s), {result.executor}, {result.renderer})"
        )
        for r in result.failed:
            console.print(f"[red]FAILED {r.report_id}: {r.error}[/red]"
                          + (f" (executed notebook: {out / r.executed_notebook})" if r.executed_notebook else ""))
        if result.failed:
            console.print(f"analyst's index (internal): {result.internal_index_path}")
        typer.echo(str(result.index_path))
    if not result.ok:
        raise typer.Exit(1)
    return result

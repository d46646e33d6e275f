"""Render one report: execute a parameterised notebook with papermill, then turn the executed
notebook into HTML (and PDF) with Quarto when it is on PATH, otherwise with nbconvert.

Layout of a run (``reports/<run>/``, never committed)::

    <name>.html, <name>.pdf         published outputs (``site_<SITE>`` or ``collaborative``)
    _work/<name>/<name>.ipynb       executed notebook, kept for audit (cwd of the kernel: figures and
                                    intermediate files of one report can never collide with another's)
    _work/run_key                   the run's secret pseudonym key (not published)

Building blocks for :mod:`analysis.batch` (signatures kept stable):

* :func:`parameterize` ``(notebook_path, parameters) -> NotebookNode``
* :func:`export_html` ``(nb_node, out_path, *, renderer_label="nbconvert") -> Path``
* :func:`quarto_render` ``(paths_or_dir, formats=("html",), *, quarto=None) -> list[Path]``
* :func:`sanitize_executed` ``(nb_node) -> NotebookNode`` (drops wall-clock timing metadata)
"""

from __future__ import annotations

import copy
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat

from . import privacy

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
NOTEBOOKS = {
    "site": NOTEBOOK_DIR / "site_report.ipynb",
    "collaborative": NOTEBOOK_DIR / "collaborative_report.ipynb",
}
#: Quarto project file (theme and options) copied next to every notebook Quarto renders.
QUARTO_CONFIG = REPO_ROOT / "reports" / "_quarto.yml"
WORK_DIRNAME = "_work"
FORMATS = ("html", "pdf")
#: Quarto target per output format (PDF through Typst: no LaTeX needed).
QUARTO_TO = {"html": "html", "pdf": "typst"}


class RenderWarning(UserWarning):
    """A requested output could not be produced (e.g. PDF without Quarto)."""


def find_quarto() -> str | None:
    """Path of the ``quarto`` executable, or None when it is not on PATH."""
    return shutil.which("quarto")


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
        raise ValueError(f"formats must be among {', '.join(FORMATS)}; got {formats!r}")
    return out


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


def export_html(nb_node: nbformat.NotebookNode, out_path: str | Path, *,
                renderer_label: str = "nbconvert") -> Path:
    """Self-contained HTML of an executed notebook with nbconvert: code, prompts, the YAML front
    matter, stderr streams and cells tagged ``remove-cell`` are left out; images are embedded.

    `renderer_label` goes into the page's metadata (the notebook's footer states the renderer).
    """
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
                            exclude_output_prompt=True, embed_images=True)
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": title}})
    body = body.replace("<head>", f'<head>\n<meta name="generator" content="ipso-analysis via {renderer_label}">', 1)
    out = Path(out_path)
    _atomic_write_text(out, body)
    return out


def _ensure_quarto_config(directory: Path) -> None:
    target = directory / "_quarto.yml"
    if not target.exists() and QUARTO_CONFIG.exists():
        shutil.copyfile(QUARTO_CONFIG, target)


def quarto_render(paths_or_dir: str | Path | Sequence[str | Path], formats: Sequence[str] = ("html",),
                  *, quarto: str | None = None, timeout: float = 1800) -> list[Path]:
    """Render executed notebooks with Quarto, without executing them again.

    `paths_or_dir` is a project directory (every notebook in it is rendered by one Quarto call per
    format) or one or more ``.ipynb`` files. ``reports/_quarto.yml`` is copied into each directory
    that has no ``_quarto.yml`` (theme, ``execute: enabled: false``). ``pdf`` is rendered through
    Typst. Outputs land next to the inputs (or in the project's output-dir). Returns the output
    files found; raises RuntimeError with Quarto's message when a render fails.
    """
    exe = quarto or find_quarto()
    if exe is None:
        raise RuntimeError("quarto is not on PATH")
    fmts = parse_formats(list(formats))
    if isinstance(paths_or_dir, (str, Path)):
        targets = [Path(paths_or_dir)]
    else:
        targets = [Path(p) for p in paths_or_dir]
    produced: list[Path] = []
    for target in targets:
        directory = target if target.is_dir() else target.parent
        _ensure_quarto_config(directory)
        for fmt in fmts:
            proc = subprocess.run([exe, "render", str(target), "--to", QUARTO_TO[fmt]],
                                  check=False, capture_output=True, text=True, timeout=timeout,
                                  cwd=directory)
            if proc.returncode != 0:
                raise RuntimeError(f"quarto render {target} --to {QUARTO_TO[fmt]} failed:\n"
                                   f"{proc.stderr.strip()[-3000:]}")
            ext = "html" if fmt == "html" else "pdf"
            stems = [target.stem] if target.is_file() else [p.stem for p in directory.glob("*.ipynb")]
            for stem in stems:
                for cand in (directory / f"{stem}.{ext}", directory / "_site" / f"{stem}.{ext}"):
                    if cand.is_file():
                        produced.append(cand)
                        break
    return produced


def render_executed(executed_ipynb: str | Path, out_dir: str | Path, *,
                    formats: Sequence[str] = ("html",), renderer: str = "auto",
                    name: str | None = None) -> dict[str, Path]:
    """Turn an executed notebook into ``<name>.html`` / ``<name>.pdf`` in `out_dir`, without
    re-executing it: Quarto when available (``renderer="auto"``), otherwise nbconvert.

    PDF needs Quarto (Typst); with nbconvert it is skipped with a :class:`RenderWarning` and is
    missing from the returned mapping ``{format: path}``.
    """
    executed_ipynb = Path(executed_ipynb)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = name or executed_ipynb.stem
    fmts = parse_formats(list(formats))
    used = resolve_renderer(renderer)
    outputs: dict[str, Path] = {}
    if used == "quarto":
        with tempfile.TemporaryDirectory(prefix=f".quarto-{name}-", dir=out_dir) as tmp:
            stage = Path(tmp) / f"{name}.ipynb"
            shutil.copyfile(executed_ipynb, stage)
            for fmt in fmts:
                files = quarto_render(stage, [fmt])
                ext = "html" if fmt == "html" else "pdf"
                src = next((f for f in files if f.suffix == f".{ext}"), None)
                if src is None:
                    raise RuntimeError(f"quarto produced no {name}.{ext}")
                dest = out_dir / f"{name}.{ext}"
                shutil.copyfile(src, dest.with_name(f".{dest.name}.tmp"))
                os.replace(dest.with_name(f".{dest.name}.tmp"), dest)
                outputs[fmt] = dest
        return outputs
    nb = nbformat.read(executed_ipynb, as_version=4)
    for fmt in fmts:
        if fmt == "html":
            outputs["html"] = export_html(nb, out_dir / f"{name}.html", renderer_label="nbconvert")
        else:
            warnings.warn("PDF output needs Quarto (Typst), which is not on PATH: "
                          f"{name}.pdf was not produced; install Quarto to get PDFs.",
                          RenderWarning, stacklevel=2)
    return outputs


def execute_notebook(notebook: str | Path, parameters: Mapping[str, Any], output_path: str | Path, *,
                     cwd: str | Path, kernel_name: str | None = None,
                     timeout: float | None = 1200) -> nbformat.NotebookNode:
    """Execute `notebook` with papermill into `output_path`, with `cwd` as the kernel's working
    folder (one folder per report: files it writes can't collide). Timing metadata is removed.

    Raises :class:`papermill.PapermillExecutionError` when a cell fails (the partly executed
    notebook is still written to `output_path` for diagnosis).
    """
    import papermill as pm

    output_path = Path(output_path)
    Path(cwd).mkdir(parents=True, exist_ok=True)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        pm.execute_notebook(str(notebook), str(output_path), parameters=dict(parameters),
                            cwd=str(cwd), kernel_name=kernel_name, progress_bar=False,
                            execution_timeout=timeout)
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
            "run_dir": str(self.run_dir), "renderer": self.renderer, "ok": self.ok,
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
    """The run's secret pseudonym key: read from ``_work/run_key`` or created (random) once."""
    path = run_dir / WORK_DIRNAME / "run_key"
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(16)
    path.write_text(key + "\n")
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
) -> ReportResult:
    """Execute and render one report into ``<out_dir>/<run>/``; scan every output before returning.

    Parameters
    ----------
    kind:
        ``"site"`` (needs `site_id`) or ``"collaborative"``.
    data_dir:
        Store or extract directory; None: the default synthetic collaborative.
    run:
        Name of the run folder (default ``"latest"``). Reports of one run share pseudonyms.
    run_key:
        Pseudonym key; None: the run's secret random key (``_work/run_key``).
    scan:
        Run :func:`analysis.privacy.scan_outputs` on the outputs and executed notebook; problems go
        to ``result.findings`` (and ``result.ok`` is False).
    """
    t0 = time.perf_counter()
    name = report_name(kind, site_id)
    fmts = parse_formats(formats)
    used = resolve_renderer(renderer)
    data = None
    if scan or kind == "site":
        from .reporting import load_run

        data = load_run(data_dir, as_of=as_of, run_key="check", min_cell=min_cell)
        if kind == "site" and str(site_id) not in set(data.sites["site_id"].astype(str)):
            raise ValueError(f"site_id {site_id!r} is not in the data ({len(data.sites)} sites)")
    run_dir = Path(out_dir) / (run or "latest")
    run_dir.mkdir(parents=True, exist_ok=True)
    key = run_key or run_key_for(run_dir)
    work = run_dir / WORK_DIRNAME / name
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
        "renderer": used,
        "formats": list(fmts),
    }
    result = ReportResult(kind, site_id, name, run_dir, used, executed_notebook=executed)
    try:
        execute_notebook(NOTEBOOKS[kind], params, executed, cwd=work, kernel_name=kernel_name,
                         timeout=timeout)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RenderWarning)
            result.outputs = render_executed(executed, run_dir, formats=fmts, renderer=used, name=name)
        result.warnings += [str(w.message) for w in caught if issubclass(w.category, RenderWarning)]
    except Exception as exc:  # noqa: BLE001 - reported in the result, never half-published
        result.error = f"{type(exc).__name__}: {str(exc).strip()[-2000:]}"
    if scan and data is not None and executed.exists():
        forbidden = data.forbidden_strings(site_id)
        published = [p for p in result.outputs.values() if p.suffix != ".pdf"]
        # the executed notebook (audit, not published) holds the run key in its parameters
        result.findings = privacy.scan_outputs(
            published, forbidden_strings=[*forbidden, key], min_cell=min_cell)
        result.findings += privacy.scan_outputs(
            [executed], forbidden_strings=forbidden, min_cell=min_cell)
    result.seconds = time.perf_counter() - t0
    return result


def run_report_command(kind: str, *, site_id: str | None, data: Path | None, out: Path, run: str,
                       formats: str, min_cell: int, as_of: str | None, json_out: bool) -> ReportResult:
    """CLI body of ``ipso report site SITE_ID`` / ``ipso report collaborative``.

    Exit code 0: rendered and the output scan found nothing; 1: rendering failed or the scan found
    something (the findings are listed); 2: bad arguments.
    """
    import typer

    from .console import console, print_json

    try:
        fmts = parse_formats(formats)
        if data is not None and not Path(data).exists():
            raise ValueError(f"--data {data}: no such directory")
        if min_cell < 1:
            raise ValueError(f"--min-cell must be >= 1, got {min_cell}")
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    if not json_out:
        console.print(f"Rendering the {kind} report{' for ' + site_id if site_id else ''} ...")
    try:
        res = render_report(kind, site_id=site_id, data_dir=data, out_dir=out, run=run, formats=fmts,
                            min_cell=min_cell, as_of=as_of)
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
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
            console.print(f"  [red]unsafe output:[/red] {f.path}: {f.kind}: {f.detail}")
        if res.ok:
            console.print(f"  done in {res.seconds:.1f} s with {res.renderer}; output scan clean.")
    if not res.ok:
        raise typer.Exit(1)
    return res

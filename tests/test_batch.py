"""Batch rendering (analysis.batch, analysis.kernelpool) on tiny parameterised test notebooks.

The notebooks in tests/data/notebooks mimic the real report notebooks (same parameters cell),
read the hospital's rows, print a summary and draw a seaborn plot; each also asserts that nothing
of a previous report is visible (namespace, figures, files), so every warm-kernel run checks
isolation too.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest

from analysis import batch
from analysis.batch import LocalPool, data_fingerprint, render_batch
from analysis.kernelpool import WarmKernel, parameterize

NB_DIR = Path(__file__).parent / "data" / "notebooks"
SITE_NB = NB_DIR / "site_report.ipynb"
COLL_NB = NB_DIR / "collaborative_report.ipynb"
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.xdist_group("batch")
#: The test notebooks need only these; the default preload (statsmodels, lifelines, ...) is slower.
PRELOAD = ("pandas", "matplotlib.pyplot", "seaborn")
HAVE_QUARTO = shutil.which("quarto") is not None
needs_quarto = pytest.mark.skipif(
    not HAVE_QUARTO, reason="needs the quarto CLI on PATH (export PATH=\"$(../shared/tools/quarto/setup):$PATH\")")
#: Both renderers: nbconvert always, Quarto when it is on PATH.
RENDERERS = pytest.mark.parametrize(
    "renderer", ["nbconvert", pytest.param("quarto", marks=[pytest.mark.quarto, needs_quarto])])


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """Two warm workers shared by the tests of this file (kernels reset between reports)."""
    with LocalPool(2, {"preload": list(PRELOAD)}, tmp_path_factory.mktemp("logs")) as p:
        yield p


def write_data(path: Path, sites=("S01", "S02", "S03"), empty=(), seed=1) -> Path:
    """Tiny extract: sites.csv and episodes.csv (site_id, month, value); `empty` sites get no rows."""
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    rows = [
        {"site_id": s, "month": m, "value": round(float(rng.normal(i, 1)), 6)}
        for i, s in enumerate(sites) if s not in empty for m in range(12)
    ]
    pd.DataFrame(rows).to_csv(path / "episodes.csv", index=False)
    pd.DataFrame({"site_id": list(sites), "site_name": [f"Hospital {s}" for s in sites]}).to_csv(
        path / "sites.csv", index=False
    )
    return path


def write_extract(path: Path, sites=("S01", "S02"), empty=(), seed=1) -> Path:
    """A small valid contract extract (simulated) whose episodes also carry the test notebooks'
    columns (month, value, kept as extra columns); `empty` sites keep their sites row only."""
    from analysis.simulate import simulate_collaborative

    simulate_collaborative(sites=len(sites), months=12, episodes_per_site_month=3, seed=seed).write(path)
    ep = pd.read_parquet(path / "episodes.parquet")
    ep = ep[~ep["site_id"].isin(empty)].reset_index(drop=True)
    rng = np.random.default_rng(seed)
    ep["month"] = np.arange(len(ep)) % 12
    ep["value"] = rng.normal(size=len(ep)).round(6)
    ep.to_parquet(path / "episodes.parquet", index=False)
    return path


def run(data, out, **kw):
    kw.setdefault("jobs", 2)
    kw.setdefault("site_notebook", SITE_NB)
    kw.setdefault("collaborative_notebook", COLL_NB)
    kw.setdefault("show_progress", False)
    kw.setdefault("compute_shared", None)
    kw.setdefault("kernel_preload", PRELOAD)
    kw.setdefault("validate", False)  # the tiny test extract is not a contract extract
    return render_batch(data, out, **kw)


@pytest.fixture
def stable_code(monkeypatch):
    """Other modules of the package may be edited while tests run: pin the code hash."""
    monkeypatch.setattr(batch, "code_fingerprint", lambda: "pinned-code-hash")


def statuses(result):
    return {r.report_id: r.status for r in result.reports}


# ---------------------------------------------------------------------------------------------
def test_data_fingerprint_is_per_site(tmp_path):
    d = write_data(tmp_path / "d")
    before = data_fingerprint(d)
    assert before.site_ids == ["S01", "S02", "S03"]
    ep = pd.read_csv(d / "episodes.csv")
    ep.loc[ep.site_id == "S02", "value"] += 1.0
    ep.to_csv(d / "episodes.csv", index=False)
    after = data_fingerprint(d)
    assert after.per_site["S02"] != before.per_site["S02"]
    assert after.per_site["S01"] == before.per_site["S01"]
    assert after.per_site["S03"] == before.per_site["S03"]
    assert after.total != before.total
    with pytest.raises(ValueError, match="no input tables"):
        data_fingerprint(tmp_path)


def test_bad_requests_raise_clear_errors(tmp_path):
    d = write_data(tmp_path / "d")
    with pytest.raises(ValueError, match="unknown site id"):
        run(d, tmp_path / "o", sites="S01,S99")
    with pytest.raises(ValueError, match="formats"):
        run(d, tmp_path / "o", formats="html,docx")
    with pytest.raises(ValueError, match="executor"):
        run(d, tmp_path / "o", executor="spark")
    with pytest.raises(ValueError, match="exclude each other"):
        run(d, tmp_path / "o", force=True, retry_failed=True)
    if shutil.which("xelatex") is None and shutil.which("quarto") is None:
        with pytest.raises(ValueError, match="PDF needs"):
            run(d, tmp_path / "o", formats="html,pdf")


# ---------------------------------------------------------------------------------------------
def test_kernel_threads_size_blas_pools_but_keep_the_callers_setting(tmp_path, monkeypatch):
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MKL_NUM_THREADS", "3")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import os\nprint([os.environ.get(v) for v in "
        "('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS')])")])
    with WarmKernel(preload=("os",), threads=1) as kernel:
        out = kernel.execute(nb, tmp_path)
    assert out.cells[0].outputs[0]["text"].strip() == "['1', '1', '3']"


def test_kernels_talk_over_ipc_and_print_no_tcp_warning(tmp_path, capfd):
    """ipykernel warns "Kernel is running over TCP without encryption" at every start over TCP;
    report kernels (warm ones and papermill's) use local IPC sockets instead."""
    from analysis import render
    from analysis.kernelpool import IpcKernelManager

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(6 * 7)")])
    log = tmp_path / "kernel.log"
    with WarmKernel(preload=("os",), log_path=str(log)) as kernel:
        assert kernel.km.transport == "ipc" and Path(kernel.km.ip).is_absolute()
        assert kernel.execute(nb, tmp_path / "w").cells[0].outputs[0]["text"] == "42\n"
    assert "without encryption" not in log.read_text()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "nb.ipynb")
    out = render.execute_notebook(tmp_path / "nb.ipynb", {}, tmp_path / "out.ipynb", cwd=tmp_path)
    assert out.cells[-1].outputs[0]["text"] == "42\n"
    captured = capfd.readouterr()
    assert "without encryption" not in captured.err + captured.out
    assert IpcKernelManager().transport == "ipc"


def test_warm_kernel_does_not_leak_site_a_into_site_b(tmp_path):
    """Render A then B on ONE warm kernel: B's namespace, figures, folder and HTML hold nothing of A."""
    d = write_data(tmp_path / "d", sites=("ALPHA", "BRAVO"))
    nb = nbformat.read(SITE_NB, as_version=4)
    probe = nbformat.v4.new_code_cell(
        "import matplotlib.pyplot as _p\n"
        "print('probe:', sorted(n for n in ('site_secret', 'only_in_alpha', 'plt', 'episodes')"
        " if n in globals()), len(_p.get_fignums()))"
    )
    with WarmKernel(log_path=str(tmp_path / "kernel.log"), preload=PRELOAD) as kernel:
        pid = kernel.pid
        nb_a = parameterize(nb, {"site_id": "ALPHA", "data_dir": str(d)})
        nb_a.cells.append(nbformat.v4.new_code_cell("only_in_alpha = 'ALPHA-ONLY-MARKER'\nplt.figure()"))
        out_a = kernel.execute(nb_a, tmp_path / "wa")
        nb_b = parameterize(nb, {"site_id": "BRAVO", "data_dir": str(d)})
        nb_b.cells.insert(0, probe)  # before anything of B's own runs
        out_b = kernel.execute(nb_b, tmp_path / "wb")
        assert kernel.pid == pid and kernel.reports_run == 2  # the same kernel process did both
        cwd = kernel.execute(
            nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import os; print(os.getcwd())")]),
            tmp_path / "wc",
        )
    text_a = json.dumps(out_a)
    text_b = json.dumps(out_b)
    assert "Hospital ALPHA" in text_a and "ALPHA-ONLY-MARKER" not in text_b
    assert "ALPHA" not in text_b  # no site name, secret or variable of A reaches B
    assert "probe: [] 0" in text_b  # namespace empty of A's names; no figure carried over
    assert "Hospital BRAVO" in text_b
    assert cwd.cells[0].outputs[0]["text"].strip() == str((tmp_path / "wc").resolve())
    html_b = tmp_path / "b.html"
    batch.export_html(out_b, html_b)
    assert "ALPHA" not in html_b.read_text() and "BRAVO" in html_b.read_text()


# ---------------------------------------------------------------------------------------------
def test_batch_renders_everything_then_no_change_run_starts_nothing(tmp_path, stable_code, monkeypatch, pool):
    d = write_data(tmp_path / "d")
    out = tmp_path / "run"
    calls = []

    def compute_shared(data_dir, shared_dir, run_key):  # stands in for analysis.reporting's hook
        calls.append(run_key)
        ep = pd.read_csv(Path(data_dir) / "episodes.csv")
        ep.groupby("site_id", as_index=False)["value"].mean().to_csv(
            Path(shared_dir) / "peer_means.csv", index=False
        )

    res = run(d, out, pool=pool, compute_shared=compute_shared)
    assert res.ok, res.summary()
    assert statuses(res) == {"collaborative": "ok", "site-S01": "ok", "site-S02": "ok", "site-S03": "ok"}
    assert res.shared_status == "computed" and len(calls) == 1  # once per run, not per report
    pub = out / "publish"
    for s in ("S01", "S02", "S03"):
        page = (pub / "sites" / f"{s}.html").read_text()
        assert f"Hospital {s}:" in page  # the site's own printed summary
        assert "Peer sites in shared artefacts: 3" in page  # read from <run>/internal/shared
        assert "data:image/png;base64" in page  # the seaborn figure, embedded
        assert "read_table(" not in page  # code hidden
        assert not any(f"Hospital {o}:" in page for o in {"S01", "S02", "S03"} - {s})
    # per-report isolated work folders, each with its own figure and executed notebook
    for rid in ("site-S01", "site-S02", "site-S03", "collaborative"):
        assert (out / "internal" / "work" / rid / "figure.png").is_file()
        assert (out / "internal" / "work" / rid / f"{rid}.ipynb").is_file()
    manifest = json.loads((pub / "manifest.json").read_text())
    assert manifest["summary"] == {"selected": 4, "rendered": 4, "up_to_date": 0, "failed": 0}
    assert manifest["versions"]["pandas"] == pd.__version__
    assert {"commit", "dirty"} <= set(manifest["git"])
    assert manifest["inputs"]["data_hash"] == data_fingerprint(d).total
    assert manifest["shared"]["status"] == "computed"
    assert set(manifest["reports"]) == {"collaborative", "site-S01", "site-S02", "site-S03"}
    for entry in manifest["reports"].values():
        assert entry["status"] == "ok" and entry["seconds"] > 0 and entry["key"]
    index = (pub / "index.html").read_text()
    for rel in ("sites/S01.html", "sites/S02.html", "sites/S03.html", "collaborative.html"):
        assert f'href="{rel}"' in index
        assert f'href="../publish/{rel}"' in (out / "internal" / "index.html").read_text()

    # Nothing changed: no worker, no kernel, no shared refit, a few seconds at most.
    def no_workers(*a, **k):
        raise AssertionError("a worker was started although nothing changed")

    monkeypatch.setattr(batch, "run_local", no_workers)
    monkeypatch.setattr(batch.LocalPool, "prestart", no_workers)
    t0 = time.perf_counter()
    again = run(d, out, compute_shared=compute_shared)
    assert time.perf_counter() - t0 < 5
    assert set(statuses(again).values()) == {"up-to-date"}
    assert again.ok and again.shared_status == "reused" and len(calls) == 1


def test_incremental_failure_isolation_and_retry_failed(tmp_path, stable_code, pool):
    d = write_data(tmp_path / "d", sites=("S01", "S02", "S03"), empty=("S03",))
    out = tmp_path / "run"
    first = run(d, out, collaborative=False, pool=pool)
    assert statuses(first) == {"site-S01": "ok", "site-S02": "ok", "site-S03": "failed"}
    assert not first.ok
    failed = first.failed[0]
    assert "no episodes for site S03" in failed.error
    kept = out / failed.executed_notebook
    assert kept.is_file() and "AssertionError" in kept.read_text()  # kept for debugging
    assert not (out / "publish" / "sites" / "S03.html").exists()
    assert "failed" in (out / "publish" / "index.html").read_text()
    # the public index says it failed, but neither links nor quotes the executed notebook
    assert ".ipynb" not in (out / "publish" / "index.html").read_text()
    assert "no episodes for site S03" not in (out / "publish" / "index.html").read_text()
    assert f'href="work/site-S03/site-S03.ipynb"' in (out / "internal" / "index.html").read_text()

    # Change only S02's rows, and give S03 data: --retry-failed renders S03 alone (S02 is stale
    # but left alone), a normal run then picks up S02 only.
    ep = pd.read_csv(d / "episodes.csv")
    ep.loc[ep.site_id == "S02", "value"] += 10
    extra = pd.DataFrame({"site_id": "S03", "month": range(12), "value": 1.0})
    pd.concat([ep, extra]).to_csv(d / "episodes.csv", index=False)
    s01_mtime = (out / "publish" / "sites" / "S01.html").stat().st_mtime_ns
    retry = run(d, out, collaborative=False, retry_failed=True, pool=pool)
    assert statuses(retry) == {"site-S01": "up-to-date", "site-S02": "skipped", "site-S03": "ok"}
    assert (out / "publish" / "sites" / "S03.html").is_file()
    normal = run(d, out, collaborative=False, pool=pool)
    assert statuses(normal) == {"site-S01": "up-to-date", "site-S02": "ok", "site-S03": "up-to-date"}
    assert (out / "publish" / "sites" / "S01.html").stat().st_mtime_ns == s01_mtime  # never rewritten
    manifest = json.loads((out / "publish" / "manifest.json").read_text())
    assert set(manifest["reports"]) == {"site-S01", "site-S02", "site-S03"}


@RENDERERS
def test_worker_killed_after_temp_write_leaves_no_final_file_and_next_run_repairs(
    tmp_path, stable_code, monkeypatch, pool, renderer
):
    d = write_data(tmp_path / "d")
    out = tmp_path / "run"
    monkeypatch.setenv(batch.FAULT_ENV, "exit-after-temp:site-S02")
    res = run(d, out, collaborative=False, pool=pool, renderer=renderer)
    assert res.renderer == renderer
    assert statuses(res) == {"site-S01": "ok", "site-S02": "failed", "site-S03": "ok"}
    assert "worker process died" in res.failed[0].error  # the others finished regardless
    assert not (out / "publish" / "sites" / "S02.html").exists()
    assert not [p for p in (out / "publish" / "sites").iterdir() if p.name.startswith(".")]  # temp removed
    old_s01 = (out / "publish" / "sites" / "S01.html").read_bytes()
    monkeypatch.setenv(batch.FAULT_ENV, "raise-after-temp:site-S01")
    res = run(d, out, collaborative=False, force=True, sites="S01", pool=pool, renderer=renderer)
    assert statuses(res) == {"site-S01": "failed"} and "injected fault" in res.failed[0].error
    assert (out / "publish" / "sites" / "S01.html").read_bytes() == old_s01  # previous complete report intact
    monkeypatch.delenv(batch.FAULT_ENV)
    fixed = run(d, out, collaborative=False, pool=pool, renderer=renderer)
    assert statuses(fixed) == {"site-S01": "ok", "site-S02": "ok", "site-S03": "up-to-date"}
    assert (out / "publish" / "sites" / "S02.html").is_file()


@RENDERERS
def test_run_killed_mid_publish_leaves_no_finished_looking_report(tmp_path, pool, renderer):
    """SIGKILL the whole run (process group) while a report sits in its temporary file."""
    d = write_data(tmp_path / "d", sites=("S01",))
    out = tmp_path / "run"
    code = (
        "from analysis.batch import render_batch\n"
        f"render_batch({str(d)!r}, {str(out)!r}, jobs=1, collaborative=False, show_progress=False,"
        f" compute_shared=None, validate=False, site_notebook={str(SITE_NB)!r}, kernel_preload={PRELOAD!r},"
        f" renderer={renderer!r})\n"
    )
    env = dict(os.environ, **{batch.FAULT_ENV: "hang-after-temp:site-S01"})
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True)
    try:
        deadline = time.time() + 180
        temp = []
        while time.time() < deadline and not temp and proc.poll() is None:
            time.sleep(0.2)
            temp = list((out / "publish" / "sites").glob(".S01.html.tmp-*")) if (out / "publish" / "sites").is_dir() else []
        assert temp, "the run never reached the publish step"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    assert not (out / "publish" / "sites" / "S01.html").exists()  # only a hidden temp file: not a report
    fixed = run(d, out, collaborative=False, pool=pool, renderer=renderer)
    assert statuses(fixed) == {"site-S01": "ok"}
    assert (out / "publish" / "sites" / "S01.html").is_file()
    assert not list((out / "publish" / "sites").glob(".*"))  # the stale temp was cleaned


def test_dask_executor_gives_identical_outputs(tmp_path, stable_code, pool):
    pytest.importorskip("distributed")
    d = write_data(tmp_path / "d", sites=("S01", "S02"))
    local = run(d, tmp_path / "local", collaborative=False, pool=pool)
    dask = run(d, tmp_path / "dask", collaborative=False, executor="dask", dask_processes=False, jobs=1)
    assert local.ok and dask.ok, dask.summary()
    for s in ("S01", "S02"):
        a = (tmp_path / "local" / "publish" / "sites" / f"{s}.html").read_bytes()
        b = (tmp_path / "dask" / "publish" / "sites" / f"{s}.html").read_bytes()
        assert a == b
    assert {r.report_id: r.key for r in local.reports} == {r.report_id: r.key for r in dask.reports}
    assert batch._KERNELS == {}  # the cluster's kernels were shut down


def test_workers_boot_while_shared_fits_are_computed(tmp_path, stable_code):
    """Without a caller's pool, the run's workers are started before the shared hook runs, so
    kernel start-up overlaps it; the workers then render the reports and are stopped."""
    import psutil

    def workers():  # this run's worker processes (other tests' pools may be alive too)
        return [k for k in psutil.Process().children(recursive=False)
                if k.pid not in before and "_local_worker_main" in " ".join(k.cmdline())]

    before = {k.pid for k in psutil.Process().children(recursive=False)}
    d = write_data(tmp_path / "d", sites=("S01", "S02"))
    seen = []

    def compute_shared(data_dir, shared_dir, run_key):
        seen.append(len(workers()))

    res = run(d, tmp_path / "run", jobs=2, compute_shared=compute_shared, collaborative=False)
    assert res.ok, res.summary()
    assert seen == [2]
    left = workers()
    psutil.wait_procs(left, timeout=10)
    assert not any(k.is_running() and k.status() != psutil.STATUS_ZOMBIE for k in left)


def test_shared_hook_gets_the_run_parameters_when_it_takes_them(tmp_path):
    got = []

    def with_parameters(data_dir, shared_dir, run_key, *, parameters=None):
        got.append(parameters)

    def without(data_dir, shared_dir, run_key):
        got.append("called")

    for hook in (with_parameters, without):
        status, *_ = batch._ensure_shared(tmp_path, tmp_path / hook.__name__, "k", True, hook,
                                          "key", {"as_of": "2019-06"})
        assert status == "computed"
    assert got == [{"as_of": "2019-06"}, "called"]


def test_cli_render_json_and_exit_status(tmp_path):
    d = write_extract(tmp_path / "d", sites=("S01", "S02"), empty=("S02",))
    out = tmp_path / "run"
    cmd = [str(BIN / "ipso"), "render", "--data", str(d), "--out", str(out), "--jobs", "1",
           "--no-collaborative", "--json", "--site-notebook", str(SITE_NB)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 1, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["counts"] == {"selected": 2, "rendered": 1, "up_to_date": 0, "failed": 1}
    assert summary["failed"][0]["report_id"] == "site-S02"
    assert Path(summary["index"]).is_file()
    bad = subprocess.run([*cmd, "--sites", "NOPE"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown site id" in bad.stdout


def test_chunks_are_guided_grouped_by_notebook_and_retried_alone():
    def task(rid, nb="site.ipynb", renderer="quarto"):
        return {"report_id": rid, "notebook": nb, "renderer": renderer}

    tasks = [task("collaborative", "coll.ipynb")] + [task(f"site-S{i:02d}") for i in range(1, 58)]
    q = batch.ChunkQueue(tasks, jobs=2)
    sizes = [len(c) for c in q.chunks()]
    assert sizes[0] == 1  # the collaborative report is never chunked with site reports
    assert max(sizes) == batch.QUARTO_CHUNK and sizes[1] == batch.QUARTO_CHUNK
    assert all(a >= b for a, b in zip(sizes[1:], sizes[2:]))  # chunks shrink towards the end
    assert sizes[-4:] == [1, 1, 1, 1] and sum(sizes) == 58
    # nbconvert has no per-call cost: one report per chunk
    assert {len(c) for c in batch.ChunkQueue([task("a", renderer="nbconvert")] * 9, 1).chunks()} == {1}
    q = batch.ChunkQueue([task(f"s{i}") for i in range(8)], jobs=1)
    first = q.next()
    assert [t["report_id"] for t in first] == ["s0", "s1", "s2", "s3"]
    q.retry_alone(first[1:3])
    assert [[t["report_id"] for t in q.next()] for _ in range(2)] == [["s1"], ["s2"]]


# ---------------------------------------------------------------------------------------------
# Quarto
def html_of(out, rel):
    return (out / "publish" / rel).read_text(encoding="utf-8")


@pytest.mark.quarto
@needs_quarto
def test_quarto_batch_records_version_time_and_links_only_produced_formats(tmp_path, stable_code, pool):
    from analysis import render

    d = write_data(tmp_path / "d", sites=("S01", "S02", "S03"))
    out = tmp_path / "run"
    res = run(d, out, renderer="quarto", pool=pool)
    assert res.ok and res.renderer == "quarto", res.summary()
    version = render.quarto_version()
    manifest = json.loads((out / "internal" / "manifest.json").read_text())
    assert manifest["renderer"] == {"name": "quarto", "version": version}
    assert manifest["versions"]["quarto"] == version
    assert f"quarto {version}" in (out / "publish" / "index.html").read_text()
    for rid, entry in manifest["reports"].items():
        # the Quarto step is part of each report's time
        assert entry["export_seconds"] > 0 and entry["execute_seconds"] > 0
        assert entry["seconds"] == pytest.approx(entry["execute_seconds"] + entry["export_seconds"], abs=0.01)
        executed = nbformat.read(out / entry["executed_notebook"], as_version=4)
        injected = next(c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", []))
        assert f'renderer = "quarto {version}"' in injected.source  # what the footer states
    for rel in ("sites/S01.html", "sites/S02.html", "sites/S03.html", "collaborative.html"):
        page = html_of(out, rel)
        assert 'content="ipso-analysis via quarto"' in page  # reports/_quarto.yml was applied
        assert ".pdf" not in page and "Other Formats" not in page  # no PDF made: no link to one
        assert render.external_references(page) == []
    assert not list((out / "internal" / "quarto").iterdir())  # staging removed after publishing

    both = run(d, out, renderer="quarto", pool=pool, formats="html,pdf", sites="S01")
    assert both.ok, both.summary()
    for html_rel, pdf in (("sites/S01.html", "S01.pdf"), ("collaborative.html", "collaborative.pdf")):
        page = html_of(out, html_rel)
        assert re.findall(r'href="([^"]+\.pdf)"', page) == [pdf]  # the published name, beside it
        assert (out / "publish" / html_rel).with_name(pdf).read_bytes()[:5] == b"%PDF-"


def failing_in_quarto_notebook(tmp_path: Path, bad_site: str) -> Path:
    """The test site notebook plus a cell whose Markdown output is front matter Quarto can't
    parse (a YAMLException), for `bad_site` only: it executes fine, Quarto fails on it."""
    nb = nbformat.read(SITE_NB, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(
        "from IPython.display import Markdown, display\n"
        f"if site_id == {bad_site!r}:\n"
        "    display(Markdown(\"---\\ntitle: 'unclosed\\nfoo: [1, 2\\n---\\n\"))\n"))
    path = tmp_path / "site_report_quarto_fails.ipynb"
    nbformat.write(nb, path)
    return path


@pytest.mark.quarto
@needs_quarto
def test_quarto_failure_of_one_report_does_not_stop_the_others(tmp_path, stable_code, pool):
    d = write_data(tmp_path / "d", sites=("S01", "S02", "S03", "S04", "S05", "S06", "S07", "S08"))
    out = tmp_path / "run"
    nb = failing_in_quarto_notebook(tmp_path, "S02")
    res = run(d, out, renderer="quarto", pool=pool, collaborative=False, site_notebook=nb)
    assert statuses(res) == {f"site-S0{i}": "failed" if i == 2 else "ok" for i in range(1, 9)}
    err = res.failed[0].error
    assert err.startswith("Quarto:") and "YAML" in err  # Quarto's own message, in the manifest
    manifest = json.loads((out / "internal" / "manifest.json").read_text())
    assert "YAML" in manifest["reports"]["site-S02"]["error"]
    assert not (out / "publish" / "sites" / "S02.html").exists()
    for s in ("S01", "S03", "S08"):
        assert f"Hospital {s}:" in html_of(out, f"sites/{s}.html")


@pytest.mark.quarto
@needs_quarto
def test_quarto_worker_dying_mid_chunk_fails_only_the_report_it_died_on(tmp_path, stable_code, monkeypatch):
    d = write_data(tmp_path / "d", sites=("S01", "S02", "S03", "S04"))
    out = tmp_path / "run"
    # one worker: the first chunk is [S01, S02]; the worker dies publishing S01, before S02
    monkeypatch.setenv(batch.FAULT_ENV, "exit-after-temp:site-S01")
    res = run(d, out, renderer="quarto", jobs=1, collaborative=False)
    assert statuses(res) == {"site-S01": "failed", "site-S02": "ok", "site-S03": "ok", "site-S04": "ok"}
    assert "worker process died" in res.failed[0].error
    assert not (out / "publish" / "sites" / "S01.html").exists()
    assert not [p for p in (out / "publish" / "sites").iterdir() if p.name.startswith(".")]

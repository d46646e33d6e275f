"""Runs that survive faults, inputs that can't escape, and --plan (issue 14, items 4 and 5).

kill -9 at each stage of ``ipso render`` (shared fits, slice writing, mid-report, mid-publish,
manifest and index writes), then a plain run repairs the folder; a corrupt shared item behind a
matching stamp is recomputed; two runs on one folder; an invalid extract; kernel connection files
on every way out; hostile site ids, report ids and run names; the plan option. All on the tiny
test notebooks of test_batch (a few seconds per run).
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from analysis import batch, privacy, render
from analysis.batch import LocalPool, render_batch
from analysis.kernelpool import KERNEL_DIR_PREFIX

from test_batch import BIN, COLL_NB, PRELOAD, SITE_NB, write_data, write_extract

pytestmark = pytest.mark.xdist_group("faults")


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    with LocalPool(2, {"preload": list(PRELOAD)}, tmp_path_factory.mktemp("logs")) as p:
        yield p


@pytest.fixture
def stable_code(monkeypatch):
    monkeypatch.setattr(batch, "code_fingerprint", lambda: "pinned-code-hash")


def shared_hook(data_dir, shared_dir, run_key):
    """Stands in for analysis.reporting.compute_shared: a fit file and one slice per site."""
    ep = pd.read_csv(Path(data_dir) / "episodes.csv")
    ep.groupby("site_id", as_index=False)["value"].mean().to_csv(Path(shared_dir) / "peer_means.csv",
                                                                 index=False)
    (Path(shared_dir) / "site_runs").mkdir()
    for sid, rows in ep.groupby("site_id"):
        with privacy.confined_path(Path(shared_dir) / "site_runs", f"{sid}.pkl").open("wb") as fh:
            pickle.dump(rows, fh)


def run(data, out, **kw):
    kw.setdefault("jobs", 2)
    kw.setdefault("site_notebook", SITE_NB)
    kw.setdefault("collaborative_notebook", COLL_NB)
    kw.setdefault("show_progress", False)
    kw.setdefault("compute_shared", shared_hook)
    kw.setdefault("kernel_preload", PRELOAD)
    kw.setdefault("validate", False)
    return render_batch(data, out, **kw)


def statuses(result):
    return {r.report_id: r.status for r in result.reports}


def assert_consistent(out: Path) -> None:
    """The published folder after a repair: every report the public manifest lists as ok exists,
    the index links only files under publish/ that exist, nothing temporary or internal is there,
    and the shared folder verifies."""
    pub = out / "publish"
    manifest = json.loads((pub / "manifest.json").read_text())
    for rid, e in manifest["reports"].items():
        assert e["status"] in ("ok", "up-to-date"), (rid, e)
        for rel in e["outputs"].values():
            assert (pub / rel).is_file(), rel
    index = (pub / "index.html").read_text()
    import re

    for href in re.findall(r'href="([^"]+)"', index):
        assert not href.startswith(("/", "..")) and "internal" not in href, href
        assert (pub / href).is_file(), href
    leftovers = [p for p in out.rglob("*") if p.name.startswith(".") and batch.TMP_MARK in p.name]
    assert leftovers == []
    assert not list((out / "internal").glob(".shared.*"))
    assert {p.suffix for p in pub.rglob("*") if p.is_file()} <= {".html", ".json"}
    assert batch.verify_shared(out / "internal" / "shared") is None


# ---------------------------------------------------------------------------------------------
# kill -9 at any point: the next plain run repairs the folder
def slow_shared_hook_source(reached: Path) -> str:
    """A shared hook (as source for the child) that writes one slice, signals, and hangs: a kill
    while site slices are being written."""
    return (
        "import pickle, time\n"
        "from pathlib import Path\n"
        "def hook(data_dir, shared_dir, run_key):\n"
        "    (Path(shared_dir) / 'site_runs').mkdir()\n"
        "    (Path(shared_dir) / 'site_runs' / 'S01.pkl').write_bytes(b'')\n"
        f"    Path({str(reached)!r}).write_text('slices')\n"
        "    time.sleep(3600)\n"
    )


STAGES = [
    ("slices", None),                           # inside the shared hook, mid-way through the slices
    ("shared", "hang-shared:run"),              # fits written, before checksums and rename
    ("swap", "hang-swap:run"),                  # between the two renames
    ("execute", "hang-execute:site-S02"),       # mid-report
    ("publish", "hang-after-temp:site-S02"),    # a report in its temporary file
    ("manifest", "hang-manifest:run"),          # during a manifest write
    ("index", "hang-index:run"),                # during the public index write
]


def killed_run(tmp_path: Path, d: Path, out: Path, stage: str, fault: str | None,
               renderer: str = "nbconvert", force: bool = False) -> None:
    reached = tmp_path / f"reached-{stage}"
    hook = "hook" if fault is None else "shared_hook"
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from analysis.batch import render_batch\n"
        "from test_faults import shared_hook\n"
        + (slow_shared_hook_source(reached) if fault is None else "")
        + f"render_batch({str(d)!r}, {str(out)!r}, jobs=1, show_progress=False, validate=False,"
        f" compute_shared={hook}, site_notebook={str(SITE_NB)!r}, collaborative=False,"
        f" kernel_preload={PRELOAD!r}, renderer={renderer!r}, force={force!r})\n"
    )
    env = dict(os.environ, **{batch.FAULT_REACHED_ENV: str(reached)})
    env.pop(batch.FAULT_ENV, None)
    if fault:
        env[batch.FAULT_ENV] = fault
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not reached.exists() and proc.poll() is None:
            time.sleep(0.1)
        assert reached.exists(), f"the run never reached stage {stage}: {proc.stderr.read()[-2000:]!r}"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


@pytest.mark.parametrize("stage, fault", STAGES, ids=[s for s, _ in STAGES])
def test_kill_9_at_each_stage_then_a_plain_run_repairs(tmp_path, stable_code, pool, stage, fault):
    d = write_data(tmp_path / "d", sites=("S01", "S02"))
    out = tmp_path / "run"
    if stage in ("shared", "swap", "slices"):  # a complete earlier run: the kill hits a re-run
        assert run(d, out, pool=pool, collaborative=False).ok
        ep = pd.read_csv(d / "episodes.csv")
        ep.loc[ep.site_id == "S01", "value"] += 1  # new data: the shared fits are recomputed
        ep.to_csv(d / "episodes.csv", index=False)
    killed_run(tmp_path, d, out, stage, fault)
    fixed = run(d, out, pool=pool, collaborative=False)
    assert fixed.ok, fixed.summary()
    assert set(statuses(fixed).values()) <= {"ok", "up-to-date"}
    assert_consistent(out)
    for s in ("S01", "S02"):  # the repaired reports read the repaired shared fits
        assert "Peer sites in shared artefacts: 2" in (out / "publish" / "sites" / f"{s}.html").read_text()


@pytest.mark.quarto
@pytest.mark.skipif(render.find_quarto() is None, reason="needs the quarto CLI on PATH")
def test_kill_9_mid_publish_with_quarto_then_a_plain_run_repairs(tmp_path, stable_code, pool):
    d = write_data(tmp_path / "d", sites=("S01", "S02"))
    out = tmp_path / "run"
    killed_run(tmp_path, d, out, "publish", "hang-after-temp:site-S02", renderer="quarto")
    fixed = run(d, out, pool=pool, renderer="quarto", collaborative=False)
    assert fixed.ok, fixed.summary()
    assert_consistent(out)


def test_a_corrupt_shared_item_behind_a_matching_stamp_is_recomputed(tmp_path, stable_code, pool):
    """A kill -9 used to leave a 0-byte casemix.pkl behind a marker that still matched: every
    later run, --force included, failed every report. Now each file is checked against the
    checksum the stamp recorded before it is used."""
    d = write_data(tmp_path / "d")
    out = tmp_path / "run"
    assert run(d, out, pool=pool).ok
    shared = out / "internal" / "shared"
    stamp = json.loads((shared / batch.SHARED_STAMP).read_text())
    assert set(stamp["files"]) == {"peer_means.csv", "site_runs/S01.pkl", "site_runs/S02.pkl",
                                   "site_runs/S03.pkl"}
    (shared / "peer_means.csv").write_bytes(b"")  # partial: 0 bytes, stamp untouched
    assert batch.verify_shared(shared) == "peer_means.csv does not match its checksum (partial or corrupt)"
    forced = run(d, out, pool=pool, force=True)
    assert forced.shared_status == "repaired" and forced.ok, forced.summary()
    assert batch.verify_shared(shared) is None
    (shared / "site_runs" / "S02.pkl").unlink()  # missing
    plain = run(d, out, pool=pool)
    assert plain.shared_status == "repaired" and plain.ok
    assert_consistent(out)


# ---------------------------------------------------------------------------------------------
# one run at a time
def test_a_second_run_on_the_same_folder_exits_2_naming_the_first(tmp_path, stable_code, pool):
    d = write_extract(tmp_path / "d", sites=("S01",))
    out = tmp_path / "run"
    reached = tmp_path / "reached"
    code = (
        "from analysis.batch import render_batch\n"
        f"render_batch({str(d)!r}, {str(out)!r}, jobs=1, collaborative=False, show_progress=False,"
        f" validate=False, compute_shared=None, site_notebook={str(SITE_NB)!r},"
        f" kernel_preload={PRELOAD!r}, renderer='nbconvert')\n"
    )
    env = dict(os.environ, **{batch.FAULT_ENV: "hang-execute:site-S01", batch.FAULT_REACHED_ENV: str(reached)})
    first = subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 180
        while not reached.exists() and time.time() < deadline:
            time.sleep(0.1)
        assert reached.exists()
        with pytest.raises(render.RunLockedError, match=rf"in use by ipso render \(pid {first.pid}"):
            run(d, out, pool=pool, collaborative=False)
        t0 = time.perf_counter()
        with pytest.raises(render.RunLockedError, match="waited 1 s"):
            run(d, out, pool=pool, collaborative=False, wait=1)
        assert time.perf_counter() - t0 >= 1
        cli = subprocess.run([str(BIN / "ipso"), "render", "--data", str(d), "--out", str(out),
                              "--no-collaborative", "--site-notebook", str(SITE_NB)],
                             capture_output=True, text=True, timeout=120)
        assert cli.returncode == 2 and "is in use by ipso render" in cli.stdout + cli.stderr
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    # the lock died with its holder: the next run takes it and repairs the folder
    again = run(d, out, pool=pool, collaborative=False, compute_shared=None)
    assert again.ok and statuses(again) == {"site-S01": "ok"}


# ---------------------------------------------------------------------------------------------
# the extract is validated once, before any work
def test_invalid_extract_exits_2_with_one_message_naming_file_and_column(tmp_path):
    d = write_extract(tmp_path / "d")
    ep = pd.read_parquet(d / "episodes.parquet").drop(columns=["time_zero"])
    ep.to_parquet(d / "episodes.parquet", index=False)
    out = tmp_path / "run"
    proc = subprocess.run([str(BIN / "ipso"), "render", "--data", str(d), "--out", str(out),
                           "--site-notebook", str(SITE_NB), "--collaborative-notebook", str(COLL_NB)],
                          capture_output=True, text=True, timeout=120)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2, text
    assert "episodes.parquet" in text and "time_zero" in text
    assert text.count("data contract error") == 1  # one message, not one per report
    assert not out.exists()  # refused before any work


# ---------------------------------------------------------------------------------------------
# kernel connection files on every way out
def kernel_dirs_in(tmp: Path) -> list[Path]:
    return sorted(tmp.glob(f"{KERNEL_DIR_PREFIX}*"))


def child_run(d: Path, out: Path, tmp: Path, fault: str | None = None, reached: Path | None = None):
    code = (
        "from analysis.batch import render_batch\n"
        f"render_batch({str(d)!r}, {str(out)!r}, jobs=1, show_progress=False, validate=False,"
        f" compute_shared=None, site_notebook={str(SITE_NB)!r}, collaborative=False,"
        f" kernel_preload={PRELOAD!r}, renderer='nbconvert')\n"
    )
    env = dict(os.environ, TMPDIR=str(tmp))
    env.pop(batch.FAULT_ENV, None)
    if fault:
        env[batch.FAULT_ENV] = fault
        env[batch.FAULT_REACHED_ENV] = str(reached)
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def kernel_processes(tmp: Path) -> list[int]:
    import psutil

    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(str(tmp) in a for a in (p.info["cmdline"] or [])):
                out.append(p.pid)
        except psutil.Error:
            continue
    return out


@pytest.mark.parametrize("way_out", ["normal, after a worker died", "SIGTERM", "KeyboardInterrupt"])
def test_kernel_connection_files_are_removed_on_every_way_out(tmp_path, way_out):
    d = write_data(tmp_path / "d", sites=("S01", "S02"))
    tmp = Path(tempfile.mkdtemp(prefix="ik", dir="/tmp"))  # short: socket paths <= 107 bytes
    reached = tmp_path / "reached"
    try:
        if way_out.startswith("normal"):  # the run ends normally; one of its workers died in it
            proc = child_run(d, tmp_path / "run", tmp, "exit-after-temp:site-S02", reached)
            proc.wait(timeout=240)
            manifest = json.loads((tmp_path / "run" / "internal" / "manifest.json").read_text())
            assert "worker process died" in manifest["reports"]["site-S02"]["error"]
            assert manifest["reports"]["site-S01"]["status"] == "ok"
        else:
            proc = child_run(d, tmp_path / "run", tmp, "hang-execute:site-S02", reached)
            deadline = time.time() + 240
            while not reached.exists() and time.time() < deadline:
                time.sleep(0.1)
            assert reached.exists(), proc.stderr.read()[-2000:]
            assert kernel_dirs_in(tmp)  # the kernels are up, their files exist
            proc.send_signal(signal.SIGTERM if way_out == "SIGTERM" else signal.SIGINT)
            code = proc.wait(timeout=60)
            assert code != 0
        deadline = time.time() + 10  # a killed worker's kernel notices within a second or two
        while (kernel_dirs_in(tmp) or kernel_processes(tmp)) and time.time() < deadline:
            time.sleep(0.2)
        assert kernel_dirs_in(tmp) == [] and kernel_processes(tmp) == []
    finally:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# inputs can't escape
def test_hostile_site_id_reaching_the_batch_directly_writes_nothing_outside(tmp_path, monkeypatch):
    """`../../../x` in sites.csv once made the batch write a patient-level pickle outside the run
    folder. The validator now quarantines it; with the validator bypassed, the one path helper
    still refuses it."""
    from analysis import contract, reporting

    hostile = "../../../x"
    d = write_data(tmp_path / "deep" / "er" / "d", sites=("S01", hostile))
    out = tmp_path / "deep" / "er" / "run"
    monkeypatch.setattr(contract, "is_valid_site_id", lambda value: True)  # a validator bug
    with pytest.raises(privacy.UnsafePathError):
        run(d, out, sites="all")
    with pytest.raises(privacy.UnsafePathError):
        run(d, out, sites="S01", compute_shared=shared_hook, collaborative=False)
    # the real slice writer: one file per site of the data, selected or not
    part = reporting.load_run(None, simulate={"sites": 2, "months": 6, "episodes_per_site_month": 2})
    sites = part.sites.copy()
    sites.loc[1, "site_id"] = hostile
    part = reporting.RunData(**{**part.__dict__, "sites": sites})
    monkeypatch.setattr(reporting, "source_fingerprint", lambda data_dir: "x")
    with pytest.raises(privacy.UnsafePathError):
        reporting.write_site_slices(part, d, out / "internal" / "shared")
    assert not list(tmp_path.rglob("x.pkl")) and not (tmp_path / "x").exists()
    assert not list(tmp_path.rglob("x.html"))


def test_hostile_report_ids_and_outputs_in_a_task_are_refused(tmp_path):
    out = tmp_path / "a" / "b" / "run"
    base = {"notebook": str(SITE_NB), "parameters": {}, "key": "k", "out_dir": str(out),
            "outputs": {"html": "sites/S01.html"}, "renderer": "nbconvert", "work_dir": str(out)}
    for task in (dict(base, report_id="../../../x"),
                 dict(base, report_id="site-S01", outputs={"html": "../../../x.html"}),
                 dict(base, report_id="site-S01", outputs={"html": "/tmp/x.html"})):
        res = batch.render_tasks([task], kernel=object())
        assert res[0]["status"] == "failed" and res[0]["error"].startswith("refused:")
    assert not (tmp_path / "x").exists() and not (tmp_path / "a" / "x.html").exists()


@pytest.mark.parametrize("name", ["../../evil", "/tmp/evil-run", "a/b", ".."])
def test_hostile_run_names_exit_2_and_write_nothing(tmp_path, name):
    proc = subprocess.run([str(BIN / "ipso"), "report", "collaborative", "--out", str(tmp_path / "r"),
                           "--run", name], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "not a plain file or folder name" in proc.stdout + proc.stderr
    assert not (tmp_path / "r").exists() and not (tmp_path / "evil").exists()


# ---------------------------------------------------------------------------------------------
# --plan
BAD_PLAN = """extends: default
overrides:
  - estimand: sam30
    level: collaborative
    spec: its_multisite
    transition: -3
"""


def test_a_bad_plan_exits_2_naming_estimand_and_field_before_any_work(tmp_path):
    plan = tmp_path / "plan.yml"
    plan.write_text(BAD_PLAN)
    for cmd in (["render", "--data", str(tmp_path), "--out", str(tmp_path / "r")],
                ["report", "collaborative", "--out", str(tmp_path / "r")]):
        proc = subprocess.run([str(BIN / "ipso"), *cmd, "--plan", str(plan)], capture_output=True,
                              text=True, timeout=120)
        text = proc.stdout + proc.stderr
        assert proc.returncode == 2, text
        assert "sam30" in text and "transition" in text, text
        assert not (tmp_path / "r").exists()


def plan_notebook(tmp_path: Path) -> Path:
    """The test site notebook with a ``plan`` parameter it prints."""
    nb = nbformat.read(SITE_NB, as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    params.source += "\nplan = None"
    nb.cells.append(nbformat.v4.new_code_cell("print('plan file:', Path(plan).name if plan else None)"))
    path = tmp_path / "site_with_plan.ipynb"
    nbformat.write(nb, path)
    return path


def test_plan_reaches_the_notebooks_and_the_shared_step_and_its_content_keys_the_reports(
        tmp_path, stable_code, pool):
    d = write_data(tmp_path / "d", sites=("S01",))
    out = tmp_path / "run"
    nb = plan_notebook(tmp_path)
    a = tmp_path / "a.yml"
    a.write_text("extends: default\noverrides: []\n")
    got = []

    def hook(data_dir, shared_dir, run_key, *, parameters=None):
        got.append((parameters or {}).get("plan"))

    first = run(d, out, pool=pool, collaborative=False, site_notebook=nb, plan=a, compute_shared=hook)
    assert first.ok and got == [str(a.resolve())]
    assert "plan file: a.yml" in (out / "publish" / "sites" / "S01.html").read_text()
    same = tmp_path / "same.yml"  # the same plan elsewhere: nothing to render
    same.write_text(a.read_text())
    assert set(statuses(run(d, out, pool=pool, collaborative=False, site_notebook=nb, plan=same,
                            compute_shared=hook)).values()) == {"up-to-date"}
    b = tmp_path / "b.yml"  # another plan: the report is rendered again
    b.write_text("extends: default\noverrides:\n  - estimand: sam30\n    level: collaborative\n"
                 "    spec: its_multisite\n    transition: 3\n")
    again = run(d, out, pool=pool, collaborative=False, site_notebook=nb, plan=b, compute_shared=hook)
    assert statuses(again) == {"site-S01": "ok"}
    assert "plan file: b.yml" in (out / "publish" / "sites" / "S01.html").read_text()
    manifest = json.loads((out / "publish" / "manifest.json").read_text())
    assert manifest["inputs"]["plan_hash"] and "plan" not in manifest["parameters"]

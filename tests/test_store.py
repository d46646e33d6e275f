"""Ingest into the analysis-ready store, load_collaborative, atomic writes and the CLI
(`ipso validate` / `ipso ingest` with --json, exit status 2 on contract errors)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from analysis.derive import DERIVED_COLUMNS
from analysis.settings import DEFAULT_SETTINGS
from analysis.store import (
    SITE_COLUMNS,
    Collaborative,
    collaborative_from_frames,
    ingest,
    is_store,
    load_collaborative,
    write_store,
)
from analysis.validate import DataContractError

GOOD = Path(__file__).resolve().parents[1] / "data" / "fixtures" / "good"
IPSO = str(Path(sys.executable).parent / "ipso")
STORE_FILES = {"episodes.parquet", "sites.parquet", "site_months.parquet", "quarantine.csv", "summary.json"}


def corrupted(tmp_path: Path) -> Path:
    """The good fixture with two bad episode rows (rows 2 and 5) and one bad site-month (row 3)."""
    d = tmp_path / "bad_extract"
    shutil.copytree(GOOD, d)
    ep = pd.read_csv(d / "episodes.csv", dtype=str, keep_default_na=False)
    ep.loc[1, "age_years"] = "150"
    ep.loc[4, ["sex", "time_zero"]] = ["?", "20/12/2016"]
    ep.to_csv(d / "episodes.csv", index=False)
    sm = pd.read_csv(d / "site_months.csv", dtype=str, keep_default_na=False)
    sm.loc[2, "admissions"] = "-3"
    sm.to_csv(d / "site_months.csv", index=False)
    return d


def test_ingest_writes_a_complete_store(tmp_path):
    out = tmp_path / "store"
    coll = ingest(GOOD, out)
    assert {p.name for p in out.iterdir()} == STORE_FILES
    assert is_store(out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"] == DEFAULT_SETTINGS.to_dict()
    for name, digest in summary["input_sha256"].items():
        assert digest == hashlib.sha256((GOOD / name).read_bytes()).hexdigest()
    ep = pd.read_parquet(out / "episodes.parquet")
    assert set(DERIVED_COLUMNS) | set(SITE_COLUMNS) <= set(ep.columns)
    assert len(ep) == 12 and coll.data_hash == summary["data_hash"]
    sm = pd.read_parquet(out / "site_months.parquet")
    assert sm["month"].dtype == "datetime64[ns]" and (sm["month"].dt.day == 1).all()


def test_store_and_raw_extract_load_identically(tmp_path):
    ingest(GOOD, tmp_path / "store")
    a = load_collaborative(tmp_path / "store")
    b = load_collaborative(GOOD)
    assert isinstance(a, Collaborative)
    assert a.data_hash == b.data_hash
    pd.testing.assert_frame_equal(a.episodes, b.episodes)
    pd.testing.assert_frame_equal(a.sites, b.sites)
    pd.testing.assert_frame_equal(a.site_months, b.site_months)
    assert a.source == str(tmp_path / "store") and b.source == str(GOOD)


def test_derived_values_hand_checked():
    ep = load_collaborative(GOOD).episodes.set_index("episode_id")
    # T0 more than 48 h after arrival: E0002 (56.4 h), E0006 (66 h), E0010 (72 h - 0.5 s)
    assert set(ep.index[ep.hospital_onset]) == {"E0002", "E0006", "E0010"}
    assert ep.loc["E0002", "hours_arrival_to_t0"] == pytest.approx(56 + 25 / 60)
    # E0001: bolus 25 min and antibiotic 70 min after T0; S01 goes live 2017-01 -> Dec 2016 is month -1
    assert ep.loc["E0001", "minutes_to_bolus"] == 25 and ep.loc["E0001", "minutes_to_antibiotic"] == 70
    assert ep.loc["E0001", "months_since_go_live"] == -1 and not ep.loc["E0001", "post"]
    # E0003 died at discharge 44 h 40 min after T0: in-hospital death within 3 days
    assert ep.loc["E0003", "sam3"] and ep.loc["E0003", "died_in_hospital"]
    # E0006 died 20.5 days after T0: SAM30 but not SAM3
    assert ep.loc["E0006", "sam30"] and not ep.loc["E0006", "sam3"]


def test_quarantine_round_trips_through_the_store(tmp_path):
    out = tmp_path / "store"
    coll = ingest(corrupted(tmp_path), out)
    s = coll.summary
    assert s["files"]["episodes"] | {"rules": None, "extra_columns": None} == {
        "file": "episodes.csv", "rows_read": 12, "rows_accepted": 10, "rows_quarantined": 2,
        "rules": None, "extra_columns": None}
    assert s["files"]["episodes"]["rules"] == {
        "out_of_range": 1, "unknown_category": 1, "unparseable_timestamp": 1}
    assert s["files"]["site_months"]["rules"] == {"out_of_range": 1}
    q = pd.read_csv(out / "quarantine.csv", dtype=str, keep_default_na=False)
    assert q[["file", "row", "key", "reasons"]].values.tolist() == [
        ["site_months.csv", "3", "S01|2017-02", "out_of_range"],
        ["episodes.csv", "2", "E0002", "out_of_range"],
        ["episodes.csv", "5", "E0005", "unknown_category;unparseable_timestamp"],
    ]
    assert q.loc[2, "time_zero"] == "20/12/2016" and q.loc[2, "sex"] == "?"
    loaded = load_collaborative(out)
    assert loaded.quarantine["row"].tolist() == [3, 2, 5]
    assert len(loaded.episodes) == 10


def test_other_settings_rederive(tmp_path):
    ingest(GOOD, tmp_path / "store")
    strict = DEFAULT_SETTINGS.with_(fluid_window_min=20.0, hospital_onset_hours=60.0)
    a = load_collaborative(tmp_path / "store", strict)
    b = load_collaborative(GOOD, strict)
    pd.testing.assert_frame_equal(a.episodes, b.episodes)
    assert a.settings == strict
    ep = a.episodes.set_index("episode_id")
    assert set(ep.index[ep.hospital_onset]) == {"E0006", "E0010"}  # 66 h and 72 h > 60 h
    assert not ep.loc["E0001", "fluid_60"]  # 25 min > 20 min


def test_write_is_atomic(tmp_path, monkeypatch):
    out = tmp_path / "store"
    ingest(GOOD, out)
    before = (out / "summary.json").read_text()
    coll = load_collaborative(GOOD)
    real = pd.DataFrame.to_parquet

    def boom(self, path, *a, **k):
        if Path(path).name == "site_months.parquet":
            raise OSError("disk full")
        return real(self, path, *a, **k)

    monkeypatch.setattr(pd.DataFrame, "to_parquet", boom)
    with pytest.raises(OSError):
        write_store(coll, out)
    with pytest.raises(OSError):
        write_store(coll, tmp_path / "fresh")
    monkeypatch.undo()
    assert (out / "summary.json").read_text() == before  # old store untouched
    assert not (tmp_path / "fresh").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]  # no temp leftovers


def test_refuses_to_overwrite_a_non_store(tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not an ipso store"):
        ingest(GOOD, out)
    assert (out / "notes.txt").read_text() == "keep me"


def test_fatal_error_writes_nothing(tmp_path):
    d = tmp_path / "extract"
    shutil.copytree(GOOD, d)
    pd.read_csv(d / "sites.csv", dtype=str).drop(columns="go_live").to_csv(d / "sites.csv", index=False)
    with pytest.raises(DataContractError):
        ingest(d, tmp_path / "store")
    assert not (tmp_path / "store").exists()


def test_simulated_collaborative_is_clean(tmp_path):
    simulate = pytest.importorskip("analysis.simulate")
    sim = simulate.simulate_collaborative(sites=4, months=12, episodes_per_site_month=8)
    sim.write(tmp_path / "sim")
    coll = load_collaborative(tmp_path / "sim")
    assert coll.quarantine.empty
    assert len(coll.episodes) == len(sim.episodes)
    assert coll.summary["rows_read"] == len(sim.episodes) + len(sim.sites) + len(sim.site_months)
    mem = collaborative_from_frames(sim.episodes, sim.sites, sim.site_months)
    assert mem.data_hash == coll.data_hash


# ---------------------------------------------------------------------------------------------
# CLI (console script)
def ipso(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([IPSO, *args], check=False, capture_output=True, text=True, timeout=120)


def test_cli_validate_json_and_quarantine(tmp_path):
    qfile = tmp_path / "q" / "quarantine.csv"
    res = ipso("validate", str(corrupted(tmp_path)), "--json", "--quarantine", str(qfile))
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["rows_read"] == 24 and summary["rows_quarantined"] == 3
    assert summary["rows_accepted"] == 21
    assert summary["rules"] == {"out_of_range": 2, "unknown_category": 1, "unparseable_timestamp": 1}
    assert len(pd.read_csv(qfile)) == 3


def test_cli_ingest_json(tmp_path):
    out = tmp_path / "store"
    res = ipso("ingest", str(GOOD), "--out", str(out), "--json")
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["rows_accepted"] == 24 and summary["store"] == str(out)
    assert {p.name for p in out.iterdir()} == STORE_FILES


def test_cli_contract_error_exits_2_and_writes_nothing(tmp_path):
    d = tmp_path / "extract"
    shutil.copytree(GOOD, d)
    ep = pd.read_csv(d / "episodes.csv", dtype=str, keep_default_na=False)
    ep.drop(columns="time_zero").to_csv(d / "episodes.csv", index=False)
    out, qfile = tmp_path / "store", tmp_path / "q.csv"
    for args in (("ingest", str(d), "--out", str(out), "--json"),
                 ("validate", str(d), "--quarantine", str(qfile), "--json")):
        res = ipso(*args)
        assert res.returncode == 2
        assert "episodes.csv" in res.stderr and "time_zero" in res.stderr
        assert res.stdout == ""
    assert not out.exists() and not qfile.exists()


def test_cli_garbage_parquet_exits_2(tmp_path):
    d = tmp_path / "extract"
    shutil.copytree(GOOD, d)
    (d / "sites.csv").unlink()
    (d / "sites.parquet").write_bytes(b"\x00\x01garbage" * 100)
    res = ipso("ingest", str(d), "--out", str(tmp_path / "store"))
    assert res.returncode == 2 and "sites.parquet" in res.stderr
    assert not (tmp_path / "store").exists()


# ---------------------------------------------------------------------------------------------
# the inputs that crashed `ipso ingest` (fuzz campaign of issue 14): now quarantined, no traceback
def _crash_inputs(tmp_path: Path) -> Path:
    """One extract with every crash cause: a count of 9.3e18 and one of 1e300, a stay of 316 years,
    a year-9999 discharge, extra columns named like the quarantine's own columns."""
    d = tmp_path / "crashers"
    shutil.copytree(GOOD, d)
    ep = pd.read_csv(d / "episodes.csv", dtype=str, keep_default_na=False)
    ep.loc[0, ["arrival_time", "time_zero"]] = ["1700-01-01T00:00:00", "1700-01-01T00:10:00"]
    ep.loc[1, "discharge_time"] = "9999-01-01T00:00:00"
    for c in ("file", "row", "key", "reasons", "details"):
        ep[c] = f"user {c}"
    ep.to_csv(d / "episodes.csv", index=False)
    sm = pd.read_csv(d / "site_months.csv", dtype=str, keep_default_na=False)
    sm.loc[0, "admissions"] = "9.3e18"
    sm.loc[1, "admissions"] = "1e300"
    sm["key"] = "user key"
    sm.to_csv(d / "site_months.csv", index=False)
    return d


def test_crash_inputs_are_quarantined_through_the_store(tmp_path):
    out = tmp_path / "store"
    res = ipso("ingest", str(_crash_inputs(tmp_path)), "--out", str(out), "--json")
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    summary = json.loads(res.stdout)
    assert summary["rows_read"] == 24 and summary["rows_quarantined"] == 4
    assert summary["rules"] == {"out_of_range": 2, "date_out_of_range": 1, "stay_too_long": 1}
    loaded = load_collaborative(out)
    q = loaded.quarantine.set_index(["file", "row"])
    assert q.loc[("episodes.csv", 1), "reasons"] == "stay_too_long"
    assert q.loc[("episodes.csv", 2), "reasons"] == "date_out_of_range"
    assert q.loc[("episodes.csv", 1), "input_key"] == "user key"  # the user's column, kept
    assert q.loc[("site_months.csv", 2), "input_key"] == "user key"
    assert (loaded.episodes["reasons"] == "user reasons").all() and len(loaded.episodes) == 10


def test_cli_clear_exit_2_for_a_utf16_file(tmp_path):
    d = tmp_path / "extract"
    shutil.copytree(GOOD, d)
    (d / "sites.csv").write_bytes((GOOD / "sites.csv").read_text().encode("utf-16"))
    for args in (("validate", str(d)), ("ingest", str(d), "--out", str(tmp_path / "store"))):
        res = ipso(*args)
        assert res.returncode == 2 and "Traceback" not in res.stderr
        assert "sites.csv" in res.stderr and "UTF-16" in res.stderr and "UTF-8" in res.stderr

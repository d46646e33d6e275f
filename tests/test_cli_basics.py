import subprocess
import sys
from pathlib import Path

import pytest

import analysis

BIN = Path(sys.executable).parent


def test_version_flag():
    out = subprocess.run([str(BIN / "ipso"), "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"ipso-analysis {analysis.__version__}"


def test_help_lists_commands():
    out = subprocess.run([str(BIN / "ipso"), "--help"], capture_output=True, text=True, check=True)
    for cmd in ("simulate", "validate", "ingest"):
        assert cmd in out.stdout


# ---------------------------------------------------------------------------------------------
# Bad arguments are refused before any work is done: exit status 2 and a message that names them.
def ipso(*args, cwd=None):
    return subprocess.run([str(BIN / "ipso"), *map(str, args)], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from analysis.simulate import simulate_collaborative

    d = tmp_path_factory.mktemp("tiny") / "data"
    simulate_collaborative(sites=3, months=4, episodes_per_site_month=2).write(d)
    return d


@pytest.mark.parametrize("data", ["default", "given"])
def test_report_site_refuses_an_unknown_site_at_once(tiny_data, tmp_path, data):
    extra = ["--data", tiny_data] if data == "given" else []
    proc = ipso("report", "site", "NOSUCHSITE", *extra, "--out", tmp_path / "r")
    assert proc.returncode == 2, proc.stderr
    assert "NOSUCHSITE" in proc.stderr and "unknown site id" in proc.stderr
    assert not (tmp_path / "r").exists()  # refused before any work: no run folder


@pytest.mark.parametrize("args, needle", [
    (["--as-of", "2016-13"], "--as-of"),
    (["--as-of", "June"], "--as-of"),
    (["--min-cell", "0"], "--min-cell"),
    (["--formats", "html,docx"], "--formats"),
])
def test_report_and_render_reject_bad_arguments_before_any_work(tiny_data, tmp_path, args, needle):
    for cmd in (["report", "site", "S01", "--data", tiny_data, "--out", tmp_path / "r"],
                ["report", "collaborative", "--data", tiny_data, "--out", tmp_path / "r"],
                ["render", "--data", tiny_data, "--out", tmp_path / "r"]):
        proc = ipso(*cmd, *args)
        assert proc.returncode == 2, (cmd, proc.stdout, proc.stderr)
        assert needle in proc.stderr and args[1] in proc.stderr, proc.stderr
        assert not (tmp_path / "r").exists()


def test_render_refuses_unknown_sites_before_hashing_the_data(tiny_data, tmp_path):
    proc = ipso("render", "--data", tiny_data, "--out", tmp_path / "r", "--sites", "S01,NOSUCH")
    assert proc.returncode == 2 and "NOSUCH" in proc.stderr and "unknown site id" in proc.stderr
    assert not (tmp_path / "r").exists()

import subprocess
import sys
from pathlib import Path

import analysis

BIN = Path(sys.executable).parent


def test_version_flag():
    out = subprocess.run([str(BIN / "ipso"), "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"ipso-analysis {analysis.__version__}"


def test_help_lists_commands():
    out = subprocess.run([str(BIN / "ipso"), "--help"], capture_output=True, text=True, check=True)
    for cmd in ("simulate", "validate", "ingest"):
        assert cmd in out.stdout

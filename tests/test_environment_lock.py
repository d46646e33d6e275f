"""The locked environment: pyproject.toml, requirements.lock and environment.yml agree."""

from __future__ import annotations

import importlib.util
import re
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_lock_tool():
    spec = importlib.util.spec_from_file_location("ipso_lock_tool", ROOT / "tools" / "lock.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_pyproject_lock_and_environment_agree():
    lock = load_lock_tool()
    assert lock.problems() == []
    pinned = lock.locked()
    # every direct dependency is pinned, every pin is hashed, the dev tools are locked too
    assert set(lock.direct_requirements()) <= set(pinned)
    assert all(n_hashes > 0 for _, n_hashes in pinned.values())
    assert {"pytest", "pytest-xdist", "ipykernel", "papermill", "nbconvert"} <= set(pinned)
    assert len(pinned) > len(lock.direct_requirements())  # transitive dependencies too


def test_the_check_catches_disagreements(tmp_path, monkeypatch):
    lock = load_lock_tool()
    text = lock.LOCK.read_text()
    bad = tmp_path / "requirements.lock"
    # pandas moved out of pyproject's range, and numpy's hashes dropped
    text = re.sub(r"^pandas==[^ ]+", "pandas==1.5.3", text, flags=re.MULTILINE)
    text = re.sub(r"(^numpy==[^ ]+) \\\n(\s+--hash=sha256:\w+ ?\\?\n)+", r"\1\n", text, flags=re.MULTILINE)
    bad.write_text(text)
    monkeypatch.setattr(lock, "LOCK", bad)
    found = "\n".join(lock.problems())
    assert "pandas==1.5.3 is outside" in found
    assert "environment.yml: pandas=" in found
    assert "numpy==" in found and "has no hash" in found


def test_this_environment_runs_the_locked_versions():
    """`make` installed .venv from the lock: the libraries that shape a report are the locked ones."""
    pinned = load_lock_tool().locked()
    for name in ("pandas", "numpy", "statsmodels", "lifelines", "matplotlib", "nbconvert", "papermill"):
        assert version(name) == pinned[name][0], name

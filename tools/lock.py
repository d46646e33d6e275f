"""Lock the Python environment: ``make lock`` (refresh) and the agreement check the tests run.

    python tools/lock.py            # re-resolve requirements.lock (keeps current pins when it can)
    python tools/lock.py --upgrade  # re-resolve everything to the newest allowed versions
    python tools/lock.py --check    # pyproject.toml, requirements.lock and environment.yml agree

``requirements.lock`` pins every Python dependency of ``pyproject.toml`` (with the ``dev`` extra),
direct and transitive, with SHA-256 hashes, for CPython 3.11 on Linux x86_64; ``make`` installs
from it with ``pip install --require-hashes``. It is resolved by ``uv pip compile``, installed into
a throw-away virtual environment (only the standard library and pip are needed here). Then the
conda-forge pins of ``environment.yml`` (between its ``# lock:start`` and ``# lock:end`` lines) are
rewritten to the same versions, so a conda environment runs the same library versions as the venv.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
PYPROJECT = ROOT / "pyproject.toml"
ENVIRONMENT = ROOT / "environment.yml"
PYTHON_VERSION = "3.11"
PLATFORM = "x86_64-manylinux_2_28"  # Linux x86_64, glibc >= 2.28
UV = "uv==0.13.9"
#: PyPI project -> [(conda-forge package, PyPI project whose locked version it gets)], where they
#: differ (dask[distributed] is two conda packages).
CONDA_NAMES = {"duckdb": [("python-duckdb", "duckdb")],
               "dask": [("dask", "dask"), ("distributed", "distributed")]}


def conda_packages(name: str) -> list[tuple[str, str]]:
    """conda-forge packages standing for the PyPI project `name`, each with its locked project."""
    return CONDA_NAMES.get(name, [(name, name)])
START, END = "# lock:start", "# lock:end"


def canonical(name: str) -> str:
    """PEP 503 normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def direct_requirements() -> dict[str, str]:
    """{name: version specifier} of pyproject's dependencies and its dev extra."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    reqs = list(project["dependencies"]) + list(project.get("optional-dependencies", {}).get("dev", []))
    out = {}
    for req in reqs:
        m = re.match(r"^\s*([A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*(.*)$", req)
        out[canonical(m.group(1))] = m.group(3).strip()
    return out


def locked() -> dict[str, tuple[str, int]]:
    """{name: (version, number of hashes)} of requirements.lock."""
    out: dict[str, tuple[str, int]] = {}
    name = None
    for line in LOCK.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==([^\s;\\]+)", line)
        if m:
            name = canonical(m.group(1))
            out[name] = (m.group(2), 0)
        elif name and "--hash=sha256:" in line:
            out[name] = (out[name][0], out[name][1] + 1)
    return out


def conda_pins() -> dict[str, str]:
    """{conda name: version} pinned with ``=`` in environment.yml's lock block."""
    text = ENVIRONMENT.read_text()
    block = text[text.index(START):text.index(END)]
    return {m.group(1): m.group(2) for m in re.finditer(r"^\s*-\s*([A-Za-z0-9_.-]+)\s*==?\s*([^\s#]+)",
                                                          block, re.MULTILINE)}


def conda_block(lock: dict[str, tuple[str, int]]) -> str:
    lines = [START + " (written by `make lock`: the versions of requirements.lock)"]
    for name in sorted(direct_requirements()):
        for conda, project in conda_packages(name):
            lines.append(f"  - {conda}={lock[project][0]}")
    lines.append("  " + END)
    return "\n".join(lines)


def problems() -> list[str]:
    """Disagreements between pyproject.toml, requirements.lock and environment.yml (empty: all agree)."""
    try:
        from packaging.specifiers import SpecifierSet
    except ImportError:  # a bare Python: pip's own copy
        from pip._vendor.packaging.specifiers import SpecifierSet

    lock = locked()
    conda = conda_pins()
    out = []
    for name, (version, hashes) in sorted(lock.items()):
        if hashes == 0:
            out.append(f"requirements.lock: {name}=={version} has no hash")
    for name, spec in sorted(direct_requirements().items()):
        if name not in lock:
            out.append(f"requirements.lock: {name} (pyproject.toml) is not pinned; run `make lock`")
            continue
        version = lock[name][0]
        if spec and version not in SpecifierSet(spec):
            out.append(f"requirements.lock: {name}=={version} is outside pyproject.toml's {spec}")
        for conda_name, project in conda_packages(name):
            want = lock.get(project, ("(not locked)",))[0]
            if conda.get(conda_name) != want:
                out.append(f"environment.yml: {conda_name}={conda.get(conda_name)} but the lock has {want}")
    if not re.search(rf"^\s*-\s*python={re.escape(PYTHON_VERSION)}\s*$", ENVIRONMENT.read_text(), re.MULTILINE):
        out.append(f"environment.yml: python must be pinned to {PYTHON_VERSION} (the lock's Python)")
    return out


def refresh(upgrade: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="ipso-lock-") as tmp:
        subprocess.run([sys.executable, "-m", "venv", tmp], check=True)
        subprocess.run([f"{tmp}/bin/python", "-m", "pip", "install", "--quiet", UV], check=True)
        cmd = [f"{tmp}/bin/uv", "pip", "compile", str(PYPROJECT), "--extra", "dev",
               "--generate-hashes", "--python-version", PYTHON_VERSION, "--python-platform", PLATFORM,
               "--annotation-style", "line", "--no-header", "--quiet", "--output-file", str(LOCK)]
        if upgrade:
            cmd.append("--upgrade")
        subprocess.run(cmd, check=True, cwd=ROOT)
    body = LOCK.read_text()
    LOCK.write_text(
        "# Every Python dependency of ipso-analysis (pyproject.toml + the dev extra), pinned with hashes\n"
        f"# for CPython {PYTHON_VERSION} on Linux x86_64. Installed by `make` with pip --require-hashes.\n"
        "# Do not edit: refresh with `make lock` (tools/lock.py; `make lock UPGRADE=1` to upgrade all).\n"
        + body)
    text = ENVIRONMENT.read_text()
    start = text.index(START)
    end = text.index(END) + len(END)
    ENVIRONMENT.write_text(text[:start] + conda_block(locked()) + text[end:])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only check that the three files agree")
    ap.add_argument("--upgrade", action="store_true", help="newest allowed versions of everything")
    args = ap.parse_args(argv)
    if not args.check:
        refresh(args.upgrade)
    found = problems()
    for p in found:
        print(p, file=sys.stderr)
    if not found:
        print(f"{LOCK.name}, pyproject.toml and environment.yml agree ({len(locked())} pinned packages)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())

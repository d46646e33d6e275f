"""The analysis-ready store and :func:`load_collaborative`, the entry point of every model and notebook.

A store is a directory of plain Parquet written by ``ipso ingest DIR --out STORE``::

    episodes.parquet     accepted episodes: contract columns (typed) + derived columns
                         (analysis.derive.DERIVED_COLUMNS) + site attachment (go_live, wave,
                         go_live_month, months_since_go_live, post)
    sites.parquet        accepted sites
    site_months.parquet  accepted site-months (month as Timestamp, first of month)
    quarantine.csv       rejected rows with every rule they failed (see data/README.md)
    summary.json         rows read/accepted/quarantined per file, counts per rule, settings used,
                         SHA-256 of every input file and data_hash of the accepted data

The store is written to a temporary sibling directory and renamed into place, so a crash never
leaves a half-written store.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from . import __version__
from .derive import DERIVED_COLUMNS, attach_sites, derive_episodes
from .settings import DEFAULT_SETTINGS, Settings
from .validate import DataContractError, ValidationResult, validate_collaborative, validate_frames

STORE_FORMAT_VERSION = 1
SUMMARY_FILE = "summary.json"
#: Columns added by :func:`analysis.derive.attach_sites`.
SITE_COLUMNS = ("go_live", "wave", "go_live_month", "months_since_go_live", "post")


@dataclass
class Collaborative:
    """A validated collaborative, ready for analysis.

    Attributes
    ----------
    episodes:
        Accepted episodes, typed, with derived columns and site attachment.
    sites, site_months:
        Accepted sites and site-months (``month`` a first-of-month Timestamp; ``admissions`` per month).
    quarantine:
        Rejected rows (``file``, ``row``, ``key``, ``reasons``, ``details``, raw values as strings).
    summary:
        Validation summary (counts per file and rule), settings and hashes.
    data_hash:
        Stable SHA-256 of the accepted contract columns (same data, same hash; CSV or Parquet).
    source:
        Where the data came from (store or extract directory, or ``"<memory>"``).
    """

    episodes: pd.DataFrame
    sites: pd.DataFrame
    site_months: pd.DataFrame
    quarantine: pd.DataFrame
    summary: dict
    data_hash: str
    source: str

    @property
    def settings(self) -> Settings:
        """The settings the derived columns were computed with."""
        return settings_from_dict(self.summary.get("settings", {}))

    def with_settings(self, settings: Settings) -> Collaborative:
        """A copy whose derived columns are recomputed with other `settings`."""
        episodes = _derive(_base_episodes(self.episodes), self.sites, settings)
        summary = {**self.summary, "settings": settings.to_dict()}
        return Collaborative(episodes, self.sites, self.site_months, self.quarantine, summary,
                             self.data_hash, self.source)


def settings_from_dict(d: dict) -> Settings:
    """Rebuild :class:`Settings` from :meth:`Settings.to_dict` output."""
    if not d:
        return DEFAULT_SETTINGS
    d = dict(d)
    if "sam_windows_days" in d:
        d["sam_windows_days"] = tuple(d["sam_windows_days"])
    return Settings(**d)


def _base_episodes(episodes: pd.DataFrame) -> pd.DataFrame:
    derived = set(DERIVED_COLUMNS) | set(SITE_COLUMNS)
    derived |= {c for c in episodes.columns if c.startswith("sam") and c[3:].isdigit()}
    return episodes.drop(columns=[c for c in episodes.columns if c in derived])


def _derive(episodes: pd.DataFrame, sites: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    return attach_sites(derive_episodes(episodes, settings), sites)


def collaborative_from_validation(
    result: ValidationResult, settings: Settings = DEFAULT_SETTINGS, source: str = "<memory>"
) -> Collaborative:
    """Turn a :class:`ValidationResult` into a :class:`Collaborative` (derive + attach sites)."""
    dropped = sorted(set(result.episodes.columns) & (set(DERIVED_COLUMNS) | set(SITE_COLUMNS)))
    episodes = _derive(result.episodes.drop(columns=dropped), result.sites, settings)
    summary = dict(result.summary)
    summary["settings"] = settings.to_dict()
    summary["store_format_version"] = STORE_FORMAT_VERSION
    summary["ipso_analysis_version"] = __version__
    # derived columns are never trusted from input: input columns with those names are replaced
    summary["replaced_input_columns"] = dropped
    return Collaborative(episodes, result.sites, result.site_months, result.quarantine, summary,
                         result.data_hash, source)


def collaborative_from_frames(
    episodes: pd.DataFrame,
    sites: pd.DataFrame,
    site_months: pd.DataFrame,
    settings: Settings = DEFAULT_SETTINGS,
) -> Collaborative:
    """Validate in-memory tables (e.g. from :func:`analysis.simulate.simulate_collaborative`)."""
    return collaborative_from_validation(validate_frames(episodes, sites, site_months), settings)


def is_store(path: str | Path) -> bool:
    """True when `path` is an analysis-ready store (has summary.json and episodes.parquet)."""
    path = Path(path)
    return (path / SUMMARY_FILE).is_file() and (path / "episodes.parquet").is_file()


def load_collaborative(path: str | Path, settings: Settings = DEFAULT_SETTINGS) -> Collaborative:
    """Load a store (directory with summary.json) or validate a raw extract directory in memory.

    Derived columns follow `settings`: a store ingested with other settings is re-derived.
    Raises :class:`DataContractError` on fatal problems with a raw extract.
    """
    path = Path(path)
    if is_store(path):
        summary = json.loads((path / SUMMARY_FILE).read_text())
        coll = Collaborative(
            episodes=pd.read_parquet(path / "episodes.parquet"),
            sites=pd.read_parquet(path / "sites.parquet"),
            site_months=pd.read_parquet(path / "site_months.parquet"),
            quarantine=pd.read_csv(path / "quarantine.csv", dtype=str, keep_default_na=False)
            .astype({"row": "int64"}),
            summary=summary,
            data_hash=summary["data_hash"],
            source=str(path),
        )
        if summary.get("settings") != settings.to_dict():
            coll = coll.with_settings(settings)
        return coll
    result = validate_collaborative(path)
    return collaborative_from_validation(result, settings, source=str(path))


def write_store(coll: Collaborative, out: str | Path) -> Path:
    """Write `coll` as a store at `out`, atomically (temporary sibling directory, then rename).

    An existing store at `out` is replaced; a non-empty directory that is not a store is refused.
    """
    out = Path(out)
    if out.exists() and not (out.is_dir() and (is_store(out) or not any(out.iterdir()))):
        raise ValueError(f"{out}: exists and is not an ipso store; refusing to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    os.chmod(tmp, 0o755)
    try:
        coll.episodes.to_parquet(tmp / "episodes.parquet", index=False)
        coll.sites.to_parquet(tmp / "sites.parquet", index=False)
        coll.site_months.to_parquet(tmp / "site_months.parquet", index=False)
        coll.quarantine.to_csv(tmp / "quarantine.csv", index=False)
        (tmp / SUMMARY_FILE).write_text(json.dumps(coll.summary, indent=2, default=str) + "\n")
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def ingest(directory: str | Path, out: str | Path, settings: Settings = DEFAULT_SETTINGS) -> Collaborative:
    """Validate the extract at `directory` and write the analysis-ready store to `out`."""
    coll = collaborative_from_validation(validate_collaborative(directory), settings, source=str(directory))
    write_store(coll, out)
    return coll


def run_ingest_command(directory: Path, out: Path, json_out: bool) -> None:
    """``ipso ingest DIR --out STORE [--json]``."""
    import typer

    from .console import console, print_json
    from .validate import fail, print_summary

    try:
        coll = ingest(directory, out)
    except DataContractError as exc:
        fail(exc, directory)
        return
    except ValueError as exc:
        console.print(f"[bold red]Error:[/] {exc}", highlight=False)
        raise typer.Exit(code=2)
    if json_out:
        print_json({**coll.summary, "store": str(out)})
    else:
        print_summary(coll.summary)
        console.print(f"Store written to {out}")

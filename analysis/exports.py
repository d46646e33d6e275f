"""Where a report's manuscript material is exported, and how files are written reproducibly.

A report run may export its figures and tables for a paper (:mod:`analysis.figures`,
:mod:`analysis.tables`) into an **export folder**: ``<export>/figures/<name>.{pdf,png,json}``
and ``<export>/tables/<name>.{csv,docx,tex,md,json}``. The folder is given explicitly, or by the
environment variable :data:`EXPORT_ENV` (``IPSO_EXPORT_DIR``) that a batch run or a notebook
parameter sets; with neither, nothing is exported (the report only displays).

Every file written here is reproducible byte for byte: JSON with sorted keys, Office (zip)
files with pinned timestamps and document properties (:func:`normalise_ooxml`), dates from
``SOURCE_DATE_EPOCH`` when it is set, else a fixed date (:data:`DEFAULT_EPOCH`): publishing the
same run twice gives identical files.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_EPOCH", "EXPORT_ENV", "FIGURES_DIR", "TABLES_DIR", "check_name", "normalise_ooxml",
    "pinned_datetime", "resolve_export_dir", "sha256_file", "source_date_epoch", "write_bytes",
    "write_json", "write_text",
]

#: Environment variable naming the export folder of a report run.
EXPORT_ENV = "IPSO_EXPORT_DIR"
FIGURES_DIR = "figures"
TABLES_DIR = "tables"
#: Date stamped into documents when ``SOURCE_DATE_EPOCH`` is not set: 2000-01-01 00:00 UTC
#: (a fixed date, so that a re-run gives the same bytes; it is not a publication date).
DEFAULT_EPOCH = 946684800
#: Stable names of exported items: lower-case letters, digits and hyphens (file stems, anchors).
_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")


def check_name(name: str, what: str = "item") -> str:
    """`name` when it is a stable export name (``[a-z0-9][a-z0-9-]*``, at most 64 characters);
    otherwise ``ValueError`` naming it (names become file names: no paths, no spaces)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"{what} name {name!r} must be lower-case letters, digits and hyphens "
                         "(at most 64 characters), e.g. 'primary-estimands'")
    return name


def resolve_export_dir(path: str | os.PathLike | None = None) -> Path | None:
    """The export folder: `path`, else ``$IPSO_EXPORT_DIR``, else None (no export)."""
    if path is not None and str(path) != "":
        return Path(path)
    env = os.environ.get(EXPORT_ENV, "").strip()
    return Path(env) if env else None


def source_date_epoch() -> int:
    """Seconds since 1970 of the date written into documents: ``$SOURCE_DATE_EPOCH`` when set
    (reproducible-builds convention), else :data:`DEFAULT_EPOCH`."""
    raw = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if raw:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"SOURCE_DATE_EPOCH must be an integer (seconds), got {raw!r}") from None
        if value < 315532800:  # zip files cannot hold dates before 1980
            raise ValueError(f"SOURCE_DATE_EPOCH must be 1980 or later, got {raw!r}")
        return value
    return DEFAULT_EPOCH


def pinned_datetime() -> _dt.datetime:
    """:func:`source_date_epoch` as an aware UTC datetime."""
    return _dt.datetime.fromtimestamp(source_date_epoch(), tz=_dt.timezone.utc)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` (parents created) through a temporary sibling and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """UTF-8 text with ``\\n`` line ends (no platform newline translation)."""
    return write_bytes(path, text.encode("utf-8"))


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys, two-space indent, UTF-8 characters kept, and a final newline."""
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False,
                      default=_json_default) + "\n"


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return o.as_posix()
    if hasattr(o, "item"):  # numpy scalars
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write `obj` as :func:`canonical_json` (same object, same bytes)."""
    return write_text(path, canonical_json(obj))


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_CORE_DATE = re.compile(
    rb"(<dcterms:(?:created|modified)[^>]*>)[^<]*(</dcterms:(?:created|modified)>)")
_LAST_PRINTED = re.compile(rb"<cp:lastPrinted>[^<]*</cp:lastPrinted>")


def normalise_ooxml(path: str | os.PathLike, *, properties: Mapping[str, str] | None = None) -> Path:
    """Make an Office Open XML file (.docx) reproducible in place: every zip entry gets the
    pinned date (:func:`pinned_datetime`) and fixed permissions, entries keep their order
    (``[Content_Types].xml`` first), and ``docProps/core.xml``'s created/modified dates are set
    to the pinned date (last-printed removed). `properties`: extra ``{xml tag: text}``
    replacements in core.xml (e.g. ``{"cp:revision": "1"}``)."""
    path = Path(path)
    when = pinned_datetime()
    stamp = when.strftime("%Y-%m-%dT%H:%M:%SZ").encode()
    date_time = when.timetuple()[:6]
    with zipfile.ZipFile(path) as zin:
        items = [(info.filename, zin.read(info.filename)) for info in zin.infolist()]
    out = []
    for name, data in items:
        if name == "docProps/core.xml":
            data = _CORE_DATE.sub(lambda m: m.group(1) + stamp + m.group(2), data)
            data = _LAST_PRINTED.sub(b"", data)
            for tag, text in (properties or {}).items():
                t = tag.encode()
                data = re.sub(rb"<" + re.escape(t) + rb">[^<]*</" + re.escape(t) + rb">",
                              b"<" + t + b">" + _xml_escape(text).encode() + b"</" + t + b">", data)
        out.append((name, data))
    import io

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zout:
        for name, data in out:
            info = zipfile.ZipInfo(name, date_time=date_time)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            info.create_system = 3  # unix, whatever the platform
            zout.writestr(info, data, compresslevel=6)
    return write_bytes(path, buf.getvalue())


def _xml_escape(text: str) -> str:
    return (str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;"))

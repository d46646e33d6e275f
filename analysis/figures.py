"""Report figures: shown once in the report, saved once for a journal.

:func:`register_figure` is the one place a report figure goes through. Given a matplotlib Figure,
a stable name, a caption and alt text, it

* displays it in the notebook as SVG with real text (the output scanner reads every label; the
  alt text is the SVG's ``<title>``), followed by its caption; and
* when the run has an export folder (:func:`analysis.exports.resolve_export_dir`: an argument,
  a notebook parameter or ``$IPSO_EXPORT_DIR``), saves it **once** as vector PDF and 300 dpi PNG
  under ``<export>/figures/<name>.pdf|.png`` with a sidecar ``<name>.json`` (caption, alt text,
  size, ``safe`` and ``provenance``).

Saved files are reproducible byte for byte (no creation dates, fixed producer strings, fixed SVG
hash salt; see :data:`analysis.plotting.DETERMINISTIC_RC`). ``safe`` says whether the figure may
be published: True only when it is drawn from the results store or from suppressed aggregates
(:func:`analysis.privacy.suppress`); ``provenance`` says what it is drawn from. ``ipso publish``
puts only safe figures that pass the output scan into a bundle.
"""

from __future__ import annotations

import html
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .exports import FIGURES_DIR, check_name, resolve_export_dir, write_bytes, write_json

__all__ = ["FIGURE_DPI", "FigureRecord", "FigureRegistry", "ReportFigure", "SvgFigure",
           "default_registry", "display_figure", "load_figure_records", "register_figure",
           "register_report_figure", "save_figure"]

#: Resolution of the PNG copy (journals ask for 300-600 dpi).
FIGURE_DPI = 300
#: Formats saved for every figure.
FIGURE_FORMATS = ("pdf", "png")
_PRODUCER = "ipso-analysis"
SIDECAR_SCHEMA = "ipso-figure/1"


@dataclass(frozen=True)
class FigureRecord:
    """A registered figure. ``files``: format -> file name (relative to the figures folder;
    empty when nothing was exported). Sizes in inches (after tight cropping)."""

    name: str
    caption: str
    alt: str
    safe: bool
    provenance: str
    files: dict[str, str] = field(default_factory=dict)
    width_in: float | None = None
    height_in: float | None = None
    dpi: int = FIGURE_DPI

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SIDECAR_SCHEMA, "name": self.name, "caption": self.caption,
                "alt": self.alt, "safe": bool(self.safe), "provenance": self.provenance,
                "files": dict(sorted(self.files.items())), "width_in": self.width_in,
                "height_in": self.height_in, "dpi": self.dpi}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FigureRecord:
        return cls(str(d["name"]), str(d.get("caption", "")), str(d.get("alt", "")),
                   bool(d.get("safe", False)), str(d.get("provenance", "")),
                   {str(k): str(v) for k, v in (d.get("files") or {}).items()},
                   d.get("width_in"), d.get("height_in"), int(d.get("dpi", FIGURE_DPI)))


@dataclass
class ReportFigure:
    """A drawn figure with everything :func:`register_report_figure` needs (what the producers
    of :mod:`analysis.estimate_plots` return)."""

    fig: Any
    name: str
    caption: str
    alt: str
    safe: bool
    provenance: str


def _check_text(value: Any, what: str, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"figure {name!r}: {what} is required (a non-empty sentence)")
    return " ".join(value.split())


def save_figure(fig, directory: str | os.PathLike, name: str, *, caption: str, alt: str,
                safe: bool, provenance: str) -> FigureRecord:
    """Save `fig` as ``<directory>/<name>.pdf`` (vector) and ``.png`` (:data:`FIGURE_DPI` dpi),
    both cropped tight, plus the sidecar ``<name>.json``; reproducible bytes. Does not close the
    figure. Returns the :class:`FigureRecord`."""
    import io

    import matplotlib.pyplot as plt

    from .plotting import DETERMINISTIC_RC

    check_name(name, "figure")
    caption = _check_text(caption, "a caption", name)
    alt = _check_text(alt, "alt text", name)
    if not isinstance(safe, bool):
        raise ValueError(f"figure {name!r}: safe must be True or False")
    directory = Path(directory)
    files: dict[str, str] = {}
    bbox = None
    with plt.rc_context(DETERMINISTIC_RC):
        for fmt in FIGURE_FORMATS:
            buf = io.BytesIO()
            if fmt == "pdf":
                meta = {"Creator": _PRODUCER, "Producer": _PRODUCER, "CreationDate": None,
                        "ModDate": None, "Title": caption[:200]}
                fig.savefig(buf, format="pdf", bbox_inches="tight", metadata=meta)
            else:
                fig.savefig(buf, format="png", dpi=FIGURE_DPI, bbox_inches="tight",
                            metadata={"Software": _PRODUCER, "Title": name})
                from PIL import Image

                with Image.open(io.BytesIO(buf.getvalue())) as im:
                    bbox = im.size
            write_bytes(directory / f"{name}.{fmt}", buf.getvalue())
            files[fmt] = f"{name}.{fmt}"
    width = round(bbox[0] / FIGURE_DPI, 3) if bbox else None
    height = round(bbox[1] / FIGURE_DPI, 3) if bbox else None
    record = FigureRecord(name, caption, alt, safe, " ".join(str(provenance).split()), files,
                          width, height)
    write_json(directory / f"{name}.json", record.to_dict())
    return record


def load_figure_records(directory: str | os.PathLike) -> list[FigureRecord]:
    """The figures exported to `directory` (their sidecar JSON files), in name order. A sidecar
    that cannot be read is skipped (the figure then is not published)."""
    import json

    out = []
    for p in sorted(Path(directory).glob("*.json")):
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
            if d.get("schema") == SIDECAR_SCHEMA:
                out.append(FigureRecord.from_dict(d))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out


# ---------------------------------------------------------------------------------------------
# display
class SvgFigure:
    """A figure as SVG text; displays as ``image/svg+xml`` in Jupyter, nbconvert and Quarto."""

    def __init__(self, data: str):
        self.data = data

    def _repr_svg_(self) -> str:
        return self.data


_SVG_OPEN = re.compile(r"<svg\b[^>]*>")


def _with_alt(svg: str, alt: str) -> str:
    """Put `alt` into the SVG as ``role="img"``, ``aria-label`` and a ``<title>`` element."""
    m = _SVG_OPEN.search(svg)
    if not m:
        return svg
    esc = html.escape(alt, quote=True)
    head = m.group(0)[:-1].rstrip("/") + f' role="img" aria-label="{esc}">'
    return svg[:m.start()] + head + f"\n <title>{esc}</title>" + svg[m.end():]


def display_figure(fig, *, caption: str | None = None, alt: str | None = None,
                   tight: bool | None = None, safe: bool | None = None) -> None:
    """Show `fig` in the notebook as SVG with real text (alt text in its ``<title>``), then its
    caption in italics, and close it. `tight`: crop to the drawn area (default: figures with at
    most 12 panels; larger small-multiple grids are shown at their canvas size). `safe`: True =
    drawn from the results store or suppressed aggregates, shown as SVG marked for the output
    scanner (:func:`analysis.privacy.mark_figure_svg`); False = shown as a raster PNG (its text
    in a PNG chunk for the scanner: exact coordinates would give back what was plotted); None =
    unmarked SVG (not for published reports)."""
    from .plotting import figure_svg
    from .reporting import Md, escape_text, show

    if tight is None:
        tight = len(fig.axes) <= 12
    if safe is False:
        from .privacy import publishable_figure

        show(publishable_figure(fig, from_suppressed_aggregates=False, tight=tight))
    else:
        svg = figure_svg(fig, tight=tight)
        svg = _with_alt(svg, alt) if alt else svg
        if safe:
            from .privacy import mark_figure_svg

            svg = mark_figure_svg(svg)
        show(SvgFigure(svg))
    if caption:
        show(Md(f"*{escape_text(caption)}*"))


# ---------------------------------------------------------------------------------------------
# registry
class FigureRegistry:
    """The figures of one report run (see the module docstring).

    `export_dir`: the run's export folder (figures go to its ``figures/`` sub-folder); None =
    :func:`analysis.exports.resolve_export_dir` (``$IPSO_EXPORT_DIR``), and no export when that
    is unset. `display`: show figures in the notebook (False: only export, then close).
    """

    def __init__(self, export_dir: str | os.PathLike | None = None, *, display: bool = True):
        self.export_dir = resolve_export_dir(export_dir)
        self.display = display
        self.records: dict[str, FigureRecord] = {}

    @property
    def figures_dir(self) -> Path | None:
        return self.export_dir / FIGURES_DIR if self.export_dir is not None else None

    def register(self, fig, name: str, *, caption: str, alt: str, safe: bool, provenance: str,
                 tight: bool | None = None) -> FigureRecord:
        """Register one figure: export it (once) when there is an export folder, display it,
        close it. `name`: stable file stem (``[a-z0-9-]``); `caption`, `alt`: required;
        `safe`: may be published (drawn from the results store or suppressed aggregates);
        `provenance`: what the figure is drawn from, in words. A second figure under the same
        name in one run is refused (``ValueError``): each figure is saved once."""
        import matplotlib.pyplot as plt

        check_name(name, "figure")
        caption = _check_text(caption, "a caption", name)
        alt = _check_text(alt, "alt text", name)
        if name in self.records:
            plt.close(fig)
            raise ValueError(f"figure {name!r} is already registered in this run (each figure "
                             "is saved once; give the other one its own name)")
        if self.figures_dir is not None:
            record = save_figure(fig, self.figures_dir, name, caption=caption, alt=alt, safe=safe,
                                 provenance=provenance)
        else:
            if not isinstance(safe, bool):
                raise ValueError(f"figure {name!r}: safe must be True or False")
            record = FigureRecord(name, caption, alt, safe, provenance)
        self.records[name] = record
        if self.display:
            display_figure(fig, caption=caption, alt=alt, tight=tight, safe=safe)
        else:
            plt.close(fig)
        return record


_DEFAULT: FigureRegistry | None = None


def default_registry(export_dir: str | os.PathLike | None = None, *, reset: bool = False) -> FigureRegistry:
    """The process-wide registry of the report being executed (created on first use; `reset` or
    a different `export_dir` starts a new one)."""
    global _DEFAULT
    wanted = resolve_export_dir(export_dir)
    if reset or _DEFAULT is None or (export_dir is not None and _DEFAULT.export_dir != wanted):
        _DEFAULT = FigureRegistry(wanted)
    return _DEFAULT


def register_report_figure(figure: ReportFigure, *, export_dir: str | os.PathLike | None = None,
                           tight: bool | None = None) -> FigureRecord:
    """:func:`register_figure` for a :class:`ReportFigure` (a producer's result)."""
    return register_figure(figure.fig, figure.name, caption=figure.caption, alt=figure.alt,
                           safe=figure.safe, provenance=figure.provenance, export_dir=export_dir,
                           tight=tight)


def register_figure(fig, name: str, *, caption: str, alt: str, safe: bool, provenance: str,
                    export_dir: str | os.PathLike | None = None,
                    tight: bool | None = None) -> FigureRecord:
    """Register `fig` with the report's registry (:func:`default_registry`): display it and,
    when the run has an export folder, save it once as PDF + 300 dpi PNG + caption JSON."""
    return default_registry(export_dir).register(fig, name, caption=caption, alt=alt, safe=safe,
                                                 provenance=provenance, tight=tight)

"""The collaborative report (analysis.reports.collaborative): SQUIRE 2.0 sections, every number
from the results store.

One shared fixture renders the real notebook (nbconvert) on a small synthetic collaborative
(6 hospitals x 48 months) with the store precomputed in a shared folder, as a batch run does,
and an export folder for figures and tables. The tests read the published HTML, the executed
notebook and the exported files.
"""

from __future__ import annotations

import html as _html
import json
import re
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import nbformat  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from analysis import methods_text as mt  # noqa: E402
from analysis import privacy, render  # noqa: E402
from analysis import tables as T  # noqa: E402
from analysis.report_sections import compute_shared, load_store  # noqa: E402
from analysis.reports import collaborative as C  # noqa: E402
from analysis.simulate import simulate_collaborative, write_collaborative  # noqa: E402

pytestmark = pytest.mark.xdist_group("collaborative_report")
_CI = re.compile(r"(?<![\d.])(\d[\d,]*\.\d\d) \(([<>]?[\d,]+\.\d\d|[<>][\d,]+) to ([<>]?[\d,]+\.\d\d|[<>][\d,]+)\)")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("collab")
    data = root / "data"
    write_collaborative(simulate_collaborative(seed=5, sites=6, months=48, scale=1.2), data)
    shared = root / "run" / "internal" / "_shared"
    compute_shared(data, shared, "test-key", items=("store",))
    export = root / "export"
    mp = pytest.MonkeyPatch()
    mp.setenv("IPSO_EXPORT_DIR", str(export))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = render.render_report("collaborative", data_dir=data, out_dir=root / "out",
                                       run="r1", run_key="test-key", shared_dir=shared,
                                       renderer="nbconvert")
    finally:
        mp.undo()
    assert res.error is None, res.error
    raw = res.outputs["html"].read_text(encoding="utf-8")
    nb = nbformat.read(res.executed_notebook, as_version=4)
    return {"res": res, "html": raw, "text": privacy.visible_text(raw), "nb": nb,
            "store": load_store(shared), "export": export, "data": data}


def _cell_text(nb, label: str) -> str:
    """Markdown and table text of the outputs of the cell labelled `label`."""
    for c in nb.cells:
        if c.cell_type == "code" and c.source.startswith(f"#| label: {label}\n"):
            parts = []
            for o in c.get("outputs", []):
                d = o.get("data", {})
                if "text/markdown" in d:
                    parts.append(d["text/markdown"])
                elif "text/html" in d:
                    parts.append(privacy.visible_text(d["text/html"]))
                if "image/svg+xml" in d:
                    m = re.search(r"<title>(.*?)</title>", d["image/svg+xml"], re.S)
                    parts.append(_html.unescape(m.group(1)) if m else "")
            return _html.unescape(re.sub(r"\\(.)", r"\1", "\n".join(parts)))
    raise AssertionError(f"no cell {label!r}")


def _svgs(raw: str) -> list[str]:
    """The SVG figures of the page (embedded as base64 data URIs)."""
    import base64

    return [base64.b64decode(m.group(1)).decode("utf-8", "replace")
            for m in re.finditer(r"data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)", raw)]


def _headings(raw: str) -> list[str]:
    return [_html.unescape(re.sub(r"<[^>]+>", "", m.group(2))).strip()
            for m in re.finditer(r"<h([1-4])[^>]*>(.*?)</h\1>", raw, re.S)]


def test_renders_and_passes_the_output_scan(report):
    res = report["res"]
    assert res.ok and res.findings == [], [f.__dict__ for f in res.findings]
    errors = [o for c in report["nb"].cells if c.cell_type == "code"
              for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert errors == []


def test_sections_in_squire_order(report):
    heads = [h.rstrip("¶").strip() for h in _headings(report["html"])]
    wanted = [h for h, _ in C.SECTIONS]
    pos = [next((i for i, h in enumerate(heads) if h == w), None) for w in wanted]
    assert None not in pos, [w for w, p in zip(wanted, pos) if p is None]
    assert pos == sorted(pos), heads
    # every generated section of the SQUIRE mapping is a heading of the report
    assert mt.squire_coverage() == []
    generated = [s for s in mt.REPORT_SECTIONS if "(authors)" not in s]
    for s in generated:
        leaf = s.split(": ", 1)[-1]
        assert any(h.lower() == leaf.lower() or h.lower().startswith(leaf.lower()) for h in heads), s


def test_every_primary_number_equals_the_store_formatted_alike(report):
    store, nb = report["store"], report["nb"]
    summary = _cell_text(nb, "summary")
    primary = _cell_text(nb, "primary-results")
    shown = C.primary_numbers(store)
    assert shown, "the store has no estimable primary estimate"
    for e, row in T.primary_rows(store):
        if row["status"] != "ok":
            continue
        text = T.format_estimate_ci(row["estimate"], row["lower"], row["upper"])
        assert shown[e.label] == text
        # the primary estimand table and the primary-estimates figure (alt text) show it alike
        assert f"{e.label} | " in primary or e.label in primary
        assert primary.count(text) >= 2, (e.label, text)
        if not e.secondary_to:  # the summary line of this estimand carries the same ratio
            line = next(ln for ln in summary.splitlines() if ln.startswith("- ") and
                        mt.measure_words(e).subject in ln)
            assert line.rstrip(".").endswith(f"ratio {text}"), line


def test_every_interval_shown_comes_from_the_store(report):
    """Every "x.xx (y.yy to z.zz)" outside the process-outcome table (a GEE fit of the run, not
    a store component) is a row of the store formatted by format_estimate_ci."""
    store = report["store"]
    f = store.frame
    known = {T.format_estimate_ci(a, b, c) for a, b, c in f[["estimate", "lower", "upper"]].itertuples(index=False)}
    nb = report["nb"]
    labels = [c.source.split("\n", 1)[0].removeprefix("#| label: ") for c in nb.cells
              if c.cell_type == "code" and c.source.startswith("#| label: ")]
    seen = 0
    for label in labels:
        if label in ("setup", "processes-and-outcomes"):
            continue
        for m in _CI.finditer(_cell_text(nb, label)):
            seen += 1
            assert m.group(0) in known, (label, m.group(0))
    assert seen > 10


def test_event_study_shows_leads_and_the_pretrend_test(report):
    store, nb = report["store"], report["nb"]
    text = _cell_text(nb, "primary-results")
    ev = store.frame[(store.frame["component"] == "event_time") & (store.frame["scope"] == "collaborative")]
    assert len(ev)
    for est, g in ev.groupby("estimand"):
        label = store.plan.get(est, "collaborative").label
        leads = int((g["time_point"] < 0).sum())
        assert leads >= 1
        figure_text = " ".join(t for svg in _svgs(report["html"]) for t in privacy.svg_text(svg))
        assert f"{label}: event study" in figure_text  # the figure's title
        assert f"{leads} months before go-live" in text
        t = store.pretrend_test(est)
        p = T.format_p(t["p_value"])
        assert re.search(rf"{re.escape(label)}\.\*?\*? Pre-trend test.*?p (= )?{re.escape(p)}", text), label


def test_sensitivity_section_lists_every_registered_spec(report):
    store, nb = report["store"], report["nb"]
    text = _cell_text(nb, "sensitivity-analyses")
    specs = {(s.name, s.estimator) for e in store.plan.at_level("collaborative") for s in e.specs
             if s.role == "sensitivity"}
    assert {"placebo_in_time", "leave_one_wave_out", "transition_0", "transition_12", "panel_hac",
            "rambachan_roth"} <= {n for n, _ in specs}
    for name, est in specs:
        assert T.spec_label(name, est) in text, name
    assert "Rambachan-Roth bounds for" in text and "M = 1" in text
    assert not re.search(r"\d{1,3}(,\d{3}){3,}", text)  # no 12-digit bounds


def test_no_internal_names_index_columns_or_raw_p_values_in_tables(report):
    raw, store = report["html"], report["store"]
    banned = T.internal_names(store.plan, store)
    tables = re.findall(r"<table\b.*?</table>", raw, re.S)
    assert len(tables) >= 4
    for t in tables:
        heads = [_html.unescape(re.sub(r"<[^>]+>", "", h)).strip()
                 for h in re.findall(r"<th\b[^>]*>(.*?)</th>", t, re.S)]
        assert not any(h in ("", "index", "Unnamed: 0") or h.isdigit() for h in heads
                       if h), heads
        cols = [h for h in heads if h]
        words = set(re.findall(r"[\w-]+", privacy.visible_text(t)))
        assert not (banned & words), sorted(banned & words)
        assert "0.000" not in privacy.visible_text(t)
    assert "<0.001" in report["text"]
    for csv in sorted((report["export"] / "tables").glob("*.csv")):
        header = csv.read_text().splitlines()[0].split(",")
        assert len(header) == len(set(header)) and not (banned & set(header)), csv.name
    assert cols


def test_as_of_and_one_data_hash(report):
    text, store = report["text"], report["store"]
    assert "None" not in text
    as_of = store.meta["as_of"]
    assert re.fullmatch(r"\d{4}-\d{2}", str(as_of))
    assert f"data as of {as_of}" in text and "as_of='None'" not in text
    hashes = set(re.findall(r"\b[0-9a-f]{64}\b", text))
    assert hashes == {store.meta["data_hash"]}
    assert text.count(store.meta["data_hash"]) == 1


def test_waves_are_banded_and_no_per_hospital_counts(report):
    text = _cell_text(report["nb"], "context-and-intervention")
    rows = [ln for ln in text.splitlines() if re.match(r"\| \d+ \|", ln)]
    assert rows
    for ln in rows:
        hosp = ln.strip("| ").split(" | ")[-1]
        assert re.fullmatch(r"fewer than 11|\d+ to \d+", hosp), ln
    assert C.band_count(3) == "fewer than 11" and C.band_count(11) == "11 to 20"
    assert C.band_count(57) == "51 to 60" and C.band_count(0) == "none"


def test_every_figure_registered_once_as_pdf_png_with_caption_and_alt(report):
    import base64

    fig_dir = report["export"] / "figures"
    sidecars = sorted(fig_dir.glob("*.json"))
    names = [p.stem for p in sidecars]
    assert {"primary-estimates", "recognition-chart", "funnel-30-day-sepsis-attributable-mortality"} <= set(names)
    assert any(n.startswith("event-study-") for n in names)
    assert any(n.startswith("sensitivity-") for n in names)
    for p in sidecars:
        rec = json.loads(p.read_text())
        assert rec["caption"] and rec["alt"]
        assert (fig_dir / f"{p.stem}.pdf").read_bytes()[:4] == b"%PDF"
        assert (fig_dir / f"{p.stem}.png").read_bytes()[:4] == b"\x89PNG"
    # each figure shown once in the report: one image per registered figure
    svgs = [s for s in _svgs(report["html"]) if privacy.FIGURE_ATTR in s[:s.find(">", s.find("<svg"))]]
    pngs = sum(privacy.PNG_TEXT_KEY in privacy.png_text(base64.b64decode(m.group(1)))
               for m in re.finditer(r"data:image/png;base64,([A-Za-z0-9+/=]+)", report["html"]))
    assert len(svgs) + pngs == len(names), (len(svgs), pngs, names)
    assert {"primary-estimands", "sensitivity-analyses", "table-one", "process-outcome"} <= {
        p.stem for p in (report["export"] / "tables").glob("*.json")}


def test_limitations_and_methods_come_from_plan_and_store(report):
    nb, store = report["nb"], report["store"]
    lim = _cell_text(nb, "limitations")
    assert "Extrapolated calendar effects" in lim or "Extrapolated trends" in lim
    meth = _cell_text(nb, "statistical-methods")
    c = store.model_fit()
    cstat = c[c["quantity"] == "c-statistic"].iloc[0]
    assert T.format_estimate_ci(cstat["estimate"], cstat["lower"], cstat["upper"]) in meth
    assert "Software." in meth and "cluster-robust" in meth
    assert np.isfinite(cstat["estimate"])

"""The hospital report (analysis.reports.site) reads every number from the results store.

One small synthetic collaborative (6 hospitals, one of them small), its shared fits computed once
(the batch's shared folder: results store of every scope), and two site reports rendered from it
(a hospital with its own mortality effect, and the small one below the too-little-information
rule), with whichever renderer is available (Quarto when on PATH, else nbconvert).
"""

from __future__ import annotations

import json
import re
import shutil
import warnings

import nbformat
import numpy as np
import pytest

from analysis import contract, privacy, render
from analysis import report_sections as rs
from analysis import reporting as rp
from analysis import wording as W
from analysis.reports import site
from analysis.simulate import simulate_collaborative
from analysis.tables import format_estimate_ci, internal_names

pytestmark = pytest.mark.xdist_group("render")

SMALL = "S06"


@pytest.fixture(scope="module")
def collab(tmp_path_factory):
    """6 hospitals x 48 months at 60 episodes a month (five with their own mortality effect);
    S06 keeps a tenth of its episodes (below the too-little-information rule)."""
    d = tmp_path_factory.mktemp("site_extract")
    sim = simulate_collaborative(sites=6, months=48, episodes_per_site_month=60, seed=11)
    ep = sim.episodes
    small = ep.index[ep["site_id"] == SMALL]
    ep = ep.drop(small.difference(small[::10])).reset_index(drop=True)  # every tenth kept
    ep[contract.field_names("episodes")].to_parquet(d / "episodes.parquet", index=False)
    tmp = d / "tmp"
    sim.write(tmp)
    for f in ("sites.csv", "site_months.csv"):
        shutil.copy(tmp / f, d / f)
    shutil.rmtree(tmp)
    shared = d / "shared"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rs.compute_shared(d, shared, run_key="site-report-test")
    store = rs.load_store(shared)
    prim = store.rows("sam30", level="site", role="primary")
    ok = prim[prim["status"] == "ok"]
    assert len(ok), "no hospital has its own mortality effect: the fixture cannot test it"
    large = str(ok.sort_values("n")["scope"].iloc[-1])
    return {"data": d, "shared": shared, "store": store, "large": large}


@pytest.fixture(scope="module")
def rendered(collab, tmp_path_factory):
    out = tmp_path_factory.mktemp("site_reports")
    res = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for key, sid in (("large", collab["large"]), ("small", SMALL)):
            r = render.render_report("site", site_id=sid, data_dir=collab["data"], out_dir=out,
                                     run="r", shared_dir=collab["shared"], run_key="site-report-test")
            assert r.error is None, r.error
            assert r.findings == [], [f.__dict__ for f in r.findings]
            html = r.outputs["html"].read_text(encoding="utf-8")
            res[key] = {"result": r, "html": html, "text": _text(html), "site": sid}
    return res


def _text(html: str) -> str:
    """Visible text of a page, whitespace collapsed (figures' SVG text left out)."""
    html = re.sub(r"<svg\b.*?</svg>", " ", html, flags=re.DOTALL)
    text = privacy.visible_text(html).translate(_QUOTES)  # Quarto's smart quotes
    return " ".join(text.split())


def _summary(text: str) -> str:
    start = text.index("What changed at")
    return text[start:text.index("Effects at this hospital", start)]


def _effects(text: str) -> str:
    start = text.index("Effects at this hospital", text.index("What changed at"))
    return text[start:text.index("This hospital's time series", start)]


_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'})


def _report(collab, sid: str) -> site.SiteReport:
    run = rp.load_run(collab["data"], run_key="site-report-test", site_id=sid,
                      shared_dir=collab["shared"])
    return site.load(run, rs.SharedFits(run, collab["shared"]), sid)


# ---------------------------------------------------------------------------------------------
# consistency with the store
def test_primary_numbers_in_the_report_are_the_stores(rendered, collab):
    """Every estimable primary estimate of the hospital (and the collaborative's mortality
    effect) appears in the rendered report exactly as the table formats the store's row."""
    store = collab["store"]
    for key in ("large", "small"):
        sid, text = rendered[key]["site"], rendered[key]["text"]
        prim = store.rows(scope=sid, role="primary")
        shown = 0
        for _, r in prim.iterrows():
            if r["status"] != "ok":
                continue
            assert format_estimate_ci(r["estimate"], r["lower"], r["upper"]) in text, r["estimand"]
            shown += 1
        assert shown >= (8 if key == "large" else 1)
        # the collaborative's mortality effect, in words with its interval (summary)
        coll = store.primary("sam30", "collaborative")
        m = W.MeasureWords("30-day sepsis-attributable mortality",
                           "per child with the same case mix")
        assert W.effect_sentence(coll["estimate"], coll["lower"], coll["upper"], m,
                                 kind="collaborative", subject="Across all hospitals") in text


def test_mortality_headline_is_the_stores_pooled_effect_in_words(rendered, collab):
    r = collab["store"].primary("sam30", collab["large"])
    assert r["estimator"] == "site_eb" and r["role"] == "primary"
    summary = _summary(rendered["large"]["text"])
    m = W.MeasureWords("30-day sepsis-attributable mortality", "per child with the same case mix",
                       events="deaths")
    sentence = W.effect_sentence(r["estimate"], r["lower"], r["upper"], m, kind="pooled",
                                 subject="At this hospital")
    assert sentence in summary
    verdict = W.classify(r["estimate"], r["lower"], r["upper"])
    if verdict == "no_clear_change":
        assert "no clear change in 30-day" in sentence
    assert "per child with the same case mix" in summary
    # the unpooled own-series estimate is only a labelled secondary, never the headline
    own = collab["store"].rows("sam30", collab["large"], spec="site_its").iloc[0]
    if own["status"] == "ok":
        own_ci = format_estimate_ci(own["estimate"], own["lower"], own["upper"])
        assert own_ci not in summary
        effects = _effects(rendered["large"]["text"])
        assert "own data alone (unpooled)" in effects and own_ci in effects


def _with_row(rep: site.SiteReport, est: float, lo: float, hi: float) -> site.SiteReport:
    f = rep.store.frame.copy()
    m = ((f["estimand"] == "sam30") & (f["scope"] == rep.site_id) & (f["role"] == "primary")
         & (f["component"] == "effect"))
    f.loc[m, ["estimate", "lower", "upper", "status", "status_reason", "estimator"]] = [
        est, lo, hi, "ok", "", "site_eb"]
    store = type(rep.store)(f, rep.store.plan, rep.store.meta)
    return site.SiteReport(rep.run, rep.site_id, store, rep.site_months, rep.min_cell,
                           rep.labels, rep.checks)


def test_summary_wording_follows_the_interval(collab):
    rep = _report(collab, collab["large"])
    wide = site.summary_parts(_with_row(rep, 0.9, 0.7, 1.15))
    assert wide.estimable
    assert wide.mortality[0].startswith("At this hospital, no clear change in 30-day")
    assert "95% CI 30% lower to 15% higher" in wide.mortality[0]
    fell = site.summary_parts(_with_row(rep, 0.7, 0.55, 0.9))
    assert "likely fell: 30% lower (95% CI 10% to 45% lower)" in fell.mortality[0]
    rose = site.summary_parts(_with_row(rep, 1.4, 1.1, 1.8))
    assert "likely rose" in rose.mortality[0]  # partially pooled: a direction may be named
    for parts in (wide, fell, rose):
        assert "per child with the same case mix" in parts.mortality[1]
        for s in parts.mortality:  # never a percentage without its interval
            if "%" in s:
                assert "95% CI" in s


def test_small_hospital_shows_the_rule_and_the_collaborative_effect(rendered, collab):
    r = collab["store"].primary("sam30", SMALL)
    assert r["status"] == "not estimable" and r["status_reason"].startswith("too few deaths")
    summary = _summary(rendered["small"]["text"])
    assert "Too few deaths to estimate this hospital's own effect on 30-day" in summary
    coll = collab["store"].primary("sam30", "collaborative")
    m = W.MeasureWords("30-day sepsis-attributable mortality", "per child with the same case mix")
    assert W.effect_sentence(coll["estimate"], coll["lower"], coll["upper"], m,
                             kind="collaborative", subject="Across all hospitals") in summary
    # how it compares: the funnel, in words, with the flags expected by chance
    assert "How this hospital compares" in summary and "by chance alone" in summary
    assert "times the collaborative" in summary or "than the collaborative" in summary or \
        "the collaborative's" in summary
    assert "likely rose" not in summary and "increase" not in summary


def test_funnel_sentences_place_the_hospital(collab):
    rep = _report(collab, collab["large"])
    parts = site.summary_parts(rep)
    joined = " ".join(parts.comparison)
    assert "99.8% limits" in joined and "by chance alone" in joined
    own = collab["store"].rows("sam30", component="oe", scope=collab["large"]).iloc[0]
    if not own["flag"]:
        assert "no evidence" in joined


# ---------------------------------------------------------------------------------------------
# tables, text and privacy
def test_tables_have_readable_labels_and_no_internal_names(rendered, collab):
    names = internal_names(store=collab["store"]) - {"n"}
    rep = _report(collab, collab["large"])
    for table in (site.effects_table(rep), site.process_table(rep)):
        frame = table.display_frame()
        assert not any(str(c).startswith("Unnamed") for c in frame.columns)
        cells = " ".join(map(str, frame.to_numpy().ravel())) + " " + " ".join(map(str, frame.columns))
        found = {w for w in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", cells) if w in names}
        assert not found, found
        assert "p 0.000" not in cells
    section = _effects(rendered["large"]["text"])
    assert "<0.001" in section or "0.0" not in section
    found = {w for w in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", section) if w in names}
    assert not found, found
    # no raw index column: no table body row starts with a bare row number
    for html in (rendered["large"]["html"], rendered["small"]["html"]):
        assert not re.search(r"<tr[^>]*>\s*<t[hd][^>]*>\s*0\s*</t[hd]>\s*<t[hd][^>]*>\s*[A-Z]", html)


def test_no_small_count_in_text_and_reports_scan_clean(rendered):
    for key in ("large", "small"):
        text = rendered[key]["text"]
        small = [c for c in privacy.text_counts(text) if 1 <= c.value < 11]
        assert not small, [(c.value, c.noun) for c in small]
        assert not re.search(r"\(\d+ pre, \d+ post", text)
        r = rendered[key]["result"]
        assert privacy.scan_outputs(list(r.outputs.values())) == []


def test_reasons_never_carry_counts():
    assert not any(ch.isdigit() for ch in site._plain_reason("too few events (4 pre, 7 post; need >= 10)"))
    assert site._plain_reason("no data for this hospital") == "No data for this hospital."


def test_control_charts_blank_points_on_small_counts(collab):
    rep = _report(collab, SMALL)
    charts, failed = site.control_chart_set(rep)
    assert charts or failed
    for title, cc in charts.items():
        assert "\n" in title and title.split("\n")[1].startswith("per ")  # what a point is, its n
        d = cc.data
        shown = d[d["y"].notna()]
        if cc.chart in ("p", "pp"):
            ev = np.round(shown["y"] / cc.multiply * shown["n"])
            assert not ((ev >= 1) & (ev < 11)).any(), title
            assert not ((shown["n"] - ev >= 1) & (shown["n"] - ev < 11)).any(), title
        assert (shown["lcl"].dropna() >= 0).all()
        if cc.chart == "p":
            assert (shown["ucl"].dropna() <= 100 + 1e-9).all()


def test_its_figure_reads_counterfactual_rows(collab):
    store = collab["store"]
    cf = store.rows(scope=collab["large"], component="counterfactual")
    assert set(cf["quantity"]) == {"observed", "fitted", "counterfactual"}
    assert {"sam30", "recognition", "hospital_days"} <= set(cf["estimand"])


def test_notebook_cells_are_single_calls_into_the_site_module():
    nb = nbformat.read(render.NOTEBOOKS["site"], as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    body = [c for c in code if "label: setup" not in c.source and "parameters" not in c.metadata.get("tags", [])
            and not c.source.startswith("# Parameters")]
    assert len(body) >= 10
    for c in body:
        lines = [ln for ln in c.source.splitlines() if ln.strip() and not ln.startswith("#|")]
        assert lines[0].startswith("site."), c.source
        assert len(lines) <= 2, c.source
    assert "outputs" not in json.dumps([c.get("outputs") for c in code if c.get("outputs")])


def test_scanner_reads_svg_in_a_script_as_code_not_as_a_figure(tmp_path):
    """Quarto pages carry tippy.js, whose tooltip arrow is an SVG string in the script: not a
    drawn figure. An unmarked SVG figure in the page itself is still refused."""
    arrow = '<svg width="16" height="6" xmlns="http://www.w3.org/2000/svg"><path d="M0 6h16z"/></svg>'
    page = tmp_path / "page.html"
    page.write_text(f"<html><body><p>Report</p><script>var a='{arrow}';</script></body></html>")
    assert privacy.scan_outputs([page]) == []
    page.write_text(f"<html><body><p>Report</p>{arrow}</body></html>")
    assert [f.kind for f in privacy.scan_outputs([page])] == ["unmarked_figure"]

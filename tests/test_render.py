"""Render real reports on a small synthetic collaborative (with a tiny hospital and a bad row) via
papermill + nbconvert, then scan every output for anything unsafe to publish."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import warnings
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from analysis import contract, privacy, render
from analysis.reporting import load_run
from analysis.simulate import simulate_collaborative

pytestmark = pytest.mark.xdist_group("render")

TINY = "S03"  # the site report rendered here is the tiny hospital's


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    """4 hospitals x 24 months; S03 keeps only 6 episodes, one of which breaks the contract."""
    d = tmp_path_factory.mktemp("extract")
    sim = simulate_collaborative(sites=4, months=24, episodes_per_site_month=6)
    ep = sim.episodes
    tiny = ep.index[ep["site_id"] == TINY]
    ep = ep.drop(tiny[6:]).reset_index(drop=True)
    bad = ep.index[ep["site_id"] == TINY][0]
    ep.loc[bad, "age_years"] = 30.0  # out of range -> quarantined
    ep[contract.field_names("episodes")].to_parquet(d / "episodes.parquet", index=False)
    sim_written = d / "tmp"
    sim.write(sim_written)
    shutil.copy(sim_written / "sites.csv", d / "sites.csv")
    shutil.copy(sim_written / "site_months.csv", d / "site_months.csv")
    shutil.rmtree(sim_written)
    return d


@pytest.fixture(scope="module")
def rendered(small_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("reports")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        site = render.render_report("site", site_id=TINY, data_dir=small_data, out_dir=out, run="r1",
                                    formats=("html", "pdf"), renderer="nbconvert")
        coll = render.render_report("collaborative", data_dir=small_data, out_dir=out, run="r1",
                                    renderer="nbconvert")
    return {"site": site, "coll": coll, "out": out}


def _text(path):
    return path.read_text(encoding="utf-8")


def test_reports_render_and_scan_clean(rendered):
    for key in ("site", "coll"):
        r = rendered[key]
        assert r.error is None, r.error
        assert r.findings == [], [f.__dict__ for f in r.findings]
        assert r.ok and r.outputs["html"].is_file()
        assert r.executed_notebook.is_file()
        assert r.renderer == "nbconvert"
    # same file names for the same run folder, under publish/; executed notebooks kept in isolated
    # work folders under internal/
    run_dir = rendered["out"] / "r1"
    assert sorted(p.name for p in (run_dir / "publish").glob("*.html")) == [
        "collaborative.html", "site_S03.html"]
    assert sorted(p.name for p in run_dir.iterdir()) == [".ipso-lock", "internal", "publish"]
    assert rendered["site"].executed_notebook.parent != rendered["coll"].executed_notebook.parent
    for r in (rendered["site"], rendered["coll"]):
        assert r.executed_notebook.is_relative_to(run_dir / "internal")


def test_pdf_without_quarto_is_a_warning_not_a_crash(rendered):
    r = rendered["site"]
    if shutil.which("quarto") is None:
        assert "pdf" not in r.outputs
        assert any("PDF" in w and "Quarto" in w for w in r.warnings)


def test_independent_scan_of_every_output(rendered, small_data):
    """Scan again, independently: peers' names and ids, every episode/patient id, timestamps."""
    data = load_run(small_data)
    names = dict(zip(data.sites["site_id"], data.sites["site_name"]))
    ids_ep = data.episodes["episode_id"].tolist() + data.episodes["patient_id"].tolist()
    ids_q = data.quarantine["key"].tolist()
    assert len(ids_q) == 1  # the bad row was quarantined, and its id must not leak
    for key, own in (("site", TINY), ("coll", None)):
        r = rendered[key]
        forbidden = [s for s in names if s != own] + [n for s, n in names.items() if s != own]
        assert privacy.scan_outputs(list(r.outputs.values()), forbidden_strings=forbidden + ids_ep + ids_q) == []
        # the executed notebook stays internal, but holds no identifier or peer name either
        assert privacy.scan_outputs([r.executed_notebook], forbidden_strings=forbidden + ids_ep + ids_q,
                                    checks=("strings", "timestamps")) == []
    html = _text(rendered["site"].outputs["html"])
    assert names[TINY] in html or names[TINY].replace("'", "&#x27;") in html  # own name shown
    coll = _text(rendered["coll"].outputs["html"])
    assert all(n.replace("'", "&#x27;") not in coll and n not in coll for n in names.values())
    # peers appear under pseudonyms only, in the figures (raster: their text is in PNG chunks)
    figure_text = " ".join(
        t for m in re.finditer(r"data:image/png;base64,([A-Za-z0-9+/=]+)", coll)
        for t in privacy.png_text(base64.b64decode(m.group(1))).values())
    assert "Hospital A" in figure_text and "Hospital D" in figure_text


def test_code_hidden_and_footer_states_renderer(rendered):
    html = _text(rendered["site"].outputs["html"])
    assert "load_run" not in html and "import" not in re.sub(r"<script.*?</script>|<style.*?</style>",
                                                             "", html, flags=re.DOTALL)
    assert "by nbconvert" in html and "SHA-256" in html and "ipso-analysis" in html
    # the run key (pseudonym secret) is never published
    key = (rendered["out"] / "r1" / "internal" / "run_key").read_text().strip()
    assert key not in html
    nb = nbformat.read(rendered["site"].executed_notebook, as_version=4)
    assert "start_time" not in json.dumps(nb.metadata)  # exact times stripped from the audit copy


def test_tiny_hospital_counts_suppressed(rendered):
    html = _text(rendered["site"].outputs["html"])
    # 5 accepted episodes: the header count is suppressed, and Table 1 shows no number 1-10
    assert re.search(r"Sepsis episodes:</strong>\s*suppressed", html)
    assert privacy.COUNT_COLUMNS_ATTR in html  # count tables are marked, so the scan checked them
    # quarantine: the hospital's one bad row is counted by rule, the count itself suppressed
    assert "out_of_range" in html
    q = html[html.index("Rows set aside by validation"):]
    q = q[:q.index("</table>")]
    assert "suppressed" in q and not re.search(r">\s*1\s*<", q)


def test_scanner_catches_a_planted_leak_in_real_output(rendered, tmp_path):
    """The scan is not vacuous: plant an unsuppressed count table, a timestamp and a peer's name."""
    src = rendered["coll"].outputs["html"]
    leaked = tmp_path / "leak.html"
    table = privacy.mark_count_table(
        pd.DataFrame({"Hospital": ["Hospital A"], "Deaths": [3]}).to_html(index=False), [1], min_cell=11)
    leaked.write_text(_text(src).replace("</body>", f"{table}<p>2019-03-04 10:22</p></body>"))
    kinds = {f.kind for f in privacy.scan_outputs([leaked])}
    assert {"small_count", "timestamp"} <= kinds


def test_site_id_must_exist(small_data, tmp_path):
    with pytest.raises(ValueError, match="not in the data"):
        render.render_report("site", site_id="S99", data_dir=small_data, out_dir=tmp_path)


@pytest.mark.quarto
@pytest.mark.skipif(shutil.which("quarto") is None, reason="quarto not on PATH")
def test_quarto_renders_executed_notebook(rendered, tmp_path):
    out = render.render_executed(rendered["site"].executed_notebook, tmp_path, formats=("html",),
                                 renderer="quarto", name="site_S03")
    assert out["html"].name == "site_S03.html" and out["html"].is_file()
    assert privacy.scan_outputs([out["html"]], forbidden_strings=["S01", "S02", "S04"]) == []


def test_nbconvert_reports_are_self_contained(rendered):
    """No script, style sheet, font or image is fetched from the network (air-gapped hospitals)."""
    for key in ("site", "coll"):
        html = _text(rendered[key].outputs["html"])
        assert render.external_references(html) == []
        assert "cdnjs" not in html and "mathjax" not in html.lower()


# ---------------------------------------------------------------------------------------------
# Quarto: `ipso report` and `ipso render` through the same staging, reports/_quarto.yml applied
@pytest.fixture(scope="module")
def quarto_rendered(small_data, tmp_path_factory):
    if shutil.which("quarto") is None:
        pytest.skip("needs the quarto CLI on PATH (export PATH=\"$(../shared/tools/quarto/setup):$PATH\")")
    from analysis.batch import render_batch

    out = tmp_path_factory.mktemp("quarto")
    single = render.render_report("site", site_id=TINY, data_dir=small_data, out_dir=out, run="one",
                                  renderer="quarto")
    batch = render_batch(small_data, out / "batch", sites=TINY, collaborative=False, jobs=1,
                         renderer="quarto", show_progress=False)
    return {"single": single, "batch": batch,
            "pages": {"ipso report": _text(single.outputs["html"]),
                      "ipso render": _text(out / "batch" / "publish" / "sites" / f"{TINY}.html")}}


@pytest.mark.quarto
def test_quarto_report_and_batch_apply_the_project_settings(quarto_rendered):
    single, batch = quarto_rendered["single"], quarto_rendered["batch"]
    assert single.ok, (single.error, [f.__dict__ for f in single.findings])
    assert batch.ok, batch.summary()
    assert single.renderer == "quarto" and single.renderer_version == render.quarto_version()
    themes = {}
    for label, page in quarto_rendered["pages"].items():
        assert 'content="ipso-analysis via quarto"' in page, label  # generator meta of _quarto.yml
        assert 'id="TOC"' in page, label  # table of contents
        assert f"by quarto {render.quarto_version()}" in page, label  # footer names the renderer
        css = "".join(render.embedded_css(page))
        # the cosmo theme with its CSS variables intact (no web-font @import swallowing :root)
        assert "--bs-primary: #2780e3" in css and "@import" not in css, label
        assert re.search(r"--bs-body-font-family: system-ui", css), label
        themes[label] = css
    assert themes["ipso report"] == themes["ipso render"]  # the same theme, compiled the same way


@pytest.mark.quarto
def test_quarto_html_is_self_contained_with_no_broken_links(quarto_rendered):
    for label, page in quarto_rendered["pages"].items():
        assert render.external_references(page) == [], label
        assert "cdn.jsdelivr.net" not in page and "fonts.googleapis" not in page, label
        assert ".pdf" not in page and "Other Formats" not in page, label  # HTML only: no PDF link
        for href in re.findall(r'(?:href|src)="([^"#][^"]*)"', page):
            # every link either leaves for the web on purpose, is a data URL or an in-page anchor
            assert href.startswith(("http://", "https://", "data:", "mailto:")), (label, href)


def test_external_references_finds_what_a_browser_would_fetch():
    from urllib.parse import quote

    css = '@import "https://fonts.googleapis.com/css2?family=Source+Sans+Pro":root{--bs-x: 1}'
    page = ('<p><a href="https://example.org/guide">plain link in prose</a></p>'
            '<img src="data:image/png;base64,AAAA">'
            f'<link href="data:text/css,{quote(css)}" rel="stylesheet">'
            "<script src='//cdn.example/x.js'></script>"
            '<style>.a{background:url("https://img.example/a.png")}</style>')
    assert render.external_references(page) == [
        "//cdn.example/x.js", "https://img.example/a.png",
        "https://fonts.googleapis.com/css2?family=Source+Sans+Pro"]
    assert render.external_references('<a href="https://example.org">x</a>') == []


def test_prepare_for_quarto_keeps_html_as_raw_blocks_without_widget_mime_types():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("t", outputs=[
        nbformat.v4.new_output("execute_result", data={"text/html": "<table><tr><td>```</td></tr></table>",
                                                        "text/plain": "t"}, execution_count=1)])])
    html = render.prepare_for_quarto(nb, "html").cells[0].outputs[0]["data"]
    assert "text/html" not in html and html["text/plain"] == "t"
    assert html["text/markdown"] == "````{=html}\n<table><tr><td>```</td></tr></table>\n````\n"
    assert render.prepare_for_quarto(nb, "pdf") == nb  # Typst reads HTML tables itself
    assert "text/html" in nb.cells[0].outputs[0]["data"]  # the executed notebook is not touched


def test_publish_is_atomic_and_refuses_pages_that_load_from_the_network(tmp_path):
    good, bad = tmp_path / "good.html", tmp_path / "bad.html"
    good.write_text("<html><body>ok</body></html>")
    bad.write_text('<html><head><script src="https://cdn.example/x.js"></script></head></html>')
    final = tmp_path / "out" / "r.html"
    seen = []
    assert render.publish([(good, final)], before_replace=lambda tmp, f: seen.append(tmp.name)) == [final]
    assert seen == [f".r.html{render.TMP_MARK}{os.getpid()}"] and final.read_text() == good.read_text()
    with pytest.raises(render.UnsafeOutputError, match="cdn.example"):
        render.publish([(bad, final)])
    assert final.read_text() == good.read_text()  # the published report is untouched
    assert sorted(p.name for p in final.parent.iterdir()) == ["r.html"]  # no temp left behind


def test_a_quarto_call_that_hangs_is_stopped_and_one_that_fails_reports_quartos_error(tmp_path):
    nb = tmp_path / "r.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("hello")]), nb)
    hang = tmp_path / "hang" / "quarto"
    hang.parent.mkdir()
    hang.write_text("#!/bin/sh\necho '[1/1] r.ipynb' >&2\nexec sleep 60\n")
    fail = tmp_path / "fail" / "quarto"
    fail.parent.mkdir()
    fail.write_text("#!/bin/sh\necho 'ERROR: YAMLException: bad indentation' >&2\nexit 1\n")
    for exe in (hang, fail):
        exe.chmod(0o755)
    item = [render.QuartoItem(nb, "r")]
    res = render.quarto_render_items(item, tmp_path / "s1", quarto=str(hang), timeout=1)["r"]
    assert "timed out after 1 s" in res.error and res.files == {}
    res = render.quarto_render_items(item, tmp_path / "s2", quarto=str(fail))["r"]
    assert res.error.startswith("quarto render failed") and "YAMLException" in res.error
    with pytest.raises(ValueError, match="ignores"):
        render.quarto_render_items(item, tmp_path / ".hidden", quarto=str(fail))


def test_forbidden_strings_without_the_synthetic_folder_let_a_report_name_its_own_hospital(monkeypatch):
    """data_dir None and no data/synthetic (a fresh clone before make demo): the collaborative is
    simulated in memory; a site report may still name its own hospital, never another."""
    from analysis import reporting

    monkeypatch.setattr(reporting, "DEFAULT_SYNTHETIC_DIR", Path("/nonexistent-ipso-synthetic"))
    fb = render.forbidden_strings_for(None)
    own, other = list(fb["sites"])[:2]
    f = render.forbidden_for_report(fb, own)
    assert fb["sites"][own] not in f.phrases and own.lower() not in f.words
    assert fb["sites"][other] in f.phrases and other.lower() in f.words
    assert fb["ids"], "episode and patient identifiers stay forbidden"

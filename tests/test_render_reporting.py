"""Reporting helpers (no notebook execution): header, Table 1, hospitals table, messages, footer,
and the building blocks analysis.batch uses (parameterize, export_html, sanitize_executed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from analysis import privacy, render, reporting
from analysis.reporting import load_run

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def run():
    return load_run(None, simulate={"sites": 5, "months": 18, "episodes_per_site_month": 5},
                    run_key="k1")


def test_load_run_and_pseudonyms(run):
    assert set(run.pseudonyms) == set(run.sites["site_id"])
    assert run.pseudonyms == privacy.site_pseudonyms(run.sites["site_id"], run_key="k1")
    s = run.sites["site_id"].iloc[0]
    assert run.label(s, viewer=s) == run.site_name(s)
    assert run.label(s, viewer=None).startswith("Hospital ")
    forb = run.forbidden_strings(s)
    assert run.site_name(s) not in forb and s not in forb
    others = run.sites["site_id"].iloc[1:]
    assert all(o in forb for o in others) and run.episodes["episode_id"].iloc[0] in forb


def test_as_of_cuts_and_counts(run):
    cut = load_run(None, simulate={"sites": 5, "months": 18, "episodes_per_site_month": 5},
                   as_of="2016-12")
    assert cut.episodes["month"].max() == pd.Timestamp("2016-12-01")
    assert cut.excluded_after_as_of == int((run.episodes["month"] > "2016-12-01").sum())
    assert cut.excluded_after_as_of > 0


def test_header_suppresses_small_episode_count(run):
    s = run.sites["site_id"].iloc[0]
    h = reporting.report_header(run, s)
    assert run.site_name(s) in h and "Data as of" in h
    tiny = run.episodes[run.episodes["site_id"] != s]
    keep = run.episodes[run.episodes["site_id"] == s].head(4)
    run2 = reporting.RunData(**{**run.__dict__, "episodes": pd.concat([tiny, keep])})
    h2 = reporting.report_header(run2, s)
    assert "**Sepsis episodes:** suppressed" in h2
    assert not any(ch.isdigit() for ch in h2.split("Sepsis episodes:")[1].split("\n")[0])


def test_table_one_counts_match_data_and_small_cells_hidden(run):
    ep = run.episodes
    raw = reporting.table_one_frame(ep)
    # counts against the data itself (independent pandas computation)
    assert raw.loc[raw["variable"] == "Episodes", "n_pre"].item() == int((~ep["post"]).sum())
    sex = raw[raw["variable"] == "Sex"].set_index("level")
    assert sex.loc["F", "n_post"] == int(((ep["sex"] == "F") & ep["post"]).sum())
    assert sex["n_pre"].sum() == int((~ep["post"]).sum())
    t = reporting.table_one(ep)
    shown = t.display
    for col in ("Before: n", "After: n"):
        nums = pd.to_numeric(shown[col].str.replace(",", ""), errors="coerce")
        assert not ((nums >= 1) & (nums <= 10)).any()
    # a suppressed level's count can't be recovered from the episode count minus shown levels
    res = t.suppression
    for var in raw["variable"].unique():
        rows = (raw["variable"] == var) & ~raw["helper"]
        if raw.loc[rows, "pct_pre"].dtype == object:
            continue
        hidden = res.mask.loc[rows | (raw["variable"] == var), "n_pre"]
        assert hidden.sum() != 1, var


def test_hospitals_table_is_by_wave_and_names_no_hospital(run):
    """A row per hospital (wave, episodes before, episodes after) is what the table-matching
    attack joins to each site report: the table has one row per wave (at least 3 hospitals per
    row), no pseudonym, no name."""
    t = reporting.hospitals_table(run)
    d = t.display
    assert list(d.columns) == ["Wave", "Go-live", "Hospitals", "Episodes before go-live",
                               "Episodes after go-live"]
    html = t._repr_html_()
    for s, name in zip(run.sites["site_id"], run.sites["site_name"]):
        assert name not in html and name.replace("'", "&#x27;") not in html
    for label in run.pseudonyms.values():
        assert label not in html
    assert pd.to_numeric(d["Hospitals"]).sum() == len(run.sites)
    assert (pd.to_numeric(d["Hospitals"]) >= reporting.MIN_HOSPITALS_PER_ROW).all()
    shown = pd.to_numeric(d["Episodes before go-live"].str.replace(",", ""), errors="coerce")
    if shown.notna().all():  # nothing suppressed: the rows add up to the episodes before go-live
        assert shown.sum() == int((~run.episodes["post"]).sum())


def test_hospitals_table_pools_waves_of_fewer_than_three_hospitals(run):
    sites = run.sites.copy()
    sites["wave"] = [1, 2, 2, 2, 3][: len(sites)]
    t = reporting.hospitals_table(reporting.RunData(**{**run.__dict__, "sites": sites}))
    assert list(t.display["Wave"]) == ["1 to 2", "3"] or list(t.display["Wave"]) == ["1 to 3"]
    assert (pd.to_numeric(t.display["Hospitals"]) >= 3).all()


def test_missingness_table_hides_a_small_complement(run):
    """'44 episodes with no death time' next to 'Sepsis episodes: 45' gives 1 death: a missing
    count whose complement (recorded) is small is hidden too."""
    ep = run.episodes.head(45).copy()
    ep["death_time"] = pd.NaT
    ep.loc[ep.index[0], "death_time"] = ep["time_zero"].iloc[0]
    t = reporting.missingness_table(ep)
    row = t.display.set_index("Field").loc["death_time"]
    assert row["Episodes"] == "suppressed" and row["% of episodes"] == "suppressed"
    assert list(t.display.columns) == ["Field", "Missing means", "Episodes", "% of episodes"]


def test_gt_table_marks_count_columns_for_the_scanner(tmp_path):
    df = pd.DataFrame({"group": ["a", "b", "c"], "n": [5, 40, 60], "pct": [5.0, 40.0, 60.0]})
    t = reporting.gt_table(df, ["n"], derived={"pct": ["n"]}, sums_published=False)
    assert t.display["n"].tolist() == ["suppressed", "40", "60"]
    assert t.display["pct"].tolist() == ["suppressed", "40.0", "60.0"]
    (tmp_path / "t.html").write_text(t.html)
    assert privacy.scan_outputs([tmp_path / "t.html"]) == []
    # the same table without suppression is caught
    raw = privacy.mark_count_table(df.to_html(index=False), [1], min_cell=11)
    (tmp_path / "raw.html").write_text(raw)
    assert [f.kind for f in privacy.scan_outputs([tmp_path / "raw.html"])] == ["small_count"]
    assert "suppressed" in t._repr_markdown_()


def test_not_estimable_messages(run):
    s = run.sites["site_id"].iloc[0]
    empty = reporting.RunData(**{**run.__dict__, "episodes": run.episodes.iloc[:0]})
    chk = reporting.estimability(empty, s)
    assert chk["any"] is not None and "no sepsis episodes" in str(chk["any"])
    late = run.sites.assign(go_live=pd.Timestamp("2030-01-01"))
    chk2 = reporting.estimability(reporting.RunData(**{**run.__dict__, "sites": late}), s)
    assert chk2["post_months"] is not None and "no months after go-live" in str(chk2["post_months"])
    assert reporting.estimability(run, s, min_events=10**6)["deaths"] is not None


def test_footer_has_provenance_but_no_secret_or_timestamp(run):
    f = reporting.reproducibility_footer({"as_of": None, "min_cell": 11}, data_hash=run.data_hash,
                                         renderer="nbconvert", source=run.source)
    assert run.data_hash in f and "by nbconvert" in f and "pandas" in f
    assert "k1" not in f and not privacy.TIMESTAMP_PATTERN.search(f)
    assert not privacy.TIMESTAMP_PATTERN.search(reporting.render_time_text())


def test_parameterize_and_export_html(tmp_path):
    nb = render.parameterize(render.NOTEBOOKS["site"], {"site_id": "S01", "min_cell": 5})
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "min_cell = 5" in injected[0].source
    # fake an execution: outputs of every kind, and timing metadata to strip
    nb.metadata["papermill"]["start_time"] = "2026-01-01T10:00:00"
    code = [c for c in nb.cells if c.cell_type == "code"]
    code[-1].outputs = [
        nbformat.v4.new_output("display_data", data={"text/markdown": "**Footer text**"}),
        nbformat.v4.new_output("stream", name="stderr", text="a warning with /some/path\n"),
    ]
    code[-1].metadata["execution"] = {"iopub.status.busy": "2026-01-01T10:00:01"}
    render.sanitize_executed(nb)
    assert "start_time" not in nb.metadata["papermill"] and "execution" not in code[-1].metadata
    out = render.export_html(nb, tmp_path / "x.html", renderer_label="nbconvert")
    html = out.read_text()
    assert "Footer text" in html and "a warning" not in html
    assert "rp.load_run" not in html and "IPSO sepsis report" in html  # code hidden, title kept
    assert oct(out.stat().st_mode & 0o777) == "0o644"


def test_parse_formats_and_names():
    assert render.parse_formats("html,pdf") == ("html", "pdf")
    with pytest.raises(ValueError, match="formats"):
        render.parse_formats("docx")
    assert render.report_name("site", "S01") == "site_S01"
    with pytest.raises(ValueError):
        render.report_name("site", None)
    assert render.resolve_renderer("nbconvert") == "nbconvert"


def test_render_executed_pdf_without_quarto_warns(tmp_path):
    if render.find_quarto() is not None:
        pytest.skip("quarto present")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("hello")])
    p = tmp_path / "r.ipynb"
    nbformat.write(nb, p)
    with pytest.warns(render.RenderWarning, match="Quarto"):
        out = render.render_executed(p, tmp_path / "out", formats=("html", "pdf"))
    assert set(out) == {"html"} and out["html"].name == "r.html"


def test_cli_report_rejects_unknown_site(tmp_path):
    from analysis.simulate import simulate_collaborative

    simulate_collaborative(sites=2, months=3, episodes_per_site_month=2).write(tmp_path / "d")
    proc = subprocess.run([str(BIN / "ipso"), "report", "site", "S99", "--data", str(tmp_path / "d"),
                           "--out", str(tmp_path / "r")], check=False, capture_output=True, text=True)
    assert proc.returncode == 2 and "S99" in proc.stderr
    proc = subprocess.run([str(BIN / "ipso"), "report", "collaborative", "--formats", "docx"],
                          check=False, capture_output=True, text=True)
    assert proc.returncode == 2 and "formats" in proc.stderr


def test_masked_for_plot_blanks_suppressed_points():
    df = pd.DataFrame({"month": range(4), "deaths": [0, 3, 25, 30], "episodes": [50, 60, 70, 80]})
    df["pct"] = 100 * df["deaths"] / df["episodes"]
    m = reporting.masked_for_plot(df, ["deaths", "episodes"], derived={"pct": ["deaths", "episodes"]})
    assert m["deaths"].isna().tolist() == [False, True, True, False]  # 3 and its complement (25)
    assert m["pct"].isna().tolist() == [False, True, True, False]
    assert m.attrs["suppressed_cells"] == 4 and m.loc[3, "pct"] == pytest.approx(37.5)

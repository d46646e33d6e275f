"""Report sections and shared fits: cache reuse, privacy of labels and messages, small counts."""

from __future__ import annotations

import json
import pickle

import pandas as pd
import pytest

from analysis import report_sections as rs
from analysis import reporting as rp
from analysis.simulate import simulate_collaborative


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("sim")
    simulate_collaborative(sites=6, months=36, episodes_per_site_month=25).write(d)
    return d


@pytest.fixture(scope="module")
def run(data_dir):
    return rp.load_run(data_dir, run_key="k-test")


@pytest.fixture()
def shown(monkeypatch):
    out: list = []
    monkeypatch.setattr(rp, "show", out.append)
    return out


def test_compute_shared_writes_and_notebooks_reuse(run, data_dir, tmp_path):
    shared_dir = tmp_path / "_shared"
    rp.compute_shared(data_dir, shared_dir, "k-test")
    names = {p.name for p in shared_dir.iterdir()}
    assert ({f"{n}.pkl" for n in rs.SITE_ITEMS if n != "store"}
            | {rs.SHARED_META, rp.SITE_SLICES_DIR, rs.results_path(shared_dir).name} <= names)
    # the results store of every scope, and a site's rows alone on request
    store = rs.load_store(shared_dir)
    assert set(store.frame["scope"]) == {"collaborative", *run.sites["site_id"]}
    part = rs.load_store(shared_dir, scope="S01")
    assert set(part.frame.loc[part.frame["component"] != "oe", "scope"]) <= {"S01", "collaborative"}
    meta = json.loads((shared_dir / rs.SHARED_META).read_text())
    assert meta["data_hash"] == run.data_hash
    # a planted marker in a pickle is what a notebook gets back: the file is really reused
    sm = pickle.loads((shared_dir / "site_months.pkl").read_bytes())
    sm = sm.assign(marker=1)
    (shared_dir / "site_months.pkl").write_bytes(pickle.dumps(sm))
    assert "marker" in rs.SharedFits(run, shared_dir).get("site_months")
    # other data (different hash) -> the cache is ignored and fits are recomputed
    meta["data_hash"] = "0" * 64
    (shared_dir / rs.SHARED_META).write_text(json.dumps(meta))
    assert "marker" not in rs.SharedFits(run, shared_dir).get("site_months")


def test_expected_deaths_sum_to_observed_in_baseline(run):
    """The case-mix model is a baseline-only logistic model with an intercept, so its expected
    deaths over baseline episodes equal the observed deaths (score equation of the intercept)."""
    sm = rs.SharedFits(run).get("site_months")
    pre = sm[~sm["post"]]
    assert pre[rs.EXPECTED].sum() == pytest.approx(pre[rs.OUTCOME].sum(), rel=1e-6)


def test_site_funnel_names_only_own_hospital(run):
    shared = rs.SharedFits(run)
    own = "S02"
    labels = {s: run.label(s, viewer=own) for s in run.sites["site_id"]}
    f = rs._funnel(run, shared, labels)
    shown_labels = set(f.data["site"])
    assert run.site_name(own) in shown_labels
    others = set(run.sites["site_name"]) - {run.site_name(own)}
    assert not shown_labels & (others | set(run.sites["site_id"]))
    assert shown_labels - {run.site_name(own)} <= set(run.pseudonyms.values())


def test_reason_scrubs_dates_and_hospitals(run):
    name = run.site_name("S03")
    msg = rs._reason(ValueError(f"site 'S03' ({name}) at Timestamp('2019-11-01 00:00:00') failed"), run)
    assert "S03" not in msg and name not in msg and "00:00" not in msg and "2019-11-01" not in msg
    assert "2019-11" in msg and "a hospital" in msg


def test_sections_display_without_errors(run, shown):
    shared = rs.SharedFits(run)
    checks = rp.estimability(run, "S01")
    rs.site_its_section(run, shared, "S01", checks)
    rs.site_survival_section(run, "S01", checks)
    rs.collaborative_its_section(run, shared)
    kinds = [type(o).__name__ for o in shown]
    # raster figures: their exact coordinates would give back what was plotted (issue 14)
    assert kinds.count("RasterFigure") >= 4, kinds
    text = " ".join(str(getattr(o, "text", getattr(o, "data", o))) for o in shown)
    for s, n in zip(run.sites["site_id"], run.sites["site_name"]):
        assert n not in text
        assert f">{s}<" not in text  # not as an SVG text label


def test_not_estimable_when_no_post_months(run, shown):
    checks = {"post_months": rp.not_estimable("Effect of IPSO", "no months after go-live yet")}
    rs.site_its_section(run, rs.SharedFits(run), "S01", checks)
    assert len(shown) == 1 and isinstance(shown[0], rp.NotEstimable)


def test_impact_frame_blanks_crude_values_on_small_counts(run):
    """A site whose deaths are fewer than min_cell in a period gets no crude mortality values."""
    from analysis.impact import by_the_numbers

    ep = run.episodes
    deaths = ep.groupby(["site_id", "post"])["sam30"].sum().unstack()
    small = deaths[(deaths > 0).all(axis=1) & (deaths < run.min_cell).any(axis=1)].index
    big = deaths[(deaths >= run.min_cell).all(axis=1)].index
    if len(small) == 0 or len(big) == 0:
        pytest.skip("simulation gave no site with small (or large) death counts")
    for site, blank in ((small[0], True), (big[0], False)):
        t = rs.impact_frame(run, by_the_numbers(run, site_id=site), site)
        row = t[t["Measure"].str.contains("mortality")].iloc[0]
        assert (row["Before (crude)"] == "") is blank
        assert (row["After (crude)"] == "") is blank


def test_shared_fit_failure_is_a_note_not_an_error(run):
    """No deaths at all: no case-mix model, so every mortality fit is a not-estimable note."""
    ep = run.episodes.assign(sam30=False, sam3=False)
    no_deaths = rp.RunData(**{**run.__dict__, "episodes": ep})
    shared = rs.SharedFits(no_deaths)
    assert isinstance(shared.get("casemix"), rp.NotEstimable)
    assert isinstance(shared.get("oe_by_site"), rp.NotEstimable)
    sm = shared.get("site_months")
    assert isinstance(sm, pd.DataFrame) and rs.EXPECTED not in sm
    assert isinstance(shared.get("multisite"), rp.NotEstimable)


def test_site_in_pool_names_no_other_hospital(run):
    shared = rs.SharedFits(run)
    text = str(rs.site_in_pool(run, shared, "S01"))
    bs = shared.get("by_site")
    row = bs[bs["site"] == "S01"].iloc[0]
    if row["status"] == "ok":
        assert f"{row['estimate']:.2f}" in text
    for s, n in zip(run.sites["site_id"], run.sites["site_name"]):
        assert s not in text and n not in text


def test_site_slice_matches_full_run_and_refuses_other_hospitals(run, data_dir, tmp_path):
    shared_dir = tmp_path / "_shared"
    rp.compute_shared(data_dir, shared_dir, "k-test")
    part = rp.load_run(data_dir, run_key="k-test", site_id="S02", shared_dir=shared_dir)
    assert part.scope == "S02"
    full = rp.load_run(data_dir, run_key="k-test")
    pd.testing.assert_frame_equal(part.episodes_for("S02").reset_index(drop=True),
                                  full.episodes_for("S02").reset_index(drop=True))
    assert part.pseudonyms == full.pseudonyms and part.data_hash == full.data_hash
    # only this hospital's site-months: a slice's size does not grow with the collaborative
    own = full.site_months[full.site_months["site_id"] == "S02"].reset_index(drop=True)
    pd.testing.assert_frame_equal(part.site_months, own)
    assert rp.estimability(part, "S02") == rp.estimability(full, "S02")
    assert str(rp.report_header(part, "S02")) == str(rp.report_header(full, "S02"))
    # the site's headline numbers from the slice equal those from the whole collaborative
    a = rs.SharedFits(part, shared_dir)
    from analysis.impact import by_the_numbers
    ta = by_the_numbers(a.get("store"), site_id="S02").table  # read from the shared store
    tb = by_the_numbers(full, site_id="S02").table  # estimated here from the whole collaborative
    pd.testing.assert_frame_equal(ta, tb)
    assert set(a.get("store").frame["scope"]) == {"collaborative", *full.sites["site_id"]}
    with pytest.raises(ValueError, match="only"):
        part.episodes_for("S01")
    with pytest.raises(ValueError, match="only"):
        part.forbidden_strings("S02")
    # a slice cannot compute collaborative fits: refused, never computed from one hospital
    with pytest.raises(RuntimeError, match="site slice"):
        rs.SharedFits(part, tmp_path / "empty").get("by_site")


def test_site_slice_ignored_when_data_cut_off_or_key_differ(data_dir, tmp_path):
    shared_dir = tmp_path / "_shared"
    rp.compute_shared(data_dir, shared_dir, "k-test")
    assert rp.load_run(data_dir, site_id="S01", shared_dir=shared_dir, as_of="2017-06").scope is None
    assert rp.load_run(data_dir, site_id="S01").scope is None
    other = rp.load_run(data_dir, run_key="other", site_id="S01", shared_dir=shared_dir)
    assert other.scope == "S01"
    assert other.pseudonyms == rp.load_run(data_dir, run_key="other").pseudonyms
    # changed data files (same names): the slices no longer apply
    copy = tmp_path / "data"
    copy.mkdir()
    for p in data_dir.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    (copy / "note.txt").write_text("changed")
    assert rp.load_run(copy, site_id="S01", shared_dir=shared_dir).scope is None


def test_shared_casemix_model_is_saved_without_its_data(run, data_dir, tmp_path):
    shared_dir = tmp_path / "_shared"
    rp.compute_shared(data_dir, shared_dir, "k-test")
    saved = pickle.loads((shared_dir / "casemix.pkl").read_bytes())
    fresh = rs.SharedFits(run).get("casemix")
    ep = run.episodes_for("S03")
    pd.testing.assert_series_equal(saved.predict(ep), fresh.predict(ep))
    pd.testing.assert_frame_equal(saved.summary(), fresh.summary())
    assert (shared_dir / "casemix.pkl").stat().st_size < len(pickle.dumps(fresh)) / 5


def test_shared_fits_and_slices_follow_the_batch_cut_off(data_dir, tmp_path):
    shared_dir = tmp_path / "_shared"
    rp.compute_shared(data_dir, shared_dir, "k-test", parameters={"as_of": "2017-06"})
    part = rp.load_run(data_dir, run_key="k-test", as_of="2017-06", site_id="S01", shared_dir=shared_dir)
    full = rp.load_run(data_dir, run_key="k-test", as_of="2017-06")
    assert part.scope == "S01" and part.as_of == full.as_of == pd.Timestamp("2017-06-01")
    assert part.episodes["month"].max() <= pd.Timestamp("2017-06-01")
    # the shared fits were made with the same cut-off: a site slice can use them
    by_site = rs.SharedFits(part, shared_dir).get("by_site")
    pd.testing.assert_frame_equal(by_site, rs.SharedFits(full).get("by_site"))
    # without the cut-off the slices do not apply
    assert rp.load_run(data_dir, site_id="S01", shared_dir=shared_dir).scope is None

"""analysis.results: the results store's shape and rules, the estimator registry, the cut-off;
its supporting rows (event study, pre-trend test, hospital comparison, curves, case-mix model,
crude values), the staggered primary and its sensitivity rows, publication rules and per-scope
loading."""

from __future__ import annotations

import functools
import json
import math
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import results as R
from analysis.derive import cut_at
from analysis.plan import Specification, default_plan
from analysis.simulate import simulate_collaborative, write_collaborative
from analysis.store import collaborative_from_frames

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def coll():
    sim = simulate_collaborative(seed=31, sites=10, months=60, scale=1.5)
    return collaborative_from_frames(sim.episodes, sim.sites, sim.site_months)


@pytest.fixture(scope="module")
def store(coll):
    return R.estimate_all(coll)


def test_store_columns_and_one_primary_row_per_estimand_and_scope(store, coll):
    f = store.frame
    assert list(f.columns) == list(R.COLUMNS)
    assert set(f["component"]) <= set(R.COMPONENTS)
    plan = default_plan()
    scopes = ["collaborative", *sorted(coll.sites["site_id"])]
    assert set(f["scope"]) == set(scopes)
    effect = f[f["component"] == "effect"]
    for eid in plan.ids():
        for scope in scopes:
            prim = effect[(effect["estimand"] == eid) & (effect["scope"] == scope)
                          & (effect["role"] == "primary")]
            assert len(prim) == 1, (eid, scope)
            assert store.primary(eid, scope)["spec"] == prim["spec"].iloc[0]
    # supporting rows are never effect rows: the rule "one primary row" is about effects only
    assert (f.loc[f["component"] != "effect", "quantity"] != "effect").all()
    assert (f["plan_version"] == plan.version).all() and (f["data_hash"] == coll.data_hash).all()
    assert (f.loc[f["role"] != "primary", "reason"].str.len() > 0).all()
    # every row's method names its estimator in one sentence
    assert (f.loc[f["status"] == "ok", "method"].str.len() > 20).all()
    assert store.primary("sam30")["estimator"] == "its_staggered"
    assert "imputation estimator" in store.primary("sam30")["method"]


def test_descriptive_rows_make_no_inferential_claim(store):
    d = store.rows(role="descriptive")
    assert len(d) and d[["lower", "upper", "se", "p_value"]].isna().all().all()
    assert (d["scale"] == "crude ratio").all()
    assert d["method"].str.contains("no interval or p-value").all()


def test_estimates_are_coherent_and_reasons_carry_no_counts(store):
    f = store.frame
    ok = f[(f["status"] == "ok") & (f["role"] != "descriptive") & (f["component"] == "effect")]
    assert (ok["lower"] <= ok["estimate"]).all() and (ok["estimate"] <= ok["upper"]).all()
    has_se = ok[~ok["variant"].str.startswith("M = ")]  # Rambachan-Roth bounds carry no SE
    assert (has_se["se"] > 0).all() and has_se["p_value"].between(0, 1).all()
    bad = f[f["status"] != "ok"]
    assert bad["estimate"].isna().all() and (bad["status_reason"].str.len() > 0).all()
    # no count (nor threshold a count could be read from) in any reason
    assert not f["status_reason"].str.contains(r"\d").any(), f["status_reason"].unique()
    assert set(f["status"]) <= {"ok", "not estimable"}
    # the collaborative primary estimates of a 10-site collaborative are all estimable
    prim = store.rows(scope="collaborative", role="primary")
    assert (prim["status"] == "ok").all(), prim[["estimand", "status_reason", "note"]]


def test_wording_fields_follow_the_estimand(store):
    r = store.primary("hospital_days")
    assert r["per"] == "per child with the same case mix" and r["better"] == "lower"
    r = store.primary("hospital_days_population")
    assert "newly recognised milder cases" in r["per"]
    assert store.primary("sam30", "S01")["estimator"] == "site_eb"


def test_parquet_round_trip_and_publishable(store, tmp_path):
    path = store.to_parquet(tmp_path / "results.parquet")
    back = R.ResultsStore.read_parquet(path)
    pd.testing.assert_frame_equal(back.frame, store.frame)
    assert back.plan.to_dict() == store.plan.to_dict()
    assert back.meta["plan_version"] == store.meta["plan_version"]
    pub = store.publishable(min_cell=11)
    assert "note" not in pub
    small = (pub["n"] > 0) & (pub["n"] < 11) | (pub["events"] > 0) & (pub["events"] < 11)
    assert not small.any()
    with pytest.raises(ValueError, match="not an ipso results store"):
        pd.DataFrame({"a": [1]}).to_parquet(tmp_path / "other.parquet")
        R.ResultsStore.read_parquet(tmp_path / "other.parquet")


def test_adding_an_estimator_is_a_function_and_a_registry_line(coll):
    @R.register_estimator("constant_test")
    def constant(ctx, est, spec, scopes):
        return {s: R.Estimate(1.5, 1.2, 1.9, 0.1, 0.01, method="a test estimator") for s in scopes}

    try:
        plan = default_plan().with_spec(
            "recognition", "collaborative",
            Specification("constant", "sensitivity", "constant_test", "registry test"))
        st = R.estimate_all(coll, plan, scopes="collaborative", estimands=["recognition"])
        row = st.rows("recognition", role="sensitivity", spec="constant").iloc[0]
        assert row["estimate"] == 1.5 and row["method"] == "a test estimator"
    finally:
        del R.ESTIMATORS["constant_test"]


def test_site_eb_points_at_the_shrinkage_function(coll, monkeypatch):
    from analysis.pooling import empirical_bayes

    calls = {}

    def fixed_tau(yi, vi, labels, *, alpha=0.05, **kw):
        calls["k"], calls["vcov"] = len(yi), kw.get("vcov")
        for k in ("prior", "interval", "prior_scale"):
            kw.pop(k, None)
        return empirical_bayes(yi, vi, labels, alpha=alpha, tau2=0.0, **kw)

    monkeypatch.setitem(R.ESTIMATORS, "site_eb", functools.partial(R.site_eb, shrink=fixed_tau))
    plan = default_plan()
    params = {**plan.primary("sam30", "site").params, "min_expected_events": 5.0}
    plan = plan.replace_spec("sam30", "site", "site_eb", params=params)
    st = R.estimate_all(coll, plan, scopes="sites", estimands=["sam30"], roles=["primary"])
    ok = st.frame[st.frame["status"] == "ok"]
    assert calls["k"] == len(ok) >= 4
    assert calls["vcov"].shape == (calls["k"], calls["k"])  # the shared trend correlates them
    # tau^2 = 0: every hospital gets the collaborative mean
    assert np.allclose(ok["estimate"], ok["estimate"].iloc[0])


def test_site_eb_too_little_information_rule(store, coll):
    """Fewer than 20 expected deaths before or after go-live: no own effect, and the reason says
    so in words; the others are partially pooled (narrower than their own estimate)."""
    ctx = R.EstimationContext(coll)
    plan = default_plan()
    est, spec = plan.get("sam30", "site"), plan.primary("sam30", "site")
    before, after = R._expected_by_period(ctx, est, spec)
    eb = store.rows("sam30", role="primary", level="site").set_index("scope")
    few = (before < 20) | (after < 20)
    assert few.any() and (~few).any()
    assert (eb.loc[few[few].index, "status"] == "not estimable").all()
    assert (eb.loc[few[few].index, "status_reason"]
            == "too few deaths to estimate this hospital's own effect").all()
    own, _ = R._site_level_changes(ctx, est, spec)
    for s in few[~few].index:
        if eb.loc[s, "status"] == "ok":
            assert eb.loc[s, "upper"] / eb.loc[s, "lower"] < own[s].upper / own[s].lower
    assert "empirical Bayes" in eb["method"].iloc[0]
    assert "20 expected deaths" in eb["method"].iloc[0]


def test_as_of_censors_outcomes_at_the_cut_off(coll):
    as_of = "2019-06"
    st = R.estimate_all(coll, scopes="collaborative", as_of=as_of, estimands=["sam30"],
                        roles=["primary"])
    assert (st.frame["as_of"] == "2019-06").all()
    ctx = R.EstimationContext(coll, as_of=as_of)
    cut = pd.Timestamp("2019-07-01")
    assert ctx.episodes["time_zero"].max() < cut
    assert ctx.excluded_after_as_of == int((coll.episodes["time_zero"] >= cut).sum()) > 0
    ep = ctx.episodes
    late = ep["time_zero"] > cut - pd.Timedelta(days=30)
    assert not ep.loc[late, "sam30_complete"].any() and ep.loc[~late, "sam30_complete"].all()
    assert not ep.loc[late, "sam30"].any()  # open windows count neither as death nor survival
    assert not (ep["death_time"] >= cut).any() and not (ep["discharge_time"] >= cut).any()
    base = ctx.base_months()
    june = base[base["month"] == "2019-06-01"]
    assert (june["sam30_n"] == 0).all() and (june["episodes"] > 0).any()


def test_cli_estimate(tmp_path):
    sim = simulate_collaborative(seed=32, sites=6, months=48, scale=1.5)
    write_collaborative(sim, tmp_path / "data")
    out = tmp_path / "results.parquet"
    r = subprocess.run([str(BIN / "ipso"), "estimate", "--data", str(tmp_path / "data"), "--out",
                        str(out), "--as-of", "2019-06", "--scopes", "collaborative", "--json"],
                       capture_output=True, text=True, check=True)
    summary = json.loads(r.stdout)
    assert summary["as_of"] == "2019-06" and out.exists()
    st = R.ResultsStore.read_parquet(out)
    assert len(st.frame) == summary["rows"] and (st.frame["scope"] == "collaborative").all()
    assert "sam30" in summary["collaborative_primary"]
    bad = tmp_path / "plan.yml"
    bad.write_text("extends: default\noverrides:\n  - {estimand: sam30, spec: its_multisite, "
                   "covariance: robust}\n")
    r = subprocess.run([str(BIN / "ipso"), "estimate", "--data", str(tmp_path / "data"), "--out",
                        str(out), "--plan", str(bad)], capture_output=True, text=True, check=False)
    assert r.returncode == 2 and "'sam30'" in r.stderr and "field 'covariance'" in r.stderr
    r = subprocess.run([str(BIN / "ipso"), "estimate", "--data", str(tmp_path / "data"), "--out",
                        str(out), "--as-of", "June"], capture_output=True, text=True, check=False)
    assert r.returncode == 2 and "as_of" in r.stderr


def test_cut_at_matches_a_later_extract():
    # A death 10 days after T0 in an episode 5 days before the cut-off is not seen yet; the
    # episode is left out of 30-day mortality (its window is open) and censored at the cut-off
    # in survival analysis.
    from analysis.derive import attach_sites, derive_episodes
    from analysis.survival import mortality_times

    sim = simulate_collaborative(seed=33, sites=3, months=30)
    ep = attach_sites(derive_episodes(sim.episodes), sim.sites)
    cut_ep, n_late = cut_at(ep, "2017-12")
    cutoff = pd.Timestamp("2018-01-01")
    assert n_late == int((ep["time_zero"] >= cutoff).sum())
    full = ep.set_index("episode_id").loc[cut_ep["episode_id"]]
    seen_death = full["death_time"] < cutoff
    assert (cut_ep["death_time"].notna().to_numpy() == seen_death.to_numpy()).all()
    mt = mortality_times(cut_ep)
    follow = (cutoff - cut_ep["time_zero"]) / pd.Timedelta(days=1)
    assert (mt["time"] <= np.minimum(30, follow) + 1e-9).all()
    # every death seen within 30 days of T0 is an event, whether or not its window closed
    seen30 = cut_ep["died_in_hospital"] & (cut_ep["days_t0_to_death"] <= 30)
    assert (mt["event"].astype(bool) == seen30).all()
    assert cut_ep["los_days"].isna().sum() >= int(((cutoff - cut_ep["time_zero"])
                                                   < pd.Timedelta(days=90)).sum())


def test_event_study_and_pretrend_test_of_each_rate_primary(store):
    for eid in ("sam30", "sam3", "recognition"):
        prim = store.primary(eid)
        assert prim["estimator"] == "its_staggered"
        es = store.event_study(eid)
        assert list(es["time_point"]) == list(range(-12, int(es["time_point"].max()) + 1))
        assert (es.loc[es["time_point"] < 0, "period"] == "lead").all()
        assert (es.loc[es["time_point"] >= 0, "period"] == "lag").all()
        ok = es[es["status"] == "ok"]
        assert (ok["lower"] <= ok["estimate"]).all() and (ok["estimate"] <= ok["upper"]).all()
        assert (ok["n_sites"] >= 1).all() and ok["extrapolated_share"].between(0, 1).all()
        assert (es["role"] == "primary").all() and (es["spec"] == prim["spec"]).all()
        pt = store.pretrend_test(eid)
        assert pt is not None and pt["df"] == 12 and 0 <= pt["p_value"] <= 1
        assert pt["statistic"] > 0
        # 10 hospitals, 12 leads: no F reference, the chi-square statistic instead
        assert pt["scale"] == ("F statistic" if pt["n_sites"] > pt["df"] else "chi-square statistic")
    # the secondary / per-episode estimands have no event study
    assert store.event_study("bundle").empty


def test_staggered_primary_matches_a_direct_fit(coll, store):
    """The primary is the imputation estimate averaged over event months 6-18; transition 12 is
    event month 12 alone; panel HAC is the same fit's other covariance."""
    from analysis.staggered import fit_its_staggered

    ctx = R.EstimationContext(coll)
    plan = default_plan()
    est, spec = plan.get("recognition", "collaborative"), plan.primary("recognition", "collaborative")
    frame, y, x, _ = ctx.series(est, spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = fit_its_staggered(frame, y, site="site_id", time="month", go_live="go_live_month",
                                exposure=x, seasonality=2, site_trends=True)
    prim = store.primary("recognition")
    assert prim["estimate"] == pytest.approx(fit.average_effect(6, 18).relative, rel=1e-10)
    assert prim["se"] == pytest.approx(fit.average_effect(6, 18).se, rel=1e-10)
    t12 = store.rows("recognition", spec="transition_12").iloc[0]
    assert t12["estimate"] == pytest.approx(fit.effect_at(12).relative, rel=1e-10)
    hac = store.rows("recognition", spec="panel_hac").iloc[0]
    assert hac["estimate"] == pytest.approx(prim["estimate"], rel=1e-12)
    assert hac["se"] == pytest.approx(fit.with_se("panel_hac").average_effect(6, 18).se, rel=1e-10)
    assert "event months 6-18" in prim["method"] and "t interval" in prim["method"]


def test_sensitivity_rows_of_the_mortality_primary(store, coll):
    rows = store.rows("sam30", role="sensitivity")
    names = set(rows["spec"])
    assert {"placebo_in_time", "leave_one_wave_out", "transition_0", "transition_12",
            "panel_hac", "rambachan_roth", "its_multisite"} <= names
    assert (rows["reason"].str.len() > 10).all()
    lowo = rows[rows["spec"] == "leave_one_wave_out"]
    n_waves = coll.sites["go_live"].nunique()
    assert len(lowo) == n_waves and lowo["variant"].str.startswith("without wave").all()
    rr = rows[rows["spec"] == "rambachan_roth"].sort_values("statistic")
    assert list(rr["variant"]) == ["M = 0.5", "M = 1", "M = 2"]
    ok = rr[rr["status"] == "ok"]
    # identified sets and their intervals widen with M and contain the parallel-trends point
    assert (np.diff(ok["bound_upper"] - ok["bound_lower"]) > 0).all()
    assert ((ok["lower"] <= ok["bound_lower"]) & (ok["bound_upper"] <= ok["upper"])).all()
    placebo = rows[rows["spec"] == "placebo_in_time"].iloc[0]
    assert placebo["status"] == "ok" and placebo["lower"] < placebo["estimate"] < placebo["upper"]


def test_hospital_comparison_rows(store, coll):
    sites, col = store.funnel("sam30")
    assert set(sites["scope"]) == set(coll.sites["site_id"])
    q = col.set_index("quantity")
    assert set(q.index) == {"collaborative O/E", "over-dispersion", "expected flags by chance",
                            "hospitals flagged"}
    assert q.loc["expected flags by chance", "estimate"] == pytest.approx(10 * 0.002)
    ok = sites[sites["status"] == "ok"]
    assert set(ok["flag"]) <= {"", "high", "low"}
    assert ((ok["bound_lower"] < 1) & (1 < ok["bound_upper"])).all()
    assert ((ok["lower"] <= ok["estimate"]) & (ok["estimate"] <= ok["upper"])).all()
    # relative O/E times the centre gives back observed / expected deaths
    target = q.loc["collaborative O/E", "estimate"]
    np.testing.assert_allclose(ok["estimate"] * target * ok["x"], ok["events"], rtol=1e-9)
    # the centre is the collaborative's ratio: the relative O/Es average 1 weighted by expected
    assert np.average(ok["estimate"], weights=ok["x"]) == pytest.approx(1.0)
    flagged = (ok["estimate"] > ok["bound_upper"]) | (ok["estimate"] < ok["bound_lower"])
    assert ((ok["flag"] != "") == flagged).all()
    labels = {s: f"Hospital {i}" for i, s in enumerate(coll.sites["site_id"])}
    pdata = store.funnel_plot_data("sam30", labels=labels)
    assert set(pdata.points["label"]) == set(labels.values())
    assert (pdata.points["x"] % 5 == 0).all() and pdata.target == pytest.approx(target)
    with pytest.raises(ValueError, match="no label supplied"):
        store.funnel_plot_data("sam30", labels={})


def test_curves_are_descriptive_on_a_coarse_grid(store):
    c = store.curves("sam30")
    assert set(c["quantity"]) == {"30-day survival"}
    assert set(c["period"]) == {"before go-live", "after go-live"}
    assert set(c["x"]) == set(R.CURVE_DAYS)
    assert c["p_value"].isna().all() and (c["role"] == "descriptive").all()
    for _, g in c.groupby("period"):
        g = g.sort_values("x")
        assert (np.diff(g["estimate"]) <= 1e-12).all() and (np.diff(g["events"]) >= 0).all()
        assert ((g["lower"] <= g["estimate"]) & (g["estimate"] <= g["upper"])).all()
        assert (g["events"].max() >= R.MIN_CURVE_EVENTS)
    los = store.curves("hospital_days")
    assert set(los["quantity"]) == {"discharged alive", "died in hospital"}
    # a hospital with too few deaths has no curve, only a row saying so
    site_rows = store.rows("sam30", level="site", component="curve")
    small = site_rows[site_rows["status"] != "ok"]
    assert (small["status_reason"] == "too few deaths for a survival curve").all()


def test_case_mix_model_and_crude_values(store, coll):
    mf = store.model_fit("sam30").set_index("quantity")
    c = mf.loc["c-statistic"]
    assert 0.5 < c["estimate"] < 1 and c["lower"] < c["estimate"] < c["upper"]
    hl = mf.loc["Hosmer-Lemeshow"]
    assert hl["df"] == 8 and 0 <= hl["p_value"] <= 1
    cal = store.model_fit("sam30")
    cal = cal[cal["quantity"] == "calibration"]
    assert len(cal) == 10 and cal["n"].sum() == c["n"] and cal["events"].sum() == c["events"]
    summ = store.rows("sam30", "collaborative", component="summary").set_index("period")
    ep = coll.episodes[coll.episodes["sam30_complete"]]
    post = ep["months_since_go_live"] >= 0
    assert summ.loc["before go-live", "estimate"] == pytest.approx(100 * ep.loc[~post, "sam30"].mean())
    assert summ.loc["after go-live", "estimate"] == pytest.approx(100 * ep.loc[post, "sam30"].mean())
    crude = store.rows("sam30", "collaborative", spec="crude_pre_post").iloc[0]
    assert crude["estimate"] == pytest.approx(summ.loc["after go-live", "estimate"]
                                              / summ.loc["before go-live", "estimate"])


def test_publishable_suppresses_what_could_reveal_small_counts(store):
    pub = store.publishable(min_cell=11)
    assert "note" not in pub
    small = ((pub["n"] > 0) & (pub["n"] < 11)) | ((pub["events"] > 0) & (pub["events"] < 11))
    assert not small.any()
    # curve points: no cumulative count, complement or step between kept points of 1-10
    full = store.frame.set_index(["estimand", "scope", "spec", "quantity", "period", "x"])
    for key, g in pub[pub["component"] == "curve"].groupby(
            ["estimand", "scope", "spec", "quantity", "period"]):
        g = g.sort_values("x")
        ev = full.loc[[(*key, x) for x in g["x"]], "events"].to_numpy()
        n = full.loc[[(*key, x) for x in g["x"]], "n"].to_numpy()
        steps = np.diff(np.r_[0.0, ev])
        for v in (*ev, *(n - ev), *steps):
            assert not 0 < v < 11
    dropped = len(store.frame[store.frame["component"] == "curve"]) - len(
        pub[pub["component"] == "curve"])
    assert dropped > 0
    oe = pub[(pub["component"] == "oe") & (pub["level"] == "site")]
    assert (oe["x"] % 5 == 0).all() and oe[["bound_lower", "bound_upper"]].isna().all().all()
    assert (oe["estimate"].dropna() == oe["estimate"].dropna().round(2)).all()
    raw = store.frame[(store.frame["component"] == "oe") & (store.frame["level"] == "site")]
    few = raw.loc[(raw["events"] > 0) & (raw["events"] < 11), "scope"]
    assert oe[oe["scope"].isin(few)][["lower", "upper"]].isna().all().all()
    with pytest.raises(ValueError):
        store.publishable(min_cell=0)


def test_scope_slice_on_read(store, tmp_path, coll):
    path = store.to_parquet(tmp_path / R.RESULTS_FILE)
    part = R.load_store(tmp_path, scope="S02")
    assert set(part.frame["scope"]) == set(store.frame["scope"])  # every hospital's oe row
    assert set(part.frame.loc[part.frame["component"] != "oe", "scope"]) == {"S02", "collaborative"}
    pd.testing.assert_frame_equal(
        part.frame.reset_index(drop=True),
        store.for_scope("S02").frame.reset_index(drop=True))
    assert part.primary("sam30", "S02")["spec"] == "site_eb"
    whole = R.load_store(path)
    assert len(whole) == len(store)
    with pytest.raises(ValueError, match="no results store"):
        R.load_store(tmp_path / "nowhere")


def test_staggered_refuses_calendar_months_without_events():
    from analysis.staggered import fit_its_staggered

    rng = np.random.default_rng(1)
    rows = []
    for s, go in ((0, 20), (1, 26), (2, 32), (3, 38)):
        for t in range(48):
            rows.append({"site": s, "t": t, "go": go, "y": rng.poisson(3.0), "x": 1.0})
    d = pd.DataFrame(rows)
    d.loc[d["t"] == 10, "y"] = 0
    with pytest.raises(ValueError, match="no events among untreated sites"):
        fit_its_staggered(d, "y", site="site", time="t", go_live="go", exposure="x")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = fit_its_staggered(d, "y", site="site", time="t", go_live="go", exposure="x",
                                calendar_effects=False, lags=8)
    assert math.isfinite(res.effect_at(5).relative)


def test_calendar_effects_auto_rule_keeps_sparse_primaries_estimable():
    """params calendar_effects 'auto' (the estimator's default): with a calendar month without any death
    among hospitals not yet live (8 small hospitals), the primary drops the calendar-month
    effects, says so in its method, and equals the fit forced to calendar_effects=False."""
    sim = simulate_collaborative(seed=11, sites=8, months=48, scale=1.2)
    small = collaborative_from_frames(sim.episodes, sim.sites, sim.site_months)
    plan = default_plan()
    spec = plan.primary("sam30", "collaborative")
    assert spec.estimator == "its_staggered"
    # the plan's sam30 primary has no calendar effects (plan 2026.12-2); 'auto' is the default
    spec = replace(spec, params={k: v for k, v in spec.params.items() if k != "calendar_effects"})
    est = plan.get("sam30", "collaborative")
    ctx = R.EstimationContext(small)
    auto = R.ESTIMATORS["its_staggered"](ctx, est, spec, ["collaborative"])["collaborative"]
    auto = auto[0] if isinstance(auto, list) else auto
    assert auto.status == "ok" and "no calendar-month effects" in auto.method
    forced = R.ESTIMATORS["its_staggered"](
        ctx, est, replace(spec, params={**spec.params, "calendar_effects": False}),
        ["collaborative"])["collaborative"]
    forced = forced[0] if isinstance(forced, list) else forced
    assert auto.estimate == pytest.approx(forced.estimate, rel=1e-12)
    on = R.ESTIMATORS["its_staggered"](
        ctx, est, replace(spec, params={**spec.params, "calendar_effects": True}),
        ["collaborative"])["collaborative"]
    on = on[0] if isinstance(on, list) else on
    assert on.status != "ok" and "could not be fitted" in on.status_reason

"""analysis.results: the results store's shape and rules, the estimator registry, the cut-off."""

from __future__ import annotations

import functools
import json
import math
import subprocess
import sys
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
    plan = default_plan()
    scopes = ["collaborative", *sorted(coll.sites["site_id"])]
    assert set(f["scope"]) == set(scopes)
    for eid in plan.ids():
        for scope in scopes:
            prim = f[(f["estimand"] == eid) & (f["scope"] == scope) & (f["role"] == "primary")]
            assert len(prim) == 1, (eid, scope)
            assert store.primary(eid, scope)["spec"] == prim["spec"].iloc[0]
    assert (f["plan_version"] == plan.version).all() and (f["data_hash"] == coll.data_hash).all()
    assert (f.loc[f["role"] != "primary", "reason"].str.len() > 0).all()


def test_descriptive_rows_make_no_inferential_claim(store):
    d = store.rows(role="descriptive")
    assert len(d) and d[["lower", "upper", "se", "p_value"]].isna().all().all()
    assert (d["scale"] == "crude ratio").all()
    assert d["method"].str.contains("no interval or p-value").all()


def test_estimates_are_coherent_and_reasons_carry_no_counts(store):
    f = store.frame
    ok = f[(f["status"] == "ok") & (f["role"] != "descriptive")]
    assert (ok["lower"] <= ok["estimate"]).all() and (ok["estimate"] <= ok["upper"]).all()
    assert (ok["se"] > 0).all() and ok["p_value"].between(0, 1).all()
    bad = f[f["status"] != "ok"]
    assert bad["estimate"].isna().all() and (bad["status_reason"].str.len() > 0).all()
    # no count (nor threshold a count could be read from) in any reason
    assert not f["status_reason"].str.contains(r"\d").any(), f["status_reason"].unique()
    assert set(f["status"]) <= {"ok", "not estimable"}
    # the collaborative primary estimates of a 10-site collaborative are all estimable
    prim = f[(f["scope"] == "collaborative") & (f["role"] == "primary")]
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
    calls = {}

    def stub(yi, vi, *, alpha=0.05):
        calls["k"] = len(yi)
        out = pd.DataFrame({"estimate": np.zeros(len(yi)), "se": np.full(len(yi), 0.1),
                            "lower": -0.2, "upper": 0.2, "shrinkage": 1.0})
        out.attrs["tau2"] = 0.0
        return out

    monkeypatch.setitem(R.ESTIMATORS, "site_eb", functools.partial(R.site_eb, shrink=stub))
    st = R.estimate_all(coll, scopes="sites", estimands=["sam30"], roles=["primary"])
    ok = st.frame[st.frame["status"] == "ok"]
    assert calls["k"] == len(ok) >= 3
    assert np.allclose(ok["estimate"], 1.0) and np.allclose(ok["upper"], math.exp(0.2))


def test_blup_shrinks_by_precision():
    y = np.array([-0.5, 0.0, 0.2, 0.4, -0.1, 0.3])
    v = np.array([0.01, 0.04, 0.09, 0.02, 0.05, 0.30])
    b = R.blup(y, v)
    mu, tau2 = b.attrs["mu"], b.attrs["tau2"]
    assert tau2 > 0
    lam = tau2 / (tau2 + v)
    np.testing.assert_allclose(b["estimate"], mu + lam * (y - mu))
    # the least precise study is pulled furthest toward the mean; intervals shrink too
    assert b["shrinkage"].idxmax() == int(np.argmax(v))
    assert (b["se"] < np.sqrt(v) + 1e-12).all()
    # no heterogeneity: every study gets the pooled mean
    same = R.blup(np.array([0.1, 0.1 + 1e-9, 0.1 - 1e-9]), np.array([0.04, 0.05, 0.06]))
    np.testing.assert_allclose(same["estimate"], same.attrs["mu"])


def test_as_of_censors_outcomes_at_the_cut_off(coll):
    as_of = "2019-06"
    st = R.estimate_all(coll, scopes="collaborative", as_of=as_of, estimands=["sam30"],
                        roles=["primary", "descriptive"])
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

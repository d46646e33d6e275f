"""analysis.impact.by_the_numbers: a view of the results store, checked against the simulator.

Reduced collaboratives as in tests/test_its_truth.py (30 sites x 84 months, doubled volumes,
seeds 101-104, the seeds that file uses, not chosen here). Truth: ``sim.truth["estimands"]``:
the primary rows are the per-child (same case mix) estimands, the secondary rows the population
(per recognised episode) ones.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest

from analysis import results as R
from analysis.impact import HEADLINE, METRICS, by_the_numbers
from analysis.simulate import simulate_collaborative
from analysis.store import collaborative_from_frames

SEEDS = (101, 102, 103, 104)
TRUTH_KEY = {
    "sam30": "sam30_rr_12m",
    "recognition": "recognition_rr_12m",
    "bundle": "bundle_rr_12m",
    "bundle_population": "bundle_rr_12m_population",
    "hospital_days": "los_ratio_12m",
    "hospital_days_population": "los_ratio_12m_population",
    "bolus_minutes": "minutes_to_bolus_ratio_12m_expected",
    "bolus_minutes_population": "minutes_to_bolus_ratio_12m_population_expected",
    "antibiotic_minutes": "minutes_to_antibiotic_ratio_12m_expected",
    "antibiotic_minutes_population": "minutes_to_antibiotic_ratio_12m_population_expected",
}


@pytest.fixture(scope="module")
def runs():
    out = []
    for s in SEEDS:
        sim = simulate_collaborative(seed=s, sites=30, months=84, scale=2.0)
        coll = collaborative_from_frames(sim.episodes, sim.sites, sim.site_months)
        out.append((sim, coll, by_the_numbers(coll)))
    return out


def test_table_shape_and_statuses(runs):
    for _, _, res in runs:
        t = res.summary()
        assert list(dict.fromkeys(t["metric"])) == list(METRICS)
        assert list(t["estimand"]) == [e for ids in HEADLINE.values() for e in ids]
        assert (t.groupby("metric")["role"].first() == "primary").all()
        assert (t["status"] == "ok").all(), t[["estimand", "status"]]
        assert t["description"].str.contains("12 months after go-live").all()
        assert (t["lower"] < t["estimate"]).all() and (t["estimate"] < t["upper"]).all()
        np.testing.assert_allclose(t["relative_change_pct"], 100 * (t["estimate"] - 1))
        assert "episode_id" not in t.columns and "patient_id" not in t.columns
        assert res.months_after == 12 and res.level == "collaborative"


def test_the_table_is_a_view_of_the_store(runs, monkeypatch):
    """Given a store, nothing is estimated: every number is the store's."""
    _, _, res = runs[0]
    store = res.store

    def refuse(*a, **k):
        raise AssertionError("by_the_numbers estimated something")

    monkeypatch.setattr(R, "estimate_all", refuse)
    t = by_the_numbers(store).table
    for r in t.itertuples():
        p = store.primary(r.estimand)
        assert (r.estimate, r.lower, r.upper, r.model) == (
            p["estimate"], p["lower"], p["upper"], p["method"])
        summ = store.rows(r.estimand, spec="crude_pre_post", component="summary")
        assert r.crude_pre == summ.loc[summ["period"] == "before go-live", "estimate"].iloc[0]
    pd.testing.assert_frame_equal(t, res.table)


@pytest.mark.parametrize("estimand", ["sam30", "recognition", "bundle", "hospital_days"])
def test_intervals_cover_truth(runs, estimand):
    # 95% intervals over 4 independent replicates: at most one miss (P(>= 2 misses) ~ 1.4%
    # under nominal coverage), as in tests/test_its_truth.py
    covers = []
    for sim, _, res in runs:
        truth = sim.truth["estimands"][TRUTH_KEY[estimand]]
        row = res.table.set_index("estimand").loc[estimand]
        covers.append(row["lower"] <= truth <= row["upper"])
    assert sum(covers) >= len(SEEDS) - 1, covers


def test_crude_mortality_biased_by_recognition_expansion_adjusted_not(runs):
    its_err, crude_err, its_se = [], [], []
    for sim, _, res in runs:
        e = sim.truth["estimands"]
        truth = math.log(e["sam30_rr_12m"])
        row = res["mortality"]
        its_err.append(math.log(row["estimate"]) - truth)
        crude_err.append(math.log1p(row["crude_change_pct"] / 100) - truth)
        its_se.append((math.log(row["upper"]) - math.log(row["lower"])) / (2 * 2.0))
    r = len(SEEDS)
    # adjusted: mean log error within 2.5 SEs of a mean of r independent estimates
    assert abs(np.mean(its_err)) < 2.5 * np.mean(its_se) / math.sqrt(r)
    # crude: further from the truth, toward a larger fall (truth ~0.81, crude ~0.70)
    assert np.mean(crude_err) < -0.08
    assert abs(np.mean(crude_err)) > 1.5 * abs(np.mean(its_err))


def test_wording_is_honest(runs):
    _, _, res = runs[0]
    t = res.table
    for r in t.itertuples():
        w = r.wording
        assert "95% CI" in w  # never a percentage without its interval
        assert r.per in w  # per child with the same case mix / per recognised episode
        includes_one = r.lower <= 1 <= r.upper
        assert ("no clear change" in w) == includes_one, w
        assert w.startswith("Secondary estimate") == (r.role == "secondary")
    assert "likely fell" in t.set_index("estimand").loc["sam30", "wording"]
    assert "likely got faster" in t.set_index("estimand").loc["antibiotic_minutes", "wording"]
    assert "fewer" in t.set_index("estimand").loc["hospital_days", "wording"]
    assert len(res.wording()) == len(t)


def test_single_site_table(runs):
    sim, coll, full = runs[1]
    store = R.estimate_all(coll, scopes="all", roles=["primary", "descriptive"],
                           estimands=[e for ids in HEADLINE.values() for e in ids])
    for sid in sim.sites["site_id"]:
        res = by_the_numbers(store, site_id=sid)
        t = res.table
        assert res.level == "site" and res.site_id == sid
        ok = t["status"] == "ok"
        # numbers iff ok
        assert t.loc[ok, ["estimate", "lower", "upper"]].notna().all().all()
        assert t.loc[~ok, ["estimate", "lower", "upper"]].isna().all().all()
        mort = t.set_index("estimand").loc["sam30"]
        if mort["status"] != "ok":
            assert mort["wording"].startswith("Too few deaths to estimate this hospital's own")
        else:
            assert mort["wording"].startswith("At this hospital,")
    # a hospital's own series is labelled as such
    rec = by_the_numbers(store, site_id=sim.sites["site_id"].iloc[0]).table
    assert rec.set_index("estimand").loc["recognition", "wording"].startswith(
        "At this hospital (its own data alone)")
    # the collaborative rows of the same store are the collaborative table
    pd.testing.assert_frame_equal(by_the_numbers(store).table[["estimate", "lower", "upper"]],
                                  full.table[["estimate", "lower", "upper"]])


def test_site_without_post_period_not_estimable(runs):
    sim, coll, _ = runs[0]
    sid = sim.sites["site_id"].iloc[2]
    ep, sm = coll.episodes, coll.site_months
    glm = pd.Timestamp(coll.sites.set_index("site_id").loc[sid, "go_live"]).to_period("M").to_timestamp()
    ep = ep[(ep["site_id"] != sid) | (ep["month"] < ep["go_live_month"])]
    sm = sm[(sm["site_id"] != sid) | (pd.to_datetime(sm["month"]) < glm)]
    short = dataclasses.replace(coll, episodes=ep, site_months=sm)
    t = by_the_numbers(short, site_id=sid).table
    assert t["status"].str.startswith("not estimable").all(), t[["estimand", "status"]]
    assert t["estimate"].isna().all() and t["wording"].str.contains("not estimable|Too few").all()


def test_bad_input(runs):
    with pytest.raises(ValueError, match="sam_window"):
        by_the_numbers(None, sam_window=7)
    with pytest.raises(ValueError, match="site slice"):
        by_the_numbers(_Slice(), site_id="S01")


class _Slice:
    scope = "S01"

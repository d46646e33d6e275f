"""Tests of analysis.processes: encoding, truth recovery on the synthetic collaborative, errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis import processes as pr
from analysis.derive import attach_sites, derive_episodes
from analysis.simulate import simulate_collaborative

TRUE_KEYS = {  # process -> key of truth["mortality"]["process_rr"]
    "screen_positive": "screen_positive",
    "huddle": "huddle",
    "order_set": "order_set",
    "fluid_60": "fluid_60",
    "antibiotic_hours": "antibiotic_per_hour",
}


def _derived(sim) -> pd.DataFrame:
    return attach_sites(derive_episodes(sim.episodes), sim.sites)


@pytest.fixture(scope="module")
def small():
    sim = simulate_collaborative(sites=20, months=48, seed=11)
    return sim, _derived(sim)


@pytest.fixture(scope="module")
def full():
    sim = simulate_collaborative(sites=57, months=48, seed=105)
    return sim, _derived(sim)


def test_antibiotic_hours_encoding():
    # as the simulator: minutes / 60 clipped to [0, 12] h; before T0 -> 0; not given -> 12 h
    m = pd.Series([-30.0, 0.0, 90.0, 800.0, np.nan])
    np.testing.assert_allclose(pr.antibiotic_hours(m), [0.0, 0.0, 1.5, 12.0, 12.0])


def test_specification_matches_simulator(small):
    # Fitting the log-link model to the simulator's own death probabilities (no sampling noise in
    # the outcome) must return the true process risk ratios: this checks that the encoding of
    # every process (hours capped at 12, untreated = 12 h, fluid within 60 min, ...) matches the
    # generative model. The only misspecification left is `post` (a step) vs the 6-month ramp.
    sim, ep = small
    ep = ep.assign(p_true=sim.latent["p_sam30_actual"].to_numpy())
    a = pr.process_associations(ep, "p_true", link="log", cov_type="naive")
    est = a.table.set_index("process")["estimate"]
    for proc, key in TRUE_KEYS.items():
        true = sim.truth["mortality"]["process_rr"][key]
        assert abs(np.log(est[proc]) - np.log(true)) < 0.015, (proc, est[proc], true)


def test_true_process_rrs_recovered_within_ci(full):
    # Realised 30-day SAM, 57 sites: each true RR lies inside its CI; Bonferroni over the five
    # processes (each CI at 99%) so the family-wise level is 95%.
    sim, ep = full
    a = pr.process_associations(ep, "sam30", link="log", level=1 - 0.05 / 5)
    t = a.table.set_index("process")
    assert a.measure == "RR" and a.clusters == 57
    for proc, key in TRUE_KEYS.items():
        true = sim.truth["mortality"]["process_rr"][key]
        assert t.loc[proc, "lower"] < true < t.loc[proc, "upper"], (proc, t.loc[proc].to_dict(), true)
    # "no antibiotic" is its own category (no immortal time): the simulator gives untreated
    # children the risk of a 12-hour delay, RR 1.04 ** 12 = 1.60 against treatment at T0
    na = t.loc["no_antibiotic"]
    assert na["lower"] < 1.04**12 < na["upper"] and na["lower"] > 1.0
    assert "not causal" in a.caveat


def test_logit_and_separate_models_and_plot(small):
    _, ep = small
    procs = ("screen_positive", "abx_60", "abx_180", "antibiotic_hours")
    a = pr.process_associations(ep, "sam3", processes=procs, mutually_adjusted=False)
    assert list(a.table["process"]) == [*procs, "no_antibiotic"]  # untreated: own category
    assert (a.table["model"] == "separate").all() and (a.table["measure"] == "OR").all()
    assert len(a.results) == 4
    assert any("clusters" in n for n in a.notes)  # 20 clusters: warn about robust SEs
    # the per-hour curve is RR^(h - reference): 3 h vs 1 h = per-hour OR squared
    c = a.antibiotic_curve([3.0], reference=1.0)
    per_hour = a.table.set_index("process").loc["antibiotic_hours", "estimate"]
    assert c["estimate"].iloc[0] == pytest.approx(per_hour**2, rel=1e-8)
    ax = a.plot()
    assert "not causal" in ax.get_xlabel()


def test_spline_antibiotic_term(small):
    _, ep = small
    a = pr.process_associations(
        ep, "sam30", processes=("fluid_60", "antibiotic_spline"), link="log", spline_df=3
    )
    rows = a.table[a.table["process"] == "antibiotic_spline"]
    assert list(rows["term"]) == [f"antibiotic {h:g} h vs 1 h" for h in pr.SPLINE_REPORT_HOURS]
    assert (rows["lower"] <= rows["estimate"]).all() and (rows["estimate"] <= rows["upper"]).all()
    curve = a.antibiotic_curve(np.array([1.0, 6.0]))
    assert curve["estimate"].iloc[0] == pytest.approx(1.0)
    assert np.isfinite(curve["upper"]).all()


def test_wald_p_values_consistent(small):
    _, ep = small
    a = pr.process_associations(ep, "sam30", processes=("fluid_60",), link="log")
    r = a.table.iloc[0]
    assert r["p_value"] == pytest.approx(2 * stats.norm.sf(abs(r["log_estimate"] / r["se"])))
    z = stats.norm.ppf(0.975)
    assert r["upper"] == pytest.approx(np.exp(r["log_estimate"] + z * r["se"]))


# ---------------------------------------------------------------------------------------------
# Degenerate input
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(small):
    _, ep = small
    return ep[ep["site_id"].isin(sorted(ep["site_id"].unique())[:4])].copy()


def test_no_events_raises(tiny):
    with pytest.raises(ValueError, match="no events"):
        pr.process_associations(tiny.assign(sam30=False), "sam30")


def test_constant_process_raises(tiny):
    with pytest.raises(ValueError, match="huddle.*does not vary"):
        pr.process_associations(tiny.assign(huddle=True), "sam30")


def test_single_period_raises(tiny):
    with pytest.raises(ValueError, match="single period"):
        pr.process_associations(tiny.assign(post=False), "sam30")


def test_single_cluster_raises(tiny):
    one = tiny[tiny["site_id"] == tiny["site_id"].iloc[0]]
    with pytest.raises(ValueError, match="at least 2 clusters"):
        pr.process_associations(one, "sam30")


def test_bad_arguments_raise(tiny):
    with pytest.raises(ValueError, match="unknown processes"):
        pr.process_associations(tiny, "sam30", processes=("teleport",))
    with pytest.raises(ValueError, match="link"):
        pr.process_associations(tiny, "sam30", link="probit")
    with pytest.raises(ValueError, match="either antibiotic_hours or antibiotic_spline"):
        pr.process_associations(tiny, "sam30", processes=("antibiotic_hours", "antibiotic_spline"))
    with pytest.raises(ValueError, match="missing"):
        pr.process_associations(tiny.drop(columns="minutes_to_antibiotic"), "sam30")
    with pytest.raises(ValueError, match="single level"):
        pr.process_associations(tiny.assign(critical_sepsis=True), "sam30")


@pytest.mark.parametrize("untreated", ["category", "landmark", "cap"])
def test_untreated_codings_recover_the_simulator(small, untreated):
    # On the simulator's own death probabilities each coding returns the true 1.04 per hour: the
    # simulator gives untreated children the 12-hour risk, so even "cap" is right here; on real
    # data "cap" credits deaths before any antibiotic could be given to slow antibiotics
    # (immortal time), which "category" and "landmark" avoid.
    sim, ep = small
    ep = ep.assign(p_true=sim.latent["p_sam30_actual"].to_numpy())
    a = pr.process_associations(ep, "p_true", link="log", cov_type="naive", untreated=untreated)
    t = a.table.set_index("process")
    assert abs(np.log(t.loc["antibiotic_hours", "estimate"]) - np.log(1.04)) < 0.002
    assert ("no_antibiotic" in t.index) == (untreated == "category")
    if untreated == "category":
        assert abs(np.log(t.loc["no_antibiotic", "estimate"]) - 12 * np.log(1.04)) < 0.02
    if untreated == "landmark":
        assert a.n < len(ep) and any("landmark" in n for n in a.notes)


def test_immortal_time_bias_is_removed():
    # Children who die before an antibiotic could be given are "untreated". Coded as the longest
    # delay, their deaths make delay look harmful even when it is not; "no antibiotic" as its own
    # category (or a landmark) leaves the per-hour association at its true value of 1.
    rng = np.random.default_rng(3)
    n = 40_000
    minutes = rng.lognormal(np.log(90), 0.9, n)
    early_death = rng.random(n) < 0.02  # dies within the first hour, before any antibiotic
    died = early_death | (rng.random(n) < 0.03)  # otherwise risk independent of the delay
    df = pd.DataFrame({
        "site_id": rng.integers(0, 40, n).astype(str), "sam30": died,
        "minutes_to_antibiotic": np.where(early_death, np.nan, minutes),
        "days_t0_to_death": np.where(early_death, 0.02, np.where(died, 5.0, np.nan)),
        "days_t0_to_discharge": np.where(early_death, 0.02, 6.0),
        "x": rng.random(n) < 0.5,
    })
    kw = {"processes": ("antibiotic_hours",), "covariates": ("x",), "link": "log",
          "adjust_period": False, "secular": False}
    cap = pr.process_associations(df, "sam30", untreated="cap", **kw).table.set_index("process")
    cat = pr.process_associations(df, "sam30", untreated="category", **kw).table.set_index("process")
    lm = pr.process_associations(df, "sam30", untreated="landmark", **kw).table.set_index("process")
    assert cap.loc["antibiotic_hours", "lower"] > 1.05  # spurious harm per hour
    for t in (cat, lm):
        assert t.loc["antibiotic_hours", "lower"] < 1.0 < t.loc["antibiotic_hours", "upper"]

"""Tests for analysis.survival: Cox PH (Efron/Breslow), cox.zph, Kaplan-Meier, RMST, mortality models."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from lifelines import KaplanMeierFitter
from lifelines.datasets import load_lung, load_rossi

from analysis.survival import (
    _cox_engine,
    cox_zph,
    fit_cox,
    fit_mortality_cox,
    kaplan_meier,
    km_by_period,
    mortality_times,
    rmst,
)

ROSSI_COVS = ["fin", "age", "race", "wexp", "mar", "paro", "prio"]

# R: summary(coxph(Surv(week, arrest) ~ fin + age + race + wexp + mar + paro + prio, data = Rossi))
# (Efron ties), as printed in Fox & Weisberg, "Cox Proportional-Hazards Regression for Survival
# Data in R", appendix to An R Companion to Applied Regression (2nd ed. 2011 / 3rd ed. 2018).
# The fin row (-0.37942, 0.19138, z -1.983, p 0.04742, HR CI 0.4702-0.9957) is also recorded as
# R output in surpyval's test suite (surpyval/tests, test_cox_summary_matches_r).
ROSSI_R = pd.DataFrame(
    {
        "coef": [-0.37942, -0.05744, 0.31390, -0.14980, -0.43370, -0.08487, 0.09150],
        "se": [0.19138, 0.02200, 0.30799, 0.21222, 0.38187, 0.19576, 0.02865],
    },
    index=ROSSI_COVS,
)


@pytest.fixture(scope="module")
def rossi() -> pd.DataFrame:
    return load_rossi()


def test_fit_cox_efron_reproduces_r_on_rossi(rossi):
    res = fit_cox(rossi, "week", "arrest", ROSSI_COVS)
    np.testing.assert_allclose(res.table["coef"], ROSSI_R["coef"], atol=6e-6)
    np.testing.assert_allclose(res.table["se"], ROSSI_R["se"], atol=6e-6)
    fin = res.table.loc["fin"]
    assert fin["z"] == pytest.approx(-1.983, abs=1e-3)
    assert fin["p"] == pytest.approx(0.04742, abs=1e-5)
    assert fin["hr_lower"] == pytest.approx(0.4702, abs=1e-4)
    assert fin["hr_upper"] == pytest.approx(0.9957, abs=1e-4)
    assert res.n == 432 and res.events == 114
    assert isinstance(res.summary(), pd.DataFrame)
    assert set(res.ph_test.index) == set(ROSSI_COVS) | {"GLOBAL"}


def test_own_engine_efron_matches_r_too(rossi):
    """The Newton-Raphson engine (used for Breslow and Fine-Gray) agrees with R on Rossi."""
    res = _cox_engine(np.zeros(len(rossi)), rossi["week"].to_numpy(float), rossi["arrest"].to_numpy(),
                      rossi[ROSSI_COVS].to_numpy(float))
    np.testing.assert_allclose(res["coef"], ROSSI_R["coef"], atol=6e-6)
    np.testing.assert_allclose(res["se"], ROSSI_R["se"], atol=6e-6)


def test_breslow_ties_match_statsmodels(rossi):
    # No published R Breslow fit of Rossi was found; statsmodels PHReg(ties="breslow") is an
    # independent implementation of the same likelihood.
    from statsmodels.duration.hazard_regression import PHReg

    sm = PHReg(rossi["week"].to_numpy(), rossi[ROSSI_COVS].to_numpy(), status=rossi["arrest"].to_numpy(),
               ties="breslow").fit()
    res = fit_cox(rossi, "week", "arrest", ROSSI_COVS, ties="breslow")
    np.testing.assert_allclose(res.table["coef"], sm.params, atol=1e-6)
    np.testing.assert_allclose(res.table["se"], sm.bse, atol=1e-6)
    # tied weeks: Breslow and Efron differ
    assert abs(res.table.loc["fin", "coef"] - ROSSI_R.loc["fin", "coef"]) > 1e-4


def test_cox_zph_reproduces_r_lung():
    # R >= 3.0: cz <- cox.zph(coxph(Surv(time, status) ~ sex + age, data = lung)); print(cz)
    #        chisq df    p
    # sex    2.608  1 0.11
    # age    0.209  1 0.65
    # GLOBAL 2.771  2 0.25
    # Source: E. Zabor, "Survival Analysis in R" tutorial (emilyzabor.com), rendered output,
    # repository zabore/zabore.github.io docs/survival-analysis-in-r.html.
    lung = load_lung()
    z = cox_zph(lung, "time", "status", ["sex", "age"])
    assert z.loc["sex", "chisq"] == pytest.approx(2.608, abs=6e-4)
    assert z.loc["age", "chisq"] == pytest.approx(0.209, abs=6e-4)
    assert z.loc["GLOBAL", "chisq"] == pytest.approx(2.771, abs=6e-4)
    assert z.loc["GLOBAL", "df"] == 2
    assert z.loc["sex", "p"] == pytest.approx(0.11, abs=0.006)


def test_cluster_robust_se_reported(rossi):
    df = rossi.assign(grp=np.arange(len(rossi)) % 20)
    res = fit_cox(df, "week", "arrest", ROSSI_COVS, cluster="grp")
    np.testing.assert_allclose(res.table["coef"], ROSSI_R["coef"], atol=6e-6)
    assert res.table["robust_se"].notna().all()
    assert not np.allclose(res.table["robust_se"], res.table["se"])
    # z uses the robust SE
    np.testing.assert_allclose(res.table["z"], res.table["coef"] / res.table["robust_se"])


def test_fit_cox_is_order_invariant(rossi):
    a = fit_cox(rossi, "week", "arrest", ROSSI_COVS, ties="breslow")
    b = fit_cox(rossi.sample(frac=1, random_state=3), "week", "arrest", ROSSI_COVS, ties="breslow")
    np.testing.assert_allclose(a.table["coef"], b.table["coef"], rtol=1e-10)
    c = fit_cox(rossi.sample(frac=1, random_state=4), "week", "arrest", ROSSI_COVS)
    np.testing.assert_allclose(c.table["coef"], ROSSI_R["coef"], atol=6e-6)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda d: d.assign(arrest=0), "no events"),
        (lambda d: d.assign(fin=1), "single level"),
        (lambda d: d.assign(week=d["week"] - 30), "negative"),
        (lambda d: d.drop(columns="prio"), "missing column"),
    ],
)
def test_fit_cox_bad_input(rossi, mutate, match):
    with pytest.raises(ValueError, match=match):
        fit_cox(mutate(rossi), "week", "arrest", ROSSI_COVS)


def test_kaplan_meier_matches_lifelines_and_rmst_hand_example():
    lung = load_lung()
    km = kaplan_meier(lung["time"], lung["status"])
    kmf = KaplanMeierFitter().fit(lung["time"], lung["status"])
    np.testing.assert_allclose(km["survival"], kmf.survival_function_.loc[km["time"]].to_numpy().ravel())
    np.testing.assert_allclose(km["ci_lower"], kmf.confidence_interval_.loc[km["time"]].iloc[:, 0])
    # Hand example: times 1,2,2,3+,4 (event at 1, 2, 2, 4); tau = 4.
    # S: 1 -> 0.8 at t=1 (n=5, d=1), 0.8*(1-2/4)=0.4 at t=2 (n=4, d=2), 0.4*(1-1/1)=0 at t=4.
    km2 = kaplan_meier(np.array([1, 2, 2, 3, 4]), np.array([1, 1, 1, 0, 1]))
    np.testing.assert_allclose(km2["survival"], [0.8, 0.4, 0.0])
    mean, se = rmst(km2, 4.0)
    assert mean == pytest.approx(1 * 1 + 0.8 * 1 + 0.4 * 2)  # 2.6 days
    # A_1 = 0.8*1 + 0.4*2 = 1.6 (area after t=1), A_2 = 0.4*2 = 0.8; terms A^2 d/(n(n-d)):
    # t=1: 2.56*1/(5*4) = 0.128; t=2: 0.64*2/(4*2) = 0.16; t=4: n=d -> excluded.
    assert se == pytest.approx(np.sqrt(0.128 + 0.16))


def _episodes(n=400, seed=1):
    rng = np.random.default_rng(seed)
    post = rng.random(n) < 0.5
    died = rng.random(n) < np.where(post, 0.10, 0.18)
    death_day = np.where(died, rng.integers(0, 40, n).astype(float), np.nan)
    los = np.where(died, death_day, rng.integers(1, 25, n).astype(float))
    return pd.DataFrame({
        "site_id": rng.choice(["A", "B", "C"], n),
        "post": post,
        "days_t0_to_death": death_day,
        "days_t0_to_discharge": los,
        "died_in_hospital": died,
        "sam30": died & (death_day <= 30),
        "age_group": rng.choice(["<1", "1-4", "5-12", "13+"], n),
        "ccc_count": rng.integers(0, 4, n),
        "immunocompromised": rng.random(n) < 0.2,
        "onset_setting": rng.choice(["ED", "ward", "ICU"], n),
        "hospital_onset": rng.random(n) < 0.3,
        "critical_sepsis": rng.random(n) < 0.4,
        # drawn last so the columns above keep their values: post episodes are later in time
        "time_zero": pd.Timestamp("2018-01-01") + pd.to_timedelta(
            np.where(post, rng.integers(365, 730, n), rng.integers(0, 365, n)), unit="D"),
    })


def test_events_at_time_zero_are_in_the_risk_set(rossi):
    """Right-censored data: an event at t = 0 is at risk at 0 (R's Surv(time, status)). Shifting
    every time by a constant keeps the order, so Breslow fits and cox.zph must not change."""
    d = rossi.assign(week=rossi["week"] - rossi["week"].min())  # the earliest arrests at week 0
    assert ((d["week"] == 0) & (d["arrest"] == 1)).any()
    shifted = d.assign(week=d["week"] + 5.0)
    cols = ["fin", "age", "prio"]
    a = fit_cox(d, "week", "arrest", cols, ties="breslow").table
    b = fit_cox(shifted, "week", "arrest", cols, ties="breslow").table
    pd.testing.assert_frame_equal(a, b, rtol=1e-9)
    za, zb = cox_zph(d, "week", "arrest", cols), cox_zph(shifted, "week", "arrest", cols)
    assert np.isfinite(za["chisq"]).all()
    pd.testing.assert_frame_equal(za, zb, rtol=1e-9)


def test_mortality_times_follow_up_rules():
    ep = pd.DataFrame({"days_t0_to_death": [2.0, np.nan, 40.0], "days_t0_to_discharge": [2.0, 5.0, 40.0],
                       "sam30": [True, False, False]})
    ipso = mortality_times(ep)
    assert ipso["time"].tolist() == [2.0, 30.0, 30.0] and ipso["event"].tolist() == [1, 0, 0]
    cens = mortality_times(ep, follow_up="censor_at_discharge")
    assert cens["time"].tolist() == [2.0, 5.0, 30.0] and cens["event"].tolist() == [1, 0, 0]
    with pytest.raises(ValueError, match="follow_up"):
        mortality_times(ep, follow_up="forever")


def test_km_by_period_and_cox_on_small_frame():
    ep = _episodes()
    res = km_by_period(ep)
    comp = res.summary().set_index("unit")
    assert list(comp.index) == ["collaborative", "A", "B", "C"]
    coll = comp.loc["collaborative"]
    assert coll["survival_post"] > coll["survival_pre"]
    # descriptive by default: no p-value, no interval (episodes are not independent)
    assert coll["rmst_diff"] > 0
    assert not {"logrank_p", "rmst_diff_lower", "rmst_diff_upper"} & set(comp.columns)
    naive = km_by_period(ep, inference="independent").summary().set_index("unit").loc["collaborative"]
    assert naive["rmst_diff_lower"] < naive["rmst_diff"] < naive["rmst_diff_upper"]
    assert 0 <= naive["logrank_p"] <= 1
    with pytest.raises(ValueError, match="inference"):
        km_by_period(ep, inference="robust")
    ar = res.at_risk[(res.at_risk["unit"] == "collaborative") & (res.at_risk["period"] == "pre")]
    assert ar["at_risk"].iloc[0] == (~ep["post"]).sum()
    assert res.plot() is not None
    for adjust in ("strata", "cluster", "strata_cluster"):
        cox = fit_mortality_cox(ep, adjust=adjust)
        assert {"post", "years"} <= set(cox.table.index) and cox.ph_test is not None
        assert cox.plot() is not None
    both = fit_mortality_cox(ep, adjust="strata_cluster").table
    assert np.isfinite(both.loc["post", "robust_se"])
    assert "years" not in fit_mortality_cox(ep, calendar="none").table.index
    # determinism under row permutation (tied integer days)
    a = km_by_period(ep, by=None).comparison
    b = km_by_period(ep.sample(frac=1, random_state=9), by=None).comparison
    pd.testing.assert_frame_equal(a, b)


def test_period_comparisons_need_two_periods():
    ep = _episodes().assign(post=True)
    with pytest.raises(ValueError, match="both pre and post"):
        km_by_period(ep)
    with pytest.raises(ValueError, match="single level"):
        fit_mortality_cox(ep)
    with pytest.raises(ValueError, match="adjust"):
        fit_mortality_cox(_episodes(), adjust="frailty")


@pytest.mark.slow
def test_mortality_cox_recovers_simulated_effect():
    """Direct + process effect of IPSO on 30-day SAM in the simulator (truth: sam30_rr_12m, a
    risk ratio after the 6-month ramp; with ~3% mortality the hazard ratio is close to it).
    Case-mix- and calendar-adjusted, site-stratified Cox HR after the phase-in must be < 1 and
    its 95% CI must cover the truth."""
    from analysis.derive import attach_sites, derive_episodes
    from analysis.simulate import simulate_collaborative

    sim = simulate_collaborative(seed=7, sites=30, months=60)
    ep = attach_sites(derive_episodes(sim.episodes), sim.sites)
    truth = sim.truth["estimands"]["sam30_rr_12m"]
    res = fit_mortality_cox(ep, adjust="strata", transition=6)
    hr, lo, hi = res.hazard_ratio("post")
    assert hr < 1
    assert lo <= truth <= hi


@pytest.mark.slow
def test_cox_post_hr_adjusted_for_calendar_time_has_no_trend_bias():
    """No effect of the collaborative, but mortality falls 15% a year: the post-go-live HR of a
    model without calendar time credits the trend to the collaborative; with calendar time
    (default) its CI covers 1 (issue 11: the unadjusted HR had -5% bias and 77% coverage)."""
    from analysis.derive import attach_sites, derive_episodes
    from analysis.simulate import simulate_collaborative

    null = {"post_direct_rr": 1.0, "secular_trend_rr_per_year": 0.85, "recognition_expansion": 0.0,
            "process_post_logit_shift": {"screen_positive": 0.0, "huddle": 0.0, "order_set": 0.0},
            "bolus_time_post_ratio": 1.0, "antibiotic_time_post_ratio": 1.0}
    sim = simulate_collaborative(seed=8, sites=30, months=60, true_effects=null)
    ep = attach_sites(derive_episodes(sim.episodes), sim.sites)
    naive = fit_mortality_cox(ep, adjust="strata", calendar="none").hazard_ratio("post")
    adjusted = fit_mortality_cox(ep, adjust="strata_cluster").hazard_ratio("post")
    assert naive[2] < 1.0  # spurious benefit from the trend
    assert adjusted[1] < 1.0 < adjusted[2]

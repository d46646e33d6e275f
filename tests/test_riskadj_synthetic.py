"""analysis.riskadj against the synthetic collaborative's known truth (analysis.simulate)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis import riskadj as ra
from analysis.derive import attach_sites, derive_episodes
from analysis.simulate import simulate_collaborative


def _derived(sim) -> pd.DataFrame:
    return attach_sites(derive_episodes(sim.episodes), sim.sites)


@pytest.fixture(scope="module")
def sim():
    return simulate_collaborative(sites=57, months=48, seed=2024)


@pytest.fixture(scope="module")
def episodes(sim):
    return _derived(sim)


@pytest.fixture(scope="module")
def model(episodes):
    return ra.fit_casemix_model(episodes, "sam30")


def test_casemix_discrimination_close_to_true_casemix_risk(sim, episodes, model):
    base = ~episodes["post"].to_numpy()
    y = episodes["sam30"].to_numpy()[base]
    # c-statistic of the simulator's own case-mix risk (case mix + site + secular time, no processes)
    c_true = ra.c_statistic(y, sim.latent["p_sam30_casemix_only"].to_numpy()[base])
    assert model.c_statistic == pytest.approx(c_true, abs=0.03)
    assert model.c_statistic > 0.65


def test_casemix_calibration_by_decile(model):
    # a correct case-mix model: no decile outside exact Poisson 99.8% limits, and HL not rejecting
    cal = model.calibration
    lo = ra.poisson_funnel_limit(cal["expected"].to_numpy(), 0.001) * cal["expected"]
    hi = ra.poisson_funnel_limit(cal["expected"].to_numpy(), 0.999) * cal["expected"]
    assert ((cal["observed"] >= lo) & (cal["observed"] <= hi)).all()
    assert model.hosmer_lemeshow["p_value"] > 0.001


def test_casemix_coefficients_cover_true_risk_ratios(sim, model):
    # Simulator case-mix risk ratios (truth["mortality"]["casemix_rr"]); ORs of a rare outcome
    # (~3%) are close to RRs, so the true RRs should fall in the OR CIs.
    rr = sim.truth["mortality"]["casemix_rr"]
    s = model.summary().set_index("term")
    expected = {
        "critical_sepsis": rr["critical_sepsis"],
        "immunocompromised": rr["immunocompromised"],
        "hospital_onset": rr["hospital_onset"],
        "ccc_band[3+]": rr["ccc_per_condition"] ** rr["ccc_cap"],  # vs the reference band
    }
    assert model.terms[1].reference == "0"  # ccc_band reference level (most common here)
    for term, value in expected.items():
        assert s.loc[term, "or_lower"] < value < s.loc[term, "or_upper"], term


def test_collaborative_post_oe_matches_true_standardised_rr(sim, episodes, model):
    oe = ra.observed_expected(episodes, model, by="post").set_index("post")
    assert oe.loc[False, "oe"] == pytest.approx(1.0, rel=1e-6)  # fitting data
    post = oe.loc[True]
    # Truth: actual vs counterfactual (same episodes) standardised RR, times the secular trend
    # between the mean calendar time of post and pre episodes (the baseline model cannot know it).
    rr = sim.truth["estimands"]["sam30_rr_post"]
    years = (episodes["time_zero"] - episodes["time_zero"].min()).dt.days / 365.25
    dy = years[episodes["post"]].mean() - years[~episodes["post"]].mean()
    target = rr * sim.truth["mortality"]["secular_trend_rr_per_year"] ** dy
    assert post["oe_exact_lower"] < target < post["oe_exact_upper"]
    assert post["oe_exact_upper"] < 1.0  # improvement is detected


def test_site_oe_follows_true_site_effects(sim, episodes, model):
    base = episodes[~episodes["post"]]
    so = ra.observed_expected(base, model, by="site_id").set_index("site_id")
    st = pd.DataFrame(sim.truth["sites"]).set_index("site_id")
    effect = st.loc[so.index, "sam30_log_rr_site_effect"]
    rho = stats.spearmanr(so["oe"], effect)
    assert rho.statistic > 0.3 and rho.pvalue < 0.01
    worst, best = effect.idxmax(), effect.idxmin()
    assert st.loc[worst, "sam30_rr_site_effect"] > 1.5  # a strong simulated site effect
    assert so.loc[worst, "oe"] > 1.0 and so.loc[worst, "oe_exact_lower"] > 1.0
    assert so.loc[best, "oe"] < 1.0


@pytest.mark.parametrize("seed", [3, 4])
def test_funnel_overdispersion_tracks_simulated_site_variation(seed):
    # Baseline episodes only (no go-live effects). With between-site log-RR sd 0.25 the true
    # between-site variance of sqrt(O/E) is about (0.25 / 2)^2 = 0.0156; with sd 0 there is none.
    out = {}
    for sd in (0.25, 0.0):
        s = simulate_collaborative(sites=57, months=36, seed=seed, scale=3,
                                   true_effects={"site_effect_sd": sd})
        ep = _derived(s)
        m = ra.fit_casemix_model(ep, "sam30")
        base = ep[~ep["post"]]
        out[sd] = (ra.funnel_data(base, m), ra.funnel_data(base, m, winsor=0.0))
    assert out[0.0][0].tau2 == 0.0 and not out[0.0][0].adjusted
    assert out[0.25][0].phi > out[0.0][0].phi
    assert out[0.25][0].tau2 > 0.0
    # without winsorisation the DerSimonian-Laird estimate is near the truth (order of magnitude;
    # 57 sites give a noisy estimate)
    assert 0.004 < out[0.25][1].tau2 < 0.05


def test_funnel_and_oe_plots_on_synthetic(sim, episodes, model):
    post = episodes[episodes["post"]]
    labels = {s: f"Hospital {i:02d}" for i, s in enumerate(sorted(post["site_id"].unique()))}
    f = ra.funnel_data(post, model, labels=labels)
    ax = f.plot(highlight="Hospital 03")
    assert ax.get_ylabel() == "Observed / expected deaths"
    assert not set(f.data.columns) & {"episode_id", "patient_id", "site_id"}
    t = ra.oe_over_time(episodes, model, site="S05", label="Hospital 04")
    assert set(t["unit"]) == {"collaborative", "Hospital 04"}
    assert ra.plot_oe_over_time(t).get_title() == "Risk-adjusted mortality over time"
    np.testing.assert_allclose(
        t.loc[t["unit"] == "collaborative", "observed"].sum(), episodes["sam30"].sum()
    )

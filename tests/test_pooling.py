"""Random-effects pooling (analysis.pooling) against metafor's BCG vaccine example.

Data: metafor's ``dat.bcg`` (Colditz et al. 1994, 13 trials; copied to tests/data/dat_bcg.csv from
the table printed at https://www.metafor-project.org/doku.php/tips:testing_factors_lincoms).
Log risk ratios: ``escalc(measure="RR", ai=tpos, bi=tneg, ci=cpos, di=cneg, data=dat.bcg)``.

Published reference values:
* escalc yi/vi (first rows), metafor-project "testing_factors_lincoms" page:
  yi -0.8893 -1.5854 -1.3481 -1.4416; vi 0.3256 0.1946 0.4154 0.0200; TPT Madras 0.0120 / 0.0040.
* REML, ``rma(yi, vi, data=dat)`` printed output (metafor, reproduced in the lab slides
  https://cttir.github.io/courses/course3_design_causal/labs/lab_week4_session2_slides.html):
  tau^2 0.3132 (SE = 0.1664), tau 0.5597, I^2 92.22%, H^2 12.86, Q(df = 12) = 152.2330,
  estimate -0.7145, se 0.1798, zval -3.9744, ci.lb -1.0669, ci.ub -0.3622.
* REML prediction interval, ``predict(res, transf=exp)`` with metafor 4.2-0 (knitted tutorial
  "Metanálise em R - tutorial básico", L. S. R. Conceição, GitHub README.md):
  pred 0.4894, ci 0.3441-0.6962, pi 0.1546-1.5490.
* DL: metafor's own unit test tests/testthat/test_misc_metan_vs_rma.uni_with_dat.bcg.r
  (checked against Stata metan): estimate -0.7141, CI -1.0644 to -0.3638, z -3.9952,
  tau2 0.3088, I2 92.1173; equal-effects Q 152.2330.
* PM: metafor's tests/testthat/test_misc_rma_uni.r gives tau2 = 0.3181 for the iterated DL
  (DLIT) and SJ (SJIT) estimators, whose fixed point is the Paule-Mandel equation
  Q(tau2) = k - 1; cross-checked with statsmodels ``combine_effects(method_re="iterated")``.
* Knapp-Hartung: cross-checked against statsmodels ``combine_effects`` "random effect wls"
  (HKSJ) interval with t(k-1), and the REML+KNHA interval -1.1084 to -0.3206 reported for
  ``rma(yi, vi, method="REML", test="knha")`` in a third-party R validation script
  (TruthCert-PairwisePro; tolerance 5e-5 here as the values are printed to 4 decimals).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis.pooling import escalc_log_rr, random_effects

DATA = Path(__file__).parent / "data" / "dat_bcg.csv"


@pytest.fixture(scope="module")
def bcg():
    d = pd.read_csv(DATA)
    e = escalc_log_rr(d["tpos"], d["tneg"], d["cpos"], d["cneg"])
    e["label"] = d["author"] + ", " + d["year"].astype(str)
    return e


def r4(x):
    return round(float(x), 4)


def test_escalc_matches_metafor(bcg):
    assert [r4(v) for v in bcg["yi"][:4]] == [-0.8893, -1.5854, -1.3481, -1.4416]
    assert [r4(v) for v in bcg["vi"][:4]] == [0.3256, 0.1946, 0.4154, 0.0200]
    assert (r4(bcg["yi"][7]), r4(bcg["vi"][7])) == (0.0120, 0.0040)


def test_reml_matches_metafor(bcg):
    r = random_effects(bcg["yi"], np.sqrt(bcg["vi"]), method="reml")
    assert r.converged
    assert r4(r.tau2) == 0.3132
    assert r4(r.tau2_se) == 0.1664
    assert r4(r.tau) == 0.5597
    assert round(r.i2, 2) == 92.22
    assert round(r.h2, 2) == 12.86
    assert r4(r.q) == 152.2330 and r.q_df == 12 and r.q_p < 1e-4
    assert r4(r.estimate) == -0.7145
    assert r4(r.se) == 0.1798
    assert r4(r.statistic) == -3.9744 and r.df is None
    assert (r4(r.ci_low), r4(r.ci_high)) == (-1.0669, -0.3622)
    # predict(res, transf=exp)
    assert r4(math.exp(r.estimate)) == 0.4894
    assert (r4(math.exp(r.ci_low)), r4(math.exp(r.ci_high))) == (0.3441, 0.6962)
    assert (r4(math.exp(r.pi_low)), r4(math.exp(r.pi_high))) == (0.1546, 1.5490)


def test_dl_matches_metafor_and_stata(bcg):
    r = random_effects(bcg["yi"], np.sqrt(bcg["vi"]), method="dl")
    assert r4(r.estimate) == -0.7141
    assert (r4(r.ci_low), r4(r.ci_high)) == (-1.0644, -0.3638)
    assert r4(r.statistic) == -3.9952
    assert r4(r.tau2) == 0.3088
    assert r4(r.i2) == 92.1173
    assert r4(r.q) == 152.2330


def test_pm_matches_iterated_dl_fixed_point_and_statsmodels(bcg):
    from statsmodels.stats.meta_analysis import combine_effects

    r = random_effects(bcg["yi"], np.sqrt(bcg["vi"]), method="pm")
    assert r4(r.tau2) == 0.3181
    # definition: generalised Q equals k - 1 at the PM estimate
    w = 1 / (bcg["vi"] + r.tau2)
    mu = np.sum(w * bcg["yi"]) / w.sum()
    assert np.sum(w * (bcg["yi"] - mu) ** 2) == pytest.approx(12, abs=1e-8)
    sm_ = combine_effects(bcg["yi"].to_numpy(), bcg["vi"].to_numpy(), method_re="iterated")
    assert r.tau2 == pytest.approx(sm_.tau2, rel=1e-4)
    assert r.estimate == pytest.approx(sm_.mean_effect_re, rel=1e-5)


def test_knapp_hartung(bcg):
    import warnings

    from statsmodels.stats.meta_analysis import combine_effects

    reml = random_effects(bcg["yi"], np.sqrt(bcg["vi"]), method="reml", knha=True)
    assert reml.df == 12
    assert (r4(reml.ci_low), r4(reml.ci_high)) == (-1.1084, -0.3206)
    # interval uses t_{k-1}; PI uses t_{k-1} and sqrt(SE^2 + tau2) (metafor predict under knha)
    crit = stats.t.ppf(0.975, 12)
    assert reml.ci_high - reml.estimate == pytest.approx(crit * reml.se, rel=1e-12)
    assert reml.pi_high - reml.estimate == pytest.approx(
        crit * math.sqrt(reml.se**2 + reml.tau2), rel=1e-12
    )
    # DL + KNHA equals statsmodels' HKSJ ("random effect wls") interval with t(k-1)
    dl = random_effects(bcg["yi"], np.sqrt(bcg["vi"]), method="dl", knha=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sm_ = combine_effects(
            bcg["yi"].to_numpy(), bcg["vi"].to_numpy(), method_re="chi2", use_t=True
        )
        lo, hi = sm_.conf_int(use_t=True)[3]
    assert dl.ci_low == pytest.approx(lo, rel=1e-6)
    assert dl.ci_high == pytest.approx(hi, rel=1e-6)


def test_weights_summary_and_forest_plot(bcg):
    import matplotlib

    matplotlib.use("Agg")
    r = random_effects(bcg["yi"], np.sqrt(bcg["vi"]), labels=bcg["label"])
    assert r.weights.sum() == pytest.approx(100.0)
    s = r.summary()
    assert s.loc[0, "k"] == 13 and s.loc[0, "method"] == "REML"
    ax = r.forest_plot()
    assert "I\u00b2 = 92.2%" in ax.get_title()
    assert len(ax.get_yticklabels()) == 14


def test_homogeneous_studies_give_zero_tau2():
    y = np.array([0.10, 0.11, 0.09, 0.10])
    s = np.array([0.2, 0.25, 0.3, 0.2])
    for m in ("reml", "dl", "pm"):
        r = random_effects(y, s, method=m)
        assert r.tau2 == pytest.approx(0.0, abs=1e-10)
        assert r.i2 == pytest.approx(0.0, abs=1e-8)


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        (([0.1], [0.1]), {}, "at least 2"),
        (([0.1, np.nan], [0.1, 0.1]), {}, "finite"),
        (([0.1, 0.2], [0.1, 0.0]), {}, "positive"),
        (([0.1, 0.2], [0.1, 0.1, 0.1]), {}, "equal length"),
        (([0.1, 0.2], [0.1, 0.1]), {"method": "hs"}, "method must be"),
        (([0.1, 0.2], [0.1, 0.1]), {"labels": ["a"]}, "labels"),
    ],
)
def test_bad_input(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        random_effects(*args, **kwargs)


# ---------------------------------------------------------------------------------------------
# Partial pooling (empirical Bayes / BLUP) of site effects
# ---------------------------------------------------------------------------------------------
from analysis.pooling import (
    MIN_EXPECTED_EVENTS,
    empirical_bayes,
    too_little_information,
)

# Raudenbush & Bryk (1985), teacher expectancy data (metafor dat.raudenbush1985, yi and vi as
# printed on https://www.metafor-project.org/doku.php/analyses:raudenbush1985).
RB_YI = [0.03, 0.12, -0.14, 1.18, 0.26, -0.06, -0.02, -0.32, 0.27, 0.80, 0.54, 0.18, -0.02, 0.23,
         -0.18, -0.06, 0.30, 0.07, -0.07]
RB_VI = [0.0156, 0.0216, 0.0279, 0.1391, 0.1362, 0.0106, 0.0106, 0.0484, 0.0269, 0.0630, 0.0912,
         0.0497, 0.0835, 0.0841, 0.0253, 0.0279, 0.0193, 0.0088, 0.0303]
# metafor tests/testthat/test_analysis_example_raudenbush1985.r: blup(rma(yi, vi)) compared with
# Figure 2 of the paper (3 decimals).
RB_PRED = [0.054, 0.101, -0.006, 0.214, 0.105, -0.008, 0.017, -0.029, 0.16, 0.249, 0.162, 0.11,
           0.065, 0.11, -0.029, 0.026, 0.191, 0.074, 0.025]
RB_PI_LB = [-0.132, -0.103, -0.223, -0.053, -0.162, -0.174, -0.148, -0.269, -0.054, 0, -0.097,
            -0.13, -0.192, -0.146, -0.241, -0.191, -0.008, -0.081, -0.195]
RB_PI_UB = [0.241, 0.304, 0.21, 0.482, 0.372, 0.157, 0.183, 0.21, 0.375, 0.497, 0.421, 0.351,
            0.321, 0.367, 0.183, 0.242, 0.389, 0.23, 0.245]


def test_plugin_blups_match_raudenbush_bryk_and_metafor():
    r = empirical_bayes(RB_YI, RB_VI, interval="plugin")
    assert round(r.tau2, 3) == 0.019 and round(r.pooled.estimate, 3) == 0.084  # paper p. 83-86
    d = r.sites
    z = stats.norm.ppf(0.975)
    # published to 3 decimals; metafor's REML stops at a 1e-5 step, so allow 6e-4
    np.testing.assert_allclose(d["blup"], RB_PRED, atol=6e-4)
    np.testing.assert_allclose(d["lower"], RB_PI_LB, atol=6e-4)
    np.testing.assert_allclose(d["upper"], RB_PI_UB, atol=6e-4)
    np.testing.assert_allclose(d["lower"], d["blup"] - z * d["blup_se"], atol=1e-9)
    # plug-in: the estimate is the BLUP itself
    np.testing.assert_allclose(d["estimate"], d["blup"], atol=1e-12)


def test_blups_match_metafor_closed_form_example():
    # metafor tests/testthat/test_misc_handling_nas.r: rma(yi, vi) with yi = 3, 2, 5, 4, 6 and
    # vi = 1 gives tau^2 = var(yi) - 1 = 1.5, blup(res)$pred = 3.4, 2.8, 4.6, 4.0, 5.2.
    r = empirical_bayes([3, 2, 5, 4, 6], [1, 1, 1, 1, 1], interval="plugin")
    assert r.tau2 == pytest.approx(1.5, abs=1e-9)
    np.testing.assert_allclose(r.sites["blup"], [3.4, 2.8, 4.6, 4.0, 5.2], atol=1e-9)
    np.testing.assert_allclose(r.sites["diff_estimate"], [-0.6, -1.2, 0.6, 0.0, 1.2], atol=1e-9)
    np.testing.assert_allclose(r.sites["shrinkage"], 0.4, atol=1e-12)  # B = 1 / (1 + 1.5)


def test_fixed_tau2_equals_henderson_mixed_model_equations(bcg):
    """With tau^2 known the posterior is normal: mean and SD equal the BLUP and its prediction
    error SD from Henderson's mixed-model equations, solved independently here."""
    y, v = bcg["yi"].to_numpy(), bcg["vi"].to_numpy()
    k, tau2 = len(y), 0.3132
    X, Z = np.ones((k, 1)), np.eye(k)
    Ri = np.diag(1 / v)
    C = np.block([[X.T @ Ri @ X, X.T @ Ri @ Z], [Z.T @ Ri @ X, Z.T @ Ri @ Z + np.eye(k) / tau2]])
    rhs = np.r_[X.T @ Ri @ y, Z.T @ Ri @ y]
    sol = np.linalg.solve(C, rhs)
    Ci = np.linalg.inv(C)
    # prediction error variance of mu + u_i: c' C^-1 c with c = (1, e_i)
    pev = np.array([Ci[0, 0] + Ci[1 + i, 1 + i] + 2 * Ci[0, 1 + i] for i in range(k)])
    for interval in ("posterior", "plugin"):
        r = empirical_bayes(y, v, bcg["label"], tau2=tau2, interval=interval)
        assert r.interval == "fixed" and len(r.tau_posterior) == 1
        np.testing.assert_allclose(r.sites["estimate"], sol[0] + sol[1:], atol=1e-10)
        np.testing.assert_allclose(r.sites["se"], np.sqrt(pev), atol=1e-10)
        np.testing.assert_allclose(r.sites["blup_se"], np.sqrt(pev), atol=1e-10)
        z = stats.norm.ppf(0.975)
        np.testing.assert_allclose(r.sites["upper"], r.sites["estimate"] + z * r.sites["se"],
                                   atol=1e-8)
    # exponentiated table for ratios
    e = r.summary(exp=True)
    np.testing.assert_allclose(e["estimate"], np.exp(sol[0] + sol[1:]), rtol=1e-10)
    assert "se_log" in e and "ratio_to_collaborative" in e


def _coverage(tau: float, reps: int, seed: int, interval: str = "posterior", k: int = 57):
    rng = np.random.default_rng(seed)
    cover = []
    for _ in range(reps):
        se = rng.uniform(0.15, 0.6, k)  # log-RR SEs of hospitals with ~10 to ~180 deaths
        theta = math.log(0.82) + tau * rng.standard_normal(k)
        y = theta + se * rng.standard_normal(k)
        d = empirical_bayes(y, se**2, interval=interval).sites
        cover.append(np.mean((d["lower"] <= theta) & (theta <= d["upper"])))
    return float(np.mean(cover))


def test_posterior_intervals_cover_true_site_effects():
    # 57 sites with the simulator's between-site SD (0.25): nominal 95% on average (95.0% in the
    # 1,000-run benchmark). Monte Carlo SE of the average with 120 x 57 intervals: about 0.4 points.
    assert 0.93 <= _coverage(0.25, 120, seed=11) <= 0.97
    # a small between-site SD is badly determined: plug-in BLUP intervals under-cover (about
    # 81%), the posterior over tau^2 does not (conservative: about 98%)
    assert 0.93 <= _coverage(0.10, 80, seed=12) <= 0.995
    assert _coverage(0.10, 80, seed=12, interval="plugin") < 0.88


def test_intervals_do_not_collapse_when_reml_tau2_is_zero():
    y = np.array([0.10, 0.11, 0.09, 0.10, 0.12, 0.10])
    v = np.array([0.04, 0.06, 0.09, 0.04, 0.05, 0.07])
    plug = empirical_bayes(y, v, interval="plugin")
    post = empirical_bayes(y, v)
    assert plug.tau2 == pytest.approx(0.0, abs=1e-10)
    # plug-in: every site is shrunk all the way, with the collaborative mean's SE
    np.testing.assert_allclose(plug.sites["shrinkage"], 1.0)
    assert (post.sites["upper"] - post.sites["lower"] > plug.sites["upper"] - plug.sites["lower"]).all()
    assert (post.sites["shrinkage"] < 1).all()
    assert post.tau_posterior["weight"].sum() == pytest.approx(1.0)


def test_too_little_information_rule_and_statuses():
    assert MIN_EXPECTED_EVENTS == 20
    flags = too_little_information([25, 19.9, 40, np.nan], [30, 50, 12, 30])
    assert flags.tolist() == [False, True, True, True]
    y = np.array([-0.2, 0.1, -0.4, 0.3, np.nan, -0.1])
    v = np.array([0.05, 0.08, 0.04, 0.1, np.nan, 0.06])
    est = ~too_little_information([30, 5, 30, 30, 30, 30], [30, 30, 30, 30, 30, 30])
    r = empirical_bayes(y, v, list("ABCDEF"), estimable=est)
    st = r.sites.set_index("label")["status"]
    assert st["B"] == "too little information"
    assert st["E"].startswith("not estimable")
    assert r.pooled.k == 4 and set(r.pooled.excluded["label"]) == {"B", "E"}
    assert r.sites.loc[r.sites["status"] != "ok", "estimate"].isna().all()
    assert r.site("A")["status"] == "ok"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"yi": [0.1, 0.2, 0.3], "vi": [0.1, 0.1, 0.1]}, "at least 4"),
        ({"yi": [0.1, 0.2, 0.3], "vi": [0.1, 0.1, 0.1], "prior": "jeffreys"}, "prior"),
        ({"yi": [0.1, 0.2, 0.3], "vi": [0.1, 0.0, 0.1]}, "positive"),
        ({"yi": [0.1, 0.2, 0.3], "vi": [0.1, 0.1, 0.1], "labels": ["a", "a", "b"]}, "unique"),
        ({"yi": [0.1, 0.2, 0.3], "vi": [0.1, 0.1, 0.1], "tau2": -1}, "tau2"),
        ({"yi": [0.1, 0.2, 0.3], "vi": [0.1, 0.1, 0.1], "interval": "hpd"}, "interval"),
        ({"yi": [0.1, 0.2, 0.3], "vi": [0.1, 0.1, 0.1], "estimable": [True]}, "one entry"),
    ],
)
def test_empirical_bayes_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        empirical_bayes(**kwargs)


def test_forest_plot_axis_is_bounded_and_clips_with_arrows():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # one tiny study with a CI from 0.001 to 1000 (the S48 case) among ordinary ones
    y = np.array([-0.2, -0.3, 0.05, -0.25, 1.15])
    s = np.array([0.1, 0.15, 0.2, 0.12, 3.5])
    r = random_effects(y, s, labels=list("ABCDE"))
    ax = r.forest_plot()
    lo, hi = ax.get_xlim()
    assert hi / lo <= 100.0 + 1e-9
    assert lo > 0.05 and hi < 20
    ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
    assert 2 <= len(ticks) <= 7
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert "1" in labels and not any("10^" in t or "$" in t for t in labels)
    assert any(type(c).__name__ == "Annotation" for c in ax.get_children())  # clipping arrows
    plt.close(ax.figure)
    # the partially pooled plot of the same data
    eb = empirical_bayes(y, s**2, list("ABCDE"))
    ax = eb.plot(highlight="E")
    lo, hi = ax.get_xlim()
    assert hi / lo <= 20.0 + 1e-9
    assert len(ax.get_yticklabels()) == 5
    with pytest.raises(ValueError, match="highlight"):
        eb.plot(highlight="Z")
    plt.close("all")


def _henderson(y, V, tau2):
    """Henderson's mixed model equations with correlated residuals: y = 1 mu + u + e,
    u ~ N(0, tau2 I), e ~ N(0, V); BLUP of theta = mu + u and its prediction error variance."""
    k = len(y)
    Ri = np.linalg.inv(V)
    X, Z = np.ones((k, 1)), np.eye(k)
    C = np.block([[X.T @ Ri @ X, X.T @ Ri @ Z], [Z.T @ Ri @ X, Z.T @ Ri @ Z + np.eye(k) / tau2]])
    rhs = np.concatenate([X.T @ Ri @ y, Z.T @ Ri @ y])
    Ci = np.linalg.inv(C)
    sol = Ci @ rhs
    L = np.hstack([np.ones((k, 1)), np.eye(k)])  # theta_i = mu + u_i
    return L @ sol, np.diag(L @ Ci @ L.T)


def test_correlated_sampling_errors_match_henderson_equations():
    """With a full sampling covariance (vcov), the posterior given tau^2 is the GLS BLUP; with a
    diagonal one it is exactly the independent model."""
    rng = np.random.default_rng(7)
    k = 12
    v = rng.uniform(0.02, 0.2, k)
    common = 0.03  # a shared component (e.g. the estimation error of a shared trend)
    V = np.diag(v) + common * (np.ones((k, k)) - np.eye(k)) * 0.5
    V[np.diag_indices(k)] = v
    y = rng.multivariate_normal(np.full(k, -0.2), V + 0.01 * np.eye(k))
    for tau2 in (0.002, 0.01, 0.05):
        res = empirical_bayes(y, v, vcov=V, tau2=tau2)
        mean, var = _henderson(y, V, tau2)
        np.testing.assert_allclose(res.sites["estimate"], mean, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(res.sites["se"] ** 2, var, rtol=1e-8, atol=1e-12)
    a = empirical_bayes(y, v)
    b = empirical_bayes(y, v, vcov=np.diag(v))
    np.testing.assert_allclose(a.sites[["estimate", "lower", "upper"]],
                               b.sites[["estimate", "lower", "upper"]], rtol=1e-7)
    # a positive correlation the independent model ignores understates the mean's uncertainty
    assert empirical_bayes(y, v, vcov=V).collaborative["se"] > a.collaborative["se"]
    with pytest.raises(ValueError, match="vcov"):
        empirical_bayes(y, v, vcov=np.eye(k))


def test_weakly_informative_priors_on_tau():
    """Half-normal and half-Cauchy priors (scale 0.5) are proper: they put less weight than a
    flat prior on tau^2 on large between-site variation the data cannot rule out."""
    rng = np.random.default_rng(3)
    k = 15
    v = rng.uniform(0.05, 0.3, k)
    y = rng.normal(-0.2, np.sqrt(v))  # no true heterogeneity
    widths = {}
    for prior in ("uniform_tau2", "uniform_tau", "half_normal", "half_cauchy"):
        r = empirical_bayes(y, v, prior=prior)
        s = r.sites
        assert ((s["lower"] <= s["estimate"]) & (s["estimate"] <= s["upper"])).all()
        widths[prior] = float((s["upper"] - s["lower"]).mean())
        assert abs(r.tau_posterior["weight"].sum() - 1) < 1e-12
    assert widths["half_normal"] < widths["uniform_tau2"]
    assert widths["half_cauchy"] < widths["uniform_tau2"]
    assert "half-normal prior on tau (scale 0.5)" in empirical_bayes(y, v, prior="half_normal").method_note
    with pytest.raises(ValueError, match="prior"):
        empirical_bayes(y, v, prior="jeffreys")
    with pytest.raises(ValueError, match="prior_scale"):
        empirical_bayes(y, v, prior="half_normal", prior_scale=0)

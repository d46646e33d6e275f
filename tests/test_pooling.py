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

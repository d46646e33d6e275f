"""Single-series ITS (analysis.its.fit_its) against published R output.

Reference example: Bernal JL, Cummins S, Gasparrini A (2017). Interrupted time series regression
for the evaluation of public health interventions: a tutorial. Int J Epidemiol 46(1):348-355.
Data: ``sicily.csv`` from the authors' code repository
https://github.com/gasparrini/2017_lopezbernal_IJE_codedata (copied to tests/data/sicily.csv:
monthly acute coronary events (aces) in Sicily 2002-2006, smoking ban from January 2005 =
time 37, age-standardised population ``stdpop`` as offset).

Reference numbers: R ``glm`` output of the tutorial's Rcode.R models, as printed in Chuck
Cleland's knitted reproduction of the tutorial, https://clelandcm.github.io/ITS
(source: github.com/clelandcm/ITS index.html, 2018-06-08):

model1 <- glm(aces ~ offset(log(stdpop)) + smokban + time, family=poisson)
    (Intercept) -6.2431509 (0.0111894); smokban -0.1116284 (0.0172248); time 0.0049450 (0.0004992)
    Residual deviance 197.31 on 56 df; ci.lin(Exp=T) smokban 0.894 (0.865, 0.925)
model2 <- same with family=quasipoisson
    (Intercept) SE 0.0211096, t -295.749; smokban SE 0.0324959, t -3.435, p 0.00112;
    time SE 0.0009418, t 5.250, p 2.43e-06; dispersion 3.559195;
    ci.lin(Exp=T) smokban 0.894 (0.839, 0.953)
model3 <- + harmonic(month, 2, 12), quasipoisson
    (Intercept) -6.2523723 (0.0175689); smokban -0.1220868 (0.0270311) t -4.517 p 3.64e-05;
    time 0.0053892 (0.0007955); harmonic 1..4 (= sin1, sin2, cos1, cos2):
    0.0370967 (0.0100241), -0.0182122 (0.0096435), 0.0381608 (0.0096848), 0.0147634 (0.0097221);
    dispersion 2.262186; residual deviance 117.27 on 52 df; smokban RR 0.885 (0.839, 0.933)
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.its import fit_its, newey_west_lags

DATA = Path(__file__).parent / "data" / "sicily.csv"


@pytest.fixture(scope="module")
def sicily() -> pd.DataFrame:
    d = pd.read_csv(DATA)
    d["date"] = pd.to_datetime({"year": d["year"], "month": d["month"], "day": 1})
    return d


def coef(res, term):
    return res.coefficients.set_index("term").loc[term]


def rel(a, b):
    return abs(a - b) / abs(b)


SIG4 = 5e-4  # agreement to 4 significant digits (relative half-unit in the 4th digit)


def fit_sicily(sicily, **kw):
    """fit_its of acute coronary events on the Sicily data, the tutorial's set-up by default:
    go-live at month 37, quasi-Poisson with log(stdpop) offset, no autocorrelation correction."""
    args = {"time": "time", "intervention": 37, "family": "quasipoisson", "exposure": "stdpop",
            "autocorrelation": "none"}
    return fit_its(sicily, "aces", **{**args, **kw})


def rr3(effect) -> tuple[float, float, float]:
    """Estimate and CI rounded to 3 decimals, as Epi::ci.lin prints them."""
    return round(effect.estimate, 3), round(effect.ci_low, 3), round(effect.ci_high, 3)


def test_poisson_model1_matches_r_glm(sicily):
    r = fit_sicily(sicily, family="poisson", slope_change=False)
    ref = {
        "intercept": (-6.2431509, 0.0111894),
        "level_change": (-0.1116284, 0.0172248),
        "time": (0.0049450, 0.0004992),
    }
    for term, (est, se) in ref.items():
        assert rel(coef(r, term).estimate, est) < 1e-5
        assert rel(coef(r, term).se, se) < SIG4
    assert r.diagnostics.deviance == pytest.approx(197.31, abs=0.005)
    assert r.diagnostics.df_resid == 56
    # Epi::ci.lin(model1, Exp=TRUE): 0.894 (0.865, 0.925)
    assert rr3(r.level_change) == (0.894, 0.865, 0.925)


def test_quasipoisson_model2_matches_r_glm(sicily):
    r = fit_sicily(sicily, slope_change=False)
    assert rel(r.diagnostics.dispersion, 3.559195) < 1e-5
    for term, (est, se, t) in {
        "intercept": (-6.2431509, 0.0211096, -295.749),
        "level_change": (-0.1116284, 0.0324959, -3.435),
        "time": (0.0049450, 0.0009418, 5.250),
    }.items():
        c = coef(r, term)
        assert rel(c.estimate, est) < 1e-5
        assert rel(c.se, se) < SIG4
        assert c.statistic == pytest.approx(t, abs=0.0005)
    # p-values as summary.glm (t with 56 df)
    assert coef(r, "level_change").p == pytest.approx(0.00112, rel=5e-3)
    assert coef(r, "time").p == pytest.approx(2.43e-06, rel=5e-3)
    # ci.lin(model2, Exp=TRUE): smokban 0.894 (0.839, 0.953)
    assert rr3(r.level_change) == (0.894, 0.839, 0.953)


def test_quasipoisson_seasonal_model3_matches_r_glm(sicily):
    r = fit_sicily(sicily, seasonality=2, slope_change=False)
    ref = {
        "intercept": (-6.2523723, 0.0175689),
        "level_change": (-0.1220868, 0.0270311),
        "time": (0.0053892, 0.0007955),
        "sin1": (0.0370967, 0.0100241),
        "sin2": (-0.0182122, 0.0096435),
        "cos1": (0.0381608, 0.0096848),
        "cos2": (0.0147634, 0.0097221),
    }
    for term, (est, se) in ref.items():
        assert rel(coef(r, term).estimate, est) < 5e-5, term
        assert rel(coef(r, term).se, se) < SIG4, term
    assert rel(r.diagnostics.dispersion, 2.262186) < 1e-5
    assert r.diagnostics.deviance == pytest.approx(117.27, abs=0.005)
    assert coef(r, "level_change").p == pytest.approx(3.64e-05, rel=5e-3)
    assert rr3(r.level_change) == (0.885, 0.839, 0.933)


def test_month_dates_give_same_effects_as_integer_time(sicily):
    a = fit_sicily(sicily, seasonality=2)
    b = fit_sicily(sicily, time="date", intervention=pd.Timestamp("2005-01-15"), seasonality=2)
    for term in ("level_change", "slope_change", "time", "sin1", "cos2"):
        assert coef(a, term).estimate == pytest.approx(coef(b, term).estimate, rel=1e-9)
        assert coef(a, term).se == pytest.approx(coef(b, term).se, rel=1e-9)
    assert a.n_pre == 36 and a.n_post == 23


def test_slope_change_is_centred_at_go_live(sicily):
    """Tutorial's model4 uses I(time-36):smokban; with our centring at the first post month
    (time 37) the level change equals R's smokban + slope (same fitted values)."""
    r = fit_sicily(sicily, seasonality=2)
    fitted = r.counterfactual["fitted"].to_numpy()
    # jump at go-live on the log scale is exactly the level change
    cf = r.counterfactual["counterfactual"].to_numpy()
    assert math.log(fitted[36] / cf[36]) == pytest.approx(r.level_change.link_estimate, abs=1e-12)
    e12 = r.effect_at(12)
    assert math.log(e12.relative) == pytest.approx(
        r.level_change.link_estimate + 12 * r.slope_change.link_estimate, abs=1e-12
    )
    assert math.log(fitted[48] / cf[48]) == pytest.approx(math.log(e12.relative), abs=1e-10)
    assert e12.absolute == pytest.approx(fitted[48] - cf[48], rel=1e-10)
    assert e12.relative_low < e12.relative < e12.relative_high


def test_counterfactual_and_cumulative_effect_consistent(sicily):
    r = fit_sicily(sicily, family="poisson", seasonality=2, autocorrelation="hac",
                   slope_change=False)
    cf = r.counterfactual
    post = cf["post"].to_numpy()
    np.testing.assert_allclose(
        cf["fitted"][post] / cf["counterfactual"][post], r.level_change.estimate, rtol=1e-10
    )
    np.testing.assert_allclose(cf["fitted"][~post], cf["counterfactual"][~post], rtol=1e-12)
    assert np.all(cf["counterfactual_low"] <= cf["counterfactual"])
    assert np.all(cf["counterfactual"] <= cf["counterfactual_high"])
    ce = r.cumulative_effect()
    assert ce.n_months == 23
    assert ce.total == pytest.approx(float((cf["fitted"] - cf["counterfactual"])[post].sum()))
    # with a level change only, the cumulative ratio is the rate ratio and shares its CI
    assert ce.relative == pytest.approx(r.level_change.estimate, rel=1e-10)
    assert ce.relative_low == pytest.approx(r.level_change.ci_low, rel=1e-8)
    assert ce.total_low < ce.total < ce.total_high < 0


def test_hac_uses_newey_west_rule_and_changes_only_ses(sicily):
    n = len(sicily)
    assert newey_west_lags(n) == math.floor(4 * (n / 100) ** (2 / 9)) == 3
    a = fit_sicily(sicily, family="poisson")
    b = fit_sicily(sicily, family="poisson", autocorrelation="hac")
    assert b.hac_lags == 3
    assert b.level_change.link_estimate == pytest.approx(a.level_change.link_estimate, rel=1e-12)
    assert b.level_change.link_se != pytest.approx(a.level_change.link_se, rel=1e-3)


def test_ar1_sandwich_reduces_to_model_based_without_correlation():
    """With rho = 0 the AR(1) sandwich is the model-based Poisson covariance; on an AR(1)-free
    simulated series the two must be close and the estimated rho near 0."""
    rng = np.random.default_rng(3)
    n = 72
    t = np.arange(n)
    mu = np.exp(3 + 0.01 * t - 0.3 * (t >= 36))
    d = pd.DataFrame({"t": t, "y": rng.poisson(mu)})
    a = fit_its(d, "y", time="t", intervention=36, autocorrelation="none")
    b = fit_its(d, "y", time="t", intervention=36, autocorrelation="ar1")
    assert abs(b.ar1_rho) < 0.3
    assert b.level_change.link_se == pytest.approx(a.level_change.link_se, rel=0.35)


def test_gaussian_ar1_recovers_autocorrelation():
    rng = np.random.default_rng(11)
    n = 120
    e = np.zeros(n)
    for i in range(1, n):
        e[i] = 0.6 * e[i - 1] + rng.normal(0, 1)
    t = np.arange(n)
    y = 10 + 0.05 * t + 2.0 * (t >= 60) + e
    d = pd.DataFrame({"t": t, "y": y})
    r = fit_its(d, "y", time="t", intervention=60, family="gaussian", autocorrelation="ar1")
    assert 0.4 < r.ar1_rho < 0.8
    assert r.level_change.ci_low < 2.0 < r.level_change.ci_high
    assert r.level_change.scale == "difference"


def test_binomial_family_gives_odds_ratio():
    rng = np.random.default_rng(5)
    n = 48
    t = np.arange(n)
    trials = rng.integers(80, 120, n)
    p = 1 / (1 + np.exp(-(-1.0 + 0.01 * t + 0.8 * (t >= 24))))
    d = pd.DataFrame({"t": t, "k": rng.binomial(trials, p), "n": trials})
    r = fit_its(
        d,
        "k",
        time="t",
        intervention=24,
        family="binomial",
        trials="n",
        autocorrelation="none",
        slope_change=False,
    )
    assert r.level_change.scale == "odds ratio"
    assert r.level_change.ci_low < math.exp(0.8) < r.level_change.ci_high
    cf = r.counterfactual
    assert {"trials", "fitted", "counterfactual"} <= set(cf.columns)


def test_negbin_and_transition(sicily):
    r = fit_sicily(sicily, family="negbin", transition=3, seasonality=1, autocorrelation="hac")
    assert r.n_transition == 3 and r.n_post == 20
    assert r.negbin_alpha is not None and r.negbin_alpha > 0
    assert not r.counterfactual["fitted_in_model"].iloc[36:39].any()
    assert 0.7 < r.level_change.estimate < 1.05


def test_summary_and_plot_return_objects(sicily):
    import matplotlib

    matplotlib.use("Agg")
    r = fit_sicily(sicily, time="date", intervention="2005-01-01", family="poisson",
                   autocorrelation="hac", seasonality=2)
    s = r.summary()
    assert list(s["name"]) == ["level_change", "slope_change"]
    ax = r.plot(per=100000)
    assert ax.get_title().startswith("Interrupted time series")
    assert len(r.diagnostics.residual_acf) == 12
    assert 0 <= r.diagnostics.ljung_box_p <= 1


# ------------------------------------------------------------------ bad input -> ValueError


def _base(n=30, t0=15):
    return pd.DataFrame({"t": np.arange(n), "y": np.arange(n) % 7 + 5, "e": 100.0})


@pytest.mark.parametrize(
    "mutate, kwargs, match",
    [
        (lambda d: d, {"intervention": 2}, "too few pre-intervention"),
        (lambda d: d, {"intervention": 29}, "too few post-intervention"),
        (lambda d: d, {"intervention": 40}, "outside the series"),
        (lambda d: d, {"intervention": 0}, "outside the series"),
        (lambda d: d.drop(index=[10, 11]), {"intervention": 15}, "missing months"),
        (lambda d: pd.concat([d, d.iloc[[3]]]), {"intervention": 15}, "duplicated months"),
        (
            lambda d: d.assign(e=np.where(d.t == 4, 0.0, 100.0)),
            {"intervention": 15, "exposure": "e"},
            "exposure 'e' must be positive",
        ),
        (lambda d: d.assign(y=d.y + 0.5), {"intervention": 15}, "non-negative integer counts"),
        (lambda d: d.assign(y=-d.y), {"intervention": 15}, "non-negative integer counts"),
        (lambda d: d, {"intervention": 15, "family": "binomial"}, "needs a trials column"),
        (lambda d: d, {"intervention": 15, "family": "weibull"}, "family must be one of"),
        (lambda d: d, {"intervention": 15, "autocorrelation": "ar2"}, "autocorrelation must be"),
        (lambda d: d, {"intervention": 15, "outcome": "nope"}, "outcome column 'nope' not found"),
        (lambda d: d.head(8), {"intervention": 4, "seasonality": 2}, "too few months"),
    ],
)
def test_bad_input_raises_clear_value_error(mutate, kwargs, match):
    d = mutate(_base())
    kw = dict(kwargs)
    outcome = kw.pop("outcome", "y")
    with pytest.raises(ValueError, match=match):
        fit_its(d, outcome, time="t", **kw)


def test_missing_calendar_month_named_in_error():
    d = pd.DataFrame({"m": pd.date_range("2020-01-01", periods=24, freq="MS"), "y": 5})
    d = d[d["m"] != "2020-06-01"]
    with pytest.raises(ValueError, match="2020-06-01"):
        fit_its(d, "y", time="m", intervention="2021-01-01")

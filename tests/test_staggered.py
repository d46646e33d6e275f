"""fit_its_staggered (the imputation estimator, analysis.staggered) against known truth.

Noise-free panels (analysis.simulate.simulate_panel: 57 sites, 84 months, waves live at months
24/36/48, about 1e6 expected events per site-month) must give the true effect at event month 12
within 1% for every effect shape, and leads of 1 within 1%; the old fit_its_multisite must get the
growing and waning cases wrong. A small fixed-seed replicate study checks bias and coverage with
bounds that a 6% bias would fail (benchmarks/bench_staggered.py has the 200-replicate version).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest

from analysis.its import fit_its_multisite, fit_its_staggered
from analysis.simulate import simulate_panel
from analysis.staggered import ExtrapolationWarning, StaggeredEffect

COLS = {"site": "site_id", "time": "month", "go_live": "go_live_month"}
FIT = {**COLS, "exposure": "exposure", "seasonality": 2}


def _fit(data, outcome="y", **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExtrapolationWarning)
        return fit_its_staggered(data, outcome, **{**FIT, **kw})


@pytest.fixture(scope="module")
def noise_free():
    out = {}
    for sc in ("constant", "growing", "waning", "ramp12", "calendar_shock"):
        p = simulate_panel(scenario=sc)
        out[sc] = (p, _fit(p.data))
    return out


@pytest.mark.parametrize("scenario", ["constant", "growing", "waning", "ramp12", "calendar_shock"])
def test_noise_free_recovers_effect_at_12_and_leads(noise_free, scenario):
    p, r = noise_free[scenario]
    truth = p.truth_at(12)
    e = r.effect_at(12)
    assert isinstance(e, StaggeredEffect)
    assert abs(e.relative / truth - 1) < 0.01, (scenario, e.relative, truth)
    assert e.lower <= e.relative <= e.upper
    es = r.event_study()
    leads = es[es["event_time"] < 0]
    assert list(leads["event_time"]) == list(range(-12, 0))
    assert np.all(np.abs(leads["estimate"] - 1) < 0.01)
    # the whole event-time path, not only month 12
    lags = es[es["event_time"].between(0, 35)].set_index("event_time")["estimate"]
    tr = p.truth.set_index("event_month")["rr"].reindex(lags.index)
    assert np.all(np.abs(lags / tr - 1) < 0.01)
    # averages over windows are ratios of totals, as the truth
    assert abs(r.average_effect(12, 23).relative / p.truth_between(12, 23) - 1) < 0.01


def test_truth_shapes_differ(noise_free):
    t = {k: v[0].truth_at(12) for k, v in noise_free.items()}
    assert t["growing"] > t["waning"] > t["constant"] - 1e-9
    assert abs(t["constant"] - 0.84) < 1e-9 and abs(t["ramp12"] - 0.84) < 1e-9


@pytest.mark.parametrize("scenario", ["growing", "waning"])
def test_old_multisite_estimator_is_wrong_where_the_new_one_is_right(noise_free, scenario):
    p, r = noise_free[scenario]
    d = p.data.assign(y_int=np.round(p.data["y"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        old = fit_its_multisite(d, "y_int", **COLS, exposure="exposure", seasonality=2,
                                transition=6, slope_change=False).effect_at(12).relative
    truth = p.truth_at(12)
    assert abs(old / truth - 1) > 0.02, (scenario, old, truth)  # measured: +6.4%, -2.2%
    assert abs(r.effect_at(12).relative / truth - 1) < 0.002


def test_calendar_shock_biases_old_estimator_not_new(noise_free):
    p, r = noise_free["calendar_shock"]
    d = p.data.assign(y_int=np.round(p.data["y"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        old = fit_its_multisite(d, "y_int", **COLS, exposure="exposure", seasonality=2,
                                transition=6, slope_change=False).effect_at(12).relative
    assert abs(old / p.truth_at(12) - 1) > 0.03
    shocks = r.calendar_shocks
    dip = shocks[(shocks["month"] >= "2018-07-01") & (shocks["month"] <= "2019-06-01")]
    assert np.allclose(dip["shock"], math.log(0.85 * 0.85), atol=0.01)  # the rate dip, found
    calm = shocks[shocks["identified"] & ~shocks.index.isin(dip.index)]
    assert np.max(np.abs(calm["shock"])) < 0.01


def test_extrapolated_months_are_reported_and_warned():
    p = simulate_panel(scenario="constant", sites=24)
    with pytest.warns(ExtrapolationWarning, match="not identified"):
        r = fit_its_staggered(p.data, "y", **FIT)
    # months 48..83 (2020-01 on) have no untreated site
    assert len(r.extrapolated_months) == 36
    assert min(r.extrapolated_months) == pd.Timestamp("2020-01-01")
    es = r.event_study().set_index("event_time")
    assert es.loc[0, "extrapolated_share"] > 0.3  # wave 3's go-live month
    assert es.loc[-5, "extrapolated_share"] == 0
    # every post month of the last wave is extrapolated; wave 1's first 24 months are not
    assert r.effect_at(12).extrapolated_share == pytest.approx(
        es.loc[12, "extrapolated_share"])
    with pytest.raises(ValueError, match="no site is untreated"):
        fit_its_staggered(p.data, "y", **FIT, extrapolate=False)
    # without calendar effects nothing needs a shock
    with warnings.catch_warnings():
        warnings.simplefilter("error", ExtrapolationWarning)
        r2 = fit_its_staggered(p.data, "y", **FIT, calendar_effects=False)
    assert r2.extrapolated_months == []


def test_gaussian_family_on_log_outcome():
    p = simulate_panel(scenario="waning", expected_count=1e6)
    d = p.data.assign(log_rate=np.log(p.data["y"] / p.data["exposure"]))
    r = _fit(d, "log_rate", exposure=None, family="gaussian")
    # difference of log rates at event month 12 = mean over sites of log RR_s x path
    sub = d[d["event_month"] == 12]
    truth = float(np.mean(np.log(sub["y1"] / sub["y0"])))
    e = r.effect_at(12)
    assert e.scale == "difference"
    assert abs(e.relative - truth) < 0.005


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: d.assign(go_live_month=d["go_live_month"].where(d["site_id"] != "P03")),
         "go_live .* missing"),
        (lambda d: d.drop(index=d.index[(d["site_id"] == "P05")][10]), "missing months"),
        (lambda d: d[~((d["site_id"] == "P07") & (d["event_month"] < -8))], "min_pre"),
    ],
)
def test_clear_errors(mutate, match):
    p = simulate_panel(scenario="constant", sites=12)
    with pytest.raises(ValueError, match=match):
        _fit(mutate(p.data))


def test_bad_arguments():
    p = simulate_panel(scenario="constant", sites=12)
    with pytest.raises(ValueError, match="family"):
        _fit(p.data, family="negbin")
    with pytest.raises(ValueError, match="se must be"):
        _fit(p.data, se="bootstrap")
    with pytest.raises(ValueError, match="no site-months at event times"):
        _fit(p.data).effect_at(80)


def test_noisy_replicates_bias_and_coverage():
    """12 fixed-seed noisy panels (30 sites, 400 expected events per site-month): mean log error
    and coverage at event month 12; a 6% bias would fail the bias bound by many MC SEs."""
    rows = []
    for seed in range(12):
        p = simulate_panel(scenario="growing", sites=30, expected_count=400, noise=True,
                           seed=100 + seed)
        r = _fit(p.data)
        e = r.effect_at(12)
        truth = p.truth_at(12)
        rows.append((math.log(e.relative / truth), e.se, e.lower <= truth <= e.upper,
                     r.pretrend_test().p_value))
    err, se, cover, pval = (np.array(v) for v in zip(*rows))
    assert abs(err.mean()) < 0.02  # MC SE of the mean about 0.004
    assert 0.5 < err.std() / se.mean() < 1.6
    assert cover.sum() >= 10
    assert (pval < 0.05).sum() <= 3


def test_covariance_options_and_outputs():
    p = simulate_panel(scenario="constant", sites=30, expected_count=50, noise=True, seed=3)
    r = _fit(p.data)
    se = {k: r.with_se(k).effect_at(12).se for k in ("cluster", "panel_hac", "driscoll_kraay")}
    assert all(np.isfinite(v) and v > 0 for v in se.values())
    assert 0.5 < se["panel_hac"] / se["cluster"] < 2
    pt = r.pretrend_test()
    assert pt.df == 12 and pt.df_denom == 30 - 12 and 0 <= pt.p_value <= 1
    s = r.summary()
    assert {"quantity", "estimate", "lower", "upper", "p_value"} <= set(s.columns)
    es = r.event_study()
    assert {"event_time", "estimate", "lower", "upper", "n_sites", "se", "role",
            "extrapolated"} <= set(es.columns)
    assert set(es["role"]) == {"lead", "lag"}
    assert es["event_time"].min() == -12 and es["event_time"].max() == 36
    lead = r.effect_at(-3)
    assert lead.lower < 1 < lead.upper or abs(lead.relative - 1) < 0.1
    import matplotlib

    matplotlib.use("Agg")
    ax = r.plot()
    assert ax.get_xlabel() == "months since go-live"
    import matplotlib.pyplot as plt

    plt.close("all")


def test_transition_excludes_anticipation_months(noise_free):
    p, r0 = noise_free["constant"]
    r = _fit(p.data, transition=6)
    assert r.transition == 6
    es = r.event_study()
    assert set(es.loc[es["event_time"].between(-6, -1), "role"]) == {"transition"}
    assert abs(r.effect_at(12).relative / p.truth_at(12) - 1) < 0.01
    assert r.n_fit_obs == r0.n_fit_obs - 6 * 57


def test_calendar_centering_options(noise_free):
    """Least-squares centring reads part of a shock in identified months as trend and carries it
    into extrapolated months; the robust centring does not. Without shocks they agree."""
    p, r = noise_free["calendar_shock"]
    ls = _fit(p.data, calendar_centering="ls")
    assert abs(ls.effect_at(12).relative / p.truth_at(12) - 1) > 0.05
    assert abs(r.effect_at(12).relative / p.truth_at(12) - 1) < 0.01
    p0, r0 = noise_free["constant"]
    ls0 = _fit(p0.data, calendar_centering="ls")
    assert ls0.effect_at(12).relative == pytest.approx(r0.effect_at(12).relative, rel=1e-3)
    with pytest.raises(ValueError, match="calendar_centering"):
        _fit(p0.data, calendar_centering="median")

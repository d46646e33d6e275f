"""Multi-site ITS (fit_its_multisite), per-site fits and their random-effects pooling.

References: simulated Poisson panels with a known rate ratio (truth), and statsmodels' GLM
sandwich estimators (cluster, hac-groupsum = Driscoll-Kraay, hac-panel) as an independent check of
the hand-written IRLS and sandwich code.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from analysis.its import (
    fit_its,
    fit_its_by_site,
    fit_its_multisite,
    pool_site_effects,
)

TRUE_LOG_RR = math.log(0.75)


def panel(seed=7, n_sites=16, months=48, base=6.0, log_rr=TRUE_LOG_RR, zero_sites=0):
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2018-01-01")
    rows = []
    for i in range(n_sites):
        gl = 18 + 6 * (i % 3)  # staggered go-live: months 18, 24, 30
        a = rng.normal(0, 0.3)
        slope = rng.normal(0, 0.004)
        for m in range(months):
            expo = rng.uniform(20, 40)
            eta = math.log(base / 30) + a + slope * m + (log_rr if m >= gl else 0.0)
            mu = expo * math.exp(eta) * (1 + 0.1 * math.cos(2 * math.pi * (m % 12) / 12))
            y = 0 if i < zero_sites else rng.poisson(mu)
            rows.append(
                {
                    "site": f"H{i:02d}",
                    "month": start + pd.DateOffset(months=m),
                    "go_live": start + pd.DateOffset(months=gl),
                    "y": y,
                    "expo": expo,
                }
            )
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def pan():
    return panel()


def fit_panel(data, **kw):
    """fit_its_multisite of y on a panel() frame with its column names and exposure."""
    cols = {"site": "site", "time": "month", "go_live": "go_live", "exposure": "expo"}
    return fit_its_multisite(data, "y", **{**cols, **kw})


def test_level_change_recovers_truth_and_event_study(pan):
    r = fit_panel(pan, seasonality=1, slope_change=False, se="cluster", event_reference="pre")
    lc = r.level_change
    assert lc.scale == "rate ratio"
    assert abs(lc.link_estimate - TRUE_LOG_RR) < 3 * lc.link_se
    assert lc.ci_low < math.exp(TRUE_LOG_RR) < lc.ci_high
    assert r.n_sites == 16 and r.excluded_sites.empty
    e6 = r.effect_at(6)
    assert e6.relative == pytest.approx(lc.estimate)  # no slope term
    es = r.event_study()
    post = es[(es["event_time"] != "pre")]
    post = post[post["event_time"].astype(int) >= 0]
    # the average post-go-live event-time effect is close to the truth
    assert abs(post["link_estimate"].mean() - TRUE_LOG_RR) < 0.1
    ax = r.plot_event_study()
    assert ax.get_xlabel() == "months since go-live"


def test_slope_change_model_and_reference_minus_one(pan):
    r = fit_panel(pan, seasonality=1, slope_change=True, event_window=(-6, 12))
    assert r.slope_change is not None
    # true slope change is 0
    assert r.slope_change.ci_low < 1 < r.slope_change.ci_high
    es = r.event_study()
    assert es.loc[es["reference"], "event_time"].item() == -1
    assert set(es["event_time"]) == set(range(-6, 13))
    assert es.loc[es["event_time"] == -6, "binned_endpoint"].item()
    assert es.loc[es["event_time"] == 12, "binned_endpoint"].item()
    s = r.summary()
    assert list(s["name"]) == ["level_change", "slope_change"]


def _sm_design(pan, r_terms):
    d = pan.sort_values(["site", "month"]).reset_index(drop=True)
    m = (d["month"].dt.year * 12 + d["month"].dt.month).to_numpy()
    g = (d["go_live"].dt.year * 12 + d["go_live"].dt.month).to_numpy()
    sites = pd.Categorical(d["site"])
    X = pd.get_dummies(sites, dtype=float)
    t_c = (m - m.mean()) / 12.0
    T = X.mul(t_c, axis=0)
    T.columns = [f"t{c}" for c in T.columns]
    X = pd.concat([X, T], axis=1)
    X["level"] = (m >= g).astype(float)
    return d, X, sites.codes, pd.factorize(m, sort=True)[0]


@pytest.mark.parametrize(
    "se, cov_type",
    [("cluster", "cluster"), ("driscoll_kraay", "hac-groupsum"), ("panel_hac", "hac-panel")],
)
def test_sandwich_matches_statsmodels(pan, se, cov_type):
    r = fit_panel(pan, slope_change=False, se=se, hac_lags=2)
    d, X, groups, tcodes = _sm_design(pan, None)
    model = sm.GLM(
        d["y"].to_numpy(), X, family=sm.families.Poisson(), offset=np.log(d["expo"].to_numpy())
    )
    kw = {
        "cluster": {"groups": groups},
        "hac-groupsum": {"time": tcodes, "maxlags": 2},
        "hac-panel": {"groups": groups, "maxlags": 2},
    }[cov_type]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = model.fit(
            cov_type=cov_type,
            cov_kwds=dict(kw, use_correction=False) if cov_type != "cluster" else kw,
        )
    assert r.level_change.link_estimate == pytest.approx(ref.params["level"], rel=1e-8)
    se_ref = float(ref.bse["level"])
    if cov_type == "cluster":
        # statsmodels applies G/(G-1) * (N-1)/(N-K); ours G/(G-1) (as Stata's glm vce(cluster))
        n, k = X.shape
        se_ref /= math.sqrt((n - 1) / (n - k))
    assert r.level_change.link_se == pytest.approx(se_ref, rel=1e-6)


def test_sites_without_events_are_excluded_and_listed():
    d = panel(seed=3, n_sites=10, zero_sites=2)
    r = fit_panel(d, slope_change=False)
    assert r.n_sites == 8
    assert list(r.excluded_sites["site"]) == ["H00", "H01"]
    assert set(r.excluded_sites["reason"]) == {"no_events"}


def test_zero_exposure_months_without_events_are_counted_not_fatal():
    d = panel(seed=4, n_sites=6)
    d.loc[d.index[5], ["expo", "y"]] = [0.0, 0]
    r = fit_panel(d, slope_change=False)
    assert r.n_zero_exposure_months == 1
    d.loc[d.index[7], ["expo", "y"]] = [0.0, 3]
    with pytest.raises(ValueError, match="0 in site-months with events"):
        fit_panel(d)


@pytest.mark.parametrize(
    "mutate, kwargs, match",
    [
        (lambda d: d.drop(index=[3]), {}, "missing months .* for site 'H00'"),
        (
            lambda d: d.assign(
                go_live=d["go_live"].where(d.index != 2, pd.Timestamp("2019-01-01"))
            ),
            {},
            "go_live varies within site",
        ),
        (lambda d: d, {"family": "negbin"}, "family for fit_its_multisite"),
        (lambda d: d, {"se": "bootstrap"}, "se must be"),
        (lambda d: d, {"event_window": (0, 12)}, "event_window"),
        (lambda d: d, {"exposure": "nope"}, "exposure column 'nope' not found"),
    ],
)
def test_multisite_bad_input(mutate, kwargs, match):
    d = mutate(panel(seed=5, n_sites=4))
    with pytest.raises(ValueError, match=match):
        fit_its_multisite(d, "y", site="site", time="month", go_live="go_live", **kwargs)


def test_by_site_fits_match_single_fits_and_pool():
    d = panel(seed=9, n_sites=12, base=8.0)
    # one site with too few events, one without a post period
    h03 = d.index[d["site"] == "H03"]
    d.loc[h03, "y"] = 0
    d.loc[h03[[2, 9, 30]], "y"] = 1  # 3 events in 48 months
    d.loc[d["site"] == "H04", "go_live"] = pd.Timestamp("2030-01-01")
    fr = fit_its_by_site(
        d,
        "y",
        site="site",
        time="month",
        go_live="go_live",
        exposure="expo",
        min_events=10,
        slope_change=False,
        autocorrelation="none",
    )
    assert len(fr) == 12  # no site dropped
    st = fr.set_index("site")["status"]
    assert st["H04"] == "no_post_period"
    assert st["H03"].startswith("too_few_events")
    assert (st.drop(["H03", "H04"]) == "ok").all()
    one = d[d["site"] == "H05"]
    r = fit_its(
        one,
        "y",
        time="month",
        intervention=one["go_live"].iloc[0],
        exposure="expo",
        slope_change=False,
        autocorrelation="none",
    )
    row = fr.set_index("site").loc["H05"]
    assert row["link_effect"] == pytest.approx(r.level_change.link_estimate, rel=1e-10)
    assert row["link_se"] == pytest.approx(r.level_change.link_se, rel=1e-10)
    pooled = pool_site_effects(fr)
    assert pooled.k == 10
    assert set(pooled.excluded["label"]) == {"H03", "H04"}
    assert pooled.ci_low < TRUE_LOG_RR < pooled.ci_high
    # effect at 12 months with a slope term
    fr12 = fit_its_by_site(
        d,
        "y",
        site="site",
        time="month",
        go_live="go_live",
        exposure="expo",
        months_after=12,
        autocorrelation="none",
    )
    r12 = fit_its(
        one,
        "y",
        time="month",
        intervention=one["go_live"].iloc[0],
        exposure="expo",
        autocorrelation="none",
    ).effect_at(12)
    assert math.exp(fr12.set_index("site").loc["H05", "link_effect"]) == pytest.approx(r12.relative)

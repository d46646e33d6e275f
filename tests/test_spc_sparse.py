"""Control charts fit for sparse data: exact limits, median and log-scale charts, physical bounds,
small subgroups, the chart-choice rules of analysis.spc_choice, the risk-adjusted CUSUM, page
grids, and a fast version of the null false-alarm benchmark (benchmarks/bench_spc_null.py)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from analysis import spc, spc_choice

DATA = Path(__file__).parent / "data"
A = spc.TAIL_3SIGMA
BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_spc_null.py"


def _binom_cdf(k: int, n: int, p: float) -> float:
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1))


def _poisson_cdf(k: int, mu: float) -> float:
    return sum(math.exp(-mu) * mu**i / math.factorial(i) for i in range(k + 1))


# ---------------------------------------------------------------------------------------------
# exact probability limits
# ---------------------------------------------------------------------------------------------


def test_exact_binomial_limits_by_enumeration():
    df = pd.DataFrame({"x": range(6), "y": [0, 1, 0, 2, 1, 0], "n": [5, 14, 37, 9, 60, 21]})
    r = spc.p_chart(df, "x", "y", "n", limits="exact")
    p = 4 / 146
    assert r.limits == "exact" and "exact probability limits" in r.caption
    for _, row in r.data.iterrows():
        n = int(row["n"])
        # ucl count = smallest c with P(Y <= c) >= 1 - a: a count above it has P(Y >= y) <= a
        c_hi = next(c for c in range(n + 1) if _binom_cdf(c, n, p) >= 1 - A)
        c_lo = next(c for c in range(n + 1) if _binom_cdf(c, n, p) >= A)
        assert row["ucl"] * n == pytest.approx(c_hi)
        assert row["lcl"] * n == pytest.approx(c_lo)
        assert 1 - _binom_cdf(c_hi, n, p) <= A  # a point above the limit is that rare


def test_exact_poisson_limits_for_u_and_c_charts():
    df = pd.DataFrame({"x": range(5), "y": [3, 9, 4, 6, 5], "n": [800, 1200, 950, 1000, 1050]})
    u = spc.u_chart(df, "x", "y", "n", limits="exact")
    rate = 27 / 5000
    for _, row in u.data.iterrows():
        mu = rate * row["n"]
        c_hi = next(c for c in range(200) if _poisson_cdf(c, mu) >= 1 - A)
        assert row["ucl"] * row["n"] == pytest.approx(c_hi)
    c = spc.c_chart(df, "x", "y", limits="exact")
    assert c.data["ucl"].iloc[0] == next(k for k in range(200) if _poisson_cdf(k, 5.4) >= 1 - A)
    with pytest.raises(ValueError, match="exact probability limits"):
        spc.i_chart(df, "x", "y", limits="exact")
    with pytest.raises(ValueError, match="whole-number"):
        spc.p_chart(df.assign(n=df["n"] + 0.5), "x", "y", "n", limits="exact")


def test_exact_limits_agree_with_montgomery_orange_juice_signals():
    # n = 50 and p = 0.23: exact limits flag the same two samples as Montgomery's 3-sigma limits
    oj = pd.read_csv(DATA / "spc_orangejuice.csv", comment="#")
    trial = oj[oj["trial"]]
    r = spc.p_chart(trial, "sample", "D", "size", limits="exact")
    assert r.data.loc[r.data["sigma_signal"], "x"].tolist() == [15, 23]
    assert r.data["ucl"].iloc[0] == pytest.approx(0.42)  # 21 of 50 (3-sigma: 0.4102)


# ---------------------------------------------------------------------------------------------
# median chart, log scale, physical bounds
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13])
def test_median_limit_quantiles_have_the_3_sigma_tail(n):
    q_lo, q_hi = spc.median_limit_quantiles(n)
    k, j = math.ceil(n / 2), n // 2
    # P(at least ceil(n/2) of n values below the q_lo quantile) = a
    below = 1 - _binom_cdf(k - 1, n, float(q_lo))
    assert below == pytest.approx(A, rel=1e-6)
    # P(at most floor(n/2) values at or below the q_hi quantile) = a
    assert _binom_cdf(j, n, float(q_hi)) == pytest.approx(A, rel=1e-6)
    if n == 1:
        assert (float(q_lo), float(q_hi)) == pytest.approx((A, 1 - A))


def test_median_chart_on_skewed_times():
    rng = np.random.default_rng(4)
    months = pd.period_range("2018-01", periods=36, freq="M")
    n = rng.integers(3, 15, 36)
    t = np.exp(np.log(80) + 0.9 * rng.standard_normal(n.sum()))
    t[rng.random(n.sum()) < 0.03] = -30.0  # given before T0
    df = pd.DataFrame({"month": np.repeat(months, n), "minutes": t})
    r = spc.median_chart(df, "month", "minutes", bounds=(0, None))
    d = r.data
    np.testing.assert_allclose(d["y"], df.groupby("month")["minutes"].median().to_numpy())
    assert d["cl"].iloc[0] == pytest.approx(np.median(t))
    assert (d["lcl"] >= 0).all() and (d["ucl"] > d["cl"]).all()
    # limits are pooled-sample quantiles at the levels for each subgroup's size
    _q_lo, q_hi = spc.median_limit_quantiles(d["n"].to_numpy())
    np.testing.assert_allclose(d["ucl"], np.quantile(np.sort(t), q_hi))
    assert r.chart_name == "Median chart"


def test_log_scale_xbar_is_the_xbar_of_logs_drawn_back():
    rng = np.random.default_rng(1)
    df = pd.DataFrame({"m": np.repeat(range(20), 6),
                       "t": np.exp(4 + 0.9 * rng.standard_normal(120))})
    lg = spc.xbar_chart(df, "m", "t", log=True)
    raw = spc.xbar_chart(df.assign(t=np.log(df["t"])), "m", "t")
    for c in ("y", "cl", "lcl", "ucl"):
        np.testing.assert_allclose(lg.data[c], np.exp(raw.data[c]))
    assert (lg.data["lcl"] > 0).all() and lg.scale == "log"
    assert "geometric means" in lg.caption and lg._ylab().startswith("geometric mean")
    # values at or below the floor are set to it before taking logs
    neg = spc.xbar_chart(df.assign(t=df["t"].where(df.index % 7 > 0, -5.0)), "m", "t", log=True)
    assert np.isfinite(neg.data["y"]).all()
    with pytest.raises(ValueError, match="log scale"):
        spc.p_chart(df.assign(n=10, y=1), "m", "y", "n", log=True)


def test_bounds_truncate_limits_at_physical_values():
    rng = np.random.default_rng(2)
    df = pd.DataFrame({"m": np.repeat(range(24), 3), "t": np.exp(3 + 1.2 * rng.standard_normal(72))})
    free = spc.xbar_chart(df, "m", "t")
    assert (free.data["lcl"] < 0).any()  # 3-sigma limits of skewed minutes go below 0
    bounded = spc.xbar_chart(df, "m", "t", bounds=(0, None))
    assert (bounded.data["lcl"] >= 0).all()
    np.testing.assert_allclose(bounded.data["ucl"], free.data["ucl"])
    with pytest.raises(ValueError, match="bounds"):
        spc.xbar_chart(df, "m", "t", bounds=(5, 1))


# ---------------------------------------------------------------------------------------------
# small subgroups
# ---------------------------------------------------------------------------------------------


def test_small_subgroups_pooled_within_parts():
    df = pd.DataFrame({"x": range(10), "y": [1, 0, 2, 5, 1, 0, 1, 0, 3, 4],
                       "n": [3, 4, 20, 30, 2, 2, 25, 6, 30, 8]})
    r = spc.p_chart(df, "x", "y", "n", part=[6], min_n=10)
    d = r.data
    # part 1 (x 0-5): 3+4+20 -> one point at x 0; 30; then 2+2 short at the end -> joins x 3
    # part 2 (x 6-9): 25; 6+30; 8 short at the end -> joins the point at x 7
    assert d["x"].tolist() == [0, 3, 6, 7]
    assert d["n"].tolist() == [27, 34, 25, 44]
    assert d["pooled"].tolist() == [3, 3, 1, 3]
    assert d["x_end"].tolist() == [2, 5, 6, 9]
    assert d["part"].tolist() == [1, 1, 2, 2]
    assert "pooled with their neighbours" in r.notes[0]
    m = spc.p_chart(df, "x", "y", "n", min_n=10, small_n="mark")
    assert (~m.data["include"]).sum() == 6 and len(m.data) == 10
    with pytest.raises(ValueError, match="min_n needs"):
        spc.i_chart(df, "x", "y", min_n=3)


def test_describe_points_never_prints_small_counts():
    df = pd.DataFrame({"x": range(4), "y": [1, 2, 3, 2], "n": [8, 40, 52, 47]})
    r = spc.p_chart(df, "x", "y", "n", point="one quarter")
    assert r.describe_points() == ("Each point is one quarter; n = fewer than 11 to 52 episodes per "
                                   "point (median 44).")


# ---------------------------------------------------------------------------------------------
# chart choice
# ---------------------------------------------------------------------------------------------


def _site_months(volume, p, seed=0, months=84):
    rng = np.random.default_rng(seed)
    m = pd.date_range("2016-01-01", periods=months, freq="MS")
    n = rng.poisson(volume, months)
    return pd.DataFrame({"month": m, "episodes": n, "events": rng.binomial(n, p),
                         "admissions": rng.poisson(1000, months)})


def test_period_starts_anchor_at_go_live():
    x = pd.Series(pd.date_range("2018-11-01", periods=6, freq="MS"))
    q = spc_choice.period_starts(x, 3, anchor="2019-01")
    assert [t.strftime("%Y-%m") for t in q] == ["2018-10", "2018-10", "2019-01", "2019-01",
                                               "2019-01", "2019-04"]
    h = spc_choice.period_starts(pd.Series(["2019-05", "2019-06", "2019-12"]), 6, anchor="2019-06")
    assert [t.strftime("%Y-%m") for t in h] == ["2018-12", "2019-06", "2019-12"]
    with pytest.raises(ValueError, match="months"):
        spc_choice.period_starts(x, 0)


def test_choose_period_rule():
    assert spc_choice.choose_period(6.0) == (1, True)
    assert spc_choice.choose_period(1.3) == (6, True)   # 1.3 x 3 < 5 <= 1.3 x 6
    assert spc_choice.choose_period(0.45) == (6, False)  # deaths at 14 episodes a month
    assert spc_choice.choose_period(2.0, periods=(1, 3)) == (3, True)


@pytest.mark.parametrize("volume, months, rules", [(37, 6, "anhoej"), (14, 6, "shewhart"),
                                                   (5, 6, "shewhart")])
def test_mortality_chart_aggregates_and_drops_runs_rules_when_sparse(volume, months, rules):
    sm = _site_months(volume, 0.032, seed=volume)
    r = spc_choice.rare_event_chart(sm[sm["episodes"] > 0], "month", "events", "episodes",
                                    go_live="2019-01", multiply=100)
    assert r.choice.months == months and r.rules == rules and r.limits == "exact"
    assert r.chart == "p" and r.point == "one half-year"
    # phases split at go-live: the second part starts in 2019-01
    first = r.data.groupby("part")["x"].first()
    assert first.iloc[1] == pd.Timestamp("2019-01-01")
    assert r.notes[0] == r.choice.reason
    if rules == "shewhart":
        assert "runs rules are off" in r.choice.reason


def test_process_chart_period_follows_volume_and_laney_rule():
    monthly = spc_choice.attribute_chart(_site_months(37, 0.26, 1), "month", "events", "episodes")
    assert monthly.choice.months == 1 and monthly.chart == "p" and monthly.rules == "anhoej"
    quarterly = spc_choice.attribute_chart(_site_months(14, 0.26, 2), "month", "events", "episodes")
    assert quarterly.choice.months == 3 and len(quarterly.data) == 28
    # over-dispersed but small subgroups: still a p chart (Laney needs large subgroups)
    rng = np.random.default_rng(3)
    small = _site_months(14, 0.3, 3)
    small["events"] = rng.binomial(small["episodes"], rng.uniform(0.1, 0.6, 84))
    assert spc_choice.attribute_chart(small, "month", "events", "episodes").chart == "p"
    # large, over-dispersed subgroups: Laney p'
    big = pd.DataFrame({"month": pd.date_range("2016-01-01", periods=48, freq="MS"),
                        "n": 5000})
    big["y"] = rng.binomial(5000, np.clip(0.3 + 0.03 * rng.standard_normal(48), 0.01, 0.99))
    lp = spc_choice.attribute_chart(big, "month", "y", "n")
    assert lp.chart == "pp" and lp.limits == "sigma" and lp.choice.dispersion_p < 0.01
    assert "Laney" in lp.choice.reason
    # large but not over-dispersed: plain p
    big["y"] = rng.binomial(5000, 0.3, 48)
    assert spc_choice.attribute_chart(big, "month", "y", "n").chart == "p"


def test_time_chart_is_a_median_chart_with_limits_above_zero():
    rng = np.random.default_rng(5)
    months = pd.date_range("2016-01-01", periods=84, freq="MS")
    n = rng.poisson(4, 84)
    t = np.exp(np.log(80) + 0.9 * rng.standard_normal(n.sum()))
    t[rng.random(n.sum()) < 0.03] = -20
    ep = pd.DataFrame({"month": np.repeat(months, n), "minutes": t})
    r = spc_choice.time_chart(ep, "month", "minutes", go_live="2019-01")
    assert r.chart == "median" and r.choice.months == 3 and r.point == "one quarter"
    assert (r.data["lcl"] >= 0).all()
    assert r.data["part"].nunique() == 2
    g = spc_choice.time_chart(ep, "month", "minutes", statistic="geomean")
    assert g.scale == "log" and (g.data["lcl"] > 0).all()
    m = spc_choice.time_chart(ep, "month", "minutes", statistic="mean")
    assert (m.data["lcl"] >= 0).all()


# ---------------------------------------------------------------------------------------------
# risk-adjusted Bernoulli CUSUM
# ---------------------------------------------------------------------------------------------


def test_bernoulli_cusum_weights_and_calibrated_threshold():
    y = np.array([0, 1, 0])
    p = np.array([0.02, 0.05, 0.3])
    w = spc_choice.cusum_weights(y, p, 2.0)
    np.testing.assert_allclose(w, [-math.log(1.02), math.log(2) - math.log(1.05), -math.log(1.3)])
    rng = np.random.default_rng(9)
    risk = np.clip(rng.lognormal(np.log(0.03), 0.6, 600), 0.002, 0.5)
    df = pd.DataFrame({"risk": risk, "died": (rng.random(600) < risk).astype(int)})
    res = spc_choice.bernoulli_cusum(df, "died", "risk", odds_ratio=2.0, false_alarm=0.05, seed=1)
    assert res.h > 0 and res.false_alarm == 0.05
    # fresh in-control series signal in about 5% of runs
    sims = (rng.random((1000, 600)) < risk).astype(float)
    mx = spc_choice._cusum_max(spc_choice.cusum_weights(sims, risk, 2.0))
    assert 0.03 <= np.mean(mx >= res.h) <= 0.07
    # doubled odds in the second half are detected in most series
    p2 = np.r_[risk[:300], 2 * risk[300:] / (1 + risk[300:])]
    hits = sum(spc_choice.bernoulli_cusum(
        pd.DataFrame({"risk": risk, "died": (rng.random(600) < p2).astype(int)}), "died", "risk",
        h=res.h).data["signal"].iloc[300:].any() for _ in range(60))
    assert hits / 60 > 0.5
    with pytest.raises(ValueError, match="0/1"):
        spc_choice.bernoulli_cusum(df.assign(died=2), "died", "risk")
    ax = res.plot()
    assert ax.get_ylabel() == "CUSUM"
    plt.close(ax.figure)


# ---------------------------------------------------------------------------------------------
# small multiples on a page
# ---------------------------------------------------------------------------------------------


def test_grid_wraps_to_the_page_width_and_splits_long_grids():
    assert spc.grid_shape(57, max_rows=6) == (3, 6, 4)
    assert spc.grid_shape(57) == (3, 19, 1)
    assert spc.grid_shape(8, max_rows=None) == (3, 3, 1)
    assert spc.grid_shape(2) == (2, 1, 1)
    rng = np.random.default_rng(0)
    frames = []
    for s in range(14):
        n = rng.integers(20, 40, 24)
        frames.append(pd.DataFrame({"site": f"S{s:02d}", "m": range(24), "y": rng.binomial(n, 0.3),
                                    "n": n}))
    fc = spc.facet_charts(pd.concat(frames), "p", "site", x="m", y="y", n="n")
    pages = fc.pages(max_rows=2, title="Bundle compliance")
    assert len(pages) == 3  # 14 panels, 3 per row, 2 rows per page
    for fig in pages:
        assert fig.get_size_inches()[0] <= spc.PAGE_WIDTH + 1e-9
    assert "page 1 of 3" in pages[0]._suptitle.get_text()
    one = fc.plot()
    assert one.get_size_inches()[0] <= spc.PAGE_WIDTH + 1e-9
    plt.close("all")


# ---------------------------------------------------------------------------------------------
# null false alarms (fast version of benchmarks/bench_spc_null.py)
# ---------------------------------------------------------------------------------------------


def _bench():
    spec = importlib.util.spec_from_file_location("bench_spc_null", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
@pytest.mark.parametrize("volume", [5, 14])
def test_null_false_alarms_fast(volume):
    res = _bench().run_volume(volume, runs=40, seed=2000 + volume, which=("new",))
    res = res.set_index("chart")
    # benchmark (1,000 runs): mortality charts <= 1%; target <= 10% (40 runs: SE <= 5 points)
    assert (res.loc[["sam30", "sam3"], "signal_rate"] <= 0.15).all()
    # excess over normal data of the same length: target <= 5 points; 40 runs: SE ~ 9 points
    excess = res["signal_rate"] - res["normal_rate"]
    assert (excess <= 0.20).all(), excess
    assert (res["failed_share"] <= 0.15).all()

"""Signal rules (Anhøj, IHI / Provost-Murray), Laney prime charts, G chart, shift detection."""

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from analysis import spc
from analysis import spc_rules as R

# ------------------------------------------------------------------------------- Anhøj runs


def test_points_on_centre_line_are_not_useful():
    # qicharts2 runs.analysis: sign(y - cl), zeros dropped before rle()
    ra = R.runs_analysis(np.array([1, 2, 0, 3, -1, -2, 0, -3, 4]), np.zeros(9))
    assert (ra.n_obs, ra.n_useful) == (9, 7)
    assert ra.longest_run == 3  # 1, 2, (0 skipped), 3
    assert ra.n_crossings == 2
    assert ra.longest_run_max == round(math.log2(7)) + 3
    assert ra.n_crossings_min == 1  # qbinom(0.05, 6, 0.5) = 1


def test_run_chart_flags_a_sustained_shift_and_not_a_random_series():
    rng = np.random.default_rng(7)
    shifted = np.r_[rng.normal(0, 1, 12), rng.normal(3, 1, 12)]
    df = pd.DataFrame({"t": range(24), "y": shifted})
    r = spc.run_chart(df, "t", "y")
    assert r.data["cl"].iloc[0] == pytest.approx(np.median(shifted))
    assert r.data["lcl"].isna().all()
    row = r.runs.iloc[0]
    # 24 useful points: longest run > 8 or crossings < 8 (qicharts2 vignette table)
    assert row["longest_run_max"] == 8 and row["n_crossings_min"] == 8
    assert row["runs_signal"] and r.signal
    alternating = pd.DataFrame({"t": range(24), "y": np.tile([1.0, -1.0], 12)})
    assert not spc.run_chart(alternating, "t", "y").signal


def test_crossings_rule_alone_can_fire():
    # 20 useful points, long runs of length 7 (= limit, not above) but only 2 crossings (< 6).
    y = np.r_[np.ones(7), -np.ones(6), np.ones(7)] + np.linspace(0, 0.01, 20)
    r = spc.i_chart(pd.DataFrame({"t": range(20), "y": y}), "t", "y")
    row = r.runs.iloc[0]
    assert row["longest_run"] <= row["longest_run_max"]
    assert row["n_crossings"] < row["n_crossings_min"]
    assert row["runs_signal"]


def test_shewhart_rule_set_ignores_runs():
    y = np.r_[np.zeros(12), np.ones(12)] + np.tile([0.0, 0.1], 12)
    df = pd.DataFrame({"t": range(24), "y": y})
    a = spc.i_chart(df, "t", "y")
    s = spc.i_chart(df, "t", "y", rules="shewhart")
    assert a.runs_signal and a.data["signal"].any()
    assert s.runs_signal  # still reported ...
    assert s.data["signal"].equals(s.data["sigma_signal"])  # ... but not a signal
    assert "Shewhart" in s.caption and "Anhøj" not in s.caption


# ------------------------------------------------------------------------------- IHI rules


def test_ihi_shift_needs_eight_points_points_on_centre_line_skipped():
    y = np.array([1, 1, 1, 0, 1, 1, 1, 1, 1, -1], float)
    assert R.shift_points(y, np.zeros(10), 8).tolist() == [True] * 3 + [False] + [True] * 5 + [False]
    assert not R.shift_points(y[:8], np.zeros(8), 8).any()  # only 7 useful points


def test_ihi_trend_skips_repeated_values():
    y = np.array([5, 1, 2, 3, 3, 4, 5, 6, 2], float)
    flags = R.trend_points(y, 6)  # 1,2,3,(3),4,5,6: six distinct increasing points
    assert flags.tolist() == [False, True, True, True, False, True, True, True, False]
    assert not R.trend_points(np.array([1, 2, 3, 4, 5, 4], float), 6).any()


def test_ihi_two_of_three_beyond_two_sigma_same_side():
    y = np.array([0, 2.5, 0, 2.2, 0, 0, -2.1, 1, 2.1], float)
    flags = R.two_of_three_beyond_2sigma(y, np.zeros(9), np.ones(9))
    assert flags.tolist() == [False, True, False, True] + [False] * 5  # opposite sides don't pair


def test_ihi_rules_on_a_control_chart():
    rng = np.random.default_rng(3)
    y = np.r_[rng.normal(0, 1, 20), np.linspace(0.2, 2.7, 6) + 0.0, rng.normal(0, 1, 6)]
    df = pd.DataFrame({"t": range(len(y)), "y": y})
    r = spc.i_chart(df, "t", "y", rules="ihi")
    assert r.rules == "ihi" and "IHI" in r.caption
    assert r.data["trend"].iloc[20:26].all()
    assert r.signal
    for col in ("shift", "trend", "two_of_three", "hugging", "runs_count"):
        assert col in r.data


def test_swed_eisenhart_distribution_matches_enumeration():
    # exact runs distribution vs brute-force enumeration of all arrangements
    for n1, n2 in [(3, 4), (5, 5), (6, 4)]:
        counts = {}
        for pos in itertools.combinations(range(n1 + n2), n1):
            s = np.full(n1 + n2, -1)
            s[list(pos)] = 1
            r = 1 + int((np.diff(s) != 0).sum())
            counts[r] = counts.get(r, 0) + 1
        total = math.comb(n1 + n2, n1)
        rs, ps = R.runs_distribution(n1, n2)
        assert dict(zip(rs, ps)) == pytest.approx({r: c / total for r, c in counts.items()})


def test_runs_limits_two_sided_five_percent():
    # For 10 + 10 points P(R <= 6) = 0.019 and P(R <= 7) = 0.051 (Swed & Eisenhart 1943 table
    # gives 6 as the lower critical value at 2.5%); the rule flags <= 6 and, by symmetry, >= 16.
    rs, ps = R.runs_distribution(10, 10)
    cdf = dict(zip(rs, np.cumsum(ps)))
    assert cdf[6] == pytest.approx(0.0185, abs=5e-4)
    assert cdf[7] == pytest.approx(0.0513, abs=5e-4)
    assert R.runs_limits(10, 10) == (7, 15)


def test_ihi_run_chart_too_few_runs():
    y = np.r_[np.arange(10, 20), np.arange(0, 10)][::-1].astype(float)  # 2 runs around the median
    r = spc.run_chart(pd.DataFrame({"t": range(20), "y": y}), "t", "y", rules="ihi")
    assert r.runs.loc[0, "n_runs"] == 2 and r.runs.loc[0, "runs_count_signal"]
    assert r.data["runs_count"].all() and r.data["shift"].all()


# ------------------------------------------------------------------------------- Laney p', u'


def test_laney_p_prime_equals_individuals_chart_when_n_is_constant():
    # Laney (2002): with equal subgroup sizes the p' chart reduces to the XmR (I) chart of the
    # proportions, because z_i is a linear transform of p_i. I chart numbers are checked against
    # qcc in test_spc_reference.py; here the Laney machinery must reproduce them exactly.
    df = pd.read_csv("tests/data/spc_orangejuice.csv", comment="#").query("trial")
    for screen in (False, True):
        pp = spc.pp_chart(df, "sample", "D", "size", screen_mr=screen).data
        i = spc.i_chart(df.assign(p=df["D"] / df["size"]), "sample", "p", screen_mr=screen).data
        assert np.allclose(pp["cl"], i["cl"])
        assert np.allclose(pp["ucl"], i["ucl"])
        assert np.allclose(pp["lcl"], np.maximum(i["lcl"], 0))


def test_laney_worked_example_by_hand_varying_n():
    # Laney's formula step by step (Minitab "Methods and formulas for Laney P' chart"):
    # z_i = (p_i - pbar)/sigma_pi; sigma_z = mean|z_i - z_(i-1)| / 1.128; limits pbar +- 3 sigma_pi sigma_z
    y = np.array([1510, 1820, 1300, 2260, 1990, 1150, 1720, 2040])
    n = np.array([2000, 2400, 1900, 2700, 2500, 1700, 2300, 2600])
    df = pd.DataFrame({"w": range(8), "y": y, "n": n})
    p = y / n
    pbar = y.sum() / n.sum()
    sp = np.sqrt(pbar * (1 - pbar) / n)
    z = (p - pbar) / sp
    sz = np.abs(np.diff(z)).mean() / 1.128
    r = spc.pp_chart(df, "w", "y", "n", screen_mr=False).data
    assert np.allclose(r["ucl"], pbar + 3 * sp * sz)
    assert np.allclose(r["lcl"], pbar - 3 * sp * sz)
    assert sz > 1  # these proportions are overdispersed relative to the binomial
    u = spc.up_chart(df, "w", "y", "n", screen_mr=False).data
    su = np.sqrt(pbar / n)
    zu = (p - pbar) / su
    assert np.allclose(u["ucl"], pbar + 3 * su * np.abs(np.diff(zu)).mean() / 1.128)


def test_laney_sigma_z_near_one_without_overdispersion_and_large_with_it():
    rng = np.random.default_rng(11)
    n = rng.integers(8000, 12000, 200)
    binom = pd.DataFrame({"w": range(200), "n": n, "y": rng.binomial(n, 0.3)})
    pp = spc.pp_chart(binom, "w", "y", "n").data
    p = spc.p_chart(binom, "w", "y", "n").data
    ratio = ((pp["ucl"] - pp["cl"]) / (p["ucl"] - p["cl"])).iloc[0]
    assert ratio == pytest.approx(1.0, abs=0.12)  # sigma_z ~ 1: p' chart ~ p chart
    over = binom.assign(y=rng.binomial(n, rng.normal(0.3, 0.02, 200).clip(0.01, 0.99)))
    pp2 = spc.pp_chart(over, "w", "y", "n")
    p2 = spc.p_chart(over, "w", "y", "n")
    assert p2.data["sigma_signal"].sum() > 30  # overdispersion: p chart limits far too tight
    assert pp2.data["sigma_signal"].sum() <= 5


# ------------------------------------------------------------------------------- G chart


def test_g_chart_geometric_limits_and_median_centre():
    g = [12, 30, 5, 44, 18, 2, 60, 25, 9, 15, 33, 7]
    df = pd.DataFrame({"death": range(12), "episodes_between": g})
    m = np.mean(g)
    r = spc.g_chart(df, "death", "episodes_between")
    assert r.data["ucl"].iloc[0] == pytest.approx(m + 3 * math.sqrt(m * (m + 1)))
    assert r.data["lcl"].iloc[0] == 0
    assert r.data["cl"].iloc[0] == pytest.approx(np.median(g))  # qicharts2 qic.g
    assert spc.g_chart(df, "death", "episodes_between", centre="mean").data["cl"].iloc[0] == pytest.approx(m)


# ------------------------------------------------------------------------------- shift detection


def _step_series(seed, months=48, change=24, p0=0.40, p1=0.65):
    rng = np.random.default_rng(seed)
    n = rng.integers(25, 60, months)
    p = np.where(np.arange(months) < change, p0, p1)
    return pd.DataFrame({"month": pd.period_range("2016-01", periods=months, freq="M"),
                         "compliant": rng.binomial(n, p), "episodes": n})


@pytest.mark.parametrize("rules", ["anhoej", "ihi"])
def test_shift_detection_finds_a_known_step(rules):
    df = _step_series(5)
    off = spc.p_chart(df, "month", "compliant", "episodes")
    assert off.detected_breaks == [] and off.data["part"].eq(1).all()  # off by default
    r = spc.p_chart(df, "month", "compliant", "episodes", detect_shifts=True, rules=rules,
                    shifts="new_part")
    assert len(r.detected_breaks) == 1
    brk = r.detected_breaks[0]
    assert abs((brk - pd.Period("2018-01", "M")).n) <= 2  # true change at 2018-01
    s = r.summary()
    assert s.loc[0, "cl"] == pytest.approx(0.40, abs=0.05)
    assert s.loc[1, "cl"] == pytest.approx(0.65, abs=0.05)
    assert "automatic shift detection" in r.caption
    # default: the shift is a marked signal, the limits keep one phase
    m = spc.p_chart(df, "month", "compliant", "episodes", detect_shifts=True, rules=rules)
    assert m.detected_breaks == [] and m.data["part"].eq(1).all()
    assert m.detected_shifts == [brk] and m.data["shift_start"].sum() == 1
    assert m.signal and "Sustained shift detected from" in m.caption


def test_shift_marking_keeps_go_live_phases():
    # a step 12 months after go-live: the phases stay at go-live, the shift is marked inside
    rng = np.random.default_rng(8)
    months = pd.period_range("2016-01", periods=72, freq="M")
    n = rng.integers(25, 60, 72)
    p = np.where(np.arange(72) < 48, 0.40, 0.65)
    df = pd.DataFrame({"month": months, "compliant": rng.binomial(n, p), "episodes": n})
    r = spc.p_chart(df, "month", "compliant", "episodes", part=["2019-01"], detect_shifts=True)
    assert r.data.groupby("part")["x"].first().tolist() == [pd.Period("2016-01", "M"),
                                                           pd.Period("2019-01", "M")]
    assert len(r.detected_shifts) == 1
    assert abs((r.detected_shifts[0] - pd.Period("2020-01", "M")).n) <= 2
    with pytest.raises(ValueError, match="shifts='new_part'"):
        spc.p_chart(df, "month", "compliant", "episodes", part=["2019-01"], detect_shifts=True,
                    shifts="new_part")
    with pytest.raises(ValueError, match="shifts must be"):
        spc.p_chart(df, "month", "compliant", "episodes", detect_shifts=True, shifts="rebase")


def test_shift_detection_rarely_rebases_a_stable_process():
    # 40 stable 48-month series: false re-basing should be rare (runs rules are ~5% tests).
    n_false = sum(
        bool(spc.p_chart(_step_series(100 + s, p1=0.40), "month", "compliant", "episodes",
                         detect_shifts=True, shifts="new_part").detected_breaks)
        for s in range(40)
    )
    assert n_false <= 4

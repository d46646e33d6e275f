"""SPC charts against published textbook / reference-software numbers.

References (datasets transcribed into tests/data/spc_*.csv with their citation in the header):
- Montgomery DC, Introduction to Statistical Quality Control (Wiley): orange-juice can p chart,
  circuit-board c chart, personal-computer u chart, piston-ring Xbar/S charts, viscosity I chart.
  The printed limits are reproduced by R's qcc package (Scrucca 2004); the qcc outputs quoted
  below are those recorded in the R-comparison tests of the `mistat` Python package
  (gedeck/mistat, mistat/qcc/tests/test_comparisonWithR.py) and in qcc's own docs.
- qicharts2 (Anhøj): critical values for the runs rules (vignette, Appendix 2).
"""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import spc
from analysis import spc_rules as R

DATA = Path(__file__).parent / "data"


def _read(name):
    return pd.read_csv(DATA / name, comment="#")


@pytest.fixture(scope="module")
def orangejuice():
    return _read("spc_orangejuice.csv")


# ------------------------------------------------------------------------------- p chart


def test_p_chart_orange_juice_trial_limits(orangejuice):
    # Montgomery: CL 0.2313, UCL 0.4102, LCL 0.0524; qcc: 0.2313333, 0.05242755, 0.4102391
    trial = orangejuice[orangejuice["trial"]]
    r = spc.p_chart(trial, "sample", "D", "size")
    s = r.summary().iloc[0]
    assert s["cl"] == pytest.approx(0.2313333, abs=1e-7)
    assert s["lcl_min"] == pytest.approx(0.05242755, abs=1e-8)
    assert s["ucl_max"] == pytest.approx(0.4102391, abs=1e-7)
    # samples 15 and 23 are above the UCL (qcc violations: indices 14 and 22)
    assert r.data.loc[r.data["sigma_signal"], "x"].tolist() == [15, 23]
    assert r.signal
    assert "Anhøj" in r.caption and "Shewhart" in r.caption


def test_p_chart_orange_juice_revised_limits_and_new_phase(orangejuice):
    # Revised limits after removing assignable-cause samples 15 and 23 (Montgomery: CL 0.2150,
    # UCL 0.3893, LCL 0.0407; qcc: 0.215, 0.04070284, 0.3892972). Sample 21 (p = 0.40) stays above.
    trial = orangejuice[orangejuice["trial"]]
    r = spc.p_chart(trial, "sample", "D", "size", exclude=[15, 23])
    s = r.summary().iloc[0]
    assert s["cl"] == pytest.approx(0.215, abs=1e-9)
    assert s["lcl_min"] == pytest.approx(0.04070284, abs=1e-8)
    assert s["ucl_max"] == pytest.approx(0.3892972, abs=1e-7)
    assert r.data.loc[r.data["sigma_signal"], "x"].tolist() == [15, 21, 23]
    assert r.runs.loc[0, "n_obs"] == 28  # excluded points are left out of the runs analysis
    # After the machine adjustment (samples 31-54) Montgomery recomputes the limits from the new
    # samples: qcc on orangejuice2 trial samples gives CL 0.1108333, LCL 0, UCL 0.2440207.
    both = spc.p_chart(orangejuice, "sample", "D", "size", exclude=[15, 23], part=[31])
    summ = both.summary()
    assert summ["part"].tolist() == [1, 2]
    assert summ.loc[0, "cl"] == pytest.approx(0.215, abs=1e-9)
    assert summ.loc[1, "cl"] == pytest.approx(0.1108333, abs=1e-7)
    assert summ.loc[1, "ucl_max"] == pytest.approx(0.2440207, abs=1e-7)
    assert summ.loc[1, "lcl_min"] == 0.0
    assert summ.loc[1, "x_start"] == 31


def test_p_chart_multiply_gives_percent(orangejuice):
    trial = orangejuice[orangejuice["trial"]]
    r = spc.p_chart(trial, "sample", "D", "size", multiply=100)
    assert r.summary().loc[0, "cl"] == pytest.approx(23.13333, abs=1e-5)
    assert r.data["y"].iloc[0] == pytest.approx(24.0)  # 12/50 x 100


# ------------------------------------------------------------------------------- c chart


@pytest.fixture(scope="module")
def circuit():
    return _read("spc_circuit.csv")


def test_c_chart_circuit_boards(circuit):
    # Montgomery (circuit-board nonconformities): c-bar = 516/26 = 19.85, UCL 33.22, LCL 6.48
    # (the book rounds c-bar to 19.85 before adding 3 sqrt(c-bar), hence the 0.01 tolerance);
    # qcc: centre 19.84615, UCL 33.21086.
    r = spc.c_chart(circuit[circuit["trial"]], "sample", "x")
    s = r.summary().iloc[0]
    assert s["cl"] == pytest.approx(516 / 26, abs=1e-9)
    assert s["cl"] == pytest.approx(19.85, abs=0.005)
    assert s["ucl_max"] == pytest.approx(33.21086, abs=1e-5)
    assert s["lcl_min"] == pytest.approx(6.48, abs=0.01)
    assert r.data.loc[r.data["sigma_signal"], "x"].tolist() == [6, 20]


def test_c_chart_revised_limits_frozen_and_extended(circuit):
    # Revised after removing samples 6 and 20: c-bar = 472/24 = 19.67, UCL 32.97, LCL 6.36
    # (Montgomery); qicharts2's own test runs qic(..., chart = 'c', exclude = c(6, 20), freeze = 26).
    r = spc.c_chart(circuit, "sample", "x", exclude=[6, 20], freeze=26)
    d = r.data
    assert d["cl"].nunique() == 1 and d["ucl"].nunique() == 1  # extended forward unchanged
    assert d["cl"].iloc[0] == pytest.approx(19.67, abs=0.005)
    assert d["ucl"].iloc[0] == pytest.approx(32.97, abs=0.005)
    assert d["lcl"].iloc[0] == pytest.approx(6.36, abs=0.005)
    assert d["baseline"].sum() == 26 and not d["baseline"].iloc[26:].any()
    assert r.freeze_x == 26
    # runs analysis uses every included point (44 of 46) against the frozen centre line
    assert r.runs.loc[0, "n_obs"] == 44
    # freeze as a count of baseline points (x labels that are not integers)
    lab = circuit.assign(lab=[f"s{i:02d}" for i in circuit["sample"]])
    r2 = spc.c_chart(lab, "lab", "x", exclude=["s06", "s20"], freeze=26)
    assert np.allclose(r2.data["ucl"], d["ucl"]) and r2.freeze_x == "s26"


# ------------------------------------------------------------------------------- u chart


def test_u_chart_personal_computers():
    # Montgomery (nonconformities in personal computers, 20 samples of n = 5):
    # u-bar = 1.93, UCL = 3.79, LCL = 0.07.
    pc = _read("spc_pcmanufact.csv")
    s = spc.u_chart(pc, "sample", "x", "size").summary().iloc[0]
    assert s["cl"] == pytest.approx(1.93, abs=1e-9)
    assert s["ucl_max"] == pytest.approx(3.79, abs=0.005)
    assert s["lcl_min"] == pytest.approx(0.07, abs=0.005)


def test_u_chart_varying_n_limits_follow_each_subgroup():
    # Limits vary with n: u-bar +- 3 sqrt(u-bar / n_i) (Montgomery eq. 7.19), LCL floored at 0.
    df = pd.DataFrame({"m": range(1, 9), "inf": [3, 7, 2, 5, 9, 4, 1, 6],
                       "days": [820, 1500, 400, 950, 2100, 1200, 300, 1000]})
    r = spc.u_chart(df, "m", "inf", "days", multiply=1000)
    ubar = df["inf"].sum() / df["days"].sum()
    half = 3 * np.sqrt(ubar / df["days"].to_numpy())
    assert np.allclose(r.data["cl"], ubar * 1000)
    assert np.allclose(r.data["ucl"], (ubar + half) * 1000)
    assert np.allclose(r.data["lcl"], np.maximum(ubar - half, 0) * 1000)
    assert r.data["lcl"].min() == 0  # the smallest subgroups hit the floor
    widths = (r.data["ucl"] - r.data["cl"]).to_numpy()
    assert np.all(np.diff(widths[np.argsort(df["days"].to_numpy())]) < 0)  # larger n, tighter


def test_p_chart_varying_n_limits_clip_to_unit_interval():
    df = pd.DataFrame({"m": range(6), "y": [1, 3, 0, 9, 2, 4], "n": [2, 40, 3, 60, 5, 30]})
    r = spc.p_chart(df, "m", "y", "n")
    pbar = df["y"].sum() / df["n"].sum()
    sd = np.sqrt(pbar * (1 - pbar) / df["n"])
    assert np.allclose(r.data["ucl"], np.minimum(pbar + 3 * sd, 1))
    assert np.allclose(r.data["lcl"], np.maximum(pbar - 3 * sd, 0))
    assert np.allclose(r.data["sigma"], sd)  # unclipped sigma kept for the 2-sigma rules


# ------------------------------------------------------------------------------- I / MR charts

VISCOSITY = [33.75, 33.05, 34, 33.81, 33.46, 34.02, 33.68, 33.27, 33.49, 33.20, 33.62, 33.00,
             33.54, 33.12, 33.84]  # Montgomery p. 242 (qcc ?qcc example)
ANTIFREEZE = [2.23, 2.53, 2.62, 2.63, 2.58, 2.44, 2.49, 2.34, 2.95, 2.54, 2.60, 2.45, 2.17, 2.58,
              2.57, 2.44, 2.38, 2.23, 2.23, 2.54, 2.66, 2.84, 2.81, 2.39, 2.56, 2.70, 3.00, 2.81,
              2.77, 2.89, 2.54, 2.98, 2.35, 2.53]  # Wetherill & Brown (1991) p. 120 (qcc example)


@pytest.mark.parametrize(
    "values, centre, sigma, lcl, ucl",
    [
        # qcc(type = "xbar.one"): centre 33.52333, std.dev 0.4261651, limits 32.24484 / 34.80183
        (VISCOSITY, 33.52333, 0.4261651, 32.24484, 34.80183),
        # qcc: centre 2.569706, std.dev 0.1794541, limits 2.031344 / 3.108068
        (ANTIFREEZE, 2.569706, 0.1794541, 2.031344, 3.108068),
    ],
)
def test_i_chart_matches_qcc(values, centre, sigma, lcl, ucl):
    df = pd.DataFrame({"t": range(1, len(values) + 1), "v": values})
    for screen in (True, False):  # no moving range exceeds 3.267 x AMR in these series
        r = spc.i_chart(df, "t", "v", screen_mr=screen)
        d = r.data
        assert d["cl"].iloc[0] == pytest.approx(centre, abs=1e-5)
        assert d["sigma"].iloc[0] == pytest.approx(sigma, rel=1e-6)
        assert d["lcl"].iloc[0] == pytest.approx(lcl, abs=1e-5)
        assert d["ucl"].iloc[0] == pytest.approx(ucl, abs=1e-5)


def test_mr_chart_viscosity():
    # MR-bar = sigma * d2 = 0.4261651 * 1.128; UCL = 3.267 MR-bar, LCL = 0 (qicharts2 qic.mr)
    df = pd.DataFrame({"t": range(1, 16), "v": VISCOSITY})
    r = spc.mr_chart(df, "t", "v")
    assert np.isnan(r.data["y"].iloc[0])
    assert r.data["cl"].iloc[0] == pytest.approx(0.4261651 * 1.128, rel=1e-6)
    assert r.data["ucl"].iloc[0] == pytest.approx(3.267 * 0.4261651 * 1.128, rel=1e-6)
    assert r.data["lcl"].iloc[0] == 0
    assert not r.runs["runs_signal"].any()  # no runs analysis on MR charts


def test_i_chart_screens_large_moving_ranges_like_qicharts2():
    # One outlier creates two moving ranges far above 3.267 x AMR; qicharts2 (qic.screenedmr = TRUE)
    # drops them before estimating sigma (Nelson 1982). Hand computation below.
    y = np.array([10, 11, 10, 12, 11, 10, 11, 40, 11, 10, 12, 11], float)
    df = pd.DataFrame({"t": range(len(y)), "y": y})
    mr = np.abs(np.diff(y))
    kept = mr[mr < 3.267 * mr.mean()]
    assert kept.size == mr.size - 2
    screened = spc.i_chart(df, "t", "y").data["sigma"].iloc[0]
    raw = spc.i_chart(df, "t", "y", screen_mr=False).data["sigma"].iloc[0]
    assert screened == pytest.approx(kept.mean() / 1.128)
    assert raw == pytest.approx(mr.mean() / 1.128)
    assert spc.i_chart(df, "t", "y").data.loc[7, "sigma_signal"]


# ------------------------------------------------------------------------------- Xbar / S


@pytest.fixture(scope="module")
def pistonrings():
    return _read("spc_pistonrings.csv")


def test_s_and_xbar_charts_piston_rings(pistonrings):
    trial = pistonrings[pistonrings["trial"]]  # 25 subgroups of 5 episode-level rows
    s = spc.s_chart(trial, "sample", "diameter").data
    # qcc S chart: centre 0.009240037, limits 0 / 0.019302416 (B3 = 0, B4 = 2.089 for n = 5)
    assert s["cl"].iloc[0] == pytest.approx(0.009240037, rel=1e-6)
    assert s["lcl"].iloc[0] == 0
    assert s["ucl"].iloc[0] == pytest.approx(0.019302416, rel=1e-6)
    x = spc.xbar_chart(trial, "sample", "diameter").data
    # Grand mean 74.00118 (qcc); with s-bar/c4 = 0.009829977 (qcc's S-based sigma),
    # A3 limits are 74.00118 +- 3 * 0.009829977 / sqrt(5).
    half = 3 * 0.009829977 / np.sqrt(5)
    assert x["cl"].iloc[0] == pytest.approx(74.00118, abs=1e-5)
    assert x["ucl"].iloc[0] == pytest.approx(74.001176 + half, abs=1e-6)
    assert x["lcl"].iloc[0] == pytest.approx(74.001176 - half, abs=1e-6)
    assert (x["n"] == 5).all()


def test_bias_constants_against_montgomery_appendix():
    # Montgomery, Appendix VI: c4(5) = 0.9400, A3(5) = 1.427, B3(6) = 0.030, B4(6) = 1.970,
    # A3(10) = 0.975, B4(10) = 1.716.
    assert spc.c4(5)[()] == pytest.approx(0.9400, abs=5e-5)
    assert spc.a3(5)[()] == pytest.approx(1.427, abs=5e-4)
    assert spc.b3(6)[()] == pytest.approx(0.030, abs=5e-4)
    assert spc.b4(6)[()] == pytest.approx(1.970, abs=5e-4)
    assert spc.a3(10)[()] == pytest.approx(0.975, abs=5e-4)
    assert spc.b4(10)[()] == pytest.approx(1.716, abs=5e-4)


def test_xbar_variable_subgroup_sizes_use_pooled_sd(pistonrings):
    # Montgomery eq. 6.31 (qicharts2 qic.xbar): unequal sizes -> pooled SD and A3(n_i) per subgroup.
    trial = pistonrings[pistonrings["trial"]].copy()
    drop = trial.index[[0, 1, 12]]  # subgroup 1 loses two rows, subgroup 3 one
    df = trial.drop(drop)
    g = df.groupby("sample")["diameter"]
    n, sd, mean = g.count(), g.std(), g.mean()
    pooled = np.sqrt(((n - 1) * sd**2).sum() / (n - 1).sum())
    cl = (n * mean).sum() / n.sum()
    r = spc.xbar_chart(df, "sample", "diameter").data
    assert np.allclose(r["cl"], cl)
    assert np.allclose(r["ucl"], cl + spc.a3(n.to_numpy()) * pooled)
    assert r.loc[0, "ucl"] > r.loc[1, "ucl"]  # n = 3 subgroup has wider limits


# ------------------------------------------------------------------------------- runs rules


def test_anhoej_critical_values_n10_to_100():
    # qicharts2 vignette, Appendix 2: round(log2(n) + 3) and qbinom(0.05, n - 1, 0.5)
    tab = _read("spc_anhoej_critical_values.csv")
    assert len(tab) == 91
    for row in tab.itertuples():
        assert R.longest_run_max(row.n_useful) == row.longest_run_max, row.n_useful
        assert R.n_crossings_min(row.n_useful) == row.n_crossings_min, row.n_useful

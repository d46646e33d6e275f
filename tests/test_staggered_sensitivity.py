"""Sensitivity analyses of the staggered imputation estimator (analysis.sensitivity)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import linprog

from analysis.its import fit_its_staggered
from analysis.sensitivity import (
    _rm_identified_set,
    covariance_sensitivity,
    relative_magnitude_bounds,
    rm_bounds,
    run_sensitivity,
)
from analysis.simulate import simulate_panel

FIT = {"site": "site_id", "time": "month", "go_live": "go_live_month", "exposure": "exposure",
       "seasonality": 2}


def _lp_identified_set(b_pre, b_e, e, m_bar):
    """Rambachan-Roth Delta^RM identified set for tau_e by linear programming: unknown bias path
    delta_0..delta_e (delta_pre = b_pre, anchor 0 before it), |delta_t - delta_(t-1)| <= M M_pre."""
    path = np.concatenate([[0.0], b_pre])
    bound = m_bar * np.max(np.abs(np.diff(path)))
    n = e + 1
    A, b = [], []
    prev = None
    for t in range(n):
        row = np.zeros(n)
        row[t] = 1.0
        if prev is not None:
            row[prev] = -1.0
            A += [row, -row]
            b += [bound, bound]
        else:  # delta_0 - delta_-1 (known)
            A += [row, -row]
            b += [bound + b_pre[-1], bound - b_pre[-1]]
        prev = t
    c = np.zeros(n)
    c[-1] = 1.0
    lo = linprog(c, A_ub=np.array(A), b_ub=b, bounds=[(None, None)] * n).fun
    hi = -linprog(-c, A_ub=np.array(A), b_ub=b, bounds=[(None, None)] * n).fun
    return b_e - hi, b_e - lo


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("m_bar", [0.5, 1.0, 2.0])
def test_rm_identified_set_matches_linear_program(seed, m_bar):
    rng = np.random.default_rng(seed)
    b_pre = rng.normal(0, 0.05, 12)
    b_e = -0.2 + rng.normal(0, 0.05)
    for e in (0, 5, 12):
        lo, hi = _rm_identified_set(b_pre, b_e, e, m_bar)
        lo_lp, hi_lp = _lp_identified_set(b_pre, b_e, e, m_bar)
        assert lo == pytest.approx(lo_lp, abs=1e-8)
        assert hi == pytest.approx(hi_lp, abs=1e-8)


@pytest.fixture(scope="module")
def panel():
    return simulate_panel(scenario="constant", sites=30, expected_count=300, noise=True, seed=9)


def test_run_sensitivity_table(panel):
    rep = run_sensitivity(panel.data, "y", **FIT)
    t = rep.table
    assert list(t.columns[:6]) == ["analysis", "estimate", "lower", "upper", "se", "note"]
    names = " | ".join(t["analysis"])
    for key in ("primary", "pre-trend test", "placebo in time", "leave out wave 1",
                "leave out wave 3", "transition 0", "transition 12", "panel HAC",
                "Rambachan-Roth relative magnitudes, M = 0.5", "M = 2"):
        assert key in names, key
    truth = panel.truth_at(12)
    prim = t.iloc[0]
    assert prim["lower"] <= truth <= prim["upper"]
    plac = t[t["analysis"].str.startswith("placebo")].iloc[0]
    assert plac["lower"] <= 1.0 <= plac["upper"]
    assert abs(plac["estimate"] - 1) < 0.05
    # the other specifications estimate the same effect (no anticipation, no pre-trend)
    est = t[t["analysis"].str.contains("leave out|transition|covariance")]
    ok = est["estimate"].notna()
    assert ok.sum() >= 6
    assert np.all(np.abs(np.log(est.loc[ok, "estimate"] / truth)) < 0.1)
    # relative-magnitude intervals widen with M and contain the identified set
    rm = rep.bounds.table
    assert np.all(np.diff(rm["ci_upper"] - rm["ci_lower"]) > 0)
    assert np.all(rm["ci_lower"] <= rm["id_lower"]) and np.all(rm["ci_upper"] >= rm["id_upper"])


def test_covariance_sensitivity_rows(panel):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = fit_its_staggered(panel.data, "y", **FIT)
    cs = covariance_sensitivity(r)
    assert len(cs) == 3
    assert cs["estimate"].nunique() == 1  # same fit, different covariance
    assert cs["se"].gt(0).all()


def test_rm_bounds_at_m0_is_a_point_and_needs_leads(panel):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = fit_its_staggered(panel.data, "y", **FIT)
        r0 = fit_its_staggered(panel.data, "y", **FIT, leads=0)
    b = relative_magnitude_bounds(r, 12, (0.0, 1.0))
    row0 = b.table.iloc[0]
    assert row0["id_lower"] == pytest.approx(row0["id_upper"])
    assert row0["id_lower"] == pytest.approx(b.estimate)
    with pytest.raises(ValueError, match="leads"):
        relative_magnitude_bounds(r0, 12)
    assert isinstance(b.to_frame(), pd.DataFrame)


@pytest.mark.parametrize("m_bar", [0.5, 2.0])
def test_rm_conservative_ci_covers_under_worst_case_violation(m_bar):
    """Monte Carlo: a linear pre-trend (0.01 per month) continued after go-live by the largest
    steps Delta^RM(M) allows; correlated leads. The conservative CI covers theta >= 95%."""
    rng = np.random.default_rng(7)
    q, e, theta = 12, 12, -0.2
    ar = 0.6 ** np.abs(np.subtract.outer(np.arange(q), np.arange(q)))
    v_pre = 0.03**2 * ar
    se_e = 0.05
    delta_pre = 0.01 * np.arange(1, q + 1)
    m_true = 0.01
    delta_e = delta_pre[-1] + (e + 1) * m_bar * m_true  # worst case
    L = np.linalg.cholesky(v_pre)
    cover = 0
    n = 300
    for _ in range(n):
        b_pre = delta_pre + L @ rng.standard_normal(q)
        b_e = theta + delta_e + se_e * rng.standard_normal()
        _, _, _, tab = rm_bounds(b_pre, v_pre, b_e, se_e, e, (m_bar,))
        cover += tab["ci_lower"][0] <= theta <= tab["ci_upper"][0]
    assert cover / n >= 0.95

"""Tests for analysis.competing: Aalen-Johansen CIF, Gray's test, Fine-Gray, cause-specific Cox, LOS.

Published reference: MASS::Melanoma (tests/data/melanoma.csv, copied from the Rdatasets repository
vincentarelbundock/Rdatasets csv/MASS/Melanoma.csv), analysed with tidycmprsk/cmprsk in
E. Zabor, "Survival Analysis in R" tutorial, Part 3 Competing Risks (emilyzabor.com; rendered
output in repository zabore/zabore.github.io, docs/survival-analysis-in-r.html). Status recoded
as there: 0 = alive (censored), 1 = died from melanoma, 2 = died from other causes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from lifelines import AalenJohansenFitter

from analysis.competing import (
    censoring_km,
    cif_at,
    cumulative_incidence,
    finegray_expand,
    fit_cause_specific_cox,
    fit_fine_gray,
    gray_test,
    los_events,
    los_summary,
)

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def melanoma() -> pd.DataFrame:
    m = pd.read_csv(DATA / "melanoma.csv")
    m["event"] = m["status"].map({2: 0, 1: 1, 3: 2})
    return m


# cuminc(Surv(time, status) ~ 1, data = Melanoma): time, estimate, std.error, 95% CI
ZABOR_CIF = {
    1: [(1000, 0.127, 0.023, 0.086, 0.177), (2000, 0.230, 0.030, 0.174, 0.291),
        (3000, 0.310, 0.037, 0.239, 0.383), (4000, 0.339, 0.041, 0.260, 0.419)],
    2: [(1000, 0.034, 0.013, 0.015, 0.066), (2000, 0.050, 0.016, 0.026, 0.087),
        (3000, 0.058, 0.017, 0.030, 0.099), (4000, 0.106, 0.032, 0.053, 0.179)],
}


@pytest.mark.parametrize("cause", [1, 2])
def test_cif_reproduces_cmprsk_on_melanoma(melanoma, cause):
    cif = cumulative_incidence(melanoma, "time", "event", event_of_interest=cause)
    got = cif_at(cif, [r[0] for r in ZABOR_CIF[cause]])
    exp = np.array([r[1:] for r in ZABOR_CIF[cause]])
    # printed to 3 decimals -> agreement within half a unit in the last place
    np.testing.assert_allclose(got[["estimate", "se", "ci_lower", "ci_upper"]].to_numpy(), exp, atol=5.01e-4)


def test_cif_by_group_and_gray_test_on_melanoma(melanoma):
    # tbl_cuminc(times = 1826.25) by ulcer: 0: 9.1% (4.6%, 15%); 1: 39% (29%, 49%); Gray p < 0.001
    cif = cumulative_incidence(melanoma, "time", "event", group="ulcer")
    at5 = cif_at(cif, [1826.25]).set_index("group")
    assert at5.loc[0, "estimate"] == pytest.approx(0.091, abs=5.01e-4)
    assert at5.loc[0, "ci_lower"] == pytest.approx(0.046, abs=5.01e-4)
    assert at5.loc[0, "ci_upper"] == pytest.approx(0.15, abs=5.01e-3)
    assert at5.loc[1, "estimate"] == pytest.approx(0.39, abs=5.01e-3)
    assert at5.loc[1, "ci_lower"] == pytest.approx(0.29, abs=5.01e-3)
    assert at5.loc[1, "ci_upper"] == pytest.approx(0.49, abs=5.01e-3)
    g = gray_test(melanoma, "time", "event", "ulcer")
    assert g.df == 1 and g.p < 0.001
    assert g.summary().shape == (1, 3)


def test_fine_gray_reproduces_crr_coefficients_on_melanoma(melanoma):
    # crr(Surv(time, status) ~ sex + age, data = Melanoma):
    #   sex 0.588 (SE 0.272) HR 1.80 (1.06, 3.07) p 0.030; age 0.013 (SE 0.009) HR 1.01 p 0.18.
    # Coefficients must agree; crr's SEs are Fine & Gray's sandwich, ours are the model-based SEs
    # of the weighted Cox fit (R coxph on finegray data), so they are only required to be close.
    fg = fit_fine_gray(melanoma, "time", "event", ["sex", "age"])
    assert fg.table.loc["sex", "coef"] == pytest.approx(0.588, abs=5.01e-4)
    assert fg.table.loc["age", "coef"] == pytest.approx(0.013, abs=5.01e-4)
    assert fg.table.loc["sex", "exp_coef"] == pytest.approx(1.80, abs=5.01e-3)
    assert fg.table.loc["sex", "se"] == pytest.approx(0.272, rel=0.05)
    assert fg.table.loc["age", "se"] == pytest.approx(0.009, rel=0.1)
    # weighted partial likelihood with Breslow ties gives the same here (few tied times)
    fgb = fit_fine_gray(melanoma, "time", "event", ["sex", "age"], ties="breslow")
    assert fgb.table.loc["sex", "coef"] == pytest.approx(0.588, abs=5.01e-4)


def test_cause_specific_cox_reproduces_r_on_melanoma(melanoma):
    # coxph(Surv(time, ifelse(status == 1, 1, 0)) ~ sex + age, data = Melanoma) |> tbl_regression:
    #   sex HR 1.82 (1.08, 3.07) p 0.025; age HR 1.02 (1.00, 1.03) p 0.056
    cs = fit_cause_specific_cox(melanoma, "time", "event", ["sex", "age"], event_of_interest=1)
    t = cs.table
    assert t.loc["sex", "exp_coef"] == pytest.approx(1.82, abs=5.01e-3)
    assert t.loc["sex", "hr_lower"] == pytest.approx(1.08, abs=5.01e-3)
    assert t.loc["sex", "hr_upper"] == pytest.approx(3.07, abs=5.01e-3)
    assert t.loc["sex", "p"] == pytest.approx(0.025, abs=5.01e-4)
    assert t.loc["age", "exp_coef"] == pytest.approx(1.02, abs=5.01e-3)
    assert t.loc["age", "hr_lower"] == pytest.approx(1.00, abs=5.01e-3)
    assert t.loc["age", "hr_upper"] == pytest.approx(1.03, abs=5.01e-3)
    assert t.loc["age", "p"] == pytest.approx(0.056, abs=5.01e-4)


# R survival package, tests/finegray.R ("Test data set 1 for Fine-Gray regression"),
# expected weights twt and censoring curve from tests/finegray.Rout.save (therneau/survival).
FDATA = pd.DataFrame({
    "time": [1, 2, 3, 4, 4, 4, 5, 5, 6, 8, 8, 9, 10, 12],
    "status": [1, 2, 0, 1, 0, 0, 2, 1, 0, 0, 2, 0, 1, 0],
    "x": [5, 4, 3, 1, 2, 1, 1, 2, 2, 4, 6, 1, 2, 0],
})


def test_finegray_weights_match_survival_package_test():
    ct, G = censoring_km(FDATA["time"].to_numpy(float), FDATA["status"].to_numpy())
    # csurv: time c(0,3,4,6,8,9), p = cumprod(c(1, 11/12, 8/10, 5/6, 3/4, 2/3))
    np.testing.assert_allclose(ct[:5], [3, 4, 6, 8, 9])
    np.testing.assert_allclose(G[:5], np.cumprod([11 / 12, 8 / 10, 5 / 6, 3 / 4, 2 / 3]))
    ex = finegray_expand(FDATA, "time", "status", 1)
    p = np.cumprod([1, 11 / 12, 8 / 10, 5 / 6, 3 / 4, 2 / 3])
    # subject 2 (type 2 at t=2): weights 1, p[1], p[2], p[5] (R: csurv$p[c(1,2,3,6)] after the first 1)
    np.testing.assert_allclose(ex.loc[ex["fg_row"] == 1, "fg_weight"], [1, p[1], p[2], p[5]])
    # subject 7 (type 2 at t=5): 1 then 5/12; subject 11 (type 2 at t=8): 1 then 1/2
    np.testing.assert_allclose(ex.loc[ex["fg_row"] == 6, "fg_weight"], [1, 5 / 12])
    np.testing.assert_allclose(ex.loc[ex["fg_row"] == 10, "fg_weight"], [1, 1 / 2])
    assert (ex.loc[FDATA["status"].to_numpy()[ex["fg_row"]] != 2, "fg_weight"] == 1).all()


def _weighted_km_event(ex: pd.DataFrame) -> pd.Series:
    """1 - weighted product-limit estimate on (start, stop] data at its event times."""
    out, s = {}, 1.0
    for t in np.unique(ex.loc[ex["fg_status"] == 1, "fg_stop"]):
        at = (ex["fg_start"] < t) & (ex["fg_stop"] >= t)
        d = ex.loc[at & (ex["fg_stop"] == t) & (ex["fg_status"] == 1), "fg_weight"].sum()
        s *= 1 - d / ex.loc[at, "fg_weight"].sum()
        out[t] = 1 - s
    return pd.Series(out)


@pytest.mark.parametrize("cause", [1, 2])
def test_finegray_data_reproduce_cif(melanoma, cause):
    """survival tests/finegray.R: the weighted KM on the expanded data equals the multi-state
    (Aalen-Johansen) CIF at the event times - checked on the R test data and on Melanoma."""
    for df, dur, ev in ((FDATA, "time", "status"), (melanoma, "time", "event")):
        wkm = _weighted_km_event(finegray_expand(df, dur, ev, cause))
        cif = cif_at(cumulative_incidence(df, dur, ev, event_of_interest=cause), wkm.index)
        np.testing.assert_allclose(cif["estimate"], wkm.to_numpy(), atol=1e-12)


def test_cif_hand_example_with_ties():
    # times 1,1,1,2,2,3 ; events 1,2,0,1,0,2 (censoring tied with events is at risk at t=1)
    # t=1: n=6, F1 = 1/6, S = 4/6 ; t=2: n=3, F1 += (4/6)(1/3) -> 7/18 ; t=3: competing only.
    df = pd.DataFrame({"t": [1, 1, 1, 2, 2, 3], "e": [1, 2, 0, 1, 0, 2]})
    cif = cumulative_incidence(df, "t", "e")
    assert cif["time"].tolist() == [1, 2, 3]
    np.testing.assert_allclose(cif["estimate"], [1 / 6, 7 / 18, 7 / 18])
    assert cif["at_risk"].tolist() == [6, 3, 1]
    assert cif["n_event"].tolist() == [1, 1, 0] and cif["n_competing"].tolist() == [1, 0, 1]
    death = cumulative_incidence(df, "t", "e", event_of_interest=2)
    # F2: 1/6 at 1; at 3: S(3-) = 4/9, n=1, d2=1 -> + 4/9
    np.testing.assert_allclose(death["estimate"], [1 / 6, 1 / 6, 1 / 6 + 4 / 9])
    # CIF(1) + CIF(2) = 1 - KM(all causes) = 1 at t=3
    assert cif["estimate"].iloc[-1] + death["estimate"].iloc[-1] == pytest.approx(1.0)


def test_cif_agrees_with_lifelines_on_untied_data():
    rng = np.random.default_rng(5)
    n = 250
    df = pd.DataFrame({"t": rng.exponential(5, n), "e": rng.choice([0, 1, 2], n, p=[0.2, 0.5, 0.3])})
    ours = cumulative_incidence(df, "t", "e")
    aj = AalenJohansenFitter().fit(df["t"], df["e"], event_of_interest=1)
    ref = aj.cumulative_density_.iloc[:, 0]
    np.testing.assert_allclose(cif_at(ours, ref.index.to_numpy())["estimate"], ref.to_numpy(), atol=1e-12)


def test_gray_score_reduces_to_logrank_without_competing_events():
    """Gray (1988): with no competing events the score is the log-rank O - E (hand computed)."""
    rng = np.random.default_rng(2)
    n = 120
    df = pd.DataFrame({"t": rng.integers(1, 15, n), "e": (rng.random(n) < 0.7).astype(int),
                       "g": rng.integers(0, 2, n)})
    o_minus_e = 0.0
    for t in np.unique(df.loc[df["e"] == 1, "t"]):
        at = df["t"] >= t
        d = ((df["t"] == t) & (df["e"] == 1))
        o_minus_e += (d & (df["g"] == 0)).sum() - d.sum() * (at & (df["g"] == 0)).sum() / at.sum()
    g = gray_test(df, "t", "e", "g")
    assert g.scores[0] == pytest.approx(o_minus_e, rel=1e-10)


def test_estimators_are_deterministic_under_ties_and_permutation(melanoma):
    rng = np.random.default_rng(0)
    n = 600
    df = pd.DataFrame({"days": rng.integers(0, 12, n), "ev": rng.choice([0, 1, 2], n, p=[0.05, 0.85, 0.10]),
                       "period": rng.choice(["pre", "post"], n), "x": rng.normal(size=n)})
    shuffled = df.sample(frac=1, random_state=1).reset_index(drop=True)
    a = cumulative_incidence(df, "days", "ev", group="period")
    pd.testing.assert_frame_equal(a, cumulative_incidence(df, "days", "ev", group="period"))
    pd.testing.assert_frame_equal(a, cumulative_incidence(shuffled, "days", "ev", group="period"))
    # events at t = 0 are kept (lifelines' jittering can drop them)
    assert a.loc[a["time"] == 0, "n_event"].sum() == ((df["days"] == 0) & (df["ev"] == 1)).sum()
    g1, g2 = gray_test(df, "days", "ev", "period"), gray_test(shuffled, "days", "ev", "period")
    assert g1.statistic == pytest.approx(g2.statistic, rel=1e-12)
    f1 = fit_fine_gray(df, "days", "ev", ["x"])
    f2 = fit_fine_gray(shuffled, "days", "ev", ["x"])
    np.testing.assert_allclose(f1.table["coef"], f2.table["coef"], rtol=1e-9)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda d: cumulative_incidence(d.assign(event=0), "time", "event"), "no events of interest"),
        (lambda d: cumulative_incidence(d.assign(time=d["time"] - 100), "time", "event"), "negative"),
        (lambda d: cumulative_incidence(d.assign(event=-1), "time", "event"), "integer codes"),
        (lambda d: gray_test(d.assign(ulcer=1), "time", "event", "ulcer"), "single level"),
        (lambda d: fit_fine_gray(d.assign(sex=1), "time", "event", ["sex", "age"]), "single level"),
        (lambda d: cumulative_incidence(d, "time", "event", conf_type="arcsine"), "conf_type"),
    ],
)
def test_bad_input_raises(melanoma, call, match):
    with pytest.raises(ValueError, match=match):
        call(melanoma)


def test_los_summary_small_frame():
    ep = pd.DataFrame({
        "site_id": ["A"] * 6 + ["B"] * 6,
        "post": [False, False, False, True, True, True] * 2,
        "days_t0_to_discharge": [1.0, 2.0, 40.0, 1.0, 3.0, 5.0, 2.0, 2.0, 4.0, 1.0, 1.0, 6.0],
        "died_in_hospital": [False, True, False, False, False, False] * 2,
    })
    s = los_summary(ep).set_index(["unit", "period"])
    coll_pre = s.loc[("collaborative", "pre")]
    assert coll_pre["n"] == 6 and coll_pre["deaths"] == 2
    # restricted mean of min(T, 30): (1+2+30+2+2+4)/6
    assert coll_pre["rmean_los"] == pytest.approx((1 + 2 + 30 + 2 + 2 + 4) / 6)
    # one of six stays (40 days) is still in hospital at day 30
    assert coll_pre["cif_death_h"] + coll_pre["cif_discharge_h"] == pytest.approx(5 / 6)
    # site A pre: alive at 1 (CIF 1/3), death at 2, alive at 40 (CIF 1/3 + 1/3) -> median 40 days
    assert s.loc[("A", "pre"), "median_discharge_alive"] == 40.0
    # two of three die: the live-discharge CIF stops at 1/3 and the median is undefined
    grim = pd.DataFrame({"post": [True, True, True, False], "days_t0_to_discharge": [1.0, 2.0, 3.0, 1.0],
                         "died_in_hospital": [False, True, True, False]})
    g = los_summary(grim, by=None).set_index("period").loc["post"]
    assert np.isnan(g["median_discharge_alive"]) and "never reaches" in g["status"]
    ev = los_events(ep)
    assert set(ev["los_event"]) == {1, 2}
    with pytest.raises(ValueError, match="negative"):
        los_events(ep.assign(days_t0_to_discharge=-1.0))


def test_los_competing_risks_by_period():
    from analysis.competing import los_competing_risks

    rng = np.random.default_rng(3)
    n = 300
    post = rng.random(n) < 0.5
    ep = pd.DataFrame({"post": post, "days_t0_to_discharge": rng.integers(0, 20, n).astype(float),
                       "died_in_hospital": rng.random(n) < 0.08})
    res = los_competing_risks(ep)
    assert set(res.cif["outcome"]) == {"discharge", "death"}
    assert res.tests["outcome"].tolist() == ["discharge", "death"] and (res.tests["status"] == "ok").all()
    # at the last time, per period, CIF(discharge) + CIF(death) = 1 (nobody censored)
    last = res.cif.sort_values("time").groupby(["group", "outcome"])["estimate"].last().groupby("group").sum()
    np.testing.assert_allclose(last.to_numpy(), 1.0)
    assert res.plot() is not None
    with pytest.raises(ValueError, match="both pre and post"):
        los_competing_risks(ep.assign(post=False))


def test_fine_gray_without_censoring_equals_weights_of_one_for_survivors():
    """With no censoring G(t) = 1, so competing-event subjects keep weight 1 after their event
    (Fine & Gray 1999); the fit must not crash (regression: empty censoring KM)."""
    import numpy as np
    import pandas as pd

    from analysis.competing import finegray_expand, fit_fine_gray

    rng = np.random.default_rng(3)
    n = 200
    x = rng.integers(0, 2, n)
    t = np.ceil(rng.exponential(5 / (1 + x), n))
    e = np.where(rng.random(n) < 0.7, 1, 2)
    df = pd.DataFrame({"t": t, "e": e, "x": x})
    ex = finegray_expand(df, "t", "e")
    assert np.allclose(ex["fg_weight"], 1.0)
    res = fit_fine_gray(df, "t", "e", ["x"])
    # Without censoring, Fine-Gray is an ordinary Cox model in which subjects with a competing event
    # stay in the risk set for ever (Fine & Gray 1999, section 2): compare with that Cox fit.
    from analysis.survival import fit_cox

    alt = df.assign(t=np.where(df.e == 2, df.t.max() + 1, df.t), d=(df.e == 1).astype(int))
    ref = fit_cox(alt, "t", "d", ["x"], ph_test=False)
    assert res.summary()["coef"].iloc[0] == pytest.approx(ref.summary()["coef"].iloc[0], abs=1e-6)


def test_fine_gray_keeps_events_at_time_zero(melanoma):
    """An event or competing event at t = 0 is at risk at 0 (as cmprsk::crr); shifting every time
    by a constant keeps the order and the censoring curve, so the fit must not change."""
    d = melanoma.assign(time=melanoma["time"] - melanoma["time"].min())
    assert (d["time"] == 0).any()
    d.loc[d["time"].idxmin(), "event"] = 1
    a = fit_fine_gray(d, "time", "event", ["sex", "age"]).table
    b = fit_fine_gray(d.assign(time=d["time"] + 7.0), "time", "event", ["sex", "age"]).table
    assert np.isfinite(a["coef"]).all()
    pd.testing.assert_frame_equal(a, b, rtol=1e-8)


# ---------------------------------------------------------------------------------------------
# input checks: inputs that silently gave wrong answers are now clear errors (issue 14)
@pytest.fixture(scope="module")
def stays() -> pd.DataFrame:
    """Simulated sepsis stays: days from T0 to leaving hospital and whether the child died."""
    from analysis.simulate import simulate_collaborative
    from analysis.store import collaborative_from_frames

    sim = simulate_collaborative(sites=6, months=24, episodes_per_site_month=15, seed=11)
    ep = collaborative_from_frames(sim.episodes, sim.sites, sim.site_months).episodes
    return los_events(ep)[["los_time", "los_event", "died_in_hospital", "post"]]


def test_coded_causes_give_the_empirical_incidence(stays):
    """Every stay ends (no censoring), so the Aalen-Johansen CIF of death at 30 days must equal the
    share of children who died in hospital within 30 days. Coded causes (1 = discharged alive,
    2 = died) give exactly that; the flag `died_in_hospital` read as 1 = death, 0 = censored turns
    every discharge into censoring (a 1 - Kaplan-Meier of death), which overstates it."""
    truth = float(((stays["los_event"] == 2) & (stays["los_time"] <= 30)).mean())
    coded = cif_at(cumulative_incidence(stays, "los_time", "los_event", event_of_interest=2), [30.0])
    assert coded["estimate"].iloc[0] == pytest.approx(truth, abs=1e-12)
    as_flag = stays.assign(flag=stays["died_in_hospital"].astype(int))
    naive = cif_at(cumulative_incidence(as_flag, "los_time", "flag"), [30.0])["estimate"].iloc[0]
    assert naive > 1.5 * truth  # the trap: discharges counted as censoring


@pytest.mark.parametrize("call", [
    lambda d: cumulative_incidence(d, "los_time", "died_in_hospital"),
    lambda d: cumulative_incidence(d.assign(died_in_hospital=d["died_in_hospital"].astype(object)),
                                   "los_time", "died_in_hospital"),
    lambda d: gray_test(d, "los_time", "died_in_hospital", "post"),
    lambda d: fit_cause_specific_cox(d.assign(x=d["post"].astype(float)), "los_time", "died_in_hospital", ["x"]),
    lambda d: fit_fine_gray(d.assign(x=d["post"].astype(float)), "los_time", "died_in_hospital", ["x"]),
    lambda d: finegray_expand(d, "los_time", "died_in_hospital"),
])
def test_a_yes_no_event_column_is_refused_with_how_to_code_causes(stays, call):
    with pytest.raises(ValueError) as err:
        call(stays)
    msg = str(err.value)
    assert "'died_in_hospital' is a yes/no flag" in msg and "coded causes" in msg
    assert "0 = censored" in msg and "1 = the cause of interest" in msg and "competing causes" in msg
    assert "1 = discharged alive, 2 = died in hospital" in msg


@pytest.mark.parametrize("code", [0, -1, True, 1.5, "1", None])
def test_event_of_interest_must_be_a_positive_cause_code(stays, code):
    with pytest.raises(ValueError, match="event_of_interest must be a positive integer cause code"):
        cumulative_incidence(stays, "los_time", "los_event", event_of_interest=code)


@pytest.mark.parametrize("column", ["post", "stratum"])
def test_gray_test_refuses_missing_groups_and_strata(stays, column):
    d = stays.assign(post=stays["post"].astype(object), stratum=np.arange(len(stays)) % 3)
    d.loc[d.index[:5], column] = None
    kw = {"strata": "stratum"} if column == "stratum" else {}
    with pytest.raises(ValueError, match=f"column '{column}' has 5 missing value"):
        gray_test(d, "los_time", "los_event", "post", **kw)


def test_survival_functions_refuse_inputs_they_would_misread(stays):
    """survival.py: the same trap elsewhere. Each of these used to run and give a wrong answer."""
    from analysis.survival import (
        cox_zph,
        fit_cox,
        kaplan_meier,
        km_by_period,
        mortality_times,
        rmst,
    )

    t, e = stays["los_time"].to_numpy(), stays["los_event"].to_numpy()
    with pytest.raises(ValueError, match="1 \\(event\\) or 0 \\(censored\\)"):
        kaplan_meier(t, e)  # codes 1/2: every death counted twice
    with pytest.raises(ValueError, match="finite and >= 0"):
        kaplan_meier(np.r_[t[:-1], np.nan], (e == 2).astype(int))
    d = stays.assign(x=stays["post"].astype(float))
    with pytest.raises(ValueError, match="must be 0/1"):
        cox_zph(d, "los_time", "los_event", ["x"])  # code 2 silently taken as censored
    with pytest.raises(ValueError, match="infinite duration"):
        fit_cox(d.assign(los_time=np.r_[d["los_time"].to_numpy()[:-1], np.inf]),
                "los_time", "died_in_hospital", ["x"])
    with pytest.raises(ValueError, match="weights column 'w' must be finite and >= 0"):
        fit_cox(d.assign(w=-1.0), "los_time", "died_in_hospital", ["x"], weights="w")
    with pytest.raises(ValueError, match="tau must be a positive"):
        rmst(kaplan_meier(t, (e == 2).astype(int)), 0.0)
    ep = pd.DataFrame({"days_t0_to_death": [1.0, np.nan, np.nan, 2.0],
                       "days_t0_to_discharge": [1.0, 5.0, 6.0, 2.0],
                       "sam30": [True, None, False, True], "post": [False, True, np.nan, True]})
    with pytest.raises(ValueError, match="'sam30' must be True/False"):
        mortality_times(ep)  # a missing flag became a death
    with pytest.raises(ValueError, match="'post' must be True/False"):
        km_by_period(ep.assign(sam30=[True, False, False, True]), by=None)  # missing period -> 'post'
    with pytest.raises(ValueError, match="'died_in_hospital' must be True/False"):
        los_events(stays.assign(died_in_hospital=stays["died_in_hospital"].astype(object).where(
            stays.index != stays.index[0], None)), time_col="los_time")  # a missing flag became a death

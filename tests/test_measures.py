"""Monthly measures: numerators, denominators and rates on a hand-checkable collaborative."""

import numpy as np
import pandas as pd
import pytest

from analysis.derive import derive_episodes
from analysis.measures import MEASURES, monthly_measures, period_summary, to_long

T = pd.Timestamp


def _episode(i, site, t0, *, arrival_h=1.0, los_d=5.0, died_day=None, bolus=30, abx=90, screen=True,
             huddle=False, order_set=False, icu=0.0):
    t0 = T(t0)
    arrival = t0 - pd.Timedelta(hours=arrival_h)
    death = t0 + pd.Timedelta(days=died_day) if died_day is not None else pd.NaT
    discharge = death if died_day is not None else arrival + pd.Timedelta(days=los_d)
    return {
        "episode_id": f"E{i}", "patient_id": f"P{i}", "site_id": site,
        "arrival_time": arrival, "time_zero": t0, "discharge_time": discharge, "death_time": death,
        "onset_setting": "ED", "age_years": 5.0, "sex": "F", "ccc_count": 1,
        "immunocompromised": False, "critical_sepsis": False,
        "screen_positive": screen, "huddle": huddle, "order_set": order_set,
        "first_bolus_time": t0 + pd.Timedelta(minutes=bolus) if bolus is not None else pd.NaT,
        "first_antibiotic_time": t0 + pd.Timedelta(minutes=abx) if abx is not None else pd.NaT,
        "icu_days": icu,
    }


@pytest.fixture()
def small():
    rows = [
        _episode(1, "A", "2020-01-05 10:00", died_day=2, bolus=45, abx=50),          # sam3, sam30
        _episode(2, "A", "2020-01-20 10:00", los_d=4, bolus=None, abx=200, screen=False),
        _episode(3, "A", "2020-01-25 10:00", arrival_h=72, died_day=10, bolus=70, abx=170, huddle=True),
        _episode(4, "A", "2020-03-01 10:00", los_d=8, bolus=20, abx=None, order_set=True, icu=2.0),
        _episode(5, "B", "2020-01-02 10:00", los_d=2, bolus=10, abx=30),
    ]
    ep = derive_episodes(pd.DataFrame(rows))
    sm = pd.DataFrame({
        "site_id": ["A", "A", "A", "B", "B", "B"],
        "month": ["2020-01", "2020-02", "2020-03"] * 2,
        "admissions": [1000, 900, 800, 500, 0, 400],
    })
    return ep, sm


def test_site_month_counts_and_rates(small):
    ep, sm = small
    m = monthly_measures(ep, sm).set_index(["site_id", "month"])
    a1 = m.loc[("A", T("2020-01-01"))]
    assert a1["episodes"] == 3 and a1["admissions"] == 1000
    assert a1["recognition_per_1000"] == pytest.approx(3.0)
    assert a1["sam3"] == 1 and a1["sam30"] == 2
    assert a1["sam30_pct"] == pytest.approx(200 / 3)
    assert a1["hospital_onset"] == 1
    assert a1["hospital_onset_per_1000"] == pytest.approx(1.0)
    # bundle: ep1 screen+bolus45+abx50 -> yes; ep2 not recognised; ep3 huddle, bolus 70 > 60 -> no
    assert a1["bundle_compliant"] == 1
    assert a1["fluid_60"] == 1 and a1["abx_180"] == 2 and a1["abx_60"] == 1
    assert a1["bolus_minutes_n"] == 2 and a1["bolus_minutes_median"] == pytest.approx(57.5)
    assert a1["antibiotic_minutes_mean"] == pytest.approx((50 + 200 + 170) / 3)
    # a month with no episodes is present with zero counts, rates defined from denominators
    a2 = m.loc[("A", T("2020-02-01"))]
    assert a2["episodes"] == 0 and a2["recognition_per_1000"] == 0.0 and np.isnan(a2["sam30_pct"])
    # zero admissions -> undefined rate, not infinity
    assert np.isnan(m.loc[("B", T("2020-02-01")), "recognition_per_1000"])
    # hospital days: LOS measured arrival -> discharge
    a3 = m.loc[("A", T("2020-03-01"))]
    assert a3["hospital_days_per_episode"] == pytest.approx(8.0)
    assert a3["icu_days_per_episode"] == pytest.approx(2.0)


def test_collaborative_level_sums_sites(small):
    ep, sm = small
    c = monthly_measures(ep, sm, level="collaborative").set_index("month")
    jan = c.loc[T("2020-01-01")]
    assert jan["episodes"] == 4 and jan["admissions"] == 1500
    assert jan["recognition_per_1000"] == pytest.approx(4 / 1.5)
    assert c["episodes"].sum() == len(ep)


def test_episode_outside_site_months_is_kept(small):
    ep, sm = small
    m = monthly_measures(ep, sm[sm["month"] != "2020-03"])
    assert m["episodes"].sum() == len(ep)
    row = m[(m.site_id == "A") & (m.month == T("2020-03-01"))].iloc[0]
    assert np.isnan(row["admissions"]) and np.isnan(row["recognition_per_1000"])


def test_long_format_keeps_numerator_denominator(small):
    ep, sm = small
    long = to_long(monthly_measures(ep, sm))
    r = long[(long.site_id == "A") & (long.month == T("2020-01-01")) & (long.measure == "sam30_pct")].iloc[0]
    assert (r.numerator, r.denominator) == (2, 3)
    assert r.value == pytest.approx(100 * r.numerator / r.denominator)
    assert set(MEASURES) <= set(long["measure"])


def test_period_summary_and_errors(small):
    ep, sm = small
    ep = ep.assign(post=ep["month"] >= T("2020-02-01"))
    ps = period_summary(ep, by=["site_id"]).set_index(["site_id", "post"])
    assert ps.loc[("A", False), "episodes"] == 3 and ps.loc[("A", True), "episodes"] == 1
    with pytest.raises(ValueError, match="missing column"):
        monthly_measures(ep.drop(columns=["los_days"]), sm)
    with pytest.raises(ValueError, match="duplicated"):
        monthly_measures(ep, pd.concat([sm, sm]))

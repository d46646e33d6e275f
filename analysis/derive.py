"""Derived episode fields, computed in code from validated timestamps (never trusted from input).

Input: a typed episodes frame (datetime64 timestamp columns, bool flags) as produced by
:func:`analysis.validate.validate_collaborative` or :func:`analysis.simulate.simulate_collaborative`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .settings import DEFAULT_SETTINGS, Settings

MINUTE = np.timedelta64(1, "m")
DAY = np.timedelta64(1, "D")

#: Columns added by :func:`derive_episodes` (with units).
DERIVED_COLUMNS: dict[str, str] = {
    "month": "calendar month of T0 (Timestamp, first of month)",
    "minutes_to_bolus": "minutes from T0 to first fluid bolus (NaN = not given; negative = before T0)",
    "minutes_to_antibiotic": "minutes from T0 to first IV antibiotic (NaN = not given; negative = before T0)",
    "hours_arrival_to_t0": "hours from arrival to T0",
    "hospital_onset": "T0 more than Settings.hospital_onset_hours after arrival",
    "los_days": "length of stay, arrival to discharge, days",
    "days_t0_to_discharge": "days from T0 to discharge (alive or dead)",
    "died_in_hospital": "death recorded at or before discharge",
    "days_t0_to_death": "days from T0 to death (NaN if alive)",
    "sam3": "3-day sepsis-attributable death (per Settings.attribution_rule)",
    "sam30": "30-day sepsis-attributable death (per Settings.attribution_rule)",
    "recognised": "recognition element: screen, huddle or order set",
    "fluid_60": "first bolus within Settings.fluid_window_min of T0",
    "abx_180": "first antibiotic within Settings.antibiotic_window_min of T0",
    "abx_60": "first antibiotic within Settings.antibiotic_fast_window_min of T0",
    "bundle_compliant": "final IPSO bundle: recognised and fluid_60 and abx_180",
    "age_group": "age band: <1, 1-4, 5-12, 13+ years",
}


def _minutes(later: pd.Series, earlier: pd.Series) -> pd.Series:
    return (later - earlier) / MINUTE


def _within(minutes: pd.Series, window: float, before_ok: bool) -> pd.Series:
    ok = minutes <= window
    if not before_ok:
        ok &= minutes >= 0
    return ok.fillna(False).astype(bool)


def sam_column(days: int) -> str:
    """Column name of the `days`-day sepsis-attributable mortality flag (e.g. ``sam30``)."""
    return f"sam{int(days)}"


def age_group(age_years: pd.Series) -> pd.Series:
    """Age bands used for case-mix adjustment: <1, 1-4, 5-12, 13+ years."""
    return pd.cut(
        age_years,
        bins=[-np.inf, 1, 5, 13, np.inf],
        right=False,
        labels=["<1", "1-4", "5-12", "13+"],
    )


def derive_episodes(episodes: pd.DataFrame, settings: Settings = DEFAULT_SETTINGS) -> pd.DataFrame:
    """Return a copy of `episodes` with the derived columns of :data:`DERIVED_COLUMNS` added."""
    df = episodes.copy()
    t0 = df["time_zero"]
    df["month"] = t0.dt.to_period("M").dt.to_timestamp()
    df["minutes_to_bolus"] = _minutes(df["first_bolus_time"], t0)
    df["minutes_to_antibiotic"] = _minutes(df["first_antibiotic_time"], t0)
    df["hours_arrival_to_t0"] = _minutes(t0, df["arrival_time"]) / 60.0
    df["hospital_onset"] = df["hours_arrival_to_t0"] > settings.hospital_onset_hours
    df["los_days"] = (df["discharge_time"] - df["arrival_time"]) / DAY
    df["days_t0_to_discharge"] = (df["discharge_time"] - t0) / DAY
    died = df["death_time"].notna()
    df["died_in_hospital"] = died & (df["death_time"] <= df["discharge_time"])
    df["days_t0_to_death"] = ((df["death_time"] - t0) / DAY).where(died)
    counted = df["died_in_hospital"] if settings.attribution_rule == "in_hospital_within_window" else died
    for w in settings.sam_windows_days:
        df[sam_column(w)] = (counted & (df["days_t0_to_death"] <= w)).fillna(False).astype(bool)
    df["recognised"] = df["screen_positive"] | df["huddle"] | df["order_set"]
    before_ok = settings.treatment_before_t0_is_timely
    df["fluid_60"] = _within(df["minutes_to_bolus"], settings.fluid_window_min, before_ok)
    df["abx_180"] = _within(df["minutes_to_antibiotic"], settings.antibiotic_window_min, before_ok)
    df["abx_60"] = _within(df["minutes_to_antibiotic"], settings.antibiotic_fast_window_min, before_ok)
    df["bundle_compliant"] = df["recognised"] & df["fluid_60"] & df["abx_180"]
    df["age_group"] = age_group(df["age_years"])
    return df


def attach_sites(episodes: pd.DataFrame, sites: pd.DataFrame) -> pd.DataFrame:
    """Add ``go_live`` (Timestamp), ``go_live_month``, ``post`` (T0 month at/after the go-live month)
    and ``months_since_go_live`` (event time, integer months; 0 = go-live month) from `sites`."""
    s = sites[["site_id", "go_live", "wave"]].copy()
    s["go_live"] = pd.to_datetime(s["go_live"])
    df = episodes.drop(columns=[c for c in ("go_live", "wave") if c in episodes.columns]).merge(
        s, on="site_id", how="left", validate="many_to_one"
    )
    df["go_live_month"] = df["go_live"].dt.to_period("M").dt.to_timestamp()
    month = df["month"] if "month" in df else df["time_zero"].dt.to_period("M").dt.to_timestamp()
    df["months_since_go_live"] = months_between(df["go_live_month"], month)
    df["post"] = df["months_since_go_live"] >= 0
    return df


def months_between(start: pd.Series, end: pd.Series) -> pd.Series:
    """Whole calendar months from `start` to `end` (both month-start Timestamps)."""
    return (end.dt.year - start.dt.year) * 12 + (end.dt.month - start.dt.month)

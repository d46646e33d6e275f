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
    "followup_days": "days from T0 to the data cut-off (inf without a cut-off; see censor_at)",
    "los_complete": "hospital stay known: discharged by the cut-off and followed for LOS_FOLLOWUP_DAYS",
}

#: Days of follow-up after T0 an episode needs before its hospital days count (with a cut-off):
#: an outcome-independent rule, so that long stays still open at the cut-off do not bias the mean
#: stay of the last months downwards (stays longer than this are rare and are then left out).
LOS_FOLLOWUP_DAYS: float = 90.0


def complete_column(days: int) -> str:
    """Column telling whether the `days`-day window after T0 is complete at the cut-off
    (e.g. ``sam30_complete``): window outcomes count only for these episodes."""
    return f"{sam_column(days)}_complete"


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


def derive_episodes(
    episodes: pd.DataFrame,
    settings: Settings = DEFAULT_SETTINGS,
    *,
    censor_at: pd.Timestamp | str | None = None,
) -> pd.DataFrame:
    """Return a copy of `episodes` with the derived columns of :data:`DERIVED_COLUMNS` added.

    `censor_at`: the data cut-off, an instant (e.g. the first moment after the ``as_of`` month).
    Outcomes are then derived as they were seen at the cut-off: a death, discharge or treatment
    after it is not seen. Window outcomes (``sam3``, ``sam30``) count only for episodes whose whole
    window ended by the cut-off (``sam{w}_complete``; incomplete episodes have ``sam{w} = False``
    and must be left out of numerator *and* denominator, as :mod:`analysis.measures` does).
    Counting them as survivors would bias mortality down; keeping only those with a known outcome
    (died, or discharged alive) would bias it up, because deaths are seen sooner than survival.
    Hospital days count only when the episode was followed for :data:`LOS_FOLLOWUP_DAYS` and
    discharged by the cut-off (``los_complete``; ``los_days`` is NaN otherwise).
    Without `censor_at`, every outcome in the data is taken as complete.
    """
    stale = [c for c in episodes.columns if c.startswith("sam") and c.endswith("_complete")]
    df = episodes.drop(columns=stale)  # a copy; window flags of other settings are recomputed
    cutoff = None if censor_at is None else pd.Timestamp(censor_at)
    if cutoff is not None:
        for col in ("death_time", "first_bolus_time", "first_antibiotic_time"):
            df[col] = df[col].where(df[col] <= cutoff)
        df["discharge_time"] = df["discharge_time"].where(df["discharge_time"] <= cutoff)
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
    if cutoff is None:
        df["followup_days"] = np.inf
    else:
        df["followup_days"] = ((cutoff - t0) / DAY).astype(float)
    for w in settings.sam_windows_days:
        complete = df["followup_days"] >= w
        df[complete_column(w)] = complete.to_numpy(dtype=bool)
        df[sam_column(w)] = df[sam_column(w)] & complete
    df["los_complete"] = df["discharge_time"].notna() & (
        np.isinf(df["followup_days"]) | (df["followup_days"] >= LOS_FOLLOWUP_DAYS))
    df["los_days"] = df["los_days"].where(df["los_complete"])
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


def cutoff_instant(as_of: str | pd.Timestamp) -> pd.Timestamp:
    """The first instant after the ``as_of`` month (``YYYY-MM``): data up to then are seen."""
    import re

    if isinstance(as_of, str) and not re.fullmatch(r"\d{4}-\d{2}(-\d{2})?", as_of.strip()):
        raise ValueError(f"as_of must be a month like YYYY-MM, got {as_of!r}")
    try:
        month = pd.Timestamp(as_of).to_period("M")
        return (month + 1).to_timestamp()
    except (ValueError, TypeError, OverflowError) as exc:
        raise ValueError(f"as_of must be a month like YYYY-MM, got {as_of!r}") from exc


def cut_at(episodes: pd.DataFrame, as_of: str | pd.Timestamp,
           settings: Settings = DEFAULT_SETTINGS) -> tuple[pd.DataFrame, int]:
    """Episodes as known at the end of the ``as_of`` month: episodes with T0 after that month are
    left out (their number is returned), and the outcomes of the others are re-derived with
    ``censor_at`` = the first instant after it (see :func:`derive_episodes`). `episodes` are
    derived episodes (site columns, when attached, are kept)."""
    cutoff = cutoff_instant(as_of)
    late = episodes["time_zero"] >= cutoff
    kept = derive_episodes(episodes.loc[~late].reset_index(drop=True), settings, censor_at=cutoff)
    return kept, int(late.sum())

"""Monthly IPSO measures per site and for the collaborative.

Input: the derived episode frame (:func:`analysis.derive.derive_episodes`, optionally with
:func:`analysis.derive.attach_sites`) and the site-months table (admissions denominators).
Output: tidy frames with every numerator and denominator kept next to its rate.

Units
-----
- ``recognition_per_1000``: sepsis episodes per 1,000 hospital admissions.
- ``hospital_onset_per_1000``: hospital-onset episodes per 1,000 admissions.
- ``sam3_pct`` / ``sam30_pct``: sepsis-attributable deaths per 100 episodes whose 3-/30-day window
  is complete at the data cut-off (denominators ``sam3_n`` / ``sam30_n``; without a cut-off every
  episode).
- ``*_pct`` for process elements: % of episodes.
- ``*_minutes_median`` / ``*_minutes_mean``: minutes from T0, among episodes that received it.
- ``hospital_days_per_episode`` / ``icu_days_per_episode``: days per episode whose stay is known
  (``los_complete``, denominator ``los_n``; without a cut-off every episode).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .derive import months_between

#: Binary episode flags counted per month: column -> description.
FLAG_MEASURES: dict[str, str] = {
    "hospital_onset": "hospital-onset episodes",
    "sam3": "3-day sepsis-attributable deaths",
    "sam30": "30-day sepsis-attributable deaths",
    "bundle_compliant": "episodes compliant with the final IPSO bundle",
    "recognised": "episodes recognised by screen, huddle or order set",
    "screen_positive": "episodes with a positive sepsis screen",
    "huddle": "episodes with a sepsis huddle",
    "order_set": "episodes with the sepsis order set",
    "fluid_60": "episodes with first fluid bolus within 60 min of T0",
    "abx_180": "episodes with first antibiotic within 180 min of T0",
    "abx_60": "episodes with first antibiotic within 60 min of T0",
}

#: Continuous measures summarised per month: output prefix -> episode column.
TIME_MEASURES: dict[str, str] = {
    "bolus_minutes": "minutes_to_bolus",
    "antibiotic_minutes": "minutes_to_antibiotic",
}


#: Window outcomes: counted among episodes whose window is complete (``<flag>_complete``).
_WINDOW_FLAGS = ("sam3", "sam30")


@dataclass(frozen=True)
class MeasureInfo:
    """What a measure column means: numerator, denominator, unit."""

    name: str
    numerator: str
    denominator: str
    unit: str
    multiplier: float


def _catalogue() -> dict[str, MeasureInfo]:
    cat = {
        "recognition_per_1000": MeasureInfo(
            "recognition_per_1000", "episodes", "admissions", "episodes per 1,000 admissions", 1000.0
        ),
        "hospital_onset_per_1000": MeasureInfo(
            "hospital_onset_per_1000", "hospital_onset", "admissions",
            "hospital-onset episodes per 1,000 admissions", 1000.0,
        ),
        "hospital_days_per_episode": MeasureInfo(
            "hospital_days_per_episode", "hospital_days", "los_n", "days per episode", 1.0
        ),
        "icu_days_per_episode": MeasureInfo(
            "icu_days_per_episode", "icu_days", "los_n", "ICU days per episode", 1.0
        ),
    }
    for flag in FLAG_MEASURES:
        if flag == "hospital_onset":
            continue
        den = f"{flag}_n" if flag in _WINDOW_FLAGS else "episodes"
        cat[f"{flag}_pct"] = MeasureInfo(f"{flag}_pct", flag, den, "% of episodes", 100.0)
    return cat


MEASURES: dict[str, MeasureInfo] = _catalogue()


def _require(df: pd.DataFrame, cols: list[str], what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(
            f"{what} is missing column(s) {missing}; derive episodes with "
            "analysis.derive.derive_episodes first"
        )


def _aggregate(episodes: pd.DataFrame, keys: list[str], extra_sums: list[str]) -> pd.DataFrame:
    """Sums, medians and means per group (one vectorised groupby)."""
    flags = [c for c in FLAG_MEASURES if c in episodes.columns]
    work = episodes[keys].copy()
    counts = []
    for c in flags:
        work[c] = episodes[c].astype("int64")
        if c in _WINDOW_FLAGS:  # denominators: episodes whose window is complete at the cut-off
            done = f"{c}_complete"
            work[f"{c}_n"] = episodes[done].astype("int64") if done in episodes else 1
            counts.append(f"{c}_n")
    known = episodes["los_complete"] if "los_complete" in episodes else episodes["los_days"].notna()
    work["los_n"] = known.astype("int64")
    work["hospital_days"] = episodes["los_days"].astype(float).where(known)
    work["icu_days"] = episodes["icu_days"].astype(float).where(known)
    for c in extra_sums:
        work[c] = episodes[c].astype(float)
    for prefix, col in TIME_MEASURES.items():
        work[prefix] = episodes[col].astype(float)
    g = work.groupby(keys, observed=True, sort=True)
    sums = g[flags + counts + ["los_n", "hospital_days", "icu_days", *extra_sums]].sum()
    sums.insert(0, "episodes", g.size())
    for prefix in TIME_MEASURES:
        sums[f"{prefix}_n"] = g[prefix].count()
        sums[f"{prefix}_median"] = g[prefix].median()
        sums[f"{prefix}_mean"] = g[prefix].mean()
    return sums


def _add_rates(out: pd.DataFrame) -> pd.DataFrame:
    for info in MEASURES.values():
        if info.numerator not in out or info.denominator not in out:
            continue
        den = out[info.denominator].astype(float)
        out[info.name] = np.where(den > 0, out[info.numerator] / den.where(den > 0) * info.multiplier, np.nan)
    return out


def monthly_measures(
    episodes: pd.DataFrame,
    site_months: pd.DataFrame,
    *,
    sites: pd.DataFrame | None = None,
    level: str = "site",
    extra_sums: list[str] | tuple[str, ...] = (),
) -> pd.DataFrame:
    """Monthly measures, one row per site x month (``level="site"``) or per month
    (``level="collaborative"``).

    Every site-month in `site_months` appears (months with no episodes have ``episodes == 0``), so
    series have no gaps. Episodes in months missing from `site_months` are kept, with
    ``admissions`` missing (rates per 1,000 admissions are then NaN) — never dropped.

    `extra_sums` are additional episode columns summed per month (e.g. expected deaths from a
    case-mix model, ``expected_sam30``), for use as ITS offsets.
    With `sites` given (site level), adds ``go_live_month``, ``months_since_go_live`` and ``post``.
    """
    if level not in ("site", "collaborative"):
        raise ValueError(f"level must be 'site' or 'collaborative', got {level!r}")
    _require(episodes, ["site_id", "month", "los_days", "icu_days", *TIME_MEASURES.values()], "episodes")
    _require(site_months, ["site_id", "month", "admissions"], "site_months")
    extra = list(extra_sums)
    _require(episodes, extra, "episodes")

    sm = site_months[["site_id", "month", "admissions"]].copy()
    sm["month"] = pd.to_datetime(sm["month"]).dt.to_period("M").dt.to_timestamp()
    if sm.duplicated(["site_id", "month"]).any():
        raise ValueError("site_months has duplicated (site_id, month) rows")

    if level == "site":
        keys = ["site_id", "month"]
        agg = _aggregate(episodes, keys, extra).reset_index()
        out = sm.merge(agg, on=keys, how="outer")
    else:
        keys = ["month"]
        agg = _aggregate(episodes, keys, extra).reset_index()
        adm = sm.groupby("month", as_index=False)["admissions"].sum(min_count=1)
        out = adm.merge(agg, on="month", how="outer")
    n_cols = [f"{c}_n" for c in _WINDOW_FLAGS if f"{c}_n" in out] + ["los_n"]
    count_cols = ["episodes", *[c for c in FLAG_MEASURES if c in out], *n_cols, "hospital_days",
                  "icu_days", *extra]
    count_cols += [f"{p}_n" for p in TIME_MEASURES]
    for c in count_cols:
        out[c] = out[c].fillna(0)
    int_cols = ["episodes", *[c for c in FLAG_MEASURES if c in out], *n_cols,
                *[f"{p}_n" for p in TIME_MEASURES]]
    out[int_cols] = out[int_cols].astype("int64")
    out = _add_rates(out)
    out = out.sort_values(keys).reset_index(drop=True)
    if level == "site" and sites is not None:
        s = sites[["site_id", "go_live"]].copy()
        s["go_live_month"] = pd.to_datetime(s["go_live"]).dt.to_period("M").dt.to_timestamp()
        out = out.merge(s[["site_id", "go_live_month"]], on="site_id", how="left")
        out["months_since_go_live"] = months_between(out["go_live_month"], out["month"])
        out["post"] = out["months_since_go_live"] >= 0
    return out


def to_long(wide: pd.DataFrame, measures: list[str] | None = None) -> pd.DataFrame:
    """Long format: one row per (site, month, measure) with numerator, denominator, value, unit."""
    keys = [c for c in ("site_id", "month") if c in wide.columns]
    names = measures or [m for m in MEASURES if m in wide.columns]
    frames = []
    for m in names:
        info = MEASURES[m]
        f = wide[keys].copy()
        f["measure"] = m
        f["numerator"] = wide[info.numerator].astype(float)
        f["denominator"] = wide[info.denominator].astype(float)
        f["value"] = wide[m]
        f["unit"] = info.unit
        frames.append(f)
    for prefix in TIME_MEASURES:
        for stat in ("median", "mean"):
            col = f"{prefix}_{stat}"
            if col in wide.columns and (measures is None or col in measures):
                f = wide[keys].copy()
                f["measure"] = col
                f["numerator"] = np.nan
                f["denominator"] = wide[f"{prefix}_n"].astype(float)
                f["value"] = wide[col]
                f["unit"] = f"minutes from T0 ({stat}, among treated)"
                frames.append(f)
    return pd.concat(frames, ignore_index=True)


def period_summary(episodes: pd.DataFrame, *, by: list[str] | None = None, period: str = "post") -> pd.DataFrame:
    """Crude pre/post summary per group: counts, rates, medians (the 'crude pre/post' comparison)."""
    by = list(by or [])
    _require(episodes, [period, "los_days", "icu_days"], "episodes")
    keys = by + [period]
    agg = _aggregate(episodes, keys, []).reset_index()
    return _add_rates(agg)

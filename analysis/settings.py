"""Analysis settings: every threshold that turns raw timestamps into IPSO measures.

All derived quantities (minutes to treatment, hospital onset, sepsis-attributable mortality,
bundle compliance) are computed from these documented settings, never trusted from input.
The defaults follow the final IPSO measure definitions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

AttributionRule = Literal["in_hospital_within_window", "any_recorded_death_within_window"]


@dataclass(frozen=True)
class Settings:
    """Thresholds used to derive measures (units in the names).

    Attributes
    ----------
    hospital_onset_hours:
        An episode is hospital-onset when T0 is *more than* this many hours after arrival (48 h).
    sam_windows_days:
        Sepsis-attributable mortality (SAM) windows in days from T0 (3- and 30-day SAM).
    attribution_rule:
        ``"in_hospital_within_window"`` (default, IPSO): a death counts as sepsis-attributable when it
        happened in hospital (death_time <= discharge_time) within the window after T0.
        ``"any_recorded_death_within_window"``: any recorded death within the window counts.
    fluid_window_min:
        Bundle element: first fluid bolus within this many minutes of T0 (60 min).
    antibiotic_window_min:
        Bundle element: first IV antibiotic within this many minutes of T0 (180 min).
    antibiotic_fast_window_min:
        Secondary measure: first antibiotic within this many minutes of T0 (60 min).
    treatment_before_t0_is_timely:
        A treatment given before T0 (negative minutes) counts as within the window (default True).
    """

    hospital_onset_hours: float = 48.0
    sam_windows_days: tuple[int, ...] = (3, 30)
    attribution_rule: AttributionRule = "in_hospital_within_window"
    fluid_window_min: float = 60.0
    antibiotic_window_min: float = 180.0
    antibiotic_fast_window_min: float = 60.0
    treatment_before_t0_is_timely: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def with_(self, **changes: Any) -> "Settings":
        """Return a copy with some settings changed."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["sam_windows_days"] = list(self.sam_windows_days)
        return d


DEFAULT_SETTINGS = Settings()

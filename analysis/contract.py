"""The IPSO data contract: the three input tables, their fields, types, units and allowed values.

This module is the single source of truth for column names. ``data/README.md`` documents the same
contract for people; the validation schemas in :mod:`analysis.validate` are built from it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Kind = Literal["id", "string", "datetime", "date", "month", "category", "bool", "int", "float"]

ONSET_SETTINGS: tuple[str, ...] = ("ED", "ward", "ICU", "heme_onc", "transplant")
SEXES: tuple[str, ...] = ("F", "M", "U")
REGIONS: tuple[str, ...] = ("Northeast", "Midwest", "South", "West")
AGE_MIN_YEARS: float = 0.0
AGE_MAX_YEARS: float = 21.0
CCC_MAX: int = 20

#: A site id: 1 to 32 ASCII letters, digits, ``_`` or ``-`` (it becomes part of file names and
#: report links, so nothing else may appear in it: no path separators, dots, spaces or markup).
SITE_ID_PATTERN: str = r"[A-Za-z0-9_-]{1,32}"
SITE_ID_RULE: str = "1 to 32 characters, each an ASCII letter, digit, '_' or '-'"

#: Largest whole number a count may hold: counts are analysed as float64, which represents every
#: integer up to 2**53 exactly; a larger value would be stored rounded, so it is rejected.
MAX_EXACT_INTEGER: int = 2**53

#: Supported range of dates and date-times (nanosecond timestamps, as pandas stores them).
DATE_MIN: str = "1677-09-21T00:12:43.145224193"
DATE_MAX: str = "2262-04-11T23:47:16.854775807"
DATE_RANGE_TEXT: str = "1677-09-21 to 2262-04-11"

#: Longest stay (arrival to discharge) that can be held as a duration: 2**63 ns = 106,751.99 days,
#: about 292 years. A longer stay is certainly a data error and is quarantined.
MAX_STAY_DAYS: int = 106_751

#: Strings accepted as booleans in CSV extracts (case-insensitive).
TRUE_STRINGS = frozenset({"true", "t", "1", "yes", "y"})
FALSE_STRINGS = frozenset({"false", "f", "0", "no", "n"})


@dataclass(frozen=True)
class Field:
    """One column of an input table."""

    name: str
    kind: Kind
    required: bool
    description: str
    unit: str = ""
    allowed: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    nullable: bool = False
    pattern: str | None = None  # full-match regular expression (ids)


EPISODE_FIELDS: tuple[Field, ...] = (
    Field("episode_id", "id", True, "Unique identifier of the sepsis episode (never published)."),
    Field("patient_id", "id", True, "Pseudonymous patient identifier; a patient may have repeat episodes (never published)."),
    Field("site_id", "id", True, "Hospital identifier; must exist in sites.", pattern=SITE_ID_PATTERN),
    Field("arrival_time", "datetime", True, "ED arrival or direct admission time.", "ISO 8601 timestamp"),
    Field("time_zero", "datetime", True, "T0: earliest sepsis recognition (IPSO intention-to-treat).", "ISO 8601 timestamp"),
    Field("discharge_time", "datetime", True, "Hospital discharge (alive or dead).", "ISO 8601 timestamp"),
    Field("death_time", "datetime", False, "In-hospital death time; empty if discharged alive.", "ISO 8601 timestamp", nullable=True),
    Field("onset_setting", "category", True, "Where sepsis began.", allowed=ONSET_SETTINGS),
    Field("age_years", "float", True, "Age at T0.", "years", minimum=AGE_MIN_YEARS, maximum=AGE_MAX_YEARS),
    Field("sex", "category", True, "Sex (U = unknown/other).", allowed=SEXES),
    Field("ccc_count", "int", True, "Number of complex chronic conditions.", "count", minimum=0, maximum=CCC_MAX),
    Field("immunocompromised", "bool", True, "Immunocompromised at T0."),
    Field("critical_sepsis", "bool", True, "Critical sepsis: vasoactive use or ICU-level illness."),
    Field("screen_positive", "bool", True, "Recognised by a positive sepsis screen."),
    Field("huddle", "bool", True, "A sepsis huddle was held."),
    Field("order_set", "bool", True, "The sepsis order set was used."),
    Field("first_bolus_time", "datetime", False, "First fluid bolus; empty = not given.", "ISO 8601 timestamp", nullable=True),
    Field("first_antibiotic_time", "datetime", False, "First IV antibiotic; empty = not given.", "ISO 8601 timestamp", nullable=True),
    Field("icu_days", "float", True, "Days in ICU during the stay.", "days", minimum=0.0),
)

SITE_FIELDS: tuple[Field, ...] = (
    Field("site_id", "id", True, "Hospital identifier (unique; letters, digits, '_' or '-', at most 32).",
          pattern=SITE_ID_PATTERN),
    Field("site_name", "string", True, "Hospital name (appears only in that hospital's own report)."),
    Field("go_live", "date", True, "Date IPSO practices started at the site.", "ISO 8601 date"),
    Field("wave", "int", True, "Collaborative wave the site joined in.", "wave number", minimum=1),
    Field("region", "category", True, "US census region.", allowed=REGIONS),
    Field("beds", "int", True, "Licensed beds.", "beds", minimum=1),
)

SITE_MONTH_FIELDS: tuple[Field, ...] = (
    Field("site_id", "id", True, "Hospital identifier; must exist in sites.", pattern=SITE_ID_PATTERN),
    Field("month", "month", True, "Calendar month (YYYY-MM or first day of month).", "month"),
    Field("admissions", "int", True, "All hospital admissions that month: denominator for recognition and hospital-onset rates.", "admissions", minimum=0),
)

TABLES: dict[str, tuple[Field, ...]] = {
    "episodes": EPISODE_FIELDS,
    "sites": SITE_FIELDS,
    "site_months": SITE_MONTH_FIELDS,
}

#: File names of a collaborative extract directory (``ipso simulate`` writes this layout).
EPISODES_FILES = ("episodes.parquet", "episodes.csv")
SITES_FILE = "sites.csv"
SITE_MONTHS_FILE = "site_months.csv"

#: Identifier columns that must never appear in any published output.
IDENTIFIER_COLUMNS: tuple[str, ...] = ("episode_id", "patient_id")

#: Timestamp columns (exact timestamps must never be published).
TIMESTAMP_COLUMNS: tuple[str, ...] = tuple(f.name for f in EPISODE_FIELDS if f.kind == "datetime")

BOOL_COLUMNS: tuple[str, ...] = tuple(f.name for f in EPISODE_FIELDS if f.kind == "bool")


def field_names(table: str) -> list[str]:
    """Column names of an input table, in contract order."""
    return [f.name for f in TABLES[table]]


def required_names(table: str) -> list[str]:
    """Required column names of an input table."""
    return [f.name for f in TABLES[table] if f.required]


def is_valid_site_id(value: object) -> bool:
    """True when `value` is a string matching :data:`SITE_ID_PATTERN` (safe in paths and HTML)."""
    return isinstance(value, str) and re.fullmatch(SITE_ID_PATTERN, value) is not None

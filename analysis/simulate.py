"""Synthetic IPSO collaborative with known true effects (``ipso simulate``).

The simulator writes the three contract tables (episodes, sites, site_months) plus ``truth.json``,
which holds every parameter used and the true estimands, so that every analysis in the suite can be
checked against a known answer. Everything is vectorised numpy: the default collaborative
(57 sites x 84 months, about 70,000 episodes) takes a few seconds, ``scale=15`` (1M+ episodes)
well under 30 s. Same seed, same bytes.

Generative model (all parameters in :data:`DEFAULT_EFFECTS`; ``data/SYNTHETIC.md`` has the long form)
----------------------------------------------------------------------------------------------------
Sites
    ``beds`` ~ lognormal (median 250, clipped 60-700); expected admissions per month = 4 x beds x scale,
    with a winter peak (+10% in January) and +1%/year growth; realised admissions ~ Poisson.
    Site sepsis rate per 1,000 admissions ~ lognormal (median 11, log-sd 0.35), winter peak +15%.
    Sites are randomly assigned to 3 equal waves going live on the first of months 24, 36 and 48
    (of 84; proportionally for other lengths).
Ramp
    ``ramp(t) = clip(t / 6, 0, 1)`` with t = months from go-live to T0 (0 before go-live); every
    post-go-live change below is multiplied by the ramp (on the log or logit scale).
Volumes and recognition expansion
    Counterfactual (base) episodes per site-month ~ Poisson(admissions x rate / 1000 x season).
    After go-live, extra *milder* episodes ~ Poisson(base mean x 0.30 x ramp) are recognised
    (lower critical share, fewer CCCs, more ED onset). They are not marked in the episodes table.
Case mix (per episode)
    onset setting (ED 70%, ward 15%, ICU 7%, heme_onc 5%, transplant 3%); hospital onset
    (T0 > 48 h after arrival) only for non-ED onsets; age (median about 6 y, 20% infants);
    CCC count (about 2/3 with >= 1); immunocompromised (mostly heme_onc / transplant);
    critical sepsis (about 35%). Some patients have repeat episodes (same patient_id, consistent age/sex).
Processes (common random numbers: the same uniform/normal draw gives the actual and counterfactual value)
    screen_positive, huddle, order_set ~ Bernoulli(expit(site intercept + trend + shift x ramp));
    minutes to first bolus / antibiotic ~ lognormal (realised pre medians about 54 / 68 min) multiplied by
    the post ratio (0.93 / 0.90) ^ ramp; some treatments not given (empty), a few given before T0.
30-day in-hospital sepsis-attributable death (log-risk model: effects are collapsible risk ratios)
    P = min(0.9, exp(eta)),
    eta = log(baseline) + case-mix log-RRs (critical, min(CCC, 3), immunocompromised, hospital onset,
    onset setting, age band) + process log-RRs (per hour to antibiotic capped at 12 h, untreated = 12 h;
    fluid within 60 min; order set; screen positive; huddle with a TRUE NULL RR of 1.0)
    + site effect ~ N(0, 0.25) + secular trend log(0.985) per year + log(post_direct_rr) x ramp.
    45% of 30-day sepsis deaths happen within 3 days of T0 (so SAM3 = 0.45 x SAM30 in expectation);
    a few survivors with stays > 30 days die in hospital later (not SAM30). death_time = discharge_time.
Length of stay
    survivors' T0-to-discharge days ~ lognormal (case-mix terms, site effect, trend,
    los_post_rr ^ ramp); hospital days = arrival-to-T0 gap + T0-to-discharge. ICU days <= stay.

Scenarios (opt-in, :data:`SCENARIOS`, :data:`SCENARIO_DEFAULTS`)
    effect dynamics (growing, waning; the path replaces the ramp for every post-go-live change),
    site-heterogeneous direct mortality effects and calendar shocks common to all sites; at their
    defaults nothing changes (same bytes). :func:`simulate_panel` makes expected-value site-month
    panels with the same paths for estimator checks.

Truth
    ``truth["estimands"]`` are computed from model expectations (death probabilities given each
    episode's covariates and processes, not realised deaths). Mortality and LOS ratios are
    case-mix standardised: actual over counterfactual for the *same* episodes (expansion episodes
    included, each with its counterfactual processes). ``*_population`` variants compare the actual
    world's episodes with the counterfactual world's (base) episodes, as a crude pre/post would.
"""

from __future__ import annotations

import copy
import json
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import expit, logit
from scipy.stats import norm

from .contract import (
    EPISODE_FIELDS,
    ONSET_SETTINGS,
    REGIONS,
    SITE_FIELDS,
    SITE_MONTH_FIELDS,
    SITE_MONTHS_FILE,
    SITES_FILE,
)

DEFAULT_SEED = 20160101

#: Wave go-live positions as fractions of the study length (months 24, 36, 48 of 84).
WAVE_FRACTIONS: tuple[float, ...] = (24 / 84, 36 / 84, 48 / 84)

MINUTES_PER_DAY = 1440.0
DAYS_PER_MONTH = 30.4375
DAYS_PER_YEAR = 365.25

#: Every true effect and nuisance parameter of the generative model. Override any top-level key
#: (dict values are merged one level deep) through ``simulate_collaborative(true_effects=...)``.
DEFAULT_EFFECTS: dict[str, Any] = {
    # --- collaborative design ---------------------------------------------------------------
    "wave_fractions": list(WAVE_FRACTIONS),
    "ramp_months": 6.0,
    # --- volumes ----------------------------------------------------------------------------
    "beds_median": 250.0,
    "beds_log_sd": 0.45,
    "beds_range": [60, 600],
    "admissions_per_bed_month": 4.0,
    "admissions_winter_amplitude": 0.10,
    "admissions_trend_per_year": 0.01,
    "sepsis_rate_per_1000_median": 11.0,
    "sepsis_rate_log_sd": 0.35,
    "sepsis_winter_amplitude": 0.15,
    "recognition_expansion": 0.30,
    "repeat_patient_share": 0.12,
    # --- case mix ---------------------------------------------------------------------------
    "onset_setting_probs": {"ED": 0.70, "ward": 0.15, "ICU": 0.07, "heme_onc": 0.05, "transplant": 0.03},
    "expansion_onset_setting_probs": {"ED": 0.85, "ward": 0.10, "ICU": 0.02, "heme_onc": 0.02, "transplant": 0.01},
    "hospital_onset_prob": {"ED": 0.0, "ward": 0.25, "ICU": 0.30, "heme_onc": 0.35, "transplant": 0.40},
    "infant_share": 0.20,
    "ccc_any_prob": {"ED": 0.63, "ward": 0.75, "ICU": 0.75, "heme_onc": 1.0, "transplant": 1.0},
    "expansion_ccc_multiplier": 0.70,
    "immunocompromised_prob": {"heme_onc": 0.85, "transplant": 0.95, "ccc": 0.08, "no_ccc": 0.01},
    "critical_prob": {"ED": 0.32, "ward": 0.35, "ICU": 0.80, "heme_onc": 0.40, "transplant": 0.45},
    "expansion_critical_multiplier": 0.40,
    # --- processes (logit scale) ------------------------------------------------------------
    "process_pre_prob": {"screen_positive": 0.45, "huddle": 0.25, "order_set": 0.35},
    "process_post_logit_shift": {"screen_positive": 0.70, "huddle": 0.90, "order_set": 0.80},
    "process_site_logit_sd": 0.50,
    "process_trend_logit_per_year": 0.05,
    "bolus_given_prob": {"critical": 0.92, "not_critical": 0.72},
    "antibiotic_given_prob": {"critical": 0.98, "not_critical": 0.92},
    "treatment_before_t0_prob": 0.03,
    "bolus_median_min": 62.0,
    "antibiotic_median_min": 80.0,
    "time_log_sd": 0.90,
    "time_site_log_sd": 0.20,
    "time_critical_log_shift": -0.25,
    "time_trend_per_year": -0.01,
    "time_cap_min": 1440.0,
    "bolus_time_post_ratio": 0.93,
    "antibiotic_time_post_ratio": 0.90,
    # --- mortality (log-risk model) ---------------------------------------------------------
    "baseline_sam30": 0.0105,
    "risk_cap": 0.90,
    "casemix_rr": {
        "critical_sepsis": 3.0,
        "ccc_per_condition": 1.25,
        "ccc_cap": 3,
        "immunocompromised": 1.5,
        "hospital_onset": 1.6,
        "onset_ward": 1.2,
        "onset_ICU": 1.5,
        "onset_heme_onc": 1.3,
        "onset_transplant": 1.6,
        "age_<1": 1.2,
        "age_5-12": 0.9,
        "age_13+": 1.1,
    },
    "process_rr": {
        "antibiotic_per_hour": 1.04,
        "antibiotic_hours_cap": 12.0,
        "fluid_60": 0.90,
        "order_set": 0.90,
        "screen_positive": 0.97,
        "huddle": 1.0,
    },
    "post_direct_rr": 0.84,
    "site_effect_sd": 0.25,
    "secular_trend_rr_per_year": 0.985,
    "sam3_share_of_sam30": 0.45,
    "late_death_prob_if_stay_over_30d": 0.10,
    # --- length of stay ---------------------------------------------------------------------
    "los_median_days": 3.7,
    "los_log_sd": 0.90,
    "los_site_log_sd": 0.10,
    "los_log_terms": {
        "critical_sepsis": 0.65,
        "ccc_per_condition": 0.12,
        "immunocompromised": 0.30,
        "hospital_onset": 0.25,
        "onset_ward": 0.10,
        "onset_ICU": 0.30,
        "onset_heme_onc": 0.35,
        "onset_transplant": 0.45,
    },
    "los_trend_per_year": -0.01,
    "los_post_rr": 0.935,
    "icu_any_prob_not_critical": 0.15,
}

# ---------------------------------------------------------------------------------------------
# scenarios (issue 12): effect dynamics, site-heterogeneous effects, calendar shocks. Opt-in: with
# these at their defaults the simulator draws exactly what it drew before (same seed, same bytes,
# same truth.json); truth.json gets a "scenario" block only when a scenario is active.

#: Scenario parameters and their defaults (override through ``true_effects`` like any other).
SCENARIO_DEFAULTS: dict[str, Any] = {
    # shape of every post-go-live change over months m since go-live (on its link scale):
    # "constant": ramp(m) = clip(m / ramp_months, 0, 1)          (today's simulator)
    # "growing":  min(m / dynamics_months, dynamics_cap)           (linear growth, no plateau)
    # "waning":   ramp(m) x exp(-max(m - ramp_months, 0) / dynamics_months)
    "effect_dynamics": "constant",
    "dynamics_months": None,  # growing: 24 (full effect at 24 months); waning: 36 (e-folding)
    "dynamics_cap": 2.0,
    # site-specific direct mortality effect: log RR_s = log(post_direct_rr) + N(0, sd^2)
    "post_direct_rr_site_sd": 0.0,
    # calendar shocks common to all sites: list of {"first_month", "last_month" (0-based study
    # months, inclusive), "admissions_rr", "sepsis_rate_rr", "mortality_rr"} multiplying expected
    # admissions, the sepsis rate per admission and every episode's death risk (both worlds)
    "calendar_shocks": [],
}
_DYNAMICS_MONTHS = {"growing": 24.0, "waning": 36.0}

#: Named scenarios for ``simulate_collaborative(scenario=...)`` and ``ipso simulate --scenario``.
SCENARIOS: dict[str, dict[str, Any]] = {
    "constant": {},
    "null": {
        "post_direct_rr": 1.0,
        "process_post_logit_shift": {"screen_positive": 0.0, "huddle": 0.0, "order_set": 0.0},
        "bolus_time_post_ratio": 1.0,
        "antibiotic_time_post_ratio": 1.0,
    },
    "growing": {"effect_dynamics": "growing"},
    "waning": {"effect_dynamics": "waning"},
    "ramp12": {"ramp_months": 12.0},
    "heterogeneous": {"post_direct_rr_site_sd": 0.15},
    # a dip while later waves are still untreated (study months 30-41: wave 1 at event months
    # 6-17, wave 2 at 0-5, wave 3 not live): identified by the not-yet-treated sites
    "calendar_shock": {
        "calendar_shocks": [
            {"first_month": 30, "last_month": 41, "admissions_rr": 0.80, "sepsis_rate_rr": 0.85,
             "mortality_rr": 0.85}
        ]
    },
    # a COVID-19-like dip after the last wave's go-live (2020-03 to 2021-02 with the default
    # start): no site is untreated, so no estimator can separate it from the effect
    "covid_after_last_wave": {
        "calendar_shocks": [
            {"first_month": 50, "last_month": 61, "admissions_rr": 0.75, "sepsis_rate_rr": 0.85,
             "mortality_rr": 0.85}
        ]
    },
}


def _effect_path(months_since: np.ndarray, params: dict) -> np.ndarray:
    """Multiplier of every post-go-live change (link scale) at ``months_since`` go-live (0 before)."""
    ramp = _ramp(months_since, params["ramp_months"])
    dyn = params.get("effect_dynamics", "constant")
    if dyn == "constant":
        return ramp
    d = params.get("dynamics_months") or _DYNAMICS_MONTHS[dyn]
    if dyn == "growing":
        return np.clip(months_since / d, 0.0, params.get("dynamics_cap", 2.0))
    return ramp * np.exp(-np.maximum(months_since - params["ramp_months"], 0.0) / d)


def _shock_factor(month_index: np.ndarray, params: dict, key: str) -> np.ndarray | None:
    """Product of the calendar shocks' ``key`` multipliers at study months ``month_index``
    (None when there is no shock, so the default path multiplies nothing)."""
    shocks = params.get("calendar_shocks") or []
    if not shocks:
        return None
    f = np.ones(len(month_index))
    for sh in shocks:
        inside = (month_index >= int(sh["first_month"])) & (month_index <= int(sh["last_month"]))
        f = np.where(inside, f * float(sh.get(key, 1.0)), f)
    return f


def _check_scenario_params(params: dict) -> None:
    dyn = params["effect_dynamics"]
    if dyn not in ("constant", "growing", "waning"):
        raise ValueError(f"effect_dynamics must be constant, growing or waning, got {dyn!r}")
    d = params["dynamics_months"]
    if d is not None and not float(d) > 0:
        raise ValueError(f"dynamics_months must be > 0, got {d!r}")
    if not params["post_direct_rr_site_sd"] >= 0:
        raise ValueError("post_direct_rr_site_sd must be >= 0")
    if not isinstance(params["calendar_shocks"], list):
        raise ValueError("calendar_shocks must be a list of dicts")  # noqa: TRY004
    keys = {"first_month", "last_month", "admissions_rr", "sepsis_rate_rr", "mortality_rr"}
    for sh in params["calendar_shocks"]:
        if not isinstance(sh, dict) or not {"first_month", "last_month"} <= set(sh):
            raise ValueError(f"calendar shock {sh!r} needs first_month and last_month")
        if set(sh) - keys:
            raise ValueError(f"calendar shock {sh!r}: unknown keys {sorted(set(sh) - keys)}")
        if any(not float(sh.get(k, 1.0)) > 0 for k in keys - {"first_month", "last_month"}):
            raise ValueError(f"calendar shock {sh!r}: multipliers must be > 0")


def _scenario_active(params: dict, scenario: str | None) -> bool:
    return scenario is not None or any(params[k] != v for k, v in SCENARIO_DEFAULTS.items())


# ---------------------------------------------------------------------------------------------

_NAME_FIRST = (
    "Maple", "Cedar", "Willow", "Aspen", "Birch", "Juniper", "Sycamore", "Hawthorn", "Laurel",
    "Alder", "Spruce", "Magnolia", "Heron", "Osprey", "Bluebell", "Larkspur", "Thistle", "Clover",
    "Fernwood", "Quillon", "Amberly", "Brightwater", "Copperfield", "Dovecrest", "Elmbrook",
)
_NAME_SECOND = (
    "Valley", "Ridge", "Creek", "Hollow", "Meadow", "Harbor", "Prairie", "Bluff", "Glen", "Crossing",
)
_NAME_KIND = ("Children's Hospital", "Children's Medical Center", "Hospital for Children")

# Stable ids of the named random streams (changing one effect does not change other draws).
_STREAMS = (
    "sites", "admissions", "volumes", "t0", "patients", "casemix", "processes", "times", "deaths",
    "los", "icu",
)


def _rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(name.encode())])


@dataclass
class SimulatedCollaborative:
    """A synthetic collaborative: the three contract tables and the truth used to make them.

    ``episodes`` is typed as the contract (datetime64[ns] timestamps, bool flags, NaT = not given),
    sorted by site_id, time_zero. ``sites.go_live`` and ``site_months.month`` are Timestamps in
    memory and written as ``YYYY-MM-DD`` / ``YYYY-MM``. ``latent`` (not written) holds per-episode
    model quantities aligned with ``episodes`` (is_expansion, actual and counterfactual risks,
    event month, ramp, counterfactual processes) and ``latent_site_months`` the expected volumes;
    both are for tests and benchmarks only.
    """

    episodes: pd.DataFrame
    sites: pd.DataFrame
    site_months: pd.DataFrame
    truth: dict
    latent: pd.DataFrame | None = field(default=None, repr=False)
    latent_site_months: pd.DataFrame | None = field(default=None, repr=False)

    def write(self, out: Path) -> dict[str, Path]:
        """Write episodes.parquet, sites.csv, site_months.csv and truth.json into `out`."""
        return write_collaborative(self, out)

    def summary(self) -> pd.DataFrame:
        """One row per headline quantity (counts and true estimands)."""
        return pd.DataFrame(
            [{"quantity": k, "value": v} for k, v in _summary_dict(self).items() if not isinstance(v, dict)]
        )


# ---------------------------------------------------------------------------------------------
# parameters


def _merge_effects(true_effects: dict | None) -> tuple[dict, dict]:
    params = copy.deepcopy({**DEFAULT_EFFECTS, **SCENARIO_DEFAULTS})
    overrides = copy.deepcopy(true_effects or {})
    for key, value in overrides.items():
        if key not in params:
            raise ValueError(f"true_effects: unknown parameter {key!r}; known: {sorted(params)}")
        if isinstance(params[key], dict):
            if not isinstance(value, dict):
                raise ValueError(  # noqa: TRY004 (bad input is a ValueError in this project)
                    f"true_effects[{key!r}] must be a dict, got {type(value).__name__}"
                )
            unknown = set(value) - set(params[key])
            if unknown:
                raise ValueError(f"true_effects[{key!r}]: unknown keys {sorted(unknown)}")
            params[key].update(value)
        else:
            params[key] = value
    _check_scenario_params(params)
    return params, overrides


def _parse_start(start: str) -> np.datetime64:
    try:
        month = np.datetime64(str(start)[:7], "M")
        if len(str(start)) != 7:
            raise ValueError
    except ValueError as exc:
        raise ValueError(f"start must be YYYY-MM, got {start!r}") from exc
    return month


def _ramp(months_since: np.ndarray, ramp_months: float) -> np.ndarray:
    if ramp_months <= 0:
        return (months_since >= 0).astype(float)
    return np.clip(months_since / ramp_months, 0.0, 1.0)


def _site_names(n: int, rng: np.random.Generator) -> list[str]:
    combos = [f"{a} {b} {k}" for k in _NAME_KIND for a in _NAME_FIRST for b in _NAME_SECOND]
    order = rng.permutation(len(combos))
    names = [combos[i] for i in order[: min(n, len(combos))]]
    extra = n - len(names)
    for i in range(extra):  # very large collaboratives: numbered campuses keep names unique
        names.append(f"{combos[order[i % len(combos)]]} Campus {i // len(combos) + 2}")
    return names


# ---------------------------------------------------------------------------------------------
# simulation


def simulate_collaborative(
    *,
    seed: int = DEFAULT_SEED,
    sites: int = 57,
    start: str = "2016-01",
    months: int = 84,
    scale: float = 1.0,
    episodes_per_site_month: float | None = None,
    recognition_expansion: bool = True,
    true_effects: dict | None = None,
    progress: Callable[[str], None] | None = None,
    scenario: str | None = None,
) -> SimulatedCollaborative:
    """Simulate a synthetic IPSO collaborative with known true effects (see the module docstring).

    Parameters
    ----------
    seed: random seed (same seed and arguments give identical tables and files).
    sites: number of hospitals (site ids ``S01``..).
    start: first calendar month, ``YYYY-MM``.
    months: study length in months.
    scale: multiplies every site's admissions and hence episode volume (benchmarks: 15 -> 1M+).
    episodes_per_site_month: if given, every site has this expected number of (counterfactual,
        pre-expansion) episodes per month instead of bed-driven volumes.
    recognition_expansion: if False, go-live recognises no extra episodes.
    true_effects: overrides of :data:`DEFAULT_EFFECTS` (e.g. ``{"post_direct_rr": 1.0}``) and of
        the scenario parameters :data:`SCENARIO_DEFAULTS` (effect dynamics, site-heterogeneous
        direct effects, calendar shocks).
    progress: optional callback called with a stage name after each stage.
    scenario: a named scenario of :data:`SCENARIOS` (its overrides come first; ``true_effects``
        may refine them). truth.json then has a ``scenario`` block with the event-time truth.
    """
    if int(sites) < 1:
        raise ValueError(f"sites must be >= 1, got {sites}")
    if int(months) < 1:
        raise ValueError(f"months must be >= 1, got {months}")
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    if episodes_per_site_month is not None and not episodes_per_site_month > 0:
        raise ValueError(f"episodes_per_site_month must be > 0, got {episodes_per_site_month}")
    start_month = _parse_start(start)
    if scenario is not None:
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r}; known: {sorted(SCENARIOS)}")
        true_effects = {**copy.deepcopy(SCENARIOS[scenario]), **(true_effects or {})}
    params, overrides = _merge_effects(true_effects)
    if not recognition_expansion:
        params["recognition_expansion"] = 0.0
    step = progress or (lambda name: None)
    K, M = int(sites), int(months)

    site = _simulate_sites(seed, K, M, start_month, params, episodes_per_site_month)
    step("sites")
    sm = _simulate_site_months(seed, site, K, M, start_month, params, scale)
    step("site-months")
    ep = _simulate_episodes(seed, site, sm, start_month, params)
    step("episodes")
    episodes, latent = _assemble_episodes(seed, site, ep)
    step("tables")
    sites_df = pd.DataFrame(
        {
            "site_id": site["site_id"],
            "site_name": site["site_name"],
            "go_live": pd.to_datetime(site["go_live"]).astype("datetime64[ns]"),
            "wave": site["wave"].astype(np.int64),
            "region": site["region"],
            "beds": site["beds"].astype(np.int64),
        }
    )
    site_months = pd.DataFrame(
        {
            "site_id": np.asarray(site["site_id"])[sm["site"]],
            "month": pd.to_datetime(sm["month"]).astype("datetime64[ns]"),
            "admissions": sm["admissions"].astype(np.int64),
        }
    )
    latent_sm = pd.DataFrame(
        {
            "site_id": site_months["site_id"],
            "month": site_months["month"],
            "event_month": sm["event_month"],
            "admissions": sm["admissions"],
            "expected_episodes_counterfactual": sm["lam_base"],
            "expected_episodes_actual": sm["lam_base"] + sm["lam_extra"],
            "base_episodes": sm["n_base"],
            "expansion_episodes": sm["n_extra"],
        }
    )
    truth = _truth(
        seed=seed, K=K, M=M, start=str(start_month), scale=scale,
        episodes_per_site_month=episodes_per_site_month, recognition_expansion=recognition_expansion,
        params=params, overrides=overrides, site=site, latent=latent, latent_sm=latent_sm,
        episodes=episodes,
    )
    if _scenario_active(params, scenario):
        truth["scenario"] = _jsonable(_scenario_truth(scenario, params, site, latent, latent_sm))
    step("truth")
    return SimulatedCollaborative(episodes, sites_df, site_months, truth, latent, latent_sm)


def _simulate_sites(seed, K, M, start_month, params, episodes_per_site_month) -> dict:
    rng = _rng(seed, "sites")
    width = max(2, len(str(K)))
    site_id = [f"S{i + 1:0{width}d}" for i in range(K)]
    names = _site_names(K, rng)
    lo, hi = params["beds_range"]
    beds = np.clip(
        np.round(params["beds_median"] * np.exp(params["beds_log_sd"] * rng.standard_normal(K))), lo, hi
    ).astype(int)
    region = np.asarray(REGIONS)[rng.integers(0, len(REGIONS), K)]
    fr = np.asarray(params["wave_fractions"], dtype=float)
    n_waves = len(fr)
    perm = rng.permutation(K)
    wave = np.empty(K, dtype=int)
    wave[perm] = 1 + (np.arange(K) * n_waves) // K
    go_idx_by_wave = np.clip(np.round(fr * M).astype(int), min(1, M - 1), max(M - 1, 0))
    go_idx = go_idx_by_wave[wave - 1]
    go_live = (start_month + go_idx).astype("datetime64[D]")
    rate = params["sepsis_rate_per_1000_median"] * np.exp(
        params["sepsis_rate_log_sd"] * rng.standard_normal(K)
    )
    adm_mean = params["admissions_per_bed_month"] * beds
    if episodes_per_site_month is not None:
        rate = 1000.0 * float(episodes_per_site_month) / adm_mean
    mort_re = params["site_effect_sd"] * rng.standard_normal(K)
    proc_re = params["process_site_logit_sd"] * rng.standard_normal((K, 3))
    time_re = params["time_site_log_sd"] * rng.standard_normal((K, 2))
    los_re = params["los_site_log_sd"] * rng.standard_normal(K)
    # scenario: site-specific direct effect deviations (own stream: other draws unchanged)
    direct_re = params["post_direct_rr_site_sd"] * _rng(seed, "direct-effect-sites").standard_normal(K)
    return {
        "site_id": site_id, "site_name": names, "beds": beds, "region": region, "wave": wave,
        "go_idx": go_idx, "go_live": go_live, "rate": rate, "adm_mean": adm_mean,
        "mort_re": mort_re, "proc_re": proc_re, "time_re": time_re, "los_re": los_re,
        "direct_re": direct_re,
    }


def _simulate_site_months(seed, site, K, M, start_month, params, scale) -> dict:
    rng_a = _rng(seed, "admissions")
    rng_v = _rng(seed, "volumes")
    s = np.repeat(np.arange(K), M)
    m = np.tile(np.arange(M), K)
    month = start_month + m
    cal = month.astype(int) % 12  # 0 = January
    winter = np.cos(2 * np.pi * cal / 12.0)
    years = (m + 0.5) / 12.0
    adm_mu = (
        site["adm_mean"][s] * scale * (1 + params["admissions_winter_amplitude"] * winter)
        * (1 + params["admissions_trend_per_year"]) ** years
    )
    shock_adm = _shock_factor(m, params, "admissions_rr")
    if shock_adm is not None:
        adm_mu = adm_mu * shock_adm
    admissions = rng_a.poisson(adm_mu)
    lam_base = admissions * site["rate"][s] / 1000.0 * (1 + params["sepsis_winter_amplitude"] * winter)
    shock_rate = _shock_factor(m, params, "sepsis_rate_rr")
    if shock_rate is not None:
        lam_base = lam_base * shock_rate
    event_month = m - site["go_idx"][s]
    ramp_mid = _effect_path(event_month + 0.5, params) * (event_month >= 0)
    lam_extra = lam_base * params["recognition_expansion"] * ramp_mid
    n_base = rng_v.poisson(lam_base)
    n_extra = rng_v.poisson(lam_extra)
    return {
        "site": s, "m": m, "month": month.astype("datetime64[D]"), "admissions": admissions,
        "lam_base": lam_base, "lam_extra": lam_extra, "n_base": n_base, "n_extra": n_extra,
        "event_month": event_month,
    }


def _choice(rng: np.random.Generator, probs_by_row: np.ndarray) -> np.ndarray:
    """Row-wise categorical draw from a (n, k) probability matrix."""
    u = rng.random(probs_by_row.shape[0])
    cum = np.cumsum(probs_by_row, axis=1)
    cum[:, -1] = 1.0 + 1e-12
    return (u[:, None] > cum).sum(axis=1)


def _simulate_episodes(seed, site, sm, start_month, params) -> dict:
    """Per-episode arrays (actual world and counterfactual), sorted by site and T0."""
    # ---- which site-month, timing ------------------------------------------------------------
    n_sm = sm["n_base"] + sm["n_extra"]
    sm_idx = np.repeat(np.arange(len(n_sm)), n_sm)
    # expansion flag: within each site-month the first n_base draws are base episodes
    offset_in_sm = np.arange(len(sm_idx)) - np.repeat(np.cumsum(n_sm) - n_sm, n_sm)
    is_exp = offset_in_sm >= sm["n_base"][sm_idx]
    rng_t = _rng(seed, "t0")
    month_start = sm["month"][sm_idx].astype("datetime64[m]").astype(np.int64)
    next_month = (sm["month"][sm_idx].astype("datetime64[M]") + 1).astype("datetime64[m]").astype(np.int64)
    t0 = month_start + np.floor(rng_t.random(len(sm_idx)) * (next_month - month_start)).astype(np.int64)
    s = sm["site"][sm_idx]
    order = np.lexsort((t0, s))
    sm_idx, is_exp, t0, s = sm_idx[order], is_exp[order], t0[order], s[order]
    n = len(t0)

    start_min = start_month.astype("datetime64[m]").astype(np.int64)
    go_min = site["go_live"].astype("datetime64[m]").astype(np.int64)[s]
    years = (t0 - start_min) / (MINUTES_PER_DAY * DAYS_PER_YEAR)
    months_since = (t0 - go_min) / (MINUTES_PER_DAY * DAYS_PER_MONTH)
    ramp = _effect_path(months_since, params) * (months_since >= 0)

    # ---- case mix -------------------------------------------------------------------------------
    rng = _rng(seed, "casemix")
    settings = list(ONSET_SETTINGS)
    p_base = np.array([params["onset_setting_probs"][k] for k in settings])
    p_exp = np.array([params["expansion_onset_setting_probs"][k] for k in settings])
    probs = np.where(is_exp[:, None], p_exp / p_exp.sum(), p_base / p_base.sum())
    setting = _choice(rng, probs)
    is_ed = setting == 0
    ho_p = np.array([params["hospital_onset_prob"][k] for k in settings])[setting]
    hospital_onset = rng.random(n) < ho_p
    # arrival -> T0 gap in minutes: ED ~ 1.5 h, other community onsets ~ 6 h, hospital onset > 48 h
    z_gap = rng.standard_normal(n)
    gap_ed = np.exp(np.log(90.0) + 0.7 * z_gap)
    gap_nonho = np.exp(np.log(360.0) + 0.9 * z_gap)
    gap_ho = 48 * 60 + 1 + rng.exponential(5 * MINUTES_PER_DAY, n)
    gap = np.where(is_ed, gap_ed, np.where(hospital_onset, gap_ho, gap_nonho))
    gap = np.where(hospital_onset, np.minimum(gap, 60 * MINUTES_PER_DAY), np.clip(gap, 5, 47 * 60))
    gap = np.round(gap).astype(np.int64)

    ccc_p = np.array([params["ccc_any_prob"][k] for k in settings])[setting]
    ccc_p = np.where(is_exp, ccc_p * params["expansion_ccc_multiplier"], ccc_p)
    ccc_any = rng.random(n) < ccc_p
    onc = (setting == 3) | (setting == 4)
    ccc_count = np.where(ccc_any, 1 + rng.poisson(np.where(onc, 1.2, 0.8)), 0)
    ccc_count = np.minimum(ccc_count, 20).astype(np.int64)
    ip = params["immunocompromised_prob"]
    imm_p = np.where(
        setting == 3, ip["heme_onc"], np.where(setting == 4, ip["transplant"], np.where(ccc_any, ip["ccc"], ip["no_ccc"]))
    )
    immunocompromised = rng.random(n) < imm_p
    crit_p = np.array([params["critical_prob"][k] for k in settings])[setting]
    crit_p = np.where(ccc_count >= 2, np.minimum(crit_p * 1.1, 0.95), crit_p)
    crit_p = np.where(is_exp, crit_p * params["expansion_critical_multiplier"], crit_p)
    critical = rng.random(n) < crit_p

    # ---- patients (repeat episodes), age and sex ----------------------------------------------
    rng_p = _rng(seed, "patients")
    site_start = np.searchsorted(s, s, side="left")
    pos = np.arange(n) - site_start
    repeat = (rng_p.random(n) < params["repeat_patient_share"]) & (pos > 0)
    ref = np.arange(n)
    ref[repeat] = site_start[repeat] + np.floor(rng_p.random(repeat.sum()) * pos[repeat]).astype(np.int64)
    while True:  # pointer jumping to the first episode of each patient
        nxt = ref[ref]
        if np.array_equal(nxt, ref):
            break
        ref = nxt
    infant = rng_p.random(n) < params["infant_share"]
    age_fresh = np.where(infant, rng_p.random(n), 1.0 + 20.0 * rng_p.beta(1.3, 2.3, n))
    sex_fresh = _choice(rng_p, np.tile([0.46, 0.53, 0.01], (n, 1)))
    age = age_fresh[ref] + (t0 - t0[ref]) / (MINUTES_PER_DAY * DAYS_PER_YEAR)
    too_old = age > 20.999
    ref = np.where(too_old, np.arange(n), ref)
    age = np.where(too_old, age_fresh, age)
    age = np.clip(np.floor(age * 100) / 100, 0.0, 21.0)
    sex = sex_fresh[ref]

    # ---- processes (common random numbers) -----------------------------------------------------
    rng_q = _rng(seed, "processes")
    proc_names = ("screen_positive", "huddle", "order_set")
    proc_act, proc_cf, proc_p_act, proc_p_cf = {}, {}, {}, {}
    for j, name in enumerate(proc_names):
        base = logit(params["process_pre_prob"][name]) + site["proc_re"][s, j] + params["process_trend_logit_per_year"] * years
        pa = expit(base + params["process_post_logit_shift"][name] * ramp)
        pc = expit(base)
        u = rng_q.random(n)
        proc_act[name], proc_cf[name] = u < pa, u < pc
        proc_p_act[name], proc_p_cf[name] = pa, pc

    rng_x = _rng(seed, "times")
    q_pre = params["treatment_before_t0_prob"]
    cap = params["time_cap_min"]
    times = {}
    for j, (name, med_key, ratio_key, given_key) in enumerate(
        (
            ("bolus", "bolus_median_min", "bolus_time_post_ratio", "bolus_given_prob"),
            ("antibiotic", "antibiotic_median_min", "antibiotic_time_post_ratio", "antibiotic_given_prob"),
        )
    ):
        gp = np.where(critical, params[given_key]["critical"], params[given_key]["not_critical"])
        given = rng_x.random(n) < gp
        before = rng_x.random(n) < q_pre
        u_before = rng_x.random(n)
        z = rng_x.standard_normal(n)
        mu_cf = (
            np.log(params[med_key]) + site["time_re"][s, j] + params["time_critical_log_shift"] * critical
            + np.log1p(params["time_trend_per_year"]) * years
        )
        mu_act = mu_cf + np.log(params[ratio_key]) * ramp
        sd = params["time_log_sd"]
        before_min = -np.floor(u_before * np.minimum(gap, 120)).astype(float)
        t_act = np.where(before, before_min, np.minimum(np.round(np.exp(mu_act + sd * z)), cap))
        t_cf = np.where(before, before_min, np.minimum(np.round(np.exp(mu_cf + sd * z)), cap))
        t_act = np.where(given, t_act, np.nan)
        t_cf = np.where(given, t_cf, np.nan)
        window = 60.0 if name == "bolus" else 180.0
        p_win_act = gp * (q_pre + (1 - q_pre) * norm.cdf((np.log(window) - mu_act) / sd))
        p_win_cf = gp * (q_pre + (1 - q_pre) * norm.cdf((np.log(window) - mu_cf) / sd))
        times[name] = {"act": t_act, "cf": t_cf, "p_win_act": p_win_act, "p_win_cf": p_win_cf}

    # ---- mortality (log-risk) -------------------------------------------------------------------
    cm, pr = params["casemix_rr"], params["process_rr"]
    setting_names = np.asarray(settings)[setting]
    age_band = np.where(age < 1, "<1", np.where(age < 5, "1-4", np.where(age < 13, "5-12", "13+")))
    eta_cm = (
        np.log(params["baseline_sam30"])
        + np.log(cm["critical_sepsis"]) * critical
        + np.log(cm["ccc_per_condition"]) * np.minimum(ccc_count, cm["ccc_cap"])
        + np.log(cm["immunocompromised"]) * immunocompromised
        + np.log(cm["hospital_onset"]) * hospital_onset
    )
    for k in settings[1:]:
        eta_cm = eta_cm + np.log(cm[f"onset_{k}"]) * (setting_names == k)
    for band in ("<1", "5-12", "13+"):
        eta_cm = eta_cm + np.log(cm[f"age_{band}"]) * (age_band == band)
    eta_site_time = site["mort_re"][s] + np.log(params["secular_trend_rr_per_year"]) * years
    shock_mort = _shock_factor(sm["m"][sm_idx], params, "mortality_rr")
    if shock_mort is not None:  # calendar shock: both worlds
        eta_site_time = eta_site_time + np.log(shock_mort)

    def eta_process(t_abx, t_bolus, proc):
        hours = np.where(np.isnan(t_abx), pr["antibiotic_hours_cap"], np.clip(t_abx / 60.0, 0, pr["antibiotic_hours_cap"]))
        fluid60 = ~np.isnan(t_bolus) & (np.nan_to_num(t_bolus, nan=np.inf) <= 60)
        return (
            np.log(pr["antibiotic_per_hour"]) * hours
            + np.log(pr["fluid_60"]) * fluid60
            + np.log(pr["order_set"]) * proc["order_set"]
            + np.log(pr["screen_positive"]) * proc["screen_positive"]
            + np.log(pr["huddle"]) * proc["huddle"]
        )

    eta_act = eta_cm + eta_site_time + eta_process(times["antibiotic"]["act"], times["bolus"]["act"], proc_act) + np.log(params["post_direct_rr"]) * ramp
    if params["post_direct_rr_site_sd"] > 0:  # scenario: site-specific direct effect
        eta_act = eta_act + site["direct_re"][s] * ramp
    eta_cf = eta_cm + eta_site_time + eta_process(times["antibiotic"]["cf"], times["bolus"]["cf"], proc_cf)
    p30_act = np.minimum(params["risk_cap"], np.exp(eta_act))
    p30_cf = np.minimum(params["risk_cap"], np.exp(eta_cf))
    p30_casemix = np.minimum(params["risk_cap"], np.exp(eta_cm + eta_site_time))

    rng_d = _rng(seed, "deaths")
    u_death = rng_d.random(n)
    u_early = rng_d.random(n)
    u_when = rng_d.random(n)
    u_late = rng_d.random(n)
    died30 = u_death < p30_act
    early = u_early < params["sam3_share_of_sam30"]
    latest_tx = np.fmax(np.nan_to_num(times["bolus"]["act"], nan=0.0), np.nan_to_num(times["antibiotic"]["act"], nan=0.0))
    latest_tx = np.maximum(latest_tx, 0.0)
    lo = latest_tx + 5
    death_off_early = lo + np.floor(u_when * (3 * MINUTES_PER_DAY - lo))
    death_off_late = 3 * MINUTES_PER_DAY + 1 + np.floor(u_when * (27 * MINUTES_PER_DAY - 2))
    death_off = np.where(early, death_off_early, death_off_late)

    # ---- length of stay ---------------------------------------------------------------------------
    rng_l = _rng(seed, "los")
    lt = params["los_log_terms"]
    mu_los = (
        np.log(params["los_median_days"]) + site["los_re"][s]
        + lt["critical_sepsis"] * critical + lt["ccc_per_condition"] * np.minimum(ccc_count, 3)
        + lt["immunocompromised"] * immunocompromised + lt["hospital_onset"] * hospital_onset
        + np.log1p(params["los_trend_per_year"]) * years
    )
    for k in settings[1:]:
        mu_los = mu_los + lt[f"onset_{k}"] * (setting_names == k)
    mu_los_act = mu_los + np.log(params["los_post_rr"]) * ramp
    z_los = rng_l.standard_normal(n)
    los_t0_days = np.exp(mu_los_act + params["los_log_sd"] * z_los)
    los_off = np.maximum(np.round(los_t0_days * MINUTES_PER_DAY), np.maximum(latest_tx + 60, 120))
    discharge_off = np.where(died30, death_off, los_off)
    late_death = ~died30 & (los_off > 30 * MINUTES_PER_DAY) & (u_late < params["late_death_prob_if_stay_over_30d"])
    death_any = died30 | late_death

    # expected hospital days (arrival -> discharge) under each world, from the model
    sd_l = params["los_log_sd"]
    mean_death_days = params["sam3_share_of_sam30"] * 1.5 + (1 - params["sam3_share_of_sam30"]) * 16.5
    gap_days = gap / MINUTES_PER_DAY
    e_los_act = gap_days + (1 - p30_act) * np.exp(mu_los_act + sd_l**2 / 2) + p30_act * mean_death_days
    e_los_cf = gap_days + (1 - p30_cf) * np.exp(mu_los + sd_l**2 / 2) + p30_cf * mean_death_days

    # ---- ICU days --------------------------------------------------------------------------------
    rng_i = _rng(seed, "icu")
    stay_days = (discharge_off + gap) / MINUTES_PER_DAY
    t0_to_dis_days = discharge_off / MINUTES_PER_DAY
    frac = np.where(critical, rng_i.beta(3.0, 2.0, n), rng_i.beta(1.0, 4.0, n))
    any_icu = critical | (setting == 2) | (rng_i.random(n) < params["icu_any_prob_not_critical"])
    icu = np.where(any_icu, frac * t0_to_dis_days, 0.0)
    icu = np.minimum(np.floor(icu * 100) / 100, np.floor(stay_days * 100) / 100)

    return {
        "s": s, "sm_idx": sm_idx, "is_exp": is_exp, "t0": t0, "gap": gap, "ref": ref,
        "setting": setting, "age": age, "sex": sex, "ccc_count": ccc_count,
        "immunocompromised": immunocompromised, "critical": critical, "hospital_onset": hospital_onset,
        "proc_act": proc_act, "proc_cf": proc_cf, "proc_p_act": proc_p_act, "proc_p_cf": proc_p_cf,
        "times": times, "discharge_off": discharge_off, "death": death_any, "died30": died30,
        "icu": icu, "ramp": ramp, "months_since": months_since,
        "event_month": sm["event_month"][sm_idx], "p30_act": p30_act, "p30_cf": p30_cf,
        "p30_casemix": p30_casemix, "e_los_act": e_los_act, "e_los_cf": e_los_cf,
    }


def _assemble_episodes(seed, site, ep) -> tuple[pd.DataFrame, pd.DataFrame]:
    n = len(ep["t0"])
    t0 = ep["t0"]
    arrival = t0 - ep["gap"]
    discharge = t0 + ep["discharge_off"].astype(np.int64)

    # patients: a repeat episode must start after the same patient's previous discharge
    ref = ep["ref"].astype(np.int64)
    next_label = n
    for _ in range(50):
        order = np.lexsort((arrival, ref))
        r, a, d = ref[order], arrival[order], discharge[order]
        clash = np.zeros(n, dtype=bool)
        clash[1:] = (r[1:] == r[:-1]) & (a[1:] <= d[:-1])
        if not clash.any():
            break
        k = int(clash.sum())
        ref[order[clash]] = next_label + np.arange(k)  # a new patient
        next_label += k
    rng_p = _rng(seed, "patients-ids")
    roots, inverse = np.unique(ref, return_inverse=True)
    codes = rng_p.permutation(len(roots))
    width = max(7, len(str(len(roots))))
    patient_id = _ids("P", codes[inverse], width)
    episode_id = _ids("E", np.arange(1, n + 1), max(7, len(str(n))))

    def ts(minutes: np.ndarray) -> np.ndarray:
        return minutes.astype("datetime64[m]").astype("datetime64[ns]")

    def ts_opt(offset: np.ndarray) -> pd.Series:
        ok = ~np.isnan(offset)
        out = np.full(n, np.datetime64("NaT"), dtype="datetime64[ns]")
        out[ok] = ts(t0[ok] + offset[ok].astype(np.int64))
        return out

    death_time = np.where(ep["death"], ts(discharge), np.datetime64("NaT"))
    episodes = pd.DataFrame(
        {
            "episode_id": episode_id.astype(object),
            "patient_id": patient_id.astype(object),
            "site_id": np.asarray(site["site_id"], dtype=object)[ep["s"]],
            "arrival_time": ts(arrival),
            "time_zero": ts(t0),
            "discharge_time": ts(discharge),
            "death_time": death_time.astype("datetime64[ns]"),
            "onset_setting": np.asarray(ONSET_SETTINGS, dtype=object)[ep["setting"]],
            "age_years": ep["age"].astype(float),
            "sex": np.asarray(["F", "M", "U"], dtype=object)[ep["sex"]],
            "ccc_count": ep["ccc_count"].astype(np.int64),
            "immunocompromised": ep["immunocompromised"].astype(bool),
            "critical_sepsis": ep["critical"].astype(bool),
            "screen_positive": ep["proc_act"]["screen_positive"].astype(bool),
            "huddle": ep["proc_act"]["huddle"].astype(bool),
            "order_set": ep["proc_act"]["order_set"].astype(bool),
            "first_bolus_time": ts_opt(ep["times"]["bolus"]["act"]),
            "first_antibiotic_time": ts_opt(ep["times"]["antibiotic"]["act"]),
            "icu_days": ep["icu"].astype(float),
        }
    )
    episodes = episodes[[f.name for f in EPISODE_FIELDS]]
    tb, ta = ep["times"]["bolus"], ep["times"]["antibiotic"]
    latent = pd.DataFrame(
        {
            "episode_id": episodes["episode_id"],
            "is_expansion": ep["is_exp"],
            "event_month": ep["event_month"],
            "months_since_go_live": ep["months_since"],
            "ramp": ep["ramp"],
            "p_sam30_actual": ep["p30_act"],
            "p_sam30_counterfactual": ep["p30_cf"],
            "p_sam30_casemix_only": ep["p30_casemix"],
            "died_sam30": ep["died30"],
            "minutes_to_bolus_counterfactual": tb["cf"],
            "minutes_to_antibiotic_counterfactual": ta["cf"],
            "screen_positive_counterfactual": ep["proc_cf"]["screen_positive"],
            "huddle_counterfactual": ep["proc_cf"]["huddle"],
            "order_set_counterfactual": ep["proc_cf"]["order_set"],
            "p_bundle_actual": _p_recognised(ep["proc_p_act"]) * tb["p_win_act"] * ta["p_win_act"],
            "p_bundle_counterfactual": _p_recognised(ep["proc_p_cf"]) * tb["p_win_cf"] * ta["p_win_cf"],
            "expected_hospital_days_actual": ep["e_los_act"],
            "expected_hospital_days_counterfactual": ep["e_los_cf"],
            "minutes_to_bolus_actual": tb["act"],
            "minutes_to_antibiotic_actual": ta["act"],
        }
    )
    return episodes, latent


def _ids(prefix: str, numbers: np.ndarray, width: int) -> np.ndarray:
    """Zero-padded string identifiers, e.g. ``P0001234`` (object array; empty input allowed)."""
    if len(numbers) == 0:
        return np.array([], dtype=object)
    return np.char.add(prefix, np.char.zfill(numbers.astype(str), width)).astype(object)


def _p_recognised(p: dict) -> np.ndarray:
    return 1 - (1 - p["screen_positive"]) * (1 - p["huddle"]) * (1 - p["order_set"])


# ---------------------------------------------------------------------------------------------
# truth


def _ratio(num: float, den: float) -> float | None:
    return float(num / den) if den > 0 else None


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        return float(x)
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x


def _why_not(key: str) -> str:
    """Reason an estimand is None (short or degenerate simulations)."""
    if key.startswith(("recognition", "recognised")):
        return "no site-months in event month 12 (study too short after go-live)"
    if "12m" in key:
        return "no episodes in event month 12 (study too short after go-live)"
    if key.endswith("_pre") or key.startswith("crude"):
        return "needs pre-go-live and post-go-live episodes"
    return "no post-go-live episodes"


def _time_ratios(act: np.ndarray, cf: np.ndarray) -> dict:
    a, c = act[~np.isnan(act)], cf[~np.isnan(cf)]
    if len(a) == 0 or len(c) == 0:
        return {"median": None, "mean": None}
    return {"median": _ratio(np.median(a), np.median(c)), "mean": _ratio(a.mean(), c.mean())}


#: Per-child process truths (keys added by :func:`_process_truths`).
_PROCESS_TRUTH_DEFINITIONS = {
    "screen_positive_rr_12m": "mean model probability of a positive screen over event-month-12 episodes, "
    "actual / counterfactual (same episodes): ratio of proportions; huddle_rr_12m and order_set_rr_12m alike",
    "screen_positive_rr_12m_population": "actual world's event-month-12 episodes vs the counterfactual world's "
    "(base) episodes; huddle and order_set alike",
    "minutes_to_bolus_ratio_12m_expected": "ratio of the model's median minutes to first bolus (a mixture of "
    "the episodes' log-normal times and treatments before T0) over event-month-12 episodes given a bolus, "
    "actual / counterfactual: minutes_to_bolus_ratio_12m without the sampling noise of realised medians; "
    "_population_expected and the antibiotic keys alike",
}


def _process_truths(params, site, latent, episodes, start, m12, base12) -> dict:
    """Same-episode (per-child) and population ratios of process probabilities at event month 12,
    from the model probabilities (recomputed here from the process model; data unchanged)."""
    names = ("screen_positive", "huddle", "order_set")
    out: dict[str, float | None] = {}
    if not m12.any():
        return {f"{k}_rr_12m{sfx}": None for k in names for sfx in ("", "_population")}
    t0 = episodes["time_zero"].to_numpy().astype("datetime64[m]").astype(np.int64)
    start_min = np.datetime64(str(start)[:7], "M").astype("datetime64[m]").astype(np.int64)
    years = (t0 - start_min) / (MINUTES_PER_DAY * DAYS_PER_YEAR)
    s = pd.Categorical(episodes["site_id"], categories=site["site_id"]).codes
    ramp = latent["ramp"].to_numpy()
    for j, name in enumerate(names):
        base = logit(params["process_pre_prob"][name]) + site["proc_re"][s, j] + params["process_trend_logit_per_year"] * years
        pa = expit(base + params["process_post_logit_shift"][name] * ramp)
        pc = expit(base)
        out[f"{name}_rr_12m"] = _ratio(pa[m12].sum(), pc[m12].sum())
        out[f"{name}_rr_12m_population"] = _ratio(pa[m12].mean(), pc[base12].mean()) if base12.any() else None
    return out


def _mixture_median(mu: np.ndarray, sd: float, q_before: float) -> float | None:
    """Median of a mixture of episodes' times: each before T0 with probability `q_before`
    (negative: below every time after T0), otherwise log-normal(mu_i, sd). Bisection on log m."""
    if len(mu) == 0:
        return None
    target = (0.5 - q_before) / (1 - q_before)  # share of post-T0 times below the median
    lo, hi = float(mu.min()) - 10 * sd, float(mu.max()) + 10 * sd
    for _ in range(100):
        mid = (lo + hi) / 2
        if norm.cdf((mid - mu) / sd).mean() < target:
            lo = mid
        else:
            hi = mid
    return float(np.exp((lo + hi) / 2))


def _time_truths(params, site, latent, episodes, start, m12, base12) -> dict:
    """Model-based (expected) ratios of median minutes to treatment at event month 12, without
    the sampling noise of one month's realised medians: ``*_12m_expected`` (same episodes) and
    ``*_12m_population_expected`` (actual month-12 episodes vs counterfactual base episodes)."""
    out: dict[str, float | None] = {}
    t0 = episodes["time_zero"].to_numpy().astype("datetime64[m]").astype(np.int64)
    start_min = np.datetime64(str(start)[:7], "M").astype("datetime64[m]").astype(np.int64)
    years = (t0 - start_min) / (MINUTES_PER_DAY * DAYS_PER_YEAR)
    s = pd.Categorical(episodes["site_id"], categories=site["site_id"]).codes
    crit = episodes["critical_sepsis"].to_numpy(dtype=bool)
    ramp = latent["ramp"].to_numpy()
    for j, (name, med_key, ratio_key) in enumerate((
            ("bolus", "bolus_median_min", "bolus_time_post_ratio"),
            ("antibiotic", "antibiotic_median_min", "antibiotic_time_post_ratio"))):
        key = f"minutes_to_{name}_ratio_12m"
        given = latent[f"minutes_to_{name}_actual"].notna().to_numpy()
        mu_cf = (np.log(params[med_key]) + site["time_re"][s, j] + params["time_critical_log_shift"] * crit
                 + np.log1p(params["time_trend_per_year"]) * years)
        mu_act = mu_cf + np.log(params[ratio_key]) * ramp
        args = (params["time_log_sd"], params["treatment_before_t0_prob"])
        a = _mixture_median(mu_act[m12 & given], *args)
        c = _mixture_median(mu_cf[m12 & given], *args)
        c_pop = _mixture_median(mu_cf[base12 & given], *args)
        out[f"{key}_expected"] = _ratio(a, c) if a is not None and c is not None else None
        out[f"{key}_population_expected"] = _ratio(a, c_pop) if a is not None and c_pop is not None else None
    return out


def _truth(*, seed, K, M, start, scale, episodes_per_site_month, recognition_expansion, params,
           overrides, site, latent, latent_sm, episodes) -> dict:
    L = latent
    e = L["event_month"].to_numpy()
    exp_flag = L["is_expansion"].to_numpy()
    m12 = e == 12
    post = e >= 0
    pre = e < 0
    pa, pc = L["p_sam30_actual"].to_numpy(), L["p_sam30_counterfactual"].to_numpy()
    s3 = params["sam3_share_of_sam30"]

    def std_rr(mask):
        return _ratio(pa[mask].sum(), pc[mask].sum()) if mask.any() else None

    base12 = m12 & ~exp_flag
    sm_e = latent_sm["event_month"].to_numpy()
    sm12 = sm_e == 12
    adm12 = latent_sm["admissions"].to_numpy()[sm12].sum()
    rec_act = latent_sm["expected_episodes_actual"].to_numpy()[sm12].sum()
    rec_cf = latent_sm["expected_episodes_counterfactual"].to_numpy()[sm12].sum()

    def pop_ratio(col_act, col_cf, mask_act, mask_cf):
        a, c = L[col_act].to_numpy()[mask_act], L[col_cf].to_numpy()[mask_cf]
        if len(a) == 0 or len(c) == 0:
            return None
        return _ratio(a.mean(), c.mean())

    bolus = _time_ratios(L["minutes_to_bolus_actual"].to_numpy()[m12], L["minutes_to_bolus_counterfactual"].to_numpy()[m12])
    abx = _time_ratios(L["minutes_to_antibiotic_actual"].to_numpy()[m12], L["minutes_to_antibiotic_counterfactual"].to_numpy()[m12])
    bolus_pop = _time_ratios(L["minutes_to_bolus_actual"].to_numpy()[m12], L["minutes_to_bolus_counterfactual"].to_numpy()[base12])
    abx_pop = _time_ratios(L["minutes_to_antibiotic_actual"].to_numpy()[m12], L["minutes_to_antibiotic_counterfactual"].to_numpy()[base12])
    crude_post = pa[post].mean() if post.any() else np.nan
    crude_pre = pa[pre].mean() if pre.any() else np.nan
    estimands = {
        "n_episodes_event_month_12": int(m12.sum()),
        "sam30_rr_12m": std_rr(m12),
        "sam3_rr_12m": std_rr(m12),  # SAM3 = fixed share x SAM30 per episode
        "sam30_rr_post": std_rr(post),
        "sam3_rr_post": std_rr(post),
        "sam30_rr_12m_base_episodes": std_rr(base12),
        "crude_sam30_ratio_post": _ratio(crude_post, crude_pre) if np.isfinite(crude_post) and np.isfinite(crude_pre) else None,
        "expected_sam30_per_episode_pre": float(crude_pre) if np.isfinite(crude_pre) else None,
        "expected_sam30_per_episode_post": float(crude_post) if np.isfinite(crude_post) else None,
        "expected_sam3_per_episode_pre": float(s3 * crude_pre) if np.isfinite(crude_pre) else None,
        "recognition_rr_12m": _ratio(rec_act, rec_cf),
        "recognised_per_1000_admissions_12m_actual": _ratio(1000 * rec_act, adm12),
        "recognised_per_1000_admissions_12m_counterfactual": _ratio(1000 * rec_cf, adm12),
        "bundle_rr_12m": pop_ratio("p_bundle_actual", "p_bundle_counterfactual", m12, m12) if m12.any() else None,
        "bundle_rr_12m_population": pop_ratio("p_bundle_actual", "p_bundle_counterfactual", m12, base12) if m12.any() else None,
        "bundle_share_12m_actual": float(L["p_bundle_actual"].to_numpy()[m12].mean()) if m12.any() else None,
        "bundle_share_12m_counterfactual": float(L["p_bundle_counterfactual"].to_numpy()[m12].mean()) if m12.any() else None,
        "los_ratio_12m": pop_ratio("expected_hospital_days_actual", "expected_hospital_days_counterfactual", m12, m12) if m12.any() else None,
        "los_ratio_12m_population": pop_ratio("expected_hospital_days_actual", "expected_hospital_days_counterfactual", m12, base12) if m12.any() else None,
        "minutes_to_bolus_ratio_12m": bolus["median"],
        "minutes_to_bolus_ratio_12m_mean": bolus["mean"],
        "minutes_to_bolus_ratio_12m_population": bolus_pop["median"],
        "minutes_to_antibiotic_ratio_12m": abx["median"],
        "minutes_to_antibiotic_ratio_12m_mean": abx["mean"],
        "minutes_to_antibiotic_ratio_12m_population": abx_pop["median"],
        "definitions": {
            "event_month": "calendar months from the site's go-live month to the T0 month (0 = go-live month)",
            "sam30_rr_12m": "sum of actual / sum of counterfactual model 30-day SAM probabilities over the same "
            "episodes in event month 12 (expansion episodes included): case-mix-standardised risk ratio",
            "sam3_rr_12m": "as sam30_rr_12m for 3-day SAM (= sam30 ratio: fixed 3-day share)",
            "sam30_rr_post": "as sam30_rr_12m over all post-go-live episodes (event month >= 0, ramp included)",
            "sam30_rr_12m_base_episodes": "as sam30_rr_12m, excluding recognition-expansion episodes",
            "crude_sam30_ratio_post": "expected deaths per episode, post (all sites' event month >= 0) over pre "
            "(event month < 0), actual world: includes expansion bias, secular trend and wave timing",
            "recognition_rr_12m": "expected episodes per 1,000 admissions in event month 12, actual / counterfactual",
            "bundle_rr_12m": "mean model probability of IPSO bundle compliance (recognised & bolus <= 60 min & "
            "antibiotic <= 180 min, analysis.derive) over event-month-12 episodes, actual / counterfactual processes",
            "*_population": "actual world's event-month-12 episodes vs counterfactual world's (base) episodes",
            "los_ratio_12m": "mean expected hospital days (arrival to discharge) per episode, actual / counterfactual, "
            "same episodes",
            "minutes_to_bolus_ratio_12m": "ratio of medians (actual / counterfactual, common random numbers) of "
            "minutes T0 to first bolus among event-month-12 episodes given a bolus; *_mean = ratio of means",
            "minutes_to_antibiotic_ratio_12m": "as minutes_to_bolus_ratio_12m for the first antibiotic",
        },
    }

    estimands.update(_process_truths(params, site, L, episodes, start, m12, base12))
    estimands.update(_time_truths(params, site, L, episodes, start, m12, base12))
    estimands["definitions"].update(_PROCESS_TRUTH_DEFINITIONS)
    estimands["not_estimable"] = {k: _why_not(k) for k, v in estimands.items() if v is None}

    # per-site truth
    site_codes = pd.Categorical(episodes["site_id"], categories=site["site_id"]).codes
    sums_a = np.bincount(site_codes[m12], weights=pa[m12], minlength=K)
    sums_c = np.bincount(site_codes[m12], weights=pc[m12], minlength=K)
    sites_truth = []
    for i in range(K):
        sites_truth.append(
            {
                "site_id": site["site_id"][i],
                "wave": int(site["wave"][i]),
                "go_live": str(site["go_live"][i]),
                "beds": int(site["beds"][i]),
                "sepsis_rate_per_1000_admissions": float(site["rate"][i]),
                "expected_admissions_per_month": float(site["adm_mean"][i] * scale),
                "sam30_log_rr_site_effect": float(site["mort_re"][i]),
                "sam30_rr_site_effect": float(np.exp(site["mort_re"][i])),
                "process_logit_site_effects": {
                    k: float(site["proc_re"][i, j]) for j, k in enumerate(("screen_positive", "huddle", "order_set"))
                },
                "time_log_site_effects": {"bolus": float(site["time_re"][i, 0]), "antibiotic": float(site["time_re"][i, 1])},
                "los_log_site_effect": float(site["los_re"][i]),
                "sam30_rr_12m": _ratio(sums_a[i], sums_c[i]) if sums_c[i] > 0 else None,
            }
        )
    waves = {}
    for w in sorted({int(x) for x in site["wave"]}):
        idx = [i for i in range(K) if site["wave"][i] == w]
        waves[str(w)] = {"go_live": str(site["go_live"][idx[0]]), "sites": [site["site_id"][i] for i in idx]}

    truth = {
        "generator": "analysis.simulate.simulate_collaborative",
        "call": {
            "seed": int(seed), "sites": K, "start": start, "months": M, "scale": float(scale),
            "episodes_per_site_month": episodes_per_site_month, "recognition_expansion": bool(recognition_expansion),
        },
        "overrides": overrides,
        "counts": {
            "episodes": len(episodes),
            "expansion_episodes": int(exp_flag.sum()),
            "patients": int(episodes["patient_id"].nunique()),
            "sites": K,
            "site_months": len(latent_sm),
            "in_hospital_deaths": int(episodes["death_time"].notna().sum()),
            "sam30_deaths": int(L["died_sam30"].sum()),
        },
        "mortality": {
            "model": "P(30-day in-hospital sepsis death) = min(risk_cap, exp(eta)); eta = log(baseline_sam30) + "
            "sum log casemix_rr + sum log process_rr + site effect + log(secular_trend_rr_per_year) x years "
            "since start + log(post_direct_rr) x ramp",
            "baseline_sam30": params["baseline_sam30"],
            "risk_cap": params["risk_cap"],
            "casemix_rr": params["casemix_rr"],
            "process_rr": params["process_rr"],
            "post_direct_rr": params["post_direct_rr"],
            "site_effect_sd": params["site_effect_sd"],
            "secular_trend_rr_per_year": params["secular_trend_rr_per_year"],
            "sam3_share_of_sam30": s3,
            "late_death_prob_if_stay_over_30d": params["late_death_prob_if_stay_over_30d"],
        },
        "ramp": {"shape": "linear: clip(months since go-live / ramp_months, 0, 1)", "ramp_months": params["ramp_months"]},
        "recognition_expansion": {
            "size": params["recognition_expansion"],
            "description": "extra episodes per site-month = base expected episodes x size x ramp (at mid-month), "
            "milder: onset mix expansion_onset_setting_probs, CCC probability x expansion_ccc_multiplier, "
            "critical probability x expansion_critical_multiplier",
        },
        "los": {
            "model": "survivors: T0-to-discharge days ~ lognormal(log(los_median_days) + los_log_terms + site "
            "effect + log(1 + los_trend_per_year) x years + log(los_post_rr) x ramp, los_log_sd); "
            "deaths: discharge = death; hospital days add the arrival-to-T0 gap",
            **{k: params[k] for k in ("los_median_days", "los_log_sd", "los_site_log_sd", "los_log_terms", "los_trend_per_year", "los_post_rr")},
        },
        "estimands": estimands,
        "parameters": {k: v for k, v in params.items() if k in DEFAULT_EFFECTS},
        "waves": waves,
        "sites": sites_truth,
    }
    return _jsonable(truth)


# ---------------------------------------------------------------------------------------------
# scenario truth (issue 12): event-time paths; only written when a scenario is active

EVENT_TIME_RANGE = (-12, 36)  # event months reported in truth["scenario"]["event_time_truth"]

_PATH_SHAPES = {
    "constant": "clip(m / ramp_months, 0, 1)",
    "growing": "min(m / dynamics_months, dynamics_cap)",
    "waning": "clip(m / ramp_months, 0, 1) * exp(-max(m - ramp_months, 0) / dynamics_months)",
}


def _scenario_truth(scenario, params, site, latent, latent_sm) -> dict:
    """Scenario parameters, the shape of the effect path and the true event-time path of the
    mortality and recognition estimands (event months -12..36)."""
    e_ep = latent["event_month"].to_numpy()
    pa = latent["p_sam30_actual"].to_numpy()
    pc = latent["p_sam30_counterfactual"].to_numpy()
    e_sm = latent_sm["event_month"].to_numpy()
    act = latent_sm["expected_episodes_actual"].to_numpy()
    cf = latent_sm["expected_episodes_counterfactual"].to_numpy()
    lo, hi = EVENT_TIME_RANGE
    ev = np.arange(lo, hi + 1)
    rows_sam, rows_rec, n_sites = [], [], []
    for e in ev:
        m, msm = e_ep == e, e_sm == e
        rows_sam.append(_ratio(pa[m].sum(), pc[m].sum()) if m.any() else None)
        rows_rec.append(_ratio(act[msm].sum(), cf[msm].sum()) if msm.any() else None)
        n_sites.append(int(latent_sm.loc[msm, "site_id"].nunique()))
    dyn = params["effect_dynamics"]
    d = params["dynamics_months"] or _DYNAMICS_MONTHS.get(dyn)
    path = _effect_path(np.maximum(ev + 0.5, 0.0), params) * (ev >= 0)
    return {
        "name": scenario,
        "parameters": {k: params[k] for k in SCENARIO_DEFAULTS},
        "effect_path": {
            "dynamics": dyn,
            "shape": f"every post-go-live change (log/logit scale) x path(m), m = months since go-live: "
            f"{_PATH_SHAPES[dyn]}",
            "ramp_months": params["ramp_months"],
            "dynamics_months": d,
            "dynamics_cap": params["dynamics_cap"],
            "direct_mortality_rr_at_mid_month": [float(params["post_direct_rr"] ** v) for v in path],
        },
        "site_direct_log_rr": {
            str(site["site_id"][i]): float(np.log(params["post_direct_rr"]) + site["direct_re"][i])
            for i in range(len(site["site_id"]))
        },
        "calendar_shocks": params["calendar_shocks"],
        "event_time_truth": {
            "definition": "sam30_rr: sum of actual / counterfactual model 30-day SAM risks over the episodes "
            "in that event month (as estimands.sam30_rr_12m); recognition_rr: expected episodes actual / "
            "counterfactual over the site-months in that event month (as recognition_rr_12m); path: the "
            "effect-path multiplier at mid-month",
            "event_month": ev.tolist(),
            "path": path.tolist(),
            "sam30_rr": rows_sam,
            "recognition_rr": rows_rec,
            "n_sites": n_sites,
        },
    }


# ---------------------------------------------------------------------------------------------
# expected-value panels (issue 12 validation): one rate outcome per site-month with the same effect
# path, site-heterogeneous effects and calendar shocks as the simulator, noise-free or Poisson


@dataclass
class SimulatedPanel:
    """Site-month panel: ``data`` (site_id, month, go_live_month, event_month, exposure, y, y0, y1)
    and ``truth`` (ratio of actual to counterfactual expected counts by event month)."""

    data: pd.DataFrame
    truth: pd.DataFrame
    params: dict

    def truth_at(self, e: int) -> float:
        return float(self.truth.set_index("event_month").loc[int(e), "rr"])

    def truth_between(self, first: int, last: int) -> float:
        d = self.data[(self.data["event_month"] >= first) & (self.data["event_month"] <= last)]
        return float(d["y1"].sum() / d["y0"].sum())


def simulate_panel(
    *,
    seed: int = DEFAULT_SEED,
    sites: int = 57,
    start: str = "2016-01",
    months: int = 84,
    expected_count: float = 1e6,
    noise: bool = False,
    scenario: str | None = None,
    true_effects: dict | None = None,
    site_trend_sd: float = 0.02,
    trend_per_year: float = -0.015,
) -> SimulatedPanel:
    """A site-month panel of one rate outcome (deaths-like) with known truth, for estimator checks.

    ``y0`` (counterfactual mean) = exposure x site rate x exp(site trend x years) x (1 + 0.15 cos
    winter) x calendar shocks (``admissions_rr`` on the exposure, ``sepsis_rate_rr`` x
    ``mortality_rr`` on the rate); ``y1 = y0 x RR_s ** path(event month + 0.5)`` with the
    simulator's :func:`_effect_path`, ``RR_s = post_direct_rr x exp(N(0, post_direct_rr_site_sd))``
    and the same waves. ``y`` = ``y1`` (``noise=False``, about ``expected_count`` per site-month)
    or Poisson(``y1``). Scenario and ``true_effects`` as in :func:`simulate_collaborative`."""
    if scenario is not None:
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r}; known: {sorted(SCENARIOS)}")
        true_effects = {**copy.deepcopy(SCENARIOS[scenario]), **(true_effects or {})}
    params, _ = _merge_effects(true_effects)
    K, M = int(sites), int(months)
    start_month = _parse_start(start)
    rng = _rng(seed, "panel")
    fr = np.asarray(params["wave_fractions"], dtype=float)
    wave = 1 + (rng.permutation(K) * len(fr)) // K
    go_idx = np.clip(np.round(fr * M).astype(int), 1, M - 1)[wave - 1]
    size = expected_count * np.exp(0.3 * rng.standard_normal(K))
    trend = trend_per_year + site_trend_sd * rng.standard_normal(K)
    log_rr = np.log(params["post_direct_rr"]) + params["post_direct_rr_site_sd"] * rng.standard_normal(K)
    s = np.repeat(np.arange(K), M)
    m = np.tile(np.arange(M), K)
    month = start_month + m
    winter = np.cos(2 * np.pi * (month.astype(int) % 12) / 12.0)
    years = (m + 0.5) / 12.0
    exposure = (1 + 0.10 * winter) * 1.01**years * 1e3
    rate = size[s] / 1e3 * np.exp(trend[s] * years) * (1 + 0.15 * winter)
    for key, target in (("admissions_rr", "exposure"), ("sepsis_rate_rr", "rate"), ("mortality_rr", "rate")):
        f = _shock_factor(m, params, key)
        if f is not None:
            if target == "exposure":
                exposure = exposure * f
            else:
                rate = rate * f
    e = m - go_idx[s]
    path = _effect_path(np.maximum(e + 0.5, 0.0), params) * (e >= 0)
    y0 = exposure * rate
    y1 = y0 * np.exp(log_rr[s] * path)
    y = _rng(seed, "panel-noise").poisson(y1).astype(float) if noise else y1
    data = pd.DataFrame(
        {
            "site_id": [f"P{i + 1:02d}" for i in s],
            "month": pd.to_datetime(month.astype("datetime64[D]")),
            "go_live_month": pd.to_datetime((start_month + go_idx[s]).astype("datetime64[D]")),
            "event_month": e,
            "exposure": exposure,
            "y": y,
            "y0": y0,
            "y1": y1,
        }
    )
    g = data.groupby("event_month")
    truth = pd.DataFrame({"rr": g["y1"].sum() / g["y0"].sum(), "n_sites": g.size()}).reset_index()
    return SimulatedPanel(data=data, truth=truth, params=params)


# ---------------------------------------------------------------------------------------------
# writing and CLI


def write_collaborative(sim: SimulatedCollaborative, out: Path | str) -> dict[str, Path]:
    """Write the extract layout (episodes.parquet, sites.csv, site_months.csv, truth.json) to `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "episodes": out / "episodes.parquet",
        "sites": out / SITES_FILE,
        "site_months": out / SITE_MONTHS_FILE,
        "truth": out / "truth.json",
    }
    sim.episodes[[f.name for f in EPISODE_FIELDS]].to_parquet(paths["episodes"], index=False, engine="pyarrow")
    sites = sim.sites[[f.name for f in SITE_FIELDS]].copy()
    sites["go_live"] = pd.to_datetime(sites["go_live"]).dt.strftime("%Y-%m-%d")
    sites.to_csv(paths["sites"], index=False, lineterminator="\n")
    sm = sim.site_months[[f.name for f in SITE_MONTH_FIELDS]].copy()
    sm["month"] = pd.to_datetime(sm["month"]).dt.strftime("%Y-%m")
    sm.to_csv(paths["site_months"], index=False, lineterminator="\n")
    paths["truth"].write_text(json.dumps(sim.truth, indent=2, sort_keys=False) + "\n")
    return paths


def _summary_dict(sim: SimulatedCollaborative) -> dict[str, Any]:
    t = sim.truth
    est = t["estimands"]
    ep = sim.episodes
    return {
        "episodes": t["counts"]["episodes"],
        "patients": t["counts"]["patients"],
        "sites": t["counts"]["sites"],
        "site_months": t["counts"]["site_months"],
        "first_t0": str(ep["time_zero"].min()) if len(ep) else None,
        "last_t0": str(ep["time_zero"].max()) if len(ep) else None,
        "in_hospital_deaths": t["counts"]["in_hospital_deaths"],
        "sam30_rr_12m": est["sam30_rr_12m"],
        "sam30_rr_post": est["sam30_rr_post"],
        "crude_sam30_ratio_post": est["crude_sam30_ratio_post"],
        "recognition_rr_12m": est["recognition_rr_12m"],
        "bundle_rr_12m": est["bundle_rr_12m"],
        "los_ratio_12m": est["los_ratio_12m"],
        "minutes_to_bolus_ratio_12m": est["minutes_to_bolus_ratio_12m"],
        "minutes_to_antibiotic_ratio_12m": est["minutes_to_antibiotic_ratio_12m"],
    }


def run_simulate_command(out: Path, seed: int, sites: int, start: str, months: int, scale: float,
                         episodes_per_site_month: float | None, json_out: bool,
                         scenario: str | None = None) -> dict:
    """CLI body of ``ipso simulate``: simulate, write the files, print a summary (table or JSON)."""
    from .console import console, print_json, progress

    per_sm = episodes_per_site_month if episodes_per_site_month is not None else 14.0 * scale
    expected = sites * months * per_sm
    show_bar = expected > 150_000 and not json_out
    stages = ["sites", "site-months", "episodes", "tables", "truth"]
    t_start = time.perf_counter()
    with progress(enabled=show_bar) as bar:
        task = bar.add_task("simulating", total=len(stages) + 1)
        sim = simulate_collaborative(
            seed=seed, sites=sites, start=start, months=months, scale=scale,
            episodes_per_site_month=episodes_per_site_month,
            progress=lambda name: bar.update(task, advance=1, description=f"simulated {name}"),
            scenario=scenario,
        )
        bar.update(task, description="writing files")
        paths = write_collaborative(sim, out)
        bar.update(task, advance=1, description="done")
    extra = {"scenario": scenario} if scenario is not None else {}
    summary = {**_summary_dict(sim), **extra, "seconds": round(time.perf_counter() - t_start, 2),
               "files": {k: str(v) for k, v in paths.items()}}
    if json_out:
        print_json(summary)
    else:
        from rich.table import Table

        table = Table(title=f"Synthetic IPSO collaborative (seed {seed}) -> {out}")
        table.add_column("quantity")
        table.add_column("value", justify="right")
        for k, v in summary.items():
            if k == "files":
                continue
            table.add_row(k, f"{v:.3f}" if isinstance(v, float) else str(v))
        console.print(table)
    return summary

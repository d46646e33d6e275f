"""Tests of the synthetic collaborative: determinism, contract, realism bands, and that the realised
data agree with the truth recorded in truth.json (within sampling error)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import contract
from analysis.derive import attach_sites, derive_episodes
from analysis.simulate import DEFAULT_EFFECTS, DEFAULT_SEED, simulate_collaborative

BIN = Path(sys.executable).parent
Z = 4.0  # tolerance in standard errors for "within sampling error" checks


@pytest.fixture(scope="module")
def default_sim():
    return simulate_collaborative()


@pytest.fixture(scope="module")
def default_derived(default_sim):
    return attach_sites(derive_episodes(default_sim.episodes), default_sim.sites)


@pytest.fixture(scope="module")
def big_sim():
    # about 280,000 episodes: enough for tight sampling-error checks, ~2 s
    return simulate_collaborative(seed=7, scale=4.0)


@pytest.fixture(scope="module")
def big_derived(big_sim):
    d = attach_sites(derive_episodes(big_sim.episodes), big_sim.sites)
    assert (d["episode_id"].to_numpy() == big_sim.latent["episode_id"].to_numpy()).all()
    return d


# ---------------------------------------------------------------------------------------------
# determinism and files


def _write_bytes(tmp: Path, **kw) -> dict[str, bytes]:
    paths = simulate_collaborative(sites=8, months=36, **kw).write(tmp)
    return {k: Path(p).read_bytes() for k, p in paths.items()}


def test_same_seed_same_bytes_and_different_seed_differs(tmp_path):
    a = _write_bytes(tmp_path / "a", seed=11)
    b = _write_bytes(tmp_path / "b", seed=11)
    c = _write_bytes(tmp_path / "c", seed=12)
    assert set(a) == {"episodes", "sites", "site_months", "truth"}
    for k in a:
        assert a[k] == b[k], f"{k} differs between two runs with the same seed"
    assert a["episodes"] != c["episodes"]
    assert a["truth"] != c["truth"]


def test_written_files_follow_layout(tmp_path, default_sim):
    paths = default_sim.write(tmp_path)
    assert paths["episodes"].name == "episodes.parquet"
    ep = pd.read_parquet(paths["episodes"])
    assert list(ep.columns) == contract.field_names("episodes")
    pd.testing.assert_frame_equal(ep, default_sim.episodes.reset_index(drop=True), check_dtype=False)
    sites = pd.read_csv(paths["sites"], dtype=str)
    assert list(sites.columns) == contract.field_names("sites")
    assert sites["go_live"].str.fullmatch(r"\d{4}-\d{2}-01").all()
    sm = pd.read_csv(paths["site_months"], dtype=str)
    assert list(sm.columns) == contract.field_names("site_months")
    assert sm["month"].str.fullmatch(r"\d{4}-\d{2}").all()
    truth = json.loads(paths["truth"].read_text())
    assert truth["estimands"]["sam30_rr_12m"] == pytest.approx(default_sim.truth["estimands"]["sam30_rr_12m"])


def test_validator_accepts_every_row(tmp_path, default_sim):
    validate = pytest.importorskip("analysis.validate")
    default_sim.write(tmp_path)
    result = validate.validate_collaborative(tmp_path)
    assert result.summary["rows_quarantined"] == 0, result.summary["rules"]
    assert len(result.episodes) == len(default_sim.episodes)


# ---------------------------------------------------------------------------------------------
# schema and orderings

_KIND_CHECK = {
    "id": lambda s: s.map(type).eq(str).all(),
    "string": lambda s: s.map(type).eq(str).all(),
    "category": lambda s: s.map(type).eq(str).all(),
    "datetime": lambda s: str(s.dtype) == "datetime64[ns]",
    "bool": lambda s: s.dtype == bool,
    "int": lambda s: s.dtype == np.int64,
    "float": lambda s: s.dtype == np.float64,
}


def test_episodes_schema_matches_contract(default_sim):
    ep = default_sim.episodes
    assert list(ep.columns) == contract.field_names("episodes")
    for f in contract.EPISODE_FIELDS:
        assert _KIND_CHECK[f.kind](ep[f.name]), f.name
        if not f.nullable:
            assert ep[f.name].notna().all(), f.name
        if f.allowed:
            assert set(ep[f.name]) <= set(f.allowed), f.name
        if f.minimum is not None:
            assert (ep[f.name] >= f.minimum).all(), f.name
        if f.maximum is not None:
            assert (ep[f.name] <= f.maximum).all(), f.name
    assert ep["episode_id"].is_unique
    assert set(ep["site_id"]) <= set(default_sim.sites["site_id"])
    # sorted by site, T0
    key = list(zip(ep["site_id"], ep["time_zero"]))
    assert key == sorted(key)
    # minute resolution
    assert (ep["time_zero"].dt.second == 0).all()


def test_sites_and_site_months(default_sim):
    s, sm = default_sim.sites, default_sim.site_months
    assert list(s.columns) == contract.field_names("sites")
    assert list(s["site_id"]) == [f"S{i:02d}" for i in range(1, 58)]
    assert s["site_name"].is_unique and s["site_name"].str.contains("Child").all()
    assert set(s["region"]) <= set(contract.REGIONS)
    assert (s["go_live"].dt.day == 1).all()
    # three waves, go-live months 24, 36, 48 of 84 (Jan 2018, Jan 2019, Jan 2020)
    assert sorted(s.groupby("wave")["go_live"].first().dt.strftime("%Y-%m")) == ["2018-01", "2019-01", "2020-01"]
    assert s.groupby("wave").size().between(18, 20).all()
    assert list(sm.columns) == contract.field_names("site_months")
    assert len(sm) == 57 * 84 and not sm.duplicated(["site_id", "month"]).any()
    assert sm["admissions"].dtype == np.int64 and (sm["admissions"] > 0).all()


def test_orderings(default_sim):
    ep = default_sim.episodes
    assert (ep["arrival_time"] <= ep["time_zero"]).all()
    assert (ep["time_zero"] <= ep["discharge_time"]).all()
    dead = ep["death_time"].notna()
    assert (ep.loc[dead, "death_time"] == ep.loc[dead, "discharge_time"]).all()
    for col in ("first_bolus_time", "first_antibiotic_time"):
        given = ep[col].notna()
        assert 0.02 < (~given).mean() < 0.35, col  # some not given
        assert (ep.loc[given, col] >= ep.loc[given, "arrival_time"]).all(), col
        assert (ep.loc[given, col] <= ep.loc[given, "discharge_time"]).all(), col
    los = (ep["discharge_time"] - ep["arrival_time"]) / np.timedelta64(1, "D")
    assert (ep["icu_days"] <= los).all()
    assert (ep.loc[ep["critical_sepsis"], "icu_days"].mean() > 2 * ep.loc[~ep["critical_sepsis"], "icu_days"].mean())


def test_repeat_patients_are_consistent(default_sim):
    ep = default_sim.episodes.sort_values(["patient_id", "arrival_time"])
    n_pat = ep["patient_id"].nunique()
    assert 0.80 < n_pat / len(ep) < 0.95  # some repeat episodes
    same = ep["patient_id"].eq(ep["patient_id"].shift())
    assert not (same & (ep["arrival_time"] <= ep["discharge_time"].shift())).any()  # stays never overlap
    assert ep.groupby("patient_id")["sex"].nunique().max() == 1
    assert ep.groupby("patient_id")["site_id"].nunique().max() == 1
    years = (ep["time_zero"] - ep["time_zero"].shift()) / np.timedelta64(1, "D") / 365.25
    d_age = ep["age_years"] - ep["age_years"].shift()
    assert np.allclose(d_age[same], years[same], atol=0.02)


# ---------------------------------------------------------------------------------------------
# realism (bands from the targets)


def test_case_mix_targets(default_derived):
    d = default_derived
    pre = ~d["post"]
    assert 5.0 <= d["age_years"].median() <= 7.0
    assert 0.60 <= (d["ccc_count"] >= 1).mean() <= 0.72
    assert 0.06 <= d["hospital_onset"].mean() <= 0.10
    assert 0.30 <= d["critical_sepsis"].mean() <= 0.40
    onset = d["onset_setting"].value_counts(normalize=True)
    assert list(onset.index) == ["ED", "ward", "ICU", "heme_onc", "transplant"]
    # hospital onset is never ED onset; immunocompromised concentrates in heme_onc/transplant
    assert not (d["hospital_onset"] & d["onset_setting"].eq("ED")).any()
    onc = d["onset_setting"].isin(["heme_onc", "transplant"])
    assert d.loc[onc, "immunocompromised"].mean() > 0.8
    assert d.loc[~onc, "immunocompromised"].mean() < 0.1
    assert 60 <= d.loc[pre, "minutes_to_antibiotic"].median() <= 80
    q25, q50, q75 = d["los_days"].quantile([0.25, 0.5, 0.75])
    assert 5.0 <= q50 <= 7.0 and 2.5 <= q25 <= 3.5 and 10.0 <= q75 <= 15.0
    # baseline sepsis-attributable mortality 3.1% (Larsen et al., Pediatrics 2021;147:e20201434)
    assert 0.025 <= d.loc[pre, "sam30"].mean() <= 0.045
    assert 0.01 <= d.loc[pre, "sam3"].mean() <= 0.03
    # some in-hospital deaths after day 30 (not SAM30)
    assert (d["died_in_hospital"] & ~d["sam30"]).sum() > 0


def test_volumes_and_winter_peak(default_derived, default_sim):
    per_sm = default_derived.groupby(["site_id", "month"]).size()
    site_mean = per_sm.groupby("site_id").mean()
    assert site_mean.min() < 8 and 25 < site_mean.max() < 45
    cal = default_derived["time_zero"].dt.month
    winter, summer = cal.isin([12, 1, 2]).sum(), cal.isin([6, 7, 8]).sum()
    assert winter > 1.2 * summer


def test_process_improvement_after_go_live(default_derived):
    d = default_derived
    pre, late = d[d["months_since_go_live"] < 0], d[d["months_since_go_live"] >= 6]
    for col in ("screen_positive", "huddle", "order_set", "recognised", "bundle_compliant"):
        assert late[col].mean() > pre[col].mean() + 0.03, col
    assert late["minutes_to_antibiotic"].median() < pre["minutes_to_antibiotic"].median()


# ---------------------------------------------------------------------------------------------
# truth


def test_truth_contains_parameters_and_estimands(default_sim):
    t = default_sim.truth
    est = t["estimands"]
    for key in ("sam30_rr_12m", "sam3_rr_12m", "sam30_rr_post", "crude_sam30_ratio_post",
                "recognition_rr_12m", "bundle_rr_12m", "los_ratio_12m",
                "minutes_to_bolus_ratio_12m", "minutes_to_antibiotic_ratio_12m"):
        assert isinstance(est[key], float), key
    assert set(t["mortality"]["process_rr"]) >= {"antibiotic_per_hour", "fluid_60", "order_set", "huddle", "screen_positive"}
    assert t["mortality"]["process_rr"]["huddle"] == 1.0  # the true null process
    assert t["mortality"]["post_direct_rr"] == DEFAULT_EFFECTS["post_direct_rr"]
    assert t["call"]["seed"] == DEFAULT_SEED
    assert len(t["sites"]) == 57 and all("sam30_rr_site_effect" in s and "go_live" in s for s in t["sites"])
    assert sorted(t["waves"]) == ["1", "2", "3"]
    # collaborative truths near IPSO's published figures (design targets of the issue)
    assert 0.78 <= est["sam30_rr_12m"] <= 0.86
    assert est["sam3_rr_12m"] == pytest.approx(est["sam30_rr_12m"])
    assert est["recognition_rr_12m"] == pytest.approx(1.30)
    assert 1.2 <= est["bundle_rr_12m"] <= 1.4
    assert 0.92 <= est["los_ratio_12m"] <= 0.96
    assert 0.91 <= est["minutes_to_bolus_ratio_12m"] <= 0.95
    assert 0.88 <= est["minutes_to_antibiotic_ratio_12m"] <= 0.92
    # realised site random effects have about the stated sd
    re = np.array([s["sam30_log_rr_site_effect"] for s in t["sites"]])
    assert 0.15 < re.std() < 0.35


def test_realised_deaths_match_model_risks(big_sim, big_derived):
    """Derived SAM30 (from death timestamps) = the latent death draw; realised deaths agree with the
    model's actual-world risks before go-live."""
    L, d = big_sim.latent, big_derived
    assert (d["sam30"].to_numpy() == L["died_sam30"].to_numpy()).all()
    pre = (L["event_month"] < 0).to_numpy()
    p = L["p_sam30_actual"].to_numpy()[pre]
    observed, expected = d["sam30"].to_numpy()[pre].sum(), p.sum()
    assert abs(observed - expected) < Z * np.sqrt((p * (1 - p)).sum())
    share3 = d["sam3"].sum() / d["sam30"].sum()
    assert abs(share3 - 0.45) < Z * np.sqrt(0.45 * 0.55 / d["sam30"].sum())


@pytest.mark.parametrize("window", [30, 3])
def test_standardised_mortality_ratio_matches_truth(big_sim, big_derived, window):
    """Realised post deaths over the model's counterfactual expected deaths for the same episodes
    estimates truth's case-mix-standardised sam{window}_rr_post."""
    L, d = big_sim.latent, big_derived
    post = (L["event_month"] >= 0).to_numpy()
    share = 1.0 if window == 30 else big_sim.truth["mortality"]["sam3_share_of_sam30"]
    pa = share * L["p_sam30_actual"].to_numpy()[post]
    pc = share * L["p_sam30_counterfactual"].to_numpy()[post]
    realised = d[f"sam{window}"].to_numpy()[post].sum() / pc.sum()
    se = np.sqrt((pa * (1 - pa)).sum()) / pc.sum()
    truth = big_sim.truth["estimands"][f"sam{window}_rr_post"]
    assert abs(realised - truth) < Z * se, (realised, truth, se)
    assert se < 0.03  # the check has power to see a 10% error


def test_recognition_increase_matches_truth(big_sim, big_derived):
    sm = big_sim.latent_site_months
    full = sm["event_month"] >= 6  # ramp complete
    counts = big_derived.assign(month=big_derived["month"]).groupby(["site_id", "month"]).size()
    observed = counts.reindex(pd.MultiIndex.from_frame(sm.loc[full, ["site_id", "month"]]), fill_value=0).sum()
    expected_cf = sm.loc[full, "expected_episodes_counterfactual"].sum()
    ratio = observed / expected_cf
    assert abs(ratio - big_sim.truth["estimands"]["recognition_rr_12m"]) < Z * np.sqrt(observed) / expected_cf
    # realised episodes per 1,000 admissions rise, pre vs full ramp, by about the expansion size
    pre = sm["event_month"] < 0
    rate = lambda m: counts.reindex(pd.MultiIndex.from_frame(sm.loc[m, ["site_id", "month"]]), fill_value=0).sum() / sm.loc[m, "admissions"].sum()
    assert 1.2 < rate(full) / rate(pre) < 1.4


def test_crude_ratio_shows_expansion_bias(big_sim, big_derived):
    est = big_sim.truth["estimands"]
    assert est["crude_sam30_ratio_post"] < est["sam30_rr_post"] - 0.05
    d = big_derived
    post = d["post"].to_numpy()
    y = d["sam30"].to_numpy().astype(float)
    a, b = y[post], y[~post]
    crude = a.mean() / b.mean()
    se = crude * np.sqrt(a.var() / len(a) / a.mean() ** 2 + b.var() / len(b) / b.mean() ** 2)
    assert abs(crude - est["crude_sam30_ratio_post"]) < Z * se
    assert crude < est["sam30_rr_post"] - 2 * se
    # the expansion episodes are milder: their mean model risk is well below the base episodes'
    L = big_sim.latent
    assert L.loc[L["is_expansion"], "p_sam30_casemix_only"].mean() < 0.7 * L.loc[~L["is_expansion"] & (L["event_month"] >= 0), "p_sam30_casemix_only"].mean()


def test_bundle_and_los_match_truth(big_sim, big_derived):
    L, d = big_sim.latent, big_derived
    m12 = (L["event_month"] == 12).to_numpy()
    share = big_sim.truth["estimands"]["bundle_share_12m_actual"]
    obs = d["bundle_compliant"].to_numpy()[m12].mean()
    assert abs(obs - share) < Z * np.sqrt(share * (1 - share) / m12.sum())
    # expected hospital days (model) vs realised length of stay, all post episodes
    post = (L["event_month"] >= 0).to_numpy()
    los = d["los_days"].to_numpy()[post]
    expected = L["expected_hospital_days_actual"].to_numpy()[post].mean()
    assert abs(los.mean() - expected) < Z * los.std() / np.sqrt(len(los)) + 0.005 * expected  # 0.5%: floors ignored by the expectation


def test_null_override_keeps_case_mix_and_removes_direct_effect(default_sim):
    null = simulate_collaborative(true_effects={"post_direct_rr": 1.0})
    assert null.truth["overrides"] == {"post_direct_rr": 1.0}
    assert null.truth["mortality"]["post_direct_rr"] == 1.0
    cm = ["episode_id", "site_id", "time_zero", "age_years", "ccc_count", "critical_sepsis", "onset_setting",
          "screen_positive", "huddle", "order_set", "first_antibiotic_time"]
    pd.testing.assert_frame_equal(null.episodes[cm], default_sim.episodes[cm])
    # log-risk model: removing the direct effect multiplies the standardised RR by 1 / post_direct_rr
    est, est0 = default_sim.truth["estimands"], null.truth["estimands"]
    assert est0["sam30_rr_12m"] == pytest.approx(est["sam30_rr_12m"] / DEFAULT_EFFECTS["post_direct_rr"], rel=1e-3)
    assert 0.93 < est0["sam30_rr_12m"] < 1.0  # what remains is the process pathway
    with pytest.raises(ValueError, match="unknown parameter"):
        simulate_collaborative(sites=2, months=12, true_effects={"no_such_effect": 1})


def test_no_expansion_option():
    sim = simulate_collaborative(sites=10, months=48, recognition_expansion=False)
    assert sim.truth["estimands"]["recognition_rr_12m"] == pytest.approx(1.0)
    assert not sim.latent["is_expansion"].any()


def test_scale_and_fixed_volume():
    small = simulate_collaborative(sites=10, months=24)
    double = simulate_collaborative(sites=10, months=24, scale=2.0)
    assert 1.8 < len(double.episodes) / len(small.episodes) < 2.2
    fixed = simulate_collaborative(sites=10, months=24, episodes_per_site_month=5.0)
    base = fixed.latent_site_months["base_episodes"]
    assert abs(base.mean() - 5.0) < 0.6
    with pytest.raises(ValueError, match="start"):
        simulate_collaborative(start="2016/01")
    with pytest.raises(ValueError, match="scale"):
        simulate_collaborative(scale=0)


def test_cli_json(tmp_path):
    out = subprocess.run(
        [str(BIN / "ipso"), "simulate", "--out", str(tmp_path / "sim"), "--sites", "5", "--months", "24", "--json"],
        capture_output=True, text=True, check=True,
    )
    summary = json.loads(out.stdout)
    assert summary["sites"] == 5 and summary["site_months"] == 5 * 24
    assert summary["episodes"] > 100
    for name in ("episodes.parquet", "sites.csv", "site_months.csv", "truth.json"):
        assert (tmp_path / "sim" / name).exists()


def test_short_or_empty_simulations_say_what_is_not_estimable(tmp_path):
    short = simulate_collaborative(sites=2, months=6)
    est = short.truth["estimands"]
    assert est["sam30_rr_12m"] is None
    assert "event month 12" in est["not_estimable"]["sam30_rr_12m"]
    empty = simulate_collaborative(sites=3, months=12, episodes_per_site_month=0.001)
    assert len(empty.episodes) == 0 and list(empty.episodes.columns) == contract.field_names("episodes")
    assert "no post-go-live episodes" in empty.truth["estimands"]["not_estimable"]["sam30_rr_post"]
    empty.write(tmp_path)
    assert len(derive_episodes(empty.episodes)) == 0


def test_poisson_regression_recovers_the_true_risk_ratios(default_sim, default_derived):
    """An independent estimator (statsmodels log-link Poisson GLM, realised site effects from truth.json
    as offset) recovers every case-mix and process risk ratio of truth['mortality'], including the
    true null huddle effect, within 4 standard errors."""
    sm = pytest.importorskip("statsmodels.api")
    d, truth = default_derived, default_sim.truth
    cm, pr = truth["mortality"]["casemix_rr"], truth["mortality"]["process_rr"]
    hours = np.where(d["minutes_to_antibiotic"].isna(), pr["antibiotic_hours_cap"],
                     np.clip(d["minutes_to_antibiotic"] / 60, 0, pr["antibiotic_hours_cap"]))
    columns = {
        "critical_sepsis": (d["critical_sepsis"], cm["critical_sepsis"]),
        "ccc": (np.minimum(d["ccc_count"], cm["ccc_cap"]), cm["ccc_per_condition"]),
        "immunocompromised": (d["immunocompromised"], cm["immunocompromised"]),
        "hospital_onset": (d["hospital_onset"], cm["hospital_onset"]),
        **{f"onset_{k}": (d["onset_setting"].eq(k), cm[f"onset_{k}"]) for k in ("ward", "ICU", "heme_onc", "transplant")},
        **{f"age_{k}": (d["age_group"].eq(k), cm[f"age_{k}"]) for k in ("<1", "5-12", "13+")},
        "antibiotic_per_hour": (hours, pr["antibiotic_per_hour"]),
        "fluid_60": (d["fluid_60"], pr["fluid_60"]),
        "order_set": (d["order_set"], pr["order_set"]),
        "screen_positive": (d["screen_positive"], pr["screen_positive"]),
        "huddle": (d["huddle"], pr["huddle"]),
        "years": ((d["time_zero"] - pd.Timestamp("2016-01-01")) / pd.Timedelta(days=365.25),
                  truth["mortality"]["secular_trend_rr_per_year"]),
        "ramp": (default_sim.latent["ramp"].to_numpy(), truth["mortality"]["post_direct_rr"]),
    }
    X = sm.add_constant(pd.DataFrame({k: np.asarray(v[0], dtype=float) for k, v in columns.items()}))
    site_effect = {s["site_id"]: s["sam30_log_rr_site_effect"] for s in truth["sites"]}
    fit = sm.GLM(d["sam30"].astype(float), X, family=sm.families.Poisson(),
                 offset=d["site_id"].map(site_effect).to_numpy()).fit()
    for name, (_, rr) in columns.items():
        est, se = fit.params[name], fit.bse[name]
        assert abs(est - np.log(rr)) < Z * se, (name, np.exp(est), rr, se)
    assert fit.bse["huddle"] < 0.06  # power: a 12% huddle effect would be detected
    assert abs(fit.params["const"] - np.log(truth["mortality"]["baseline_sam30"])) < Z * fit.bse["const"]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_other_seeds_and_dense_sites_stay_valid(seed):
    """Orderings and contract rules hold for other seeds and very busy sites (validator accepts all rows)."""
    validate = pytest.importorskip("analysis.validate")
    sim = simulate_collaborative(seed=seed, sites=3, months=30, episodes_per_site_month=60)
    result = validate.validate_frames(sim.episodes, sim.sites, sim.site_months)
    assert result.summary["rows_quarantined"] == 0, result.summary["rules"]
    ep = sim.episodes
    assert (ep["arrival_time"] <= ep["time_zero"]).all() and (ep["time_zero"] <= ep["discharge_time"]).all()

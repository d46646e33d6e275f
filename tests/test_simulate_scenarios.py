"""Simulator scenarios (issue 12): opt-in effect dynamics, site-heterogeneous direct effects and
calendar shocks; the default collaborative is unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from analysis.cli import app
from analysis.simulate import SCENARIO_DEFAULTS, SCENARIOS, simulate_collaborative, simulate_panel

SMALL = {"seed": 11, "sites": 12, "months": 84, "episodes_per_site_month": 6.0}


def _bytes(sim, out: Path) -> dict[str, bytes]:
    return {k: Path(p).read_bytes() for k, p in sim.write(out).items()}


@pytest.fixture(scope="module")
def default_small():
    return simulate_collaborative(**SMALL)


def test_scenario_defaults_change_nothing(tmp_path, default_small):
    a = _bytes(default_small, tmp_path / "a")
    b = _bytes(simulate_collaborative(**SMALL, true_effects=dict(SCENARIO_DEFAULTS)), tmp_path / "b")
    for k in ("episodes", "sites", "site_months"):
        assert a[k] == b[k]
    truth, truth_b = json.loads(a["truth"]), json.loads(b["truth"])
    assert truth["estimands"] == truth_b["estimands"]
    assert truth["overrides"] == {}
    assert "scenario" not in truth
    assert not set(SCENARIO_DEFAULTS) & set(truth["parameters"])


def test_named_constant_scenario_same_data_plus_event_truth(tmp_path, default_small):
    a = _bytes(default_small, tmp_path / "a")
    sim = simulate_collaborative(**SMALL, scenario="constant")
    b = _bytes(sim, tmp_path / "b")
    for k in ("episodes", "sites", "site_months"):
        assert a[k] == b[k]
    sc = sim.truth["scenario"]
    assert sc["name"] == "constant"
    ev = sc["event_time_truth"]
    assert ev["event_month"][0] == -12 and ev["event_month"][-1] == 36
    e = np.array(ev["event_month"])
    sam = np.array([np.nan if v is None else v for v in ev["sam30_rr"]])
    assert np.allclose(sam[e < 0], 1.0)
    i12 = list(e).index(12)
    assert sam[i12] == pytest.approx(sim.truth["estimands"]["sam30_rr_12m"])
    assert ev["recognition_rr"][i12] == pytest.approx(sim.truth["estimands"]["recognition_rr_12m"])
    assert ev["path"][i12] == 1.0


def test_dynamics_shapes_in_truth():
    path = {}
    for name in ("constant", "growing", "waning", "ramp12"):
        t = simulate_collaborative(**SMALL, scenario=name).truth["scenario"]
        ev = t["event_time_truth"]
        path[name] = dict(zip(ev["event_month"], ev["path"]))
        assert "shape" in t["effect_path"]
    assert path["growing"][12] == pytest.approx(12.5 / 24)
    assert path["growing"][36] == pytest.approx(36.5 / 24)
    assert path["waning"][12] == pytest.approx(np.exp(-6.5 / 36))
    assert path["ramp12"][6] == pytest.approx(6.5 / 12)
    assert path["constant"][6] == 1.0


def test_heterogeneous_direct_effects():
    sim = simulate_collaborative(seed=5, sites=57, months=84, episodes_per_site_month=3.0,
                                 scenario="heterogeneous")
    d = np.array(list(sim.truth["scenario"]["site_direct_log_rr"].values()))
    assert d.std() == pytest.approx(0.15, abs=0.05)
    assert d.mean() == pytest.approx(np.log(0.84), abs=0.06)
    base = simulate_collaborative(seed=5, sites=57, months=84, episodes_per_site_month=3.0)
    # same patients and processes; only post-go-live death risks differ
    assert sim.episodes["episode_id"].equals(base.episodes["episode_id"])
    assert sim.episodes["critical_sepsis"].equals(base.episodes["critical_sepsis"])
    pre = sim.latent["event_month"] < 0
    assert np.allclose(sim.latent.loc[pre, "p_sam30_actual"], base.latent.loc[pre, "p_sam30_actual"])


def test_calendar_shock_dips_volumes_and_risk_in_both_worlds():
    kw = {"seed": 5, "sites": 20, "months": 84}
    base = simulate_collaborative(**kw)
    sim = simulate_collaborative(**kw, scenario="calendar_shock")
    sh = SCENARIOS["calendar_shock"]["calendar_shocks"][0]
    m = (base.site_months["month"].dt.year - 2016) * 12 + base.site_months["month"].dt.month - 1
    inside = (m >= sh["first_month"]) & (m <= sh["last_month"])
    ratio = sim.site_months.loc[inside, "admissions"].sum() / base.site_months.loc[inside, "admissions"].sum()
    assert ratio == pytest.approx(0.80, abs=0.01)
    # (Poisson draws after the shock starts are redrawn: only their expectation is unchanged)
    out = sim.site_months.loc[~inside, "admissions"].sum() / base.site_months.loc[~inside, "admissions"].sum()
    assert out == pytest.approx(1.0, abs=0.005)
    rate = (sim.latent_site_months.loc[inside, "expected_episodes_counterfactual"].sum()
            / sim.site_months.loc[inside, "admissions"].sum()) / (
        base.latent_site_months.loc[inside, "expected_episodes_counterfactual"].sum()
        / base.site_months.loc[inside, "admissions"].sum())
    assert rate == pytest.approx(0.85, abs=0.005)
    # the shock multiplies both worlds: the standardised effect is unchanged
    assert sim.truth["estimands"]["sam30_rr_12m"] == pytest.approx(
        base.truth["estimands"]["sam30_rr_12m"], abs=0.01)


def test_bad_scenario_parameters():
    with pytest.raises(ValueError, match="unknown scenario"):
        simulate_collaborative(sites=3, months=12, scenario="nope")
    with pytest.raises(ValueError, match="effect_dynamics"):
        simulate_collaborative(sites=3, months=12, true_effects={"effect_dynamics": "sideways"})
    with pytest.raises(ValueError, match="first_month"):
        simulate_collaborative(sites=3, months=12, true_effects={"calendar_shocks": [{"rr": 1}]})


def test_cli_scenario(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["simulate", "--out", str(tmp_path / "g"), "--sites", "6",
                              "--months", "60", "--scenario", "growing", "--json"])
    assert res.exit_code == 0, res.output
    truth = json.loads((tmp_path / "g" / "truth.json").read_text())
    assert truth["scenario"]["name"] == "growing"
    assert truth["scenario"]["effect_path"]["dynamics"] == "growing"
    res = runner.invoke(app, ["simulate", "--out", str(tmp_path / "x"), "--scenario", "nope"])
    assert res.exit_code == 2


def test_panel_truth_follows_the_same_path():
    p = simulate_panel(scenario="waning")
    assert p.truth_at(12) == pytest.approx(0.84 ** np.exp(-6.5 / 36), rel=1e-12)
    assert p.truth_at(-3) == 1.0
    noisy = simulate_panel(scenario="waning", noise=True, expected_count=5)
    assert noisy.data["y"].equals(noisy.data["y"].round())
    assert noisy.truth_at(12) == pytest.approx(p.truth_at(12), rel=0.02)

"""analysis.plan: the default plan's shape, YAML round trips, overrides and clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from analysis.plan import (
    PLAN_VERSION,
    VARIABLES,
    Plan,
    PlanError,
    Specification,
    default_plan,
)

BIN = Path(sys.executable).parent
MEASURES = {"sam30", "sam3", "recognition", "bundle", "hospital_days", "bolus_minutes",
            "antibiotic_minutes", "screen_positive", "huddle", "order_set"}


def test_default_plan_covers_every_measure_at_both_levels_with_one_primary():
    plan = default_plan().validate()
    assert plan.version == PLAN_VERSION
    ids = set(plan.ids())
    assert MEASURES <= ids
    for eid in ids:
        for level in ("collaborative", "site"):
            e = plan.get(eid, level)
            assert sum(s.role == "primary" for s in e.specs) == 1, (eid, level)
            assert e.variable in VARIABLES
            for s in e.specs:
                assert s.role == "primary" or s.reason.strip(), (eid, level, s.name)
            assert any(s.role == "descriptive" for s in e.specs), (eid, level)


def test_default_plan_states_the_estimands():
    plan = default_plan()
    # per-child (case-mix standardised) primaries, population versions as labelled secondaries
    for eid in ("bundle", "hospital_days", "bolus_minutes", "antibiotic_minutes"):
        main = plan.get(eid, "collaborative")
        pop = plan.get(f"{eid}_population", "collaborative")
        assert main.per == "per child with the same case mix"
        assert main.primary.standardisation == "casemix"
        assert pop.secondary_to == eid and pop.primary.standardisation == "none"
        assert "newly recognised milder cases" in pop.per
    assert plan.get("recognition", "collaborative").per == "per 1,000 hospital admissions"
    # intercurrent events are stated
    los = plan.get("hospital_days", "collaborative")
    assert any("death before discharge" in ie.event for ie in los.intercurrent_events)
    bolus = plan.get("bolus_minutes", "collaborative")
    events = " ".join(ie.event for ie in bolus.intercurrent_events)
    assert "no bolus given" in events and "before T0" in events
    # mortality and recognition: the imputation estimator for staggered go-lives is the validated
    # collaborative primary (event months 6-18, t interval); the segmented regression stays as a
    # sensitivity analysis, with the sensitivity analyses of issue 12
    m = plan.get("sam30", "collaborative")
    p = m.primary
    assert (p.estimator, p.transition, p.time_point, p.interval, p.covariance) == (
        "its_staggered", 6, 12, "t", "cluster")
    # plan 2026.12-2 (validation in benchmarks/RESULTS.md): one common trend and seasonality, no
    # calendar-month effects (those stay as a sensitivity analysis, least-squares centring)
    assert p.params == {"site_trends": False, "calendar_effects": False}
    assert "event months 6-18" in p.describe()
    cal = m.spec("calendar_effects")
    assert cal.role == "sensitivity" and cal.estimator == "its_staggered"
    assert cal.params == {"site_trends": False, "calendar_effects": True, "calendar_centering": "ls"}
    assert "calendar_effects" not in {s.name for s in plan.get("sam3", "collaborative").specs}
    assert plan.primary("recognition", "collaborative").params == {
        "site_trends": True, "calendar_centering": "robust"}
    assert m.spec("its_multisite").role == "sensitivity"
    assert m.spec("its_multisite").params == {"site_trends": False}
    assert m.spec("site_trends").params == {} and m.spec("site_trends").role == "sensitivity"
    assert "critical_sepsis" not in m.spec("no_critical_casemix").casemix
    for eid in ("sam30", "sam3", "recognition"):
        e = plan.get(eid, "collaborative")
        assert e.primary.estimator == "its_staggered"
        for name in ("placebo_in_time", "leave_one_wave_out", "transition_0", "transition_12",
                     "panel_hac", "rambachan_roth", "its_multisite"):
            assert e.spec(name).role == "sensitivity" and e.spec(name).reason
    assert plan.primary("sam3", "collaborative").params["calendar_effects"] is False
    assert plan.get("sam30", "collaborative").spec("rambachan_roth").params["m_bar"] == [0.5, 1.0, 2.0]
    # the site level: empirical Bayes with the too-little-information rule named in the plan
    site = plan.primary("sam30", "site")
    assert site.estimator == "site_eb" and site.params["min_expected_events"] == 20
    assert plan.get("sam30", "site").spec("site_its").role == "sensitivity"
    # supporting results the reports draw are descriptive specifications of the plan
    assert {s.estimator for s in m.specs if s.role == "descriptive"} == {
        "crude", "casemix_fit", "km_curves", "funnel_oe"}
    text = str(plan)
    assert "sam30 [collaborative]" in text and "intercurrent event" in text
    assert len(plan.table()) == sum(len(e.specs) for e in plan.estimands)


def test_yaml_round_trip(tmp_path):
    plan = default_plan()
    f = tmp_path / "plan.yml"
    f.write_text(plan.to_yaml())
    again = Plan.from_yaml(f)
    assert again.to_dict() == plan.to_dict()
    assert json.loads(plan.to_json()) == plan.to_dict()


def test_overrides_in_python():
    plan = default_plan()
    p2 = plan.replace_spec("sam30", "collaborative", "its_staggered", transition=3, version="x")
    assert p2.primary("sam30", "collaborative").transition == 3 and p2.version == "x"
    assert plan.primary("sam30", "collaborative").transition == 6  # the original is unchanged
    # swapping the primary (e.g. to a new estimator) keeps the old one as a sensitivity spec
    new = Specification("staggered", "sensitivity", "crude", "new estimator under evaluation")
    p3 = plan.with_spec("recognition", "collaborative", new).set_primary(
        "recognition", "collaborative", "staggered", reason="previous primary, kept for comparison")
    e = p3.get("recognition", "collaborative")
    assert e.primary.name == "staggered"
    assert e.spec("its_staggered").role == "sensitivity"
    assert e.spec("its_staggered").reason == "previous primary, kept for comparison"
    p4 = plan.with_overrides([{"estimand": "bundle", "spec": "its_multisite", "transition": 4}])
    assert p4.primary("bundle", "collaborative").transition == 4  # both levels changed
    assert p4.get("bundle", "site").primary.name == "site_its"


def test_extends_default_yaml(tmp_path):
    f = tmp_path / "plan.yml"
    f.write_text(yaml.safe_dump({
        "extends": "default", "version": "local-1",
        "overrides": [{"estimand": "sam30", "level": "collaborative", "spec": "its_multisite",
                       "interval": "t"}]}))
    plan = Plan.from_yaml(f)
    assert plan.version == "local-1"
    assert plan.get("sam30", "collaborative").spec("its_multisite").interval == "t"


@pytest.mark.parametrize(("change", "field"), [
    ({"transition": -1}, "transition"),
    ({"role": "main"}, "role"),
    ({"estimator": "no_such_estimator"}, "estimator"),
    ({"covariance": "robust"}, "covariance"),
    ({"time_point": 3}, "time_point"),  # inside the 6-month transition
    ({"standardisation": "z"}, "standardisation"),
])
def test_bad_specification_names_estimand_and_field(change, field):
    with pytest.raises(PlanError) as err:
        default_plan().replace_spec("hospital_days", "collaborative", "its_multisite", **change)
    msg = str(err.value)
    assert "'hospital_days'" in msg and f"field {field!r}" in msg and "'its_multisite'" in msg
    assert err.value.estimand == "hospital_days" and err.value.field == field


def test_structural_errors():
    plan = default_plan()
    with pytest.raises(PlanError, match="exactly one primary"):
        plan.replace_spec("sam30", "collaborative", "slope_change", role="primary")
    with pytest.raises(PlanError, match="reason"):
        plan.replace_spec("sam30", "collaborative", "slope_change", reason="")
    with pytest.raises(PlanError, match="unknown field"):
        plan.replace_spec("sam30", "collaborative", "slope_change", tranistion=3)
    with pytest.raises(PlanError, match="not in the plan"):
        plan.get("mortality", "collaborative")
    d = plan.to_dict()
    d["estimands"][0]["variable"] = "deaths"
    with pytest.raises(PlanError, match="field 'variable'"):
        Plan.from_dict(d)
    d = plan.to_dict()
    del d["estimands"][3]["specs"][0]["estimator"]
    with pytest.raises(PlanError, match="field 'estimator'"):
        Plan.from_dict(d)


def test_cli_plan_show(tmp_path):
    out = subprocess.run([str(BIN / "ipso"), "plan", "show", "--json"], capture_output=True,
                         text=True, check=True)
    assert json.loads(out.stdout)["version"] == PLAN_VERSION
    text = subprocess.run([str(BIN / "ipso"), "plan", "show"], capture_output=True, text=True,
                          check=True).stdout
    assert "IPSO analysis plan" in text and "primary" in text
    bad = tmp_path / "bad.yml"
    bad.write_text(yaml.safe_dump({"extends": "default", "overrides": [
        {"estimand": "bundle", "level": "site", "spec": "site_its", "transition": "six"}]}))
    r = subprocess.run([str(BIN / "ipso"), "plan", "show", "--plan", str(bad)],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 2
    assert "'bundle'" in r.stderr and "field 'transition'" in r.stderr, r.stderr
    r = subprocess.run([str(BIN / "ipso"), "plan", "show", "--plan", str(tmp_path / "none.yml")],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 2 and "cannot read plan file" in r.stderr

"""The analysis plan: every estimand the suite reports, and how each is estimated.

An **estimand** (ICH E9(R1)) says what is estimated before any model is chosen: the population,
the variable, how intercurrent events are handled, the population-level summary and the time
point. Each estimand exists at two levels, the collaborative (every hospital) and the site (one
hospital), and has exactly one **primary** specification per level, plus optional
**sensitivity** specifications (each with a one-line reason) and **descriptive** summaries (no
inferential claim: no interval, no p-value).

A **specification** names an estimator (a key of :data:`analysis.results.ESTIMATORS`) and its
settings: model family, standardisation (case-mix expected values or none), the case-mix
covariates, transition (phase-in months left out), slope change, covariance, interval and time
point. Adding an estimator is a function plus one registry line in :mod:`analysis.results`;
switching the primary one is a plan edit (:meth:`Plan.set_primary`, or a YAML file).

The default plan (:func:`default_plan`, version :data:`PLAN_VERSION`) is printable
(``ipso plan show``), serialisable (:meth:`Plan.to_yaml`, :meth:`Plan.from_yaml`) and can be
overridden in Python (:meth:`Plan.replace_spec`, :meth:`Plan.with_overrides`) or from a YAML
file (``ipso estimate --plan plan.yml``): either a whole plan as ``to_yaml`` writes it, or
``extends: default`` with a list of ``overrides``. A bad plan raises :class:`PlanError`, which
names the estimand, level, specification and field.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .riskadj import DEFAULT_CASEMIX

#: Version of :func:`default_plan`; bump it whenever a default estimand or specification changes.
PLAN_VERSION = "2026.12-2"

ROLES: tuple[str, ...] = ("primary", "sensitivity", "descriptive")
LEVELS: tuple[str, ...] = ("collaborative", "site")
STANDARDISATIONS: tuple[str, ...] = ("casemix", "none")
COVARIANCES: tuple[str, ...] = ("cluster", "model", "quasi", "hac")
INTERVALS: tuple[str, ...] = ("z", "t")
FAMILIES: tuple[str, ...] = ("poisson", "gaussian")
#: Estimators built on the imputation estimator (:mod:`analysis.results_staggered`): for them
#: ``transition`` sets the window of event months averaged, ``[transition, 2 time_point -
#: transition]``, unless ``params["window"]`` gives it.
STAGGERED_ESTIMATORS: frozenset[str] = frozenset({
    "its_staggered", "staggered_placebo", "staggered_leave_one_wave_out", "staggered_rm_bounds"})

__all__ = [
    "PLAN_VERSION", "VARIABLES", "Estimand", "IntercurrentEvent", "Plan", "PlanError",
    "Specification", "Variable", "default_plan",
]


class PlanError(ValueError):
    """An invalid plan: the message names the estimand, level, specification and field."""

    def __init__(self, message: str, *, estimand: str | None = None, level: str | None = None,
                 spec: str | None = None, field: str | None = None):
        where = ", ".join(f"{k} {v!r}" for k, v in (("estimand", estimand), ("level", level),
                                                     ("specification", spec), ("field", field))
                          if v is not None)
        super().__init__(f"plan: {where}: {message}" if where else f"plan: {message}")
        self.estimand, self.level, self.spec, self.field = estimand, level, spec, field


# ---------------------------------------------------------------------------------------------
# variables: what is measured on each episode (or site-month)
@dataclass(frozen=True)
class Variable:
    """An analysis variable.

    ``column``: episode column (or ``"episodes"`` for a count of episodes per site-month);
    ``kind``: ``"probability"`` (bool per episode), ``"mean"`` (non-negative per episode),
    ``"median_time"`` (minutes from T0, per treated episode) or ``"rate"`` (episodes per 1,000
    admissions); ``known``: bool column marking episodes whose value is known at the cut-off;
    ``description``: one line.
    """

    column: str
    kind: str
    description: str
    known: str | None = None


VARIABLES: dict[str, Variable] = {
    "sam30": Variable("sam30", "probability", "sepsis-attributable in-hospital death within 30 days "
                      "of T0", known="sam30_complete"),
    "sam3": Variable("sam3", "probability", "sepsis-attributable in-hospital death within 3 days of T0",
                     known="sam3_complete"),
    "recognition": Variable("episodes", "rate", "sepsis episodes recognised per 1,000 hospital "
                            "admissions"),
    "bundle": Variable("bundle_compliant", "probability", "IPSO bundle met: recognised, fluid bolus "
                       "within 60 min and IV antibiotic within 180 min of T0"),
    "hospital_days": Variable("los_days", "mean", "days in hospital, arrival to discharge (alive or "
                              "dead)", known="los_complete"),
    "bolus_minutes": Variable("minutes_to_bolus", "median_time", "minutes from T0 to the first fluid "
                              "bolus"),
    "antibiotic_minutes": Variable("minutes_to_antibiotic", "median_time", "minutes from T0 to the "
                                   "first IV antibiotic"),
    "screen_positive": Variable("screen_positive", "probability", "positive sepsis screen"),
    "huddle": Variable("huddle", "probability", "sepsis huddle held"),
    "order_set": Variable("order_set", "probability", "sepsis order set used"),
}


# ---------------------------------------------------------------------------------------------
# plan objects
@dataclass(frozen=True)
class IntercurrentEvent:
    """An intercurrent event and how the estimand handles it (ICH E9(R1) strategy)."""

    event: str
    strategy: str  # treatment policy, composite, while alive, hypothetical, principal stratum
    handling: str  # one line


@dataclass(frozen=True)
class Specification:
    """How one estimand is estimated.

    ``role``: primary / sensitivity / descriptive; ``reason``: one line, required unless primary.
    ``estimator``: key of :data:`analysis.results.ESTIMATORS`. ``family``: ``"poisson"`` (counts
    and sums with a log offset; point estimates are quasi-likelihood, so over-dispersion is
    allowed) or ``"gaussian"`` (log monthly medians); None = the variable's natural one.
    ``standardisation``: ``"casemix"`` (observed against each episode's expected value under
    baseline care: per child with the same case mix) or ``"none"`` (per recognised episode).
    ``casemix``: covariates of the expected-value model. ``transition``: months after go-live
    left out of the fit (phase-in). ``slope_change``: add a change in slope after go-live.
    ``covariance``: ``"cluster"`` (by site, CR1 G/(G-1)), ``"model"`` (model-based Poisson),
    ``"quasi"`` (model-based, Pearson dispersion), ``"hac"`` (Newey-West). ``interval``: ``"z"``
    or ``"t"`` (t with G - 1 degrees of freedom for G clusters). ``time_point``: months after
    go-live (0: a summary of every month after the transition, e.g. crude or Cox). ``seasonality``: Fourier pairs of calendar month (0 = none; common calendar shocks
    such as the winter peak are shared by all hospitals, which clustering by hospital does not
    cover). ``params``: estimator-specific settings (``its_multisite``: ``site_trends`` false
    for one common trend; ``cox_calendar``: ``horizon_days``).
    """

    name: str
    role: str
    estimator: str
    reason: str = ""
    family: str | None = None
    standardisation: str = "casemix"
    casemix: tuple[str, ...] = DEFAULT_CASEMIX
    transition: int = 6
    slope_change: bool = False
    covariance: str = "cluster"
    interval: str = "z"
    time_point: int = 12
    seasonality: int = 0
    params: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["casemix"] = list(self.casemix)
        d["params"] = dict(self.params)
        return d

    def describe(self) -> str:
        """One line: the settings that matter."""
        bits = [self.estimator]
        if self.family:
            bits.append(self.family)
        bits.append("case-mix standardised" if self.standardisation == "casemix" else "not standardised")
        if self.standardisation == "casemix" and tuple(self.casemix) != DEFAULT_CASEMIX:
            dropped = [c for c in DEFAULT_CASEMIX if c not in self.casemix]
            bits.append("case mix without " + ", ".join(dropped) if dropped else
                        "case mix " + ", ".join(self.casemix))
        if self.estimator in STAGGERED_ESTIMATORS:
            tp, tr = self.time_point, self.transition
            first, last = self.params.get("window", (tr, 2 * tp - tr) if tp > tr else (tp, tp))
            bits += [f"event months {first}-{last}" if first != last else f"event month {first}",
                     *([f"seasonality {self.seasonality}"] if self.seasonality else []),
                     f"{self.covariance} SE", f"{self.interval} interval",
                     f"at {self.time_point} months"]
        elif self.time_point == 0:  # a whole-post-period summary (crude, Cox)
            bits.append(f"all months after a {self.transition}-month phase-in" if self.transition
                        else "all months from go-live on")
        else:
            bits += [f"transition {self.transition}",
                     "slope change" if self.slope_change else "level change",
                     *([f"seasonality {self.seasonality}"] if self.seasonality else []),
                     f"{self.covariance} SE", f"{self.interval} interval",
                     f"at {self.time_point} months"]
        bits += [f"{k}={v}" for k, v in self.params.items()]
        return "; ".join(bits)


@dataclass(frozen=True)
class Estimand:
    """One estimand at one level (ICH E9(R1) attributes plus the words reports use).

    ``id``: short key (``sam30``, ``bundle``, ``bundle_population``, ...); ``level``:
    ``"collaborative"`` or ``"site"``; ``variable``: key of :data:`VARIABLES`; ``population``,
    ``summary`` (population-level summary), ``scale`` (e.g. ``"risk ratio"``), ``unit``;
    ``per``: the per-what phrase of the wording ("per child with the same case mix" or "per
    recognised episode, including newly recognised milder cases"); ``better``: ``"lower"`` or
    ``"higher"``; ``down`` / ``up``: direction words ("decrease", "faster", ...);
    ``secondary_to``: id of the main estimand when this one is a labelled secondary.
    """

    id: str
    level: str
    label: str
    variable: str
    population: str
    summary: str
    scale: str
    unit: str
    per: str
    better: str
    down: str
    up: str
    intercurrent_events: tuple[IntercurrentEvent, ...] = ()
    time_point: int = 12
    secondary_to: str | None = None
    specs: tuple[Specification, ...] = ()

    @property
    def primary(self) -> Specification:
        return next(s for s in self.specs if s.role == "primary")

    def spec(self, name: str) -> Specification:
        for s in self.specs:
            if s.name == name:
                return s
        raise PlanError(f"no specification {name!r}; known: {[s.name for s in self.specs]}",
                        estimand=self.id, level=self.level, field="specs")

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
             if f.name not in ("specs", "intercurrent_events")}
        d["intercurrent_events"] = [dataclasses.asdict(e) for e in self.intercurrent_events]
        d["specs"] = [s.to_dict() for s in self.specs]
        return d


@dataclass(frozen=True)
class Plan:
    """A versioned set of estimands (see the module docstring)."""

    version: str
    estimands: tuple[Estimand, ...]

    # -- look-up -----------------------------------------------------------------------------
    def get(self, estimand: str, level: str) -> Estimand:
        for e in self.estimands:
            if e.id == estimand and e.level == level:
                return e
        known = sorted({e.id for e in self.estimands})
        raise PlanError(f"not in the plan (known: {', '.join(known)})", estimand=estimand, level=level)

    def primary(self, estimand: str, level: str) -> Specification:
        return self.get(estimand, level).primary

    def ids(self) -> list[str]:
        """Estimand ids in plan order (each once)."""
        return list(dict.fromkeys(e.id for e in self.estimands))

    def at_level(self, level: str) -> list[Estimand]:
        return [e for e in self.estimands if e.level == level]

    # -- checks ------------------------------------------------------------------------------
    def validate(self, estimators: Iterable[str] | None = None) -> Plan:
        """Raise :class:`PlanError` for the first problem found; return the plan when valid.
        `estimators`: known estimator keys (default: :data:`analysis.results.ESTIMATORS`)."""
        if estimators is None:
            from .results import ESTIMATORS

            estimators = ESTIMATORS
        known = set(estimators)
        if not isinstance(self.version, str) or not self.version.strip():
            raise PlanError("the plan needs a non-empty version string", field="version")
        seen: set[tuple[str, str]] = set()
        for e in self.estimands:
            _validate_estimand(e, known)
            if (e.id, e.level) in seen:
                raise PlanError("defined twice", estimand=e.id, level=e.level)
            seen.add((e.id, e.level))
        for e in self.estimands:
            if e.secondary_to is not None and (e.secondary_to, e.level) not in seen:
                raise PlanError(f"secondary_to {e.secondary_to!r} is not an estimand at this level",
                                estimand=e.id, level=e.level, field="secondary_to")
        return self

    # -- edits (each returns a new, validated plan) ---------------------------------------------
    def _replace_estimand(self, new: Estimand, version: str | None) -> Plan:
        est = tuple(new if (e.id, e.level) == (new.id, new.level) else e for e in self.estimands)
        return Plan(version or self.version, est).validate()

    def replace_spec(self, estimand: str, level: str, spec: str, *, version: str | None = None,
                     **changes: Any) -> Plan:
        """A copy with fields of one specification changed (e.g. ``transition=3``)."""
        e = self.get(estimand, level)
        old = e.spec(spec)
        bad = set(changes) - {f.name for f in dataclasses.fields(Specification)}
        if bad:
            raise PlanError(f"unknown field(s) {sorted(bad)}", estimand=estimand, level=level,
                            spec=spec, field=min(bad))
        if "casemix" in changes:
            changes["casemix"] = tuple(changes["casemix"])
        new = dataclasses.replace(old, **changes)
        specs = tuple(new if s.name == spec else s for s in e.specs)
        return self._replace_estimand(dataclasses.replace(e, specs=specs), version)

    def with_spec(self, estimand: str, level: str, spec: Specification, *,
                  version: str | None = None) -> Plan:
        """A copy with `spec` added to (or replacing the one of the same name in) an estimand."""
        e = self.get(estimand, level)
        specs = tuple(s for s in e.specs if s.name != spec.name) + (spec,)
        return self._replace_estimand(dataclasses.replace(e, specs=specs), version)

    def set_primary(self, estimand: str, level: str, spec: str, *, reason: str,
                    version: str | None = None) -> Plan:
        """Make `spec` the primary specification; the former primary becomes a sensitivity
        specification with `reason` (e.g. the switch to the staggered estimator)."""
        e = self.get(estimand, level)
        e.spec(spec)
        specs = []
        for s in e.specs:
            if s.name == spec:
                specs.append(dataclasses.replace(s, role="primary", reason=s.reason))
            elif s.role == "primary":
                specs.append(dataclasses.replace(s, role="sensitivity", reason=reason))
            else:
                specs.append(s)
        return self._replace_estimand(dataclasses.replace(e, specs=tuple(specs)), version)

    def with_overrides(self, overrides: Sequence[Mapping[str, Any]], *,
                       version: str | None = None) -> Plan:
        """Apply a list of overrides, each ``{estimand, level (optional: every level with that
        spec), spec, <field>: <value>...}``, or ``{estimand, level, add: {<specification>}}``, or ``{estimand, level,
        primary: <spec>, reason: <why the former primary stays as sensitivity>}``."""
        plan = self
        for i, o in enumerate(overrides):
            if not isinstance(o, Mapping) or "estimand" not in o:
                raise PlanError(f"override #{i + 1} must be a mapping with an 'estimand' key",
                                field="overrides")
            o = dict(o)
            est = str(o.pop("estimand"))
            if "level" in o:
                levels = [o.pop("level")]
            else:  # every level of the estimand (that has the named specification)
                levels = [e.level for e in plan.estimands if e.id == est
                          and ("spec" not in o or any(s.name == o["spec"] for s in e.specs))]
            if not levels:
                e0 = plan.get(est, "collaborative")  # raises naming the estimand
                e0.spec(str(o.get("spec")))  # raises naming the specification
            for level in levels:
                if "add" in o:
                    plan = plan.with_spec(est, level, _spec_from_dict(o["add"], est, level))
                elif "primary" in o:
                    plan = plan.set_primary(est, level, str(o["primary"]),
                                            reason=str(o.get("reason", "")))
                else:
                    if "spec" not in o:
                        raise PlanError(f"override #{i + 1} needs 'spec', 'add' or 'primary'",
                                        estimand=est, level=level, field="overrides")
                    changes = {k: v for k, v in o.items() if k != "spec"}
                    plan = plan.replace_spec(est, level, str(o["spec"]), **changes)
        return Plan(version or plan.version, plan.estimands).validate()

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "estimands": [e.to_dict() for e in self.estimands]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=False)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False, width=100, allow_unicode=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Plan:
        """A plan from :meth:`to_dict` output, or ``{extends: default, version, overrides}``."""
        if not isinstance(d, Mapping):
            raise PlanError(f"a plan must be a mapping, got {type(d).__name__}")
        unknown = set(d) - {"version", "estimands", "extends", "overrides"}
        if unknown:
            raise PlanError(f"unknown top-level key(s) {sorted(unknown)}", field=min(unknown))
        if "extends" in d:
            if d["extends"] != "default":
                raise PlanError(f"extends must be 'default', got {d['extends']!r}", field="extends")
            if "estimands" in d:
                raise PlanError("give either estimands (a whole plan) or extends + overrides",
                                field="estimands")
            ov = d.get("overrides") or []
            if not isinstance(ov, list):
                raise PlanError("overrides must be a list", field="overrides")
            return default_plan().with_overrides(ov, version=d.get("version"))
        if "estimands" not in d or not isinstance(d["estimands"], list):
            raise PlanError("a whole plan needs a list of estimands", field="estimands")
        est = tuple(_estimand_from_dict(e, i) for i, e in enumerate(d["estimands"]))
        plan = cls(str(d.get("version", "")), est)
        if d.get("overrides"):
            plan = plan.with_overrides(d["overrides"])
        return plan.validate()

    @classmethod
    def from_yaml(cls, path: str | Path) -> Plan:
        """Read a plan file (see :meth:`from_dict` for the two forms)."""
        import yaml

        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise PlanError(f"cannot read plan file {str(path)!r}: {exc.strerror}") from exc
        try:
            d = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise PlanError(f"{str(path)!r} is not valid YAML: {exc}") from exc
        return cls.from_dict(d if d is not None else {})

    # -- display -------------------------------------------------------------------------------
    def table(self):
        """One row per estimand x level x specification (a pandas DataFrame)."""
        import pandas as pd

        rows = []
        for e in self.estimands:
            for s in e.specs:
                rows.append({"estimand": e.id, "level": e.level, "label": e.label, "role": s.role,
                             "spec": s.name, "settings": s.describe(), "reason": s.reason,
                             "per": e.per, "secondary_to": e.secondary_to or ""})
        return pd.DataFrame(rows)

    def __str__(self) -> str:
        lines = [f"IPSO analysis plan {self.version}"]
        for e in self.estimands:
            sec = f" (secondary to {e.secondary_to})" if e.secondary_to else ""
            lines.append(f"\n{e.id} [{e.level}]{sec}: {e.label}")
            lines.append(f"  population: {e.population}")
            lines.append(f"  variable: {VARIABLES[e.variable].description if e.variable in VARIABLES else e.variable}")
            for ie in e.intercurrent_events:
                lines.append(f"  intercurrent event: {ie.event} -> {ie.strategy}: {ie.handling}")
            lines.append(f"  summary: {e.summary}, {e.per}, {e.time_point} months after go-live")
            for s in e.specs:
                why = f" -- {s.reason}" if s.reason else ""
                lines.append(f"    {s.role:<11} {s.name}: {s.describe()}{why}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# validation and parsing helpers
def _validate_spec(s: Specification, e: Estimand, known: set[str]) -> None:
    def bad(msg: str, fld: str) -> PlanError:
        return PlanError(msg, estimand=e.id, level=e.level, spec=s.name, field=fld)

    if not isinstance(s.name, str) or not s.name:
        raise bad("a specification needs a name", "name")
    if s.role not in ROLES:
        raise bad(f"role must be one of {ROLES}, got {s.role!r}", "role")
    if s.estimator not in known:
        raise bad(f"unknown estimator {s.estimator!r}; known: {', '.join(sorted(known))}", "estimator")
    if s.role != "primary" and not (isinstance(s.reason, str) and s.reason.strip()):
        raise bad(f"a {s.role} specification needs a one-line reason", "reason")
    if isinstance(s.reason, str) and "\n" in s.reason.strip():
        raise bad("the reason must be one line", "reason")
    if s.family is not None and s.family not in FAMILIES:
        raise bad(f"family must be one of {FAMILIES} or empty, got {s.family!r}", "family")
    if s.standardisation not in STANDARDISATIONS:
        raise bad(f"standardisation must be one of {STANDARDISATIONS}, got {s.standardisation!r}",
                  "standardisation")
    if not s.casemix or not all(isinstance(c, str) and c for c in s.casemix):
        raise bad("casemix must be a non-empty list of episode columns", "casemix")
    if isinstance(s.seasonality, bool) or not isinstance(s.seasonality, int) or not 0 <= s.seasonality <= 6:
        raise bad(f"seasonality must be an integer 0-6 (Fourier pairs), got {s.seasonality!r}",
                  "seasonality")
    for name in ("transition", "time_point"):
        v = getattr(s, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise bad(f"{name} must be a non-negative integer (months), got {v!r}", name)
    if 0 < s.time_point < s.transition:  # time_point 0: a whole-post-period summary
        raise bad(f"time_point ({s.time_point}) is inside the transition ({s.transition} months)",
                  "time_point")
    if not isinstance(s.slope_change, bool):
        raise bad(f"slope_change must be true or false, got {s.slope_change!r}", "slope_change")
    if s.covariance not in COVARIANCES:
        raise bad(f"covariance must be one of {COVARIANCES}, got {s.covariance!r}", "covariance")
    if s.interval not in INTERVALS:
        raise bad(f"interval must be one of {INTERVALS}, got {s.interval!r}", "interval")
    if not isinstance(s.params, Mapping):
        raise bad("params must be a mapping", "params")


def _validate_estimand(e: Estimand, known: set[str]) -> None:
    def bad(msg: str, fld: str) -> PlanError:
        return PlanError(msg, estimand=e.id, level=e.level, field=fld)

    if not isinstance(e.id, str) or not e.id.isidentifier():
        raise PlanError(f"estimand id must be a short identifier, got {e.id!r}", field="id")
    if e.level not in LEVELS:
        raise bad(f"level must be one of {LEVELS}", "level")
    if e.variable not in VARIABLES:
        raise bad(f"unknown variable {e.variable!r}; known: {', '.join(VARIABLES)}", "variable")
    for fld in ("label", "population", "summary", "scale", "per"):
        if not isinstance(getattr(e, fld), str) or not getattr(e, fld).strip():
            raise bad("must be a non-empty string", fld)
    if e.better not in ("lower", "higher"):
        raise bad(f"better must be 'lower' or 'higher', got {e.better!r}", "better")
    if isinstance(e.time_point, bool) or not isinstance(e.time_point, int) or e.time_point < 0:
        raise bad(f"time_point must be a non-negative integer, got {e.time_point!r}", "time_point")
    names = [s.name for s in e.specs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise bad(f"specification names repeat: {dup}", "specs")
    for s in e.specs:
        _validate_spec(s, e, known)
    n_primary = sum(s.role == "primary" for s in e.specs)
    if n_primary != 1:
        raise bad(f"needs exactly one primary specification, has {n_primary}", "specs")


def _spec_from_dict(d: Any, est: str, level: str) -> Specification:
    if not isinstance(d, Mapping):
        raise PlanError("a specification must be a mapping", estimand=est, level=level, field="specs")
    names = {f.name for f in dataclasses.fields(Specification)}
    unknown = set(d) - names
    spec = d.get("name")
    if unknown:
        raise PlanError(f"unknown field(s) {sorted(unknown)}; known: {sorted(names)}", estimand=est,
                        level=level, spec=spec, field=min(unknown))
    for req in ("name", "role", "estimator"):
        if req not in d:
            raise PlanError("is missing", estimand=est, level=level, spec=spec, field=req)
    d = dict(d)
    if "casemix" in d:
        if not isinstance(d["casemix"], (list, tuple)):
            raise PlanError("casemix must be a list", estimand=est, level=level, spec=spec,
                            field="casemix")
        d["casemix"] = tuple(d["casemix"])
    if d.get("params") is None:
        d["params"] = {}
    if d.get("reason") is None:
        d["reason"] = ""
    return Specification(**d)


def _estimand_from_dict(d: Any, i: int) -> Estimand:
    if not isinstance(d, Mapping):
        raise PlanError(f"estimand #{i + 1} must be a mapping", field="estimands")
    est, level = d.get("id"), d.get("level")
    names = {f.name for f in dataclasses.fields(Estimand)}
    unknown = set(d) - names
    if unknown:
        raise PlanError(f"unknown field(s) {sorted(unknown)}", estimand=est, level=level,
                        field=min(unknown))
    missing = [f.name for f in dataclasses.fields(Estimand)
               if f.default is dataclasses.MISSING and f.name not in d]
    if missing:
        raise PlanError("is missing", estimand=est, level=level, field=missing[0])
    d = dict(d)
    ie = d.get("intercurrent_events") or []
    try:
        d["intercurrent_events"] = tuple(IntercurrentEvent(**x) for x in ie)
    except TypeError as exc:
        raise PlanError(f"each needs event, strategy, handling ({exc})", estimand=est, level=level,
                        field="intercurrent_events") from exc
    d["specs"] = tuple(_spec_from_dict(s, est, level) for s in (d.get("specs") or []))
    return Estimand(**d)


# ---------------------------------------------------------------------------------------------
# the default plan
PER_CHILD = "per child with the same case mix"
PER_EPISODE = "per recognised episode, including newly recognised milder cases"

_DEATH_BEFORE_DISCHARGE = IntercurrentEvent(
    "death before discharge", "composite",
    "the stay ends at death and its days count (as the simulator's truth does)")
_TRANSFER = IntercurrentEvent(
    "transfer to another hospital", "treatment policy",
    "the episode ends at discharge from this hospital; later events there are not seen")
_CUTOFF = IntercurrentEvent(
    "follow-up incomplete at the data cut-off", "while observed",
    "episodes whose window (or stay) had not ended by the cut-off are left out; nothing after it "
    "is seen")


def _ie_time(what: str) -> tuple[IntercurrentEvent, ...]:
    return (
        IntercurrentEvent(f"no {what} given", "principal stratum",
                          f"the time is defined among children given a {what}"),
        IntercurrentEvent(f"{what} given before T0", "composite",
                          "counted as faster than any time after T0 (negative minutes, ranked "
                          "below; medians need no logarithm of them)"),
        IntercurrentEvent("death before treatment", "principal stratum",
                          f"no {what} time; among those treated"),
    )


def _its(name: str, role: str = "primary", reason: str = "", **kw: Any) -> Specification:
    return Specification(name, role, "its_multisite", reason, **kw)


def _site(name: str, role: str = "primary", reason: str = "", **kw: Any) -> Specification:
    kw.setdefault("covariance", "model")
    return Specification(name, role, "site_its", reason, **kw)


def _crude(level: str) -> Specification:
    where = "all hospitals pooled" if level == "collaborative" else "this hospital"
    return Specification(
        "crude_pre_post", "descriptive", "crude", f"before/after comparison ({where}): no "
        "adjustment for trend, case mix or recognition expansion; no interval or p-value",
        standardisation="none", transition=0, time_point=0)


_NO_CRITICAL = tuple(c for c in DEFAULT_CASEMIX if c != "critical_sepsis")
#: Mortality, segmented regression (now a sensitivity analysis): hospital intercepts and one
#: calendar trend shared by all hospitals. A trend per hospital, fitted on about 40 30-day (18
#: 3-day) deaths each, biased the ratio up by 0.7% (1.6%) against the common trend on 200 paired
#: simulator replicates; staggered go-lives identify the common trend.
_COMMON_TREND: dict[str, Any] = {"params": {"site_trends": False}}
#: Site level of mortality: empirical Bayes partial pooling and the too-little-information rule
#: (:func:`analysis.results.site_eb`; validation in benchmarks/RESULTS.md).
SITE_EB: dict[str, Any] = {"own_estimate": "common_trend", "prior": "half_normal",
                           "prior_scale": 0.5, "interval": "posterior",
                           "min_expected_events": 20.0, "fit_set": "estimable"}
#: Proportions (bundle, screen, huddle, order set): a shift on the logit scale gives a ratio of
#: proportions that drifts as the baseline rises, and a level-only ratio model then lets that
#: drift tilt the hospitals' trends (+1.5 to +3% bias on the simulator); a slope change absorbs it.
_PROPORTION: dict[str, Any] = {"slope_change": True}

#: The imputation estimator for staggered go-lives (:mod:`analysis.results_staggered`) of each
#: rate outcome: settings of its untreated model, the collaborative primaries of 30-/3-day
#: mortality and recognition since plan 2026.12 (validated against the simulator's truth:
#: benchmarks/RESULTS.md, "Plan 2026.12 primaries against truth"). Mortality: hospital
#: intercepts, one common trend (a hospital's 11-25 deaths before go-live cannot carry a trend of
#: its own) and 1 Fourier pair, no calendar-month effects. 3-day deaths are too sparse for them
#: (months without any death among hospitals not yet live leave them without an estimate: 15 of
#: 60 replicates); for 30-day deaths (plan 2026.12-1: least-squares centring) they left the
#: primary not estimable in 4 of 400 default and null replicates and 10 of 200 with a calendar
#: shock, were no less biased under that shock (+6.2% against +4.5% without them, 200 replicates)
#: and widened the interval (log-scale SD 0.124 against 0.115); they stay as a sensitivity
#: analysis. Recognition: a trend per hospital, robust centring (high volume), 2 Fourier pairs
#: (least-squares centring covers better without a shock, 95.0% against 91.5%, but reads the
#: simulator's calendar shock as effect: +7.9% against +2.2%).
STAGGERED: dict[str, dict[str, Any]] = {
    "sam30": {"seasonality": 1, "params": {"site_trends": False, "calendar_effects": False}},
    "sam3": {"seasonality": 1, "params": {"site_trends": False, "calendar_effects": False}},
    "recognition": {"seasonality": 2, "params": {"site_trends": True,
                                                 "calendar_centering": "robust"}},
    "hospital_days": {"seasonality": 0, "params": {"site_trends": True,
                                                   "calendar_centering": "robust"}},
}


def _staggered(eid: str, name: str = "its_staggered", role: str = "primary", reason: str = "",
               estimator: str = "its_staggered", **changes: Any) -> Specification:
    """An imputation-estimator specification of `eid` (settings :data:`STAGGERED`)."""
    base = STAGGERED[eid]
    params = {**base["params"], **changes.pop("params", {})}
    kw: dict[str, Any] = {"seasonality": base["seasonality"], "interval": "t",
                          "covariance": "cluster", "transition": 6, "time_point": 12}
    kw.update(changes)
    return Specification(name, role, estimator, reason, params=params, **kw)


def _staggered_sensitivity(eid: str, **std: Any) -> list[Specification]:
    """The sensitivity analyses of an imputation primary (issue 12): placebo in time,
    leave-one-wave-out, transition 0 and 12, panel-HAC covariance, Rambachan-Roth bounds."""
    return [
        _staggered(eid, "placebo_in_time", "sensitivity", "every go-live moved 12 months "
                   "earlier, months before the real go-live only: the ratio over the fake first "
                   "12 months should be 1", estimator="staggered_placebo",
                   params={"shift": 12}, **std),
        _staggered(eid, "leave_one_wave_out", "sensitivity", "the estimate without each wave of "
                   "go-lives in turn: does one wave drive it?",
                   estimator="staggered_leave_one_wave_out", **std),
        _staggered(eid, "transition_0", "sensitivity", "no phase-in left out: event months 0-24, "
                   "an effect still building up in the first months pulls it toward no change",
                   transition=0, **std),
        _staggered(eid, "transition_12", "sensitivity", "a 12-month phase-in: event month 12 "
                   "alone, no averaging over neighbouring months (noisier)", transition=12, **std),
        _staggered(eid, "panel_hac", "sensitivity", "panel Newey-West covariance within hospital "
                   "instead of clustering by hospital", covariance="hac", **std),
        _staggered(eid, "rambachan_roth", "sensitivity", "Rambachan-Roth relative-magnitude bounds "
                   "on the effect at event month 12 for M = 0.5, 1 and 2: how large a departure "
                   "from parallel trends, relative to the largest between the leads, would "
                   "overturn the conclusion", estimator="staggered_rm_bounds",
                   params={"m_bar": [0.5, 1.0, 2.0]}, **std),
    ]


def _casemix_fit(eid: str) -> Specification:
    return Specification("casemix_model", "descriptive", "casemix_fit", "how well the baseline "
                         "case-mix model that standardises the estimand discriminates and is "
                         "calibrated", time_point=0, transition=0)


def _km() -> Specification:
    return Specification("km_survival", "descriptive", "km_curves", "Kaplan-Meier 30-day "
                         "survival before and after go-live: descriptive, no test (episodes are "
                         "clustered in hospitals)", standardisation="none", transition=0,
                         time_point=0, params={"horizon_days": 30})


def _funnel() -> Specification:
    return Specification("funnel", "descriptive", "funnel_oe", "how each hospital's "
                         "risk-adjusted mortality after go-live compares with the "
                         "collaborative's (funnel plot centred on the collaborative)",
                         transition=0, time_point=0,
                         params={"scale": "sqrt", "od_model": "additive"})


def _los_curves() -> Specification:
    return Specification("los_curves", "descriptive", "cif_curves", "cumulative incidence of "
                         "discharge alive and in-hospital death before and after go-live: "
                         "descriptive, no test (episodes are clustered in hospitals)",
                         standardisation="none", transition=0, time_point=0)


def _mortality(window: int) -> list[Estimand]:
    sam = f"sam{window}"
    out = []
    for level in LEVELS:
        specs: list[Specification] = []
        if level == "collaborative":
            specs += [
                _staggered(sam),
                _its("its_multisite", "sensitivity", "segmented regression with a constant "
                     "level change after the phase-in (the primary of plan 2026.11-1): uses every "
                     "month after the phase-in, so more precise, but biased when the effect grows "
                     "or fades (30-day: +8% when it grows, -4% when it wanes, on the simulator)",
                     covariance="cluster", **_COMMON_TREND),
                *([_staggered(sam, "calendar_effects", "sensitivity", "calendar-month effects "
                              "identified by hospitals not yet live (least-squares centring): "
                              "guards against a shock shared by all hospitals, but a month without "
                              "a death among them leaves it not estimable (1% of simulator "
                              "replicates, 5% with a calendar shock), and it was no less biased "
                              "under the simulated shock",
                              params={"calendar_effects": True, "calendar_centering": "ls"})]
                  if window == 30 else []),
                _staggered(sam, "no_critical_casemix", "sensitivity", "the IPSO practices may "
                           "change who is classed as critical, so critical_sepsis is dropped from "
                           "the case mix", casemix=_NO_CRITICAL),
                _its("slope_change", "sensitivity", "segmented regression that lets the effect "
                     "grow or fade after the phase-in (level and slope change)", slope_change=True,
                     **_COMMON_TREND),
                _its("site_trends", "sensitivity", "segmented regression with one calendar trend "
                     "per hospital: allows hospital-specific secular change, but with few deaths "
                     "per hospital biases the ratio up (+0.7% for 30-day, +1.6% for 3-day "
                     "mortality on the simulator)"),
                Specification("pooled_site_its", "sensitivity", "site_pooled",
                              "per-hospital ITS pooled by REML random effects (the forest plot): "
                              "weights hospitals, not episodes", covariance="model"),
            ]
            if window == 30:
                specs.append(Specification(
                    "cox_calendar", "sensitivity", "cox_calendar", "hazard ratio over the months "
                    "after the phase-in, Cox model stratified by hospital, adjusted for case mix "
                    "and calendar time, cluster-robust SE: another model and scale",
                    time_point=0, transition=6, family=None, params={"horizon_days": window}))
            specs += _staggered_sensitivity(sam)
            specs.append(_casemix_fit(sam))
            if window == 30:
                specs += [_km(), _funnel()]
        else:
            specs += [
                Specification("site_eb", "primary", "site_eb", covariance="model",
                              seasonality=1, params=dict(SITE_EB)),
                _site("site_its", "sensitivity", "this hospital's own series only (no borrowing "
                      "from other hospitals): noisier, shown for transparency",
                      params={"paths": window == 30}),
            ]
            if window == 30:
                specs += [_km(), _funnel()]
        specs.append(_crude(level))
        out.append(Estimand(
            sam, level, f"{window}-day sepsis-attributable mortality", sam,
            "children's sepsis episodes (IPSO criteria, T0) at IPSO hospitals, including those "
            "recognised only because of IPSO",
            f"ratio of {window}-day sepsis-attributable death risks, with IPSO vs without IPSO, "
            "for the same episodes",
            "risk ratio", "deaths per 100 episodes", PER_CHILD, "lower", "decrease", "increase",
            (IntercurrentEvent("discharge alive before day " + str(window), "composite",
                               "counted as survival (IPSO counts in-hospital deaths)"),
             IntercurrentEvent("death from another cause", "composite",
                               "any in-hospital death within the window counts (IPSO rule)"),
             _TRANSFER, _CUTOFF),
            specs=tuple(specs)))
    return out


def _simple(eid: str, variable: str, label: str, summary: str, scale: str, unit: str, per: str,
            better: str, down: str, up: str, events: tuple[IntercurrentEvent, ...],
            standardisation: str, secondary_to: str | None = None,
            sensitivity_no_critical: bool = False, population: str | None = None,
            extra: dict[str, list[Specification]] | None = None,
            **model: Any) -> list[Estimand]:
    """An estimand at both levels: segmented regression (collaborative) and the hospital's own
    series (site), each with a crude comparison; `extra`: more specifications per level."""
    out = []
    for level in LEVELS:
        if level == "collaborative":
            specs = [_its("its_multisite", standardisation=standardisation, **model)]
            if sensitivity_no_critical:
                specs.append(_its("no_critical_casemix", "sensitivity", "the IPSO practices may "
                                  "change who is classed as critical, so critical_sepsis is dropped "
                                  "from the case mix", casemix=_NO_CRITICAL, **model))
        else:
            # the hospital's ITS figure (recognition, hospital days) is drawn from its paths
            paths = {"params": {"paths": True}} if eid in ("recognition", "hospital_days") else {}
            specs = [_site("site_its", standardisation=standardisation,
                           covariance="hac" if variable == "recognition" else "model",
                           **model, **paths)]
        specs += (extra or {}).get(level, [])
        specs.append(_crude(level))
        out.append(Estimand(
            eid, level, label, variable,
            population or "children's sepsis episodes (IPSO criteria, T0) at IPSO hospitals",
            summary, scale, unit, per, better, down, up, events, secondary_to=secondary_to,
            specs=tuple(specs)))
    return out


def _with_staggered_primary(estimands: list[Estimand], reason: str) -> list[Estimand]:
    """Make the imputation estimator the collaborative primary of a rate estimand (the former
    segmented-regression primary stays as a sensitivity analysis with `reason`) and add its
    sensitivity analyses."""
    out = []
    for e in estimands:
        if e.level == "collaborative":
            specs = [_staggered(e.id, standardisation=e.primary.standardisation)]
            for sp in e.specs:
                specs.append(dataclasses.replace(sp, role="sensitivity", reason=reason)
                             if sp.role == "primary" else sp)
            specs[-1:-1] = _staggered_sensitivity(e.id, standardisation=e.primary.standardisation)
            e = dataclasses.replace(e, specs=tuple(specs))
        out.append(e)
    return out


def default_plan() -> Plan:
    """The default IPSO analysis plan (version :data:`PLAN_VERSION`)."""
    e: list[Estimand] = []
    e += _mortality(30)
    e += _mortality(3)
    e += _with_staggered_primary(_simple(
        "recognition", "recognition", "Sepsis recognition", "ratio of episodes recognised per "
        "1,000 admissions, with IPSO vs without IPSO", "rate ratio",
        "episodes per 1,000 admissions", "per 1,000 hospital admissions", "higher", "decrease",
        "increase", (), "none",
        population="admissions to IPSO hospitals (the rate counts newly recognised episodes)",
        seasonality=2), "segmented regression with a constant level change after the phase-in "
        "(the primary of plan 2026.11-1): more precise, but biased when the effect grows or fades "
        "(-10% when it grows, +5% when it wanes, on the simulator)")
    for eid, var, label, what in (
        ("bundle", "bundle", "IPSO bundle compliance", "bundle compliance"),
        ("screen_positive", "screen_positive", "Positive sepsis screen", "a positive screen"),
        ("huddle", "huddle", "Sepsis huddle", "a huddle"),
        ("order_set", "order_set", "Sepsis order set", "order-set use"),
    ):
        events = (_TRANSFER,) if var != "bundle" else (
            IntercurrentEvent("no bolus or antibiotic given", "composite", "the bundle is not met"),
            IntercurrentEvent("treatment given before T0", "composite",
                              "counts as timely (settings.treatment_before_t0_is_timely)"),
            _TRANSFER)
        hac = _its("panel_hac", "sensitivity", "panel Newey-West covariance within hospital "
                   "instead of clustering by hospital: the variance for these hospitals, without "
                   "the between-hospital spread of the effect", standardisation="casemix",
                   covariance="hac", **_PROPORTION)
        e += _simple(eid, var, label, f"ratio of the probability of {what}, with IPSO vs "
                     "without IPSO, for the same episodes", "ratio of proportions",
                     "% of episodes", PER_CHILD, "higher", "decrease", "increase", events,
                     "casemix", sensitivity_no_critical=(eid == "bundle"),
                     extra={"collaborative": [hac]}, **_PROPORTION)
        if eid == "bundle":
            e += _simple("bundle_population", var, label + " (all recognised episodes)",
                         "ratio of bundle compliance among the episodes recognised with IPSO vs "
                         "those that would have been recognised without it", "ratio of proportions",
                         "% of episodes", PER_EPISODE, "higher", "decrease", "increase", events,
                         "none", secondary_to="bundle", **_PROPORTION)
    los_events = (_DEATH_BEFORE_DISCHARGE, _TRANSFER, _CUTOFF)
    e += _simple("hospital_days", "hospital_days", "Hospital days per episode",
                 "ratio of mean hospital days, with IPSO vs without IPSO, for the same episodes",
                 "ratio of means", "days per episode", PER_CHILD, "lower", "fewer", "more",
                 los_events, "casemix", sensitivity_no_critical=True,
                 extra={"collaborative": [_staggered(
                     "hospital_days", role="sensitivity", reason="imputation estimator for "
                     "staggered go-lives (event months 6-18): no constant-effect assumption, but "
                     "about twice the standard error of the segmented regression",
                     standardisation="casemix"), _los_curves()], "site": [_los_curves()]})
    e += _simple("hospital_days_population", "hospital_days", "Hospital days per episode (all "
                 "recognised episodes)", "ratio of mean hospital days among the episodes "
                 "recognised with IPSO vs those that would have been recognised without it",
                 "ratio of means", "days per episode", PER_EPISODE, "lower", "fewer", "more",
                 los_events, "none", secondary_to="hospital_days")
    for eid, var, label, what in (("bolus_minutes", "bolus_minutes", "Minutes to first fluid bolus",
                                   "bolus"),
                                  ("antibiotic_minutes", "antibiotic_minutes",
                                   "Minutes to first IV antibiotic", "antibiotic")):
        e += _simple(eid, var, label, "ratio of median minutes from T0, with IPSO vs without "
                     "IPSO, for the same episodes (among those treated)", "ratio of medians",
                     "minutes (median)", PER_CHILD, "lower", "faster", "slower", _ie_time(what),
                     "casemix", sensitivity_no_critical=True)
        e += _simple(f"{eid}_population", var, label + " (all recognised episodes)",
                     "ratio of median minutes among the episodes recognised with IPSO vs those "
                     "that would have been recognised without it", "ratio of medians",
                     "minutes (median)", PER_EPISODE, "lower", "faster", "slower", _ie_time(what),
                     "none", secondary_to=eid)
    return Plan(PLAN_VERSION, tuple(e))

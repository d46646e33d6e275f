"""Honest wording: sentences generated from an estimate, its interval and its role.

Every sentence is a pure function of (estimate, interval, role/kind, the measure's words), so
the same numbers always read the same way and each case is tested. The rules:

* **"No clear change"** whenever the interval includes no effect (ratio 1, difference 0),
  including an interval that only touches it.
* **"Likely fell / rose"** (or the measure's own verbs: "got faster", ...) only when the interval
  excludes no effect, and only for a primary or secondary estimate of the pooled or collaborative
  kind.
* **Never a percentage without its interval**: every effect is printed with its interval.
* **No direction headline from an unpooled estimate** (a hospital's own data alone): it is
  labelled as the unpooled secondary estimate and described without "likely fell/rose".
* **Labels for the other roles**: sensitivity analyses and descriptive comparisons say so first;
  descriptive comparisons never use the causal verbs.
* **Not estimable** when the estimate or a bound is missing or infinite (or a ratio is not
  positive): the sentence says so instead of printing numbers.
* **No counts**: sentences carry ratios, differences and percentages only (never numbers of
  patients or deaths), so they can be published next to suppressed tables.

Ratios below 2 are written as percent changes ("19% lower"); from 2 on as "2.4 times as high",
which reads better than "140% higher". Percent changes are rounded to whole percent from 1%, to
one decimal below 1%, and "less than 0.1%" below that, so a bound never prints as a misleading
"0%" unless it is exactly no change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Scale = Literal["ratio", "difference"]
Role = Literal["primary", "secondary", "sensitivity", "descriptive"]
Kind = Literal["pooled", "unpooled", "collaborative"]
Verdict = Literal["not_estimable", "no_clear_change", "decrease", "increase"]

ROLES: tuple[str, ...] = ("primary", "secondary", "sensitivity", "descriptive")
KINDS: tuple[str, ...] = ("pooled", "unpooled", "collaborative")

#: Label printed before a sentence of each role (primary estimates carry none).
ROLE_LABELS = {
    "primary": "",
    "secondary": "Secondary estimate",
    "sensitivity": "Sensitivity analysis",
    "descriptive": "Descriptive comparison (not an effect estimate)",
}
UNPOOLED_LABEL = "This hospital's own data alone (unpooled, secondary estimate)"


@dataclass(frozen=True)
class MeasureWords:
    """The words of one estimand: what is measured, per what, and its direction words.

    ``name``: the measure ("30-day sepsis-attributable mortality"); ``per``: what it is per
    ("per child with the same case mix"); ``scale``: "ratio" (no effect = 1) or "difference"
    (no effect = 0, in ``unit``, shown with ``decimals``); ``fell``/``rose``: verbs of a change
    down/up ("fell", "got faster"); ``lower``/``higher``: comparatives ("lower", "fewer",
    "shorter"); ``as_high``: for ratios of 2 or more ("as high", "as many", "as long");
    ``events``: what is counted, for the too-little-information sentence ("deaths").
    """

    name: str
    per: str = ""
    scale: Scale = "ratio"
    unit: str = ""
    fell: str = "fell"
    rose: str = "rose"
    lower: str = "lower"
    higher: str = "higher"
    as_high: str = "as high"
    events: str = "events"
    decimals: int = 0

    def __post_init__(self):
        if self.scale not in ("ratio", "difference"):
            raise ValueError(f"scale must be 'ratio' or 'difference', got {self.scale!r}")
        if not self.name.strip():
            raise ValueError("a measure needs a name")

    @property
    def null(self) -> float:
        """The value of no effect: 1 for ratios, 0 for differences."""
        return 1.0 if self.scale == "ratio" else 0.0

    @property
    def subject(self) -> str:
        """Name and per-what phrase, e.g. "30-day mortality per child with the same case mix"."""
        return f"{self.name} {self.per}".strip()


# Words of the IPSO estimands (see data/SYNTHETIC.md for their definitions).
MORTALITY_30D = MeasureWords("30-day sepsis-attributable mortality", "per child with the same case mix",
                             events="deaths")
MORTALITY_3D = MeasureWords("3-day sepsis-attributable mortality", "per child with the same case mix",
                            events="deaths")
RECOGNITION = MeasureWords("sepsis recognition", "per 1,000 hospital admissions", fell="fell",
                           rose="rose", lower="lower", higher="higher", events="episodes")
BUNDLE = MeasureWords("sepsis bundle compliance", "per recognised episode", events="episodes")
LENGTH_OF_STAY = MeasureWords("hospital days", "per sepsis episode", lower="fewer", higher="more",
                              as_high="as many", events="episodes")
TIME_TO_ANTIBIOTIC = MeasureWords("time from sepsis recognition to first antibiotic",
                                  "(median per episode)", fell="got faster", rose="got slower",
                                  lower="shorter", higher="longer", as_high="as long",
                                  events="episodes")
TIME_TO_BOLUS = MeasureWords("time from sepsis recognition to first fluid bolus",
                             "(median per episode)", fell="got faster", rose="got slower",
                             lower="shorter", higher="longer", as_high="as long",
                             events="episodes")


# ---------------------------------------------------------------------------------------------
# classification and number formatting
# ---------------------------------------------------------------------------------------------


def _finite(*xs) -> bool:
    try:
        return all(x is not None and math.isfinite(float(x)) for x in xs)
    except (TypeError, ValueError):
        return False


def classify(estimate, lower, upper, scale: Scale = "ratio") -> Verdict:
    """"not_estimable" (a value missing/infinite, or a ratio estimate <= 0 / bound < 0),
    "no_clear_change" (the interval includes or touches no effect), "decrease" or "increase"
    (the whole interval below / above no effect). Raises ``ValueError`` when the numbers are
    not an estimate inside its interval."""
    if scale not in ("ratio", "difference"):
        raise ValueError(f"scale must be 'ratio' or 'difference', got {scale!r}")
    if not _finite(estimate, lower, upper):
        return "not_estimable"
    est, lo, hi = float(estimate), float(lower), float(upper)
    if scale == "ratio" and (est <= 0 or lo < 0):
        return "not_estimable"
    if not lo <= hi:
        raise ValueError(f"interval is reversed: lower {lo!r} > upper {hi!r}")
    if not lo <= est <= hi:
        raise ValueError(f"estimate {est!r} lies outside its interval ({lo!r}, {hi!r})")
    null = 1.0 if scale == "ratio" else 0.0
    if lo <= null <= hi:
        return "no_clear_change"
    return "decrease" if hi < null else "increase"


def _percent(p: float) -> str:
    """A positive percent, rounded so that small changes do not print as 0%."""
    if p == 0:
        return "0%"
    if p < 0.1:
        return "less than 0.1%"
    if p < 1:
        return f"{p:.1f}%"
    return f"{p:.0f}%"


def change_text(value: float, m: MeasureWords) -> str:
    """One value as a change from no effect: "19% lower", "2.4 times as high",
    "12 minutes shorter", "no change"."""
    v = float(value)
    if m.scale == "ratio":
        if v == 1:
            return "no change"
        if v >= 2:
            return f"{v:.1f} times {m.as_high}"
        if v > 1:
            return f"{_percent(100 * (v - 1))} {m.higher}"
        return f"{_percent(100 * (1 - v))} {m.lower}"
    if v == 0:
        return "no change"
    mag = abs(v)
    txt = f"{mag:.{m.decimals}f}"
    if float(txt) == 0:  # do not print a non-zero difference as 0
        txt = f"less than {10 ** -m.decimals:.{m.decimals}f}"
    unit = m.unit
    if txt.rsplit(" ", 1)[-1] == "1" and unit.endswith("s"):
        unit = unit[:-1]  # "1 minute", "less than 1 percentage point"
    unit = f" {unit}" if unit else ""
    return f"{txt}{unit} {m.higher if v > 0 else m.lower}"


def interval_text(lower: float, upper: float, m: MeasureWords, *, level: float = 0.95,
                  name: str = "CI") -> str:
    """The interval in words. Both bounds on the same side of no effect: from the smaller change
    to the larger, sharing the words ("95% CI 5% to 31% lower", "95% CI 5 to 19 minutes
    shorter"); otherwise from the lower bound to the higher ("95% CI 12% lower to 8% higher",
    "95% CI 31% lower to no change")."""
    lo, hi = float(lower), float(upper)
    null = m.null
    lab = f"{_level(level)} {name}"
    if lo > null or hi < null:
        near, far = (lo, hi) if lo > null else (hi, lo)
        a, b = change_text(near, m), change_text(far, m)
        a_num, _, a_rest = a.partition(" ")
        _, _, b_rest = b.partition(" ")
        if a_rest == b_rest and a_num != "less":
            return f"{lab} {a_num} to {b}"
        return f"{lab} {a} to {b}"
    return f"{lab} {change_text(lo, m)} to {change_text(hi, m)}"


def _est(est: str) -> str:
    return f"estimate: {est}" if est == "no change" else f"estimate {est}"


def _level(level: float) -> str:
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, got {level!r}")
    return f"{100 * level:g}%"


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _check_role(role: str, kind: str) -> None:
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


# ---------------------------------------------------------------------------------------------
# sentences
# ---------------------------------------------------------------------------------------------


def not_estimable_sentence(m: MeasureWords, reason: str | None = None) -> str:
    """"<Measure>: not estimable from these data[ (reason)]." """
    tail = f" ({reason.strip().rstrip('.')})" if reason and reason.strip() else ""
    return f"{_cap(m.subject)}: not estimable from these data{tail}."


def too_few_sentence(m: MeasureWords) -> str:
    """The too-little-information sentence for a hospital's own effect (see
    :data:`analysis.pooling.TOO_LITTLE_INFORMATION_RULE`)."""
    return (f"Too few {m.events} to estimate this hospital's own effect on {m.name}; the "
            "collaborative's effect and how this hospital compares with the others are shown "
            "instead.")


def effect_sentence(estimate, lower, upper, m: MeasureWords, *, role: Role = "primary",
                    kind: Kind = "pooled", level: float = 0.95, subject: str | None = None,
                    interval_name: str = "CI") -> str:
    """The sentence for one effect estimate (after vs before go-live, or as the estimand says).

    ``role``: "primary", "secondary", "sensitivity" or "descriptive" (labelled, never causal
    verbs); ``kind``: "pooled" (partially pooled hospital estimate), "collaborative" (all
    hospitals) or "unpooled" (one hospital's own data alone: labelled secondary, never a
    "likely rose/fell" headline). ``subject`` optionally starts the sentence ("At this
    hospital", "Across the collaborative")."""
    _check_role(role, kind)
    verdict = classify(estimate, lower, upper, m.scale)
    if verdict == "not_estimable":
        return not_estimable_sentence(m)
    est = change_text(estimate, m)
    ci = interval_text(lower, upper, m, level=level, name=interval_name)
    lead = f"{subject.strip().rstrip(',')}, " if subject else ""
    if kind == "unpooled":
        what = ("no clear change" if verdict == "no_clear_change" else est)
        body = (f"{what} in {m.subject} ({_est(est)}; {ci})" if verdict == "no_clear_change"
                else f"{m.subject} {est} ({ci})")
        return f"{UNPOOLED_LABEL}: {lead}{body}."
    if role == "descriptive":
        body = f"{m.subject} {est} ({ci})"
        if verdict == "no_clear_change":
            body += ", an interval that includes no change"
        return f"{ROLE_LABELS['descriptive']}: {lead}{body}."
    if verdict == "no_clear_change":
        body = f"no clear change in {m.subject} ({_est(est)}; {ci})"
    else:
        verb = m.fell if verdict == "decrease" else m.rose
        body = f"{m.subject} likely {verb}: {est} ({ci})"
    label = ROLE_LABELS[role]
    text = lead + body if lead else body
    return f"{label}: {text}." if label else f"{_cap(text)}."


def comparison_sentence(ratio, lower, upper, m: MeasureWords, *, level: float = 0.95,
                        interval_name: str = "CI") -> str:
    """How this hospital compares with the collaborative, from the ratio of its (partially
    pooled) effect or rate to the collaborative's: "no clear difference", "likely lower" or
    "likely higher than the collaborative's"."""
    verdict = classify(ratio, lower, upper, "ratio")
    what = f"this hospital's {m.subject}"
    if verdict == "not_estimable":
        return f"How {what} compares with the collaborative is not estimable from these data."
    est = change_text(ratio, m)
    ci = interval_text(lower, upper, m, level=level, name=interval_name)
    if verdict == "no_clear_change":
        return (f"No clear difference between {what} and the collaborative's ({_est(est)}"
                f"{'' if est == 'no change' else ' than the collaborative'}; {ci}).")
    side = m.lower if verdict == "decrease" else m.higher
    return f"{_cap(what)} was likely {side} than the collaborative's: {est} ({ci})."


def _about(x: float) -> str:
    if x < 10:
        return f"{x:.1f}"
    return f"{x:.0f}"


def expected_flags_sentence(n_units: int, level: float = 0.998, *, unit: str = "hospitals") -> str:
    """"With 57 hospitals, about 0.1 would fall outside the 99.8% limits by chance alone." """
    if int(n_units) != n_units or n_units < 1:
        raise ValueError(f"n_units must be a positive integer, got {n_units!r}")
    expected = n_units * (1 - level)
    return (f"With {int(n_units)} {unit}, about {_about(expected)} would fall outside the "
            f"{_level(level)} limits by chance alone.")


def funnel_sentence(flag: str, m: MeasureWords, *, n_units: int, level: float = 0.998,
                    period: str = "after go-live") -> str:
    """The funnel-plot sentence for one hospital: `flag` is "" (inside the limits), "high" or
    "low" (outside the `level` limits around the collaborative's ratio)."""
    chance = expected_flags_sentence(n_units, level)
    what = f"risk-adjusted {m.name}"
    if flag == "":
        return (f"Within the {_level(level)} limits: no evidence that this hospital's {what} "
                f"{period} differs from the collaborative's. {chance}")
    if flag not in ("high", "low"):
        raise ValueError(f"flag must be '', 'high' or 'low', got {flag!r}")
    side = m.higher if flag == "high" else m.lower
    pos = "Above" if flag == "high" else "Below"
    return (f"{pos} the {_level(level)} limits: this hospital's {what} {period} was {side} than "
            f"the collaborative's by more than chance alone would explain. {chance}")


def site_sentences(row, m: MeasureWords, *, level: float = 0.95, log_scale: bool = True) -> list[str]:
    """The sentences of one hospital's effect from a row of
    :meth:`analysis.pooling.EmpiricalBayesResult.summary` (``log_scale=True``: the log-scale
    table, exponentiated here; ``False``: the table is already on the ratio scale): the
    partially pooled primary sentence and the labelled unpooled secondary one, or the
    too-little-information sentence (and nothing numeric) when the hospital has no own
    estimate."""
    status = str(row["status"])
    if status == "too little information":
        return [too_few_sentence(m)]
    if status != "ok":
        return [not_estimable_sentence(m)]
    tr = math.exp if log_scale else (lambda v: v)
    own = "yi" if "yi" in row else "own_estimate"
    out = [effect_sentence(tr(row["estimate"]), tr(row["lower"]), tr(row["upper"]), m,
                           kind="pooled", level=level, subject="At this hospital")]
    out.append(effect_sentence(tr(row[own]), tr(row["own_lower"]), tr(row["own_upper"]), m,
                               kind="unpooled", level=level))
    return out


__all__ = [
    "BUNDLE",
    "KINDS",
    "LENGTH_OF_STAY",
    "MORTALITY_3D",
    "MORTALITY_30D",
    "RECOGNITION",
    "ROLES",
    "ROLE_LABELS",
    "TIME_TO_ANTIBIOTIC",
    "TIME_TO_BOLUS",
    "UNPOOLED_LABEL",
    "MeasureWords",
    "change_text",
    "classify",
    "comparison_sentence",
    "effect_sentence",
    "expected_flags_sentence",
    "funnel_sentence",
    "interval_text",
    "not_estimable_sentence",
    "site_sentences",
    "too_few_sentence",
]

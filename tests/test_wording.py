"""analysis.wording: every sentence case, including the boundaries."""

from __future__ import annotations

import math
import re

import pytest

from analysis import wording as w

M = w.MORTALITY_30D
MIN = w.MeasureWords("minutes to first antibiotic", scale="difference", unit="minutes",
                     fell="got faster", rose="got slower", lower="shorter", higher="longer")
NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    "est, lo, hi, scale, verdict",
    [
        (0.81, 0.69, 0.95, "ratio", "decrease"),
        (1.12, 1.03, 1.22, "ratio", "increase"),
        (0.97, 0.88, 1.08, "ratio", "no_clear_change"),
        (0.81, 0.69, 1.00, "ratio", "no_clear_change"),  # touching 1 = includes no effect
        (1.20, 1.00, 1.45, "ratio", "no_clear_change"),
        (1.00, 1.00, 1.00, "ratio", "no_clear_change"),
        (0.999, 0.998, 0.9999, "ratio", "decrease"),      # tiny but clear
        (0.5, 0.0, 1.3, "ratio", "no_clear_change"),      # exact CI with a zero lower bound
        (NAN, 0.5, 1.2, "ratio", "not_estimable"),
        (0.8, NAN, 1.2, "ratio", "not_estimable"),
        (0.8, 0.5, INF, "ratio", "not_estimable"),
        (0.8, -INF, 1.2, "ratio", "not_estimable"),
        (None, 0.5, 1.2, "ratio", "not_estimable"),
        ("n/a", 0.5, 1.2, "ratio", "not_estimable"),
        (0.0, 0.0, 0.0, "ratio", "not_estimable"),        # a ratio of zero has no percent change
        (-12.0, -19.0, -5.0, "difference", "decrease"),
        (3.0, 0.0, 6.0, "difference", "no_clear_change"),
        (3.0, 0.5, 6.0, "difference", "increase"),
    ],
)
def test_classify_every_case(est, lo, hi, scale, verdict):
    assert w.classify(est, lo, hi, scale) == verdict


@pytest.mark.parametrize(
    "args, match",
    [((0.8, 1.2, 0.9), "reversed"), ((1.5, 0.8, 1.2), "outside"), ((0.8, 0.7, 0.9, "log"), "scale")],
)
def test_classify_rejects_inconsistent_numbers(args, match):
    with pytest.raises(ValueError, match=match):
        w.classify(*args)


@pytest.mark.parametrize(
    "value, text",
    [
        (0.81, "19% lower"),
        (1.12, "12% higher"),
        (1.0, "no change"),
        (0.996, "0.4% lower"),
        (0.9996, "less than 0.1% lower"),
        (1.994, "99% higher"),
        (2.0, "2.0 times as high"),
        (3.16, "3.2 times as high"),
        (0.05, "95% lower"),
    ],
)
def test_change_text_ratio(value, text):
    assert w.change_text(value, M) == text


def test_change_text_difference_units_and_rounding():
    assert w.change_text(-12.3, MIN) == "12 minutes shorter"
    assert w.change_text(4.6, MIN) == "5 minutes longer"
    assert w.change_text(1.2, MIN) == "1 minute longer"
    assert w.change_text(-0.2, MIN) == "less than 1 minute shorter"
    assert w.change_text(0.0, MIN) == "no change"
    pp = w.MeasureWords("bundle compliance", scale="difference", unit="percentage points", decimals=1)
    assert w.change_text(3.04, pp) == "3.0 percentage points higher"
    assert w.change_text(-0.01, pp) == "less than 0.1 percentage points lower"


def test_interval_text_orders_and_shares_words():
    assert w.interval_text(0.69, 0.95, M) == "95% CI 5% to 31% lower"
    assert w.interval_text(1.03, 1.22, M) == "95% CI 3% to 22% higher"
    assert w.interval_text(0.88, 1.08, M) == "95% CI 12% lower to 8% higher"
    assert w.interval_text(0.69, 1.0, M) == "95% CI 31% lower to no change"
    assert w.interval_text(2.1, 9.9, M) == "95% CI 2.1 to 9.9 times as high"
    assert w.interval_text(1.01, 9.9, M) == "95% CI 1% higher to 9.9 times as high"
    assert w.interval_text(-19, -5, MIN) == "95% CI 5 to 19 minutes shorter"
    assert w.interval_text(0.7, 0.9, M, level=0.9, name="interval") == "90% interval 10% to 30% lower"
    with pytest.raises(ValueError, match="level"):
        w.interval_text(0.7, 0.9, M, level=95)


def test_primary_pooled_sentences():
    fell = w.effect_sentence(0.81, 0.69, 0.95, M)
    assert fell == ("30-day sepsis-attributable mortality per child with the same case mix likely "
                    "fell: 19% lower (95% CI 5% to 31% lower).")
    rose = w.effect_sentence(1.12, 1.03, 1.22, M)
    assert "likely rose: 12% higher (95% CI 3% to 22% higher)" in rose
    none = w.effect_sentence(0.97, 0.88, 1.08, M)
    assert none.startswith("No clear change in 30-day sepsis-attributable mortality per child")
    assert "(estimate 3% lower; 95% CI 12% lower to 8% higher)" in none
    assert "likely" not in none
    touching = w.effect_sentence(0.81, 0.69, 1.0, M)
    assert touching.startswith("No clear change") and "31% lower to no change" in touching
    exact_null = w.effect_sentence(1.0, 0.9, 1.1, M)
    assert "(estimate: no change; 95% CI 10% lower to 10% higher)" in exact_null


def test_tiny_effect_keeps_its_precision():
    s = w.effect_sentence(0.998, 0.996, 0.9995, M)
    assert "likely fell: 0.2% lower (95% CI less than 0.1% lower to 0.4% lower)" in s
    assert " 0% " not in s


@pytest.mark.parametrize("bad", [(NAN, 0.5, 1.2), (0.8, 0.5, INF), (0.8, NAN, NAN)])
def test_not_estimable_sentence_prints_no_numbers(bad):
    s = w.effect_sentence(*bad, M)
    assert s == ("30-day sepsis-attributable mortality per child with the same case mix: not "
                 "estimable from these data.")
    assert w.not_estimable_sentence(M, "too few months after go-live.").endswith(
        "(too few months after go-live).")


def test_every_percentage_comes_with_its_interval():
    cases = [(0.81, 0.69, 0.95), (1.12, 1.03, 1.22), (0.97, 0.88, 1.08), (3.2, 1.01, 9.9)]
    for role in w.ROLES:
        for kind in w.KINDS:
            for c in cases:
                s = w.effect_sentence(*c, M, role=role, kind=kind)
                assert "95% CI" in s, s
                # the point estimate is never printed without the interval in the same sentence
                assert s.count("(") == s.count(")")


def test_unpooled_estimate_never_gets_a_direction_headline():
    # the S48 case: own data alone, 216% more deaths with a wide interval excluding 1
    s = w.effect_sentence(3.16, 1.01, 9.9, M, kind="unpooled")
    assert s.startswith(w.UNPOOLED_LABEL)
    assert "likely" not in s and "rose" not in s and "increase" not in s
    assert "3.2 times as high (95% CI 1% higher to 9.9 times as high)" in s
    down = w.effect_sentence(0.6, 0.4, 0.9, M, kind="unpooled")
    assert "likely" not in down and "fell" not in down
    flat = w.effect_sentence(1.1, 0.7, 1.6, M, kind="unpooled")
    assert "no clear change" in flat


def test_role_labels():
    sens = w.effect_sentence(0.9, 0.85, 0.95, w.LENGTH_OF_STAY, role="sensitivity")
    assert sens == ("Sensitivity analysis: hospital days per sepsis episode likely fell: 10% fewer "
                    "(95% CI 5% to 15% fewer).")
    sec = w.effect_sentence(0.9, 0.85, 0.95, M, role="secondary", kind="collaborative")
    assert sec.startswith("Secondary estimate: 30-day")
    desc = w.effect_sentence(0.70, 0.6, 0.8, M, role="descriptive")
    assert desc.startswith("Descriptive comparison (not an effect estimate): ")
    assert "likely" not in desc and "fell" not in desc and "30% lower" in desc
    desc0 = w.effect_sentence(0.95, 0.8, 1.1, M, role="descriptive")
    assert "includes no change" in desc0
    with pytest.raises(ValueError, match="role"):
        w.effect_sentence(0.9, 0.8, 1.0, M, role="headline")
    with pytest.raises(ValueError, match="kind"):
        w.effect_sentence(0.9, 0.8, 1.0, M, kind="own")


def test_subject_and_measure_direction_words():
    s = w.effect_sentence(0.9, 0.85, 0.95, w.TIME_TO_ANTIBIOTIC, subject="At this hospital")
    assert s.startswith("At this hospital, time from sepsis recognition to first antibiotic")
    assert "likely got faster: 10% shorter (95% CI 5% to 15% shorter)" in s
    slower = w.effect_sentence(12.0, 4.0, 20.0, MIN)
    assert slower == ("Minutes to first antibiotic likely got slower: 12 minutes longer (95% CI 4 "
                      "to 20 minutes longer).")


def test_comparison_with_the_collaborative():
    hi = w.comparison_sentence(1.25, 1.05, 1.5, M)
    assert hi.startswith("This hospital's 30-day") and "was likely higher than the collaborative's" in hi
    same = w.comparison_sentence(1.05, 0.8, 1.3, M)
    assert same.startswith("No clear difference") and "95% CI 20% lower to 30% higher" in same
    assert "not estimable" in w.comparison_sentence(NAN, 0.8, 1.3, M)


def test_funnel_and_chance_sentences():
    assert w.expected_flags_sentence(57) == (
        "With 57 hospitals, about 0.1 would fall outside the 99.8% limits by chance alone.")
    assert w.expected_flags_sentence(301, 0.95) == (
        "With 301 hospitals, about 15 would fall outside the 95% limits by chance alone.")
    inside = w.funnel_sentence("", M, n_units=57)
    assert inside.startswith("Within the 99.8% limits: no evidence")
    high = w.funnel_sentence("high", M, n_units=57)
    assert high.startswith("Above the 99.8% limits") and "higher than the collaborative's" in high
    assert w.funnel_sentence("low", M, n_units=57).startswith("Below the 99.8% limits")
    with pytest.raises(ValueError, match="flag"):
        w.funnel_sentence("outlier", M, n_units=57)
    with pytest.raises(ValueError, match="positive integer"):
        w.expected_flags_sentence(0)


def test_too_few_sentence():
    assert w.too_few_sentence(M) == (
        "Too few deaths to estimate this hospital's own effect on 30-day sepsis-attributable "
        "mortality; the collaborative's effect and how this hospital compares with the others are "
        "shown instead.")


def test_sentences_carry_no_counts():
    # only percentages, ratios ("x times"), interval levels and differences in units appear
    texts = [w.effect_sentence(a, b, c, M, kind=k) for (a, b, c) in
             [(0.81, 0.69, 0.95), (3.16, 1.01, 9.9), (0.97, 0.88, 1.08)] for k in w.KINDS]
    for t in texts:
        bare = re.findall(r"(?<![\d.])\d+(?![\d.%])(?! times)", t.replace("30-day", ""))
        assert bare == [], (t, bare)


def test_measure_words_validation():
    with pytest.raises(ValueError, match="scale"):
        w.MeasureWords("x", scale="log")
    with pytest.raises(ValueError, match="name"):
        w.MeasureWords("  ")
    assert w.MORTALITY_30D.null == 1.0 and MIN.null == 0.0
    assert math.isclose(w.RECOGNITION.null, 1.0)


def test_site_sentences_from_a_partially_pooled_table():
    import numpy as np

    from analysis.pooling import empirical_bayes

    y = np.log([0.7, 0.9, 1.3, 3.16, 0.8, 0.75])
    v = np.array([0.02, 0.05, 0.08, 1.3, 0.04, 0.06])
    eb = empirical_bayes(y, v, list("ABCDEF"), estimable=[True] * 5 + [False])
    rows = eb.summary().set_index("label")
    d = w.site_sentences(rows.loc["D"], M)
    # the S48 case: pooled primary first, the wild own estimate labelled, no increase headline
    assert d[0].startswith("At this hospital, ") and "likely rose" not in d[0]
    assert d[1].startswith(w.UNPOOLED_LABEL) and "likely" not in d[1]
    assert w.site_sentences(rows.loc["F"], M) == [w.too_few_sentence(M)]
    ratio_rows = eb.summary(exp=True).set_index("label")
    assert w.site_sentences(ratio_rows.loc["D"], M, log_scale=False) == d

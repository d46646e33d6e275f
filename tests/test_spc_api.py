"""SPC public API: tidy input, parts/freeze/exclude handling, degenerate input, facets, plots."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from analysis import spc


def _monthly(months=36, seed=1, p=0.5, site=None):
    rng = np.random.default_rng(seed)
    n = rng.integers(20, 50, months)
    df = pd.DataFrame({"month": pd.date_range("2016-01-01", periods=months, freq="MS"),
                       "compliant": rng.binomial(n, p), "episodes": n})
    if site is not None:
        df["site"] = site
    return df


# ------------------------------------------------------------------------------- tidy input


def test_xbar_and_s_from_episode_level_rows():
    rng = np.random.default_rng(2)
    months = pd.date_range("2017-01-01", periods=20, freq="MS")
    rows = [(m, v) for m in months for v in rng.gamma(4, 30, rng.integers(5, 15))]
    ep = pd.DataFrame(rows, columns=["month", "minutes_to_antibiotic"])
    x = spc.xbar_chart(ep, "month", "minutes_to_antibiotic")
    s = spc.s_chart(ep, "month", "minutes_to_antibiotic")
    counts = ep.groupby("month").size().to_numpy()
    assert len(x.data) == 20 and (x.data["n"].to_numpy() == counts).all()
    means = ep.groupby("month")["minutes_to_antibiotic"].mean().to_numpy()
    assert np.allclose(x.data["y"], means)
    assert x.data["cl"].iloc[0] == pytest.approx(ep["minutes_to_antibiotic"].mean())
    assert np.allclose(s.data["y"], ep.groupby("month")["minutes_to_antibiotic"].std().to_numpy())
    assert "episode_id" not in x.data.columns


def test_rows_with_same_x_are_summed_for_attribute_charts():
    df = pd.DataFrame({"m": [1, 1, 2, 2, 3], "y": [1, 2, 3, 0, 4], "n": [5, 5, 4, 6, 10]})
    r = spc.p_chart(df, "m", "y", "n")
    assert r.data["y"].tolist() == pytest.approx([0.3, 0.3, 0.4])
    assert r.data["n"].tolist() == [10, 10, 10]


def test_part_by_column_by_break_values_and_freeze():
    df = _monthly()
    df["phase"] = np.where(df["month"] < "2017-07-01", "pre", "post")
    by_col = spc.p_chart(df, "month", "compliant", "episodes", part="phase")
    by_x = spc.p_chart(df, "month", "compliant", "episodes", part=["2017-07-01"])
    assert by_col.data["part"].tolist() == by_x.data["part"].tolist()
    assert by_col.data["part"].value_counts().sort_index().tolist() == [18, 18]
    pre = df.iloc[:18]
    assert by_col.data["cl"].iloc[0] == pytest.approx(pre["compliant"].sum() / pre["episodes"].sum())
    frozen = spc.p_chart(df, "month", "compliant", "episodes", freeze="2016-12-01")
    assert frozen.data["baseline"].sum() == 12
    base = df.iloc[:12]
    assert frozen.data["cl"].nunique() == 1
    assert frozen.data["cl"].iloc[-1] == pytest.approx(base["compliant"].sum() / base["episodes"].sum())
    assert frozen.freeze_x == pd.Timestamp("2016-12-01")


def test_period_x_and_exclude():
    df = _monthly().assign(month=lambda d: d["month"].dt.to_period("M"))
    r = spc.p_chart(df, "month", "compliant", "episodes", exclude=["2016-03", "2016-04"])
    assert (~r.data["include"]).sum() == 2
    inc = df.drop(index=[2, 3])
    assert r.data["cl"].iloc[0] == pytest.approx(inc["compliant"].sum() / inc["episodes"].sum())
    assert any("excluded" in n for n in r.notes)


def test_control_chart_dispatch_and_summary_columns():
    df = _monthly()
    r = spc.control_chart(df, "pp", "month", "compliant", n="episodes", multiply=100)
    assert r.chart == "pp" and r.chart_name.startswith("P'")
    cols = {"part", "cl", "n_useful", "longest_run", "longest_run_max", "n_crossings",
            "n_crossings_min", "runs_signal", "n_outside_limits"}
    assert cols <= set(r.summary().columns)
    with pytest.raises(ValueError, match="chart must be one of"):
        spc.control_chart(df, "np", "month", "compliant", n="episodes")


# ------------------------------------------------------------------------------- degenerate input


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda d: spc.p_chart(d.iloc[:0], "month", "compliant", "episodes"), "empty"),
        (lambda d: spc.p_chart(d.iloc[:1], "month", "compliant", "episodes"), "at least 2 subgroups"),
        (lambda d: spc.i_chart(d.iloc[:1], "month", "compliant"), "at least 2 subgroups"),
        (lambda d: spc.p_chart(d.assign(episodes=d["episodes"].where(d.index != 4, 0)),
                               "month", "compliant", "episodes"), "positive denominator"),
        (lambda d: spc.u_chart(d.assign(episodes=d["episodes"].where(d.index != 4, 0)),
                               "month", "compliant", "episodes"), "positive denominator"),
        (lambda d: spc.p_chart(d.assign(compliant=0), "month", "compliant", "episodes"), "all counts are zero"),
        (lambda d: spc.c_chart(d.assign(compliant=0), "month", "compliant"), "all counts are zero"),
        (lambda d: spc.u_chart(d.assign(compliant=0), "month", "compliant", "episodes"), "all counts are zero"),
        (lambda d: spc.pp_chart(d.assign(compliant=0), "month", "compliant", "episodes"), "all counts are zero"),
        (lambda d: spc.g_chart(d.assign(compliant=0), "month", "compliant"), "all values are zero"),
        (lambda d: spc.i_chart(d.assign(compliant=7), "month", "compliant"), "identical"),
        (lambda d: spc.p_chart(d.assign(compliant=d["episodes"] + 1), "month", "compliant", "episodes"),
         "exceeds"),
        (lambda d: spc.p_chart(d, "month", "nope", "episodes"), "'nope' not found"),
        (lambda d: spc.p_chart(d, "month", "compliant", None), "needs a denominator"),
        (lambda d: spc.c_chart(d, "month", "compliant", n="episodes"), "unexpected keyword|takes no denominator"),
        (lambda d: spc.p_chart(d.assign(compliant=d["compliant"].astype(float).where(d.index != 3)),
                               "month", "compliant", "episodes"), "missing"),
        (lambda d: spc.p_chart(d, "month", "compliant", "episodes", rules="westgard"), "rules must be"),
        (lambda d: spc.p_chart(d, "month", "compliant", "episodes", part=[pd.Timestamp("2016-06-01")],
                               freeze=6), "either part or freeze"),
        (lambda d: spc.p_chart(d, "month", "compliant", "episodes", exclude=["1999-01-01"]),
         "not an x value"),
        (lambda d: spc.p_chart(d, "month", "compliant", "episodes", freeze=500), "neither an x value"),
        (lambda d: spc.p_chart(d, "month", "compliant", "episodes", part=[d["month"].iloc[-1]]),
         "part 2 has 1 point"),
        (lambda d: spc.p_chart(d, "month", "compliant", "episodes", multiply=0), "multiply"),
    ],
)
def test_degenerate_input_raises_clear_errors(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call(_monthly())


def test_zero_count_in_one_part_names_the_part():
    df = _monthly()
    df.loc[24:, "compliant"] = 0
    with pytest.raises(ValueError, match="in part 2: all counts are zero"):
        spc.p_chart(df, "month", "compliant", "episodes", part=[df["month"].iloc[24]])


# ------------------------------------------------------------------------------- facets


def test_facets_with_pseudonyms_and_a_failed_site():
    df = pd.concat([_monthly(seed=i, site=s) for i, s in enumerate(["Alpha", "Beta", "Gamma"])])
    df.loc[df["site"] == "Gamma", "compliant"] = 0  # cannot be charted
    labels = {"Alpha": "Site C", "Beta": "Site A", "Gamma": "Site B"}
    f = spc.facet_charts(df, "p", "site", x="month", y="compliant", n="episodes",
                         labels=labels, multiply=100)
    assert list(f.charts) == ["Site A", "Site C"]
    assert list(f.failed) == ["Site B"] and "zero" in f.failed["Site B"]
    summ = f.summary()
    assert set(summ["facet"]) == {"Site A", "Site B", "Site C"}
    assert summ.loc[summ["facet"] == "Site B", "status"].item() == "failed"
    text = summ.to_string() + f.data.to_string() + f.caption
    assert not any(real in text for real in labels)  # no real site names leak
    # each facet matches its own single-site chart
    alone = spc.p_chart(df[df["site"] == "Beta"], "month", "compliant", "episodes", multiply=100)
    assert np.allclose(f.charts["Site A"].data["ucl"], alone.data["ucl"])
    fig = f.plot(ncols=2)
    assert sum(ax.get_visible() for ax in fig.axes) == 2
    assert "Anhøj" in fig.texts[0].get_text()
    plt.close(fig)


def test_facet_labels_must_cover_every_site_and_be_unique():
    df = pd.concat([_monthly(seed=i, site=s) for i, s in enumerate(["A", "B"])])
    with pytest.raises(ValueError, match="no entry"):
        spc.facet_charts(df, "p", "site", x="month", y="compliant", n="episodes", labels={"A": "X"})
    with pytest.raises(ValueError, match="unique"):
        spc.facet_charts(df, "p", "site", x="month", y="compliant", n="episodes",
                         labels={"A": "X", "B": "X"})


# ------------------------------------------------------------------------------- plots


def test_plot_marks_runs_signal_signals_and_names_rule_set():
    df = _monthly(months=30)
    df.loc[15:, "compliant"] = (df.loc[15:, "episodes"] * 0.9).round().astype(int)
    df.loc[3, "compliant"] = 0
    r = spc.p_chart(df, "month", "compliant", "episodes", multiply=100)
    assert r.runs_signal and r.data["sigma_signal"].any()
    ax = r.plot()
    cl_lines = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    assert cl_lines, "centre line should be dashed when the runs test fires (qicharts2 style)"
    texts = " ".join(t.get_text() for t in ax.texts)
    assert "Anhøj" in texts and "longest run" in texts
    assert len(ax.collections) >= 1  # highlighted points
    plt.close(ax.figure)
    ihi = spc.p_chart(df, "month", "compliant", "episodes", rules="ihi").plot()
    assert "IHI" in " ".join(t.get_text() for t in ihi.texts)
    plt.close(ihi.figure)


def test_plot_parts_freeze_and_string_x():
    df = _monthly(months=24).assign(lab=lambda d: d["month"].dt.strftime("%b %y"))
    df = df.sort_values("month")
    df["lab"] = [f"{i:02d} {s}" for i, s in enumerate(df["lab"])]
    r = spc.i_chart(df, "lab", "compliant", freeze=12)
    ax = r.plot(title="I chart")
    assert ax.get_title() == "I chart"
    plt.close(ax.figure)
    r2 = spc.u_chart(df, "month", "compliant", "episodes", part=[df["month"].iloc[12]])
    ax2 = r2.plot()
    assert any(ln.get_linestyle() == ":" for ln in ax2.get_lines())  # part boundary
    plt.close(ax2.figure)

"""Figures that read well: cumulative incidence panels with bands, chart captions with n."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from analysis.competing import los_competing_risks


def _episodes(seed=3, n=300):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"post": rng.random(n) < 0.5,
                         "days_t0_to_discharge": rng.gamma(2.0, 3.0, n).round(1),
                         "died_in_hospital": rng.random(n) < 0.04})


def test_cumulative_incidence_panels_have_bands_and_own_y_scale():
    res = los_competing_risks(_episodes())
    fig = res.plot()
    discharge, death = fig.axes
    assert discharge.get_title() == "Discharged alive" and death.get_title() == "Died in hospital"
    # each panel scaled to its own curves: deaths are a few percent, not squashed under 100%
    d = res.cif[(res.cif["outcome"] == "death") & (res.cif["time"] <= 30)]
    top = 100 * d["ci_upper"].max()
    assert death.get_ylim()[1] <= max(1.15 * top, 1.0) + 1e-9
    assert death.get_ylim()[1] < 30 and discharge.get_ylim()[1] == 100
    # confidence bands drawn for both periods in both panels
    for ax in (discharge, death):
        assert sum(type(c).__name__ in ("PolyCollection", "FillBetweenPolyCollection")
                   for c in ax.collections) == 2
    labels = [t.get_text() for t in death.get_legend().get_texts()]
    assert any("before go-live (" in t and "episodes)" in t for t in labels)
    assert "Gray's test" in res.caption() and "pointwise confidence bands" in res.caption()
    assert fig.get_size_inches()[0] <= 7.5
    plt.close(fig)
    # the figure keeps get_figure() for callers that used the single-axes plot
    assert res.plot().get_figure() is not None
    plt.close("all")


def test_small_periods_are_not_counted_in_the_legend():
    ep = _episodes(n=300)
    ep.loc[ep.index[:8], "post"] = True
    ep.loc[ep.index[8:], "post"] = False
    ep.loc[ep.index[:2], "died_in_hospital"] = True
    res = los_competing_risks(ep)
    fig = res.plot()
    labels = [t.get_text() for ax in fig.axes for t in ax.get_legend().get_texts()]
    assert any("after go-live (fewer than 11 episodes)" in t for t in labels)
    assert not any("(8 episodes)" in t for t in labels)
    plt.close(fig)


def test_funnel_and_partial_pooling_captions_say_what_a_point_is():
    from analysis import riskadj as ra
    from analysis.pooling import empirical_bayes

    rng = np.random.default_rng(1)
    e = rng.uniform(5, 50, 57)
    f = ra.funnel_from_counts([f"H{i}" for i in range(57)], rng.poisson(0.8 * e), e)
    cap = f.caption()
    assert cap.startswith("Each point is one hospital. Centre: the collaborative's O/E = ")
    assert "about 0.1 would fall outside them by chance alone" in cap
    eb = empirical_bayes(rng.normal(-0.2, 0.3, 8), np.full(8, 0.05), [f"H{i}" for i in range(8)],
                         estimable=[True] * 7 + [False])
    cap = eb.caption()
    assert cap.startswith("Each row is one hospital") and "7 hospitals with their own estimate" in cap
    assert "1 with too little information" in cap and "flat prior on tau^2" in cap

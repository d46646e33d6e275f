"""SPC charts on the simulated collaborative, against the simulator's known truth.

The simulator shifts the order-set use up by a logit shift after go-live (truth
``process_post_logit_shift["order_set"] = 0.8``), ramped in linearly over 6 months.
"""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest

from analysis import spc
from analysis.derive import attach_sites, derive_episodes
from analysis.simulate import simulate_collaborative


@pytest.fixture(scope="module")
def site_months():
    sim = simulate_collaborative(sites=6, months=48, scale=4, seed=1)
    ep = attach_sites(derive_episodes(sim.episodes), sim.sites)
    m = (
        ep.groupby(["site_id", "month"])
        .agg(order_set=("order_set", "sum"), episodes=("episode_id", "size"),
             go_live=("go_live_month", "first"), post=("post", "first"))
        .reset_index()
    )
    return m, sim.truth


def test_parts_at_go_live_recover_the_direction_of_the_true_shift(site_months):
    m, truth = site_months
    assert truth["parameters"]["process_post_logit_shift"]["order_set"] > 0
    labels = {s: f"Hospital {i + 1}" for i, s in enumerate(sorted(m["site_id"].unique()))}
    f = spc.facet_charts(m, "p", "site_id", x="month", y="order_set", n="episodes",
                         part="post", labels=labels, multiply=100)
    assert not f.failed
    summ = f.summary()
    for lab, g in summ.groupby("facet"):
        assert g["part"].tolist() == [1, 2], lab
        assert g["cl"].iloc[1] > g["cl"].iloc[0], lab
    fig = f.plot(ncols=3)
    plt.close(fig)


def test_shift_detection_starts_new_part_during_the_ramp(site_months):
    m, _ = site_months
    detected = 0
    for site, g in m.groupby("site_id"):
        r = spc.p_chart(g, "month", "order_set", "episodes", detect_shifts=True, shifts="new_part")
        if not r.detected_breaks:
            continue
        detected += 1
        go = g["go_live"].iloc[0]
        first = r.detected_breaks[0]
        months_after = (first.year - go.year) * 12 + first.month - go.month
        assert 0 <= months_after <= 6, (site, months_after)  # the ramp lasts 6 months
        assert np.diff(r.summary()["cl"].to_numpy())[0] > 0
    assert detected >= 4

"""Truth recovery on the synthetic collaborative (analysis.simulate): the pooled ITS mortality
effect estimates the simulator's case-mix-standardised 30-day SAM risk ratio 12 months after
go-live (``truth["estimands"]["sam30_rr_12m"]``).

A small fixed-seed replicate study (4 reduced collaboratives: 30 sites x 84 months, doubled
volumes) for both estimators of benchmarks/bench_its_truth.py (multi-site Poisson ITS with
cluster SEs; per-site ITS pooled by REML). The full 500-replicate benchmark (bias, coverage,
power) is ``benchmarks/bench_its_truth.py``.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_its_truth.py"
SEEDS = (101, 102, 103, 104)


def _bench():
    spec = importlib.util.spec_from_file_location("bench_its_truth", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def replicates() -> pd.DataFrame:
    b = _bench()
    rows = []
    for s in SEEDS:
        rows.extend(b.run_replicate(s, sites=30, months=84, scale=2.0, scenario="default"))
    return pd.DataFrame(rows)


def test_all_replicates_estimable(replicates):
    assert (replicates["status"] == "ok").all(), replicates[["seed", "status"]]
    assert set(replicates["estimator"]) == {"multisite", "pooled"}


@pytest.mark.parametrize("estimator", ["multisite", "pooled"])
def test_mean_bias_small_relative_to_se_and_cis_cover(replicates, estimator):
    d = replicates[replicates["estimator"] == estimator]
    r = len(d)
    mean_se = d["se"].mean()
    # truth is a real reduction (about 0.8) and the effect is detectable on average
    assert d["truth"].between(0.7, 0.9).all()
    # mean log error within 2.5 standard errors of a mean of r independent estimates
    assert abs(d["log_error"].mean()) < 2.5 * mean_se / math.sqrt(r)
    # 95% intervals: with 4 replicates at most one miss is compatible with 95% coverage
    assert d["covers"].sum() >= r - 1
    # the reported SE is in line with the spread of the estimates (not grossly off)
    assert 0.4 < d["log_error"].std() / mean_se < 2.5


def test_estimators_agree(replicates):
    w = replicates.pivot(index="seed", columns="estimator", values="estimate")
    assert np.all(np.abs(np.log(w["multisite"] / w["pooled"])) < 0.15)

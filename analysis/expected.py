"""Baseline expected-value models: what each episode's outcome would be under baseline care.

A per-child ("same case mix") estimand compares each episode's observed outcome with the outcome
expected for *that* episode under baseline (pre-go-live) performance. The expected value comes
from a regression of the outcome on case mix fitted on baseline episodes only, so it carries no
effect of the collaborative; the interrupted time series then models observed against expected
(log offset or standardised ratio), and its effect is the change for the same children, free of
the shift in case mix that recognising more, milder episodes brings. Mortality has always been
analysed this way (:func:`analysis.riskadj.fit_casemix_model`); this module does the same for
bundle compliance and the processes (probabilities), hospital days (a mean) and minutes to
treatment (a median).

Kinds
-----
``"probability"``
    logistic regression of a bool outcome (bundle compliance, screen positive, ...): expected
    probability per episode (:func:`analysis.riskadj.fit_casemix_model`).
``"mean"``
    log-link quasi-Poisson regression of a non-negative outcome (hospital days): expected mean
    (ratio of means is what the ITS then estimates).
``"median_time"``
    least squares on log minutes among episodes treated after T0 (minutes > 0): expected median
    minutes, ``exp(x'b)`` (the median of a log-normal time). Treatments given before T0 (negative
    minutes) and untreated episodes are left out of this fit; see :func:`standardised_time_ratio`.

Case mix: :data:`analysis.riskadj.DEFAULT_CASEMIX` (age band, CCC band, immunocompromised,
onset setting, hospital onset, critical sepsis). Units: the expected value has the outcome's unit
(probability, days, minutes).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from .riskadj import DEFAULT_CASEMIX, _design, _make_term, _Term, casemix_frame, fit_casemix_model

Kind = Literal["probability", "mean", "median_time"]
KINDS: tuple[str, ...] = ("probability", "mean", "median_time")

__all__ = ["KINDS", "ExpectedModel", "fit_expected_model", "standardised_time_ratio"]


@dataclass
class ExpectedModel:
    """A fitted baseline expected-value model for one episode variable.

    ``predict(episodes)`` returns the expected value per episode (probability, mean or median
    minutes), index-aligned. ``n`` episodes were used (baseline, with a known outcome);
    ``covariates`` and ``params`` (link scale) describe the model; ``notes`` list diagnostics.
    """

    variable: str
    kind: str
    covariates: tuple[str, ...]
    terms: tuple[_Term, ...]
    params: pd.Series
    n: int
    baseline_only: bool
    unseen: str = "reference"
    casemix_model: object = field(default=None, repr=False)
    notes: list[str] = field(default_factory=list)

    def predict(self, episodes: pd.DataFrame) -> pd.Series:
        """Expected value of :attr:`variable` for each episode under baseline care."""
        if self.casemix_model is not None:
            return self.casemix_model.predict(episodes).rename(f"expected_{self.variable}")
        X, _, _ = _design(casemix_frame(episodes), self.terms, self.unseen)
        eta = X @ self.params.to_numpy()
        return pd.Series(np.exp(eta), index=episodes.index, name=f"expected_{self.variable}")


def fit_expected_model(
    episodes: pd.DataFrame,
    variable: str,
    kind: Kind,
    *,
    covariates: Sequence[str] = DEFAULT_CASEMIX,
    baseline_only: bool = True,
    known: str | None = None,
    unseen: Literal["error", "reference"] = "reference",
) -> ExpectedModel:
    """Fit the baseline model of `variable` on case mix (see the module docstring for `kind`).

    `episodes`: derived episodes attached to sites (``post`` is needed with `baseline_only`).
    `known`: a bool column marking episodes whose outcome is known at the cut-off (e.g.
    ``sam30_complete``, ``los_complete``); the others are left out of the fit.
    Raises ``ValueError`` naming the problem (missing column, no baseline episodes, a covariate
    with one level, no events).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if variable not in episodes:
        raise ValueError(f"variable {variable!r} is not a column of episodes (derive them first)")
    covariates = tuple(covariates)
    if not covariates:
        raise ValueError("at least one case-mix covariate is needed")
    df = episodes
    if known is not None:
        if known not in df:
            raise ValueError(f"column {known!r} (outcome known at the cut-off) is missing")
        df = df[df[known].astype(bool)]
    if kind == "probability":
        model = fit_casemix_model(df, variable, covariates=covariates,
                                  baseline_only=baseline_only, unseen=unseen)
        return ExpectedModel(variable, kind, covariates, model.terms, model.params, model.n,
                             baseline_only, unseen, casemix_model=model, notes=list(model.notes))
    if baseline_only:
        if "post" not in df:
            raise ValueError("baseline_only=True needs a 'post' column (run attach_sites first)")
        df = df[~df["post"].astype(bool)]
    y = pd.to_numeric(df[variable], errors="coerce")
    if kind == "mean":
        keep = y.notna().to_numpy()
        if (y[keep] < 0).any():
            raise ValueError(f"variable {variable!r} has negative values; a mean model needs >= 0")
    else:  # median_time: log minutes among those treated after T0
        keep = (y > 0).to_numpy()
    df, y = df[keep], y[keep].to_numpy(dtype=float)
    if len(y) == 0:
        raise ValueError(f"no baseline episodes with a known {variable!r} to fit the model on")
    df = casemix_frame(df)
    missing = [c for c in covariates if c not in df]
    if missing:
        raise ValueError(f"case-mix covariate columns missing from episodes: {missing}")
    terms = tuple(_make_term(c, df[c]) for c in covariates)
    X, names, _ = _design(df, terms, "error")
    notes: list[str] = []
    if kind == "mean":
        import statsmodels.api as sm

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = sm.GLM(y, X, family=sm.families.Poisson()).fit()
        if not res.converged:
            notes.append("quasi-Poisson GLM did not converge")
        beta = np.asarray(res.params)
    else:
        beta, *_ = np.linalg.lstsq(X, np.log(y), rcond=None)
    return ExpectedModel(variable, kind, covariates, terms, pd.Series(beta, index=names), len(y),
                         baseline_only, unseen, notes=notes)


def standardised_time_ratio(minutes: pd.Series, expected_median: pd.Series) -> pd.Series:
    """Observed minutes over the episode's expected baseline median (NaN when not treated).

    A treatment given before T0 (negative minutes) keeps a negative ratio: it sits in the lower
    tail, so a median of these ratios treats it as "faster than anyone treated after T0" without
    taking its logarithm. Its handling is therefore a *composite* one: early treatment is a good
    outcome, ranked below every post-T0 time.
    """
    return (minutes / expected_median).where(minutes.notna())

"""Report sections: the multi-step logic behind each figure of the report notebooks.

Each ``*_section`` function displays its figures (PNG) with a caption, or a plain-language
"not estimable" note when the data cannot support the result; it never raises for data reasons.
Heavy fits shared by every report of a run (case-mix model, site-month expected deaths, O/E by
hospital, pooled and per-site ITS, process associations) live in :class:`SharedFits`: read from
``shared_dir`` when :func:`compute_shared` wrote them for the same data, otherwise computed here.

Privacy: other hospitals appear only under ``run.pseudonyms`` (the viewer's own hospital by name);
counts in captions go through :func:`analysis.reporting.count_text`. Files in ``shared_dir`` hold
site ids and are never published (batch keeps them under ``<out>/_shared``).
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import privacy
from . import reporting as rp

SHARED_META = "shared_meta.json"
SHARED_ITEMS = ("casemix", "site_months", "oe_by_site", "multisite", "by_site", "associations",
                "impact", "los", "store")
#: What site reports use: computed once by :func:`compute_shared` before any report starts,
#: including the results store of every scope (``store``, Parquet: :func:`results_path`). The
#: rest (pooled event study, process associations, collaborative impact and length of stay) is
#: used only by the collaborative report, which computes it itself, in parallel with site reports.
SITE_ITEMS = ("casemix", "site_months", "oe_by_site", "by_site", "store")
#: Mortality outcome of the models (30-day sepsis-attributable mortality).
OUTCOME = "sam30"
EXPECTED = "expected_sam30"


# ---------------------------------------------------------------------------------------------
# shared fits
class SharedFits:
    """Lazily computed (or loaded) fits shared by all reports of a run.

    Items are looked up in memory, then in `shared_dir` (only when its metadata matches this
    run's data hash and cut-off), then computed. A failed fit is stored as a
    :class:`analysis.reporting.NotEstimable`, never raised.
    """

    def __init__(self, run: rp.RunData, shared_dir: str | Path | None = None,
                 plan: Any = None):
        self.run = run
        self.shared_dir = Path(shared_dir) if shared_dir else None
        self.plan = _resolve_plan(plan)
        self._cache: dict[str, Any] = {}
        self._usable = False
        if self.shared_dir is not None and (self.shared_dir / SHARED_META).exists():
            try:
                meta = json.loads((self.shared_dir / SHARED_META).read_text())
                self._usable = meta == self.meta()
            except (OSError, ValueError):
                self._usable = False

    def meta(self) -> dict:
        import hashlib

        return {"data_hash": self.run.data_hash, "as_of": str(self.run.as_of.date()),
                "outcome": OUTCOME, "plan_version": self.plan.version,
                "plan_sha256": hashlib.sha256(self.plan.to_json().encode()).hexdigest()}

    def get(self, name: str) -> Any:
        if name in self._cache:
            return self._cache[name]
        if name == "store" and self._usable and results_path(self.shared_dir).exists():
            # only this hospital's rows (and the collaborative and comparison rows) for a site
            self._cache[name] = load_store(self.shared_dir, scope=self.run.scope)
            return self._cache[name]
        path = self.shared_dir / f"{name}.pkl" if self.shared_dir else None
        if self._usable and path is not None and path.exists():
            with path.open("rb") as fh:
                value = pickle.load(fh)
        else:
            if self.run.scope is not None:
                raise RuntimeError(
                    f"shared fit {name!r} is not in {self.shared_dir} for this data, and a site slice "
                    f"(hospital {self.run.scope!r} only) cannot compute it; load the full run")
            try:
                value = getattr(self, f"_compute_{name}")()
            except (ValueError, ArithmeticError, np.linalg.LinAlgError, KeyError) as exc:
                value = rp.not_estimable(_WHAT[name], _reason(exc, self.run))
        self._cache[name] = value
        return value

    def save(self, shared_dir: str | Path, items: tuple[str, ...] = SHARED_ITEMS) -> None:
        """Compute the shared `items` and pickle them under `shared_dir`. The case-mix model is saved
        without its fitting data (statsmodels ``remove_data``): every report loads it, and its size
        would otherwise grow with the collaborative."""
        d = Path(shared_dir)
        d.mkdir(parents=True, exist_ok=True)
        unknown = set(items) - set(SHARED_ITEMS)
        if unknown:
            raise ValueError(f"unknown shared items {sorted(unknown)}; known: {', '.join(SHARED_ITEMS)}")
        values = {name: self.get(name) for name in items}
        model = values.get("casemix")
        if model is not None and not isinstance(model, rp.NotEstimable):
            res = model.result
            for attr in ("bse", "pvalues", "tvalues", "llf", "aic", "deviance", "df_resid"):
                getattr(res, attr)  # cached before the data go
            res.remove_data()
        for name, value in values.items():
            if name == "store" and not isinstance(value, rp.NotEstimable):
                value.to_parquet(results_path(d))
                continue
            with (d / f"{name}.pkl").open("wb") as fh:
                pickle.dump(value, fh, protocol=pickle.HIGHEST_PROTOCOL)
        (d / SHARED_META).write_text(json.dumps(self.meta()))

    # -- computations --------------------------------------------------------------------------
    def _compute_casemix(self):
        from .riskadj import fit_casemix_model

        return fit_casemix_model(self.run.episodes, OUTCOME, unseen="reference")

    def _compute_site_months(self) -> pd.DataFrame:
        from .measures import monthly_measures

        ep = self.run.episodes
        model = self.get("casemix")
        if isinstance(model, rp.NotEstimable):  # no expected deaths: mortality models say so
            return monthly_measures(ep, self.run.site_months, sites=self.run.sites)
        ep = ep.assign(**{EXPECTED: model.predict(ep).to_numpy()})
        return monthly_measures(ep, self.run.site_months, sites=self.run.sites,
                                extra_sums=[EXPECTED])

    def _compute_oe_by_site(self) -> pd.DataFrame:
        from .riskadj import observed_expected

        model = self.get("casemix")
        model = _need(model)
        post = self.run.episodes[self.run.episodes["post"]]
        if post.empty:
            raise ValueError("no episodes after go-live yet")
        return observed_expected(post, model, by=["site_id"])

    def _compute_multisite(self):
        from .its import fit_its_multisite

        sm = _mortality_months(self.get("site_months"))
        return fit_its_multisite(sm, OUTCOME, site="site_id", time="month", go_live="go_live_month",
                                 exposure=EXPECTED, family="poisson", event_reference="pre")

    def _compute_by_site(self) -> pd.DataFrame:
        from .its import fit_its_by_site

        sm = _mortality_months(self.get("site_months"))
        return fit_its_by_site(sm, OUTCOME, site="site_id", time="month", go_live="go_live_month",
                               exposure=EXPECTED, family="poisson", months_after=12)

    def _compute_impact(self):
        from .impact import by_the_numbers

        return by_the_numbers(_need(self.get("store")))

    def _compute_store(self):
        """The results store of every scope (:func:`analysis.results.estimate_all`) with this
        run's plan; the run's episodes are already cut at its data cut-off."""
        from .results import estimate_all

        store = estimate_all(self.run, self.plan)
        month = str(self.run.as_of.to_period("M"))
        store.frame["as_of"] = month
        store.meta["as_of"] = month
        return store

    def _compute_los(self):
        from .competing import los_competing_risks

        return los_competing_risks(self.run.episodes)

    def _compute_associations(self):
        from .processes import process_associations

        return process_associations(self.run.episodes, OUTCOME)


_WHAT = {"casemix": "Case-mix model", "site_months": "Monthly measures",
         "oe_by_site": "Risk-adjusted comparison", "multisite": "Pooled time series",
         "by_site": "Hospital-level time series", "associations": "Process-outcome associations",
         "impact": "IPSO by the numbers", "los": "Length of stay", "store": "Results store"}


def _resolve_plan(plan: Any):
    """A :class:`analysis.plan.Plan` from a Plan, a plan file path or None (the default plan)."""
    from .plan import Plan, default_plan

    if plan is None:
        return default_plan()
    if isinstance(plan, Plan):
        return plan.validate()
    return Plan.from_yaml(plan)


def results_path(shared_dir: str | Path) -> Path:
    """Where :func:`compute_shared` writes the run's results store (Parquet)."""
    from .results import RESULTS_FILE

    return Path(shared_dir) / RESULTS_FILE


def load_store(shared_dir: str | Path, scope: str | None = None):
    """The run's results store from a shared folder; with `scope` (a site id) only that
    hospital's rows, the collaborative rows and every hospital's comparison rows
    (:meth:`analysis.results.ResultsStore.for_scope`). Raises ``ValueError`` when there is none."""
    from .results import load_store as _load

    return _load(results_path(shared_dir), scope=scope)


_DATE = re.compile(r"(?:Timestamp\(')?(\d{4})-(\d{2})-\d{2}(?:[ T]\d{2}:\d{2}(?::\d{2})?)?(?:'\))?")


def _reason(exc: BaseException, run: rp.RunData | None = None) -> str:
    """A plain reason from an exception message: dates cut to the month, hospital ids and names
    replaced by "a hospital" (only pseudonyms and month-level dates may be published)."""
    msg = str(exc).split("\n")[0][:200]
    msg = _DATE.sub(lambda m: f"{m.group(1)}-{m.group(2)}", msg)
    if run is not None:
        names = [str(x) for x in (*run.sites["site_id"], *run.sites["site_name"])]
        for name in sorted(names, key=len, reverse=True):
            msg = re.sub(rf"(?<!\w){re.escape(name)}(?!\w)", "a hospital", msg, flags=re.IGNORECASE)
        msg = privacy.redact_small_counts(msg, run.min_cell)  # "too few events (4 pre, ...)"
    else:
        msg = ""
    return "The data are not sufficient for this model" + (f" ({msg})." if msg else ".")


class Unavailable(ValueError):
    """A shared fit this result depends on could not be estimated."""


def _need(value: Any) -> Any:
    """`value`, or :class:`Unavailable` (with its plain reason) when it is a NotEstimable."""
    if isinstance(value, rp.NotEstimable):
        raise Unavailable(value.reason)
    return value


def _mortality_months(sm: pd.DataFrame) -> pd.DataFrame:
    """Site-months for mortality models: every month (the models leave out months with zero
    expected and no deaths); months without a case-mix prediction are an error."""
    if EXPECTED not in sm or sm[EXPECTED].isna().any():
        raise Unavailable("expected deaths are missing (no case-mix model)")
    return sm.reset_index(drop=True)


def compute_shared(data_dir: str | Path | None, shared_dir: str | Path, run_key: str,
                   items: tuple[str, ...] = SITE_ITEMS, as_of: str | None = None,
                   plan: Any = None) -> None:
    """Compute the run's shared fits once and save them under `shared_dir`: pickles, the results
    store of every scope as Parquet (:func:`results_path`; a site report reads only its rows
    with :func:`load_store`), and one site slice per hospital
    (:func:`analysis.reporting.write_site_slices`).

    Called by :func:`analysis.batch.render_batch` before any report starts; `items` defaults to
    what site reports need (:data:`SITE_ITEMS`); `as_of` is the reports' data cut-off (YYYY-MM);
    `plan`: the analysis plan (a :class:`analysis.plan.Plan` or a plan file; None = the default
    plan). `shared_dir` is working space, never published.
    """
    run = rp.load_run(data_dir, run_key=run_key, as_of=as_of)
    SharedFits(run, plan=plan).save(shared_dir, items)
    if data_dir is not None and Path(data_dir).is_dir():
        rp.write_site_slices(run, data_dir, shared_dir, as_of=as_of)


# ---------------------------------------------------------------------------------------------
# display helpers
def show_figure(fig, caption: str | None = None, *, from_suppressed_aggregates: bool = False) -> None:
    """Display a Matplotlib figure, then its caption, and close it. As a PNG (its text in a PNG
    chunk the output scanner reads) unless every plotted value passed suppression
    (`from_suppressed_aggregates`): then as marked SVG (:func:`analysis.privacy.publishable_figure`;
    the scanner refuses unmarked vector figures, whose coordinates give back what was plotted)."""
    from .privacy import publishable_figure

    # tight cropping costs get_tightbbox over every axis: skipped for large small-multiple grids
    rp.show(publishable_figure(fig, from_suppressed_aggregates=from_suppressed_aggregates,
                               tight=len(fig.axes) <= 12))
    if caption:
        rp.show(rp.Md(f"*{rp.escape_text(caption)}*"))


def _guarded(run: rp.RunData, what: str, draw: Callable[[], Any]) -> None:
    """Run `draw`; a data problem becomes a plain 'not estimable' note instead of an error."""
    try:
        draw()
    except (ValueError, ArithmeticError, np.linalg.LinAlgError, KeyError) as exc:
        rp.show(rp.not_estimable(what, _reason(exc, run)))


def _fig_from(ax_or_fig):
    return ax_or_fig.get_figure() if hasattr(ax_or_fig, "get_figure") and not hasattr(
        ax_or_fig, "savefig") else ax_or_fig


def _site_months(run: rp.RunData, shared: SharedFits, site_id: str) -> pd.DataFrame:
    sm = shared.get("site_months")
    sm = _need(sm)
    return sm[sm["site_id"] == site_id].reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# site report sections
SPC_PROCESSES = (("bundle_compliant", "Bundle compliance"), ("recognised", "Recognised (screen, huddle or order set)"),
                 ("screen_positive", "Positive sepsis screen"), ("huddle", "Sepsis huddle"),
                 ("order_set", "Sepsis order set used"),
                 ("fluid_60", "Fluid bolus within 60 minutes"), ("abx_180", "Antibiotic within 180 minutes"))


#: Xbar charts of time to treatment: (column, section name, treatment, caption's "episodes with ...").
TREATMENT_TIMES = (("minutes_to_bolus", "Minutes to fluid bolus", "fluid bolus", "a bolus"),
                   ("minutes_to_antibiotic", "Minutes to antibiotic", "antibiotic", "an antibiotic"))


def site_spc_section(run: rp.RunData, shared: SharedFits, site_id: str) -> None:
    """SPC charts for one hospital, limits split at go-live: p' charts of bundle compliance and
    each key process, u' chart of recognition per 1,000 admissions, Xbar chart of minutes to
    antibiotic (with shift detection), p charts of 3- and 30-day sepsis-attributable mortality."""
    from . import spc

    sm = _site_months(run, shared, site_id)
    with_ep = sm[sm["episodes"] > 0].reset_index(drop=True)
    go = sm["go_live_month"].iloc[0] if len(sm) else None
    part = [go] if go is not None and (with_ep["month"] >= go).any() and (with_ep["month"] < go).any() else None
    n_ep = int(with_ep["episodes"].sum())
    cap = f"Monthly points; limits recomputed from go-live. Episodes: {rp.count_text(n_ep, run.min_cell)}."
    for col, title in SPC_PROCESSES:
        _guarded(run, title, lambda col=col, title=title: show_figure(_fig_from(
            spc.pp_chart(with_ep, "month", col, "episodes", part=part, multiply=100).plot(
                title=f"{title} (%)", ylabel="% of episodes")), cap))
    adm = sm[sm["admissions"] > 0].reset_index(drop=True)
    _guarded(run, "Recognition rate", lambda: show_figure(_fig_from(
        spc.up_chart(adm, "month", "episodes", "admissions", part=part, multiply=1000).plot(
            title="Sepsis episodes per 1,000 admissions", ylabel="per 1,000 admissions")),
        "Laney u' chart of recognised sepsis episodes per 1,000 hospital admissions."))
    ep = run.episodes_for(site_id)
    for col, what, treatment, with_it in TREATMENT_TIMES:
        times = ep.loc[ep[col].notna(), ["month", col]]
        _guarded(run, what, lambda col=col, times=times, treatment=treatment, with_it=with_it:
                 show_figure(_fig_from(spc.xbar_chart(times, "month", col, detect_shifts=True).plot(
                     title=f"Minutes from T0 to first {treatment} (monthly mean)", ylabel="minutes")),
                     "Xbar chart; a sustained shift found by the runs rules is marked as a signal. "
                     f"Episodes with {with_it}: {rp.count_text(len(times), run.min_cell)}."))
    for w in run.settings.sam_windows_days:
        _guarded(run, f"{w}-day mortality chart", lambda w=w: show_figure(_fig_from(
            spc.p_chart(with_ep, "month", f"sam{w}", "episodes", part=part, multiply=100).plot(
                title=f"{w}-day sepsis-attributable mortality (%)", ylabel="% of episodes")),
            f"p chart of {w}-day sepsis-attributable mortality, limits from go-live."))


def site_its_section(run: rp.RunData, shared: SharedFits, site_id: str,
                     checks: dict[str, rp.NotEstimable | None]) -> None:
    """ITS with counterfactual: mortality (deaths, case-mix expected offset), recognition
    (episodes per 1,000 admissions) and hospital days per episode."""
    from .its import fit_its

    if checks.get("post_months") is not None:
        rp.show(checks["post_months"])
        return
    sm = _site_months(run, shared, site_id)
    go = sm["go_live_month"].iloc[0]
    if checks.get("deaths") is not None:
        rp.show(checks["deaths"])
    else:
        mort = _mortality_months(sm)
        _guarded(run, "Mortality time series", lambda: _show_its(
            fit_its(mort, OUTCOME, time="month", intervention=go, exposure=EXPECTED,
                    family="quasipoisson"),
            "30-day sepsis-attributable deaths relative to expected (case-mix model)", 1.0,
            "Monthly observed/expected deaths; dashed: what the trend before go-live predicts.",
            "observed / expected deaths"))
        rp.show(site_in_pool(run, shared, site_id))
    adm = sm[sm["admissions"] > 0]
    _guarded(run, "Recognition time series", lambda: _show_its(
        fit_its(adm, "episodes", time="month", intervention=go, exposure="admissions",
                family="quasipoisson"), "Sepsis episodes per 1,000 admissions", 1000.0,
        "Segmented regression with the pre-go-live trend projected (dashed, 95% band)."))
    ep_m = sm[sm["episodes"] > 0]
    _guarded(run, "Hospital days time series", lambda: _show_its(
        fit_its(ep_m, "hospital_days_per_episode", time="month", intervention=go,
                family="gaussian"), "Hospital days per sepsis episode", 1.0,
        "Hospital days per episode with the pre-go-live trend projected."))


def site_in_pool(run: rp.RunData, shared: SharedFits, site_id: str) -> rp.Md | rp.NotEstimable:
    """This hospital's mortality rate ratio 12 months after go-live next to the pooled estimate of
    all hospitals (random effects) and its 95% prediction interval."""
    from .its import pool_site_effects

    try:
        bs = _need(shared.get("by_site"))
        own = bs[bs["site"] == site_id]
        pooled = pool_site_effects(bs, label="site")
    except ValueError as exc:
        return rp.not_estimable("Comparison with the pooled estimate", _reason(exc, run))
    pool = (f"all hospitals pooled: {np.exp(pooled.estimate):.2f} (95% CI {np.exp(pooled.ci_low):.2f} "
            f"to {np.exp(pooled.ci_high):.2f}); a hospital like the others would be expected between "
            f"{np.exp(pooled.pi_low):.2f} and {np.exp(pooled.pi_high):.2f} (95% prediction interval).")
    if own.empty or own["status"].iloc[0] != "ok":
        return rp.Md("This hospital's own 12-month mortality rate ratio is not estimable (too few "
                     "deaths or months); " + pool)
    r = own.iloc[0]
    return rp.Md(f"Rate ratio of 30-day deaths to expected 12 months after go-live, this hospital: "
                 f"{r['estimate']:.2f} (95% CI {r['ci_low']:.2f} to {r['ci_high']:.2f}); " + pool)


def _show_its(res, title: str, per: float, caption: str, ylabel: str | None = None) -> None:
    ax = res.plot(title=title, per=per)
    ax.set_ylabel(ylabel or title)
    lc = res.level_change
    words = (f"Level change at go-live: {lc.estimate:.2f} (95% CI {lc.ci_low:.2f} to {lc.ci_high:.2f})"
             if np.isfinite(getattr(lc, "estimate", np.nan)) else "")
    show_figure(ax.get_figure(), caption + (" " + words + "." if words else ""))


def site_survival_section(run: rp.RunData, site_id: str,
                          checks: dict[str, rp.NotEstimable | None]) -> None:
    """Kaplan-Meier 30-day survival and cumulative incidence of discharge, before vs after."""
    from .competing import los_competing_risks
    from .survival import km_by_period

    if _show_first_problem(checks, ("pre", "post")):
        return
    ep = run.episodes_for(site_id)

    def km():
        ax = km_by_period(ep, by=None).plot("collaborative")
        ax.set_title("30-day survival from T0, before and after go-live")
        show_figure(ax.get_figure(), "Kaplan-Meier estimate of sepsis-attributable survival "
                    "(deaths from other causes censored), with 95% bands.")

    def los():
        res = los_competing_risks(ep)
        show_figure(res.plot().get_figure(), "Cumulative incidence of discharge alive (solid) with "
                    "in-hospital death as a competing risk (dashed), before and after go-live."
                    + _gray_words(res))

    if checks.get("deaths") is not None:
        rp.show(checks["deaths"])
    else:
        _guarded(run, "Survival curves", km)
    _guarded(run, "Length of stay", los)


def _funnel(run: rp.RunData, shared: SharedFits, labels: dict[str, str]):
    from .riskadj import funnel_from_counts

    oe = shared.get("oe_by_site")
    oe = _need(oe)
    return funnel_from_counts(oe["site_id"].map(labels), oe["observed"], oe["expected"])


def funnel_section(run: rp.RunData, shared: SharedFits, site_id: str | None = None) -> None:
    """Funnel plot of O/E 30-day mortality after go-live: the viewer's hospital by name (site
    report), all others under pseudonyms."""
    from .riskadj import funnel_plot

    labels = {s: run.label(s, viewer=site_id) for s in run.sites["site_id"]}
    highlight = run.site_name(site_id) if site_id is not None else None

    def draw():
        f = _funnel(run, shared, labels)
        ax = funnel_plot(f, highlight=highlight, label_outliers=True)
        show_figure(ax.get_figure(), "Observed/expected 30-day sepsis-attributable deaths after "
                    "go-live against expected deaths, with 95% and 99.8% limits"
                    + (" (adjusted for over-dispersion)." if f.adjusted else ".")
                    + " Other hospitals are shown under pseudonyms.")

    _guarded(run, "Risk-adjusted comparison", draw)


# ---------------------------------------------------------------------------------------------
# collaborative report sections
def collaborative_spc_section(run: rp.RunData, shared: SharedFits) -> None:
    """Collaborative p' chart of bundle compliance (shift detection), faceted p' charts by
    hospital (pseudonyms, limits split at each go-live)."""
    from . import spc
    from .measures import monthly_measures

    coll = monthly_measures(run.episodes, run.site_months, level="collaborative")
    coll = coll[coll["episodes"] > 0]
    _guarded(run, "Collaborative bundle compliance", lambda: show_figure(_fig_from(
        spc.pp_chart(coll, "month", "bundle_compliant", "episodes", detect_shifts=True,
                     multiply=100).plot(title="Bundle compliance, all hospitals (%)",
                                        ylabel="% of episodes")),
        "Laney p' chart; sustained shifts are marked as signals. Hospitals went live in waves."))
    sm = shared.get("site_months")
    if isinstance(sm, rp.NotEstimable):
        rp.show(sm)
        return
    sm = sm[sm["episodes"] > 0].copy()
    sm["phase"] = np.where(sm["post"], "after", "before")

    def facets():
        fc = spc.facet_charts(sm, "pp", "site_id", x="month", y="bundle_compliant", n="episodes",
                              labels=run.pseudonyms, part="phase", multiply=100)
        show_figure(fc.plot(ncols=6, title="Bundle compliance by hospital (%)"),
                    "One p' chart per hospital (pseudonyms), limits split at go-live.")

    _guarded(run, "Bundle compliance by hospital", facets)


def collaborative_its_section(run: rp.RunData, shared: SharedFits) -> None:
    """Pooled event-study ITS and forest plot of hospitals' effects 12 months after go-live."""
    ms = shared.get("multisite")
    if isinstance(ms, rp.NotEstimable):
        rp.show(ms)
    else:
        def es():
            ax = ms.plot_event_study(title="Deaths vs expected by month since go-live (pooled)")
            lc = ms.level_change
            show_figure(ax.get_figure(), "Event study across staggered go-lives: rate ratio of "
                        "observed to expected 30-day deaths relative to before go-live. Pooled "
                        f"level change {lc.estimate:.2f} (95% CI {lc.ci_low:.2f} to {lc.ci_high:.2f}).")
        _guarded(run, "Event study", es)
    _guarded(run, "Hospital effects", lambda: _forest(run, shared))


def _forest(run: rp.RunData, shared: SharedFits) -> None:
    from .its import pool_site_effects

    bs = shared.get("by_site")
    bs = _need(bs)
    bs = bs.assign(site=bs["site"].map(run.pseudonyms))
    # pseudonym order (A, B, ..., AA): row order must not follow site ids or size
    bs = bs.iloc[sorted(range(len(bs)), key=lambda i: (len(bs["site"].iloc[i]), bs["site"].iloc[i]))]
    pooled = pool_site_effects(bs, label="site")
    ax = pooled.forest_plot(xlabel="Rate ratio 12 months after go-live")
    show_figure(ax.get_figure(),
                f"Hospitals under pseudonyms. Pooled rate ratio {np.exp(pooled.estimate):.2f} "
                f"(95% CI {np.exp(pooled.ci_low):.2f} to {np.exp(pooled.ci_high):.2f}); "
                f"I² = {pooled.i2:.0f}%, 95% prediction interval {np.exp(pooled.pi_low):.2f} to "
                f"{np.exp(pooled.pi_high):.2f}. {len(pooled.excluded)} hospitals had too few "
                "deaths or months for their own model.")


def associations_section(run: rp.RunData, shared: SharedFits) -> None:
    """Case-mix-adjusted process-outcome associations (table and forest plot)."""
    pa = shared.get("associations")
    if isinstance(pa, rp.NotEstimable):
        rp.show(pa)
        return
    rp.show(pa.summary().round(3))
    _guarded(run, "Association plot", lambda: show_figure(_fig_from(pa.plot()), pa.caveat))


def collaborative_los_section(run: rp.RunData, shared: SharedFits,
                              checks: dict[str, rp.NotEstimable | None]) -> None:
    """Cumulative incidence of discharge alive and in-hospital death by period, all hospitals."""
    if _show_first_problem(checks, ("pre", "post")):
        return

    def draw():
        res = _need(shared.get("los"))
        show_figure(res.plot().get_figure(), "Cumulative incidence of discharge alive with "
                    "in-hospital death as a competing risk, all hospitals, before and after each "
                    "hospital's go-live." + _gray_words(res))

    _guarded(run, "Length of stay", draw)


def _show_first_problem(checks: dict[str, rp.NotEstimable | None], keys: tuple[str, ...]) -> bool:
    """Show the first of `keys` that is not estimable; True when one was shown."""
    for k in keys:
        if checks.get(k) is not None:
            rp.show(checks[k])
            return True
    return False


def _gray_words(res) -> str:
    """' Gray's test, before vs after: discharge p = ..., death p = ...' (tests that ran)."""
    t = res.tests[res.tests["status"] == "ok"]
    if t.empty:
        return ""
    parts = [f"{r.outcome} p {'< 0.001' if r.p < 0.001 else f'= {r.p:.3f}'}" for r in t.itertuples()]
    return " Gray's test, before vs after: " + ", ".join(parts) + "."



# ---------------------------------------------------------------------------------------------
# IPSO by the numbers
#: metric -> (numerator column, denominator column or None) of episode counts behind the crude values.
IMPACT_COUNTS: dict[str, tuple[str, str | None]] = {
    "mortality": ("sam30", "episodes"),
    "recognition": ("episodes", None),
    "bundle": ("bundle_compliant", "episodes"),
    "hospital_days": ("episodes", None),
    "bolus": ("minutes_to_bolus", None),
    "antibiotic": ("minutes_to_antibiotic", None),
}


def _period_counts(ep: pd.DataFrame, metric: str) -> list[int]:
    """Episode counts behind a crude value, before and after go-live (numerator, complement)."""
    num, den = IMPACT_COUNTS[metric]
    out = []
    for post in (False, True):
        g = ep[ep["post"] == post]
        if num == "episodes":
            out.append(len(g))
        elif g[num].dtype == bool:
            out += [int(g[num].sum()), int((~g[num]).sum()) if den else len(g)]
        else:
            out.append(int(g[num].notna().sum()))
    return out


def impact_frame(run: rp.RunData, impact, site_id: str | None = None) -> pd.DataFrame:
    """Display frame of :func:`analysis.impact.by_the_numbers`: ITS % change with CI, crude values
    before/after (blank when any count behind them is 1 to ``min_cell - 1``, or for a site's
    crude values when the counts are small) and the status in plain words."""
    t = impact.table
    ep = run.episodes_for(site_id)
    rows = []
    for r in t.itertuples():
        ok = r.status == "ok"
        small = any(0 < c < run.min_cell for c in _period_counts(ep, r.metric))
        crude_ok = not small and np.isfinite(r.crude_pre) and np.isfinite(r.crude_post)
        rows.append({
            "Measure": r.label,
            "Change after 12 months vs expected (ITS)": (
                f"{r.relative_change_pct:+.0f}% ({r.ci_lower_pct:+.0f}% to {r.ci_upper_pct:+.0f}%)"
                if ok else "not estimable"),
            "Before (crude)": f"{r.crude_pre:.3g}" if crude_ok else "",
            "After (crude)": f"{r.crude_post:.3g}" if crude_ok else "",
            "Unit": r.unit,
            "Note": "" if ok else _reason(ValueError(str(r.status).replace("not estimable: ", "")),
                                          run).replace("The data are not sufficient for this model ", ""),
        })
    return pd.DataFrame(rows)


def impact_section(run: rp.RunData, shared: SharedFits, site_id: str | None = None,
                   checks: dict[str, rp.NotEstimable | None] | None = None) -> None:
    """"IPSO by the numbers": headline % changes 12 months after go-live (ITS vs counterfactual)
    with crude before/after values, and plain-language sentences."""
    from .impact import by_the_numbers

    if checks and checks.get("post_months") is not None:
        rp.show(checks["post_months"])
        return

    def draw():
        if site_id is None:
            impact = _need(shared.get("impact"))
        else:
            impact = by_the_numbers(_need(shared.get("store")), site_id=site_id)
        words = [w for w, s in zip(impact.table["wording"], impact.table["status"]) if s == "ok"]
        if words:
            rp.show(rp.Md("\n".join(f"- {rp.escape_text(w)}" for w in words)))
        rp.show(impact_frame(run, impact, site_id).style.format(escape="html").hide(axis="index"))
        rp.show(rp.Md(
            "*ITS: change 12 months after go-live against the trend before go-live (first 6 months "
            "after go-live left out as phase-in), with 95% CI. Crude values compare all months "
            "before and after go-live without adjustment and are blank when they rest on counts "
            f"from 1 to {run.min_cell - 1}.*"))

    _guarded(run, "IPSO by the numbers", draw)

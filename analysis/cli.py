"""The ``ipso`` command-line tool. It only orchestrates: every computation lives in the library.

Each sub-command owns a small function here that parses options and calls the library; the
library modules never import this one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from . import __version__

app = typer.Typer(
    name="ipso",
    help="IPSO pediatric sepsis collaborative analysis: simulate, validate, ingest, analyse and report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ipso-analysis {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    """IPSO analysis suite."""


# ---------------------------------------------------------------------------------------------
# simulate (owner: analysis.simulate)
@app.command()
def simulate(
    out: Path = typer.Option(..., "--out", help="Directory to write the synthetic collaborative to."),
    seed: int = typer.Option(20160101, "--seed", help="Random seed (same seed, same bytes)."),
    sites: int = typer.Option(57, "--sites", help="Number of hospitals."),
    start: str = typer.Option("2016-01", "--start", help="First month, YYYY-MM."),
    months: int = typer.Option(84, "--months", help="Number of months."),
    scale: float = typer.Option(1.0, "--scale", help="Multiply every site's episode volume (benchmarks)."),
    episodes_per_site_month: Optional[float] = typer.Option(
        None, "--episodes-per-site-month", help="Mean episodes per site-month (overrides realistic volumes)."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print a machine-readable summary."),
    scenario: Optional[str] = typer.Option(
        None, "--scenario",
        help="Named scenario (constant, null, growing, waning, ramp12, heterogeneous, calendar_shock, "
        "covid_after_last_wave); truth.json then holds its event-time truth. Default: today's collaborative.",
    ),
) -> None:
    """Simulate a synthetic IPSO collaborative with known true effects."""
    from .simulate import SCENARIOS, run_simulate_command

    if scenario is not None and scenario not in SCENARIOS:
        typer.echo(f"unknown scenario {scenario!r}; known: {', '.join(sorted(SCENARIOS))}", err=True)
        raise typer.Exit(2)
    run_simulate_command(
        out=out, seed=seed, sites=sites, start=start, months=months, scale=scale,
        episodes_per_site_month=episodes_per_site_month, json_out=json_out, scenario=scenario,
    )


# ---------------------------------------------------------------------------------------------
# validate / ingest (owner: analysis.validate, analysis.store)
@app.command()
def validate(
    directory: Path = typer.Argument(..., help="Extract directory (episodes.csv|parquet, sites.csv, site_months.csv)."),
    quarantine: Optional[Path] = typer.Option(None, "--quarantine", help="Write quarantined rows to this CSV."),
    json_out: bool = typer.Option(False, "--json", help="Print a machine-readable summary."),
) -> None:
    """Validate an extract against the data contract; report accepted and quarantined rows."""
    from .validate import run_validate_command

    run_validate_command(directory=directory, quarantine=quarantine, json_out=json_out)


@app.command()
def ingest(
    directory: Path = typer.Argument(..., help="Extract directory to ingest."),
    out: Path = typer.Option(..., "--out", help="Analysis-ready store directory (Parquet)."),
    json_out: bool = typer.Option(False, "--json", help="Print a machine-readable summary."),
) -> None:
    """Validate and ingest an extract into the analysis-ready Parquet store (bad rows quarantined)."""
    from .store import run_ingest_command

    run_ingest_command(directory=directory, out=out, json_out=json_out)


# ---------------------------------------------------------------------------------------------
# estimate / plan (owner: analysis.results, analysis.plan)
@app.command()
def estimate(
    data: Path = typer.Option(..., "--data", help="Store or extract directory."),
    out: Path = typer.Option(..., "--out", help="Results store to write (Parquet)."),
    as_of: Optional[str] = typer.Option(
        None, "--as-of", help="Data cut-off month YYYY-MM: later episodes left out, outcomes censored."),
    plan: Optional[Path] = typer.Option(None, "--plan", help="Analysis plan YAML (default: the built-in plan)."),
    scopes: str = typer.Option("all", "--scopes", help="'all', 'collaborative', 'sites' or ids, comma-separated."),
    json_out: bool = typer.Option(False, "--json", help="Print a machine-readable summary."),
) -> None:
    """Compute every estimand of the analysis plan once and write the results store."""
    from .results import run_estimate_command

    run_estimate_command(data=data, out=out, as_of=as_of, plan_path=plan, scopes=scopes,
                         json_out=json_out)


plan_app = typer.Typer(help="The analysis plan: estimands and their specifications.", no_args_is_help=True)
app.add_typer(plan_app, name="plan")


@plan_app.command("show")
def plan_show(
    plan: Optional[Path] = typer.Option(None, "--plan", help="Analysis plan YAML (default: the built-in plan)."),
    json_out: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
    yaml_out: bool = typer.Option(False, "--yaml", help="Print the plan as YAML (a file --plan accepts)."),
) -> None:
    """Print the analysis plan (estimands x levels x specifications)."""
    from .results import run_plan_show_command

    run_plan_show_command(plan_path=plan, json_out=json_out, yaml_out=yaml_out)


# ---------------------------------------------------------------------------------------------
# render (owner: analysis.batch)
_PLAN_OPT = typer.Option(
    None, "--plan", help="Analysis plan YAML for the shared step and every report (checked first; "
    "a bad plan exits 2 naming estimand and field). Default: the built-in plan.")
_WAIT_OPT = typer.Option(
    0.0, "--wait", help="Seconds to wait when another ipso command is using the run folder "
    "(default 0: exit 2 at once, naming it).")

@app.command()
def render(
    sites: str = typer.Option("all", "--sites", help="'all' or comma-separated site ids."),
    collaborative: bool = typer.Option(
        True, "--collaborative/--no-collaborative", help="Also render the collaborative report."
    ),
    jobs: Optional[int] = typer.Option(None, "--jobs", help="Parallel workers (default: the machine's cores)."),
    formats: str = typer.Option("html", "--formats", help="Comma-separated: html, pdf."),
    executor: str = typer.Option("local", "--executor", help="local or dask."),
    scheduler: Optional[str] = typer.Option(
        None, "--scheduler", help="dask scheduler address (default: a local cluster)."
    ),
    force: bool = typer.Option(False, "--force", help="Re-render even reports whose inputs are unchanged."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Re-render only the reports that failed last run."),
    data: Path = typer.Option(Path("data/synthetic"), "--data", help="Extract or store directory."),
    out: Path = typer.Option(Path("reports/latest"), "--out",
                             help="Run folder: OUT/publish/ (reports, index.html, manifest.json) and OUT/internal/."),
    json_out: bool = typer.Option(False, "--json", help="Print a machine-readable summary."),
    as_of: Optional[str] = typer.Option(
        None, "--as-of", help="Data cut-off month YYYY-MM for every report (default: last month)."),
    min_cell: Optional[int] = typer.Option(
        None, "--min-cell", help="Smallest count shown; 1..MIN_CELL-1 are suppressed (default: 11)."),
    plan: Optional[Path] = _PLAN_OPT,
    wait: float = _WAIT_OPT,
    site_notebook: Optional[Path] = typer.Option(None, "--site-notebook", hidden=True),
    collaborative_notebook: Optional[Path] = typer.Option(None, "--collaborative-notebook", hidden=True),
) -> None:
    """Render every hospital's report (and the collaborative one): parallel, incremental,
    fault-isolated. Only OUT/publish/ is meant to leave the analysis server."""
    from .batch import run_render_command

    run_render_command(
        data=data, out=out, sites=sites, collaborative=collaborative, jobs=jobs, formats=formats,
        executor=executor, scheduler=scheduler, force=force, retry_failed=retry_failed,
        json_out=json_out, site_notebook=site_notebook, collaborative_notebook=collaborative_notebook,
        as_of=as_of, min_cell=min_cell, plan=plan, wait=wait,
    )


# ---------------------------------------------------------------------------------------------
# publish (owner: analysis.publish)
@app.command()
def publish(
    run: Path = typer.Option(..., "--run", help="A finished ipso render run folder."),
    out: Path = typer.Option(..., "--out", help="Bundle folder to write (new, or a previous bundle)."),
    formats: str = typer.Option("html,pdf,docx", "--formats",
                                help="Comma-separated: html, pdf, docx (pdf and docx need Quarto)."),
    data: Optional[Path] = typer.Option(
        None, "--data", help="The run's data (default: the data folder in the run's manifest)."),
    min_cell: Optional[int] = typer.Option(
        None, "--min-cell", help="Smallest count shown (default: the run's, else 11)."),
    json_out: bool = typer.Option(False, "--json", help="Print a machine-readable summary."),
) -> None:
    """Write the publication bundle of a render run: report, figures, tables, estimates, methods."""
    from .publish import run_publish_command

    run_publish_command(run=run, out=out, formats=formats, data=data, min_cell=min_cell,
                        json_out=json_out)


# ---------------------------------------------------------------------------------------------
# report (owner: analysis.render): one report at a time
report_app = typer.Typer(help="Render one report (a hospital's or the collaborative's), safe to publish.",
                         no_args_is_help=True)
app.add_typer(report_app, name="report")

_DATA_OPT = typer.Option(None, "--data", help="Store or extract directory (default: the synthetic collaborative).")
_OUT_OPT = typer.Option(Path("reports"), "--out",
                        help="Reports directory; the report goes to OUT/RUN/publish/, its working files to OUT/RUN/internal/.")
_RUN_OPT = typer.Option("adhoc", "--run", help="Run folder name (reports of one run share pseudonyms).")
_FORMATS_OPT = typer.Option("html", "--formats", help="Comma-separated: html, pdf (pdf needs Quarto).")
_MIN_CELL_OPT = typer.Option(11, "--min-cell", help="Smallest count shown; 1..MIN_CELL-1 are suppressed.")
_AS_OF_OPT = typer.Option(None, "--as-of", help="Data cut-off month YYYY-MM (default: last month).")
_JSON_OPT = typer.Option(False, "--json", help="Print a machine-readable summary.")


@report_app.command("site")
def report_site(
    site_id: str = typer.Argument(..., help="Hospital site id."),
    data: Optional[Path] = _DATA_OPT, out: Path = _OUT_OPT, run: str = _RUN_OPT,
    formats: str = _FORMATS_OPT, min_cell: int = _MIN_CELL_OPT, as_of: Optional[str] = _AS_OF_OPT,
    json_out: bool = _JSON_OPT, plan: Optional[Path] = _PLAN_OPT, wait: float = _WAIT_OPT,
) -> None:
    """Render one hospital's report (names only that hospital; peers under pseudonyms)."""
    from .render import run_report_command

    run_report_command("site", site_id=site_id, data=data, out=out, run=run, formats=formats,
                       min_cell=min_cell, as_of=as_of, json_out=json_out, plan=plan, wait=wait)


@report_app.command("collaborative")
def report_collaborative(
    data: Optional[Path] = _DATA_OPT, out: Path = _OUT_OPT, run: str = _RUN_OPT,
    formats: str = _FORMATS_OPT, min_cell: int = _MIN_CELL_OPT, as_of: Optional[str] = _AS_OF_OPT,
    json_out: bool = _JSON_OPT, plan: Optional[Path] = _PLAN_OPT, wait: float = _WAIT_OPT,
) -> None:
    """Render the collaborative report (every hospital under a pseudonym)."""
    from .render import run_report_command

    run_report_command("collaborative", site_id=None, data=data, out=out, run=run, formats=formats,
                       min_cell=min_cell, as_of=as_of, json_out=json_out, plan=plan, wait=wait)


if __name__ == "__main__":  # pragma: no cover
    app()

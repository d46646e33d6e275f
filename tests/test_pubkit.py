"""Publication building blocks: tables (HTML, Word, LaTeX), figure export, palette, generated text.

The tables test scans every rendered form (HTML, docx text, tex, csv, md) of every paper table
for raw index columns and internal names (ids of the plan and the results store). The figure
tests check that a registered figure needs alt text, is saved once as PDF + 300 dpi PNG + caption
JSON with reproducible bytes. The text tests check the SQUIRE appendix covers every item, that no
count from 1 to 10 or identifier is written, and that the numbers in the methods come from the
plan and the store.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from analysis import estimate_plots as EP  # noqa: E402
from analysis import figures as F  # noqa: E402
from analysis import methods_text as M  # noqa: E402
from analysis import privacy  # noqa: E402
from analysis import tables as T  # noqa: E402
from analysis.plan import default_plan  # noqa: E402
from analysis.results import ResultsStore, estimate_all  # noqa: E402
from analysis.simulate import simulate_collaborative  # noqa: E402
from analysis.store import collaborative_from_frames  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def coll():
    sim = simulate_collaborative(seed=11, sites=8, months=48, scale=1.2)
    return collaborative_from_frames(sim.episodes, sim.sites, sim.site_months)


@pytest.fixture(scope="module")
def store(coll):
    return estimate_all(coll, scopes="all")


@pytest.fixture(scope="module")
def assoc(coll):
    from analysis.processes import process_associations
    from analysis.reporting import load_run  # noqa: F401  (episodes are derived already)

    return process_associations(coll.episodes, "sam30")


@pytest.fixture(scope="module")
def paper_tables(store, coll, assoc):
    return [T.primary_estimand_table(store), T.sensitivity_table(store),
            T.table_one(coll.episodes), T.process_outcome_table(assoc)]


# ---------------------------------------------------------------------------------------------
# formatting
def test_p_values_and_estimates_are_formatted_as_journals_print_them():
    assert [T.format_p(p) for p in (0.0, 4e-7, 0.0009, 0.004, 0.0123, 0.4321, 0.996, np.nan)] == [
        "<0.001", "<0.001", "<0.001", "0.004", "0.01", "0.43", ">0.99", ""]
    assert T.format_estimate_ci(0.8123, 0.7, 0.9412) == "0.81 (0.70 to 0.94)"
    assert T.format_estimate_ci(1.5, np.nan, np.nan) == "1.50"
    assert T.format_estimate_ci(np.nan, 1, 2) == ""
    assert T.format_count(1234.0) == "1,234"


def test_readable_replaces_internal_names():
    plan = default_plan()
    text = T.readable("so critical_sepsis is dropped; as the site_its specification; sam30", plan)
    assert "critical sepsis" in text and "hospital's own time series" in text
    assert "30-day sepsis-attributable mortality" in text
    assert not (T.internal_names(plan) & set(re.findall(r"[\w-]+", text)))


# ---------------------------------------------------------------------------------------------
# tables
def _words(text: str) -> set[str]:
    return set(re.findall(r"[A-Za-z0-9_]+", text))


def _docx_text(path: Path) -> tuple[str, list]:
    from docx import Document

    doc = Document(str(path))
    parts = [p.text for p in doc.paragraphs]
    rows = []
    for t in doc.tables:
        for r in t.rows:
            cells = [c.text for c in r.cells]
            rows.append(cells)
            parts.append(" | ".join(cells))
    return "\n".join(parts), rows


def _first_column_is_an_index(values: list[str]) -> bool:
    vals = [v.strip() for v in values if v.strip()]
    return bool(vals) and vals == [str(i) for i in range(len(vals))]


def test_every_rendered_table_has_readable_labels_and_no_index_column(paper_tables, store, tmp_path):
    """HTML, docx, tex, csv and md of every paper table: no internal name of the plan or the store,
    no raw index column (a blank header over 0, 1, 2, ...), no 'p 0.000'."""
    banned = T.internal_names(store.plan, store)
    assert {"sam30", "its_multisite", "crude_pre_post"} <= banned
    for t in paper_tables:
        files = t.save(tmp_path, formats=("csv", "docx", "tex", "md", "html"))
        html = files["html"].read_text()
        docx_text, docx_rows = _docx_text(files["docx"])
        tex = files["tex"].read_text()
        csv = pd.read_csv(files["csv"], dtype=str, keep_default_na=False)
        md = files["md"].read_text()
        for form, text in (("html", html), ("docx", docx_text), ("tex", tex.replace("\\_", "_")),
                           ("csv", files["csv"].read_text()), ("md", md.replace("\\", ""))):
            hit = banned & _words(text)
            assert not hit, f"{t.name} ({form}) shows internal names {sorted(hit)}"
            assert "0.000" not in re.sub(r"\d0\.000", "", text), f"{t.name} ({form}) prints p 0.000"
        # no index column: every header has a label, no first column 0..n-1
        assert all(c.strip() and not c.startswith("Unnamed") for c in csv.columns), t.name
        assert not _first_column_is_an_index(list(csv.iloc[:, 0])), t.name
        header = docx_rows[1] if any(c.spanner for c in t.columns) else docx_rows[0]
        assert header[0].strip(), t.name
        assert not _first_column_is_an_index([r[0] for r in docx_rows[1:]]), t.name
        ths = re.findall(r'<th[^>]*class="gt_col_heading[^"]*"[^>]*>(.*?)</th>', html, re.S)
        assert ths and all(re.sub("<[^>]+>", "", h).strip() for h in ths), t.name
        first_cells = re.findall(r"<tr>\s*<td[^>]*>(.*?)</td>", html, re.S)
        assert not _first_column_is_an_index(first_cells), t.name


def test_primary_estimand_table_holds_every_estimand_with_estimate_interval_and_role(store):
    t = T.primary_estimand_table(store)
    d = t.display_frame()
    plan = store.plan
    assert list(d["Measure"]) != [] and set(d["Measure"]) == {e.label for e in plan.at_level("collaborative")}
    r = store.primary("sam30")
    row = d[d["Measure"] == plan.get("sam30", "collaborative").label].iloc[0]
    assert row["Estimate (95% CI)"] == T.format_estimate_ci(r["estimate"], r["lower"], r["upper"])
    assert row["Role"] == "Primary"
    assert "per child with the same case mix" in row["What is estimated (per what, when)"]
    sec = d[d["Measure"] == plan.get("bundle_population", "collaborative").label].iloc[0]
    assert sec["Role"].startswith("Secondary to")
    assert set(d["Group"]) >= {"Outcomes", "Processes of care"}


def test_sensitivity_table_lists_each_analysis_with_its_reason(store):
    t = T.sensitivity_table(store)
    d = t.display_frame()
    sens = store.rows(scope="collaborative", role="sensitivity")
    assert (d["Role"] == "Sensitivity").sum() == len(sens)
    assert d.loc[d["Role"] == "Primary", "Why it is shown"].eq("Primary analysis").all()
    desc = d[d["Role"] == "Descriptive"]
    assert len(desc) and not desc["Estimate (95% CI)"].str.contains("to").any()  # no interval


def test_counts_go_through_complementary_suppression_before_formatting(coll, tmp_path):
    small = coll.episodes.groupby("post", group_keys=False).head(40)  # a tiny hospital
    t = T.table_one(small)
    d = t.display_frame()
    counts = pd.concat([d.iloc[:, 2], d.iloc[:, 4]])
    shown = pd.to_numeric(counts.str.replace(",", ""), errors="coerce")
    assert not ((shown >= 1) & (shown <= 10)).any()
    assert (counts == privacy.DEFAULT_MARKER).any()
    html = t.save(tmp_path, formats=("html",))["html"]
    assert privacy.scan_outputs([html]) == []
    # a percentage next to a hidden count is hidden too
    for n_col, pct_col in ((2, 3), (4, 5)):
        hidden = d.iloc[:, n_col] == privacy.DEFAULT_MARKER
        assert (d.loc[hidden].iloc[:, pct_col].isin([privacy.DEFAULT_MARKER, ""])).all()


def _balanced(tex: str) -> None:
    body = re.sub(r"\\[{}%&$#_]", "", tex)
    body = "\n".join(line.split("%")[0] for line in body.splitlines())
    depth = 0
    for ch in body:
        depth += {"{": 1, "}": -1}.get(ch, 0)
        assert depth >= 0, "a closing brace without its opening one"
    assert depth == 0, "unbalanced braces"
    stack = []
    for kind, env in re.findall(r"\\(begin|end)\{(\w+)\}", body):
        if kind == "begin":
            stack.append(env)
        else:
            assert stack and stack.pop() == env, f"\\end{{{env}}} does not close the open environment"
    assert not stack, f"environments left open: {stack}"


HOSTILE = 'Hospital "x" & 50% {a} ~ ^ # $ \\ _ <b> | café ² 中文'


def test_latex_tables_compile_or_are_balanced(paper_tables, tmp_path):
    hostile = T.PubTable("hostile", HOSTILE, pd.DataFrame({"a": [HOSTILE], "b": [1.5]}),
                         [T.Column("a", HOSTILE, spanner=HOSTILE), T.Column("b", "B & C")],
                         footnotes=[HOSTILE])
    texs = [t.to_latex() for t in [*paper_tables, hostile]]
    for tex in texs:
        _balanced(tex)
        assert "\\begin{tabular}" in tex and "\\toprule" in tex and "\\bottomrule" in tex
    pdflatex = shutil.which("pdflatex")
    if pdflatex is None:
        return  # balanced environments and braces checked above; no TeX installation here
    doc = ("\\documentclass{article}\\usepackage[T1]{fontenc}\\usepackage[utf8]{inputenc}"
           "\\usepackage{booktabs,array,textcomp}\\usepackage[margin=1.5cm]{geometry}"
           "\\begin{document}\n" + "\n".join(texs) + "\n\\end{document}\n")
    (tmp_path / "t.tex").write_text(doc)
    proc = subprocess.run([pdflatex, "-interaction=nonstopmode", "-halt-on-error", "t.tex"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]


def test_docx_tables_open_and_are_reproducible(store, tmp_path):
    t = T.primary_estimand_table(store)
    a = t.save(tmp_path / "a", formats=("docx",))["docx"]
    b = T.primary_estimand_table(store).save(tmp_path / "b", formats=("docx",))["docx"]
    assert a.read_bytes() == b.read_bytes()
    text, rows = _docx_text(a)
    assert rows[0][0] == "Measure" and "Estimate (95% CI)" in rows[0]
    assert store.plan.get("sam30", "collaborative").label in text
    from docx import Document

    cp = Document(str(a)).core_properties
    assert cp.created.year == 2000 and cp.modified.year == 2000  # pinned, not today


def test_table_registry_exports_once(store, tmp_path, monkeypatch):
    monkeypatch.setenv("IPSO_EXPORT_DIR", str(tmp_path))
    reg = T.TableRegistry(display=False)
    reg.register(T.primary_estimand_table(store))
    with pytest.raises(ValueError, match="already registered"):
        reg.register(T.primary_estimand_table(store))
    names = sorted(p.name for p in (tmp_path / "tables").iterdir())
    assert names == [f"primary-estimands.{x}" for x in ("csv", "docx", "json", "md", "tex")]


# ---------------------------------------------------------------------------------------------
# figures and palette
def _fig():
    from analysis.plotting import set_theme

    set_theme()
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(np.arange(10), np.arange(10) ** 0.5, marker="o")
    ax.set_title("A figure")
    return fig


def test_figures_need_alt_text_and_a_stable_name(tmp_path):
    reg = F.FigureRegistry(tmp_path, display=False)
    with pytest.raises(ValueError, match="alt text"):
        reg.register(_fig(), "a-figure", caption="A caption.", alt="  ", safe=True, provenance="x")
    with pytest.raises(ValueError, match="caption"):
        reg.register(_fig(), "a-figure", caption="", alt="Alt.", safe=True, provenance="x")
    with pytest.raises(ValueError, match="name"):
        reg.register(_fig(), "A Figure/../x", caption="C.", alt="Alt.", safe=True, provenance="x")
    reg.register(_fig(), "a-figure", caption="C.", alt="Alt.", safe=True, provenance="store")
    with pytest.raises(ValueError, match="already registered"):
        reg.register(_fig(), "a-figure", caption="C.", alt="Alt.", safe=True, provenance="store")
    plt.close("all")


def test_a_figure_is_saved_once_as_pdf_and_300_dpi_png_with_reproducible_bytes(tmp_path):
    from PIL import Image
    from pypdf import PdfReader

    digests = []
    for run in ("a", "b"):
        reg = F.FigureRegistry(tmp_path / run, display=False)
        rec = reg.register(_fig(), "trend", caption="A trend.", alt="Line rising from 0 to 3.",
                           safe=False, provenance="unsuppressed aggregates")
        d = tmp_path / run / "figures"
        assert sorted(p.name for p in d.iterdir()) == ["trend.json", "trend.pdf", "trend.png"]
        digests.append({p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in d.iterdir()})
    assert digests[0] == digests[1]
    d = tmp_path / "a" / "figures"
    with Image.open(d / "trend.png") as im:
        assert tuple(round(x) for x in im.info["dpi"]) == (300, 300)
    meta = PdfReader(str(d / "trend.pdf")).metadata or {}
    assert "/CreationDate" not in meta and "/ModDate" not in meta
    side = json.loads((d / "trend.json").read_text())
    assert side["alt"] == "Line rising from 0 to 3." and side["safe"] is False
    assert side["provenance"] == "unsuppressed aggregates" and rec.files["png"] == "trend.png"


def test_register_figure_exports_through_the_environment_variable(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("IPSO_EXPORT_DIR", str(tmp_path))
    F.default_registry(reset=True)
    rec = F.register_figure(_fig(), "env-figure", caption="C.", alt="Alt text.", safe=True,
                            provenance="results store")
    assert (tmp_path / "figures" / "env-figure.pdf").is_file() and rec.safe
    monkeypatch.delenv("IPSO_EXPORT_DIR")
    F.default_registry(reset=True)
    rec = F.register_figure(_fig(), "no-export", caption="C.", alt="Alt text.", safe=True,
                            provenance="results store")
    assert rec.files == {}  # displayed only


def test_displayed_svg_carries_the_alt_text():
    svg = F._with_alt('<svg xmlns="http://www.w3.org/2000/svg" width="1pt"><g/></svg>', 'A "quoted" <alt>')
    assert 'aria-label="A &quot;quoted&quot; &lt;alt&gt;"' in svg and "<title>A &quot;quoted&quot; &lt;alt&gt;</title>" in svg


def test_palette_is_colour_blind_safe_and_used_by_every_plot_module():
    from analysis import plotting as P

    allowed = {c.upper() for c in (*P.OKABE_ITO.values(), *P.NEUTRALS.values())}
    assert {c.upper() for c in P.PALETTE.values()} <= allowed
    P.set_theme()
    from matplotlib.colors import to_hex

    cycle = [to_hex(c).upper() for c in matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]]
    assert cycle[:len(P.CATEGORICAL)] == [c.upper() for c in P.CATEGORICAL]
    literal = re.compile(r"""(?:colou?rs?|facecolors?|edgecolors?|ecolor)\s*=\s*["'](#[0-9A-Fa-f]{3,8}|[a-z]+)["']""")
    offenders = []
    for path in sorted((REPO / "analysis").glob("*.py")):
        text = path.read_text()
        if path.name == "plotting.py" or "plotting import" not in text:
            continue
        for m in literal.finditer(text):
            if m.group(1) not in ("none", "white"):
                offenders.append(f"{path.name}: {m.group(0)}")
    assert not offenders, offenders


# ---------------------------------------------------------------------------------------------
# figures from the store
def test_store_figures_carry_numbers_from_the_store_and_pseudonyms(store):
    rf = EP.primary_estimates_figure(store)
    r = store.primary("sam30")
    assert T.format_estimate_ci(r["estimate"], r["lower"], r["upper"]) in rf.alt
    assert rf.safe and rf.name == "primary-estimates"
    plt.close(rf.fig)
    sites = sorted(set(store.frame["scope"]) - {"collaborative"})
    labels = privacy.site_pseudonyms(sites, run_key="test")
    with pytest.raises(ValueError, match="no label"):
        EP.site_effects_figure(store, {sites[0]: "Hospital A"})
    rf = EP.site_effects_figure(store, labels)
    assert not any(re.search(rf"\b{re.escape(s)}\b", rf.alt + rf.caption) for s in sites)
    assert "Hospital A" in rf.alt and "sam30" not in rf.name
    plt.close(rf.fig)
    rf = EP.sensitivity_figure(store)
    assert "Case mix without critical sepsis" in rf.alt
    plt.close(rf.fig)


def _with_supporting_rows(store: ResultsStore) -> ResultsStore:
    """The store plus event-study, pre-trend and model-fit rows in the store's component schema."""
    f = store.frame.copy()
    if "component" not in f:
        f["component"] = "effect"
    for c in ("quantity", "period", "x", "statistic", "df", "n_sites"):
        if c not in f:
            f[c] = np.nan if c in ("x", "statistic", "df", "n_sites") else ""
    # the store's own supporting rows of sam30 make way for the known ones below
    own = (f["estimand"] == "sam30") & f["component"].isin(["event_time", "pretrend_test", "model_fit"])
    f = f[~own].reset_index(drop=True)
    base = f[(f["estimand"] == "sam30") & (f["scope"] == "collaborative")].iloc[0].to_dict()
    rows = []
    for t in range(-12, 25):
        est = 1.0 if t < 0 else 0.8
        rows.append({**base, "component": "event_time", "role": "primary", "time_point": t,
                     "estimate": est, "lower": est * 0.8, "upper": est * 1.25,
                     "period": "lead" if t < 0 else "lag", "events": 40.0})
    rows.append({**base, "component": "pretrend_test", "statistic": 1.1, "df": 12.0,
                 "p_value": 0.37, "estimate": np.nan})
    rows.append({**base, "component": "model_fit", "quantity": "c-statistic", "estimate": 0.74,
                 "lower": 0.71, "upper": 0.77})
    for k in range(10):
        rows.append({**base, "component": "model_fit", "quantity": "calibration",
                     "x": 0.5 + k, "estimate": 0.55 + k, "events": 3.0 if k == 0 else 40.0})
    f = pd.concat([f, pd.DataFrame(rows)], ignore_index=True)
    return ResultsStore(f, store.plan, store.meta)


def test_event_study_and_calibration_figures_from_supporting_rows(store):
    with pytest.raises(ValueError):
        EP.event_study_figure(store) if "component" not in store.frame else (_ for _ in ()).throw(ValueError())
    s = _with_supporting_rows(store)
    rf = EP.event_study_figure(s)
    assert "p = 0.37" in rf.caption and "month 12" in rf.alt and rf.safe
    plt.close(rf.fig)
    rf = EP.calibration_figure(s)
    assert "0.74 (0.71 to 0.77)" in rf.caption
    assert rf.safe is False  # the first decile rests on 3 events: not for publication
    plt.close(rf.fig)
    text = M.statistical_methods(s.plan, s)
    assert "c-statistic of 0.74 (0.71 to 0.77)" in text


# ---------------------------------------------------------------------------------------------
# generated text
def test_squire_appendix_covers_every_item_and_sub_item():
    assert M.squire_coverage() == []
    items = [i for i, _, _ in M.SQUIRE_ITEMS]
    assert len({re.match(r"\d+", i).group(0) for i in items}) == 18
    assert {"2a", "2b", "8a", "8b", "9a", "9b", "10a", "10b", "10c", "11a", "11b", "13a", "13b",
            "13c", "13d", "13e", "13f", "14a", "14b", "15a", "15e", "16a", "16b", "16c", "17a",
            "17e"} <= set(items)
    table = M.squire_checklist()
    for i in items:
        assert re.search(rf"^\| {i} \|", table, re.M), i
    with pytest.raises(ValueError, match="13f"):
        M.squire_checklist({k: v for k, v in M.SQUIRE_SECTIONS.items() if k != "13f"})


def test_methods_text_has_no_identifiers_internal_names_or_small_counts(store, coll):
    md = M.methods_markdown(store.plan, store, quality={"quarantined": 4, "excluded_after_as_of": 7})
    for section in ("## Measures", "## Statistical methods", "## Limitations", "## SQUIRE 2.0 checklist"):
        assert section in md
    banned = T.internal_names(store.plan, store)
    hit = banned & _words(md.replace("\\_", "_"))
    assert not hit, sorted(hit)
    ids = set(map(str, coll.sites["site_id"])) | set(map(str, coll.sites["site_name"]))
    assert not any(re.search(rf"(?<![\w-]){re.escape(s)}(?![\w-])", md) for s in ids)
    assert "A few rows (too few to publish the number)" in md and "4 rows" not in md
    assert "7 episodes" not in md


def _numbers(text: str) -> list[str]:
    return re.findall(r"(?<![\w.])(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?", text)


def test_every_number_in_the_methods_and_limitations_comes_from_the_plan_or_the_store(store):
    """Each number token of the generated methods/limitations is a number of the plan (its text
    and settings), of the store (estimates, intervals, counts of hospitals) or a version."""
    from analysis.reporting import package_versions

    plan = store.plan
    allowed = set(_numbers(json.dumps(plan.to_dict())))
    f = store.frame
    for c in ("estimate", "lower", "upper"):
        allowed |= {f"{v:.2f}" for v in f[c].dropna()}
    allowed |= {str(int(x)) for x in (100 * (1 - f["alpha"].iloc[0]),)}
    # test statistics with their degrees of freedom, and shares of extrapolated counterfactual (%)
    allowed |= {f"{v:.1f}" for v in f["statistic"].dropna()} | {f"{v:.0f}" for v in f["df"].dropna()}
    allowed |= {f"{100 * v:.0f}" for v in f["extrapolated_share"].dropna()}
    allowed |= {str(int(v) - 1) for v in f["n_sites"].dropna()}  # t intervals with G - 1 df
    site = f[f["level"] == "site"]
    allowed |= {str(site["scope"].nunique())}
    allowed |= {str(int((g["status"] != "ok").sum())) for _, g in site[site["role"] == "primary"].groupby("estimand")}
    allowed |= {str(len(g)) for _, g in site[site["role"] == "primary"].groupby("estimand")}
    for v in package_versions().values():
        allowed |= set(_numbers(v))
    from analysis import __version__

    allowed |= set(_numbers(__version__)) | {"9", "1"}  # ICH E9(R1); G - 1
    allowed |= {str(privacy.DEFAULT_MIN_CELL - 1)}  # "counts from 1 to 10 are not shown"
    text = M.statistical_methods(plan, store) + M.limitations_section(plan, store)
    stray = sorted({n for n in _numbers(text) if n not in allowed})
    assert not stray, stray


def test_generated_text_escapes_hostile_plan_text(store):
    import dataclasses

    plan = store.plan
    e = plan.get("sam30", "collaborative")
    bad = dataclasses.replace(e, label="<script>alert(1)</script> [x](javascript:y)",
                              population="*all* `children` | $x$ @cite")
    plan2 = type(plan)(plan.version, tuple(bad if x is e else x for x in plan.estimands))
    md = M.measures_section(plan2)
    assert "<script>" not in md and "[x](javascript" not in md and "`children`" not in md
    assert "\\<script\\>" in md

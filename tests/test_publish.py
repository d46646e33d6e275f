"""``ipso publish``: the bundle of a render run, reproducible, privacy-scanned.

A small synthetic run folder (the flat layout of ``ipso render``: manifest.json,
collaborative.html, _work/run_key, _shared/results.parquet) is published twice: identical
SHA-256s, manifest hashes that match the files, every figure as PDF and PNG, the primary table in
Word; a planted leak keeps its item out. With Quarto on PATH the manuscript (PDF, docx) is
rendered and checked too; without it the bundle says "skipped: needs Quarto".
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import pytest  # noqa: E402

from analysis import publish as P  # noqa: E402
from analysis.results import estimate_all  # noqa: E402
from analysis.simulate import simulate_collaborative, write_collaborative  # noqa: E402
from analysis.store import load_collaborative  # noqa: E402

pytestmark = pytest.mark.xdist_group("publish")
BIN = Path(sys.executable).parent
HTML = ("<!doctype html><html><head><meta charset='utf-8'><title>IPSO</title></head><body>"
        "<h1>IPSO collaborative report</h1><p>Hospital A, Hospital B.</p></body></html>")


def _make_run(root: Path, data: Path, store) -> Path:
    run = root / "run"
    (run / "_work").mkdir(parents=True)
    (run / "_shared").mkdir()
    (run / "_work" / "run_key").write_text("secret-test-key\n")
    (run / "collaborative.html").write_text(HTML)
    store.to_parquet(run / "_shared" / "results.parquet")
    manifest = {"tool": "ipso render", "inputs": {"data_dir": str(data), "data_hash": "f" * 64},
                "parameters": {"data_dir": str(data), "run_key": "<secret: _work/run_key>"},
                "renderer": {"name": "nbconvert", "version": "7"},
                "reports": {"collaborative": {"status": "ok", "outputs": {"html": "collaborative.html"}}}}
    (run / "manifest.json").write_text(json.dumps(manifest))
    return run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("publish")
    data = root / "data"
    write_collaborative(simulate_collaborative(seed=5, sites=6, months=48, scale=1.2), data)
    store = estimate_all(load_collaborative(data), scopes="all")
    return _make_run(root, data, store)


@pytest.fixture(scope="module")
def bundles(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundles")
    a = P.publish_bundle(run_dir, out / "a", formats=("html", "pdf", "docx"), quarto=False)
    b = P.publish_bundle(run_dir, out / "b", formats=("html", "pdf", "docx"), quarto=False)
    return a, b


def _digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_publishing_twice_gives_identical_files(bundles):
    a, b = bundles
    da, db = _digests(a.out), _digests(b.out)
    assert da == db
    assert {"report.html", "estimates.csv", "methods.md", "CITATION.cff", "manifest.json"} <= set(da)


def test_manifest_hashes_match_and_record_data_plan_and_software(bundles, run_dir):
    a, _ = bundles
    man = json.loads((a.out / "manifest.json").read_text())
    disk = _digests(a.out)
    disk.pop("manifest.json")
    assert man["files"] == disk
    assert man["tool"] == "ipso publish" and man["plan_version"] and len(man["data_hash"]) == 64
    assert man["input_files_hash"] == "f" * 64
    assert {"python", "pandas", "statsmodels", "matplotlib", "python-docx"} <= set(man["software"])
    assert man["renderer"]["version"] is None
    text = (a.out / "manifest.json").read_text()
    assert str(run_dir) not in text and "secret-test-key" not in text  # no paths, no run key


def test_without_quarto_the_manuscript_is_skipped_with_a_clear_line(bundles):
    a, _ = bundles
    lines = a.summary_lines()
    assert "report.pdf: skipped: needs Quarto (not on PATH)" in lines
    assert "report.docx: skipped: needs Quarto (not on PATH)" in lines
    assert not (a.out / "report.pdf").exists()


def test_every_figure_exists_as_pdf_and_png_with_caption_and_alt(bundles):
    from PIL import Image

    a, _ = bundles
    sidecars = sorted((a.out / "figures").glob("*.json"))
    assert len(sidecars) >= 3  # primary estimates, sensitivity analyses, hospital effects
    for side in sidecars:
        rec = json.loads(side.read_text())
        assert rec["caption"] and rec["alt"] and rec["safe"] is True
        pdf, png = side.with_suffix(".pdf"), side.with_suffix(".png")
        assert pdf.read_bytes()[:5] == b"%PDF-" and png.is_file()
        with Image.open(png) as im:
            assert round(im.info["dpi"][0]) == 300


def test_tables_come_as_csv_docx_and_tex_and_the_docx_holds_the_primary_table(bundles, run_dir):
    from docx import Document

    a, _ = bundles
    names = {p.stem for p in (a.out / "tables").iterdir()}
    assert {"primary-estimands", "sensitivity-analyses", "table-one", "process-outcome"} <= names
    for n in names:
        assert sorted(p.suffix for p in (a.out / "tables").glob(f"{n}.*")) == [".csv", ".docx", ".tex"]
    doc = Document(str(a.out / "tables" / "primary-estimands.docx"))
    header = [c.text for c in doc.tables[0].rows[0].cells]
    assert header[0] == "Measure" and "Estimate (95% CI)" in header
    body = "\n".join(c.text for r in doc.tables[0].rows for c in r.cells)
    assert "30-day sepsis-attributable mortality" in body


def test_estimates_csv_holds_publishable_rows_under_pseudonyms(bundles, run_dir):
    import pandas as pd

    a, _ = bundles
    est = pd.read_csv(a.out / "estimates.csv")
    assert "note" not in est.columns
    assert set(est["scope"]) - {"collaborative"} <= {f"Hospital {c}" for c in "ABCDEFGH"}
    data = json.loads((run_dir / "manifest.json").read_text())["inputs"]["data_dir"]
    sites = pd.read_csv(Path(data) / "sites.csv")
    text = (a.out / "estimates.csv").read_text()
    for s in [*sites["site_id"], *sites["site_name"]]:
        assert f",{s}," not in text
    small = est[["n", "events"]].stack()
    assert not ((small >= 1) & (small <= 10)).any()


def test_citation_cff_is_valid_cff_1_2_0(bundles):
    import yaml

    a, _ = bundles
    cff = yaml.safe_load((a.out / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0"
    for key in ("message", "title", "authors"):
        assert isinstance(cff[key], (str, list)) and cff[key]
    assert all(isinstance(x, dict) and ("name" in x or "family-names" in x) for x in cff["authors"])
    assert cff["type"] in ("software", "dataset")
    for ref in cff.get("references", []):
        assert {"type", "title", "authors"} <= set(ref)
    allowed = {"abstract", "authors", "cff-version", "commit", "contact", "date-released", "doi",
               "identifiers", "keywords", "license", "license-url", "message", "preferred-citation",
               "references", "repository", "repository-artifact", "repository-code", "title",
               "type", "url", "version"}
    assert set(cff) <= allowed


def test_a_planted_leak_keeps_its_item_out_of_the_bundle(run_dir, tmp_path):
    import pandas as pd

    data = json.loads((run_dir / "manifest.json").read_text())["inputs"]["data_dir"]
    name = str(pd.read_csv(Path(data) / "sites.csv")["site_name"].iloc[0])

    def plant(stage: Path) -> None:
        with (stage / "tables" / "sensitivity-analyses.csv").open("a") as fh:
            fh.write(f"{name},leak,,,\n")

    res = P.publish_bundle(run_dir, tmp_path / "leaky", formats=("html",), quarto=False,
                           extra_candidates=plant)
    out = tmp_path / "leaky"
    assert not list((out / "tables").glob("sensitivity-analyses.*"))  # all its files left out
    assert (out / "tables" / "primary-estimands.csv").is_file()
    ex = {e["item"]: e for e in res.excluded}
    assert ex["table sensitivity-analyses"]["reason"] == "privacy scan: forbidden_string"
    assert name not in (out / "manifest.json").read_text()
    for p in out.rglob("*"):
        if p.suffix in (".csv", ".md", ".json", ".cff", ".html", ".tex"):
            assert name not in p.read_text(), p


def test_layouts_old_and_new_are_both_found(run_dir, tmp_path):
    flat = P.locate_run(run_dir)
    assert flat.layout == "flat" and flat.report_html.name == "collaborative.html"
    assert flat.results_path is not None and flat.run_key_path is not None
    split = tmp_path / "split"
    (split / "publish").mkdir(parents=True)
    (split / "internal" / "_work").mkdir(parents=True)
    (split / "internal" / "_shared").mkdir()
    (split / "internal" / "export" / "figures").mkdir(parents=True)
    (split / "publish" / "collaborative.html").write_text(HTML)
    (split / "internal" / "_work" / "run_key").write_text("k\n")
    shutil.copy(run_dir / "_shared" / "results.parquet", split / "internal" / "_shared")
    (split / "manifest.json").write_text((run_dir / "manifest.json").read_text())
    lay = P.locate_run(split)
    assert lay.layout == "split"
    assert lay.report_html == split / "publish" / "collaborative.html"
    assert lay.results_path == split / "internal" / "_shared" / "results.parquet"
    assert lay.export_dir == split / "internal" / "export"
    with pytest.raises(P.PublishError, match="not an ipso render run"):
        P.locate_run(tmp_path)


def test_cli_publish_and_its_errors(run_dir, tmp_path):
    ok = subprocess.run([BIN / "ipso", "publish", "--run", str(run_dir), "--out",
                         str(tmp_path / "cli"), "--formats", "html", "--json"],
                        capture_output=True, text=True, timeout=600, env={**__import__("os").environ,
                                                                          "PATH": str(BIN)})
    assert ok.returncode == 0, ok.stderr
    assert "report.html" in json.loads(ok.stdout)["files"]
    bad = subprocess.run([BIN / "ipso", "publish", "--run", str(run_dir), "--out",
                          str(tmp_path / "x"), "--formats", "html,rtf"], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "rtf" in bad.stdout + bad.stderr
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "notes.txt").write_text("mine")
    bad = subprocess.run([BIN / "ipso", "publish", "--run", str(run_dir), "--out",
                          str(tmp_path / "occupied")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "not an ipso publish bundle" in bad.stdout + bad.stderr
    assert (tmp_path / "occupied" / "notes.txt").read_text() == "mine"
    bad = subprocess.run([BIN / "ipso", "publish", "--run", str(tmp_path), "--out",
                          str(tmp_path / "y")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "manifest.json" in bad.stdout + bad.stderr


@pytest.mark.quarto
@pytest.mark.skipif(shutil.which("quarto") is None, reason="quarto not on PATH")
def test_quarto_manuscript_is_reproducible_and_holds_the_primary_table(run_dir, tmp_path):
    from docx import Document
    from pypdf import PdfReader

    a = P.publish_bundle(run_dir, tmp_path / "qa", formats=("pdf", "docx"))
    b = P.publish_bundle(run_dir, tmp_path / "qb", formats=("pdf", "docx"))
    assert not [s for s in a.skipped if s["item"].startswith("report.")], a.skipped
    assert _digests(a.out) == _digests(b.out)
    doc = Document(str(a.out / "report.docx"))

    def rows(tables):  # pandoc puts a captioned table inside a layout table: walk nested ones
        for t in tables:
            for r in t.rows:
                yield [c.text.strip() for c in r.cells]
                for c in r.cells:
                    yield from rows(c.tables)

    found = [r for r in rows(doc.tables) if r and r[0] == "Measure"]
    assert any("Estimate (95% CI)" in r for r in found), found
    body = [r[0] for r in rows(doc.tables)]
    assert "30-day sepsis-attributable mortality" in body
    text = "\n".join(p.extract_text() or "" for p in PdfReader(str(a.out / "report.pdf")).pages)
    assert "Primary estimate of every estimand" in text and "Limitations" in text
    assert "SQUIRE 2.0 checklist" in text
    man = json.loads((a.out / "manifest.json").read_text())
    assert man["renderer"]["name"] == "quarto" and man["renderer"]["version"]

"""The publish boundary and the re-identification attack, on real reports (issue 14, items 1 and 3).

A small synthetic collaborative (4 hospitals x 24 months) is rendered by ``ipso render`` with the
real report notebooks. Only ``publish/`` may leave the analysis server: these tests read it as an
outsider would, scan every file in it, follow every link of its index, and then try to tie each
pseudonym of the collaborative report to a hospital with what the site reports publish.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pandas as pd
import pytest

from analysis import privacy, render, reporting
from analysis.batch import render_batch
from analysis.simulate import simulate_collaborative

pytestmark = pytest.mark.xdist_group("publish")
SITES = ("S01", "S02", "S03", "S04")


@pytest.fixture(scope="module")
def collaborative_run(tmp_path_factory):
    data = tmp_path_factory.mktemp("extract")
    simulate_collaborative(sites=len(SITES), months=24, episodes_per_site_month=6).write(data)
    out = tmp_path_factory.mktemp("run")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = render_batch(data, out, jobs=2, renderer="nbconvert", show_progress=False)
    return {"data": data, "out": out, "result": result}


def test_every_report_is_published_and_only_publish_leaves_the_server(collaborative_run):
    out, result = collaborative_run["out"], collaborative_run["result"]
    assert result.ok, result.summary()
    assert result.index_path == out / "publish" / "index.html"
    pub = out / "publish"
    published = sorted(str(p.relative_to(pub)) for p in pub.rglob("*") if p.is_file())
    assert published == ["collaborative.html", "index.html", "manifest.json",
                         *(f"sites/{s}.html" for s in SITES)]
    internal = out / "internal"
    for name in ("run_key", "manifest.json", "index.html", "shared", "work", "scan"):
        assert (internal / name).exists(), name
    assert sorted(p.name for p in out.iterdir()) == [".ipso-lock", "internal", "publish"]


def test_nothing_under_publish_holds_a_key_an_identifier_or_a_small_count(collaborative_run):
    data, out = collaborative_run["data"], collaborative_run["out"]
    pub = out / "publish"
    run = reporting.load_run(data)
    names = dict(zip(run.sites["site_id"], run.sites["site_name"]))
    ids = run.episodes["episode_id"].tolist() + run.episodes["patient_id"].tolist()
    key = (out / "internal" / "run_key").read_text().strip()
    for path in pub.rglob("*"):
        if not path.is_file():
            continue
        assert key not in path.read_text(encoding="utf-8", errors="replace"), path
        own = path.stem if path.parent.name == "sites" else None
        if path.name in ("index.html", "manifest.json"):  # list reports by site id, name none
            forbidden = list(names.values()) + ids + [key]
        else:
            forbidden = [s for s in names if s != own] + [n for s, n in names.items() if s != own] + ids + [key]
        assert privacy.scan_outputs([path], forbidden_strings=forbidden) == [], path
    # the published manifest names nothing of internal/: no paths, no executed notebooks, no errors
    manifest = (pub / "manifest.json").read_text()
    for needle in ("internal", str(data), str(out), "executed_notebook", "run_key", "worker"):
        assert needle not in manifest, needle
    assert json.loads(manifest)["summary"]["rendered"] == 5


def test_the_public_index_links_only_published_files(collaborative_run):
    pub = collaborative_run["out"] / "publish"
    index = (pub / "index.html").read_text()
    hrefs = re.findall(r'href="([^"]+)"', index)
    assert sorted(hrefs) == sorted(["manifest.json", "collaborative.html", *(f"sites/{s}.html" for s in SITES)])
    for href in hrefs:
        target = (pub / href).resolve()
        assert target.is_relative_to(pub.resolve()) and target.is_file(), href
    internal = (collaborative_run["out"] / "internal" / "index.html").read_text()
    assert 'href="../publish/sites/S01.html"' in internal


def test_pseudonyms_hold_against_table_matching(collaborative_run):
    """The attack of issue 14: tie each pseudonym of the collaborative report to a hospital by
    matching (wave, episodes before, episodes after) and every other number of its table rows
    with what each site report publishes about its own hospital. It ties nothing on what the
    reports publish now; on the per-hospital table the reports used to publish, it ties every
    pseudonym (so the attack is real)."""
    data, out = collaborative_run["data"], collaborative_run["out"]
    pub = out / "publish"
    coll = pub / "collaborative.html"
    sites = {s: pub / "sites" / f"{s}.html" for s in SITES}
    assert privacy.pseudonym_links(coll, sites) == {}
    # what each site report says about itself is what the attack reads
    facts = privacy.site_report_facts(sites["S01"])
    assert {"wave", "total", "before", "after"} <= set(facts)
    # the old table: one row per pseudonym with the wave and exact episodes before and after
    run = reporting.load_run(data, run_key=(out / "internal" / "run_key").read_text().strip())
    per = run.episodes.groupby(["site_id", "post"]).size().unstack(fill_value=0)
    old = pd.DataFrame([{"Hospital": run.pseudonyms[s.site_id], "Wave": int(s.wave),
                         "Episodes before": int(per.loc[s.site_id, False]),
                         "Episodes after": int(per.loc[s.site_id, True])} for s in run.sites.itertuples()])
    leaky = out / "leaky_collaborative.html"
    leaky.write_text(coll.read_text().replace("</body>", old.to_html(index=False) + "</body>"))
    linked = privacy.pseudonym_links(leaky, sites)
    assert linked == {run.pseudonyms[s]: s for s in SITES}


def test_the_batch_withdraws_a_collaborative_report_the_attack_links(collaborative_run, tmp_path,
                                                                     monkeypatch):
    """Defence in depth: were a table per pseudonym to come back, the run's own attack (after
    every report) would withdraw the collaborative report and list it as failed, saying why
    without a value."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(collaborative_run["out"], out, symlinks=True)
    manifest_path = out / "internal" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest.pop("linkage_checked")  # as after a run killed before its check
    manifest_path.write_text(json.dumps(manifest))
    monkeypatch.setattr(privacy, "pseudonym_links", lambda coll, sites: {"Hospital A": "S01"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = render_batch(collaborative_run["data"], out, jobs=2, renderer="nbconvert",
                             show_progress=False)
    status = {r.report_id: r.status for r in again.reports}
    assert status["collaborative"] == "failed" and not (out / "publish" / "collaborative.html").exists()
    assert all(v == "up-to-date" for k, v in status.items() if k != "collaborative")
    public = json.loads((out / "publish" / "manifest.json").read_text())["reports"]["collaborative"]
    assert public["status"] == "failed" and "table-matching attack" in public["reason"]
    assert "Hospital A" not in public["reason"] and "S01" not in public["reason"]

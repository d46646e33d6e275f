"""Every string from data that reaches a report is text, never markup (issue 14).

A site name ``<img src=x onerror=alert(2)>`` came out as live HTML in the report header. Text
built from data goes through :func:`analysis.reporting.escape_text` (or a table library that
escapes its cells); these tests feed script, img-onerror and attribute-breaking payloads,
``</table>``, backticks and Markdown links through the report helpers and through a real site
report rendered by papermill + nbconvert, and look for any live tag or attribute in the HTML.
"""

from __future__ import annotations

import html
import shutil
import warnings
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from analysis import contract, reporting
from analysis.reporting import NotEstimable, code_text, escape_text

PAYLOADS = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(2)>",
    '" onmouseover=alert(3) x="',
    "' onfocus=alert(5) autofocus '",
    "</table></div><marquee>moving</marquee>",
    "`code` ``more``",
    "[x](javascript:alert(4)) ![i](x)",
    "*emphasis* _under_ $math$ @cite ~sub~ ^sup^",
    "line\nbreak\r\n# heading | cell",
]
NAME = "St. Mary's <img src=x onerror=alert(2)> " + " ".join(PAYLOADS)


class Tags(HTMLParser):
    """Every start tag with its attributes, and the text of the page."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.script = False
        self.scripts: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self.script = tag == "script"

    def handle_endtag(self, tag):
        self.script = False

    def handle_data(self, data):
        (self.scripts if self.script else self.text).append(data)


def live_payload(markup: str) -> list[str]:
    """Every sign of a payload that became markup: an event-handler attribute, an img with src x,
    a javascript: link, a script that calls alert, or the payload's <marquee> element."""
    p = Tags()
    p.feed(markup)
    found = []
    for tag, attrs in p.tags:
        for k, v in attrs.items():
            if k.startswith("on") or (v or "").strip().lower().startswith("javascript:"):
                found.append(f"<{tag} {k}={v!r}>")
        if tag == "img" and attrs.get("src") == "x":
            found.append("<img src=x>")
        if tag == "marquee":
            found.append("<marquee>")
    found += [s for s in p.scripts if "alert(" in s]
    return found


def page_text(markup: str) -> str:
    p = Tags()
    p.feed(markup)
    return " ".join("".join(p.text).split())


def markdown_to_html(md: str) -> str:
    """Markdown as nbconvert renders it in HTML reports (mistune, raw HTML passed through)."""
    from nbconvert.filters.markdown import markdown2html

    return markdown2html(md)


@pytest.mark.parametrize("payload", PAYLOADS)
def test_escape_text_leaves_no_markup(payload):
    out = escape_text(payload)
    assert not set(out) & set("<>\"'`[](){}*_$@~^|\n\r")
    assert html.unescape(out) == " ".join(payload.replace("\r\n", "\n").split("\n"))  # breaks -> spaces
    rendered = markdown_to_html(f"## {out}")
    assert live_payload(rendered) == []
    assert " ".join(payload.split()) in page_text(rendered)


def test_code_text_cannot_be_closed_by_data():
    for value in ("plain", "a`b", "``x``", "`", "<b>x</b>`"):
        rendered = markdown_to_html(f"- {code_text(value)}")
        assert live_payload(rendered) == []
        assert page_text(rendered) == value


class _Run:
    """Just enough of a RunData for report_header (the hostile name is the hospital's own)."""

    def __init__(self, name: str):
        self.sites = pd.DataFrame({"site_id": ["S01"], "site_name": [name], "go_live": ["2017-01-01"],
                                   "wave": [1]})
        self.as_of = pd.Timestamp("2018-01-01")
        self.min_cell = 11

    def episodes_for(self, site_id):
        return pd.DataFrame({"month": pd.to_datetime(["2017-01-01"] * 20)})

    site_name = reporting.RunData.site_name


def test_report_header_shows_a_hostile_name_as_text():
    md = reporting.report_header(_Run(NAME), "S01")
    rendered = markdown_to_html(md)
    assert live_payload(rendered) == []
    assert " ".join(NAME.split()) in page_text(rendered)


def test_messages_tables_and_captions_escape_data(monkeypatch):
    note = NotEstimable("Model for <marquee>x</marquee>", "The data are not sufficient (" + PAYLOADS[1] + ").")
    table = reporting.gt_table(pd.DataFrame({"hospital": PAYLOADS, "n": [20] * len(PAYLOADS)}), ["n"],
                               title=PAYLOADS[0])
    shown = []
    monkeypatch.setattr(reporting, "show", shown.append)
    import matplotlib

    from analysis import report_sections

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.set_title(PAYLOADS[1])
    report_sections.show_figure(fig, "Caption with " + " ".join(PAYLOADS))
    footer = reporting.reproducibility_footer({"as_of": PAYLOADS[5], "formats": [PAYLOADS[1]]},
                                              data_hash="0" * 64, renderer="nbconvert")
    for md in (note._repr_markdown_(), table._repr_markdown_(), shown[-1], footer):
        assert live_payload(markdown_to_html(str(md))) == [], md
    figure = shown[0]  # a raster figure (no markup at all) unless drawn from suppressed data
    for markup in (table._repr_html_(), *([figure._repr_svg_()] if hasattr(figure, "_repr_svg_") else [])):
        assert live_payload(markup) == []


# ---------------------------------------------------------------------------------------------
# a real site report, rendered by papermill + nbconvert
@pytest.fixture(scope="module")
def hostile_extract(tmp_path_factory):
    from analysis.simulate import simulate_collaborative

    d = tmp_path_factory.mktemp("hostile")
    sim = simulate_collaborative(sites=4, months=24, episodes_per_site_month=6, seed=3)
    sim.write(d / "sim")
    shutil.move(str(d / "sim" / "episodes.parquet"), d / "episodes.parquet")
    shutil.move(str(d / "sim" / "site_months.csv"), d / "site_months.csv")
    sites = pd.read_csv(d / "sim" / "sites.csv", dtype=str, keep_default_na=False)
    sites.loc[sites["site_id"] == "S01", "site_name"] = NAME
    sites.loc[sites["site_id"] == "S02", "site_name"] = PAYLOADS[2] + PAYLOADS[0]
    sites[contract.field_names("sites")].to_csv(d / "sites.csv", index=False)
    shutil.rmtree(d / "sim")
    return d


@pytest.mark.xdist_group("render")
def test_rendered_site_report_has_no_live_markup_from_data(hostile_extract, tmp_path):
    from analysis import render

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = render.render_report("site", site_id="S01", data_dir=hostile_extract, out_dir=tmp_path,
                                 run="x", renderer="nbconvert")
    assert r.error is None, r.error
    page = r.outputs["html"].read_text(encoding="utf-8")
    assert live_payload(page) == []
    # the hospital's own name is shown, literally, in the header
    assert " ".join(NAME.split()) in page_text(page)
    assert page.count("<table") == page.count("</table>")


@pytest.mark.skipif(shutil.which("quarto") is None, reason="quarto not on PATH")
@pytest.mark.xdist_group("render")
def test_quarto_site_report_has_no_live_markup_from_data(hostile_extract, tmp_path):
    from analysis import render

    r = render.render_report("site", site_id="S01", data_dir=hostile_extract, out_dir=tmp_path,
                             run="q", renderer="quarto")
    assert r.error is None, r.error
    page = Path(r.outputs["html"]).read_text(encoding="utf-8")
    assert live_payload(page) == []
    assert " ".join(NAME.split()) in page_text(page)

"""Regenerate the tiny parameterised notebooks used by tests/test_batch*.py.

Run: .venv/bin/python tests/data/notebooks/make_notebooks.py
They mimic notebooks/site_report.ipynb and collaborative_report.ipynb (same parameters cell) but
take well under a second to execute: read the site's rows, print a summary, draw a seaborn plot.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).parent

PARAMETERS = '''site_id = None
data_dir = "data/synthetic"
as_of = None
min_cell = 11
run_key = ""
shared_dir = None
renderer = "nbconvert"
formats = "html"'''

ISOLATION_CHECK = '''# Isolation check: a warm kernel must not carry anything over from the previous report.
import os
import matplotlib.pyplot as plt
leaked = [name for name in ("site_secret", "site_rows", "previous_site") if name in globals()]
assert not leaked, f"state leaked from a previous report: {leaked}"
assert plt.get_fignums() == [], "figures leaked from a previous report"
assert not [p for p in os.listdir(".") if p.endswith(".png")], "files leaked into the work folder"'''

LOAD = '''import pandas as pd
from pathlib import Path


def read_table(name):
    base = Path(data_dir)
    if (base / f"{name}.parquet").exists():
        return pd.read_parquet(base / f"{name}.parquet")
    return pd.read_csv(base / f"{name}.csv")


episodes = read_table("episodes")'''

SITE_BODY = '''site_rows = episodes[episodes["site_id"].astype(str) == str(site_id)]
assert len(site_rows) > 0, f"no episodes for site {site_id}"
site_secret = f"secret-of-{site_id}"
previous_site = site_id
print(f"Hospital {site_id}: {len(site_rows)} episodes, mean value {site_rows['value'].mean():.3f}")
if shared_dir is not None and (Path(shared_dir) / "peer_means.csv").exists():
    peers = pd.read_csv(Path(shared_dir) / "peer_means.csv")
    print(f"Peer sites in shared artefacts: {len(peers)}")'''

PLOT = '''import matplotlib.pyplot as plt
import seaborn as sns

fig, ax = plt.subplots(figsize=(4, 2.5))
sns.lineplot(data=DATA, x="month", y="value", ax=ax)
ax.set_title(TITLE)
fig.savefig("figure.png")  # a file in the per-report work folder
plt.show()'''


def _notebook(cells):
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def site_notebook():
    params = new_code_cell(PARAMETERS)
    params.metadata["tags"] = ["parameters"]
    return _notebook([
        new_markdown_cell("# Hospital report (test notebook)"),
        params,
        new_code_cell(ISOLATION_CHECK),
        new_code_cell(LOAD),
        new_code_cell(SITE_BODY),
        new_code_cell(PLOT.replace("DATA", "site_rows").replace("TITLE", 'f"Hospital {site_id}"')),
    ])


def collaborative_notebook():
    params = new_code_cell(PARAMETERS)
    params.metadata["tags"] = ["parameters"]
    body = '''print(f"Collaborative: {episodes['site_id'].nunique()} sites, {len(episodes)} episodes")'''
    return _notebook([
        new_markdown_cell("# Collaborative report (test notebook)"),
        params,
        new_code_cell(ISOLATION_CHECK),
        new_code_cell(LOAD),
        new_code_cell(body),
        new_code_cell(PLOT.replace("DATA", "episodes").replace("TITLE", '"All hospitals"')),
    ])


if __name__ == "__main__":
    nbformat.write(site_notebook(), HERE / "site_report.ipynb")
    nbformat.write(collaborative_notebook(), HERE / "collaborative_report.ipynb")
    print("wrote", HERE)

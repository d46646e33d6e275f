"""One seaborn theme for every figure in the suite, and small shared plotting helpers."""

from __future__ import annotations

# No backend is forced here: Jupyter keeps its inline backend, and headless runs fall back to Agg.
import matplotlib.pyplot as plt
import seaborn as sns

PALETTE = {
    "observed": "#4C72B0",
    "fitted": "#1B3A5C",
    "counterfactual": "#C44E52",
    "band": "#C44E52",
    "signal": "#DD8452",
    "limit": "#8C8C8C",
    "highlight": "#C44E52",
    "pre": "#4C72B0",
    "post": "#55A868",
}

_THEMED = False


def set_theme() -> None:
    """Apply the suite's single seaborn theme (idempotent)."""
    global _THEMED
    if not _THEMED:
        sns.set_theme(context="notebook", style="whitegrid", palette="deep")
        # axes.titley fixed (not None = automatic): matplotlib then skips moving each title above
        # top-side tick labels (we draw none there), which cost a third of every figure's draw.
        plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 120, "axes.titleweight": "bold",
                             "axes.titley": 1.0})
        _THEMED = True


def new_axes(ax=None, figsize=(8, 4.5)):
    """Return `ax` or a fresh themed Axes."""
    set_theme()
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax

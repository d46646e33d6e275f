"""The report layer: what each parameterised notebook shows, section by section.

Every number, sentence and figure here is read from the analysis plan's results store
(:mod:`analysis.results`) and from suppressed aggregates (:mod:`analysis.privacy`); this layer
fits no model of its own. ``site`` builds the hospital report, ``collaborative`` the SQUIRE 2.0
collaborative report. Notebooks call these functions and hold no statistics.
"""

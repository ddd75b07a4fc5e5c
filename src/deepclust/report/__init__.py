"""Run reports: ``deepclust report RUN_DIR`` writes ``report.html`` with its PNGs beside it.

:func:`build_report` assembles the page (:mod:`.build`), :mod:`.plots` draws the figures
(matplotlib, Agg) and :mod:`.html` writes the self-contained page.
"""

from deepclust.report.build import build_report

__all__ = ["build_report"]

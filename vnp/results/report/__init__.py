"""The report of a finished run: `data` reads OUT (no matplotlib), `plots` draws the figures,
`page` writes the self-contained `report.html`."""

from vnp.results.report.page import write_report

__all__ = ["write_report"]

"""The report of a run: one self-contained HTML page (plus Markdown and JSON) built from the run folder alone."""

from dermadv.report.build import build_report, collect, render_markdown, render_report
from dermadv.report.data import ReportData

__all__ = ["ReportData", "build_report", "collect", "render_markdown", "render_report"]

"""Visual report of a run: report.md, a single-file report.html and report_*.png plots."""
from pipeline.report.data import pareto_front
from pipeline.report.render import write_report, write_report_safe

__all__ = ["pareto_front", "write_report", "write_report_safe"]

"""`vlrl report RUN_DIR`: a run folder as one self-contained HTML page (plots, alarms, rollouts)."""

from vlrl.report.page import REPORT_FILE, build_report, write_report

__all__ = ["REPORT_FILE", "build_report", "write_report"]

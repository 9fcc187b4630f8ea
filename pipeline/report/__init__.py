"""Reporting: a sweep's arms loaded from MLflow (load), statistics (stats), plots (plots), the markdown (render),
and the report that ties them together (compare, `python -m pipeline.report`). Reads MLflow only, never a stage."""

from pipeline.report.compare import REPORT_FILES, compare, main

__all__ = ["REPORT_FILES", "compare", "main"]

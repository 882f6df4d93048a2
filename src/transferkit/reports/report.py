"""Markdown and self-contained HTML reports: the model card of one fit, and a comparison of strategies.

A report is first built as a list of blocks (headings, paragraphs, tables,
lists, images) and then rendered twice: ``report.md`` refers to PNG files
written beside it under ``plots/``, while ``report.html`` embeds the same PNGs
as base64 data URIs so that it can be mailed or archived as one file.

Every file is written to a temporary name and renamed into place, and the
reports are renamed last: a crash leaves either no report or a complete one,
never a truncated one.

This module gathers the public names of:

* :mod:`~transferkit.reports.report_render`: the blocks, their markdown and HTML rendering, and the writing;
* :mod:`~transferkit.reports.model_card`: the model card of one fit (:func:`write_fit_report`);
* :mod:`~transferkit.reports.compare_report`: the strategy comparison (:func:`format_table`,
  :func:`write_compare_report`).
"""
from __future__ import annotations

from transferkit.reports.compare_report import format_gain, format_mean_ci, format_table, write_compare_report
from transferkit.reports.model_card import write_fit_report
from transferkit.reports.report_render import Block, markdown_table

__all__ = ["Block", "format_gain", "format_mean_ci", "format_table", "markdown_table", "write_compare_report",
           "write_fit_report"]

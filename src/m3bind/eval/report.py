"""Writing an evaluation report folder: ``report.json`` (schema in :mod:`m3bind.eval.report_schema`,
documented in ``docs/report-schema.md``), ``report.md`` (:mod:`m3bind.eval.report_markdown`) and
the PNG figures (:mod:`m3bind.eval.plots`).

The evaluation runner computes every number; this module validates, then writes.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from m3bind.eval.plots import draw_report_figures
from m3bind.eval.report_markdown import render_markdown
from m3bind.eval.report_schema import report_json_text, validate_report
from m3bind.fileio import atomic_write_text


def write_report(report: Mapping[str, Any], out_dir: Path,
                 embeddings: Mapping[str, Mapping] | None = None) -> dict[str, Path]:
    """Validate ``report`` and write report.json, report.md and the figures into ``out_dir``.

    Args:
        report: the evaluation results, shaped as documented in ``docs/report-schema.md``.
        out_dir: the folder to write into (created if needed).
        embeddings: optional shared-space samples for the 2D map,
            ``{"before": {"emb": (N, D), "modality": [...], "concept": [...]}, "after": {...}}``.

    Returns ``{file name: path}`` for every file written: ``report.json``, ``report.md`` and the
    PNGs that had data (``fewshot.png``, ``retrieval.png``, ``text_to_image.png``,
    ``embedding_map.png``); report.md says which figures were skipped and why. Raises
    :class:`m3bind.eval.report_schema.ReportError` when the report does not follow the schema
    (nothing is written then).
    """
    model = validate_report(report)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figure_paths, figures = draw_report_figures(model.model_dump(mode="json"), out_dir, embeddings)
    json_path = atomic_write_text(out_dir / "report.json", report_json_text(model))
    md_path = atomic_write_text(out_dir / "report.md", render_markdown(model, figures))
    return {"report.json": json_path, "report.md": md_path, **figure_paths}

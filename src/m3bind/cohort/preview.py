"""A contact sheet of a generated cohort: per modality, a normal study and one per finding.

Studies are read back from the written files with :func:`m3bind.data.readers.read_study`, so
the sheet shows what a training run will see, not the renderer's in-memory arrays. Each cell is
captioned with the beginning of its report.
"""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from m3bind.cohort.conditions import MODALITY_ORDER
from m3bind.data.manifest import parse_labels
from m3bind.data.readers import read_study
from m3bind.errors import DataError

CAPTION_CHARS = 80
CT_SLICE_FRACTIONS = (0.3, 0.5, 0.75)  # heart level, hila, upper lobes (0 = most inferior slice)
CT_WINDOW_HU = (-1000.0, 400.0)        # one window that shows both lung and soft tissue
ECG_SECONDS_SHOWN = 4.0
ECG_LEAD_SPACING_MV = 2.5


def write_preview(cohort_dir: str | Path, out_png: str | Path, per_finding: int = 1) -> Path:
    """Write a PNG contact sheet of the cohort in ``cohort_dir``; returns the PNG's path.

    One row per modality; the first ``per_finding`` columns show normal studies, then
    ``per_finding`` columns per finding (a study with that finding alone when there is one).
    """
    cohort_dir, out_png = Path(cohort_dir), Path(out_png)
    if per_finding < 1:
        raise ValueError(f"per_finding must be at least 1, got {per_finding}")
    description_path = cohort_dir / "cohort.json"
    if not description_path.exists():
        raise DataError(description_path, "no cohort here (cohort.json is missing); generate one first")
    description = json.loads(description_path.read_text())
    modalities = [m for m in MODALITY_ORDER if m in description["modalities"]]
    n_cols = per_finding * (1 + max(len(description["modalities"][m]["findings"]) for m in modalities))

    fig = Figure(figsize=(2.4 * n_cols, 2.9 * len(modalities)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(modalities), n_cols, squeeze=False)
    for row, modality in enumerate(modalities):
        info = description["modalities"][modality]
        manifest_path = cohort_dir / info["manifest"]
        table = pd.read_csv(manifest_path, dtype=str, keep_default_na=False)
        columns = [("normal", i) for i in range(per_finding)]
        columns += [(finding, i) for finding in info["findings"] for i in range(per_finding)]
        for col, (label, index) in enumerate(columns):
            ax = axes[row, col]
            ax.set_axis_off()
            examples = _examples(table, None if label == "normal" else label, per_finding)
            title = f"{modality}: {label}" if col == 0 else label
            if index >= len(examples):
                ax.set_title(title, fontsize=7)
                ax.text(0.5, 0.5, "no example\nin this cohort", ha="center", va="center", fontsize=7)
                continue
            record = table.iloc[examples[index]]
            _draw_study(ax, modality, manifest_path.parent / record["path"])
            ax.set_title(title, fontsize=7)
            ax.text(0.5, -0.04, _caption(record["text"]), transform=ax.transAxes, ha="center", va="top",
                    fontsize=5.5)
        for col in range(len(columns), n_cols):
            axes[row, col].set_axis_off()
    fig.subplots_adjust(left=0.01, right=0.99, top=0.97, bottom=0.03, wspace=0.08, hspace=0.55)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=90)
    return out_png


def _examples(table: pd.DataFrame, label: str | None, count: int) -> list[int]:
    """Row numbers to show: normal studies, or studies with ``label`` (alone first)."""
    labels = [parse_labels(raw) for raw in table["labels"]]
    if label is None:
        return [i for i, found in enumerate(labels) if not found][:count]
    alone = [i for i, found in enumerate(labels) if found == [label]]
    mixed = [i for i, found in enumerate(labels) if label in found and found != [label]]
    return (alone + mixed)[:count]


def _caption(report: str) -> str:
    text = report if len(report) <= CAPTION_CHARS else report[:CAPTION_CHARS].rstrip() + "..."
    return textwrap.fill(text, width=34)


def _draw_study(ax: Axes, modality: str, path: Path) -> None:
    study = read_study(path)
    array = study.array
    if modality == "ecg":
        _draw_ecg(ax, array, float(study.meta["fs"]), list(study.meta["lead_names"]))
    elif array.ndim == 3 and modality == "ct":
        slices = [array[int(f * (array.shape[0] - 1))] for f in CT_SLICE_FRACTIONS]
        ax.imshow(np.concatenate(slices, axis=1), cmap="gray", vmin=CT_WINDOW_HU[0], vmax=CT_WINDOW_HU[1])
    elif array.ndim == 3:  # colour image, 0..255
        ax.imshow(np.clip(array, 0, 255).astype(np.uint8))
    else:
        low, high = np.percentile(array, (1, 99))
        ax.imshow(array, cmap="gray", vmin=low, vmax=high)


def _draw_ecg(ax: Axes, signal: np.ndarray, fs: float, lead_names: list[str]) -> None:
    """The 12 leads stacked, the first few seconds, on a light ECG-paper background."""
    n = min(signal.shape[1], int(ECG_SECONDS_SHOWN * fs))
    time = np.arange(n) / fs
    ax.set_facecolor("#fff4f4")
    for lead, name in enumerate(lead_names):
        offset = -lead * ECG_LEAD_SPACING_MV
        ax.plot(time, signal[lead, :n] + offset, color="black", linewidth=0.4)
        ax.text(-0.05, offset, name, fontsize=4.5, ha="right", va="center")
    ax.set_xlim(-0.35, time[-1])
    ax.set_ylim(-len(lead_names) * ECG_LEAD_SPACING_MV, ECG_LEAD_SPACING_MV)

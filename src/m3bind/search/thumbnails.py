"""Small PNG previews of studies for the search page.

One picture per signal kind, whatever the file format: a 2D image (X-ray, fundus, pathology
tile) is shown whole; a volume (CT) as three axial slices at a quarter, half and three
quarters of its depth; a multi-lead signal (ECG) as a strip with one row per lead over a
0.2 s grid, at a fixed gain of 12 px per mV clipped to the lead's row (a fixed gain, unlike
per-lead scaling, keeps a low-voltage ECG looking low).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from m3bind.data.readers import read_study
from m3bind.errors import DataError

SIZE = 256                      # longest side of a 2D thumbnail, pixels
_SLICE_SIZE = 160               # side of each CT slice
_GAP = 4
_LEAD_ROW = 28                  # ECG: pixels per lead
_ECG_WIDTH = 600
_ECG_SECONDS = 10.0
_PX_PER_MV = 12.0
_GRID = (250, 205, 205)
_TRACE = (20, 20, 20)


def render_thumbnail(path: str | Path, kind: object | None = None) -> bytes:
    """PNG bytes previewing the study at ``path``.

    ``kind`` is the modality's signal kind (a :class:`SignalKind`), so that a ``.npy`` array
    is drawn as what it is; the reader raises DataError naming the file when it cannot be read.
    """
    from m3bind.data.wsi import is_whole_slide

    if is_whole_slide(path):
        return _png(_slide_overview(path))
    study = read_study(path, expect=kind)
    array = study.array
    kind_name = getattr(study.meta.get("kind"), "value", None) or _guess_kind(array)
    if kind_name == "signal1d":
        image = _ecg_strip(array, float(study.meta.get("fs") or array.shape[1] / _ECG_SECONDS),
                           study.meta.get("lead_names"))
    elif kind_name == "volume3d":
        image = _three_slices(array)
    else:
        image = _picture(array)
    return _png(image)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# The smallest level of a slide pyramid is read whole for its preview; refuse absurd ones.
_MAX_OVERVIEW_PIXELS = 16_000_000


def _slide_overview(path: str | Path) -> Image.Image:
    """A whole-slide image's preview: its smallest pyramid level, fitted."""
    from m3bind.data.wsi import WholeSlide

    with WholeSlide(path) as slide:
        level = min(slide.levels, key=lambda lv: lv.height * lv.width)
        if level.height * level.width > _MAX_OVERVIEW_PIXELS:
            raise DataError(path, f"the slide's smallest level ({level.width} x {level.height}) is too large "
                                  "for a preview")
        pixels = slide.read_region(level, 0, 0, level.width, level.height)
    return _fit(Image.fromarray(np.ascontiguousarray(pixels), mode="RGB"), SIZE)


def _guess_kind(array: np.ndarray) -> str:
    """The kind of an array the reader could not tag (a .npy file of a user's own modality)."""
    if array.ndim == 3 and array.shape[2] != 3:
        return "volume3d"
    if array.ndim == 2 and array.shape[0] <= 16 and array.shape[1] >= 8 * array.shape[0]:
        return "signal1d"
    return "image2d"


def _to_uint8(array: np.ndarray, low: float, high: float) -> np.ndarray:
    scaled = (np.asarray(array, dtype=np.float32) - low) / max(high - low, 1e-6)
    return (np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _window(array: np.ndarray) -> tuple[float, float]:
    """Percentile window: robust to a few extreme pixels (markers, metal)."""
    low, high = np.percentile(array, [0.5, 99.5])
    return float(low), float(high)


def _picture(array: np.ndarray) -> Image.Image:
    if array.ndim == 3:  # colour, 0..255 by the readers' convention
        image = Image.fromarray(_to_uint8(array, 0.0, 255.0), mode="RGB")
    else:
        image = Image.fromarray(_to_uint8(array, *_window(array)), mode="L")
    return _fit(image, SIZE)


def _fit(image: Image.Image, side: int) -> Image.Image:
    """Scaled (up or down, aspect kept) so that its longest side is ``side``: every preview has one size."""
    scale = side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BILINEAR)


def _three_slices(volume: np.ndarray) -> Image.Image:
    low, high = _window(volume)
    depth = volume.shape[0]
    sheet = Image.new("L", (3 * _SLICE_SIZE + 2 * _GAP, _SLICE_SIZE), 0)
    for position, fraction in enumerate((0.25, 0.5, 0.75)):
        index = min(depth - 1, int(fraction * depth))
        tile = _fit(Image.fromarray(_to_uint8(volume[index], low, high), mode="L"), _SLICE_SIZE)
        left = position * (_SLICE_SIZE + _GAP) + (_SLICE_SIZE - tile.width) // 2
        sheet.paste(tile, (left, (_SLICE_SIZE - tile.height) // 2))
    return sheet


def _ecg_strip(signal: np.ndarray, fs: float, lead_names: list[str] | None) -> Image.Image:
    n_leads = signal.shape[0]
    names = list(lead_names) if lead_names else [str(i + 1) for i in range(n_leads)]
    label_width = 34
    width, height = label_width + _ECG_WIDTH, n_leads * _LEAD_ROW
    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    # 0.2 s major grid, like ECG paper's large squares.
    px_per_second = _ECG_WIDTH / _ECG_SECONDS
    for second in np.arange(0.0, _ECG_SECONDS + 1e-9, 0.2):
        x = label_width + second * px_per_second
        draw.line([(x, 0), (x, height)], fill=_GRID)
    for y in range(0, height + 1, _LEAD_ROW // 2):
        draw.line([(label_width, y), (width, y)], fill=_GRID)
    samples = min(signal.shape[1], int(round(_ECG_SECONDS * fs)))
    x = label_width + np.arange(samples) / fs * px_per_second
    for lead in range(n_leads):
        middle = lead * _LEAD_ROW + _LEAD_ROW / 2
        trace = signal[lead, :samples] - np.median(signal[lead, :samples])
        y = np.clip(middle - trace * _PX_PER_MV, lead * _LEAD_ROW, (lead + 1) * _LEAD_ROW - 1)
        draw.line(list(zip(x.tolist(), y.tolist())), fill=_TRACE, width=1)
        draw.text((3, middle - 6), names[lead][:4], fill=(90, 90, 90))
    return image

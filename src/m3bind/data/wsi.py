"""Whole-slide pathology images (pyramidal TIFF, Aperio SVS) as a stream of tissue tiles.

A slide is far too large to decode at once (100 000 x 80 000 pixels at 40x), so
:class:`WholeSlide` reads one pyramid level region by region, decoding only the TIFF tiles
(or strips) a region overlaps and keeping a few of them in a small cache. :meth:`WholeSlide.tiles`
walks a level in non-overlapping tiles at a chosen magnification and yields the ones with
enough tissue; :func:`embed_slide` encodes them in batches and :func:`pool_tile_embeddings`
turns the tile embeddings into one slide embedding, so a slide can be one study.

Magnification. A slide's base magnification and pixel size come from the Aperio description
(``AppMag``, ``MPP``), else from the TIFF resolution tags (a pixel size of 0.05-20 um per
pixel; anything else is a default DPI, not a microscope), else from ``base_magnification`` /
``base_mpp`` given by the caller. When only one of the two is known, the usual convention
10x = 1 um per pixel links them (40x = 0.25 um, 20x = 0.5 um). A tile at magnification M is
read from the pyramid level with the largest downsample not above base / M and resized to
the tile size when that level is not exact.

Tissue. A pixel is tissue when its HSV saturation, (max - min) / max over R, G, B, is at
least ``min_saturation`` and it is not near black: white or grey glass and background have
almost no saturation, stained tissue has plenty. A tile is kept when its tissue fraction
is at least ``tissue_threshold``. Tiles that do not fit whole at the right or bottom edge
are skipped. Missing (sparse) TIFF tiles read as white background.
"""
from __future__ import annotations

import math
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Literal

import numpy as np
import tifffile
import torch
import torch.nn.functional as F
from PIL import Image

from m3bind.data.readers import Study
from m3bind.errors import DataError
from m3bind.signal_kinds import SignalKind

# Microscope pixel sizes; a resolution tag outside this range is a scanner-less default DPI.
_PLAUSIBLE_MPP = (0.05, 20.0)
# The usual objective convention: 10x magnification is 1 um per pixel.
_MPP_AT_10X = 1.0
# Levels whose downsample is within this fraction of the wanted one count as exact.
_LEVEL_TOLERANCE = 0.02
# Pixels at or below this max(R, G, B) are black (scan borders, ink), never tissue.
_BLACK_LEVEL = 30
# Bounds on what one read may decode: one TIFF segment, and the level region behind a tile.
_MAX_SEGMENT_BYTES = 256 * 2 ** 20
_MAX_REGION_PIXELS = 64 * 2 ** 20
_TIFF_ERRORS = (tifffile.TiffFileError, OSError, EOFError, ValueError, KeyError, IndexError,
                TypeError, NotImplementedError, RuntimeError)


@dataclass(frozen=True)
class SlideLevel:
    """One pyramid level: its size in pixels and its downsample relative to the base level."""

    index: int
    height: int
    width: int
    downsample: float


@dataclass(frozen=True)
class Tile:
    """A tissue tile: RGB uint8 pixels at the requested magnification and where it lies.

    ``x`` and ``y`` are the tile's top-left corner in base-level pixels.
    """

    slide: str
    pixels: np.ndarray
    x: int
    y: int
    magnification: float
    tissue_fraction: float

    def study(self) -> Study:
        """The tile as a 2D colour study, ready for the pathology transform."""
        return Study(self.pixels.astype(np.float32),
                     {"kind": SignalKind.IMAGE_2D, "path": self.slide, "source_format": "wsi",
                      "tile_x": self.x, "tile_y": self.y, "magnification": self.magnification})


def tissue_fraction(rgb: np.ndarray, min_saturation: float = 0.07) -> float:
    """Fraction of the pixels of an (H, W, 3) uint8 image that are tissue (module docstring)."""
    channels = rgb.astype(np.int16)
    high = channels.max(axis=2)
    low = channels.min(axis=2)
    saturated = (high - low) >= min_saturation * np.maximum(high, 1)
    return float(np.mean(saturated & (high > _BLACK_LEVEL)))


SLIDE_SUFFIXES = (".svs", ".ndpi", ".scn", ".bif")


def is_whole_slide(path: str | Path) -> bool:
    """Whether ``path`` is a whole-slide image (a scanner format, or a tiled TIFF pyramid) rather
    than a single image tile, which the ordinary image reader takes."""
    path = Path(path)
    if path.suffix.lower() in SLIDE_SUFFIXES:
        return True
    if path.suffix.lower() not in (".tif", ".tiff") or not path.is_file():
        return False
    try:
        with tifffile.TiffFile(path) as tif:
            return bool(tif.series) and len(tif.series[0].levels) > 1 and tif.pages[0].is_tiled
    except (OSError, ValueError, tifffile.TiffFileError):
        return False


class WholeSlide:
    """An open pyramidal TIFF / SVS slide. Use as a context manager, or call :meth:`close`."""

    def __init__(self, path: str | Path, *, base_magnification: float | None = None,
                 base_mpp: float | None = None, cache_bytes: int = 32 * 2 ** 20):
        """Open ``path``; ``cache_bytes`` bounds the decoded TIFF tiles kept for reuse."""
        self.path = Path(path)
        self._cache_limit = cache_bytes
        try:
            self._tif = tifffile.TiffFile(self.path)
        except _TIFF_ERRORS as exc:
            raise DataError(self.path, f"unreadable slide (pyramidal TIFF / SVS expected): "
                                       f"{exc}") from exc
        try:
            self._pages = self._level_pages()
            base = self._pages[0]
            self.levels = [SlideLevel(i, page.imagelength, page.imagewidth,
                                      _downsample(base, page))
                           for i, page in enumerate(self._pages)]
            file_magnification, file_mpp = _stated_scale(base)
        except DataError:
            self.close()
            raise
        except _TIFF_ERRORS as exc:
            self.close()
            raise DataError(self.path, f"corrupt slide: {exc}") from exc
        self.base_magnification = base_magnification or file_magnification
        self.base_mpp = base_mpp or file_mpp
        if self.base_magnification is None and self.base_mpp is not None:
            self.base_magnification = 10.0 * _MPP_AT_10X / self.base_mpp
        if self.base_mpp is None and self.base_magnification is not None:
            self.base_mpp = 10.0 * _MPP_AT_10X / self.base_magnification
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._cache_bytes = 0

    def __enter__(self) -> WholeSlide:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._tif.close()

    # ----------------------------------------------------------------------- levels

    def _level_pages(self) -> list[tifffile.TiffPage]:
        if not self._tif.series:
            raise DataError(self.path, "the TIFF file holds no image")
        pages = [level.keyframe for level in self._tif.series[0].levels]
        for page in pages:
            if page.dtype != np.uint8 or page.samplesperpixel not in (1, 3, 4):
                raise DataError(self.path, f"level of {page.samplesperpixel} samples of "
                                           f"{page.dtype}; 8-bit gray, RGB or RGBA expected")
            if page.planarconfig != 1 or page.imagedepth != 1:
                raise DataError(self.path, "planar (separate-channel) or 3D TIFF levels are "
                                           "not supported")
            length, width = _segment_size(page)
            if length * width * page.samplesperpixel > _MAX_SEGMENT_BYTES:
                raise DataError(self.path, f"a {page.imagewidth} x {page.imagelength} level is "
                                           f"stored in {width} x {length} pieces, too large to "
                                           "stream; save the slide tiled (e.g. vips tiffsave "
                                           "--tile --pyramid)")
        return pages

    def level_for(self, magnification: float) -> tuple[SlideLevel, float]:
        """The level to read a ``magnification`` from, and the further downsample it needs (>= 1)."""
        if self.base_magnification is None:
            raise DataError(self.path, "the slide states neither its magnification nor its "
                                       "pixel size; pass base_magnification or base_mpp")
        if not (math.isfinite(magnification) and 0 < magnification <= self.base_magnification
                * (1 + _LEVEL_TOLERANCE)):
            raise DataError(self.path, f"magnification {magnification:g}x is not available; the "
                                       f"slide's base is {self.base_magnification:g}x")
        wanted = self.base_magnification / magnification
        usable = [lv for lv in self.levels if lv.downsample <= wanted * (1 + _LEVEL_TOLERANCE)]
        level = max(usable, key=lambda lv: lv.downsample)
        factor = wanted / level.downsample
        return level, 1.0 if abs(factor - 1) <= _LEVEL_TOLERANCE else factor

    # ----------------------------------------------------------------------- pixels

    def read_region(self, level: SlideLevel, x: int, y: int, width: int, height: int) -> np.ndarray:
        """(height, width, 3) uint8 RGB of ``level`` from level pixel (x, y); must lie inside it."""
        if not (0 <= x and 0 <= y and width > 0 and height > 0
                and x + width <= level.width and y + height <= level.height):
            raise ValueError(f"region ({x}, {y}, {width}, {height}) is outside level "
                             f"{level.index} ({level.width} x {level.height})")
        page = self._pages[level.index]
        seg_length, seg_width = _segment_size(page)
        across = math.ceil(page.imagewidth / seg_width)
        out = np.empty((height, width, page.samplesperpixel), dtype=np.uint8)
        for row in range(y // seg_length, (y + height - 1) // seg_length + 1):
            for col in range(x // seg_width, (x + width - 1) // seg_width + 1):
                segment = self._segment(level.index, page, row * across + col)
                top, left = row * seg_length, col * seg_width
                y0, y1 = max(y, top), min(y + height, top + seg_length, page.imagelength)
                x0, x1 = max(x, left), min(x + width, left + seg_width)
                out[y0 - y:y1 - y, x0 - x:x1 - x] = segment[y0 - top:y1 - top, x0 - left:x1 - left]
        return _as_rgb(out)

    def _segment(self, level_index: int, page: tifffile.TiffPage, index: int) -> np.ndarray:
        """Decoded TIFF tile or strip ``index`` of a level as (length, width, samples)."""
        key = (level_index, index)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        seg_length, seg_width = _segment_size(page)
        try:
            offset, count = page.dataoffsets[index], page.databytecounts[index]
            if count == 0:  # a sparse slide leaves background tiles out
                segment = np.full((seg_length, seg_width, page.samplesperpixel), 255, np.uint8)
            else:
                handle = self._tif.filehandle
                handle.seek(offset)
                # a corrupt byte count must not make read() allocate more than the file holds
                data = handle.read(max(0, min(count, handle.size - offset)))
                decoded, _, shape = page.decode(data, index, jpegtables=page.jpegtables)
                if decoded is None:
                    raise ValueError(f"segment {index} holds no data")
                segment = np.asarray(decoded).reshape(shape)[0]
        except _TIFF_ERRORS as exc:
            hint = "; JPEG / JPEG 2000 slides need the imagecodecs package" if page.compression \
                not in (1, 8, 32773, 50000) else ""
            raise DataError(self.path, f"cannot decode level {level_index}, segment {index}: "
                                       f"{exc}{hint}") from exc
        self._cache[key] = segment
        self._cache_bytes += segment.nbytes
        while self._cache_bytes > self._cache_limit and self._cache:
            _, dropped = self._cache.popitem(last=False)
            self._cache_bytes -= dropped.nbytes
        return segment

    # ----------------------------------------------------------------------- tiles

    def tiles(self, magnification: float, tile_size: int = 224, tissue_threshold: float = 0.5,
              min_saturation: float = 0.07) -> Iterator[Tile]:
        """The slide's tissue tiles at ``magnification``, row by row, one at a time."""
        if tile_size < 1:
            raise ValueError(f"tile_size must be positive, got {tile_size}")
        level, factor = self.level_for(magnification)
        side = max(1, round(tile_size * factor))  # level pixels behind one tile
        if side * side > _MAX_REGION_PIXELS:
            raise DataError(self.path, f"no pyramid level near {magnification:g}x: each "
                                       f"{tile_size}-pixel tile would decode {side} x {side} "
                                       "pixels")
        for y in range(0, level.height - side + 1, side):
            for x in range(0, level.width - side + 1, side):
                pixels = self.read_region(level, x, y, side, side)
                if side != tile_size:
                    pixels = np.asarray(Image.fromarray(pixels).resize(
                        (tile_size, tile_size), Image.Resampling.BOX))
                fraction = tissue_fraction(pixels, min_saturation)
                if fraction >= tissue_threshold:
                    yield Tile(str(self.path), pixels, round(x * level.downsample),
                               round(y * level.downsample), magnification, fraction)


def _segment_size(page: tifffile.TiffPage) -> tuple[int, int]:
    """(length, width) of a level's TIFF tiles, or of its strips (full width)."""
    if page.is_tiled:
        return page.tilelength, page.tilewidth
    return min(page.rowsperstrip or page.imagelength, page.imagelength), page.imagewidth


def _downsample(base: tifffile.TiffPage, page: tifffile.TiffPage) -> float:
    return (base.imagewidth / page.imagewidth + base.imagelength / page.imagelength) / 2


def _as_rgb(pixels: np.ndarray) -> np.ndarray:
    if pixels.shape[2] == 1:
        return np.repeat(pixels, 3, axis=2)
    return pixels[:, :, :3]  # drop alpha


def _stated_scale(page: tifffile.TiffPage) -> tuple[float | None, float | None]:
    """(magnification, um per pixel) the base level states, each None when absent."""
    description = page.description or ""
    magnification = _description_number(description, "AppMag")
    mpp = _description_number(description, "MPP")
    if mpp is None and page.resolutionunit in (2, 3):  # inch, centimetre
        x_resolution = page.get_resolution()[0]
        if x_resolution > 0:
            mpp = (25_400.0 if page.resolutionunit == 2 else 10_000.0) / x_resolution
    if mpp is not None and not _PLAUSIBLE_MPP[0] <= mpp <= _PLAUSIBLE_MPP[1]:
        mpp = None
    return magnification, mpp


def _description_number(description: str, key: str) -> float | None:
    """A number from an Aperio description ("...|AppMag = 20|MPP = 0.4990")."""
    match = re.search(rf"\|\s*{key}\s*=\s*([0-9.]+)", description)
    if not match:
        return None
    try:
        value = float(match.group(1))
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None


# --------------------------------------------------------------------------- slide embedding

@dataclass(frozen=True)
class SlideTileEmbeddings:
    """The embeddings of a slide's tissue tiles, row-aligned with their positions and tissue."""

    embeddings: torch.Tensor       # (n_tiles, dim)
    positions: list[tuple[int, int]]  # (x, y) in base-level pixels
    tissue: torch.Tensor           # (n_tiles,) tissue fractions


def embed_slide(slide: WholeSlide, transform: Callable[[Study], torch.Tensor],
                encode: Callable[[torch.Tensor], torch.Tensor], *, magnification: float,
                tile_size: int = 224, tissue_threshold: float = 0.5,
                batch_size: int = 32) -> SlideTileEmbeddings:
    """Encode every tissue tile of ``slide`` in batches of ``batch_size``.

    ``transform`` is the pathology preprocessing (a tile's :class:`Study` -> tensor) and
    ``encode`` the image encoder (a batch -> embeddings). Memory holds one batch of tiles.
    """
    batches, positions, tissue, pending = [], [], [], []

    def flush() -> None:
        batch = torch.stack([transform(tile.study()) for tile in pending])
        with torch.no_grad():
            batches.append(encode(batch))
        pending.clear()

    for tile in slide.tiles(magnification, tile_size, tissue_threshold):
        pending.append(tile)
        positions.append((tile.x, tile.y))
        tissue.append(tile.tissue_fraction)
        if len(pending) == batch_size:
            flush()
    if pending:
        flush()
    if not batches:
        raise DataError(slide.path, f"no tile at {magnification:g}x has a tissue fraction of "
                                    f"{tissue_threshold} or more")
    return SlideTileEmbeddings(torch.cat(batches), positions, torch.tensor(tissue))


def pool_tile_embeddings(emb: torch.Tensor, how: Literal["mean", "top"] = "mean", k: int = 8,
                         scores: torch.Tensor | None = None) -> torch.Tensor:
    """One unit-norm slide embedding from its (n_tiles, dim) tile embeddings.

    ``how="mean"`` averages all tiles; ``how="top"`` averages the ``k`` tiles with the highest
    ``scores`` (one per tile: e.g. the tissue fraction, or each tile's similarity to a text
    prompt), so a small lesion is not washed out by a large benign slide.
    """
    if emb.ndim != 2 or emb.shape[0] == 0:
        raise ValueError(f"expected (n_tiles, dim) embeddings with n_tiles >= 1, got {tuple(emb.shape)}")
    if how == "mean":
        pooled = emb.mean(dim=0)
    elif how == "top":
        if scores is None or scores.shape != (emb.shape[0],):
            raise ValueError("how='top' needs one score per tile (scores of shape (n_tiles,))")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        top = torch.topk(scores, min(k, emb.shape[0])).indices
        pooled = emb[top].mean(dim=0)
    else:
        raise ValueError(f"unknown pooling '{how}'; use 'mean' or 'top'")
    return F.normalize(pooled, dim=0)

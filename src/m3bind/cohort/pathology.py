"""Synthetic H&E histopathology tiles and pathology reports.

A tile is built as two stain concentration maps, hematoxylin (nuclei, purple-blue) and eosin
(cytoplasm, collagen, pink), laid out by a small tissue model: fibrous stroma, regular glands
lined by epithelium with basal nuclei, and the regions of the findings (malignant glands,
squamous nests with keratin pearls, lymphocytes, necrotic debris, dense collagen). The
concentrations become colour through the Beer-Lambert law with per-slide stain vectors, so
stain strength and hue vary the way they do between labs; focus blur and sensor noise follow.

Anatomy (stroma, normal glands) comes from its own random stream, so the same seed gives the
same tissue whatever findings are added; the extents a report quotes come from the
seed-derived layout stream of :mod:`render_support`, so image and report agree.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from m3bind.cohort.language import pick, severity_band
from m3bind.cohort.render_support import (checked_findings, independent_streams, layout_rng,
                                          pixel_grid, smooth_noise)

FINDINGS: tuple[str, ...] = ("adenocarcinoma", "squamous cell carcinoma", "inflammation",
                             "necrosis", "fibrosis")
NATIVE_FORMAT = "jpeg"

SIZE = 224                 # tiles are SIZE x SIZE x 3 (RGB)
_LAYOUT_STREAM = 5         # this module's stream number for render_support.layout_rng

# Optical-density directions of the two stains (the reference H&E vectors of Macenko et al.,
# 2009); each slide perturbs them a little.
_HEMATOXYLIN_OD = (0.5626, 0.7201, 0.4062)
_EOSIN_OD = (0.2159, 0.8012, 0.5581)

# Which findings replace tissue in a region of the tile, and how large that region is:
# extent = base + slope * severity (fraction of the tile).
_REGION_EXTENT = {"adenocarcinoma": (0.3, 0.55), "squamous cell carcinoma": (0.3, 0.55),
                  "necrosis": (0.1, 0.5), "fibrosis": (0.25, 0.55)}


@dataclass(frozen=True)
class _Layout:
    """What both the tile and its report must agree on: each regional finding's extent."""
    extents: tuple[tuple[str, float], ...]

    def extent(self, finding: str) -> float:
        return dict(self.extents)[finding]


def _draw_layout(findings: Mapping[str, float], rng: np.random.Generator) -> _Layout:
    extents = []
    for name, (base, slope) in _REGION_EXTENT.items():
        jitter = rng.uniform(-0.05, 0.05)   # drawn for every name so findings do not interact
        if name in findings:
            extent = np.clip(base + slope * findings[name] + jitter, 0.05, 0.9)
            extents.append((name, float(extent)))
    return _Layout(extents=tuple(extents))


@dataclass
class _Tissue:
    """Stain concentration maps under construction plus the nuclei still to be drawn."""
    eosin: np.ndarray            # (SIZE, SIZE) eosin concentration
    hematoxylin: np.ndarray      # (SIZE, SIZE) diffuse hematoxylin (nuclei are added later)
    lumen: np.ndarray            # (SIZE, SIZE) bool, empty gland lumens and cleared space
    nuclei: list[np.ndarray]     # arrays of rows (y, x, r_along, r_across, angle, darkness)


# ----------------------------------------------------------------------------- building blocks

def _region(rng: np.random.Generator, fraction: float) -> np.ndarray:
    """A soft mask in [0, 1] of one or a few blobs covering about ``fraction`` of the tile.

    The random field is drawn even for ``fraction == 0`` (an empty mask) so that the stream
    stays aligned whichever findings are present.
    """
    field = smooth_noise(rng, SIZE, 4)
    if fraction <= 0.0:
        return np.zeros((SIZE, SIZE), dtype=np.float32)
    threshold = np.quantile(field, 1.0 - fraction)
    return np.clip((field - threshold) / 0.25 + 0.5, 0.0, 1.0)


def _fibres(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, angle: float,
            wavelength: float, sharpness: float) -> np.ndarray:
    """Wavy parallel collagen fibres in [0, 1]: a warped stripe pattern running at ``angle``."""
    warp = 6.0 * smooth_noise(rng, SIZE, 8)
    # Stripes run along ``angle``: the phase advances across them (perpendicular direction).
    phase = 2 * np.pi * (-xx * np.sin(angle) + yy * np.cos(angle)) / wavelength + warp
    return (0.5 + 0.5 * np.cos(phase)) ** sharpness


def _splat_nuclei(rows: np.ndarray) -> np.ndarray:
    """Hematoxylin map of soft-edged elliptical nuclei, all drawn in one vectorised pass.

    ``rows`` are (y, x, r_along, r_across, angle, darkness); overlapping nuclei add up.
    """
    if not len(rows):
        return np.zeros((SIZE, SIZE), dtype=np.float32)
    y, x, r_along, r_across, angle, darkness = (rows[:, i, None, None] for i in range(6))
    reach = int(np.ceil(rows[:, 2:4].max())) + 1
    offsets = np.arange(-reach, reach + 1)
    py = np.floor(y).astype(int) + offsets[None, :, None]
    px = np.floor(x).astype(int) + offsets[None, None, :]
    dy, dx = py - y, px - x
    along = dx * np.cos(angle) + dy * np.sin(angle)
    across = -dx * np.sin(angle) + dy * np.cos(angle)
    rho = np.sqrt((along / r_along) ** 2 + (across / r_across) ** 2)
    cover = np.clip((1.0 - rho) * np.minimum(r_along, r_across) / 0.8 + 0.5, 0.0, 1.0) * darkness
    py, px = np.broadcast_to(py, cover.shape), np.broadcast_to(px, cover.shape)
    valid = (py >= 0) & (py < SIZE) & (px >= 0) & (px < SIZE) & (cover > 0)
    flat = np.bincount(py[valid] * SIZE + px[valid], weights=cover[valid], minlength=SIZE * SIZE)
    return flat.reshape(SIZE, SIZE).astype(np.float32)


def _nucleus_rows(points: np.ndarray, r_along: np.ndarray | float, r_across: np.ndarray | float,
                  angle: np.ndarray | float, darkness: np.ndarray | float) -> np.ndarray:
    n = len(points)
    columns = [np.broadcast_to(np.asarray(v, dtype=float), (n,)) for v in
               (r_along, r_across, angle, darkness)]
    return np.column_stack([points[:, 0], points[:, 1], *columns]) if n else np.zeros((0, 6))


def _uniform_points(rng: np.random.Generator, count: int) -> np.ndarray:
    return rng.uniform(0.0, SIZE, (count, 2))


def _on(rows: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The rows whose first two columns (y, x) lie inside the tile on True pixels of ``mask``.

    Callers draw every attribute for all candidates first and filter afterwards, so the
    number of random draws never depends on the mask (a finding changing the mask must not
    shift the stream for the rest of the tissue).
    """
    inside = np.all((rows[:, :2] >= 0.0) & (rows[:, :2] < SIZE), axis=1)
    rows = rows[inside]
    return rows[mask[rows[:, 0].astype(int), rows[:, 1].astype(int)]]


def _place_glands(rng: np.random.Generator, allowed: np.ndarray, radius: tuple[float, float],
                  gap: float, attempts: int) -> list[tuple[float, float, float]]:
    """Non-overlapping gland centres and radii (y, x, r) on ``allowed`` pixels (dart throwing)."""
    glands: list[tuple[float, float, float]] = []
    for y, x, r in zip(rng.uniform(0, SIZE, attempts), rng.uniform(0, SIZE, attempts),
                       rng.uniform(*radius, attempts)):
        if not allowed[int(y), int(x)]:
            continue
        if all(np.hypot(y - gy, x - gx) > r + gr + gap for gy, gx, gr in glands):
            glands.append((y, x, r))
    return glands


def _paint_gland(tissue: _Tissue, gland: tuple[float, float, float], *, epithelium: float,
                 irregularity: float, nucleus_size: tuple[float, float], spacing: float,
                 stratified: bool, solid: bool, darkness: float, rng: np.random.Generator) -> None:
    """One gland: a lumen ringed by pink epithelium whose nuclei sit near the basement membrane.

    Malignant glands get an irregular outline, stratified and larger nuclei, or no lumen.
    """
    cy, cx, radius = gland
    harmonics = np.arange(2, 6)
    amplitude = irregularity * rng.uniform(0.3, 1.0, len(harmonics))
    phases = rng.uniform(0, 2 * np.pi, len(harmonics))

    def outline(theta: np.ndarray) -> np.ndarray:
        wobble = (amplitude * np.cos(np.multiply.outer(theta, harmonics) + phases)).sum(axis=-1)
        return radius * (1.0 + wobble)

    reach = int(radius * (1.0 + amplitude.sum())) + 2
    y0, y1 = max(int(cy) - reach, 0), min(int(cy) + reach + 1, SIZE)
    x0, x1 = max(int(cx) - reach, 0), min(int(cx) + reach + 1, SIZE)
    wy, wx = np.mgrid[y0:y1, x0:x1]
    r = np.hypot(wy - cy, wx - cx)
    boundary = outline(np.arctan2(wy - cy, wx - cx))
    inner = boundary - epithelium
    gland_px = r < boundary
    lumen_px = np.zeros_like(gland_px) if solid else r < inner
    epithelium_px = gland_px & ~lumen_px
    window = (slice(y0, y1), slice(x0, x1))
    tissue.eosin[window][epithelium_px] = rng.uniform(0.5, 0.65)
    tissue.hematoxylin[window][epithelium_px] += 0.12
    tissue.eosin[window][lumen_px] = 0.03
    tissue.hematoxylin[window][gland_px & lumen_px] = 0.0
    tissue.lumen[window] |= lumen_px

    count = max(int(2 * np.pi * radius / spacing), 4)
    theta = np.sort(rng.uniform(0, 2 * np.pi, count))
    depth = 2.5 + (rng.uniform(0.0, max(epithelium - 4.0, 0.0), count) if stratified else 0.0)
    distance = outline(theta) - depth
    if solid:   # solid nests fill their centre with nuclei as well
        extra = int(np.pi * radius ** 2 / spacing ** 2 / 2)
        theta = np.concatenate([theta, rng.uniform(0, 2 * np.pi, extra)])
        distance = np.concatenate([distance, radius * np.sqrt(rng.uniform(0, 0.7, extra))])
    points = np.column_stack([cy + distance * np.sin(theta), cx + distance * np.cos(theta)])
    n = len(points)
    pleomorphism = rng.uniform(0.8, 1.25, n) if stratified else rng.uniform(0.9, 1.1, n)
    # Epithelial nuclei are elongated perpendicular to the basement membrane (radially).
    tissue.nuclei.append(_nucleus_rows(points, nucleus_size[0] * pleomorphism,
                                       nucleus_size[1] * pleomorphism, theta,
                                       darkness * rng.uniform(0.9, 1.1, n)))


# ----------------------------------------------------------------------------- findings

def _add_adenocarcinoma(tissue: _Tissue, region: np.ndarray, severity: float, scale: float,
                        rng: np.random.Generator) -> None:
    """Crowded, irregular, back-to-back malignant glands; atypia grows with severity."""
    glands = _place_glands(rng, region > 0.5, (scale * 10.0, scale * (20.0 - 5.0 * severity)),
                           gap=1.0, attempts=220)
    for gland in glands:
        _paint_gland(tissue, gland, epithelium=scale * rng.uniform(6.0, 9.0),
                     irregularity=0.08 + 0.15 * severity,
                     nucleus_size=(scale * (2.8 + 1.4 * severity), scale * (2.0 + 0.9 * severity)),
                     spacing=scale * 5.0, stratified=True, solid=rng.random() < 0.4 * severity,
                     darkness=1.9 + 0.5 * severity, rng=rng)


def _add_squamous_carcinoma(tissue: _Tissue, region: np.ndarray, severity: float, scale: float,
                            rng: np.random.Generator) -> None:
    """Nests of polygonal cells with pink cytoplasm, large nuclei and keratin pearls."""
    # Thin bands of stroma separate the nests.
    nests = (region > 0.5) & (smooth_noise(rng, SIZE, 10) > -0.6)
    spacing = scale * rng.uniform(13.0, 16.0)
    grid = np.arange(spacing / 2, SIZE, spacing)
    seeds = np.stack(np.meshgrid(grid, grid, indexing="ij"), axis=-1).reshape(-1, 2)
    seeds = _on(seeds + rng.uniform(-0.3, 0.3, seeds.shape) * spacing, nests)
    if not len(seeds):
        return
    # Each pixel belongs to its nearest seed: a Voronoi tiling into cells, with borders
    # where neighbouring pixels belong to different cells.
    seed_map = np.zeros((SIZE, SIZE), dtype=np.int32)
    iy, ix = np.clip(seeds.astype(int), 0, SIZE - 1).T
    seed_map[iy, ix] = np.arange(1, len(seeds) + 1)
    nearest = ndimage.distance_transform_edt(seed_map == 0, return_distances=False,
                                             return_indices=True)
    cell = seed_map[nearest[0], nearest[1]]
    border = np.zeros_like(nests)
    border[:-1] |= cell[:-1] != cell[1:]
    border[:, :-1] |= cell[:, :-1] != cell[:, 1:]
    cytoplasm = rng.uniform(0.7, 0.85, len(seeds) + 1)[cell]
    tissue.eosin[nests] = np.where(border, 0.45, cytoplasm)[nests]
    tissue.hematoxylin[nests] = 0.05
    tissue.lumen[nests] = False

    # Keratin pearls: concentric eosinophilic lamellae without nuclei.
    yy, xx = pixel_grid(SIZE)
    keep = np.ones(len(seeds), dtype=bool)
    for centre in seeds[rng.permutation(len(seeds))[:1 + round(3 * severity)]]:
        radius = scale * rng.uniform(9.0, 16.0)
        rho = np.hypot(yy - centre[0], xx - centre[1])
        pearl = (rho < radius) & nests
        tissue.eosin[pearl] = (1.2 + 0.4 * np.cos(2 * np.pi * rho / 3.5))[pearl]
        keep &= np.hypot(seeds[:, 0] - centre[0], seeds[:, 1] - centre[1]) > radius
    seeds = seeds[keep]
    n = len(seeds)
    size = scale * (2.6 + 1.4 * severity) * rng.uniform(0.8, 1.35, n)
    tissue.nuclei.append(_nucleus_rows(seeds, size * rng.uniform(1.0, 1.3, n), size,
                                       rng.uniform(0, np.pi, n),
                                       (1.9 + 0.4 * severity) * rng.uniform(0.9, 1.1, n)))


def _add_lymphocytes(tissue: _Tissue, count: int, scale: float, rng: np.random.Generator) -> None:
    """Small round, very dark nuclei: half scattered, half in a few aggregates."""
    scattered = _uniform_points(rng, count - count // 2)
    centres = _uniform_points(rng, int(rng.integers(1, 4)))
    clustered = centres[rng.integers(len(centres), size=count // 2)] + \
        rng.normal(0.0, scale * rng.uniform(10.0, 20.0), (count // 2, 2))
    points = np.concatenate([scattered, clustered])
    n = len(points)
    radius = scale * rng.uniform(2.0, 2.7, n)
    rows = _nucleus_rows(points, radius * rng.uniform(1.0, 1.15, n), radius,
                         rng.uniform(0, np.pi, n), rng.uniform(2.4, 2.8, n))
    tissue.nuclei.append(_on(rows, ~tissue.lumen))


def _add_fibroblasts(tissue: _Tissue, mask: np.ndarray, count: int, angle: float, scale: float,
                     rng: np.random.Generator) -> None:
    """Thin spindle-shaped nuclei lying along the collagen fibres."""
    rows = _nucleus_rows(_uniform_points(rng, count), scale * rng.uniform(4.0, 6.0, count),
                         scale * rng.uniform(1.0, 1.5, count),
                         angle + rng.normal(0.0, 0.25, count), rng.uniform(1.6, 2.0, count))
    tissue.nuclei.append(_on(rows, mask & ~tissue.lumen))


def _stroma(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray,
            scale: float) -> tuple[_Tissue, float]:
    """Loose fibrous stroma filling the tile, and the direction its fibres run in."""
    fibre_angle = rng.uniform(0.0, np.pi)
    patchiness = np.clip(0.6 + 0.35 * smooth_noise(rng, SIZE, 12), 0.1, 1.0)  # fibre density
    fibres = _fibres(rng, yy, xx, fibre_angle, scale * 6.0, 2.0)
    eosin = rng.uniform(0.35, 0.5) * (0.55 + 0.45 * fibres * patchiness)
    tissue = _Tissue(eosin=eosin.astype(np.float32),
                     hematoxylin=np.full((SIZE, SIZE), 0.05, dtype=np.float32),
                     lumen=np.zeros((SIZE, SIZE), dtype=bool), nuclei=[])
    return tissue, fibre_angle


def _add_normal_glands(tissue: _Tissue, allowed: np.ndarray, scale: float,
                       rng: np.random.Generator) -> None:
    """Regular round glands with a single layer of basal nuclei, where ``allowed``."""
    glands = _place_glands(rng, np.ones((SIZE, SIZE), dtype=bool), (scale * 17.0, scale * 27.0),
                           gap=scale * 8.0, attempts=40)
    # One stream per gland: skipping a gland (replaced by a finding) leaves the rest unchanged.
    for gland, gland_rng in zip(glands, independent_streams(rng, len(glands))):
        if allowed[int(gland[0]), int(gland[1])]:
            _paint_gland(tissue, gland, epithelium=scale * gland_rng.uniform(9.0, 12.0),
                         irregularity=0.04, nucleus_size=(scale * 2.8, scale * 1.7),
                         spacing=scale * 5.0, stratified=False, solid=False, darkness=1.6,
                         rng=gland_rng)


# ----------------------------------------------------------------------------- render

def render(findings: Mapping[str, float], rng: np.random.Generator) -> np.ndarray:
    """A (224, 224, 3) uint8 H&E-stained tile showing ``findings``.

    ``findings`` maps labels of :data:`FINDINGS` to severities in (0, 1]; ``{}`` is normal.
    """
    findings = checked_findings(findings, FINDINGS, "pathology")
    layout = _draw_layout(findings, layout_rng(rng, _LAYOUT_STREAM))
    anatomy_rng, region_rng, lesion_rng, slide_rng = independent_streams(rng, 4)
    yy, xx = pixel_grid(SIZE)
    scale = anatomy_rng.uniform(0.9, 1.1)          # magnification varies a little per scanner

    # Regions replaced by the findings (drawn whether or not present, to keep streams aligned).
    regions = {name: _region(region_rng, layout.extent(name) if name in findings else 0.0)
               for name in _REGION_EXTENT}
    fibrosis = regions["fibrosis"]
    malignant = np.maximum(regions["adenocarcinoma"], regions["squamous cell carcinoma"])

    tissue, fibre_angle = _stroma(anatomy_rng, yy, xx, scale)
    scar_angle = lesion_rng.uniform(0.0, np.pi)    # drawn even without fibrosis (stream order)
    if "fibrosis" in findings:
        # Dense collagen replaces the loose stroma first, so glands are painted over it.
        scar = _fibres(lesion_rng, yy, xx, scar_angle, scale * 4.5, 1.0)
        dense = lesion_rng.uniform(0.75, 0.95) * (0.7 + 0.3 * scar)
        tissue.eosin = (tissue.eosin * (1.0 - fibrosis) + dense * fibrosis).astype(np.float32)
    _add_normal_glands(tissue, (malignant < 0.5) & (fibrosis < 0.5), scale, anatomy_rng)
    stroma_px = ~tissue.lumen & (tissue.eosin < 0.5)
    _add_fibroblasts(tissue, stroma_px & (fibrosis < 0.5), 60, fibre_angle, scale, anatomy_rng)
    _add_lymphocytes(tissue, int(anatomy_rng.integers(10, 25)), scale, anatomy_rng)

    if "fibrosis" in findings:
        _add_fibroblasts(tissue, fibrosis > 0.5, 40, scar_angle, scale, lesion_rng)
    if "adenocarcinoma" in findings:
        _add_adenocarcinoma(tissue, regions["adenocarcinoma"], findings["adenocarcinoma"], scale,
                            lesion_rng)
    if "squamous cell carcinoma" in findings:
        _add_squamous_carcinoma(tissue, regions["squamous cell carcinoma"],
                                findings["squamous cell carcinoma"], scale, lesion_rng)
    if "inflammation" in findings:
        _add_lymphocytes(tissue, 40 + round(500 * findings["inflammation"]), scale, lesion_rng)

    nuclei = _splat_nuclei(np.concatenate(tissue.nuclei))
    # Chromatin is granular, not flat.
    nuclei *= slide_rng.uniform(0.8, 1.2, nuclei.shape).astype(np.float32)
    hematoxylin = tissue.hematoxylin + nuclei
    eosin = tissue.eosin
    if "necrosis" in findings:
        hematoxylin, eosin = _necrosis(hematoxylin, eosin, regions["necrosis"], scale, lesion_rng)
    return _stain(np.minimum(hematoxylin, 3.0), eosin, slide_rng)


def _necrosis(hematoxylin: np.ndarray, eosin: np.ndarray, region: np.ndarray, scale: float,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Replace the region by pale, structureless eosinophilic debris with nuclear dust."""
    debris = 0.36 + 0.07 * smooth_noise(rng, SIZE, 40)
    eosin = eosin * (1.0 - region) + debris * region
    count = int(region.sum() / (80.0 * scale ** 2))     # one fragment per ~80 square pixels
    radius = scale * rng.uniform(0.8, 1.3, count)
    rows = _nucleus_rows(_uniform_points(rng, count), radius, radius, 0.0,
                         rng.uniform(2.0, 2.6, count))
    dust = _splat_nuclei(_on(rows, region > 0.5))
    # Ghosts of the nuclei that were there stay faintly visible.
    hematoxylin = hematoxylin * (1.0 - 0.85 * region) + dust
    return hematoxylin, eosin.astype(np.float32)


def _stain(hematoxylin: np.ndarray, eosin: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Concentrations to RGB with the Beer-Lambert law, slide-specific stains, blur and noise."""
    vectors = []
    for reference in (_HEMATOXYLIN_OD, _EOSIN_OD):
        vector = np.asarray(reference) + rng.normal(0.0, 0.03, 3)
        vectors.append(vector / np.linalg.norm(vector))
    strength = rng.uniform(0.8, 1.25), rng.uniform(0.75, 1.25)
    blur = rng.uniform(0.4, 1.0)                    # focus varies across a scanned slide
    h = ndimage.gaussian_filter(hematoxylin, blur) * strength[0]
    e = ndimage.gaussian_filter(eosin, blur) * strength[1]
    background = rng.uniform(0.02, 0.06)            # glass and mounting medium absorb a little
    optical_density = (h[..., None] * vectors[0].astype(np.float32)
                       + e[..., None] * vectors[1].astype(np.float32) + np.float32(background))
    rgb = 255.0 * np.exp(-optical_density)
    rgb += rng.uniform(1.0, 3.0) * rng.standard_normal(rgb.shape, dtype=np.float32)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- report

_NORMAL_TEXTS = (
    "Benign tissue with no significant histopathological abnormality.",
    "Diagnosis: unremarkable glandular mucosa. Negative for dysplasia and malignancy.",
    "Normal histology; no evidence of malignancy.",
    "Microscopy: regular glands in loose fibrous stroma without atypia. Diagnosis: benign, no "
    "tumour seen.",
    "No pathological changes identified.",
    "Within normal limits. Negative for carcinoma.",
    "Diagnosis: benign glandular tissue, no inflammation, necrosis or neoplasia.",
)

_BANDS = ("mild", "moderate", "severe")      # the order of the tuples below
_GRADES = ("well differentiated", "moderately differentiated", "poorly differentiated")

# Per finding, alternatives for each severity band (mild, moderate, severe, in that order; see
# language.severity_band); {extent} is filled in.
_FINDING_TEXTS: dict[str, tuple[tuple[str, ...], ...]] = {
    "adenocarcinoma": tuple(
        (f"invasive adenocarcinoma, {grade}, involving about {{extent}}% of the tissue",
         f"{grade} adenocarcinoma with irregular, crowded glands",
         f"malignant gland-forming neoplasm ({grade}), consistent with adenocarcinoma",
         f"carcinoma with glandular differentiation, {grade}")
        for grade in _GRADES),
    "squamous cell carcinoma": tuple(
        (f"invasive squamous cell carcinoma, {grade}, keratinizing",
         f"keratinizing squamous carcinoma, {grade}, with keratin pearls",
         f"invasive carcinoma with squamous differentiation ({grade}) involving about "
         f"{{extent}}% of the sample",
         f"squamous cell carcinoma, {grade}")
        for grade in _GRADES),
    "inflammation": (
        ("mild chronic inflammation", "scattered lymphocytes in the stroma",
         "a sparse lymphocytic infiltrate (mild inflammation)"),
        ("moderate chronic inflammation", "moderate lymphocytic infiltrate",
         "chronic inflammatory cells in moderate numbers"),
        ("severe chronic inflammation", "dense lymphocytic infiltrate with lymphoid aggregates",
         "marked inflammation with sheets of lymphocytes"),
    ),
    "necrosis": (
        ("focal necrosis", "a small focus of necrotic debris",
         "focal coagulative necrosis (about {extent}% of the tissue)"),
        ("areas of necrosis, about {extent}% of the sample", "moderate necrosis",
         "necrotic debris occupying about {extent}% of the tissue"),
        ("extensive necrosis ({extent}% of the tissue)", "large areas of coagulative necrosis",
         "extensive necrotic eosinophilic debris"),
    ),
    "fibrosis": (
        ("mild stromal fibrosis", "mild fibrosis", "slightly increased collagen in the stroma"),
        ("moderate fibrosis", "moderate stromal fibrosis with dense collagen",
         "fibrotic stroma of moderate degree"),
        ("marked fibrosis", "extensive dense collagenous scarring",
         "severe stromal fibrosis replacing the glands"),
    ),
}

_NEGATIONS: dict[str, tuple[str, ...]] = {
    "inflammation": ("No significant inflammation.", "No inflammatory infiltrate.",
                     "Without evidence of inflammation."),
    "necrosis": ("No necrosis identified.", "Necrosis is absent.", "No tumour necrosis."),
    "fibrosis": ("No fibrosis.", "Stroma without fibrosis.", "No increase in collagen."),
    "adenocarcinoma": ("No glandular malignancy.", "No evidence of adenocarcinoma."),
    "squamous cell carcinoma": ("No squamous differentiation.",
                                "Without evidence of squamous cell carcinoma."),
}
_NO_MALIGNANCY = ("Negative for malignancy.", "No evidence of malignancy.", "No tumour seen.")



def write_report(findings: Mapping[str, float], rng: np.random.Generator) -> str:
    """A pathology report (diagnosis line style) for the tile ``render`` makes from the same seed.

    Carcinomas carry a differentiation grade that follows severity, other findings severity
    words, regional findings the extent the tile shows; some absent findings are negated.
    """
    findings = checked_findings(findings, FINDINGS, "pathology")
    layout = _draw_layout(findings, layout_rng(rng, _LAYOUT_STREAM))
    prefix = pick(rng, ("Diagnosis: ", "H&E section. Diagnosis: ", "Microscopic description: ",
                         "Final diagnosis: ", ""))
    if not findings:
        return pick(rng, _NORMAL_TEXTS)

    phrases = []
    for name in FINDINGS:
        if name in findings:
            extent = round(100 * layout.extent(name) / 5) * 5 if name in _REGION_EXTENT else 0
            options = _FINDING_TEXTS[name][_BANDS.index(severity_band(findings[name]))]
            phrases.append(pick(rng, options).format(extent=extent))
    text = prefix + "; ".join(phrases)
    text = text[0].upper() + text[1:] + "."
    absent = [name for name in FINDINGS if name not in findings]
    negations = [pick(rng, _NEGATIONS[str(name)])
                 for name in rng.permutation(absent)[:int(rng.integers(0, 3))]]
    if "adenocarcinoma" not in findings and "squamous cell carcinoma" not in findings \
            and rng.random() < 0.5:
        negations.append(pick(rng, _NO_MALIGNANCY))
    return " ".join([text, *negations])

"""Synthetic PA chest radiographs and their reports.

The image is built as an *attenuation map* (how much tissue each ray crosses): a body of soft
tissue, two air-filled lungs cut from it, a heart, the spine, ribs and clavicles, and vessel
markings radiating from the hila. Findings change that map where they sit; then exposure,
contrast, gamma and quantum noise turn it into 12-bit stored values (MONOCHROME2: dense is
bright). Display convention is the radiological one: the patient's right is on the image left.

All random numbers are drawn up front in a fixed order, whatever the findings are, so the same
generator state renders the same patient with and without a finding (a counterfactual pair the
tests use). Where findings sit (side, zone) comes from the generator's seed through
:func:`~m3bind.cohort.conditions.chest_layout`, shared with the report and with the CT.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from m3bind.cohort import language as lang
from m3bind.cohort.conditions import ChestLayout, chest_layout, nodule_diameter_mm
from m3bind.cohort.render_support import checked_findings

FINDINGS: tuple[str, ...] = ("cardiomegaly", "pleural effusion", "lung nodule", "consolidation", "pneumothorax")
NATIVE_FORMAT = "dicom"

SIZE = 256
PIXEL_SPACING_MM = 1.6          # 256 px cover a 41 cm detector
BITS_STORED = 12
MAX_STORED = 2 ** BITS_STORED - 1
NORMAL_CTR_RANGE = (0.40, 0.48)  # cardiothoracic ratio of a normal heart


def cardiomegaly_ctr(severity: float) -> float:
    """Cardiothoracic ratio of an enlarged heart: just above 0.5, growing with severity."""
    return round(0.52 + 0.16 * float(severity), 2)


@dataclass(frozen=True)
class _Patient:
    """Everything random about one radiograph, drawn before any finding is applied."""

    layout: ChestLayout
    scale: float            # body size
    shift: tuple[float, float]
    angle: float            # in-plane rotation (patient not perfectly straight), radians
    normal_ctr: float
    right_dome_lift: float  # the right hemidiaphragm sits higher than the left, by this much
    exposure: tuple[float, float, float]  # contrast, brightness, gamma
    noise_sigma: float
    marking_noise: np.ndarray       # (2, angles, radii) polar noise grids for vessel markings
    consolidation_noise: np.ndarray
    consolidation_offset: tuple[float, float]
    quantum_noise: np.ndarray


def _draw_patient(rng: np.random.Generator) -> _Patient:
    layout = chest_layout(rng)
    u = rng.random(12).tolist()  # Python floats keep the float32 images float32 (NEP 50)
    return _Patient(
        layout=layout,
        scale=0.88 + 0.16 * u[0],
        shift=(8.0 * (u[1] - 0.5), 10.0 * (u[2] - 0.5)),
        angle=math.radians(8.0 * (u[3] - 0.5)),
        normal_ctr=NORMAL_CTR_RANGE[0] + (NORMAL_CTR_RANGE[1] - NORMAL_CTR_RANGE[0]) * u[4],
        right_dome_lift=4.0 + 6.0 * u[5],
        exposure=(0.9 + 0.25 * u[6], -0.04 + 0.08 * u[7], 0.85 + 0.35 * u[8]),
        noise_sigma=0.01 + 0.02 * u[9],
        marking_noise=rng.standard_normal((2, 40, 10)).astype(np.float32),
        consolidation_noise=rng.standard_normal((16, 16)).astype(np.float32),
        consolidation_offset=(float(u[10]), float(u[11])),
        quantum_noise=rng.standard_normal((SIZE, SIZE), dtype=np.float32),
    )


def _side_sign(side: str) -> float:
    # Patient's right is drawn on the image left (negative X).
    return -1.0 if side == "right" else 1.0


def _soft_inside(d2: np.ndarray, radius_px: float, edge_px: float = 1.5) -> np.ndarray:
    """1 inside an ellipse (normalised squared distance ``d2`` < 1), 0 outside, a ramp of ``edge_px``."""
    return np.clip((1.0 - np.sqrt(d2)) * (radius_px / edge_px) + 0.5, 0.0, 1.0)


def _dome(d2: np.ndarray) -> np.ndarray:
    """Thickness of an ellipsoid seen from the front: sqrt(1 - d^2) inside, 0 outside."""
    return np.sqrt(np.clip(1.0 - d2, 0.0, None))


class _Chest:
    """The geometry of one patient's chest in rotated, centred pixel coordinates (X right, Y down)."""

    def __init__(self, p: _Patient):
        s = p.scale
        rows, cols = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
        cx, cy = SIZE / 2 + p.shift[0], SIZE / 2 + 2 + p.shift[1]
        cos, sin = math.cos(p.angle), math.sin(p.angle)
        self.X = cos * (cols - cx) + sin * (rows - cy)
        self.Y = -sin * (cols - cx) + cos * (rows - cy)
        self.s = s
        self.T = 96.0 * s                 # inner half-width of the thorax
        self.lung_cy = 18.0 * s           # centre of the lung ellipses (the diaphragm cuts their bottom)
        self.lung_b = 98.0 * s            # lung half-height before the cut
        self.lung_lateral = 0.50 * self.T  # half-widths either side of the lung's centre line
        self.lung_medial = 0.36 * self.T
        self.dome_y = {"right": (58.0 - p.right_dome_lift) * s, "left": 58.0 * s}

    def lung_center_x(self, side: str) -> float:
        return _side_sign(side) * (self.T - self.lung_lateral)

    def lung_d2(self, side: str, shrink: float = 1.0) -> np.ndarray:
        """Normalised squared distance to a lung outline, optionally shrunk toward the hilum.

        The outline is two half-ellipses: wide toward the ribs, narrow toward the mediastinum,
        which gives the lung's straighter medial border.
        """
        sign = _side_sign(side)
        hilum_x, hilum_y = sign * 0.3 * self.T, self.lung_cy + 20.0 * self.s
        x0 = hilum_x + (self.lung_center_x(side) - hilum_x) * shrink
        y0 = hilum_y + (self.lung_cy - hilum_y) * shrink
        dx = self.X - x0
        half_width = np.where(dx * sign > 0, np.float32(self.lung_lateral * shrink), np.float32(self.lung_medial * shrink))
        return (dx / half_width) ** 2 + ((self.Y - y0) / (self.lung_b * shrink)) ** 2

    def below_diaphragm(self, side: str) -> np.ndarray:
        """How far (px) below the hemidiaphragm dome a point is (negative = above, in the lung)."""
        lateral = (self.X - self.lung_center_x(side) * 0.8) / self.lung_lateral
        return self.Y - (self.dome_y[side] + 22.0 * self.s * lateral ** 2)

    def lung_mask(self, side: str, shrink: float = 1.0) -> np.ndarray:
        inside = _soft_inside(self.lung_d2(side, shrink), self.lung_lateral * shrink)
        return inside * np.clip(0.5 - self.below_diaphragm(side) / 1.5, 0.0, 1.0)


def render(findings: Mapping[str, float], rng: np.random.Generator) -> np.ndarray:
    """A (256, 256) uint16 PA chest radiograph (12-bit stored values, MONOCHROME2)."""
    findings = checked_findings(findings, FINDINGS, "xray")
    p = _draw_patient(rng)
    chest = _Chest(p)
    X, Y, s = chest.X, chest.Y, chest.s

    # Soft tissue of the trunk: a boxy ellipse (shoulders at the top), thickest in the middle.
    body_w, body_h = chest.T + 20.0 * s, 150.0 * s
    qx, qy = (X / body_w) ** 2, ((Y - 40.0 * s) / body_h) ** 2
    body = (qx * qx + qy * qy) < 1.0
    attenuation = body * (0.45 + 0.55 * _dome(qx))

    ctr = cardiomegaly_ctr(findings["cardiomegaly"]) if "cardiomegaly" in findings else p.normal_ctr
    mediastinum = np.maximum(_heart(chest, ctr), _great_vessels(chest))

    lungs = {side: chest.lung_mask(side) * (1.0 - mediastinum) for side in ("right", "left")}
    for k, side in enumerate(("right", "left")):
        lung = lungs[side]
        air = 0.68 * lung * (0.45 + 0.55 * _dome(chest.lung_d2(side)))
        tissue = lung * _vessel_markings(chest, side, p.marking_noise[k])
        if "pneumothorax" in findings and p.layout.pneumothorax_side == side:
            air, tissue = _pneumothorax(chest, side, findings["pneumothorax"], air, tissue, lung)
        if "pleural effusion" in findings and side in p.layout.effusion_sides():
            fluid = _effusion(chest, side, findings["pleural effusion"], lung)
            air, tissue = air * (1.0 - fluid), tissue * (1.0 - fluid)
        attenuation += tissue - air
    attenuation -= 0.12 * _trachea(chest) + 0.12 * _gastric_bubble(chest)
    attenuation += _bones(chest, body)

    if "lung nodule" in findings:
        attenuation += _nodule(chest, p.layout, findings["lung nodule"])
    if "consolidation" in findings:
        attenuation += _consolidation(chest, p, findings["consolidation"]) * (lungs["right"] + lungs["left"])

    return _expose(attenuation, p)


def _heart(chest: _Chest, ctr: float) -> np.ndarray:
    """Soft mask of the heart: width ``ctr`` times the inner thoracic width, two thirds left of
    the midline, long axis tilted toward the apex (down and to the patient's left)."""
    width = ctr * 2.0 * chest.T
    center_x = (0.66 - 0.34) * width / 2.0
    half_w, half_h = width / 2.0, 0.36 * width
    center_y = chest.dome_y["left"] - 0.6 * half_h
    cos, sin = math.cos(math.radians(20.0)), math.sin(math.radians(20.0))
    dx, dy = chest.X - center_x, chest.Y - center_y
    u = cos * dx + sin * dy   # along the long axis, which points down toward the image right
    v = -sin * dx + cos * dy
    # The tilt makes the bounding width exceed 2*half_w; shrink the axis so the width stays exact.
    along = half_w / math.sqrt(cos ** 2 + (half_h / half_w) ** 2 * sin ** 2)
    return _soft_inside((u / along) ** 2 + (v / half_h) ** 2, half_w)


def _great_vessels(chest: _Chest) -> np.ndarray:
    """Upper mediastinum: a band along the midline with the aortic knob bulging to the left."""
    s = chest.s
    band = ((chest.X - 2.0 * s) / (0.16 * chest.T)) ** 2 + ((chest.Y + 30.0 * s) / (60.0 * s)) ** 2
    knob = ((chest.X - 0.2 * chest.T) ** 2 + (chest.Y + 42.0 * s) ** 2) / (11.0 * s) ** 2
    return np.maximum(_soft_inside(band, 0.16 * chest.T), _soft_inside(knob, 11.0 * s))


def _trachea(chest: _Chest) -> np.ndarray:
    """The air column of the trachea, down the upper mediastinum to the carina."""
    s = chest.s
    tube = np.clip(1.0 - (chest.X / (7.0 * s)) ** 2, 0.0, None)
    return tube * np.clip((-20.0 * s - chest.Y) / (4.0 * s), 0.0, 1.0)


def _gastric_bubble(chest: _Chest) -> np.ndarray:
    """Air in the stomach fundus, under the left hemidiaphragm."""
    s = chest.s
    d2 = ((chest.X - 0.42 * chest.T) / (15.0 * s)) ** 2 + ((chest.Y - chest.dome_y["left"] - 24.0 * s) / (8.0 * s)) ** 2
    return _dome(d2)


def _vessel_markings(chest: _Chest, side: str, noise: np.ndarray) -> np.ndarray:
    """Branching-looking vessel markings: noise laid out in polar coordinates around the hilum.

    Sampling finely in angle and coarsely in radius turns noise into streaks that radiate from
    the hilum, fading toward the periphery as real vessels do.
    """
    hx, hy = 0.28 * chest.T * _side_sign(side), chest.lung_cy + 2.0 * chest.s
    dx, dy = chest.X - hx, chest.Y - hy
    r = np.sqrt(dx * dx + dy * dy)
    angle_idx = (np.arctan2(dy, dx) + np.pi) * (noise.shape[0] / (2 * np.pi))
    radius_idx = np.minimum(r * (1.0 / (14.0 * chest.s)), noise.shape[1] - 1)
    streaks = ndimage.map_coordinates(noise, [angle_idx, radius_idx], order=1, mode="grid-wrap")
    fade = np.exp(r * (-1.0 / (80.0 * chest.s)))
    hilum = 0.2 * np.exp(-(r * (1.0 / (12.0 * chest.s))) ** 2)
    return (0.06 * np.maximum(streaks, 0.0) + 0.03) * (0.3 + fade) + hilum


def _effusion(chest: _Chest, side: str, severity: float, lung: np.ndarray) -> np.ndarray:
    """Share of the lung replaced by fluid: the dependent base, with a meniscus rising laterally."""
    sign = _side_sign(side)
    lateral = np.clip((chest.X * sign - 0.1 * chest.T) / (0.9 * chest.T), 0.0, 1.0)
    height = (0.12 + 0.42 * severity) * 2.0 * chest.lung_b
    base = chest.dome_y[side] + 22.0 * chest.s
    top = base - height * (0.75 + 0.25 * lateral ** 2)
    fluid = np.clip((chest.Y - top) / (7.0 * chest.s), 0.0, 1.0)  # the upper border is hazy
    return 0.95 * fluid * (lung > 0.01) * (chest.X * sign > 0)


def _nodule(chest: _Chest, layout: ChestLayout, severity: float) -> np.ndarray:
    """A round solid opacity of the reported diameter, placed in the reported lung zone."""
    radius = nodule_diameter_mm(severity) / PIXEL_SPACING_MM / 2.0
    x, y = _zone_point(chest, layout.nodule_side, layout.nodule_zone, layout.nodule_offset)
    d2 = ((chest.X - x) ** 2 + (chest.Y - y) ** 2) / radius ** 2
    return 0.32 * np.maximum(_dome(d2), 0.4 * _soft_inside(d2, radius, 1.0))


def _zone_point(chest: _Chest, side: str, zone: str, offset: tuple[float, float]) -> tuple[float, float]:
    """A point inside a lung zone; ``offset`` (each in [0, 1]) picks medial-lateral and top-bottom."""
    x = _side_sign(side) * chest.T * (0.45 + 0.35 * offset[0])
    if zone == "upper":
        y = chest.lung_cy + chest.s * (-66.0 + 28.0 * offset[1])
    else:
        y = chest.lung_cy + chest.s * (4.0 + 18.0 * offset[1])
    return x, y


def _consolidation(chest: _Chest, p: _Patient, severity: float) -> np.ndarray:
    """Patchy air-space opacity: a blob with a ragged, noisy edge; bigger and denser when severe."""
    layout = p.layout
    x, y = _zone_point(chest, layout.consolidation_side, layout.consolidation_zone, p.consolidation_offset)
    radius = (16.0 + 22.0 * severity) * chest.s
    envelope = np.exp(((chest.X - x) ** 2 + (chest.Y - y) ** 2) * (-0.5 / radius ** 2))
    patches = ndimage.zoom(p.consolidation_noise, SIZE / p.consolidation_noise.shape[0], order=1)
    density = np.clip(1.6 * envelope - 0.45 + 0.3 * patches, 0.0, 1.0)
    return (0.3 + 0.35 * severity) * density


def _pneumothorax(chest: _Chest, side: str, severity: float, air: np.ndarray, tissue: np.ndarray,
                  lung: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Collapse the lung toward its hilum: the rim left behind is air with no lung markings."""
    shrink = 1.0 - (0.12 + 0.33 * severity)
    collapsed = chest.lung_mask(side, shrink)
    rim = np.clip(lung - collapsed, 0.0, 1.0)
    edge = np.abs(np.sqrt(chest.lung_d2(side, shrink)) - 1.0) * (chest.lung_lateral * shrink)
    pleural_line = np.clip(1.0 - edge, 0.0, 1.0) * (rim > 0.0)
    air = air * (1.0 - rim) + rim * 0.8
    tissue = tissue * (1.0 - rim) + 0.1 * pleural_line
    return air, tissue


def _bones(chest: _Chest, body: np.ndarray) -> np.ndarray:
    """Spine, posterior ribs and clavicles, as added attenuation."""
    X, Y, s, T = chest.X, chest.Y, chest.s, chest.T
    ax = np.abs(X)
    bone = 0.14 * np.sqrt(np.clip(1.0 - ax / (12.0 * s), 0.0, None))  # vertebral column
    lateral_fade = np.clip((T + 6.0 * s - ax) / (4.0 * s), 0.0, 1.0) * (ax > 9.0 * s)
    curve = -0.12 * ax + (0.0058 / s) * ax * ax
    for k in range(10):
        # Posterior ribs leave the spine, rise a little, then curve down laterally.
        offset = Y - ((-108.0 + 16.5 * k) * s + curve)
        band = np.clip(1.0 - offset * offset * (1.0 / (3.4 * s) ** 2), 0.0, None)
        bone += 0.09 * band * lateral_fade
    for sign in (-1.0, 1.0):
        # Clavicles run from the sternum out and up to the shoulders.
        t = np.clip(sign * X / (0.95 * T), 0.0, 1.0)
        offset = Y - (-98.0 * s - 16.0 * s * t)
        band = np.clip(1.0 - offset * offset * (1.0 / (4.5 * s) ** 2), 0.0, None)
        bone += 0.2 * band * ((sign * X > 8.0 * s) & (sign * X < T))
    return bone * body


def _expose(attenuation: np.ndarray, p: _Patient) -> np.ndarray:
    """Detector response: contrast, brightness, gamma, quantum noise, 12-bit quantisation."""
    contrast, brightness, gamma = p.exposure
    signal = np.clip(contrast * (attenuation * (1.0 / 1.5)) + brightness, 0.0, 1.0) ** gamma
    # Quantum noise is strongest where many photons reach the detector (the dark regions).
    signal = signal + p.noise_sigma * (1.2 - signal) * p.quantum_noise
    return np.round(np.clip(signal, 0.0, 1.0) * MAX_STORED).astype(np.uint16)


# --- measurement ---------------------------------------------------------------------------

def measure_cardiothoracic_ratio(image: np.ndarray) -> float:
    """Cardiothoracic ratio measured from the pixels of a PA radiograph (NaN if lungs not found).

    As a radiologist does: transverse heart diameter (largest distance of the right heart border
    from the midline plus that of the left border) over the widest inner thoracic diameter. The
    lungs are the two largest dark regions not touching the image border (outside air does).
    Each heart border is the lung's medial edge, followed down from the lung's widest row until
    it jumps sideways (there the diaphragm, not the heart, bounds the lung).
    """
    # Blur along the columns more than along the rows: ribs cross the lungs horizontally.
    smooth = ndimage.gaussian_filter(image.astype(np.float32), (6.0, 2.0))
    h, w = smooth.shape
    dark = smooth < _otsu_threshold(smooth[int(0.2 * h):int(0.85 * h), int(0.1 * w):int(0.9 * w)])
    labels, count = ndimage.label(dark)
    border = set(np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])).tolist())
    sizes = ndimage.sum(dark, labels, index=np.arange(1, count + 1))
    lungs = [int(i) + 1 for i in np.argsort(sizes)[::-1] if int(i) + 1 not in border][:2]
    if len(lungs) < 2:
        return float("nan")
    masks = [labels == lab for lab in lungs]
    masks.sort(key=lambda m: np.nonzero(m)[1].mean())  # image-left lung (patient's right) first
    widths = [m.sum(axis=1) for m in masks]
    rows_left, rows_right = np.flatnonzero(widths[0]), np.flatnonzero(widths[1])
    outer = [np.array([np.flatnonzero(masks[0][r]).min() if widths[0][r] else w for r in range(h)]),
             np.array([np.flatnonzero(masks[1][r]).max() if widths[1][r] else -1 for r in range(h)])]
    thorax = max(outer[1][r] - outer[0][r] for r in range(h) if widths[0][r] and widths[1][r]) \
        if np.intersect1d(rows_left, rows_right).size else 0
    if thorax <= 0:
        return float("nan")
    widest = int(np.argmax(outer[1] - np.where(outer[0] == w, outer[1], outer[0])))
    midline = (outer[0][widest] + outer[1][widest]) / 2.0
    right_border = _heart_border_distance(masks[0], widths[0], midline, medial_is_max=True)
    left_border = _heart_border_distance(masks[1], widths[1], midline, medial_is_max=False)
    return float((right_border + left_border) / thorax)


def _heart_border_distance(mask: np.ndarray, widths: np.ndarray, midline: float, medial_is_max: bool) -> float:
    """Largest distance of a lung's medial edge from the midline, below the lung's widest row.

    Going down, the medial edge leaves the straight mediastinal border, bulges out along the
    heart and turns vertical at the heart's widest point; after that it either retreats (the
    heart rounds off above the diaphragm) or runs outward again along the diaphragm dome. Stop
    at the first of: a retreat of more than 2 px, an outward run of 2 px/row once the border
    has bulged and turned vertical, a sideways jump, or the end of the lung.
    """
    start = int(np.argmax(widths))
    first = None
    best, previous, turned_vertical = 0.0, None, False
    for row in range(start, mask.shape[0]):
        cols = np.flatnonzero(mask[row])
        if cols.size == 0:
            break
        distance = abs(midline - (cols.max() if medial_is_max else cols.min()))
        first = distance if first is None else first
        if previous is not None:
            step = distance - previous
            if abs(step) > 6 or distance < best - 2.0 or (turned_vertical and step >= 2.0):
                break
            turned_vertical = turned_vertical or (best - first >= 3.0 and step <= 0.5)
        best = max(best, distance)
        previous = distance
    return best


def _otsu_threshold(values: np.ndarray) -> float:
    hist, edges = np.histogram(values, bins=128)
    centers = (edges[:-1] + edges[1:]) / 2
    weight = np.cumsum(hist)
    mean = np.cumsum(hist * centers)
    total_w, total_m = weight[-1], mean[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (total_m * weight - mean * total_w) ** 2 / (weight * (total_w - weight))
    return float(centers[np.nanargmax(between[:-1])])


# --- report ----------------------------------------------------------------------------------

_STYLE = lang.ReportStyle(
    headers=(None, None, "EXAMINATION: Chest radiograph, PA view.", "Chest PA.",
             "TECHNIQUE: Single frontal view of the chest.", "COMPARISON: None."),
    absent_nouns={
        "cardiomegaly": lang.CARDIOMEGALY_NOUNS,
        "pleural effusion": ("pleural effusion", "effusion"),
        "lung nodule": ("lung nodule", "pulmonary nodule", "suspicious nodule"),
        "consolidation": ("focal consolidation", "consolidation", "airspace consolidation"),
        "pneumothorax": ("pneumothorax",),
    },
    normal_statements=(
        ("The lungs are clear.", "Lungs are well expanded and clear."),
        ("The cardiomediastinal silhouette is within normal limits.", "Heart size is normal.",
         "Normal heart size and mediastinal contours."),
        ("The visualised osseous structures are unremarkable.", "No acute osseous abnormality."),
    ),
    normal_impressions=(
        "No acute cardiopulmonary process.",
        "Normal chest radiograph.",
        "No acute intrathoracic abnormality.",
        "No radiographic evidence of acute disease.",
        "Unremarkable chest.",
    ),
)


def write_report(findings: Mapping[str, float], rng: np.random.Generator) -> str:
    """A radiology report ('Findings: ... Impression: ...') matching :func:`render` for the same seed."""
    return lang.chest_report(findings, FINDINGS, "xray", _describe, _STYLE, rng)


def _describe(label: str, severity: float, layout: ChestLayout, rng: np.random.Generator) -> tuple[str, str]:
    """(findings sentence, impression phrase) for one present finding, not yet capitalised."""
    degree, size = lang.degree_word(severity, rng), lang.size_word(severity, rng)
    if label == "cardiomegaly":
        adverb = lang.degree_adverb(severity, rng)
        ctr = cardiomegaly_ctr(severity)
        sentence = lang.pick(rng, (
            *lang.cardiomegaly_sentences(degree, adverb),
            f"The cardiac silhouette is {adverb} enlarged.",
            f"{degree} enlargement of the cardiac silhouette.",
            f"Cardiomegaly, cardiothoracic ratio approximately {ctr:.2f}.",
            f"{degree} cardiomegaly, which may reflect left ventricular hypertrophy.",
            f"{degree} cardiomegaly; correlate with ECG for left ventricular hypertrophy.",
        ))
        impression = lang.cardiomegaly_impression(degree, adverb, rng)
    elif label == "pleural effusion":
        side = layout.effusion_side
        noun = lang.effusion_noun(side)
        angle = "both costophrenic angles" if side == "bilateral" else f"the {side} costophrenic angle"
        sentence = lang.pick(rng, (
            f"{size} {side} {noun}.",
            lang.effusion_statement(size, side),
            f"{size} {side} {noun} with blunting of the costophrenic angle.",
            f"Blunting of {angle} with a meniscus, consistent with {size} {side} fluid.",
        ))
        impression = lang.effusion_impression(size, side)
    elif label == "lung nodule":
        diameter = nodule_diameter_mm(severity)
        where = lang.lobe_phrase(layout.nodule_side, layout.nodule_zone, rng, radiograph=True)
        sentence = lang.pick(rng, (
            f"A {diameter:.0f} mm nodule in the {where}.",
            f"{diameter:.0f} mm pulmonary nodule projecting over the {where}.",
            f"Rounded opacity measuring approximately {diameter:.0f} mm in the {where}, suspicious for a lung nodule.",
            f"{'Small' if diameter < 12 else 'Large' if diameter > 20 else 'Solitary'} nodular opacity in the {where}.",
        ))
        impression = lang.pick(rng, (f"{where} pulmonary nodule; CT recommended.", f"Lung nodule in the {where}."))
    elif label == "consolidation":
        where = lang.lobe_phrase(layout.consolidation_side, layout.consolidation_zone, rng, radiograph=True)
        texture = lang.pick(rng, {"mild": ("patchy", "subtle"), "moderate": ("focal", "confluent"),
                                  "severe": ("dense", "extensive")}[lang.severity_band(severity)])
        sentence = lang.pick(rng, (
            f"{texture} consolidation in the {where}.",
            f"{texture} airspace opacity in the {where}, concerning for pneumonia.",
            f"There is {texture} consolidation of the {where}.",
        ))
        impression = lang.pick(rng, (f"{where} consolidation, likely pneumonia.", f"{texture} {where} pneumonia."))
    elif label == "pneumothorax":
        side = layout.pneumothorax_side
        sentence = lang.pick(rng, (
            f"{size} {side} pneumothorax.",
            f"{size} {side} apical pneumothorax.",
            f"There is a {size} {side} pneumothorax with a visible visceral pleural line.",
            f"Visceral pleural line in the {side} hemithorax with absent lung markings peripherally, "
            f"a {size} collapse of the {side} lung.",
        ))
        impression = f"{size} {side} pneumothorax."
    else:
        raise KeyError(f"unknown X-ray finding '{label}'; known: {', '.join(FINDINGS)}")
    return sentence, impression

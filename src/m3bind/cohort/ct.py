"""Synthetic chest CT volumes (Hounsfield units) and their reports.

The volume is (z, y, x) = (40, 128, 128) voxels of (4.0, 2.5, 2.5) mm: 16 cm from the upper
abdomen (z = 0, inferior) to the upper chest (z = 39, superior). In each axial slice the image
row grows toward the patient's back and the column toward the patient's left (radiological
display). Organs are ellipses whose size changes with z; they are painted in anatomical order
(body wall, lungs, diaphragm, heart, vessels, airways, bones) with their typical HU, then
scanner noise and the reconstruction kernel's blur are added.

As for the X-ray, every random number is drawn up front in a fixed order, whatever the
findings, so one generator state renders the same patient with and without a finding, and
finding locations come from the seed (:func:`~m3bind.cohort.conditions.chest_layout`), so
a paired patient's CT and X-ray show an effusion or a nodule on the same side.
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

FINDINGS: tuple[str, ...] = ("cardiomegaly", "pleural effusion", "lung nodule", "emphysema", "pericardial effusion")
NATIVE_FORMAT = "nifti"

SHAPE = (40, 128, 128)           # (z, y, x)
SPACING_MM = (4.0, 2.5, 2.5)     # (z, y, x)
HU_MIN, HU_MAX = -1024, 3071     # the range a 12-bit CT stores

# Typical attenuation (HU) of what is painted.
HU = {
    "air": -1000.0, "fat": -95.0, "mediastinal fat": -75.0, "muscle": 45.0, "lung": -860.0,
    "emphysema": -985.0, "fluid": 12.0, "blood": 42.0, "liver": 58.0, "spleen": 48.0,
    "bone": 650.0, "marrow": 230.0, "disc": 85.0, "nodule": 35.0, "atelectasis": -350.0,
}


def pericardial_effusion_mm(severity: float) -> float:
    """Thickness of the pericardial fluid rim: 3 mm (trace) to 15 mm (large)."""
    return round(3.0 + 12.0 * float(severity), 1)


def cardiomegaly_scale(severity: float) -> float:
    """Factor applied to every heart radius: up to +35 % (2.5 times the volume)."""
    return 1.0 + 0.35 * float(severity)


@dataclass(frozen=True)
class _Patient:
    """Everything random about one CT, drawn before any finding is applied."""

    layout: ChestLayout
    body_scale: tuple[float, float]   # (lateral, antero-posterior) habitus
    shift: tuple[float, float]        # in-plane position on the table, px
    angle: float                      # in-plane rotation, radians
    z_shift: float                    # craniocaudal position of the anatomy, slices
    heart_scale: float
    noise_sigma: float                # HU, before the kernel's blur
    kernel_sigma: float               # px; a soft kernel blurs more
    hu_offset: float                  # calibration drift
    inspiration: float                # deeper inspiration -> darker lungs
    nodule_jitter: float
    lung_texture: np.ndarray          # coarse (slices, 32, 32) noise for parenchyma and vessels
    emphysema_texture: np.ndarray
    white_noise: np.ndarray


def _draw_patient(rng: np.random.Generator) -> _Patient:
    layout = chest_layout(rng)
    u = rng.random(12).tolist()  # Python floats keep the float32 volume float32 (NEP 50)
    return _Patient(
        layout=layout,
        body_scale=(0.88 + 0.2 * u[0], 0.85 + 0.25 * u[1]),
        shift=(6.0 * (u[2] - 0.5), 6.0 * (u[3] - 0.5)),
        angle=math.radians(8.0 * (u[4] - 0.5)),
        z_shift=3.0 * (u[5] - 0.5),
        heart_scale=0.92 + 0.12 * u[6],
        noise_sigma=25.0 + 35.0 * u[7],
        kernel_sigma=0.5 + 0.5 * u[8],
        hu_offset=10.0 * (u[9] - 0.5),
        inspiration=u[10],
        nodule_jitter=u[11],
        lung_texture=rng.standard_normal((14, 48, 48), dtype=np.float32),
        emphysema_texture=rng.standard_normal((11, 32, 32), dtype=np.float32),
        # Uniform noise of unit variance: 4x cheaper to draw than normal noise, and the kernel's
        # blur (a weighted sum of neighbours) makes it Gaussian-looking anyway.
        white_noise=(rng.random(SHAPE, dtype=np.float32) - 0.5) * math.sqrt(12.0),
    )


class _Slices:
    """In-plane coordinates (px, rotated and centred on the body) and the slice axis."""

    def __init__(self, p: _Patient):
        rows, cols = np.mgrid[0:SHAPE[1], 0:SHAPE[2]].astype(np.float32)
        cy, cx = SHAPE[1] / 2 + p.shift[1], SHAPE[2] / 2 + p.shift[0]
        cos, sin = math.cos(p.angle), math.sin(p.angle)
        self.X = cos * (cols - cx) + sin * (rows - cy)
        self.Y = -sin * (cols - cx) + cos * (rows - cy)
        self.z = np.arange(SHAPE[0], dtype=np.float32) - p.z_shift
        self.ax = 58.0 * p.body_scale[0]  # body half-width, px
        self.ay = 42.0 * p.body_scale[1]  # body half-depth, px

    def d2(self, x: float, y: float, rx: float, ry: float) -> np.ndarray:
        """Normalised squared distance to an in-plane ellipse (2D)."""
        return ((self.X - x) / rx) ** 2 + ((self.Y - y) / ry) ** 2

    def ellipsoid(self, x: float, y: float, z: float, rx: float, ry: float, rz: float) -> np.ndarray:
        """Boolean (z, y, x) mask of an ellipsoid; radii in px and slices."""
        k2 = 1.0 - ((self.z - z) / rz) ** 2
        return self.d2(x, y, rx, ry)[None] < k2[:, None, None]

    def cylinder(self, d2: np.ndarray, z_from: float = -math.inf, z_to: float = math.inf) -> np.ndarray:
        """Boolean mask of an in-plane shape extruded over the slices z_from <= z < z_to."""
        inside_z = (self.z >= z_from) & (self.z < z_to)
        return (d2 < 1.0)[None] & inside_z[:, None, None]


def render(findings: Mapping[str, float], rng: np.random.Generator) -> np.ndarray:
    """A (40, 128, 128) int16 chest CT in HU, (z, y, x), spacing (4.0, 2.5, 2.5) mm."""
    findings = checked_findings(findings, FINDINGS, "ct")
    p = _draw_patient(rng)
    g = _Slices(p)
    vol = np.full(SHAPE, HU["air"], dtype=np.float32)

    rho2 = g.d2(0.0, 0.0, g.ax, g.ay)  # elliptical radius of the body, squared
    body_wall = [(1.0, "fat"), (0.90 ** 2, "muscle"), (0.82 ** 2, "mediastinal fat")]
    for limit, tissue in body_wall:
        np.putmask(vol, np.broadcast_to(rho2 < limit, SHAPE), HU[tissue])
    _paint_ribs(vol, g, rho2)

    lungs = _lungs(g)
    np.putmask(vol, lungs, _lung_parenchyma(g, p, findings.get("emphysema", 0.0)))
    if "pleural effusion" in findings:
        _paint_effusion(vol, g, lungs, p.layout, findings["pleural effusion"])
    _paint_diaphragm(vol, g, cavity=rho2 < 0.82 ** 2)
    _paint_heart(vol, g, p, findings)
    _paint_vessels_and_airways(vol, g)
    _paint_spine_and_sternum(vol, g)
    if "lung nodule" in findings:
        _paint_nodule(vol, g, lungs, p, findings["lung nodule"])

    return _scan(vol, p)


def _lungs(g: _Slices) -> np.ndarray:
    """Both lungs: ellipses widest at the lung bases, tapering to the apices at the top."""
    apex_taper = np.where(g.z > 14.0, 1.0 - ((g.z - 14.0) / 31.0) ** 2, 1.0)  # squared radius factor
    lungs = np.zeros(SHAPE, dtype=bool)
    for sign in (-1.0, 1.0):
        d2 = g.d2(sign * 0.44 * g.ax, 0.06 * g.ay, 0.36 * g.ax, 0.70 * g.ay)
        lungs |= d2[None] < apex_taper[:, None, None]
    return lungs


def _lung_parenchyma(g: _Slices, p: _Patient, emphysema: float) -> np.ndarray:
    """HU of lung tissue everywhere (used where the lung mask is set).

    Smooth noise gives the parenchyma texture; its highest peaks become vessels. The dependent
    (posterior) lung is a little denser, as in any supine scan. Emphysema darkens the lung and
    punches low-attenuation areas (< -950 HU), more in the upper lobes.
    """
    texture = _upsample(p.lung_texture)
    base = HU["lung"] - 40.0 * p.inspiration + 60.0 * np.clip(g.Y / g.ay, -1.0, 1.0)[None]
    hu = base + 25.0 * texture
    hu = np.where(texture > 1.1, -450.0 + 300.0 * texture, hu)  # the peaks are vessels cut across
    if emphysema > 0.0:
        holes = _upsample(p.emphysema_texture)
        upper = np.clip(g.z / SHAPE[0], 0.0, 1.0)[:, None, None]  # 0 at the bases, 1 at the apices
        # Threshold chosen so the destroyed fraction grows with severity and toward the apices.
        threshold = 1.1 - 2.0 * emphysema * (0.5 + upper)
        hu = np.where(holes > threshold, HU["emphysema"], hu - 30.0 * emphysema)
    return hu


def _upsample(coarse: np.ndarray) -> np.ndarray:
    """Coarse (n, 32, 32) noise to the volume grid: cubic in-plane, linear between slices."""
    planes = ndimage.zoom(coarse, (1, SHAPE[1] / coarse.shape[1], SHAPE[2] / coarse.shape[2]), order=1)
    position = np.linspace(0, coarse.shape[0] - 1, SHAPE[0])
    lower = np.floor(position).astype(int)
    upper = np.minimum(lower + 1, coarse.shape[0] - 1)
    weight = (position - lower).astype(np.float32)[:, None, None]
    return planes[lower] * (1.0 - weight) + planes[upper] * weight


def _paint_ribs(vol: np.ndarray, g: _Slices, rho2: np.ndarray) -> None:
    """Ribs: arcs of bone in the chest wall that move around the chest from slice to slice."""
    angle = np.arctan2(g.Y / g.ay, g.X / g.ax)
    ring = (rho2 > 0.83 ** 2) & (rho2 < 0.89 ** 2)
    cos_n, sin_n = np.cos(7.0 * angle), np.sin(7.0 * angle)
    phase = 0.45 * g.z
    # cos(7*angle + phase) from the 2D tables: cheap for every slice at once.
    wave = cos_n[None] * np.cos(phase)[:, None, None] - sin_n[None] * np.sin(phase)[:, None, None]
    np.putmask(vol, ring[None] & (wave > 0.55), HU["bone"])


def _paint_effusion(vol: np.ndarray, g: _Slices, lungs: np.ndarray, layout: ChestLayout, severity: float) -> None:
    """Free fluid in the dependent (posterior) pleural space, deepest at the bases.

    The aerated lung floats on the fluid: it is the lung ellipse shrunk and pushed forward, so
    the fluid is a crescent, thick posteriorly and thinning around the lateral wall. A thin
    band of compressed (atelectatic) lung lines the fluid.
    """
    depth = (0.15 + 0.55 * severity) * 1.4 * g.ay * np.clip(1.1 - g.z / 40.0, 0.35, 1.0)  # px, per slice
    for side in layout.effusion_sides():
        sign = -1.0 if side == "right" else 1.0
        x0, y0, rx, ry = sign * 0.44 * g.ax, 0.06 * g.ay, 0.36 * g.ax, 0.70 * g.ay
        on_side = (g.X * sign > 0)[None]
        # Per slice, the aerated lung ellipse: its back moves forward by ``depth``.
        ry_aerated = (ry - depth / 2.0)[:, None, None]
        y_aerated = (y0 - depth / 2.0)[:, None, None]
        rx_aerated = (rx - 0.25 * depth)[:, None, None]
        d2 = ((g.X[None] - x0) / rx_aerated) ** 2 + ((g.Y[None] - y_aerated) / ry_aerated) ** 2
        fluid = lungs & on_side & (d2 > 1.0)
        compressed = lungs & on_side & (d2 > 0.8) & ~fluid
        np.putmask(vol, compressed, HU["atelectasis"])
        np.putmask(vol, fluid, HU["fluid"])


def _paint_diaphragm(vol: np.ndarray, g: _Slices, cavity: np.ndarray) -> None:
    """Liver under the right dome (higher) and spleen under the left dome, inside the chest wall."""
    for sign, z_center, tissue in ((-1.0, -12.0, "liver"), (1.0, -15.0, "spleen")):
        dome = g.ellipsoid(sign * 0.42 * g.ax, 0.1 * g.ay, z_center, 0.5 * g.ax, 0.85 * g.ay, 21.0)
        np.putmask(vol, dome & cavity[None], HU[tissue])


def _paint_heart(vol: np.ndarray, g: _Slices, p: _Patient, findings: Mapping[str, float]) -> None:
    """Heart: an ellipsoid anterior and left of the midline, in its fat-lined pericardial sac.

    Painted outside-in: pericardial fat, then (with a pericardial effusion) a fluid rim of the
    reported thickness, then the heart itself.
    """
    scale = p.heart_scale * cardiomegaly_scale(findings.get("cardiomegaly", 0.0))
    radii = (24.0 * scale, 18.0 * scale, 13.0 * scale)  # x, y in px; z in slices
    centre = (0.14 * g.ax, -0.22 * g.ay, 12.0)
    fluid_px = 0.0
    if "pericardial effusion" in findings:
        fluid_px = pericardial_effusion_mm(findings["pericardial effusion"]) / SPACING_MM[1]

    def grown(margin_px: float) -> np.ndarray:
        """The heart ellipsoid grown by a margin given in in-plane pixels (converted for z)."""
        rx, ry, rz = radii
        return g.ellipsoid(*centre, rx + margin_px, ry + margin_px, rz + margin_px * SPACING_MM[1] / SPACING_MM[0])

    np.putmask(vol, grown(fluid_px + 2.0), HU["mediastinal fat"] - 15.0)
    if fluid_px:
        np.putmask(vol, grown(fluid_px), HU["fluid"])
    np.putmask(vol, grown(0.0), HU["blood"])


def _paint_vessels_and_airways(vol: np.ndarray, g: _Slices) -> None:
    """Aorta (ascending, arch, descending), pulmonary trunk, vena cava, trachea and main bronchi."""
    ax, ay = g.ax, g.ay
    vessels = (  # (in-plane ellipse, first slice, end slice)
        (g.d2(0.04 * ax, -0.2 * ay, 6.5, 6.5), 22.0, 37.0),           # ascending aorta
        (g.d2(0.12 * ax, 0.1 * ay, 0.18 * ax, 0.35 * ay), 36.0, 40.0),  # aortic arch
        (g.d2(0.2 * ax, 0.5 * ay, 5.5, 5.5), -math.inf, math.inf),     # descending aorta
        (g.d2(0.16 * ax, -0.3 * ay, 7.0, 7.0), 24.0, 31.0),            # pulmonary trunk
        (g.d2(-0.16 * ax, -0.2 * ay, 4.5, 4.5), 20.0, 40.0),           # superior vena cava
    )
    for ellipse, first, end in vessels:
        np.putmask(vol, g.cylinder(ellipse, first, end), HU["blood"])
    carina = 28.0
    np.putmask(vol, g.cylinder(g.d2(0.0, 0.08 * ay, 4.5, 4.5), carina), HU["air"])  # trachea
    for z in range(SHAPE[0]):
        depth = carina - g.z[z]
        if 0.0 < depth <= 7.0:  # the main bronchi diverge below the carina
            for sign in (-1.0, 1.0):
                np.putmask(vol[z], g.d2(sign * 2.2 * depth, 0.1 * ay, 3.2, 3.2) < 1.0, HU["air"])


def _paint_spine_and_sternum(vol: np.ndarray, g: _Slices) -> None:
    """Vertebral bodies (cortex, marrow, discs), spinal canal, posterior arch and sternum."""
    y_body = 0.62 * g.ay
    disc = ((g.z + 2.0) % 6.0) < 1.2  # a disc every 24 mm
    cortex = g.d2(0.0, y_body, 11.0, 10.0) < 1.0
    marrow = g.d2(0.0, y_body, 9.0, 8.0) < 1.0
    np.putmask(vol, np.broadcast_to(cortex, SHAPE), HU["bone"])
    np.putmask(vol, marrow[None] & ~disc[:, None, None], HU["marrow"])
    np.putmask(vol, marrow[None] & disc[:, None, None], HU["disc"])
    np.putmask(vol, np.broadcast_to(g.d2(0.0, y_body + 18.0, 11.0, 4.0) < 1.0, SHAPE), HU["bone"])
    np.putmask(vol, np.broadcast_to(g.d2(0.0, y_body + 13.0, 4.5, 4.0) < 1.0, SHAPE), HU["fluid"])
    np.putmask(vol, g.cylinder(g.d2(0.0, -0.86 * g.ay, 9.0, 3.0), 8.0), HU["bone"] - 200.0)


def _nodule_center(g: _Slices, p: _Patient) -> tuple[float, float, float]:
    """The nodule's centre (x px, y px, anatomical z slice) inside the reported lobe.

    Lower-lobe nodules sit posteriorly, where the lower lobes are (and the heart is not).
    """
    layout = p.layout
    sign = -1.0 if layout.nodule_side == "right" else 1.0
    lateral, vertical = layout.nodule_offset
    x = sign * g.ax * (0.30 + 0.25 * lateral)
    if layout.nodule_zone == "upper":
        return x, g.ay * (-0.2 + 0.4 * p.nodule_jitter), 26.0 + 8.0 * vertical
    return x, g.ay * (0.3 + 0.25 * p.nodule_jitter), 11.0 + 7.0 * vertical


def _paint_nodule(vol: np.ndarray, g: _Slices, lungs: np.ndarray, p: _Patient, severity: float) -> None:
    """A solid spherical nodule of the reported diameter, in the reported lobe (inside the lung)."""
    radius_mm = nodule_diameter_mm(severity) / 2.0
    x, y, z = _nodule_center(g, p)
    dz, dy, dx = SPACING_MM
    sphere = g.ellipsoid(x, y, z, radius_mm / dx, radius_mm / dy, radius_mm / dz)
    np.putmask(vol, sphere & lungs, HU["nodule"])


def _scan(vol: np.ndarray, p: _Patient) -> np.ndarray:
    """Scanner noise, the reconstruction kernel's in-plane blur, calibration drift, int16 HU."""
    vol += p.noise_sigma * p.white_noise
    vol = ndimage.gaussian_filter(vol, (0.0, p.kernel_sigma, p.kernel_sigma), truncate=3.0)
    vol += p.hu_offset
    return np.clip(np.round(vol), HU_MIN, HU_MAX).astype(np.int16)


# --- measurement ---------------------------------------------------------------------------

def lung_mask(volume: np.ndarray) -> np.ndarray:
    """Voxels of the lungs: air-density (< -400 HU) regions not connected to the outside air.

    The air around the patient touches the edges of every slice; the lungs (and the airways
    inside the chest) do not.
    """
    airy = volume < -400
    labels, _ = ndimage.label(airy)
    outside = np.unique(np.concatenate([labels[:, 0].ravel(), labels[:, -1].ravel(),
                                        labels[:, :, 0].ravel(), labels[:, :, -1].ravel()]))
    return airy & ~np.isin(labels, outside)


def emphysema_index(volume: np.ndarray) -> float:
    """LAA%-950: the share of lung voxels below -950 HU, the standard CT measure of emphysema."""
    lungs = lung_mask(volume)
    return float((volume[lungs] < -950).mean()) if lungs.any() else float("nan")


# --- report ----------------------------------------------------------------------------------

_STYLE = lang.ReportStyle(
    headers=(None, "Non-contrast chest CT.", "TECHNIQUE: Axial images of the thorax without intravenous contrast.",
             "EXAMINATION: CT chest without contrast.", None),
    absent_nouns={
        "cardiomegaly": lang.CARDIOMEGALY_NOUNS,
        "pleural effusion": ("pleural effusion", "pleural fluid"),
        "lung nodule": ("pulmonary nodule", "lung nodule", "mass or nodule"),
        "emphysema": ("emphysema", "emphysematous change"),
        "pericardial effusion": ("pericardial effusion", "pericardial thickening or effusion"),
    },
    normal_statements=(
        ("Trachea and both main bronchi are patent.", "The central airways are open."),
        ("Both lungs are clear.", "The lung parenchyma is unremarkable.", "No focal lung lesion."),
        ("Heart size is normal.", "Heart contour and size are within normal limits."),
        ("Mediastinal structures are within normal limits.", "No mediastinal lymphadenopathy."),
        ("Visualised upper abdominal organs are unremarkable.", "Bony structures are intact."),
    ),
    normal_impressions=(
        "No acute findings in the thorax.",
        "Normal chest CT.",
        "Unremarkable non-contrast chest CT.",
        "No significant thoracic pathology.",
    ),
)


def write_report(findings: Mapping[str, float], rng: np.random.Generator) -> str:
    """A CT report ('Findings: ... Impression: ...') matching :func:`render` for the same seed."""
    return lang.chest_report(findings, FINDINGS, "ct", _describe, _STYLE, rng)


def _describe(label: str, severity: float, layout: ChestLayout, rng: np.random.Generator) -> tuple[str, str]:
    """(findings sentence, impression phrase) for one present finding, not yet capitalised."""
    degree, size = lang.degree_word(severity, rng), lang.size_word(severity, rng)
    if label == "cardiomegaly":
        adverb = lang.degree_adverb(severity, rng)
        sentence = lang.pick(rng, (
            *lang.cardiomegaly_sentences(degree, adverb),
            f"Cardiac size is {adverb} increased.",
            f"{degree} enlargement of the cardiac chambers.",
            f"{degree} cardiomegaly with left ventricular hypertrophy.",
        ))
        impression = lang.cardiomegaly_impression(degree, adverb, rng)
    elif label == "pleural effusion":
        side = layout.effusion_side
        space = "both pleural spaces" if side == "bilateral" else f"the {side} pleural space"
        sentence = lang.pick(rng, (
            f"{size} {side} {lang.effusion_noun(side)} with adjacent compressive atelectasis.",
            f"{size} amount of fluid layering in {space}.",
            lang.effusion_statement(size, side),
        ))
        impression = lang.effusion_impression(size, side)
    elif label == "lung nodule":
        diameter = nodule_diameter_mm(severity)
        where = lang.lobe_phrase(layout.nodule_side, layout.nodule_zone, rng)
        sentence = lang.pick(rng, (
            f"A {diameter:.0f} mm solid nodule in the {where}.",
            f"{diameter:.0f} mm solid pulmonary nodule in the {where}.",
            f"Solid nodular lesion measuring {diameter:.0f} mm in the {where}.",
            f"Well-circumscribed {diameter:.0f} mm soft-tissue density in the {where}.",
        ))
        impression = lang.pick(rng, (f"{diameter:.0f} mm {where} nodule; follow-up recommended.",
                                     f"Pulmonary nodule in the {where}."))
    elif label == "emphysema":
        sentence = lang.pick(rng, (
            f"{degree} centrilobular emphysema, predominantly in the upper lobes.",
            f"{degree} emphysematous changes in both lungs.",
            f"Areas of low attenuation consistent with {degree} emphysema.",
            f"{degree} hyperlucency of the upper lobes with destruction of the lung parenchyma.",
        ))
        impression = lang.pick(rng, (f"{degree} emphysema.", f"{degree} centrilobular emphysema."))
    elif label == "pericardial effusion":
        thickness = pericardial_effusion_mm(severity)
        sentence = lang.pick(rng, (
            f"{size} pericardial effusion.",
            f"Pericardial fluid up to {thickness:.0f} mm thick.",
            f"{size} amount of fluid in the pericardial sac.",
            f"There is a {size} pericardial effusion measuring {thickness:.0f} mm.",
        ))
        impression = f"{size} pericardial effusion."
    else:
        raise KeyError(f"unknown CT finding '{label}'; known: {', '.join(FINDINGS)}")
    return sentence, impression

"""Synthetic colour fundus photographs and ophthalmology reports.

A photograph is painted in the order light meets it on the way out of the eye: the
orange-red fundus (choroid texture, darker macula and fovea), the optic disc with its pale
cup, the retinal veins and arteries branching from the disc, the lesions of the findings,
then the camera (lens haze and blur of a cataract, uneven illumination, colour cast, gamma,
sensor noise) and the dark surround of the circular field stop.

Anatomy (fundus size and position, eye side, disc size, vessel trees) comes from its own
random stream, so the same seed gives the same eye whatever findings are added. The facts a
report states (eye side, cup-to-disc ratio, where lesions cluster) come from the seed-derived
layout stream of :mod:`render_support`, so image and report agree.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from m3bind.cohort.language import pick, severity_band
from m3bind.cohort.render_support import (checked_findings, independent_streams, layout_rng,
                                          pixel_grid, smooth_noise)

FINDINGS: tuple[str, ...] = ("diabetic retinopathy", "glaucoma", "hypertensive retinopathy",
                             "drusen", "cataract")
NATIVE_FORMAT = "png"

SIZE = 256                 # the photograph is SIZE x SIZE x 3 (RGB)
_LAYOUT_STREAM = 3         # this module's stream number for render_support.layout_rng
_QUADRANTS = ("superotemporal", "inferotemporal", "superonasal", "inferonasal")
# Side branches per generation: (branches per parent vessel, length range, width ratio).
_BRANCHING = (((3, 6), (25.0, 70.0), (0.55, 0.75)), ((0, 3), (12.0, 35.0), (0.6, 0.8)))


def _rgb(red: float, green: float, blue: float) -> np.ndarray:
    """A read-only float32 RGB triple (module constants must not be mutable)."""
    colour = np.array([red, green, blue], dtype=np.float32)
    colour.flags.writeable = False
    return colour


# Colours in 8-bit RGB before the camera stage scales them.
_DISC_RIM = _rgb(238.0, 160.0, 105.0)
_DISC_CUP = _rgb(250.0, 236.0, 205.0)
_VEIN_FACTOR = _rgb(0.55, 0.35, 0.50)     # veins: dark purplish red
_ARTERY_FACTOR = _rgb(0.80, 0.58, 0.68)   # arteries: lighter, narrower
_MICROANEURYSM = _rgb(125.0, 22.0, 18.0)
_HAEMORRHAGE = _rgb(105.0, 15.0, 12.0)
_HARD_EXUDATE = _rgb(242.0, 218.0, 105.0)
_COTTON_WOOL = _rgb(236.0, 226.0, 200.0)
_DRUSEN = _rgb(228.0, 198.0, 118.0)
_LENS_HAZE = _rgb(196.0, 172.0, 130.0)


@dataclass(frozen=True)
class _Layout:
    """What both the photograph and its report must agree on."""
    eye: str                 # "right" or "left"
    cup_to_disc: float       # cup diameter over disc diameter
    lesion_quadrant: str     # where retinopathy lesions cluster


@dataclass(frozen=True)
class _Anatomy:
    """One patient's eye, independent of any finding (all positions in pixels, (y, x))."""
    centre: tuple[float, float]
    radius: float                  # radius of the visible fundus circle
    temporal: float                # +1 if the macula lies right of the disc (left eye), else -1
    disc: tuple[float, float]
    disc_radius: float
    macula: tuple[float, float]
    base_colour: np.ndarray        # fundus RGB at the centre; pigmentation varies per patient
    choroid: np.ndarray            # (SIZE, SIZE) multiplicative texture around 1
    arteries: np.ndarray           # (3, n) centre-line points: y, x, width
    veins: np.ndarray              # (3, n)


def _draw_layout(findings: Mapping[str, float], rng: np.random.Generator) -> _Layout:
    # Every value is drawn whatever the findings, so adding a finding never shifts the others.
    eye = "right" if rng.random() < 0.5 else "left"
    normal_ratio = rng.uniform(0.2, 0.4)
    glaucoma_jitter = rng.uniform(-0.03, 0.03)
    quadrant = _QUADRANTS[int(rng.integers(len(_QUADRANTS)))]
    ratio = normal_ratio
    if "glaucoma" in findings:
        # Cup-to-disc above 0.5 is the usual glaucoma suspicion threshold; it grows with damage.
        ratio = min(0.5 + 0.4 * findings["glaucoma"] + glaucoma_jitter, 0.93)
    return _Layout(eye=eye, cup_to_disc=float(ratio), lesion_quadrant=quadrant)


# ----------------------------------------------------------------------------- anatomy

def _walk(start: tuple[float, float], heading: float, curvature: float, length: float,
          width: float, rng: np.random.Generator, wiggle: float = 0.03) -> np.ndarray:
    """A vessel centre line as (4, n) rows y, x, width, heading, one point per pixel step.

    The heading turns by ``curvature`` radians per pixel plus a random walk (tortuosity);
    vessels taper to about half their width at the end.
    """
    n = max(int(length), 2)
    headings = heading + np.cumsum(curvature + rng.normal(0.0, wiggle, n))
    ys = start[0] + np.cumsum(np.sin(headings))
    xs = start[1] + np.cumsum(np.cos(headings))
    widths = width * np.linspace(1.0, 0.55, n)
    return np.stack([ys, xs, widths, headings])


def _vessel_tree(start: tuple[float, float], heading: float, curvature: float, length: float,
                 width: float, rng: np.random.Generator) -> np.ndarray:
    """A main vessel with generations of side branches (:data:`_BRANCHING`), as (3, n) rows
    y, x, width."""
    parents = [_walk(start, heading, curvature, length, width, rng)]
    segments = list(parents)
    for branches, length_range, width_ratio in _BRANCHING:
        children = []
        for parent in parents:
            for _ in range(int(rng.integers(*branches))):
                # A branch leaves somewhere along the parent, 25-55 degrees to either side.
                i = int(rng.uniform(0.15, 0.85) * parent.shape[1])
                angle = parent[3, i] + rng.choice([-1.0, 1.0]) * rng.uniform(0.45, 0.95)
                children.append(_walk((parent[0, i], parent[1, i]), angle, rng.normal(0.0, 0.006),
                                      rng.uniform(*length_range),
                                      parent[2, i] * rng.uniform(*width_ratio), rng))
        segments.extend(children)
        parents = children
    return np.concatenate([s[:3] for s in segments], axis=1)


def _draw_anatomy(layout: _Layout, rng: np.random.Generator) -> _Anatomy:
    centre = (SIZE / 2 + rng.normal(0.0, 4.0), SIZE / 2 + rng.normal(0.0, 4.0))
    radius = rng.uniform(110.0, 122.0)
    temporal = -1.0 if layout.eye == "right" else 1.0   # right eye: disc right, macula left
    tilt = rng.normal(0.0, 0.1)                          # head tilt / camera rotation

    def place(along: float, down: float) -> tuple[float, float]:
        # Offsets in fundus radii along the temporal axis and downwards, rotated by the tilt.
        dx, dy = along * radius * temporal, down * radius
        c, s = np.cos(tilt), np.sin(tilt)
        return centre[0] + s * dx + c * dy, centre[1] + c * dx - s * dy

    disc = place(-0.42, -0.03)
    macula = place(0.10, 0.02)
    disc_radius = rng.uniform(13.0, 17.0)
    red = rng.uniform(170.0, 215.0)                      # fundus pigmentation
    base_colour = np.array([red, red * rng.uniform(0.33, 0.45), red * rng.uniform(0.12, 0.22)])
    choroid = 1.0 + 0.05 * smooth_noise(rng, SIZE, 24)

    # Main vessels, described for a right eye (temporal = -x) then mirrored for a left eye:
    # (initial direction dx, dy; curvature per pixel; length range). The temporal arcades
    # curve around the macula; the nasal vessels run almost straight.
    mains = [((-0.35, -0.94), -0.011, (150.0, 190.0)), ((-0.35, 0.94), 0.011, (150.0, 190.0)),
             ((0.50, -0.87), 0.004, (80.0, 110.0)), ((0.50, 0.87), -0.004, (80.0, 110.0))]
    vein_width = rng.uniform(3.6, 4.2) * disc_radius / 15.0
    trees: dict[str, list[np.ndarray]] = {"artery": [], "vein": []}
    for (dx, dy), curvature, length_range in mains:
        heading = np.arctan2(dy, dx if temporal < 0 else -dx) + tilt
        bend = curvature if temporal < 0 else -curvature
        for kind in ("vein", "artery"):
            width = vein_width * (1.0 if kind == "vein" else rng.uniform(0.62, 0.72))
            trees[kind].append(_vessel_tree(disc, heading + rng.normal(0.0, 0.12),
                                            bend * rng.uniform(0.9, 1.1),
                                            rng.uniform(*length_range), width, rng))
    return _Anatomy(centre=centre, radius=radius, temporal=temporal, disc=disc,
                    disc_radius=disc_radius, macula=macula, base_colour=base_colour,
                    choroid=choroid, arteries=np.concatenate(trees["artery"], axis=1),
                    veins=np.concatenate(trees["vein"], axis=1))


# ----------------------------------------------------------------------------- painting

def _soft_ellipse(yy: np.ndarray, xx: np.ndarray, centre: tuple[float, float], ry: float,
                  rx: float, edge: float = 1.0) -> np.ndarray:
    """Coverage in [0, 1] of an axis-aligned ellipse with an ``edge``-pixel soft border."""
    rho = np.sqrt(((yy - centre[0]) / ry) ** 2 + ((xx - centre[1]) / rx) ** 2)
    return np.clip((1.0 - rho) * min(ry, rx) / edge + 0.5, 0.0, 1.0)


def _blend(image: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> None:
    """Paint ``colour`` over ``image`` in place with per-pixel opacity ``alpha``."""
    image *= 1.0 - alpha[..., None]
    image += alpha[..., None] * colour


def _vessel_alpha(points: np.ndarray) -> np.ndarray:
    """Coverage of vessels given as centre-line points (y, x, width).

    The centre lines are rasterised, then each pixel takes the width of its nearest centre
    pixel (Euclidean distance transform with indices): one pass for any number of vessels.
    """
    ys, xs = np.rint(points[0]).astype(int), np.rint(points[1]).astype(int)
    inside = (ys >= 0) & (ys < SIZE) & (xs >= 0) & (xs < SIZE)
    ys, xs, widths = ys[inside], xs[inside], points[2][inside]
    width_map = np.zeros((SIZE, SIZE), dtype=np.float32)
    np.maximum.at(width_map, (ys, xs), widths)
    distance, (near_y, near_x) = ndimage.distance_transform_edt(width_map == 0,
                                                                return_indices=True)
    return np.clip(width_map[near_y, near_x] / 2.0 + 0.5 - distance, 0.0, 1.0)


def _paint_spots(image: np.ndarray, spots: np.ndarray, colour: np.ndarray, opacity: float,
                 softness: float) -> None:
    """Paint elliptical spots (rows y, x, radius_along, radius_across, angle) in place.

    ``softness`` is the border width in pixels: below 1 gives crisp exudates, around the
    radius gives fluffy cotton-wool spots.
    """
    for y, x, r_along, r_across, angle in spots:
        reach = int(np.ceil(max(r_along, r_across) + 2 * softness + 1))
        y0, y1 = max(int(y) - reach, 0), min(int(y) + reach + 1, SIZE)
        x0, x1 = max(int(x) - reach, 0), min(int(x) + reach + 1, SIZE)
        if y0 >= y1 or x0 >= x1:
            continue
        wy, wx = np.mgrid[y0:y1, x0:x1]
        dy, dx = wy - y, wx - x
        along = dx * np.cos(angle) + dy * np.sin(angle)
        across = -dx * np.sin(angle) + dy * np.cos(angle)
        rho = np.sqrt((along / r_along) ** 2 + (across / r_across) ** 2)
        alpha = opacity * np.clip((1.0 - rho) * min(r_along, r_across) / softness + 0.5, 0.0, 1.0)
        _blend(image[y0:y1, x0:x1], alpha, colour)


def _scatter(rng: np.random.Generator, centre: tuple[float, float], spread: float, count: int,
             anatomy: _Anatomy) -> np.ndarray:
    """``count`` points (y, x) around ``centre``, kept inside the fundus and off the disc."""
    points = centre + rng.normal(0.0, spread, (max(count * 3, 1), 2))
    from_centre = np.hypot(points[:, 0] - anatomy.centre[0], points[:, 1] - anatomy.centre[1])
    from_disc = np.hypot(points[:, 0] - anatomy.disc[0], points[:, 1] - anatomy.disc[1])
    keep = (from_centre < 0.92 * anatomy.radius) & (from_disc > 1.3 * anatomy.disc_radius)
    return points[keep][:count]


def _spots(points: np.ndarray, radius: tuple[float, float], rng: np.random.Generator,
           elongation: float = 1.0, angles: np.ndarray | None = None) -> np.ndarray:
    """Spot rows (y, x, radius_along, radius_across, angle) for ``points``."""
    n = len(points)
    r = rng.uniform(*radius, n)
    angle = rng.uniform(0.0, np.pi, n) if angles is None else angles
    return np.column_stack([points[:, 0], points[:, 1], r * elongation, r, angle]) \
        if n else np.zeros((0, 5))


def _quadrant_centre(anatomy: _Anatomy, quadrant: str) -> tuple[float, float]:
    """A point about one disc-macula distance from the macula in the named quadrant."""
    up = -1.0 if quadrant.startswith("supero") else 1.0
    side = anatomy.temporal if quadrant.endswith("temporal") else -anatomy.temporal
    reach = 0.33 * anatomy.radius
    return anatomy.macula[0] + up * reach * 0.8, anatomy.macula[1] + side * reach


def _flame_spots(anatomy: _Anatomy, count: int, rng: np.random.Generator) -> np.ndarray:
    """Flame haemorrhages: streaks near the disc, elongated along the radial nerve fibres."""
    angle = rng.uniform(0.0, 2 * np.pi, count)
    distance = anatomy.disc_radius * rng.uniform(1.4, 3.2, count)
    points = np.column_stack([anatomy.disc[0] + distance * np.sin(angle),
                              anatomy.disc[1] + distance * np.cos(angle)])
    return _spots(points, (1.3, 2.0), rng, elongation=rng.uniform(2.5, 3.5), angles=angle)


def _paint_diabetic_retinopathy(image: np.ndarray, anatomy: _Anatomy, layout: _Layout,
                                severity: float, rng: np.random.Generator) -> np.ndarray:
    """Microaneurysms, dot-blot haemorrhages, hard exudates, cotton-wool spots; returns the
    new vessels at the disc (proliferative disease) as centre-line points to paint later."""
    cluster = _quadrant_centre(anatomy, layout.lesion_quadrant)
    spread = 0.35 * anatomy.radius

    def lesion_points(count: int) -> np.ndarray:
        # Two thirds over the whole posterior pole, one third clustered in the layout quadrant.
        pole = _scatter(rng, anatomy.macula, spread, count - count // 3, anatomy)
        local = _scatter(rng, cluster, 0.4 * spread, count // 3, anatomy)
        return np.concatenate([pole, local])

    n_micro = 4 + round(30 * severity)
    _paint_spots(image, _spots(lesion_points(n_micro), (0.8, 1.4), rng), _MICROANEURYSM, 0.95, 0.6)
    n_haem = round(25 * max(severity - 0.3, 0.0))
    _paint_spots(image, _spots(lesion_points(n_haem), (1.5, 3.2), rng), _HAEMORRHAGE, 0.9, 1.0)
    # Hard exudates gather in rings (circinate) around leaking vessels near the macula.
    n_exudate = round(40 * max(severity - 0.3, 0.0))
    for _ in range(2 if n_exudate else 0):
        ring_centre = _scatter(rng, anatomy.macula, 0.25 * anatomy.radius, 1, anatomy)
        if not len(ring_centre):
            continue
        theta = rng.uniform(0, 2 * np.pi, n_exudate // 2)
        ring_radius = rng.uniform(6.0, 14.0)
        points = ring_centre[0] + np.column_stack([np.sin(theta), np.cos(theta)]) * \
            (ring_radius + rng.normal(0.0, 1.5, (len(theta), 1)))
        _paint_spots(image, _spots(points, (0.8, 2.0), rng), _HARD_EXUDATE, 0.95, 0.6)
    n_cotton = round(6 * max(severity - 0.65, 0.0) / 0.35)
    _paint_spots(image, _spots(lesion_points(n_cotton), (3.5, 6.0), rng, elongation=1.3),
                 _COTTON_WOOL, 0.7, 3.0)
    if severity <= 0.85:
        return np.zeros((3, 0))
    # Proliferative disease: a tangle of fine, tortuous new vessels on the disc.
    tangles = [_walk(anatomy.disc, rng.uniform(0, 2 * np.pi), 0.0, rng.uniform(15.0, 25.0), 1.1,
                     rng, wiggle=0.25)[:3] for _ in range(int(rng.integers(4, 7)))]
    return np.concatenate(tangles, axis=1)


def _paint_hypertensive_lesions(image: np.ndarray, anatomy: _Anatomy, severity: float,
                                rng: np.random.Generator) -> None:
    """Flame haemorrhages from moderate disease on, cotton-wool spots in severe disease."""
    _paint_spots(image, _flame_spots(anatomy, round(10 * max(severity - 0.3, 0.0)), rng),
                 _HAEMORRHAGE, 0.85, 0.8)
    n_cotton = round(5 * max(severity - 0.6, 0.0) / 0.4)
    points = _scatter(rng, anatomy.disc, 2.5 * anatomy.disc_radius, n_cotton, anatomy)
    _paint_spots(image, _spots(points, (3.5, 6.0), rng, elongation=1.3), _COTTON_WOOL, 0.7, 3.0)


def _paint_drusen(image: np.ndarray, anatomy: _Anatomy, severity: float,
                  rng: np.random.Generator) -> None:
    """Yellow deposits around the fovea; more, larger and more confluent with severity."""
    count = 6 + round(35 * severity)
    points = _scatter(rng, anatomy.macula, 10.0 + 14.0 * severity, count, anatomy)
    spots = _spots(points, (1.0 + 1.4 * severity, 1.0 + 2.8 * severity), rng, elongation=1.15)
    _paint_spots(image, spots, _DRUSEN, 0.85, 1.2)


def _fundus_background(anatomy: _Anatomy, from_centre: np.ndarray, yy: np.ndarray,
                       xx: np.ndarray) -> np.ndarray:
    """Pigment colour with choroid texture, darker towards the rim and at the macula/fovea."""
    from_macula = (yy - anatomy.macula[0]) ** 2 + (xx - anatomy.macula[1]) ** 2
    shade = (1.0 - 0.35 * from_centre) * anatomy.choroid
    shade *= 1.0 - 0.28 * np.exp(-from_macula / (2 * 16.0 ** 2)) \
        - 0.15 * np.exp(-from_macula / (2 * 4.0 ** 2))
    return shade[..., None] * anatomy.base_colour.astype(np.float32)


def _paint_disc(image: np.ndarray, anatomy: _Anatomy, cup_to_disc: float, swollen: bool,
                yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """The optic disc (slightly taller than wide) and its pale cup, offset a little temporally.

    Returns how visible vessels are per pixel: they dive into the nerve at the cup and fade
    there, which leaves the pale cup visible.
    """
    rd = anatomy.disc_radius
    disc_alpha = _soft_ellipse(yy, xx, anatomy.disc, 1.08 * rd, rd, edge=1.5)
    if swollen:
        disc_alpha = ndimage.gaussian_filter(disc_alpha, 2.5)   # blurred margin (papilloedema)
    _blend(image, disc_alpha, _DISC_RIM)
    cup_centre = (anatomy.disc[0], anatomy.disc[1] + 0.12 * rd * anatomy.temporal)
    cup_alpha = _soft_ellipse(yy, xx, cup_centre, 1.08 * rd * cup_to_disc, rd * cup_to_disc,
                              edge=1.2)
    _blend(image, cup_alpha, _DISC_CUP)
    return 1.0 - 0.85 * cup_alpha


# ----------------------------------------------------------------------------- render

def render(findings: Mapping[str, float], rng: np.random.Generator) -> np.ndarray:
    """A (256, 256, 3) uint8 colour fundus photograph showing ``findings``.

    ``findings`` maps labels of :data:`FINDINGS` to severities in (0, 1]; ``{}`` is normal.
    """
    findings = checked_findings(findings, FINDINGS, "retina")
    layout = _draw_layout(findings, layout_rng(rng, _LAYOUT_STREAM))
    anatomy_rng, lesion_rng, camera_rng = independent_streams(rng, 3)
    anatomy = _draw_anatomy(layout, anatomy_rng)
    yy, xx = pixel_grid(SIZE)
    # Squared distance from the fundus centre in fundus radii (vignetting, field stop).
    from_centre = ((yy - anatomy.centre[0]) ** 2 + (xx - anatomy.centre[1]) ** 2) \
        / anatomy.radius ** 2
    image = _fundus_background(anatomy, from_centre, yy, xx)
    hypertensive = findings.get("hypertensive retinopathy", 0.0)
    vessel_visibility = _paint_disc(image, anatomy, layout.cup_to_disc, hypertensive > 0.75,
                                    yy, xx)

    new_vessels = np.zeros((3, 0))
    if "diabetic retinopathy" in findings:
        new_vessels = _paint_diabetic_retinopathy(image, anatomy, layout,
                                                  findings["diabetic retinopathy"], lesion_rng)

    # Vessels: veins first, arteries over them. Hypertension narrows the arterioles.
    arteries = anatomy.arteries.copy()
    arteries[2] *= 1.0 - 0.5 * hypertensive
    vein_alpha = _vessel_alpha(anatomy.veins) * vessel_visibility
    arteries = np.concatenate([arteries, new_vessels], axis=1)
    artery_alpha = _vessel_alpha(arteries) * vessel_visibility
    image *= 1.0 - vein_alpha[..., None] * (1.0 - _VEIN_FACTOR)
    image *= 1.0 - artery_alpha[..., None] * (1.0 - _ARTERY_FACTOR)

    if hypertensive:
        _paint_hypertensive_lesions(image, anatomy, hypertensive, lesion_rng)
    if "drusen" in findings:
        _paint_drusen(image, anatomy, findings["drusen"], lesion_rng)
    return _camera(image, anatomy, findings.get("cataract", 0.0), from_centre, yy, xx, camera_rng)


def _camera(image: np.ndarray, anatomy: _Anatomy, cataract: float, from_centre: np.ndarray,
            yy: np.ndarray, xx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Lens haze and blur, illumination, colour cast, gamma, noise and the field stop."""
    if cataract:
        # A cataract scatters light: the fundus blurs and a yellowish veil lowers contrast.
        sigma = 0.7 + 2.3 * cataract
        image = ndimage.gaussian_filter(image, (sigma, sigma, 0))
        haze = 0.12 + 0.4 * cataract
        image = image * (1.0 - haze) + haze * _LENS_HAZE
    direction = rng.uniform(0, 2 * np.pi)
    ramp = ((xx - anatomy.centre[1]) * np.cos(direction)
            + (yy - anatomy.centre[0]) * np.sin(direction)) / anatomy.radius
    gain = rng.uniform(0.8, 1.15) * (1.0 + 0.12 * ramp)
    cast = rng.uniform(0.93, 1.07, 3)
    image = np.clip(np.rint(image * (gain[..., None] * cast).astype(np.float32)), 0, 255)
    # Camera gamma through a lookup table on the 8-bit values: cheaper than a power per pixel.
    gamma_table = (255.0 * (np.arange(256) / 255.0) ** rng.uniform(0.85, 1.15)).astype(np.float32)
    image = gamma_table[image.astype(np.uint8)]
    inside = np.clip((1.0 - np.sqrt(from_centre)) * anatomy.radius + 0.5, 0.0, 1.0)[..., None]
    image = image * inside + np.float32(rng.uniform(2.0, 10.0)) * (1.0 - inside)
    image += rng.uniform(1.5, 4.0) * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- report

_BANDS = ("mild", "moderate", "severe")
_EYE_NAMES = {"right": ("right eye", "OD"), "left": ("left eye", "OS")}

_NORMAL_TEXTS = (
    "Optic disc pink with well-defined margins, cup-to-disc ratio {cdr}. Macula with normal "
    "foveal reflex. Vessels of normal calibre. Impression: normal fundus.",
    "Healthy fundus with no signs of retinopathy.",
    "No abnormality detected. Disc, macula and vessels within normal limits.",
    "Normal optic nerve head (C/D {cdr}), normal macula, no haemorrhages or exudates.",
    "Unremarkable retinal examination. Healthy appearing optic disc and macula.",
    "Normal retina. No lesion signs.",
    "Clear media, healthy disc (CDR {cdr}), flat macula, normal vasculature. No retinopathy.",
)

# Per finding, alternative descriptions for each severity band (mild, moderate, severe, in
# that order; see language.severity_band).
_FINDING_TEXTS: dict[str, tuple[tuple[str, ...], ...]] = {
    "diabetic retinopathy": (
        ("mild non-proliferative diabetic retinopathy with a few microaneurysms",
         "scattered microaneurysms, consistent with mild NPDR",
         "early diabetic retinopathy: isolated microaneurysms {where}"),
        ("moderate non-proliferative diabetic retinopathy with dot-blot haemorrhages and hard "
         "exudates {where}",
         "moderate NPDR: microaneurysms, intraretinal haemorrhages and circinate exudates",
         "diabetic retinopathy of moderate degree, haemorrhages and exudates {where}"),
        ("severe non-proliferative diabetic retinopathy with numerous haemorrhages, exudates and "
         "cotton-wool spots {where}",
         "advanced diabetic retinopathy: extensive haemorrhages and cotton-wool spots",
         "severe NPDR with many blot haemorrhages {where}"),
    ),
    "glaucoma": (
        ("increased cup-to-disc ratio of {cdr}, suspicious for early glaucoma",
         "mild glaucomatous cupping (C/D {cdr})",
         "borderline enlarged optic cup, C/D {cdr}; glaucoma suspect"),
        ("glaucomatous optic disc with cup-to-disc ratio {cdr}",
         "moderate cupping of the optic nerve head (C/D {cdr}), consistent with glaucoma",
         "enlarged cup (CDR {cdr}) with thinning of the neuroretinal rim"),
        ("advanced glaucomatous cupping, cup-to-disc ratio {cdr}, thin neuroretinal rim",
         "severe glaucoma: near-total cupping of the disc (C/D {cdr})",
         "marked excavation of the optic disc, CDR {cdr}, advanced glaucomatous optic neuropathy"),
    ),
    "hypertensive retinopathy": (
        ("mild generalised arteriolar narrowing, grade 1 hypertensive retinopathy",
         "mild hypertensive retinopathy with attenuated arterioles",
         "thin arteries compared with the veins, consistent with mild hypertensive changes"),
        ("moderate hypertensive retinopathy: arteriolar narrowing and flame haemorrhages near "
         "the disc",
         "attenuated arterioles with peripapillary flame-shaped haemorrhages (hypertensive "
         "retinopathy)",
         "hypertensive fundus changes of moderate degree with splinter haemorrhages"),
        ("severe hypertensive retinopathy with flame haemorrhages and cotton-wool spots",
         "advanced hypertensive retinopathy: marked arteriolar narrowing, haemorrhages and "
         "cotton-wool spots",
         "severe malignant-phase hypertensive changes with cotton-wool spots and flame "
         "haemorrhages"),
    ),
    "drusen": (
        ("a few small drusen at the macula",
         "scattered small yellow deposits in the macula (drusen)",
         "minimal macular drusen"),
        ("multiple intermediate drusen in the macula",
         "moderate drusen at the posterior pole, early age-related macular degeneration",
         "several yellow drusen around the fovea"),
        ("numerous large confluent drusen at the macula",
         "extensive soft drusen at the macula, intermediate age-related macular degeneration",
         "large coalescing yellow deposits around the fovea"),
    ),
    "cataract": (
        ("mild media opacity (early cataract), slightly hazy view",
         "mild cataract with minimally reduced image clarity",
         "slight lens opacity; fundus details still visible"),
        ("moderate cataract, hazy view of the fundus",
         "media opacity from cataract reducing image sharpness",
         "lens opacity degrading the photograph, moderate"),
        ("dense cataract, the fundus is seen only through a severe haze",
         "severe media opacity (cataract), fundus details barely visible",
         "advanced cataract with marked blur of the retinal view"),
    ),
}

_NEGATIONS: dict[str, tuple[str, ...]] = {
    "diabetic retinopathy": ("No diabetic retinopathy.", "No microaneurysms or haemorrhages.",
                             "Without evidence of diabetic retinopathy."),
    "glaucoma": ("No signs of glaucoma.", "Healthy neuroretinal rim, no glaucomatous cupping.",
                 "Optic disc without glaucomatous changes."),
    "hypertensive retinopathy": ("No hypertensive retinopathy.", "Normal arteriolar calibre.",
                                 "No hypertensive changes."),
    "drusen": ("No drusen.", "Macula free of drusen.", "No yellow deposits at the macula."),
    "cataract": ("Clear media.", "No cataract.", "Media clear, good view of the fundus."),
}

_SEVERE_DISC_SWELLING = " and optic disc swelling"
_PROLIFERATIVE = ("proliferative diabetic retinopathy with extensive neovascularisation of the "
                  "disc",
                  "proliferative diabetic retinopathy, severe disease with new vessels on the "
                  "optic disc",
                  "advanced PDR with disc neovascularisation and haemorrhages {where}")



def write_report(findings: Mapping[str, float], rng: np.random.Generator) -> str:
    """An ophthalmology report for the fundus photograph ``render`` makes from the same seed.

    It names the eye, describes each finding with severity and location words (several
    paraphrases each), and negates some of the absent findings.
    """
    findings = checked_findings(findings, FINDINGS, "retina")
    layout = _draw_layout(findings, layout_rng(rng, _LAYOUT_STREAM))
    eye_words, eye_code = _EYE_NAMES[layout.eye]
    cdr = f"{layout.cup_to_disc:.1f}"
    where = pick(rng, (f"in the {layout.lesion_quadrant} quadrant",
                        f"predominantly {layout.lesion_quadrant}",
                        "in the posterior pole", f"most marked {layout.lesion_quadrant}ly"))
    header = pick(rng, (f"Fundus photograph, {eye_words} ({eye_code}): ", f"{eye_code}: ",
                         f"Colour fundus photo of the {eye_words}. ", ""))
    if not findings:
        return header + pick(rng, _NORMAL_TEXTS).format(cdr=cdr)

    sentences = []
    for name in FINDINGS:
        if name not in findings:
            continue
        severity = findings[name]
        options = _FINDING_TEXTS[name][_BANDS.index(severity_band(severity))]
        if name == "diabetic retinopathy" and severity > 0.85:
            options = _PROLIFERATIVE
        text = pick(rng, options).format(cdr=cdr, where=where)
        if name == "hypertensive retinopathy" and severity > 0.75:
            text += _SEVERE_DISC_SWELLING
        sentences.append(text[0].upper() + text[1:] + ".")
    absent = [name for name in FINDINGS if name not in findings]
    for name in rng.permutation(absent)[:int(rng.integers(0, 3))]:
        sentences.append(pick(rng, _NEGATIONS[str(name)]))
    body = " ".join(sentences)
    if rng.random() < 0.4:
        body = "Findings: " + body
    return header + body

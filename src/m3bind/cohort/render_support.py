"""Helpers shared by the cohort renderers: random streams, the findings check, pixel grids.

The renderer contract hands ``render(findings, rng)`` and ``write_report(findings, rng)``
nothing but a numpy ``Generator``. A few facts must nevertheless agree between a study and
its report: which eye a fundus photograph shows, which leads of an ECG carry ST elevation,
the heart rate an ECG machine prints. Those facts are drawn from a *layout* stream that is
derived from the generator's seed, not from its current state, so image and report agree
whether the caller passes one Generator to both functions (in either order) or two
Generators built from the same seed.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from PIL import Image


def checked_findings(findings: Mapping[str, float], known: tuple[str, ...],
                     modality: str) -> dict[str, float]:
    """``findings`` as a plain dict after checking names and severities.

    Raises ``ValueError`` for a label the modality does not know or a severity outside
    (0, 1]: both are programming errors of the caller, not bad user data.
    """
    checked = {}
    for name, severity in findings.items():
        if name not in known:
            raise ValueError(f"{modality} has no finding '{name}'; known: {', '.join(known)}")
        severity = float(severity)
        if not 0.0 < severity <= 1.0:
            raise ValueError(f"{modality} finding '{name}' has severity {severity}, "
                             "expected a value in (0, 1]")
        checked[name] = severity
    return checked


def layout_rng(rng: np.random.Generator, stream: int) -> np.random.Generator:
    """A generator that depends only on ``rng``'s seed and on ``stream``, never on its state.

    ``stream`` separates unrelated uses (each renderer module takes its own number), so two
    modalities rendered from the same seed do not share their layout draws.
    """
    seed_seq = rng.bit_generator.seed_seq
    if not isinstance(seed_seq, np.random.SeedSequence):
        # A custom seed sequence cannot be re-derived; fall back to the state, which still
        # keeps each call deterministic for a given generator state.
        return np.random.default_rng(rng.integers(0, 2**63))
    derived = np.random.SeedSequence(seed_seq.entropy,
                                     spawn_key=(*seed_seq.spawn_key, 0x5EED, stream),
                                     pool_size=seed_seq.pool_size)
    return np.random.default_rng(derived)


def independent_streams(rng: np.random.Generator, count: int) -> list[np.random.Generator]:
    """``count`` generators seeded from ``rng``'s next draws.

    Renderers draw anatomy, findings and acquisition noise from separate streams so that the
    same seed gives the same patient anatomy whatever findings are added: a study with a
    finding is then the normal study plus that finding, which keeps both the cohort and the
    tests (paired comparisons) interpretable.
    """
    seeds = rng.integers(0, 2**63, size=count)
    return [np.random.default_rng(int(seed)) for seed in seeds]


def pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column coordinates (float32) of a ``size`` x ``size`` image."""
    yy, xx = np.mgrid[0:size, 0:size]
    return yy.astype(np.float32), xx.astype(np.float32)


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """A ``size`` x ``size`` float32 random field of roughly unit scale that varies over about
    ``size / cells`` pixels: bicubic upsampling of ``cells`` x ``cells`` white noise."""
    coarse = rng.standard_normal((cells, cells), dtype=np.float32)
    # Pillow's bicubic resize is an order of magnitude faster than scipy.ndimage.zoom here.
    return np.asarray(Image.fromarray(coarse, mode="F").resize((size, size), Image.BICUBIC))

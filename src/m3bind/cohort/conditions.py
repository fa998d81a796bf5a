"""Who the synthetic patients are: latent conditions, how they show in each modality, and splits.

A patient carries *latent* cross-modal conditions (cardiomegaly, pleural effusion, lung nodule,
pericardial effusion), each with one severity. A study of a modality shows the labels those
conditions map to (``CONCEPT_MAP``) plus that modality's other findings, drawn per study.

Patients fall into disjoint groups: one group per modality (each split train/val/test by
patient) and a *paired* group whose patients get an X-ray, a CT and an ECG rendered from the same
latent conditions. The paired group is never trained on: its patients are split into a
validation part (for every choice made while tuning) and a test part (evaluated once per
reported run), so cross-modal retrieval on it is zero-shot.

Evaluation studies are cheap to render and embed, so the test splits and the paired group are
sized on their own (``evaluation_sizes``) and do not take patients from the training splits.

Everything here is drawn in the parent process from one generator seeded by the cohort seed, so
the plan does not depend on how many workers later render it.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from m3bind.cohort.render_support import layout_rng

# The position of a modality in this tuple enters its studies' seeds: never reorder it.
MODALITY_ORDER: tuple[str, ...] = ("xray", "ct", "retina", "pathology", "ecg")
PAIRED_GROUP = "paired"
PAIRED_MODALITIES: tuple[str, ...] = ("xray", "ct", "ecg")
# Seed slot of the paired group: after the modalities, so it never collides with theirs.
PAIRED_SEED_INDEX = len(MODALITY_ORDER)
_PLAN_STREAM = 1_000_003  # seed slot of the planning generator, far from any modality index

# Latent cross-modal concept -> the label it shows as in each modality that can see it.
CONCEPT_MAP: dict[str, dict[str, str]] = {
    "cardiomegaly": {"xray": "cardiomegaly", "ct": "cardiomegaly", "ecg": "left ventricular hypertrophy"},
    "pleural effusion": {"xray": "pleural effusion", "ct": "pleural effusion"},
    "lung nodule": {"xray": "lung nodule", "ct": "lung nodule"},
    "pericardial effusion": {"ct": "pericardial effusion", "ecg": "low qrs voltage"},
}

# Findings that cannot coexist in one study (a tumour is one histological type; sinus
# bradycardia needs sinus rhythm, which atrial fibrillation replaces).
EXCLUSIVE_FINDINGS: dict[str, tuple[tuple[str, str], ...]] = {
    "pathology": (("adenocarcinoma", "squamous cell carcinoma"),),
    "ecg": (("atrial fibrillation", "sinus bradycardia"),),
}

# Share of patients per group. Unequal on purpose: adaptive modality balancing needs imbalance.
GROUP_FRACTIONS: dict[str, float] = {
    "xray": 0.30, "ecg": 0.18, "pathology": 0.14, "retina": 0.12, "ct": 0.12, PAIRED_GROUP: 0.14,
}
SPLIT_FRACTIONS: dict[str, float] = {"train": 0.7, "val": 0.1, "test": 0.2}
# Evaluation sizes, as shares of n_patients (the knob that sets the training sizes): every
# modality's test split and the paired group (val + test). At 2000 patients: 250 test studies
# per modality and 640 paired patients (128 val, 512 test), enough to read a difference of a
# few points (the training splits keep the sizes GROUP_FRACTIONS x SPLIT_FRACTIONS give).
TEST_PATIENTS_SHARE = 0.125
# Every choice is made on validation, so it is sized like an evaluation split too: at 2000
# patients at least 100 validation studies per modality (the training share alone gives 24-60).
VAL_PATIENTS_SHARE = 0.05
PAIRED_PATIENTS_SHARE = 0.32
PAIRED_SPLIT_FRACTIONS: dict[str, float] = {"val": 0.2, "test": 0.8}

# With five findings per modality at this rate, about 0.81**5 = 35 % of studies are normal.
FINDING_PREVALENCE = 0.19
# The paired group is enriched in cross-modal concepts so that retrieval has shared content.
PAIRED_CONCEPT_PREVALENCE = 0.35
# Per-study (non-concept) findings are only added while a study has fewer than this many.
MAX_FINDINGS_FROM_STUDY_DRAWS = 2
SEVERITY_RANGE = (0.15, 1.0)

# layout_rng stream of the chest layout. X-ray and CT share it on purpose: a paired patient's
# radiograph and CT (rendered from one seed) then put an effusion or nodule on the same side.
CHEST_LAYOUT_STREAM = 1

SIDES = ("right", "left")
ZONES = ("upper", "lower")


@dataclass(frozen=True)
class Study:
    """One study to render: which patient, modality and findings, and where it goes."""

    patient_id: str
    modality: str
    group: str                     # the modality name, or "paired"
    split: str
    ordinal: int                   # the patient's index inside its group; seeds the renderers
    findings: Mapping[str, float]  # label -> severity in (0, 1]; {} for a normal study
    concepts: tuple[str, ...]      # latent concepts of the patient that this modality can show

    @property
    def seed_index(self) -> int:
        """The group's slot in the study seed (paired studies share one slot across modalities)."""
        return PAIRED_SEED_INDEX if self.group == PAIRED_GROUP else MODALITY_ORDER.index(self.modality)


@dataclass(frozen=True)
class CohortPlan:
    """Every study of the cohort, in a fixed order, before anything is rendered."""

    seed: int
    n_patients: int
    studies: tuple[Study, ...]
    group_sizes: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ChestLayout:
    """Where a patient's chest findings sit (shared by the X-ray and CT renderers and reports).

    :func:`chest_layout` draws it from the generator's *seed*, not its state, so the renderer
    and the report writer agree on every side and lobe, and so do a paired patient's X-ray and
    CT, which the cohort renders from one seed.
    """

    effusion_side: str          # "right", "left" or "bilateral"
    nodule_side: str
    nodule_zone: str            # "upper" or "lower"
    nodule_offset: tuple[float, float]  # (lateral, vertical) position inside the zone, each in [0, 1]
    consolidation_side: str
    consolidation_zone: str
    pneumothorax_side: str

    def effusion_sides(self) -> tuple[str, ...]:
        return SIDES if self.effusion_side == "bilateral" else (self.effusion_side,)


def chest_layout(rng: np.random.Generator) -> ChestLayout:
    """The finding locations of the study seeded like ``rng`` (``rng``'s state is not touched)."""
    u = layout_rng(rng, CHEST_LAYOUT_STREAM).random(8)
    effusion = "bilateral" if u[0] < 0.2 else ("right" if u[0] < 0.6 else "left")
    return ChestLayout(
        effusion_side=effusion,
        nodule_side=SIDES[int(u[1] < 0.5)],
        nodule_zone=ZONES[int(u[2] < 0.45)],
        nodule_offset=(float(u[3]), float(u[4])),
        consolidation_side=SIDES[int(u[5] < 0.45)],
        consolidation_zone=ZONES[int(u[6] < 0.6)],
        pneumothorax_side=SIDES[int(u[7] < 0.5)],
    )


def nodule_diameter_mm(severity: float) -> float:
    """Nodule size for a severity: 6 mm (barely visible) to 28 mm (just under a 'mass')."""
    return round(6.0 + 22.0 * float(severity), 1)


def concept_labels(modality: str) -> dict[str, str]:
    """Concept -> label for the concepts this modality can show."""
    return {concept: labels[modality] for concept, labels in CONCEPT_MAP.items() if modality in labels}


def patient_id(number: int) -> str:
    """The cohort-wide id of patient ``number``, e.g. 123 -> 'P000123'."""
    return f"P{number:06d}"


def allocate(total: int, fractions: Mapping[str, float]) -> dict[str, int]:
    """Split ``total`` into integer parts proportional to ``fractions`` (largest remainder).

    Parts always sum to ``total``; ties go to the key listed first.
    """
    weights = np.array(list(fractions.values()), dtype=float)
    exact = total * weights / weights.sum()
    counts = np.floor(exact).astype(int)
    order = sorted(range(len(exact)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: total - int(counts.sum())]:
        counts[i] += 1
    return dict(zip(fractions, (int(c) for c in counts)))


def evaluation_sizes(n_patients: int, test_patients: int | None = None,
                     paired_patients: int | None = None) -> tuple[int, dict[str, int]]:
    """(test patients per modality, paired patients per split) for a cohort of ``n_patients``;
    explicit ``test_patients`` / ``paired_patients`` override the shares. The paired group gets
    at least one validation and one test patient."""
    test = max(1, round(TEST_PATIENTS_SHARE * n_patients)) if test_patients is None else test_patients
    paired = max(2, round(PAIRED_PATIENTS_SHARE * n_patients)) if paired_patients is None else paired_patients
    if test < 1 or paired < 2:
        raise ValueError(f"need at least 1 test patient per modality and 2 paired patients (one val, one "
                         f"test); got {test} and {paired}")
    paired_splits = allocate(paired, PAIRED_SPLIT_FRACTIONS)
    if paired_splits["val"] == 0:
        paired_splits = {"val": 1, "test": paired - 1}
    return test, paired_splits


def split_sizes(n: int) -> dict[str, int]:
    """Train/val/test sizes for a group of ``n`` patients; val and test get at least one when n >= 3."""
    sizes = allocate(n, SPLIT_FRACTIONS)
    for name in ("test", "val"):
        if n >= 3 and sizes[name] == 0:
            sizes[name] = 1
            sizes["train"] -= 1
    return sizes


def _draw_severity(rng: np.random.Generator) -> float:
    # Two decimals: the value written to the manifest is exactly the one that was rendered.
    return round(float(rng.uniform(*SEVERITY_RANGE)), 2)


def _draw_concepts(rng: np.random.Generator, prevalence: float) -> dict[str, float]:
    present = rng.random(len(CONCEPT_MAP)) < prevalence
    severities = [_draw_severity(rng) for _ in CONCEPT_MAP]
    return {c: s for c, p, s in zip(CONCEPT_MAP, present, severities) if p}


def draw_study_findings(modality: str, vocabulary: Sequence[str], concepts: Mapping[str, float],
                        rng: np.random.Generator) -> dict[str, float]:
    """The findings of one study: those of the patient's visible concepts, then per-study draws.

    Consumes a fixed amount of ``rng`` per call, so one study's findings never shift another's.
    """
    shown = concept_labels(modality)
    findings = {shown[c]: s for c, s in concepts.items() if c in shown}
    own = [label for label in vocabulary if label not in shown.values()]
    present = rng.random(len(own)) < FINDING_PREVALENCE
    severities = [_draw_severity(rng) for _ in own]
    order = rng.permutation(len(own))  # which per-study finding wins when the cap is reached
    for i in order:
        if present[i] and len(findings) < MAX_FINDINGS_FROM_STUDY_DRAWS and _compatible(modality, own[i], findings):
            findings[own[i]] = severities[i]
    return {label: findings[label] for label in vocabulary if label in findings}  # vocabulary order


def _compatible(modality: str, label: str, findings: Mapping[str, float]) -> bool:
    for a, b in EXCLUSIVE_FINDINGS.get(modality, ()):
        if (label == a and b in findings) or (label == b and a in findings):
            return False
    return True


def plan_cohort(n_patients: int, seed: int, vocabularies: Mapping[str, Sequence[str]], *,
                test_patients: int | None = None, paired_patients: int | None = None) -> CohortPlan:
    """Draw every patient's group, split, latent conditions and study findings.

    ``vocabularies``: modality -> its renderer's FINDINGS. ``n_patients`` sets the training and
    validation splits (GROUP_FRACTIONS x SPLIT_FRACTIONS, as if the test splits and the paired
    group were carved out of it; validation is at least VAL_PATIENTS_SHARE x n_patients); the test
    splits and the paired group are sized by :func:`evaluation_sizes`. Patient ids are P000000... in a random order across groups, so an
    id says nothing about the group.
    """
    if n_patients < len(GROUP_FRACTIONS):
        raise ValueError(f"n_patients must be at least {len(GROUP_FRACTIONS)} (one per group), got {n_patients}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, _PLAN_STREAM]))
    test, paired_splits = evaluation_sizes(n_patients, test_patients, paired_patients)
    splits_by_group: dict[str, dict[str, int]] = {}
    for group, share in allocate(n_patients, GROUP_FRACTIONS).items():
        if group == PAIRED_GROUP:
            splits_by_group[group] = dict(paired_splits)
        else:
            sizes = split_sizes(share)
            val = max(sizes["val"], round(VAL_PATIENTS_SHARE * n_patients))
            splits_by_group[group] = {"train": sizes["train"], "val": val, "test": test}
    group_sizes = {group: sum(sizes.values()) for group, sizes in splits_by_group.items()}
    total = sum(group_sizes.values())
    numbers = rng.permutation(total)
    studies: list[Study] = []
    start = 0
    for group, size in group_sizes.items():
        members = sorted(int(n) for n in numbers[start:start + size])
        start += size
        splits = _split_labels(splits_by_group[group], rng)
        modalities = PAIRED_MODALITIES if group == PAIRED_GROUP else (group,)
        prevalence = PAIRED_CONCEPT_PREVALENCE if group == PAIRED_GROUP else FINDING_PREVALENCE
        for ordinal, (number, split) in enumerate(zip(members, splits)):
            concepts = _draw_concepts(rng, prevalence)
            for modality in modalities:
                findings = draw_study_findings(modality, vocabularies[modality], concepts, rng)
                visible = tuple(c for c in concepts if c in concept_labels(modality))
                studies.append(Study(patient_id(number), modality, group, split, ordinal, findings, visible))
    return CohortPlan(seed, n_patients, tuple(studies), group_sizes)


def _split_labels(sizes: Mapping[str, int], rng: np.random.Generator) -> list[str]:
    """Split names for a group's patients listed by id, in random order."""
    labels = [name for name, count in sizes.items() for _ in range(count)]
    return [labels[i] for i in rng.permutation(len(labels))]

"""An alternative report vocabulary: the same findings in wording the built-in cohort's reports
and the shipped prompt sets never use.

A cohort written with it (``generate_cohort(..., report_vocabulary="alternative")``) checks a
text encoder on phrasing it never saw in training, the way a new hospital's reports would. Two
disjoint lists per class: ``REPORT_PHRASES`` build the reports, ``PROMPT_PHRASES`` are the class
descriptions of the matching zero-shot prompt set (see :func:`prompt_classes`), so classifying
such a report is not string matching either.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from m3bind.cohort.language import assemble_report, capitalize, pick

# modality -> class -> phrases (noun phrases; a severity word may be put in front)
REPORT_PHRASES: dict[str, dict[str, tuple[str, ...]]] = {
    "xray": {
        "normal": ("unremarkable frontal chest film", "no radiographic abnormality of the thorax"),
        "cardiomegaly": ("widened heart shadow", "broad mediastinal heart outline"),
        "pleural effusion": ("hydrothorax", "meniscus-shaped basal liquid collection"),
        "lung nodule": ("coin lesion", "discrete round parenchymal spot"),
        "consolidation": ("lobar infiltrate", "pneumonic airspace filling"),
        "pneumothorax": ("free intrathoracic air", "partial lung collapse with an air rim"),
    },
    "ct": {
        "normal": ("unremarkable thoracic tomogram", "no tomographic abnormality"),
        "cardiomegaly": ("dilated cardiac chambers", "bulky heart on cross-section"),
        "pleural effusion": ("dependent hydrothorax", "crescentic posterior liquid layer"),
        "lung nodule": ("solid parenchymal spot", "rounded intrapulmonary lesion"),
        "emphysema": ("bullous parenchymal destruction", "hyperlucent low-attenuation airspaces"),
        "pericardial effusion": ("liquid around the heart", "fluid-distended pericardial sac"),
    },
    "retina": {
        "normal": ("unremarkable fundus", "no retinal abnormality"),
        "diabetic retinopathy": ("diabetic microvascular retinal damage", "dot-blot bleeds with hard exudate"),
        "glaucoma": ("excavated nerve head", "enlarged cup-to-disc proportion"),
        "hypertensive retinopathy": ("arteriolar narrowing with crossing nicking", "copper-wire arterioles"),
        "drusen": ("yellow sub-retinal deposits", "macular flecks"),
        "cataract": ("lens opacification", "clouded crystalline lens"),
    },
    "pathology": {
        "normal": ("unremarkable tissue", "no histological abnormality"),
        "adenocarcinoma": ("malignant gland-forming epithelium", "invasive glandular malignancy"),
        "squamous cell carcinoma": ("keratinising malignant epithelium", "invasive squamous malignancy"),
        "inflammation": ("dense leukocytic infiltrate", "inflammatory cell influx"),
        "necrosis": ("dead tissue with karyorrhexis", "coagulative cell death"),
        "fibrosis": ("collagen scarring", "dense fibrous replacement"),
    },
    "ecg": {
        "normal": ("unremarkable tracing", "no electrocardiographic abnormality"),
        "atrial fibrillation": ("chaotic atrial activity", "erratic ventricular timing"),
        "left ventricular hypertrophy": ("tall precordial complexes", "increased left ventricular mass pattern"),
        "sinus bradycardia": ("slow regular rhythm", "reduced sinus rate"),
        "st elevation": ("raised ST segments", "injury current"),
        "low qrs voltage": ("small complexes throughout", "reduced ventricular amplitudes"),
    },
}

PROMPT_PHRASES: dict[str, dict[str, tuple[str, ...]]] = {
    "xray": {
        "normal": ("clear chest film", "thorax without radiographic disease"),
        "cardiomegaly": ("large heart shadow", "expanded cardiac outline"),
        "pleural effusion": ("liquid in the chest cavity", "basal hydrothorax"),
        "lung nodule": ("small round lung lesion", "solitary coin lesion"),
        "consolidation": ("pneumonic infiltrate", "airless lobe"),
        "pneumothorax": ("air around the lung", "collapsed lung"),
    },
    "ct": {
        "normal": ("tomogram without disease", "clear thoracic cross-sections"),
        "cardiomegaly": ("large heart on cross-section", "dilated heart"),
        "pleural effusion": ("posterior liquid layer", "hydrothorax on tomography"),
        "lung nodule": ("round lesion in the lung", "solid pulmonary spot"),
        "emphysema": ("destroyed alveolar walls", "low-attenuation bullae"),
        "pericardial effusion": ("liquid in the pericardial sac", "watery rim about the heart"),
    },
    "retina": {
        "normal": ("disease-free eye ground", "retina without disease"),
        "diabetic retinopathy": ("diabetic retinal damage", "retinal bleeds from diabetes"),
        "glaucoma": ("excavated optic nerve head", "large cup in the nerve head"),
        "hypertensive retinopathy": ("retinal damage from high blood pressure", "narrowed nicked arterioles"),
        "drusen": ("yellow macular deposits", "sub-retinal flecks"),
        "cataract": ("opaque lens", "cloudy lens"),
    },
    "pathology": {
        "normal": ("healthy tissue", "tissue without disease"),
        "adenocarcinoma": ("gland-forming cancer", "malignant glands"),
        "squamous cell carcinoma": ("keratinising cancer", "squamous cancer"),
        "inflammation": ("leukocytic influx", "inflamed tissue"),
        "necrosis": ("dead tissue", "cell death"),
        "fibrosis": ("scarred tissue", "collagen scar"),
    },
    "ecg": {
        "normal": ("healthy tracing", "tracing without disease"),
        "atrial fibrillation": ("chaotic atrial rhythm", "irregular rhythm without organised atrial activity"),
        "left ventricular hypertrophy": ("thick left ventricle pattern", "tall precordial voltages"),
        "sinus bradycardia": ("slow heart rate", "slow regular beat"),
        "st elevation": ("raised ST segment", "acute injury current"),
        "low qrs voltage": ("small ventricular complexes", "reduced complex amplitudes"),
    },
}

SEVERITY_WORDS = {"mild": ("minor", "faint"), "moderate": ("intermediate", "definite"), "severe": ("gross", "pronounced")}
ABSENCE = ("Absent: {}.", "Not seen: {}.", "{} is absent.")


def _severity(severity: float, rng: np.random.Generator) -> str:
    band = "mild" if severity < 0.4 else "moderate" if severity < 0.7 else "severe"
    return pick(rng, SEVERITY_WORDS[band])


def alternative_report(modality: str, vocabulary: tuple[str, ...], findings: Mapping[str, float],
                       rng: np.random.Generator) -> str:
    """A '<FINDINGS> ... <IMPRESSION> ...' report of ``findings`` in the alternative vocabulary."""
    phrases = REPORT_PHRASES[modality]
    present = [label for label in vocabulary if label in findings]
    body, impression = [], []
    for label in present:
        phrase = pick(rng, phrases[label])
        body.append(capitalize(f"{_severity(findings[label], rng)} {phrase}."))
        impression.append(capitalize(f"{phrase}."))
    for label in vocabulary:
        if label not in findings and rng.random() < 0.5:
            body.append(capitalize(pick(rng, ABSENCE).format(pick(rng, phrases[label]))))
    if not present:
        statement = capitalize(pick(rng, phrases["normal"]) + ".")
        body.insert(0, statement)
        impression.append(statement)
    return assemble_report(body, impression, rng)


def prompt_classes(modality: str) -> dict[str, list[str]]:
    """The class descriptions of the alternative vocabulary's zero-shot prompt set."""
    return {label: list(phrases) for label, phrases in PROMPT_PHRASES[modality].items()}

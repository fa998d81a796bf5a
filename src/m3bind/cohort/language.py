"""Phrases shared by the synthetic reports, and the chest report that X-ray and CT both write.

Reports are assembled from template sentences. Every renderer takes its severity bands and
random picks from here; the chest X-ray and CT reports also share severity words, side/lobe
words, negation templates, the cardiomegaly and pleural effusion phrases and the final
"Findings: ... Impression: ..." layout. All randomness comes from the caller's generator.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from m3bind.cohort.conditions import chest_layout
from m3bind.cohort.render_support import checked_findings

# Severity bands: (0, 0.4) mild, [0.4, 0.7) moderate, [0.7, 1] severe.
MILD_BELOW = 0.4
MODERATE_BELOW = 0.7

DEGREE_WORDS = {"mild": ("mild", "slight"), "moderate": ("moderate",), "severe": ("severe", "marked")}
ADVERB_WORDS = {"mild": ("mildly", "slightly"), "moderate": ("moderately",), "severe": ("severely", "markedly")}
SIZE_WORDS = {"mild": ("small",), "moderate": ("moderate", "moderate-sized"), "severe": ("large",)}

NEGATION_TEMPLATES = (
    "No {x}.",
    "There is no {x}.",
    "No evidence of {x}.",
    "No {x} is seen.",
    "Without evidence of {x}.",
    "Negative for {x}.",
)


def severity_band(severity: float) -> str:
    """'mild', 'moderate' or 'severe' for a severity in (0, 1]."""
    if severity < MILD_BELOW:
        return "mild"
    if severity < MODERATE_BELOW:
        return "moderate"
    return "severe"


def pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    """One option, uniformly."""
    return options[int(rng.integers(len(options)))]


def degree_word(severity: float, rng: np.random.Generator) -> str:
    """An adjective of degree: mild/slight, moderate, severe/marked."""
    return pick(rng, DEGREE_WORDS[severity_band(severity)])


def degree_adverb(severity: float, rng: np.random.Generator) -> str:
    """An adverb of degree: mildly, moderately, markedly..."""
    return pick(rng, ADVERB_WORDS[severity_band(severity)])


def size_word(severity: float, rng: np.random.Generator) -> str:
    """A size adjective for collections: small, moderate, large."""
    return pick(rng, SIZE_WORDS[severity_band(severity)])


def lobe_phrase(side: str, zone: str, rng: np.random.Generator, radiograph: bool = False) -> str:
    """Where in the lungs, e.g. 'right upper lobe', 'left lung base', 'left lower zone'.

    Radiographs cannot see lobes, so radiologists there say 'zone' as often as 'lobe'.
    """
    if zone == "upper":
        options = [f"{side} upper lobe", f"{side} upper lung"]
        if radiograph:
            options += [f"{side} upper zone", f"{side} upper lung field"]
    else:
        options = [f"{side} lower lobe", f"{side} lung base"]
        if radiograph:
            options += [f"{side} lower zone", f"{side} base"]
    return pick(rng, options)


def negation(rng: np.random.Generator, phrase: str) -> str:
    """A sentence saying ``phrase`` is absent."""
    return capitalize(pick(rng, NEGATION_TEMPLATES).format(x=phrase))


def negations(absent_phrases: Sequence[str], rng: np.random.Generator, keep_probability: float = 0.6) -> list[str]:
    """Negative sentences for some of the absent findings (radiologists do not list them all).

    Sometimes two negatives are merged ("No pleural effusion or pneumothorax.").
    """
    keep = [p for p, u in zip(absent_phrases, rng.random(len(absent_phrases))) if u < keep_probability]
    sentences: list[str] = []
    while keep:
        mergeable = len(keep) >= 2 and " or " not in keep[0] + keep[1]  # avoid "no a or b or c"
        if mergeable and rng.random() < 0.4:
            sentences.append(capitalize(f"no {keep[0]} or {keep[1]}."))
            keep = keep[2:]
        else:
            sentences.append(negation(rng, keep[0]))
            keep = keep[1:]
    return sentences


def capitalize(sentence: str) -> str:
    """Upper-case the first letter only (str.capitalize would lower-case the rest)."""
    return sentence[:1].upper() + sentence[1:]


def assemble_report(findings: Sequence[str], impression: Sequence[str], rng: np.random.Generator,
                    header: str | None = None) -> str:
    """The radiology layout, one line: '[header] Findings: ... Impression: ...'.

    Section names come in upper or title case, as they do in real archives.
    """
    upper = rng.random() < 0.5
    label_findings, label_impression = ("FINDINGS:", "IMPRESSION:") if upper else ("Findings:", "Impression:")
    parts = []
    if header:
        parts.append(header)
    parts.append(f"{label_findings} {' '.join(findings)}")
    parts.append(f"{label_impression} {' '.join(impression)}")
    return " ".join(parts)


@dataclass(frozen=True)
class ReportStyle:
    """The modality-specific wording a report is composed from."""

    headers: Sequence[str | None]            # optional first line; None = no header
    absent_nouns: Mapping[str, Sequence[str]]  # finding -> nouns to negate it with
    normal_statements: Sequence[Sequence[str]]  # groups of interchangeable "all is normal" sentences
    normal_impressions: Sequence[str]


def compose_report(positives: Sequence[tuple[str, str]], absent: Sequence[str], style: ReportStyle,
                   rng: np.random.Generator) -> str:
    """A whole report from the present findings' (sentence, impression) pairs and the absent labels.

    Present findings come first in random order, followed by negatives for some absent findings.
    A normal study says so in several ways: organ-by-organ normal statements, negatives, and
    one of several normal impressions.
    """
    negatives = negations([pick(rng, style.absent_nouns[label]) for label in absent], rng)
    if positives:
        order = rng.permutation(len(positives))
        body = [positives[i][0] for i in order] + negatives
        impression = [positives[i][1] for i in order]
    else:
        statements = [pick(rng, group) for group in style.normal_statements]
        body = [s for s in statements if rng.random() < 0.7] + negatives
        impression = [pick(rng, style.normal_impressions)]
        body = body or list(impression)
    return assemble_report(body, impression, rng, header=pick(rng, style.headers))


def chest_report(findings: Mapping[str, float], vocabulary: Sequence[str], modality: str,
                 describe: Callable, style: ReportStyle, rng: np.random.Generator) -> str:
    """The X-ray and CT report: ``describe(label, severity, layout, rng)`` gives each present
    finding's (sentence, impression), capitalised here; the layout is drawn from the seed exactly
    as the renderer draws it, so sides and lobes in the text agree with the image."""
    findings = checked_findings(findings, vocabulary, modality)
    layout = chest_layout(rng)
    positives = []
    for label in vocabulary:
        if label in findings:
            sentence, impression = describe(label, findings[label], layout, rng)
            positives.append((capitalize(sentence), capitalize(impression)))
    absent = [label for label in vocabulary if label not in findings]
    return compose_report(positives, absent, style, rng)


# --- phrases both chest modalities write -----------------------------------------------------

CARDIOMEGALY_NOUNS = ("cardiomegaly", "cardiac enlargement")  # to negate it with


def cardiomegaly_sentences(degree: str, adverb: str) -> tuple[str, ...]:
    """Cardiomegaly sentences any chest study supports; each modality adds its own to pick from."""
    return (f"{degree} cardiomegaly.", f"The heart is {adverb} enlarged.")


def cardiomegaly_impression(degree: str, adverb: str, rng: np.random.Generator) -> str:
    return pick(rng, (f"{degree} cardiomegaly.", f"{adverb} enlarged heart."))


def effusion_noun(side: str) -> str:
    """'pleural effusions' on both sides, else 'pleural effusion'."""
    return "pleural effusions" if side == "bilateral" else "pleural effusion"


def effusion_statement(size: str, side: str) -> str:
    """'There is a small left pleural effusion.' / 'There are large bilateral pleural effusions.'"""
    if side == "bilateral":
        return f"There are {size} bilateral {effusion_noun(side)}."
    return f"There is a {size} {side} {effusion_noun(side)}."


def effusion_impression(size: str, side: str) -> str:
    return f"{size} {side} {effusion_noun(side)}."

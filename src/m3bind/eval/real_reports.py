"""A check on real clinical language: the Indiana University chest X-ray reports.

The ``torchxrayvision`` package (1.5.7) ships ``data/NLMCXR_reports.tgz``, 3,955 de-identified
radiology reports (FINDINGS / IMPRESSION sections, with MeSH major findings) of the Indiana
University chest X-ray collection, under CC BY-NC-ND 4.0. It is read from the installed package
at evaluation time and never copied. Reports whose MeSH major findings name exactly one of the
X-ray classes (other findings may be present) keep that class; each report is then classified
by its text embedding against the X-ray class prototypes, with the bound X-ray text encoder and
with the final model's student, and the two encoders' agreement on every report is reported.
This is the one place where the text side meets real language instead of synthetic reports.
"""
from __future__ import annotations

import importlib.util
import tarfile
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from m3bind.data.manifest import is_normal_label, label_key
from m3bind.eval.bootstrap import Bootstrap, mean_statistic
from m3bind.eval.prompts import PromptSet, expert_prompts
from m3bind.eval.zeroshot import PrototypeRule, ZeroShotScores, class_prototypes

ARCHIVE = ("data", "NLMCXR_reports.tgz")
LICENCE = "CC BY-NC-ND 4.0 (Indiana University chest X-ray collection, via torchxrayvision)"
# MeSH major heading (before the first '/') -> the X-ray class it names.
MESH_CLASSES = {
    "normal": "normal",
    "Cardiomegaly": "cardiomegaly",
    "Pleural Effusion": "pleural effusion",
    "Nodule": "lung nodule",
    "Consolidation": "consolidation",
    "Pneumonia": "consolidation",
    "Pneumothorax": "pneumothorax",
}


def report_archive() -> Path | None:
    """The installed package's report archive (found without importing the package), or None."""
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*ARCHIVE)
    return path if path.is_file() else None


# The names datasets give these MeSH findings (ChestX-ray14, CheXpert, MIMIC-CXR label sets).
MESH_ALIASES = {"Pleural Effusion": ("effusion",), "Nodule": ("lung nodule", "pulmonary nodule"),
                "Pulmonary Atelectasis": ("atelectasis",), "Pulmonary Edema": ("edema",),
                "Pulmonary Emphysema": ("emphysema",), "Pulmonary Fibrosis": ("fibrosis",),
                "Hernia, Hiatal": ("hernia",), "Infiltrate": ("infiltration",),
                "Fractures, Bone": ("fracture",), "Airspace Disease": ("lung opacity",),
                "Opacity": ("lung opacity",)}


def _class_of_heading(heading: str, classes: Mapping[str, str]) -> str | None:
    """The class (``classes``: label_key -> spelling) a MeSH major heading names: the class
    spelled like the heading itself first ("Pneumonia" is a user's "pneumonia" class), else the
    class the built-in mapping gives it ("Pneumonia" -> consolidation), else a known alias."""
    for name in (heading, MESH_CLASSES.get(heading), *MESH_ALIASES.get(heading, ())):
        if name is not None and label_key(name) in classes:
            return classes[label_key(name)]
    return None


def read_reports(archive: Path, classes: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """(report text, class) for every report whose MeSH major findings name exactly one of
    ``classes`` (default: the built-in X-ray classes); the class is spelled as in ``classes``."""
    wanted = classes if classes is not None else sorted(set(MESH_CLASSES.values()))
    keyed = {label_key(c): c for c in wanted}
    out = []
    with tarfile.open(archive) as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            if not member.isfile() or not member.name.endswith(".xml"):
                continue
            root = ET.parse(tar.extractfile(member)).getroot()
            headings = {e.text.split("/")[0].strip() for e in root.iter("major") if e.text}
            named = {_class_of_heading(h, keyed) for h in headings} - {None}
            sections = {a.get("Label"): (a.text or "").strip() for a in root.iter("AbstractText")}
            findings, impression = sections.get("FINDINGS", ""), sections.get("IMPRESSION", "")
            if len(named) == 1 and (findings or impression):
                out.append((f"Findings: {findings} Impression: {impression}".strip(), named.pop()))
    return out


@torch.no_grad()
def _scores(view, texts: list[str], labels: list[str], classes: list[str], prompt_set: PromptSet,
            rule: PrototypeRule) -> ZeroShotScores:
    from m3bind.eval.protocol import embed_texts

    prompts = expert_prompts(prompt_set, classes, class_name=rule.class_name)
    prototypes = class_prototypes(view.encode_texts, prompts, renormalise=rule.renormalise)
    text_emb = embed_texts(view.encode_texts, texts)
    targets = np.array([classes.index(label) for label in labels])
    return ZeroShotScores(targets=targets, scores=(text_emb @ prototypes.T).numpy(), classes=classes)


def real_report_check(views: Mapping[str, object], prompt_set: PromptSet, rule: PrototypeRule,
                      bootstrap: Bootstrap, archive: Path | None = None,
                      classes: Sequence[str] | None = None, limit: int | None = None) -> dict:
    """Report -> class zero-shot of each variant's X-ray text side (``views``: variant -> view
    whose ``encode_texts`` is that text encoder), their agreement, and the paired difference.
    ``classes``: the X-ray manifest's classes ("normal" included); only reports naming one of
    them are scored, against those classes alone, so a model is never asked about findings it
    was not trained on (default: the built-in X-ray classes). ``limit``: score at most that many,
    evenly spaced in the archive's order (quick runs)."""
    archive = archive or report_archive()
    if archive is None:
        return {"skipped": "the torchxrayvision package (1.5.7, which ships the reports) is not installed; "
                           "pip install 'm3bind[realtext]'"}
    if not views:
        return {"skipped": "no bound X-ray text encoder to check"}
    reports = read_reports(archive, classes)
    if limit is not None and len(reports) > limit:
        reports = [reports[i * len(reports) // limit] for i in range(limit)]
    texts, labels = [t for t, _ in reports], [c for _, c in reports]
    found = sorted(set(labels), key=lambda c: (not is_normal_label(c), c))
    if len(found) < 2:
        return {"skipped": f"the reports' MeSH findings name {len(found)} of the X-ray classes "
                           f"({', '.join(classes or [])}); classifying needs two"}
    classes = found
    scores = {v: _scores(view, texts, labels, classes, prompt_set, rule) for v, view in views.items()}
    out = {"source": str(archive), "licence": LICENCE, "reports": len(texts),
           "per_class": {c: labels.count(c) for c in classes}, "prototypes": rule.name,
           "variants": {v: {**s.metrics(), **s.intervals(bootstrap)} for v, s in scores.items()}}
    if len(scores) == 2:
        (a, first), (b, second) = scores.items()
        same = (first.scores.argmax(1) == second.scores.argmax(1)).astype(float)
        counts = bootstrap.counts(len(texts))
        out["agreement"] = {"between": [a, b], "share": float(same.mean()), "kappa": _kappa(first, second),
                            "share_ci": bootstrap.interval(mean_statistic(same, counts))}
        diff = first.resampled(counts)["accuracy"] - second.resampled(counts)["accuracy"]
        out["difference"] = {"metric": "accuracy", "a": a, "b": b,
                             "difference": first.metrics()["accuracy"] - second.metrics()["accuracy"],
                             "ci": bootstrap.interval(diff)}
    return out


def _kappa(first: ZeroShotScores, second: ZeroShotScores) -> float:
    from sklearn.metrics import cohen_kappa_score

    return float(cohen_kappa_score(first.scores.argmax(1), second.scores.argmax(1)))

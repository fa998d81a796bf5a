"""The evaluation report: ``report.json`` (validated, documented in ``docs/report-schema.md``),
``report.md`` with tables laid out like the paper's, and PNG figures next to them.

The evaluation runner computes every number; this module only checks the structure, formats and
writes. :func:`write_report` is the entry point.

Validation: the report dict is first made JSON-ready (int keys such as K or shots become strings,
numpy scalars become Python numbers, NaN becomes ``null``), then checked against the pydantic
models below. Structural levels (the report itself, a zero-shot entry) reject unknown keys, so a
misspelt section name fails loudly; metric-level dicts (the leaves) accept extra keys, so the
runner can add numbers without a schema change. Tables only show the documented fields.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from m3bind.errors import M3BindError
from m3bind.eval import plots

MISSING = "–"      # printed for a null (undefined or not measured) number
CHECK = "✓"
AUC_CHANCE = 0.5
FIGURE_TITLES = {
    "fewshot.png": "Few-shot curves (paper Figure 3)",
    "retrieval.png": "Cross-modal retrieval, Recall@K",
    "text_to_image.png": "Text -> image retrieval, Recall@K",
    "embedding_map.png": "2D map of the shared space, before / after binding",
}


class ReportError(M3BindError):
    """A report dict that does not follow the report.json schema; the message names the section."""


# ---------------------------------------------------------------------------------------------
# Schema
# ---------------------------------------------------------------------------------------------

class _Leaf(BaseModel):
    """A dict of numbers: the documented fields are required, extra keys are kept."""
    model_config = ConfigDict(extra="allow")


class _Node(BaseModel):
    """A structural level: unknown keys are an error (a misspelt section would otherwise vanish)."""
    model_config = ConfigDict(extra="forbid")


def _check_k_keys(mapping: Mapping[str, Any], what: str) -> Mapping[str, Any]:
    """K and shot keys must be positive integers written as strings ("1", "5", "10")."""
    for key in mapping:
        if not (key.isdigit() and int(key) > 0):
            raise ValueError(f"{what} keys must be positive integers such as '1', got {key!r}")
    return mapping


class ClassificationScores(_Leaf):
    """:func:`m3bind.eval.metrics.classification_metrics` output (single-label zero-shot)."""
    accuracy: float | None
    f1_macro: float | None
    precision_macro: float | None
    auc_macro: float | None
    aca: float | None
    chance: float | None = None
    majority_rate: float | None = None
    n: int | None = None
    classes: list[str] | None = None


class PresenceScores(_Leaf):
    """:func:`m3bind.eval.metrics.multilabel_metrics` output (CT-RATE style presence prompts)."""
    auc_macro: float | None
    f1_macro: float | None
    accuracy_macro: float | None
    precision_macro: float | None = None
    n: int | None = None


class ZeroShotEntry(_Node):
    """One modality and variant: naive and expert prompt sets, and the presence evaluation."""
    naive: ClassificationScores | None
    expert: ClassificationScores | None
    presence: PresenceScores | None = None
    sampled: ClassificationScores | None = None     # CheXpert 5x200 / GLoRIA-style sampled prompts


class ShotResult(_Leaf):
    """One k of :func:`m3bind.eval.fewshot.linear_probe`: mean / std over seeds."""
    n_train: int
    mean: dict[str, float | None]
    std: dict[str, float | None]
    per_seed: dict[str, list[float | None]] = Field(default_factory=dict)
    short_classes: dict[str, int] = Field(default_factory=dict)

    @field_validator("mean")
    @classmethod
    def _has_accuracy(cls, mean: dict[str, float | None]) -> dict[str, float | None]:
        if "accuracy" not in mean:
            raise ValueError("mean must contain 'accuracy' (the few-shot table shows it)")
        return mean


class FewShotResult(_Leaf):
    """:func:`m3bind.eval.fewshot.linear_probe` output; the bare ``{k: result}`` mapping is accepted
    too and stored wrapped as ``{"shots": {k: result}}``."""
    shots: dict[str, ShotResult]
    classes: list[str] | None = None
    n_test: int | None = None
    seeds: list[int] | None = None

    @model_validator(mode="before")
    @classmethod
    def _wrap_bare_shots(cls, data: Any) -> Any:
        if isinstance(data, dict) and data and "shots" not in data and all(str(k).isdigit() for k in data):
            return {"shots": data}
        return data

    @field_validator("shots")
    @classmethod
    def _shot_keys(cls, shots: dict[str, ShotResult]) -> dict[str, ShotResult]:
        return _check_k_keys(shots, "shots")


class RetrievalScores(_Leaf):
    """:func:`m3bind.eval.retrieval.retrieval_scores` output. Concept precision is optional:
    real paired sets (MIMIC-PAIR) may have no concept labels."""
    recall: dict[str, float | None]
    recall_chance: dict[str, float | None]
    concept_precision: dict[str, float | None] = Field(default_factory=dict)
    concept_chance: float | None = None
    concept_auc: float | None = None
    concept_auc_per_concept: dict[str, float] = Field(default_factory=dict)
    concept_auc_std: float | None = None   # spread over head draws (the unbound baseline)
    head_draws: int | None = None
    queries: int
    gallery: int

    @field_validator("recall", "recall_chance", "concept_precision")
    @classmethod
    def _k_keys(cls, scores: dict[str, float | None]) -> dict[str, float | None]:
        return _check_k_keys(scores, "K")


class TextSpaceScores(_Leaf):
    """How well the bound text encoders agree: mean pairwise cosine and cross-encoder text recall."""
    agreement: float | None
    text_recall: float | None


class AblationRow(_Leaf):
    """One setting of an ablation study (paper Tables 4 and 5).

    ``setting``: flags, e.g. ``{"modalities": ["xray", "ecg"], "amb": true, "seskd": false}``;
    ``zero_shot``: modality -> accuracy, or modality -> {prompt set: accuracy}.
    """
    setting: dict[str, Any]
    retrieval: dict[str, RetrievalScores] = Field(default_factory=dict)
    zero_shot: dict[str, float | None | dict[str, float | None]] = Field(default_factory=dict)

    @field_validator("retrieval")
    @classmethod
    def _pair_names(cls, retrieval: dict[str, RetrievalScores]) -> dict[str, RetrievalScores]:
        for pair in retrieval:
            _split_pair(pair)
        return retrieval


class Report(_Node):
    """The whole report.json. Section order here is the order in report.md."""
    m3bind_version: str
    created: str
    command: str
    seconds: float = Field(ge=0)
    modalities: list[str] = Field(min_length=1)
    variants: dict[str, str] = Field(min_length=1)
    zero_shot: dict[str, dict[str, ZeroShotEntry]]
    few_shot: dict[str, dict[str, FewShotResult]]
    retrieval: dict[str, dict[str, RetrievalScores]]
    text_to_image: dict[str, dict[str, RetrievalScores]]
    text_space: dict[str, TextSpaceScores]
    ablations: dict[str, list[AblationRow]] | None = None
    notes: list[str]

    @field_validator("created")
    @classmethod
    def _iso_time(cls, created: str) -> str:
        try:
            datetime.fromisoformat(created)
        except ValueError:
            raise ValueError(f"created must be an ISO 8601 time such as 2025-01-31T12:00:00, got {created!r}") from None
        return created

    @field_validator("modalities")
    @classmethod
    def _unique_modalities(cls, modalities: list[str]) -> list[str]:
        if len(set(modalities)) != len(modalities):
            raise ValueError(f"modalities must not repeat: {modalities}")
        return modalities

    @model_validator(mode="after")
    def _sections_agree(self) -> "Report":
        """Every modality and variant a section names must be listed in ``modalities`` / ``variants``."""
        modalities, variants = set(self.modalities), set(self.variants)

        def check(section: str, names, known: set[str], kind: str) -> None:
            unknown = [n for n in names if n not in known]
            if unknown:
                listing = "modalities" if kind == "modality" else "variants"
                raise ValueError(f"{section}: {kind} {unknown} not listed in '{listing}' ({sorted(known)})")

        for section, by_modality in (("zero_shot", self.zero_shot), ("few_shot", self.few_shot)):
            check(section, by_modality, modalities, "modality")
            for modality, by_variant in by_modality.items():
                check(f"{section}.{modality}", by_variant, variants, "variant")
        check("retrieval", self.retrieval, variants, "variant")
        for variant, by_pair in self.retrieval.items():
            for pair in by_pair:
                check(f"retrieval.{variant}.{pair}", _split_pair(pair), modalities, "modality")
        check("text_to_image", self.text_to_image, variants, "variant")
        for variant, by_modality in self.text_to_image.items():
            check(f"text_to_image.{variant}", by_modality, modalities, "modality")
        check("text_space", self.text_space, variants, "variant")
        return self


def _split_pair(pair: str) -> tuple[str, str]:
    """'xray->ecg' -> ('xray', 'ecg')."""
    parts = pair.split("->")
    if len(parts) != 2 or not all(p.strip() for p in parts):
        raise ValueError(f"a retrieval pair is named 'query->gallery' (e.g. 'xray->ecg'), got {pair!r}")
    return parts[0].strip(), parts[1].strip()


def to_jsonable(value: Any, where: str = "report") -> Any:
    """A copy of ``value`` that ``json.dump`` writes as documented.

    Int keys (K, shots) become strings, tuples become lists, numpy and torch numbers become Python
    numbers, and NaN / infinity become ``None`` (strict JSON has no NaN; null means undefined).
    """
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if isinstance(key, (bool, np.bool_)) or not isinstance(key, (str, int, np.integer)):
                raise ReportError(f"{where}: key {key!r} must be a string or an integer")
            out[str(key)] = to_jsonable(item, f"{where}.{key}")
        return out
    if isinstance(value, (str, bool, type(None))):
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [to_jsonable(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if hasattr(value, "tolist"):           # numpy arrays and scalars, torch tensors
        return to_jsonable(value.tolist(), where)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, int):
        return value
    raise ReportError(f"{where}: {type(value).__name__} cannot be written to report.json")


def validate_report(report: Mapping[str, Any]) -> Report:
    """Check a report dict against the schema (after :func:`to_jsonable`).

    Raises :class:`ReportError` listing every problem with its place, e.g.
    ``zero_shot: Field required`` or ``few_shot.xray.bound.shots.5.n_train: Field required``.
    """
    try:
        return Report.model_validate(to_jsonable(report))
    except ValidationError as error:
        problems = []
        for item in error.errors():
            place = ".".join(str(part) for part in item["loc"]) or "report"
            message = item["msg"].removeprefix("Value error, ")
            problems.append(f"{place}: {message}")
        raise ReportError("invalid report:\n  " + "\n  ".join(problems)) from None


# ---------------------------------------------------------------------------------------------
# Formatting helpers
# ---------------------------------------------------------------------------------------------

def fmt_number(value: float | None, digits: int = 3) -> str:
    """'0.352' (fixed decimals), or '–' for a null."""
    return MISSING if value is None else f"{value:.{digits}f}"


def fmt_percent(mean: float | None, std: float | None = None, digits: int = 1) -> str:
    """A fraction as a percentage with its std: '85.3 ± 1.2', '85.3' without std, '–' for a null."""
    if mean is None:
        return MISSING
    text = f"{100.0 * mean:.{digits}f}"
    return text if std is None else f"{text} ± {100.0 * std:.{digits}f}"


def fmt_duration(seconds: float) -> str:
    """'42.0 s', '3 min 05 s', '1 h 02 min'."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A GitHub markdown table; '|' inside a cell is escaped so it cannot split the cell."""
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"
    return [line(header), "|" + "---|" * len(header), *(line(r) for r in rows)]


def _k_values(mappings: Sequence[Mapping[str, Any]]) -> list[str]:
    """The K (or shot) keys present in any of ``mappings``, in numeric order."""
    return sorted({k for m in mappings for k in m}, key=int)


def _first(values) -> Any:
    """The first non-None value, or None."""
    return next((v for v in values if v is not None), None)


# ---------------------------------------------------------------------------------------------
# Markdown sections
# ---------------------------------------------------------------------------------------------

def _header_section(report: Report) -> list[str]:
    return [
        "# M3Bind evaluation report",
        "",
        f"- m3bind version: {report.m3bind_version}",
        f"- created: {report.created}",
        f"- command: `{report.command}`",
        f"- run time: {fmt_duration(report.seconds)}",
        f"- modalities: {', '.join(report.modalities)}",
        "",
        "**How to read.** Numbers are fractions in [0, 1] except few-shot accuracies, which are in %. "
        f"`{MISSING}` marks a number that is undefined or was not measured. Tables have a *chance* row where "
        "the chance level is known: "
        "zero-shot accuracy and ACA 1/C for C classes, AUC 0.5, Recall@K = K / gallery size, concept "
        "precision = the expected precision of a random ranking.",
        "",
        "## Compared models",
        "",
        *md_table(["variant", "what it is"], [[name, text] for name, text in report.variants.items()]),
    ]


def _zero_shot_section(report: Report) -> list[str]:
    lines = ["## Zero-shot classification (Table 1 style)", ""]
    if not report.zero_shot:
        return lines + ["_No zero-shot results in this run._"]
    lines += ["Naive prompts (one per class) and expert-knowledge prompt ensembles (FLAIR's "
              "π_naive / π_EK); F1 and precision are macro averages; ACA is the average class accuracy.", ""]
    header = ["variant", "naive acc", "naive F1", "naive prec", "naive AUC",
              "expert acc", "expert F1", "expert prec", "expert AUC", "expert ACA"]
    for modality in _ordered(report.zero_shot, report.modalities):
        entries = _in_variant_order(report.zero_shot[modality], report.variants)
        rows = []
        for variant, entry in entries:
            naive, expert = entry.naive, entry.expert
            rows.append([variant, *_classification_cells(naive, with_aca=False),
                         *_classification_cells(expert, with_aca=True)])
        chance = _first(s.chance for _, e in entries for s in (e.naive, e.expert) if s is not None)
        rows.append(["*chance*", fmt_number(chance), MISSING, MISSING, fmt_number(AUC_CHANCE),
                     fmt_number(chance), MISSING, MISSING, fmt_number(AUC_CHANCE), fmt_number(chance)])
        lines += [f"### {modality}", "", *md_table(header, rows), ""]
        lines += _zero_shot_sizes(entries)
        sampled = [(v, e.sampled) for v, e in entries if e.sampled is not None]
        if sampled:
            lines += [f"Sampled prompts ({modality}, CheXpert 5x200 style: prompts sampled per class from "
                      "attribute combinations or descriptions, embeddings averaged):", ""]
            rows = [[v, fmt_number(c.accuracy), fmt_number(c.f1_macro), fmt_number(c.auc_macro), fmt_number(c.aca)]
                    for v, c in sampled]
            lines += md_table(["variant", "acc", "F1", "AUC", "ACA"], rows) + [""]
        presence = [(v, e.presence) for v, e in entries if e.presence is not None]
        if presence:
            lines += [f"Presence ({modality}, CT-RATE style \"<finding> is present.\" vs \"... is not present.\", "
                      "one yes/no decision per finding, macro averages):", ""]
            rows = [[v, fmt_number(p.auc_macro), fmt_number(p.f1_macro), fmt_number(p.accuracy_macro),
                     fmt_number(p.precision_macro)] for v, p in presence]
            rows.append(["*chance*", fmt_number(AUC_CHANCE), MISSING, MISSING, MISSING])
            lines += md_table(["variant", "macro AUC", "macro F1", "accuracy", "precision"], rows) + [""]
    return lines


def _classification_cells(scores: ClassificationScores | None, with_aca: bool) -> list[str]:
    if scores is None:
        return [MISSING] * (5 if with_aca else 4)
    cells = [fmt_number(scores.accuracy), fmt_number(scores.f1_macro), fmt_number(scores.precision_macro),
             fmt_number(scores.auc_macro)]
    return (cells + [fmt_number(scores.aca)]) if with_aca else cells


def _zero_shot_sizes(entries: list[tuple[str, ZeroShotEntry]]) -> list[str]:
    """One line with the test size, the classes and the always-majority accuracy, where known."""
    scores = [s for _, e in entries for s in (e.naive, e.expert) if s is not None]
    parts = []
    n = _first(s.n for s in scores)
    classes = _first(s.classes for s in scores)
    majority = _first(s.majority_rate for s in scores)
    if n is not None:
        parts.append(f"{n} test studies")
    if classes:
        parts.append(f"{len(classes)} classes ({', '.join(classes)})")
    if majority is not None:
        parts.append(f"always answering the most frequent class scores {fmt_number(majority)}")
    return [f"_{'; '.join(parts)}._", ""] if parts else []


def _few_shot_section(report: Report) -> list[str]:
    lines = ["## Few-shot linear probes (Table 2 style)", ""]
    modalities = [m for m in _ordered(report.few_shot, report.modalities) if report.few_shot[m]]
    if not modalities:
        return lines + ["_No few-shot results in this run._"]
    lines += ["Accuracy in %, mean ± std over seeds, of a logistic-regression probe on frozen image "
              "embeddings trained with k studies per class.", ""]
    for modality in modalities:
        entries = _in_variant_order(report.few_shot[modality], report.variants)
        shots = _k_values([r.shots for _, r in entries])
        rows = [[variant, *(fmt_percent(r.shots[k].mean.get("accuracy"), r.shots[k].std.get("accuracy"))
                            if k in r.shots else MISSING for k in shots)] for variant, r in entries]
        classes = _first(r.classes for _, r in entries)
        if classes:
            rows.append(["*chance*", *[fmt_percent(1.0 / len(classes))] * len(shots)])
        lines += [f"### {modality}", "", *md_table(["variant", *(f"{k}-shot" for k in shots)], rows), ""]
        lines += _few_shot_sizes(entries, shots)
    return lines


def _few_shot_sizes(entries: list[tuple[str, FewShotResult]], shots: list[str]) -> list[str]:
    """Training-set sizes, test size and seeds, and classes that had fewer studies than k."""
    results = [r for _, r in entries]
    sizes = [f"{k}-shot: {_first(r.shots[k].n_train for r in results if k in r.shots)}" for k in shots]
    parts = [f"training studies per seed: {', '.join(sizes)}"]
    n_test = _first(r.n_test for r in results)
    seeds = _first(r.seeds for r in results)
    if n_test is not None:
        parts.append(f"{n_test} test studies")
    if seeds:
        parts.append(f"{len(seeds)} seeds")
    lines = [f"_{'; '.join(parts)}._", ""]
    for k in shots:
        short = _first(r.shots[k].short_classes or None for r in results if k in r.shots)
        if short:
            listed = ", ".join(f"{name} ({count})" for name, count in short.items())
            lines += [f"_{k}-shot: classes with fewer than {k} training studies (all used): {listed}._", ""]
    return lines


def _auc_cell(scores: RetrievalScores) -> str:
    if scores.concept_auc is not None and scores.concept_auc_std is not None:
        return f"{fmt_number(scores.concept_auc)} ± {fmt_number(scores.concept_auc_std)}"
    return fmt_number(scores.concept_auc)


def _retrieval_table(results: Mapping[str, Mapping[str, RetrievalScores]], variants: Mapping[str, str],
                     key_header: str, label: Callable[[str], str] = str) -> list[str]:
    """Rows = (pair or modality) x variant, then a chance row per pair; columns R@K, concept P@K,
    concept AUC."""
    keys = list(dict.fromkeys(key for variant in variants for key in results.get(variant, {})))
    all_scores = [s for by_key in results.values() for s in by_key.values()]
    ks = _k_values([s.recall for s in all_scores] + [s.concept_precision for s in all_scores])
    header = [key_header, "variant", *(f"R@{k}" for k in ks), *(f"concept P@{k}" for k in ks),
              "concept AUC", "queries", "gallery"]
    rows = []
    for key in keys:
        scored = [(v, results[v][key]) for v in variants if key in results.get(v, {})]
        for variant, s in scored:
            rows.append([label(key), variant, *(fmt_number(s.recall.get(k)) for k in ks),
                         *(fmt_number(s.concept_precision.get(k)) for k in ks), _auc_cell(s),
                         str(s.queries), str(s.gallery)])
        first = scored[0][1]
        rows.append([label(key), "*chance*", *(fmt_number(first.recall_chance.get(k)) for k in ks),
                     *(fmt_number(first.concept_chance) for _ in ks),
                     fmt_number(0.5 if first.concept_auc is not None else None), str(first.queries), str(first.gallery)])
    return md_table(header, rows)


def _retrieval_section(report: Report) -> list[str]:
    lines = ["## Cross-modal retrieval (Table 3 style)", ""]
    if not any(report.retrieval.values()):
        return lines + ["_No cross-modal retrieval results in this run._"]
    lines += ["A study of the query modality ranks every gallery study of the other modality by cosine "
              "similarity in the shared space; no paired images were used in training. R@K: the query "
              "patient's own study is in the top K. Concept P@K: share of the top K with the query's "
              "concept set.", ""]
    return lines + _retrieval_table(report.retrieval, report.variants, "pair")


def _text_to_image_section(report: Report) -> list[str]:
    lines = ["## Text -> image retrieval", ""]
    if not any(report.text_to_image.values()):
        return lines + ["_No text -> image retrieval results in this run._"]
    lines += ["Each test report retrieves its own study among the test studies of its modality.", ""]
    return lines + _retrieval_table(report.text_to_image, report.variants, "query -> gallery",
                                    label=lambda modality: f"text->{modality}")


def _text_space_section(report: Report) -> list[str]:
    lines = ["## Agreement between the bound text encoders", ""]
    if not report.text_space:
        return lines + ["_No text-space results in this run._"]
    lines += ["Agreement: mean cosine between every two modalities' text encoders on the same held-out "
              "texts (1 = one shared space). Text recall: share of texts whose nearest neighbour under "
              "another encoder is the same text (chance 1 / number of texts).", ""]
    rows = [[v, fmt_number(s.agreement), fmt_number(s.text_recall)]
            for v, s in _in_variant_order(report.text_space, report.variants)]
    return lines + md_table(["variant", "agreement", "text recall"], rows)


def _ablation_section(report: Report) -> list[str]:
    if not report.ablations:
        return []
    lines = ["## Ablations (Tables 4 and 5 style)", ""]
    for study, rows in report.ablations.items():
        lines += [f"### {study}", ""]
        if not rows:
            lines += ["_No settings in this study._", ""]
            continue
        flag_header, flag_cells = _flag_columns(rows, report.modalities)
        pairs = list(dict.fromkeys(p for r in rows for p in r.retrieval))
        pair_ks = {p: _k_values([r.retrieval[p].recall for r in rows if p in r.retrieval]) for p in pairs}
        zero_shot = [_zero_shot_dict(r) for r in rows]
        zs_columns = list(dict.fromkeys((m, style) for z in zero_shot for m, by_style in z.items() for style in by_style))
        header = [*flag_header, *(f"{p} R@{k}" for p in pairs for k in pair_ks[p]),
                  *(f"{m} zero-shot {'acc' if style == 'accuracy' else style}" for m, style in zs_columns)]
        table = []
        for row, flags, zs in zip(rows, flag_cells, zero_shot):
            recalls = [fmt_number(row.retrieval[p].recall.get(k)) if p in row.retrieval else MISSING
                       for p in pairs for k in pair_ks[p]]
            table.append([*flags, *recalls, *(fmt_number(zs.get(m, {}).get(style)) for m, style in zs_columns)])
        lines += md_table(header, table) + [""]
    return lines


def _flag_columns(rows: Sequence[AblationRow], modalities: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    """Setting flags as columns: a list flag (e.g. modalities) gets a ✓ column per member, a yes/no
    flag one ✓ column, anything else its value."""
    names = list(dict.fromkeys(name for r in rows for name in r.setting))
    header: list[str] = []
    cells: list[list[str]] = [[] for _ in rows]
    for name in names:
        values = [r.setting.get(name) for r in rows]
        if any(isinstance(v, list) for v in values):
            members = [str(m) for v in values if isinstance(v, list) for m in v]
            # Modalities in the report's order first, as the paper's Table 4 does.
            ordered = [m for m in modalities if m in members] + list(dict.fromkeys(m for m in members if m not in modalities))
            header += ordered
            for cell, v in zip(cells, values):
                chosen = {str(m) for m in v} if isinstance(v, list) else set()
                cell += [CHECK if m in chosen else "" for m in ordered]
        elif all(isinstance(v, bool) or v is None for v in values):
            header.append(name)
            for cell, v in zip(cells, values):
                cell.append(CHECK if v else "")
        else:
            header.append(name)
            for cell, v in zip(cells, values):
                cell.append(MISSING if v is None else str(v))
    return header, cells


def _zero_shot_dict(row: AblationRow) -> dict[str, dict[str, float | None]]:
    """An ablation row's zero-shot numbers as modality -> {prompt set: value}; a bare number is accuracy."""
    return {m: (dict(v) if isinstance(v, dict) else {"accuracy": v}) for m, v in row.zero_shot.items()}


def _figures_section(figures: Mapping[str, str | None]) -> list[str]:
    lines = ["## Figures", ""]
    for name, title in FIGURE_TITLES.items():
        reason = figures.get(name)
        if reason is None:
            lines += [f"### {title}", "", f"![{title}]({name})", ""]
        else:
            lines += [f"- {title}: skipped ({reason}).", ""]
    return lines


def _notes_section(report: Report) -> list[str]:
    if not report.notes:
        return []
    return ["## Notes", "", *(f"- {note}" for note in report.notes)]


def _ordered(mapping: Mapping[str, Any], order: Sequence[str]) -> list[str]:
    """The keys of ``mapping`` in ``order``."""
    return [name for name in order if name in mapping]


def _in_variant_order(mapping: Mapping[str, Any], variants: Mapping[str, str]) -> list[tuple[str, Any]]:
    """(variant, value) pairs in table order; variants missing from ``mapping`` are left out."""
    return [(v, mapping[v]) for v in variants if v in mapping]


def render_markdown(report: Report, figures: Mapping[str, str | None]) -> str:
    """report.md for a validated report.

    ``figures``: PNG file name -> ``None`` when it was drawn, or the reason it was skipped.
    """
    sections = [_header_section(report), _zero_shot_section(report), _few_shot_section(report),
                _retrieval_section(report), _text_to_image_section(report), _text_space_section(report),
                _ablation_section(report), _figures_section(figures), _notes_section(report)]
    lines: list[str] = []
    for section in sections:
        while section and not section[-1]:     # one blank line between sections, not two
            section = section[:-1]
        if section:
            lines += [*section, ""]
    return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------

def _draw_figures(data: dict[str, Any], out_dir: Path,
                  embeddings: Mapping[str, Mapping] | None) -> tuple[dict[str, Path], dict[str, str | None]]:
    """Draw every figure that has data. Returns (name -> path, name -> None or why it was skipped)."""
    variants = list(data["variants"])
    few_shot = {m: {v: by_variant[v] for v in variants if v in by_variant}
                for m, by_variant in data["few_shot"].items() if by_variant}
    text_to_image = {v: {f"text->{m}": s for m, s in data["text_to_image"][v].items()}
                     for v in variants if data["text_to_image"].get(v)}
    retrieval = {v: data["retrieval"][v] for v in variants if data["retrieval"].get(v)}
    jobs = {
        "fewshot.png": (few_shot, "no few-shot results",
                        lambda path: plots.plot_fewshot_curves(few_shot, path)),
        "retrieval.png": (retrieval, "no cross-modal retrieval results",
                          lambda path: plots.plot_retrieval_bars(retrieval, path)),
        "text_to_image.png": (text_to_image, "no text -> image retrieval results",
                              lambda path: plots.plot_retrieval_bars(text_to_image, path, title="Text -> image retrieval")),
        "embedding_map.png": (embeddings, "no embeddings were passed",
                              lambda path: plots.plot_embedding_map(embeddings, path)),
    }
    paths, status = {}, {}
    for name, (has_data, why_not, draw) in jobs.items():
        path = out_dir / name
        if has_data:
            paths[name] = draw(path)
            status[name] = None
        else:
            # A figure left over from an earlier run in the same folder would contradict the report.
            path.unlink(missing_ok=True)
            status[name] = why_not
    return paths, status


def _write_text_atomic(path: Path, text: str) -> None:
    """Write through a temporary file so a crash never leaves half a report behind."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_report(report: Mapping[str, Any], out_dir: Path,
                 embeddings: Mapping[str, Mapping] | None = None) -> dict[str, Path]:
    """Validate ``report`` and write report.json, report.md and the figures into ``out_dir``.

    Args:
        report: the evaluation results, shaped as documented in ``docs/report-schema.md``.
        out_dir: the folder to write into (created if needed).
        embeddings: optional shared-space samples for the 2D map,
            ``{"before": {"emb": (N, D), "modality": [...], "concept": [...]}, "after": {...}}``.

    Returns ``{file name: path}`` for every file written: ``report.json``, ``report.md`` and the
    PNGs that had data (``fewshot.png``, ``retrieval.png``, ``text_to_image.png``,
    ``embedding_map.png``); report.md says which figures were skipped and why. Raises
    :class:`ReportError` when the report does not follow the schema (nothing is written then).
    """
    model = validate_report(report)
    data = model.model_dump(mode="json")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths, figures = _draw_figures(data, out_dir, embeddings)
    json_path, md_path = out_dir / "report.json", out_dir / "report.md"
    _write_text_atomic(json_path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    _write_text_atomic(md_path, render_markdown(model, figures))
    return {"report.json": json_path, "report.md": md_path, **paths}


def load_report(path: Path) -> Report:
    """Read and validate a report.json written by :func:`write_report`."""
    with open(path, encoding="utf-8") as handle:
        return validate_report(json.load(handle))

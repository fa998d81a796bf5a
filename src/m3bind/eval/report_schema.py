"""The report.json schema: pydantic models of every section, the conversion of evaluation
outputs to JSON-ready values, and reading / writing the JSON text. Documented in
``docs/report-schema.md``; keep the two in step.

Validation: the report dict is first made JSON-ready (int keys such as K or shots become strings,
numpy scalars become Python numbers, NaN becomes ``null``), then checked against the pydantic
models below. Structural levels (the report itself, a zero-shot entry) reject unknown keys, so a
misspelt section name fails loudly; metric-level dicts (the leaves) accept extra keys, so the
runner can add numbers without a schema change.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from m3bind.errors import M3BindError


class ReportError(M3BindError):
    """A report dict that does not follow the report.json schema; the message names the section."""


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
    expert_by_rule: dict[str, ClassificationScores | None] | None = None   # expert prompts under every prototype rule


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
    queries_without_partner: int = 0   # their patient has no study in the gallery: Recall@K misses

    @field_validator("recall", "recall_chance", "concept_precision")
    @classmethod
    def _k_keys(cls, scores: dict[str, float | None]) -> dict[str, float | None]:
        return _check_k_keys(scores, "K")


class TextSpaceScores(_Leaf):
    """How well the bound text encoders agree: mean pairwise cosine and cross-encoder text recall."""
    agreement: float | None
    text_recall: float | None


class Difference(_Node):
    """A paired bootstrap interval of one difference the README claims, e.g. bound minus the best
    baseline in concept AUC on xray->ecg."""
    claim: str                     # "bound - best baseline", "final - bound", ...
    section: str                   # "retrieval" or "zero_shot (expert)"
    where: str                     # the pair or the modality
    metric: str                    # "concept_auc", "accuracy", "auc_macro"
    a: str                         # the variant subtracted from ...
    b: str                         # ... this one is subtracted: a - b
    difference: float | None
    ci: list[float] | None         # [low, high]
    excludes_zero: bool | None


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
    timings: dict[str, float] | None = None         # seconds per part of the evaluation
    modalities: list[str] = Field(min_length=1)
    variants: dict[str, str] = Field(min_length=1)
    zero_shot: dict[str, dict[str, ZeroShotEntry]]
    few_shot: dict[str, dict[str, FewShotResult]]
    retrieval: dict[str, dict[str, RetrievalScores]]
    text_to_image: dict[str, dict[str, RetrievalScores]]
    text_space: dict[str, TextSpaceScores]
    protocol: dict[str, Any] | None = None          # what was chosen on validation, bootstrap settings
    differences: list[Difference] = Field(default_factory=list)
    student_check: dict[str, Any] | None = None     # the final model vs its teachers on a second cohort
    real_reports: dict[str, Any] | None = None      # real IU chest X-ray reports -> class prompts
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
        for difference in self.differences:
            check(f"differences ({difference.claim}, {difference.where})", (difference.a, difference.b), variants,
                  "variant")
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


def report_json_text(report: Report) -> str:
    """The text of report.json: indented, non-ASCII kept as is (class names, ±), one final newline."""
    return json.dumps(report.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n"


def load_report(path: str | Path) -> Report:
    """Read and validate a report.json; a file that cannot be read, is not JSON or does not follow
    the schema raises :class:`ReportError` naming the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ReportError(f"{path}: cannot read the report ({error.strerror or error})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ReportError(f"{path}: not a JSON report ({error})") from None
    try:
        return validate_report(data)
    except ReportError as error:
        raise ReportError(f"{path}: {error}") from None

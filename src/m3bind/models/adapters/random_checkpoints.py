"""Randomly initialised stand-ins for the files a config names, in each published model's original layout.

``configs/paper.yaml`` needs the owners' checkpoints, some of them gated. To try that path
before (or without) downloading them, :func:`write_random_checkpoints` reads a config and writes,
at every path it names, a file of the same format holding an untrained model of the
architecture its options describe: MGCA's Lightning ``.ckpt``, CT-CLIP's ``.pt``, FLAIR's
``.pth``, ECG-CLIP's ``.pt``, an open_clip folder, the Hugging Face text-model folders
(Bio_ClinicalBERT layout; CXR-BERT's custom-code layout for CT-CLIP) and the student's BERT
folder with weights. The files then go through the adapters exactly as downloaded ones do.

What a config does not state (text-model sizes and vocabularies, the open_clip model config)
comes from a :class:`RandomSizes`: :data:`TINY` for CPU dry runs (``configs/paper-tiny.yaml``)
or :data:`PUBLISHED` for the real architectures (speed and memory checks on a GPU).

Nothing written here is a trained model, and nothing existing is ever overwritten.
"""
from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from m3bind.config import ExperimentConfig, resolve_path
from m3bind.errors import ConfigError
from m3bind.models.adapters import adapter_class
from m3bind.models.adapters import checkpoint_writers as writers
from m3bind.models.adapters.base_adapter import AdapterOptions

# Frequent words of chest, CT, fundus, ECG and pathology reports, so that texts tokenize into
# words as with a real vocabulary; any other lower-case word still tokenizes through the single
# letters and their ``##`` continuations.
_WORDS = tuple("""
no of the impression normal findings effusion is left lung right nodule evidence pleural axis with in for
pneumothorax or rhythm without are upper ms consolidation there chest cardiac negative enlargement and
moderate large cardiomegaly heart acute pericardial qrs unremarkable sinus at fundus pulmonary view within
limits seen min st clear pneumonia ct lower severe ventricular field technique size mm small rate lungs eye
disc diagnosis emphysema fluid examination qtc abnormality abnormal airspace macula regular contrast
visualised lobe enlarged pr single frontal osseous comparison none opacity zone differentiated well marked
mediastinal structures hypertrophy focal rapid elevation suspicious fibrosis carcinoma squamous moderately
recommended low voltage changes ecg atrial fibrillation dense radiograph inflammation consistent thickening
markedly hr bradycardia likely electrocardiogram pa photograph colour photo optic necrosis mild stroma
parenchyma thorax response bpm qt expanded concerning silhouette vessels retinopathy glandular tissue
differentiation keratinizing adenocarcinoma absent malignancy lobes axial images intravenous contour
abdominal organs change to lesion leads waves strain consider subtle cardiopulmonary process visceral line
rounded measuring approximately media haemorrhages healthy signs benign extensive poorly about keratin
section cell malignant gland forming neoplasm histology increased destruction centrilobular mass amount trachea
both main bronchi patent lymphadenopathy central airways open limb electrical alternans irregular narrow
complex secondary anterior segment tracing present inferior deviation base hemithorax markings collapse patchy
disease blunting costophrenic angle detected glaucoma yellow deposits pink defined margins cup ratio foveal
reflex neoplasia microscopic description chronic areas sample lymphocytes slightly collagen invasive necrotic
debris glands fibrous atypia tumour infiltrate mucosa dysplasia solid mildly slight significant thoracic
pathology chambers thick injury by criteria infarction nodular visible apical drusen near microaneurysms
retinal diabetic hypertensive cotton wool spots swelling a
""".split())
_PUNCTUATION = tuple(".,:;()-/%'")

BERT_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                 max_position_embeddings=512)
TINY_BERT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                 max_position_embeddings=512)
CLIP_MEAN_STD = {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}
# wisdomik/QuiltNet-B-32's open_clip_config.json (open_clip's ViT-B-32).
QUILTNET_B_32 = {"model_cfg": {"embed_dim": 512,
                               "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 32},
                               "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8,
                                            "layers": 12}},
                 "preprocess_cfg": CLIP_MEAN_STD}
# The same model at QuiltNet's input size and embedding width, with tiny towers.
QUILTNET_TINY = {"model_cfg": {"embed_dim": 512,
                               "vision_cfg": {"image_size": 224, "layers": 2, "width": 32, "patch_size": 32,
                                              "head_width": 16},
                               "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2,
                                            "layers": 2}},
                 "preprocess_cfg": CLIP_MEAN_STD}


@dataclass(frozen=True)
class RandomSizes:
    """The sizes a config leaves to the files it points at."""

    bert: Mapping[str, Any]                  # BertConfig sizes of every text-model folder and the student
    clinical_vocab_size: int                 # vocab.txt entries of Bio_ClinicalBERT-layout folders
    cxr_vocab_size: int                      # vocab.txt entries of CXR-BERT-layout folders
    open_clip: Mapping[str, Any] = field(default_factory=dict)  # open_clip_config.json of open_clip folders


TINY = RandomSizes(bert=TINY_BERT, clinical_vocab_size=512, cxr_vocab_size=512, open_clip=QUILTNET_TINY)
PUBLISHED = RandomSizes(bert=BERT_BASE, clinical_vocab_size=28996, cxr_vocab_size=30522, open_clip=QUILTNET_B_32)


def wordpiece_vocabulary(size: int) -> list[str]:
    """A BERT vocabulary of ``size`` entries: special tokens, report words, characters, ``[unusedN]`` fillers."""
    characters = tuple(string.ascii_lowercase + string.digits)
    tokens = list(dict.fromkeys((*writers.BERT_SPECIAL_TOKENS, *_WORDS, *characters, *_PUNCTUATION,
                                 *(f"##{c}" for c in characters))))
    if size < len(tokens):
        raise ConfigError(f"a vocabulary needs at least {len(tokens)} entries, {size} asked")
    return tokens + [f"[unused{i}]" for i in range(size - len(tokens))]


@dataclass
class _Plan:
    """Everything to write, in order: text-model folders first (the adapters read them while building)."""

    bert_folders: dict[Path, str] = field(default_factory=dict)   # folder -> "clinical" | "cxr"
    weighted_folders: set[Path] = field(default_factory=set)      # BERT folders that also get weights
    models: list[tuple[Path, Callable[[], None]]] = field(default_factory=list)

    def bert_folder(self, folder: Path, layout: str) -> None:
        if self.bert_folders.setdefault(folder, layout) != layout:
            raise ConfigError(f"{folder} is used both as a CXR-BERT and as a Bio_ClinicalBERT folder")


def write_random_checkpoints(cfg: ExperimentConfig, config_path: Path, sizes: RandomSizes,
                             seed: int = 0) -> list[Path]:
    """Write a random stand-in at every checkpoint, text-model and student path ``cfg`` names.

    Paths resolve as the experiment resolves them (relative to ``config_path``; option paths
    relative to the folder of ``model.path``). Returns the paths written. Raises
    :class:`ConfigError` when one of them already exists (nothing is then written) or a model
    type has no original format to write.
    """
    plan = _Plan()
    for modality, spec in cfg.modalities.items():
        cls = adapter_class(spec.model.type)
        if cls.trains_from_scratch:
            continue
        if spec.model.path is None:
            raise ConfigError(f"modalities.{modality}.model.path is not set")
        path = resolve_path(config_path, spec.model.path)
        options = cls.parse_options(spec.model.options, path.parent)
        plan.models.append((path, _model_writer(spec.model.type, cls, options, path, plan, sizes,
                                                seed + len(plan.models))))
    student = cfg.distill.student
    if student.type == "hf" and student.path is not None:
        folder = resolve_path(config_path, student.path)
        plan.bert_folder(folder, "clinical")
        plan.weighted_folders.add(folder)

    targets = [*plan.bert_folders, *(path for path, _ in plan.models)]
    existing = [str(path) for path in targets if path.exists()]
    if existing:
        raise ConfigError(f"refusing to write random weights over existing files: {', '.join(existing)}")
    for folder, layout in plan.bert_folders.items():
        if layout == "cxr":
            writers.write_cxr_bert_folder(folder, wordpiece_vocabulary(sizes.cxr_vocab_size), sizes.bert)
        else:
            writers.write_bert_folder(folder, wordpiece_vocabulary(sizes.clinical_vocab_size), sizes.bert)
        if folder in plan.weighted_folders:
            writers.write_bert_weights(folder, seed)
    for _, write in plan.models:
        write()
    return targets


def _model_writer(model_type: str, cls, options: AdapterOptions, path: Path, plan: _Plan, sizes: RandomSizes,
                  seed: int) -> Callable[[], None]:
    """Register the text folders ``options`` name and return the function that writes the model file."""
    def state() -> dict[str, Tensor]:
        torch.manual_seed(seed)
        return cls.build(options).network.state_dict()

    if model_type == "mgca":
        plan.bert_folder(_folder_option(options, "tokenizer", model_type), "clinical")
        return lambda: writers.write_lightning_checkpoint(path, state(), _mgca_hyperparameters(options),
                                                          _mgca_training_heads(options))
    if model_type == "ct_clip":
        plan.bert_folder(_folder_option(options, "text_model", model_type), "cxr")
        # The released file still holds BERT's position-id buffer and the unused CLOOB projection.
        extras = {"text_transformer.embeddings.position_ids": _position_ids(sizes),
                  "to_text_latent_extra.weight": torch.zeros(options.dim_latent, sizes.bert["hidden_size"])}
        return lambda: writers.write_state_dict(path, {**state(), **extras})
    if model_type == "flair":
        plan.bert_folder(_folder_option(options, "text_model", model_type), "clinical")
        legacy = {"text_model.model.embeddings.position_ids": _position_ids(sizes)}
        return lambda: writers.write_state_dict(path, {**state(), **legacy})
    if model_type == "ecg_clip":
        plan.bert_folder(_folder_option(options, "text_model", model_type), "clinical")
        return lambda: writers.write_state_dict(path, state())
    if model_type == "open_clip":
        if options.text_model is not None:
            plan.bert_folder(Path(options.text_model), "clinical")
        config = options.config or sizes.open_clip
        if not config:
            raise ConfigError(f"{path}: no open_clip model config to write (options.config or RandomSizes.open_clip)")
        return lambda: writers.write_open_clip_folder(path, config, seed=seed)
    raise ConfigError(f"model type '{model_type}' has no original format to write random weights in")


def _folder_option(options: AdapterOptions, name: str, model_type: str) -> Path:
    value = getattr(options, name)
    if value is None:
        raise ConfigError(f"model type '{model_type}' needs options.{name}: the text-model folder to write")
    return Path(value)


def _position_ids(sizes: RandomSizes) -> Tensor:
    return torch.arange(sizes.bert["max_position_embeddings"])[None]


def _mgca_hyperparameters(options) -> dict[str, Any]:
    return {"img_encoder": options.vision, "emb_dim": options.emb_dim, "learning_rate": 2e-5, "num_prototypes": 500}


def _mgca_training_heads(options) -> dict[str, Tensor]:
    """Parts of MGCA's LightningModule used only by its local and prototype losses (shapes as in MGCA)."""
    emb, hidden, text = options.emb_dim, options.global_hidden, options.text.hidden_size
    image_features = options.vit.width if options.vision == "vit_base" else 2048
    heads = {"prototype_layer.weight": torch.zeros(500, emb),
             "img_encoder_q.local_embed.head.0.weight": torch.zeros(hidden, image_features, 1),
             "text_encoder_q.local_embed.head.0.weight": torch.zeros(hidden, text, 1)}
    for name in ("patch_local_atten_layer", "word_local_atten_layer"):
        heads.update({f"{name}.in_proj_weight": torch.zeros(3 * emb, emb), f"{name}.out_proj.weight": torch.zeros(emb, emb)})
    for layer in range(options.text.num_layers):
        heads[f"text_encoder_q.model.encoder.layer.{layer}.crossattention.self.query.weight"] = torch.zeros(text, text)
    return heads

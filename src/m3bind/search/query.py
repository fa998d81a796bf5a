"""Searching an index by text, by a study file, or by a study already in the index.

The query is embedded by the model that made the index (anything else is refused before any
work is done) and compared with every indexed study by cosine similarity; a study query first
loses its modality's centre when the model ranks image queries 'centred' (chosen on validation
when the model was made: :meth:`m3bind.models.bound.M3Bind.image_queries`), so the scores are
then that, not cosines.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from m3bind.data.readers import read_study
from m3bind.errors import ConfigError, DataError
from m3bind.search.index import Filters, Hit, SearchIndex
from m3bind.search.model_identity import SearchModel, check_same_model


def search_text(index: SearchIndex, model: SearchModel, text: str, k: int = 10, *,
                modalities: Sequence[str] | None = None, labels: Sequence[str] | None = None,
                patient: str | None = None, per_modality: bool = False) -> list[Hit]:
    """The ``k`` indexed studies closest to ``text`` (a finding, a report sentence), best first.

    Filters and ``per_modality`` are those of :meth:`SearchIndex.search`.
    """
    check_same_model(index.description.model.fingerprint, model.fingerprint, model.folder)
    if not text.strip():
        raise ConfigError("the query text is empty")
    query = model.encoder.encode_texts([text]).numpy()[0]
    return index.search(query, k, Filters(modalities, labels, patient), per_modality=per_modality)


def search_study(index: SearchIndex, model: SearchModel, path: str | Path, modality: str, k: int = 10, *,
                 modalities: Sequence[str] | None = None, labels: Sequence[str] | None = None,
                 patient: str | None = None, per_modality: bool = False) -> list[Hit]:
    """The ``k`` indexed studies closest to the study at ``path`` (of ``modality``), best first."""
    check_same_model(index.description.model.fingerprint, model.fingerprint, model.folder)
    query = _as_image_query(model, modality, embed_study(model, path, modality))
    return index.search(query, k, Filters(modalities, labels, patient), per_modality=per_modality)


def search_similar(index: SearchIndex, study_id: int, k: int = 10, *, modalities: Sequence[str] | None = None,
                   labels: Sequence[str] | None = None, patient: str | None = None,
                   per_modality: bool = False, model: SearchModel | None = None) -> list[Hit]:
    """The ``k`` studies closest to indexed study ``study_id`` (itself left out), from its stored
    embedding; with ``model`` (the index's), ranked as that model ranks image queries."""
    query = index.store.vectors([study_id])[0]
    if model is not None:
        check_same_model(index.description.model.fingerprint, model.fingerprint, model.folder)
        record = index.study(study_id)
        if record is not None:
            query = _as_image_query(model, record.modality, query)
    return index.search(query, k, Filters(modalities, labels, patient), exclude={study_id},
                        per_modality=per_modality)


def _as_image_query(model: SearchModel, modality: str, embedding: np.ndarray) -> np.ndarray:
    """A study's embedding as the model ranks image queries (see the module docstring)."""
    tensor = torch.from_numpy(np.asarray(embedding, dtype=np.float32))
    return model.encoder.image_queries(modality, tensor).numpy()


def embed_study(model: SearchModel, path: str | Path, modality: str) -> np.ndarray:
    """The shared-space embedding of one study file (read and preprocessed for ``modality``)."""
    if modality not in model.encoder.modalities:
        raise ConfigError(f"the model has no '{modality}' encoder; it has {', '.join(model.encoder.modalities)}")
    tensor = model.encoder.models[modality].transform()(read_study(path))
    if not torch.isfinite(tensor).all():
        raise DataError(path, "non-finite values after preprocessing")
    return model.encoder.encode_images(modality, tensor.unsqueeze(0)).numpy()[0]

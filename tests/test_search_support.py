"""Shared fixtures of the search tests (no tests here): a tiny five-modality bound model saved to
disk, and a small archive of real-format studies (DICOM, NIfTI, PNG, JPEG, WFDB) with manifests.

The model is untrained (random small encoders, orthogonal heads): search only needs a fixed
function from studies and texts to unit vectors, and an untrained one is as fixed as any.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from _format_writers import synthetic_ecg, write_dicom, write_nifti, write_wfdb
from m3bind.config import StudentConfig
from m3bind.data.transforms import default_preprocess
from m3bind.models.bound import M3Bind
from m3bind.models.builtin import BuiltinModelConfig, build_builtin_model, builtin_config
from m3bind.models.heads import BindingHead
from m3bind.models.student import build_student

MODALITIES = ("xray", "ct", "retina", "ecg", "pathology")
SHARED_DIM = 16
LABELS = {
    "xray": ["pleural effusion", "cardiomegaly", ""],
    "ct": ["pleural effusion|lung nodule", "emphysema", ""],
    "retina": ["glaucoma", "diabetic retinopathy", ""],
    "ecg": ["atrial fibrillation", "st elevation", ""],
    "pathology": ["necrosis", "adenocarcinoma|necrosis", ""],
}
PATIENTS = ("P1", "P2", "P3")
SUFFIX = {"xray": ".dcm", "ct": ".nii.gz", "retina": ".png", "ecg": ".hea", "pathology": ".jpg"}


@dataclass(frozen=True)
class World:
    model: Path               # the saved tiny model
    other_model: Path         # another tiny model (other seed): must be refused by the index
    manifest: Path            # 15 studies: 3 patients x 5 modalities, mixed in one CSV
    extra_manifest: Path      # 5 more studies (patient P4), for --add
    root: Path


def _report(modality: str, labels: str) -> str:
    findings = labels.replace("|", " and ") if labels else "no abnormality"
    return f"{modality} study: {findings}."


def tiny_model(folder: Path, seed: int) -> Path:
    corpus = [_report(m, labels) for m in MODALITIES for labels in LABELS[m]]
    models = {}
    for i, modality in enumerate(MODALITIES):
        small = BuiltinModelConfig.model_validate({
            **builtin_config(modality).model_dump(), "width": 8, "depth": 2, "text_hidden_size": 32,
            "text_layers": 1, "text_heads": 2, "text_intermediate_size": 64, "native_dim": 12, "vocab_size": 200})
        models[modality] = build_builtin_model(modality, corpus, small, seed=seed + i,
                                               preprocess=default_preprocess(modality, demo=True))
    heads = {m: BindingHead(model.native_dim, SHARED_DIM, generator=torch.Generator().manual_seed(seed + i))
             for i, (m, model) in enumerate(models.items())}
    student = build_student(StudentConfig(), corpus, shared_dim=SHARED_DIM, seed=seed)
    M3Bind(models, heads, student).save_pretrained(folder)
    return folder


def write_study(folder: Path, modality: str, name: str, seed: int) -> Path:
    """One small study of ``modality`` in its usual format; ``seed`` makes each one different."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    if modality == "xray":
        pixels = (rng.random((64, 64)) * 3000 + np.linspace(0, 1000, 64)[None, :]).astype(np.uint16)
        return write_dicom(folder / f"{name}.dcm", pixels, modality="DX", patient_id=None)
    if modality == "ct":
        volume = (rng.random((24, 24, 12)) * 1600 - 1000).astype(np.float32)
        return write_nifti(folder / f"{name}.nii.gz", volume, zooms=(5.0, 5.0, 5.0))
    if modality == "ecg":
        signal = synthetic_ecg(1000, 100.0) * (1.0 + seed % 7 / 10) + rng.normal(0, 0.02, (1000, 12))
        return write_wfdb(folder, name, signal, fs=100.0)
    array = (rng.random((48, 56, 3)) * 255).astype(np.uint8)
    path = folder / f"{name}{SUFFIX[modality]}"
    Image.fromarray(array).save(path)
    return path


def _archive(root: Path, patients: tuple[str, ...], offset: int, name: str) -> Path:
    rows = []
    for p, patient in enumerate(patients):
        for m, modality in enumerate(MODALITIES):
            labels = LABELS[modality][p % 3]
            path = write_study(root / "studies" / modality, modality, f"{patient}_{modality}",
                               seed=offset + 10 * p + m)
            rows.append({"path": path.relative_to(root).as_posix(), "text": _report(modality, labels),
                         "labels": labels, "split": "test", "patient_id": patient, "modality": modality})
    manifest = root / name
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


@functools.cache
def build_world(root: Path) -> World:
    manifest = _archive(root, PATIENTS, 0, "manifest.csv")
    extra = _archive(root, ("P4",), 100, "extra.csv")
    return World(model=tiny_model(root / "model", seed=0), other_model=tiny_model(root / "other_model", seed=50),
                 manifest=manifest, extra_manifest=extra, root=root)


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> World:
    # Cached per session folder, so every test module importing this fixture shares one world.
    return build_world(tmp_path_factory.getbasetemp() / "search-world")

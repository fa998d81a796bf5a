"""An experiment: a validated config plus the folders it reads and writes.

This is where the stages meet the data: it resolves manifests relative to the config file,
loads and caches preprocessed studies, and runs phase one for each modality. Later stages
(binding, distillation, evaluation) take their inputs from here too, so every command of
the CLI works the same from a config file or from the demo.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file

from m3bind.config import ExperimentConfig, load_config, parse_config, resolve_path
from m3bind.data.datasets import LoadedStudies, load_studies
from m3bind.data.manifest import Manifest, read_manifest
from m3bind.errors import ConfigError


class Experiment:
    def __init__(self, cfg: ExperimentConfig, config_path: Path | None = None, cache_dir: Path | None = None):
        self.cfg = cfg
        self.config_path = config_path
        self.out_dir = resolve_path(config_path, cfg.output_dir)
        # Ablation runs share their parent's preprocessed-study cache.
        self.cache_dir = cache_dir or self.out_dir / "cache"
        self._manifests: dict[str, Manifest] = {}

    @classmethod
    def from_file(cls, path: str | Path) -> "Experiment":
        return cls(load_config(path), Path(path))

    def save_config(self) -> Path:
        """Write the resolved config next to the outputs, so a run can be repeated."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / "config.yaml"
        path.write_text(yaml.safe_dump(self.cfg.model_dump(mode="json"), sort_keys=False))
        return path

    # --- data -------------------------------------------------------------------------
    @property
    def modalities(self) -> list[str]:
        return list(self.cfg.modalities)

    def manifest(self, modality: str) -> Manifest:
        if modality not in self._manifests:
            spec = self._modality(modality)
            if spec.manifest is None:
                raise ConfigError(f"modalities.{modality}.manifest is not set in {self.config_path}")
            self._manifests[modality] = read_manifest(resolve_path(self.config_path, spec.manifest), modality)
        return self._manifests[modality]

    def paired_manifest(self, modality: str) -> Manifest:
        if modality not in self.cfg.paired_manifests:
            raise ConfigError(f"paired_manifests.{modality} is not set; the paired test set is needed "
                              "for cross-modal retrieval")
        return read_manifest(resolve_path(self.config_path, self.cfg.paired_manifests[modality]), modality)

    def preprocess(self, modality: str):
        from m3bind.data.transforms import default_preprocess

        base = default_preprocess(modality, demo=self.cfg.demo_sizes)
        overrides = self._modality(modality).preprocess
        try:
            return type(base).model_validate({**base.model_dump(), **overrides})
        except ValueError as exc:
            raise ConfigError(f"modalities.{modality}.preprocess: {exc}") from None

    def studies(self, modality: str, split: str, *, paired: bool = False, on_error: str = "raise",
                transform=None, progress=None) -> LoadedStudies:
        """Preprocessed studies of one split, cached on disk by (manifest content, preprocessing)."""
        from m3bind.data.transforms import build_transform

        manifest = self.paired_manifest(modality) if paired else self.manifest(modality)
        manifest = manifest.split(split)
        spec = self.preprocess(modality)
        digest = hashlib.sha1()
        digest.update(manifest.table.to_csv(index=False).encode())
        digest.update(str(manifest.source.resolve()).encode())
        digest.update(json.dumps(spec.model_dump(mode="json"), sort_keys=True).encode())
        cache = self.cache_dir / f"{modality}-{'paired-' if paired else ''}{split}-{digest.hexdigest()[:12]}"
        if (cache / "meta.json").exists():
            meta = json.loads((cache / "meta.json").read_text())
            return LoadedStudies(images=load_file(cache / "images.safetensors")["images"], texts=meta["texts"],
                                 labels=meta["labels"], patient_ids=meta["patient_ids"], rows=meta["rows"],
                                 skipped=[])
        loaded = load_studies(manifest, transform or build_transform(modality, spec), on_error=on_error,
                              progress=progress)
        cache.mkdir(parents=True, exist_ok=True)
        save_file({"images": loaded.images.contiguous()}, cache / "images.safetensors")
        (cache / "meta.json").write_text(json.dumps({"texts": loaded.texts, "labels": loaded.labels,
                                                     "patient_ids": loaded.patient_ids, "rows": loaded.rows,
                                                     "skipped": [str(s) for s in loaded.skipped]}))
        return loaded

    def dataset_size(self, modality: str) -> int:
        """|D_m|: training studies of a modality (used by adaptive modality balancing)."""
        return int((self.manifest(modality).table["split"] == "train").sum())

    # --- models -----------------------------------------------------------------------
    def phase_one_dir(self, modality: str) -> Path:
        spec = self._modality(modality).model
        if spec.type == "builtin" and spec.path is not None:
            return resolve_path(self.config_path, spec.path)
        return self.out_dir / "pretrain" / modality / "model"

    def load_phase_one(self, modality: str):
        """The modality's CLIP-like model as phase one left it (built-in) or as published (adapter)."""
        spec = self._modality(modality).model
        if spec.type == "builtin":
            from m3bind.models.builtin import BuiltinCLIP

            directory = self.phase_one_dir(modality)
            if not (directory / "config.json").exists():
                raise ConfigError(f"no phase-one model for '{modality}' at {directory}; run `m3bind pretrain` first")
            return BuiltinCLIP.from_pretrained(directory)
        from m3bind.models.adapters import load_adapter  # adapters for published checkpoints

        return load_adapter(spec.type, resolve_path(self.config_path, spec.path) if spec.path else None,
                            spec.options)

    def _modality(self, modality: str):
        try:
            return self.cfg.modalities[modality]
        except KeyError:
            raise ConfigError(f"modality '{modality}' is not in the config; configured: "
                              f"{', '.join(self.cfg.modalities) or 'none'}") from None


def demo_config(cohort_dir: Path, output_dir: Path, quick: bool = False) -> ExperimentConfig:
    """The config `m3bind demo` runs: five built-in models on the synthetic cohort, demo sizes."""
    modalities = {m: {"manifest": str((cohort_dir / m / "manifest.csv").resolve())}
                  for m in ("xray", "ct", "retina", "ecg", "pathology")}
    # Left ventricular hypertrophy and low QRS voltage are voltage criteria: a per-lead z-score
    # (the published ECG-CLIP input) erases them, so the built-in ECG model reads millivolts.
    modalities["ecg"]["preprocess"] = {"normalize": "none"}
    paired = {m: str((cohort_dir / "paired" / f"{m}.csv").resolve()) for m in ("xray", "ct", "ecg")}
    data = {"output_dir": str(output_dir.resolve()), "shared_dim": 256, "demo_sizes": True,
            "modalities": modalities, "paired_manifests": paired,
            "pretrain": {"steps": 80 if quick else 300, "batch_size": 32, "lr": 1e-3, "warmup_steps": 20,
                         "checkpoint_every": 100},
            # The paper's lr (2e-5) is for 15,000 steps on real checkpoints; the demo binds in a
            # few hundred steps on a CPU, so it uses a larger one and smaller batches. lambda 100:
            # at the paper's 10 the (dimension-averaged) MSE aligns only the texts' common
            # direction, not concept by concept (docs/findings.md).
            "bind": {"steps": 40 if quick else 200, "lr": 2e-3, "warmup_steps": 10, "image_batch_size": 24,
                     "text_batch_size": 32, "checkpoint_every": 50, "label_aware": True,
                     "lambda_text": 100.0},
            "distill": {"phase_a_steps": 30 if quick else 100, "phase_b_steps": 30 if quick else 100,
                        "batch_size": 32, "lr": 1e-3, "checkpoint_every": 100},
            "eval": {"shots": [1, 5, 10], "seeds": [0, 1, 2]}}
    return parse_config(data, "<demo>")



def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")

"""An experiment: a validated config plus the folders it reads and writes.

This is where the stages meet the data: it resolves manifests relative to the config file,
loads and caches preprocessed studies, and finds each modality's unbound model (a built-in
model after ``pretrain``, or a published checkpoint through its adapter). Every stage takes its
inputs from here, so every command of the CLI works the same from a config file or the demo.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import shutil
import socket
import uuid
from contextlib import contextmanager
from pathlib import Path

import torch
import yaml
from pydantic import ValidationError

from m3bind.config import ExperimentConfig, load_config, resolve_path
from m3bind.data.datasets import StudySet
from m3bind.data.manifest import SPLITS, Manifest, read_manifest
from m3bind.errors import ConfigError, DataError
from m3bind.fileio import atomic_write_text


def _file_fingerprint(path: Path) -> str:
    """Size and modification time of a study's files (a folder's files, a WFDB header's signal)."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
    elif path.suffix in ("", ".hea", ".dat"):  # a WFDB record, by any of its names: header and signal
        named = dict.fromkeys([path, path.with_suffix(".hea"), path.with_suffix(".dat")])
        files = [p for p in named if p.is_file()] or [path]
    else:
        files = [path]
    parts = []
    for file in files:
        try:
            stat = file.stat()
            parts.append(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}")
        except OSError:
            parts.append(f"{file.name}:missing")
    return "|".join(parts)


def study_cache_key(manifest: Manifest, spec, limits) -> str:
    """What a split's preprocessed cache depends on: the manifest's rows and file, every study
    file's size and modification time (a replaced file rebuilds the cache), the preprocessing
    settings and the read limits (which decide which studies are readable), and the version of
    the transforms' code."""
    from m3bind.data.transforms import TRANSFORM_VERSION

    digest = hashlib.sha1(f"transforms {TRANSFORM_VERSION}".encode())
    digest.update(manifest.table.to_csv(index=False).encode())
    digest.update(str(manifest.source.resolve()).encode())
    for i in range(len(manifest)):
        digest.update(_file_fingerprint(manifest.absolute_path(i)).encode())
    digest.update(json.dumps(spec.model_dump(mode="json"), sort_keys=True).encode())
    digest.update(json.dumps(limits.model_dump(mode="json"), sort_keys=True).encode())
    return digest.hexdigest()[:12]


def _gigabytes(shape: tuple[int, ...]) -> float:
    """Size of float32 rows of ``shape`` in GB."""
    return 4 * math.prod(int(d) for d in shape) / 1e9


STUDY_META = "meta.json"


@contextmanager
def _building(cache: Path):
    """Hold an exclusive lock named after a study cache while building it: a second process of
    the run waits, then reads the first one's copy instead of decoding the split again. Where
    file locks do not exist, building twice is still safe (see Experiment._build_study_cache)."""
    try:
        import fcntl
    except ImportError:   # not a POSIX system
        yield
        return
    cache.parent.mkdir(parents=True, exist_ok=True)
    path = cache.with_name(f".{cache.name}.lock")
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            # Removed before it is released: a process still waiting on it then finds the cache
            # built, and one that came later never needed it; at worst a split is built twice.
            path.unlink(missing_ok=True)
            fcntl.flock(lock, fcntl.LOCK_UN)


_HOST = socket.gethostname().replace(".", "-")


def _remove_abandoned_builds(cache: Path) -> None:
    """Remove the temporary folders that builds of ``cache`` killed on this host left behind (a
    half-decoded split of CT volumes can be gigabytes). A folder is abandoned when the process
    named in it is gone; builds on other hosts sharing the folder are left alone."""
    for folder in cache.parent.glob(f".{cache.name}.{_HOST}.*.tmp"):
        try:
            pid = int(folder.name[len(f".{cache.name}.{_HOST}."):].split(".")[0])
        except ValueError:
            continue
        if pid != os.getpid() and not _process_alive(pid):
            shutil.rmtree(folder, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:   # alive, owned by another user
        return True
    return True


def _study_cache_built(cache: Path) -> bool:
    """Whether a split's cache folder is complete (its images and the metadata written after them)."""
    return (cache / STUDY_META).exists() and (cache / "images").exists()


def _read_study_cache(manifest: Manifest, cache: Path) -> StudySet:
    """A split's studies from its published cache folder (see Experiment._build_study_cache)."""
    from m3bind.data.datasets import ReadNote, SkippedItem
    from m3bind.data.store import RowStore

    meta = json.loads((cache / STUDY_META).read_text())
    return StudySet(images=RowStore(cache / "images"), texts=meta["texts"], labels=meta["labels"],
                    patient_ids=meta["patient_ids"], rows=meta["rows"],
                    skipped=[SkippedItem.from_meta(manifest, item) for item in meta["skipped"]],
                    read_notes=[ReadNote(str(n["note"]), int(n["count"]), str(n["first"]))
                                for n in meta.get("read_notes", [])])


def keeps_sentence_vectors(stage):
    """Decorate a stage ``stage(exp, ...)``: when it ends, finished or failed, the sentence vectors
    it computed are written to the run's cache folder, so the next command (or the same one
    resumed) reads them instead of encoding its texts again."""
    @functools.wraps(stage)
    def run(exp: Experiment, *args, **kwargs):
        try:
            return stage(exp, *args, **kwargs)
        finally:
            exp.sentence_encoder.flush()
    return run


class Experiment:
    def __init__(self, cfg: ExperimentConfig, config_path: Path | None = None, cache_dir: Path | None = None,
                 sentence_encoder=None):
        from m3bind.models.sentence import SharedSentenceEncoder

        self.cfg = cfg
        self.config_path = config_path
        self.out_dir = resolve_path(config_path, cfg.output_dir)
        # Ablation runs share their parent's preprocessed-study cache.
        self.cache_dir = cache_dir or (resolve_path(config_path, cfg.data.cache_dir) if cfg.data.cache_dir
                                       else self.out_dir / "cache")
        self._manifests: dict[str, Manifest] = {}
        self._paired_manifests: dict[str, Manifest] = {}
        self._studies: dict[tuple[str, str, bool], StudySet] = {}
        self._subsets: dict[tuple[str, str, tuple[int, ...]], object] = {}
        self._model_preprocess: dict[str, object] = {}
        # Set while evaluation shares image embeddings between variants (sharing_image_embeddings).
        self.image_memo = None
        # Every model a stage of this run loads shares one frozen text backbone and its cache (kept
        # on disk for the run's later commands); child runs (control, ablations, student check) are
        # handed their parent's.
        self.sentence_encoder = sentence_encoder or SharedSentenceEncoder(self.cache_dir / "sentence-vectors")

    @contextmanager
    def sharing_image_embeddings(self):
        """While active, evaluation embeds each study set once per image side and shares it between
        the variants (:class:`~m3bind.models.embedding.ImageEmbeddingMemo`). Only for code that
        trains nothing: a model's weights are read once, when it is first seen."""
        from m3bind.models.embedding import ImageEmbeddingMemo

        self.image_memo = ImageEmbeddingMemo()
        try:
            yield self.image_memo
        finally:
            self.image_memo = None

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
            self._manifests[modality] = read_manifest(resolve_path(self.config_path, spec.manifest), modality,
                                                      select_modality=True,
                                                      normal_labels=self.normal_spellings(modality))
        return self._manifests[modality]

    def paired_manifest(self, modality: str) -> Manifest:
        if modality not in self.cfg.paired_manifests:
            raise ConfigError(f"paired_manifests.{modality} is not set; the paired test set is needed "
                              "for cross-modal retrieval")
        if modality not in self._paired_manifests:
            path = resolve_path(self.config_path, self.cfg.paired_manifests[modality])
            self._paired_manifests[modality] = read_manifest(path, modality, select_modality=True,
                                                             normal_labels=self.normal_spellings(modality))
        return self._paired_manifests[modality]

    def normal_spellings(self, modality: str) -> tuple[str, ...]:
        """Labels that mean a normal study for this modality beyond "normal" and "No Finding": the
        aliases of 'normal' in its prompt file, else in the shipped prompt set of its name or of
        the modality it is handled like (PTB-XL's "NORM" and "SR" for ECG). Read as a normal
        study, they do not become a second normal class that zero-shot could never tell apart."""
        from m3bind.eval.prompts import available_prompt_sets, load_prompt_file, load_prompt_set

        spec = self._modality(modality)
        if spec.prompts:
            prompt_set = load_prompt_file(resolve_path(self.config_path, spec.prompts))
        else:
            shipped = modality if modality in available_prompt_sets() else self.known_as(modality)
            if shipped not in available_prompt_sets():
                return ()
            prompt_set = load_prompt_set(shipped)
        return tuple(prompt_set.aliases.get(prompt_set.find("normal") or "normal", ()))

    def preprocess(self, modality: str):
        """The preprocessing of the modality's studies: a published model's own (what its adapter
        says it was trained with), else the modality's defaults (demo sizes when ``demo_sizes``),
        with the config's ``preprocess`` overrides on top."""
        from m3bind.data.transforms import default_preprocess
        from m3bind.models.adapters import adapter_class, checkpoint_preprocess

        spec = self._modality(modality).model
        if adapter_class(spec.type).trains_from_scratch:
            base = default_preprocess(self.builtin_kind(modality), demo=self.cfg.demo_sizes)
        else:
            if modality not in self._model_preprocess:
                # From the checkpoint's options and config files: the weights are not read here.
                self._model_preprocess[modality] = checkpoint_preprocess(
                    spec.type, resolve_path(self.config_path, spec.path) if spec.path else None, spec.options)
            base = self._model_preprocess[modality]
        overrides = self._modality(modality).preprocess
        try:
            return type(base).model_validate({**base.model_dump(), **overrides})
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, error['loc']))}: {error['msg']}" for error in exc.errors())
            raise ConfigError(f"{self.config_path or '<config>'}: modalities.{modality}.preprocess: {problems} "
                              f"(allowed keys: {', '.join(type(base).model_fields)})") from None

    def studies(self, modality: str, split: str, *, paired: bool = False) -> StudySet:
        """Preprocessed studies of one split: read once through a DataLoader into the on-disk cache
        (see :meth:`study_cache_key`), then served from it a batch at a time; or, where the
        modality is not cached (:meth:`caches_studies`) and no cache of the split exists yet,
        read from the study files on every access."""
        from m3bind.data.datasets import StreamedImages
        from m3bind.data.transforms import build_transform

        memo = (modality, split, paired)
        if memo in self._studies:
            return self._studies[memo]
        whole = self.paired_manifest(modality) if paired else self.manifest(modality)
        manifest = whole.split(split)
        if not len(manifest.table):
            counts = whole.table["split"].value_counts()
            raise DataError(whole.source, f"has no '{split}' rows (rows per split: "
                            + ", ".join(f"{name} {counts.get(name, 0)}" for name in SPLITS)
                            + "; a manifest without a 'split' column is all 'train')")
        spec = self.preprocess(modality)
        key = study_cache_key(manifest, spec, self.cfg.data.read_limits)
        cache = self.cache_dir / f"{modality}-{'paired-' if paired else ''}{split}-{key}"
        cached = _study_cache_built(cache)
        streamed = None
        if not cached and not self.caches_studies(modality):
            streamed = StreamedImages(manifest, build_transform(modality, spec), self.cfg.data.read_limits,
                                      self.cfg.data.workers)
            if self.cfg.data.cache_studies == "auto" and _gigabytes(streamed.shape) <= self.cfg.data.cache_limit_gb:
                streamed = None  # small enough: decoding once and reading the copy is faster
        if streamed is not None:
            studies = StudySet(images=streamed, texts=[str(t) for t in manifest.table["text"]],
                               labels=[manifest.labels(i) for i in range(len(manifest))],
                               patient_ids=[str(p) for p in manifest.table["patient_id"]],
                               rows=list(range(1, len(manifest) + 1)))
        else:
            with _building(cache):
                if not _study_cache_built(cache):   # no other process built it meanwhile
                    self._build_study_cache(modality, manifest, spec, cache)
            studies = _read_study_cache(manifest, cache)
        studies.key = cache.name
        self._studies[memo] = studies
        return studies

    def _build_study_cache(self, modality: str, manifest: Manifest, spec, cache: Path) -> None:
        """Decode a split once into ``cache`` (the images and ``meta.json``), written in a folder
        of this process's own and published whole by one rename: the processes of a multi-process
        run, or two runs sharing a cache folder, may build the same split at once, and none may
        delete or half-read a folder another is writing. A killed build leaves only its own
        temporary folder behind, which the next build on the host removes."""
        from m3bind.data.datasets import stream_studies
        from m3bind.data.transforms import build_transform

        _remove_abandoned_builds(cache)
        building = cache.with_name(f".{cache.name}.{_HOST}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            studies, _ = stream_studies(manifest, build_transform(modality, spec), building / "images",
                                        on_error=self.cfg.data.on_error, workers=self.cfg.data.workers,
                                        limits=self.cfg.data.read_limits)
            atomic_write_text(building / STUDY_META, json.dumps({
                "texts": studies.texts, "labels": studies.labels, "patient_ids": studies.patient_ids,
                "rows": studies.rows, "skipped": [vars(item) for item in studies.skipped],
                "read_notes": [vars(note) for note in studies.read_notes]}))
            if cache.exists() and not (cache / STUDY_META).exists():
                # Half built by a release before this one (it built in place): move it aside first,
                # so that of two processes doing this only one removes it.
                stale = cache.with_name(f".{cache.name}.{uuid.uuid4().hex[:8]}.stale")
                try:
                    os.replace(cache, stale)
                    shutil.rmtree(stale, ignore_errors=True)
                except OSError:
                    pass
            try:
                os.replace(building, cache)
            except OSError:
                pass  # another process published the same split first: the same rows, keep theirs
        finally:
            shutil.rmtree(building, ignore_errors=True)

    def study_subset(self, modality: str, split: str, positions) -> object:
        """Some studies of a split, read lazily; the same object for the same rows, so that
        embeddings shared between models (:meth:`sharing_image_embeddings`) are found again."""
        from m3bind.data.store import take_rows

        key = (modality, split, tuple(int(p) for p in positions))
        if key not in self._subsets:
            self._subsets[key] = take_rows(self.studies(modality, split).images, list(key[2]))
        return self._subsets[key]

    @property
    def image_tables_dir(self) -> Path:
        """Where frozen image towers' embeddings of training studies are kept, by content (see
        :class:`m3bind.train.frozen.FrozenImageEmbeddings`): beside the study cache, so binding,
        its control, the ablations, SESKD and a resumed run all find them."""
        return self.cache_dir / "image-embeddings"

    def caches_studies(self, modality: str) -> bool:
        """Whether the modality's splits are preprocessed once into the on-disk cache, or
        streamed from their files on every pass (``data.cache_studies``; a cache an earlier
        stage or run built is used either way)."""
        choice = self.cfg.data.cache_studies
        if choice != "auto":
            return choice == "always"
        return (self.trains_from_scratch(modality) or self.cfg.bind.lora.image
                or self.cfg.data.on_error == "skip")

    def skipped_studies(self) -> dict[str, list[str]]:
        """Every study left out so far under ``data.on_error: skip``, by modality and split."""
        return {f"{m}/{'paired-' if paired else ''}{split}": [str(item) for item in studies.skipped]
                for (m, split, paired), studies in self._studies.items() if studies.skipped}

    def read_notes(self) -> dict[str, list[str]]:
        """What reading left out of the study files so far (ECG channels beyond the 12 leads,
        other DICOM series), by modality and split; from splits held as on-disk copies."""
        return {f"{m}/{'paired-' if paired else ''}{split}": [str(note) for note in studies.read_notes]
                for (m, split, paired), studies in self._studies.items() if studies.read_notes}

    @property
    def device(self) -> torch.device:
        from m3bind.devices import resolve_device

        return resolve_device(self.cfg.device)

    # --- models -----------------------------------------------------------------------
    def known_as(self, modality: str) -> str | None:
        """The built-in modality a modality of any name is, for its prompts: its ``like``, else
        the modality its published model serves (an MGCA model named 'cxr' is an X-ray model),
        else None."""
        from m3bind.modalities import MODALITY_NAMES
        from m3bind.models.adapters import adapter_class

        spec = self._modality(modality)
        if spec.like:
            return spec.like
        options = getattr(adapter_class(spec.model.type), "options_class", None)  # published adapters only
        served = spec.model.options.get("modality") or (options.model_fields["modality"].default if options else None)
        return served if served in MODALITY_NAMES else None

    def builtin_kind(self, modality: str) -> str:
        """The built-in modality whose facts (input kind, preprocessing defaults, built-in model
        sizes) ``modality`` takes: itself, or the config's ``like`` for a custom name."""
        return self._modality(modality).like or modality

    def trains_from_scratch(self, modality: str) -> bool:
        """Whether the modality's model is one m3bind pretrains itself (no published checkpoint)
        and no saved folder was given to start from."""
        from m3bind.models.adapters import adapter_class

        spec = self._modality(modality).model
        return adapter_class(spec.type).trains_from_scratch and spec.path is None

    def pretrained_dir(self, modality: str) -> Path:
        """Where ``pretrain`` saves the modality's model (or the saved folder the config names)."""
        spec = self._modality(modality).model
        if spec.path is not None:
            return resolve_path(self.config_path, spec.path)
        return self.out_dir / "pretrain" / modality / "model"

    def load_unbound(self, modality: str):
        """The modality's CLIP-like model before binding: as ``pretrain`` left it, or as published."""
        from m3bind.models.adapters import adapter_class, load_adapter, load_saved_adapter

        spec = self._modality(modality).model
        if adapter_class(spec.type).trains_from_scratch:
            directory = self.pretrained_dir(modality)
            if not directory.exists():
                raise ConfigError(f"no pretrained model for '{modality}' at {directory}; run `m3bind pretrain` first")
            return load_saved_adapter(spec.type, directory)
        return load_adapter(spec.type, resolve_path(self.config_path, spec.path) if spec.path else None,
                            spec.options)

    def _modality(self, modality: str):
        try:
            return self.cfg.modalities[modality]
        except KeyError:
            raise ConfigError(f"modality '{modality}' is not in the config; configured: "
                              f"{', '.join(self.cfg.modalities) or 'none'}") from None

"""Generate the synthetic five-modality cohort on disk: study files, manifests and cohort.json.

Layout of ``out_dir``::

    cohort.json                      what was generated (seed, counts, findings, concept map...)
    <modality>/manifest.csv          one row per study of that modality's patient group
    <modality>/studies/P000123.<ext>
    paired/<modality>.csv            xray, ct and ecg of the paired patients (never trained on:
                                     split val, for tuning, and test, evaluated once)
    paired/studies/<modality>/P000123.<ext>

Manifest paths are relative to the manifest's folder. Each study is rendered from its own
seed, ``SeedSequence([seed, group slot, patient's index in its group])``, so the output does
not depend on the number of workers or the order they finish in. A paired patient's X-ray, CT
and ECG share one seed, which is how their finding locations agree (see ``chest_layout``).
"""
from __future__ import annotations

import json
import multiprocessing
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd

from m3bind.cohort import ct, ecg, formats, pathology, retina, xray
from m3bind.cohort.alternative_vocabulary import alternative_report
from m3bind.cohort.conditions import (CONCEPT_MAP, GROUP_FRACTIONS, MODALITY_ORDER, PAIRED_GROUP,
                                      PAIRED_MODALITIES, PAIRED_SPLIT_FRACTIONS, SPLIT_FRACTIONS, Study,
                                      plan_cohort)
from m3bind.data.manifest import write_manifest
from m3bind.errors import ConfigError, DataError

RENDERERS: dict[str, ModuleType] = {"xray": xray, "ct": ct, "retina": retina, "pathology": pathology, "ecg": ecg}
FORMAT_VERSION = 1
REPORT_VOCABULARIES = ("standard", "alternative")
MANIFEST_COLUMNS = ("path", "text", "labels", "split", "patient_id", "modality", "concepts", "severity")
_CHUNK_SIZE = 8  # studies per task sent to a worker: amortises inter-process overhead

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class CohortSummary:
    """What :func:`generate_cohort` wrote."""

    out_dir: Path
    seed: int
    n_patients: int
    counts: dict[str, dict[str, int]]  # modality -> split -> studies in that modality's manifest
    paired_patients: int
    paired_splits: dict[str, int]      # paired patients per split (val, test)
    n_studies: int                     # files written, paired ones included
    seconds: float
    manifests: dict[str, Path]         # "xray" -> xray/manifest.csv, "paired/xray" -> paired/xray.csv


@dataclass(frozen=True)
class _Task:
    """One study for a worker: everything needed to render it and write its file."""

    modality: str
    findings: dict[str, float]
    seed: tuple[int, int, int]
    patient_id: str
    path: str
    vocabulary: str = "standard"


def generate_cohort(out_dir: str | Path, n_patients: int = 2000, seed: int = 0, workers: int = 2,
                    progress: Progress | None = None, *, test_patients: int | None = None,
                    paired_patients: int | None = None, report_vocabulary: str = "standard",
                    test_only: bool = False) -> CohortSummary:
    """Render and write the whole synthetic cohort; returns a summary (also in cohort.json).

    ``n_patients`` sets the training and validation splits; ``test_patients`` (per modality) and
    ``paired_patients`` (val + test) default to shares of it (see
    :func:`m3bind.cohort.conditions.evaluation_sizes`). ``report_vocabulary``: 'standard', or
    'alternative' for reports in wording the standard cohort never uses
    (:mod:`m3bind.cohort.alternative_vocabulary`). ``test_only``: render only the modalities'
    test splits (no training, validation or paired studies; for evaluation-only cohorts, whose
    plan is the same as the full cohort's). ``workers``: processes rendering in
    parallel (1 = in this process). ``progress``: called as ``progress(done, total)`` after each
    study, for a progress bar. An existing cohort in ``out_dir`` is replaced; a folder holding
    anything else is refused.
    """
    start = time.perf_counter()
    minimum = len(GROUP_FRACTIONS)
    if n_patients < minimum:
        raise ConfigError(f"n_patients must be at least {minimum} (one patient per group), got {n_patients}")
    if workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    if report_vocabulary not in REPORT_VOCABULARIES:
        raise ConfigError(f"report_vocabulary must be one of {', '.join(REPORT_VOCABULARIES)}, got '{report_vocabulary}'")
    out_dir = Path(out_dir)
    _prepare_folder(out_dir)
    vocabularies = {name: module.FINDINGS for name, module in RENDERERS.items()}
    try:
        plan = plan_cohort(n_patients, seed, vocabularies, test_patients=test_patients, paired_patients=paired_patients)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    studies = tuple(s for s in plan.studies if not test_only or (s.group != PAIRED_GROUP and s.split == "test"))
    tasks = [_task_for(study, seed, out_dir, report_vocabulary) for study in studies]
    for folder in {Path(task.path).parent for task in tasks}:
        folder.mkdir(parents=True, exist_ok=True)

    reports = list(_run(tasks, workers, progress))

    manifests = _write_manifests(out_dir, studies, reports, with_paired=not test_only)
    counts = {m: {split: 0 for split in SPLIT_FRACTIONS} for m in MODALITY_ORDER}
    paired_splits = {split: 0 for split in PAIRED_SPLIT_FRACTIONS}
    for study in studies:
        if study.group != PAIRED_GROUP:
            counts[study.modality][study.split] += 1
        elif study.modality == PAIRED_MODALITIES[0]:
            paired_splits[study.split] += 1
    summary = CohortSummary(out_dir=out_dir, seed=seed, n_patients=n_patients, counts=counts,
                            paired_patients=sum(paired_splits.values()), paired_splits=paired_splits,
                            n_studies=len(tasks),
                            seconds=round(time.perf_counter() - start, 2), manifests=manifests)
    _write_cohort_json(summary, plan.group_sizes, report_vocabulary)
    return summary


def _prepare_folder(out_dir: Path) -> None:
    """Make ``out_dir`` ready: create it, or clear a previous cohort's own files from it."""
    if out_dir.exists() and any(out_dir.iterdir()):
        if not (out_dir / "cohort.json").exists():
            raise DataError(out_dir, "folder is not empty and holds no m3bind cohort (no cohort.json); "
                                     "choose an empty or new folder")
        for name in (*MODALITY_ORDER, PAIRED_GROUP):
            shutil.rmtree(out_dir / name, ignore_errors=True)
        (out_dir / "cohort.json").unlink()
    out_dir.mkdir(parents=True, exist_ok=True)


def _relative_path(study: Study) -> str:
    """The study's file, relative to the folder of the manifest that lists it."""
    suffix = formats.SUFFIX[RENDERERS[study.modality].NATIVE_FORMAT]
    if study.group == PAIRED_GROUP:
        return f"studies/{study.modality}/{study.patient_id}{suffix}"
    return f"studies/{study.patient_id}{suffix}"


def _manifest_folder(out_dir: Path, study: Study) -> Path:
    return out_dir / (PAIRED_GROUP if study.group == PAIRED_GROUP else study.modality)


def _task_for(study: Study, seed: int, out_dir: Path, vocabulary: str) -> _Task:
    return _Task(modality=study.modality, findings=dict(study.findings),
                 seed=(seed, study.seed_index, study.ordinal), patient_id=study.patient_id,
                 path=str(_manifest_folder(out_dir, study) / _relative_path(study)), vocabulary=vocabulary)


def _run(tasks: list[_Task], workers: int, progress: Progress | None) -> Iterator[str]:
    """Render and write every task; yields the reports in task order."""
    total = len(tasks)
    if workers <= 1:
        results: Iterator[str] = map(render_and_write, tasks)
        executor = None
    else:
        # fork shares the already imported modules with the workers (no re-import per process).
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else None)
        executor = ProcessPoolExecutor(max_workers=workers, mp_context=context)
        results = executor.map(render_and_write, tasks, chunksize=_CHUNK_SIZE)
    try:
        for done, report in enumerate(results, start=1):
            if progress is not None:
                progress(done, total)
            yield report
    finally:
        if executor is not None:
            executor.shutdown(cancel_futures=True)


def render_and_write(task: _Task) -> str:
    """Render one study, write its file, return its report (runs in a worker process)."""
    module = RENDERERS[task.modality]
    seed_sequence = np.random.SeedSequence(list(task.seed))
    # Two generators from one seed: render and write_report each see the full stream, and
    # layout facts drawn from the seed (sides, leads, eye) agree between image and report.
    array = module.render(task.findings, np.random.default_rng(seed_sequence))
    if task.vocabulary == "alternative":
        report = alternative_report(task.modality, module.FINDINGS, task.findings, np.random.default_rng(seed_sequence))
    else:
        report = module.write_report(task.findings, np.random.default_rng(seed_sequence))
    _write_file(task, array)
    return report


def _write_file(task: _Task, array: np.ndarray) -> None:
    path = Path(task.path)
    native = RENDERERS[task.modality].NATIVE_FORMAT
    if native == "dicom":
        study_key = f"{task.seed[0]}-{task.seed[1]}-{task.seed[2]}-{task.modality}"
        formats.write_xray_dicom(path, array, task.patient_id, study_key,
                                 pixel_spacing_mm=xray.PIXEL_SPACING_MM, bits_stored=xray.BITS_STORED)
    elif native == "nifti":
        formats.write_ct_nifti(path, array, ct.SPACING_MM)
    elif native == "png":
        formats.write_png(path, array)
    elif native == "jpeg":
        formats.write_jpeg(path, array)
    elif native == "wfdb":
        formats.write_ecg_wfdb(path, array, ecg.SAMPLING_RATE, ecg.LEAD_NAMES)
    else:
        raise ValueError(f"no writer for native format '{native}' of modality '{task.modality}'")


def _manifest_row(study: Study, report: str) -> dict[str, str]:
    return {
        "path": _relative_path(study),
        "text": report,
        "labels": "|".join(study.findings),
        "split": study.split,
        "patient_id": study.patient_id,
        "modality": study.modality,
        "concepts": "|".join(study.concepts),
        "severity": "|".join(f"{label}:{severity:.2f}" for label, severity in study.findings.items()),
    }


def _write_manifests(out_dir: Path, studies: tuple[Study, ...], reports: list[str],
                     with_paired: bool = True) -> dict[str, Path]:
    """One manifest per modality group, one per paired modality; returns their paths by key."""
    rows: dict[str, list[dict[str, str]]] = {}
    for study, report in zip(studies, reports):
        key = f"{PAIRED_GROUP}/{study.modality}" if study.group == PAIRED_GROUP else study.modality
        rows.setdefault(key, []).append(_manifest_row(study, report))
    paths = {}
    for key in [*MODALITY_ORDER, *(f"{PAIRED_GROUP}/{m}" for m in PAIRED_MODALITIES if with_paired)]:
        path = out_dir / (f"{key}.csv" if key.startswith(PAIRED_GROUP) else f"{key}/manifest.csv")
        paths[key] = write_manifest(pd.DataFrame(rows.get(key, []), columns=list(MANIFEST_COLUMNS)), path)
    return paths


def _write_cohort_json(summary: CohortSummary, group_sizes: dict[str, int], report_vocabulary: str) -> None:
    out_dir = summary.out_dir
    description = {
        "format_version": FORMAT_VERSION,
        "seed": summary.seed,
        "report_vocabulary": report_vocabulary,
        "n_patients": summary.n_patients,
        "total_patients": sum(group_sizes.values()),
        "n_studies": summary.n_studies,
        "generation_seconds": summary.seconds,
        "group_sizes": group_sizes,
        "group_fractions": GROUP_FRACTIONS,
        "counts": summary.counts,
        "modalities": {
            name: {"findings": list(module.FINDINGS), "native_format": module.NATIVE_FORMAT,
                   "manifest": summary.manifests[name].relative_to(out_dir).as_posix()}
            for name, module in RENDERERS.items()
        },
        "paired": {
            "patients": summary.paired_patients,
            "splits": summary.paired_splits,
            "manifests": {m: summary.manifests[f"{PAIRED_GROUP}/{m}"].relative_to(out_dir).as_posix()
                          for m in PAIRED_MODALITIES if f"{PAIRED_GROUP}/{m}" in summary.manifests},
        },
        "concept_map": CONCEPT_MAP,
    }
    (out_dir / "cohort.json").write_text(json.dumps(description, indent=2) + "\n")

"""``m3bind demo``: the synthetic cohort, then every stage, on the config in ``demo.yaml``."""
from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

import yaml

from m3bind.config import ExperimentConfig, parse_config
from m3bind.devices import on_main_process
from m3bind.errors import ConfigError
from m3bind.experiment import Experiment
from m3bind.timing import StageTimer


def _demo_file() -> dict:
    return yaml.safe_load(resources.files("m3bind.stages").joinpath("demo.yaml").read_text())


def demo_patients(patients: int, quick: bool) -> int:
    """The cohort size: ``--quick`` caps it."""
    return min(patients, _demo_file()["quick"]["patients"]) if quick else patients


def _merge(base: dict, overrides: dict) -> dict:
    merged = dict(base)
    for key, value in overrides.items():
        merged[key] = _merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return merged


def demo_config(cohort_dir: Path, output_dir: Path, quick: bool = False, seed: int = 0) -> ExperimentConfig:
    """The demo experiment on the cohort in ``cohort_dir``, writing into ``output_dir``.

    ``seed`` seeds training as well as the cohort, so that demos with different seeds are
    independent repeats. The student check's second cohort is offset by the same seed, so it never
    shares its seed with the main cohort.
    """
    demo = _demo_file()
    data = _merge(demo["config"], demo["quick"]["config"]) if quick else demo["config"]
    data["seed"] = seed
    data["eval"]["student_check"]["seed"] += seed
    data["output_dir"] = str(output_dir.resolve())
    for modality, spec in data["modalities"].items():
        spec["manifest"] = str((cohort_dir / modality / "manifest.csv").resolve())
    data["paired_manifests"] = {m: str((cohort_dir / "paired" / f"{m}.csv").resolve()) for m in demo["paired"]}
    return parse_config(data, "<demo>")


def run_demo(out: Path, patients: int, seed: int, quick: bool, *, cohort_progress=None, progress=None,
             log=print) -> dict:
    """Cohort -> pretrain -> bind -> distill -> evaluate; returns the report."""
    from m3bind.cohort import generate_cohort, write_preview
    from m3bind.stages import run_bind, run_distill, run_eval, run_pretrain

    timer = StageTimer(log)
    cohort_dir = out / "cohort"

    def write_cohort():
        generate_cohort(cohort_dir, n_patients=demo_patients(patients, quick), seed=seed, workers=2,
                        progress=cohort_progress)
        log(f"preview: {write_preview(cohort_dir, cohort_dir / 'preview.png')}")

    # Under a launcher (accelerate launch, torchrun) the files are written once, by the main process.
    with timer("cohort"):
        on_main_process(write_cohort)
    exp = Experiment(demo_config(cohort_dir, out, quick=quick, seed=seed))
    on_main_process(lambda: log(f"config: {exp.save_config()}"))
    with timer("pretrain"):
        run_pretrain(exp, progress=progress, log=log)
    with timer("bind"):
        run_bind(exp, progress=progress, log=log)
    with timer("distill"):
        run_distill(exp, progress=progress, log=log)
    with timer("evaluate"):
        report = run_eval(exp, command="m3bind demo" + (" --quick" if quick else ""), log=log)
    with timer("index"):
        index = on_main_process(lambda: index_test_studies(exp, out / "index", workers=exp.cfg.data.workers))
    if index is not None:
        log(f"search index of the test and paired studies: {index} (try `m3bind serve {index} --model "
            f"{out / 'model'}`)")
        timer.write(out / "timings.json", parts={"evaluate": report.get("timings", {})})
    return report


def _clear_old_index(folder: Path) -> None:
    """Remove an index an earlier demo left in ``folder``: it was made with the model this run
    has just replaced, so it would refuse this run's queries. Anything else there is refused."""
    from m3bind.search.layout import DESCRIPTION_FILE

    if not folder.exists():
        return
    if not (folder / DESCRIPTION_FILE).is_file():
        raise ConfigError(f"{folder}: exists and is not a search index; the demo writes its index there "
                          "(move that folder away, or run the demo with another --out)")
    shutil.rmtree(folder)


def index_manifests(exp: Experiment) -> list[Path]:
    """The manifests the demo indexes: each modality's test rows (written beside its manifest as
    search-test.csv) and the paired manifests."""
    from m3bind.data.manifest import write_manifest

    manifests = []
    for modality in exp.modalities:
        test = exp.manifest(modality).split("test")
        manifests.append(write_manifest(test.table, test.source.with_name("search-test.csv")))
    return manifests + [Path(exp.paired_manifest(m).source) for m in exp.cfg.paired_manifests]


def index_test_studies(exp: Experiment, out: Path, workers: int | None = None) -> Path:
    """A search index of every test study and every paired study, made with the final model."""
    from m3bind.search.building import build_index
    from m3bind.search.model_identity import SearchModel
    from m3bind.stages.artifacts import model_dir

    _clear_old_index(out)
    manifests = index_manifests(exp)
    # Without a setting, `m3bind index`'s own default (2 readers): decoding is this stage's
    # bottleneck, and one reader (default_workers() on 2 cores) took 39 s against 27 s for the
    # same, byte-identical index.
    options = {} if workers is None else {"workers": workers}
    model = SearchModel.load(model_dir(exp), device=str(exp.device))
    build_index(model, manifests, out, preprocessed=preprocessed_studies(exp, model), **options)
    return out


def preprocessed_studies(exp: Experiment, model) -> dict[str, tuple[object, int]]:
    """Absolute path -> (rows, position) of every test and paired study the evaluation has just
    preprocessed, for the modalities whose saved model preprocesses as the experiment does: the
    index then embeds those copies instead of decoding its 3,000 files again (the same tensors
    in the same batches, so the same vectors)."""
    import os

    from m3bind.data.store import RowStore

    found: dict[str, tuple[object, int]] = {}
    models = model.encoder.models
    for modality in exp.modalities:
        if modality not in models or models[modality].preprocess != exp.preprocess(modality):
            continue
        sources = [(False, "test")]
        if modality in exp.cfg.paired_manifests:
            sources += [(True, split) for split in ("val", "test")]
        for paired, split in sources:
            whole = exp.paired_manifest(modality) if paired else exp.manifest(modality)
            manifest = whole.split(split)
            if not len(manifest.table):
                continue
            studies = exp.studies(modality, split, paired=paired)
            if not isinstance(studies.images, RowStore):  # streamed from the files: there is no copy
                continue
            for position, row in enumerate(studies.rows):
                found.setdefault(os.path.abspath(manifest.absolute_path(row - 1)), (studies.images, position))
    return found

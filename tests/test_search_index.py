"""Building search indexes: contents, resume after an interruption, add/remove, bad files, shards, model identity."""
from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from m3bind.errors import CheckpointError, DataError
from m3bind.search.building import build_index, merge_indexes, remove_studies
from m3bind.search.embedding import shard_of
from m3bind.search.index import SearchIndex
from m3bind.search.layout import ShardRecord
from m3bind.search.model_identity import SearchModel, model_fingerprint
from m3bind.search.query import embed_study, search_text
from m3bind.search.vectors import VectorIndexSettings

from test_search_support import MODALITIES, world  # noqa: F401  (world is a fixture)


@pytest.fixture(scope="module")
def model(world):
    return SearchModel.load(world.model)


@pytest.fixture(scope="module")
def reference(world, model, tmp_path_factory):
    """One clean build of the main manifest: {path: vector} and its folder."""
    folder = tmp_path_factory.mktemp("reference") / "index"
    build_index(model, [world.manifest], folder, workers=0, batch_size=4)
    return folder, _vectors_by_path(folder)


def _vectors_by_path(folder) -> dict[str, np.ndarray]:
    index = SearchIndex.open(folder)
    try:
        ids = index.store.all_ids().tolist()
        records = index.store.records(ids)
        return {records[i].path: v for i, v in zip(ids, index.store.vectors(ids))}
    finally:
        index.close()


def _paths_in_table(folder) -> list[str]:
    with sqlite3.connect(folder / "metadata.sqlite") as connection:
        return [path for (path,) in connection.execute("SELECT path FROM studies")]


def test_build_indexes_every_study_once_with_its_metadata_and_embedding(world, model, reference):
    folder, vectors = reference
    table = pd.read_csv(world.manifest, dtype=str, keep_default_na=False)
    assert len(vectors) == len(table) == 15
    index = SearchIndex.open(folder)
    try:
        assert len(index) == 15 and index.vectors.kind == "flat"
        assert index.store.modality_counts() == {m: 3 for m in sorted(MODALITIES)}
        for row, entry in enumerate(table.itertuples(), start=1):
            path = str((world.root / entry.path).resolve())
            [study_id] = index.store.filter_ids(patient=entry.patient_id, modalities=[entry.modality]).tolist()
            record = index.study(study_id)
            assert record.path == path and record.report == entry.text and record.manifest_row == row
            assert record.labels == [label for label in entry.labels.split("|") if label]
            assert record.manifest == os.path.abspath(world.manifest)
            # The stored vector is what the model gives for that file alone.
            alone = embed_study(model, path, entry.modality)
            np.testing.assert_allclose(vectors[path], alone, atol=1e-5)
            assert np.linalg.norm(vectors[path]) == pytest.approx(1.0, abs=1e-5)
    finally:
        index.close()


def test_worker_processes_give_the_same_vectors(world, model, reference, tmp_path):
    build_index(model, [world.manifest], tmp_path / "index", workers=2, batch_size=3)
    parallel = _vectors_by_path(tmp_path / "index")
    assert parallel.keys() == reference[1].keys()
    for path, vector in reference[1].items():
        np.testing.assert_allclose(parallel[path], vector, atol=1e-5)


class _Interrupt(Exception):
    pass


def test_an_interrupted_build_resumes_without_duplicates_or_losses(world, model, reference, tmp_path):
    folder = tmp_path / "index"
    batches = []

    def stop_after_two_batches(done, total):
        batches.append(done)
        if len(batches) == 2:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        build_index(model, [world.manifest], folder, workers=0, batch_size=4, progress=stop_after_two_batches)
    # Two committed batches; a batch holds one modality, and each has 3 studies here.
    assert len(_paths_in_table(folder)) == 6
    with pytest.raises(CheckpointError, match="not finished"):
        SearchIndex.open(folder)
    done = []
    report = build_index(model, [world.manifest], folder, workers=0, batch_size=4,
                         progress=lambda d, t: done.append((d, t)))
    assert report.already_indexed == 6 and report.embedded == 9 and report.total == 15
    assert done[-1] == (9, 9)                           # only the missing studies were embedded
    paths = _paths_in_table(folder)
    assert len(paths) == len(set(paths)) == 15
    resumed = _vectors_by_path(folder)
    assert resumed.keys() == reference[1].keys()
    for path, vector in reference[1].items():
        np.testing.assert_allclose(resumed[path], vector, atol=1e-5)
    with SearchIndexContext(folder) as index:
        assert len(index) == 15


def test_a_killed_build_resumes(world, model, reference, tmp_path):
    # SIGKILL: no exception unwinds, no connection is closed; only what was committed survives.
    folder = tmp_path / "index"
    code = (
        "import os, signal, sys\n"
        "from m3bind.search.building import build_index\n"
        "from m3bind.search.model_identity import SearchModel\n"
        "done = []\n"
        "def kill_after_three(d, t):\n"
        "    done.append(d)\n"
        "    if len(done) == 3:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "build_index(SearchModel.load(sys.argv[1]), [sys.argv[2]], sys.argv[3], workers=2, batch_size=2,\n"
        "            progress=kill_after_three)\n")
    result = subprocess.run([sys.executable, "-c", code, str(world.model), str(world.manifest), str(folder)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert len(_paths_in_table(folder)) == 5            # X-ray batches of 2 + 1, then 2 CTs
    report = build_index(model, [world.manifest], folder, workers=0)
    assert (report.already_indexed, report.embedded, report.total) == (5, 10, 15)
    resumed = _vectors_by_path(folder)
    assert resumed.keys() == reference[1].keys()
    for path, vector in reference[1].items():
        np.testing.assert_allclose(resumed[path], vector, atol=1e-5)


class SearchIndexContext:
    def __init__(self, folder):
        self.index = SearchIndex.open(folder)

    def __enter__(self):
        return self.index

    def __exit__(self, *exc):
        self.index.close()


def test_add_appends_only_new_studies_and_a_second_build_is_refused(world, model, reference, tmp_path):
    folder = tmp_path / "index"
    shutil.copytree(reference[0], folder)
    with pytest.raises(CheckpointError, match="--add"):
        build_index(model, [world.manifest], folder, workers=0)
    report = build_index(model, [world.manifest, world.extra_manifest], folder, add=True, workers=0)
    assert (report.embedded, report.already_indexed, report.total) == (5, 15, 20)
    again = build_index(model, [world.extra_manifest], folder, add=True, workers=0)
    assert (again.embedded, again.total) == (0, 20)
    with SearchIndexContext(folder) as index:
        assert len(index) == 20 and len(index.store.filter_ids(patient="P4")) == 5
    with pytest.raises(CheckpointError, match="no index here"):
        build_index(model, [world.manifest], tmp_path / "nothing", add=True, workers=0)


def test_remove_drops_studies_from_search_and_ids_are_never_reused(world, model, reference, tmp_path):
    folder = tmp_path / "index"
    shutil.copytree(reference[0], folder)
    with SearchIndexContext(folder) as index:
        top = [hit.study.id for hit in search_text(index, model, "pleural effusion", k=15)]
    gone = top[:3]
    report = remove_studies(model, folder, gone)
    assert report.removed == 3 and report.total == 12
    with SearchIndexContext(folder) as index:
        after = [hit.study.id for hit in search_text(index, model, "pleural effusion", k=15)]
        assert after == [i for i in top if i not in gone]
        assert all(index.study(i) is None for i in gone)
    with pytest.raises(DataError, match="no studies with id 9999"):
        remove_studies(model, folder, [9999])
    build_index(model, [world.extra_manifest], folder, add=True, workers=0)
    with SearchIndexContext(folder) as index:
        new_ids = index.store.filter_ids(patient="P4").tolist()
        assert min(new_ids) > max(top)


def test_a_bad_file_stops_the_build_naming_it_or_is_skipped_and_counted(world, model, tmp_path):
    table = pd.read_csv(world.manifest, dtype=str, keep_default_na=False)
    root = tmp_path / "archive"
    shutil.copytree(world.root / "studies", root / "studies")
    broken = root / table.at[4, "path"]
    broken.write_bytes(b"not a DICOM or any image at all")
    table.at[7, "path"] = "studies/xray/missing.dcm"
    manifest = root / "manifest.csv"
    table.to_csv(manifest, index=False)
    with pytest.raises(DataError) as error:
        build_index(model, [manifest], tmp_path / "strict", workers=0, batch_size=2)
    # X-rays are embedded first (the manifest's first modality), so the missing X-ray stops it.
    assert "missing.dcm: file not found" in str(error.value) and "manifest.csv, row 8" in str(error.value)
    report = build_index(model, [manifest], tmp_path / "lenient", workers=0, batch_size=2, on_error="skip")
    assert report.total == 13 and len(report.skipped) == 2
    problems = " ".join(skipped.problem for skipped in report.skipped)
    assert broken.name in problems and "missing.dcm" in problems


def test_an_unknown_modality_is_an_error_naming_the_manifest_row(world, model, tmp_path):
    table = pd.read_csv(world.manifest, dtype=str, keep_default_na=False)
    table.at[2, "modality"] = "mri"
    manifest = world.root / "with_mri.csv"
    table.to_csv(manifest, index=False)
    with pytest.raises(DataError, match=r"with_mri.csv, row 3, column 'modality': modality 'mri'"):
        build_index(model, [manifest], tmp_path / "index", workers=0)


def test_the_index_refuses_another_model(world, model, reference, tmp_path):
    other = SearchModel.load(world.other_model)
    assert other.fingerprint != model.fingerprint
    with SearchIndexContext(reference[0]) as index:
        with pytest.raises(CheckpointError, match="did not make the index"):
            search_text(index, other, "pleural effusion")
        with pytest.raises(CheckpointError, match="did not make the index"):
            SearchModel.load(world.other_model, expected_fingerprint=index.description.model.fingerprint)
    folder = tmp_path / "index"
    shutil.copytree(reference[0], folder)
    with pytest.raises(CheckpointError, match="did not make the index"):
        build_index(other, [world.extra_manifest], folder, add=True, workers=0)


def test_fingerprint_follows_every_file_of_the_model(world, tmp_path):
    copy = shutil.copytree(world.model, tmp_path / "model")
    before = model_fingerprint(copy)
    assert before == model_fingerprint(world.model)
    student_file = next(p for p in sorted((copy / "student").rglob("*")) if p.is_file())
    student_file.write_bytes(student_file.read_bytes() + b" ")
    assert model_fingerprint(copy) != before


def test_shards_partition_the_studies_and_merge_into_the_single_build(world, model, reference, tmp_path):
    shards = [tmp_path / f"shard{i}" for i in range(3)]
    for i, folder in enumerate(shards):
        build_index(model, [world.manifest], folder, shard=ShardRecord(index=i, count=3), workers=0)
    parts = [set(_paths_in_table(folder)) for folder in shards]
    assert sum(len(p) for p in parts) == 15 and set.union(*parts) == set(reference[1])
    for i, part in enumerate(parts):
        assert all(shard_of(path, 3) == i for path in part)
    with pytest.raises(CheckpointError, match="shards 2/3 are missing"):
        merge_indexes(shards[:2], tmp_path / "partial")
    report = merge_indexes(shards, tmp_path / "merged")
    assert report.total == 15
    merged = _vectors_by_path(tmp_path / "merged")
    sharded = {path: vector for folder in shards for path, vector in _vectors_by_path(folder).items()}
    for path, vector in reference[1].items():
        np.testing.assert_array_equal(merged[path], sharded[path])   # merging copies the vectors as they are
        np.testing.assert_allclose(merged[path], vector, atol=1e-5)  # other batches: last bits may differ
    with SearchIndexContext(tmp_path / "merged") as index:
        assert index.description.shard is None


def test_merge_refuses_an_unfinished_shard(world, model, tmp_path):
    shards = [tmp_path / f"shard{i}" for i in range(2)]
    build_index(model, [world.manifest], shards[0], shard=ShardRecord(index=0, count=2), workers=0)

    def interrupt(done, total):
        raise _Interrupt

    with pytest.raises(_Interrupt):
        build_index(model, [world.manifest], shards[1], shard=ShardRecord(index=1, count=2), workers=0,
                    batch_size=2, progress=interrupt)
    with pytest.raises(CheckpointError, match="shard1: this shard's build did not finish"):
        merge_indexes(shards, tmp_path / "merged")


@pytest.mark.parametrize("settings, kind", [
    (VectorIndexSettings(type="ivf"), "ivf"),
    (VectorIndexSettings(type="hnsw"), "hnsw"),
    (VectorIndexSettings(exact_threshold=10), "ivf"),      # auto: above the threshold
])
def test_vector_index_kind_follows_settings_and_survives_removal(world, model, reference, tmp_path, settings, kind):
    folder = tmp_path / "index"
    report = build_index(model, [world.manifest], folder, settings=settings, workers=0)
    assert report.kind == kind
    with SearchIndexContext(folder) as index, SearchIndexContext(reference[0]) as exact:
        # One list / a 15-node graph: the approximate search is exhaustive here.
        assert ([h.study.path for h in search_text(index, model, "necrosis", k=15)]
                == [h.study.path for h in search_text(exact, model, "necrosis", k=15)])
        first = index.store.all_ids()[:2].tolist()
    remove_studies(model, folder, first)
    with SearchIndexContext(folder) as index:
        assert len(index) == 13 and index.vectors.kind == kind
        assert not set(first) & {h.study.id for h in search_text(index, model, "necrosis", k=15)}


def test_auto_switches_to_exact_when_removals_shrink_the_index(world, model, tmp_path):
    folder = tmp_path / "index"
    assert build_index(model, [world.manifest], folder, settings=VectorIndexSettings(exact_threshold=14),
                       workers=0).kind == "ivf"
    with SearchIndexContext(folder) as index:
        one = index.store.all_ids()[:1].tolist()
    assert remove_studies(model, folder, one).kind == "flat"


def test_rows_naming_an_already_listed_study_are_reported_not_indexed_twice(world, model, tmp_path):
    table = pd.read_csv(world.manifest, dtype=str, keep_default_na=False)
    repeated = pd.concat([table, table.iloc[[2]]])                    # row 16 repeats row 3
    manifest = world.manifest.parent / "repeated.csv"
    repeated.to_csv(manifest, index=False)
    report = build_index(model, [manifest, world.manifest], tmp_path / "index", workers=0, batch_size=8)
    assert report.total == report.embedded == 15
    # the repeat inside the file, then every row of the second manifest (all listed in the first)
    assert len(report.repeated) == 1 + 15
    first = report.repeated[0]
    assert (first.manifest, first.row, first.first) == (str(manifest), 16, f"{manifest}, row 3")

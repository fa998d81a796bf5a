"""Streaming studies from disk: the on-disk row store, the preprocessed cache and its key,
and equivalence with reading every study directly."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import types

import numpy as np
import pandas as pd
import pytest
import torch

import m3bind.data.store as store_module
from m3bind.config import parse_config
from m3bind.data.manifest import write_manifest
from m3bind.data.readers import read_study
from m3bind.data.store import RowStore, RowWriter, take_rows
from m3bind.data.transforms import build_transform
from m3bind.errors import DataError
from m3bind.experiment import Experiment
from m3bind.train.sampling import sample_batch, step_generator


def test_row_store_reads_any_index_across_shards(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "SHARD_BYTES", 5 * 3 * 4 * 4)  # five rows of (3, 4) float32 per shard
    rows = np.arange(23 * 12, dtype=np.float32).reshape(23, 3, 4)
    with RowWriter(tmp_path / "s") as writer:
        for start in range(0, 23, 7):
            writer.append(rows[start:start + 7])
    store = RowStore(tmp_path / "s")
    assert len(store) == 23 and store.shape == (23, 3, 4)
    assert len(list((tmp_path / "s").glob("shard_*.npy"))) > 3
    index = torch.tensor([22, 0, 5, 5, 13, 4])
    assert np.array_equal(store[index].numpy(), rows[index.numpy()])
    assert np.array_equal(store[3:17:2].numpy(), rows[3:17:2])
    assert np.array_equal(store[-1].numpy(), rows[-1])
    subset = store.subset([20, 2, 9, 11])
    assert len(subset) == 4 and np.array_equal(subset[1:3].numpy(), rows[[2, 9]])
    assert np.array_equal(subset.subset([3, 0])[:].numpy(), rows[[11, 20]])
    assert np.array_equal(take_rows(torch.from_numpy(rows), [1, 2]).numpy(), rows[[1, 2]])
    with pytest.raises(IndexError):
        store[torch.tensor([23])]


def test_a_failed_writer_publishes_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with RowWriter(tmp_path / "s") as writer:
            writer.append(np.zeros((2, 3), dtype=np.float32))
            raise RuntimeError("killed")
    assert not (tmp_path / "s").exists() and not list(tmp_path.iterdir())


def _cohort(tmp_path, n=24, bad=None):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        path = tmp_path / "data" / f"s{i:02d}.npy"
        path.parent.mkdir(exist_ok=True)
        np.save(path, rng.random((80, 72), dtype=np.float32))
        rows.append({"path": f"data/s{i:02d}.npy", "text": f"report {i}", "labels": "cardiomegaly" if i % 3 else "",
                     "split": "train", "patient_id": f"P{i:03d}"})
    if bad is not None:
        (tmp_path / rows[bad]["path"]).write_bytes(b"not an array")
    return write_manifest(pd.DataFrame(rows), tmp_path / "manifest.csv")


def _experiment(tmp_path, manifest, **data):
    cfg = parse_config({"output_dir": str(tmp_path / "run"), "demo_sizes": True,
                        "modalities": {"xray": {"manifest": str(manifest)}}, "data": {"workers": 2, **data}})
    return Experiment(cfg)


def test_streamed_batches_equal_reading_each_study(tmp_path):
    manifest = _cohort(tmp_path)
    exp = _experiment(tmp_path, manifest)
    studies = exp.studies("xray", "train")
    assert isinstance(studies.images, RowStore) and len(studies) == 24
    transform = build_transform("xray", exp.preprocess("xray"))
    table = exp.manifest("xray").split("train")
    for step in range(5):
        index = sample_batch(len(studies), 8, step_generator(0, step, 1))
        direct = torch.stack([transform(read_study(table.absolute_path(int(i)))) for i in index])
        assert torch.equal(studies.images[index], direct)
    assert studies.texts[3] == "report 3" and studies.labels[3] == [] and studies.labels[4] == ["cardiomegaly"]
    assert studies.rows == list(range(1, 25)) and studies.patient_ids[0] == "P000"


def test_cache_is_reused_and_rebuilt_when_a_file_or_the_settings_change(tmp_path, monkeypatch):
    manifest = _cohort(tmp_path)
    first = _experiment(tmp_path, manifest).studies("xray", "train")
    caches = sorted((tmp_path / "run" / "cache").iterdir())
    assert len(caches) == 1

    import m3bind.data.datasets as datasets

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the cache should have been reused")
    monkeypatch.setattr(datasets, "stream_studies", no_rebuild)
    again = _experiment(tmp_path, manifest).studies("xray", "train")
    assert torch.equal(again.images[:], first.images[:])
    monkeypatch.undo()

    np.save(tmp_path / "data" / "s05.npy", np.ones((80, 72), dtype=np.float32))  # a study is replaced
    changed = _experiment(tmp_path, manifest).studies("xray", "train")
    assert len(list((tmp_path / "run" / "cache").iterdir())) == 2
    assert not torch.equal(changed.images[5], first.images[5]) and torch.equal(changed.images[6], first.images[6])

    cfg = parse_config({"output_dir": str(tmp_path / "run"), "demo_sizes": True, "data": {"workers": 0},
                        "modalities": {"xray": {"manifest": str(manifest), "preprocess": {"size": 48}}}})
    resized = Experiment(cfg).studies("xray", "train")
    assert resized.images[0].shape[-1] == 48 and len(list((tmp_path / "run" / "cache").iterdir())) == 3


def test_bad_study_raises_naming_it_or_is_skipped_and_listed(tmp_path):
    manifest = _cohort(tmp_path, bad=7)
    with pytest.raises(DataError) as error:
        _experiment(tmp_path, manifest).studies("xray", "train")
    assert "s07.npy" in str(error.value) and error.value.row == 8
    exp = _experiment(tmp_path, manifest, on_error="skip")
    studies = exp.studies("xray", "train")
    assert len(studies) == 23 and 8 not in studies.rows
    assert [item.row for item in studies.skipped] == [8]
    listed = exp.skipped_studies()
    assert list(listed) == ["xray/train"] and "s07.npy" in listed["xray/train"][0]
    # the skip survives a reload from the cache
    assert _experiment(tmp_path, manifest, on_error="skip").studies("xray", "train").skipped[0].row == 8


def test_a_bad_study_on_a_later_split_is_named_by_its_row_in_the_file(tmp_path):
    """A split is a subset of the file's rows: its 3rd study is not the file's row 3. Errors and
    the skip list name the row a user finds in the manifest, also when read back from the cache
    (and from a cache written before file rows were kept, which stored the split's row)."""
    import json

    manifest = _cohort(tmp_path, bad=9)
    table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    table.loc[7:, "split"] = "test"  # file rows 8-24 are the test split; s09.npy is file row 10
    table.to_csv(manifest, index=False)
    with pytest.raises(DataError, match=r"s09\.npy, row 10: ") as error:
        _experiment(tmp_path, manifest).studies("xray", "test")
    assert error.value.row == 10
    studies = _experiment(tmp_path, manifest, on_error="skip").studies("xray", "test")
    assert [(item.row, item.index) for item in studies.skipped] == [(10, 2)]
    assert 3 not in studies.rows and len(studies) == 16  # rows index the split's table
    exp = _experiment(tmp_path, manifest, on_error="skip")
    assert [item.row for item in exp.studies("xray", "test").skipped] == [10]
    assert exp.skipped_studies()["xray/test"][0].startswith("row 10 (data/s09.npy): ")
    meta = next((tmp_path / "run" / "cache").glob("xray-test-*/meta.json"))
    saved = json.loads(meta.read_text())
    saved["skipped"] = [{"row": 3, "path": "data/s09.npy", "problem": "old cache"}]
    meta.write_text(json.dumps(saved))
    old = _experiment(tmp_path, manifest, on_error="skip").studies("xray", "test").skipped
    assert [(item.row, item.problem) for item in old] == [(10, "old cache")]


def test_building_the_cache_leaves_the_global_rng_alone(tmp_path):
    # Training after a cold cache must draw the same dropout masks as after a warm one.
    manifest = _cohort(tmp_path, n=6)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    _experiment(tmp_path, manifest).studies("xray", "train")
    assert torch.equal(torch.rand(3), expected)


def test_embedding_batches_are_bounded_by_input_bytes():
    """Evaluation and frozen-tower caches embed at most 64 MiB of input per batch: 128 demo
    studies, but one published-size CT volume (221 MB) at a time rather than 128 (28 GB)."""
    from m3bind.models.embedding import image_batch_size

    assert image_batch_size(torch.zeros(500, 1, 32, 64, 64)) == 128        # demo CT: 512 KiB each
    assert image_batch_size(torch.zeros(3, 1, 32, 64, 64)) == 128          # the cap, not the length
    assert image_batch_size(torch.empty(0, 3, 224, 224), most=128) == 111  # 588 KiB -> 64 MiB / 588 KiB
    assert image_batch_size(types.SimpleNamespace(shape=(10, 1, 240, 480, 480))) == 1
    assert image_batch_size(["a text", "another"]) == 128                   # no shape: the cap


@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_studies_equal_the_cache_without_writing_one(tmp_path, workers):
    """data.cache_studies: never reads the study files on every access: the same rows, texts and
    labels as the on-disk cache, for any index, subset and embedding batch; nothing is written;
    the global RNG is left alone."""
    from m3bind.data.datasets import StreamedImages
    from m3bind.models.embedding import embed_in_batches

    manifest = _cohort(tmp_path)
    cached = _experiment(tmp_path, manifest, cache_studies="always").studies("xray", "train")
    exp = _experiment(tmp_path / "streamed", manifest, cache_studies="never", workers=workers)
    assert not exp.caches_studies("xray")
    torch.manual_seed(5)
    expected = torch.rand(2)
    torch.manual_seed(5)
    streamed = exp.studies("xray", "train")
    assert isinstance(streamed.images, StreamedImages)
    assert streamed.images.shape == cached.images.shape
    assert torch.equal(torch.rand(2), expected)
    for index in (torch.tensor([22, 0, 5, 5, 13]), slice(3, 17, 2), 7, -1):
        assert torch.equal(streamed.images[index], cached.images[index])
    subset = take_rows(streamed.images, [20, 2, 9])
    assert torch.equal(subset[1:], cached.images[torch.tensor([2, 9])])
    assert torch.equal(subset.subset([2, 0])[:], cached.images[torch.tensor([9, 20])])
    mean = lambda batch: batch.flatten(1).mean(1, keepdim=True)
    assert torch.equal(embed_in_batches(mean, streamed.images, 5), embed_in_batches(mean, cached.images, 5))
    assert (streamed.texts, streamed.labels, streamed.patient_ids, streamed.rows) == \
        (cached.texts, cached.labels, cached.patient_ids, cached.rows)
    assert not (tmp_path / "streamed" / "run" / "cache").exists()


def test_a_bad_streamed_study_is_named_when_it_is_read(tmp_path):
    manifest = _cohort(tmp_path, bad=7)
    streamed = _experiment(tmp_path, manifest, cache_studies="never").studies("xray", "train")
    assert streamed.images[0:7].shape[0] == 7  # the good ones read
    with pytest.raises(DataError) as error:
        streamed.images[torch.tensor([1, 7])]
    assert "s07.npy" in str(error.value) and error.value.row == 8


def test_auto_caches_what_trains_from_pixels_or_skips_and_streams_frozen_published_towers(tmp_path):
    manifest = _cohort(tmp_path, n=4)
    config = lambda model, **data: Experiment(parse_config({
        "output_dir": str(tmp_path / "run"), "demo_sizes": True,
        "modalities": {"xray": {"manifest": str(manifest), "model": model}},
        "data": data}))
    published = {"type": "open_clip", "path": "unused"}
    assert config({}).caches_studies("xray")                                  # built-in: pretrains on pixels
    assert not config(published).caches_studies("xray")                       # frozen tower: reads once a stage
    assert config(published, on_error="skip").caches_studies("xray")          # one pass decides what is left out
    assert config(published, cache_studies="always").caches_studies("xray")
    assert not config({}, cache_studies="never").caches_studies("xray")
    # A frozen tower's split is still cached while its copy fits in cache_limit_gb (here 4 studies
    # of 64 x 64 float32: 66 kB), and streamed above it.
    from m3bind.data.datasets import StreamedImages

    saved_model = {"type": "builtin", "path": "unused"}  # starts from a saved model: no pretraining
    assert isinstance(config(saved_model).studies("xray", "train").images, RowStore)
    shutil.rmtree(tmp_path / "run")
    assert isinstance(config(saved_model, cache_limit_gb=6e-5).studies("xray", "train").images, StreamedImages)
    assert isinstance(config(saved_model, cache_limit_gb=7e-5).studies("xray", "train").images, RowStore)


def test_a_wfdb_record_is_fingerprinted_by_header_and_signal_whichever_name_the_manifest_uses(tmp_path):
    """A replaced signal file must rebuild the cache also when the manifest names the record bare
    ('rec') or by its signal file ('rec.dat'); a bare DICOM file name stays itself."""
    import os

    from m3bind.experiment import _file_fingerprint

    (tmp_path / "rec.hea").write_text("rec 1 500 10\n")
    (tmp_path / "rec.dat").write_bytes(b"\0" * 20)
    (tmp_path / "IM0001").write_bytes(b"dicom")
    before = {name: _file_fingerprint(tmp_path / name) for name in ("rec", "rec.hea", "rec.dat")}
    assert all("rec.hea:" in f and "rec.dat:" in f for f in before.values())
    (tmp_path / "rec.dat").write_bytes(b"\1" * 24)
    os.utime(tmp_path / "rec.dat", ns=(1, 1))
    assert all(_file_fingerprint(tmp_path / name) != before[name] for name in before)
    assert _file_fingerprint(tmp_path / "IM0001").startswith("IM0001:5:")


def test_what_reading_leaves_out_of_a_study_file_is_counted_per_split_and_kept_with_the_cache(tmp_path):
    """A 15-lead ECG (the 12 leads and Frank's X, Y, Z) trains on its 12 leads; the split says
    how many studies lost which channels, naming the first, instead of dropping them silently."""
    import wfdb

    from m3bind.data.datasets import read_notes

    leads = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    rng = np.random.default_rng(0)
    rows = []
    for i in range(5):
        names = leads + (["vx", "vy", "vz"] if i != 1 else [])
        wfdb.wrsamp(f"r{i}", fs=500, units=["mV"] * len(names), sig_name=names,
                    p_signal=rng.normal(0, 0.3, (5000, len(names))), fmt=["16"] * len(names), write_dir=str(tmp_path))
        rows.append({"path": f"r{i}.hea", "text": f"report {i}", "split": "train"})
    manifest = write_manifest(pd.DataFrame(rows), tmp_path / "ecg.csv")
    cfg = {"output_dir": str(tmp_path / "run"), "demo_sizes": True, "data": {"workers": 0},
           "modalities": {"ecg": {"manifest": str(manifest)}}}
    exp = Experiment(parse_config(cfg))
    assert len(exp.studies("ecg", "train")) == 5
    expected = {"ecg/train": ["4 studies: channels not used: vx, vy, vz (first: row 1 (r0.hea))"]}
    assert exp.read_notes() == expected
    assert Experiment(parse_config(cfg)).studies("ecg", "train").read_notes[0].count == 4  # from the cache
    again = Experiment(parse_config(cfg))
    again.studies("ecg", "train")
    assert again.read_notes() == expected
    assert read_notes({"other_series_left_out": ["1.2.3: 1 file(s)"]}) == [
        "1 other DICOM series in the folder left out (the study is its series with the most slices)"]
    assert read_notes({"dropped_channels": []}) == []


def test_a_writer_given_a_smaller_shard_holds_fewer_rows_before_writing_them(tmp_path):
    """Writers filled side by side (one per SESKD teacher) each take a share of a shard's memory."""
    rows = np.arange(40 * 8, dtype=np.float32).reshape(40, 8)
    with RowWriter(tmp_path / "s", shard_bytes=10 * 8 * 4) as writer:   # ten rows per shard
        for start in range(0, 40, 3):
            writer.append(rows[start:start + 3])
            assert writer.buffered < 10                                 # written out once ten are held
    assert len(list((tmp_path / "s").glob("shard_*.npy"))) == 4
    assert np.array_equal(RowStore(tmp_path / "s")[:].numpy(), rows)


def test_a_split_is_cached_whole_or_not_at_all_and_two_processes_can_build_it_at_once(tmp_path, monkeypatch):
    """The processes of a launched group build the same split's cache at once: each builds in a
    folder of its own and publishes it by one rename, under a lock, so none deletes what another
    is writing (a launched run failed so before). A folder half built in place by an older
    release is replaced, and a killed build leaves only its own temporary folder behind."""
    import threading

    import m3bind.data.datasets as datasets

    manifest = _cohort(tmp_path, n=8)
    expected = _experiment(tmp_path, manifest).studies("xray", "train").images[:]
    cache_root = tmp_path / "run" / "cache"
    (built,) = [p for p in cache_root.iterdir() if p.name.startswith("xray-train-")]
    assert not [p for p in cache_root.iterdir() if p.name.endswith(".tmp")]
    shutil.rmtree(built)
    (built / "images").mkdir(parents=True)       # an older release's build, killed half way
    assert torch.equal(_experiment(tmp_path, manifest).studies("xray", "train").images[:], expected)
    assert (built / "meta.json").exists()

    shutil.rmtree(built)
    real = datasets.stream_studies
    monkeypatch.setattr(datasets, "stream_studies", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        _experiment(tmp_path, manifest).studies("xray", "train")
    assert not built.exists() and not [p for p in cache_root.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.setattr(datasets, "stream_studies", real)
    # A build killed outright (no clean-up ran) leaves its folder; the next build on the host
    # removes it once its process is gone, and leaves a live builder's and another host's alone.
    from m3bind.experiment import _HOST

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    abandoned = cache_root / f".{built.name}.{_HOST}.{dead.pid}.0badc0de.tmp"
    live = cache_root / f".{built.name}.{_HOST}.{os.getppid()}.0badc0de.tmp"
    elsewhere = cache_root / f".{built.name}.another-host.{dead.pid}.0badc0de.tmp"
    for folder in (abandoned, live, elsewhere):
        (folder / "images").mkdir(parents=True)
    assert torch.equal(_experiment(tmp_path, manifest).studies("xray", "train").images[:], expected)
    assert not abandoned.exists() and live.exists() and elsewhere.exists()
    shutil.rmtree(live), shutil.rmtree(elsewhere), shutil.rmtree(built)

    results, errors = {}, []

    def build(name):
        try:
            results[name] = _experiment(tmp_path, manifest).studies("xray", "train").images[:]
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=build, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and all(torch.equal(images, expected) for images in results.values())
    assert [p.name for p in cache_root.iterdir() if p.name.startswith("xray-train-")] == [built.name]

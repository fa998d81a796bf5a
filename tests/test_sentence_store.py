"""Sentence vectors kept on disk between processes (m3bind.models.sentence_store)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from m3bind.errors import DataError
from m3bind.models import sentence_store
from m3bind.models.sentence_store import KEY_BYTES, SentenceVectorStore, store_tag, text_key

WIDTH = 4


def _vectors(n: int, offset: int = 0) -> dict[bytes, torch.Tensor]:
    return {text_key(f"text {offset + i}".encode()): torch.arange(WIDTH, dtype=torch.float32) + offset + i
            for i in range(n)}


def test_vectors_written_by_one_store_are_read_back_bit_for_bit_by_another(tmp_path):
    first = SentenceVectorStore(tmp_path / "store", WIDTH)
    wanted = _vectors(5)
    first.put(wanted)
    waiting = first.get(wanted)                           # waiting to be written, already served
    assert list(waiting) == list(wanted) and all(torch.equal(waiting[k], v) for k, v in wanted.items())
    assert not (tmp_path / "store").exists()              # nothing written before a flush
    first.flush()
    first.flush()                                         # nothing waiting: no empty shard
    assert len(list((tmp_path / "store").glob("*.keys.npy"))) == 1
    second = SentenceVectorStore(tmp_path / "store", WIDTH)
    got = second.get([*wanted, text_key(b"never stored")])
    assert list(got) == list(wanted)
    for key, vector in wanted.items():
        assert torch.equal(got[key], vector)
    # A key already on disk is not written again.
    second.put(dict(list(wanted.items())[:2]))
    second.flush()
    assert len(list((tmp_path / "store").glob("*.keys.npy"))) == 1
    assert len(second) == 5


def test_a_full_buffer_is_written_without_waiting_for_the_stage_to_end(tmp_path, monkeypatch):
    monkeypatch.setattr(sentence_store, "FLUSH_TEXTS", 3)
    store = SentenceVectorStore(tmp_path, WIDTH)
    store.put(_vectors(2))
    assert not list(tmp_path.glob("*.npy"))
    store.put(_vectors(2, offset=2))                      # 4 waiting >= 3: one shard of 4
    shards = list(tmp_path.glob("*.keys.npy"))
    assert len(shards) == 1 and np.load(shards[0]).shape == (4, KEY_BYTES)
    assert not list(tmp_path.glob(".*.tmp"))              # written under a temporary name, then renamed
    assert len(SentenceVectorStore(tmp_path, WIDTH).get(_vectors(4))) == 4


def test_a_shard_left_half_written_is_not_read_and_a_damaged_one_is_named(tmp_path):
    store = SentenceVectorStore(tmp_path, WIDTH)
    store.put(_vectors(3))
    store.flush()
    # A writer killed between its two renames leaves vectors without keys: not yet a shard.
    np.save(tmp_path / "orphan.vectors.npy", np.zeros((2, WIDTH), dtype=np.float32))
    assert len(SentenceVectorStore(tmp_path, WIDTH)) == 3
    # Keys whose vectors have the wrong width, count or dtype, or a file that is not .npy at all.
    bad = [("wide", np.zeros((2, KEY_BYTES), np.uint8), np.zeros((2, WIDTH + 1), np.float32), "shape"),
           ("short", np.zeros((2, KEY_BYTES), np.uint8), np.zeros((1, WIDTH), np.float32), "1 sentence vectors for 2"),
           ("ints", np.zeros((2, KEY_BYTES), np.int64), np.zeros((2, WIDTH), np.float32), "dtype int64")]
    for name, keys, vectors, problem in bad:
        folder = tmp_path / name
        folder.mkdir()
        np.save(folder / "a.keys.npy", keys)
        np.save(folder / "a.vectors.npy", vectors)
        with pytest.raises(DataError, match=f"a\\.(keys|vectors)\\.npy.*{problem}.*delete the folder"):
            SentenceVectorStore(folder, WIDTH).get([b"x" * KEY_BYTES])
    (tmp_path / "pickled").mkdir()
    np.save(tmp_path / "pickled" / "a.keys.npy", np.array([{"not": "numbers"}], dtype=object))
    with pytest.raises(DataError, match="a.keys.npy: not a readable sentence-vector shard"):
        len(SentenceVectorStore(tmp_path / "pickled", WIDTH))


def test_vectors_of_another_backbone_torch_release_or_device_kind_live_apart():
    tags = {store_tag("a" * 64, "cpu"), store_tag("b" * 64, "cpu"), store_tag("a" * 64, "cuda")}
    assert len(tags) == 3 and store_tag("a" * 64, "cpu") == store_tag("a" * 64, "cpu")

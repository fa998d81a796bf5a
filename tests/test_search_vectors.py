"""The FAISS layer: kind selection, recall of the approximate kinds, removal, filters, save/load."""
from __future__ import annotations

import numpy as np
import pytest

from m3bind.errors import CheckpointError
from m3bind.search.vectors import VectorIndex, VectorIndexSettings, new_vector_index, training_size


def clustered(n: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    """Unit vectors around random centres, like embeddings of studies with shared findings."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    points = centres[rng.integers(0, clusters, n)] + 0.35 * rng.normal(size=(n, dim))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def _filled(kind: str, vectors: np.ndarray, settings: VectorIndexSettings) -> VectorIndex:
    index = new_vector_index(kind, vectors.shape[1], len(vectors), settings)
    if training_size(index):
        index.train(vectors[: training_size(index)])
    index.add(np.arange(100, 100 + len(vectors)), vectors)
    return index


def test_auto_is_exact_up_to_the_threshold_and_ivf_above():
    settings = VectorIndexSettings(exact_threshold=1000)
    assert settings.kind_for(1000) == "flat" and settings.kind_for(1001) == "ivf"
    assert VectorIndexSettings(type="hnsw").kind_for(10) == "hnsw"
    assert settings.lists_for(1_000_000) == 4000                 # 4 sqrt(n)
    assert settings.lists_for(2000) == 51                        # at least 39 training points per list
    assert VectorIndexSettings(nlist=64).lists_for(10) == 10     # never more lists than vectors
    assert settings.probes_for(4000) == 250 and VectorIndexSettings(nprobe=8).probes_for(4) == 4


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_kinds_find_the_exact_neighbours(kind):
    both = clustered(20_200, 32, 50, seed=0)
    data, queries = both[:20_000], both[20_000:]        # queries from the same distribution
    settings = VectorIndexSettings()
    exact = _filled("flat", data, settings)
    approximate = _filled(kind, data, settings)
    _, truth = exact.search(queries, 10)
    _, found = approximate.search(queries, 10)
    recall = np.mean([len(set(t) & set(f)) / 10 for t, f in zip(truth, found)])
    assert recall >= 0.95, recall
    scores, ids = exact.search(queries[:1], 3)
    np.testing.assert_allclose(scores[0], np.sort(data @ queries[0])[::-1][:3], rtol=1e-5)
    assert ids.min() >= 100                                       # the ids given, not positions


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_removal_and_allowed_ids(kind):
    data = clustered(500, 8, 5, seed=2)
    index = _filled(kind, data, VectorIndexSettings(nlist=4, nprobe=4))
    index.remove([100, 101])
    assert len(index) == 498
    _, ids = index.search(data[:2], 5)
    assert not {100, 101} & set(ids.ravel().tolist())
    allowed = np.array([150, 160, 170])
    _, ids = index.search(data[:1], 5, allowed)
    assert set(ids[0][ids[0] >= 0].tolist()) == {150, 160, 170} and (ids[0] == -1).sum() == 2


def test_hnsw_cannot_remove():
    index = _filled("hnsw", clustered(50, 8, 2, seed=3), VectorIndexSettings())
    assert not index.can_remove
    with pytest.raises(ValueError, match="rebuild"):
        index.remove([100])


def test_save_load_round_trip_and_checks(tmp_path):
    data = clustered(300, 8, 3, seed=4)
    settings = VectorIndexSettings(nlist=4)
    index = _filled("ivf", data, settings)
    index.save(tmp_path / "v.faiss")
    loaded = VectorIndex.load(tmp_path / "v.faiss", "ivf", 8, settings)
    for a, b in zip(index.search(data[:5], 4), loaded.search(data[:5], 4)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(CheckpointError, match="expected a 8-dimensional flat index"):
        VectorIndex.load(tmp_path / "v.faiss", "flat", 8, settings)
    with pytest.raises(CheckpointError, match="expected a 16-dimensional ivf index"):
        VectorIndex.load(tmp_path / "v.faiss", "ivf", 16, settings)
    (tmp_path / "bad.faiss").write_bytes(b"garbage" * 10)
    with pytest.raises(CheckpointError, match="unreadable FAISS index"):
        VectorIndex.load(tmp_path / "bad.faiss", "ivf", 8, settings)
    with pytest.raises(CheckpointError, match="not found"):
        VectorIndex.load(tmp_path / "none.faiss", "ivf", 8, settings)

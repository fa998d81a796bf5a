"""Searching: ranking by cosine similarity, filters, query by study file or indexed study, bad queries."""
from __future__ import annotations

import numpy as np
import pytest

from m3bind.errors import ConfigError, DataError
from m3bind.search.building import build_index
from m3bind.search.index import SearchIndex
from m3bind.search.model_identity import SearchModel
from m3bind.search.query import embed_study, search_similar, search_study, search_text
from m3bind.search.vectors import VectorIndexSettings

from test_search_support import world  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def model(world):
    return SearchModel.load(world.model)


@pytest.fixture(scope="module")
def index(world, model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("query") / "index"
    build_index(model, [world.manifest], folder, workers=0)
    opened = SearchIndex.open(folder)
    yield opened
    opened.close()


def _brute_force(index, query):
    ids = index.store.all_ids()
    scores = index.store.vectors(ids.tolist()) @ query
    return ids, scores


def test_text_search_ranks_every_study_by_cosine_similarity(index, model):
    hits = search_text(index, model, "pleural effusion", k=15)
    query = model.encoder.encode_texts(["pleural effusion"]).numpy()[0]
    ids, scores = _brute_force(index, query)
    expected = ids[np.argsort(-scores, kind="stable")]
    assert [hit.study.id for hit in hits] == expected.tolist()
    np.testing.assert_allclose([hit.score for hit in hits], np.sort(scores)[::-1], atol=1e-5)
    assert len(search_text(index, model, "pleural effusion", k=4)) == 4


def test_filters_restrict_by_modality_labels_and_patient(index, model):
    ct_and_ecg = search_text(index, model, "effusion", k=15, modalities=["ct", "ecg"])
    assert len(ct_and_ecg) == 6 and {h.study.modality for h in ct_and_ecg} == {"ct", "ecg"}
    scores = [h.score for h in ct_and_ecg]
    assert scores == sorted(scores, reverse=True)
    necrosis = search_text(index, model, "effusion", k=15, labels=["necrosis"])
    assert {h.study.patient_id for h in necrosis} == {"P1", "P2"}
    both = search_text(index, model, "effusion", k=15, labels=["necrosis", "adenocarcinoma"])
    assert [h.study.patient_id for h in both] == ["P2"]          # every label must be present
    patient = search_text(index, model, "effusion", k=15, patient="P3")
    assert len(patient) == 5 and {h.study.patient_id for h in patient} == {"P3"}
    assert search_text(index, model, "effusion", k=15, patient="P3", labels=["glaucoma"]) == []
    with pytest.raises(ConfigError, match="unknown modality mri"):
        search_text(index, model, "effusion", modalities=["mri"])


def test_per_modality_gives_the_best_of_each_modality(index, model):
    hits = search_text(index, model, "effusion", k=2, per_modality=True)
    assert len(hits) == 10 and [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    for modality in ("xray", "ct", "retina", "ecg", "pathology"):
        best = search_text(index, model, "effusion", k=2, modalities=[modality])
        assert [h.study.id for h in hits if h.study.modality == modality] == [h.study.id for h in best]
    two = search_text(index, model, "effusion", k=5, per_modality=True, modalities=["ct", "ecg"], patient="P1")
    assert sorted((h.study.modality, h.study.patient_id) for h in two) == [("ct", "P1"), ("ecg", "P1")]


def test_a_study_finds_itself_first_and_similar_leaves_itself_out(world, index, model):
    path = world.root / "studies" / "ct" / "P2_ct.nii.gz"
    hits = search_study(index, model, path, "ct", k=3)
    assert hits[0].study.path == str(path.resolve()) and hits[0].score == pytest.approx(1.0, abs=1e-5)
    similar = search_similar(index, hits[0].study.id, k=14)
    assert hits[0].study.id not in [h.study.id for h in similar] and len(similar) == 14
    assert [h.study.id for h in similar[:2]] == [h.study.id for h in hits[1:3]]


def test_bad_queries_are_clear_errors(world, index, model):
    with pytest.raises(ConfigError, match="k must be at least 1"):
        search_text(index, model, "effusion", k=0)
    with pytest.raises(ConfigError, match="empty"):
        search_text(index, model, "   ")
    with pytest.raises(ConfigError, match="no 'mri' encoder"):
        search_study(index, model, world.root / "studies" / "ct" / "P1_ct.nii.gz", "mri")
    with pytest.raises(DataError, match="file not found"):
        search_study(index, model, world.root / "nowhere.dcm", "xray")
    with pytest.raises(DataError, match="no studies with id 999"):
        search_similar(index, 999)


def test_filtered_search_on_an_approximate_index_is_exact(world, model, index, tmp_path):
    # nprobe 1 of 2 lists: unfiltered, the IVF index misses what the other list holds;
    # filtered sets below exact_threshold are searched exactly over their stored vectors.
    folder = tmp_path / "ivf"
    build_index(model, [world.manifest], folder, workers=0, settings=VectorIndexSettings(type="ivf", nlist=2, nprobe=1))
    approximate = SearchIndex.open(folder)
    try:
        assert approximate.vectors.index.nlist == 2
        assert len(search_text(approximate, model, "cardiomegaly", k=15)) < 15   # one list probed
        for modalities in (["xray"], ["ct", "retina"]):
            exact = search_text(index, model, "cardiomegaly", k=6, modalities=modalities)
            found = search_text(approximate, model, "cardiomegaly", k=6, modalities=modalities)
            assert [h.study.path for h in found] == [h.study.path for h in exact]
    finally:
        approximate.close()


def test_a_model_ranking_image_queries_centred_searches_by_the_query_minus_its_modality_centre(world, index, model):
    import torch

    centred = SearchModel.load(world.model)
    generator = torch.Generator().manual_seed(0)
    centres = {m: 0.5 * torch.nn.functional.normalize(torch.randn(centred.encoder.shared_dim, generator=generator), dim=0)
               for m in centred.encoder.modalities}
    centred.encoder.set_retrieval_similarity("centred", centres)
    path = world.root / "studies" / "ct" / "P2_ct.nii.gz"
    ids, scores = _brute_force(index, embed_study(centred, path, "ct") - centres["ct"].numpy())
    hits = search_study(index, centred, path, "ct", k=15)
    assert [h.study.id for h in hits] == ids[np.argsort(-scores, kind="stable")].tolist()
    np.testing.assert_allclose([h.score for h in hits], np.sort(scores)[::-1], atol=1e-5)
    # An indexed study as the query: its stored vector minus its own modality's centre.
    study = next(h.study for h in hits if h.study.modality == "ecg")
    ids, scores = _brute_force(index, index.store.vectors([study.id])[0] - centres["ecg"].numpy())
    expected = [i for i in ids[np.argsort(-scores, kind="stable")].tolist() if i != study.id][:14]
    assert [h.study.id for h in search_similar(index, study.id, k=14, model=centred)] == expected
    # Text queries are not image queries: the same hits as with the cosine model.
    assert ([h.study.id for h in search_text(index, centred, "effusion", k=15)]
            == [h.study.id for h in search_text(index, model, "effusion", k=15)])

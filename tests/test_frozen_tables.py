"""Frozen image towers' embedding tables are shared by content: binding, its control, the
ablations, SESKD and a resumed run embed the training studies once per image tower."""
from __future__ import annotations

import copy

import torch

from m3bind.models.binding import BoundModality
from m3bind.models.builtin import build_builtin_model
from m3bind.train.frozen import KEY_FILE, FrozenImageEmbeddings


def _counting(bound: BoundModality) -> list[int]:
    calls = []
    original = bound.model.encode_image
    bound.model.encode_image = lambda batch: calls.append(len(batch)) or original(batch)
    return calls


def test_a_table_of_the_same_studies_and_image_weights_is_read_not_recomputed(tmp_path):
    base = build_builtin_model("ecg", ["Sinus rhythm.", "Atrial fibrillation."], seed=0).eval()
    images = torch.randn(40, 12, 1000, generator=torch.Generator().manual_seed(0))
    shared = tmp_path / "image-embeddings"

    first = BoundModality(copy.deepcopy(base), 16, seed=0)
    calls = _counting(first)
    table = FrozenImageEmbeddings(first, images, directory=tmp_path / "bind", shared=shared, source_key="ecg-train-k1")
    assert sum(calls) == 40
    expected = table[torch.arange(40)].clone()
    (folder,) = shared.iterdir()

    # Another run (binding's text LoRA and another head do not touch the image side): read, not embedded.
    again = BoundModality(copy.deepcopy(base), 16, seed=1)
    again.prepare_for_binding(4, 4.0, 0.0, text=True, image=False)
    calls = _counting(again)
    reused = FrozenImageEmbeddings(again, images, directory=tmp_path / "distill", shared=shared,
                                   source_key="ecg-train-k1")
    assert calls == [] and torch.equal(reused[torch.arange(40)], expected)
    assert len(list(shared.iterdir())) == 1

    # Other studies, a changed image weight or a table without its key (a killed run): embedded again.
    changed = BoundModality(copy.deepcopy(base), 16, seed=0)
    with torch.no_grad():
        next(changed.model.image_tower.parameters()).view(-1)[0] += 1.0
    for bound, key in ((BoundModality(copy.deepcopy(base), 16, seed=0), "ecg-train-k2"), (changed, "ecg-train-k1")):
        calls = _counting(bound)
        FrozenImageEmbeddings(bound, images, directory=tmp_path / "other", shared=shared, source_key=key)
        assert sum(calls) == 40
    assert len(list(shared.iterdir())) == 3
    (folder / KEY_FILE).unlink()
    bound = BoundModality(copy.deepcopy(base), 16, seed=0)
    calls = _counting(bound)
    FrozenImageEmbeddings(bound, images, directory=tmp_path / "y", shared=shared, source_key="ecg-train-k1")
    assert sum(calls) == 40

    # Without a key (hand-built study sets) the run's own folder is used, fresh every time.
    calls = _counting(bound)
    FrozenImageEmbeddings(bound, images, directory=tmp_path / "own", shared=shared)
    FrozenImageEmbeddings(bound, images, directory=tmp_path / "own", shared=shared)
    assert sum(calls) == 80

"""M3Bind.encode_images with a single file path: one study, never the path's characters."""

import pytest
import torch

from m3bind.errors import DataError
from m3bind.models.bound import M3Bind

from test_search_support import world  # noqa: F401  (fixture)


@pytest.mark.parametrize("modality, study", [("xray", "studies/xray/P1_xray.dcm"), ("ecg", "studies/ecg/P2_ecg.hea")])
def test_a_single_path_is_one_study(world, modality, study):
    model = M3Bind.from_pretrained(world.model)
    path = world.root / study
    expected = model.encode_images(modality, [path])
    assert expected.shape == (1, model.shared_dim)
    for single in (path, str(path)):
        assert torch.equal(model.encode_images(modality, single), expected)


def test_a_single_missing_path_names_the_file(world, tmp_path):
    model = M3Bind.from_pretrained(world.model)
    missing = tmp_path / "study.dcm"
    with pytest.raises(DataError, match=f"^{missing}: "):
        model.encode_images("xray", str(missing))

import torch

from m3bind.train.augment import augment_batch


def test_augmentation_is_deterministic_shape_preserving_and_bounded():
    images = torch.randn(6, 1, 32, 32)
    a = augment_batch(images, torch.Generator().manual_seed(3))
    b = augment_batch(images, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == images.shape
    assert not torch.equal(a, augment_batch(images, torch.Generator().manual_seed(4)))
    # A shift and an affine intensity change: sorted values stay an affine map of the original's.
    for i in range(6):
        x, y = images[i].flatten().sort().values, a[i].flatten().sort().values
        slope = ((y - y.mean()) * (x - x.mean())).sum() / ((x - x.mean()) ** 2).sum()
        assert 0.89 <= slope <= 1.11
        assert torch.allclose(y, slope * x + (y.mean() - slope * x.mean()), atol=1e-4)


def test_signals_shift_in_time_only_and_volumes_keep_shape():
    ecg = torch.zeros(1, 12, 100)
    ecg[0, 3, 50] = 1.0
    out = augment_batch(ecg, torch.Generator().manual_seed(0), gain=0.0, offset=0.0)
    lead, time = (out[0] == 1.0).nonzero()[0].tolist()
    assert lead == 3 and abs(time - 50) <= 6
    volume = torch.randn(2, 1, 8, 40, 40)
    assert augment_batch(volume, torch.Generator().manual_seed(0)).shape == volume.shape

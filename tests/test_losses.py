"""The loss terms of train/losses.py (paper eqs. 1, 2, 6) against hand computations."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from m3bind.train.losses import binding_loss, clip_loss, clip_objective, embedding_mse, soft_clip_loss


def _numpy_cross_entropy_rows(logits: np.ndarray) -> float:
    """Mean over rows of -log softmax(row)[i] with target i, written out by hand."""
    losses = []
    for i, row in enumerate(logits):
        log_normaliser = math.log(sum(math.exp(v) for v in row))
        losses.append(log_normaliser - row[i])
    return sum(losses) / len(losses)


# Three unit-norm 2-D pairs; the texts are deliberately not the images, so both directions differ.
IMAGES = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
TEXTS = np.array([[0.6, -0.8], [1.0, 0.0], [0.0, 1.0]])


def test_clip_loss_matches_hand_computation():
    scale = 2.5
    logits = scale * IMAGES @ TEXTS.T
    image_to_text = _numpy_cross_entropy_rows(logits)
    text_to_image = _numpy_cross_entropy_rows(logits.T)
    # The two directions really differ here, so the mean below checks both are used.
    assert abs(image_to_text - text_to_image) > 0.05
    expected = 0.5 * (image_to_text + text_to_image)
    assert expected == pytest.approx(0.7505091174, abs=1e-9)  # (0.8252337 + 0.6757845) / 2

    loss = clip_loss(torch.tensor(IMAGES), torch.tensor(TEXTS), torch.tensor(scale, dtype=torch.float64))
    assert loss.item() == pytest.approx(expected, abs=1e-12)


def test_clip_loss_closed_form_two_orthogonal_pairs():
    # logits = [[s, 0], [0, s]]: every row and column gives -log(e^s / (e^s + 1)) = log(1 + e^-s).
    eye = torch.eye(2)
    assert clip_loss(eye, eye, 1.0).item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)
    assert clip_loss(eye, eye, 1.0).item() == pytest.approx(0.31326168751822286, abs=1e-6)


def test_clip_loss_random_pairs_near_log_n_and_perfect_alignment_near_zero():
    generator = torch.Generator().manual_seed(0)
    image = F.normalize(torch.randn(64, 256, generator=generator), dim=1)
    text = F.normalize(torch.randn(64, 256, generator=generator), dim=1)
    # Random unit vectors in 256-D are nearly orthogonal: with scale 1 the logits are ~0 -> log(N).
    assert clip_loss(image, text, 1.0).item() == pytest.approx(math.log(64), abs=0.05)

    aligned = torch.eye(4)
    # log(1 + 3 e^-100) for each of the 8 rows/columns
    assert clip_loss(aligned, aligned, 100.0).item() < 1e-6


def test_clip_loss_is_symmetric_in_swap():
    generator = torch.Generator().manual_seed(1)
    image = F.normalize(torch.randn(5, 8, generator=generator), dim=1)
    text = F.normalize(torch.randn(5, 8, generator=generator), dim=1)
    logits = 3.0 * image @ text.T
    targets = torch.arange(5)
    one_direction = F.cross_entropy(logits, targets)
    other_direction = F.cross_entropy(logits.T, targets)
    assert abs(one_direction - other_direction) > 1e-3  # not trivially symmetric
    assert clip_loss(image, text, 3.0).item() == pytest.approx(clip_loss(text, image, 3.0).item(), abs=1e-6)


def test_clip_loss_gradient_raises_scale_when_pairs_are_aligned():
    scale = torch.tensor(5.0, requires_grad=True)
    aligned = torch.eye(3)
    clip_loss(aligned, aligned, scale).backward()
    assert scale.grad is not None and scale.grad.item() < 0  # a larger scale lowers the loss


def test_clip_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        clip_loss(torch.zeros(3, 4), torch.zeros(2, 4), 1.0)


def test_soft_clip_loss_reduces_to_clip_loss_and_matches_hand_computation():
    import numpy as np

    from m3bind.train.losses import clip_loss, same_label_targets, soft_clip_loss

    g = torch.Generator().manual_seed(0)
    image = torch.nn.functional.normalize(torch.randn(4, 3, generator=g), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(4, 3, generator=g), dim=-1)
    assert soft_clip_loss(image, text, 5.0, torch.eye(4)).item() == pytest.approx(clip_loss(image, text, 5.0).item(), rel=1e-6)
    targets = same_label_targets([["a"], [], ["a"], ["b", "c"]])
    assert targets.tolist() == [[1, 0, 1, 0], [0, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 1]]
    logits = 5.0 * image.numpy() @ text.numpy().T
    t = targets.numpy()

    def direction(lg, tg):
        logp = lg - np.log(np.exp(lg).sum(1, keepdims=True))
        return -((tg / tg.sum(1, keepdims=True)) * logp).sum(1).mean()
    expected = 0.5 * (direction(logits, t) + direction(logits.T, t.T))
    assert soft_clip_loss(image, text, 5.0, targets).item() == pytest.approx(expected, rel=1e-5)


def test_embedding_mse_is_mean_over_texts_and_dimensions():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    # squared differences 1, 1, 0, 0 over 2 texts x 2 dimensions -> 0.5 (eq. 2 at F.mse_loss scale)
    assert embedding_mse(a, b).item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="same shape"):
        embedding_mse(torch.zeros(2, 3), torch.zeros(2, 4))


def test_clip_objective_is_plain_clip_without_labels_and_soft_with_them():
    g = torch.Generator().manual_seed(1)
    image = F.normalize(torch.randn(4, 3, generator=g), dim=-1)
    text = F.normalize(torch.randn(4, 3, generator=g), dim=-1)
    assert clip_objective(image, text, 5.0).item() == pytest.approx(clip_loss(image, text, 5.0).item())
    labels = [["a"], [], ["a"], []]
    soft = soft_clip_loss(image, text, 5.0, torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0], [0, 1, 0, 1]]))
    assert clip_objective(image, text, 5.0, labels).item() == pytest.approx(soft.item())
    assert clip_objective(image, text, 5.0, labels).item() != pytest.approx(clip_loss(image, text, 5.0).item())


def test_binding_loss_eq6_by_hand():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    clip = {"a": torch.tensor(2.0), "b": torch.tensor(3.0)}
    weights = {"a": 0.5, "b": 2.0}
    parts = binding_loss(clip, weights, {"a": a, "b": b}, lambda_text=10.0)
    # clip: 0.5 * 2 + 2 * 3 = 7; alignment: w_a w_b MSE(a, b) = 1.0 * 0.5; total 7 + 10 * 0.5
    assert parts["clip"].item() == pytest.approx(7.0)
    assert parts["text_mse"].item() == pytest.approx(0.5)
    assert parts["loss"].item() == pytest.approx(12.0)
    single = binding_loss({"a": torch.tensor(2.0)}, weights, {"a": a}, lambda_text=10.0)
    assert single["text_mse"].item() == 0.0 and single["loss"].item() == pytest.approx(1.0)


def test_labels_vary_needs_two_kinds_of_study():
    from m3bind.train.losses import labels_vary

    assert not labels_vary([[], [], []])                      # no labels column: every study normal
    assert not labels_vary([["effusion"], ["effusion"]])
    assert not labels_vary([["a", "b"], ["b", "a"]])          # the same set of findings
    assert not labels_vary([])
    assert labels_vary([[], ["effusion"]])
    assert labels_vary([["a"], ["a", "b"]])

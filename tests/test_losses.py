import math

import pytest
import torch

from membrane_py.train.losses import (
    class_weights_from_counts,
    cross_entropy,
    dice_loss,
    logistic,
    make_loss,
    squared_error,
)

# one image, 2 classes, 1x2 pixels: logits (0, 0) -> p 0.5/0.5; (ln 3, 0) -> p 0.75/0.25
LOGITS = torch.tensor([[[[0.0, math.log(3.0)]], [[0.0, 0.0]]]])


def test_cross_entropy_by_hand_and_unknown_ignored():
    labels = torch.tensor([[[1, 2]]])
    expected = (-math.log(0.5) - math.log(0.25)) / 2
    assert cross_entropy(LOGITS, labels).item() == pytest.approx(expected)
    # pixel 1 unknown: only pixel 0 counts
    assert cross_entropy(LOGITS, torch.tensor([[[1, 0]]])).item() == pytest.approx(math.log(2))


def test_weighted_cross_entropy_by_hand():
    labels = torch.tensor([[[1, 2]]])
    w = [1.0, 3.0]
    expected = (1 * -math.log(0.5) + 3 * -math.log(0.25)) / 4
    assert make_loss("weighted_ce", w)(LOGITS, labels).item() == pytest.approx(expected)
    assert class_weights_from_counts([300, 100]).tolist() == pytest.approx([0.5, 1.5])


def test_dice_by_hand():
    labels = torch.tensor([[[1, 2]]])
    # class 1: p = (0.5, 0.75), t = (1, 0): inter 0.5, sums 1.25 + 1
    # class 2: p = (0.5, 0.25), t = (0, 1): inter 0.25, sums 0.75 + 1
    d1 = (2 * 0.5 + 1) / (2.25 + 1)
    d2 = (2 * 0.25 + 1) / (1.75 + 1)
    assert dice_loss(LOGITS, labels).item() == pytest.approx(1 - (d1 + d2) / 2)


def test_squared_and_logistic_by_hand():
    labels = torch.tensor([[[1, 2]]])
    sq = ((0.5 - 1) ** 2 + 0.5**2 + 0.75**2 + (0.25 - 1) ** 2) / 2
    assert squared_error(LOGITS, labels).item() == pytest.approx(sq)

    def bce(z, t):
        p = 1 / (1 + math.exp(-z))
        return -(t * math.log(p) + (1 - t) * math.log(1 - p))

    lg = (bce(0, 1) + bce(0, 0) + bce(math.log(3), 0) + bce(0, 1)) / 4
    assert logistic(LOGITS, labels).item() == pytest.approx(lg)


@pytest.mark.parametrize("name", ["ce", "dice", "ce_dice", "squared", "logistic"])
def test_all_unknown_gives_zero_with_gradient(name):
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    loss = make_loss(name)(logits, torch.zeros(2, 4, 4, dtype=torch.long))
    loss.backward()
    assert torch.isfinite(loss) and (name == "dice" or loss.item() == 0.0)
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("name", ["ce", "dice", "ce_dice", "squared", "logistic"])
def test_perfect_prediction_beats_wrong(name):
    labels = torch.tensor([[[1, 2], [2, 1]]])
    good = torch.nn.functional.one_hot(labels - 1, 2).permute(0, 3, 1, 2).float() * 10
    loss = make_loss(name)
    assert loss(good, labels).item() < loss(-good, labels).item()


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="exceeds"):
        cross_entropy(torch.zeros(1, 2, 2, 2), torch.full((1, 2, 2), 3))
    with pytest.raises(ValueError, match="unknown loss"):
        make_loss("hinge")
    with pytest.raises(ValueError, match="class_weights"):
        make_loss("weighted_ce")

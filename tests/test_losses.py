"""Losses against hand-computed values."""
import math

import pytest
import torch

from surgery.losses import get_loss, mse, norm_in_norm, plcc_loss


def test_norm_in_norm_by_hand():
    # centred and l2-normalised: [-1, 0, 1]/sqrt2 and [-1, 1, 0]/sqrt2; l1 of the
    # difference = 2/sqrt2; scale = 2^1 * 3^(1 - 1/2)
    value = norm_in_norm(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 3.0, 2.0]))
    assert value.item() == pytest.approx((2 / math.sqrt(2)) / (2 * math.sqrt(3)))


def test_norm_in_norm_ignores_scale_and_shift():
    target = torch.tensor([1.0, 5.0, 2.0, 4.0])
    assert norm_in_norm(3 * target + 7, target).item() == pytest.approx(0, abs=1e-6)
    with pytest.raises(ValueError, match="at least two"):
        norm_in_norm(torch.tensor([1.0]), torch.tensor([1.0]))


def test_norm_in_norm_rho_term_and_gradient():
    pred = torch.tensor([1.0, 2.0, 4.0], requires_grad=True)
    target = torch.tensor([1.0, 3.0, 2.0])
    value = norm_in_norm(pred, target, rho_weight=1.0)
    value.backward()
    assert value.item() > 0 and torch.isfinite(pred.grad).all()


def test_plcc_and_mse_by_hand():
    assert plcc_loss(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 4.0, 6.0])).item() == pytest.approx(0, abs=1e-6)
    assert plcc_loss(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, 2.0, 1.0])).item() == pytest.approx(2)
    assert mse(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 4.0])).item() == pytest.approx(2.5)
    with pytest.raises(ValueError, match="unknown loss"):
        get_loss("huber")

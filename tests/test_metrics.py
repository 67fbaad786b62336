"""Scores checked against hand-computed values and edge cases."""
import math

import numpy as np
import pytest
import torch

from surgery import metrics


def test_correlations_by_hand():
    pred, mos = [1, 2, 3, 4], [10, 20, 40, 30]
    assert metrics.srocc(pred, mos) == pytest.approx(0.8)  # 1 - 6*2/(4*15)
    assert metrics.krocc(pred, mos) == pytest.approx(4 / 6)  # 5 concordant, 1 discordant
    x, y = np.array(pred, float), np.array(mos, float)
    expected = ((x - x.mean()) * (y - y.mean())).sum() / math.sqrt(((x - x.mean()) ** 2).sum() * ((y - y.mean()) ** 2).sum())
    assert metrics.plcc(pred, mos) == pytest.approx(expected)
    assert metrics.srocc(torch.tensor(pred), torch.tensor(mos)) == pytest.approx(0.8)


def test_abs_gain_and_r_score_by_hand():
    clean, attacked = [2.0, 4.0], [3.0, 4.5]  # range 0..10 -> 0.2, 0.4 -> 0.3, 0.45
    assert metrics.abs_gain(clean, attacked, 0, 10) == pytest.approx((0.1 + 0.05) / 2)
    expected = (math.log10(max(1 - 0.3, 0.2) / 0.1) + math.log10(max(1 - 0.45, 0.4) / 0.05)) / 2
    assert metrics.r_score(clean, attacked, 0, 10) == pytest.approx(expected)


def test_zero_change_gives_a_finite_capped_r_score():
    assert metrics.abs_gain([0.5], [0.5], 0, 1) == 0
    assert metrics.r_score([0.5], [0.5], 0, 1) == pytest.approx(math.log10(0.5 / metrics.MIN_CHANGE))


def test_auc_is_the_trapezoid_area_in_any_order():
    assert metrics.auc([2, 4, 6, 8, 10], [1, 1, 1, 1, 1]) == pytest.approx(8)
    assert metrics.auc([10, 2, 6], [3, 1, 2]) == pytest.approx(16)  # linear 1..3 over 2..10


def test_weighted_mean_default_is_two_to_one():
    assert metrics.weighted_mean([0.3, 0.6]) == pytest.approx(0.4)


def test_score_range_and_normalise():
    assert metrics.score_range([3, 1, 2]) == (1, 3)
    np.testing.assert_allclose(metrics.normalize([1, 2, 3], 1, 3), [0, 0.5, 1])


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: metrics.srocc([1, 1, 1], [1, 2, 3]), "constant"),
        (lambda: metrics.plcc([1, 2, float("nan")], [1, 2, 3]), "NaN"),
        (lambda: metrics.srocc([1, 2], [1, 2, 3]), "differ in length"),
        (lambda: metrics.srocc([1], [1]), "at least two"),
        (lambda: metrics.abs_gain([1, 2], [1], 0, 3), "differ in length"),
        (lambda: metrics.normalize([1], 2, 2), "hi > lo"),
        (lambda: metrics.score_range([2, 2]), "same score"),
        (lambda: metrics.auc([1], [1]), "two"),
        (lambda: metrics.srocc([], []), "empty"),
    ],
)
def test_edge_cases_raise_clear_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()

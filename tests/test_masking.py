"""masking_checks: an undefended model passes; one whose gradient is hidden is caught."""
import pytest
import torch
from torch import nn

from surgery import masking_checks
from tests.models import TinyIQA, assert_unchanged, snapshot

FAST = {"steps": (1, 4), "strong_steps": 10, "queries": 60, "batch_size": 4}


class Quantised(nn.Module):
    """Rounds its input to 8 bits first: the gradient through the rounding is zero (masked)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(torch.round(x * 255) / 255)


@pytest.fixture
def images():
    return torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def _model(seed=0):
    torch.manual_seed(seed)
    return TinyIQA().eval()


def test_an_undefended_model_passes_every_check_and_is_given_back(images):
    model = _model()
    before = snapshot(model)
    table = masking_checks(model, images, original=_model(1), **FAST)
    assert_unchanged(model, before)
    checks = [r["check"] for r in table.rows]
    assert len(checks) == 5 and any("noise" in c for c in checks) and any("crafted on the original" in c for c in checks)
    assert all(r["passed"] for r in table.rows), table.to_markdown(summary=False)
    assert table.summaries[0]["passed"] and table.summaries[0]["failed"] == "-"
    ladder = {(r["attack"], r["against"]): (r["abs_gain"], r["reference"]) for r in table.rows}
    pgd4, pgd1 = ladder[("pgd-4", "pgd-1")]
    assert pgd4 >= pgd1 > 0 and ladder[("apgd-10", "pgd-4")] == (pytest.approx(ladder[("apgd-10", "pgd-4")][0]), pgd4)
    assert ladder[("noise", "1/4 best white-box")][0] < 0.25 * pgd1


def test_hidden_gradients_fail_the_black_box_check(images):
    table = masking_checks(Quantised(_model()), images, **FAST)
    failed = table.summaries[0]["failed"]
    assert not table.summaries[0]["passed"]
    assert "square-60 (black-box) gains <= the best white-box" in failed
    assert table.summaries[0]["best white-box abs_gain"] < 0.01  # the gradient is zero: PGD and APGD stand still


def test_lowering_gains_are_sizes(images):
    table = masking_checks(_model(), images, direction="down", **FAST)
    assert table.summaries[0]["best white-box abs_gain"] > 0 and table.summaries[0]["direction"] == "down"
    with pytest.raises(ValueError, match="direction"):
        masking_checks(_model(), images, direction="away")

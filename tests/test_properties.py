"""Property-based checks (hypothesis) over random shapes, budgets, dtypes and modes: every
attack stays inside its budget and [0, 1], and measuring never changes the model."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from surgery.attacks import APGD, PGD, PaperPGD, StAdv, scores
from surgery.evaluation import evaluate
from tests.models import BatchNormIQA, assert_unchanged, snapshot

SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])

images_strategy = st.builds(
    lambda batch, height, width, seed, dtype: torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed)).to(dtype),
    batch=st.integers(1, 3), height=st.integers(4, 12), width=st.integers(4, 12), seed=st.integers(0, 2**16),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
modes = st.sampled_from(["train", "eval", "mixed"])


def model_in(mode: str, dtype: torch.dtype) -> torch.nn.Module:
    torch.manual_seed(0)
    model = BatchNormIQA().to(dtype).train(mode != "eval")
    if mode == "mixed":
        model.head.eval()
    return model


@SETTINGS
@given(
    images=images_strategy, mode=modes, eps=st.floats(0.5 / 255, 16 / 255), steps=st.integers(1, 4),
    kind=st.sampled_from(["pgd", "pgd-rs", "apgd", "l2"]), direction=st.sampled_from(["up", "down"]),
)
def test_every_attack_stays_in_its_budget_and_gives_the_model_back(images, mode, eps, steps, kind, direction):
    model = model_in(mode, images.dtype)
    before = snapshot(model)
    attack = {
        "pgd": lambda: PGD(eps=eps, steps=steps),
        "pgd-rs": lambda: PGD(eps=eps, steps=steps, random_start=True),
        "apgd": lambda: APGD(eps=eps, steps=steps),
        "l2": lambda: PGD(eps=eps * 10, steps=steps, norm="l2", random_start=True),
    }[kind]()
    adversarial = attack(model, images, direction=direction)
    assert adversarial.shape == images.shape and adversarial.dtype == images.dtype
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    delta = (adversarial - images).flatten(1)
    if kind == "l2":
        assert (delta.norm(dim=1) <= eps * 10 * (1 + 1e-5) + 1e-6).all()
    else:
        assert delta.abs().max() <= eps + 1e-6
    assert_unchanged(model, before)


@SETTINGS
@given(images=images_strategy, mode=modes, eps=st.floats(0.5 / 255, 8 / 255), steps=st.integers(1, 3))
def test_paper_pgd_stays_in_range_and_within_its_own_bound(images, mode, eps, steps):
    model = model_in(mode, images.dtype)
    before = snapshot(model)
    adversarial = PaperPGD(eps=eps, steps=steps)(model, images)
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    assert (adversarial - images).abs().max() <= 10 / 255 + eps + 1e-6  # beyond eps, by design
    assert_unchanged(model, before)


@SETTINGS
@given(images=images_strategy, mode=modes, max_flow=st.floats(0.1, 2.0))
def test_stadv_stays_in_range_and_gives_the_model_back(images, mode, max_flow):
    model = model_in(mode, images.dtype)
    before = snapshot(model)
    adversarial = StAdv(steps=2, max_flow=max_flow)(model, images)
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    assert_unchanged(model, before)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(images=images_strategy, mode=modes)
def test_evaluate_never_changes_the_model(images, mode):
    images = images.float()
    if images.shape[0] < 2:
        images = torch.cat([images, images.flip(0)])
    model = model_in(mode, torch.float32)
    model.features[0].weight.grad = torch.ones_like(model.features[0].weight)
    before = snapshot(model)
    table = evaluate(model, images, attacks=["pgd-1", "apgd-2"], eps_grid=(4 / 255,), score_range=(0.0, 1.0), progress=False)
    assert_unchanged(model, before)
    assert table.rows[0]["mean_score"] == pytest.approx(float(scores(model, images).mean()), rel=1e-5, abs=1e-7)

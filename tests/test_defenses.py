"""Baseline defences do what they claim on a toy model."""
import copy

import pytest
import torch
from torch import nn

from surgery.defenses import (
    AdversarialTraining, ConsistencyTraining, NormRegularization, OwnSpreadConsistencyTraining, Sqish, TrainingScore,
    replace_activations,
)
from surgery.training import finetune
from surgery.losses import mse
from tests.models import BatchNormIQA, Scaled, SmallCNN, TinyIQA, assert_unchanged, snapshot


def input_gradient_norm(model, images):
    x = images.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x).sum(), x)
    return grad.abs().flatten(1).sum(1).mean().item()


def toy_data(n=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, 8, 8, generator=generator)
    return images, images.mean((1, 2, 3)) * 4


def test_nt_lowers_the_input_gradient_norm():
    images, targets = toy_data()
    plain, regularised = TinyIQA(), TinyIQA()
    regularised.load_state_dict(plain.state_dict())
    finetune(plain, (images, targets), epochs=3, loss="mse", lr=1e-2, progress=False)
    finetune(regularised, (images, targets), epochs=3, loss="mse", lr=1e-2, progress=False, defense=NormRegularization(weight=10.0))
    assert input_gradient_norm(regularised, images) < input_gradient_norm(plain, images)


def test_nt_penalty_is_the_finite_difference_slope():
    model = TinyIQA()
    images, targets = toy_data(4)
    defense = NormRegularization(weight=1.0, h=1e-3)
    extra = defense.loss(model, images, targets, mse) - mse(model(images), targets)
    x = images.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x).sum(), x)
    expected = grad.abs().flatten(1).sum(1).square().mean() / 2  # slope along sign(g) = ||g||_1
    assert extra.item() == pytest.approx(expected.item(), rel=0.05)


def test_at_labels_attacked_images_lower():
    model = TinyIQA()
    images, targets = toy_data(4)
    defense = AdversarialTraining(eps=8 / 255, label_range=(0.0, 4.0))
    adversarial = defense.adversarial(model, images)
    assert (adversarial - images).abs().max() <= 8 / 255 + 1e-6
    assert (model(adversarial) > model(images)).all()
    labels = defense.adversarial_labels(images, adversarial, targets)
    assert (labels < targets).all() and (targets - labels <= 4.0).all()


def test_at_trains_through_finetune():
    """The defence's loss is what the fine-tune minimises: same seed and start, other weights than a plain fine-tune."""
    images, targets = toy_data()
    torch.manual_seed(0)
    start = TinyIQA()
    plain, defended = copy.deepcopy(start), copy.deepcopy(start)
    finetune(plain, (images, targets), epochs=1, loss="mse", progress=False)
    finetune(defended, (images, targets), epochs=1, loss="mse", progress=False, defense=AdversarialTraining())
    for key, value in start.state_dict().items():
        assert not torch.equal(defended.state_dict()[key], value), f"{key} was not trained"
    # Adam's first steps move by about lr whatever the gradient's size: compare the weights, not the bias
    assert not torch.allclose(defended.conv.weight, plain.conv.weight)


def test_consistency_training_lowers_the_input_gradient_norm():
    """Two clusters (dark images score 0, bright ones 1) can be fitted with a flat model;
    the consistency penalty finds it, the plain fine-tune does not."""
    bright = torch.arange(32) % 2
    images = torch.rand(32, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.4 + 0.6 * bright[:, None, None, None]
    torch.manual_seed(0)
    plain, consistent = SmallCNN(), SmallCNN()
    consistent.load_state_dict(plain.state_dict())
    options = {"epochs": 8, "loss": "mse", "lr": 1e-2, "progress": False, "seed": 0}
    finetune(plain, (images, bright.float()), **options)
    finetune(consistent, (images, bright.float()), **options, defense=ConsistencyTraining(eps=8 / 255, steps=2, beta=100.0))
    assert input_gradient_norm(consistent, images) < 0.6 * input_gradient_norm(plain, images)


@pytest.mark.parametrize("eps", [2 / 255, 8 / 255])
def test_consistency_attack_stays_in_budget_and_moves_the_score(eps):
    torch.manual_seed(0)
    model = SmallCNN()
    images = torch.rand(6, 3, 8, 8)
    images[0] = 0.0  # pixels at the edge of [0, 1] stay inside it
    adversarial = ConsistencyTraining(eps=eps, steps=5).adversarial(model, images)
    assert (adversarial - images).abs().max() <= eps + 1e-6
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    noise = (images + eps * torch.randint(0, 2, images.shape).float().mul(2).sub(1)).clamp(0, 1)
    with torch.no_grad():
        gap = (model(adversarial) - model(images)).abs()
        noise_gap = (model(noise) - model(images)).abs()
    assert gap.mean() > noise_gap.mean()


def test_consistency_penalty_is_the_squared_gap():
    torch.manual_seed(0)
    model = TinyIQA()
    images, _ = toy_data(4)
    targets = model(images).detach()  # task loss 0: the loss is the penalty alone
    defense = ConsistencyTraining(beta=2.0)
    torch.manual_seed(1)
    adversarial = defense.adversarial(model, images)
    torch.manual_seed(1)
    penalty = defense.loss(model, images, targets, mse)
    expected = 2.0 * (model(adversarial) - model(images)).square().mean()
    assert penalty.item() == pytest.approx(expected.item(), rel=1e-4)


@pytest.mark.parametrize("cls,ratio", [(ConsistencyTraining, 0.25), (OwnSpreadConsistencyTraining, 1.0)])
def test_only_the_own_spread_penalty_cannot_be_lowered_by_squashing_the_scores(cls, ratio):
    """Halving every score quarters the label-unit penalty and leaves the own-spread one as it was."""
    torch.manual_seed(0)
    model = TinyIQA()
    images, _ = toy_data(6)
    penalties = []
    for factor in (1.0, 0.5):
        scaled = Scaled(model, factor)
        targets = scaled(images).detach()  # task loss 0: the loss is the penalty alone
        torch.manual_seed(1)
        penalties.append(cls(beta=1.0).loss(scaled, images, targets, mse).item())
    assert penalties[1] == pytest.approx(ratio * penalties[0], rel=1e-3)
    torch.manual_seed(1)
    targets = model(images).detach()
    own = OwnSpreadConsistencyTraining(beta=1.0).loss(model, images, targets, mse)
    torch.manual_seed(1)
    plain = ConsistencyTraining(beta=1.0, scale=model(images).std().item()).loss(model, images, targets, mse)
    assert own.item() == pytest.approx(plain.item(), rel=1e-4)  # the same penalty in the batch's own units


def test_consistency_on_a_fraction_of_the_batch_attacks_only_that_share():
    torch.manual_seed(0)
    model = TinyIQA()
    images, _ = toy_data(5)
    targets = model(images).detach()
    defense = ConsistencyTraining(beta=2.0, fraction=0.5)
    torch.manual_seed(1)
    adversarial = defense.adversarial(model, images[:3])
    torch.manual_seed(1)
    attacked = []
    model.register_forward_hook(lambda module, args, out: attacked.append(args[0].shape[0]))
    penalty = defense.loss(model, images, targets, mse)
    calls = list(attacked)
    expected = 2.0 * (model(adversarial) - model(images[:3])).square().mean()
    assert penalty.item() == pytest.approx(expected.item(), rel=1e-4)
    assert set(calls[:-1]) == {3} and calls[-1] == 5 + 3  # the attack on 3 images, then one forward of 5 clean + 3 attacked


def test_consistency_attacks_the_model_as_at_inference():
    """The inner attack sees running statistics and no dropout, and leaves modes and buffers alone."""
    torch.manual_seed(0)
    model = BatchNormIQA().train()
    before = snapshot(model)
    seen = []
    model.features[1].register_forward_hook(lambda module, *_: seen.append(module.training))
    ConsistencyTraining(steps=2).adversarial(TrainingScore(model, lambda network, x: network(x)), torch.rand(4, 3, 8, 8))
    assert seen and not any(seen)
    assert_unchanged(model, before)


@pytest.mark.parametrize(
    "options", [{"eps": 0.0}, {"steps": 0}, {"beta": -1.0}, {"eps": float("nan")}, {"fraction": 0.0}, {"fraction": 1.5}]
)
def test_consistency_refuses_bad_settings(options):
    with pytest.raises(ValueError, match="ConsistencyTraining"):
        ConsistencyTraining(**options)


@pytest.mark.parametrize("kind", ["elu", "silu", "gelu", "sqish"])
def test_replace_activations_everywhere_or_only_new_layers(kind):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Sequential(nn.Conv2d(4, 4, 3), nn.ReLU6()))
    assert replace_activations(model, kind, modules=["2"]) == 1
    assert isinstance(model[1], nn.ReLU) and not isinstance(model[2][1], (nn.ReLU, nn.ReLU6))
    assert replace_activations(model, kind) == 1
    assert not any(isinstance(m, (nn.ReLU, nn.ReLU6)) for m in model.modules())
    with pytest.raises(ValueError, match="not a module"):
        replace_activations(model, kind, modules=["head"])


def test_sqish_is_smooth_and_relu_like():
    x = torch.linspace(-6, 6, 101, requires_grad=True)
    y = Sqish()(x)
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert torch.isfinite(grad).all() and (grad[1:] - grad[:-1]).abs().max() < 0.2
    assert y[-1].item() == pytest.approx(6, rel=0.01) and abs(y[0].item()) < 0.1

"""Attacks raise the score, stay inside their budget and [0, 1], and leave the model alone."""
import pytest
import torch

from surgery.attacks import APGD, PGD, UAP, PaperPGD, StAdv, default_alpha, flow_smoothness, scores, warp
from tests.models import BatchNormIQA, TinyIQA, assert_unchanged, snapshot


@pytest.fixture
def model():
    return TinyIQA().eval()


@pytest.fixture
def images():
    return torch.rand(4, 3, 16, 20)


@pytest.mark.parametrize("steps", [1, 8])
@pytest.mark.parametrize("eps", [2 / 255, 10 / 255])
@pytest.mark.parametrize("direction", ["up", "down"])
def test_pgd_linf_moves_score_within_budget(model, images, steps, eps, direction):
    adversarial = PGD(eps=eps, steps=steps)(model, images, direction=direction)
    assert (adversarial - images).abs().max() <= eps + 1e-6
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    change = scores(model, adversarial) - scores(model, images)
    assert (change > 0).all() if direction == "up" else (change < 0).all()


def test_pgd_l2_budget(model, images):
    adversarial = PGD(eps=0.5, steps=5, alpha=0.2, norm="l2")(model, images)
    assert ((adversarial - images).flatten(1).norm(dim=1) <= 0.5 + 1e-5).all()
    assert (scores(model, adversarial) > scores(model, images)).all()


def test_more_pgd_steps_gain_at_least_as_much(model, images):
    eps = 6 / 255
    one = scores(model, PGD(eps=eps, steps=1)(model, images))
    eight = scores(model, PGD(eps=eps, steps=8, alpha=eps / 4)(model, images))
    assert (eight >= one - 1e-6).all()


def test_step_size_follows_the_protocol():
    assert default_alpha(4 / 255, 1) == 4 / 255  # FGSM
    assert default_alpha(4 / 255, 8) == 1 / 255
    assert PGD(eps=0.1, steps=3, alpha=0.01).alpha == 0.01


def test_attacks_leave_parameters_mode_and_grad_flags_alone(model, images):
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.fc.weight.requires_grad_(False)
    for attack in (PGD(steps=2), UAP(iterations=2, size=(8, 8)), StAdv(steps=2)):
        attack(model, images)
    assert not model.training
    assert not model.fc.weight.requires_grad and model.conv.weight.requires_grad
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("attack", [PGD(steps=2), UAP(iterations=2, size=(8, 8)), StAdv(steps=2)], ids=repr)
def test_attacks_run_in_eval_mode_and_give_the_model_back(images, attack):
    model = BatchNormIQA().train()
    model.head.eval()
    model.features[0].weight.grad = torch.zeros_like(model.features[0].weight)
    before = snapshot(model)
    adversarial = attack(model, images)
    assert_unchanged(model, before)
    repeat = attack(model, images)  # eval mode: dropout and batch statistics play no part
    assert torch.equal(adversarial, repeat)


def test_uap_is_universal_and_resizes(model, images, tmp_path):
    attack = UAP(eps=8 / 255, iterations=10, size=(8, 8))
    perturbation = attack.fit(model, images)
    assert perturbation.shape == (3, 8, 8) and perturbation.abs().max() <= 8 / 255 + 1e-7
    other = torch.rand(3, 3, 24, 12)  # unseen images, another size
    adversarial = attack(model, other)
    assert (adversarial - other).abs().max() <= 8 / 255 + 1e-6
    assert scores(model, adversarial).mean() > scores(model, other).mean()
    attack.save(tmp_path / "uap.pt")
    loaded = UAP.load(tmp_path / "uap.pt")
    assert torch.equal(loaded(model, other), adversarial)


def test_stadv_respects_flow_budget_and_raises_score(model, images):
    attack = StAdv(steps=5, max_flow=0.5)
    adversarial = attack(model, images)
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    assert scores(model, adversarial).mean() > scores(model, images).mean()


def test_warp_identity_and_shift():
    images = torch.rand(2, 3, 5, 6)
    torch.testing.assert_close(warp(images, torch.zeros(2, 2, 5, 6)), images)
    shifted = warp(images, torch.ones(2, 2, 5, 6) * torch.tensor([1.0, 0.0]).view(1, 2, 1, 1))
    torch.testing.assert_close(shifted[..., :-1], images[..., 1:])
    assert flow_smoothness(torch.ones(1, 2, 4, 4)).item() == pytest.approx(4e-6, rel=1e-3)
    step = torch.zeros(1, 2, 4, 4)
    step[:, 0, :, 2:] = 1.0  # one vertical edge of height 1: 4 rows x 2 sides / 16 pixels
    assert flow_smoothness(step).item() == pytest.approx(0.5, abs=1e-4)


@pytest.mark.parametrize(
    "bad,match",
    [
        (torch.rand(3, 16, 16), "batch, 3, H, W"),
        (torch.rand(2, 5, 8, 8), "batch, 3, H, W"),
        (torch.randint(0, 255, (1, 3, 8, 8), dtype=torch.uint8), "divide uint8"),
        (torch.rand(1, 3, 8, 8) * 255, r"in \[0, 1\]"),
        ("image.png", "tensor"),
    ],
)
def test_non_images_are_rejected(model, bad, match):
    with pytest.raises(ValueError, match=match):
        PGD()(model, bad)


def test_broken_model_is_reported():
    class Broken(TinyIQA):
        def forward(self, x):
            return super().forward(x) * float("nan")

    with pytest.raises(ValueError, match="NaN"):
        scores(Broken(), torch.rand(2, 3, 8, 8))


class TwoOutputs(TinyIQA):
    def forward(self, x):
        score = super().forward(x)
        return torch.stack([score, -score], dim=1)


class DictOutput(TinyIQA):
    def forward(self, x):
        return {"score": super().forward(x)}


@pytest.mark.parametrize(
    "model,error,match", [(TwoOutputs(), ValueError, r"shape \(2, 2\).*one score per image"), (DictOutput(), TypeError, "dict with keys")]
)
def test_models_without_one_score_per_image_are_refused(model, error, match):
    with pytest.raises(error, match=match):
        scores(model, torch.rand(2, 3, 8, 8))
    with pytest.raises(error, match=match):
        PGD()(model, torch.rand(2, 3, 8, 8))


@pytest.mark.parametrize("build", [
    lambda seed: PGD(eps=8 / 255, steps=3, random_start=True, seed=seed),
    lambda seed: APGD(eps=8 / 255, steps=4, seed=seed),
    lambda seed: PaperPGD(eps=4 / 255, steps=2, seed=seed),
], ids=["pgd-rs", "apgd", "paper-pgd"])
def test_a_seeded_attack_is_reproducible_from_the_call_alone(build):
    from surgery.evaluation import attack_digest

    torch.manual_seed(0)
    model, images = TinyIQA(), torch.rand(3, 3, 12, 12)
    state = torch.get_rng_state()
    first = build(5)(model, images)
    assert torch.equal(torch.get_rng_state(), state)  # the global stream is left alone
    torch.rand(7)  # whatever the caller drew in between
    assert torch.equal(build(5)(model, images), first)
    assert not torch.equal(build(6)(model, images), first)
    assert attack_digest(build(5)) != attack_digest(build(6)) != attack_digest(build(None))


def test_the_away_objective_moves_the_score_either_way_within_the_budget():
    torch.manual_seed(1)
    model, images = TinyIQA(), torch.rand(4, 3, 12, 12)
    attack = PGD(eps=4 / 255, steps=5, random_start=True, seed=0)
    away = attack(model, images, direction="away")
    assert (away - images).abs().max() <= 4 / 255 + 1e-6
    gap = (scores(model, away) - scores(model, images)).abs()
    noise = (images + torch.empty_like(images).uniform_(-4 / 255, 4 / 255)).clamp(0, 1)
    assert gap.mean() > (scores(model, noise) - scores(model, images)).abs().mean()
    with pytest.raises(ValueError, match="direction must be one of"):
        attack(model, images, direction="sideways")
    with pytest.raises(ValueError, match="integer seed"):
        PGD(seed=1.5)

"""Strong attacks (PGD with random start, APGD) and the paper code's PGD: budgets, [0, 1],
gains at least the paper protocol's, monotone in eps; the replay matches the reference loop."""
import math

import pytest
import torch

from surgery.attacks import APGD, PGD, PaperPGD, Square, StAdv, UAP, apgd_checkpoints, scores
from surgery.evaluation import evaluate, resolve_attacks
from tests.models import SmallCNN


@pytest.fixture
def model():
    torch.manual_seed(1)
    return SmallCNN().eval()


@pytest.fixture
def images():
    return torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(2))


def linf(adversarial, images):
    return (adversarial - images).abs().flatten(1).amax(1)


STRONG = {
    "pgd-rs": lambda eps: PGD(eps=eps, steps=10, random_start=True),
    "pgd-rs-restarts": lambda eps: PGD(eps=eps, steps=5, random_start=True, restarts=2),
    "apgd": lambda eps: APGD(eps=eps, steps=12),
    "apgd-restarts": lambda eps: APGD(eps=eps, steps=6, restarts=2),
}


@pytest.mark.parametrize("direction", ["up", "down"])
@pytest.mark.parametrize("eps", [2 / 255, 10 / 255])
@pytest.mark.parametrize("name", sorted(STRONG))
def test_strong_attacks_stay_in_budget_and_move_the_score(model, images, name, eps, direction):
    attack = STRONG[name](eps)
    adversarial = attack(model, images, direction=direction)
    assert linf(adversarial, images).max() <= eps + 1e-6
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    change = scores(model, adversarial) - scores(model, images)
    assert (change > 0).all() if direction == "up" else (change < 0).all()


@pytest.mark.parametrize("attack", [PGD(eps=0.5, steps=6, norm="l2", random_start=True), APGD(eps=0.5, steps=8, norm="l2")], ids=repr)
def test_l2_strong_attacks_stay_in_budget(model, images, attack):
    adversarial = attack(model, images)
    assert ((adversarial - images).flatten(1).norm(dim=1) <= 0.5 + 1e-5).all()
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    assert (scores(model, adversarial) > scores(model, images)).all()


@pytest.mark.parametrize("eps", [4 / 255, 8 / 255])
def test_strong_attacks_gain_at_least_as_much_as_the_papers_pgd8(model, images, eps):
    clean = scores(model, images)
    protocol = (scores(model, PGD(eps=eps, steps=8)(model, images)) - clean).mean()
    for build in (lambda: PGD(eps=eps, steps=20, random_start=True), lambda: APGD(eps=eps, steps=20)):
        assert (scores(model, build()(model, images)) - clean).mean() >= protocol - 1e-6


@pytest.mark.parametrize("build", [lambda eps: APGD(eps=eps, steps=20), lambda eps: PGD(eps=eps, steps=20, random_start=True)])
def test_strong_gain_grows_with_eps(model, images, build):
    clean = scores(model, images)
    gains = [float((scores(model, build(e / 255)(model, images)) - clean).mean()) for e in (2, 4, 6, 8, 10)]
    assert all(b >= a - 1e-4 for a, b in zip(gains, gains[1:])), gains


def test_apgd_checkpoints_follow_croce_and_hein():
    # p = 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99 of the iterations
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert all(0 < c < 7 for c in apgd_checkpoints(7))


def reference_paper_attack(score, image, eps, iters):
    """The loop of the paper repository's attack_callback (mode "PGD", delta=eps), with
    its Linearity loss 1 - score / range written as the score to raise."""
    additive = torch.rand_like(image)
    for _ in range(iters):
        additive.data.clamp_(-10 / 255, 10 / 255)
        im = (image + additive).requires_grad_(True)
        loss = 1 - score(im) / 100
        loss.sum().backward()
        additive.data -= eps * im.grad.data.sign()
    return (image + additive).clamp(0.0, 1.0)


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("eps", [2 / 255, 8 / 255])
def test_paper_pgd_replays_the_reference_loop(model, images, eps, steps):
    model.requires_grad_(False)
    torch.manual_seed(5)
    expected = reference_paper_attack(model, images, eps, steps)
    torch.manual_seed(5)
    replayed = PaperPGD(eps=eps, steps=steps)(model, images)
    torch.testing.assert_close(replayed, expected)
    distance = linf(replayed, images)
    assert distance.max() > eps + 1 / 255  # outside the eps ball: the budget is exceeded
    assert distance.max() <= 10 / 255 + eps + 1e-6


def test_paper_pgd_one_step_is_a_brightening_plus_fgsm(model, images):
    adversarial = PaperPGD(eps=2 / 255, steps=1)(model, images)
    shift = (adversarial - images)[(images > 0.1) & (images < 0.9)]
    assert shift.mean() > 5 / 255  # mostly +10/255 +- 2/255


def test_evaluate_names_strong_and_paper_attacks():
    runs = resolve_attacks(["pgd-5-rs", "apgd", "apgd-7", "paper-pgd-1"], eps_grid=(2 / 255, 4 / 255))
    names = [name for name, _, _ in runs]
    assert names == ["pgd-5-rs"] * 2 + ["apgd"] * 2 + ["apgd-7"] * 2 + ["paper-pgd-1"] * 2
    pgd, apgd, apgd7, paper = runs[0][2], runs[2][2], runs[4][2], runs[6][2]
    assert pgd.random_start and pgd.alpha == pytest.approx(2.5 * (2 / 255) / 5)
    assert apgd.steps == 50 and apgd7.steps == 7 and isinstance(paper, PaperPGD)
    for bad in ("pgd-0", "pgd-x-rs", "apgd-0", "paper-pgd-"):
        with pytest.raises(ValueError, match="unknown attack"):
            resolve_attacks([bad])


def test_evaluate_reports_strong_attacks_beside_the_protocol(model, images):
    table = evaluate(model, images, attacks=["pgd-8", "pgd-8-rs", "apgd-8"], eps_grid=(4 / 255, 8 / 255), progress=False)
    summary = table.summaries[0]
    for name in ("pgd-8", "pgd-8-rs", "apgd-8"):
        assert f"{name} abs_gain_auc" in summary
    assert summary["apgd-8 abs_gain_auc"] >= summary["pgd-8 abs_gain_auc"] - 1e-6


@pytest.mark.parametrize(
    "build,match",
    [
        (lambda: PGD(eps=float("nan")), "finite eps"),
        (lambda: PGD(eps=-1 / 255), "finite eps"),
        (lambda: PGD(steps=0), "steps >= 1"),
        (lambda: PGD(steps=2.5), "integer steps"),
        (lambda: PGD(steps=4, restarts=2), "random_start"),
        (lambda: APGD(eps=math.inf), "finite eps"),
        (lambda: APGD(steps=True), "integer steps"),
        (lambda: APGD(rho=1.5), "rho"),
        (lambda: PaperPGD(eps=0), "finite eps"),
        (lambda: StAdv(max_flow=float("nan")), "finite max_flow"),
        (lambda: StAdv(tau=float("nan")), "tau"),
        (lambda: UAP(iterations=-1), "iterations >= 1"),
        (lambda: UAP(alpha=float("nan")), "finite alpha"),
    ],
)
def test_bad_attack_settings_are_refused(build, match):
    with pytest.raises(ValueError, match=match):
        build()


@pytest.mark.parametrize("attack", [PGD(), APGD(steps=2), PaperPGD(), StAdv(steps=1), UAP(iterations=1, size=(4, 4))], ids=repr)
@pytest.mark.parametrize(
    "bad,match",
    [
        (torch.full((1, 3, 8, 8), float("nan")), "NaN or inf"),
        (torch.ones(1, 3, 8, 8).index_fill_(3, torch.tensor([2]), float("inf")), "NaN or inf"),
        (torch.rand(0, 3, 8, 8), "empty batch"),
    ],
)
def test_bad_images_are_refused_by_every_attack(model, attack, bad, match):
    with pytest.raises(ValueError, match=match):
        attack(model, bad)


@pytest.mark.parametrize("size", [(9, 9), (12, 20)])
def test_square_stays_in_budget_and_raises_the_score_without_gradients(size):
    torch.manual_seed(0)
    model, images = SmallCNN(), torch.rand(4, 3, *size)
    attack = Square(eps=8 / 255, queries=60, seed=0)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: pytest.fail("Square computed a gradient"), lambda t: t):
        adversarial = attack(model, images)
    assert (adversarial - images).abs().max() <= 8 / 255 + 1e-6 and 0 <= adversarial.min() and adversarial.max() <= 1
    gain = (scores(model, adversarial) - scores(model, images)).mean()
    noise = (images + torch.empty_like(images).uniform_(-8 / 255, 8 / 255)).clamp(0, 1)
    assert gain > 0 and gain > (scores(model, noise) - scores(model, images)).mean()
    lowered = attack(model, images, direction="down")
    assert (scores(model, lowered) - scores(model, images)).mean() < 0
    assert torch.equal(attack(model, images), adversarial)  # seeded: reproducible from the call


def test_square_costs_one_forward_per_query():
    model, calls = SmallCNN(), []
    model.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    Square(eps=4 / 255, queries=25, seed=1)(model, torch.rand(3, 3, 10, 10))
    assert calls == [3] * 25


def test_square_runs_in_evaluate_over_the_eps_grid():
    runs = resolve_attacks(["square-30"], eps_grid=(2 / 255, 4 / 255))
    expected = [("square-30", 30, 2 / 255), ("square-30", 30, 4 / 255)]
    assert [(name, attack.queries, attack.eps) for name, _, attack in runs] == expected

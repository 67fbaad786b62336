"""One-call recipes: the paper's method and the robust recipe, on several architectures."""
import copy

import pytest
import torch
import torchvision
from torch import nn

import surgery
from surgery.attacks import PGD, scores
from surgery.defenses import ConsistencyTraining
from surgery.recipes import RECIPES
from tests.models import BatchNormIQA, SmallCNN, snapshot, assert_unchanged


class TorchvisionIQA(nn.Module):
    """ResNet-18 (random weights) with a one-output head."""

    def __init__(self):
        super().__init__()
        self.net = torchvision.models.resnet18(num_classes=1)

    def forward(self, x):
        return self.net(x).squeeze(-1)


def timm_iqa():
    return surgery.create_model("timm-iqa", backbone="efficientnet_lite0", hidden=(16,))


def cluster_data(size=32, n=32):
    """Dark images score 0 and bright ones 1: a task a flat model can fit."""
    bright = torch.arange(n) % 2
    images = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0)) * 0.4 + 0.6 * bright[:, None, None, None]
    return images, bright.float()


def strong_gain(model, images, eps=8 / 255):
    attacked = PGD(eps=eps, steps=10, random_start=True)(model, images)
    return (scores(model, attacked) - scores(model, images)).mean().item()


@pytest.mark.slow
@pytest.mark.parametrize("build", [TorchvisionIQA, timm_iqa], ids=["resnet18", "timm-efficientnet"])
def test_robust_recipe_makes_several_architectures_harder_to_fool(build):
    """robustify with the robust recipe's consistency training against the same fine-tune
    without it, judged by a 10-step random-start PGD. The recipe's beta is tuned on the
    default model; this toy task (random weights, 64 images) needs a stronger one."""
    images, targets = cluster_data(32, 64)
    torch.manual_seed(0)
    original = build()
    options = {"epochs": 8, "loss": "mse", "lr": 1e-3, "progress": False, "seed": 0}
    control = copy.deepcopy(original)
    surgery.finetune(control, (images, targets), **options)
    defense = ConsistencyTraining(eps=8 / 255, steps=2, beta=5.0, scale=float(targets.std()))
    robust, _ = surgery.robustify(original, (images, targets), recipe="robust", defense=defense, **options)
    assert strong_gain(robust, images) < 0.7 * strong_gain(control, images)


def test_robustify_copies_the_model_and_uses_the_recipe_defense(monkeypatch):
    images, targets = cluster_data(16, 8)
    model = SmallCNN()
    before = snapshot(model)
    seen = []
    monkeypatch.setattr(ConsistencyTraining, "loss", lambda self, *a: seen.append(self) or a[3](a[0](a[1]), a[2]))
    robust, result = surgery.robustify(model, (images, targets), epochs=1, progress=False)
    assert robust is not model and len(result.history) == 1
    assert seen and isinstance(seen[0], ConsistencyTraining)
    assert_unchanged(model, before)


def test_paper_recipe_splices_prunes_and_fine_tunes():
    images, targets = cluster_data(32, 8)
    model = SmallCNN()
    robust, result = surgery.robustify(
        model, (images, targets), recipe="paper", harden_options={"input_size": (3, 32, 32)}, epochs=1, loss="mse",
        lr=1e-2, progress=False,
    )
    assert surgery.robust_blocks(robust) and robust.surgery_config.pruning
    assert len(result.history) == 1 and not torch.equal(robust.fc.bias, model.fc.bias)  # fine-tuned (pruning keeps it)


def test_recipes_refuse_what_they_cannot_do():
    images, targets = cluster_data(16, 4)
    with pytest.raises(ValueError, match="available"):
        surgery.robustify(SmallCNN(), (images, targets), recipe="magic")
    with pytest.raises(ValueError, match="adds no block"):
        surgery.robustify(SmallCNN(), (images, targets), recipe="robust", harden_options={"position": -1})
    assert set(RECIPES) >= {"robust", "robust-strong", "paper"}


def test_the_strong_recipe_is_the_robust_one_without_the_blend():
    """Same fine-tune (same seed and data), then the robust recipe keeps its blend of the change."""
    images, targets = cluster_data(16, 8)
    model = SmallCNN()
    options = {"epochs": 1, "lr": 1e-2, "loss": "mse", "progress": False, "seed": 3}
    strong, _ = surgery.robustify(model, (images, targets), recipe="robust-strong", **options)
    robust, _ = surgery.robustify(model, (images, targets), recipe="robust", **options)
    keep = RECIPES["robust"].blend
    assert 0 < keep < 1 and RECIPES["robust-strong"].blend is None
    start, fine_tuned = model.state_dict(), strong.state_dict()
    for key, value in robust.state_dict().items():
        torch.testing.assert_close(value, start[key] + keep * (fine_tuned[key] - start[key]))
    assert not torch.allclose(fine_tuned["fc.weight"], start["fc.weight"])


@pytest.mark.parametrize("inplace", [False, True])
def test_robustify_blends_back_toward_the_model_as_it_came_in(monkeypatch, inplace):
    """A recipe that keeps none of its fine-tune's change gives back the original weights;
    finetune's history is of the model before the blend."""
    images, targets = cluster_data(16, 8)
    model = BatchNormIQA()
    before = snapshot(model)
    monkeypatch.setitem(RECIPES, "undo", surgery.Recipe("undo", "fine-tune, then keep none of it", blend=0.0))
    robust, result = surgery.robustify(model, (images, targets), recipe="undo", inplace=inplace, epochs=1, lr=1e-2,
                                       loss="mse", progress=False)
    assert (robust is model) == inplace and len(result.history) == 1
    for key, value in robust.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, before["state"][key])


@pytest.mark.parametrize("ortho", ["cayley", "aoc", "aol"])
def test_orthogonal_layers_keep_their_guarantee_after_training(ortho):
    """Measured after a fine-tune at a high learning rate: ||Qx|| = ||x|| (<= for AOL)."""
    images, targets = cluster_data(32, 16)
    robust, _ = surgery.robustify(
        SmallCNN(), (images, targets), recipe="paper", harden_options={"input_size": (3, 32, 32), "ortho": ortho},
        epochs=3, lr=1e-1, loss="mse", progress=False,
    )
    for block in surgery.robust_blocks(robust).values():
        ratio = block.norm_ratio(16, 16)
        if block.ortho.norm_preserving:
            torch.testing.assert_close(ratio, torch.ones_like(ratio), atol=1e-4, rtol=0)
        else:
            assert ratio.max() <= 1 + 1e-4


def test_robustify_warns_when_the_score_spread_is_unknown():
    images, targets = cluster_data(16, 8)

    class Pairs(torch.utils.data.Dataset):  # no .targets: the spread cannot be read up front
        def __len__(self):
            return len(targets)

        def __getitem__(self, i):
            return images[i], targets[i]

    with pytest.warns(UserWarning, match="spread of the training scores"):
        surgery.robustify(SmallCNN(), Pairs(), epochs=1, loss="mse", progress=False)


@pytest.mark.parametrize("recipe", ["robust", "robust-strong", "paper"])
def test_parameters_train_exactly_those_tensors_of_the_returned_model(recipe, monkeypatch):
    """parameters=list(model.fc.parameters()) used to hand the original's tensors to the optimiser of
    the copy: the returned model was not trained at all; with "paper", the spliced block was left
    at its initial map. "robust" runs as it ships: its blend calibrated on validation data."""
    from surgery import recipes

    images, targets = cluster_data(32, 8)
    model = SmallCNN()
    before = snapshot(model)
    trained, finetune = {}, recipes.finetune

    def recording_finetune(network, *args, **kwargs):
        trained["model"], trained["parameters"] = network, kwargs["parameters"]
        return finetune(network, *args, **kwargs)

    monkeypatch.setattr(recipes, "finetune", recording_finetune)
    options = {"harden_options": {"input_size": (3, 32, 32)}} if recipe == "paper" else {}
    if recipe == "robust":
        options["val"] = (images, targets)
    robust, _ = surgery.robustify(model, (images, targets), recipe=recipe, parameters=list(model.fc.parameters()),
                                  epochs=1, lr=1e-2, loss="mse", progress=False, **options)
    assert trained["model"] is robust
    added = [p for name, p in robust.named_parameters() if ".robust." in name]  # the spliced block's: none of the model's to name
    assert bool(added) == (recipe == "paper")
    assert [id(p) for p in trained["parameters"]] == [id(robust.fc.weight), id(robust.fc.bias)] + [id(p) for p in added]
    assert_unchanged(model, before)
    if recipe != "paper":  # same architecture: every other tensor is the original's
        changed = {k for k, v in robust.state_dict().items() if not torch.equal(v, before["state"][k])}
        assert changed == {"fc.weight", "fc.bias"}


def test_parameters_of_another_model_are_refused_by_robustify():
    images, targets = cluster_data(16, 4)
    with pytest.raises(ValueError, match="not parameters of the model passed to robustify"):
        surgery.robustify(SmallCNN(), (images, targets), parameters=list(SmallCNN().parameters()), epochs=1)


def test_a_failed_inplace_paper_recipe_gives_the_model_back_as_it_came():
    """recipe="paper", inplace=True that failed mid-fine-tune used to leave the model spliced and pruned."""
    images, targets = cluster_data(32, 16)
    targets = targets.clone()
    targets[-1] = float("nan")  # reached in the fine-tune, after the splice and the pruning
    model = SmallCNN()
    before = snapshot(model)
    children = dict(model.named_children())
    text = str(model)
    with pytest.raises(ValueError, match="NaN or inf scores"):
        surgery.robustify(model, (images, targets), recipe="paper", inplace=True, harden_options={"input_size": (3, 32, 32)},
                          epochs=1, loss="mse", progress=False)
    assert str(model) == text and dict(model.named_children()) == children
    assert not surgery.robust_blocks(model) and not hasattr(model, "surgery_config")
    assert_unchanged(model, before)


def test_a_nan_training_score_is_named_without_a_spread_warning(recwarn):
    images, targets = cluster_data(16, 8)
    targets = targets.clone()
    targets[3] = float("nan")
    with pytest.raises(ValueError, match=r"training image\(s\) \[3\] have NaN"):
        surgery.robustify(SmallCNN(), (images, targets), epochs=1, progress=False)
    assert not [w for w in recwarn if "spread" in str(w.message)]


def test_a_paper_recipe_run_resumes_from_its_checkpoint_folder(tmp_path):
    """The block starts from the run's seed: the same call finds its own checkpoint, not another run's."""
    images, targets = cluster_data(32, 8)
    model = SmallCNN()
    options = {"recipe": "paper", "harden_options": {"input_size": (3, 32, 32)}, "epochs": 1, "loss": "mse",
               "progress": False, "checkpoint_dir": tmp_path}
    first, history = surgery.robustify(model, (images, targets), **options)
    again, resumed = surgery.robustify(model, (images, targets), **options)  # nothing left to train: resumed
    assert resumed.history == history.history
    for key, value in first.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key


def test_robustify_runs_the_recipe_record(monkeypatch):
    """Its defaults are the recipe's whole configuration: loss, epochs, lr, weight decay, schedule,
    batch size, gradient clipping, the defence and the trained parts (on the default model: stages 4-6 and the head, as measured)."""
    import surgery.recipes
    from surgery.training import FinetuneResult
    from surgery.zoo.default import trained_prefixes

    calls = []
    monkeypatch.setattr(surgery.recipes, "finetune", lambda model, train, val, **kw: calls.append((model, kw)) or FinetuneResult())
    model = surgery.create_model("default", pretrained=True)
    images, targets = cluster_data(48, 4)
    robust, _ = surgery.robustify(model, (images, targets))
    copy_, options = calls[0]
    recipe = RECIPES["robust"]
    assert copy_ is robust and {k: options[k] for k in recipe.finetune_options()} == recipe.finetune_options()
    settings = ("loss", "epochs", "lr", "weight_decay", "schedule", "batch_size", "grad_clip", "train_blocks", "select")
    assert {k: getattr(recipe, k) for k in settings} == {
        "loss": "mse", "epochs": 4, "lr": 1e-4, "weight_decay": 1e-4, "schedule": "cosine", "batch_size": 8, "grad_clip": 1.0,
        "train_blocks": 4, "select": "last",
    }
    assert (recipe.target, recipe.blend) == (0.99, 0.4)  # calibrated with val; the fixed keep without
    defense = options["defense"]
    assert (defense.eps, defense.steps, defense.fraction, defense.beta) == (4 / 255, 2, 0.5, 0.04)
    names = {id(p): n for n, p in robust.named_parameters()}
    assert [names[id(p)] for p in options["parameters"]] == [n for n, _ in robust.named_parameters() if n.startswith(trained_prefixes(4))]
    surgery.robustify(model, (images, targets), epochs=1, lr=1e-3, parameters=list(model.head.parameters()))
    options = calls[1][1]
    assert (options["epochs"], options["lr"], options["loss"]) == (1, 1e-3, "mse")
    copy_names = {id(p): n for n, p in calls[1][0].named_parameters()}
    assert [copy_names[id(p)] for p in options["parameters"]] == [n for n, _ in model.named_parameters() if n.startswith("head.")]


def test_trailing_parameters_are_the_last_blocks_and_what_follows():
    model = SmallCNN()
    blocks = surgery.locate(model, input_size=(3, 16, 16))
    every = [n for n, _ in model.named_parameters()]
    assert blocks.trailing_parameters(len(blocks.blocks)) == every
    last = blocks.trailing_parameters(1)
    assert last == every[every.index(f"{blocks.blocks[-1].name}.weight"):]
    with pytest.raises(ValueError, match="count must be"):
        blocks.trailing_parameters(len(blocks.blocks) + 1)


def test_a_model_without_conv_blocks_trains_every_parameter():
    class Flat(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3 * 8 * 8, 1)

        def forward(self, x):
            return self.fc(x.flatten(1)).squeeze(-1)

    images, targets = cluster_data(8, 8)
    model = Flat()
    with pytest.warns(UserWarning, match="every parameter trains instead"):
        robust, _ = surgery.robustify(model, (images, targets), (images, targets), target=None, epochs=1, progress=False)
    assert not torch.equal(robust.fc.weight, model.fc.weight)


def test_the_training_digest_names_what_trains_and_nothing_else():
    """Checkpoint folders are named by it: a changed defence or schedule changes it; the blend and
    its target (applied after the fine-tune), the epoch returned and the wording do not."""
    import dataclasses

    robust = RECIPES["robust"]
    assert RECIPES["robust-strong"].training_digest() == robust.training_digest()
    same = dataclasses.replace(robust, name="x", description="y", blend=0.9, select="best", target=0.5)
    assert same.training_digest() == robust.training_digest()
    assert len({
        robust.training_digest(),
        dataclasses.replace(robust, defense=None).training_digest(),
        dataclasses.replace(robust, epochs=3).training_digest(),
        dataclasses.replace(robust, schedule="constant").training_digest(),
        dataclasses.replace(robust, weight_decay=0.0).training_digest(),
        dataclasses.replace(robust, defense=lambda spread: ConsistencyTraining(eps=4 / 255, steps=3, scale=spread)).training_digest(),
        RECIPES["paper"].training_digest(),
    }) == 7


def test_robustify_gives_the_result_the_range_of_its_own_scores():
    """Score changes are measured in a model's own range: the result's is re-measured on the
    training images (consistency training squashes scores), the input model's is left alone."""
    torch.manual_seed(0)
    model = SmallCNN()
    model.score_range = (0.0, 1.0)
    images, targets = cluster_data(16, 8)
    robust, _ = surgery.robustify(model, (images, targets), recipe="robust-strong", epochs=1, progress=False)
    own = scores(robust, images)
    assert robust.score_range == pytest.approx((own.min().item(), own.max().item()))
    assert model.score_range == (0.0, 1.0)

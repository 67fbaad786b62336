"""blend: WiSE-FT weight blending of a fine-tuned model with its original."""
import copy

import pytest
import torch

import surgery
from tests.models import BatchNormIQA, SmallCNN


def trained_copy(original, seed=1):
    """A copy with every float tensor moved, as a fine-tune would (BatchNorm statistics too)."""
    model = copy.deepcopy(original)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for value in model.state_dict().values():
            if value.is_floating_point():
                value.add_(torch.randn(value.shape, generator=generator).abs() + 0.1)
    return model


@pytest.mark.parametrize("keep", [0.0, 0.3, 1.0])
def test_blend_moves_every_float_tensor_by_the_kept_fraction(keep):
    original = BatchNormIQA()
    model = trained_copy(original)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    reference = original.state_dict()
    assert surgery.blend(model, original, keep) is model
    for key, value in model.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, reference[key] + keep * (before[key] - reference[key]))
        else:  # BatchNorm's step counter is not a weight
            assert torch.equal(value, before[key])


def test_blend_at_zero_gives_the_original_scores_and_leaves_the_original_alone():
    original = BatchNormIQA().eval()
    snapshot = {k: v.clone() for k, v in original.state_dict().items()}
    model = trained_copy(original).eval()
    images = torch.rand(4, 3, 16, 16)
    surgery.blend(model, original, 0.0)
    torch.testing.assert_close(model(images), original(images))
    assert all(torch.equal(v, snapshot[k]) for k, v in original.state_dict().items())


def test_blend_of_a_hardened_model_reaches_its_protected_block_and_keeps_the_robust_block():
    """The protected module is ``<path>.original`` after the splice: it is blended too."""
    original = SmallCNN()
    hardened = trained_copy(surgery.harden(original, input_size=(3, 32, 32)))
    block = {k: v.clone() for k, v in hardened.state_dict().items() if ".robust." in k}
    assert block and any(".original." in k for k in hardened.state_dict())
    surgery.blend(hardened, original, 0.0)
    reference = original.state_dict()
    for key, value in hardened.state_dict().items():
        if key in block:
            assert torch.equal(value, block[key])
        else:
            torch.testing.assert_close(value, reference[key.replace(".original.", ".")])


def test_blend_refuses_a_pruned_model_another_architecture_and_a_keep_outside_zero_one():
    original = SmallCNN()
    pruned = surgery.harden(original, input_size=(3, 32, 32), prune="l2", amount=0.25)
    with pytest.raises(ValueError, match="changed shape.*blend before pruning"):
        surgery.blend(pruned, original, 0.5)
    with pytest.raises(ValueError, match=r"keep must be in \[0, 1\]"):
        surgery.blend(copy.deepcopy(original), original, 1.5)
    with pytest.raises(ValueError, match="not one architecture.*the model the fine-tune started from"):
        surgery.blend(BatchNormIQA(), original, 0.5)


def test_a_keep_per_module_moves_each_tensor_by_its_modules_keep():
    """The longest module name that contains a tensor gives its keep; '' gives the rest's."""
    original = BatchNormIQA()
    model = trained_copy(original)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    reference = original.state_dict()
    names = [k for k, v in before.items() if v.is_floating_point()]
    first = names[0].rsplit(".", 1)[0]
    keeps = {"": 0.2, first: 1.0, names[-1]: 0.0}  # a module, and a single tensor by its own name
    surgery.blend(model, original, keeps)
    for key in names:
        expected = 1.0 if key.startswith(f"{first}.") else 0.0 if key == names[-1] else 0.2
        torch.testing.assert_close(model.state_dict()[key], reference[key] + expected * (before[key] - reference[key]))


@pytest.mark.parametrize("keeps, says", [
    ({"head": 1.0}, "needs a '' entry"),
    ({"": 0.5, "head": 1.5}, r"keep\['head'\] must be in \[0, 1\]"),
    ({"": True}, r"keep\[''\] must be in \[0, 1\]"),
])
def test_a_bad_keep_per_module_is_named(keeps, says):
    original = SmallCNN()
    with pytest.raises(ValueError, match=says):
        surgery.blend(copy.deepcopy(original), original, keeps)


def test_a_module_name_covers_its_own_tensors_not_a_siblings_and_a_misspelt_one_is_refused():
    original = torch.nn.Sequential(*[torch.nn.Linear(2, 2) for _ in range(12)])
    model = trained_copy(original)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    surgery.blend(model, original, {"": 0.0, "1": 1.0})  # "1" is not "10" or "11"
    for key, value in model.state_dict().items():
        expected = before[key] if key.startswith("1.") else original.state_dict()[key]
        torch.testing.assert_close(value, expected)
    with pytest.raises(ValueError, match=r"keep names \['haed'\] cover no tensor"):
        surgery.blend(copy.deepcopy(model), original, {"": 0.5, "haed": 1.0})


def test_a_module_reached_by_two_names_is_blended_once():
    """state_dict lists a shared module's tensors under both names: each was moved twice (keep squared)."""
    original = BatchNormIQA()
    original.alias = original.head  # the same module under a second name
    model = trained_copy(original)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    surgery.blend(model, original, 0.5)
    reference = original.state_dict()
    for key in ("head.1.weight", "alias.1.weight"):
        torch.testing.assert_close(model.state_dict()[key], reference[key] + 0.5 * (before[key] - reference[key]))

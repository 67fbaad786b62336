"""harden(): splicing checked against the unmodified model, on the zoo and common backbones."""
import copy
import inspect

import pytest
import timm
import torch
import torchvision
from torch import nn

import surgery
from surgery import describe, harden, robust_blocks
from surgery.blocks import RobustSplice
from tests.conftest import requires_pyiqa
from tests.models import FixedSizeHead, SmallCNN, TwoBranch

BUILDERS = {
    "tv-resnet18": (lambda: torchvision.models.resnet18(), (3, 96, 96)),
    "tv-resnet50": (lambda: torchvision.models.resnet50(), (3, 96, 96)),
    "tv-vgg16": (lambda: torchvision.models.vgg16(), (3, 96, 96)),
    "timm-resnet18": (lambda: timm.create_model("resnet18", pretrained=False), (3, 96, 96)),
    "timm-resnet50": (lambda: timm.create_model("resnet50", pretrained=False), (3, 96, 96)),
    "timm-efficientnet_lite0": (lambda: timm.create_model("efficientnet_lite0", pretrained=False), (3, 96, 96)),
    "linearity": (lambda: surgery.create_model("linearity", arch="resnet18"), (3, 96, 96)),
    "linearity-resnet50": (lambda: surgery.create_model("linearity"), (3, 96, 96)),
    "koncept512": (lambda: surgery.create_model("koncept512"), (3, 160, 160)),
    "timm-iqa": (lambda: surgery.create_model("timm-iqa", backbone="efficientnet_lite0"), (3, 96, 96)),
}


def unspliced(model: nn.Module) -> nn.Module:
    """A copy whose RobustBlocks are identities: must compute exactly what the original did."""
    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, RobustSplice):
            module.robust = nn.Identity()
    return model


def original_key(key: str, spliced: list[str]) -> str | None:
    for name in spliced:
        if key.startswith(name + ".robust."):
            return None
        if key.startswith(name + ".original."):
            return name + key[len(name) + len(".original"):]
    return key


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "koncept512" else n for n in sorted(BUILDERS)])
def test_harden_splices_without_disturbing_the_rest(name):
    build, size = BUILDERS[name]
    model = build().eval()
    hardened = harden(model, input_size=size).eval()
    x = torch.rand(2, *size)

    assert type(hardened) is type(model)
    assert inspect.signature(hardened.forward) == inspect.signature(model.forward)
    spliced = list(robust_blocks(hardened))
    assert len(spliced) == 1

    # every original weight is still there, unchanged, under its path through the splice
    original_state = model.state_dict()
    mapped = {original_key(k, spliced): v for k, v in hardened.state_dict().items()}
    mapped.pop(None, None)
    assert mapped.keys() == original_state.keys()
    assert all(torch.equal(mapped[k], original_state[k]) for k in original_state)

    with torch.no_grad():
        torch.testing.assert_close(unspliced(hardened)(x), model(x))
        # the protected block now sees the RobustBlock's output
        seen = {}
        hook = hardened.get_submodule(spliced[0]).original.register_forward_pre_hook(
            lambda m, args: seen.update(input=args[0])
        )
        hardened(x)
        hook.remove()
        block = hardened.get_submodule(spliced[0])
        assert seen["input"].shape[-1] == seen["input"].shape[-2] and seen["input"].abs().sum() > 0

    hardened.train()
    hardened(x).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in block.robust.parameters())


def test_harden_copies_unless_inplace():
    model = torchvision.models.resnet18()
    hardened = harden(model, input_size=(3, 64, 64))
    assert hardened is not model and not robust_blocks(model)
    same = harden(model, input_size=(3, 64, 64), inplace=True)
    assert same is model and list(robust_blocks(model)) == ["layer4"]


def test_harden_keeps_the_training_mode():
    model = torchvision.models.resnet18().eval()
    assert not harden(model, input_size=(3, 64, 64)).training
    assert harden(model.train(), input_size=(3, 64, 64)).training


def modes_by_original_name(model: nn.Module) -> dict[str, bool]:
    spliced = list(robust_blocks(model))
    modes = {original_key(name + ".", spliced): m.training for name, m in model.named_modules() if name}
    modes.pop(None, None)
    return {name.rstrip("."): mode for name, mode in modes.items()}


@pytest.mark.parametrize("prune", [None, "l2"])
def test_harden_keeps_each_module_mode(prune):
    model = TwoBranch().train()
    model.a.eval()  # a submodule kept in eval mode inside a model in train mode, as pyiqa does
    before = modes_by_original_name(model)
    hardened = harden(model, input_size=(3, 32, 32), prune=prune)
    assert hardened.training and modes_by_original_name(hardened) == before
    assert not any(m.training for m in hardened.a.modules())  # the block in front of a.3 follows it
    assert all(m.training for m in hardened.b.modules())


@pytest.mark.parametrize("position,expected", [(["layer2", "layer4"], ["layer2", "layer4"]), (3, ["layer2"]), ("layer3.1", ["layer3.1"])])
def test_harden_at_chosen_positions(position, expected):
    hardened = harden(torchvision.models.resnet18(), position=position, input_size=(3, 64, 64))
    assert sorted(robust_blocks(hardened)) == expected


def test_nested_positions_are_spliced_inside_out():
    hardened = harden(torchvision.models.resnet18(), position=["layer4", "layer4.1"], input_size=(3, 64, 64))
    assert sorted(robust_blocks(hardened)) == ["layer4", "layer4.original.1"]
    assert sorted(hardened.surgery_config.blocks) == ["layer4", "layer4.1"]


def test_harden_both_branches_of_an_untraceable_model():
    hardened = harden(TwoBranch(untraceable=True), input_size=(3, 16, 16))
    assert sorted(robust_blocks(hardened)) == ["a.3", "b.3"]
    hardened(torch.rand(2, 3, 16, 16)).sum().backward()


@pytest.mark.parametrize("ortho", ["cayley", "aol", "aoc"])
def test_harden_with_each_orthogonal_layer(ortho):
    hardened = harden(torchvision.models.resnet18(), ortho=ortho, input_size=(3, 64, 64))
    assert robust_blocks(hardened)["layer4"].config.ortho == ortho


def test_block_options_reach_the_block():
    hardened = harden(
        torchvision.models.resnet18(), hidden_channels=64, kernel_size=1, reduce_kernel_size=3, pooled_size=3,
        input_size=(3, 128, 128),
    )
    cfg = robust_blocks(hardened)["layer4"].config
    assert (cfg.channels, cfg.hidden_channels, cfg.kernel_size, cfg.reduce_kernel_size, cfg.pooled_size) == (256, 64, 1, 3, 3)
    assert cfg.example_size == (8, 8)


def test_model_that_needs_its_map_size_gets_a_clear_error_and_a_fix():
    model = FixedSizeHead(8, 12)
    with pytest.raises(RuntimeError, match="pooled_size='keep'"):
        harden(model, position=2, input_size=(3, 8, 12))
    hardened = harden(model, position=2, pooled_size="keep", input_size=(3, 8, 12))
    assert hardened(torch.rand(1, 3, 8, 12)).shape == (1,)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"ortho": "householder"}, ValueError, "unknown orthogonal"),
        ({"hidden_channels": 1000}, ValueError, "has 256 channels"),
        ({"position": "fc"}, ValueError, "4-D feature map"),
        ({"position": 9}, ValueError, "does not exist"),
    ],
)
def test_harden_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        harden(torchvision.models.resnet18(), input_size=(3, 64, 64), **kwargs)


def test_vision_transformer_is_refused():
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8)
    with pytest.raises(ValueError, match="raw input image.*Vision transformers"):
        harden(vit, input_size=(3, 32, 32))


def test_splicing_twice_at_the_same_place_is_refused():
    hardened = harden(torchvision.models.resnet18(), input_size=(3, 64, 64))
    with pytest.raises(ValueError, match="already has a RobustBlock"):
        surgery.hardening.apply_config(hardened, hardened.surgery_config)


def test_describe_reports_blocks_and_measured_orthogonality():
    text = describe(harden(torchvision.models.resnet18(), input_size=(3, 128, 128)))
    assert "before layer4" in text and "cayley 128->256" in text
    ratio_line = next(line for line in text.splitlines() if "||Wx||/||x||" in line)
    low, high = (float(v) for v in ratio_line.split(": ")[1].split(" ")[0].split(".."))
    assert abs(low - 1) < 1e-5 and abs(high - 1) < 1e-5
    assert "not hardened" in describe(torchvision.models.resnet18())


@requires_pyiqa
def test_pyiqa_metric_stays_a_pyiqa_metric():
    metric = surgery.create_model("dbcnn")
    hardened = harden(metric)
    assert type(hardened) is type(metric) and hardened.score_range == metric.score_range
    assert sorted(robust_blocks(hardened)) == ["net.features1.24", "net.features2.24"]
    x = torch.rand(1, 3, 224, 224)
    assert hardened(x).shape == metric(x).shape
    assert modes_by_original_name(hardened) == modes_by_original_name(metric)  # the inner net stays in eval mode
    assert not hardened.net.training

    as_loss = harden(surgery.create_model("dbcnn", as_loss=True))
    x.requires_grad_()
    as_loss(x).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@requires_pyiqa
@pytest.mark.slow
def test_pyiqa_tres_hardens_and_runs():
    hardened = harden(surgery.create_model("tres", test_sample=2)).eval()
    assert list(robust_blocks(hardened)) == ["net.model.layer4"]
    score = hardened(torch.rand(1, 3, 224, 224))
    score = score[0] if isinstance(score, tuple) else score
    assert torch.isfinite(score).all()


@pytest.mark.parametrize("ortho", ["cayley", "aol", "aoc"])
def test_harden_leaves_no_inference_cache_behind(ortho):
    """The check run on the example input must not keep matrices built for the example's size."""
    model = surgery.harden(SmallCNN(), ortho=ortho, input_size=(3, 16, 16))
    for block in surgery.robust_blocks(model).values():
        assert callable(block.ortho.clear_cache)
        assert block.ortho._inference_cache is None

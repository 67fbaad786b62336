"""Finding conv blocks and positions on the paper's models and common backbones."""

import pytest
import timm
import torch
import torchvision
from torch import nn

import surgery
from surgery import locate
from tests.conftest import requires_pyiqa
from tests.models import SmallCNN, TwoBranch, conv_stage

CASES = {
    # name: (builder, input_size, number of blocks, auto positions)
    "tv-resnet18": (lambda: torchvision.models.resnet18(), (3, 128, 128), 5, ["layer4"]),
    "tv-resnet50": (lambda: torchvision.models.resnet50(), (3, 128, 128), 5, ["layer4"]),
    "tv-vgg16": (lambda: torchvision.models.vgg16(), (3, 128, 128), 5, ["features.24"]),
    "timm-resnet18": (lambda: timm.create_model("resnet18", pretrained=False), (3, 128, 128), 5, ["layer4"]),
    "timm-resnet50": (lambda: timm.create_model("resnet50", pretrained=False), (3, 128, 128), 5, ["layer4"]),
    "timm-efficientnet_lite0": (lambda: timm.create_model("efficientnet_lite0", pretrained=False), (3, 128, 128), 9, ["blocks.6"]),
    "linearity": (lambda: surgery.create_model("linearity", arch="resnet18"), (3, 128, 128), 5, ["features.7"]),
    "koncept512": (lambda: surgery.create_model("koncept512"), (3, 160, 160), 13, ["backbone.block8"]),
    "timm-iqa": (lambda: surgery.create_model("timm-iqa", backbone="resnet18"), (3, 128, 128), 5, ["backbone.layer4"]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_blocks_and_auto_position(name):
    build, size, count, auto = CASES[name]
    model_map = locate(build(), input_size=size)
    assert len(model_map.blocks) == count
    assert model_map.resolve("auto") == auto
    assert model_map.method == "fx"
    assert all(len(b.in_shape) == 3 for b in model_map.blocks)


def test_efficientnet_head_conv_is_marked_and_skipped():
    model_map = locate(timm.create_model("efficientnet_lite0", pretrained=False), input_size=(3, 128, 128))
    assert model_map.blocks[-1].name == "conv_head" and model_map.blocks[-1].head
    assert model_map.resolve(-1) == ["conv_head"]  # explicit positions may still choose it


def test_resnet_block_shapes_follow_the_network():
    model_map = locate(torchvision.models.resnet50(), input_size=(3, 224, 224))
    assert [b.in_shape for b in model_map.blocks] == [
        (3, 224, 224), (64, 56, 56), (256, 56, 56), (512, 28, 28), (1024, 14, 14)
    ]


def test_vgg_stages_split_at_pooling():
    model_map = locate(torchvision.models.vgg16(), input_size=(3, 64, 64))
    assert [b.modules[0] for b in model_map.blocks] == ["features.0", "features.5", "features.10", "features.17", "features.24"]
    assert model_map.blocks[0].modules == ("features.0", "features.1", "features.2", "features.3", "features.4")


@pytest.mark.parametrize("untraceable,method", [(False, "fx"), (True, "autograd")])
def test_parallel_branches_each_get_a_block(untraceable, method):
    model_map = locate(TwoBranch(untraceable), input_size=(3, 16, 16))
    assert model_map.method == method
    assert model_map.resolve("auto") == ["a.3", "b.3"]
    assert [b.branch for b in model_map.blocks] == [0, 0, 1, 1]


def test_without_any_dependency_source_blocks_form_one_chain(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no autograd here")

    monkeypatch.setattr("surgery.blockmap._autograd_dependencies", broken)
    with pytest.warns(UserWarning, match="one module name per branch"):
        model_map = locate(TwoBranch(untraceable=True), input_size=(3, 16, 16))
    assert model_map.method == "order"
    assert model_map.resolve("auto") == ["b.3"]


def test_resolve_numbers_names_and_lists():
    model_map = locate(torchvision.models.resnet18(), input_size=(3, 64, 64))
    assert model_map.resolve(1) == ["conv1"]
    assert model_map.resolve(-2) == ["layer3"]
    assert model_map.resolve("layer2.1") == ["layer2.1"]
    assert model_map.resolve(["layer3", 5, "layer3"]) == ["layer3", "layer4"]


@pytest.mark.parametrize(
    "position,error,match",
    [
        (0, ValueError, "numbered 1..5"),
        (6, ValueError, "does not exist"),
        (-6, ValueError, "does not exist"),
        ("layer5", ValueError, "Did you mean 'layer4'"),
        ("fc", ValueError, "4-D feature map"),
        ([], ValueError, "empty list"),
        (1.5, TypeError, "position must be"),
    ],
)
def test_bad_positions_get_clear_errors(position, error, match):
    model_map = locate(torchvision.models.resnet18(), input_size=(3, 64, 64))
    with pytest.raises(error, match=match):
        model_map.resolve(position)


def test_model_without_conv_is_rejected():
    with pytest.raises(ValueError, match="no nn.Conv2d"):
        locate(nn.Sequential(nn.Flatten(), nn.Linear(12, 1)))


def test_model_that_cannot_run_on_the_example_says_which_argument_to_pass():
    model = nn.Sequential(*conv_stage(1, 4), *conv_stage(4, 4, pool=False))
    with pytest.raises(RuntimeError, match="input_size=.*example_input="):
        locate(model)
    assert len(locate(model, input_size=(1, 16, 16)).blocks) == 2
    assert len(locate(model, example_input=torch.rand(2, 1, 16, 16)).blocks) == 2


def test_locate_restores_training_mode():
    model = torchvision.models.resnet18().train()
    model.layer1.eval()
    locate(model, input_size=(3, 64, 64))
    assert model.training and not model.layer1.training and model.layer2.training


@requires_pyiqa
def test_pyiqa_dbcnn_gets_one_block_per_branch():
    model_map = locate(surgery.create_model("dbcnn"))
    assert model_map.resolve("auto") == ["net.features1.24", "net.features2.24"]


@requires_pyiqa
def test_pyiqa_tres_block_before_last_resnet_stage():
    assert locate(surgery.create_model("tres", test_sample=2)).resolve("auto") == ["net.model.layer4"]


def test_positions_report_the_lemma_ratio_of_the_preceding_block():
    rows = surgery.positions(torchvision.models.resnet18(), input_size=(3, 224, 224))
    assert [r["name"] for r in rows] == ["conv1", "layer1", "layer2", "layer3", "layer4"]
    assert rows[0]["lemma_ratio"] is None
    # before layer4 the block receives layer3's output: 256x14x14 from 128x28x28
    assert rows[4]["lemma_ratio"] == pytest.approx(256 * 14 * 14 / (128 * 28 * 28))
    # before layer1 it receives the stem conv's output: 64x112x112 from 3x224x224
    assert rows[1]["lemma_ratio"] == pytest.approx(64 * 112 * 112 / (3 * 224 * 224))


@pytest.mark.parametrize("build, size, head", [
    (lambda: SmallCNN(), 16, ["fc"]),
    (lambda: surgery.create_model("timm-iqa", backbone="resnet18"), 32, ["head.0", "head.2"]),
    (lambda: surgery.create_model("default"), 64, ["head.0", "head.3"]),  # at 32 its last feature map is 1x1 itself
])
def test_the_pooled_head_is_the_layers_on_the_pooled_features(build, size, head):
    """Not the last conv's BatchNorm (it runs after the last block, on a feature map)."""
    assert surgery.locate(build(), input_size=(3, size, size)).pooled_head() == head


class _Gate(nn.Module):
    """A squeeze-excitation gate: Linear layers on pooled features, inside a conv block."""

    def __init__(self, channels: int):
        super().__init__()
        self.fc = nn.Linear(channels, channels)

    def forward(self, x):
        return x * torch.sigmoid(self.fc(x.mean((2, 3))))[:, :, None, None]


class GatedWithConvHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.last = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), _Gate(8))
        self.project = nn.Conv2d(8, 4, 1)  # runs on (B, 8, 1, 1): part of the head
        self.norm = nn.BatchNorm1d(4, affine=False)  # no parameters, but statistics
        self.fc = nn.Linear(4, 1)

    def forward(self, x):
        pooled = self.last(self.stem(x)).mean((2, 3), keepdim=True)
        return self.fc(self.norm(self.project(pooled).flatten(1))).squeeze(-1)


def test_the_pooled_head_leaves_out_a_blocks_own_pooled_layers_and_keeps_a_1x1_conv_and_statistics():
    blocks = surgery.locate(GatedWithConvHead(), input_size=(3, 16, 16))
    assert blocks.pooled_head() == ["project", "norm", "fc"]

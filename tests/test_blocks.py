"""RobustBlock: shapes, configuration errors, measured norm preservation, splice wrapper."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import surgery
from surgery.blocks import PAPER_CODE_BLOCK, RobustBlock, RobustSplice
from surgery.ortho import CayleyConv2d


@pytest.mark.parametrize(
    "channels,height,width,pooled,expected",
    [(8, 6, 10, "min", (6, 6)), (8, 9, 7, "min", (7, 7)), (6, 5, 8, "keep", (5, 8)), (4, 12, 12, 4, (4, 4)), (3, 8, 8, "min", (8, 8))],
)
@pytest.mark.parametrize("ortho", ["cayley", "aol", "aoc"])
def test_robust_block_output_shape(channels, height, width, pooled, expected, ortho):
    block = RobustBlock(channels, pooled_size=pooled, ortho=ortho)
    y = block(torch.randn(2, channels, height, width))
    assert y.shape == (2, channels, *expected)
    assert block.config.hidden_channels == max(1, channels // 2)


@pytest.mark.parametrize("ortho", ["cayley", "aoc"])
def test_robust_block_orthogonal_part_preserves_norm(ortho):
    ratio = RobustBlock(16, ortho=ortho).norm_ratio(8, 8)
    torch.testing.assert_close(ratio, torch.ones_like(ratio), atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"hidden_channels": 9}, "between 1 and in_channels=8"),
        ({"hidden_channels": 0}, "between 1 and in_channels=8"),
        ({"pooled_size": "square"}, "pooled_size"),
        ({"pooled_size": 0}, "pooled_size"),
        ({"reduce_kernel_size": 2}, "odd"),
        ({"ortho": "nope"}, "unknown orthogonal convolution"),
    ],
)
def test_robust_block_rejects_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RobustBlock(8, **kwargs)


def test_robust_block_rejects_wrong_input():
    with pytest.raises(ValueError, match=r"\(batch, 8, H, W\)"):
        RobustBlock(8)(torch.randn(2, 4, 6, 6))


def test_config_rebuilds_same_architecture():
    block = RobustBlock(8, hidden_channels=3, pooled_size=5, ortho="aol", kernel_size=1, reduce_kernel_size=3)
    rebuilt = block.config.build()
    assert rebuilt.config == block.config
    rebuilt.load_state_dict(block.state_dict())
    x = torch.randn(1, 8, 7, 9)
    torch.testing.assert_close(rebuilt(x), block(x))


def test_splice_passes_extra_arguments():
    class TakesScale(nn.Module):
        def forward(self, x, scale, shift=0.0):
            return x * scale + shift

    splice = RobustSplice(RobustBlock(4), TakesScale())
    x = torch.randn(1, 4, 6, 6)
    torch.testing.assert_close(splice(x, 2.0, shift=1.0), splice.robust(x) * 2.0 + 1.0)


@pytest.mark.parametrize("height,width", [(12, 16), (16, 12), (20, 20)])
def test_paper_code_block_shapes_and_sliding_max_pool(height, width):
    options = {**PAPER_CODE_BLOCK, "hidden_channels": 6}
    block = RobustBlock(32, **options)
    x = torch.randn(2, 32, height, width)
    side = min(height, width) - math.ceil(0.02 * min(height, width))  # the code's square: h - up + 1
    assert block.pooled_size(height, width) == (side, side)
    assert block(x).shape == (2, 32, side - 2, side - 2)  # 3x3 reducing conv without padding
    pooled = F.max_pool2d(x, (height - side + 1, width - side + 1), stride=1)
    torch.testing.assert_close(block(x), block.ortho(block.reduce(pooled)))
    assert all(not p.requires_grad for p in block.parameters())  # left at its random initialisation


def test_paper_code_cayley_is_normalised_by_its_spectrum_with_scale_one():
    layer = CayleyConv2d(6, 16, 3, normalize="spectrum", scale=1.0)
    assert "alpha" not in dict(layer.named_parameters()) and layer.alpha.item() == 1.0
    kernel = layer._scaled_kernel(9, 9)
    assert torch.fft.rfft2(kernel, s=(9, 9)).norm().item() == pytest.approx(1.0, rel=1e-5)
    x = torch.randn(3, 6, 9, 9)
    ratio = (layer(x) - layer.bias.view(1, -1, 1, 1)).flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1)
    torch.testing.assert_close(ratio, torch.ones(3), atol=1e-5, rtol=0)  # still norm-preserving
    layer.requires_grad_(True)
    assert not layer.alpha.requires_grad  # a fixed scale cannot be made to learn


def test_paper_code_block_options_are_checked():
    with pytest.raises(ValueError, match="pooling"):
        RobustBlock(8, pooling="median")
    with pytest.raises(ValueError, match="ortho_options"):
        RobustBlock(8, ortho="aol", ortho_options={"scale": 1.0})
    with pytest.raises(ValueError, match="too small"):
        RobustBlock(8, reduce_kernel_size=3, reduce_padding=False, pooled_size="keep")(torch.randn(1, 8, 2, 2))


def test_the_block_settings_have_one_source_of_defaults():
    import dataclasses
    import inspect

    defaults = {f.name: f.default for f in dataclasses.fields(surgery.RobustBlockConfig) if f.default is not dataclasses.MISSING}
    for function in (surgery.harden, surgery.RobustBlock.__init__):
        parameters = inspect.signature(function).parameters
        shared = {name: parameters[name].default for name in defaults if name in parameters}
        assert shared == {name: defaults[name] for name in shared} and len(shared) >= 7, function
    config = surgery.RobustBlockConfig(channels=8, hidden_channels=4, kernel_size=1, pooled_size=6)
    assert config.build().config == config  # build passes every setting

"""RobustBlock: shapes, configuration errors, measured norm preservation, splice wrapper."""
import pytest
import torch
from torch import nn

from surgery.blocks import RobustBlock, RobustSplice


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

"""Small models shared by the tests."""
import torch
from torch import nn


def conv_stage(c_in: int, c_out: int, pool: bool = True) -> list[nn.Module]:
    layers = [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU()]
    return layers + [nn.MaxPool2d(2)] if pool else layers


class TwoBranch(nn.Module):
    """Two parallel convolutional branches, like DBCNN; ``untraceable`` adds
    data-dependent control flow torch.fx cannot follow."""

    def __init__(self, untraceable: bool = False):
        super().__init__()
        self.untraceable = untraceable
        self.a = nn.Sequential(*conv_stage(3, 8), *conv_stage(8, 8, pool=False))
        self.b = nn.Sequential(*conv_stage(3, 4), *conv_stage(4, 6, pool=False))
        self.fc = nn.Linear(14, 1)

    def forward(self, x):
        if self.untraceable and bool(x.mean() > 2):
            x = x / 2
        features = torch.cat([self.a(x).mean((2, 3)), self.b(x).mean((2, 3))], dim=1)
        return self.fc(features).squeeze(-1)


class FixedSizeHead(nn.Module):
    """A head that flattens the map into a fixed-size Linear: needs the original map size."""

    def __init__(self, height: int, width: int):
        super().__init__()
        self.features = nn.Sequential(*conv_stage(3, 4), *conv_stage(4, 4, pool=False))
        self.fc = nn.Linear(4 * (height // 2) * (width // 2), 1)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1)).squeeze(-1)


class TinyIQA(nn.Module):
    """A small differentiable 'quality' model: conv, ReLU, global mean, linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 1)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3))).squeeze(-1)

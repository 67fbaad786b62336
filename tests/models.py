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


class Scaled(nn.Module):
    """``factor`` times ``model``'s scores: the same ranking, a squashed (factor < 1) range."""

    def __init__(self, model, factor):
        super().__init__()
        self.model, self.factor = model, factor

    def forward(self, x):
        return self.factor * self.model(x)


class BatchNormIQA(nn.Module):
    """Conv, BatchNorm, dropout and a linear head: a model whose train mode changes
    its scores and its buffers, to catch code that measures it in the wrong mode."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(0.5), nn.Linear(8, 1))

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3))).squeeze(-1)


def snapshot(model: nn.Module) -> dict:
    """Everything measuring a model must leave alone: each module's mode, every
    parameter and buffer, ``requires_grad`` and ``.grad``."""
    return {
        "modes": [(name, m.training) for name, m in model.named_modules()],
        "state": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=False).items()},
        "requires_grad": [(name, p.requires_grad) for name, p in model.named_parameters()],
        "grads": {name: None if p.grad is None else p.grad.clone() for name, p in model.named_parameters()},
    }


def assert_unchanged(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after["modes"] == before["modes"]
    assert after["requires_grad"] == before["requires_grad"]
    assert after["state"].keys() == before["state"].keys()
    for key, value in before["state"].items():
        assert torch.equal(after["state"][key], value), f"{key} changed"
    for key, grad in before["grads"].items():
        assert (grad is None) == (after["grads"][key] is None) and (grad is None or torch.equal(grad, after["grads"][key])), key


class SmallCNN(nn.Module):
    """Two convolutions with a saturating activation: curved enough that one sign step
    and many projected steps differ, as in real IQA models."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, stride=2)
        self.fc = nn.Linear(8, 1)

    def forward(self, x):
        x = torch.tanh(4 * self.conv1(x))
        return self.fc(torch.relu(self.conv2(x)).mean((2, 3))).squeeze(-1)

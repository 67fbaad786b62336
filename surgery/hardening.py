"""``harden(model)``: splice RobustBlocks into an existing model (Meleshin et al., §3).

Locates the model's convolutional blocks (:mod:`surgery.locate`), puts a
:class:`~surgery.blocks.RobustBlock` in front of the chosen ones (by default the
last block of each branch, the paper's placement) and records what it did in a
:class:`HardenConfig` on the model, so :func:`surgery.save` / :func:`surgery.load`
can rebuild it without pickled code.
"""
from __future__ import annotations

import copy
from typing import Any, Sequence

import torch
from torch import nn

from .blocks import PooledSize, RobustBlock, RobustBlockConfig, RobustSplice, hidden_width
from .config import CONFIG_ATTR, HardenConfig
from .blockmap import ModelMap, Position, locate
from .modes import eval_mode
from .ortho import get_ortho, ortho_name
from .pruning import check_method
from .pruning import prune as prune_model

__all__ = ["harden", "apply_config", "HardenConfig", "describe", "robust_blocks", "CONFIG_ATTR"]


def apply_config(model: nn.Module, config: HardenConfig, layers: Sequence[type] = ()) -> nn.Module:
    """Splice the RobustBlocks described by ``config`` into ``model`` in place (no forward pass).

    Orthogonal layers are looked up by name in the registry and among ``layers``
    (unregistered classes the caller trusts); nothing named by ``config`` is imported.
    Pruning in ``config`` is recorded, not applied (see :func:`surgery.config.resize_layers`).
    """
    # deepest first, so an outer splice does not move an inner module's path
    for name in sorted(config.blocks, key=lambda n: n.count("."), reverse=True):
        try:
            original = model.get_submodule(name)
        except AttributeError as err:
            raise ValueError(f"cannot splice before {name!r}: {type(model).__name__} has no such module") from err
        if isinstance(original, RobustSplice):
            raise ValueError(f"{name!r} already has a RobustBlock in front of it")
        param = next(original.parameters(), None)
        block = config.blocks[name].build(layers)
        if param is not None:
            block = block.to(device=param.device, dtype=param.dtype)
        splice = RobustSplice(block.train(original.training), original)
        splice.training = original.training  # not .train(): that would flatten the original's own modes
        model.set_submodule(name, splice)
    previous = getattr(model, CONFIG_ATTR, None)
    merged = HardenConfig(
        blocks={**(previous.blocks if previous else {}), **config.blocks},
        pruning=[*(previous.pruning if previous else []), *config.pruning],
    )
    setattr(model, CONFIG_ATTR, merged)
    return model


def harden(
    model: nn.Module,
    position: Position = "auto",
    ortho: str | type = RobustBlockConfig.ortho,
    *,
    hidden_channels: int | float | None = None,
    kernel_size: int = RobustBlockConfig.kernel_size,
    reduce_kernel_size: int = RobustBlockConfig.reduce_kernel_size,
    pooled_size: PooledSize = RobustBlockConfig.pooled_size,
    pooling: str = RobustBlockConfig.pooling,
    reduce_padding: bool = RobustBlockConfig.reduce_padding,
    ortho_options: dict[str, Any] | None = RobustBlockConfig.ortho_options,
    freeze: bool = RobustBlockConfig.freeze,
    prune: str | None = None,
    amount: float = 0.10,
    calib: torch.Tensor | None = None,
    calib_targets: torch.Tensor | None = None,
    input_size: Sequence[int] | None = None,
    example_input: torch.Tensor | None = None,
    inplace: bool = False,
) -> nn.Module:
    """Return ``model`` with a RobustBlock in front of the chosen convolutional blocks.

    Args:
        model: any ``nn.Module`` mapping images to a score (a pyiqa metric, a timm
            or torchvision backbone with a head, your own model).
        position: ``"auto"`` (before the last block of each branch), a 1-based block
            number (negative counts from the end), a module name such as
            ``"layer4"``, or a list of those. ``surgery.locate(model)`` lists them.
        ortho: orthogonal convolution: ``"cayley"`` (default), ``"aol"``, ``"aoc"``
            or a layer class with the ``nn.Conv2d`` constructor signature.
        hidden_channels: channels between the reducing and the orthogonal conv: an
            int, or a float in (0, 1] as a fraction of the block's input channels;
            default half of them.
        kernel_size: kernel of the orthogonal convolution.
        reduce_kernel_size: kernel of the channel-reducing convolution.
        pooled_size: ``"min"`` (square of side min(H, W), the paper's choice),
            ``"paper"`` (the paper code's slightly smaller square), ``"keep"`` (no
            pooling) or an int.
        pooling, reduce_padding, ortho_options, freeze: how the block pools
            (``"avg"`` or a sliding ``"max"``), whether the reducing conv keeps the map
            size, options of the orthogonal layer, and whether the block stays at its
            random initialisation; see :class:`~surgery.RobustBlock`.
            ``harden(model, **surgery.PAPER_CODE_BLOCK)`` builds the block as the
            paper's public code does (SPEC §6).
        prune: ``"l2"`` or ``"pls"`` to remove about ``amount`` of the weights after
            splicing (step 2 of the method; see :func:`surgery.prune`); PLS needs
            ``calib`` images (about 200) and optionally their MOS ``calib_targets``.
        input_size: ``(C, H, W)`` of the example input used to find the blocks
            (default ``(3, 224, 224)``); ``example_input`` replaces it with a batch.
        inplace: modify ``model`` itself instead of a deep copy.

    The result is the same class as ``model`` with the same forward signature; it
    is ready for fine-tuning (``surgery.finetune``). ``surgery.describe`` says what
    changed.
    """
    ortho_cls = get_ortho(ortho)  # fail fast on an unknown name
    check_method(prune, optional=True)  # before the copy: fail fast
    target = model if inplace else copy.deepcopy(model)
    model_map: ModelMap = locate(target, input_size=input_size, example_input=example_input)
    config = HardenConfig()
    for name in model_map.resolve(position):
        if tuple(model_map.in_shape(name)) == tuple(model_map.calls[""].in_shape[1:]):
            raise ValueError(
                f"a RobustBlock before {name!r} would sit on the raw input image {tuple(model_map.in_shape(name))}: "
                f"{type(model).__name__} has no convolutional block after its input there. Vision transformers (whose "
                "only convolution is the patch embedding) are not supported; for a CNN choose a later position "
                "(surgery.locate(model) lists them)"
            )
        channels = model_map.in_shape(name)[0]
        try:
            hidden = hidden_width(hidden_channels, channels)
        except ValueError as err:
            raise ValueError(f"the block before {name!r} has {channels} channels: {err}") from err
        config.blocks[name] = RobustBlockConfig(
            channels=channels,
            hidden_channels=hidden,
            pooled_size=pooled_size,
            ortho=ortho_name(ortho_cls),
            kernel_size=kernel_size,
            reduce_kernel_size=reduce_kernel_size,
            example_size=tuple(model_map.in_shape(name)[1:]),
            pooling=pooling,
            reduce_padding=reduce_padding,
            ortho_options=dict(ortho_options) if ortho_options else None,
            freeze=freeze,
        )
    apply_config(target, config, layers=[ortho_cls])
    example = _example_like(target, model_map)
    _check_runs(target, example, config)
    if prune is not None:
        prune_model(target, prune, amount, calib=calib, calib_targets=calib_targets, example_input=example)
    return target


def _example_like(model: nn.Module, model_map: ModelMap) -> torch.Tensor:
    """A random batch shaped like the example input the blocks were found with."""
    param = next(model.parameters())
    return torch.rand(model_map.calls[""].in_shape, device=param.device, dtype=param.dtype)


def _check_runs(model: nn.Module, example: torch.Tensor, config: HardenConfig) -> None:
    """One forward pass on the example input, so a model that cannot take the pooled map fails now."""
    try:
        with torch.no_grad(), eval_mode(model):
            model(example)
    except Exception as err:
        raise RuntimeError(
            f"{type(model).__name__} no longer runs after inserting RobustBlocks before {list(config.blocks)} "
            f"({type(err).__name__}: {err}). The block pools its input to a square; if the next layer needs the "
            "original map size, pass pooled_size='keep', or choose another position."
        ) from err
    finally:
        for block in robust_blocks(model).values():  # the example's size is not the user's
            block.clear_cache()


def robust_blocks(model: nn.Module) -> dict[str, RobustBlock]:
    """The RobustBlocks of a hardened model, by the name of the module they protect."""
    return {
        name: module.robust for name, module in model.named_modules() if isinstance(module, RobustSplice)
    }


def describe(model: nn.Module, measure: bool = True) -> str:
    """A readable summary of what ``harden`` changed, with the measured ``||Wx|| / ||x||``
    of every orthogonal layer (at the size harden's example input gave it) when ``measure``."""
    blocks = robust_blocks(model)
    total = sum(p.numel() for p in model.parameters())
    if not blocks:
        return f"{type(model).__name__}: not hardened ({total:,} parameters)"
    added = sum(p.numel() for b in blocks.values() for p in b.parameters())
    lines = [
        f"{type(model).__name__}: {len(blocks)} RobustBlock(s), {added:,} of {total:,} parameters "
        f"({100 * added / (total - added):.1f}% added)"
    ]
    for report in getattr(getattr(model, CONFIG_ATTR, None), "pruning", []):
        lines.append(f"  {report}")
    for name, block in blocks.items():
        cfg = block.config
        options = f" {cfg.ortho_options}" if cfg.ortho_options else ""
        lines.append(
            f"  before {name}: {cfg.pooling} pool -> {cfg.pooled_size}, conv {cfg.channels}->{cfg.hidden_channels} "
            f"(k={cfg.reduce_kernel_size}{'' if cfg.reduce_padding else ', no padding'}), "
            f"{cfg.ortho} {cfg.hidden_channels}->{cfg.channels} (k={cfg.kernel_size}){options}"
            + (", frozen" if cfg.freeze else "")
        )
        if measure:
            height, width = block.output_size(*(cfg.example_size or (16, 16)))
            ratio = block.norm_ratio(height, width)
            guarantee = "= 1" if getattr(block.ortho, "norm_preserving", True) else "<= 1"
            lines.append(
                f"    ||Wx||/||x|| at {height}x{width}: {ratio.min().item():.6f}..{ratio.max().item():.6f} "
                f"(guarantee {guarantee})"
            )
    return "\n".join(lines)

"""Find a model's convolutional blocks and where a RobustBlock can go (Meleshin et al., §3-4).

The paper places the RobustBlock "before the N-th convolutional block", by default
before the last one (near the regression head), and in each branch of a
multi-branch model (DBCNN). Blocks are found in three steps:

1. One forward pass on an example input records, for every module, when it runs
   and the shape it receives and returns.
2. The module tree gives the blocks: the trunk's stages (ResNet ``layer1..4``,
   EfficientNet ``blocks.0..6``, Inception-ResNet cells), with plain sequences of
   layers (VGG ``features``) cut into stages at pooling and strided layers, and
   wrappers with a single convolutional child (``backbone``, ``net``) opened.
3. torch.fx traces the module that holds the blocks to learn which block feeds
   which, so parallel branches each get their own "last block". Many IQA models
   are not fx-traceable (shape arithmetic, data-dependent crops); for those the
   autograd graph of one forward pass gives the same dependencies. If neither
   works, the blocks keep their execution order as one chain and a warning says
   how to name one position per branch.
"""
from __future__ import annotations

import difflib
import itertools
import math
import warnings
from dataclasses import dataclass, field
from typing import Sequence, Union

import torch
import torch.fx as fx
from torch import nn

from .modes import eval_mode

__all__ = ["ConvBlock", "ModelMap", "locate", "positions", "Position"]

Position = Union[str, int, Sequence[Union[str, int]]]

_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_CONTAINERS = (nn.Sequential, nn.ModuleList)


@dataclass(frozen=True)
class ConvBlock:
    """One convolutional block: a RobustBlock goes in front of ``name``.

    ``modules`` are the sibling modules the block spans (several for a VGG stage);
    shapes are ``(C, H, W)`` for the example input; ``branch`` numbers the parallel
    branches; ``head`` marks a trailing 1x1 projection, which "auto" skips.
    """

    index: int
    name: str
    modules: tuple[str, ...]
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    branch: int = 0
    head: bool = False

    def __str__(self) -> str:
        shape = "x".join(map(str, self.in_shape))
        tags = (" branch %d" % self.branch if self.branch else "") + (" (head)" if self.head else "")
        return f"{self.index}: {self.name} <- {shape}{tags}"


@dataclass
class _Call:
    order: int
    count: int = 0
    in_shape: tuple[int, ...] | None = None
    out_shape: tuple[int, ...] | None = None


@dataclass
class ModelMap:
    """The blocks of a model and what was learned while finding them."""

    model: nn.Module
    blocks: list[ConvBlock]
    root: str
    method: str  # how branches were found: "fx", "autograd" or "order"
    trace_error: str | None = None
    calls: dict[str, _Call] = field(default_factory=dict, repr=False)

    def __str__(self) -> str:
        how = {"fx": "torch.fx", "autograd": "the autograd graph (torch.fx could not trace it)", "order": "module order"}
        lines = [f"{len(self.blocks)} conv blocks, dependencies from {how[self.method]}:"]
        lines += ["  " + str(b) for b in self.blocks]
        return "\n".join(lines)

    def auto(self) -> list[ConvBlock]:
        """The paper's default: before the last (non-head) block of each branch."""
        chosen = []
        for branch in sorted({b.branch for b in self.blocks}):
            members = [b for b in self.blocks if b.branch == branch]
            bodies = [b for b in members if not b.head] or members
            chosen.append(bodies[-1])
        return chosen

    def resolve(self, position: Position) -> list[str]:
        """Module names for ``position``: "auto", a 1-based block number (negative from
        the end), a module name, or a list of those."""
        if isinstance(position, (list, tuple)):
            names = [n for p in position for n in self.resolve(p)]
            if not names:
                raise ValueError("position is an empty list: name at least one block")
            return list(dict.fromkeys(names))
        if isinstance(position, bool) or not isinstance(position, (int, str)):
            raise TypeError(f"position must be 'auto', an int, a module name or a list of those, got {position!r}")
        if position == "auto":
            return [b.name for b in self.auto()]
        if isinstance(position, int):
            count = len(self.blocks)
            if position == 0 or not -count <= position <= count:
                raise ValueError(
                    f"position {position} does not exist: this model has {count} conv blocks, numbered 1..{count} "
                    f"(or -1..-{count} from the end):\n{self}"
                )
            return [self.blocks[position - 1 if position > 0 else position].name]
        return [self._check_name(position)]

    def _check_name(self, name: str) -> str:
        modules = dict(self.model.named_modules())
        if name not in modules or name == "":
            close = difflib.get_close_matches(name, [n for n in modules if n], n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ValueError(f"position {name!r} is not a module of {type(self.model).__name__}.{hint}\n{self}")
        call = self.calls.get(name)
        if call is None:
            raise ValueError(f"module {name!r} never ran on the example input, so nothing can be inserted before it")
        if call.in_shape is None or len(call.in_shape) != 4:
            raise ValueError(
                f"module {name!r} receives {'no tensor' if call.in_shape is None else 'a tensor of shape ' + str(call.in_shape)}; "
                "a RobustBlock needs a 4-D feature map (batch, channels, H, W) in front of it. "
                f"Choose a convolutional block:\n{self}"
            )
        return name

    def positions(self) -> list[dict]:
        """Every candidate position with its shapes and the Lemma 1 ratio (Meleshin et al. eq. 7):
        ``c_out * s_out^2 / (c_in * s_in^2)`` of the block whose output the RobustBlock would
        receive (the previous block of the same branch; None before the first). Smaller
        ratios bound the perturbation more tightly."""
        rows = []
        for block in self.blocks:
            earlier = [b for b in self.blocks if b.branch == block.branch and b.index < block.index]
            ratio = None
            if earlier and earlier[-1].out_shape:
                previous = earlier[-1]
                ratio = math.prod(previous.out_shape) / math.prod(previous.in_shape)
            rows.append({
                "index": block.index, "name": block.name, "branch": block.branch, "head": block.head,
                "in_shape": block.in_shape, "out_shape": block.out_shape, "lemma_ratio": ratio,
            })
        return rows

    def trailing_parameters(self, count: int) -> list[str]:
        """Names of the parameters of the last ``count`` blocks and of every layer that first runs
        after the first of them (the head): what "train the last ``count`` blocks" trains.
        Parameters of modules that never ran on the example input are left out."""
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= len(self.blocks):
            raise ValueError(f"count must be a whole number in 1..{len(self.blocks)} (the model's conv blocks), got {count!r}")
        start = _first_call(self.blocks[-count].name, self.calls)
        names = []
        for module_name, module in self.model.named_modules():
            call = self.calls.get(module_name)
            if call is None or call.order < start:
                continue
            prefix = f"{module_name}." if module_name else ""
            names += [prefix + name for name, _ in module.named_parameters(recurse=False)]
        order = {name: i for i, (name, _) in enumerate(self.model.named_parameters())}
        return sorted(set(names) & set(order), key=order.get)

    def pooled_head(self) -> list[str]:
        """Names of the modules with weights (parameters or float buffers) that run on pooled
        features (an input without spatial extent: ``(B, C)`` or ``(B, C, 1, 1)``) outside every
        conv block: the quality head, which ``calibrate_blend(head=)`` may keep whole while it
        blends the rest. Judged on the example input: locate on an image of the size the model
        scores (on a tiny one, the last feature map is 1x1 itself)."""
        def pooled(name: str) -> bool:
            call = self.calls.get(name)
            return call is not None and call.in_shape is not None and len(call.in_shape) >= 2 and math.prod(call.in_shape[2:]) == 1

        def weighted(module: nn.Module) -> bool:
            return next(module.parameters(recurse=False), None) is not None or any(
                b.is_floating_point() for b in module.buffers(recurse=False))

        # a block's own pooled layers (a squeeze-excitation gate) are trunk; a block on pooled features is head
        inside = tuple(f"{b.name}." for b in self.blocks if not pooled(b.name))
        return [
            name for name, module in self.model.named_modules()
            if name and weighted(module) and not f"{name}.".startswith(inside) and pooled(name)
        ]

    def in_shape(self, name: str) -> tuple[int, ...]:
        """(C, H, W) that module ``name`` receives for the example input."""
        return self.calls[name].in_shape[1:]


def _has_conv(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in module.modules())


def _is_leaf(module: nn.Module) -> bool:
    return next(module.children(), None) is None


def _is_plain_sequence(module: nn.Module) -> bool:
    """A Sequential of single layers (VGG ``features``): its stages have no module of their own."""
    return isinstance(module, nn.Sequential) and len(module) > 1 and all(_is_leaf(m) for m in module)


def _first_call(name: str, calls: dict[str, _Call]) -> int | None:
    """When ``name`` or any module inside it first ran (a container may never be called itself)."""
    orders = [c.order for n, c in calls.items() if n == name or n.startswith(name + ".")]
    return min(orders) if orders else None


def _record_calls(model: nn.Module, example: torch.Tensor) -> dict[str, _Call]:
    calls: dict[str, _Call] = {}
    counter = itertools.count()
    handles = []

    def pre_hook(name):
        def hook(module, args):
            call = calls.setdefault(name, _Call(order=next(counter)))
            call.count += 1
            if call.in_shape is None and args and torch.is_tensor(args[0]):
                call.in_shape = tuple(args[0].shape)

        return hook

    def post_hook(name):
        def hook(module, args, output):
            call = calls[name]
            if call.out_shape is None and torch.is_tensor(output):
                call.out_shape = tuple(output.shape)

        return hook

    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(pre_hook(name)))
        handles.append(module.register_forward_hook(post_hook(name)))
    try:
        with torch.no_grad(), eval_mode(model):
            model(example)
    except Exception as err:
        raise RuntimeError(
            f"could not run {type(model).__name__} on an example input of shape {tuple(example.shape)} "
            f"({type(err).__name__}: {err}). Pass input_size=(C, H, W) or example_input=<a batch the model accepts>."
        ) from err
    finally:
        for handle in handles:
            handle.remove()
    return calls


def _stages_of_sequence(prefix: str, sequence: nn.Sequential) -> list[list[str]]:
    """Cut a plain layer sequence into stages: a stage ends after a pooling layer, a
    strided convolution starts a new one, and layers after the last conv join the last stage."""
    stages: list[list[tuple[str, nn.Module]]] = [[]]
    for name, layer in sequence.named_children():
        strided = isinstance(layer, nn.Conv2d) and max(layer.stride) > 1
        if strided and any(isinstance(m, nn.Conv2d) for _, m in stages[-1]):
            stages.append([])
        stages[-1].append((f"{prefix}{name}", layer))
        if isinstance(layer, _POOLS):
            stages.append([])
    merged: list[list[str]] = []
    for stage in stages:
        names = [n for n, _ in stage]
        if merged and not any(isinstance(m, nn.Conv2d) for _, m in stage):
            merged[-1].extend(names)
        elif names:
            merged.append(names)
    return merged


def _blocks_under(model: nn.Module, prefix: str, module: nn.Module, calls: dict[str, _Call]) -> list[list[str]]:
    """Module-name groups forming the convolutional blocks under ``module``, in execution order."""
    if _is_plain_sequence(module):
        return _stages_of_sequence(prefix, module)
    children = [
        (f"{prefix}{name}", child)
        for name, child in module.named_children()
        if _has_conv(child) and _first_call(f"{prefix}{name}", calls) is not None
    ]
    children.sort(key=lambda item: _first_call(item[0], calls))
    groups: list[list[str]] = []
    for name, child in children:
        conv_children = [c for c in child.children() if _has_conv(c)]
        opens = (
            _is_plain_sequence(child)
            or (isinstance(child, _CONTAINERS) and conv_children and all(isinstance(c, _CONTAINERS) for c in conv_children))
            or (not isinstance(child, _CONTAINERS) and len(conv_children) == 1 and not _is_leaf(conv_children[0]))
        )
        groups.extend(_blocks_under(model, name + ".", child, calls) if opens else [[name]])
    return groups


def _trunk_blocks(model: nn.Module, calls: dict[str, _Call]) -> list[list[str]]:
    """Blocks of the model, opening a lone convolutional module (``backbone``, ``features``)
    until there is more than one block."""
    groups = _blocks_under(model, "", model, calls)
    while len(groups) == 1 and len(groups[0]) == 1 and not _is_leaf(model.get_submodule(groups[0][0])):
        inner = _blocks_under(model, groups[0][0] + ".", model.get_submodule(groups[0][0]), calls)
        if not inner:
            break
        groups = inner
    return groups


def _block_root(names: list[list[str]]) -> str:
    """Longest common module path of all blocks: the module fx will trace."""
    paths = [n.split(".") for group in names for n in group]
    common = []
    for parts in zip(*paths):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    # a block must stay strictly inside the root
    while common and any(len(p) <= len(common) for p in paths):
        common.pop()
    return ".".join(common)


def _owner_index(groups: list[list[str]]):
    def owner(path: str) -> int | None:
        for index, group in enumerate(groups):
            if any(path == m or path.startswith(m + ".") for m in group):
                return index
        return None

    return owner


def _fx_dependencies(root_module: nn.Module, root: str, groups: list[list[str]]) -> list[set[int]]:
    """For each block, the earlier blocks whose output reaches it, from the fx graph."""
    graph = fx.symbolic_trace(root_module).graph
    offset = len(root) + 1 if root else 0
    owner = _owner_index([[n[offset:] for n in group] for group in groups])
    reach: dict[fx.Node, set[int]] = {}
    deps: list[set[int]] = [set() for _ in groups]
    for node in graph.nodes:
        upstream: set[int] = set()
        for parent in node.all_input_nodes:
            upstream |= reach.get(parent, set())
        paths = [path for path, _ in (node.meta.get("nn_module_stack") or {}).values()]
        if node.op == "call_module":
            paths.append(str(node.target))
        mine = next((i for i in map(owner, paths) if i is not None), None)
        if mine is not None:
            deps[mine] |= upstream - {mine}
            upstream = upstream | {mine}
        reach[node] = upstream
    return deps


def _autograd_dependencies(model: nn.Module, root: str, groups: list[list[str]], example: torch.Tensor) -> list[set[int]]:
    """For each block, the earlier blocks whose output reaches it, from one forward's autograd graph.

    The module holding the blocks is run directly (with gradients on), since some
    wrappers (pyiqa metrics) switch gradients off around their network.
    """
    root_module = model.get_submodule(root)
    captured: list[tuple] = []
    grab = root_module.register_forward_pre_hook(lambda m, args: captured.append(args) if not captured else None)
    try:
        with torch.no_grad():
            model(example)
    finally:
        grab.remove()
    block_inputs: dict[int, object] = {}
    block_outputs: dict[object, int] = {}
    handles = []
    for index, group in enumerate(groups):
        def record_input(m, args, index=index):
            if index not in block_inputs and args and torch.is_tensor(args[0]):
                block_inputs[index] = args[0].grad_fn

        def record_output(m, args, output, index=index):
            if torch.is_tensor(output) and output.grad_fn is not None:
                block_outputs.setdefault(output.grad_fn, index)

        handles.append(model.get_submodule(group[0]).register_forward_pre_hook(record_input))
        handles.append(model.get_submodule(group[-1]).register_forward_hook(record_output))
    args = tuple(a.detach().clone().requires_grad_(a.is_floating_point()) if torch.is_tensor(a) else a for a in captured[0])
    try:
        with torch.enable_grad():
            root_module(*args)
    finally:
        for handle in handles:
            handle.remove()
    deps: list[set[int]] = [set() for _ in groups]
    for index, start in block_inputs.items():
        seen, stack = set(), [start]
        while stack:
            node = stack.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            if node in block_outputs and block_outputs[node] != index:
                deps[index].add(block_outputs[node])
            stack.extend(parent for parent, _ in node.next_functions)
    return deps


def _dependencies(
    model: nn.Module, root: str, groups: list[list[str]], example: torch.Tensor
) -> tuple[list[set[int]], str, str | None]:
    """Block dependencies and how they were found: fx, else autograd, else execution order."""
    try:
        return _fx_dependencies(model.get_submodule(root), root, groups), "fx", None
    except Exception as err:  # fx raises many kinds of errors on untraceable code
        fx_error = f"{type(err).__name__}: {err}"
    try:
        with eval_mode(model):
            return _autograd_dependencies(model, root, groups, example), "autograd", fx_error
    except Exception as err:
        warnings.warn(
            f"could not find the branches of {type(model).__name__} (torch.fx: {fx_error.splitlines()[0][:200]}; "
            f"autograd: {type(err).__name__}: {err}); blocks are taken in execution order as one chain. "
            "If the model has parallel branches, pass position=[...] with one module name per branch.",
            stacklevel=4,
        )
        return [set(range(i)) for i in range(len(groups))], "order", fx_error


def _branches(deps: list[set[int]]) -> list[int]:
    """Branch number of each block: the first final block (one that feeds no other) it reaches."""
    fed = set().union(*deps) if deps else set()
    sinks = [b for b in range(len(deps)) if b not in fed]
    return [next(n for n, sink in enumerate(sinks) if block == sink or block in deps[sink]) for block in range(len(deps))]


def _is_head(model: nn.Module, group: list[str]) -> bool:
    convs = [m for n in group for m in model.get_submodule(n).modules() if isinstance(m, nn.Conv2d)]
    return len(convs) == 1 and convs[0].kernel_size == (1, 1)


def locate(
    model: nn.Module,
    input_size: Sequence[int] | None = None,
    example_input: torch.Tensor | None = None,
) -> ModelMap:
    """Find the convolutional blocks of ``model`` by running it once on an example input.

    ``input_size`` is ``(C, H, W)`` (default ``(3, 224, 224)``); ``example_input`` a
    batch the model accepts, used as is.
    """
    if not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        raise ValueError(
            f"{type(model).__name__} has no nn.Conv2d layer: a RobustBlock protects a convolutional block, "
            "so there is nothing to harden"
        )
    if example_input is None:
        size = tuple(input_size) if input_size is not None else (3, 224, 224)
        if len(size) != 3:
            raise ValueError(f"input_size must be (channels, height, width), got {size}")
        param = next(model.parameters())
        example_input = torch.rand((1,) + size, device=param.device, dtype=param.dtype)
    calls = _record_calls(model, example_input)
    groups = [g for g in _trunk_blocks(model, calls) if len(calls[g[0]].in_shape or ()) == 4]
    if not groups:
        raise ValueError(f"no convolutional block of {type(model).__name__} receives a 4-D feature map")

    root = _block_root(groups)
    deps, method, error = _dependencies(model, root, groups, example_input)
    branch = _branches(deps)
    last_of_branch = {b: i for i, b in enumerate(branch)}
    blocks = []
    for index, group in enumerate(groups):
        first, last = calls[group[0]], calls[group[-1]]
        blocks.append(
            ConvBlock(
                index=index + 1,
                name=group[0],
                modules=tuple(group),
                in_shape=first.in_shape[1:],
                out_shape=tuple(last.out_shape[1:]) if last.out_shape else (),
                branch=branch[index],
                head=_is_head(model, group) and index == last_of_branch[branch[index]],
            )
        )
    return ModelMap(model=model, blocks=blocks, root=root, method=method, trace_error=error, calls=calls)


def positions(model: nn.Module, input_size: Sequence[int] | None = None, example_input: torch.Tensor | None = None) -> list[dict]:
    """Candidate RobustBlock positions of ``model`` with shapes and the Lemma 1 ratio; see
    :meth:`ModelMap.positions`."""
    return locate(model, input_size=input_size, example_input=example_input).positions()

"""Pruning, step 2 of the method (Meleshin et al. §3): remove ~10% of the weights with
torch-pruning, ranking channels by l2 magnitude (used for Linearity) or by PLS
(Jordao et al., "Deep network compression based on partial least squares", 2020;
used for KonCept).

PLS importance: every convolution's globally pooled output on ~200 calibration
images is regressed onto the quality target (the given MOS, else the model's own
scores) with scikit-learn's ``PLSRegression``; a channel's importance is its VIP
score (variable importance in projection).

RobustBlocks are never pruned: their orthogonal layer would lose orthogonality.
While the dependency graph is built each block is stood in for by a 1x1 conv with
the same channels, and every channel group that touches it is left whole, so the
feature map entering and leaving the block keeps its width.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.pruner import function

from .scoring import per_image_scores, scoring_network
from .blocks import RobustSplice
from .config import PruneReport, layer_shape, record_pruning, resize_layers
from .modes import eval_mode, state_copy

__all__ = ["prune", "PruneReport", "PLSImportance", "vip_scores", "pls_importances"]


def vip_scores(features: np.ndarray, target: np.ndarray, n_components: int = 2) -> np.ndarray:
    """VIP score of every feature column in a PLS regression of ``target`` on ``features``."""
    from sklearn.cross_decomposition import PLSRegression

    n, p = features.shape
    components = max(1, min(n_components, p, n - 1))
    pls = PLSRegression(n_components=components, scale=True).fit(features, target.reshape(-1, 1))
    t, w, q = pls.x_scores_, pls.x_weights_, pls.y_loadings_
    explained = (t**2).sum(axis=0) * (q[0] ** 2)  # Y variance explained per component
    weights = (w / np.linalg.norm(w, axis=0, keepdims=True)) ** 2
    return np.sqrt(p * (weights @ explained) / explained.sum())


@torch.no_grad()
def pls_importances(
    model: nn.Module, calib: torch.Tensor, target: torch.Tensor | None = None, batch_size: int = 16
) -> dict[nn.Module, torch.Tensor]:
    """VIP scores of the output channels of every conv / linear layer on calibration images."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    pooled: dict[nn.Module, list[torch.Tensor]] = {m: [] for m in layers}
    handles = [
        m.register_forward_hook(lambda mod, a, out: pooled[mod].append(out.flatten(2).mean(2) if out.ndim == 4 else out))
        for m in layers
    ]
    outputs = []
    device = next(model.parameters()).device
    try:
        with eval_mode(model):
            for start in range(0, calib.shape[0], batch_size):
                batch = calib[start : start + batch_size].to(device)
                output = model(batch)
                if target is None:  # regress on the model's own scores
                    outputs.append(per_image_scores(output, batch.shape[0]).float().cpu())
    finally:
        for handle in handles:
            handle.remove()
    y = (target if target is not None else torch.cat(outputs)).double().numpy()
    if np.ptp(y) == 0:
        raise ValueError("the PLS target is constant on the calibration set: pass calib_targets (MOS) or more varied images")
    scores = {}
    for layer, chunks in pooled.items():
        if chunks:
            x = torch.cat(chunks).double().cpu().numpy()
            x = x + 1e-12 * np.random.default_rng(0).standard_normal(x.shape)  # constant channels break scaling
            scores[layer] = torch.from_numpy(vip_scores(x, y)).float()
    return scores


class PLSImportance(tp.importance.GroupMagnitudeImportance):
    """torch-pruning importance from precomputed per-layer VIP scores, averaged over a group."""

    def __init__(self, vip: dict[nn.Module, torch.Tensor]):
        super().__init__(p=2, group_reduction="mean", normalizer=None)
        self.vip = vip

    @torch.no_grad()
    def __call__(self, group):
        group_imp, group_idxs = [], []
        for i, (dep, idxs) in enumerate(group):
            if dep.pruning_fn in (function.prune_conv_out_channels, function.prune_linear_out_channels) and dep.layer in self.vip:
                group_imp.append(self.vip[dep.layer][idxs])
                group_idxs.append(group[i].root_idxs)
        if not group_imp:
            return None
        return self._reduce(group_imp, group_idxs)


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


METHODS = ("l2", "pls")


def check_method(method: str | None, optional: bool = False) -> None:
    """Refuse a pruning method other than ``"l2"`` or ``"pls"`` (or None when ``optional``)."""
    if not (method in METHODS or (optional and method is None)):
        raise ValueError(f"the pruning method must be {'None, ' if optional else ''}'l2' or 'pls', got {method!r}")


def prune(
    model: nn.Module,
    method: str = "l2",
    amount: float = 0.10,
    *,
    calib: torch.Tensor | None = None,
    calib_targets: torch.Tensor | None = None,
    example_input: torch.Tensor | None = None,
    input_size: Sequence[int] = (3, 224, 224),
    ignored: Sequence[nn.Module] = (),
) -> PruneReport:
    """Remove about ``amount`` of the prunable weights of ``model`` in place.

    Each prunable layer loses ``1 - sqrt(1 - amount)`` of its channels (both sides of
    a convolution shrink, so that removes about ``amount`` of its weights). The
    output layer and RobustBlocks are kept whole. ``method="pls"`` needs ``calib``:
    about 200 images in [0, 1] (3% of the data in the paper) and optionally their MOS.
    Models with auxiliary outputs (Linearity's ``forward_branches``) are traced through
    all of them, so every head stays consistent. The report, with every layer it
    narrowed, is added to the model's record, so :func:`surgery.save` /
    :func:`surgery.load` rebuild the pruned architecture.
    """
    check_method(method)
    if not 0 < amount < 1:
        raise ValueError(f"amount is a fraction of the weights, 0 < amount < 1, got {amount}")
    if method == "pls" and calib is None:
        raise ValueError("PLS pruning needs calibration images: pass calib=<about 200 images in [0, 1]>")
    param = next(model.parameters())
    if example_input is None:
        example_input = torch.rand((1, *input_size), device=param.device, dtype=param.dtype)
    before = _count(model)
    importance = (
        tp.importance.MagnitudeImportance(p=2) if method == "l2" else PLSImportance(pls_importances(model, calib, calib_targets))
    )
    # torch-pruning (1.3-1.6) traces the plain ops inside every module, even one with a
    # customised pruner or in ignored_layers: the block's FFT / Cayley ops break its channel
    # inference, and an ignored block still has its input side pruned. So while the graph is
    # built each block is stood in for by a C -> C 1x1 conv, and groups touching it are skipped.
    splices = [m for m in model.modules() if isinstance(m, RobustSplice)]
    blocks = [s.robust for s in splices]
    stand_ins = [nn.Conv2d(b.config.channels, b.config.channels, 1).to(param.device) for b in blocks]
    network = scoring_network(model)  # a pyiqa metric's forward switches gradients off, which hides the graph
    _check_prunable(network)
    last_layer = [m for m in network.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-1]
    ratio = 1 - (1 - amount) ** 0.5
    widths = {module: layer_shape(module) for module in model.modules()}
    original = state_copy(model)
    for splice, stand_in in zip(splices, stand_ins):
        splice.robust = stand_in
    try:
        with eval_mode(model):
            forward = _all_outputs if hasattr(network, "forward_branches") else _output
            dead_ends = _dead_end_layers(network, example_input, forward)
            pruner = tp.pruner.MetaPruner(
                network,
                example_input,
                importance=importance,
                pruning_ratio=ratio,
                ignored_layers=[last_layer, *_output_layers(network, example_input), *stand_ins, *dead_ends, *ignored],
                forward_fn=_forward_including(dead_ends, forward),
            )
            for group in pruner.step(interactive=True):
                if not any(dep.layer in stand_ins for dep, _ in group):
                    group.prune()
    finally:
        for splice, block in zip(splices, blocks):
            splice.robust = block
    resized = {
        name: layer_shape(module)
        for name, module in model.named_modules()
        if module in widths and layer_shape(module) != widths[module]
    }
    try:
        with torch.no_grad(), eval_mode(model):
            model(example_input)
    except Exception as err:
        # give the model back as it came: the original widths, then the original weights
        resize_layers(model, {name: widths[model.get_submodule(name)] for name in resized})
        model.load_state_dict(original)
        raise RuntimeError(
            f"pruning {type(model).__name__} with torch-pruning breaks it ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:200]}); the model is unchanged. Keep the layers involved whole with "
            "ignored=[...], or harden without pruning"
        ) from err
    report = PruneReport(method, amount, ratio, before, _count(model), resized)
    record_pruning(model, report)
    return report


# torch-pruning follows a flattened map element by element; past this width (DBCNN's
# 512 x 128 bilinear features feed a 65,536-input Linear) its dependency graph exhausts memory
MAX_FLATTENED_FEATURES = 16384


def _check_prunable(network: nn.Module) -> None:
    for name, module in network.named_modules():
        if isinstance(module, nn.Linear) and module.in_features > MAX_FLATTENED_FEATURES:
            raise ValueError(
                f"cannot prune {type(network).__name__}: its layer {name!r} takes {module.in_features:,} flattened "
                f"features (more than {MAX_FLATTENED_FEATURES:,}; bilinear pooling, as in DBCNN), and torch-pruning's "
                "dependency graph through it does not fit in memory. Harden without pruning (prune=None)."
            )


def _output(model: nn.Module, x: torch.Tensor):
    return model(x)


def _tensors(output) -> list[torch.Tensor]:
    if torch.is_tensor(output):
        return [output]
    if isinstance(output, (tuple, list)):
        return [t for item in output for t in _tensors(item)]
    if isinstance(output, dict):
        return [t for item in output.values() for t in _tensors(item)]
    return []


def _dead_end_layers(network: nn.Module, example: torch.Tensor, forward) -> list[nn.Module]:
    """Layers that run but whose output never reaches the model's output (TReS computes its
    ResNet's ImageNet logits and drops them). torch-pruning traces back from the output and
    would narrow their inputs without narrowing them; they are shown to it and kept whole."""
    outputs: dict[nn.Module, torch.Tensor] = {}
    layers = [m for m in network.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    hooks = [m.register_forward_hook(lambda mod, a, out: outputs.setdefault(mod, out)) for m in layers]
    try:
        with torch.enable_grad():
            final = sum(t.float().sum() for t in _tensors(forward(network, example)) if t.requires_grad)
    finally:
        for hook in hooks:
            hook.remove()
    ran = [m for m in layers if torch.is_tensor(outputs.get(m)) and outputs[m].requires_grad]
    if not ran or not torch.is_tensor(final):
        return []
    grads = torch.autograd.grad(final, [outputs[m] for m in ran], allow_unused=True)
    return [m for m, grad in zip(ran, grads) if grad is None]


def _forward_including(layers: Sequence[nn.Module], forward):
    """``forward`` whose result also carries the outputs of ``layers``, so torch-pruning sees them."""

    def run(model: nn.Module, x: torch.Tensor):
        captured: list[torch.Tensor] = []
        hooks = [m.register_forward_hook(lambda mod, a, out: captured.append(out)) for m in layers]
        try:
            output = forward(model, x)
        finally:
            for hook in hooks:
                hook.remove()
        return (output, *captured) if captured else output

    return run


def _all_outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.stack(model.forward_branches(x), dim=1)


def _output_layers(model: nn.Module, x: torch.Tensor) -> list[nn.Module]:
    """The layers producing each output of ``forward_branches`` (kept whole, like the last layer)."""
    if not hasattr(model, "forward_branches"):
        return []
    last_calls: list[nn.Module] = []
    hooks = [m.register_forward_hook(lambda mod, a, o: last_calls.append(mod)) for m in model.modules() if isinstance(m, nn.Linear)]
    try:
        with torch.no_grad():
            model.forward_branches(x)
    finally:
        for hook in hooks:
            hook.remove()
    return [m for m in last_calls if m.out_features == 1]

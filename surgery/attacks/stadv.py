"""Spatially transformed adversarial examples (stAdv, Xiao et al. ICLR 2018), as in
Meleshin et al. §4: a per-pixel flow field warps the image (bilinear sampling),
optimised for a few iterations (5 by default) to move the score while a total
variation term keeps the flow smooth.

The budget is the largest displacement, ``max_flow`` pixels in each direction:
the flow is clamped to it after every step, so the attack always respects it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..checks import check_budget, check_count, check_non_negative
from .base import Attack, Objective

__all__ = ["StAdv", "warp", "flow_smoothness"]


def warp(images: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample ``images`` at (pixel + flow); flow is (B, 2, H, W) in pixels (x, y)."""
    batch, _, height, width = images.shape
    ys, xs = torch.meshgrid(
        torch.arange(height, device=images.device, dtype=images.dtype),
        torch.arange(width, device=images.device, dtype=images.dtype),
        indexing="ij",
    )
    x = (xs + flow[:, 0]) * (2 / max(width - 1, 1)) - 1
    y = (ys + flow[:, 1]) * (2 / max(height - 1, 1)) - 1
    grid = torch.stack([x, y], dim=-1)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=True)


def flow_smoothness(flow: torch.Tensor) -> torch.Tensor:
    """stAdv's flow loss: sqrt of squared differences to the 4 neighbours, averaged per pixel."""
    padded = F.pad(flow, (1, 1, 1, 1), mode="replicate")
    centre = padded[:, :, 1:-1, 1:-1]
    total = 0
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        neighbour = padded[:, :, dy : dy + flow.shape[2], dx : dx + flow.shape[3]]
        total = total + ((centre - neighbour).square().sum(dim=1) + 1e-12).sqrt()
    return total.flatten(1).mean(dim=1)


class StAdv(Attack):
    """Flow-field attack: Adam on the flow, loss = -objective + tau * smoothness.

    ``tau`` weighs the per-pixel smoothness against the score, so it does not
    depend on the image size; ``lr`` is Adam's step in pixels.
    """

    name = "stadv"

    def __init__(self, steps: int = 5, max_flow: float = 1.0, tau: float = 0.05, lr: float = 0.25):
        check_count("StAdv", steps=steps)
        check_budget("StAdv", max_flow=max_flow, lr=lr)
        self.steps = int(steps)
        self.max_flow = float(max_flow)
        self.tau = check_non_negative("StAdv", tau=tau)
        self.lr = float(lr)

    def perturb(self, objective: Objective, images: torch.Tensor) -> torch.Tensor:
        flow = torch.zeros(images.shape[0], 2, *images.shape[-2:], device=images.device, requires_grad=True)
        optimizer = torch.optim.Adam([flow], lr=self.lr)
        for _ in range(self.steps):
            loss = (-objective(warp(images, flow)) + self.tau * flow_smoothness(flow)).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                flow.clamp_(-self.max_flow, self.max_flow)
        with torch.no_grad():
            return warp(images, flow)

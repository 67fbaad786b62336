"""Adversarial attacks on IQA models (Meleshin et al. §4): FGSM/PGD, UAP and stAdv.

They evaluate any model that maps images in [0, 1] to scores; nothing here
imports the surgery itself.
"""
from .base import Attack, check_images, score_fn, scores
from .pgd import EPS_GRID, PGD, default_alpha
from .stadv import StAdv, flow_smoothness, warp
from .uap import UAP

__all__ = ["Attack", "PGD", "UAP", "StAdv", "EPS_GRID", "default_alpha", "scores", "score_fn", "check_images", "warp", "flow_smoothness"]

"""Adversarial attacks on IQA models (Meleshin et al. §4): FGSM/PGD, UAP and stAdv as in the
paper's protocol; PGD with random start and restarts and APGD, the strong attacks a
robustness claim needs (SPEC §6b); Square, a score-based black-box attack that no gradient
masking can stop; and the paper code's own non-standard PGD, replayed.

They evaluate any model that maps images in [0, 1] to scores; nothing here
imports the surgery itself.
"""
from .apgd import APGD, apgd_checkpoints
from ..scoring import check_images, score_fn, scores
from .base import Attack
from .paper import PaperPGD
from .pgd import EPS_GRID, MSU_EPS_GRID, PGD, default_alpha
from .square import Square
from .stadv import StAdv, flow_smoothness, warp
from .uap import UAP

__all__ = [
    "Attack", "PGD", "APGD", "Square", "PaperPGD", "UAP", "StAdv", "EPS_GRID", "MSU_EPS_GRID", "default_alpha", "apgd_checkpoints",
    "scores", "score_fn", "check_images", "warp", "flow_smoothness",
]

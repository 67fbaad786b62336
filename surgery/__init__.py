"""surgery: make NR-IQA models robust to adversarial attacks by architecture.

    from surgery import harden
    robust = harden(model)

implements Meleshin, Chistyakova, Antsiferova & Vatolin, "Robustness as
Architecture: Designing IQA Models to Withstand Adversarial Perturbations".
"""
from . import attacks, metrics
from .blocks import PAPER_CODE_BLOCK, RobustBlock, RobustBlockConfig, RobustSplice, symbolic_trace
from .harden import HardenConfig, apply_config, describe, harden, robust_blocks
from .evaluate import Table, compare, evaluate
from .finetune import FinetuneResult, finetune
from .io import load, save
from .prune import PruneReport, prune
from .locate import ConvBlock, ModelMap, locate, positions
from .ortho import AOCConv2d, AOLConv2d, CayleyConv2d, get_ortho, register_ortho
from .zoo import create_model, list_models, register_model

__version__ = "0.1.0"

__all__ = [
    "harden",
    "describe",
    "locate",
    "positions",
    "evaluate",
    "compare",
    "Table",
    "attacks",
    "metrics",
    "prune",
    "PruneReport",
    "finetune",
    "FinetuneResult",
    "save",
    "load",
    "create_model",
    "list_models",
    "register_model",
    "apply_config",
    "robust_blocks",
    "HardenConfig",
    "RobustBlock",
    "RobustBlockConfig",
    "RobustSplice",
    "PAPER_CODE_BLOCK",
    "symbolic_trace",
    "ConvBlock",
    "ModelMap",
    "CayleyConv2d",
    "AOLConv2d",
    "AOCConv2d",
    "get_ortho",
    "register_ortho",
]

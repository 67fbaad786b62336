"""surgery: make an NR-IQA model measurably harder to fool with adversarial perturbations, and prove it.

    import surgery
    robust, history = surgery.robustify(model, (images, mos), (val_images, val_mos))
    table = surgery.compare({"original": model, "robust": robust}, test_images, test_mos)

``robustify`` fine-tunes with consistency training and blends the result back toward
the original (the recipe measured here to work). ``harden`` is the surgery of Meleshin,
Chistyakova, Antsiferova & Vatolin, "Robustness as Architecture: Designing IQA Models
to Withstand Adversarial Perturbations" (a RobustBlock, pruning), kept to reproduce the
paper: measured here, it alone makes models easier to fool, not harder.
"""
from . import attacks, defenses, metrics, ortho
from .blending import blend
from .blockmap import locate, positions
from .blocks import PAPER_CODE_BLOCK, RobustBlock, RobustBlockConfig, symbolic_trace
from .evaluation import MSU_PROTOCOL, Table, compare, evaluate
from .hardening import HardenConfig, describe, harden, robust_blocks
from .io import load, save
from .masking import masking_checks
from .ortho import register_ortho
from .pruning import PruneReport, prune
from .recipes import RECIPES, Recipe, robustify
from .training import FinetuneResult, finetune
from .zoo import create_model, list_models, register_model

__version__ = "0.1.0"

# the pipeline's verbs, its few types and the subpackages; everything else lives in its module
__all__ = [
    "locate",
    "positions",
    "harden",
    "describe",
    "symbolic_trace",
    "robust_blocks",
    "prune",
    "finetune",
    "blend",
    "robustify",
    "evaluate",
    "compare",
    "masking_checks",
    "MSU_PROTOCOL",
    "save",
    "load",
    "create_model",
    "list_models",
    "register_model",
    "register_ortho",
    "HardenConfig",
    "RobustBlock",
    "RobustBlockConfig",
    "PAPER_CODE_BLOCK",
    "PruneReport",
    "FinetuneResult",
    "Recipe",
    "RECIPES",
    "Table",
    "attacks",
    "defenses",
    "metrics",
    "ortho",
]

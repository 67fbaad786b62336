"""Training-time defences: the baselines of Meleshin et al. §5 (NT, AT, smooth activations)
and consistency training (TRADES for a regression score)."""
from .activations import ACTIVATIONS, Sqish, replace_activations
from .at import AdversarialTraining
from .base import Defense, TrainingScore
from .consistency import ConsistencyTraining, OwnSpreadConsistencyTraining
from .nt import NormRegularization

__all__ = [
    "Defense", "TrainingScore", "NormRegularization", "AdversarialTraining", "ConsistencyTraining",
    "OwnSpreadConsistencyTraining", "replace_activations", "Sqish",
    "ACTIVATIONS",
]

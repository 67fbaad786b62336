"""Baseline defences (Meleshin et al. §5): NT, AT and smooth activations."""
from .activations import ACTIVATIONS, Sqish, replace_activations
from .at import AdversarialTraining
from .base import Defense
from .nt import NormRegularization

__all__ = ["Defense", "NormRegularization", "AdversarialTraining", "replace_activations", "Sqish", "ACTIVATIONS"]

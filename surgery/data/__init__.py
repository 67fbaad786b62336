"""Datasets: KonIQ-10k, the NIPS 2017 dev set, image folders with score tables, and a
synthetic-distortion set labelled with pseudo-MOS."""
from .folder import IMAGE_EXTENSIONS, ImageFolder, load_image
from .koniq import KONIQ_SIZE, KonIQ10k, koniq_split
from .nips import NIPS2017
from .synthetic import DISTORTIONS, PSEUDO_MOS_METRICS, SyntheticIQA, distort

__all__ = [
    "ImageFolder", "load_image", "IMAGE_EXTENSIONS", "KonIQ10k", "koniq_split", "KONIQ_SIZE", "NIPS2017",
    "SyntheticIQA", "distort", "DISTORTIONS", "PSEUDO_MOS_METRICS",
]

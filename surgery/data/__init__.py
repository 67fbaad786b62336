"""Datasets: image folders with optional score tables."""
from .folder import IMAGE_EXTENSIONS, ImageFolder, load_image

__all__ = ["ImageFolder", "load_image", "IMAGE_EXTENSIONS"]

"""VGGVox40: the README's name for the model in VGGVox.py (both names select the same network)."""
from models.VGGVox import MainModel

__all__ = ["MainModel"]

"""Segmentation networks and their registry."""

from .registry import create_model, list_models, register_model
from .segnet import SegNet, SegNetDecoder, SegNetEncoder

register_model("segnet")(SegNet)

__all__ = ["SegNet", "SegNetEncoder", "SegNetDecoder", "create_model", "list_models", "register_model"]

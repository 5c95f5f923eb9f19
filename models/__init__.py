"""Primary networks in pure PyTorch, created by name: ``create_model("wrn-16-2")``."""

from .registry import create_model, list_models, model_help, register_family, register_model
from .wide_resnet import WideResNet

__all__ = [
    "WideResNet",
    "create_model",
    "list_models",
    "model_help",
    "register_family",
    "register_model",
]

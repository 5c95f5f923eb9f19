"""Primary networks in pure PyTorch, created by name: ``create_model("wrn-16-2")``."""

from .pyramidnet import PyramidNet
from .registry import (
    create_model,
    list_models,
    model_help,
    register_configs,
    register_family,
    register_model,
)
from .resnet import ResNet
from .resnext import ResNeXt
from .staged import StagedNetwork
from .wide_resnet import WideResNet

__all__ = [
    "PyramidNet",
    "ResNeXt",
    "ResNet",
    "StagedNetwork",
    "WideResNet",
    "create_model",
    "list_models",
    "model_help",
    "register_configs",
    "register_family",
    "register_model",
]

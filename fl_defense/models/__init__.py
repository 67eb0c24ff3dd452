"""Model registry: `build_model(name, spec)`; every model is a `BackdoorModel`."""

from __future__ import annotations

from collections.abc import Callable

from fl_defense.data.datasets import DatasetSpec
from fl_defense.models.base import BackdoorModel
from fl_defense.models.cnn import SmallCNN
from fl_defense.models.resnet import ResNet18

MODELS: dict[str, Callable[[DatasetSpec], BackdoorModel]] = {
    "cnn": lambda s: SmallCNN(s.channels, s.num_classes, s.size, s.mean, s.std),
    "resnet18": lambda s: ResNet18(s.channels, s.num_classes, s.size, s.mean, s.std),
}


def default_model(spec: DatasetSpec) -> str:
    """The model `auto` picks: the small CNN for 28x28 digits/clothes, ResNet-18 for 32x32 colour."""
    return "cnn" if spec.size == 28 else "resnet18"


def build_model(name: str, spec: DatasetSpec) -> BackdoorModel:
    """Instantiate a registered model for a dataset (`auto` resolves by image size)."""
    key = default_model(spec) if name == "auto" else name
    if key not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: auto, {', '.join(MODELS)}")
    return MODELS[key](spec)


__all__ = ["MODELS", "BackdoorModel", "ResNet18", "SmallCNN", "build_model", "default_model"]

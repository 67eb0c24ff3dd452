"""Models by name (`model=`): every model is a `BackdoorModel` in a module of its own that registers itself."""

from __future__ import annotations

from fl_defense.data.datasets import DatasetSpec
from fl_defense.models.base import BackdoorModel
from fl_defense.registry import MODELS


def default_model(spec: DatasetSpec) -> str:
    """The model `auto` picks: the small CNN for 28x28 digits/clothes, ResNet-18 for 32x32 colour."""
    return "cnn" if spec.size == 28 else "resnet18"


def build_model(name: str, spec: DatasetSpec) -> BackdoorModel:
    """Instantiate a registered model for a dataset (`auto` resolves by image size)."""
    model: BackdoorModel = MODELS[default_model(spec) if name == "auto" else name].for_dataset(spec)
    return model


__all__ = ["BackdoorModel", "build_model", "default_model"]

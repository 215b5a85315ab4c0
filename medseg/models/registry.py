"""Create models by name.

>>> from medseg.models import create_model, list_models
>>> list_models()
['segnet']
>>> create_model("segnet", in_channels=1, num_classes=3, width=8).num_classes
3
"""

from __future__ import annotations

from typing import Callable

from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
    """Class or factory decorator adding a model under ``name``."""

    def deco(factory):
        if name in _REGISTRY:
            raise ValueError(f"model name {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return deco


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def create_model(name: str, **kwargs) -> nn.Module:
    """Instantiate a registered model; an unknown name raises ``KeyError`` listing valid ones."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; valid names: {', '.join(list_models())}") from None
    return factory(**kwargs)

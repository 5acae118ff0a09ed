"""build_model: any of the package's Re-ID models by name."""

from __future__ import annotations

import inspect

from torch import nn

from reidfast.models.adaptive_margin_net import AdaptiveMarginNet
from reidfast.models.mgn import MGN
from reidfast.models.pcb import PCB
from reidfast.models.pla import PLA
from reidfast.models.plr_osnet import PLROSNet
from reidfast.models.pyramid import Pyramid

_MODELS = {
    "pyramid": Pyramid,
    "mgn": MGN,
    "pla": PLA,
    "plr_osnet": PLROSNet,
    "adaptive_margin": AdaptiveMarginNet,
    "pcb": PCB,
}
MODEL_NAMES = tuple(_MODELS)


def model_class(name: str) -> type[nn.Module]:
    """The class `build_model(name, ...)` builds (to read its options' signature)."""
    if name not in _MODELS:
        raise ValueError(f"name must be one of {MODEL_NAMES}, got {name!r}")
    return _MODELS[name]


def build_model(name: str, num_classes: int, **options) -> nn.Module:
    """The model of method `name` for `num_classes` training identities.

    Args:
        name: "pyramid" (Pyramid), "mgn" (MGN), "pla" (PLA), "plr_osnet" (PLROSNet),
            "adaptive_margin" (AdaptiveMarginNet) or "pcb" (PCB).
        num_classes: identities of the training set (0: a model without classifiers).
        **options: keyword arguments of that model's class (e.g. depth, levels, embed_dim, pool,
            backbone_weights); see its docstring.

    Raises:
        ValueError: `name` is not one of the names above.
        TypeError: an option the model does not take, named.
    """
    cls = model_class(name)
    accepted = [option for option in inspect.signature(cls).parameters if option != "num_classes"]
    for option in options:
        if option not in accepted:
            raise TypeError(f"build_model({name!r}): unknown option {option!r}; {cls.__name__} takes {accepted}")
    return cls(num_classes, **options)

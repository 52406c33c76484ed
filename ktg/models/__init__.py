"""Model zoo: small image classifiers, built by name.

Names are resolved through a registry of regex patterns, one per family (the
idea of torchvision's ``register_model``, but keyed by pattern so that every
valid depth/width is a name without listing it). Each family module registers
its builder with :func:`register`; this package imports the family modules at
the bottom so that the registry is full once ``ktg.models`` is imported.

Every model's ``forward(x)`` returns ``(embedding, logits)``: the penultimate
feature vector after global average pooling, shape ``(N, model.embedding_dim)``,
and the class scores, shape ``(N, num_classes)``. Distillation losses need the
embedding as well as the logits, so all families expose both.

Initialisation draws only from the global torch RNG: the trainer seeds it per
node right before :func:`build_model`, so a node's initial weights depend only on
(seed, node id, model name).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from ktg.errors import KtgError, allowed

__all__ = ["build_model", "check_model_name", "model_names", "register"]

Builder = Callable[..., nn.Module]
"""``builder(*groups, in_channels=, num_classes=, image_size=)``; ``groups`` are the
regex groups of the matched name, as strings."""


@dataclass(frozen=True)
class _Family:
    pattern: re.Pattern[str]
    help: str
    examples: tuple[str, ...]
    accept: Callable[..., bool]
    builder: Builder


_FAMILIES: list[_Family] = []


def register(
    pattern: str,
    help: str,
    *,
    examples: tuple[str, ...] = (),
    accept: Callable[..., bool] | None = None,
) -> Callable[[Builder], Builder]:
    """Register a builder for every model name that fully matches ``pattern``.

    ``help`` describes the accepted names in error messages; ``examples`` are the
    canonical names listed by :func:`model_names`. ``accept(*groups)`` rejects
    names the regex alone cannot (e.g. depths that are not 6n+2), so that
    :func:`check_model_name` can validate a name without building the model.
    """

    def decorator(builder: Builder) -> Builder:
        _FAMILIES.append(
            _Family(
                re.compile(pattern),
                help,
                tuple(examples),
                accept or (lambda *_: True),
                builder,
            )
        )
        return builder

    return decorator


def _resolve(name: object) -> tuple[_Family, tuple[str, ...]] | None:
    if not isinstance(name, str):
        return None
    for family in _FAMILIES:
        match = family.pattern.fullmatch(name)
        if match is not None and family.accept(*match.groups()):
            return family, match.groups()
    return None


def model_names() -> list[str]:
    """The canonical model names (other depths/widths of each family also build)."""
    return [name for family in _FAMILIES for name in family.examples]


def check_model_name(name: str, field: str = "model") -> None:
    """Raise :class:`KtgError` naming ``field`` if ``name`` is not a buildable model."""
    if _resolve(name) is None:
        raise allowed(field, name, ", ".join(family.help for family in _FAMILIES))


def build_model(
    name: str, *, in_channels: int, num_classes: int, image_size: int
) -> nn.Module:
    """Build model ``name`` for ``in_channels``-channel ``image_size``² images and
    ``num_classes`` classes, with freshly initialised weights (global torch RNG)."""
    check_model_name(name)
    for field, value in (
        ("in_channels", in_channels),
        ("num_classes", num_classes),
        ("image_size", image_size),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise KtgError(f"{field}: got {value!r}; must be a positive integer")
    resolved = _resolve(name)
    assert resolved is not None
    family, groups = resolved
    return family.builder(
        *groups, in_channels=in_channels, num_classes=num_classes, image_size=image_size
    )


def init_weights(model: nn.Module) -> None:
    """The shared initialisation: He-normal (fan_out, relu) convs, BN weight 1 and
    bias 0, Linear left at the PyTorch default. Uses only the global torch RNG."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


# Family modules register themselves on import; the order here is the order of
# model_names() and of the "allowed" list in error messages.
from ktg.models import resnet  # noqa: E402, F401, I001
from ktg.models import wrn  # noqa: E402, F401
from ktg.models import mobilenet  # noqa: E402, F401

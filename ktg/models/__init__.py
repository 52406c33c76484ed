"""Model zoo: small image classifiers, built by name.

The names live here, in one table of families, each a regex pattern (so that
every valid depth/width is a name without listing it). The architectures live
in one module per family, ``ktg.models.<module>``, whose ``build`` this package
imports on the first model it builds. The split keeps name checks torch-free:
the search driver and the API validate graphs without importing torch.
Adding a family is one module with a ``build`` function and one row in
:data:`_FAMILIES`.

Every model's ``forward(x)`` returns ``(embedding, logits)``: the penultimate
feature vector after global average pooling, shape ``(N, model.embedding_dim)``,
and the class scores, shape ``(N, num_classes)``. Distillation losses need the
embedding as well as the logits, so all families expose both.

Initialisation draws only from the global torch RNG: the trainer seeds it per
node right before :func:`build_model`, so a node's initial weights depend only on
(seed, node id, model name).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ktg.errors import KtgError, allowed

if TYPE_CHECKING:
    from torch import nn

__all__ = ["build_model", "check_model_name", "count_params", "model_names"]


@dataclass(frozen=True)
class _Family:
    module: str                # ktg.models.<module>.build(*groups, in_channels=, num_classes=, image_size=)
    pattern: re.Pattern[str]   # a name of the family fully matches it; its groups go to build
    help: str                  # the accepted names, for error messages
    examples: tuple[str, ...]  # the canonical names, listed by model_names()
    accept: Callable[..., bool]  # accept(*groups): what the regex alone cannot check (depth 6n+2)
    params: Callable[..., int]   # params(*groups, in_channels, num_classes): the built model's parameter count


# (output channels at width 1.0, stride) of MobileNet V1's 13 depthwise-separable blocks;
# here (not in ktg.models.mobilenet) so that counting its parameters needs no torch.
MOBILENET_BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)


def mobilenet_channels(channels: int, multiplier: float) -> int:
    """A MobileNet layer's channels at width ``multiplier``: rounded, at least 8."""
    return max(8, round(channels * multiplier))


def _resnet_params(depth: str, in_channels: int, num_classes: int) -> int:
    """ktg.models.resnet: a 3x3 stem conv + BN, 3 stages of n two-conv blocks, a linear head."""
    n = (int(depth) - 2) // 6
    total = 9 * in_channels * 16 + 2 * 16
    for planes, in_planes in ((16, 16), (32, 16), (64, 32)):  # option-A shortcuts have no parameters
        total += 9 * in_planes * planes + 9 * planes * planes + 4 * planes  # the stage's first block
        total += (n - 1) * (18 * planes * planes + 4 * planes)
    return total + 64 * num_classes + num_classes


def _wrn_params(depth: str, width: str, in_channels: int, num_classes: int) -> int:
    """ktg.models.wrn: a 3x3 stem conv, 3 stages of n pre-activation blocks, a final BN, a linear head."""
    n, k = (int(depth) - 4) // 6, int(width)
    total = 9 * in_channels * 16
    for planes, in_planes, stride in ((16 * k, 16, 1), (32 * k, 16 * k, 2), (64 * k, 32 * k, 2)):
        # the first block: BN, conv, BN, conv, and a 1x1 shortcut conv where the shape changes
        total += 2 * in_planes + 9 * in_planes * planes + 2 * planes + 9 * planes * planes
        total += in_planes * planes if stride != 1 or in_planes != planes else 0
        total += (n - 1) * (18 * planes * planes + 4 * planes)
    return total + 2 * 64 * k + 64 * k * num_classes + num_classes


def _mobilenet_params(multiplier: str, in_channels: int, num_classes: int) -> int:
    """ktg.models.mobilenet: a 3x3 stem conv + BN, 13 depthwise-separable blocks, a linear head."""
    m = float(multiplier)
    channels = mobilenet_channels(32, m)
    total = 9 * in_channels * channels + 2 * channels
    for base, _stride in MOBILENET_BLOCKS:
        out = mobilenet_channels(base, m)
        total += 9 * channels + 2 * channels + channels * out + 2 * out  # depthwise, pointwise, their BNs
        channels = out
    return total + channels * num_classes + num_classes


# Depths and widths have at most 6 digits: the names stay short and their numbers cheap to read.
_FAMILIES: tuple[_Family, ...] = (
    _Family("resnet", re.compile(r"resnet([1-9]\d{0,5})"),
            "resnet<depth> (depth = 6n+2, e.g. resnet20, resnet32, resnet56, resnet110)",
            ("resnet20", "resnet32", "resnet56", "resnet110"),
            lambda depth: int(depth) >= 8 and (int(depth) - 2) % 6 == 0, _resnet_params),
    _Family("wrn", re.compile(r"wrn([1-9]\d{0,5})-([1-9]\d{0,5})"),
            "wrn<depth>-<width> (depth = 6n+4, e.g. wrn28-2, wrn16-1)",
            ("wrn28-2", "wrn40-2", "wrn40-1", "wrn16-2", "wrn16-1"),
            lambda depth, width: int(depth) >= 10 and (int(depth) - 4) % 6 == 0 and int(width) >= 1, _wrn_params),
    _Family("mobilenet", re.compile(r"mobilenet-(\d{1,6}(?:\.\d{1,6})?)"),
            "mobilenet-<width> (1.0, 0.75, 0.5, 0.25; any width in (0, 2])",
            ("mobilenet-1.0", "mobilenet-0.75", "mobilenet-0.5", "mobilenet-0.25"),
            lambda multiplier: 0.0 < float(multiplier) <= 2.0, _mobilenet_params),
)
"""Every model family, in the order of model_names() and of the 'allowed' list in errors."""


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


def count_params(name: str, *, in_channels: int, num_classes: int) -> int:
    """The number of parameters of model ``name`` built for ``in_channels`` and ``num_classes``,
    computed from the name alone (no torch, no model): a closed formula per family, so
    that a quota can refuse ``wrn16-2000`` without allocating its 683 G parameters."""
    check_model_name(name)
    resolved = _resolve(name)
    assert resolved is not None
    family, groups = resolved
    return family.params(*groups, in_channels, num_classes)


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
    build = importlib.import_module(f"ktg.models.{family.module}").build
    return build(*groups, in_channels=in_channels, num_classes=num_classes, image_size=image_size)

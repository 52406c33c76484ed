"""MobileNet V1 (Howard et al. 2017) adapted to small images: mobilenet-<width>.

The first 3x3 conv has stride 1 (as CIFAR variants do, since 32x32 inputs would
otherwise be 1x1 long before the end), followed by the 13 depthwise-separable
blocks of the paper with channels scaled by the width multiplier. A stride-2
block is turned into stride 1 once the feature map is already <= 2 pixels wide,
so that even 8x8 inputs (scikit-learn digits) keep a spatial map to pool.

The width multiplier may be any decimal in (0, 2]; the canonical ones are the
paper's 1.0, 0.75, 0.5 and 0.25. Channel counts are rounded and at least 8.
"""

from __future__ import annotations

import torch
from torch import nn

from ktg.models import MOBILENET_BLOCKS, mobilenet_channels
from ktg.models.init import init_weights


def _conv_bn_relu(
    in_ch: int, out_ch: int, kernel: int, stride: int, groups: int
) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(
            in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False
        ),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class MobileNetV1(nn.Module):
    """MobileNet V1 for small images; forward returns ``(embedding, logits)``."""

    def __init__(
        self, multiplier: float, in_channels: int, num_classes: int, image_size: int
    ) -> None:
        super().__init__()
        channels = mobilenet_channels(32, multiplier)
        layers: list[nn.Module] = [_conv_bn_relu(in_channels, channels, 3, 1, 1)]
        size = image_size
        for base, stride in MOBILENET_BLOCKS:
            if stride == 2 and size <= 2:
                stride = 1
            out = mobilenet_channels(base, multiplier)
            depthwise = _conv_bn_relu(channels, channels, 3, stride, groups=channels)
            pointwise = _conv_bn_relu(channels, out, 1, 1, groups=1)
            layers += [depthwise, pointwise]
            size = (size + stride - 1) // stride
            channels = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.embedding_dim: int = channels
        self.fc = nn.Linear(channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = torch.flatten(self.pool(self.features(x)), 1)
        return embedding, self.fc(embedding)


def build(
    multiplier: str, *, in_channels: int, num_classes: int, image_size: int
) -> nn.Module:
    """``image_size`` decides where stride-2 blocks stop downsampling."""
    return MobileNetV1(float(multiplier), in_channels, num_classes, image_size)

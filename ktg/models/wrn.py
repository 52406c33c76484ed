"""Wide ResNets (Zagoruyko & Komodakis 2016): wrn<depth>-<k>, depth 6n+4.

A 3x3 conv with 16 channels, three stages of n pre-activation blocks with
16k/32k/64k channels (strides 1/2/2), a final BN-ReLU, global average pooling
and a linear head. Where a block changes shape, its shortcut is a 1x1 conv
applied to the pre-activated input, as in the authors' code. No dropout: the
zoo's models are used as plain students/teachers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ktg.models.init import init_weights


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus shortcut (identity or 1x1 conv)."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(
            in_planes, planes, 3, stride=stride, padding=1, bias=False
        )
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = (
            nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)
            if stride != 1 or in_planes != planes
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        residual = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + residual


class WideResNet(nn.Module):
    """WRN-depth-k for small images; forward returns ``(embedding, logits)``."""

    def __init__(
        self, depth: int, width: int, in_channels: int, num_classes: int
    ) -> None:
        super().__init__()
        n = (depth - 4) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        blocks: list[nn.Module] = []
        in_planes = 16
        for planes, stride in ((16 * width, 1), (32 * width, 2), (64 * width, 2)):
            for i in range(n):
                blocks.append(PreActBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(in_planes)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.embedding_dim: int = in_planes
        self.fc = nn.Linear(in_planes, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = F.relu(self.bn(self.blocks(self.conv1(x))))
        embedding = torch.flatten(self.pool(out), 1)
        return embedding, self.fc(embedding)


def build(
    depth: str, width: str, *, in_channels: int, num_classes: int, image_size: int
) -> nn.Module:
    """Any image size works: the network is fully convolutional up to the global pool."""
    del image_size
    return WideResNet(int(depth), int(width), in_channels, num_classes)

"""CIFAR ResNets (He et al. 2016, section 4.2): resnet20/32/56/110, depth 6n+2.

A 3x3 conv with 16 channels, three stages of n basic blocks (16/32/64 channels,
strides 1/2/2), global average pooling and a linear head. The shortcut is the
paper's option A: parameter-free (stride-2 subsampling plus zero channel
padding), which is what gives the published parameter counts (resnet20 0.27M).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ktg.models.init import init_weights


class ShortcutA(nn.Module):
    """Option-A shortcut: subsample spatially, zero-pad the new channels; no parameters."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.pad_front = (planes - in_planes) // 2
        self.pad_back = planes - in_planes - self.pad_front

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_front, self.pad_back))


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus shortcut, then ReLU (post-activation, as in the paper)."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(
            in_planes, planes, 3, stride=stride, padding=1, bias=False
        )
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = (
            ShortcutA(in_planes, planes, stride)
            if stride != 1 or in_planes != planes
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for small images; forward returns ``(embedding, logits)``."""

    def __init__(self, depth: int, in_channels: int, num_classes: int) -> None:
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers: list[nn.Module] = []
        in_planes = 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(n):
                layers.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.embedding_dim: int = in_planes
        self.fc = nn.Linear(in_planes, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        embedding = torch.flatten(self.pool(out), 1)
        return embedding, self.fc(embedding)


def build(
    depth: str, *, in_channels: int, num_classes: int, image_size: int
) -> nn.Module:
    """Any image size works: the network is fully convolutional up to the global pool."""
    del image_size
    return CifarResNet(int(depth), in_channels, num_classes)

"""Where and how the networks run: device, bf16 autocast, channels_last, torch.compile.

The CUDA fast paths are on by default only where CUDA exists; each can be forced
on the CPU too (autocast and channels_last work there), which is how the tests
exercise them on a machine without a GPU.
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from torch import nn

from ktg.errors import KtgError, allowed

DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class Accel:
    device: torch.device
    bf16: bool = False
    channels_last: bool = False
    compile: bool = False

    @classmethod
    def resolve(cls, device: str = "auto", *, bf16: bool | None = None,
                channels_last: bool | None = None, compile: bool = False) -> Accel:
        """Pick the device and the defaults that pay off on it."""
        name = device.split(":")[0]
        if name not in DEVICES:
            raise allowed("device", device, ", ".join(DEVICES) + " (or cuda:N)")
        has_cuda = torch.cuda.is_available()
        if name == "cuda" and not has_cuda:
            raise KtgError("device: got 'cuda' but no CUDA device is visible; allowed here: cpu, auto")
        dev = torch.device("cuda" if (name == "auto" and has_cuda) else ("cpu" if name == "auto" else device))
        on_gpu = dev.type == "cuda"
        if bf16 is None:
            bf16 = on_gpu and torch.cuda.is_bf16_supported()
        if channels_last is None:
            channels_last = on_gpu
        return cls(dev, bf16, channels_last, compile)

    def autocast(self) -> AbstractContextManager[object]:
        """bf16 autocast for the forward passes; a no-op context when off."""
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def place(self, model: nn.Module) -> nn.Module:
        """Move a model to the device in the chosen memory format."""
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return model.to(self.device, memory_format=fmt)

    def compiled(self, model: nn.Module) -> nn.Module:
        """The module to call in the hot loop (compiled when asked); state is shared."""
        return torch.compile(model) if self.compile else model

"""The CUDA paths exist, are off by default without CUDA, and can be forced on the CPU."""

from __future__ import annotations

import pytest
import torch

from ktg.device import Accel
from ktg.errors import KtgError
from ktg.models import build_model


def test_auto_without_cuda_is_plain_cpu() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    accel = Accel.resolve("auto")
    assert accel.device.type == "cpu" and not accel.bf16 and not accel.channels_last and not accel.compile


def test_cuda_requested_without_cuda_is_a_clear_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(KtgError, match="device: got 'cuda' but no CUDA device is visible"):
        Accel.resolve("cuda")
    with pytest.raises(KtgError, match="device: got 'tpu'; allowed: auto, cpu, cuda"):
        Accel.resolve("tpu")


def test_forced_bf16_and_channels_last_on_cpu() -> None:
    accel = Accel.resolve("cpu", bf16=True, channels_last=True)
    torch.manual_seed(0)
    model = accel.place(build_model("resnet20", in_channels=3, num_classes=10, image_size=16))
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 16, 16).to(memory_format=torch.channels_last)
    with accel.autocast():
        _, logits = model(x)
    assert logits.dtype == torch.bfloat16
    with torch.no_grad():
        _, reference = model(x.contiguous())
    assert torch.allclose(logits.float(), reference, atol=0.1, rtol=0.1)


def test_compile_wraps_the_same_module() -> None:
    accel = Accel.resolve("cpu", compile=True)
    model = build_model("resnet20", in_channels=1, num_classes=10, image_size=8)
    compiled = accel.compiled(model)
    assert compiled is not model and getattr(compiled, "_orig_mod", None) is model
    assert Accel.resolve("cpu").compiled(model) is model

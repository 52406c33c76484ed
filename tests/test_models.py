"""Model zoo: shapes, published parameter counts, naming errors, determinism."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ktg.errors import KtgError
from ktg.models import build_model, check_model_name, model_names


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_model_names_are_the_canonical_list() -> None:
    assert model_names() == [
        "resnet20", "resnet32", "resnet56", "resnet110",
        "wrn28-2", "wrn40-2", "wrn40-1", "wrn16-2", "wrn16-1",
        "mobilenet-1.0", "mobilenet-0.75", "mobilenet-0.5", "mobilenet-0.25",
    ]  # fmt: skip


@pytest.mark.parametrize("name", model_names())
@pytest.mark.parametrize(
    ("in_channels", "image_size", "num_classes"), [(1, 8, 10), (3, 32, 100)]
)
def test_builds_and_output_shapes(
    name: str, in_channels: int, image_size: int, num_classes: int
) -> None:
    model = build_model(
        name, in_channels=in_channels, num_classes=num_classes, image_size=image_size
    )
    x = torch.randn(2, in_channels, image_size, image_size)
    with torch.no_grad():
        embedding, logits = model(x)
    assert isinstance(model.embedding_dim, int)
    assert embedding.shape == (2, model.embedding_dim)
    assert logits.shape == (2, num_classes)
    assert torch.isfinite(logits).all()


# Published sizes with a CIFAR-10 head: He et al. 2016 (Table 6) for the ResNets, the
# figures reported for WRNs (Zagoruyko & Komodakis 2016 and later KD papers) for the rest.
@pytest.mark.parametrize(
    ("name", "published"),
    [
        ("resnet20", 0.27e6),
        ("resnet32", 0.46e6),
        ("resnet56", 0.85e6),
        ("resnet110", 1.7e6),
        ("wrn28-2", 1.47e6),
        ("wrn40-2", 2.2e6),
        ("wrn16-1", 0.175e6),
    ],
)
def test_parameter_counts_match_papers(name: str, published: float) -> None:
    model = build_model(name, in_channels=3, num_classes=10, image_size=32)
    assert _n_params(model) == pytest.approx(published, rel=0.03)


def test_exact_parameter_counts() -> None:
    """Hand-computed totals, to catch silent architecture drift.

    resnet20: stem 3*16*9 + BN 32; per stage n=3 blocks of two 3x3 convs + two BNs;
    option A adds nothing; head 64*10 + 10.
    """
    stem = 3 * 16 * 9 + 2 * 16
    stage1 = 3 * 2 * (16 * 16 * 9 + 2 * 16)
    stage2 = (16 * 32 * 9 + 32 * 32 * 9 + 4 * 32) + 2 * 2 * (32 * 32 * 9 + 2 * 32)
    stage3 = (32 * 64 * 9 + 64 * 64 * 9 + 4 * 64) + 2 * 2 * (64 * 64 * 9 + 2 * 64)
    head = 64 * 10 + 10
    resnet20 = build_model("resnet20", in_channels=3, num_classes=10, image_size=32)
    assert _n_params(resnet20) == stem + stage1 + stage2 + stage3 + head

    # wrn16-1: n=2 pre-act blocks per stage, 1x1 shortcuts at stages 2 and 3 only.
    stem = 3 * 16 * 9
    stage1 = 2 * (2 * 16 + 16 * 16 * 9 + 2 * 16 + 16 * 16 * 9)
    stage2 = (2 * 16 + 16 * 32 * 9 + 2 * 32 + 32 * 32 * 9 + 16 * 32) + (
        2 * 32 + 32 * 32 * 9 + 2 * 32 + 32 * 32 * 9
    )
    stage3 = (2 * 32 + 32 * 64 * 9 + 2 * 64 + 64 * 64 * 9 + 32 * 64) + (
        2 * 64 + 64 * 64 * 9 + 2 * 64 + 64 * 64 * 9
    )
    head = 2 * 64 + 64 * 10 + 10
    wrn16_1 = build_model("wrn16-1", in_channels=3, num_classes=10, image_size=32)
    assert _n_params(wrn16_1) == stem + stage1 + stage2 + stage3 + head


def test_option_a_shortcut_has_no_parameters() -> None:
    model = build_model("resnet20", in_channels=3, num_classes=10, image_size=32)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 19  # stem + 18 block convs, no projection shortcuts
    assert all(m.kernel_size == (3, 3) for m in convs)


def test_mobilenet_skips_downsampling_on_tiny_maps() -> None:
    model = build_model("mobilenet-0.25", in_channels=1, num_classes=10, image_size=8)
    strides = [m.stride[0] for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert strides.count(2) == 2  # 8 -> 4 -> 2, then the remaining stride-2s become 1
    model = build_model("mobilenet-0.25", in_channels=3, num_classes=10, image_size=32)
    strides = [m.stride[0] for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert strides.count(2) == 4  # 32 -> 16 -> 8 -> 4 -> 2
    widths = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert widths[0] == 8 and widths[-1] == 256 and model.embedding_dim == 256


@pytest.mark.parametrize("name", ["resnet20", "wrn16-1", "mobilenet-0.25"])
def test_same_seed_same_weights_different_seed_different(name: str) -> None:
    def weights(seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(seed)
        return build_model(
            name, in_channels=3, num_classes=10, image_size=32
        ).state_dict()

    a, b, c = weights(0), weights(0), weights(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize(
    "name", ["resnet33", "wrn27-2", "wrn28-0", "vgg16", "mobilenet-3", ""]
)
def test_bad_names_raise_ktg_error(name: str) -> None:
    with pytest.raises(KtgError) as info:
        check_model_name(name, field="nodes[2].model")
    message = str(info.value)
    assert message.startswith("nodes[2].model: got ")
    assert repr(name) in message
    assert "allowed" in message
    with pytest.raises(KtgError, match=r"model.*allowed"):
        build_model(name, in_channels=3, num_classes=10, image_size=32)


@pytest.mark.parametrize(
    "name", ["resnet8", "resnet44", "wrn10-1", "wrn22-3", "mobilenet-1.5"]
)
def test_other_valid_depths_and_widths_build(name: str) -> None:
    check_model_name(name)
    build_model(name, in_channels=1, num_classes=3, image_size=8)


@pytest.mark.parametrize("name", ["resnet20", "wrn16-1", "mobilenet-0.25"])
def test_gradients_reach_every_parameter(name: str) -> None:
    model = build_model(name, in_channels=3, num_classes=10, image_size=32)
    _, logits = model(torch.randn(2, 3, 32, 32))
    logits.sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname


@pytest.mark.parametrize("name", ["resnet20", "wrn16-1", "mobilenet-0.25"])
def test_channels_last_and_bf16_autocast(name: str) -> None:
    model = build_model(name, in_channels=3, num_classes=10, image_size=32)
    model = model.to(memory_format=torch.channels_last).eval()
    x = torch.randn(2, 3, 32, 32).to(memory_format=torch.channels_last)
    with torch.no_grad():
        reference = model(x)[1]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            embedding, logits = model(x)
    assert embedding.shape == (2, model.embedding_dim) and logits.shape == (2, 10)
    assert torch.allclose(logits.float(), reference, atol=0.5, rtol=0.1)

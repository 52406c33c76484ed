"""Shared fixtures of the graph-engine tests (small, offline, CPU-only)."""

from __future__ import annotations

import pytest
import torch

from ktg.data import ImageData
from ktg.data.spec import DataSpec
from ktg.device import Accel

DIGITS = DataSpec("digits")
DIGITS_VAL = DataSpec("digits", val_fraction=0.2)


@pytest.fixture(scope="session")
def digits_data() -> ImageData:
    """scikit-learn's digits, no validation split (the spec is ``DataSpec("digits")``). Read-only."""
    return DIGITS.load()


@pytest.fixture(scope="session")
def digits_val_data() -> ImageData:
    """Digits with a 20% validation split (``DataSpec("digits", val_fraction=0.2)``). Read-only."""
    return DIGITS_VAL.load()


@pytest.fixture(scope="session")
def cpu_accel() -> Accel:
    """Plain float32 on the CPU: no autocast, no channels_last, no compile."""
    return Accel(torch.device("cpu"))

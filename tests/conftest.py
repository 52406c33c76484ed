"""Shared fixtures: the graph engine's (small, offline, CPU-only) and the search tests' Ray folder."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

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


@pytest.fixture(scope="module")
def ray_tmp() -> Iterator[Path]:
    """A private temp root for the local Rays of one test module's ``ktg`` subprocesses."""
    path = Path(tempfile.mkdtemp(prefix="ktgray", dir="/tmp"))  # short: Ray puts sockets in it
    yield path
    shutil.rmtree(path, ignore_errors=True)

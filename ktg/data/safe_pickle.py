"""Read a pickle that may only hold plain data: dicts, lists, tuples, strings, bytes,
numbers, and numpy arrays (what CIFAR's batches hold).

A pickle is a program: any global it names is imported and may be called, so
``pickle.load`` on a file someone else wrote runs their code. This unpickler
resolves only the few globals numpy's own pickles name (found with
``pickletools`` on arrays and scalars pickled by numpy 1 and 2 at protocols 0-5):

- ``numpy.core.multiarray._reconstruct`` with ``numpy.ndarray`` and
  ``numpy.dtype`` (protocols 0-4; numpy 2 spells the module ``numpy._core``);
- ``numpy.core.numeric._frombuffer`` (protocol 5);
- ``numpy.core.multiarray.scalar`` (numpy scalars such as a label ``np.int64``);
- ``_codecs.encode`` (how protocols 0-2 of Python 3 store ``bytes``), latin-1 only.

Any other global, and any other use of these (``ndarray`` called directly to
allocate a huge array), is refused before anything is called.
"""

from __future__ import annotations

import importlib
import pickle
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from ktg.errors import KtgError


class _Refused(Exception):
    """The pickle names something that is not plain data."""


def _numpy_core(module: str) -> ModuleType:
    try:
        return importlib.import_module(f"numpy._core.{module}")  # numpy >= 2
    except ImportError:
        return importlib.import_module(f"numpy.core.{module}")


# Stands for numpy.ndarray in the pickle: only _reconstruct may receive it; calling it
# (what a crafted pickle would do to allocate any shape) is refused.
_NDARRAY = object()


def _reconstruct(cls: object, shape: object, typecode: object) -> np.ndarray:
    # numpy pickles an empty shell and fills it from the state that follows (ndarray.__setstate__,
    # which checks the data's size against its shape)
    if cls is not _NDARRAY or shape != (0,) or typecode != b"b":
        raise _Refused("numpy.core.multiarray._reconstruct with other arguments than numpy's")
    real: Callable[..., np.ndarray] = _numpy_core("multiarray")._reconstruct
    return real(np.ndarray, (0,), b"b")


def _latin1(text: object, encoding: object = "latin1") -> bytes:
    if not isinstance(text, str) or not isinstance(encoding, str) or \
            encoding.lower().replace("-", "").replace("_", "") not in {"latin1", "iso88591"}:
        raise _Refused("_codecs.encode other than latin-1 text")
    return text.encode("latin1")


def _allowed() -> dict[tuple[str, str], Any]:
    found: dict[tuple[str, str], Any] = {("numpy", "ndarray"): _NDARRAY, ("numpy", "dtype"): np.dtype,
                                         ("_codecs", "encode"): _latin1}
    for core in ("numpy.core", "numpy._core"):  # whichever numpy wrote the file
        found[(f"{core}.multiarray", "_reconstruct")] = _reconstruct
        found[(f"{core}.multiarray", "scalar")] = _numpy_core("multiarray").scalar
        found[(f"{core}.numeric", "_frombuffer")] = _numpy_core("numeric")._frombuffer
    return found


class _PlainUnpickler(pickle.Unpickler):
    allowed = _allowed()

    def find_class(self, module: str, name: str) -> Any:
        found = self.allowed.get((module, name))
        if found is None:
            raise _Refused(f"{module[:100]}.{name[:100]}")
        return found


def load_plain(path: Path, what: str) -> Any:
    """The plain data pickled in ``path``; any problem is one :class:`KtgError` naming ``what`` and the file.

    Text of Python 2 pickles (the official CIFAR files) is read as latin-1, as numpy needs for its arrays.
    """
    try:
        with path.open("rb") as f:
            return _PlainUnpickler(f, encoding="latin1").load()
    except _Refused as e:
        raise KtgError(f"{what}: {path} asks to run {e}, which is not plain data; refused (only dicts, lists, "
                       "strings, bytes, numbers and numpy arrays are read)") from None
    except OSError as e:
        raise KtgError(f"{what}: cannot read {path}: {e.strerror or type(e).__name__}") from None
    except Exception as e:  # a damaged pickle fails in many ways (EOFError, UnpicklingError, TypeError, ...)
        raise KtgError(f"{what}: cannot read {path}: not a pickle of plain data ({type(e).__name__})") from None

"""What the driver must know of a study's data and teacher files before it starts, read in one child process.

ASHA's first rung depends on the number of training images, and each given
teacher must fit the data (its classes, its channels, its model). Both need
torch to read the files, which the driver and the service never load (README,
Performance): one spawned child reads the data once and answers both.
"""

from __future__ import annotations

import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

from ktg.data.spec import DataSpec

TeacherFile = tuple[str, str]  # (model name, checkpoint path readable here)


@dataclass(frozen=True)
class DataFacts:
    train_images: int
    val_images: int  # the validation split every trial is ranked on
    misfits: tuple[str | None, ...]  # per teacher file: why it cannot be a node on this data, or None


def _look(data: DataSpec, teachers: tuple[TeacherFile, ...]) -> DataFacts:
    from ktg.checkpoints import misfit, read_state

    loaded = data.load()
    misfits = []
    for model, path in teachers:
        try:
            state = read_state(path)
        except FileNotFoundError:
            misfits.append("no such file")
            continue
        except Exception as exc:  # not a weights-only state_dict: name the kind, never its text (a server path)
            misfits.append(f"not a state_dict torch reads weights-only ({type(exc).__name__})")
            continue
        if not isinstance(state, dict) or not state:
            misfits.append("holds no state_dict")
            continue
        misfits.append(misfit(state, model, in_channels=loaded.in_channels, num_classes=loaded.num_classes,
                              image_size=loaded.image_size))
    return DataFacts(len(loaded.train_y), 0 if loaded.val_y is None else len(loaded.val_y), tuple(misfits))


@lru_cache(maxsize=8)  # a driver asks twice for one study; the service asks once per request
def data_facts(data: DataSpec, teachers: tuple[TeacherFile, ...] = ()) -> DataFacts:
    """The facts, read in a child process (torch stays out of this one). A bad dataset's
    KtgError comes back."""
    if "torch" in sys.modules:  # loaded already (a notebook, a test): a child would save nothing
        return _look(data, teachers)
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as child:
        return child.submit(_look, data, teachers).result()

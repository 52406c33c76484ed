"""``DataSpec``: everything that determines a run's data, as one hashable value.

It is what a run, a search trial and the teacher cache agree on: two runs with
equal specs see exactly the same images, splits and labels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class DataSpec:
    name: str = "digits"
    data_dir: str | None = None
    classes: tuple[int, ...] | None = None
    val_fraction: float = 0.0
    split_seed: int = 0
    image_size: int | None = None
    train_size: int | None = None  # class-balanced training subset (None = whole training split)

    def load(self) -> Any:
        """Load the ``ImageData`` this spec names."""
        from ktg.data import load_dataset

        return load_dataset(self.name, data_dir=self.data_dir, classes=self.classes,
                            val_fraction=self.val_fraction, split_seed=self.split_seed,
                            image_size=self.image_size, train_size=self.train_size)

    def for_teacher(self, dataset: str | None, classes: tuple[int, ...] | None) -> DataSpec:
        """The spec a pre-trained teacher uses: the run's, with its own dataset/classes.

        On the run's dataset a teacher sees the run's training subset (the
        data-scarce regime is the same for teacher and student); on another
        dataset the run's class subset and ``train_size`` mean nothing, so it
        uses the whole training split there.
        """
        same_dataset = dataset in (None, self.name)
        return replace(self, name=dataset or self.name,
                       classes=classes if classes is not None else (self.classes if same_dataset else None),
                       train_size=self.train_size if same_dataset else None)

    def key(self) -> dict[str, Any]:
        """A JSON-able identity (data_dir resolved so equal folders compare equal)."""
        d = asdict(self)
        d["data_dir"] = str(Path(self.data_dir).expanduser().resolve()) if self.data_dir else None
        d["classes"] = list(self.classes) if self.classes is not None else None
        if self.train_size is None:
            # Left out, not null: specs without a subset keep the keys they had
            # before train_size existed, so cached teachers stay valid.
            del d["train_size"]
        return d

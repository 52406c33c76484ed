"""What a person sees: progress bars while training, tables at the end.

Kept apart from the engine so that the trainer stays a plain library: it only
calls the ``on_batch``/``on_epoch`` hooks this module provides.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

console = Console(stderr=True)
out = Console()


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def fmt_acc(values: Sequence[float | None]) -> str:
    """'93.21 ± 0.40' (percent) over seeds; '-' when there is nothing to show."""
    clean = [v for v in values if v is not None]
    if not clean:
        return "-"
    mean, std = mean_std(clean)
    return f"{100 * mean:.2f}" if len(clean) == 1 else f"{100 * mean:.2f} ± {100 * std:.2f}"


@dataclass
class EpochBars:
    """One progress bar per epoch, advanced per batch, closed with the node accuracies."""

    label: str
    epochs: int
    batches: int
    progress: Progress
    _task: int | None = None
    _epoch: int = -1
    best: dict[int, float] = field(default_factory=dict)

    def on_batch(self, epoch: int, done: int) -> None:
        if epoch != self._epoch:
            self._epoch = epoch
            self._task = self.progress.add_task(f"{self.label} epoch {epoch + 1}/{self.epochs}",
                                                total=self.batches, accs="")
        assert self._task is not None
        self.progress.update(self._task, completed=done)

    def on_epoch(self, epoch: int, accs: dict[int, float]) -> None:
        if self._task is not None and accs:
            text = "  ".join(f"n{nid} {100 * a:.1f}" for nid, a in sorted(accs.items()))
            self.progress.update(self._task, accs=f"val {text}")


@contextmanager
def epoch_bars(label: str, epochs: int, batches: int) -> Iterator[EpochBars]:
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[accs]}"),
                        console=console)
    with progress:
        yield EpochBars(label, epochs, batches, progress)


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> Table:
    t = Table(title=title, title_justify="left")
    for i, name in enumerate(columns):
        t.add_column(name, justify="left" if i < 2 else "right")
    for row in rows:
        t.add_row(*(str(c) for c in row))
    return t

"""Which trials keep their checkpoint on disk, and which lose it (the driver's side).

Every trial reports a checkpoint (its ``ktg.run_state.RunState``) with each
epoch's accuracy; while it runs, only its newest two are kept
(``drop_older_checkpoints``: Tune's own ``num_to_keep`` is not used). When a
trial ends, this book decides what stays, so that the disk stays bounded:

* a FAIL trial's checkpoint is deleted (nobody continues a failure);
* a COMPLETE trial's is kept while the trial is among the top ``keep_best``
  (its trained weights stay exportable beside its graph);
* a PRUNED trial's is kept (a twin drawn later may continue it) as long as all
  of them fit in ``budget_bytes``; past that, the checkpoint ranked lowest among
  the trials that reached its rung goes first.

A checkpoint a live trial is continuing from is pinned: never deleted under it.
The book reads what it needs (values per epoch, final states) as the searcher
records them, so deciding never re-reads the study.
"""

from __future__ import annotations

import json
import shutil
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from optuna.trial import FrozenTrial, TrialState

from search.study.contract import Outcome, TrialAttr

CHECKPOINT_GLOB = "checkpoint_*"  # how Tune names a trial's checkpoint folders


def checkpoint_folders(trial_dir: Path) -> list[Path]:
    """A Tune trial folder's checkpoint folders, oldest first (Tune numbers them in order)."""
    return sorted(p for p in trial_dir.glob(CHECKPOINT_GLOB) if p.is_dir())


def latest_checkpoint(trial_dir: Path) -> Path | None:
    """The newest checkpoint folder of a Tune trial folder."""
    found = checkpoint_folders(trial_dir)
    return found[-1] if found else None


def drop_older_checkpoints(trial_dir: Path, keep: int = 2) -> None:
    """Delete a running trial's checkpoints but the newest ``keep``.

    Tune could do this itself (``CheckpointConfig.num_to_keep``), but then it copies
    the whole experiment folder after every reported checkpoint, which grows with
    the trials (README: Performance, the paper's scale). Two, not one: the
    driver may not have seen the newest yet when a lost worker is restarted.
    """
    for old in checkpoint_folders(trial_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def checkpoints_on_disk(experiment_dir: Path) -> dict[int, Path]:
    """Optuna trial number -> its latest checkpoint, for every trial folder of an experiment."""
    found: dict[int, Path] = {}
    for params in experiment_dir.glob("*/params.json"):
        try:
            number = int(json.loads(params.read_text())["trial_number"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a folder Tune was still writing when its driver died
        checkpoint = latest_checkpoint(params.parent)
        if checkpoint is not None:
            found[number] = checkpoint
    return found


@dataclass
class CheckpointBook:
    """The trials' checkpoints on disk and the rules that delete them."""

    keep_best: int
    budget_bytes: int
    kept: dict[int, Path] = field(default_factory=dict)  # trial number -> its latest checkpoint folder
    sizes: dict[int, int] = field(default_factory=dict)
    outcome: dict[int, Outcome] = field(default_factory=dict)
    final_value: dict[int, float] = field(default_factory=dict)  # COMPLETE trials' values
    values: dict[int, dict[int, float]] = field(default_factory=dict)  # epoch -> {trial number: val acc}
    pinned: dict[int, int] = field(default_factory=dict)  # trial number -> live trials continuing from it
    deleted: list[int] = field(default_factory=list)  # trial numbers whose checkpoint this book deleted

    def saw(self, number: int, epoch: int, value: float) -> None:
        """One epoch's validation accuracy of a trial (ranks a PRUNED trial at its rung)."""
        self.values.setdefault(epoch, {})[number] = value

    def add(self, number: int, checkpoint: Path | None) -> None:
        """A trial's latest checkpoint folder (None: it has none)."""
        if checkpoint is not None and checkpoint.is_dir():
            self.kept[number] = checkpoint
            self.sizes[number] = folder_bytes(checkpoint)

    def ended(self, number: int, outcome: Outcome, trial_dir: Path | None, value: float | None = None) -> None:
        """A trial ended (its Tune folder given): record how, then delete what the rules no longer keep."""
        if trial_dir is not None:
            drop_older_checkpoints(trial_dir, keep=1)  # its last result is in: its last checkpoint is all
            self.add(number, latest_checkpoint(trial_dir))
        self.outcome[number] = outcome
        if outcome == "complete" and value is not None:
            self.final_value[number] = value
        self.enforce()

    def pin(self, number: int) -> Path | None:
        """A live trial continues from ``number``'s checkpoint: keep it until ``unpin``."""
        if number not in self.kept:
            return None
        self.pinned[number] = self.pinned.get(number, 0) + 1
        return self.kept[number]

    def unpin(self, number: int) -> None:
        if self.pinned.get(number, 0) > 1:
            self.pinned[number] -= 1
        else:
            self.pinned.pop(number, None)

    def drop(self, number: int) -> None:
        """Delete a trial's checkpoint now (e.g. a later trial of the same graph went further)."""
        if number not in self.pinned:
            self._delete(number)

    def enforce(self) -> None:
        for number in [n for n in self.kept if self.outcome.get(n) == "fail"]:
            self.drop(number)
        complete = sorted((n for n in self.kept if self.outcome.get(n) == "complete"),
                          key=lambda n: (-self.final_value.get(n, float("-inf")), n))
        for number in complete[self.keep_best:]:
            self.drop(number)
        used = sum(self.sizes[n] for n in self.kept if self.outcome.get(n) == "pruned")
        if used <= self.budget_bytes:
            return
        pruned = [n for n in self.kept if self.outcome.get(n) == "pruned" and n not in self.pinned]
        for number in self._lowest_ranked_first(pruned):
            if used <= self.budget_bytes:
                break
            used -= self.sizes.get(number, 0)
            self._delete(number)

    def _lowest_ranked_first(self, numbers: list[int]) -> list[int]:
        """By the share of the trials at its rung (its last epoch) that beat it, worst first;
        then the earlier rung (less to lose), then the older trial."""
        ranked: dict[int, list[float]] = {}  # rung -> its values, sorted: one sort per rung

        def order(number: int) -> tuple[float, int, int]:
            rung = max((e for e, by_trial in self.values.items() if number in by_trial), default=0)
            at_rung = self.values.get(rung, {})
            if rung not in ranked:
                ranked[rung] = sorted(at_rung.values())
            values = ranked[rung]
            beaten_by = len(values) - bisect_right(values, at_rung.get(number, float("-inf")))
            return (-beaten_by / max(1, len(values)), rung, number)

        return sorted(numbers, key=order)

    def _delete(self, number: int) -> None:
        path = self.kept.pop(number, None)
        self.sizes.pop(number, None)
        if path is not None:  # with any older one Tune had no time to delete
            for folder in path.parent.glob(CHECKPOINT_GLOB):
                shutil.rmtree(folder, ignore_errors=True)
            self.deleted.append(number)

    def bytes_kept(self) -> int:
        return sum(self.sizes.values())


def book_of(trials: Iterable[FrozenTrial], keep_best: int, budget_bytes: int,
            experiment_dir: Path) -> CheckpointBook:
    """The book of a study being (re)started: what its trials recorded, what is on disk.

    A trial interrupted with its driver keeps its checkpoint like a PRUNED one:
    its re-queued copy may continue from it. Whatever the rules no longer keep
    (e.g. a run's last FAIL, before its driver could delete it) goes at once.
    """
    book = CheckpointBook(keep_best, budget_bytes)
    by_number = {t.number: t for t in trials}
    for t in by_number.values():
        for epoch, value in t.intermediate_values.items():
            book.saw(t.number, epoch, value)
    for number, checkpoint in checkpoints_on_disk(experiment_dir).items():
        trial = by_number.get(number)
        if trial is not None and trial.state in (TrialState.RUNNING, TrialState.WAITING):
            continue
        book.add(number, checkpoint)
        book.outcome[number] = _outcome(trial)
        if trial is not None and trial.state == TrialState.COMPLETE and trial.value is not None:
            book.final_value[number] = trial.value
    book.enforce()
    return book


def _outcome(trial: FrozenTrial | None) -> Outcome:
    if trial is None:
        return "fail"  # a folder its study does not know: nothing can continue it
    if trial.state == TrialState.COMPLETE:
        return "complete"
    if trial.state == TrialState.PRUNED or trial.user_attrs.get(TrialAttr.INTERRUPTED):
        return "pruned"
    return "fail"

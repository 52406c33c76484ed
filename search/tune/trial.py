"""The worker side of a search: one trial, run by Ray Tune in a worker process.

A worker trains one sampled graph and reports its target node's validation
accuracy after each epoch, together with a checkpoint of the run
(``ktg.run_state.RunState``: trained weights, optimizer, step, accuracies so
far) through Tune's checkpoint API, so that Tune can restart the trial where it
was if its process dies. It never touches the study or its storage (the driver
records everything), so it needs neither the database nor its password. Heavy
imports (torch, Ray, the engine) happen inside the trainable: the driver
imports this module only to hand the function to Tune.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ktg.graph import TARGET_NODE, Graph
from search.spec import SearchSpec
from search.teachers import TEACHER_FILES, with_teacher_files

if TYPE_CHECKING:
    from ktg.run_state import RunState  # imports torch: the driver never needs it

METRIC = "val_acc"  # what a trial reports each epoch: ASHA and the searcher read it
STATE_FILE = "state.pt"  # the run state inside a trial checkpoint folder
ERROR = "error"  # in a trial's last result: it failed by itself, say why and never retry it
TWIN = "twin"  # in a trial's config: the earlier trial of the same graph it continues (search.tune.twins)


def train_trial(config: dict[str, Any], spec_fields: dict[str, Any]) -> None:
    """A Ray Tune function trainable: train one sampled graph, report val acc each epoch.

    ``config`` (built by the driver's searcher): ``graph`` (a ``ktg-graph/1``
    dict), ``trial_number`` (the Optuna trial's), ``seed`` (the study's, or a
    confirmation seed; default the study's), ``cache_dir`` (pre-trained
    teachers), ``TEACHER_FILES`` (given teachers), ``device`` and ``cpus``, and for a graph the study trained
    before, ``TWIN`` (see ``_start``). ``spec_fields``, the ``SearchSpec`` as a dict,
    is the same for every trial and comes through ``tune.with_parameters``.

    A trial that fails by itself (a ``KtgError``: NaN loss, a graph the data
    cannot train; or out of memory) ends with a last result carrying ``ERROR``
    instead of raising, so that Tune, which retries whatever raises, never retries it.
    """
    import torch
    from ray import tune

    from ktg.device import Accel
    from ktg.errors import KtgError
    from ktg.run import RunHooks, RunSetup

    spec = SearchSpec.model_validate(spec_fields)
    # Only node 1's accuracy is searched, and only the nodes upstream of it decide it: the
    # rest of the drawn graph would cost compute and change nothing the study records.
    graph = Graph.from_dict(config["graph"]).training_graph(TARGET_NODE)
    graph = with_teacher_files(graph, config.get(TEACHER_FILES, {}))  # given teachers: the files to read
    torch.set_num_threads(max(1, int(config["cpus"])))
    seed = int(config.get("seed", spec.seed))
    resume, reported = _start(graph, spec, seed, config.get(TWIN))
    if reported == spec.epochs:
        return

    def report(state: RunState) -> None:
        nonlocal reported
        if state.epochs_done <= reported:  # re-trained only because the twin's checkpoint was deleted
            return
        with tempfile.TemporaryDirectory(prefix="ktg-state-") as folder:
            state.save(Path(folder) / STATE_FILE)
            tune.report({METRIC: state.val_acc[TARGET_NODE][-1], "epoch": state.epochs_done},
                        checkpoint=tune.Checkpoint.from_directory(folder))  # copied to storage before it returns
        reported = state.epochs_done

    try:
        setup = RunSetup.prepare(spec.data_spec(), accel=Accel.resolve(config["device"]),
                                 cache_dir=config["cache_dir"], quiet=True)
        setup.train(graph, spec.recipe(), seed=seed, hooks=RunHooks(on_state=report), resume=resume,
                    evaluate_test=False)
    except (KtgError, MemoryError, torch.cuda.OutOfMemoryError) as exc:
        # Its own fault, never retried: a KtgError, or running out of memory (a model too big
        # for its worker is as big again on a retry). No epoch of its own (epoch stays at the last
        # one reported) and no accuracy: the searcher records nothing from it but the error.
        tune.report({METRIC: float("nan"), "epoch": reported, ERROR: own_error(exc)})


def own_error(exc: BaseException) -> str:
    """A trial's own failure in one line: the exception's type and first line of text."""
    from ktg.errors import first_line

    text = first_line(exc) if str(exc) else ""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        text = f"out of memory{': ' + text if text else ''} (the graph does not fit its worker; not retried)"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _start(graph: Graph, spec: SearchSpec, seed: int, twin: dict[str, Any] | None) -> tuple[RunState | None, int]:
    """Where this trial starts: (the state to resume, the epochs already reported).

    Restarted by Tune (its process died): from its own last checkpoint. A graph
    the study trained before (``twin``: that trial's ``number``, ``values`` and
    ``checkpoint``): it reports that trial's values as its own first (ASHA
    judges them at every rung they pass), then trains on from its checkpoint;
    if the disk budget deleted that checkpoint, it trains from scratch, silently
    up to there. Otherwise from scratch.
    """
    from ray import tune

    from ktg.run_state import RunState, run_key

    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = RunState.load(Path(folder) / STATE_FILE)
        return state, state.epochs_done
    if twin is None:
        return None, 0
    state = _twin_state(twin["checkpoint"], run_key(graph, spec.recipe(), seed))
    known = state.val_acc[TARGET_NODE] if state is not None else twin["values"]
    known = known[:spec.epochs]
    for epoch, value in enumerate(known, start=1):  # known, so never trained again
        tune.report({METRIC: value, "epoch": epoch})
    return state, len(known)


def _twin_state(checkpoint: str | None, key: str) -> RunState | None:
    """The twin's run state if its checkpoint is still there and belongs to this run, else None."""
    from ktg.errors import KtgError
    from ktg.run_state import RunState

    if not checkpoint:
        return None
    try:
        state = RunState.load(Path(checkpoint) / STATE_FILE)
    except KtgError:  # deleted meanwhile, or half written when its driver died: train it again
        return None
    return state if state.key == key else None

"""Optuna studies shaped like a ktg search's, written straight into a storage (no Ray,
no training): for the tests of the reads over Optuna's tables, the API's tests, and
``benchmarks/bench_api.py``.
"""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import optuna
from optuna.trial import TrialState, create_trial

from search.study.contract import TrialAttr

GRAPH = {
    "format": "ktg-graph/1",
    "nodes": [{"id": 1, "model": "resnet20"}, {"id": 2, "model": "resnet20"}],
    "edges": [{"source": 0, "target": 1, "loss": "ce", "gate": "through"},
              {"source": 2, "target": 1, "loss": "kl", "gate": "linear"},
              {"source": 0, "target": 2, "loss": "ce", "gate": "through"}],
    "meta": {"dataset": "digits"},
}


def fill_study(storage: optuna.storages.BaseStorage, name: str, n_trials: int, epochs: int,
               seed: int = 0, workers: int = 1) -> optuna.Study:
    """An Optuna study shaped like an ASHA search's: mostly pruned at early rungs, some
    complete at the full budget, a few failed, running, re-queued (interrupted + waiting),
    some retried after a lost worker or continuing an earlier twin.

    Trials are written whole (``add_trial``), one transaction each, by ``workers``
    threads (Optuna's RDB storage takes concurrent writers, as distributed searches do).
    """
    rng = random.Random(seed)
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    rungs = [r for r in (1, 2, 4, 8, 16, 32, 64, 128) if r < epochs] + [epochs]
    trials = []
    for number in range(n_trials):
        kind = rng.choices(["pruned", "complete", "fail", "running", "interrupted"], [80, 10, 4, 3, 3])[0]
        stop = epochs if kind == "complete" else rungs[min(int(rng.expovariate(0.7)), len(rungs) - 1)]
        history = {e: round(min(0.99, 0.1 + 0.8 * (1 - 0.9 ** e) * rng.uniform(0.8, 1.0)), 4)
                   for e in range(1, stop + 1)}
        attrs: dict[str, Any] = {TrialAttr.GRAPH: GRAPH, TrialAttr.SEED: 0, TrialAttr.EPOCHS: stop}
        state = {"pruned": TrialState.PRUNED, "complete": TrialState.COMPLETE, "fail": TrialState.FAIL,
                 "running": TrialState.RUNNING, "interrupted": TrialState.FAIL}[kind]
        if kind == "interrupted":
            attrs[TrialAttr.INTERRUPTED] = True
        if kind == "fail":
            attrs[TrialAttr.ERROR] = f"NonFiniteLoss: node 1: loss became NaN or inf in epoch {stop}"
        if kind in {"pruned", "complete"} and rng.random() < 0.1:  # its worker was lost once or twice
            attrs[TrialAttr.RETRIES] = rng.choice([1, 2])
        if kind in {"pruned", "complete"} and number and rng.random() < 0.1:  # a twin of an earlier draw
            attrs[TrialAttr.CONTINUED_FROM] = rng.randrange(number)
        value = history[stop] if kind in {"pruned", "complete"} else None
        trials.append(create_trial(state=state, value=value, intermediate_values=history, user_attrs=attrs))
        if kind == "interrupted":  # re-queued with the same parameters, as the runner does
            trials.append(create_trial(state=TrialState.WAITING, user_attrs={"retry_of": number}))
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(study.add_trial, trials))
    return study

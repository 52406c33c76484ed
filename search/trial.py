"""The worker side of a search: one trial, run by Ray Tune in a worker process.

A worker trains one sampled graph and reports its target node's validation
accuracy after each epoch; it never touches the study or its storage (the
driver records everything), so it needs neither the database nor its password.
Heavy imports (torch, Ray, the engine) happen inside the trainable: the driver
imports this module only to hand the function to Tune.
"""

from __future__ import annotations

from typing import Any

from ktg.graph import TARGET_NODE
from search.spec import SearchSpec

METRIC = "val_acc"  # what a trial reports each epoch: ASHA and the searcher read it


def train_trial(config: dict[str, Any]) -> None:
    """A Ray Tune function trainable: train one sampled graph, report val acc each epoch.

    ``config`` (built by the driver's searcher): ``graph`` (a ``ktg-graph/1``
    dict), ``spec`` (the ``SearchSpec`` as a dict), ``trial_number`` (the Optuna
    trial's), ``cache_dir`` (pre-trained teachers), ``device`` and ``cpus``.
    """
    import torch
    from ray import tune

    from ktg.device import Accel
    from ktg.graph import Graph
    from ktg.run import RunSetup

    spec = SearchSpec.model_validate(config["spec"])
    torch.set_num_threads(max(1, int(config["cpus"])))
    setup = RunSetup.prepare(spec.data_spec(), accel=Accel.resolve(config["device"]),
                             cache_dir=config["cache_dir"], quiet=True)
    recipe = spec.recipe()

    def report(epoch: int, accs: dict[int, float]) -> None:
        tune.report({METRIC: accs[TARGET_NODE], "epoch": epoch})

    setup.train(Graph.from_dict(config["graph"]), recipe, seed=spec.seed, on_epoch=report, evaluate_test=False)

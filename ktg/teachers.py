"""Pre-trained teachers: trained once on labels alone, cached, shared.

A frozen node with no ``checkpoint`` is first trained on labels alone (KTG
Sec. 3.4). That is as costly as a whole run, so the result is cached under a
key made of everything that determines it (model, data, recipe, seed), and a
file lock makes sure two processes (two search trials, say) never train the
same teacher at once: the second waits and then reads the first's file.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from ktg.data.spec import DataSpec
from ktg.graph import FORMAT, LABEL_NODE, TARGET_NODE, Graph, Node
from ktg.machine import locked

if TYPE_CHECKING:  # torch loads when a teacher is read or trained: the cache's rule needs none of it
    from torch import Tensor

    from ktg.data import ImageData
    from ktg.device import Accel
    from ktg.recipe import Recipe

CACHE_ENV = "KTG_CACHE_DIR"
KEY_VERSION = 1


def default_cache_dir(fallback: Path | None = None) -> Path:
    """The teacher cache: ``$KTG_CACHE_DIR`` when set (so that searches, compare runs and the
    service's jobs share one), else ``fallback`` (a search's ``<out>/teachers``), else
    ``~/.cache/ktg/teachers``."""
    return Path(os.environ.get(CACHE_ENV) or fallback or Path.home() / ".cache" / "ktg" / "teachers")


class TeacherCache:
    """Where pre-trained teachers of runs on ``run`` data live."""

    def __init__(self, run: DataSpec, root: str | Path | None = None, *, quiet: bool = False) -> None:
        self.run = run
        self.root = Path(root) if root is not None else default_cache_dir()
        self.quiet = quiet
        self.trained: list[Path] = []  # files this instance had to train (the rest were cache hits)

    def key(self, node: Node, recipe: Recipe, seed: int) -> tuple[DataSpec, str]:
        pre = node.pretrain
        spec = self.run.for_teacher(pre.dataset if pre else None, pre.classes if pre else None)
        identity = {"v": KEY_VERSION, "model": node.model, "data": spec.key(),
                    "recipe": asdict(recipe), "seed": seed}
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]
        return spec, f"{node.model}-{spec.name}-{digest}"

    def pretrained(self, node: Node, run_data: ImageData, *, recipe: Recipe, seed: int,
                   accel: Accel) -> tuple[dict[str, Tensor], int]:
        """The teacher's state_dict and class count, training it first if needed."""
        from ktg.checkpoints import classifier_rows, read_state

        spec, key = self.key(node, recipe, seed)
        path = self.root / f"{key}.pt"
        with locked(self.root / f"{key}.lock"):
            if not path.exists():
                data = run_data if spec == self.run else spec.load()
                self._train(node, data, recipe, seed, accel, path)
        state = read_state(path)
        classes = spec.classes
        return state, len(classes) if classes is not None else classifier_rows(state)

    def _train(self, node: Node, data: ImageData, recipe: Recipe, seed: int, accel: Accel,
               path: Path) -> None:
        from ktg.checkpoints import write_state
        from ktg.run import RunSetup

        if not self.quiet:
            print(f"ktg: pre-training teacher {node.model} on {data.name} "
                  f"({recipe.epochs} epochs, labels only); cached at {path}")
        alone = Graph.from_dict({
            "format": FORMAT,
            "nodes": [{"id": TARGET_NODE, "model": node.model}],
            "edges": [{"source": LABEL_NODE, "target": TARGET_NODE, "loss": "ce", "gate": "through"}],
        })
        result = RunSetup(data, accel, teachers=self).train(alone, recipe, seed=seed)
        sidecar = {"model": node.model, "dataset": data.name, "test_acc": result.nodes[TARGET_NODE].test_acc,
                   "epochs": recipe.epochs, "seed": seed}
        path.with_suffix(".json").write_text(json.dumps(sidecar, indent=2) + "\n")
        write_state(result.state_dicts()[TARGET_NODE], path)
        self.trained.append(path)

"""The test-only NaN hook (``tests/fault_injection``) reaches the trainable, and poisons only what it should.

The slow search tests rely on it to fail a trial through a real NaN; this
checks, in one plain Python process, the two things they cannot see directly:
the wrapped trainable still pickles by reference (as Ray ships it to workers),
and only the chosen trial's own data is poisoned (teachers load theirs clean).
"""

from __future__ import annotations

import os
import subprocess
import sys

from tests.search_helpers import nan_fault_env

PROBE = """
import math, pickle, sys
import search.tune.trial
from ktg.data.spec import DataSpec

trainable = search.tune.trial.train_trial
assert hasattr(trainable, "__wrapped__"), "the hook did not wrap search.tune.trial.train_trial"
assert pickle.loads(pickle.dumps(trainable)) is trainable  # by reference, as Ray pickles it

hook = sys.modules["sitecustomize"]
means = {}
def fake_trial(config):
    means[config["trial_number"]] = [DataSpec("digits").load().mean[0] for _ in range(2)]
for number in (1, 2):
    hook.poisoning(fake_trial, {1})({"trial_number": number})
print([[math.isnan(m) for m in means[n]] for n in (1, 2)])
"""


def test_nan_hook_wraps_the_trainable_and_poisons_only_the_runs_data() -> None:
    env = {**os.environ, **nan_fault_env(1)}
    proc = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[[True, False], [False, False]]"

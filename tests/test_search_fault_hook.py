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
    hook.poisoning(fake_trial, {1}, set())({"trial_number": number})
print([[math.isnan(m) for m in means[n]] for n in (1, 2)])

def outcome(number, study):
    try:
        hook.poisoning(lambda config, **_: DataSpec("digits").load(), set(), {1})(
            {"trial_number": number}, spec_fields={"name": study})
    except MemoryError:
        return "oom"
    return "ok"
import os
os.environ[hook.STUDY_ENV] = "t.chosen"
print([outcome(n, s) for n, s in ((1, "t.chosen"), (2, "t.chosen"), (1, "t.other"))])
"""


def test_fault_hook_wraps_the_trainable_and_hits_only_the_chosen_trials() -> None:
    env = {**os.environ, **nan_fault_env(1)}
    proc = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    nan, oom = proc.stdout.strip().splitlines()
    assert nan == "[[True, False], [False, False]]"
    assert oom == "['oom', 'ok', 'ok']"  # MemoryError for the chosen trial of the chosen study only

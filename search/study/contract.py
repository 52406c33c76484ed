"""The study's contract, written once: trial attributes, trial states, outcomes, study states.

The searcher writes these names, the SQL reads them, the API shows them and the
tests pin them. Adding a trial attribute is one row of ``TRIAL_ATTRS`` plus the
place that writes it: the trials endpoint shows it, typed by its row (see
``api.schemas.TrialOut``), and ``search.study.queries`` reads it.

Which trials count against the budget is ``UNCOUNTED``, a table both the Python
rule (``counted``) and the SQL aggregate (``search.study.queries``) are built from.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal, get_args

from optuna.trial import FrozenTrial, TrialState


class TrialAttr(StrEnum):
    """The user attributes ktg writes on a trial (their keys in the Optuna storage)."""

    GRAPH = "graph"
    SEED = "seed"
    EPOCHS = "epochs_done"
    INTERRUPTED = "interrupted"
    SKIPPED = "skipped"
    ERROR = "error"
    RETRIES = "retries"
    CONTINUED_FROM = "continued_from"
    REPAIR_OF = "repair_of"
    RETRY_OF = "retry_of"
    BASELINE = "baseline"
    CONFIRM_OF = "confirm_of"


@dataclass(frozen=True)
class AttrRule:
    """How an attribute reads back: its JSON type, its value when absent, what it means.

    ``shown``: whether a trial page shows it as a field of its own (``graph`` is
    shown last, after the history, by the schema that places it).
    """

    kind: type
    default: Any
    description: str
    shown: bool = True


TRIAL_ATTRS: dict[TrialAttr, AttrRule] = {
    TrialAttr.EPOCHS: AttrRule(int, None, "Epochs trained (the last one reported)"),
    TrialAttr.SEED: AttrRule(int, None, "The seed it trained with: the study's, or a confirmation seed"),
    TrialAttr.INTERRUPTED: AttrRule(bool, False, "Its driver died; it was re-queued and is not counted"),
    TrialAttr.SKIPPED: AttrRule(str, None, "Why it was sampled but never trained"),
    TrialAttr.ERROR: AttrRule(str, None, "Why it failed (the exception its training raised)"),
    TrialAttr.RETRIES: AttrRule(int, 0, "Restarts from its checkpoint after its worker or node was lost"),
    TrialAttr.CONTINUED_FROM: AttrRule(int, None, "The earlier trial of the same graph whose epochs it took over"),
    TrialAttr.REPAIR_OF: AttrRule(int, None, "The untrainable draw it repairs (the target's label edge opened)"),
    TrialAttr.BASELINE: AttrRule(str, None, "The hand-made graph it trains ('independent', 'kd:<model>', "
                                            "'dml:<model>'; search.baselines)"),
    TrialAttr.CONFIRM_OF: AttrRule(int, None, "The trial whose graph it re-trains with another seed "
                                              "(the confirmation stage; not counted)"),
    TrialAttr.RETRY_OF: AttrRule(int, None, "The interrupted trial whose graph it runs again", shown=False),
    TrialAttr.GRAPH: AttrRule(dict, None, "The trial's graph (ktg-graph/1)", shown=False),
}


def read_attr(attr: TrialAttr, value: Any) -> Any:
    """An attribute's value as its rule types it; a missing or mistyped one reads as the default."""
    rule = TRIAL_ATTRS[attr]
    if rule.kind is bool:
        return bool(value)
    if rule.kind is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else rule.default
    if rule.kind is str:
        return str(value) if value else rule.default
    return value if isinstance(value, rule.kind) else rule.default


# The trial states users see, count and filter by: Optuna's own, named in lower case.
TrialStateName = Literal["complete", "pruned", "fail", "running", "waiting"]
TRIAL_STATES: dict[TrialStateName, TrialState] = {name: TrialState[name.upper()] for name in get_args(TrialStateName)}
# How a trial ended, having used its share of the budget: it completed, was pruned or failed.
Outcome = Literal["complete", "pruned", "fail"]
FINISHED_STATES: tuple[Outcome, ...] = get_args(Outcome)

# A trial does not count against the budget when it carries one of these attributes
# (in that state; None: in any). Interrupted ones were re-queued, and their copy counts;
# skipped ones were never trained: ``--trials N`` means N trained graphs; confirmation
# trials re-train graphs already counted, with other seeds, after the budget.
UNCOUNTED: dict[TrialAttr, TrialState | None] = {
    TrialAttr.INTERRUPTED: None,
    TrialAttr.SKIPPED: TrialState.FAIL,
    TrialAttr.CONFIRM_OF: None,
}

# Trials carrying one of these are never ranked as the search's draws ("best", twins):
# a confirmation trial's accuracy is another seed's, and its graph is ranked by its mean.
UNRANKED: tuple[TrialAttr, ...] = (TrialAttr.CONFIRM_OF,)


def ranked(trial: FrozenTrial) -> bool:
    """Whether a trial is one of the search's own draws, ranked by its value (``UNRANKED``)."""
    return not any(attr in trial.user_attrs for attr in UNRANKED)


def counted(trial: FrozenTrial) -> bool:
    """Whether a trial counts against the budget (``UNCOUNTED``)."""
    return not any(attr in trial.user_attrs and state in (None, trial.state) for attr, state in UNCOUNTED.items())


# The states of a study that users see (the service's studies).
StudyState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
ACTIVE_STUDY_STATES: tuple[StudyState, ...] = ("queued", "running")
FINISHED_STUDY_STATES: frozenset[StudyState] = frozenset({"succeeded", "failed", "cancelled"})

STUDY_ATTR_SPEC = "spec"  # the study's user attribute holding the spec it was created with
STUDY_ATTR_CONFIRMATION = "confirmation"  # the confirmation stage's ranking and margin (search.study.confirmation)
STUDY_ATTR_ASHA_RUNGS = "asha_rungs"  # the epochs at which ASHA may stop a trial, recorded when a search starts
STUDY_ATTR_RUNG_SPEARMAN = "rung_spearman"  # per ASHA rung: Spearman's rho with the final accuracy (search.study.rungs)

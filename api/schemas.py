"""Response bodies of the API: pydantic models, separate from the ORM tables.

The tables are how the API stores studies; these models are the contract
with clients (and the OpenAPI document). Keeping them apart lets a column change
without a client noticing, and keeps internals (output folders, the storage
URL) out of responses. Request bodies are ``search.spec.SearchSpec``, the same
model ``ktg search`` validates, so a field means one thing everywhere.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, create_model

from search.study.contract import TRIAL_ATTRS, TRIAL_STATES, StudyState, TrialAttr, TrialStateName


class FieldError(BaseModel):
    field: str = Field(description="Dotted path of the offending field, e.g. 'nodes' or 'models.1'")
    message: str


class ErrorOut(BaseModel):
    """Every error answer: one readable line, and per-field details for bad input."""

    detail: str
    errors: list[FieldError] | None = None


# One count per trial state, named as search.study.storage names them.
TrialCounts = create_model(
    "TrialCounts",
    __doc__=("Trials by state; trials re-queued after a driver died are not counted twice, "
             "and draws that could not be trained (skipped) are not counted."),
    **{name: (int, ...) for name in TRIAL_STATES},
)


class RayJobOut(BaseModel):
    submission_id: str
    job_id: str | None = None
    status: str | None = Field(None, description="Last Ray JobStatus seen (PENDING, RUNNING, SUCCEEDED, ...)")
    unreachable_since: datetime | None = Field(
        None, description="Set while the Ray cluster does not answer: the state and trial counts are the last seen")


class StudySummary(BaseModel):
    id: str
    name: str
    state: StudyState
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None = None
    links: dict[str, str]


class StudyPage(BaseModel):
    items: list[StudySummary]
    total: int
    limit: int
    offset: int


class StudyStatus(StudySummary):
    """A study's state, read back from Ray and from the Optuna storage."""

    optuna_study: str = Field(description="Name of the Optuna study in the storage ('tenant.name')")
    spec: dict[str, Any]
    trials: TrialCounts
    finished: int = Field(description="Counted trials that are over: complete + pruned + fail")
    budget: int
    progress: float = Field(ge=0, le=1, description="finished / budget")
    best_val_acc: float | None = Field(
        None, description="Best validation accuracy so far, over finished trials at the epoch each reached")
    best_complete_val_acc: float | None = Field(
        None, description="Best validation accuracy of a trial trained to the full budget (rank 1 of /best)")
    message: str | None = Field(None, description="Why the study failed, when it did")
    ray: RayJobOut


class EpochAcc(BaseModel):
    epoch: int
    val_acc: float | None


def _attr_field(attr: TrialAttr) -> tuple[Any, Any]:
    """A trial attribute as a response field, typed and described by its contract row."""
    rule = TRIAL_ATTRS[attr]
    kind = rule.kind if rule.default is not None else rule.kind | None
    return kind, Field(rule.default, description=rule.description)


# A trial as the trials endpoint shows it: its record, then every shown attribute of the
# contract (search.study.contract.TRIAL_ATTRS), then its history and graph.
TrialOut = create_model(
    "TrialOut",
    number=(int, ...),
    state=(TrialStateName, ...),
    val_acc=(float | None, Field(None, description="The trial's value: final (complete) or last (pruned) accuracy")),
    **{str(attr): _attr_field(attr) for attr, rule in TRIAL_ATTRS.items() if rule.shown},
    started_at=(datetime | None, None),
    completed_at=(datetime | None, None),
    history=(list[EpochAcc], Field(default_factory=list, description="Validation accuracy of node 1 per epoch")),
    graph=(dict[str, Any] | None, Field(None, description=TRIAL_ATTRS[TrialAttr.GRAPH].description)),
)


class TrialPage(BaseModel):
    items: list[TrialOut]
    total: int
    limit: int
    offset: int


class BestStepOut(BaseModel):
    finished: int = Field(description="Trials finished so far (in the order they finished) when the best rose")
    trial: int = Field(description="The trial whose accuracy it rose to")
    val_acc: float


class RungOut(BaseModel):
    epoch: int = Field(description="After this many epochs ASHA may stop a trial")
    reached: int = Field(description="Trials that trained at least this many epochs (running ones too)")
    stopped: int = Field(description="Trials ASHA stopped here (pruned after this many epochs)")


class StudyProgress(BaseModel):
    """What a chart of the study needs, computed in the database however many trials it holds."""

    study: str
    finished: int = Field(description="Counted trials that are over, as in the study's status")
    epochs: int = Field(description="The full budget of a trial, in epochs")
    best_so_far: list[BestStepOut] = Field(description=(
        "Best validation accuracy against trials finished: the points where it rose, the last one "
        "being the status's best_val_acc"))
    rungs: list[RungOut] | None = Field(None, description=(
        "ASHA's rungs, below the full budget; null until the search has started and recorded them"))
    full_budget: int = Field(description="Trials trained to the full budget (complete)")


class BestGraph(BaseModel):
    rank: int
    trial: int
    val_acc: float | None
    graph: dict[str, Any] = Field(description="A ktg-graph/1 file: save it and run `ktg train --graph`")
    confirmation: dict[str, Any] | None = Field(None, description=(
        "After the confirmation stage (the graph's meta.confirmation): validation accuracy per seed, its mean, "
        "and the paired difference against independent with its 95% t interval; `verdict` says it in words"))


class BestList(BaseModel):
    study: str
    items: list[BestGraph]


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    database: str
    ray: str

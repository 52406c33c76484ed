"""``SearchSpec``: what a search is, shared by ``ktg search`` and ``POST /v1/studies``.

One pydantic model is the single source of truth for both front ends, so a
field means the same thing (and is validated the same way) on the command line
and over HTTP. Where and how it runs (storage URL, Ray address, output folder)
is not part of it: those belong to the machine, not to the study. The recipe's
fields (epochs, batch size, lr, warm-up) default to ``ktg.recipe.Recipe``'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from ktg.data import check_dataset_name, class_ranges, dataset_names, parse_classes
from ktg.data.spec import DataSpec
from ktg.edge_losses import NETWORK_LOSSES
from ktg.errors import KtgError
from ktg.graph import GATES
from ktg.models import check_model_name
from ktg.recipe import Recipe

DEFAULT_MODELS = ("resnet32", "resnet110", "wrn28-2")
DEFAULT_TEMPERATURES = (1.0, 2.0, 4.0)
STUDY_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
TEACHER_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$"
TEACHER_CHOICE = "teacher:"  # a node's model choice "teacher:<name>" is that given teacher (search.space)


class TeacherSpec(BaseModel):
    """A pre-trained network the search may place on any node but node 1, frozen, as it is."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(pattern=TEACHER_NAME_PATTERN, description="What the space calls it (teacher:<name>)")]
    model: str = Field(description="Its model name, e.g. resnet20")
    checkpoint: Annotated[str, Field(min_length=1, max_length=1024, description=(
        "Its weights: a node<id>.pt written by 'ktg train' (over HTTP: relative to the datasets folder)"))]

    @field_validator("model")
    @classmethod
    def _model(cls, value: str) -> str:
        try:
            check_model_name(value, "model")
        except KtgError as exc:  # pydantic names the field (teachers.0.model) itself
            raise ValueError(str(exc).removeprefix("model: ")) from None
        return value

    def choice(self) -> str:
        """This teacher as a node's model choice in the space."""
        return TEACHER_CHOICE + self.name


class SearchSpec(BaseModel):
    """A knowledge-transfer-graph search: the space, the budget, the data."""

    # allow_inf_nan: Python's JSON reader turns NaN, Infinity and 1e400 into floats; none is a setting
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: Annotated[str, Field(pattern=STUDY_NAME_PATTERN, description="Study name (letters, digits, _ . -)")]
    nodes: Annotated[int, Field(ge=2, le=10, description="Number of networks, label node excluded")]
    trials: Annotated[int, Field(ge=1, le=100_000, description="Trial budget")]
    dataset: str = Field(default="digits", description="Dataset name",
                         json_schema_extra={"enum": dataset_names()})
    data_dir: str | None = Field(default=None, description="Folder holding the dataset (never downloaded)")
    classes: str | None = Field(default=None, description="Class subset, e.g. '0-49'")
    train_size: Annotated[int | None, Field(ge=2, le=10_000_000, description=(
        "Class-balanced, seeded subset of the training split; the validation split is carved from it"))] = None
    epochs: Annotated[int, Field(ge=1, le=10_000, description="Epochs of a full-budget trial")] = Recipe.epochs
    target_model: str = Field(default="resnet32", description="Model of node 1, the target")
    models: list[str] = Field(default_factory=lambda: list(DEFAULT_MODELS), min_length=1,
                              description="Models the other nodes choose from")
    gates: list[str] = Field(default_factory=lambda: list(GATES), min_length=1, description="Gates every edge chooses from",
                             json_schema_extra={"items": {"type": "string", "enum": list(GATES)}})
    losses: list[str] = Field(default_factory=lambda: ["kl"], min_length=1,
                              description="Losses every non-label edge chooses from",
                              json_schema_extra={"items": {"type": "string", "enum": list(NETWORK_LOSSES)}})
    teachers: list[TeacherSpec] = Field(default_factory=list, max_length=10, description=(
        "Pre-trained networks any node but node 1 may be, frozen as given (teacher:<name>)"))
    temperatures: list[Annotated[float, Field(gt=0, le=100)]] = Field(
        default_factory=lambda: list(DEFAULT_TEMPERATURES), min_length=1,
        description="Temperatures an edge out of a teacher chooses from")
    reduction_factor: Annotated[int, Field(ge=2, le=16, description="ASHA's reduction factor")] = 2
    grace_epochs: Annotated[int | None, Field(ge=1, le=10_000, description=(
        "Epochs before ASHA's first rung; default: when the lr warm-up is over"))] = None
    val_fraction: Annotated[float, Field(gt=0, lt=1, description=(
        "Share of the training split held out to validate on"))] = 0.2
    batch_size: Annotated[int, Field(ge=2, le=65_536, description="Batch size")] = Recipe.batch_size
    lr: Annotated[float, Field(gt=0, le=10, description="Learning rate")] = Recipe.lr
    warmup_steps: Annotated[int, Field(ge=0, le=1_000_000,
                                       description="Linear lr warm-up steps (0 = the paper's)")] = Recipe.warmup_steps
    seed: Annotated[int, Field(ge=0, le=2**31 - 1, description="Seed of every search trial (confirmation trials use the next ones)")] = 0
    max_retries: Annotated[int, Field(ge=0, le=100, description=(
        "Restarts of a trial whose process died (node lost, OOM kill), from its last checkpoint"))] = 2
    keep_best: Annotated[int, Field(ge=0, le=10_000, description=(
        "COMPLETE trials whose last checkpoint (trained weights) is kept: the top ones"))] = 5
    checkpoint_gb: Annotated[float, Field(ge=0, le=1_000_000, description=(
        "Disk for the checkpoints of PRUNED trials (a twin drawn later continues one); "
        "past it the lowest-ranked at its rung is deleted first"))] = 2.0

    baselines: Literal["none", "independent", "all"] = Field(default="all", description=(
        "Hand-made graphs trained first, counted in --trials: none, independent, or all (independent, KD from "
        "each of --models frozen at T=2, DML with each; independent alone when they would take over half "
        "the trials)"))
    confirm_top: Annotated[int, Field(ge=0, le=20, description=(
        "After the budget, re-train the top K full-budget graphs and independent with --confirm-seeds more "
        "seeds; the winner is the best mean (0: off, the winner is the best single run)"))] = 3
    confirm_seeds: Annotated[int, Field(ge=1, le=20, description=(
        "Extra seeds (seed+1, seed+2, ...) of each confirmed graph; the margin over independent is on them"))] = 3

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, value: str) -> str:
        _ktg_to_value_error(check_dataset_name, value)
        return value

    @field_validator("classes")
    @classmethod
    def _classes(cls, value: str | None, info: ValidationInfo) -> str | None:
        # Ranges only, never the ids: this runs on the API's event loop and must stay cheap.
        # The bound is the dataset's class count (the dataset field is validated before this one).
        if value is not None:
            _ktg_to_value_error(class_ranges, value, info.data.get("dataset"))
        return value

    @field_validator("target_model")
    @classmethod
    def _target_model(cls, value: str) -> str:
        _ktg_to_value_error(check_model_name, value, "target_model")
        return value

    @field_validator("models")
    @classmethod
    def _models(cls, value: list[str]) -> list[str]:
        for i, name in enumerate(value):
            _ktg_to_value_error(check_model_name, name, f"models[{i}]")
        return list(dict.fromkeys(value))

    @field_validator("gates")
    @classmethod
    def _gates(cls, value: list[str]) -> list[str]:
        value = _choices(value, GATES)
        if value == ["cutoff"]:  # otherwise the search would draw untrainable graphs forever
            raise ValueError("got only 'cutoff', which freezes node 1 in every graph, so no graph could be "
                             f"trained; allowed: add one of {', '.join(g for g in GATES if g != 'cutoff')}")
        return value

    @field_validator("losses")
    @classmethod
    def _losses(cls, value: list[str]) -> list[str]:
        return _choices(value, NETWORK_LOSSES)

    @field_validator("teachers")
    @classmethod
    def _teachers(cls, value: list[TeacherSpec]) -> list[TeacherSpec]:
        names = [t.name for t in value]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"teacher {twice[0]!r} is named twice; allowed: one name per teacher")
        return value

    @field_validator("temperatures")
    @classmethod
    def _temperatures(cls, value: list[float]) -> list[float]:
        return list(dict.fromkeys(value))

    def class_list(self) -> tuple[int, ...] | None:
        return tuple(parse_classes(self.classes, self.dataset)) if self.classes else None

    def data_spec(self) -> DataSpec:
        """The data every trial of the study trains and validates on."""
        return DataSpec(self.dataset, self.data_dir, self.class_list(), self.val_fraction, 0, None,
                        train_size=self.train_size)

    def recipe(self) -> Recipe:
        return Recipe(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, warmup_steps=self.warmup_steps)


def _choices(value: list[str], allowed: tuple[str, ...]) -> list[str]:
    for item in value:
        if item not in allowed:
            raise ValueError(f"got {item!r}; allowed: {', '.join(allowed)}")
    return list(dict.fromkeys(value))


def _ktg_to_value_error(check: object, *args: object) -> None:
    """Run a ktg check; pydantic reports ValueErrors per field, so translate."""
    try:
        check(*args)  # type: ignore[operator]
    except KtgError as exc:
        raise ValueError(str(exc)) from None


def spec_error_message(err: Mapping[str, Any], where: str) -> str:
    """The message of one pydantic error about a spec's field ``where``, as both front ends show it."""
    if err.get("type") == "extra_forbidden":
        return f"unknown field; allowed: {', '.join(SearchSpec.model_fields)}"
    if err.get("type") == "finite_number":
        return "must be a finite number"
    return str(err.get("msg", "invalid")).removeprefix("Value error, ").removeprefix(f"{where}: ")


def spec_error_lines(exc: Exception) -> list[str]:
    """One 'field: message' line per problem of a pydantic ValidationError."""
    from pydantic import ValidationError

    if not isinstance(exc, ValidationError):
        return [str(exc)]
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "spec"
        lines.append(f"{where}: {spec_error_message(err, where)}")
    return lines

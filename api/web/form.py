"""The submit form's fields, derived from ``SearchSpec``: one source for what a field
is called, what it accepts and what it defaults to, so the form cannot drift from the API."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from search.spec import SearchSpec

# The spec's main fields, shown first; every other field goes under "advanced".
MAIN_FIELDS = ("name", "nodes", "trials", "dataset", "epochs", "models", "gates")
# Where the field's own title ("Lr", "Val Fraction") would not say what it is.
LABELS = {
    "name": "Study name", "nodes": "Nodes (networks)", "trials": "Trials (budget)", "data_dir": "Data folder",
    "classes": "Classes", "train_size": "Training images", "epochs": "Epochs per trial",
    "target_model": "Node 1 (target) model", "models": "Models for the other nodes",
    "reduction_factor": "ASHA reduction factor", "grace_epochs": "Epochs before the first rung",
    "val_fraction": "Validation fraction", "lr": "Learning rate", "warmup_steps": "Warm-up steps",
    "checkpoint_gb": "Checkpoint disk (GB)", "keep_best": "Checkpoints kept (best trials)",
}
HINTS = {"models": "comma-separated, e.g. resnet20, wrn16-1", "data_dir": "relative to the service's datasets folder"}

Kind = Literal["text", "integer", "number", "select", "choices", "list"]


@dataclass(frozen=True)
class FormField:
    """One control of the submit form."""

    name: str
    label: str
    kind: Kind
    hint: str | None = None
    default: Any = None
    required: bool = False
    options: tuple[str, ...] = ()  # for select (one) and choices (several)
    minimum: float | None = None
    maximum: float | None = None

    @property
    def placeholder(self) -> str:
        if isinstance(self.default, list):
            return ", ".join(map(str, self.default))
        return "" if self.default is None else str(self.default)


def _bounds(schema: dict[str, Any]) -> tuple[float | None, float | None]:
    low = schema.get("minimum", schema.get("exclusiveMinimum"))
    high = schema.get("maximum", schema.get("exclusiveMaximum"))
    return low, high


def _field(name: str, schema: dict[str, Any]) -> FormField:
    info = SearchSpec.model_fields[name]
    default = None if info.is_required() else info.get_default(call_default_factory=True)
    # Optional fields are anyOf [the type, null]: the type's branch says what is allowed.
    branch = next((s for s in schema.get("anyOf", []) if s.get("type") != "null"), schema)
    low, high = _bounds(branch)
    title = str(schema.get("title", name))
    label = LABELS.get(name, title[:1] + title[1:].lower())
    hint = HINTS.get(name, schema.get("description"))
    common = {"name": name, "label": label, "hint": hint, "default": default, "required": info.is_required()}
    if "enum" in branch:
        return FormField(kind="select", options=tuple(branch["enum"]), **common)
    if branch.get("type") == "array":
        items = tuple(branch.get("items", {}).get("enum", ()))
        return FormField(kind="choices", options=items, **common) if items else FormField(kind="list", **common)
    if branch.get("type") in {"integer", "number"}:
        return FormField(kind=branch["type"], minimum=low, maximum=high, **common)
    return FormField(kind="text", **common)


def spec_form() -> tuple[list[FormField], list[FormField]]:
    """The main fields and the advanced ones, in the spec's order."""
    properties = SearchSpec.model_json_schema()["properties"]
    fields = [_field(name, properties[name]) for name in SearchSpec.model_fields]
    return [f for f in fields if f.name in MAIN_FIELDS], [f for f in fields if f.name not in MAIN_FIELDS]

"""The operator's quotas on one study, checked when it is submitted.

``KTG_MAX_TRIAL_EPOCHS`` bounds trials x epochs (the most epochs a study can
train), ``KTG_MAX_MODEL_PARAMS`` the parameters of each model a node may be.
Model sizes come from ``ktg.models.count_params``: a formula per family, so a
name such as ``wrn16-2000`` (683 G parameters) is refused without building
anything. All of it is arithmetic on the spec: cheap, no disk, no database.
"""

from __future__ import annotations

from ktg.data import count_classes, dataset_facts
from ktg.models import count_params
from search.spec import SearchSpec

# imagefolder's class count is only known once its folders are read: its models are
# counted for ImageNet's 1,000 classes unless the spec selects fewer.
UNKNOWN_CLASS_COUNT = 1000


def quota_problems(spec: SearchSpec, *, max_trial_epochs: int, max_model_params: int) -> list[tuple[str, str]]:
    """(field, message) for each quota the spec exceeds; empty when it fits."""
    problems: list[tuple[str, str]] = []
    if spec.trials * spec.epochs > max_trial_epochs:
        message = (f"trials x epochs is {spec.trials:,} x {spec.epochs:,} = {spec.trials * spec.epochs:,}; "
                   f"allowed: at most {max_trial_epochs:,} per study on this service")
        problems += [("trials", message), ("epochs", message)]
    facts = dataset_facts(spec.dataset)
    classes = (count_classes(spec.classes, spec.dataset) if spec.classes
               else facts.classes if facts.classes is not None else UNKNOWN_CLASS_COUNT)
    named = [("target_model", spec.target_model), *((f"models[{i}]", m) for i, m in enumerate(spec.models))]
    for field, model in named:
        size = count_params(model, in_channels=facts.channels, num_classes=classes)
        if size > max_model_params:
            problems.append((field, f"{model} has {size:,} parameters for {spec.dataset} ({classes} classes); "
                                    f"allowed: at most {max_model_params:,} per model on this service"))
    return problems

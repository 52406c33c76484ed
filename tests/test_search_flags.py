"""``ktg search``'s flags are generated from ``SearchSpec``: one flag per field, its default said once."""

from __future__ import annotations

import argparse

import pytest

from ktg.cli import build_parser
from ktg.errors import KtgError
from search.cli import build_spec
from search.commands import flag_of
from search.spec import SearchSpec


def search_parser() -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["search"]


def test_every_spec_field_has_its_flag_with_the_spec_default_in_its_help() -> None:
    actions = {a.dest: a for a in search_parser()._actions}
    for name, field in SearchSpec.model_fields.items():
        action = actions[name]
        assert flag_of(name) in action.option_strings
        assert action.default is None  # given flags override --spec-json and a stored spec; absent ones do not
        if field.is_required():
            assert "required" in action.help
        elif field.default_factory is not None:
            listed = ",".join(map(str, field.default_factory()))  # type: ignore[call-arg]
            assert (f"default {listed}" if listed else "default") in action.help or not listed
        elif field.default is not None:
            assert f"default {field.default}" in action.help


def test_flags_become_the_spec_fields() -> None:
    args = search_parser().parse_args(["--study", "s1", "--nodes", "3", "--trials", "9", "--models", "resnet20, wrn16-1",
                                       "--lr", "0.05", "--grace-epochs", "2", "--dataset", "synthetic"])
    spec = build_spec(args, None, {})
    assert (spec.name, spec.nodes, spec.trials, spec.models, spec.lr, spec.grace_epochs, spec.dataset) == (
        "s1", 3, 9, ["resnet20", "wrn16-1"], 0.05, 2, "synthetic")
    assert spec.epochs == SearchSpec.model_fields["epochs"].default  # not given: the spec's default


def test_flags_override_the_json_spec_and_errors_name_the_flag() -> None:
    args = search_parser().parse_args(["--trials", "5"])
    spec = build_spec(args, None, {"name": "j", "nodes": 2, "trials": 100})
    assert (spec.name, spec.trials) == ("j", 5)
    with pytest.raises(KtgError, match=r"^--nodes: missing; allowed: an integer in 2\.\.10$"):
        build_spec(search_parser().parse_args(["--study", "x", "--trials", "1"]), None, {})
    with pytest.raises(KtgError, match=r"^--reduction-factor: "):
        build_spec(search_parser().parse_args(["--study", "x", "--nodes", "2", "--trials", "1",
                                               "--reduction-factor", "1"]), None, {})

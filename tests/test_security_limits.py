"""Bounded requests and quotas (docs/security.md): class selections, model sizes counted
without building the model, trials x epochs, strict JSON, finite numbers, the TTL cache.

The app runs in-process on a real PostgreSQL with Ray at a closed port (a spec that
passes every check gets as far as launching: 503), with small quotas.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.settings import Settings
from api.ttl_cache import TtlCache
from ktg.data import class_ranges, count_classes, parse_classes
from ktg.errors import KtgError
from ktg.models import build_model, count_params
from tests.api_fixtures import ALICE, TOKENS, app_fixture, client_fixture, closed_port  # noqa: F401
from tests.postgres import postgres_url  # noqa: F401

MAX_PARAMS = 500_000  # resnet32 (0.46 M) fits, resnet56 (0.85 M) does not
MAX_TRIAL_EPOCHS = 1_000


@pytest.fixture(scope="module", name="app_settings")
def app_settings_fixture(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:  # noqa: F811
    return Settings(storage=postgres_url, tokens=TOKENS, data_dir=tmp_path_factory.mktemp("limits"),
                    ray_address=f"http://127.0.0.1:{closed_port()}", ray_timeout_s=2.0, reconcile_interval_s=0,
                    max_model_params=MAX_PARAMS, max_trial_epochs=MAX_TRIAL_EPOCHS)


def post(client: TestClient, body: dict[str, Any] | str) -> Any:
    content = body if isinstance(body, str) else json.dumps(body)
    return client.post("/v1/studies", content=content, headers={**ALICE, "content-type": "application/json"})


def spec(**fields: Any) -> dict[str, Any]:
    return {"name": "limits", "nodes": 2, "trials": 1, "models": ["resnet20"], "target_model": "resnet20", **fields}


def errors(r: Any) -> dict[str, str]:
    assert r.status_code == 422, r.text
    return {e["field"]: e["message"] for e in r.json()["errors"]}


# -- model sizes without building the model -----------------------------------------------------

@pytest.mark.parametrize("name", ["resnet8", "resnet20", "resnet56", "wrn10-1", "wrn16-2", "wrn28-2", "wrn16-3",
                                  "mobilenet-0.25", "mobilenet-0.3", "mobilenet-1.0", "mobilenet-1.7"])
@pytest.mark.parametrize(("channels", "classes"), [(3, 10), (1, 100), (3, 7)])
def test_the_parameter_formula_matches_the_built_model(name: str, channels: int, classes: int) -> None:
    model = build_model(name, in_channels=channels, num_classes=classes, image_size=8)
    assert count_params(name, in_channels=channels, num_classes=classes) == sum(p.numel() for p in model.parameters())


def test_a_huge_model_is_counted_not_built() -> None:
    # WRN-16-k's 3x3 convs dominate, and their weights grow as k^2
    small, wide = (count_params(f"wrn16-{k}", in_channels=3, num_classes=100) for k in (1000, 2000))
    assert 3.9 < wide / small < 4.0 and wide > 600_000_000_000


# -- class selections: linear, bounded by the dataset -------------------------------------------

def test_class_ranges_merge_without_listing_ids() -> None:
    assert class_ranges(",".join(["0-999999"] * 1000)) == [(0, 999_999)]
    assert class_ranges("5, 1-2 ,2,3") == [(1, 3), (5, 5)]
    assert count_classes("0-49,25-74", "cifar100") == 75 == len(parse_classes("0-49,25-74", "cifar100"))


@pytest.mark.parametrize(("text", "dataset"), [("0-10", "cifar10"), ("100", "cifar100"), ("0-" + "9" * 8, None),
                                               ("1," * 6000 + "1", None)])
def test_class_selections_are_bounded(text: str, dataset: str | None) -> None:
    with pytest.raises(KtgError, match=r"^classes: "):
        class_ranges(text, dataset)


# -- over HTTP ---------------------------------------------------------------------------------

def test_quotas_name_the_fields_and_the_sizes(client: TestClient) -> None:
    found = errors(post(client, spec(trials=11, epochs=100)))
    assert set(found) == {"trials", "epochs"} and "1,100" in found["trials"] and "1,000" in found["trials"]
    resnet56 = sum(p.numel() for p in build_model("resnet56", in_channels=1, num_classes=10, image_size=8).parameters())
    found = errors(post(client, spec(models=["resnet32", "resnet56"], target_model="wrn16-2000")))
    assert set(found) == {"target_model", "models[1]"}
    assert found["models[1]"].startswith(f"resnet56 has {resnet56:,} parameters for digits (10 classes)")
    assert "wrn16-2000" in found["target_model"] and f"{MAX_PARAMS:,}" in found["target_model"]
    assert post(client, spec(trials=10, epochs=100, models=["resnet32"])).status_code == 503  # within: launching


def test_duplicate_keys_nan_and_deep_nesting_are_422(client: TestClient) -> None:
    found = errors(post(client, '{"name": "dup", "nodes": 2, "trials": 1, "trials": 100000}'))
    assert found == {"body": "malformed JSON: duplicate key 'trials'"}
    for literal, field in (("NaN", "lr"), ("Infinity", "lr"), ("-Infinity", "val_fraction"), ("1e400", "trials")):
        members = {"name": '"nan"', "nodes": "2", "trials": "1", field: literal}  # JSON text: literals as written
        found = errors(post(client, "{" + ", ".join(f'"{k}": {v}' for k, v in members.items()) + "}"))
        assert found == {field: "must be a finite number"}, literal
    for deep in ("[" * 20_000 + "]" * 20_000, '{"name": ' + "[" * 20_000 + "]" * 20_000 + "}"):
        assert errors(post(client, deep)) == {"body": "malformed JSON: nested too deeply"}
    found = errors(post(client, spec(dataset="cifar10", data_dir="c", classes="0-10")))
    assert set(found) == {"classes"} and "cifar10 has classes 0..9" in found["classes"]


def test_readyz_is_computed_once_per_ttl(client: TestClient, app: FastAPI) -> None:
    first = client.get("/readyz")
    found, cached = app.state.readiness_cache.get("readiness")
    assert found and cached.model_dump() == first.json()


# -- the TTL cache ---------------------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_ttl_cache_serves_fresh_values_and_recomputes_stale_ones() -> None:
    clock, calls = Clock(), []
    cache: TtlCache[str, int] = TtlCache(1.0, max_entries=2, clock=clock)

    def compute(value: int) -> int:
        calls.append(value)
        return value

    assert cache.get_or_compute("a", lambda: compute(1)) == 1
    clock.now = 0.9
    assert cache.get_or_compute("a", lambda: compute(2)) == 1 and calls == [1]
    clock.now = 1.0
    assert cache.get_or_compute("a", lambda: compute(3)) == 3 and calls == [1, 3]
    cache.forget("a")
    assert cache.get("a") == (False, None)
    cache.put("b", 4)
    cache.put("c", 5)
    cache.put("d", 6)  # full of fresh entries: cleared to make room
    assert cache.get("b") == (False, None) and cache.get("d") == (True, 6)


def test_single_flight_computes_once_for_waiting_threads() -> None:
    cache: TtlCache[str, int] = TtlCache(60.0, single_flight=True)
    started, release, calls = threading.Event(), threading.Event(), []

    def slow() -> int:
        calls.append(1)
        started.set()
        release.wait(10)
        return 7

    results: list[int] = []
    first = threading.Thread(target=lambda: results.append(cache.get_or_compute("k", slow)))
    first.start()
    started.wait(10)
    others = [threading.Thread(target=lambda: results.append(cache.get_or_compute("k", slow))) for _ in range(4)]
    for t in others:
        t.start()
    release.set()
    for t in [first, *others]:
        t.join(10)
    assert results == [7] * 5 and calls == [1]

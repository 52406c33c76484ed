"""What the study page reads and how it is served, without a browser (``test_web_browser.py``
drives the page itself).

The SQL reads added for the page (``search.study.queries``: the best accuracy against
trials finished, the trials per rung, the top-k ranking, the trial orders) say what
Optuna's own API says about the same study, on SQLite and a real PostgreSQL, with
the cases the rules single out (a COMPLETE trial without a graph, an infinite or NaN
accuracy, a skipped trial, re-queued ones). Then the endpoints in-process, per tenant, and the
pages' headers: a Content-Security-Policy of the page's own origin only, no CORS.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from html.parser import HTMLParser

import optuna
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState, create_trial
from sqlalchemy.orm import Session

from api.settings import Settings
from search.spec import SearchSpec
from search.study.contract import FINISHED_STATES, STUDY_ATTR_ASHA_RUNGS, TRIAL_STATES, TrialAttr, counted
from search.study.queries import TRIAL_ORDERS, best_so_far, epochs_reached, list_trials, top_trials
from search.study.storage import open_storage
from tests.api_fixtures import (  # noqa: F401
    ALICE,
    BOB,
    app_fixture,
    app_settings_fixture,
    client_fixture,
    register,
)
from tests.optuna_studies import GRAPH, fill_study
from tests.postgres import postgres_url  # noqa: F401

NAME = "web.mixed"
RUNGS = [1, 2, 4, 8]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def storage(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RDBStorage]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('web') / 'studies.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    storage = open_storage(url)
    study = fill_study(storage, NAME, 80, epochs=12, seed=7)
    study.add_trial(create_trial(state=TrialState.COMPLETE, value=0.999, intermediate_values={12: 0.999},
                                 user_attrs={"note": "made by hand, no graph"}))
    study.add_trial(create_trial(state=TrialState.PRUNED, value=math.inf, intermediate_values={1: math.inf},
                                 user_attrs={TrialAttr.GRAPH: GRAPH, TrialAttr.SEED: 0, TrialAttr.EPOCHS: 1}))
    study.add_trial(create_trial(state=TrialState.FAIL, intermediate_values={1: 0.25, 2: math.nan},
                                 user_attrs={TrialAttr.GRAPH: GRAPH, TrialAttr.SEED: 0, TrialAttr.EPOCHS: 2}))
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={TrialAttr.GRAPH: GRAPH, TrialAttr.SKIPPED: "frozen target"}))
    yield storage
    storage.engine.dispose()


def trials_of(storage: RDBStorage) -> list[FrozenTrial]:
    return optuna.load_study(study_name=NAME, storage=storage).get_trials()


def accuracy(t: FrozenTrial) -> float | None:
    """A trial's accuracy as the status counts it: complete or pruned, with a graph, a finite value."""
    ok = t.state in (TrialState.COMPLETE, TrialState.PRUNED) and TrialAttr.GRAPH in t.user_attrs
    return t.value if ok and t.value is not None and math.isfinite(t.value) else None


def test_best_so_far_is_the_running_best_over_finished_trials(storage: RDBStorage) -> None:
    finished_states = {TRIAL_STATES[name] for name in FINISHED_STATES}
    finished = sorted((t for t in trials_of(storage) if counted(t) and t.state in finished_states),
                      key=lambda t: (t.datetime_complete, t.number))
    expected, best = [], None
    for n, t in enumerate(finished, start=1):
        value = accuracy(t)
        if value is not None and (best is None or value > best):
            best = value
            expected.append((n, t.number, value))
    with Session(storage.engine) as s:
        steps = best_so_far(s, NAME)
    assert len(expected) >= 3
    assert [(p.finished, p.trial, p.val_acc) for p in steps] == expected
    assert max(v for t in finished if (v := accuracy(t)) is not None) == steps[-1].val_acc


def test_epochs_reached_counts_counted_trials_by_state(storage: RDBStorage) -> None:
    expected: dict[str, dict[int, int]] = {}
    for t in trials_of(storage):
        if counted(t) and TrialAttr.EPOCHS in t.user_attrs:
            by_epoch = expected.setdefault(t.state.name.lower(), {})
            by_epoch[t.user_attrs[TrialAttr.EPOCHS]] = by_epoch.get(t.user_attrs[TrialAttr.EPOCHS], 0) + 1
    with Session(storage.engine) as s:
        assert epochs_reached(s, NAME) == expected
    assert set(expected) >= {"complete", "pruned", "fail", "running"}


def test_the_top_k_in_sql_is_the_rule_read_through_optuna(storage: RDBStorage) -> None:
    """COMPLETE, a finite value, a graph; best value first, then number; ``first`` leads."""
    done = [t for t in trials_of(storage) if t.state == TrialState.COMPLETE and t.value is not None
            and math.isfinite(t.value) and TrialAttr.GRAPH in t.user_attrs]
    expected = [t.number for t in sorted(done, key=lambda t: (-t.value, t.number))]
    with Session(storage.engine) as s:
        for k in (1, 5, 500):
            assert [t.number for t in top_trials(s, NAME, k)] == expected[:k]
        lead = [expected[-1], expected[-2]]  # a confirmation stage's order wins over the values
        assert [t.number for t in top_trials(s, NAME, 4, first=lead)] == [*lead, *(n for n in expected if n not in lead)][:4]

    # What a ranked trial carries: its graph, seed, epochs, and the baseline it is, if one.
    study = optuna.create_study(study_name=f"{NAME}.attrs", storage=storage, direction="maximize")
    for value, attrs in ((0.7, {TrialAttr.BASELINE: "kd:wrn16-2", TrialAttr.SEED: 0}), (0.8, {TrialAttr.EPOCHS: 3})):
        study.add_trial(create_trial(state=TrialState.COMPLETE, value=value, intermediate_values={3: value},
                                     user_attrs={TrialAttr.GRAPH: GRAPH, "note": "not ranked", **attrs}))
    with Session(storage.engine) as s:
        assert [t.user_attrs for t in top_trials(s, f"{NAME}.attrs", 2)] == [
            {"graph": GRAPH, "epochs_done": 3}, {"graph": GRAPH, "baseline": "kd:wrn16-2", "seed": 0}]


@pytest.mark.parametrize("order", TRIAL_ORDERS)
def test_trial_orders_match_optuna(storage: RDBStorage, order: str) -> None:
    trials = trials_of(storage)
    key = order.removeprefix("-")
    descending = order.startswith("-")

    def column(t: FrozenTrial) -> float | None:
        if key == "number":
            return t.number
        if key == "val_acc":
            return t.value if t.value is not None and math.isfinite(t.value) else None
        return max(t.intermediate_values, default=None)

    def sort_key(t: FrozenTrial) -> tuple[bool, float, int]:
        v = column(t)
        return (v is None, 0.0 if v is None else (-v if descending else v), t.number)

    expected = [t.number for t in sorted(trials, key=sort_key)]
    with Session(storage.engine) as s:
        total, first = list_trials(s, NAME, state=None, limit=40, offset=0, order=order)  # type: ignore[arg-type]
        _, second = list_trials(s, NAME, state=None, limit=40, offset=40, order=order)  # type: ignore[arg-type]
    assert total == len(trials)
    assert [r.number for r in first + second] == expected[:80]


# -- the endpoints, in-process on PostgreSQL ------------------------------------------------------

@pytest.fixture(scope="module")
def filled(client: TestClient, app: FastAPI, app_settings: Settings) -> tuple[str, optuna.Study]:
    """Alice's study of 80 trials of every state, as a search of 20 epochs leaves it."""
    spec = SearchSpec(name="page", nodes=2, trials=100, epochs=20, models=["resnet20"], target_model="resnet20")
    study = fill_study(open_storage(app_settings.storage), "alice.page", 80, epochs=20, seed=3)
    return register(app.state.sessions, "alice", spec, "succeeded", app_settings.data_dir), study


def test_progress_endpoint_per_tenant(client: TestClient, filled: tuple[str, optuna.Study]) -> None:
    study_id, study = filled
    before = client.get(f"/v1/studies/{study_id}/progress", headers=ALICE)
    assert before.status_code == 200 and before.json()["rungs"] is None  # not recorded by a search yet
    study.set_user_attr(STUDY_ATTR_ASHA_RUNGS, RUNGS)
    body = client.get(f"/v1/studies/{study_id}/progress", headers=ALICE).json()
    trials = [t for t in study.get_trials() if counted(t)]
    done = [t.user_attrs[TrialAttr.EPOCHS] for t in trials if TrialAttr.EPOCHS in t.user_attrs]
    pruned = [t.user_attrs[TrialAttr.EPOCHS] for t in trials if t.state == TrialState.PRUNED]
    assert body["rungs"] == [{"epoch": r, "reached": sum(e >= r for e in done), "stopped": pruned.count(r)}
                             for r in RUNGS]
    status = client.get(f"/v1/studies/{study_id}", headers=ALICE).json()
    assert body["finished"] == status["finished"] and body["full_budget"] == status["trials"]["complete"]
    assert body["best_so_far"][-1]["val_acc"] == status["best_val_acc"] and body["epochs"] == 20
    assert [p["finished"] for p in body["best_so_far"]] == sorted({p["finished"] for p in body["best_so_far"]})
    assert client.get(f"/v1/studies/{study_id}/progress", headers=BOB).status_code == 404


def test_trials_order_is_a_checked_query_field(client: TestClient, filled: tuple[str, optuna.Study]) -> None:
    study_id, study = filled
    page = client.get(f"/v1/studies/{study_id}/trials", params={"order": "-val_acc", "limit": 3}, headers=ALICE)
    top = sorted((t for t in study.get_trials() if t.value is not None), key=lambda t: (-t.value, t.number))[:3]
    assert [t["number"] for t in page.json()["items"]] == [t.number for t in top]
    bad = client.get(f"/v1/studies/{study_id}/trials", params={"order": "accuracy"}, headers=ALICE)
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "order"
    assert "val_acc" in bad.json()["errors"][0]["message"]


# -- the pages --------------------------------------------------------------------------------

class _Controls(HTMLParser):
    """The form controls of a page, the labels' targets, and every URL it loads."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.label_for: set[str] = set()
        self.fields: set[str] = set()
        self.urls: list[str] = []
        self.labels: dict[str, str] = {}
        self._label: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag in {"input", "select"} and a.get("type") != "checkbox":
            self.ids.add(a.get("id") or "(no id)")
        if tag == "label" and a.get("for"):
            self.label_for.add(a["for"] or "")
            self._label = a["for"]
        if a.get("data-field"):
            self.fields.add(a["data-field"] or "")
        self.urls += [v for k, v in attrs if k in {"src", "href"} and v]

    def handle_data(self, data: str) -> None:
        if self._label:
            self.labels[self._label] = self.labels.get(self._label, "") + data

    def handle_endtag(self, tag: str) -> None:
        if tag == "label":
            self._label = None


def test_pages_load_only_their_own_origin(client: TestClient, filled: tuple[str, optuna.Study]) -> None:
    study_id, _ = filled
    for path in ("/", f"/studies/{study_id}"):
        page = client.get(path)  # no token: the pages hold no data, the page's own calls do
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        csp = dict(d.strip().split(" ", 1) for d in page.headers["content-security-policy"].split(";"))
        assert csp["default-src"] == csp["script-src"] == csp["connect-src"] == csp["style-src"] == "'self'"
        assert "unsafe" not in page.headers["content-security-policy"]
        html = _Controls()
        html.feed(page.text)
        assert html.labels["token"].strip() == "API token"
        assert html.ids <= html.label_for, html.ids - html.label_for  # every control has a label
        assert all(u.startswith("/") and not u.startswith("//") for u in html.urls), html.urls
        assert not re.search(r"<script(?![^>]*\ssrc=)", page.text)  # no inline script
        for url in html.urls:
            if url.startswith("/static/"):
                asset = client.get(url)
                assert asset.status_code == 200, url
                # every element the page's script looks up by id is on the rendered page
                wanted = set(re.findall(r'(?:getElementById|\$)\("([\w-]+)"\)', asset.text))
                assert not {i for i in wanted if f'id="{i}"' not in page.text}, url
    form = _Controls()
    form.feed(client.get("/").text)
    assert form.fields == set(SearchSpec.model_fields)  # the submit form has every spec field
    assert client.get("/studies/not-a-study-id").status_code == 404


def test_no_cross_origin_answers(client: TestClient, filled: tuple[str, optuna.Study]) -> None:
    study_id, _ = filled
    origin = {"Origin": "https://elsewhere.example"}
    preflight = client.options(f"/v1/studies/{study_id}",
                               headers={**origin, "Access-Control-Request-Method": "GET",
                                        "Access-Control-Request-Headers": "authorization"})
    plain = client.get(f"/v1/studies/{study_id}", headers={**origin, **ALICE})
    for answer in (preflight, plain, client.get("/", headers=origin)):
        assert not [h for h in answer.headers if h.lower().startswith("access-control-")]
    assert preflight.status_code >= 400 and plain.status_code == 200

"""The study page in a real Chromium, on a real ``ktg serve`` with PostgreSQL and a local
Ray: sign in, submit, follow a small digits study to ``succeeded`` (its graphs, curves,
rungs and best-so-far chart checked against the API's own JSON), cancel another, and
sign in as a second tenant, who sees none of it. Throughout: no console error but the
API's expected refusals, and no request to any origin but the page's.

Chromium is Debian's (``apt-get install chromium``), driven by Playwright without
downloading a browser of its own.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api_server import Server, serving, status
from tests.postgres import postgres_url  # noqa: F401

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install chromium)")]
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
ALICE, BOB = "alice-page-token-4c1e", "bob-page-token-7d2a"
STUDY = {"name": "digits-page", "nodes": "2", "trials": "4", "epochs": "3", "models": "resnet20"}
# A rung at epoch 1 and 2, below the budget of 3; the independent baseline (chosen below) and a
# small confirmation stage: the best graph and independent, 2 more seeds each.
ADVANCED = {"target_model": "resnet20", "grace_epochs": "1", "confirm_top": "1", "confirm_seeds": "2"}
MS = 1000


@pytest.fixture(scope="module")
def server(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:  # noqa: F811
    root = tmp_path_factory.mktemp("web")
    with serving(root, KTG_STORAGE=postgres_url, KTG_API_TOKENS=f"alice:{ALICE},bob:{BOB}") as srv:
        yield srv


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@dataclass
class Tab:
    """A browser tab on the server, recording what the page logs and where it sends requests."""

    page: Any
    origin: str
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))
        self.page.on("request", lambda r: self.requests.append(r.url))

    def refusals(self, *statuses: int) -> None:
        """The console errors so far are exactly the browser's notes on API answers of these statuses."""
        notes = [e for e in self.errors if "Failed to load resource" in e]
        assert notes and notes == self.errors, self.errors
        assert all(any(f"status of {s}" in e for s in statuses) for e in notes), notes
        self.errors.clear()

    def api_calls(self) -> int:
        return sum("/v1/" in url for url in self.requests)

    def sign_in(self, token: str, accepted: bool = True) -> None:
        self.page.get_by_label("API token").fill(token)
        self.page.get_by_role("button", name="Sign in").click()
        self.page.wait_for_selector("#app:not([hidden])" if accepted else "#sign-in-error:not(:empty)")

    def check_clean(self) -> None:
        assert self.errors == []
        foreign = [u for u in self.requests if not u.startswith(f"{self.origin}/")]
        assert foreign == [] and self.requests


@pytest.fixture
def tab(browser: Any, server: Server) -> Iterator[Tab]:
    context = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    context.set_default_timeout(60 * MS)  # a loaded machine; the waits for the study are longer still
    yield Tab(context.new_page(), server.url)
    context.close()


def fill(page: Any, fields: dict[str, str]) -> None:
    for name, value in fields.items():
        page.locator(f"#f-{name}").fill(value)


def submit_study(page: Any) -> str:
    """Submit the form as filled; the new study's id, from the page it opens."""
    from playwright.sync_api import TimeoutError as PageTimeout

    page.get_by_role("button", name="Submit study").click()
    try:
        page.wait_for_url("**/studies/*", timeout=120 * MS)  # submitting starts a Ray job
    except PageTimeout:
        raise AssertionError(f"not submitted: {page.locator('#submit-error').inner_text()!r}") from None
    return str(page.url.rsplit("/", 1)[1])


def every_control_labelled(page: Any) -> None:
    unlabelled = page.evaluate("""() => [...document.querySelectorAll('input, select, button, summary, a')]
        .filter(e => !(e.labels?.length || e.getAttribute('aria-label') || e.textContent.trim()))
        .map(e => e.outerHTML.slice(0, 80))""")
    assert unlabelled == []


# -- what the page should show, computed from the API's JSON ---------------------------------------

def api_trials(client: httpx.Client, study_id: str) -> list[dict[str, Any]]:
    body = client.get(f"/v1/studies/{study_id}/trials", params={"limit": 500}).json()
    assert body["total"] == len(body["items"])
    return list(body["items"])


def counted(t: dict[str, Any]) -> bool:
    """What counts in the budget (search.study.contract: UNCOUNTED), read off the API's fields."""
    return not t["interrupted"] and not t["skipped"] and t["confirm_of"] is None


def confirmation_text(c: dict[str, Any]) -> str:
    """A confirmed graph's line on its card, from /best's ``confirmation``."""
    seeds = len(c["per_seed"])
    mean = f"mean {100 * c['val_acc_mean']:.2f} % over {seeds} seed{'' if seeds == 1 else 's'}"
    d = c["vs_independent"]
    if d is None or d["excludes_zero"]:  # the verdict itself gives the interval when it excludes 0
        return f"{mean} · {c['verdict']}"

    def signed(x: float | None) -> str:
        return "—" if x is None else f"{'+' if x >= 0 else ''}{100 * x:.2f}"

    return (f"{mean} · Δ {signed(d['mean'])} pp vs independent, {round(100 * d['confidence'])}% CI "
            f"[{signed(d['ci'][0])}, {signed(d['ci'][1])}] · {c['verdict']}")


def best_steps(trials: list[dict[str, Any]]) -> list[str]:
    """The chart's points, as their tooltips: where the best accuracy rose, over trials in the order they ended."""
    over = sorted((t for t in trials if counted(t) and t["state"] in {"complete", "pruned", "fail"}),
                  key=lambda t: (t["completed_at"], t["number"]))
    steps, best = [], None
    for n, t in enumerate(over, start=1):
        acc = t["val_acc"] if t["state"] != "fail" and t["graph"] else None
        if acc is not None and (best is None or acc > best):
            best = acc
            steps.append(f"trial {t['number']}: {acc * 100:.2f} %, the best after {n} finished")
    return steps


# -- the tests --------------------------------------------------------------------------------------

def test_follow_a_study_to_the_end(tab: Tab, server: Server, tmp_path: Path) -> None:
    page = tab.page
    page.goto(server.url + "/")
    tab.sign_in("not-a-token", accepted=False)
    assert page.locator("#sign-in-error").inner_text() == "invalid token"
    assert page.locator("#app").is_hidden()
    tab.refusals(401)

    for _ in range(8):  # the keyboard reaches the token field, and Enter signs in
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "token":
            break
    page.keyboard.type(ALICE)
    page.keyboard.press("Enter")
    page.wait_for_selector("#studies-empty:not([hidden])")
    assert page.evaluate("sessionStorage.getItem('ktg.token')") == ALICE
    assert page.context.cookies() == [] and ALICE not in page.url
    every_control_labelled(page)

    # A bad field comes back from the API's 422 beside that field, in the advanced part too.
    fill(page, {**STUDY, "nodes": "1"})
    page.locator("#advanced summary").click()
    fill(page, {"val_fraction": "2"})
    page.get_by_role("button", name="Submit study").click()
    page.wait_for_selector("#err-nodes:not(:empty)")
    assert "greater than or equal to 2" in page.locator("#err-nodes").inner_text()
    assert "less than 1" in page.locator("#err-val_fraction").inner_text()
    assert page.locator("#f-nodes").get_attribute("aria-invalid") == "true"
    tab.refusals(422)

    fill(page, {**STUDY, "val_fraction": ""})
    fill(page, ADVANCED)
    page.locator("#f-baselines").select_option("independent")
    study_id = submit_study(page)
    alice = server.client({"Authorization": f"Bearer {ALICE}"})
    spec = status(alice, study_id)["spec"]
    assert spec["trials"] == 4 and spec["models"] == ["resnet20"] and spec["grace_epochs"] == 1
    assert (spec["baselines"], spec["confirm_top"], spec["confirm_seeds"]) == ("independent", 1, 2)
    assert spec["gates"] == ["through", "cutoff", "linear", "correct"]  # the defaults the boxes showed

    # While it runs: sort by accuracy (keyboard) and scroll down; refreshes keep both.
    page.wait_for_selector("#refresh-note:has-text('Refreshing')")
    page.locator("th[data-sort=val_acc] button").focus()
    page.keyboard.press("Enter")
    page.wait_for_selector("th[data-sort=val_acc][aria-sort=descending]")
    scrolled = page.evaluate("""() => {
        window.scrollTo(0, Math.floor((document.documentElement.scrollHeight - innerHeight) / 2));
        return window.scrollY; }""")
    assert scrolled > 0
    for _ in range(2):  # two refreshes, each ending with the trials page
        with page.expect_response(lambda r: "/trials?" in r.url, timeout=30 * MS):
            pass
    page.wait_for_timeout(300)
    assert page.evaluate("window.scrollY") == scrolled

    page.locator("#study-state", has_text="succeeded").wait_for(timeout=300 * MS)
    page.wait_for_selector("#refresh-note:has-text('no longer refreshes')")
    page.wait_for_timeout(500)  # the last refresh's other reads land
    calls = tab.api_calls()
    page.wait_for_timeout(4 * MS)  # longer than a refresh period
    assert tab.api_calls() == calls

    done = status(alice, study_id)
    trials = api_trials(alice, study_id)
    assert done["state"] == "succeeded" and page.evaluate("window.scrollY") == scrolled
    shown_counts = dict(zip(page.locator("#counts dt").all_inner_texts(), page.locator("#counts dd").all_inner_texts(),
                            strict=True))
    assert shown_counts == {k: str(v) for k, v in done["trials"].items()}
    assert page.locator("#study-progress").evaluate("p => [p.value, p.max]") == [done["finished"], 4]

    # The trials table, still sorted by accuracy; each row's curve has a point per epoch reported.
    rows = page.locator("#trials tbody tr")
    by_acc = sorted(trials, key=lambda t: (t["val_acc"] is None, -(t["val_acc"] or 0), t["number"]))
    assert [int(n) for n in rows.evaluate_all("rs => rs.map(r => r.dataset.trial)")] == [t["number"] for t in by_acc]
    for t in trials:
        row = page.locator(f"#trials tbody tr[data-trial='{t['number']}']")
        known = [h for h in t["history"] if h["val_acc"] is not None]
        line = row.locator("svg.curve polyline")
        points = len(line.get_attribute("points").split()) if line.count() else min(len(known), 1)
        assert points == len(known) and row.locator("svg.curve circle").count() == min(len(known), 1)
        nodes = sorted(t["graph"]["nodes"], key=lambda n: n["id"]) if t["graph"] else []
        assert row.locator("td.models").inner_text() == (" · ".join(f"{n['id']}: {n['model']}" for n in nodes) or "—")

    # The rungs: how many trials reached each and stopped there.
    epochs_done = [t["epochs_done"] for t in trials if counted(t) and t["epochs_done"] is not None]
    pruned_at = [t["epochs_done"] for t in trials if counted(t) and t["state"] == "pruned"]
    rung_rows = [r.split("\t")[:3] for r in page.locator("#rungs tbody tr").all_inner_texts()]
    assert rung_rows == [[str(r), str(sum(e >= r for e in epochs_done)), str(pruned_at.count(r))] for r in (1, 2)]

    # The best accuracy against trials finished: a point where it rose.
    assert page.locator("svg.best-chart circle title").all_text_contents() == best_steps(trials)

    # The top graphs, drawn, each with its JSON and the command that re-trains it; the confirmed
    # ones (independent among them) lead, with their mean over seeds and their margin.
    best = alice.get(f"/v1/studies/{study_id}/best", params={"k": 3}).json()["items"]
    cards = page.locator(".graph-card")
    assert cards.count() == len(best) >= 1
    confirmed = [b for b in best if b["confirmation"]]
    assert confirmed and best[:len(confirmed)] == confirmed
    assert "independent" in [b["graph"]["meta"].get("baseline") for b in confirmed]
    for card, b in zip(cards.all(), best, strict=True):
        baseline = b["graph"]["meta"].get("baseline")
        assert card.locator("h3").inner_text().split("\n") == [
            f"#{b['rank']} · trial {b['trial']}" + (f" · {baseline}" if baseline else ""), f"{b['val_acc'] * 100:.2f} %"]
        line = card.locator("p.confirmation")
        if b["confirmation"]:
            assert line.inner_text() == confirmation_text(b["confirmation"])
            assert len(b["confirmation"]["per_seed"]) == 3  # the study's seed and the 2 confirmation seeds
        else:
            assert line.count() == 0
        drawn = {int(n) for n in card.locator("svg.ktg-graph g.node").evaluate_all(
            "gs => gs.map(g => g.dataset.node)")}
        assert drawn == {0} | {n["id"] for n in b["graph"]["nodes"]}
        assert card.locator("code").inner_text() == (
            f"ktg train --graph digits-page-{b['rank']}.json --dataset digits --epochs 3 --seed 0")
    with page.expect_download() as saved:
        cards.first.get_by_role("link", name="ktg-graph/1 JSON").click()
    assert saved.value.suggested_filename == "digits-page-1.json"
    assert json.loads(Path(saved.value.path()).read_text()) == best[0]["graph"]

    page.set_viewport_size({"width": 390, "height": 844})  # a phone: nothing wider than the screen
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    every_control_labelled(page)
    if os.environ.get("KTG_STUDY_PAGE_PNG"):  # how docs/study-page.png is made
        page.set_viewport_size({"width": 1280, "height": 800})
        page.screenshot(path=os.environ["KTG_STUDY_PAGE_PNG"], full_page=True)

    # Another tenant: none of it, on the list or by the study's address.
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_selector("#sign-in:not([hidden])")
    assert page.evaluate("sessionStorage.length") == 0
    tab.sign_in(BOB)
    page.wait_for_selector("#study-missing:not([hidden])")
    assert "digits-page" not in page.content()
    tab.refusals(404)
    page.goto(server.url + "/")
    page.wait_for_selector("#studies-empty:not([hidden])")
    assert page.locator("#studies tbody tr").count() == 0
    tab.check_clean()


def test_cancel_asks_first(tab: Tab, server: Server) -> None:
    page = tab.page
    page.goto(server.url + "/")
    tab.sign_in(ALICE)
    fill(page, {**STUDY, "name": "digits-cancel", "trials": "40"})
    study_id = submit_study(page)
    cancel = page.locator("#cancel")
    cancel.click()
    dialog = page.get_by_role("dialog")
    assert dialog.is_visible()
    dialog.get_by_role("button", name="Keep it running").click()
    assert dialog.is_hidden()
    alice = server.client({"Authorization": f"Bearer {ALICE}"})
    assert status(alice, study_id)["state"] in {"queued", "running"}

    cancel.click()
    dialog.get_by_role("button", name="Cancel study").click()
    page.locator("#study-state", has_text="cancelled").wait_for(timeout=30 * MS)
    assert status(alice, study_id)["state"] == "cancelled" and cancel.is_hidden()
    tab.check_clean()

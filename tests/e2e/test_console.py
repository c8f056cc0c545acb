"""The web console (``/ui``) in a real browser: Debian's headless Chromium driven by
Selenium through Debian's chromedriver (scripts/setup-browser.sh), against a real
``keel serve`` with SDK workflows completed, waiting on a signal, failed and cancelled.

The tests look for rendered content (ids in the list, events on the run page), act
through the console's confirmation dialogs and check the API saw it, check that markup
in user-supplied strings stays text, and save screenshots of the main pages under
``target/console-screenshots/``. With ``KEEL_E2E_TOKEN`` set the server requires it; the
console then gets it through sessionStorage, as the token prompt leaves it."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from durable_workflow import Client, activity, workflow
from durable_workflow.errors import WorkflowFailed
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from keel_harness import (
    E2E_TOKEN,
    KeelServer,
    RawApi,
    expect_status,
    running_worker,
    unique,
    wait_for_results,
    wait_until,
)

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "target" / "console-screenshots"
TOKEN_KEY = "keel.console.token"

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
MARKUP = '<img src=x onerror="window.__xss=1">'

# Chromium on a machine without a network: without these it waits on services it
# cannot reach.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1440,1000",
]


# ── workflows and activities (type names are unique to this module) ──────


@activity.defn(name="e2e.console.greet")
def greet(name: str) -> str:
    return f"hello, {name}"


@workflow.defn(name="e2e.console.greeter")
class Greeter:
    # An activity, then a timer: both rows of the run page's timeline.
    def run(self, ctx, name):  # type: ignore[no-untyped-def]
        greeting = yield ctx.schedule_activity("e2e.console.greet", [name], start_to_close_timeout=30)
        yield ctx.sleep(1)
        return {"greeting": greeting}


@workflow.defn(name="e2e.console.parent")
class Parent:
    def run(self, ctx, name):  # type: ignore[no-untyped-def]
        return (yield ctx.start_child_workflow("e2e.console.greeter", [name]))


@workflow.defn(name="e2e.console.waiter")
class Waiter:
    def __init__(self) -> None:
        self.items: list[Any] = []

    @workflow.signal("add")
    def add(self, item: Any) -> None:
        self.items.append(item)

    def run(self, ctx):  # type: ignore[no-untyped-def]
        yield ctx.wait_condition(lambda: len(self.items) >= 1, key="an-item")
        return self.items


@workflow.defn(name="e2e.console.failer")
class Failer:
    def run(self, ctx, name):  # type: ignore[no-untyped-def]
        raise ValueError(f"refusing {name}")


# ── the browser ───────────────────────────────────────────────────────────


class Console:
    """One headless Chromium tab on one server's console."""

    def __init__(self, driver: webdriver.Chrome, server: KeelServer) -> None:
        self.driver = driver
        self.base = server.url
        self.loads = 0

    def open(self, fragment: str) -> None:
        """Loads the console afresh at ``#fragment`` and waits until its page has
        rendered (its data loaded, or its error shown)."""
        self.loads += 1
        self.driver.get(f"{self.base}/ui/?load={self.loads}#{fragment}")
        self.wait_loaded()

    def wait_loaded(self) -> None:
        WebDriverWait(self.driver, 30).until(
            lambda d: d.execute_script(
                "const p = document.querySelector('#main .page');"
                "return !!p && p.dataset.loaded === 'true';"
            ),
            "the console page never finished rendering",
        )

    def text(self, css: str = "#main") -> str:
        return self.driver.find_element(By.CSS_SELECTOR, css).text

    def errors(self) -> list[str]:
        return [e.text for e in self.driver.find_elements(By.CSS_SELECTOR, "#main .notice.error")]

    def click(self, element_id: str) -> None:
        self.driver.find_element(By.ID, element_id).click()

    def wait_for(self, css: str, what: str) -> Any:
        return WebDriverWait(self.driver, 30).until(
            lambda d: (d.find_elements(By.CSS_SELECTOR, css) or [None])[0], what
        )

    def confirm(self) -> str:
        """Clicks the open dialog's confirm button; returns its outcome text once the
        API answered (fails with the dialog's error if it refused)."""
        self.click("confirm-action")
        done = WebDriverWait(self.driver, 30).until(
            lambda d: (d.find_elements(By.CSS_SELECTOR, "#confirm-dialog .notice") or [None])[0],
            "the confirmation dialog never showed the API's answer",
        )
        text = done.text
        assert "ok" in (done.get_attribute("class") or ""), f"the action was refused: {text}"
        self.click("confirm-close")
        return text

    def screenshot(self, name: str) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        # The whole page's height, so a screenshot shows the page and not a window's cut.
        height = self.driver.execute_script("return document.documentElement.scrollHeight")
        self.driver.set_window_size(1440, max(800, min(int(height) + 40, 2400)))
        self.driver.save_screenshot(str(SCREENSHOTS / f"{name}.png"))
        self.driver.set_window_size(1440, 1000)

    def xss_fired(self) -> bool:
        return self.driver.execute_script("return typeof window.__xss !== 'undefined'")


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not path.is_file():
            pytest.fail(f"{path} is missing: run scripts/setup-browser.sh (Debian's {package})", pytrace=False)
    # Selenium Manager must not look for drivers or browsers online: the paths are given.
    os.environ["SE_OFFLINE"] = "true"
    os.environ["SE_AVOID_STATS"] = "true"
    profile = tempfile.mkdtemp(prefix="keel-console-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def console_for(driver: webdriver.Chrome, server: KeelServer, token: str | None = E2E_TOKEN or None) -> Console:
    """A console on ``server``; with a token, put into the tab's sessionStorage first (on
    an asset of the same origin, so no page runs before it is there)."""
    console = Console(driver, server)
    driver.get(f"{server.url}/ui/app.css")
    driver.execute_script("window.sessionStorage.clear()")
    if token:
        driver.execute_script(f"window.sessionStorage.setItem('{TOKEN_KEY}', arguments[0])", token)
    return console


def history_types(api: RawApi, workflow_id: str) -> list[str]:
    described = api.control("GET", f"/workflows/{workflow_id}")
    expect_status(described, 200, f"describe {workflow_id}")
    run_id = described.json()["run_id"]
    page = api.control("GET", f"/workflows/{workflow_id}/runs/{run_id}/history")
    expect_status(page, 200, f"history of {workflow_id}")
    return [str(e.get("event_type")) for e in page.json()["events"]]


def status_of(api: RawApi, workflow_id: str) -> str:
    described = api.control("GET", f"/workflows/{workflow_id}")
    expect_status(described, 200, f"describe {workflow_id}")
    return str(described.json()["status"])


# ── tests ─────────────────────────────────────────────────────────────────


def test_console_lists_reads_and_steers_workflows(keel: KeelServer, api: RawApi, browser: webdriver.Chrome) -> None:
    task_queue = unique("e2e-console")
    ids = {
        "greeter": unique("console-greeter"),
        "parent": unique("console-parent"),
        "failer": unique("console-failer"),
        "to_signal": unique("console-waiter-signal"),
        "to_cancel": unique("console-waiter-cancel"),
    }
    console = console_for(browser, keel)

    async def scenario() -> None:
        async with Client(keel.url) as client:
            async with running_worker(
                client,
                task_queue=task_queue,
                workflows=[Greeter, Parent, Waiter, Failer],
                activities=[greet],
                stop_must_succeed=False,
            ) as worker:
                greeter = await client.start_workflow(
                    workflow_type="e2e.console.greeter", task_queue=task_queue, workflow_id=ids["greeter"], input=["console"]
                )
                parent = await client.start_workflow(
                    workflow_type="e2e.console.parent", task_queue=task_queue, workflow_id=ids["parent"], input=["child"]
                )
                failer = await client.start_workflow(
                    workflow_type="e2e.console.failer", task_queue=task_queue, workflow_id=ids["failer"], input=["it"]
                )
                for key in ("to_signal", "to_cancel"):
                    await client.start_workflow(
                        workflow_type="e2e.console.waiter", task_queue=task_queue, workflow_id=ids[key], input=[]
                    )
                await wait_for_results(client, [greeter, parent], worker=worker, timeout=60)
                with pytest.raises(WorkflowFailed):
                    await wait_for_results(client, [failer], worker=worker, timeout=60)
                for key in ("to_signal", "to_cancel"):
                    wait_until(
                        lambda key=key: "ConditionWaitOpened" in history_types(api, ids[key]),
                        30,
                        f"{ids[key]} waiting on its condition",
                    )
                await asyncio.to_thread(browse_and_act)

    def browse_and_act() -> None:
        # The list: every workflow, its status.
        console.open("/workflows")
        listed = console.text()
        for workflow_id in ids.values():
            assert workflow_id in listed, f"{workflow_id} is not in the list:\n{listed}"
        assert not console.errors(), console.errors()
        console.screenshot("workflows")

        # Filters go to the API: failed ones only, then by id.
        console.open("/workflows?status=failed")
        assert ids["failer"] in console.text() and ids["greeter"] not in console.text()
        console.open(f"/workflows?id={ids['parent']}")
        assert ids["parent"] in console.text() and ids["greeter"] not in console.text()

        # A run: summary, decoded input and result, the timeline, the history.
        console.open(f"/workflows/{ids['greeter']}")
        assert console.text("#run-workflow-id") == ids["greeter"]
        assert json.loads(console.text("#run-input")) == ["console"]
        assert json.loads(console.text("#run-result")) == {"greeting": "hello, console"}
        page = console.text()
        for event in ("WorkflowStarted", "ActivityScheduled", "ActivityCompleted", "TimerScheduled", "TimerFired", "WorkflowCompleted"):
            assert event in page, f"{event} is not on the run page"
        timeline = console.text("table.timeline")
        assert "Activity" in timeline and "e2e.console.greet" in timeline and "Timer" in timeline
        console.screenshot("run")

        # The parent's timeline links its child.
        console.open(f"/workflows/{ids['parent']}")
        child_links = [
            a.get_attribute("href")
            for a in browser.find_elements(By.CSS_SELECTOR, "table.timeline a")
        ]
        assert any("#/workflows/" in (href or "") for href in child_links), child_links

        # The failed run shows its failure.
        console.open(f"/workflows/{ids['failer']}")
        assert "failed" in console.text("h1")
        assert "refusing it" in console.text(), console.text()
        console.screenshot("run-failed")

        # Signal through the confirmation dialog.
        console.open(f"/workflows/{ids['to_signal']}")
        console.click("action-signal")
        browser.find_element(By.ID, "signal-name").send_keys("add")
        browser.find_element(By.ID, "signal-input").send_keys('"from the console"')
        console.confirm()
        wait_until(lambda: status_of(api, ids["to_signal"]) == "completed", 30, "the signalled workflow to complete")
        assert "SignalReceived" in history_types(api, ids["to_signal"])

        # Cancel through the confirmation dialog; Cancel in the dialog first does nothing.
        console.open(f"/workflows/{ids['to_cancel']}")
        console.click("action-cancel")
        console.click("confirm-cancel")
        assert status_of(api, ids["to_cancel"]) not in ("cancelled", "canceled")
        console.click("action-cancel")
        browser.find_element(By.ID, "operation-reason").send_keys("cancelled from the console test")
        console.confirm()
        wait_until(lambda: status_of(api, ids["to_cancel"]) in ("cancelled", "canceled"), 30, "the run to be cancelled")
        console.wait_loaded()
        assert "cancel" in console.text("h1").lower()

        # Task queues: the queue, its pollers.
        console.open("/task-queues")
        assert task_queue in console.text()
        console.screenshot("task-queues")
        console.open(f"/task-queues/{task_queue}")
        assert "Pollers" in console.text() and not console.errors(), console.errors()
        console.screenshot("task-queue")

        console.open("/workers")
        assert task_queue in console.text()

    asyncio.run(scenario())

    schedule_id = unique("console-schedule")
    created = api.control(
        "POST",
        "/schedules",
        json={
            "schedule_id": schedule_id,
            "spec": {"cron_expressions": ["*/5 * * * *"]},
            "action": {"workflow_type": "e2e.console.greeter", "task_queue": task_queue},
        },
    )
    expect_status(created, (200, 201), "create a schedule")

    console.open("/schedules")
    assert schedule_id in console.text()
    console.screenshot("schedules")
    # Trigger through the confirmation dialog: the schedule starts its workflow, and the
    # page lists it among the recent actions.
    console.open(f"/schedules/{schedule_id}")
    assert "Next fire times" in console.text() and not console.errors(), console.errors()
    console.click("schedule-trigger")
    console.confirm()

    def recent_actions() -> list[Any]:
        described = api.control("GET", f"/schedules/{schedule_id}")
        expect_status(described, 200, "describe the schedule")
        return list(described.json().get("info", {}).get("recent_actions") or [])

    [action] = wait_until(recent_actions, 30, "the triggered schedule's recent action")
    console.open(f"/schedules/{schedule_id}")
    assert action["workflow_id"] in console.text("#main"), console.text("#main")
    console.screenshot("schedule")
    console.click("schedule-pause")
    console.confirm()
    described = api.control("GET", f"/schedules/{schedule_id}")
    expect_status(described, 200, "describe the schedule")
    assert described.json()["status"] == "paused", described.json()

    console.open("/namespaces")
    assert "default" in console.text()

    console.open("/doctor")
    console.click("run-doctor")
    console.wait_for("#doctor-report table, #doctor-report .notice", "the doctor report")
    assert not console.errors(), console.errors()
    console.screenshot("doctor")


def test_console_shows_markup_as_text_under_a_strict_csp(keel: KeelServer, api: RawApi, browser: webdriver.Chrome) -> None:
    # Workflow ids are restricted to letters, digits and .:_- by the API; the type, the
    # memo and the input are free text.
    workflow_id = unique("console-markup")
    started = api.control(
        "POST",
        "/workflows",
        json={
            "workflow_id": workflow_id,
            "workflow_type": MARKUP,
            "task_queue": unique("e2e-console-markup"),
            "memo": {"note": MARKUP, MARKUP: "<script>window.__xss=2</script>"},
        },
    )
    expect_status(started, 201, "start a workflow with markup in its type and memo")

    with httpx.Client() as http:
        for path in ("/ui", "/ui/", "/ui/app.js", "/ui/app.css", "/ui/workflows/x", "/ui/missing.js"):
            answer = http.get(f"{keel.url}{path}")
            assert answer.headers.get("content-security-policy") == CSP, path
            assert answer.headers.get("x-content-type-options") == "nosniff", path
        assert http.get(f"{keel.url}/ui/app.js").headers["content-type"].startswith("text/javascript")
        assert http.get(f"{keel.url}/ui/app.css").headers["content-type"].startswith("text/css")
        assert http.get(f"{keel.url}/ui/missing.js").json()["reason"] == "ui_asset_not_found"
        assert http.post(f"{keel.url}/ui/").status_code == 405

    console = console_for(browser, keel)
    console.open("/workflows")
    row = [r for r in browser.find_elements(By.CSS_SELECTOR, "table.workflows tbody tr") if workflow_id in r.text]
    assert row and MARKUP in row[0].text, "the type is shown as the literal text"
    console.open(f"/workflows/{workflow_id}")
    memo = console.text("#run-memo")
    assert MARKUP in memo and "<script>window.__xss=2</script>" in memo, memo
    console.screenshot("markup")
    assert MARKUP in console.text("h1 ~ div, #main")
    assert not console.xss_fired(), "markup from the API ran as code"
    images = browser.execute_script("return document.querySelectorAll('#main img').length")
    assert images == 0, "markup from the API became elements"
    # The browser enforces the policy: an inline script put into the page does not run
    # (the console itself has none).
    browser.execute_script(
        "const s = document.createElement('script');"
        "s.textContent = 'window.__xss = 3';"
        "document.body.appendChild(s);"
    )
    assert not console.xss_fired(), "an inline script ran: the CSP is not in force"


def test_console_asks_for_a_token_and_keeps_it_for_the_tab(keel_factory: Any, browser: webdriver.Chrome) -> None:
    token = "console-" + unique("token")
    server = keel_factory(env={"KEEL_TOKENS": f"operator:{token}"})
    with httpx.Client() as http:
        shell = http.get(f"{server.url}/ui", headers={"Authorization": ""})
        assert shell.status_code == 200, "the console's assets need no token"
        refused = http.get(
            f"{server.url}/api/workflows",
            headers={"X-Durable-Workflow-Control-Plane-Version": "2", "Authorization": ""},
        )
        assert refused.status_code == 401, "the API still requires a token"

    console = console_for(browser, server, token=None)
    browser.get(f"{server.url}/ui/#/workflows")
    dialog_input = console.wait_for("#token-dialog #token-input", "the token prompt")
    dialog_input.send_keys("not-the-token")
    console.click("token-submit")
    # A refused token is dropped and asked for again.
    dialog_input = console.wait_for("#token-dialog #token-input", "the token prompt after a wrong token")
    dialog_input.send_keys(token)
    console.click("token-submit")
    console.wait_loaded()
    assert "workflows in namespace default" in console.text(), console.text()
    assert browser.execute_script(f"return window.sessionStorage.getItem('{TOKEN_KEY}')") == token
    assert browser.execute_script(f"return window.localStorage.getItem('{TOKEN_KEY}')") is None
    # A page the token may read loads without asking again (the tab kept the token).
    console.open("/task-queues")
    assert not browser.find_elements(By.ID, "token-dialog")
    assert not console.errors(), console.errors()

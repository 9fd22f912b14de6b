"""
The Evidence Console in a real browser: Debian's Chromium, headless, driven
by Playwright, against a real ``cavra api`` process with API tokens, whose
webhook receiver on loopback fails and then recovers.

Two stores: one where an operator walks the whole governed flow from an
empty start (deliver, plan, dry run, approve, live run, close the recovery),
and one seeded with failures of several kinds, times and connectors for the
failed-deliveries table, a decision's explanation, errors, roles and the
evidence export. The tests take screenshots of the main screens at 1280 and
390 pixels, into a temporary folder; ``CAVRA_UPDATE_SCREENSHOTS=1`` puts them
in docs/console/, which docs/console.md shows.

Chromium is a Debian package (``apt-get install chromium``, done by
``.ci/run``); without it these tests fail, they never skip.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright
from receivers import ScriptedReceiver, status

from cavra_core.engine import package_hash

pytestmark = pytest.mark.e2e

P = "/runtime/go-pilot/rollback-drill-notifications/acknowledgements/audit-delivery"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
#: The screenshots docs/console.md shows. A test run writes its screenshots
#: to a temporary folder, so the tree stays as it was; with
#: CAVRA_UPDATE_SCREENSHOTS=1 it writes them here, to refresh the docs.
DOCS_SCREENSHOTS = Path(__file__).resolve().parents[1] / "docs" / "console"
SCREENSHOTS = (
    DOCS_SCREENSHOTS
    if os.environ.get("CAVRA_UPDATE_SCREENSHOTS") == "1"
    else Path(tempfile.gettempdir()) / f"cavra-console-{os.getpid()}"
)
WIDE = {"width": 1280, "height": 900}
NARROW = {"width": 390, "height": 844}


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _package(drill: str, generated: datetime) -> dict[str, Any]:
    return {
        "drill_id": drill,
        "generated_at": _stamp(generated),
        "generated_by": "drill-runner",
        "acknowledgements": [
            {
                "notification_id": f"{drill}-n1",
                "role": "incident commander",
                "state": "accepted",
                "acknowledged_at": _stamp(generated + timedelta(seconds=30)),
            }
        ],
    }


class CavraApi:
    """One store, its command line, and a ``cavra api`` process serving it."""

    def __init__(self, home: Path, connectors: str) -> None:
        self.home = home
        (home / "connectors.toml").write_text(textwrap.dedent(connectors))
        self.env = {
            **os.environ,
            "CAVRA_DATABASE_URL": f"sqlite:///{home}/cavra.db",
            "CAVRA_CONNECTORS": str(home / "connectors.toml"),
        }
        self.env.pop("CAVRA_ALLOW_SELF_APPROVAL", None)
        self.process: subprocess.Popen[str] | None = None
        self.base = ""

    def cli(self, *arguments: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cavra_server.cli", *arguments],
            cwd=self.home,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def tokens(self, **names: str) -> dict[str, str]:
        """Make one token per ``name=role``, with the command line, at once."""
        if not (self.home / "cavra.db").exists():
            migrated = self.cli("migrate")
            assert migrated.returncode == 0, migrated.stderr
        making = {
            name: subprocess.Popen(
                [sys.executable, "-m", "cavra_server.cli", "tokens", "create"]
                + ["--role", role, "--name", name],
                cwd=self.home,
                env=self.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for name, role in names.items()
        }
        made = {}
        for name, process in making.items():
            out, errors = process.communicate(timeout=60)
            assert process.returncode == 0, errors
            made[name] = out.strip()
        return made

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cavra_server.cli", "api", "--port", "0"],
            cwd=self.home,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = self.process.stdout.readline()
        if "listening on" not in line:
            self.process.kill()
            raise AssertionError(f"cavra api did not start: {line!r}")
        self.base = line.strip().rsplit(" ", 1)[-1]

    def stop(self) -> str:
        assert self.process is not None
        self.process.terminate()
        try:
            _, errors = self.process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, errors = self.process.communicate()
        return errors

    def call(
        self, method: str, path: str, body: Any = None, *, token: str
    ) -> tuple[int, dict[str, str], bytes]:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {token}"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(
            self.base + path, data=data, method=method, headers=headers
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read()

    def api(self, method: str, path: str, body: Any = None, *, token: str) -> Any:
        code, _, data = self.call(method, P + path, body, token=token)
        assert code < 300, (code, data)
        return json.loads(data)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert CHROMIUM.is_file(), (
        f"{CHROMIUM} is missing: install Debian's Chromium (apt-get install "
        "chromium); the console's browser tests need it and never skip"
    )
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield launched
        launched.close()


class Console:
    """One browser tab on the console, and what went wrong in it."""

    def __init__(self, page: Page, base: str) -> None:
        self.page = page
        self.base = base
        self.errors: list[str] = []
        page.on("pageerror", lambda error: self.errors.append(f"page: {error}"))
        page.on("console", self._console)

    def _console(self, message: Any) -> None:
        # Refused requests (401, 403, 400) are logged by Chromium as errors;
        # they are what some tests provoke. Anything else is a fault.
        if message.type == "error" and "Failed to load resource" not in message.text:
            self.errors.append(message.text)

    def open(self, view: str = "dashboard") -> None:
        self.page.goto(f"{self.base}/console/#{view}")

    def sign_in(self, token: str, role: str) -> None:
        self.open()
        self.page.get_by_label("API token", exact=True).fill(token)
        self.page.get_by_role("button", name="Sign in").click()
        expect(self.page.locator("[data-role]")).to_have_text(role)

    def sign_out(self) -> None:
        self.page.get_by_role("button", name="Sign out").click()
        expect(self.page.get_by_label("API token", exact=True)).to_be_visible()

    def card(self, key: str):
        return self.page.locator(f'[data-card="{key}"] .value')

    def view(self, name: str) -> None:
        self.page.locator(f'[data-view-link="{name}"]').click()
        expect(
            self.page.locator(f'[data-view="{name}"] .load-area').first
        ).not_to_have_attribute("data-state", "loading")

    def dialog(self, title: str):
        return self.page.get_by_role("dialog", name=title)

    def message(self):
        return self.page.locator("#messages .message")

    def shoot(self, name: str, *, whole: bool = True) -> None:
        """
        Save the tab as NAME-WIDTH.png in SCREENSHOTS: the whole page, or with
        a dialog open, a window tall enough to show all of the dialog
        (``whole=False``: the window as it is).
        """
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        size = self.page.viewport_size
        path = str(SCREENSHOTS / f"{name}-{size['width']}.png")
        dialogs = self.page.locator("dialog[open]")
        if not whole:
            self.page.screenshot(path=path, animations="disabled")
            return
        if not dialogs.count():
            self.page.screenshot(path=path, full_page=True, animations="disabled")
            return
        needed = dialogs.last.evaluate("dialog => dialog.scrollHeight") + 48
        self.page.set_viewport_size({**size, "height": max(size["height"], needed)})
        try:
            self.page.screenshot(path=path, animations="disabled")
        finally:
            self.page.set_viewport_size(size)


@pytest.fixture
def tab(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Any]:
    """Open consoles on a server: ``tab(server, viewport)``; faults fail the test."""
    opened: list[tuple[Any, Console]] = []

    def open_tab(server: CavraApi, viewport: dict[str, int] = WIDE) -> Console:
        context = browser.new_context(viewport=viewport, accept_downloads=True)
        page = context.new_page()
        page.set_default_timeout(10_000)
        console = Console(page, server.base)
        opened.append((context, console))
        return console

    yield open_tab
    for context, console in opened:
        context.close()
        assert console.errors == [], console.errors


# -- the stores ---------------------------------------------------------------


@pytest.fixture(scope="module")
def flow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """An empty store whose connector's receiver fails once, then recovers."""
    with ScriptedReceiver() as receiver:
        server = CavraApi(
            tmp_path_factory.mktemp("console-flow"),
            f"""
            [audit-hook]
            type = "webhook"
            url = "{receiver.url}/hook"
            retry_policy = {{ retry_delay_minutes = 0, allow_immediate_retry = true }}
            """,
        )
        receiver.enqueue(status(503), path="/hook")
        # The API makes the store; tokens made once it runs count at once.
        server.start()
        tokens = server.tokens(
            **{"rm-alice": "release_manager", "po-bob": "platform_owner"}
        )
        yield {"server": server, "tokens": tokens, "receiver": receiver}
        errors = server.stop()
        assert "Traceback" not in errors, errors


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """
    A store with 17 failed deliveries recorded through the import:

    - 12 timeouts to ``audit-hook``, a minute apart, three hours ago;
    - to ``archive-hook``: a 503 26 hours ago, another 90 minutes ago, a 400
      two hours ago (suppressed at once), and a connection reset that a
      second attempt recovered;
    - a 401 to ``soc-hook`` half an hour ago, which paused it.

    Then a plan by the release manager and a dry run by the platform owner.
    """
    with ScriptedReceiver() as receiver:
        server = CavraApi(
            tmp_path_factory.mktemp("console-seeded"),
            f"""
            [audit-hook]
            type = "webhook"
            url = "{receiver.url}/hook"

            [archive-hook]
            type = "webhook"
            url = "{receiver.url}/archive"

            [soc-hook]
            type = "webhook"
            url = "{receiver.url}/soc"
            """,
        )
        server.start()
        tokens = server.tokens(
            **{
                "rm-alice": "release_manager",
                "po-bob": "platform_owner",
                "au-dana": "auditor",
                "admin-carol": "admin",
                "soc-erin": "soc_analyst",
                "po-short-lived": "platform_owner",
            }
        )
        now = datetime.now(UTC).replace(microsecond=0)
        packages: list[dict[str, Any]] = []
        attempts: list[dict[str, Any]] = []

        def fail(drill: str, connector: str, ago: timedelta, **outcome: Any) -> str:
            started = now - ago
            package = _package(drill, started - timedelta(minutes=10))
            packages.append(package)
            attempts.append(
                {
                    "package_id": package_hash(package),
                    "connector_id": connector,
                    "outcome": "failed",
                    "started_at": _stamp(started),
                    "finished_at": _stamp(started + timedelta(seconds=1)),
                    **outcome,
                }
            )
            return package_hash(package)

        for index in range(12):
            fail(
                f"drill-timeout-{index:02d}",
                "audit-hook",
                timedelta(hours=3) - timedelta(minutes=index),
                error_class="timeout",
            )
        old = fail("drill-old-503", "archive-hook", timedelta(hours=26), **_http(503))
        recent = fail(
            "drill-recent-503", "archive-hook", timedelta(minutes=90), **_http(503)
        )
        bad = fail("drill-bad-400", "archive-hook", timedelta(hours=2), **_http(400))
        healed = fail(
            "drill-healed",
            "archive-hook",
            timedelta(hours=4),
            error_class="connection_reset",
        )
        fail("drill-soc-401", "soc-hook", timedelta(minutes=30), **_http(401))
        attempts.append(
            {
                "package_id": healed,
                "connector_id": "archive-hook",
                "outcome": "delivered",
                "http_status": 204,
                "started_at": _stamp(now - timedelta(hours=3, minutes=30)),
                "finished_at": _stamp(now - timedelta(hours=3, minutes=30)),
            }
        )
        attempts.sort(key=lambda attempt: attempt["started_at"])
        server.api(
            "POST",
            "/attempts",
            {"packages": packages, "attempts": attempts},
            token=tokens["rm-alice"],
        )
        plan = server.api("POST", "/retry-plan", {}, token=tokens["rm-alice"])
        server.api("POST", "/worker-run", {}, token=tokens["po-bob"])
        yield {
            "server": server,
            "tokens": tokens,
            "now": now,
            "plan": plan,
            "lineages": {
                "old": _lineage(old, "archive-hook"),
                "recent": _lineage(recent, "archive-hook"),
                "bad": _lineage(bad, "archive-hook"),
            },
        }
        errors = server.stop()
        assert "Traceback" not in errors, errors


def _http(code: int) -> dict[str, Any]:
    return {"error_class": "http_status", "http_status": code}


def _lineage(package_id: str, connector_id: str) -> str:
    digest = hashlib.sha256(f"{package_id}\n{connector_id}".encode()).hexdigest()
    return f"lin_{digest[:32]}"


# -- the operator's flow ------------------------------------------------------


def test_an_operator_delivers_plans_dry_runs_approves_and_runs_live(
    flow: dict[str, Any], tab: Any
) -> None:
    """The governed flow from an empty store, with the cards following it."""
    server, tokens = flow["server"], flow["tokens"]
    console = tab(server)
    page = console.page

    console.open()
    expect(page.get_by_label("API token", exact=True)).to_be_focused()
    console.shoot("sign-in")
    console.sign_in(tokens["rm-alice"], "release_manager")
    expect(console.card("retryable")).to_have_text("0")
    expect(console.card("plans")).to_have_text("0")
    expect(page.locator("#plans")).to_have_attribute("data-state", "empty")

    # The release manager delivers a drill's package; the receiver fails it.
    page.get_by_role("button", name="Deliver ack audit").click()
    deliver = console.dialog("Deliver ack audit")
    deliver.get_by_label("Drill id").fill("drill-console-1")
    deliver.get_by_label("Notification id").fill("n-1")
    deliver.get_by_label("Role", exact=True).fill("incident commander")
    deliver.get_by_label("State").select_option("escalated")
    expect(deliver.get_by_label("audit-hook (webhook, active)")).to_be_checked()
    console.shoot("deliver")
    deliver.get_by_role("button", name="Deliver", exact=True).click()
    expect(console.message()).to_contain_text("audit-hook: failed (http_status)")
    expect(console.card("retryable")).to_have_text("1")

    # A plan with a value the API refuses shows why, at the field.
    page.get_by_role("button", name="Plan audit retry").click()
    plan_form = console.dialog("Plan audit retry")
    delay = plan_form.get_by_label("Backoff delay (minutes)")
    delay.fill("0")
    plan_form.get_by_role("button", name="Make the plan").click()
    refusal = plan_form.get_by_role("alert")
    expect(refusal).to_contain_text("Invalid request (400)")
    expect(refusal).to_contain_text("allow_immediate_retry set to true")
    expect(delay).to_have_attribute("aria-invalid", "true")
    console.shoot("plan-refused")
    delay.fill("")
    plan_form.get_by_role("button", name="Make the plan").click()
    expect(console.message()).to_contain_text("1 decisions (1 retry, 0 wait")
    expect(console.card("plans")).to_have_text("1")

    # The platform owner dry-runs the worker: nothing is sent.
    console.sign_out()
    console.sign_in(tokens["po-bob"], "platform_owner")
    page.get_by_role("button", name="Run audit worker").click()
    worker = console.dialog("Run audit worker")
    expect(worker.get_by_label(re.compile("^Dry run"))).to_be_checked()
    worker.get_by_role("button", name="Run the worker").click()
    dry = page.get_by_role("dialog", name=re.compile("^Dry run wr_"))
    expect(dry.locator("[data-lineage]")).to_have_count(1)
    expect(dry.get_by_text("would_deliver")).to_be_visible()
    dry.get_by_role("button", name=re.compile("^Close")).click()
    expect(console.card("runs")).to_have_text("1")
    expect(console.card("dry-runs")).to_have_text("1")
    expect(console.card("selected")).to_have_text("1")
    assert len(flow["receiver"].requests) == 1

    # ... reviews the plan and approves its retry decision ...
    page.get_by_role("button", name=re.compile("^Review and approve: plan")).click()
    review = page.get_by_role("dialog", name=re.compile("^Retry plan rp_"))
    expect(review.locator(".explanation")).to_contain_text("failed with HTTP 503")
    review.get_by_role("checkbox", name=re.compile("^audit-hook · lin_")).check()
    review.get_by_label("Reason").fill("The receiver was redeployed; send it again.")
    console.shoot("approve")
    review.get_by_role("button", name="Approve", exact=True).click()
    expect(console.message()).to_contain_text("recorded for 1 decisions")
    expect(page.locator("#approvals [data-approval]")).to_have_count(1)

    # ... makes a recovery playbook for the failing connector ...
    page.get_by_role("button", name="Recovery playbook").first.click()
    playbook_form = console.dialog("Recovery playbook")
    playbook_form.get_by_label("Failures that make a connector an item").fill("1")
    playbook_form.get_by_role("button", name="Make the playbook").click()
    playbook = page.get_by_role("dialog", name=re.compile("^Recovery playbook pb_"))
    expect(playbook.locator('[data-step="verify_recovery"]')).to_be_visible()
    playbook.get_by_role("button", name=re.compile("^Close")).click()

    # ... and runs the worker live, after confirming what it will send.
    page.get_by_role("button", name="Run audit worker").click()
    worker = console.dialog("Run audit worker")
    worker.get_by_label(re.compile("^Dry run")).uncheck()
    worker.get_by_role("button", name="Run the worker").click()
    confirm = console.dialog("Confirm the live run")
    expect(confirm.locator('[data-approved="true"]')).to_have_count(1)
    expect(confirm.locator(".standing")).to_contain_text("approved (apv_")
    console.shoot("confirm-live-run")
    assert len(flow["receiver"].requests) == 1
    confirm.get_by_role("button", name="Run live: re-deliver 1").click()
    live = page.get_by_role("dialog", name=re.compile("^Live run wr_"))
    expect(live.locator("tbody tr").filter(has_text="delivered")).to_have_count(2)
    console.shoot("live-run")
    live.get_by_role("button", name=re.compile("^Close")).click()
    expect(console.message()).to_contain_text("1 retries sent, 1 delivered")
    expect(console.card("executed-runs")).to_have_text("1")
    expect(console.card("delivered-retries")).to_have_text("1")
    expect(console.card("retryable")).to_have_text("0")
    expect(console.card("runs")).to_have_text("3")
    assert len(flow["receiver"].requests) == 2
    console.shoot("dashboard")

    # The worker history lists the three runs; the live one has its execution.
    console.view("runs")
    expect(page.locator("#runs-table [data-run]")).to_have_count(3)
    console.shoot("worker-history")

    # The recovery is closed as resolved, citing the delivering execution.
    console.view("recovery")
    page.get_by_role("button", name="Close recovery: audit-hook").click()
    closing = console.dialog("Close recovery: audit-hook")
    closing.get_by_label("Closure state").select_option("resolved")
    closing.get_by_label("External reference").fill("INC-4711")
    closing.get_by_role("checkbox", name=re.compile("^ex_")).check()
    console.shoot("close-recovery")
    closing.get_by_role("button", name="Record the closure").click()
    expect(console.message()).to_contain_text("is now resolved")
    expect(page.locator('[data-card="recovery-closed"] .value')).to_have_text("1")
    console.shoot("recovery")

    console.view("evidence")
    expect(page.locator("#chain-status [data-intact]")).to_have_attribute(
        "data-intact", "true"
    )
    console.shoot("evidence")


# -- failed deliveries --------------------------------------------------------


def _rows(console: Console):
    return console.page.locator("#failed-table tbody tr")


def _apply(console: Console, **filters: str) -> None:
    form = console.page.locator("#failed-filters")
    form.get_by_role("button", name="Clear").click()
    expect(console.page.locator("#failed-table")).not_to_have_attribute(
        "data-state", "loading"
    )
    for label, value in filters.items():
        control = form.get_by_label(label)
        if control.evaluate("element => element.tagName") == "SELECT":
            control.select_option(value)
        else:
            control.fill(value)
    form.get_by_role("button", name="Apply filters").click()
    expect(console.page.locator("#failed-table")).not_to_have_attribute(
        "data-state", "loading"
    )


def test_the_failed_deliveries_filter_and_page(
    seeded: dict[str, Any], tab: Any
) -> None:
    console = tab(seeded["server"])
    console.sign_in(seeded["tokens"]["au-dana"], "auditor")
    console.view("failed")
    now = seeded["now"]

    expect(_rows(console)).to_have_count(17)
    expect(console.page.get_by_role("button", name="Next page")).to_be_disabled()
    console.shoot("failed-deliveries")

    _apply(console, **{"Rows per page": "10"})
    expect(_rows(console)).to_have_count(10)
    console.page.get_by_role("button", name="Next page").click()
    expect(_rows(console)).to_have_count(7)
    expect(console.page.locator("#failed-table .page-number")).to_have_text("Page 2")
    console.page.get_by_role("button", name="Previous page").click()
    expect(_rows(console)).to_have_count(10)

    _apply(console, Connector="archive-hook")
    expect(_rows(console)).to_have_count(4)
    _apply(console, **{"Failure class": "timeout"})
    expect(_rows(console)).to_have_count(12)
    _apply(console, Connector="archive-hook", **{"Failure class": "http_status"})
    expect(_rows(console)).to_have_count(3)
    _apply(console, **{"Lineage state now": "suppressed"})
    expect(_rows(console)).to_have_count(1)
    expect(_rows(console)).to_contain_text("400")
    _apply(console, **{"Lineage state now": "recovered"})
    expect(_rows(console)).to_contain_text("connection_reset")
    _apply(
        console,
        **{
            "Started from (UTC)": (now - timedelta(hours=27)).strftime(
                "%Y-%m-%dT%H:%M:%S"
            ),
            "Started before (UTC)": (now - timedelta(hours=25)).strftime(
                "%Y-%m-%dT%H:%M:%S"
            ),
        },
    )
    expect(_rows(console)).to_have_count(1)
    expect(_rows(console).first).to_have_attribute(
        "data-lineage", seeded["lineages"]["old"]
    )
    _apply(console, Connector="soc-hook", **{"Failure class": "timeout"})
    expect(console.page.locator("#failed-table")).to_have_attribute(
        "data-state", "empty"
    )
    expect(console.page.locator("#failed-table")).to_contain_text(
        "No failed delivery matches these filters."
    )


def test_a_refused_filter_is_shown_as_the_api_words_it(
    seeded: dict[str, Any], tab: Any
) -> None:
    console = tab(seeded["server"])
    console.sign_in(seeded["tokens"]["au-dana"], "auditor")
    console.view("failed")

    _apply(
        console,
        **{
            "Started from (UTC)": "2026-01-02T00:00:00",
            "Started before (UTC)": "2026-01-01T00:00:00",
        },
    )

    area = console.page.locator("#failed-table")
    expect(area).to_have_attribute("data-state", "error")
    expect(area.locator(".problem")).to_contain_text("(400)")
    expect(area.locator(".problem li")).to_contain_text("until")


# -- a decision explained -----------------------------------------------------


def test_a_failed_delivery_opens_its_decision_explained(
    seeded: dict[str, Any], tab: Any
) -> None:
    console = tab(seeded["server"])
    console.sign_in(seeded["tokens"]["rm-alice"], "release_manager")
    console.view("failed")
    recent = seeded["lineages"]["recent"]

    console.page.get_by_role("button", name=f"Explain lineage {recent}").click()

    lineage = console.dialog(f"Lineage {recent}")
    decision = lineage.locator('[data-decision="decision"]')
    expect(decision.locator(".explanation")).to_contain_text("failed with HTTP 503")
    expect(decision).to_contain_text("retry_due")
    expect(decision.locator('[data-fact="retry_count"] dd')).to_have_text("1")
    expect(decision.locator('[data-fact="max_retry_attempts"] dd')).to_have_text("3")
    expect(decision.locator('[data-fact="retry_delay_seconds"] dd')).to_have_text(
        "900 s (15 min)"
    )
    expect(decision.locator('[data-fact="failed_status_codes"] dd')).to_have_text("503")
    expect(decision.locator('[data-fact="window"] time')).to_have_count(2)
    expect(lineage.locator('[data-decision="plan-decision"]')).to_contain_text("retry")
    chart = lineage.locator('.timeline svg[role="img"]')
    expect(chart).to_have_attribute(
        "aria-label", re.compile("1 attempts .*retry window from")
    )
    expect(chart.locator(".window-band")).to_have_count(1)
    expect(chart.locator(".attempt-failed")).to_have_count(1)
    alternative = lineage.locator(".timeline table")
    expect(alternative.locator("caption")).to_have_text(
        "Attempts and retry window of this lineage"
    )
    expect(alternative).to_contain_text("Retry window opens")
    console.shoot("lineage")

    lineage.get_by_role("button", name=re.compile("^Close")).click()
    bad = seeded["lineages"]["bad"]
    console.page.get_by_role("button", name=f"Explain lineage {bad}").click()
    suppressed = console.dialog(f"Lineage {bad}").locator('[data-decision="decision"]')
    expect(suppressed).to_contain_text("permanent_failure")
    expect(suppressed.locator('[data-fact="failed_status_codes"] dd')).to_have_text(
        "400"
    )
    expect(suppressed.locator('[data-fact="window"] dd')).to_contain_text("none")


def test_the_activity_chart_shows_failures_and_recoveries_per_connector(
    seeded: dict[str, Any], tab: Any
) -> None:
    console = tab(seeded["server"])
    console.sign_in(seeded["tokens"]["au-dana"], "auditor")

    activity = console.page.locator("#activity")
    expect(activity).to_have_attribute("data-state", "ready")
    archive = activity.locator('[data-connector="archive-hook"] svg[role="img"]')
    expect(archive).to_have_attribute(
        "aria-label", re.compile("^archive-hook: 3 failed attempts and 1 recoveries")
    )
    expect(
        activity.locator('[data-connector="audit-hook"] .bar-failed')
    ).not_to_have_count(0)
    expect(activity.locator(".chart-table caption")).to_contain_text("by connector")

    console.page.locator("#activity-connector").select_option("soc-hook")
    console.page.locator("#activity-form").get_by_role("button", name="Show").click()
    expect(activity.locator("figure.connector-activity")).to_have_count(1)
    expect(activity.locator('[data-connector="soc-hook"]')).to_contain_text("1 failed")


# -- errors, roles and tokens -------------------------------------------------


def test_approving_ones_own_plan_is_refused_with_the_apis_message(
    seeded: dict[str, Any], tab: Any
) -> None:
    console = tab(seeded["server"])
    console.sign_in(seeded["tokens"]["admin-carol"], "admin")
    console.page.get_by_role("button", name="Plan audit retry").click()
    console.dialog("Plan audit retry").get_by_role(
        "button", name="Make the plan"
    ).click()
    expect(console.message()).to_contain_text("Plan rp_")
    expect(console.page.locator("#plans [data-plan]")).to_have_count(2)

    console.page.locator("#plans [data-plan]").first.get_by_role("button").click()
    review = console.page.get_by_role("dialog", name=re.compile("^Retry plan rp_"))
    review.get_by_label(
        "Every retry decision of the plan (all_retry_decisions)"
    ).check()
    review.get_by_label("Reason").fill("My own plan")
    review.get_by_role("button", name="Approve", exact=True).click()

    alert = review.get_by_role("alert")
    expect(alert).to_contain_text("Forbidden (403)")
    expect(alert).to_contain_text("four-eyes")
    console.shoot("approval-refused", whole=False)


def test_an_auditor_sees_no_action_and_exports_the_evidence_log(
    seeded: dict[str, Any], tab: Any
) -> None:
    server = seeded["server"]
    console = tab(server)
    console.sign_in(seeded["tokens"]["au-dana"], "auditor")

    page = console.page
    expect(page.locator("#no-actions")).to_contain_text("reads only")
    for name in (
        "Deliver ack audit",
        "Plan audit retry",
        "Import attempts",
        "Run audit worker",
        "Recovery playbook",
    ):
        expect(page.get_by_role("button", name=name)).to_have_count(0)
    page.locator("#plans [data-plan]").first.get_by_role(
        "button", name="Review"
    ).click()
    review = page.get_by_role("dialog", name=re.compile("^Retry plan rp_"))
    expect(review.locator(".decision-item").first).to_be_visible()
    expect(review.get_by_role("checkbox")).to_have_count(0)
    expect(review.get_by_role("button", name="Approve")).to_have_count(0)
    review.get_by_role("button", name=re.compile("^Close")).click()
    expect(page.get_by_role("button", name=re.compile("^Revoke"))).to_have_count(0)
    console.shoot("dashboard-auditor")
    console.view("recovery")
    expect(
        page.get_by_role("button", name=re.compile("^Close recovery"))
    ).to_have_count(0)

    console.view("evidence")
    expect(page.locator("#chain-status [data-intact]")).to_have_attribute(
        "data-intact", "true"
    )
    with page.expect_download() as downloading:
        page.get_by_role("button", name="Export evidence (.jsonl)").click()
    download = downloading.value
    exported = Path(download.path()).read_bytes()

    assert download.suggested_filename.endswith(".jsonl")
    expect(console.message()).to_contain_text("Exported")
    made = server.cli("evidence", "export")
    assert made.returncode == 0, made.stderr
    *entries, closing = exported.decode("utf-8").splitlines()
    *expected, expected_closing = made.stdout.splitlines()
    # The same lines, byte for byte, but for the time of the export.
    assert entries == expected
    assert [json.loads(line)["sequence"] for line in entries] == list(
        range(1, len(entries) + 1)
    )
    trailer = json.loads(closing)["export"]
    assert list(trailer) == list(json.loads(expected_closing)["export"])
    assert trailer["entry_count"] == len(entries)
    assert trailer["last_entry_hash"] == json.loads(entries[-1])["entry_hash"]
    assert re.fullmatch(r"[0-9T:-]{19}(\.[0-9]{6})?Z", trailer["exported_at"])
    checked = server.home / "console-export.jsonl"
    checked.write_bytes(exported)
    assert server.cli("evidence", "verify", str(checked)).returncode == 0


def test_a_release_manager_may_deliver_and_plan_but_not_approve_or_run(
    seeded: dict[str, Any], tab: Any
) -> None:
    console = tab(seeded["server"])
    console.sign_in(seeded["tokens"]["rm-alice"], "release_manager")

    page = console.page
    expect(page.get_by_role("button", name="Deliver ack audit")).to_be_visible()
    expect(page.get_by_role("button", name="Plan audit retry")).to_be_visible()
    expect(page.get_by_role("button", name="Import attempts")).to_be_visible()
    expect(page.get_by_role("button", name="Run audit worker")).to_have_count(0)
    expect(page.get_by_role("button", name="Recovery playbook")).to_have_count(0)
    expect(
        page.get_by_role("button", name=re.compile("^Review and approve"))
    ).to_have_count(0)
    expect(page.locator("#plans [data-plan]").first.get_by_role("button")).to_have_text(
        "Review"
    )
    expect(page.get_by_role("button", name=re.compile("^Resume"))).to_have_count(0)


def test_a_soc_analyst_may_make_playbooks_and_resume_nothing(
    seeded: dict[str, Any], tab: Any
) -> None:
    console = tab(seeded["server"])
    console.sign_in(seeded["tokens"]["soc-erin"], "soc_analyst")

    page = console.page
    expect(page.get_by_role("button", name="Recovery playbook")).to_be_visible()
    expect(page.get_by_role("button", name="Deliver ack audit")).to_have_count(0)
    expect(page.get_by_role("button", name=re.compile("^Resume"))).to_have_count(0)


def test_the_token_stays_in_session_storage_and_a_bad_one_is_refused(
    seeded: dict[str, Any], tab: Any
) -> None:
    server = seeded["server"]
    console = tab(server)
    page = console.page

    console.open()
    page.get_by_label("API token", exact=True).fill("cavra_not-a-token")
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#sign-in-reason")).to_contain_text("refused the token")
    expect(page.locator("#app")).to_be_hidden()
    console.shoot("sign-in-refused")

    token = seeded["tokens"]["po-bob"]
    console.sign_in(token, "platform_owner")
    stored = page.evaluate(
        "() => ({session: {...sessionStorage}, local: {...localStorage}, "
        "cookie: document.cookie, url: location.href})"
    )
    assert token in stored["session"].values()
    assert stored["local"] == {}
    assert stored["cookie"] == ""
    assert token not in stored["url"]
    expect(page.get_by_label("API token", exact=True)).to_be_hidden()


def test_a_revoked_token_sends_the_user_back_to_the_prompt(
    seeded: dict[str, Any], tab: Any
) -> None:
    server = seeded["server"]
    console = tab(server)
    console.sign_in(seeded["tokens"]["po-short-lived"], "platform_owner")

    assert server.cli("tokens", "revoke", "po-short-lived").returncode == 0
    console.page.get_by_role("button", name="Refresh").click()

    expect(console.page.get_by_label("API token", exact=True)).to_be_visible()
    expect(console.page.locator("#sign-in-reason")).to_contain_text("Sign in again")
    assert console.page.evaluate("() => sessionStorage.length") == 0


def test_without_tokens_each_action_asks_for_the_actors_name(
    tab: Any, tmp_path: Path
) -> None:
    with ScriptedReceiver() as receiver:
        server = CavraApi(
            tmp_path,
            f"""
            [audit-hook]
            type = "webhook"
            url = "{receiver.url}/hook"
            """,
        )
        server.start()
        try:
            console = tab(server)
            page = console.page
            console.open()
            expect(page.locator("#session-who")).to_contain_text(
                "No API token is configured"
            )
            expect(page.get_by_role("button", name="Sign out")).to_be_hidden()

            page.get_by_role("button", name="Plan audit retry").click()
            dialog = console.dialog("Plan audit retry")
            dialog.get_by_role("button", name="Make the plan").click()
            expect(dialog.get_by_role("alert")).to_contain_text("enter your name")
            name = dialog.get_by_label("Your name, recorded as the actor")
            expect(name).to_have_attribute("aria-invalid", "true")
            name.fill("release-manager")
            dialog.get_by_role("button", name="Make the plan").click()
            expect(console.message()).to_contain_text("Plan rp_")
            expect(page.locator("#plans [data-plan]")).to_contain_text(
                "release-manager"
            )
        finally:
            errors = server.stop()
        assert "Traceback" not in errors, errors


# -- keyboard, screens and headers --------------------------------------------


def test_dialogs_keep_the_focus_and_close_on_escape(
    seeded: dict[str, Any], tab: Any
) -> None:
    console = tab(seeded["server"])
    console.sign_in(seeded["tokens"]["po-bob"], "platform_owner")
    page = console.page
    opener = page.get_by_role("button", name="Run audit worker")
    opener.focus()

    page.keyboard.press("Enter")
    dialog = console.dialog("Run audit worker")
    expect(dialog).to_be_visible()
    inside = []
    for _ in range(8):
        page.keyboard.press("Tab")
        inside.append(page.evaluate("() => !!document.activeElement.closest('dialog')"))
    page.keyboard.press("Shift+Tab")
    inside.append(page.evaluate("() => !!document.activeElement.closest('dialog')"))
    outline = page.evaluate(
        "() => getComputedStyle(document.activeElement).outlineStyle"
    )
    page.keyboard.press("Escape")

    assert all(inside)
    assert outline != "none"
    expect(dialog).to_have_count(0)
    expect(opener).to_be_focused()


def test_the_console_reads_at_390_pixels(seeded: dict[str, Any], tab: Any) -> None:
    console = tab(seeded["server"], NARROW)
    console.sign_in(seeded["tokens"]["admin-carol"], "admin")
    page = console.page

    expect(console.card("retryable")).not_to_have_text("")
    expect(page.locator("#activity")).not_to_have_attribute("data-state", "loading")
    console.shoot("dashboard")
    fits = "() => document.documentElement.scrollWidth <= window.innerWidth"
    assert page.evaluate(fits)
    console.view("failed")
    assert page.evaluate(fits)
    console.shoot("failed-deliveries")
    page.locator("#failed-table tbody tr").first.get_by_role("button").click()
    expect(page.locator("dialog .timeline svg")).to_be_visible()
    assert page.evaluate(fits)
    console.shoot("lineage")
    page.keyboard.press("Escape")
    console.view("runs")
    assert page.evaluate(fits)
    console.view("evidence")
    assert page.evaluate(fits)
    console.shoot("evidence")


def test_the_console_files_carry_a_same_origin_content_security_policy(
    seeded: dict[str, Any],
) -> None:
    server = seeded["server"]
    token = seeded["tokens"]["au-dana"]

    answers = {
        path: server.call("GET", path, token=token)
        for path in ("/console/", "/console/app.js", "/console/app.css")
    }

    for path, (code, headers, _) in answers.items():
        assert code == 200, path
        policy = headers["Content-Security-Policy"]
        assert "default-src 'self'" in policy, path
        assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
        assert "frame-ancestors 'none'" in policy
    page = answers["/console/"][2].decode("utf-8")
    assert re.findall(r"<script(?![^>]*\bsrc=)", page) == []
    assert not re.search(r"\son[a-z]+=|\sstyle=", page)
    assert answers["/console/app.js"][1]["Content-Type"].split(";")[0] in (
        "text/javascript",
        "application/javascript",
    )


def test_a_platform_owner_denies_revokes_and_resumes(
    seeded: dict[str, Any], tab: Any
) -> None:
    console = tab(seeded["server"])
    console.sign_in(seeded["tokens"]["po-bob"], "platform_owner")
    page = console.page
    plan_id = seeded["plan"]["retry_plan_id"]

    page.get_by_role("button", name=f"Review and approve: plan {plan_id}").click()
    review = console.dialog(f"Retry plan {plan_id}")
    review.get_by_role("checkbox", name=re.compile("^audit-hook · lin_")).first.check()
    review.get_by_label("Reason").fill("This drill's evidence was sent by hand.")
    review.get_by_role("button", name="Deny").click()
    expect(console.message()).to_contain_text("Denial apv_")
    denial = page.locator("#approvals [data-approval]").first
    expect(denial).to_contain_text("deny")

    denial.get_by_role("button", name=re.compile("^Revoke apv_")).click()
    revoke = page.get_by_role("dialog", name=re.compile("^Revoke apv_"))
    revoke.get_by_role("button", name="Revoke", exact=True).click()
    expect(revoke.get_by_role("alert")).to_contain_text("Give a reason")
    revoke.get_by_label("Reason").fill("Denied the wrong drill.")
    revoke.get_by_role("button", name="Revoke", exact=True).click()
    expect(console.message()).to_contain_text("revoked")
    expect(page.locator("#approvals [data-approval]").first).to_contain_text("revoked")

    paused = page.locator('#connectors [data-connector="soc-hook"]')
    expect(paused).to_contain_text("paused")
    paused.get_by_role("button", name="Resume soc-hook").click()
    console.dialog("Resume soc-hook").get_by_role(
        "button", name="Resume soc-hook", exact=True
    ).click()
    expect(console.message()).to_contain_text("soc-hook is active again")
    expect(console.card("paused")).to_have_text("0")


def test_a_release_manager_imports_attempts_made_elsewhere(
    flow: dict[str, Any], tab: Any
) -> None:
    """A file read in the browser is recorded; a bad field is refused at its pointer."""
    server, tokens = flow["server"], flow["tokens"]
    console = tab(server)
    console.sign_in(tokens["rm-alice"], "release_manager")
    page = console.page
    started = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    package = _package("drill-imported", started - timedelta(minutes=5))
    attempt = {
        "package_id": package_hash(package),
        "connector_id": "audit-hook",
        "outcome": "failed",
        **_http(503),
        "started_at": _stamp(started),
        "finished_at": _stamp(started + timedelta(seconds=2)),
    }
    lineage = _lineage(package_hash(package), "audit-hook")

    page.get_by_role("button", name="Import attempts").click()
    dialog = console.dialog("Import attempts")
    document = dialog.get_by_label("Attempts document (JSON)")
    document.fill('{"attempts": [')
    dialog.get_by_role("button", name="Import attempts", exact=True).click()
    expect(dialog.get_by_role("alert")).to_contain_text("not valid JSON")
    expect(document).to_have_attribute("aria-invalid", "true")
    dialog.get_by_label("Read a .json file").set_input_files(
        {
            "name": "attempts.json",
            "mimeType": "application/json",
            "buffer": json.dumps(
                {"packages": [package], "attempts": [attempt]}
            ).encode(),
        }
    )
    expect(document).to_have_value(re.compile('"drill-imported"'))
    dialog.get_by_role("button", name="Import attempts", exact=True).click()
    expect(console.message()).to_contain_text(
        "1 attempts recorded, in 1 lineages now 1 failed"
    )
    result = console.dialog("Imported 1 attempts")
    expect(result.locator("#import-result tbody tr")).to_contain_text(lineage)
    expect(result.locator("#import-result tbody tr")).to_contain_text("failed")
    result.get_by_role("button", name=re.compile("^Close")).click()
    console.view("failed")
    expect(page.locator(f'#failed-table tr[data-lineage="{lineage}"]')).to_contain_text(
        "503"
    )

    console.view("dashboard")
    page.get_by_role("button", name="Import attempts").click()
    dialog = console.dialog("Import attempts")
    bad = {**attempt, "http_status": 700, "started_at": _stamp(started)}
    dialog.get_by_label("Attempts document (JSON)").fill(
        json.dumps({"attempts": [bad]}, indent=2)
    )
    dialog.get_by_role("button", name="Import attempts", exact=True).click()
    alert = dialog.get_by_role("alert")
    expect(alert).to_contain_text("(400)")
    expect(alert.locator("code")).to_contain_text(["/attempts/0/http_status"])
    expect(dialog.locator(".field-problem")).to_contain_text("/attempts/0/http_status")
    console.shoot("import-attempts")

"""The console end to end in headless Chromium (Debian's ``chromium``, driven by Playwright): log in,
create a key and call with it from the official ``openai`` SDK, watch its spend appear, revoke it and
see the SDK get 401, stream an answer from the embedded model in the playground, and visit every page
with no console errors. ``TOKENWAY_SCREENSHOTS=docs/console`` saves a screenshot of each page there."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import orjson
import pytest

from tests.console_support import MASTER, console_config
from tests.fakes import FakeUpstream
from tests.jobs_support import batch_lines
from tests.servers import running_app

CHROMIUM = os.environ.get("TOKENWAY_CHROMIUM", "/usr/bin/chromium")
if not os.environ.get("CI"):  # CI installs both (.ci/run, the dev extra): there a missing one fails the run
    if not Path(CHROMIUM).exists():
        pytest.skip("needs Debian's chromium (apt-get install chromium; .ci/run installs it)", allow_module_level=True)
    pytest.importorskip("playwright.sync_api")

from playwright.sync_api import Browser, Page, expect, sync_playwright  # noqa: E402

SCREENSHOTS = os.environ.get("TOKENWAY_SCREENSHOTS")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    upstream = FakeUpstream().start()
    with running_app(console_config(upstream, local=True), master_key=MASTER,
                     data_dir=Path(tmp_path_factory.mktemp("console-browser"))) as (url, _):
        yield url
    upstream.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser, gateway: str) -> Iterator[Page]:
    context = browser.new_context(base_url=gateway, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda message: errors.append(f"console: {message.text}") if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(f"pageerror: {error}"))
    yield page
    context.close()
    assert errors == [], errors  # no console errors on any page the test visited


def shot(page: Page, name: str) -> None:
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SCREENSHOTS) / f"{name}.png"), full_page=True)


@contextmanager
def traffic(gateway: str) -> Iterator[None]:
    """Streamed calls from the SDK (master key) in a thread, until the block ends."""
    done = threading.Event()

    def call() -> None:
        client = openai.OpenAI(base_url=gateway + "/v1", api_key=MASTER, max_retries=0, timeout=30)
        while not done.is_set():
            stream = client.chat.completions.create(model="fake", stream=True,
                                                    messages=[{"role": "user", "content": "hi"}])
            for _ in stream:
                pass
            done.wait(0.05)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(10)


def log_in(page: Page) -> None:
    page.goto("/ui/")
    expect(page).to_have_url(re.compile(r"/ui/login$"))
    shot(page, "login")
    page.get_by_label("Master key").fill(MASTER)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(re.compile(r"/ui/$"))
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()


def test_a_wrong_key_is_refused_on_the_login_page(browser: Browser, gateway: str) -> None:
    # Its own page: the refused POST is one console error Chromium always logs ("Failed to load resource").
    context = browser.new_context(base_url=gateway)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto("/ui/login")
    page.get_by_label("Master key").fill("not-the-key")
    page.get_by_label("Master key").press("Enter")
    expect(page.get_by_role("alert")).to_have_text("That is not the master key.")
    expect(page.get_by_label("Master key")).to_be_focused()
    expect(page).to_have_url(re.compile(r"/ui/login$"))
    context.close()
    assert errors == []


def test_a_key_from_creation_to_spend_to_revocation(page: Page, gateway: str) -> None:
    log_in(page)
    page.get_by_role("link", name="Keys").click()
    create = page.locator("#create-key")
    create.get_by_label("Name").fill("sdk-app")
    create.get_by_label("Team").fill("web")
    create.get_by_label("Budget (USD)").fill("5")
    create.get_by_role("button", name="Create key").click()
    secret = page.locator("#new-secret")
    expect(secret).to_contain_text("tw-")
    key = secret.inner_text().strip()
    row = page.get_by_role("row").filter(has_text="sdk-app")
    expect(row).to_contain_text("active")
    key_id = row.locator("code").inner_text()

    client = openai.OpenAI(base_url=gateway + "/v1", api_key=key, max_retries=0, timeout=30)
    for _ in range(3):
        answer = client.chat.completions.create(model="fake", messages=[{"role": "user", "content": "hi"}])
        assert answer.choices[0].message.content == "Hello from the fake upstream."

    page.get_by_role("link", name="Usage & spend").click()
    page.get_by_label("Group by").select_option("key")
    spend_row = page.get_by_role("row").filter(has_text=key_id)
    expect(spend_row).to_contain_text("$0.000057")  # 3 x (7 prompt x $1 + 6 completion x $2 per 1M)
    expect(spend_row).to_contain_text("3")
    with page.expect_download() as download:
        page.get_by_role("button", name="Export CSV").click()
    assert f"{key_id},3,21,18,0,0.000057" in Path(download.value.path()).read_text()
    shot(page, "usage")

    page.get_by_role("link", name="Overview").click()
    expect(page.locator("#stat-spend")).to_have_text(re.compile(r"\$0\.0000[5-9]\d"))
    expect(page.get_by_role("row").filter(has_text="fake")).to_be_visible()
    # Streams while the page polls: its rates and time to first token come alive without a reload.
    with traffic(gateway):
        expect(page.locator("#stat-rps")).not_to_have_text(re.compile(r"^(0\.00|\u2013)$"), timeout=10_000)
        expect(page.locator("#stat-p50")).to_have_text(re.compile(r"\d+ ms"))
        page.wait_for_timeout(4000)  # a few points on the charts
        shot(page, "overview")

    page.get_by_role("link", name="Keys").click()
    row = page.get_by_role("row").filter(has_text="sdk-app")
    row.get_by_role("button", name="Edit sdk-app").click()
    editor = page.locator("#edit-key")
    editor.get_by_label("Requests/min").fill("100")
    editor.get_by_role("button", name="Save changes").click()
    expect(row).to_contain_text("100 rpm")
    shot(page, "keys")
    page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name="Revoke sdk-app").click()
    expect(row).to_contain_text("revoked")
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="fake", messages=[{"role": "user", "content": "hi"}])


def test_the_playground_streams_an_answer_from_the_embedded_model(page: Page) -> None:
    log_in(page)
    page.get_by_role("link", name="Playground").click()
    page.get_by_label("Model").select_option("local")
    page.get_by_label("Temperature").fill("0")
    page.get_by_label("Max tokens").fill("12")
    # Count the reply's updates: a streamed answer arrives in several pieces, not at once.
    page.evaluate("""() => {
        window.updates = 0;
        new MutationObserver(() => window.updates++).observe(document.getElementById("pg-chat"),
            {subtree: true, childList: true, characterData: true});
    }""")
    page.get_by_label("Message").fill("Name a colour.")
    page.get_by_role("button", name="Send").click()
    facts = page.locator("#pg-facts")
    expect(facts.locator('[data-fact="Status"]')).to_have_text("done", timeout=60_000)
    expect(facts.locator('[data-fact="Deployment"]')).to_have_text("local#0")
    reply = page.locator(".msg.assistant .text").last
    assert reply.inner_text().strip()
    completion = int(facts.locator('[data-fact="Completion tokens"]').inner_text())
    assert 0 < completion <= 12
    assert page.evaluate("window.updates") >= 3
    assert facts.locator('[data-fact="Time to first token"]').inner_text().endswith("ms")
    shot(page, "playground")


def test_jobs_and_batches_show_progress_cancel_and_download(page: Page, gateway: str) -> None:
    sdk = openai.OpenAI(base_url=gateway + "/v1", api_key=MASTER, max_retries=0, timeout=30)
    uploaded = sdk.files.create(file=("lines.jsonl", batch_lines(3, model="fake")), purpose="batch")
    batch = sdk.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    stuck = httpx.post(gateway + "/v1/async/chat/completions", headers={"Authorization": f"Bearer {MASTER}"},
                       json={"model": "stuck", "messages": [{"role": "user", "content": "hi"}]}).json()
    log_in(page)
    page.get_by_role("link", name="Jobs & batches").click()
    batch_row = page.get_by_role("row").filter(has_text=batch.id)
    expect(batch_row).to_contain_text("3 done, 0 failed of 3", timeout=30_000)
    expect(batch_row).to_contain_text("completed")
    results = batch_row.get_by_role("link", name=re.compile("^results")).get_attribute("href")
    assert results is not None
    lines = [orjson.loads(line) for line in page.request.get(gateway + results).body().splitlines()]
    assert sorted(line["custom_id"] for line in lines) == ["r0", "r1", "r2"]
    job_row = page.get_by_role("row").filter(has_text=stuck["id"])
    expect(job_row).to_contain_text(re.compile("queued|running"))
    shot(page, "jobs")
    job_row.get_by_role("button", name=f"Cancel job {stuck['id']}").click()
    expect(job_row).to_contain_text("cancelled")
    auth = {"Authorization": f"Bearer {MASTER}"}
    assert httpx.get(f"{gateway}/v1/async/{stuck['id']}", headers=auth).json()["status"] == "cancelled"


def test_every_page_renders_without_console_errors(page: Page) -> None:
    log_in(page)
    # By keyboard: the first Tab reaches the skip link, the next ones the pages; Enter opens one.
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    for _ in range(3):
        page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Usage & spend")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Usage & spend", exact=True)).to_be_visible()
    for link, heading, check in [
        ("Deployments", "Deployments", "fake#0"),
        ("Jobs & batches", "Jobs & batches", "Latest batches"),
        ("Usage & spend", "Usage & spend", "Usage by key"),
        ("Keys", "Keys", "Teams"),
        ("Playground", "Playground", "Last answer"),
        ("Overview", "Overview", "Requests/s"),
    ]:
        page.get_by_role("link", name=link, exact=True).click()
        expect(page.get_by_role("heading", name=heading, exact=True)).to_be_visible()
        expect(page.locator("main")).to_contain_text(check)
        if link == "Deployments":
            shot(page, "deployments")
        unlabelled = page.evaluate("""() => [...document.querySelectorAll("input, select, textarea")]
            .filter((field) => !field.labels.length && !field.getAttribute("aria-label")).map((f) => f.outerHTML)""")
        assert unlabelled == [], (link, unlabelled)
    copied = {c["name"]: c["value"] for c in page.context.cookies() if c["name"] == "tokenway_session"}
    base = page.url.split("/ui/", 1)[0]
    assert httpx.get(base + "/admin/keys", cookies=copied).status_code == 200
    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(re.compile(r"/ui/login$"))
    page.goto("/ui/")
    expect(page).to_have_url(re.compile(r"/ui/login$"))
    assert httpx.get(base + "/admin/keys", cookies=copied).status_code == 401  # the logout ended it everywhere

"""The web app in a real browser: Debian's Chromium (headless, driven by Playwright) against the whole platform
with the real model, the gateway serving the built app. Controls are found by role and accessible name, the way a
screen reader finds them. Screenshots of the main screens go to ``test-artifacts/web/`` (CHATPLANE_TEST_ARTIFACTS)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.engine

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags Chromium keeps calling home, which this closed network refuses.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-default-apps", "--disable-extensions",
]
ARTIFACTS = Path(os.environ.get("CHATPLANE_TEST_ARTIFACTS", REPO / "test-artifacts")) / "web"
PASSWORD = "correct horse battery staple"
QUESTION = "What is the capital of France?"
REPLY_TIMEOUT_MS = 90_000
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
DEFAULT_TITLE = "New conversation"
STOPPED_NOTE = "The reply was stopped before it was complete."
LENGTH_NOTE = "The reply was cut off at the length limit."


@pytest.fixture(scope="session")
def web_dist() -> Path:
    """The built app (``make test`` builds it first; this is a no-op then)."""
    if shutil.which("npm") is None:
        pytest.skip("npm (Node 20) is missing: it builds the web app")
    subprocess.run([str(REPO / "scripts" / "build_web.sh")], check=True)
    return REPO / "web" / "dist"


@pytest.fixture(scope="session")
async def browser(web_dist, tmp_path_factory):
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"Debian's chromium ({CHROMIUM}) is missing: scripts/install_chromium.sh installs it")
    from playwright.async_api import async_playwright, expect

    expect.set_options(timeout=15_000)  # a shared 2-core machine: the default 5 s is short for a busy moment
    async with async_playwright() as pw:
        # A fresh profile folder per run (launch() makes a temporary one and removes it on close).
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
async def new_page(browser, stack):
    """``await new_page(**context options)``: a page in a fresh context (its own storage), closed afterwards."""
    contexts = []

    async def make(**options):
        context = await browser.new_context(base_url=stack.base_url, viewport=options.pop("viewport", DESKTOP),
                                            **options)
        context.set_default_timeout(20_000)
        contexts.append(context)
        page = await context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        # The gateway's Content-Security-Policy is strict: nothing the app does may be refused by it.
        page.on("console", lambda m: "Content Security Policy" in m.text and errors.append(m.text))
        page.js_errors = errors  # checked after each test: the app never throws
        return page

    yield make
    for context in contexts:
        for page in context.pages:
            assert page.js_errors == [], page.js_errors
        await context.close()


async def screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def new_email() -> str:
    return f"web-{uuid.uuid4().hex[:10]}@example.com"


async def sign_up(page, email: str) -> None:
    await page.goto("/")
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign up").click()
    await conversations_nav(page).wait_for()


async def log_in(page, email: str, password: str = PASSWORD) -> None:
    await page.goto("/login")
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Log in").click()
    await conversations_nav(page).wait_for()


def conversations_nav(page):
    return page.get_by_role("navigation", name="Conversations")


async def set_temperature(page, value: str) -> None:
    """The settings popover: temperature is sent only when set (0: the model's most likely reply, every time)."""
    await page.get_by_role("button", name="Settings").click()
    await page.get_by_label("Temperature").fill(value)
    await page.keyboard.press("Escape")


async def send(page, text: str) -> None:
    await page.get_by_role("textbox", name="Message").fill(text)
    await page.get_by_role("button", name="Send").click()


async def record_reply_growth(page) -> None:
    """Records every text the newest reply shows while it streams (read with ``reply_texts``)."""
    await page.evaluate("""() => {
        window.__replyTexts = [];
        new MutationObserver(() => {
            const replies = document.querySelectorAll('article');
            const body = replies.length ? replies[replies.length - 1].querySelector('.reply-body') : null;
            const text = body ? body.innerText : '';
            const seen = window.__replyTexts;
            if (text && seen[seen.length - 1] !== text) seen.push(text);
        }).observe(document.body, {subtree: true, childList: true, characterData: true});
    }""")


async def conversation_id(page) -> str:
    await page.wait_for_url(re.compile(r"/c/[A-Za-z0-9_-]+$"))
    return page.url.rsplit("/c/", 1)[1]


async def api_messages(page, stack, conv_id: str) -> list[dict]:
    """The conversation's messages as the API has them, with the page's session."""
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=30) as http:
        token = await page.evaluate("JSON.parse(sessionStorage.getItem('chatplane.session')).token")
        return (await http.get(f"/v1/conversations/{conv_id}",
                               headers={"Authorization": f"Bearer {token}"})).json()["messages"]


async def test_sign_up_chat_stream_title_reload_and_history(new_page, stack):
    from playwright.async_api import expect

    page = await new_page()
    response = await page.goto("/")
    assert "script-src 'self'" in response.headers["content-security-policy"]  # the gateway serves the app
    await expect(page).to_have_url(re.compile(r"/login$"))  # no session: the login page, never a blank one
    await expect(page.get_by_role("button", name="Log in")).to_be_visible()
    await screenshot(page, "login")

    await sign_up(page, new_email())
    await expect(page.get_by_label("Model")).to_have_value(re.compile(r"SmolLM2"))  # from /v1/models
    await set_temperature(page, "0")
    await record_reply_growth(page)
    await send(page, QUESTION)
    conv_id = await conversation_id(page)  # the URL names the new conversation
    reply = page.get_by_role("article").last
    await expect(reply).to_contain_text("Paris", timeout=REPLY_TIMEOUT_MS)
    await expect(page.get_by_role("button", name="Send")).to_be_visible(timeout=REPLY_TIMEOUT_MS)  # complete
    texts = await page.evaluate("window.__replyTexts")
    # Streamed: the reply grew through several partial texts, each the start of the next.
    assert len(texts) >= 3, texts
    assert all(b.startswith(a.rstrip()) for a, b in zip(texts, texts[1:], strict=False)), texts
    assert "Paris" not in texts[0]

    # The title job names the conversation; the list shows it (newest first: at the top).
    nav = conversations_nav(page)
    link = nav.get_by_role("link").first
    await expect(link).to_have_attribute("href", f"/c/{conv_id}")
    await expect(link).not_to_have_text(DEFAULT_TITLE, timeout=60_000)
    title = (await link.inner_text()).strip()
    assert title
    await expect(page.get_by_role("heading", level=1)).to_have_text(title)
    await screenshot(page, "chat")

    # Regenerate: a new answer takes the old one's place (no second question, no second reply), stored so.
    before = await api_messages(page, stack, conv_id)
    await reply.get_by_role("button", name="Regenerate").click()
    await expect(page.get_by_role("button", name="Stop")).to_be_visible()
    await expect(page.get_by_role("button", name="Send")).to_be_visible(timeout=REPLY_TIMEOUT_MS)
    await expect(page.get_by_role("article")).to_have_count(1)
    await expect(page.get_by_role("article").last).to_contain_text("Paris")  # temperature 0: the same answer
    await expect(page.get_by_role("main").get_by_text(QUESTION)).to_have_count(1)
    after = await api_messages(page, stack, conv_id)
    assert [m["role"] for m in after] == ["user", "assistant"]
    assert after[0]["id"] == before[0]["id"] and after[1]["id"] != before[1]["id"]

    # Reload: same session (the tab's sessionStorage), same conversation, from the server.
    await page.reload()
    await expect(page.get_by_role("article").last).to_contain_text("Paris")
    await expect(page.get_by_role("main").get_by_text(QUESTION).last).to_be_visible()
    await expect(conversations_nav(page).get_by_role("link", name=title)).to_be_visible()

    # Back and forward move between the new chat and the conversation.
    await page.get_by_role("button", name="New chat").click()
    await expect(page).to_have_url(f"{stack.base_url}/")
    await expect(page.get_by_role("article")).to_have_count(0)
    await page.go_back()
    await expect(page).to_have_url(f"{stack.base_url}/c/{conv_id}")
    await expect(page.get_by_role("article").last).to_contain_text("Paris")
    await page.go_forward()
    await expect(page.get_by_role("article")).to_have_count(0)

    # Phone width: the list moves behind the menu button; the chat stays usable.
    await page.set_viewport_size(PHONE)
    await page.goto(f"/c/{conv_id}")
    await expect(page.get_by_role("article").last).to_contain_text("Paris")
    await expect(conversations_nav(page)).to_be_hidden()
    await expect(page.get_by_role("textbox", name="Message")).to_be_visible()
    await screenshot(page, "phone-chat")
    await page.get_by_role("button", name="Open menu").click()
    await expect(conversations_nav(page).get_by_role("link", name=title)).to_be_visible()
    await screenshot(page, "phone-list")


async def test_stop_cuts_a_long_reply_and_what_came_stays(new_page, stack):
    from playwright.async_api import expect

    page = await new_page()
    await sign_up(page, new_email())
    await set_temperature(page, "0")
    await send(page, "Write a long story about a dragon who learns to bake bread. Make it at least 30 paragraphs.")
    conv_id = await conversation_id(page)
    reply = page.get_by_role("article").last
    await expect(reply).to_contain_text(re.compile(r"\S+(\s+\S+){8}"), timeout=REPLY_TIMEOUT_MS)  # 9 words in

    # While it streams, another chat works: its own question, its own reply; the story goes on meanwhile.
    await page.get_by_role("button", name="New chat").click()
    await send(page, QUESTION)
    other_id = await conversation_id(page)
    assert other_id != conv_id
    await expect(page.get_by_role("article").last).to_contain_text("Paris", timeout=REPLY_TIMEOUT_MS)
    story_link = conversations_nav(page).locator(f'a[href="/c/{conv_id}"]')
    await expect(story_link).to_contain_text("Replying")  # still streaming, shown in the list
    await story_link.click()
    reply = page.get_by_role("article").last
    await expect(page.get_by_role("button", name="Stop")).to_be_visible()
    await page.get_by_role("button", name="Stop").click()
    await expect(page.get_by_role("button", name="Send")).to_be_visible()
    await expect(reply.get_by_role("note")).to_have_text(STOPPED_NOTE)
    kept = await reply.locator(".reply-body").inner_text()
    await asyncio.sleep(2.0)
    assert await reply.locator(".reply-body").inner_text() == kept  # nothing arrives after Stop

    # The server stored the cut reply (as incomplete): a reload shows what had come.
    messages = await api_messages(page, stack, conv_id)
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert messages[1]["status"] == "incomplete"
    await page.reload()
    reloaded = page.get_by_role("article").last
    await expect(reloaded).to_contain_text(" ".join(kept.split()[:6]))
    await expect(reloaded.get_by_role("note")).to_have_text(STOPPED_NOTE)

    # A reply cut off at the length limit says so, with Regenerate in its note, when it ends and from history.
    await page.get_by_role("button", name="Settings").click()
    await page.get_by_label("Max tokens").fill("3")
    await page.keyboard.press("Escape")
    await send(page, QUESTION)
    await expect(page.get_by_role("article")).to_have_count(2)
    cut = page.get_by_role("article").last
    await expect(cut.get_by_role("note")).to_have_text(re.compile(re.escape(LENGTH_NOTE)), timeout=REPLY_TIMEOUT_MS)
    await expect(cut.get_by_role("note").get_by_role("button", name="Regenerate")).to_be_visible()
    await expect(cut.get_by_role("button", name="Regenerate")).to_have_count(1)
    assert (await api_messages(page, stack, conv_id))[-1]["finish_reason"] == "length"
    await screenshot(page, "reply-notes")
    await page.reload()
    notes = page.get_by_role("main").get_by_role("note")
    await expect(notes).to_have_count(2)
    await expect(notes.first).to_have_text(STOPPED_NOTE)
    await expect(notes.last).to_contain_text(LENGTH_NOTE)


async def test_a_second_user_sees_none_of_the_first_users_conversations(new_page, stack, make_account):
    from playwright.async_api import expect

    first = make_account()
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=30) as http:
        r = await http.post("/v1/conversations", json={"title": "First user's secret plans"}, headers=first.headers)
        assert r.status_code == 201, r.text
        secret_id = r.json()["id"]

    page = await new_page()
    await log_in(page, first.email)
    await expect(conversations_nav(page).get_by_role("link", name="First user's secret plans")).to_be_visible()
    await page.get_by_role("button", name="Log out").click()
    await expect(page).to_have_url(re.compile(r"/login$"))
    await expect(page.get_by_text("You are logged out.")).to_be_visible()
    assert await page.evaluate("sessionStorage.getItem('chatplane.session')") is None

    await sign_up(page, new_email())
    nav = conversations_nav(page)
    await expect(nav.get_by_text("No conversations yet.")).to_be_visible()
    await expect(nav.get_by_role("link")).to_have_count(0)
    await page.goto(f"/c/{secret_id}")
    await expect(page.get_by_role("alert")).to_contain_text("does not exist")
    await expect(page.get_by_text("First user's secret plans")).to_have_count(0)


async def test_an_api_key_made_in_the_app_works_with_the_openai_sdk(new_page, stack):
    from openai import AuthenticationError, OpenAI
    from playwright.async_api import expect

    page = await new_page()
    await sign_up(page, new_email())
    await page.get_by_role("link", name="API keys").click()
    await expect(page.get_by_role("heading", name="API keys")).to_be_visible()
    await page.get_by_label("Name").fill("from the browser")
    await page.get_by_role("button", name="Create key").click()
    key_box = page.get_by_role("textbox", name="New API key")
    await expect(key_box).to_have_value(re.compile(r"^cp-"))
    key = await key_box.input_value()
    await expect(page.get_by_role("button", name="Copy key")).to_be_visible()
    await expect(page.get_by_role("cell", name="from the browser", exact=True)).to_be_visible()
    await screenshot(page, "keys")

    def ask() -> str:
        client = OpenAI(base_url=f"{stack.base_url}/v1", api_key=key, max_retries=0)
        reply = client.chat.completions.create(
            model=client.models.list().data[0].id, temperature=0,
            # The system prompt the test platform's conversations have (tests/conftest.py): Paris at temperature 0.
            messages=[{"role": "system", "content": "You are a helpful assistant."},
                      {"role": "user", "content": QUESTION}],
        )
        return reply.choices[0].message.content

    assert "Paris" in await asyncio.to_thread(ask)

    # Revoked in the app: the SDK's next call is refused.
    await page.get_by_role("button", name="Revoke from the browser").click()
    await page.get_by_role("button", name="Revoke key").click()
    await expect(page.get_by_text(re.compile(r"^revoked "))).to_be_visible()
    with pytest.raises(AuthenticationError):
        await asyncio.to_thread(ask)

    # The usage page shows the call (the usage consumer counts it from its Kafka event within seconds).
    await page.get_by_role("link", name="Usage").click()
    await expect(page.get_by_role("heading", name="Usage")).to_be_visible()
    for _ in range(30):
        await expect(page.get_by_role("img", name=re.compile("Tokens per day"))).to_be_visible()
        if await page.get_by_role("cell", name="from the browser", exact=True).count():
            break
        await asyncio.sleep(1)
        await page.reload()
    await expect(page.get_by_role("cell", name="from the browser", exact=True)).to_be_visible()
    await screenshot(page, "usage")


async def test_an_ended_session_goes_back_to_login_and_dark_theme(new_page, stack):
    from playwright.async_api import expect

    page = await new_page(color_scheme="dark")
    email = new_email()
    await sign_up(page, email)
    assert await page.evaluate("document.documentElement.classList.contains('dark')")  # the system's theme
    await expect(page.get_by_role("button", name="Light theme")).to_be_visible()

    # Markdown: a fenced code block is highlighted and has its own copy button.
    await page.get_by_role("button", name="Settings").click()
    await page.get_by_label("Temperature").fill("0")
    await page.get_by_label("Max tokens").fill("40")
    await page.keyboard.press("Escape")
    await send(page, "Write a Python function that adds two numbers.")
    reply = page.get_by_role("article").last
    await expect(reply.get_by_role("button", name="Copy code")).to_be_visible(timeout=REPLY_TIMEOUT_MS)
    await expect(reply.locator("pre code.hljs .hljs-keyword").first).to_have_text("def")
    await expect(page.get_by_role("button", name="Send")).to_be_visible(timeout=REPLY_TIMEOUT_MS)
    await screenshot(page, "dark-chat")
    # Nothing of the session is in localStorage (every tab and later visit would share it).
    assert "chatplane.session" not in await page.evaluate("Object.keys(localStorage)")

    # A token the server no longer accepts (expired, or its key rotated): the next call sends the app to login.
    await page.evaluate("""() => {
        const s = JSON.parse(sessionStorage.getItem('chatplane.session'));
        s.token = s.token.slice(0, -6) + 'AAAAAA';
        sessionStorage.setItem('chatplane.session', JSON.stringify(s));
    }""")
    conv_id = await conversation_id(page)
    await page.reload()
    await expect(page).to_have_url(re.compile(r"/login\?next=%2Fc%2F"))
    await expect(page.get_by_text("Your session has ended. Please log in again.")).to_be_visible()
    assert await page.evaluate("sessionStorage.getItem('chatplane.session')") is None
    await screenshot(page, "dark-login-expired")
    # Logging in again leads back to where the session ended.
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Log in").click()
    await expect(page).to_have_url(f"{stack.base_url}/c/{conv_id}")
    await expect(page.get_by_role("article").last.get_by_role("button", name="Copy code")).to_be_visible()


async def test_rename_archive_delete_and_paging(new_page, stack, make_account):
    from playwright.async_api import expect

    account = make_account()
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=30, headers=account.headers) as http:
        for i in range(25):  # more than one page (20)
            r = await http.post("/v1/conversations", json={"title": f"Topic {i:02d}"})
            assert r.status_code == 201, r.text
    page = await new_page()
    await log_in(page, account.email)
    nav = conversations_nav(page)
    await expect(nav.get_by_role("link").first).to_have_text("Topic 24")  # newest first
    await nav.get_by_role("link", name="Topic 05").scroll_into_view_if_needed()  # the next page, as the list scrolls
    await expect(nav.get_by_role("link", name="Topic 00")).to_be_visible()
    await expect(nav.get_by_role("link")).to_have_count(25)

    await nav.get_by_role("button", name="Options for Topic 24").click()
    await page.get_by_role("menuitem", name="Rename").click()
    await nav.get_by_role("textbox", name="Title").fill("Trip to Lyon")
    await page.keyboard.press("Enter")
    await expect(nav.get_by_role("link", name="Trip to Lyon")).to_be_visible()

    await nav.get_by_role("button", name="Options for Topic 23").click()
    await page.get_by_role("menuitem", name="Archive").click()
    await expect(nav.get_by_role("link", name="Topic 23")).to_have_count(0)
    await nav.get_by_role("switch", name="Show archived").click()
    await expect(nav.get_by_role("link", name="Topic 23")).to_contain_text("archived")

    await nav.get_by_role("button", name="Options for Topic 22").click()
    await page.get_by_role("menuitem", name="Delete").click()
    await page.get_by_role("dialog").get_by_role("button", name="Delete").click()
    await expect(nav.get_by_role("link", name="Topic 22")).to_have_count(0)

    await page.reload()  # what the server keeps
    await expect(nav.get_by_role("link", name="Trip to Lyon")).to_be_visible()
    await expect(nav.get_by_role("link", name="Topic 22")).to_have_count(0)
    await expect(nav.get_by_role("link", name="Topic 23")).to_have_count(0)  # archived: hidden again by default
    await screenshot(page, "list")


async def test_errors_read_as_sentences(new_page, stack):
    """Network gone (the browser offline) and a rate limit (the gateway's 429 answer, replayed by the browser's
    request interception): the app says what happened and when to retry, never the raw JSON."""
    from playwright.async_api import expect

    page = await new_page()
    await sign_up(page, new_email())
    await page.context.set_offline(True)
    await expect(page.get_by_text("You are offline.")).to_be_visible()
    await send(page, "Hello?")
    await expect(page.get_by_role("alert")).to_contain_text("Cannot reach the server")
    await expect(page.get_by_role("textbox", name="Message")).to_have_value("Hello?")  # kept to send again
    await page.context.set_offline(False)

    body = ('{"error": {"message": "Rate limit reached for requests", "type": "rate_limit_error", '
            '"param": null, "code": "rate_limit_exceeded"}}')

    async def too_many(route):
        await route.fulfill(status=429, body=body, headers={"content-type": "application/json", "retry-after": "7"})

    await page.route("**/v1/conversations/*/messages", too_many)
    await page.get_by_role("button", name="Send").click()
    reply = page.get_by_role("article").last
    await expect(reply).to_contain_text("You are sending requests too fast. Try again in 7 seconds.")
    assert "rate_limit_exceeded" not in await page.inner_text("body")
    await screenshot(page, "error-rate-limit")

"""A real browser (Debian's chromium driven by Playwright) exports posts and watches the bar."""
from __future__ import annotations

import hashlib
import json
import re
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from uuid import uuid4

import pytest
import sqlalchemy as sa
from playwright.sync_api import expect

from app.cli import seed_posts
from app.exports import EXPORT_TASK_NAME, export_file_name, send_export_email
from app.extensions import db
from app.models import Task, TaskState, User, utcnow
from app.storage import export_storage
from tests.support.browser import served
from tests.support.screenshots import drawn_by, keep_screenshot
from tests.support.services import wait_until

# Records every width the progress bar takes, from the first paint of each page.
RECORD_BAR_WIDTHS = """
window.__widths = [];
new MutationObserver(function (mutations) {
  mutations.forEach(function (m) {
    if (m.target.classList && m.target.classList.contains("progress-bar")) {
      window.__widths.push(m.target.style.width);
    }
  });
}).observe(document, {attributes: true, subtree: true, attributeFilter: ["style"]});
"""


@pytest.fixture
def site(live_app):
    """The live app behind a real threaded HTTP server on 127.0.0.1."""
    live_app.config["TASK_POLL_INTERVAL_MS"] = 150
    with served(live_app) as base_url:
        yield base_url


def test_export_progress_bar_moves_to_done_without_a_reload(browser, site, live_app, tmp_path):
    page = browser.new_page(accept_downloads=True)
    page.add_init_script(RECORD_BAR_WIDTHS)

    page.goto(f"{site}/auth/register")
    page.fill("input[name=username]", "eve")
    page.fill("input[name=email]", "eve@example.com")
    page.fill("input[name=password]", "correct horse")
    page.fill("input[name=password2]", "correct horse")
    page.click("input[type=submit]")
    expect(page.locator(".alert-success")).to_contain_text("registered")

    with live_app.app_context():
        seed_posts(db.session.scalar(sa.select(User).where(User.username == "eve")), 400_000)

    page.fill("input[name=username]", "eve")
    page.fill("input[name=password]", "correct horse")
    page.click("input[type=submit]")
    page.goto(f"{site}/user/eve")
    page.click("#export-posts")

    alert = page.locator(".task-alert")
    expect(alert).to_contain_text("Exporting posts")
    expect(alert.locator(".progress-bar")).to_be_attached()
    page.evaluate("window.__sameDocument = true")

    link = alert.locator("a.download-link")
    expect(link).to_be_visible(timeout=90_000)
    expect(alert.locator("a.exports-link")).to_have_attribute("href", re.compile(r"/exports#task-[0-9a-f-]+$"))
    expect(alert).to_have_class(re.compile(r"\balert-success\b"))
    assert page.evaluate("window.__sameDocument") is True, "the page reloaded"
    widths = [int(w.rstrip("%")) for w in page.evaluate("window.__widths") if w]
    assert widths[-1] == 100
    assert any(0 < w < 100 for w in widths), f"the bar never showed progress in between: {widths}"
    assert widths == sorted(widths)
    page.screenshot(path=str(tmp_path / "export-done.png"))

    with page.expect_download() as download_info:
        link.click()
    download = download_info.value
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    assert download.suggested_filename == "eve-posts.json"
    assert len(json.loads(saved.read_text())["posts"]) == 400_000

    # The alert's link leads to the list of past exports, where this one keeps its file.
    task_id = alert.get_attribute("data-task-id")
    alert.locator("a.exports-link").click()
    expect(page).to_have_url(re.compile(rf"/exports#task-{task_id}$"))
    row = page.locator(f"#task-{task_id}")
    expect(row).to_contain_text("Done")
    expect(row).to_contain_text("400,000")
    expect(row.locator(f'a[href="/exports/{task_id}"]')).to_be_visible()
    page.close()


# --- the Content-Security-Policy, and a session that ends while a bar is polling ---------

POLL_MS = 150  # the site fixture's TASK_POLL_INTERVAL_MS
# Every CSP violation the page reports, from its first byte.
RECORD_CSP_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", function (e) {
  window.__cspViolations.push(e.violatedDirective + " " + (e.blockedURI || "inline"));
});
"""
# Counts the status polls as tasks.js makes them (synchronously, so a fake clock's run
# leaves the final count behind), and the bar's width as each poll leaves, before its answer.
WATCH_TASK_POLLS = """
window.__taskPolls = 0;
window.__widthsAtPoll = [];
var realFetch = window.fetch;
window.fetch = function (url, options) {
  if (String(url).indexOf("/tasks/") !== -1) {
    window.__taskPolls += 1;
    var bar = document.querySelector(".task-alert .progress-bar");
    window.__widthsAtPoll.push(bar ? bar.style.width : null);
  }
  return realFetch.call(this, url, options);
};
"""
BAR_FRACTION = """() => {
  const bar = document.querySelector(".task-alert .progress-bar");
  return bar.getBoundingClientRect().width / bar.parentElement.getBoundingClientRect().width;
}"""


def register_and_log_in(page, site: str, username: str) -> None:
    page.goto(f"{site}/auth/register")
    page.fill("input[name=username]", username)
    page.fill("input[name=email]", f"{username}@example.com")
    page.fill("input[name=password]", "correct horse")
    page.fill("input[name=password2]", "correct horse")
    page.click("input[type=submit]")
    expect(page.locator(".alert-success")).to_contain_text("registered")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", "correct horse")
    page.click("input[type=submit]")
    expect(page.locator("nav")).to_contain_text("Logout")


def add_running_task(live_app, username: str, progress: int) -> str:
    """A running export, as a worker would leave it between two progress reports."""
    with live_app.app_context():
        user = db.session.scalar(sa.select(User).where(User.username == username))
        task = Task(id=str(uuid4()), name="export_posts", description="Exporting posts...",
                    user_id=user.id, state=TaskState.PROGRESS, progress=progress)
        db.session.add(task)
        db.session.commit()
        return task.id


def set_progress(live_app, task_id: str, progress: int) -> None:
    with live_app.app_context():
        db.session.get(Task, task_id).progress = progress
        db.session.commit()


def wait_for_bar_fraction(page, fraction: float) -> None:
    page.wait_for_function(f"() => Math.abs(({BAR_FRACTION})() - {fraction}) < 0.01", timeout=10_000)


def test_pages_with_a_task_bar_break_no_csp_rule_and_show_its_width(browser, site, live_app):
    context = browser.new_context()
    page = context.new_page()
    page.add_init_script(RECORD_CSP_VIOLATIONS + WATCH_TASK_POLLS)
    csp_console = []
    page.on("console", lambda message: csp_console.append(message.text)
            if "Content Security Policy" in message.text else None)
    register_and_log_in(page, site, "eve")
    task_id = add_running_task(live_app, "eve", 40)

    for path in ("/", "/user/eve", "/activity"):
        response = page.goto(f"{site}{path}")
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
        expect(page.locator(".task-alert .task-percent")).to_have_text("40%")
        # Sized from the markup as the page loads, before the first poll has an answer.
        assert page.evaluate("window.__widthsAtPoll")[0] == "40%"
        wait_for_bar_fraction(page, 0.40)

    set_progress(live_app, task_id, 70)
    expect(page.locator(".task-alert .task-percent")).to_have_text("70%")
    wait_for_bar_fraction(page, 0.70)
    assert page.evaluate("window.__cspViolations") == []
    assert csp_console == []

    # The browser does enforce the policy: a style attribute in markup is refused and reported.
    page.evaluate("""document.body.insertAdjacentHTML("beforeend", '<div style="color: red"></div>')""")
    page.wait_for_function("window.__cspViolations.length > 0", timeout=10_000)
    assert page.evaluate("window.__cspViolations")[0].startswith("style-src")
    context.close()


def test_a_bar_stops_polling_once_the_session_has_ended(browser, site, live_app):
    context = browser.new_context()
    page = context.new_page()
    register_and_log_in(page, site, "ann")
    add_running_task(live_app, "ann", 10)
    page.add_init_script(WATCH_TASK_POLLS)
    page.clock.install()  # tasks.js's timers run only when the test advances the clock
    page.goto(f"{site}/")
    alert = page.locator(".task-alert")
    expect(alert).to_have_attribute("data-polling", "waiting")  # the first poll was answered

    context.clear_cookies()  # signed out, as by a logout in another tab
    with page.expect_response(lambda r: "/tasks/" in r.url) as answer:
        page.clock.run_for(POLL_MS)
    assert answer.value.status == 401
    expect(alert).to_have_attribute("data-polling", "stopped")
    expect(alert.locator(".task-message")).to_have_text(
        "You are signed out. Sign in again to follow this task.")

    polls = page.evaluate("window.__taskPolls")
    page.clock.run_for(POLL_MS * 20)  # covers the 3x back-off of a failed poll too
    assert page.evaluate("window.__taskPolls") == polls
    context.close()


# --- languages and time zones ---------------------------------------------------------------


def test_a_browser_asking_for_chinese_gets_chinese_and_its_time_zone(browser, site, live_app):
    """Chromium set to Chinese in Shanghai: the pages come in Chinese, the switcher offers the
    others, and the account keeps the browser's time zone (static/timezone.js's cookie)."""
    from flask_babel import force_locale, gettext

    with live_app.test_request_context(), force_locale("zh"):
        sign_in, register, registered = gettext("Sign in"), gettext("Register"), gettext(
            "Congratulations, you are now a registered user! Please sign in.")
    assert sign_in != "Sign in"
    context = browser.new_context(locale="zh-CN", timezone_id="Asia/Shanghai")
    page = context.new_page()
    page.goto(f"{site}/auth/login")
    expect(page.locator("html")).to_have_attribute("lang", "zh")
    expect(page.locator("h1")).to_have_text(sign_in)
    expect(page.locator("form.languages button[value=ru]")).to_have_text("Русский")

    page.goto(f"{site}/auth/register")  # the cookie is set by now: the first page's script set it
    expect(page.locator("h1")).to_have_text(register)
    page.fill("input[name=username]", "zhang")
    page.fill("input[name=email]", "zhang@example.com")
    page.fill("input[name=password]", "correct horse")
    page.fill("input[name=password2]", "correct horse")
    page.click("input[type=submit]")
    expect(page.locator(".alert-success")).to_have_text(registered)
    with live_app.app_context():
        user = db.session.scalar(sa.select(User).where(User.username == "zhang"))
        assert (user.locale, user.timezone) == ("zh", "Asia/Shanghai")
    context.close()


# --- progress counts, the export button, and the messages after a click (#17) ------------

# Every text the task alert's counts and time left take, from the first paint.
RECORD_TASK_TEXTS = """
window.__counts = [];
window.__timesLeft = [];
new MutationObserver(function () {
  var counts = document.querySelector(".task-alert .task-counts");
  var left = document.querySelector(".task-alert .task-time-left:not([hidden])");
  [[counts, window.__counts], [left, window.__timesLeft]].forEach(function (pair) {
    var text = pair[0] ? pair[0].textContent : "";
    if (text && pair[1][pair[1].length - 1] !== text) { pair[1].push(text); }
  });
}).observe(document, {subtree: true, childList: true, characterData: true, attributes: true});
"""
TIME_LEFT = re.compile(r"^About \d+ (second|minute|hour)s? left\.$")
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@contextmanager
def worker_held(tmp_path):
    """The live worker (one process) kept busy by a probe task until the block ends: a task
    sent meanwhile waits in the broker, unstarted, for as long as the test needs."""
    from tests.support import probe_tasks

    release = tmp_path / "release-the-worker"
    result = probe_tasks.describe_to_file_when_released.delay(str(tmp_path / "described.json"), str(release),
                                                               120.0)
    wait_until(lambda: result.state == "STARTED", 30, message="the worker to start the probe task")
    try:
        yield
    finally:
        release.touch()
        result.get(timeout=30)


def set_task(live_app, task_id: str, **fields) -> None:
    """Change the task row as the worker's progress reports do."""
    with live_app.app_context():
        task = db.session.get(Task, task_id)
        for name, value in fields.items():
            setattr(task, name, value)
        db.session.commit()


def add_export(live_app, username: str, **fields) -> str:
    """An unfinished export, PENDING (no report yet) unless told."""
    with live_app.app_context():
        user = db.session.scalar(sa.select(User).where(User.username == username))
        task = Task(id=str(uuid4()), name="export_posts", description="Exporting posts...", user_id=user.id,
                    **{"state": TaskState.PENDING, "progress": 0, **fields})
        db.session.add(task)
        db.session.commit()
        return task.id


def expect_export_button_waits(page) -> None:
    expect(page.locator("#export-posts")).to_be_disabled()
    expect(page.locator("#export-running")).to_be_visible()
    expect(page.locator("#export-running")).to_have_text(
        "An export is already running; you can start another when it ends.")
    expect(page.locator("#export-posts")).to_have_attribute("aria-describedby", "export-running")


def expect_export_button_free(page) -> None:
    expect(page.locator("#export-posts")).to_be_enabled()
    expect(page.locator("#export-running")).to_be_hidden()


def test_a_running_export_counts_its_posts_and_estimates_the_time_left(browser, site, live_app):
    """The worker's reports, written to the row here one at a time: nothing known, then
    the counts, then (with a second report) the time left, then done."""
    context = browser.new_context()
    page = context.new_page()
    page.add_init_script(RECORD_CSP_VIOLATIONS)
    register_and_log_in(page, site, "eve")
    task_id = add_export(live_app, "eve")
    page.goto(f"{site}/user/eve")

    alert = page.locator(".task-alert")
    bar = alert.locator(".progress")
    expect(bar).to_have_class(re.compile(r"\bprogress-indeterminate\b"))
    assert page.evaluate("getComputedStyle(document.querySelector('.task-alert .progress-bar')).animationName") \
        == "progress-indeterminate"
    expect(bar).not_to_have_attribute("aria-valuenow", re.compile(".*"))
    expect(alert.locator(".task-counts")).to_have_text("Waiting to start...")
    expect(alert.locator(".task-percent")).to_be_hidden()
    expect(alert.locator(".task-time-left")).to_be_hidden()
    expect(alert).to_have_attribute("data-polling", "waiting")
    expect_export_button_waits(page)

    set_task(live_app, task_id, state=TaskState.PROGRESS, progress=3, done=12_345, total=400_000)
    expect(alert.locator(".task-counts")).to_have_text("12,345 of 400,000 posts")
    expect(bar).not_to_have_class(re.compile(r"\bprogress-indeterminate\b"))
    expect(bar).to_have_attribute("aria-valuenow", "3")
    expect(alert.locator(".task-percent")).to_have_text("3%")
    wait_for_bar_fraction(page, 0.03)
    expect(alert.locator(".task-time-left")).to_be_hidden()  # one report: no rate yet

    set_task(live_app, task_id, progress=25, done=100_000)
    expect(alert.locator(".task-counts")).to_have_text("100,000 of 400,000 posts")
    expect(alert.locator(".task-time-left")).to_be_visible()
    expect(alert.locator(".task-time-left")).to_have_text(TIME_LEFT)
    expect_export_button_waits(page)

    set_task(live_app, task_id, state=TaskState.SUCCESS, progress=100, done=400_000, finished=utcnow())
    expect(alert).to_have_class(re.compile(r"\balert-success\b"))
    expect(alert.locator(".task-details")).to_have_count(0)
    expect_export_button_free(page)
    assert page.evaluate("window.__cspViolations") == []
    context.close()


def test_the_counts_take_the_plural_form_of_the_readers_language(browser, site, live_app):
    """In Russian the sentence has three forms, chosen by the total as Russian counts
    (1 and 21: one; 2 to 4: few; 5 to 20 and 400 000: many), its numbers grouped as Russian
    groups them. The catalog's Russian sentences are stood in for by marked ones."""
    context = browser.new_context()
    page = context.new_page()
    register_and_log_in(page, site, "olga")
    task_id = add_export(live_app, "olga", state=TaskState.PROGRESS, progress=0, done=0, total=1)
    forms = {"1": "{done} из {total} (one)", "2": "{done} из {total} (few)", "5": "{done} из {total} (many)"}

    def with_marked_forms(route):
        html = route.fetch().text()
        marked = "data-text-counts='" + json.dumps(forms, ensure_ascii=False) + "'"
        html = re.sub(r"data-text-counts='[^']*'", lambda _: marked, html)
        route.fulfill(body=html, headers={"Content-Type": "text/html; charset=utf-8"})

    page.locator("form.languages button[value=ru]").click()
    expect(page.locator("html")).to_have_attribute("lang", "ru")
    page.route(f"{site}/", with_marked_forms)
    page.goto(f"{site}/")
    counts = page.locator(".task-alert .task-counts")
    for total, form in ((1, "one"), (21, "one"), (3, "few"), (22, "few"), (5, "many"), (11, "many"),
                        (400_000, "many")):
        set_task(live_app, task_id, done=total - 1, total=total)
        grouped = f"{total - 1:,}".replace(",", "\xa0")
        expect(counts).to_have_text(f"{grouped} из {f'{total:,}'.replace(',', chr(0xa0))} ({form})")
    context.close()


def test_a_real_export_starts_indeterminate_then_counts_and_frees_the_button(browser, site, live_app, tmp_path):
    """The worker is held until the page has shown the export unstarted; then it runs, and
    its first report (2,000 posts, always made) stands for half a second, three polls."""
    context = browser.new_context()
    page = context.new_page()
    page.add_init_script(RECORD_TASK_TEXTS)
    register_and_log_in(page, site, "eve")
    with live_app.app_context():
        seed_posts(db.session.scalar(sa.select(User).where(User.username == "eve")), 400_000)
    page.goto(f"{site}/user/eve")
    expect_export_button_free(page)

    with worker_held(tmp_path):
        page.click("#export-posts")
        alert = page.locator(".task-alert")
        expect(alert).to_contain_text("Exporting posts")
        expect(alert).to_have_attribute("data-polling", "waiting")  # polled: still nothing reported
        expect(alert.locator(".progress")).to_have_class(re.compile(r"\bprogress-indeterminate\b"))
        expect(alert.locator(".task-counts")).to_have_text("Waiting to start...")
        expect_export_button_waits(page)

    expect(alert.locator(".task-counts")).to_have_text(re.compile(r"^[\d,]+ of 400,000 posts$"), timeout=60_000)
    expect(alert).to_have_class(re.compile(r"\balert-success\b"), timeout=90_000)
    expect_export_button_free(page)
    counts = page.evaluate("window.__counts")
    assert counts[0] == "Waiting to start..."
    between = [text for text in counts[1:] if re.fullmatch(r"[\d,]+ of 400,000 posts", text)]
    assert between and all(re.fullmatch(r"\d{1,3}(,\d{3})* of 400,000 posts", text) for text in between), counts
    # How many reports fall between the first and the last depends on the machine's speed:
    # the estimate's appearance is the row-driven test's; here each one shown must read well.
    times_left = page.evaluate("window.__timesLeft")
    assert all(TIME_LEFT.match(text) for text in times_left), (times_left, counts)
    context.close()


def test_the_flash_of_a_click_reads_above_its_task_and_both_can_be_dismissed(browser, site, live_app, tmp_path):
    context = browser.new_context()
    page = context.new_page()
    register_and_log_in(page, site, "max")
    page.goto(f"{site}/user/max")

    with worker_held(tmp_path):
        page.click("#export-posts")
        flash, alert = page.locator(".alert.flash"), page.locator(".task-alert")
        expect(flash.locator(".alert-text")).to_have_text(re.compile(r"^Your export has started\."))
        expect(alert).to_be_visible()
        assert page.evaluate("""() => {
          const flash = document.querySelector(".alert.flash"), task = document.querySelector(".task-alert");
          return Boolean(flash.compareDocumentPosition(task) & Node.DOCUMENT_POSITION_FOLLOWING);
        }""")
        for text in page.locator(".alert").all_inner_texts():
            assert not UUID.search(text), text
        expect(alert.locator("button.close")).to_have_count(0)  # running: it stays

        flash.locator("button.close").click()
        expect(page.locator(".alert.flash")).to_have_count(0)

    expect(alert).to_have_class(re.compile(r"\balert-success\b"), timeout=60_000)
    close = alert.locator("button.close")
    expect(close).to_have_attribute("aria-label", "Dismiss")
    assert not UUID.search(alert.inner_text())
    close.click()
    expect(page.locator(".task-alert")).to_have_count(0)
    context.close()


def test_dismissing_a_message_by_keyboard_moves_the_focus_to_the_next_then_to_the_content(browser, site, live_app):
    """Enter on a close button removes its message; the focus goes to the next message's
    close button, and after the last one to the page's content, from where Tab goes on
    (not back to the top of the page)."""
    context = browser.new_context()
    page = context.new_page()
    register_and_log_in(page, site, "kim")
    task_id = add_export(live_app, "kim", state=TaskState.PROGRESS, progress=50, done=1, total=2)
    page.goto(f"{site}/index")
    page.fill("textarea[name=post]", "hello")
    page.click("input[type=submit]")
    flash, alert = page.locator(".alert.flash"), page.locator(".task-alert")
    expect(flash).to_contain_text("Your post is now live!")
    set_task(live_app, task_id, state=TaskState.SUCCESS, progress=100, done=2, finished=utcnow())
    expect(alert.locator("button.close")).to_be_visible()

    flash.locator("button.close").focus()
    page.keyboard.press("Enter")
    expect(page.locator(".alert.flash")).to_have_count(0)
    expect(alert.locator("button.close")).to_be_focused()

    page.keyboard.press("Enter")
    expect(page.locator(".task-alert")).to_have_count(0)
    expect(page.locator("main")).to_be_focused()
    page.keyboard.press("Tab")
    assert page.evaluate("document.querySelector('main').contains(document.activeElement)")
    expect(page.locator("main")).not_to_have_attribute("tabindex", "-1")  # focusable for that once only
    context.close()


# --- the README's screenshots, retaken on every run (tests/support/screenshots.py) --------

#: The moment the screenshots show: their dates are fixed, so the files change only when
#: the pages do.
SHOT_TIME = datetime(2026, 12, 2, 9, 0, tzinfo=timezone.utc)


def test_the_readmes_screenshot_of_a_running_export(browser, site, live_app, tmp_path):
    """A profile page while its export runs, between two of the worker's reports 20 s
    apart (the page's clock is Playwright's): counts, bar, time left, the button waiting."""
    context = browser.new_context(viewport={"width": 900, "height": 700}, locale="en-US", timezone_id="UTC")
    page = context.new_page()
    page.clock.install(time=SHOT_TIME)
    register_and_log_in(page, site, "eve")
    with live_app.app_context():
        db.session.scalar(sa.select(User).where(User.username == "eve")).created = SHOT_TIME - timedelta(days=400)
        db.session.commit()
    task_id = add_export(live_app, "eve", state=TaskState.PROGRESS, progress=25, done=100_000, total=400_000)
    page.clock.pause_at(SHOT_TIME + timedelta(minutes=1))
    page.goto(f"{site}/user/eve")
    alert = page.locator(".task-alert")
    expect(alert).to_have_attribute("data-polling", "waiting")  # the first poll answered: its timer is set
    expect(alert.locator(".task-counts")).to_have_text("100,000 of 400,000 posts")

    set_task(live_app, task_id, progress=30, done=120_000)
    page.clock.fast_forward(20_000)  # the next poll, 20 s on: 1,000 posts a second
    expect(alert.locator(".task-counts")).to_have_text("120,000 of 400,000 posts")
    expect(alert.locator(".task-time-left")).to_have_text("About 5 minutes left.")
    expect_export_button_waits(page)
    expect(page.locator(".alert")).to_have_count(1)

    bottom = page.locator("a[href='/auth/change_password']").bounding_box()
    taken = tmp_path / "export-progress.png"
    page.screenshot(path=str(taken), animations="disabled",
                    clip={"x": 0, "y": 0, "width": 900, "height": bottom["y"] + bottom["height"] + 24})
    shows = page.locator("body").inner_text() + "\n" + drawn_by(
        "app/static/style.css", "app/static/tasks.js", "app/templates/base.html", "app/templates/_tasks.html",
        "app/templates/user.html")
    keep_screenshot("export-progress.png", taken, shows)
    context.close()


def test_the_readmes_screenshot_of_the_export_email(browser, app, mail_sink, tmp_path):
    """The HTML part of the export email as the app sends it (a 31 MB file: linked, not
    attached), at a desktop width and at a phone's, where the card fills the screen."""
    with app.test_request_context("/export_posts", method="POST", base_url="https://microblog.example.com/"):
        user = User(username="eve", email="eve@example.com")
        db.session.add(user)
        db.session.commit()
        task = Task(id="3f0c2a58-5d0e-4c43-9a57-0d6f1c2b7e21", name=EXPORT_TASK_NAME,
                    description="Exporting posts...", user_id=user.id, state=TaskState.SUCCESS, finished=SHOT_TIME)
        db.session.add(task)
        db.session.commit()
        name = export_file_name(task.id)
        with export_storage().open_writer(name, "wb") as out:
            out.truncate(31_234_567)  # sparse: its size is what the email tells
        assert send_export_email(user, task, name, 400_000) is False
    (message,) = mail_sink.wait_for(1)
    html = message.message.get_body(("html",)).get_content()

    page = browser.new_page(viewport={"width": 720, "height": 400})
    page.set_content(html)
    button = page.locator("a.button-link")
    expect(button).to_have_text("Download your export")
    expect(page.locator("body")).to_contain_text("Your export of 400,000 posts is ready.")
    expect(page.locator("body")).to_contain_text("The file (31.2 MB) is too large to attach")
    expect(page.locator("body")).to_contain_text("The link works until the end of December 8, 2026")
    taken = tmp_path / "export-email.png"
    page.screenshot(path=str(taken), full_page=True)
    keep_screenshot("export-email.png", taken, message.message.get_body(("plain",)).get_content() + "\n"
                    + hashlib.sha256(html.encode()).hexdigest()[:16] + " the HTML part\n")

    page.set_viewport_size({"width": 375, "height": 400})
    assert page.evaluate("document.scrollingElement.scrollWidth") <= 375  # nothing wider than a phone
    card = page.locator("table.card").bounding_box()
    assert card["width"] >= 375 - 2 * 16, card  # the card takes the screen, with a small margin at most
    page.close()

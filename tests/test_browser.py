"""A real browser (Debian's chromium driven by Playwright) exports posts and watches the bar."""
from __future__ import annotations

import json
import re
import shutil
import threading

import pytest
import sqlalchemy as sa
from playwright.sync_api import expect, sync_playwright
from werkzeug.serving import make_server

from app.cli import seed_posts
from app.extensions import db
from app.models import User

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Flags for a closed network and a root user, as Debian's chromium needs here.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
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


@pytest.fixture(scope="session")
def browser():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def site(live_app):
    """The live app behind a real threaded HTTP server on 127.0.0.1."""
    live_app.config["TASK_POLL_INTERVAL_MS"] = 150
    server = make_server("127.0.0.1", 0, live_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(10)


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
    page.close()

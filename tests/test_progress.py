"""A task's progress as the pages show it, in process: the alert's first render, the
profile's export button while an export runs, and the messages after a click.

What the browser then does with them (polling, counts, time left, dismissing) is
tests/test_browser.py's.
"""
from __future__ import annotations

import json
import re
from html import unescape

import pytest

from app.models import TaskState, utcnow
from tests.test_exports import add_task, add_user, logged_in, task_rows

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
BUTTON = re.compile(r'<button type="submit" class="button" id="export-posts"([^>]*)>')


@pytest.fixture
def ann(app) -> int:
    with app.app_context():
        return add_user("ann")


def alert_of(page: str, task_id: str) -> str:
    """The task alert's markup, its opening tag included."""
    match = re.search(r'<div class="[^"]*\btask-alert\b[^>]*data-task-id="' + re.escape(task_id)
                      + r'".*?</div>\s*</div>\s*</div>', page, re.S)
    assert match, page
    return match.group(0)


def text_of(html: str) -> str:
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", html)).split())


# --- the alert before and after the first report ---------------------------------------


def test_before_the_first_report_the_bar_is_indeterminate_and_says_so(app, ann):
    with app.app_context():
        task_id = add_task(ann, state=TaskState.PENDING)
    alert = alert_of(logged_in(app, "ann").get("/").get_data(as_text=True), task_id)
    assert re.search(r'class="progress progress-indeterminate" role="progressbar"', alert)
    assert "aria-valuenow" not in alert  # ARIA's indeterminate progressbar has no value
    assert "Waiting to start..." in text_of(alert)
    assert re.search(r'class="task-percent" hidden>', alert)


def test_after_a_report_an_export_counts_its_posts_grouped_for_the_reader(app, ann):
    with app.app_context():
        task_id = add_task(ann, state=TaskState.PROGRESS, progress=3, done=12_345, total=400_000)
    auth = logged_in(app, "ann")
    alert = alert_of(auth.get("/").get_data(as_text=True), task_id)
    assert 'class="progress" role="progressbar"' in alert and 'aria-valuenow="3"' in alert
    assert "12,345 of 400,000 posts" in text_of(alert)
    assert "Waiting to start" not in alert

    auth.post_form("/language", {"locale": "ru"})
    # Russian groups with a no-break space, in a Russian sentence.
    from flask_babel import force_locale, ngettext

    with app.test_request_context(), force_locale("ru"):
        expected = ngettext("%(done)s of %(num)s post", "%(done)s of %(num)s posts", 400_000,
                            done="12\xa0345").replace("400000", "400\xa0000")
    assert expected == "12\xa0345 из 400\xa0000 записей"
    assert expected in unescape(alert_of(auth.get("/").get_data(as_text=True), task_id))


def test_the_alert_carries_the_counts_sentence_for_each_plural_sample(app, ann):
    with app.app_context():
        task_id = add_task(ann, state=TaskState.PROGRESS, progress=3, done=12_345, total=400_000)
    alert = alert_of(logged_in(app, "ann").get("/").get_data(as_text=True), task_id)
    counts = json.loads(unescape(re.search(r"data-text-counts='([^']*)'", alert).group(1)))
    assert counts["1"] == "{done} of {total} post"
    assert counts["2"] == counts["5"] == "{done} of {total} posts"
    assert re.search(r'data-text-time-left="About \{time\} left."', alert)


def test_a_task_that_is_not_an_export_counts_no_posts(app, ann):
    with app.app_context():
        task_id = add_task(ann, name="ping", description="Ping the worker", state=TaskState.PROGRESS,
                           progress=50, done=1, total=2)
    alert = alert_of(logged_in(app, "ann").get("/").get_data(as_text=True), task_id)
    assert "data-text-counts" not in alert and "post" not in text_of(alert)


# --- the profile's export button -------------------------------------------------------


def test_the_export_button_waits_with_its_reason_while_an_export_runs(app, ann):
    with app.app_context():
        task_id = add_task(ann, state=TaskState.PROGRESS, progress=10)
    page = logged_in(app, "ann").get("/user/ann").get_data(as_text=True)
    attributes = BUTTON.search(page).group(1)
    assert " disabled" in attributes
    assert f'data-waits-for-task="{task_id}"' in attributes
    assert 'aria-describedby="export-running"' in attributes
    reason = re.search(r'<span class="muted" id="export-running">([^<]*)</span>', page)
    assert reason and reason.group(1) == "An export is already running; you can start another when it ends."


@pytest.mark.parametrize("other", ["finished export", "running ping"])
def test_the_export_button_is_enabled_otherwise(app, ann, other):
    with app.app_context():
        if other == "finished export":
            add_task(ann, state=TaskState.SUCCESS, progress=100, finished=utcnow())
        else:
            add_task(ann, name="ping", description="Ping the worker")
    page = logged_in(app, "ann").get("/user/ann").get_data(as_text=True)
    assert BUTTON.search(page).group(1) == ""
    assert "export-running" not in page


# --- the messages after a click ---------------------------------------------------------


def test_after_an_export_starts_its_flash_is_above_its_alert_without_ids(app, ann):
    auth = logged_in(app, "ann")
    response = auth.post_form("/export_posts", page="/user/ann")
    assert response.status_code == 302
    page = auth.get(response.headers["Location"]).get_data(as_text=True)
    with app.app_context():
        (task,) = task_rows(ann)
    flash = page.index("Your export has started.")
    assert flash < page.index(f'data-task-id="{task.id}"')
    messages = re.findall(r'<div class="alert [^"]*"[^>]*>(.*?)</div>', page, re.S)
    assert messages and not any(UUID.search(text_of(message)) for message in messages)
    assert re.search(r'<div class="alert alert-info alert-dismissible flash" role="alert">\s*'
                     r'<span class="alert-text">Your export has started\.[^<]*</span>\s*'
                     r'<button type="button" class="close" aria-label="Dismiss"></button>', page)
    assert '<script src="/static/alerts.js" defer></script>' in page


def test_a_ping_says_it_was_sent_and_names_no_task(app, ann):
    auth = logged_in(app, "ann")
    response = auth.post_form("/ping")
    assert response.status_code == 302
    page = auth.get("/").get_data(as_text=True)
    assert '<span class="alert-text">Ping sent to the worker.</span>' in page


@pytest.mark.parametrize("path, page", [("/ping", "/"), ("/export_posts", "/user/ann")])
def test_json_clients_get_the_task_they_started(app, ann, path, page):
    auth = logged_in(app, "ann")
    response = auth.post_form(path, page=page, headers={"Accept": "application/json"})
    assert response.status_code == 202
    with app.app_context():
        (task,) = task_rows(ann)
    status_url = f"/tasks/{task.id}"
    assert response.get_json() == {"task": {"id": task.id, "status_url": status_url}}
    assert response.headers["Location"] == status_url
    assert "alert-text" not in auth.get(page).get_data(as_text=True)  # nothing flashed


def test_the_alert_script_is_served(client):
    response = client.get("/static/alerts.js")
    assert response.status_code == 200 and "close" in response.get_data(as_text=True)


def test_an_export_alert_links_to_the_list_of_past_exports(app, ann):
    with app.app_context():
        task_id = add_task(ann, state=TaskState.PROGRESS, progress=3, done=12_345, total=400_000)
    alert = alert_of(logged_in(app, "ann").get("/").get_data(as_text=True), task_id)
    assert f'data-exports-url="/exports#task-{task_id}"' in alert and 'data-text-exports="All your exports"' in alert

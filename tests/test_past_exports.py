"""GET /exports: the user's own exports, newest first, each with its state, times, counts,
its failure in words, and its file while the file is kept. In process (no worker): the
Task rows are made here, the files written by write_posts_export."""
from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs, urlsplit
from uuid import uuid4

import pytest
from babel.dates import format_date, format_datetime
from pytz import timezone as zone

from app.exports import EXPORT_TASK_NAME, export_file_name, write_posts_export
from app.extensions import db
from app.models import Post, Task, TaskState, User, utcnow
from app.storage import StorageError, export_storage, exports_dir
from tests.conftest import AuthActions

PASSWORD = "correct horse"
WRITE_FAILED = "We could not write your export file. Please try again later."
EMAIL_FAILED = ("Your export is ready to download from this site, "
                "but we could not send you the email about it.")
EXPIRED = "Expired: the file was removed."
#: Late in the evening, UTC: already the next morning in Shanghai.
LATE = datetime(2026, 1, 5, 23, 30, tzinfo=timezone.utc)
ROW = re.compile(r'<tr id="task-([^"]+)">(.*?)</tr>', re.S)


# --- helpers -------------------------------------------------------------------------


def add_user(username: str, posts: int = 0) -> int:
    """A user who can log in with PASSWORD, with ``posts`` posts (inside an app context)."""
    user = User(username=username, email=f"{username}@example.com")
    user.set_password(PASSWORD)
    db.session.add(user)
    db.session.add_all(Post(body=f"{username}'s post {n}", author=user) for n in range(posts))
    db.session.commit()
    return user.id


def add_export(user_id: int, *, created: datetime | None = None, name: str = EXPORT_TASK_NAME,
               **fields) -> str:
    """An export's Task row without a file, FAILURE unless told (inside an app context)."""
    task = Task(id=str(uuid4()), name=name, description="Exporting posts...", user_id=user_id,
                state=fields.pop("state", TaskState.FAILURE), created=created or utcnow(), **fields)
    db.session.add(task)
    db.session.commit()
    return task.id


def add_exported(user_id: int, *, finished: datetime | None = None, **fields) -> str:
    """An export whose file is written, its posts and size recorded (inside an app context)."""
    task_id = str(uuid4())
    name = export_file_name(task_id)
    count = write_posts_export(user_id, name, lambda done, total: None)
    finished = finished or utcnow()
    task = Task(id=task_id, name=EXPORT_TASK_NAME, description="Exporting posts...", user_id=user_id,
                state=fields.pop("state", TaskState.SUCCESS), progress=100,
                created=finished - timedelta(minutes=5), finished=finished,
                result_location=name, done=count, total=count,
                result_bytes=export_storage().size(name), **fields)
    db.session.add(task)
    db.session.commit()
    return task_id


def logged_in(app, username: str) -> AuthActions:
    auth = AuthActions(app.test_client())
    response = auth.login(username, PASSWORD)
    assert response.status_code == 302, response.get_data(as_text=True)
    return auth


def rows(html: str) -> dict[str, str]:
    """Each listed export's row, its text with the tags taken out, by task id, in page order."""
    return {task_id: " ".join(re.sub(r"<[^>]+>", " ", row).split()) for task_id, row in ROW.findall(html)}


def download_link(html: str, task_id: str) -> str | None:
    row = dict(ROW.findall(html))[task_id]
    match = re.search(r'<a href="([^"]+)">Download</a>', row)
    return match.group(1) if match else None


def retention(app) -> timedelta:
    return timedelta(days=app.config["EXPORT_RETENTION_DAYS"])


@pytest.fixture
def ann(app) -> int:
    with app.app_context():
        return add_user("ann", posts=3)


# --- what each row says ----------------------------------------------------------------


def test_a_running_export_shows_its_percent_and_no_link(app, ann):
    with app.app_context():
        task_id = add_export(ann, state=TaskState.PROGRESS, progress=42, done=42, total=100)
    html = logged_in(app, "ann").get("/exports").get_data(as_text=True)
    assert "Running (42%)" in rows(html)[task_id]
    assert "100" in rows(html)[task_id]  # the posts it is exporting, once known
    assert download_link(html, task_id) is None


def test_a_finished_export_shows_its_posts_size_and_a_working_download_link(app, ann):
    with app.app_context():
        task_id = add_exported(ann)
        size = export_storage().size(export_file_name(task_id))
    auth = logged_in(app, "ann")
    html = auth.get("/exports").get_data(as_text=True)
    row = rows(html)[task_id]
    assert row.startswith("Done") and " 3 " in f" {row} " and f"{size} Bytes" in row
    link = download_link(html, task_id)
    assert link == f"/exports/{task_id}"
    download = auth.get(link)
    assert download.status_code == 200
    assert [post["body"] for post in json.loads(download.data)["posts"]] == [f"ann's post {n}" for n in range(3)]


def test_a_failed_export_gives_its_reason_in_words_and_no_link(app, ann):
    with app.app_context():
        task_id = add_export(ann, error=WRITE_FAILED, finished=utcnow())
    html = logged_in(app, "ann").get("/exports").get_data(as_text=True)
    assert rows(html)[task_id].startswith(f"Failed {WRITE_FAILED}")
    assert download_link(html, task_id) is None and EXPIRED not in rows(html)[task_id]


def test_a_failed_export_whose_file_exists_still_has_its_link(app, ann):
    """The email failed, the file did not: the page is the way to it."""
    with app.app_context():
        task_id = add_exported(ann, state=TaskState.FAILURE, error=EMAIL_FAILED)
    html = logged_in(app, "ann").get("/exports").get_data(as_text=True)
    assert rows(html)[task_id].startswith(f"Failed {EMAIL_FAILED}")
    assert download_link(html, task_id) == f"/exports/{task_id}"


def test_an_export_past_its_retention_is_expired_without_asking_the_store(app, ann, monkeypatch):
    asked = []
    from app.main import routes

    monkeypatch.setattr(routes, "export_exists", lambda task: asked.append(task.id) or True)
    with app.app_context():
        # The file is still there (the cleanup has not run): the page does not look.
        old = add_exported(ann, finished=utcnow() - retention(app) - timedelta(hours=1))
        recent = add_exported(ann, finished=utcnow() - retention(app) + timedelta(hours=1))
        add_export(ann, error=WRITE_FAILED, finished=utcnow())
        add_export(ann, state=TaskState.PROGRESS, progress=10)
    html = logged_in(app, "ann").get("/exports").get_data(as_text=True)
    assert EXPIRED in rows(html)[old] and download_link(html, old) is None
    assert download_link(html, recent) == f"/exports/{recent}"
    assert asked == [recent]  # once, for the one export whose file may still be kept


def test_an_export_whose_file_was_removed_is_expired(app, ann):
    with app.app_context():
        task_id = add_exported(ann)
        (exports_dir() / export_file_name(task_id)).unlink()
    html = logged_in(app, "ann").get("/exports").get_data(as_text=True)
    assert EXPIRED in rows(html)[task_id] and download_link(html, task_id) is None


def test_an_unreachable_store_is_503_with_a_reason(app, ann, monkeypatch):
    from app.main import routes

    def unreachable(task):
        raise StorageError("could not read the size of s3://bucket/posts.json: timed out")

    monkeypatch.setattr(routes, "export_exists", unreachable)
    with app.app_context():
        add_exported(ann)
    response = logged_in(app, "ann").get("/exports")
    assert response.status_code == 503
    page = response.get_data(as_text=True)
    assert "Your exports cannot be reached just now" in page and "s3://" not in page


# --- which exports, in which order -----------------------------------------------------


def test_the_newest_export_comes_first(app, ann):
    start = utcnow() - timedelta(days=1)
    with app.app_context():
        middle = add_export(ann, created=start + timedelta(hours=2), finished=start + timedelta(hours=3))
        oldest = add_export(ann, created=start, finished=start + timedelta(hours=1))
        newest = add_export(ann, created=start + timedelta(hours=4), state=TaskState.PENDING)
    html = logged_in(app, "ann").get("/exports").get_data(as_text=True)
    assert list(rows(html)) == [newest, middle, oldest]


def test_only_the_users_own_exports_are_listed(app, ann):
    with app.app_context():
        bob = add_user("bob", posts=1)
        mine = add_exported(ann)
        bobs = [add_exported(bob), add_export(bob, state=TaskState.PROGRESS, progress=5)]
        ping = add_export(ann, name="ping", state=TaskState.SUCCESS, finished=utcnow())
    html = logged_in(app, "ann").get("/exports").get_data(as_text=True)
    assert list(rows(html)) == [mine]
    for task_id in (*bobs, ping):
        assert task_id not in html
    assert "bob's post" not in html
    assert list(rows(logged_in(app, "bob").get("/exports").get_data(as_text=True))) == bobs[::-1]


def test_the_list_is_paginated_25_a_page(app, ann):
    start = utcnow() - timedelta(days=1)
    with app.app_context():
        ids = [add_export(ann, created=start + timedelta(minutes=n), finished=start + timedelta(minutes=n))
               for n in range(30)]
    auth = logged_in(app, "ann")
    first = auth.get("/exports").get_data(as_text=True)
    second = auth.get("/exports?page=2").get_data(as_text=True)
    assert list(rows(first)) == ids[::-1][:25] and list(rows(second)) == ids[::-1][25:]
    assert "Page 1 of 2" in first and 'href="/exports?page=2"' in first
    assert "Page 2 of 2" in second and 'href="/exports?page=1"' in second
    assert rows(auth.get("/exports?page=3").get_data(as_text=True)) == {}
    assert list(rows(auth.get("/exports?page=nonsense").get_data(as_text=True))) == ids[::-1][:25]


def test_no_exports_says_so_and_leads_to_the_export_button(app, ann):
    with app.app_context():
        add_export(ann, name="ping", state=TaskState.SUCCESS, finished=utcnow())
    response = logged_in(app, "ann").get("/exports")
    html = response.get_data(as_text=True)
    assert response.status_code == 200 and rows(html) == {}
    assert "You have not exported your posts yet." in html
    assert 'href="/user/ann#export-posts"' in html
    assert 'id="export-posts"' in logged_in(app, "ann").get("/user/ann").get_data(as_text=True)


def test_a_visitor_is_sent_to_log_in(client):
    response = client.get("/exports")
    assert response.status_code == 302
    location = urlsplit(response.headers["Location"])
    assert location.path == "/auth/login" and parse_qs(location.query)["next"] == ["/exports"]


# --- the profile's link ----------------------------------------------------------------


def test_the_profile_links_to_the_exports_for_its_owner_only(app, ann):
    with app.app_context():
        add_user("bob")
    link = 'href="/exports"'
    auth = logged_in(app, "ann")
    assert link in auth.get("/user/ann").get_data(as_text=True)
    assert link not in auth.get("/user/bob").get_data(as_text=True)


# --- the reader's time zone and language ------------------------------------------------


def test_times_are_in_the_readers_time_zone(app, ann):
    with app.app_context():
        task_id = add_export(ann, created=LATE, finished=LATE + timedelta(minutes=1), error=WRITE_FAILED)
    auth = logged_in(app, "ann")
    auth.client.set_cookie("tz", "Asia/Shanghai")
    row = dict(ROW.findall(auth.get("/exports").get_data(as_text=True)))[task_id]
    for moment in (LATE, LATE + timedelta(minutes=1)):
        assert format_datetime(moment, "medium", tzinfo=zone("Asia/Shanghai"), locale="en") in row
        assert format_datetime(moment, "medium", tzinfo=zone("UTC"), locale="en") not in row
    assert "Jan 6, 2026" in row
    assert '<time datetime="2026-01-05T23:30:00+00:00">' in row  # the machine-readable moment stays UTC


def test_a_download_link_says_through_which_day_in_the_readers_time_zone(app, ann):
    """The file may go once it is EXPORT_RETENTION_DAYS old: finished late yesterday, UTC,
    it may go late on a day in London, the morning after in Shanghai; the day before that
    is the last one it is sure to be kept."""
    finished = (utcnow() - timedelta(days=1)).replace(hour=23, minute=30, second=0, microsecond=0)
    removable = finished + retention(app)
    with app.app_context():
        task_id = add_exported(ann, finished=finished)
    auth = logged_in(app, "ann")
    for tz, day in (("UTC", removable.date() - timedelta(days=1)), ("Asia/Shanghai", removable.date())):
        auth.client.set_cookie("tz", tz)
        row = rows(auth.get("/exports").get_data(as_text=True))[task_id]
        assert row.endswith(f"Download Kept until the end of {format_date(day, 'medium', locale='en')}"), (tz, row)


def test_a_russian_reader_sees_the_states_in_russian(app, ann):
    from flask_babel import force_locale, gettext

    with app.app_context():
        add_exported(ann)
        add_export(ann, error=WRITE_FAILED, finished=utcnow())
    auth = logged_in(app, "ann")
    auth.post("/language", data={"locale": "ru", "csrf_token": auth.csrf_token("/exports")})
    page = auth.get("/exports").get_data(as_text=True)
    with app.test_request_context(), force_locale("ru"):
        words = [gettext(word) for word in ("Your exports", "Done", "Failed", "Download", WRITE_FAILED)]
    assert "Готово" in words and [word for word in words if word not in page] == []

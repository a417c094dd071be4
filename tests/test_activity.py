"""The Activity page records what happens to an account: sign-ins, sign-outs, password
changes and resets, beside the exports."""
from __future__ import annotations

import html
import json
import re

import sqlalchemy as sa
from flask import g

from app import audit, password_reset
from app.extensions import db
from app.models import AuditEvent, User
from tests.conftest import AuthActions

NEW_PASSWORD = "a brand new passphrase"


def actions(app, username: str) -> list[str]:
    with app.app_context():
        user = db.session.scalar(sa.select(User).where(User.username == username))
        return list(db.session.scalars(sa.select(AuditEvent.action).where(AuditEvent.user_id == user.id)
                                       .order_by(AuditEvent.id)))


def test_sign_in_and_sign_out_are_recorded_with_where_from(app, auth):
    auth.signup("ada")
    auth.logout()
    assert actions(app, "ada") == ["signed_in", "signed_out"]
    with app.app_context():
        event = db.session.scalar(sa.select(AuditEvent).where(AuditEvent.action == "signed_in"))
        assert (event.method, event.path, event.host) == ("POST", "/auth/login", "localhost")


def test_a_failed_sign_in_records_nothing_for_the_account(app, auth):
    auth.register("ada")
    assert auth.login("ada", "not the password").status_code == 401
    assert actions(app, "ada") == []


def test_a_password_change_is_recorded(app, auth):
    auth.signup("ada")
    response = auth.post_form("/auth/change_password", {"current_password": "correct horse",
                                                         "password": NEW_PASSWORD, "password2": NEW_PASSWORD},
                              page="/auth/change_password")
    assert response.status_code == 302
    assert actions(app, "ada") == ["signed_in", "password_changed"]


def test_a_password_reset_is_recorded_for_the_account(app, auth):
    auth.register("ada")
    with app.app_context():
        token = password_reset.make_token(db.session.scalar(sa.select(User).where(User.username == "ada")))
    page = f"/auth/reset_password/{token}"
    response = auth.post_form(page, {"password": NEW_PASSWORD, "password2": NEW_PASSWORD}, page=page)
    assert response.status_code == 302
    assert actions(app, "ada") == ["password_reset"]


def test_the_activity_page_names_each_event_and_shows_only_the_users_own(app, auth):
    auth.signup("ada")
    auth.logout()
    other = AuthActions(app.test_client())
    other.signup("bob")
    auth.login("ada")
    page = auth.get("/activity").get_data(as_text=True)
    assert page.count("signed in") == 2 and page.count("signed out") == 1
    assert "bob" not in page


# --- an export's facts, worded for the reader ------------------------------------------------


def add_export_event(app, username: str, detail: str) -> None:
    with app.app_context():
        user = db.session.scalar(sa.select(User).where(User.username == username))
        db.session.add(AuditEvent(user_id=user.id, action="export_posts", detail=detail, method="POST",
                                  path="/export_posts", host="localhost", via_worker=True))
        db.session.commit()


def detail_cells(page: str) -> list[str]:
    return [cell.strip() for cell in re.findall(r"<td>([^<]*)</td>", page) if "," in cell]


def test_an_exports_facts_are_kept_as_facts_and_worded_in_the_readers_language(app, auth):
    """Stored as numbers, shown with the reader's plural, digit groups and size units."""
    auth.signup("ada")
    with app.test_request_context():
        audit.record("export_posts", {"posts": 400_000, "bytes": 31_234_567, "attached": False})
        audit.record("export_posts", {"posts": 1, "bytes": 512, "attached": True})
        (linked, attached) = [detail for _, detail, _ in g.audit_events]
    assert json.loads(linked) == {"posts": 400_000, "bytes": 31_234_567, "attached": False}
    add_export_event(app, "ada", linked)
    add_export_event(app, "ada", attached)

    assert detail_cells(auth.get("/activity").get_data(as_text=True)) == [
        "1 post, 512 Bytes, attached to the email", "400,000 posts, 31.2 MB, linked from the email"]
    auth.post("/language", data={"locale": "ru", "csrf_token": auth.csrf_token("/activity")})
    russian = detail_cells(auth.get("/activity").get_data(as_text=True))
    assert re.fullmatch("1 запись, 512 байт, файл приложен к письму", russian[0]), russian
    assert re.fullmatch("400[\u00a0\u202f]000 записей, 31,2 МБ, ссылка на файл в письме", russian[1]), russian


def test_a_detail_stored_as_text_or_as_facts_of_another_shape_is_shown_as_it_is(app, auth):
    auth.signup("ada")
    stored = ["3 posts, 1234 bytes, attached", '{"posts":3,"size":1234}', "[3, 1234]"]
    for detail in stored:
        add_export_event(app, "ada", detail)
    page = auth.get("/activity")
    assert page.status_code == 200
    cells = [html.unescape(cell.strip()) for cell in re.findall(r"<td>([^<]*)</td>", page.get_data(as_text=True))]
    assert list(reversed(stored)) == [cell for cell in cells if "3" in cell]

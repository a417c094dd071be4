"""Access: who may see what, and which requests need a login and a CSRF token.

Everything is enumerated from the app's ``url_map``, so a route added later is checked
without editing this module (and one with an argument nobody can build fails loudly):

* user B cannot read user A's task JSON (``/tasks/<id>``) or download A's export
  (``/exports/<id>``) -- 404, as for a task that does not exist -- and no page B can
  open shows A's progress alert (no ``data-task-id`` of A's, indeed no id of A's at all);
* every rule accepting POST/PUT/PATCH/DELETE refuses a request without a valid CSRF
  token with 400, logged in and logged out, whether the token is missing, empty,
  garbage, another session's, signed with another secret, expired or only in a header;
  and nothing changes (no user, post, task or audit row; the login state stays);
* every page except the public ones redirects a visitor to ``/auth/login?next=<page>``
  (the task JSON answers 401 instead).

In process (no worker): tasks launched here go to a Redis database nobody consumes.
"""
from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest
import sqlalchemy as sa
from itsdangerous import TimestampSigner, URLSafeTimedSerializer
from werkzeug.routing import Rule
from werkzeug.routing.converters import IntegerConverter, PathConverter, UUIDConverter
from werkzeug.urls import iri_to_uri

from app.exports import EXPORT_TASK_NAME, export_file_name, write_posts_export
from app.extensions import db
from app.models import AuditEvent, Post, Task, TaskState, User, utcnow
from tests.conftest import TEST_SECRET_KEY, AuthActions, csrf_token_in

PASSWORD = "correct horse"
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: Pages anyone may open, and the language switcher (visitors choose before they register).
#: Everything else must send a visitor to the login page.
PUBLIC_ENDPOINTS = frozenset({"static", "auth.login", "auth.register", "auth.logout", "health.healthz",
                              "auth.reset_password_request", "auth.reset_password", "main.set_language",
                              "main.favicon"})
#: What Flask-WTF's CSRFError looks like once our error handler has rendered it.
CSRF_REFUSAL = "The form could not be accepted"
#: Requests that would succeed with the right token, so a refusal is the token's doing.
VALID_FORMS = {
    "auth.login": {"username": "bob", "password": PASSWORD},
    "auth.register": {"username": "carol", "email": "carol@example.com",
                      "password": PASSWORD, "password2": PASSWORD},
    "auth.logout": {},
    "auth.reset_password_request": {"email": "ann@example.com"},
    # The same password again: the next iteration signs in with it.
    "auth.change_password": {"current_password": PASSWORD, "password": PASSWORD, "password2": PASSWORD},
    "auth.reset_password": {"password": PASSWORD, "password2": PASSWORD},
    "main.index": {"post": "a post that must never be stored"},
    "main.send_ping": {},
    "main.export_posts": {},
    "main.set_language": {"locale": "en"},
}


# --- enumerating the url_map ------------------------------------------------------------


def rules(app, methods: frozenset[str]) -> list[tuple[Rule, str]]:
    """(rule, method) for every method in ``methods`` that a rule accepts, in map order."""
    found = []
    for rule in app.url_map.iter_rules():
        for method in sorted((rule.methods or set()) & methods):
            found.append((rule, method))
    return found


def build(rule: Rule, samples: dict[str, list[str]]) -> list[str]:
    """Every URL of ``rule`` built from the samples of each of its arguments."""
    combos: list[dict[str, str]] = [{}]
    for name in sorted(rule.arguments - set(rule.defaults or {})):
        converter = rule._converters[name]
        values = samples.get(name)
        if values is None:
            if isinstance(converter, IntegerConverter):
                values = ["1"]
            elif isinstance(converter, UUIDConverter):
                values = [str(uuid.uuid4())]
            elif isinstance(converter, PathConverter):
                values = ["a/b.txt"]
            else:
                pytest.fail(f"no sample value for <{name}> of {rule.rule} ({rule.endpoint}): "
                            "add one to the samples so this route is checked")
        combos = [{**combo, name: value} for combo in combos for value in values]
    urls = []
    for combo in combos:
        built = rule.build(combo, append_unknown=False)
        assert built is not None, f"cannot build {rule.rule} from {combo}"
        urls.append(built[1])
    return urls


# --- the two users ----------------------------------------------------------------------


def add_user(username: str) -> int:
    user = User(username=username, email=f"{username}@example.com")
    user.set_password(PASSWORD)
    db.session.add(user)
    db.session.commit()
    return user.id


def reset_token(app, username: str) -> str:
    """A working password-reset token of ``username``."""
    from app.password_reset import make_token

    with app.app_context():
        return make_token(db.session.scalar(sa.select(User).where(User.username == username)))


def logged_in(app, username: str) -> AuthActions:
    auth = AuthActions(app.test_client())
    response = auth.login(username, PASSWORD)
    assert response.status_code == 302, response.get_data(as_text=True)
    return auth


def task_ids(app, username: str) -> list[str]:
    with app.app_context():
        return list(db.session.scalars(
            sa.select(Task.id).join(User).where(User.username == username).order_by(Task.created)))


def finished_export(user_id: int) -> str:
    """A finished export whose file is written (inside an app context)."""
    task_id = str(uuid.uuid4())
    write_posts_export(user_id, export_file_name(task_id), lambda done, total: None)
    db.session.add(Task(id=task_id, name=EXPORT_TASK_NAME, description="Exporting posts...",
                        user_id=user_id, state=TaskState.SUCCESS, progress=100, finished=utcnow(),
                        result_location=export_file_name(task_id)))
    db.session.commit()
    return task_id


@pytest.fixture
def ann_and_bob(app):
    """ann started an export and a ping through the real views and has a finished export
    on disk; bob started a ping of his own. Returns (ann's ids, bob's ids, finished id)."""
    with app.app_context():
        ann_id = add_user("ann")
        add_user("bob")
        db.session.add(Post(body="ann's post", author=db.session.get(User, ann_id)))
        db.session.commit()
        finished = finished_export(ann_id)
    ann = logged_in(app, "ann")
    assert ann.post_form("/export_posts", page="/user/ann").status_code == 302
    assert ann.post_form("/ping").status_code == 302
    bob = logged_in(app, "bob")
    assert bob.post_form("/ping").status_code == 302
    ann_ids, bob_ids = task_ids(app, "ann"), task_ids(app, "bob")
    assert len(ann_ids) == 3 and finished in ann_ids and len(bob_ids) == 1
    with app.app_context():
        running = db.session.scalars(
            sa.select(Task).where(Task.id.in_(ann_ids), Task.finished.is_(None))).all()
        assert {task.name for task in running} == {"export_posts", "ping"}
    return ann_ids, bob_ids, finished


# --- 1. one user's tasks are invisible to another ---------------------------------------


def test_the_owner_sees_her_task_json_download_and_alerts(app, ann_and_bob):
    """The control: what bob must not see is really there for ann."""
    ann_ids, _, finished = ann_and_bob
    ann = logged_in(app, "ann")
    for task_id in ann_ids:
        response = ann.get(f"/tasks/{task_id}")
        assert response.status_code == 200 and response.get_json()["id"] == task_id
    download = ann.get(f"/exports/{finished}")
    assert download.status_code == 200 and b"ann's post" in download.data
    page = ann.get("/").get_data(as_text=True)
    for task_id in ann_ids:
        running = task_id != finished
        assert (f'data-task-id="{task_id}"' in page) is running


def test_another_users_task_json_and_download_are_404(app, ann_and_bob):
    ann_ids, _, finished = ann_and_bob
    bob = logged_in(app, "bob")
    for task_id in ann_ids:
        for accept in ("text/html", "application/json"):
            for path in (f"/tasks/{task_id}", f"/exports/{task_id}"):
                response = bob.get(path, headers={"Accept": accept})
                assert response.status_code == 404, (path, accept)
                body = response.get_data(as_text=True)
                assert task_id not in body, (path, accept)
                assert "ann's post" not in body, (path, accept)
                if accept == "application/json":
                    assert set(response.get_json()) == {"error", "message"}, path
    # Exactly what a task that does not exist at all answers: nothing tells them apart.
    unknown = bob.get(f"/tasks/{uuid.uuid4()}", headers={"Accept": "application/json"})
    finished_for_bob = bob.get(f"/tasks/{finished}", headers={"Accept": "application/json"})
    assert finished_for_bob.get_json() == unknown.get_json()


def test_no_page_shows_another_users_progress_alert(app, ann_and_bob):
    """Every GET rule, built with ann's and bob's names and task ids, opened by bob."""
    ann_ids, bob_ids, _ = ann_and_bob
    bob = logged_in(app, "bob")
    samples = {"username": ["ann", "bob"], "task_id": [*ann_ids, *bob_ids], "filename": ["tasks.js"],
               "token": [reset_token(app, "ann")]}
    pages = [url for rule, _ in rules(app, frozenset({"GET"})) for url in build(rule, samples)]
    assert {"/", "/index", "/user/ann", "/activity", "/exports", f"/tasks/{ann_ids[0]}"} <= set(pages)
    shown_to_bob = 0
    for url in pages:
        response = bob.get(url, follow_redirects=True)
        body = response.get_data().decode("utf-8", "replace")  # the favicon is binary
        for task_id in ann_ids:
            assert f'data-task-id="{task_id}"' not in body, url
            assert task_id not in body, url
        shown_to_bob += f'data-task-id="{bob_ids[0]}"' in body
    # bob's own alert is on his pages: the template does render alerts, only not ann's.
    assert shown_to_bob >= 4


# --- 2. CSRF ----------------------------------------------------------------------------


def _snapshot(app, auth: AuthActions) -> tuple:
    with app.app_context():
        counts = tuple(db.session.scalar(sa.select(sa.func.count()).select_from(model))
                       for model in (User, Post, Task, AuditEvent))
    with auth.client.session_transaction() as session:
        return counts, session.get("_user_id")


class _OldSigner(TimestampSigner):
    def get_timestamp(self) -> int:
        return int(time.time()) - 2 * 3600


def _token_variants(app, auth: AuthActions) -> Iterator[tuple[str, dict, dict]]:
    """(problem, extra form fields, extra headers): every way of not having a valid token."""
    auth.get("/auth/logout")  # a form page for anyone: the session gets a CSRF secret
    with auth.client.session_transaction() as session:
        raw = session.get("csrf_token")
    assert raw, "visiting a form page must put a CSRF secret in the session"
    other_session = csrf_token_in(AuthActions(app.test_client()).get("/auth/login").get_data(as_text=True))
    another_secret = URLSafeTimedSerializer("another-secret-entirely", salt="wtf-csrf-token").dumps(raw)
    expired = URLSafeTimedSerializer(TEST_SECRET_KEY, salt="wtf-csrf-token", signer=_OldSigner).dumps(raw)
    yield "missing", {}, {}
    yield "empty", {"csrf_token": ""}, {}
    yield "garbage", {"csrf_token": "forged-" + uuid.uuid4().hex}, {}
    yield "another session's token", {"csrf_token": other_session}, {}
    yield "signed with another secret", {"csrf_token": another_secret}, {}
    yield "expired", {"csrf_token": expired}, {}
    yield "forged X-CSRFToken header", {}, {"X-CSRFToken": "forged-" + uuid.uuid4().hex}


def test_the_state_changing_rules_are_the_ones_we_know(app):
    """The enumeration itself works; a new POST route is checked by the tests below."""
    found = {(rule.rule, method) for rule, method in rules(app, STATE_CHANGING)}
    assert {("/auth/login", "POST"), ("/auth/register", "POST"), ("/auth/logout", "POST"), ("/", "POST"),
            ("/index", "POST"), ("/ping", "POST"), ("/export_posts", "POST")} <= found


@pytest.mark.parametrize("logged_in_as", [None, "bob"])
def test_every_state_changing_request_without_a_valid_csrf_token_is_400(app, logged_in_as):
    with app.app_context():
        add_user("ann"), add_user("bob")
    auth = logged_in(app, logged_in_as) if logged_in_as else AuthActions(app.test_client())
    variants = list(_token_variants(app, auth))
    before = _snapshot(app, auth)
    signed_in_as = None if before[1] is None else before[1].partition(":")[0]
    assert signed_in_as == (None if logged_in_as is None else str(2))
    failures = []
    checked = 0
    for rule, method in rules(app, STATE_CHANGING):
        for url in build(rule, {"username": ["ann"], "task_id": [str(uuid.uuid4())],
                                "token": [reset_token(app, "ann")]}):
            form = VALID_FORMS.get(rule.endpoint, {})
            for problem, fields, headers in variants:
                response = auth.client.open(url, method=method, data={**form, **fields},
                                            headers={"Referer": "http://localhost/", **headers})
                body = response.get_data(as_text=True)
                checked += 1
                if response.status_code != 400 or CSRF_REFUSAL not in body:
                    shown = body[body.find("<h1>"):][:200] if "<h1>" in body else body[:200]
                    failures.append(f"{method} {url} ({problem}): {response.status_code} {shown!r}")
                elif _snapshot(app, auth) != before:
                    failures.append(f"{method} {url} ({problem}): refused, but changed {before} "
                                    f"to {_snapshot(app, auth)}")
    assert not failures, "\n".join(failures)
    assert checked >= 7 * len(variants)


@pytest.mark.parametrize("logged_in_as", [None, "bob"])
def test_the_same_requests_with_the_real_token_get_past_csrf(app, logged_in_as):
    """The control: each request above is refused for its token, not for its form."""
    with app.app_context():
        add_user("ann"), add_user("bob")
    for rule, method in rules(app, STATE_CHANGING):
        for url in build(rule, {"username": ["ann"], "task_id": [str(uuid.uuid4())],
                                "token": [reset_token(app, "ann")]}):
            auth = logged_in(app, logged_in_as) if logged_in_as else AuthActions(app.test_client())
            token = auth.csrf_token("/" if logged_in_as else "/auth/login")
            response = auth.client.open(url, method=method,
                                        data={**VALID_FORMS.get(rule.endpoint, {}), "csrf_token": token},
                                        headers={"Referer": "http://localhost/"})
            assert CSRF_REFUSAL not in response.get_data(as_text=True), (method, url)
            if rule.endpoint in VALID_FORMS:
                assert response.status_code == 302, (method, url, response.get_data(as_text=True)[:300])
            with app.app_context():
                db.session.execute(sa.delete(User).where(User.username == "carol"))
                db.session.commit()


# --- 3. login required ------------------------------------------------------------------


def _login_required_pages(app, samples) -> list[str]:
    return [url for rule, _ in rules(app, frozenset({"GET"})) if rule.endpoint not in PUBLIC_ENDPOINTS
            for url in build(rule, samples)]


def test_every_private_page_redirects_a_visitor_to_login_with_next(app):
    with app.app_context():
        ann_id = add_user("ann")
        finished = finished_export(ann_id)
    samples = {"username": ["ann", "nobody-by-that-name"], "task_id": [finished, str(uuid.uuid4())],
               "token": [reset_token(app, "ann")]}
    pages = _login_required_pages(app, samples)
    assert {"/", "/index", "/user/ann", "/user/nobody-by-that-name", f"/tasks/{finished}",
            f"/exports/{finished}", "/activity", "/exports"} <= set(pages)
    client = app.test_client()
    for page in pages:
        for target in (page, f"{page}?page=2&q=caf%C3%A9"):
            response = client.get(target)
            if page.startswith("/tasks/"):  # JSON for tasks.js: 401, which stops its polling
                assert response.status_code == 401 and set(response.get_json()) == {"error", "message"}, target
                continue
            assert response.status_code == 302, target
            location = urlsplit(response.headers["Location"])
            assert location.path == "/auth/login", target
            # Flask-Login takes the IRI werkzeug gives as request.url: the same URL, é unquoted.
            (next_page,) = parse_qs(location.query)["next"]
            assert iri_to_uri(next_page) == target, target
            assert "ann's post" not in response.get_data(as_text=True)


def test_post_only_private_rules_also_send_a_visitor_to_login(app):
    """With a valid CSRF token (so CSRF is not what stops them), a visitor still needs to log in."""
    auth = AuthActions(app.test_client())
    posted = 0
    for rule, method in rules(app, STATE_CHANGING):
        if rule.endpoint in PUBLIC_ENDPOINTS or "GET" in (rule.methods or ()):
            continue
        token = auth.csrf_token("/auth/login")
        response = auth.client.open(rule.rule, method=method, data={"csrf_token": token})
        assert response.status_code == 302, rule.rule
        location = urlsplit(response.headers["Location"])
        assert location.path == "/auth/login" and parse_qs(location.query)["next"] == [rule.rule]
        posted += 1
    assert posted >= 2  # /ping and /export_posts
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(Task)) == 0


def test_the_public_pages_do_not_ask_for_a_login(app):
    with app.app_context():
        add_user("ann")
    client = app.test_client()
    for rule, _ in rules(app, frozenset({"GET"})):
        if rule.endpoint not in PUBLIC_ENDPOINTS:
            continue
        for url in build(rule, {"filename": ["tasks.js"], "token": [reset_token(app, "ann")]}):
            response = client.get(url)
            assert not response.headers.get("Location", "").startswith("/auth/login"), url
            assert response.status_code in (200, 503), url  # /healthz answers 503 if the broker is down

"""Bad input gets a clear answer, never a 500: page numbers, bodies too large or too deep
to carry, and task status polls without a session."""
import io
from urllib.parse import parse_qs, urlsplit

import pytest
import sqlalchemy as sa

from app.extensions import db
from app.models import Task, TaskState, User
from tests.conftest import csrf_token_in

JSON = {"Accept": "application/json"}
TEN_MB = 10 * 1024 * 1024


# --- page numbers ------------------------------------------------------------------------


@pytest.fixture
def susan(auth):
    auth.signup("susan")
    assert auth.post_form("/", {"post": "the only post"}).status_code == 302
    return auth


@pytest.mark.parametrize("page", ["9223372036854775807", "99999999999999999999999999", "-5", "0", "abc", ""])
@pytest.mark.parametrize("path", ["/", "/user/susan", "/activity"])
def test_any_page_number_is_answered(susan, path, page):
    response = susan.client.get(path, query_string={"page": page})
    assert response.status_code == 200


@pytest.mark.parametrize("page", ["-5", "abc"])
@pytest.mark.parametrize("path", ["/", "/user/susan"])
def test_a_page_below_one_or_not_a_number_is_the_first(susan, path, page):
    response = susan.client.get(path, query_string={"page": page})
    assert "the only post" in response.get_data(as_text=True)


def test_a_page_past_int64_is_an_empty_page(susan):
    response = susan.client.get("/", query_string={"page": "9223372036854775807"})
    assert response.status_code == 200
    assert "the only post" not in response.get_data(as_text=True)


# --- MAX_CONTENT_LENGTH -----------------------------------------------------------------------


def test_max_content_length_defaults_to_one_mib(app):
    assert app.config["MAX_CONTENT_LENGTH"] == 1024 * 1024


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=xyz"])
def test_a_body_over_the_limit_is_refused_unread_before_csrf(client, content_type):
    body = io.BytesIO(b"-" * TEN_MB)
    response = client.post("/auth/login", input_stream=body, content_type=content_type)
    assert response.status_code == 413  # not 400: CSRF never got to the form
    assert body.tell() == 0  # not a byte of it was read
    html = response.get_data(as_text=True)
    assert ("The request body of 10,485,760 bytes is larger than the 1,048,576 bytes this site accepts."
            in html)


def test_a_file_upload_over_the_limit_is_413_not_a_csrf_error(client):
    # A file part is not held to MAX_FORM_MEMORY_SIZE: without MAX_CONTENT_LENGTH it would be
    # parsed whole, and the missing token would be the answer.
    response = client.post("/auth/login", data={"file": (io.BytesIO(b"x" * TEN_MB), "big.bin")})
    assert response.status_code == 413


def test_a_json_client_gets_the_reason_as_json(app, auth):
    auth.signup("susan")
    token = csrf_token_in(auth.get("/").get_data(as_text=True))
    response = auth.post("/export_posts", data="[" + "0," * 600_000 + "0]",
                         headers={**JSON, "Content-Type": "application/json", "X-CSRFToken": token})
    assert response.status_code == 413
    body = response.get_json()
    assert body["error"] == "Request Entity Too Large"
    assert "larger than the 1,048,576 bytes this site accepts" in body["message"]
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count(Task.id))) == 0  # the view never ran


def test_max_content_length_comes_from_the_environment(make_app):
    client = make_app(MAX_CONTENT_LENGTH="1000").test_client()
    response = client.post("/auth/login", data={"username": "x" * 2000}, headers=JSON)
    assert response.status_code == 413
    assert "larger than the 1,000 bytes" in response.get_json()["message"]


# --- a body the carrier cannot take to the worker ---------------------------------------------

NESTED_TOO_DEEP = "[" * 10_000 + "]" * 10_000


def post_export(auth, accept: str):
    token = csrf_token_in(auth.get("/user/susan").get_data(as_text=True))
    return auth.post("/export_posts", data=NESTED_TOO_DEEP,
                     headers={"Accept": accept, "Content-Type": "application/json", "X-CSRFToken": token})


def assert_no_task_left_running(app) -> None:
    with app.app_context():
        tasks = db.session.scalars(sa.select(Task)).all()
        assert [(task.state, task.finished is not None) for task in tasks] == [(TaskState.FAILURE, True)]


# 400, not 503: the request itself cannot be carried, so trying again cannot help (503 says
# "come back later"); not 413, which is about size (this body is 20 kB); not 422, which
# would say the body was read as the view's input (this view takes none).
def test_a_json_body_too_deep_to_carry_is_400_with_the_reason(app, auth):
    auth.signup("susan")
    response = post_export(auth, "application/json")
    assert response.status_code == 400
    reason = response.get_json()["error"]
    assert "could not be carried to the background job" in reason
    assert "nested more than 100 levels deep" in reason
    assert_no_task_left_running(app)


def test_a_browser_is_told_why_on_the_page_it_came_from(app, auth):
    auth.signup("susan")
    response = post_export(auth, "text/html")
    assert response.status_code == 302 and response.headers["Location"] == "/user/susan"
    page = auth.get("/user/susan").get_data(as_text=True)
    assert "could not be carried to the background job" in page
    assert_no_task_left_running(app)


# --- task status without a session -------------------------------------------------------------


@pytest.fixture
def susans_task(app, auth):
    auth.signup("susan")
    with app.app_context():
        user = db.session.scalar(sa.select(User).where(User.username == "susan"))
        task = Task(id="11111111-2222-3333-4444-555555555555", name="export_posts",
                    description="Exporting posts...", user_id=user.id, state=TaskState.PROGRESS, progress=40)
        db.session.add(task)
        db.session.commit()
        return task.id


def assert_401_json(response) -> None:
    assert response.status_code == 401
    assert "Location" not in response.headers
    body = response.get_json()
    assert body["error"] == "Unauthorized" and "signed out" in body["message"]


@pytest.mark.parametrize("accept", ["*/*", "application/json", "text/html"])
def test_task_status_after_logout_is_401_json(auth, susans_task, accept):
    assert auth.get(f"/tasks/{susans_task}").status_code == 200
    auth.logout()
    assert_401_json(auth.get(f"/tasks/{susans_task}", headers={"Accept": accept}))


def test_task_status_without_ever_logging_in_is_401_json(client):
    assert_401_json(client.get("/tasks/some-task-id"))


def test_json_clients_of_pages_get_401_json(client):
    assert_401_json(client.get("/user/susan", headers=JSON))


def test_pages_still_redirect_to_login_with_the_message(client):
    response = client.get("/user/susan", headers={"Accept": "text/html"})
    assert response.status_code == 302
    location = urlsplit(response.headers["Location"])
    assert location.path == "/auth/login" and parse_qs(location.query)["next"] == ["/user/susan"]
    login_page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "Please log in to access this page." in login_page

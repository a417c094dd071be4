"""app/auth: registration, login and logout through the real forms, CSRF on."""
import re
from urllib.parse import urljoin, urlsplit

import pytest
import sqlalchemy as sa

from app.extensions import db
from app.models import User
from tests.conftest import csrf_token_in

FORM_ERROR = re.compile(r'<span class="error">([^<]*)</span>')


def form_errors(response) -> list[str]:
    return FORM_ERROR.findall(response.get_data(as_text=True))


def usernames(app) -> list[str]:
    with app.app_context():
        return list(db.session.scalars(sa.select(User.username).order_by(User.username)))


def test_register_page_has_the_form(client):
    response = client.get("/auth/register")
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    assert all(f'name="{field}"' in html for field in ("username", "email", "password", "password2"))
    csrf_token_in(html)


def input_names(html: str) -> list[str]:
    """The names of a page's visible inputs, in the order a reader meets them."""
    tags = [dict(re.findall(r'(\w+)="([^"]*)"', tag)) for tag in re.findall(r"<input[^>]*>", html)]
    return [tag["name"] for tag in tags if tag.get("type") not in ("hidden", "submit")]


def test_the_register_form_asks_for_the_password_twice_after_the_name_and_address(client):
    assert input_names(client.get("/auth/register").get_data(as_text=True)) == [
        "username", "email", "password", "password2"]


def test_the_change_password_form_asks_for_the_current_password_first(app, auth):
    auth.register()
    auth.login()
    assert input_names(auth.get("/auth/change_password").get_data(as_text=True)) == [
        "current_password", "password", "password2"]


def test_register_creates_the_user_and_sends_them_to_login(app, auth):
    response = auth.register("susan", email="susan@example.com", password="correct horse")
    assert response.status_code == 302
    assert response.headers["Location"] == "/auth/login"
    with app.app_context():
        user = db.session.scalar(sa.select(User).where(User.username == "susan"))
        assert user.email == "susan@example.com"
        assert user.password_hash != "correct horse"
        assert user.check_password("correct horse") and not user.check_password("wrong horse")


def test_register_then_login_page_congratulates(auth):
    response = auth.register("susan", follow_redirects=True)
    assert "you are now a registered user" in response.get_data(as_text=True)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"username": "bad name!"}, "Use letters, digits, dots, dashes and underscores only."),
        ({"username": "ab"}, "Field must be between 3 and 64 characters long."),
        ({"username": "x" * 65}, "Field must be between 3 and 64 characters long."),
        ({"email": "not-an-email"}, "Invalid email address."),
        ({"password": "short12"}, "Use at least 8 characters."),
        ({"password2": "different horse"}, "Passwords must match."),
        ({"username": ""}, "This field is required."),
        ({"email": ""}, "This field is required."),
        ({"password": "", "password2": ""}, "This field is required."),
        ({"username": "   "}, "This field is required."),
    ],
    ids=["bad-characters", "short-username", "long-username", "invalid-email", "short-password",
         "mismatched-password2", "empty-username", "empty-email", "empty-password", "blank-username"],
)
def test_register_rejects_bad_input_as_a_form_error(app, auth, fields, message):
    response = auth.register(**{"username": "susan", **fields})
    assert response.status_code == 400
    assert message in form_errors(response)
    assert usernames(app) == []


def test_register_with_no_fields_at_all_is_a_form_error(app, auth):
    response = auth.client.post("/auth/register", data={"csrf_token": auth.csrf_token("/auth/register")})
    assert response.status_code == 400
    assert form_errors(response).count("This field is required.") == 4
    assert usernames(app) == []


def test_register_rejects_a_duplicate_username(app, auth):
    auth.register("susan", email="susan@example.com")
    response = auth.register("susan", email="other@example.com")
    assert response.status_code == 400
    assert "That username is taken; please choose another." in form_errors(response)
    assert usernames(app) == ["susan"]


def test_register_rejects_a_username_that_differs_only_in_case(app, auth):
    auth.register("susan", email="susan@example.com")
    response = auth.register("Susan", email="other@example.com")
    assert response.status_code == 400
    assert "That username is taken; please choose another." in form_errors(response)
    assert usernames(app) == ["susan"]


def test_register_rejects_a_duplicate_email_whatever_its_case(app, auth):
    auth.register("susan", email="susan@example.com")
    response = auth.register("bob", email="SUSAN@Example.COM")
    assert response.status_code == 400
    assert "That email address is already registered." in form_errors(response)
    assert usernames(app) == ["susan"]


def test_register_rejects_a_duplicate_email_stored_in_capitals(app, auth):
    auth.register("susan", email="Susan@Example.com")
    response = auth.register("bob", email="susan@example.com")
    assert response.status_code == 400
    assert usernames(app) == ["susan"]


def test_login_logs_the_user_in(auth):
    auth.register("susan")
    response = auth.login("susan")
    assert response.status_code == 302
    assert response.headers["Location"] == "/"
    assert "Hi, susan!" in auth.client.get("/").get_data(as_text=True)


@pytest.mark.parametrize(
    ("username", "password"), [("susan", "wrong horse"), ("nobody", "correct horse")],
    ids=["wrong-password", "unknown-user"],
)
def test_login_with_bad_credentials_is_401_with_a_message(auth, username, password):
    auth.register("susan", password="correct horse")
    response = auth.login(username, password)
    assert response.status_code == 401
    assert "Invalid username or password." in response.get_data(as_text=True)
    assert auth.client.get("/").status_code == 302


@pytest.mark.parametrize(
    "fields", [{"username": ""}, {"password": ""}, {}], ids=["no-username", "no-password", "nothing"]
)
def test_login_with_empty_fields_is_a_form_error(auth, fields):
    data = {"username": "susan", "password": "correct horse", **fields} if fields else {}
    response = auth.client.post("/auth/login", data={**data, "csrf_token": auth.csrf_token()})
    assert response.status_code == 400
    assert "This field is required." in form_errors(response)


def login_with_next(auth, next_url: str):
    token = auth.csrf_token()
    return auth.client.post(
        "/auth/login", query_string={"next": next_url},
        data={"username": "susan", "password": "correct horse", "csrf_token": token},
    )


@pytest.mark.parametrize("next_url", ["/user/susan", "/index?page=2"])
def test_login_follows_a_same_site_next(auth, next_url):
    auth.register("susan")
    response = login_with_next(auth, next_url)
    assert response.status_code == 302
    assert response.headers["Location"] == next_url


@pytest.mark.parametrize(
    "next_url",
    ["//evil.example", "https://evil.example", "https://evil.example/", "http://localhost.evil.example/",
     "///evil.example", "/\\evil.example", "\\\\evil.example", "javascript:alert(1)", "user/susan"],
)
def test_login_refuses_to_redirect_off_site(auth, next_url):
    auth.register("susan")
    response = login_with_next(auth, next_url)
    assert response.status_code == 302
    location = response.headers["Location"]
    # Resolve the Location as a browser would (browsers read "\" as "/").
    resolved = urlsplit(urljoin("http://localhost/auth/login", location.replace("\\", "/")))
    assert resolved.netloc == "localhost" and resolved.scheme == "http"


@pytest.mark.parametrize("next_url", ["//evil.example", "https://evil.example"])
def test_login_with_an_off_site_next_goes_to_index(auth, next_url):
    auth.register("susan")
    assert login_with_next(auth, next_url).headers["Location"] == "/"


def test_remember_me_sets_a_remember_cookie(auth):
    auth.register("susan")
    token = auth.csrf_token()
    auth.client.post(
        "/auth/login",
        data={"username": "susan", "password": "correct horse", "remember_me": "y", "csrf_token": token},
    )
    cookie = auth.client.get_cookie("remember_token")
    assert cookie is not None and cookie.http_only


def test_login_without_remember_me_sets_no_remember_cookie(auth):
    auth.register("susan")
    auth.login("susan")
    assert auth.client.get_cookie("remember_token") is None


@pytest.mark.parametrize(
    ("path", "data"),
    [
        ("/auth/login", {"username": "susan", "password": "correct horse"}),
        ("/auth/register", {"username": "susan", "email": "susan@example.com",
                            "password": "correct horse", "password2": "correct horse"}),
        ("/auth/logout", {}),
    ],
)
def test_post_without_csrf_token_is_refused_with_the_csrf_error_page(app, client, path, data):
    client.get(path)  # a session exists, so only the token is missing
    response = client.post(path, data=data)
    html = response.get_data(as_text=True)
    assert response.status_code == 400
    assert "The form could not be accepted" in html and "CSRF token is missing" in html
    assert 'class="brand"' in html
    assert usernames(app) == []


def test_post_with_a_forged_csrf_token_is_refused(app, client):
    client.get("/auth/register")
    response = client.post("/auth/register", data={
        "username": "susan", "email": "susan@example.com", "password": "correct horse",
        "password2": "correct horse", "csrf_token": "forged",
    })
    assert response.status_code == 400
    assert "The form could not be accepted" in response.get_data(as_text=True)
    assert usernames(app) == []


def test_get_logout_asks_for_confirmation_and_stays_logged_in(auth):
    auth.signup("susan")
    response = auth.client.get("/auth/logout")
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "Log out?" in html and 'method="post"' in html
    csrf_token_in(html)
    assert auth.client.get("/").status_code == 200


def test_post_logout_with_token_logs_out(auth):
    auth.signup("susan")
    response = auth.logout()
    assert response.status_code == 302
    assert response.headers["Location"] == "/auth/login"
    assert auth.client.get("/").status_code == 302


def test_logout_confirmation_form_logs_out(auth):
    auth.signup("susan")
    token = csrf_token_in(auth.client.get("/auth/logout").get_data(as_text=True))
    auth.client.post("/auth/logout", data={"csrf_token": token})
    assert auth.client.get("/").status_code == 302


@pytest.mark.parametrize("path", ["/auth/login", "/auth/register"])
def test_logged_in_user_is_redirected_away_from(auth, path):
    auth.signup("susan")
    response = auth.client.get(path)
    assert response.status_code == 302
    assert response.headers["Location"] == "/"


# --- usernames: matched whole, NFKC, unique whatever the case -----------------------------


@pytest.mark.parametrize("username", ["bob\n", "bob\r\n", " bob", "bob ", "bo\tb"])
def test_a_username_with_whitespace_or_a_trailing_newline_is_refused(app, auth, username):
    response = auth.register(username, email="bob@example.com")
    assert response.status_code == 400
    assert "Use letters, digits, dots, dashes and underscores only." in form_errors(response)
    assert usernames(app) == []


def test_a_full_width_username_is_stored_in_plain_characters(app, auth):
    assert auth.register("ｂｏｂ", email="bob@example.com").status_code == 302
    assert usernames(app) == ["bob"]


def test_a_full_width_copy_of_a_taken_name_is_taken(app, auth):
    assert auth.register("bob").status_code == 302
    response = auth.register("ＢＯＢ", email="other@example.com")
    assert response.status_code == 400
    assert "That username is taken; please choose another." in form_errors(response)
    assert usernames(app) == ["bob"]


def test_sign_in_finds_the_account_whatever_the_case_and_width(app, auth):
    assert auth.register("bob").status_code == 302
    for typed in ("BOB", "ｂｏｂ"):
        assert auth.login(typed).status_code == 302, typed
        auth.logout()

"""app/main: the timeline, posting, profiles, pagination and task status."""
import re
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
import sqlalchemy as sa

from app.extensions import db
from app.models import Post, Task, TaskState, User, utcnow
from tests.conftest import AuthActions

POST_BODY = re.compile(r'<article class="post">.*?<p>(.*?)</p>', re.S)
PAGE_LINK = re.compile(r'<a href="([^"]*page=\d+[^"]*)">([^<]*)</a>')


def post_bodies(response) -> list[str]:
    return POST_BODY.findall(response.get_data(as_text=True))


def page_links(response) -> dict[str, str]:
    """{"newer": href, "older": href} for the pagination links on the page."""
    links = {}
    for href, label in PAGE_LINK.findall(response.get_data(as_text=True)):
        links["newer" if "Newer" in label else "older"] = href.replace("&amp;", "&")
    return links


def user_id(app, username: str) -> int:
    with app.app_context():
        return db.session.scalar(sa.select(User.id).where(User.username == username))


@pytest.mark.parametrize("path", ["/", "/index", "/user/susan"])
def test_pages_require_login(client, path):
    response = client.get(path)
    assert response.status_code == 302
    location = urlsplit(response.headers["Location"])
    assert location.path == "/auth/login"
    assert parse_qs(location.query)["next"] == [path]


def test_login_required_then_login_returns_to_the_page(auth):
    auth.register("susan")
    login_url = auth.client.get("/user/susan").headers["Location"]
    token = auth.csrf_token(login_url)
    response = auth.client.post(login_url, data={"username": "susan", "password": "correct horse",
                                                 "csrf_token": token})
    assert response.headers["Location"] == "/user/susan"


@pytest.mark.parametrize("path", ["/", "/index"])
def test_index_greets_the_logged_in_user(auth, path):
    auth.signup("susan")
    response = auth.client.get(path)
    assert response.status_code == 200
    assert "Hi, susan!" in response.get_data(as_text=True)


def test_a_post_appears_on_the_index(auth):
    auth.signup("susan")
    response = auth.post_form("/", {"post": "Hello, world"})
    assert response.status_code == 302
    page = auth.client.get("/")
    assert post_bodies(page) == ["Hello, world"]
    assert "Your post is now live!" in page.get_data(as_text=True)


def test_a_post_appears_on_the_authors_profile(auth):
    auth.signup("susan")
    auth.post_form("/", {"post": "Hello, world"})
    response = auth.client.get("/user/susan")
    assert response.status_code == 200
    assert post_bodies(response) == ["Hello, world"]


def test_a_post_is_stored_for_its_author(app, auth):
    auth.signup("susan")
    auth.post_form("/", {"post": "Hello, world"})
    with app.app_context():
        post = db.session.scalar(sa.select(Post))
        assert post.author.username == "susan" and post.body == "Hello, world"


def test_a_profile_shows_only_its_users_posts(auth):
    auth.signup("susan")
    auth.post_form("/", {"post": "by susan"})
    auth.logout()
    auth.signup("bob")
    auth.post_form("/", {"post": "by bob"})
    assert post_bodies(auth.client.get("/user/susan")) == ["by susan"]
    assert post_bodies(auth.client.get("/")) == ["by bob", "by susan"]


def test_post_bodies_are_escaped(auth):
    auth.signup("susan")
    auth.post_form("/", {"post": "<script>alert(1)</script>"})
    html = auth.client.get("/").get_data(as_text=True)
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_a_post_of_exactly_280_characters_is_accepted(auth):
    auth.signup("susan")
    assert auth.post_form("/", {"post": "x" * 280}).status_code == 302


@pytest.mark.parametrize(
    ("body", "message"),
    [("", "This field is required."), ("   ", "This field is required."),
     ("x" * 281, "Field must be between 1 and 280 characters long.")],
    ids=["empty", "blank", "too-long"],
)
def test_a_bad_post_is_a_form_error(app, auth, body, message):
    auth.signup("susan")
    response = auth.post_form("/", {"post": body})
    assert response.status_code == 400
    assert message in response.get_data(as_text=True)
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count(Post.id))) == 0


def test_post_without_csrf_token_is_refused(app, auth):
    auth.signup("susan")
    response = auth.client.post("/", data={"post": "sneaky"})
    assert response.status_code == 400
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count(Post.id))) == 0


def test_an_unknown_user_is_404_in_the_site_layout(auth):
    auth.signup("susan")
    response = auth.client.get("/user/nobody")
    html = response.get_data(as_text=True)
    assert response.status_code == 404
    assert '<a class="brand"' in html and "404: Not Found" in html


# --- pagination ----------------------------------------------------------------------


@pytest.fixture
def paged_app(make_app):
    return make_app(POSTS_PER_PAGE="2")


@pytest.fixture
def paged_auth(paged_app):
    auth = AuthActions(paged_app.test_client())
    auth.signup("susan")
    for n in range(1, 6):
        assert auth.post_form("/", {"post": f"post {n}"}).status_code == 302
    return auth


def test_pagination_setting_reaches_the_app(paged_app):
    assert paged_app.config["POSTS_PER_PAGE"] == 2


def test_index_pages_show_newest_first(paged_auth):
    pages = [post_bodies(paged_auth.client.get(f"/?page={n}")) for n in (1, 2, 3)]
    assert pages == [["post 5", "post 4"], ["post 3", "post 2"], ["post 1"]]


def test_index_first_page_links_only_to_older_posts(paged_auth):
    response = paged_auth.client.get("/")
    assert "Page 1 of 3" in response.get_data(as_text=True)
    assert page_links(response) == {"older": "/?page=2"}


def test_index_middle_page_links_both_ways(paged_auth):
    links = page_links(paged_auth.client.get("/?page=2"))
    assert links == {"newer": "/?page=1", "older": "/?page=3"}


def test_index_page_links_lead_to_the_next_posts(paged_auth):
    older = page_links(paged_auth.client.get("/"))["older"]
    assert post_bodies(paged_auth.client.get(older)) == ["post 3", "post 2"]


def test_index_last_page_links_only_to_newer_posts(paged_auth):
    assert page_links(paged_auth.client.get("/?page=3")) == {"newer": "/?page=2"}


@pytest.mark.parametrize("page", ["0", "-1", "abc"])
def test_index_odd_page_numbers_show_the_first_page(paged_auth, page):
    response = paged_auth.client.get(f"/?page={page}")
    assert response.status_code == 200
    assert post_bodies(response) == ["post 5", "post 4"]


def test_index_page_past_the_end_is_empty(paged_auth):
    response = paged_auth.client.get("/?page=9")
    assert response.status_code == 200
    assert post_bodies(response) == []


def test_profile_pages_show_newest_first_with_links(paged_auth):
    first = paged_auth.client.get("/user/susan")
    assert post_bodies(first) == ["post 5", "post 4"]
    assert page_links(first) == {"older": "/user/susan?page=2"}
    assert post_bodies(paged_auth.client.get("/user/susan?page=3")) == ["post 1"]


def test_newest_first_follows_timestamps_not_insertion_order(paged_app):
    auth = AuthActions(paged_app.test_client())
    auth.signup("susan")
    now = utcnow()
    with paged_app.app_context():
        susan = db.session.scalar(sa.select(User).where(User.username == "susan"))
        db.session.add_all([
            Post(body="old", author=susan, timestamp=now - timedelta(days=2)),
            Post(body="new", author=susan, timestamp=now),
            Post(body="middle", author=susan, timestamp=now - timedelta(days=1)),
        ])
        db.session.commit()
    assert post_bodies(auth.client.get("/")) == ["new", "middle"]


# --- task status -----------------------------------------------------------------------


@pytest.fixture
def ann_task(app, auth):
    """A Task row owned by ann; bob is registered too, and nobody is logged in."""
    auth.register("ann")
    auth.register("bob")
    with app.app_context():
        task = Task(id="11111111-2222-3333-4444-555555555555", name="export_posts",
                    description="Export posts", user_id=user_id(app, "ann"),
                    state=TaskState.PROGRESS, progress=40)
        db.session.add(task)
        db.session.commit()
        return task.id


def test_task_status_is_json_for_its_owner(auth, ann_task):
    auth.login("ann")
    response = auth.client.get(f"/tasks/{ann_task}")
    assert response.status_code == 200
    assert response.get_json() == {
        "id": ann_task, "name": "export_posts", "description": "Export posts",
        "state": "PROGRESS", "progress": 40, "done": 0, "total": None, "error": None, "download_url": None,
    }


def test_another_users_task_is_404(auth, ann_task):
    auth.login("bob")
    response = auth.client.get(f"/tasks/{ann_task}", headers={"Accept": "application/json"})
    assert response.status_code == 404
    assert "progress" not in response.get_json()


@pytest.mark.usefixtures("ann_task")
def test_an_unknown_task_is_404(auth):
    auth.login("ann")
    assert auth.client.get("/tasks/no-such-task").status_code == 404


def test_the_favicon_is_served_where_browsers_look(client):
    icon = client.get("/favicon.ico")
    assert icon.status_code == 200 and icon.data[:4] == b"\x00\x00\x01\x00"  # an ICO file
    svg = client.get("/static/favicon.svg")
    assert svg.status_code == 200 and svg.mimetype == "image/svg+xml"

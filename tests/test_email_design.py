"""The HTML emails' design: one layout with inline styles, a button for the main action
that links where the text part does, and numbers in the reader's locale.

Each email is rendered and sent in process by the app's own function, in a request on
the user's host, and read back from the test SMTP server as a client would get it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from html.parser import HTMLParser
from uuid import uuid4

import pytest
import sqlalchemy as sa

from app import password_reset, welcome
from app.email import inline_css
from app.exports import EXPORT_TASK_NAME, send_export_email
from app.extensions import db
from app.models import DeliveryStatus, EmailDelivery, Task, TaskState, User
from app.storage import export_storage

SITE = "https://mail.example.org/"
#: Late in the evening, UTC: already the next morning in Shanghai. Kept for 7 days (the
#: tests' EXPORT_RETENTION_DAYS), the file may go from the 12th, 23:30 UTC: it is sure to be
#: there through the 11th in London, through the 12th in Shanghai (07:30 on the 13th).
LATE = datetime(2026, 1, 5, 23, 30, tzinfo=timezone.utc)
#: How Russian groups digits: a no-break space (CLDR has used both the plain and the narrow one).
RU_GROUP = "[\u00a0\u202f]"


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    text: str = ""


@dataclass
class Html:
    """An HTML document as a test reads it: its elements, text and style blocks."""

    elements: list[Element] = field(default_factory=list)
    style_blocks: list[str] = field(default_factory=list)
    text: str = ""

    def with_class(self, name: str) -> list[Element]:
        return [e for e in self.elements if name in e.attrs.get("class", "").split()]

    def one(self, name: str) -> Element:
        (element,) = self.with_class(name)
        return element

    def hrefs(self) -> set[str]:
        return {e.attrs["href"] for e in self.elements if e.tag == "a" and "href" in e.attrs}


class _Reader(HTMLParser):
    """Collects elements with the text inside each (char references resolved)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.html = Html()
        self._open: list[Element] = []
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        element = Element(tag, {name: value or "" for name, value in attrs})
        self.html.elements.append(element)
        if tag == "style":
            self._in_style = True
            self.html.style_blocks.append("")
        elif tag not in ("br", "meta", "img", "link"):
            self._open.append(element)

    def handle_endtag(self, tag):
        if tag == "style":
            self._in_style = False
        elif self._open and self._open[-1].tag == tag:
            self._open.pop()

    def handle_data(self, data):
        if self._in_style:
            self.html.style_blocks[-1] += data
            return
        self.html.text += data
        for element in self._open:
            element.text += data


def read_html(source: str) -> Html:
    reader = _Reader()
    reader.feed(source)
    reader.close()
    return reader.html


def links(text: str) -> set[str]:
    return set(re.findall(r"https?://[^\s\"<>]+", text))


def parts(message) -> tuple[str, str]:
    return (message.message.get_body(("plain",)).get_content(),
            message.message.get_body(("html",)).get_content())


# --- sending each email through the app ------------------------------------------------


def add_user(username: str) -> User:
    user = User(username=username, email=f"{username}@example.com")
    db.session.add(user)
    db.session.commit()
    return user


def send_welcome(app, mail_sink, **request):
    with app.test_request_context("/auth/register", base_url=SITE, **request):
        user = add_user("ann")
        delivery = db.session.scalar(sa.select(EmailDelivery).where(
            EmailDelivery.kind == welcome.KIND, EmailDelivery.user_id == user.id))
        assert welcome.send_welcome(delivery)
    (message,) = mail_sink.wait_for(1)
    return message


def send_reset(app, mail_sink, **request):
    with app.test_request_context("/auth/reset_password_request", base_url=SITE, **request):
        user = add_user("ann")
        delivery = EmailDelivery(kind=password_reset.KIND, user_id=user.id, recipient=user.email,
                                 status=DeliveryStatus.PENDING, attempts=0)
        db.session.add(delivery)
        db.session.commit()
        assert password_reset.send_reset(delivery)
    (message,) = mail_sink.wait_for(1)
    return message


def send_export(app, mail_sink, count: int, size: int = 200, finished: datetime | None = None, **request):
    """The export email for ``count`` posts in a file of ``size`` bytes (its content is
    not what the email is about), for an export that ``finished`` then (unset: now)."""
    with app.test_request_context("/export_posts", method="POST", base_url=SITE, **request):
        user = add_user("ann")
        task = Task(id=str(uuid4()), name=EXPORT_TASK_NAME, description="Exporting posts...",
                    user_id=user.id, state=TaskState.SUCCESS, finished=finished)
        db.session.add(task)
        db.session.commit()
        name = f"{task.id}.json"
        with export_storage().open_writer(name, "wb") as out:
            out.write(b"x" * size)
        send_export_email(user, task, name, count)
        download_url = f"{SITE}exports/{task.id}"
    (message,) = mail_sink.wait_for(1)
    return message, download_url


# --- the layout ---------------------------------------------------------------------------


def assert_designed(html_source: str) -> Html:
    """The layout, with every rule inlined but the media query, which stays in a block."""
    html = read_html(html_source)
    card = html.one("card")
    assert card.tag == "table" and card.attrs.get("width") == "600"
    assert "max-width: 600px" in card.attrs["style"] and "background-color: #ffffff" in card.attrs["style"]
    header = html.one("header")
    assert header.text.strip() == "Microblog" and "font-weight: bold" in header.attrs["style"]
    assert html.one("footer").text.strip()  # the sign-off, in the email's language
    (body,) = [e for e in html.elements if e.tag == "body"]
    assert "sans-serif" in body.attrs["style"] and "background-color: #f3f4f6" in body.attrs["style"]
    # Every element a rule applies to carries it: nothing relies on a class to look right.
    classed = [e for e in html.elements if e.attrs.get("class")]
    unstyled = [e for e in classed if not e.attrs.get("style")]
    assert classed and not unstyled, unstyled
    # One style block, holding the media query and nothing else.
    (css,) = html.style_blocks
    assert "@media" in css and "max-width: 620px" in css and ".card" in css
    assert re.sub(r"@media[^{]*\{(?:[^{}]*\{[^{}]*\})*[^{}]*\}", "", css).strip() == ""
    return html


def assert_button(html: Html, text: str, url: str, label: str) -> None:
    """The button links to ``url``, which the text part carries too; so does the plain
    link below the button, and every other link of the HTML."""
    button = html.one("button-link")
    assert button.tag == "a" and button.attrs["href"] == url and button.text.strip() == label
    assert "background-color: #2563eb" in button.attrs["style"]
    assert "display: inline-block" in button.attrs["style"]
    assert "background-color: #2563eb" in html.one("button-cell").attrs["style"]  # the table-cell fallback
    fallback = html.one("fallback-link")
    assert fallback.attrs["href"] == url and fallback.text.strip() == url
    assert url in links(text)
    assert html.hrefs() <= links(text)
    assert all(href.startswith(SITE) for href in html.hrefs())


def test_the_welcome_email_has_the_layout_and_a_log_in_button(app, mail_sink):
    text, html_source = parts(send_welcome(app, mail_sink))
    html = assert_designed(html_source)
    assert_button(html, text, f"{SITE}auth/login", "Log in")
    assert f"{SITE}user/ann" in html.hrefs()
    assert "Welcome to Microblog! Your account is ready." in html.text
    assert "Sincerely," in html.one("footer").text and "The Microblog Team" in html.one("footer").text


def test_the_reset_email_has_the_layout_and_a_choose_a_new_password_button(app, mail_sink):
    text, html_source = parts(send_reset(app, mail_sink))
    html = assert_designed(html_source)
    (reset_url,) = [link for link in links(text) if "/auth/reset_password/" in link]
    assert_button(html, text, reset_url, "Choose a new password")
    assert f"{SITE}auth/reset_password_request" in html.hrefs()


def test_the_export_email_has_a_download_button_and_grouped_numbers(app, mail_sink):
    message, download_url = send_export(app, mail_sink, count=3_000_003)
    text, html_source = parts(message)
    html = assert_designed(html_source)
    assert_button(html, text, download_url, "Download your export")
    assert f"{SITE}user/ann" in html.hrefs()
    sentence = "Your export of 3,000,003 posts is ready."
    assert sentence in text and sentence in html.text
    assert len(list(message.message.iter_attachments())) == 1


def test_the_export_email_says_through_which_day_the_link_works_in_the_readers_date_format(app, mail_sink):
    message, _ = send_export(app, mail_sink, count=5, finished=LATE)
    text, html_source = parts(message)
    sentence = "The link works until the end of January 11, 2026, for you only (you may need to log in)."
    assert sentence in text and sentence in read_html(html_source).text


def test_the_day_promised_is_the_last_whole_one_before_the_file_may_go(app, mail_sink):
    """Finished early in the morning, the file may go early on the 12th: the 11th is the
    last day it is sure to be there, not the 12th."""
    message, _ = send_export(app, mail_sink, count=5, finished=datetime(2026, 1, 5, 0, 30, tzinfo=timezone.utc))
    assert "The link works until the end of January 11, 2026," in parts(message)[0]


def test_the_day_is_the_one_in_the_time_zone_of_the_click(app, mail_sink):
    """The browser's zone (its cookie) and language: 23:30 in London is 07:30 the next day
    in Shanghai. (Through a worker, the zone travels with the request's other settings:
    tests/test_languages.py.)"""
    message, _ = send_export(app, mail_sink, count=5, finished=LATE, headers={
        "Accept-Language": "zh", "Cookie": "tz=Asia/Shanghai"})
    text, html_source = parts(message)
    for body in (text, read_html(html_source).text):
        assert "该链接有效期至 2026年1月12日（含当天）" in body


@pytest.fixture
def small_attachment_app(make_app):
    return make_app(MAIL_MAX_ATTACHMENT_BYTES="50")


def test_a_linked_export_gives_its_size_formatted_in_both_parts(small_attachment_app, mail_sink):
    message, download_url = send_export(small_attachment_app, mail_sink, count=1_234, size=1_500)
    text, html_source = parts(message)
    html = assert_designed(html_source)
    assert_button(html, text, download_url, "Download your export")
    for body in (text, html.text):
        assert "Your export of 1,234 posts is ready." in body
        assert "The file (1.5 kB) is too large to attach to an email" in body
    assert list(message.message.iter_attachments()) == []


def test_a_russian_export_email_groups_digits_the_russian_way(app, mail_sink):
    message, download_url = send_export(app, mail_sink, count=3_000_003, headers={"Accept-Language": "ru"})
    text, html_source = parts(message)
    assert '<html lang="ru">' in html_source
    html = assert_designed(html_source)
    grouped = re.compile(f"3{RU_GROUP}000{RU_GROUP}003")
    assert grouped.search(text) and grouped.search(html.text)
    assert "3,000,003" not in text and "3,000,003" not in html.text
    button = html.one("button-link")
    assert button.attrs["href"] == download_url and button.text.strip() != "Download your export"
    assert html.hrefs() <= links(text)


def test_inline_css_keeps_media_queries_in_a_block_and_inlines_the_rest():
    source = ("<html><head><style>.a { color: red; } @media (max-width: 10px) { .a { color: blue; } }</style>"
              "</head><body><p class=\"a\">x</p></body></html>")
    html = read_html(inline_css(source))
    assert html.one("a").attrs["style"] == "color: red;"
    (css,) = html.style_blocks
    assert css.strip().startswith("@media") and "color: red" not in css

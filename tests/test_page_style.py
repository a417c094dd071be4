"""The pages as a real browser lays them out (Debian's chromium driven by Playwright): one
style for the links in the content and another for the navigation bar, a focus ring that a
keyboard user can see, one spacing scale, and no page wider than a 375 px phone in English,
Russian or Chinese. Computed styles, not screenshots: each assertion fails on the layout it
guards against (the browser's default blue links, a 1 px focus ring, a bar that runs off the
screen, a muted paragraph pushed in from the left)."""
from __future__ import annotations

import mimetypes
from pathlib import Path
from uuid import uuid4

import pytest
from flask import abort
from playwright.sync_api import expect

from app import create_app
from app.cli import seed_posts
from app.exports import export_file_name
from app.extensions import db
from app.models import Task, TaskState, User, utcnow
from app.storage import export_storage
from config import TestingConfig
from tests.conftest import base_environ, rate_limit_prefix
from tests.support.browser import served


PASSWORD = "correct horse"
LOCALES = {"en": "en-US", "ru": "ru-RU", "zh": "zh-CN"}
NARROW, WIDE = 375, 1280
#: The spacing scale, in px at the 16 px root size: 0, .25rem, .5rem, 1rem, 1.5rem.
SCALE = {0.0, 4.0, 8.0, 16.0, 24.0}
#: The focus ring of the content (on the light page) and of the navigation bar (on dark).
CONTENT_RING = ("solid", "2px", "rgb(10, 88, 202)")
NAV_RING = ("solid", "2px", "rgb(255, 255, 255)")


@pytest.fixture(scope="module")
def site(tmp_path_factory, redis_service, smtp_server, unit_redis_db):
    """One app for the module, on a database of its own, behind a threaded HTTP server: a
    user per language (``ada-en``, ``ada-ru``, ``ada-zh``, none with a language of its own, so
    the browser's decides), each with posts over several pages, a finished export with its
    file and a failed one; ``ada-ru`` also has an export running. ``/broken`` answers 500."""
    directory = tmp_path_factory.mktemp("page-style")
    environ = base_environ(directory, redis_service, smtp_server, f"sqlite:///{directory / 'app.db'}",
                           unit_redis_db)
    app = create_app(TestingConfig({**environ, "RATELIMIT_KEY_PREFIX": rate_limit_prefix()}))
    app.config["POSTS_PER_PAGE"] = 3

    @app.route("/broken")
    def broken():
        abort(500)

    with app.app_context():
        db.create_all()
        for code in LOCALES:
            user = User(username=f"ada-{code}", email=f"ada-{code}@example.com")
            user.set_password(PASSWORD)
            db.session.add(user)
            db.session.commit()
            seed_posts(user, 7)
            done = str(uuid4())
            with export_storage().open_writer(export_file_name(done)) as out:
                out.write('{"posts": []}')
            db.session.add_all([
                Task(id=done, name="export_posts", description="Exporting posts...", user_id=user.id,
                     state=TaskState.SUCCESS, progress=100, done=7, total=7, result_bytes=2048,
                     finished=utcnow(), result_location=export_file_name(done)),
                Task(id=str(uuid4()), name="export_posts", description="Exporting posts...", user_id=user.id,
                     state=TaskState.FAILURE, progress=30, finished=utcnow(),
                     error="The export could not be written."),
            ])
            if code == "ru":
                db.session.add(Task(id=str(uuid4()), name="export_posts", description="Exporting posts...",
                                    user_id=user.id, state=TaskState.PROGRESS, progress=40, done=3, total=7))
            db.session.commit()

    with served(app) as base_url:
        yield base_url
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


STATIC = Path(__file__).resolve().parent.parent / "app" / "static"


def serve_static(route) -> None:
    """The site's static files straight from app/static: the same bytes, without a trip
    through the app for each of them (most of a page's load time here)."""
    name = route.request.url.split("/static/", 1)[1].split("?", 1)[0]
    path = STATIC / name
    if path.resolve().parent != STATIC.resolve() or not path.is_file():
        route.continue_()
        return
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    route.fulfill(path=str(path), content_type=content_type)


@pytest.fixture(scope="module")
def contexts(browser, site):
    """Browser contexts for the module, made once each (a sign-in is the slow part): the
    context of a browser asking for language ``code``, signed in as ``ada-<code>`` unless
    told."""
    made = {}

    def context_for(code: str, signed_in: bool):
        if (code, signed_in) not in made:
            context = browser.new_context(locale=LOCALES[code])
            context.route(f"{site}/static/**", serve_static)
            if signed_in:
                page = context.new_page()
                page.goto(f"{site}/auth/login")
                page.fill("input[name=username]", f"ada-{code}")
                page.fill("input[name=password]", PASSWORD)
                page.click("input[type=submit]")
                expect(page.locator("nav form[action='/auth/logout']")).to_be_attached()
                page.close()
            made[code, signed_in] = context
        return made[code, signed_in]

    yield context_for
    for context in made.values():
        context.close()


@pytest.fixture
def new_page(contexts):
    """``new_page(code="en", width=WIDE, signed_in=True)``: a new page (a new tab) of the
    context, ``width`` px wide; closed after the test."""
    pages = []

    def make(code: str = "en", width: int = WIDE, signed_in: bool = True):
        page = contexts(code, signed_in).new_page()
        page.set_viewport_size({"width": width, "height": 800})
        pages.append(page)
        return page

    yield make
    for page in pages:
        page.close()


def signed_in_paths(code: str) -> list[str]:
    """A page of each layout of a signed-in user's (the error pages are alike)."""
    return ["/", f"/user/ada-{code}", "/activity", "/exports", "/auth/change_password", "/no-such-page"]


SIGNED_OUT_PATHS = ["/auth/login", "/auth/register", "/auth/reset_password_request"]

# Each content link's look: everything that tells a link from text and from another link.
CONTENT_LINK_STYLES = """() => Array.from(document.querySelectorAll("main a:not(.button)")).map(a => {
  const s = getComputedStyle(a);
  return {href: a.getAttribute("href"), text: a.textContent.trim(), color: s.color,
          line: s.textDecorationLine, thickness: s.textDecorationThickness,
          fontSize: s.fontSize};
})"""
NAV_LINK_STYLES = """() => Array.from(document.querySelectorAll(".navbar a, .navbar button")).map(a => {
  const s = getComputedStyle(a);
  return {text: a.textContent.trim(), color: s.color, line: s.textDecorationLine};
})"""


def test_links_in_the_content_look_alike_and_unlike_the_navigation(new_page, site):
    page = new_page()
    looks, nav_looks = {}, {}

    def look_at(path: str) -> None:
        page.goto(site + path)
        for link in page.evaluate(CONTENT_LINK_STYLES):
            look = (link["color"], link["line"], link["thickness"])
            looks.setdefault(look, []).append((path, link["text"]))
        for link in page.evaluate(NAV_LINK_STYLES):
            nav_looks.setdefault((link["color"], link["line"]), []).append(link["text"])

    for path in signed_in_paths("en") + ["/user/ada-en?page=2", "/broken"]:
        look_at(path)
    page = new_page(signed_in=False)
    for path in SIGNED_OUT_PATHS:
        look_at(path)

    seen = [text for found in looks.values() for _, text in found]
    # The pages' links were all seen: profile pages, pagination, the error page's way home, ...
    for text in ("ada-en", "Account activity", "Your exports", "Change password", "Older posts",
                 "Download", "Back to the home page", "Click to register!", "Reset it by email."):
        assert any(text in s for s in seen), f"no link {text!r} on the pages looked at"
    assert len(looks) == 1, f"content links in more than one style: {looks}"
    (color, line, _), = looks
    assert line == "underline"
    assert len(nav_looks) == 1, f"navigation links in more than one style: {nav_looks}"
    (nav_color, nav_line), = nav_looks
    assert (nav_color, nav_line) != (color, line) and nav_line == "none"


FOCUS = """() => {
  const e = document.activeElement, s = getComputedStyle(e);
  return {tag: e.tagName.toLowerCase(), type: e.type || "", nav: !!e.closest(".navbar"),
          text: (e.textContent || e.name || "").trim(),
          ring: [s.outlineStyle, s.outlineWidth, s.outlineColor]};
}"""


def tab_through(page, steps: int) -> list[dict]:
    """What Tab focuses, ``steps`` times from the top of the page (or to its end)."""
    found = []
    for _ in range(steps):
        page.keyboard.press("Tab")
        focused = page.evaluate(FOCUS)
        if focused["tag"] == "body":
            break
        found.append(focused)
    return found


def test_the_keyboard_focus_shows_one_ring_on_links_buttons_and_fields(new_page, site):
    page = new_page(signed_in=False)
    page.goto(f"{site}/auth/login")
    focused = tab_through(page, 12)  # the bar's links and language buttons, the form, its links
    page = new_page()
    page.goto(f"{site}/user/ada-en")
    focused += tab_through(page, 12)  # the Logout button too, the export button, the profile's links

    kinds = {(f["tag"], f["type"], f["nav"]) for f in focused}
    for kind in [("a", "", True), ("button", "submit", True), ("input", "text", False),
                 ("input", "password", False), ("input", "checkbox", False), ("input", "submit", False),
                 ("button", "submit", False), ("a", "", False)]:
        assert kind in kinds, f"Tab never reached a {kind}: {focused}"
    for f in focused:
        assert tuple(f["ring"]) == (NAV_RING if f["nav"] else CONTENT_RING), f


NO_HORIZONTAL_SCROLL = """() => [document.documentElement.lang, document.scrollingElement.scrollWidth,
                                 window.innerWidth]"""
# Any item of the navigation bar that wraps inside itself (a name broken over two lines) or
# sticks out of the screen.
BROKEN_NAV_ITEMS = """() => Array.from(document.querySelectorAll(".navbar a, .navbar button")).filter(e => {
  const r = e.getBoundingClientRect(), s = getComputedStyle(e);
  return r.right > window.innerWidth || r.left < 0 || r.height > parseFloat(s.lineHeight) * 1.4;
}).map(e => e.textContent.trim())"""


@pytest.mark.parametrize("code", LOCALES)
def test_no_page_is_wider_than_a_phone(new_page, site, code):
    page = new_page(code, NARROW)
    for path in signed_in_paths(code):
        page.goto(site + path)
        lang, scroll_width, width = page.evaluate(NO_HORIZONTAL_SCROLL)
        assert lang == code
        assert scroll_width <= width, f"{path} in {code} is {scroll_width} px wide on a {width} px screen"
        assert page.evaluate(BROKEN_NAV_ITEMS) == [], f"{path} in {code}"
    page = new_page(code, NARROW, signed_in=False)
    for path in SIGNED_OUT_PATHS:
        page.goto(site + path)
        lang, scroll_width, width = page.evaluate(NO_HORIZONTAL_SCROLL)
        assert lang == code
        assert scroll_width <= width, f"{path} in {code} is {scroll_width} px wide on a {width} px screen"
        assert page.evaluate(BROKEN_NAV_ITEMS) == [], f"{path} in {code}"


def test_a_wide_table_scrolls_by_itself_on_a_phone_and_fills_the_column_on_a_desktop(new_page, site):
    page = new_page("ru", NARROW)
    page.goto(f"{site}/exports")
    table = page.locator("table.exports")
    # Russian headers do not fit 375 px: the table scrolls, its last column within reach.
    assert table.evaluate("t => t.scrollWidth > t.clientWidth")
    assert table.evaluate("t => getComputedStyle(t).overflowX") == "auto"
    download = table.locator("a", has_text="Скачать")
    download.scroll_into_view_if_needed()
    expect(download).to_be_in_viewport()

    page = new_page("en", WIDE)
    page.goto(f"{site}/activity")
    widths = page.evaluate("""() => [document.querySelector("table.activity").getBoundingClientRect().width,
                                      document.querySelector("main h1").getBoundingClientRect().width]""")
    assert widths[0] == widths[1]


MUTED = """() => Array.from(document.querySelectorAll("main .muted")).map(e => ({
  tag: e.tagName.toLowerCase(), text: e.textContent.trim(), marginLeft: getComputedStyle(e).marginLeft,
  left: e.getBoundingClientRect().left,
  parentLeft: e.parentElement.getBoundingClientRect().left
              + parseFloat(getComputedStyle(e.parentElement).paddingLeft)
}))"""


def test_muted_text_starts_where_its_paragraph_or_cell_starts(new_page, site):
    page = new_page("ru")
    seen = []
    for path in ("/exports", "/activity", "/user/ada-ru"):
        page.goto(site + path)
        for muted in page.evaluate(MUTED):
            seen.append((path, muted["tag"]))
            assert muted["marginLeft"] == "0px", (path, muted)
            if muted["tag"] == "p":
                assert abs(muted["left"] - muted["parentLeft"]) < 0.5, (path, muted)
    assert ("/exports", "p") in seen and ("/exports", "span") in seen and ("/user/ada-ru", "span") in seen


# The vertical margins of the page's blocks, and the heights of its fields and buttons.
BLOCKS = """() => Array.from(document.querySelectorAll(
    "main h1, main p, main form, main table, main ul, main .pagination, main .post, main .alert, \
     main .field label"
  )).map(e => {
    const s = getComputedStyle(e);
    return {what: e.tagName.toLowerCase() + (e.className ? "." + e.className : ""),
            top: parseFloat(s.marginTop), bottom: parseFloat(s.marginBottom)};
  })"""
CONTROL_HEIGHTS = """() => Array.from(document.querySelectorAll(
    "main input[type=text], main input[type=password], main input[type=email], main .button"
  )).map(e => [e.name || e.id || e.textContent.trim() || e.value, e.getBoundingClientRect().height])"""


def test_blocks_are_spaced_on_one_scale_and_fields_and_buttons_line_up(new_page, site):
    page = new_page(signed_in=False)
    heights = {}
    off_scale = []
    for path in SIGNED_OUT_PATHS:
        page.goto(site + path)
        off_scale += [(path, b) for b in page.evaluate(BLOCKS) if not {b["top"], b["bottom"]} <= SCALE]
        heights.update({(path, name): height for name, height in page.evaluate(CONTROL_HEIGHTS)})
        # Every field lines up with its label and the button below, on the content's left edge.
        lefts = page.evaluate("""() => Array.from(document.querySelectorAll(
            "main h1, main form .field:not(.field-check) label, \
             main form input:not([type=hidden]):not([type=checkbox])"))
            .map(e => e.getBoundingClientRect().left)""")
        assert len(set(lefts)) == 1, (path, lefts)
    page = new_page("ru")
    for path in signed_in_paths("ru"):
        page.goto(site + path)
        off_scale += [(path, b) for b in page.evaluate(BLOCKS) if not {b["top"], b["bottom"]} <= SCALE]
        heights.update({(path, name): height for name, height in page.evaluate(CONTROL_HEIGHTS)})
    assert off_scale == []
    assert len(set(heights.values())) == 1, f"fields and buttons of different heights: {heights}"
    assert any("export-posts" in name for _, name in heights)  # a <button>, beside the <input>s


def test_buttons_of_one_kind_look_alike_whatever_their_element(new_page, site):
    """The forms' submit inputs and the export <button>, both primary actions; the ping button
    is secondary: another color, the same shape."""
    page = new_page()
    shape = """e => { const s = getComputedStyle(e);
      return {bg: s.backgroundColor, color: s.color, padding: s.padding, radius: s.borderRadius,
              font: s.fontSize + " " + s.fontWeight, height: e.getBoundingClientRect().height}; }"""
    page.goto(f"{site}/")
    post = page.locator("main input[type=submit]").evaluate(shape)
    ping = page.locator("main button.secondary").evaluate(shape)
    page.goto(f"{site}/user/ada-en")
    export = page.locator("#export-posts").evaluate(shape)
    assert post == export
    assert ping["bg"] != post["bg"]
    assert {**ping, "bg": None} == {**post, "bg": None}

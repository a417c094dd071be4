"""Error pages in the site's layout, or JSON for clients that ask for JSON, in the user's language."""
from flask import current_app, flash, jsonify, redirect, render_template, request
from flask_babel import format_number, gettext
from flask_login import login_url
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge, SecurityError
from werkzeug.http import HTTP_STATUS_CODES

from app.errors import bp
from app.extensions import db, login
from app.i18n import N_

#: Each status the site answers with: its title and what it means for the user, as msgids
#: (werkzeug's names and descriptions are English only).
HTTP_ERRORS = {
    400: (N_("Bad Request"), N_("The request could not be understood. Check it and try again.")),
    401: (N_("Unauthorized"), N_("You need to sign in to see this.")),
    403: (N_("Forbidden"), N_("You are not allowed to see this.")),
    404: (N_("Not Found"),
          N_("There is nothing at this address. Check it, or start again from the home page.")),
    405: (N_("Method Not Allowed"), N_("This address does not take that kind of request.")),
    409: (N_("Conflict"), N_("The request conflicts with the current state of what it asks for. "
                             "Reload the page and try again.")),
    410: (N_("Gone"), N_("What was here has been removed for good.")),
    413: (N_("Request Entity Too Large"), N_("The request is larger than this site accepts.")),
    429: (N_("Too Many Requests"), N_("Too many requests. Please wait a moment and try again.")),
    500: (N_("Internal Server Error"),
          N_("Something went wrong on our side. It has been logged; please try again.")),
    503: (N_("Service Unavailable"), N_("The site cannot do this just now. Please try again in a moment.")),
}

#: Why Flask-WTF refuses a form (flask_wtf/csrf.py): English only, so each is a msgid here.
CSRF_REASONS = frozenset((
    N_("The CSRF token is missing."),
    N_("The CSRF session token is missing."),
    N_("The CSRF token has expired."),
    N_("The CSRF token is invalid."),
    N_("The CSRF tokens do not match."),
    N_("The referrer header is missing."),
    N_("The referrer does not match the host."),
))


def status_title(status: int) -> str:
    """The title of ``status`` in the user's language (werkzeug's English name for a
    status the site has no words of its own for)."""
    if status in HTTP_ERRORS:
        return gettext(HTTP_ERRORS[status][0])
    return HTTP_STATUS_CODES.get(status, HTTP_STATUS_CODES[500])


def wants_json() -> bool:
    best = request.accept_mimetypes.best_match(["application/json", "text/html"])
    return best == "application/json" and request.accept_mimetypes[best] > request.accept_mimetypes["text/html"]


def error_response(status: int, title: str, message: str, headers: list[tuple[str, str]] | None = None):
    if wants_json():
        return jsonify(error=title, message=message), status, headers
    if isinstance(request.routing_exception, SecurityError):
        # The Host was refused before routing: no URL, so no page in the layout, can be built.
        body = f"{status} {title}: {message}\n"
        return current_app.response_class(body, status, headers, mimetype="text/plain")
    return render_template("errors/error.html", title=title, status=status, message=message), status, headers


@bp.app_errorhandler(CSRFError)
def csrf_error(error: CSRFError):
    reason = gettext(error.description) if error.description in CSRF_REASONS else error.description
    return error_response(400, status_title(400), gettext(
        "The form could not be accepted: %(reason)s Reload the page and try again.", reason=reason))


@bp.app_errorhandler(RequestEntityTooLarge)
def too_large(error: RequestEntityTooLarge):
    # Werkzeug refuses a Content-Length above MAX_CONTENT_LENGTH before reading the body,
    # at the first look at the form (CSRF's), so the form is never parsed.
    limit, length = request.max_content_length, request.content_length
    if limit is None or (length is not None and length <= limit):
        return http_error(error)  # a form part above MAX_FORM_MEMORY_SIZE or MAX_FORM_PARTS
    if length is None:
        message = gettext("The request body is larger than the %(limit)s bytes this site accepts.",
                          limit=format_number(limit))
    else:
        message = gettext("The request body of %(size)s bytes is larger than the %(limit)s bytes this site "
                          "accepts.", size=format_number(length), limit=format_number(limit))
    return error_response(413, status_title(413), message)


@login.unauthorized_handler
def unauthorized():
    """``@login_required`` turning away a visitor who is not signed in: 401 JSON to the
    task status poll and to JSON clients, which cannot use a login form; pages get
    Flask-Login's default, ``login_message`` flashed (through its ``localize_callback``)
    and a redirect to the login page with ``next``."""
    if request.endpoint == "main.task_status" or wants_json():
        return jsonify(error=status_title(401),
                       message=gettext("You are signed out: sign in again to see this.")), 401
    if login.login_message:
        localize = login.localize_callback or str
        flash(localize(login.login_message), login.login_message_category)
    return redirect(login_url(login.login_view, next_url=request.url))


@bp.app_errorhandler(HTTPException)
def http_error(error: HTTPException):
    status = error.code or 500
    if status >= 500:
        db.session.rollback()
    # Keep what the exception adds for the client (Allow on 405, WWW-Authenticate, Retry-After).
    headers = [(name, value) for name, value in error.get_headers() if name.lower() != "content-type"]
    # A description given where the error was raised is already in the user's language;
    # werkzeug's own (the class's) is English, so ours replaces it.
    if "description" in vars(error) or status not in HTTP_ERRORS:
        message = error.description or ""
    else:
        message = gettext(HTTP_ERRORS[status][1])
    return error_response(status, status_title(status), message, headers)


@bp.app_errorhandler(Exception)
def unexpected_error(error: Exception):
    db.session.rollback()
    current_app.logger.exception("Unhandled error on %s %s", request.method, request.path)
    return error_response(500, status_title(500), gettext(HTTP_ERRORS[500][1]))

"""Error pages in the site's layout, or JSON for clients that ask for JSON."""
from flask import current_app, flash, jsonify, redirect, render_template, request
from flask_login import login_url
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import (HTTPException, InternalServerError, RequestEntityTooLarge, SecurityError,
                                 Unauthorized)

from app.errors import bp
from app.extensions import db, login


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
    return error_response(400, "Bad Request", f"The form could not be accepted: {error.description} "
                          "Reload the page and try again.")


@bp.app_errorhandler(RequestEntityTooLarge)
def too_large(error: RequestEntityTooLarge):
    # Werkzeug refuses a Content-Length above MAX_CONTENT_LENGTH before reading the body,
    # at the first look at the form (CSRF's), so the form is never parsed.
    limit, length = request.max_content_length, request.content_length
    if limit is None or (length is not None and length <= limit):
        return http_error(error)  # a form part above MAX_FORM_MEMORY_SIZE or MAX_FORM_PARTS
    found = "" if length is None else f" of {length:,} bytes"
    return error_response(413, error.name, f"The request body{found} is larger than the {limit:,} bytes "
                          "this site accepts.")


@login.unauthorized_handler
def unauthorized():
    """``@login_required`` turning away a visitor who is not signed in: 401 JSON to the
    task status poll and to JSON clients, which cannot use a login form; pages get
    Flask-Login's default, ``login_message`` flashed and a redirect to the login page
    with ``next``."""
    if request.endpoint == "main.task_status" or wants_json():
        return jsonify(error=Unauthorized().name,
                       message="You are signed out: sign in again to see this."), 401
    if login.login_message:
        flash(login.login_message, login.login_message_category)
    return redirect(login_url(login.login_view, next_url=request.url))


@bp.app_errorhandler(HTTPException)
def http_error(error: HTTPException):
    if error.code is not None and error.code >= 500:
        db.session.rollback()
    # Keep what the exception adds for the client (Allow on 405, WWW-Authenticate, Retry-After).
    headers = [(name, value) for name, value in error.get_headers() if name.lower() != "content-type"]
    return error_response(error.code or 500, error.name, error.description or "", headers)


@bp.app_errorhandler(Exception)
def unexpected_error(error: Exception):
    db.session.rollback()
    current_app.logger.exception("Unhandled error on %s %s", request.method, request.path)
    return error_response(500, InternalServerError().name,
                          "Something went wrong on our side. It has been logged; please try again.")

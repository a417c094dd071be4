"""Error pages in the site's layout, or JSON for clients that ask for JSON."""
from flask import current_app, jsonify, render_template, request
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException, InternalServerError, SecurityError

from app.errors import bp
from app.extensions import db


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

from datetime import timedelta

import sqlalchemy as sa
from flask import abort, current_app, flash, jsonify, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_celery_request import ContextCaptureError
from flask_login import current_user, login_required

from app import audit, i18n
from app.exports import EXPORT_TASK_NAME, export_exists, export_kept_through, export_name
from app.extensions import db
from app.errors.handlers import error_response, status_title, wants_json
from app.i18n import N_
from app.main import bp
from app.main.forms import EmptyForm, LanguageForm, PostForm
from app.jobs import TaskAlreadyRunning, TaskNotStarted, launch_task
from app.models import AuditEvent, Post, Task, User, utcnow
from app.storage import StorageError, export_storage
from app.tasks import export_posts as export_posts_task
from app.tasks import ping
from app.urls import safe_next


#: SQLite and PostgreSQL take an OFFSET up to a signed 64-bit integer.
_MAX_OFFSET = 2**63 - 1


def _page(per_page: int) -> int:
    """``?page=``, clamped to 1 and to the largest page whose OFFSET the database takes
    (past the last page is an empty page); not a number is page 1."""
    return min(max(request.args.get("page", 1, type=int), 1), _MAX_OFFSET // per_page)


@bp.route("/index", methods=["GET", "POST"])
@bp.route("/", methods=["GET", "POST"])
@login_required
def index():
    form = PostForm()
    if form.validate_on_submit():
        db.session.add(Post(body=form.post.data, author=current_user))
        db.session.commit()
        flash(_("Your post is now live!"), "success")
        return redirect(url_for("main.index"))
    posts = db.paginate(
        sa.select(Post).order_by(Post.timestamp.desc(), Post.id.desc()),
        page=_page(current_app.config["POSTS_PER_PAGE"]),
        per_page=current_app.config["POSTS_PER_PAGE"],
        error_out=False,
    )
    status = 400 if form.errors else 200
    return render_template(
        "index.html", title=_("Home"), form=form, posts=posts, ping_form=EmptyForm(), endpoint="main.index"
    ), status


@bp.route("/user/<username>")
@login_required
def user(username: str):
    profile = db.first_or_404(sa.select(User).where(User.username == username))
    per_page = current_app.config["POSTS_PER_PAGE"]
    posts = db.paginate(profile.posts_select(), page=_page(per_page), per_page=per_page, error_out=False)
    return render_template("user.html", title=profile.username, user=profile, posts=posts, form=EmptyForm())


@bp.errorhandler(TaskAlreadyRunning)
def _already_running(exc: TaskAlreadyRunning):
    return _refused(str(exc), "warning", 409)


@bp.errorhandler(TaskNotStarted)
def _not_started(exc: TaskNotStarted):
    return _refused(_("The background service is unavailable; the task was not started. "
                      "Please try again in a moment."), "danger", 503)


@bp.errorhandler(StorageError)
def _storage_unavailable(exc: StorageError):
    # The object store is down or refuses us: like a broker outage, a moment's wait may
    # help, and the reason (bucket, endpoint) is for the log, not the page.
    current_app.logger.error("Export storage unavailable on %s %s: %s", request.method, request.path, exc)
    return error_response(503, status_title(503), _("Your exports cannot be reached just now. Please try "
                                                    "again in a moment."))


@bp.errorhandler(ContextCaptureError)
def _not_carried(exc: ContextCaptureError):
    # The request itself is at fault (say, a JSON body nested too deep to scrub): retrying
    # it cannot help, unlike a broker outage. The reason is the carrier's, in English.
    return _refused(_("Your request could not be carried to the background job: %(reason)s.", reason=exc),
                    "danger", 400)


def _refused(message: str, category: str, status: int):
    """Browsers go back to the page of the button with a flash message; JSON clients
    get the status and reason."""
    if wants_json():
        return jsonify(error=message), status
    flash(message, category)
    return redirect(_back())


def _back() -> str:
    if request.endpoint == "main.export_posts":
        return url_for("main.user", username=current_user.username)
    return url_for("main.index")


@bp.route("/ping", methods=["POST"])
@login_required
def send_ping():
    """Send a trivial task to the worker: shows the broker and worker are alive."""
    task = launch_task(current_user, ping, N_("Ping the worker"))
    return _started(task, _("Ping sent to the worker."))


@bp.route("/export_posts", methods=["POST"])
@login_required
def export_posts():
    # TRANSLATORS: a running task's description; with its trailing dots taken off it also
    # names the task in "%(task)s: done." and "%(task)s failed: %(error)s".
    task = launch_task(current_user, export_posts_task, N_("Exporting posts..."), current_user.id)
    audit.record("export_posts_requested")
    return _started(task, _("Your export has started. You can keep browsing; we will email you when it is "
                            "ready."))


def _started(task: Task, message: str):
    """Browsers go back to the page of the button, where the flash ``message`` sits above
    the task's live alert; JSON clients get 202 and the task, to poll at its ``status_url``."""
    status_url = url_for("main.task_status", task_id=task.id)
    if wants_json():
        return jsonify(task={"id": task.id, "status_url": status_url}), 202, {"Location": status_url}
    flash(message, "info")
    return redirect(_back())


def _own_task_or_404(task_id: str) -> Task:
    task = db.session.get(Task, task_id)
    if task is None or task.user_id != current_user.id:
        abort(404)
    return task


@bp.route("/tasks/<task_id>")
@login_required
def task_status(task_id: str):
    """A task's state as JSON, its words in the user's language; other users' tasks do
    not exist for you (404). ``done`` and ``total`` count what the task works through (an
    export's posts) as its last report said; ``total`` is null until the first report."""
    task = _own_task_or_404(task_id)
    download_url = url_for("main.download_export", task_id=task.id) if export_exists(task) else None
    return jsonify(
        id=task.id,
        name=task.name,
        description=i18n.translate(task.description),
        state=task.state,
        progress=task.progress,
        done=task.done,
        total=task.total,
        error=i18n.translate(task.error),
        download_url=download_url,
    )


@bp.route("/exports/<task_id>")
@login_required
def download_export(task_id: str):
    """The export file, as an attachment (from the export storage: a file sent, or a
    redirect to a short-lived link to the object); 410 Gone once it has expired."""
    task = _own_task_or_404(task_id)
    if task.name != EXPORT_TASK_NAME:
        abort(404)
    name = export_name(task)
    if name is None and task.is_running:
        abort(409, description=_("This export is not ready yet; watch its progress bar or wait for the "
                                 "email."))
    if name is None:
        abort(404, description=_("This export failed and has no file. Start a new export from your profile "
                                 "page."))
    storage = export_storage()
    if not storage.exists(name):
        abort(410, description=_("This export has expired and its file was removed. Start a new export "
                                 "from your profile page."))
    return storage.download(name, f"{current_user.username}-posts.json", "application/json")


@bp.route("/activity")
@login_required
def activity():
    """The user's own audit trail: what was done on their account, and from where."""
    events = db.paginate(
        sa.select(AuditEvent).where(AuditEvent.user_id == current_user.id)
        .order_by(AuditEvent.created.desc(), AuditEvent.id.desc()),
        page=_page(50), per_page=50, error_out=False,
    )
    return render_template("activity.html", title=_("Account activity"), events=events,
                           action_name=audit.action_name, detail_text=audit.detail_text)


@bp.route("/language", methods=["POST"])
def set_language():
    """Read the site in another language: this session's, and the account's when signed
    in (visitors choose before they register). Back to the page the switcher was on."""
    form = LanguageForm()
    if not form.validate_on_submit():
        abort(400, description=_("Choose one of these languages: %(languages)s.",
                                 languages=", ".join(i18n.languages())))
    i18n.choose_locale(form.locale.data)
    flash(_("Language changed."), "info")
    fallback = url_for("main.index") if current_user.is_authenticated else url_for("auth.login")
    return redirect(safe_next(form.next.data or request.args.get("next"), fallback))


@bp.route("/exports")
@login_required
def exports():
    """The user's own exports, newest first: how each went, and its file while it is kept."""
    tasks = db.paginate(
        sa.select(Task).where(Task.user_id == current_user.id, Task.name == EXPORT_TASK_NAME)
        .order_by(Task.created.desc(), Task.id.desc()),
        page=_page(25), per_page=25, error_out=False,
    )
    downloadable, expired = _export_files(tasks.items)
    return render_template("exports.html", title=_("Your exports"), tasks=tasks, downloadable=downloadable,
                           expired=expired, kept_through=export_kept_through,
                           retention_days=current_app.config["EXPORT_RETENTION_DAYS"])


def _export_files(tasks: list[Task]) -> tuple[set[str], set[str]]:
    """The ids of the exports whose file can be downloaded, and of those whose file is gone.

    The store is asked once per export, and only about files the cleanup may still have
    kept (finished within ``EXPORT_RETENTION_DAYS``, or not finished): an older one is
    expired without a question, so a page of old exports costs no requests to S3.
    """
    kept_since = utcnow() - timedelta(days=current_app.config["EXPORT_RETENTION_DAYS"])
    downloadable, expired = set(), set()
    for task in tasks:
        if task.result_location is None:
            continue
        if (task.finished is None or task.finished >= kept_since) and export_exists(task):
            downloadable.add(task.id)
        else:
            expired.add(task.id)
    return downloadable, expired


@bp.route("/favicon.ico")
def favicon():
    """Browsers ask for /favicon.ico on every site whatever the page links to."""
    return current_app.send_static_file("favicon.ico")

import sqlalchemy as sa
from flask import abort, current_app, flash, jsonify, redirect, render_template, request, url_for
from flask_login import current_user, login_required

from app.extensions import db
from app.main import bp
from app.main.forms import EmptyForm, PostForm
from app.models import Post, Task, TaskNotStarted, User
from app.tasks import ping


def _page() -> int:
    return request.args.get("page", 1, type=int) or 1


@bp.route("/index", methods=["GET", "POST"])
@bp.route("/", methods=["GET", "POST"])
@login_required
def index():
    form = PostForm()
    if form.validate_on_submit():
        db.session.add(Post(body=form.post.data, author=current_user))
        db.session.commit()
        flash("Your post is now live!", "success")
        return redirect(url_for("main.index"))
    posts = db.paginate(
        sa.select(Post).order_by(Post.timestamp.desc(), Post.id.desc()),
        page=_page(),
        per_page=current_app.config["POSTS_PER_PAGE"],
        error_out=False,
    )
    status = 400 if form.errors else 200
    return render_template(
        "index.html", title="Home", form=form, posts=posts, ping_form=EmptyForm(), endpoint="main.index"
    ), status


@bp.route("/user/<username>")
@login_required
def user(username: str):
    profile = db.first_or_404(sa.select(User).where(User.username == username))
    posts = db.paginate(
        profile.posts_select(), page=_page(), per_page=current_app.config["POSTS_PER_PAGE"], error_out=False
    )
    return render_template("user.html", title=profile.username, user=profile, posts=posts)


@bp.route("/ping", methods=["POST"])
@login_required
def send_ping():
    """Send a trivial task to the worker: shows the broker and worker are alive."""
    if not EmptyForm().validate_on_submit():
        abort(400)
    try:
        task = current_user.launch_task(ping, "Ping the worker")
    except TaskNotStarted as exc:
        flash(str(exc), "danger")
        return redirect(url_for("main.index")), 503
    flash(f"Ping sent to the worker (task {task.id}).", "info")
    return redirect(url_for("main.index"))


@bp.route("/tasks/<task_id>")
@login_required
def task_status(task_id: str):
    """A task's state as JSON; other users' tasks do not exist for you (404)."""
    task = db.session.get(Task, task_id)
    if task is None or task.user_id != current_user.id:
        abort(404)
    return jsonify(
        id=task.id,
        name=task.name,
        description=task.description,
        state=task.state,
        progress=task.progress,
        error=task.error,
        download_url=None,
    )

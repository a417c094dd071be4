from urllib.parse import urlsplit

import sqlalchemy as sa
from flask import flash, redirect, render_template, request, url_for
from flask_login import current_user, login_user, logout_user
from sqlalchemy.exc import IntegrityError

from app.auth import bp
from app.auth.forms import LoginForm, LogoutForm, RegistrationForm
from app.extensions import db
from app.models import User


def _safe_next(target: str | None) -> str:
    """Only same-site relative paths: never redirect a user to another host."""
    if not target or urlsplit(target).netloc or urlsplit(target).scheme or not target.startswith("/") \
            or target.startswith("//"):
        return url_for("main.index")
    return target


@bp.route("/login", methods=["GET", "POST"])
def login():
    if current_user.is_authenticated:
        return redirect(url_for("main.index"))
    form = LoginForm()
    if form.validate_on_submit():
        user = db.session.scalar(sa.select(User).where(User.username == form.username.data))
        if user is None or not user.check_password(form.password.data):
            flash("Invalid username or password.", "danger")
            return render_template("auth/login.html", title="Sign in", form=form), 401
        login_user(user, remember=form.remember_me.data)
        return redirect(_safe_next(request.args.get("next")))
    status = 400 if form.errors else 200
    return render_template("auth/login.html", title="Sign in", form=form), status


@bp.route("/logout", methods=["GET", "POST"])
def logout():
    # Logging out changes state, so it takes a POST with a CSRF token; GET asks first.
    form = LogoutForm()
    if not form.validate_on_submit():
        return render_template("auth/logout.html", title="Log out", form=form)
    logout_user()
    flash("You have been logged out.", "info")
    return redirect(url_for("auth.login"))


@bp.route("/register", methods=["GET", "POST"])
def register():
    if current_user.is_authenticated:
        return redirect(url_for("main.index"))
    form = RegistrationForm()
    if form.validate_on_submit():
        user = User(username=form.username.data, email=form.email.data)
        user.set_password(form.password.data)
        db.session.add(user)
        try:
            db.session.commit()
        except IntegrityError:
            # Two registrations raced past the form's checks; the unique index decided.
            db.session.rollback()
            form.username.errors.append("That username or email was just taken; please choose another.")
            return render_template("auth/register.html", title="Register", form=form), 409
        flash("Congratulations, you are now a registered user! Please sign in.", "success")
        return redirect(url_for("auth.login"))
    status = 400 if form.errors else 200
    return render_template("auth/register.html", title="Register", form=form), status

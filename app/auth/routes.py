"""Signing up, in and out; changing and resetting a password."""
from flask import current_app, flash, redirect, render_template, request, session, url_for
from flask_babel import gettext as _
from flask_babel import ngettext
from flask_login import current_user, login_required, login_user, logout_user
from sqlalchemy.exc import IntegrityError

from app import accounts, audit, i18n, password_reset
from app.auth import bp
from app.auth.forms import (ChangePasswordForm, LoginForm, LogoutForm, RegistrationForm, ResetPasswordForm,
                            ResetPasswordRequestForm)
from app.extensions import db
from app.models import User
from app.urls import safe_next


def _sign_in(user: User, remember: bool) -> None:
    """A new session for the signed-in user: nothing of the anonymous one carries over
    but the language chosen before signing in, which the account takes on."""
    chosen = session.get(i18n.SESSION_LOCALE)
    session.clear()
    login_user(user, remember=remember)
    if chosen in i18n.languages():
        i18n.choose_locale(chosen)
    i18n.remember_account_settings(user)


def _form_page(template: str, title: str, form, status: int | None = None):
    return render_template(template, title=title, form=form), status or (400 if form.errors else 200)


@bp.route("/login", methods=["GET", "POST"])
def login():
    if current_user.is_authenticated:
        return redirect(url_for("main.index"))
    form = LoginForm()
    if form.validate_on_submit():
        user = accounts.user_by_name(form.username.data)
        if user is None or not user.check_password(form.password.data):
            flash(_("Invalid username or password."), "danger")
            return _form_page("auth/login.html", _("Sign in"), form, 401)
        _sign_in(user, remember=form.remember_me.data)
        audit.record("signed_in", user_id=user.id)
        return redirect(safe_next(request.args.get("next"), url_for("main.index")))
    return _form_page("auth/login.html", _("Sign in"), form)


@bp.route("/logout", methods=["GET", "POST"])
def logout():
    # Logging out changes state, so it takes a POST with a CSRF token; GET asks first.
    form = LogoutForm()
    if not form.validate_on_submit():
        return render_template("auth/logout.html", title=_("Log out"), form=form)
    if current_user.is_authenticated:
        accounts.end_all_sessions(current_user)  # on every device, remember-me cookies too
        audit.record("signed_out", user_id=current_user.id)
    logout_user()
    flash(_("You have been logged out."), "info")
    return redirect(url_for("auth.login"))


@bp.route("/register", methods=["GET", "POST"])
def register():
    if current_user.is_authenticated:
        return redirect(url_for("main.index"))
    form = RegistrationForm()
    if form.validate_on_submit():
        # The language and time zone the visitor has now become the account's.
        user = User(username=form.username.data, email=form.email.data, locale=i18n.current_language(),
                    timezone=i18n.browser_timezone())
        user.set_password(form.password.data)
        db.session.add(user)
        try:
            db.session.commit()
        except IntegrityError:
            # Two registrations raced past the form's checks; the unique index decided.
            db.session.rollback()
            form.username.errors.append(_("That username or email was just taken; please choose another."))
            return _form_page("auth/register.html", _("Register"), form, 409)
        flash(_("Congratulations, you are now a registered user! Please sign in."), "success")
        return redirect(url_for("auth.login"))
    return _form_page("auth/register.html", _("Register"), form)


@bp.route("/change_password", methods=["GET", "POST"])
@login_required
def change_password():
    user = current_user._get_current_object()
    form = ChangePasswordForm(user)
    if form.validate_on_submit():
        accounts.change_password(user, form.password.data)
        remembered = current_app.config.get("REMEMBER_COOKIE_NAME", "remember_token") in request.cookies
        logout_user()  # this browser's old session and remember-me cookie go too...
        _sign_in(user, remember=remembered)  # ...and it is signed in again with the new token
        audit.record("password_changed", user_id=user.id)
        flash(_("Your password has been changed, and you have been signed out everywhere else."), "success")
        return redirect(url_for("main.user", username=user.username))
    return _form_page("auth/change_password.html", _("Change password"), form)


@bp.route("/reset_password_request", methods=["GET", "POST"])
def reset_password_request():
    if current_user.is_authenticated:
        return redirect(url_for("main.index"))
    form = ResetPasswordRequestForm()
    if form.validate_on_submit():
        password_reset.request_reset(form.email.data)
        # The same words whether or not the address has an account.
        minutes = current_app.config["PASSWORD_RESET_MAX_AGE"] // 60
        flash(ngettext("If an account has that address, an email with a link to reset its password is on its "
                       "way. The link works once, for %(num)d minute.",
                       "If an account has that address, an email with a link to reset its password is on its "
                       "way. The link works once, for %(num)d minutes.", minutes), "info")
        return redirect(url_for("auth.login"))
    return _form_page("auth/reset_password_request.html", _("Reset your password"), form)


@bp.route("/reset_password/<token>", methods=["GET", "POST"])
def reset_password(token: str):
    if current_user.is_authenticated:
        return redirect(url_for("main.index"))
    user = password_reset.user_for_token(token)
    if user is None:
        flash(_("That password-reset link has expired or has already been used. Ask for a new one here."),
              "danger")
        return redirect(url_for("auth.reset_password_request"))
    form = ResetPasswordForm(user)
    if form.validate_on_submit():
        password_reset.reset_password(user, form.password.data)
        audit.record("password_reset", user_id=user.id)
        flash(_("Your password has been reset. Please sign in with it."), "success")
        return redirect(url_for("auth.login"))
    return _form_page("auth/reset_password.html", _("Choose a new password"), form)

"""Account forms; every validation failure is a message on the form."""
from __future__ import annotations

from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_babel.speaklater import LazyString
from flask_wtf import FlaskForm
from wtforms import BooleanField, PasswordField, StringField, SubmitField
from wtforms.validators import DataRequired, Email, EqualTo, Length, Regexp, ValidationError

from app.accounts import normalize_username, user_by_email, user_by_name
from app.auth.passwords import password_problem
from app.models import User

#: The whole name, start to end: ``$`` would also match before a trailing newline.
USERNAME_RULE = Regexp(
    r"\A[A-Za-z0-9_.-]+\Z", message=_l("Use letters, digits, dots, dashes and underscores only.")
)


def new_password_field(label: str | LazyString = _l("New password")) -> PasswordField:
    """A new password, checked by :class:`NewPasswordMixin`. A function, not a mixin's
    field: WTForms orders fields by when they were made, and a form declares this one
    where it belongs among its own."""
    return PasswordField(label, validators=[DataRequired(), Length(max=256)])


def repeat_password_field() -> PasswordField:
    """The new password again, declared right after :func:`new_password_field`."""
    return PasswordField(
        _l("Repeat password"),
        validators=[DataRequired(), EqualTo("password", message=_l("Passwords must match."))],
    )


class NewPasswordMixin:
    """Checks a form's ``password`` (see :func:`new_password_field`) against the
    account's own names."""

    def account_names(self) -> tuple[str, str]:
        """The username and email address the password must not be built from."""
        raise NotImplementedError

    def validate_password(self, password: PasswordField) -> None:
        problem = password_problem(password.data or "", *self.account_names())
        if problem:
            raise ValidationError(problem)


class LoginForm(FlaskForm):
    username = StringField(_l("Username"), validators=[DataRequired(), Length(max=64)],
                           filters=[normalize_username])
    password = PasswordField(_l("Password"), validators=[DataRequired(), Length(max=256)])
    remember_me = BooleanField(_l("Remember me"))
    submit = SubmitField(_l("Sign in"))


class RegistrationForm(NewPasswordMixin, FlaskForm):
    username = StringField(
        _l("Username"), validators=[DataRequired(), Length(min=3, max=64), USERNAME_RULE],
        filters=[normalize_username],
    )
    email = StringField(_l("Email"), validators=[DataRequired(), Email(), Length(max=120)])
    password = new_password_field(_l("Password"))
    password2 = repeat_password_field()
    submit = SubmitField(_l("Register"))

    def account_names(self) -> tuple[str, str]:
        return self.username.data or "", self.email.data or ""

    def validate_username(self, username: StringField) -> None:
        if user_by_name(username.data) is not None:
            raise ValidationError(_("That username is taken; please choose another."))

    def validate_email(self, email: StringField) -> None:
        if user_by_email(email.data) is not None:
            raise ValidationError(_("That email address is already registered."))


class LogoutForm(FlaskForm):
    submit = SubmitField(_l("Log out"))


class AccountPasswordForm(NewPasswordMixin, FlaskForm):
    """A new password for an existing account, ``user``."""

    def __init__(self, user: User, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.user = user

    def account_names(self) -> tuple[str, str]:
        return self.user.username, self.user.email


class ChangePasswordForm(AccountPasswordForm):
    current_password = PasswordField(_l("Current password"), validators=[DataRequired(), Length(max=256)])
    password = new_password_field()
    password2 = repeat_password_field()
    submit = SubmitField(_l("Change password"))

    def validate_current_password(self, current_password: PasswordField) -> None:
        if not self.user.check_password(current_password.data or ""):
            raise ValidationError(_("That is not your current password."))


class ResetPasswordRequestForm(FlaskForm):
    email = StringField(_l("Email"), validators=[DataRequired(), Email(), Length(max=120)])
    submit = SubmitField(_l("Send me a reset link"))


class ResetPasswordForm(AccountPasswordForm):
    password = new_password_field()
    password2 = repeat_password_field()
    submit = SubmitField(_l("Set my new password"))

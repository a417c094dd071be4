"""Account forms; every validation failure is a message on the form."""
from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import BooleanField, PasswordField, StringField, SubmitField
from wtforms.validators import DataRequired, Email, EqualTo, Length, Regexp, ValidationError

from app.accounts import normalize_username, user_by_email, user_by_name
from app.auth.passwords import password_problem
from app.models import User

#: The whole name, start to end: ``$`` would also match before a trailing newline.
USERNAME_RULE = Regexp(
    r"\A[A-Za-z0-9_.-]+\Z", message="Use letters, digits, dots, dashes and underscores only."
)


class NewPasswordMixin:
    """``password`` and ``password2``, checked against the account's own names."""

    password = PasswordField("New password", validators=[DataRequired(), Length(max=256)])
    password2 = PasswordField(
        "Repeat password", validators=[DataRequired(), EqualTo("password", message="Passwords must match.")]
    )

    def account_names(self) -> tuple[str, str]:
        """The username and email address the password must not be built from."""
        raise NotImplementedError

    def validate_password(self, password: PasswordField) -> None:
        problem = password_problem(password.data or "", *self.account_names())
        if problem:
            raise ValidationError(problem)


class LoginForm(FlaskForm):
    username = StringField("Username", validators=[DataRequired(), Length(max=64)], filters=[normalize_username])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=256)])
    remember_me = BooleanField("Remember me")
    submit = SubmitField("Sign in")


class RegistrationForm(NewPasswordMixin, FlaskForm):
    username = StringField(
        "Username", validators=[DataRequired(), Length(min=3, max=64), USERNAME_RULE], filters=[normalize_username]
    )
    email = StringField("Email", validators=[DataRequired(), Email(), Length(max=120)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=256)])
    submit = SubmitField("Register")

    def account_names(self) -> tuple[str, str]:
        return self.username.data or "", self.email.data or ""

    def validate_username(self, username: StringField) -> None:
        if user_by_name(username.data) is not None:
            raise ValidationError("That username is taken; please choose another.")

    def validate_email(self, email: StringField) -> None:
        if user_by_email(email.data) is not None:
            raise ValidationError("That email address is already registered.")


class LogoutForm(FlaskForm):
    submit = SubmitField("Log out")


class AccountPasswordForm(NewPasswordMixin, FlaskForm):
    """A new password for an existing account, ``user``."""

    def __init__(self, user: User, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.user = user

    def account_names(self) -> tuple[str, str]:
        return self.user.username, self.user.email


class ChangePasswordForm(AccountPasswordForm):
    current_password = PasswordField("Current password", validators=[DataRequired(), Length(max=256)])
    submit = SubmitField("Change password")

    def validate_current_password(self, current_password: PasswordField) -> None:
        if not self.user.check_password(current_password.data or ""):
            raise ValidationError("That is not your current password.")


class ResetPasswordRequestForm(FlaskForm):
    email = StringField("Email", validators=[DataRequired(), Email(), Length(max=120)])
    submit = SubmitField("Send me a reset link")


class ResetPasswordForm(AccountPasswordForm):
    submit = SubmitField("Set my new password")

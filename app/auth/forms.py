"""Registration and login forms; every validation failure is a message on the form."""
import sqlalchemy as sa
from flask_wtf import FlaskForm
from wtforms import BooleanField, PasswordField, StringField, SubmitField
from wtforms.validators import DataRequired, Email, EqualTo, Length, Regexp, ValidationError

from app.extensions import db
from app.models import User

USERNAME_RULE = Regexp(
    r"^[A-Za-z0-9_.-]+$", message="Use letters, digits, dots, dashes and underscores only."
)


class LoginForm(FlaskForm):
    username = StringField("Username", validators=[DataRequired(), Length(max=64)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=256)])
    remember_me = BooleanField("Remember me")
    submit = SubmitField("Sign in")


class RegistrationForm(FlaskForm):
    username = StringField(
        "Username", validators=[DataRequired(), Length(min=3, max=64), USERNAME_RULE]
    )
    email = StringField("Email", validators=[DataRequired(), Email(), Length(max=120)])
    password = PasswordField("Password", validators=[DataRequired(), Length(min=8, max=256)])
    password2 = PasswordField(
        "Repeat password", validators=[DataRequired(), EqualTo("password", message="Passwords must match.")]
    )
    submit = SubmitField("Register")

    def validate_username(self, username: StringField) -> None:
        taken = db.session.scalar(
            sa.select(User.id).where(sa.func.lower(User.username) == username.data.lower())
        )
        if taken is not None:
            raise ValidationError("That username is taken; please choose another.")

    def validate_email(self, email: StringField) -> None:
        taken = db.session.scalar(sa.select(User.id).where(sa.func.lower(User.email) == email.data.lower()))
        if taken is not None:
            raise ValidationError("That email address is already registered.")


class LogoutForm(FlaskForm):
    submit = SubmitField("Log out")

from flask_wtf import FlaskForm
from wtforms import SubmitField, TextAreaField
from wtforms.validators import DataRequired, Length


class PostForm(FlaskForm):
    post = TextAreaField("Say something", validators=[DataRequired(), Length(min=1, max=280)])
    submit = SubmitField("Submit")


class EmptyForm(FlaskForm):
    """A button that POSTs with a CSRF token and nothing else."""

    submit = SubmitField("Submit")

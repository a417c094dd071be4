from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import HiddenField, SelectField, SubmitField, TextAreaField
from wtforms.validators import DataRequired, Length

from app.i18n import languages


class PostForm(FlaskForm):
    post = TextAreaField(_l("Say something"), validators=[DataRequired(), Length(min=1, max=280)])
    submit = SubmitField(_l("Submit"))


class EmptyForm(FlaskForm):
    """A button that POSTs with a CSRF token and nothing else."""

    submit = SubmitField(_l("Submit"))


class LanguageForm(FlaskForm):
    """The language switcher: one of the app's languages, and the page to go back to."""

    locale = SelectField(_l("Language"))
    next = HiddenField()

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.locale.choices = list(languages().items())

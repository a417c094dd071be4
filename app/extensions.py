"""The extension objects, created once; ``create_app`` binds them to each app."""
from flask_babel import Babel
from flask_celery_request import CeleryWithContext
from flask_login import LoginManager
from flask_mail import Mail
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_wtf.csrf import CSRFProtect
from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)
migrate = Migrate()
mail = Mail()
csrf = CSRFProtect()
login = LoginManager()
login.login_view = "auth.login"
babel = Babel()
celery = CeleryWithContext(main="microblog")
#: The Content-Security-Policy create_app hands Flask-Talisman. No inline script or style
#: anywhere: scripts and styles are files under static/, and static/tasks.js sets the
#: progress bars' widths through the CSSOM, which CSP allows.
CONTENT_SECURITY_POLICY = {
    "default-src": "'self'",
    "object-src": "'none'",
    "base-uri": "'self'",
    "form-action": "'self'",
    "frame-ancestors": "'none'",
}

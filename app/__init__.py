"""Microblog: a Flask app whose Celery tasks run inside the request that started them."""
from __future__ import annotations

from flask import Flask
from flask_talisman import Talisman

from app import broker  # noqa: F401  (connects the worker's broker hooks)
from app import logs
from app import i18n
from app.celery_config import celery_settings
from app.extensions import celery, csrf, db, login, mail, migrate
from app.extensions import CONTENT_SECURITY_POLICY
from config import Config, config_from_environment


def create_app(config_class: type[Config] | Config | None = None) -> Flask:
    """Build the app. ``config_class`` defaults to the one ``MICROBLOG_CONFIG`` names."""
    if config_class is None:
        config = config_from_environment()
    elif isinstance(config_class, type):
        config = config_class()
    else:
        config = config_class
    app = Flask(__name__, instance_path=config.INSTANCE_PATH)
    app.config.from_object(config)
    app.config["CELERY"] = celery_settings(app.config)

    db.init_app(app)
    migrate.init_app(app, db, render_as_batch=True)
    mail.init_app(app)
    csrf.init_app(app)
    login.init_app(app)
    i18n.init_app(app)
    celery.init_app(app)
    logs.init_app(app)
    # One Talisman per app: it keeps its options on itself, not on the app, so one shared by
    # several apps (the tests build many) would give all of them the last one's HSTS.
    # https://github.com/GoogleCloudPlatform/flask-talisman/issues/66
    Talisman(
        app,
        content_security_policy=CONTENT_SECURITY_POLICY,
        frame_options="DENY",
        # TLS ends at the proxy, which redirects plain http (docs/deploying.md); a redirect
        # here would also turn a load balancer's plain-http /healthz probe into a 302.
        force_https=False,
        # The config decides the cookie flags (ProductionConfig: Secure); Talisman's
        # defaults would make them Secure on every request, and break http://127.0.0.1.
        session_cookie_secure=False,
        session_cookie_samesite=app.config["SESSION_COOKIE_SAMESITE"],
        strict_transport_security=app.config["SECURITY_HSTS"],
    )
    with app.app_context():
        from app.sqlite import configure_sqlite

        configure_sqlite(app, db.engine)

    from app import audit, password_reset, tasks, welcome  # noqa: F401  (tasks: registers the Celery tasks)
    from app.auth import bp as auth_bp
    from app.auth import limits as auth_limits
    from app.cli import register_cli
    from app.errors import bp as errors_bp
    from app.health import bp as health_bp
    from app.main import bp as main_bp

    app.register_blueprint(errors_bp)
    app.register_blueprint(auth_bp, url_prefix="/auth")
    auth_limits.init_app(app)
    app.register_blueprint(main_bp)
    app.register_blueprint(health_bp)
    audit.init_app(app)
    welcome.init_app(app, send_task=tasks.send_welcome_email)
    password_reset.init_app(app, send_task=tasks.send_password_reset_email)
    register_cli(app)
    return app

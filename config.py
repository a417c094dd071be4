"""Configuration classes, read from environment variables when instantiated.

``create_app()`` picks one by the ``MICROBLOG_CONFIG`` variable (``development``,
``testing`` or ``production``; default ``development``). Every setting can be set
through the environment variable of the same name; ``.env`` and ``.flaskenv`` are
loaded by the Flask CLI and by ``celery_worker.py``.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

BASEDIR = Path(__file__).resolve().parent

#: The development default; production refuses to start with it.
INSECURE_SECRET_KEY = "dev-insecure-secret-key-change-me"


class Environment:
    """Settings read from environment variables, each named once; a bad value is an
    error that names the variable and the value. An empty variable counts as unset."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.environ = os.environ if environ is None else environ

    def text(self, name: str, default: str | None = None) -> str | None:
        return self.environ.get(name) or default

    def is_set(self, name: str) -> bool:
        return self.environ.get(name) is not None

    def bool(self, name: str, default: bool = False) -> bool:
        value = self.environ.get(name)
        if value is None or value.strip() == "":
            return default
        text = value.strip().lower()
        if text in {"1", "true", "yes", "on"}:
            return True
        if text in {"0", "false", "no", "off"}:
            return False
        raise ValueError(f"{name} must be a boolean (1/0, true/false, yes/no, on/off), found {value!r}")

    def int(self, name: str, default: int) -> int:
        return self._number(name, default, int, "an integer")

    def float(self, name: str, default: float) -> float:
        return self._number(name, default, float, "a number")

    def list(self, name: str) -> list[str] | None:
        """A comma-separated list, blanks ignored; None when unset."""
        value = self.environ.get(name)
        if value is None or value.strip() == "":
            return None
        return [item.strip() for item in value.split(",") if item.strip()]

    def _number(self, name: str, default, kind, what: str):
        value = self.environ.get(name)
        if value is None or value.strip() == "":
            return default
        try:
            return kind(value)
        except ValueError:
            raise ValueError(f"{name} must be {what}, found {value!r}") from None


def database_url(value: str | None, default: str) -> str:
    """``DATABASE_URL`` for SQLAlchemy: a bare ``postgresql://`` or ``postgres://`` URL (as
    hosting providers hand them out) gets the psycopg 3 driver the app installs, rather
    than SQLAlchemy's default psycopg2, which is not installed."""
    url = (value or "").strip() or default
    for scheme in ("postgres://", "postgresql://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url[len(scheme):]
    return url


#: An S3 bucket name: 3 to 63 lower-case letters, digits, dots and hyphens, a letter or
#: digit at each end.
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
#: The longest a presigned URL may live (Signature Version 4).
MAX_PRESIGNED_SECONDS = 7 * 24 * 3600


def exports_storage_url(value: str | None) -> str:
    """``EXPORTS_STORAGE_URL``, checked when the config is read rather than at the first
    export: empty (exports in ``EXPORTS_DIR``), or ``s3://bucket`` or ``s3://bucket/prefix``."""
    url = (value or "").strip()
    if not url:
        return ""
    parts = urlsplit(url)
    if "@" in parts.netloc:  # the value is not repeated: it holds a secret
        raise ValueError("EXPORTS_STORAGE_URL must not hold credentials: set AWS_ACCESS_KEY_ID and "
                         "AWS_SECRET_ACCESS_KEY instead")
    expected = "must be empty (exports in EXPORTS_DIR) or s3://bucket or s3://bucket/prefix"
    if parts.scheme.lower() != "s3" or parts.query or parts.fragment:
        raise ValueError(f"EXPORTS_STORAGE_URL {expected}, found {value!r}")
    if not parts.netloc:
        raise ValueError(f"EXPORTS_STORAGE_URL {expected}: the bucket is missing, found {value!r}")
    if not _BUCKET_NAME.fullmatch(parts.netloc):
        raise ValueError(f"EXPORTS_STORAGE_URL names the bucket {parts.netloc!r}, which is not an S3 bucket "
                         f"name (3 to 63 lower-case letters, digits, dots and hyphens), found {value!r}")
    return url


def redis_socket_url(socket_path: Path) -> str:
    """The URL Celery (kombu and the Redis result backend) uses for a unix socket."""
    return f"redis+socket://{socket_path}"


def limiter_storage_url(redis_url: str) -> str:
    """``REDIS_URL`` as the ``limits`` package spells it: Celery's unix-socket form
    ``redis+socket:///path?virtual_host=N`` becomes ``redis+unix:///path?db=N``."""
    parts = urlsplit(redis_url)
    if parts.scheme != "redis+socket":
        return redis_url
    query = urlencode([("db" if name == "virtual_host" else name, value) for name, value in parse_qsl(parts.query)])
    return f"redis+unix://{parts.path}" + (f"?{query}" if query else "")


class Config:
    """Settings shared by every environment. Instantiate to read the environment."""

    TESTING = False
    DEBUG = False

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = Environment(environ)

        self.INSTANCE_PATH = str(Path(env.text("INSTANCE_PATH") or BASEDIR / "instance").resolve())
        instance = Path(self.INSTANCE_PATH)

        self.SECRET_KEY = env.text("SECRET_KEY", INSECURE_SECRET_KEY)
        self.SECRET_KEY_FALLBACKS = env.list("SECRET_KEY_FALLBACKS") or []
        # Flask refuses requests whose Host is not listed (and so does enqueueing).
        self.TRUSTED_HOSTS = env.list("TRUSTED_HOSTS")
        self.SERVER_NAME = env.text("SERVER_NAME")
        self.APPLICATION_ROOT = env.text("APPLICATION_ROOT", "/")
        self.PREFERRED_URL_SCHEME = env.text("PREFERRED_URL_SCHEME", "http")

        # Relative SQLite paths are resolved inside the instance folder by Flask-SQLAlchemy.
        self.SQLALCHEMY_DATABASE_URI = database_url(env.text("DATABASE_URL"), "sqlite:///microblog.db")
        self.SQLALCHEMY_ENGINE_OPTIONS: dict = {}
        self.SQLITE_BUSY_TIMEOUT_MS = env.int("SQLITE_BUSY_TIMEOUT_MS", 15000)

        self.EMBEDDED_REDIS_SOCKET = str(instance / "redis.sock")
        self.REDIS_URL = env.text("REDIS_URL", redis_socket_url(Path(self.EMBEDDED_REDIS_SOCKET)))
        self.CELERY_BROKER_URL = env.text("CELERY_BROKER_URL", self.REDIS_URL)
        self.CELERY_RESULT_BACKEND = env.text("CELERY_RESULT_BACKEND", self.REDIS_URL)
        # Seconds before Redis hands an unacknowledged task to another worker: above the
        # task time limit and the longest countdown, or a slow task could run twice.
        self.BROKER_VISIBILITY_TIMEOUT = env.int("BROKER_VISIBILITY_TIMEOUT", 7200)
        # A broker or result backend that accepts connections but answers nothing (a network
        # partition, a frozen server): how long a web request waits on each of its replies,
        # and how often RabbitMQ and its clients check each other. Workers wait longer.
        self.BROKER_SOCKET_TIMEOUT = env.float("BROKER_SOCKET_TIMEOUT", 0.5)
        self.WORKER_BROKER_SOCKET_TIMEOUT = env.float("WORKER_BROKER_SOCKET_TIMEOUT", 10.0)
        self.BROKER_HEARTBEAT = env.float("BROKER_HEARTBEAT", 10.0)
        # How often a worker checks that its Redis broker still answers (a BRPOP with no
        # reply for BRPOP's 1 s plus this long is dropped and reconnected).
        self.BROKER_HEALTH_CHECK_INTERVAL = env.float("BROKER_HEALTH_CHECK_INTERVAL", 10.0)
        self.CELERY_TASK_TIME_LIMIT = env.int("CELERY_TASK_TIME_LIMIT", 3600)
        self.CELERY_TASK_SOFT_TIME_LIMIT = env.int("CELERY_TASK_SOFT_TIME_LIMIT", 3300)
        # What Flask-Celery-Request carries to the worker; unset means the safe defaults
        # its README documents. A context older than MAX_AGE is refused, so it must stay
        # above the longest countdown and outbox re-send delay in use.
        self.CELERY_CONTEXT_MAX_BYTES = env.int("CELERY_CONTEXT_MAX_BYTES", 64 * 1024)
        self.CELERY_CONTEXT_MAX_AGE = env.int("CELERY_CONTEXT_MAX_AGE", 7 * 24 * 3600)
        if env.is_set("CELERY_CONTEXT_DROP_HEADERS"):
            self.CELERY_CONTEXT_DROP_HEADERS = env.list("CELERY_CONTEXT_DROP_HEADERS") or []
        if env.is_set("CELERY_CONTEXT_SENSITIVE_PATTERN"):
            self.CELERY_CONTEXT_SENSITIVE_PATTERN = env.environ["CELERY_CONTEXT_SENSITIVE_PATTERN"]
        # The click's id comes from this header when well formed (empty: always a new one);
        # the g attributes listed travel with the request to the worker.
        self.CELERY_CONTEXT_REQUEST_ID_HEADER = env.text("CELERY_CONTEXT_REQUEST_ID_HEADER", "X-Request-Id")
        self.CELERY_CONTEXT_G_KEYS = env.list("CELERY_CONTEXT_G_KEYS") or []
        #: Extra Celery settings (lower-case Celery names), merged last.
        self.CELERY: dict = {}

        self.MAIL_SERVER = env.text("MAIL_SERVER", "127.0.0.1")
        # Without MAIL_SERVER, mail goes to the local sink `make run` starts.
        self.MAIL_PORT = env.int("MAIL_PORT", 25 if env.text("MAIL_SERVER") else 8025)
        self.MAIL_USE_TLS = env.bool("MAIL_USE_TLS")
        self.MAIL_USE_SSL = env.bool("MAIL_USE_SSL")
        self.MAIL_USERNAME = env.text("MAIL_USERNAME")
        self.MAIL_PASSWORD = env.text("MAIL_PASSWORD")
        self.MAIL_DEFAULT_SENDER = env.text("MAIL_DEFAULT_SENDER", "Microblog <noreply@microblog.localhost>")
        self.MAIL_SINK_DIR = env.text("MAIL_SINK_DIR", str(instance / "mail"))
        # Flask-Mail would suppress sending whenever TESTING is on; tests use a real server.
        self.MAIL_SUPPRESS_SEND = env.bool("MAIL_SUPPRESS_SEND")

        self.WELCOME_EMAIL_DELAY = env.int("WELCOME_EMAIL_DELAY", 60)
        # Transient SMTP errors are retried: attempts in all, and the backoff's base and cap (s).
        self.MAIL_RETRY_ATTEMPTS = env.int("MAIL_RETRY_ATTEMPTS", 6)
        self.MAIL_RETRY_BACKOFF = env.float("MAIL_RETRY_BACKOFF", 30.0)
        self.MAIL_RETRY_BACKOFF_MAX = env.float("MAIL_RETRY_BACKOFF_MAX", 1800.0)
        self.EXPORTS_DIR = env.text("EXPORTS_DIR", str(instance / "exports"))
        # Empty: exports in EXPORTS_DIR, on a disk web and workers share. s3://bucket/prefix:
        # in an S3-compatible store, reached with boto3's own AWS_* variables (app/storage.py).
        self.EXPORTS_STORAGE_URL = exports_storage_url(env.text("EXPORTS_STORAGE_URL"))
        # How long the link a download is redirected to works (S3 storage only).
        self.EXPORTS_DOWNLOAD_URL_SECONDS = env.int("EXPORTS_DOWNLOAD_URL_SECONDS", 60)
        if not 1 <= self.EXPORTS_DOWNLOAD_URL_SECONDS <= MAX_PRESIGNED_SECONDS:
            raise ValueError(f"EXPORTS_DOWNLOAD_URL_SECONDS must be from 1 to {MAX_PRESIGNED_SECONDS}, "
                             f"found {env.environ['EXPORTS_DOWNLOAD_URL_SECONDS']!r}")
        self.EXPORT_RETENTION_DAYS = env.int("EXPORT_RETENTION_DAYS", 7)
        # A running export's lease on its row: a second run of the same message waits
        # this long after the first stopped reporting progress before taking over.
        self.EXPORT_LEASE_SECONDS = env.int("EXPORT_LEASE_SECONDS", 60)
        # celery beat's periods (seconds): the export cleanup, and re-sending emails whose
        # enqueue failed.
        self.EXPORT_CLEANUP_INTERVAL = env.float("EXPORT_CLEANUP_INTERVAL", 3600.0)
        self.EMAIL_REQUEUE_INTERVAL = env.float("EMAIL_REQUEUE_INTERVAL", 300.0)
        self.MAIL_MAX_ATTACHMENT_BYTES = env.int("MAIL_MAX_ATTACHMENT_BYTES", 5 * 1024 * 1024)
        self.POSTS_PER_PAGE = env.int("POSTS_PER_PAGE", 25)
        #: How often the progress bars ask the server for news.
        self.TASK_POLL_INTERVAL_MS = env.int("TASK_POLL_INTERVAL_MS", 1000)

        # Sign-in, registration and password-reset requests are rate limited
        # (Flask-Limiter, on the app's Redis). A limit is "N per period"; when Redis is
        # unreachable the limits are skipped and the error logged, so sign-in still works.
        self.RATELIMIT_STORAGE_URI = env.text("RATELIMIT_STORAGE_URI", limiter_storage_url(self.REDIS_URL))
        self.RATELIMIT_STORAGE_OPTIONS = {"socket_timeout": 1, "socket_connect_timeout": 1}
        self.RATELIMIT_KEY_PREFIX = env.text("RATELIMIT_KEY_PREFIX", "microblog")
        self.RATELIMIT_STRATEGY = "moving-window"
        self.RATELIMIT_SWALLOW_ERRORS = True
        self.RATELIMIT_ENABLED = env.bool("RATELIMIT_ENABLED", True)
        self.RATELIMIT_SIGNIN_PER_ACCOUNT = env.text("RATELIMIT_SIGNIN_PER_ACCOUNT", "10 per 15 minutes")
        self.RATELIMIT_SIGNIN_PER_ADDRESS = env.text("RATELIMIT_SIGNIN_PER_ADDRESS", "50 per 15 minutes")
        self.RATELIMIT_REGISTER_PER_ADDRESS = env.text("RATELIMIT_REGISTER_PER_ADDRESS", "20 per hour")
        self.RATELIMIT_RESET_PER_ACCOUNT = env.text("RATELIMIT_RESET_PER_ACCOUNT", "5 per hour")
        self.RATELIMIT_RESET_PER_ADDRESS = env.text("RATELIMIT_RESET_PER_ADDRESS", "20 per hour")
        #: Seconds a password-reset link works (once, and only until the password changes).
        self.PASSWORD_RESET_MAX_AGE = env.int("PASSWORD_RESET_MAX_AGE", 3600)

        # Flask-Babel: the languages offered (app/i18n.py names them), the defaults when
        # neither the user nor the browser says, and where the compiled catalogs are.
        self.LANGUAGES = ["en", "ru", "zh"]
        self.BABEL_DEFAULT_LOCALE = "en"
        self.BABEL_DEFAULT_TIMEZONE = "UTC"
        self.BABEL_TRANSLATION_DIRECTORIES = str(BASEDIR / "app" / "translations")

        self.WTF_CSRF_ENABLED = True
        self.SESSION_COOKIE_HTTPONLY = True
        self.SESSION_COOKIE_SAMESITE = "Lax"
        self.REMEMBER_COOKIE_HTTPONLY = True
        self.REMEMBER_COOKIE_SAMESITE = "Lax"
        self.REMEMBER_COOKIE_DURATION = timedelta(days=env.int("REMEMBER_COOKIE_DAYS", 14))

        # Security headers (Flask-Talisman) and request limits; docs/security.md says why.
        # Strict-Transport-Security, sent on https requests only; on in production.
        self.SECURITY_HSTS = env.bool("SECURITY_HSTS", False)
        # A larger body is refused with 413 from its Content-Length, before it is read.
        self.MAX_CONTENT_LENGTH = env.int("MAX_CONTENT_LENGTH", 1024 * 1024)

        # Security headers (Flask-Talisman) and request limits; docs/security.md says why.
        # Strict-Transport-Security, sent on https requests only; on in production.
        self.SECURITY_HSTS = env.bool("SECURITY_HSTS", False)
        # A larger body is refused with 413 from its Content-Length, before it is read.
        self.MAX_CONTENT_LENGTH = env.int("MAX_CONTENT_LENGTH", 1024 * 1024)


class DevelopmentConfig(Config):
    DEBUG = False  # `flask run --debug` turns the debugger on explicitly.


class TestingConfig(Config):
    __test__ = False  # a config class, not a pytest test class
    TESTING = True

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        super().__init__(environ)
        env = Environment(environ)
        self.SQLALCHEMY_DATABASE_URI = database_url(env.text("DATABASE_URL"), "sqlite://")
        # Cheap hashing keeps the suite fast; production keeps werkzeug's default.
        self.PASSWORD_HASH_METHOD = "pbkdf2:sha256:1000"
        self.WELCOME_EMAIL_DELAY = env.int("WELCOME_EMAIL_DELAY", 0)


class ProductionConfig(Config):
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        super().__init__(environ)
        if self.SECRET_KEY == INSECURE_SECRET_KEY or len(self.SECRET_KEY) < 16:
            raise RuntimeError(
                "ProductionConfig needs SECRET_KEY: set it to a long random value, e.g. "
                "the output of `python -c 'import secrets; print(secrets.token_hex(32))'`"
            )
        if not self.TRUSTED_HOSTS:
            raise RuntimeError(
                "ProductionConfig needs TRUSTED_HOSTS: a comma-separated list of the host "
                "names this site answers to (links in emails are built from the request's Host)"
            )
        self.SESSION_COOKIE_SECURE = True
        self.REMEMBER_COOKIE_SECURE = True
        self.PREFERRED_URL_SCHEME = Environment(environ).text("PREFERRED_URL_SCHEME", "https")
        self.SECURITY_HSTS = Environment(environ).bool("SECURITY_HSTS", True)


CONFIGS: dict[str, type[Config]] = {
    "development": DevelopmentConfig,
    "testing": TestingConfig,
    "production": ProductionConfig,
}


def config_from_environment(environ: Mapping[str, str] | None = None) -> Config:
    """The config named by ``MICROBLOG_CONFIG``, instantiated from the environment."""
    env = os.environ if environ is None else environ
    name = (env.get("MICROBLOG_CONFIG") or "development").strip().lower()
    try:
        config_class = CONFIGS[name]
    except KeyError:
        raise RuntimeError(
            f"MICROBLOG_CONFIG must be one of {', '.join(CONFIGS)}, found {name!r}"
        ) from None
    return config_class(env)

"""config.py: every setting comes from the environment mapping a Config is given."""
from pathlib import Path

import pytest

from app import create_app
from app.extensions import celery, db
import config
from config import (
    INSECURE_SECRET_KEY,
    Config,
    DevelopmentConfig,
    ProductionConfig,
    config_from_environment,
    redis_socket_url,
)

GOOD_SECRET = "a-production-secret-0123456789abcdef"


@pytest.fixture
def full_environ(tmp_path):
    """Every documented variable, each set to a value no default could produce."""
    return {
        "SECRET_KEY": "env-secret-key-0123456789",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'from-env.db'}",
        "REDIS_URL": "redis://redis.example:6379/3",
        "CELERY_BROKER_URL": "redis://broker.example:6379/1",
        "CELERY_RESULT_BACKEND": "redis://results.example:6379/2",
        "MAIL_SERVER": "smtp.example.com",
        "MAIL_PORT": "2525",
        "MAIL_USE_TLS": "true",
        "MAIL_USERNAME": "mailer",
        "MAIL_PASSWORD": "mail-password",
        "MAIL_DEFAULT_SENDER": "Blog <blog@example.com>",
        "EXPORTS_DIR": str(tmp_path / "exports-here"),
        "EXPORTS_STORAGE_URL": "s3://exports-bucket/some/prefix",
        "EXPORTS_DOWNLOAD_URL_SECONDS": "90",
        "SERVER_NAME": "microblog.example",
        "TRUSTED_HOSTS": "microblog.example, www.microblog.example",
        "INSTANCE_PATH": str(tmp_path / "instance-here"),
    }


@pytest.mark.parametrize(
    ("attribute", "expected"),
    [
        ("SECRET_KEY", "env-secret-key-0123456789"),
        ("SQLALCHEMY_DATABASE_URI", "sqlite:///{tmp}/from-env.db"),
        ("REDIS_URL", "redis://redis.example:6379/3"),
        ("CELERY_BROKER_URL", "redis://broker.example:6379/1"),
        ("CELERY_RESULT_BACKEND", "redis://results.example:6379/2"),
        ("MAIL_SERVER", "smtp.example.com"),
        ("MAIL_PORT", 2525),
        ("MAIL_USE_TLS", True),
        ("MAIL_USERNAME", "mailer"),
        ("MAIL_PASSWORD", "mail-password"),
        ("MAIL_DEFAULT_SENDER", "Blog <blog@example.com>"),
        ("EXPORTS_DIR", "{tmp}/exports-here"),
        ("EXPORTS_STORAGE_URL", "s3://exports-bucket/some/prefix"),
        ("EXPORTS_DOWNLOAD_URL_SECONDS", 90),
        ("SERVER_NAME", "microblog.example"),
        ("TRUSTED_HOSTS", ["microblog.example", "www.microblog.example"]),
        ("INSTANCE_PATH", "{tmp}/instance-here"),
    ],
)
def test_each_documented_variable_is_read(full_environ, tmp_path, attribute, expected):
    settings = config.TestingConfig(full_environ)
    if isinstance(expected, str):
        expected = expected.format(tmp=tmp_path)
    assert getattr(settings, attribute) == expected


def test_the_mapping_replaces_the_process_environment(monkeypatch):
    monkeypatch.setenv("SECRET_KEY", "from-the-process-environment")
    monkeypatch.setenv("REDIS_URL", "redis://process.example:6379/0")
    settings = Config({})
    assert settings.SECRET_KEY == INSECURE_SECRET_KEY
    assert settings.REDIS_URL != "redis://process.example:6379/0"


def test_without_a_mapping_the_process_environment_is_read(monkeypatch):
    monkeypatch.setenv("SECRET_KEY", "from-the-process-environment")
    assert Config().SECRET_KEY == "from-the-process-environment"


def test_defaults_live_in_the_instance_folder(tmp_path):
    instance = tmp_path / "inst"
    settings = DevelopmentConfig({"INSTANCE_PATH": str(instance)})
    assert settings.INSTANCE_PATH == str(instance)
    assert settings.EXPORTS_DIR == str(instance / "exports")
    assert settings.REDIS_URL == redis_socket_url(instance / "redis.sock")
    assert settings.SQLALCHEMY_DATABASE_URI == "sqlite:///microblog.db"


def test_relative_instance_path_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert Config({"INSTANCE_PATH": "relative/inst"}).INSTANCE_PATH == str(tmp_path / "relative" / "inst")


def test_testing_config_defaults_to_an_in_memory_database():
    assert config.TestingConfig({}).SQLALCHEMY_DATABASE_URI == "sqlite://"


@pytest.mark.parametrize("setting", ["CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"])
def test_celery_urls_default_to_redis_url(setting):
    settings = Config({"REDIS_URL": "redis://only-redis.example:6379/5"})
    assert getattr(settings, setting) == "redis://only-redis.example:6379/5"


@pytest.mark.parametrize(
    ("environ", "port"),
    [
        ({}, 8025),
        ({"MAIL_SERVER": "smtp.example.com"}, 25),
        ({"MAIL_SERVER": "smtp.example.com", "MAIL_PORT": "587"}, 587),
        ({"MAIL_PORT": "1025"}, 1025),
    ],
    ids=["local-sink", "real-server", "server-and-port", "port-only"],
)
def test_mail_port_default_depends_on_mail_server(environ, port):
    assert Config(environ).MAIL_PORT == port


def test_mail_goes_to_the_local_sink_without_mail_server():
    settings = Config({})
    assert (settings.MAIL_SERVER, settings.MAIL_PORT) == ("127.0.0.1", 8025)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1", True), ("TRUE", True), (" yes ", True), ("on", True),
     ("0", False), ("false", False), ("No", False), ("off", False), ("", False)],
)
def test_boolean_variables_accept_the_usual_spellings(value, expected):
    assert Config({"MAIL_USE_TLS": value}).MAIL_USE_TLS is expected


@pytest.mark.parametrize("name", ["MAIL_USE_TLS", "MAIL_USE_SSL"])
def test_a_bad_boolean_names_the_variable_and_the_value(name):
    with pytest.raises(ValueError, match=rf"{name}.*'maybe'"):
        Config({name: "maybe"})


@pytest.mark.parametrize("name", ["MAIL_PORT", "POSTS_PER_PAGE", "SQLITE_BUSY_TIMEOUT_MS",
                                  "EXPORTS_DOWNLOAD_URL_SECONDS"])
def test_a_bad_integer_names_the_variable_and_the_value(name):
    with pytest.raises(ValueError, match=rf"{name}.*'twenty'"):
        Config({name: "twenty"})


def test_exports_stay_in_exports_dir_unless_a_storage_url_is_given():
    settings = Config({})
    assert (settings.EXPORTS_STORAGE_URL, settings.EXPORTS_DOWNLOAD_URL_SECONDS) == ("", 60)
    assert Config({"EXPORTS_STORAGE_URL": " "}).EXPORTS_STORAGE_URL == ""


@pytest.mark.parametrize("url", ["s3://my-bucket", "s3://my-bucket/exports", "s3://my.bucket-2/a/b/"])
def test_an_s3_storage_url_is_accepted(url):
    assert Config({"EXPORTS_STORAGE_URL": url}).EXPORTS_STORAGE_URL == url


@pytest.mark.parametrize("url", ["gs://my-bucket/exports", "/var/exports", "file:///var/exports", "s3://",
                                 "s3:///exports", "s3://My_Bucket", "s3://my-bucket:9000/x",
                                 "s3://my-bucket?region=x"])
def test_a_bad_storage_url_names_the_variable_and_the_value(url):
    with pytest.raises(ValueError, match="EXPORTS_STORAGE_URL") as excinfo:
        Config({"EXPORTS_STORAGE_URL": url})
    assert repr(url) in str(excinfo.value)


def test_a_storage_url_with_credentials_is_refused_without_repeating_them():
    with pytest.raises(ValueError, match="EXPORTS_STORAGE_URL.*AWS_ACCESS_KEY_ID") as excinfo:
        Config({"EXPORTS_STORAGE_URL": "s3://AKIAEXAMPLE:very-secret@my-bucket/exports"})
    assert "very-secret" not in str(excinfo.value)


@pytest.mark.parametrize("seconds", ["0", "-5", "604801"])
def test_a_download_link_life_out_of_range_names_the_variable_and_the_value(seconds):
    with pytest.raises(ValueError, match=rf"EXPORTS_DOWNLOAD_URL_SECONDS.*'{seconds}'"):
        Config({"EXPORTS_DOWNLOAD_URL_SECONDS": seconds})


def test_trusted_hosts_is_a_comma_separated_list_ignoring_blanks():
    settings = Config({"TRUSTED_HOSTS": " a.example ,, b.example,  "})
    assert settings.TRUSTED_HOSTS == ["a.example", "b.example"]


def test_trusted_hosts_unset_means_no_restriction():
    assert Config({}).TRUSTED_HOSTS is None


@pytest.mark.parametrize(
    ("name", "config_class"),
    [("development", DevelopmentConfig), ("testing", config.TestingConfig),
     (" Testing ", config.TestingConfig)],
)
def test_microblog_config_selects_the_class(name, config_class):
    assert type(config_from_environment({"MICROBLOG_CONFIG": name})) is config_class


def test_microblog_config_selects_production():
    environ = {"MICROBLOG_CONFIG": "production", "SECRET_KEY": GOOD_SECRET, "TRUSTED_HOSTS": "a.example"}
    assert type(config_from_environment(environ)) is ProductionConfig


def test_microblog_config_defaults_to_development():
    assert type(config_from_environment({})) is DevelopmentConfig


def test_an_unknown_microblog_config_names_the_choices():
    with pytest.raises(RuntimeError) as excinfo:
        config_from_environment({"MICROBLOG_CONFIG": "staging"})
    message = str(excinfo.value)
    assert "MICROBLOG_CONFIG" in message and "'staging'" in message
    assert all(name in message for name in ("development", "testing", "production"))


def test_config_from_environment_reads_the_mapping_it_is_given():
    settings = config_from_environment({"MICROBLOG_CONFIG": "testing", "SECRET_KEY": "given-key"})
    assert settings.SECRET_KEY == "given-key"


@pytest.mark.parametrize(
    "environ",
    [
        {"TRUSTED_HOSTS": "microblog.example"},
        {"TRUSTED_HOSTS": "microblog.example", "SECRET_KEY": INSECURE_SECRET_KEY},
        {"TRUSTED_HOSTS": "microblog.example", "SECRET_KEY": "short-secret"},
    ],
    ids=["missing", "default", "short"],
)
def test_production_refuses_a_weak_secret_key(environ):
    with pytest.raises(RuntimeError, match="SECRET_KEY"):
        ProductionConfig(environ)


@pytest.mark.parametrize("hosts", [None, "", " , "], ids=["missing", "empty", "blank-items"])
def test_production_refuses_missing_trusted_hosts(hosts):
    environ = {"SECRET_KEY": GOOD_SECRET}
    if hosts is not None:
        environ["TRUSTED_HOSTS"] = hosts
    with pytest.raises(RuntimeError, match="TRUSTED_HOSTS"):
        ProductionConfig(environ)


def test_production_starts_with_secret_key_and_trusted_hosts(app_environ):
    environ = {**app_environ, "SECRET_KEY": GOOD_SECRET, "TRUSTED_HOSTS": "microblog.example"}
    settings = ProductionConfig(environ)
    assert settings.SESSION_COOKIE_SECURE and settings.REMEMBER_COOKIE_SECURE
    assert settings.PREFERRED_URL_SCHEME == "https"
    app = create_app(settings)
    try:
        response = app.test_client().get("/auth/login", base_url="https://microblog.example")
        assert response.status_code == 200
        assert not app.testing
    finally:
        with app.app_context():
            db.engine.dispose()


@pytest.fixture
def configured_app(full_environ):
    app = create_app(config.TestingConfig(full_environ))
    yield app
    with app.app_context():
        db.engine.dispose()


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("SECRET_KEY", "env-secret-key-0123456789"),
        ("SQLALCHEMY_DATABASE_URI", "sqlite:///{tmp}/from-env.db"),
        ("REDIS_URL", "redis://redis.example:6379/3"),
        ("MAIL_SERVER", "smtp.example.com"),
        ("MAIL_PORT", 2525),
        ("MAIL_USE_TLS", True),
        ("MAIL_USERNAME", "mailer"),
        ("MAIL_PASSWORD", "mail-password"),
        ("MAIL_DEFAULT_SENDER", "Blog <blog@example.com>"),
        ("EXPORTS_DIR", "{tmp}/exports-here"),
        ("SERVER_NAME", "microblog.example"),
        ("TRUSTED_HOSTS", ["microblog.example", "www.microblog.example"]),
        ("TESTING", True),
    ],
)
def test_create_app_puts_the_values_into_app_config(configured_app, tmp_path, key, expected):
    if isinstance(expected, str):
        expected = expected.format(tmp=tmp_path)
    assert configured_app.config[key] == expected


def test_create_app_uses_instance_path(configured_app, tmp_path):
    assert Path(configured_app.instance_path) == tmp_path / "instance-here"


def test_create_app_configures_the_database_engine(configured_app, tmp_path):
    with configured_app.app_context():
        assert db.engine.url.database == str(tmp_path / "from-env.db")


def test_create_app_configures_celery(configured_app):
    assert celery.flask_app is configured_app
    assert celery.conf.broker_url == "redis://broker.example:6379/1"
    assert celery.conf.result_backend == "redis://results.example:6379/2"
    assert celery.conf.task_serializer == "json"
    assert celery.conf.task_ignore_result is False


def test_celery_follows_redis_url_when_not_set_separately(app_environ):
    environ = {k: v for k, v in app_environ.items() if not k.startswith("CELERY_")}
    app = create_app(config.TestingConfig({**environ, "REDIS_URL": "redis://only-redis.example:6379/4"}))
    try:
        assert celery.conf.broker_url == "redis://only-redis.example:6379/4"
        assert celery.conf.result_backend == "redis://only-redis.example:6379/4"
    finally:
        with app.app_context():
            db.engine.dispose()

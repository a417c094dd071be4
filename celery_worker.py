"""Entry point for the worker and the Flask CLI.

    celery -A celery_worker.celery worker -l info
    flask --app celery_worker:app run
"""
from flask.cli import get_load_dotenv, load_dotenv

if get_load_dotenv():
    load_dotenv()  # as the Flask CLI does, so the worker sees the same .env/.flaskenv

from app import create_app  # noqa: E402
from app.extensions import celery  # noqa: E402,F401
from app.logs import configure_process_logging  # noqa: E402

configure_process_logging()  # before the app: its logger then writes through the root's handler
app = create_app()

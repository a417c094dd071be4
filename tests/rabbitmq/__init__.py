"""The app with RabbitMQ as broker (``CELERY_BROKER_URL=amqp://...``) and Redis as result backend."""

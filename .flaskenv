FLASK_APP=celery_worker:app

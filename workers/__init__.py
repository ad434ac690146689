"""The Celery workers that run task definitions."""

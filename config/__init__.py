"""Configuration: settings from the environment, Celery, gunicorn and logging."""

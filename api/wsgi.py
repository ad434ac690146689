"""The WSGI entry point for gunicorn: `gunicorn -c config/gunicorn.py api.wsgi:app`."""

from api.app import create_app
from config.logging import configure_logging
from config.settings import Settings

settings = Settings.from_env()
configure_logging(settings)
app = create_app(settings)

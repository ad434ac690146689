"""A flask-smorest Blueprint whose request validation errors are 400, as the seed says."""

from __future__ import annotations

import flask_smorest
from webargs.flaskparser import FlaskParser


class Parser(FlaskParser):
    """Malformed requests are 400 VALIDATION_ERROR; 422 is kept for input failing a schema."""

    DEFAULT_VALIDATION_STATUS = 400


class Blueprint(flask_smorest.Blueprint):
    """The project's blueprint class."""

    ARGUMENTS_PARSER = Parser()

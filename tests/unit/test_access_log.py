"""The lean access logger writes gunicorn's own lines."""

from __future__ import annotations

import datetime
import io
from types import SimpleNamespace
from typing import Any

import pytest
from gunicorn import glogging
from gunicorn.config import Config

from config.access_log import AccessLogger

ENVIRON = {
    "REMOTE_ADDR": "10.1.2.3",
    "REQUEST_METHOD": "POST",
    "RAW_URI": "/api/v1/tasks?x=1",
    "PATH_INFO": "/api/v1/tasks",
    "QUERY_STRING": "x=1",
    "SERVER_PROTOCOL": "HTTP/1.1",
    "HTTP_USER_AGENT": 'curl "8"',
    "HTTP_REFERER": "http://example.test/",
    "HTTP_AUTHORIZATION": "Basic YWxpY2U6c2VjcmV0",  # alice:secret
}
REQUEST = SimpleNamespace(headers=[("USER-AGENT", 'curl "8"'), ("X-API-KEY", "k")])


def _line(cls: type[Any], log_format: str | None, resp: Any) -> str:
    cfg = Config()
    cfg.set("accesslog", "-")
    if log_format is not None:
        cfg.set("access_log_format", log_format)
    logger = cls(cfg)
    out = io.StringIO()
    for handler in logger.access_log.handlers:
        handler.setStream(out)
    logger.access(resp, REQUEST, dict(ENVIRON), datetime.timedelta(microseconds=2500))
    return out.getvalue()


@pytest.mark.parametrize("log_format", [None, '%(h)s "%(r)s" %(s)s %(L)s %({user-agent}i)s'])
@pytest.mark.parametrize(
    "resp",
    [
        SimpleNamespace(status="201 CREATED", sent=93, headers=[("Location", "/x")]),
        SimpleNamespace(status=404, sent=None, headers=[]),
    ],
)
def test_the_lines_are_gunicorns(log_format: str | None, resp: Any) -> None:
    ours, theirs = _line(AccessLogger, log_format, resp), _line(glogging.Logger, log_format, resp)
    # The time is taken a moment apart: equal but for a second's tick.
    assert ours.split("[", 1)[0] == theirs.split("[", 1)[0]
    assert ours.split("]", 1)[-1] == theirs.split("]", 1)[-1]
    assert ours.count("[") == theirs.count("[")

"""The API's long-lived collaborators (settings, database, broker, definition cache)."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from flask import current_app

from api.group_commit import GroupCommit
from api.queue_cap import QueueCap
from config.settings import Settings
from shared import store
from shared.broker import Broker
from shared.db import Database
from shared.errors import DefinitionNotFound
from shared.window import Window

if TYPE_CHECKING:
    from api.auth import TokenVerifier
    from api.key_cache import KeyCache
    from api.metrics import LedgerCollector


class DefinitionCache:
    """Definitions read from Postgres, kept for a few seconds to spare a query per submit."""

    def __init__(self, db: Database, ttl: float) -> None:
        self.db = db
        self.ttl = ttl
        self._entries: dict[str, tuple[float, store.DefinitionRow]] = {}
        self._lock = threading.Lock()

    def get(self, definition_id: str) -> store.DefinitionRow:
        """Return a definition or raise DefinitionNotFound."""
        now = time.monotonic()
        entry = self._entries.get(definition_id)
        if entry is not None and entry[0] > now:
            return entry[1]
        with self.db.connection() as conn:
            row = store.get_definition(conn, definition_id)
        if row is None:
            raise DefinitionNotFound(
                f"task definition {definition_id!r} not found", {"taskDefinitionId": definition_id}
            )
        if self.ttl:
            with self._lock:
                self._entries[definition_id] = (now + self.ttl, row)
        return row


class Services:
    """Everything a request handler needs beyond the request."""

    #: Set by create_app and metrics.init_app: their modules import this one.
    tokens: TokenVerifier
    keys: KeyCache
    ledger: LedgerCollector

    def __init__(self, settings: Settings, broker: Broker | None = None) -> None:
        self.settings = settings
        self.db = Database(
            settings.database_url,
            max_connections=settings.db_pool_max,
            connect_timeout=settings.db_connect_timeout,
        )
        self.broker = broker or Broker(settings)
        self.definitions = DefinitionCache(self.db, settings.definition_cache_seconds)
        self.group_commit = GroupCommit()
        # The executors' dispatch windows (submissions publish at once only while open).
        self.window = Window(settings, self.broker)
        self.queue_cap = QueueCap(self.db, settings.max_queued_per_principal)


def services() -> Services:
    """Return the current app's services."""
    return current_app.extensions["taskexec"]  # type: ignore[no-any-return]

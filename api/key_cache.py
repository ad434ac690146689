"""API keys kept in process memory for under a second, and forgotten at once when revoked.

Reading the key from Postgres on every request cost a round trip and about a tenth of a
submit's CPU. A cached key is still checked on every request (its hash compared in constant
time, its revocation and permissions as read), only the read is shared:

- an entry is trusted for KEY_CACHE_SECONDS (0.9 s) after its read began, so a key revoked by any
  means, the CLI, SQL or a restore, is refused by every process within a second;
- `taskexec keys revoke` also publishes the key id on Redis (`shared.credentials.REVOKED_CHANNEL`)
  once its UPDATE committed; one listener thread per process and Redis server forgets it in every
  cache of the process, so in practice a revocation takes milliseconds;
- a read that began before a forget is not stored (a generation count), so a lookup racing a
  revocation cannot put the old row back for another second.

Unknown key ids are not remembered: such a request reads Postgres as before.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import redis

from shared import store
from shared.credentials import REVOKED_CHANNEL

log = logging.getLogger(__name__)

#: Seconds a key read from Postgres answers for (from the start of its read).
KEY_CACHE_SECONDS = 0.9
_MAX_ENTRIES = 10_000  # past this the cache starts again empty (a flood of distinct keys)
_RECONNECT_SECONDS = (0.1, 0.5, 1.0, 2.0, 5.0)


class KeyCache:
    """Stored API keys by id, each for at most `ttl` seconds; shared by a process's threads."""

    def __init__(self, redis_url: str, ttl: float = KEY_CACHE_SECONDS) -> None:
        self.ttl = ttl
        self._entries: dict[str, tuple[float, store.ApiKey]] = {}
        self._touched: dict[str, float] = {}
        self._generation = 0
        self._redis_url = redis_url
        self._listening_pid = 0

    def get(self, key_id: str, read: Callable[[], store.ApiKey | None]) -> store.ApiKey | None:
        """The key `key_id`: remembered if read less than `ttl` ago, else from `read()`."""
        now = time.monotonic()
        entry = self._entries.get(key_id)
        if entry is not None and now - entry[0] < self.ttl:
            return entry[1]
        if self._listening_pid != os.getpid():
            self._listen()
        generation = self._generation
        key = read()
        if key is not None and self.ttl > 0:
            if len(self._entries) >= _MAX_ENTRIES:
                self._entries = {}
            # A forget since the read began may be this key's revocation: do not store it.
            if generation == self._generation:
                self._entries[key_id] = (now, key)
        return key

    def touch_due(self, key: store.ApiKey, every: timedelta) -> bool:
        """Say whether to record a use of `key` now: at most once per `every` and process."""
        now = time.monotonic()
        quiet_until = self._touched.get(key.id)
        if quiet_until is not None and now < quiet_until:
            return False  # the common case: one lookup, no date arithmetic
        last = key.last_used_at
        since = datetime.now(UTC) - last if last is not None else None
        if since is not None and since <= every:
            # Recorded lately (by any process): nothing to do until `every` has passed.
            self._remember_touch(key.id, now + (every - since).total_seconds())
            return False
        self._remember_touch(key.id, now + every.total_seconds())
        return True

    def _remember_touch(self, key_id: str, quiet_until: float) -> None:
        if len(self._touched) >= _MAX_ENTRIES:
            self._touched = {}
        self._touched[key_id] = quiet_until

    def forget(self, key_id: str | None = None) -> None:
        """Drop one key (a revocation), or every key (None: messages may have been missed)."""
        self._generation += 1
        if key_id is None:
            self._entries = {}
        else:
            self._entries.pop(key_id, None)

    def _listen(self) -> None:
        """Have this process's listener of the Redis server tell this cache of revocations."""
        self._listening_pid = os.getpid()
        _listen_for(self, self._redis_url)


class _Listener:
    """One thread per process and Redis URL, subscribed to revocations for every cache."""

    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url
        self._caches: weakref.WeakSet[KeyCache] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="key-revocations", daemon=True)

    def add(self, cache: KeyCache) -> None:
        with self._lock:
            self._caches.add(cache)
            if not self._thread.is_alive() and self._thread.ident is None:
                self._thread.start()  # with a cache to serve, so it does not stop at once

    def _each(self, key_id: str | None) -> None:
        with self._lock:
            caches = list(self._caches)
        for cache in caches:
            cache.forget(key_id)

    def _alive(self) -> bool:
        """Say whether any cache still listens; a listener left alone removes itself."""
        # Under the registry's lock, as `_listen_for` adds caches: none can join a listener
        # that is leaving.
        with _listeners_lock, self._lock:
            if self._caches:
                return True
            if _listeners.get((os.getpid(), self.redis_url)) is self:
                del _listeners[(os.getpid(), self.redis_url)]
            return False

    def _run(self) -> None:
        failures = 0
        while self._alive():
            client = redis.Redis.from_url(
                self.redis_url, socket_connect_timeout=2, socket_keepalive=True
            )
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(REVOKED_CHANNEL)
                # Revocations sent while not subscribed were missed: start from Postgres.
                self._each(None)
                failures = 0
                while True:
                    message = pubsub.get_message(timeout=1.0)
                    if message is None:
                        if not self._alive():
                            return
                        continue
                    data = message.get("data")
                    if isinstance(data, bytes):
                        self._each(data.decode("ascii", "replace"))
            except Exception as exc:  # noqa: BLE001 - the thread must outlive any outage
                delay = _RECONNECT_SECONDS[min(failures, len(_RECONNECT_SECONDS) - 1)]
                if failures == 0:
                    log.warning("key revocations: Redis subscription lost (%s); retrying", exc)
                failures += 1
                time.sleep(delay)
            finally:
                pubsub.close()
                client.close()


_listeners: dict[tuple[int, str], _Listener] = {}
_listeners_lock = threading.Lock()


def _listen_for(cache: KeyCache, redis_url: str) -> None:
    """Add `cache` to this process's listener of `redis_url` (a forked child starts its own)."""
    key = (os.getpid(), redis_url)
    with _listeners_lock:
        found = _listeners.get(key)
        if found is None:
            found = _listeners[key] = _Listener(redis_url)
        found.add(cache)

"""The producer side of Celery: publishes task ids by name, never importing handler code."""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from bisect import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import redis
from celery import Celery
from celery.utils.nodenames import anon_nodename
from kombu import serialization
from kombu.compression import compress
from kombu.entity import maybe_delivery_mode
from kombu.exceptions import KombuError
from kombu.transport import redis as kombu_redis
from kombu.transport.redis import Channel as RedisChannel
from kombu.utils import json as kombu_json
from redis.backoff import AbstractBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.retry import Retry

from config.celery import celery_settings
from config.settings import Settings
from shared.breaker import Breaker, CircuitOpen, guard
from shared.definitions import celery_task_name
from shared.status import Priority

if TYPE_CHECKING:
    from shared.outbox import Dispatch

log = logging.getLogger(__name__)

# Errors that mean "the broker is unreachable", not a bug.
BROKER_ERRORS: tuple[type[BaseException], ...] = (KombuError, RedisError, OSError)


def make_celery(settings: Settings, name: str = "taskexec") -> Celery:
    """Create a Celery app configured for this service (no tasks registered)."""
    # No fixups: the Django one imports celery.worker into every producer (the API).
    app = Celery(name, set_as_current=False, fixups=[])
    app.conf.update(celery_settings(settings))
    return app


def time_limits(timeout_ms: int, grace: float) -> tuple[float, float]:
    """Return (soft, hard) Celery time limits in seconds for an attempt timeout."""
    soft = max(timeout_ms / 1000.0, 0.001)
    return soft, soft + grace


class _PolicyBackoff(AbstractBackoff):
    """Waits between tries as Celery's publish retry policy spaces them (0 s, then 0.2 s)."""

    def __init__(self, policy: dict[str, Any]) -> None:
        self.start = float(policy.get("interval_start", 0))
        self.step = float(policy.get("interval_step", 0.2))
        self.most = float(policy.get("interval_max", 1))

    def compute(self, failures: int) -> float:
        return min(self.start + (failures - 1) * self.step, self.most)


@dataclass(frozen=True)
class WireFormat:
    """How kombu's virtual Redis channel lays a Celery message out, from the app's settings."""

    serializer: str
    compression: str | None
    delivery_mode: int
    body_encoding: str | None
    priority_steps: tuple[int, ...]
    sep: str
    key_prefix: str

    @classmethod
    def of(cls, app: Celery) -> WireFormat:
        """Read the format the app's own `send_task` would publish in."""
        conf = app.conf
        options = conf.broker_transport_options or {}
        return cls(
            serializer=conf.task_serializer,
            compression=conf.task_compression,
            delivery_mode=maybe_delivery_mode(conf.task_default_delivery_mode),
            body_encoding=options.get("body_encoding", RedisChannel.body_encoding),
            priority_steps=tuple(options.get("priority_steps", kombu_redis.PRIORITY_STEPS)),
            sep=options.get("sep", RedisChannel.sep),
            key_prefix=options.get("global_keyprefix", ""),
        )

    def list_key(self, queue: str, priority: int) -> str:
        """The Redis list of `queue` for `priority` (kombu's `_q_for_pri`)."""
        clamped = max(min(priority, RedisChannel.max_priority), RedisChannel.min_priority)
        step = self.priority_steps[bisect(self.priority_steps, clamped) - 1]
        return f"{self.key_prefix}{queue}{self.sep}{step}" if step else self.key_prefix + queue

    def envelope(self, message: Any, queue: str, priority: int) -> str:
        """Serialize a Celery task message as kombu's Producer and Redis channel would.

        The steps and the key order are those of `Producer.publish`, the virtual channel's
        `prepare_message` and `basic_publish`, for the anonymous exchange Celery uses for
        a direct queue (its routing key names the queue, so no binding lookup is needed).
        """
        headers, properties, body, _ = message
        if self.serializer == "json" and serialization.registry._encoders["json"] == _KOMBU_JSON:
            content_type, content_encoding, data = _KOMBU_JSON[0], _KOMBU_JSON[1], _json(body)
        else:
            content_type, content_encoding, data = serialization.dumps(body, self.serializer)
        if self.compression:
            data, headers["compression"] = compress(data, self.compression)
        properties["delivery_mode"] = self.delivery_mode
        properties["delivery_info"] = {"exchange": "", "routing_key": queue}
        properties["priority"] = priority or RedisChannel.default_priority
        properties["body_encoding"] = self.body_encoding
        properties["delivery_tag"] = str(uuid.uuid4())
        if self.body_encoding:
            data = RedisChannel.codecs[self.body_encoding].encode(data)
        envelope = {
            "body": data,
            "content-encoding": content_encoding,
            "content-type": content_type,
            "headers": headers,
            "properties": properties,
        }
        return _json(envelope)


#: kombu's json codec as it registers it (content type, encoding, encoder).
_KOMBU_JSON = serialization.registry._encoders["json"]


def _json(value: Any) -> str:
    """kombu's JSON text of `value`: the same bytes, by the stdlib's cached encoder.

    kombu's encoder is the stdlib's plus a `default` for types JSON lacks (dates, UUIDs,
    bytes); a message of plain values never reaches it, so only such a message takes it.
    """
    try:
        return json.dumps(value)
    except TypeError:
        return str(kombu_json.dumps(value))


def _pack(commands: Sequence[tuple[str, ...]]) -> bytes:
    """Commands of text arguments in Redis's protocol (RESP), as redis-py packs them."""
    out = []
    for command in commands:
        out.append(b"*%d\r\n" % len(command))
        for arg in command:
            data = arg.encode()
            out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class Rendered(NamedTuple):
    """A message built and laid out for its queue's list, ready to push."""

    queue: str
    key: str
    envelope: str


class Broker:
    """Publishes dispatches to the executor queues: one pipelined round trip per batch.

    Messages are built with Celery's own task-message factory and laid out as kombu's
    Redis transport lays them out, so workers cannot tell them from `send_task`'s; what is
    skipped is the per-message machinery around it (producer pool, retry wrapper, a new
    redis client and a command per message).
    """

    def __init__(self, settings: Settings, app: Celery | None = None) -> None:
        self.settings = settings
        self.app = app or make_celery(settings, "taskexec-producer")
        self._lock = threading.Lock()
        self._pid = 0
        self._redis: redis.Redis | None = None
        self._retry: Retry | None = None
        self._breaker: Breaker | None = None
        self._format: WireFormat | None = None
        self._origin = ""  # the `origin` header send_task writes from this process (its pid)
        # The publishing connection of each thread (see `_send`).
        self._local = threading.local()
        # Queues whose exchange binding this process has written (as kombu's maybe_declare).
        self._declared: set[str] = set()

    def publish(self, dispatch: Dispatch, countdown: float | None = None) -> None:
        """Send one task's message; raises one of BROKER_ERRORS when Redis is unreachable."""
        self._push([dispatch], countdown)

    def publish_many(
        self, dispatches: Sequence[Dispatch], countdown: float | None = None
    ) -> list[Dispatch]:
        """Publish several in one round trip; return those that could not be sent."""
        if not dispatches:
            return []
        try:
            self._push(dispatches, countdown)
        except CircuitOpen:
            # Redis was found unreachable moments ago (shared/breaker.py): not tried, and not
            # logged once per request; the breaker logs the outage.
            log.debug("broker unreachable: %d task(s) left for the sweeper", len(dispatches))
            return list(dispatches)
        except BROKER_ERRORS:
            # A pipeline that failed may have been applied in part; resending a message
            # is harmless (the claim is a compare-and-set), losing one is not.
            log.warning("broker unreachable: %d task(s) left for the sweeper", len(dispatches))
            return list(dispatches)
        return []

    def queue_depths(self, queues: Sequence[str]) -> dict[str, int]:
        """Messages waiting in each queue (its lists of every priority), in one round trip."""
        _, wire = self._client()
        keys = [(q, wire.list_key(q, p.broker_priority)) for q in queues for p in Priority]
        lengths = self._send([("LLEN", key) for _, key in keys])
        depths = dict.fromkeys(queues, 0)
        for (queue, _), length in zip(keys, lengths, strict=True):
            depths[queue] += int(length)
        return depths

    def client(self) -> Any:
        """This process's Redis client (for reads beside the publishes: heartbeats)."""
        return self._client()[0]

    def revoke(self, task_id: str, terminate: bool, signal: str = "SIGKILL") -> None:
        """Ask every worker to drop (and, with `terminate`, kill) a task's execution."""
        # Celery's own connection is not guarded: while Redis is known unreachable, fail
        # fast rather than let it wait on the dead link.
        breaker = self._breaker
        if breaker is not None:
            breaker.check()
        self.app.control.revoke(task_id, terminate=terminate, signal=signal)

    # ------------------------------------------------------------ the wire

    def _push(self, dispatches: Sequence[Dispatch], countdown: float | None) -> None:
        self.push(self.render(dispatches, countdown))

    def render(
        self, dispatches: Sequence[Dispatch], countdown: float | None = None
    ) -> list[Rendered]:
        """Build the messages of `dispatches` without sending them (for `push`).

        The schedule firer renders a slot's message before the slot, so the round at the
        slot only sends it.
        """
        _, wire = self._client()
        rendered = []
        for dispatch in dispatches:
            priority = Priority.from_rank(dispatch.priority).broker_priority
            message = self._task_message(dispatch, countdown)
            queue = dispatch.executor
            rendered.append(
                Rendered(
                    queue, wire.list_key(queue, priority), wire.envelope(message, queue, priority)
                )
            )
        return rendered

    def push(self, rendered: Sequence[Rendered]) -> None:
        """Send rendered messages in one round trip; raises one of BROKER_ERRORS."""
        if not rendered:
            return
        _, wire = self._client()
        undeclared = list(dict.fromkeys(r.queue for r in rendered if r.queue not in self._declared))
        commands = [binding for queue in undeclared for binding in self._bindings(wire, queue)]
        commands += [("LPUSH", entry.key, entry.envelope) for entry in rendered]
        try:
            self._send(commands)
        except BROKER_ERRORS:
            self._declared.clear()  # Redis may come back empty: bind again then
            raise
        self._declared.update(undeclared)

    def _send(self, commands: Sequence[tuple[str, ...]]) -> list[Any]:
        """Send commands in one round trip and return every reply (a pipeline without a MULTI).

        On a connection of the calling thread's own (of the pool's class, so under the same
        breaker, timeouts and keepalives), packed and read directly: redis-py's pipeline
        (pool checkout with a readiness poll, command stack, observability hooks) cost more
        CPU than building the message. A refused or dropped connection is retried as the
        pipeline retried it (the publish retry policy); resending is harmless, the claim is
        a compare-and-set (and the window's reads only read).
        """
        conn = self._connection()
        packed = [_pack(commands)]

        def attempt() -> list[Any]:
            conn.send_packed_command(packed, check_health=False)
            # An error reply raises, as the pipeline's did.
            return [conn.read_response() for _ in commands]

        assert self._retry is not None  # set with the client by `_client`
        try:
            return self._retry.call_with_retry(attempt, lambda _error: conn.disconnect())
        except BaseException:
            conn.disconnect()  # whatever was half sent or unread must not reach the next call
            raise

    def _connection(self) -> Any:
        """This thread's publishing connection, made anew after a fork."""
        local = self._local
        client, _ = self._client()
        if getattr(local, "client", None) is not client:  # a new process or client
            pool = client.connection_pool
            local.conn = pool.connection_class(**pool.connection_kwargs)
            local.client = client
        return local.conn

    def _task_message(self, dispatch: Dispatch, countdown: float | None) -> Any:
        """Build the message `send_task` would, with the same arguments it passes."""
        task_id = str(dispatch.id)
        soft, hard = time_limits(dispatch.timeout_ms, self.settings.hard_timeout_grace)
        root_id = parent_id = None
        parent = self.app.current_worker_task
        if parent:  # a retry published by a running attempt: linked to it, as send_task does
            root_id = parent.request.root_id or parent.request.id
            parent_id = parent.request.id
        return self.app.amqp.create_task_message(
            task_id,
            celery_task_name(dispatch.task_definition_id),
            [task_id],
            None,
            countdown,
            reply_to=self.app.thread_oid,
            time_limit=hard,
            soft_time_limit=soft,
            create_sent_event=False,  # task_send_sent_event is off (config/celery.py)
            root_id=root_id,
            parent_id=parent_id,
            ignore_result=None,
            # What Celery would compute for these arguments (saferepr of one short string
            # and of no kwargs; the producer's node name), given ready-made: saferepr alone
            # was a third of building the message.
            argsrepr=f"[{task_id!r}]",
            kwargsrepr="{}",
            origin=self._origin,
        )

    def _bindings(self, wire: WireFormat, name: str) -> list[tuple[str, str, str]]:
        """The binding writes kombu's queue declaration makes (its `_queue_bind`).

        Nothing reads them for these messages: their exchange is the anonymous one, so
        kombu restores an unacknowledged message to its routing key's queue without a
        lookup. They are kept so Redis holds what Celery's own publish leaves there.
        """
        queue = self.app.amqp.queues[name]
        exchange = queue.exchange.name
        member = wire.sep.join([queue.routing_key or "", "", name])
        return [
            ("SADD", wire.key_prefix + table % (exchange,), member)
            for table in (RedisChannel.keyprefix_queue, RedisChannel.keyprefix_binding_permanent)
        ]

    def _client(self) -> tuple[redis.Redis, WireFormat]:
        """This process's Redis client, made anew after a fork (never share sockets)."""
        pid = os.getpid()
        if self._redis is None or self._format is None or self._pid != pid:
            with self._lock:
                if self._redis is None or self._format is None or self._pid != pid:
                    self._format = WireFormat.of(self.app)
                    self._redis = self._connect()
                    self._origin = anon_nodename()
                    self._pid = pid
        return self._redis, self._format

    def _connect(self) -> redis.Redis:
        conf = self.app.conf
        policy = conf.task_publish_retry_policy or {}
        # A publish must not hang the API: bounded waits, and the publish retry policy's
        # quick tries (never its "forever") on a refused or dropped connection, as Redis
        # restarts. A timeout is not retried: what failed stays in Postgres for the sweeper.
        retry = self._retry = Retry(
            _PolicyBackoff(policy),
            int(policy.get("max_retries") or 0) if conf.task_publish_retry else 0,
            supported_errors=(RedisConnectionError,),
        )
        timeout = float(conf.broker_connection_timeout)
        client: redis.Redis = redis.Redis.from_url(
            conf.broker_write_url or conf.broker_url,
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
            retry=retry,
        )
        # A timeout opens this server's breaker: the process's next calls (the next request's
        # publish) fail fast instead of each waiting `timeout` on a dead link.
        self._breaker = guard(client)
        return client

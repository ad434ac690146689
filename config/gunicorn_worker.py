"""gunicorn's gthread worker, except that a thread only gets a request once it has arrived whole."""

from __future__ import annotations

import errno
import json
import resource
import selectors
import time
from collections import OrderedDict
from dataclasses import dataclass
from functools import partial
from http import HTTPStatus
from typing import Any

from gunicorn import util as gunicorn_util
from gunicorn.http.unreader import SocketUnreader
from gunicorn.workers.gthread import TConn, ThreadWorker

from config.request_framing import Framing, RequestFramer

DEFAULT_READ_TIMEOUT = 10.0
DEFAULT_BUFFER_BYTES = 2 * 1024 * 1024  # keep above TASKEXEC_MAX_BODY_BYTES (1 MiB by default)
FD_RESERVE = 64  # a worker's own descriptors besides its clients: pools, logs, pipes
# All connections of a worker together keep at most this many request bytes in memory, as
# buffers of this many requests of the largest size; past it the request that arrives is refused.
BUFFERED_REQUESTS = 64
RECV_BYTES = 64 * 1024
RECVS_PER_EVENT = 16  # then other connections get their turn
# A burst of new connections is accepted this many per turn of the loop (gthread takes one), and
# this many expired ones are closed per turn: requests already readable wait for one batch only.
ACCEPTS_PER_EVENT = 128
EXPIRIES_PER_TURN = 256
# With sibling workers, one holding its threads' worth of connections or more accepts that many
# at a time and then stops polling the listener this long, so the others take the next ones.
ACCEPT_DEFER_SECONDS = 0.002
UNLIMITED_FDS = 1024 * 1024  # what "unlimited" open files stands for
DEFAULT_FIELD_SIZE = 8190  # gunicorn's own fallbacks when a limit is 0 (unlimited)
DEFAULT_LINE = 8190


_http_date = gunicorn_util.http_date
_date: tuple[int, str] = (0, "")


def _http_date_per_second(timestamp: float | None = None) -> str:
    """gunicorn's Date header, formatted once a second instead of for every response.

    `email.utils.formatdate` cost 3.5 % of an API worker's Python CPU under submit load. One
    tuple holds the second and its text, so a thread never pairs one with the other's.
    """
    global _date
    if timestamp is not None:
        return str(_http_date(timestamp))
    now = int(time.time())
    cached = _date
    if cached[0] != now:
        cached = _date = (now, str(_http_date(now)))
    return cached[1]


gunicorn_util.http_date = _http_date_per_second  # read as util.http_date() by every response


def fd_limit() -> int:
    """The hard limit on open files, the most connections a worker can raise itself to."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return UNLIMITED_FDS if hard == resource.RLIM_INFINITY else int(hard)


def error_response(
    status: int, code: str, message: str, details: dict[str, Any] | None = None
) -> bytes:
    """A response that closes the connection, in the API's error envelope."""
    error = {"code": code, "message": message, "details": details or {}}
    body = json.dumps({"error": error}).encode()
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class DeadlineUnreader(SocketUnreader):  # type: ignore[misc]  # gunicorn has no type hints
    """gunicorn's socket reader, whose reads stop at the request's deadline.

    Only a request handed over before it was whole (HEAD_ONLY, MALFORMED) ever reads the
    socket in a thread; this bounds how long it may hold that thread.
    """

    deadline = float("inf")

    def chunk(self, size_hint: int | None = None) -> bytes:
        """Read what the socket has, but give up at the deadline as if the client had left."""
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            return b""
        self.sock.settimeout(remaining)
        try:
            return bytes(super().chunk(size_hint))
        except TimeoutError:
            return b""  # gunicorn treats it as a premature close and drops the connection
        finally:
            self.sock.settimeout(None)


@dataclass
class Reading:
    """A connection whose request is still arriving, in the worker's event loop."""

    framer: RequestFramer
    deadline: float
    result: Framing = Framing.PARTIAL
    continued: bool = False  # "100 Continue" already sent, gunicorn must not send another
    registered: bool = False  # in the worker's poller


class BufferedThreadWorker(ThreadWorker):  # type: ignore[misc]  # gunicorn has no type hints
    """A gthread worker that reads every request in its event loop, under a deadline.

    gunicorn's gthread hands each new connection to a thread, which waits up to 5 s for the
    first bytes and then reads the request with blocking calls: ten idle connections take all
    the threads of a `taskexec dev` worker, and a client trickling its request holds one for as
    long as it likes. Here the event loop reads each request (head and body, up to
    `buffer_bytes`) without blocking; a thread gets it only once it is whole, and a request
    not whole `read_timeout` seconds after its first byte could be sent is answered 408 and
    closed. Idle and slow connections then cost a file descriptor and a few KiB each, and the
    worker accepts as many as its file-descriptor limit allows. A burst of them is accepted a
    batch per event, gets a parser only once a request is whole, and expires in deadline
    order: no turn of the loop costs work in proportion to the connections open.

    TLS and cleartext HTTP/2 need blocking reads before the request: with those, the worker
    behaves exactly like gthread (terminate TLS in front, as docs/security.md says).
    """

    read_timeout = DEFAULT_READ_TIMEOUT
    buffer_bytes = DEFAULT_BUFFER_BYTES

    def configure(self, read_timeout: float, buffer_bytes: int) -> None:
        """Set the read deadline and body buffer (gunicorn has no settings for them)."""
        self.read_timeout = read_timeout
        self.buffer_bytes = buffer_bytes

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        """Warn that TLS and cleartext HTTP/2 fall back to gthread's blocking reads."""
        super().check_config(cfg, log)
        if not _can_buffer(cfg):
            log.warning("TLS or HTTP/2 configured: requests are read by threads, as gthread does")

    def init_process(self) -> None:
        """Make room for many connections, then run gthread's loop."""
        self.init_reading()
        self._raise_fd_limit()
        super().init_process()

    def init_reading(self) -> None:
        """Start with no request being read (the part of init_process tests can run)."""
        self._reading: OrderedDict[Any, Reading] = OrderedDict()  # ordered by deadline
        self._buffering = _can_buffer(self.cfg)
        self._max_head = _max_head(self.cfg)
        self._buffered = 0  # bytes held by all the requests being read

    def _raise_fd_limit(self) -> None:
        # gthread stops accepting at worker_connections: let that be the fd limit, not 1000.
        connections: int = self.cfg.worker_connections
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = connections + FD_RESERVE
        if soft != resource.RLIM_INFINITY and soft < wanted:
            soft = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        if soft != resource.RLIM_INFINITY:
            connections = max(self.cfg.threads, min(connections, soft - FD_RESERVE))
        self.worker_connections = connections
        self.max_keepalived = connections - self.cfg.threads

    def accept(self, listener: Any) -> None:
        """Accept the connections waiting on the listener, a batch at a time.

        With sibling workers on the same listener, a batch stops at the worker's share (its
        thread count), and past its share the worker takes a share at a time and then leaves
        the listener to the others for ACCEPT_DEFER_SECONDS. Whichever worker woke first used
        to take a whole burst: of wrk's 32 connections 2 workers of 8 threads got 4/28, 9/23,
        31/1, 27/5, and the one with 28 queued them behind its threads and its one GIL while
        the other idled. A worker alone still takes ACCEPTS_PER_EVENT per event.
        """
        if not self._buffering:
            super().accept(listener)
            return
        batch = ACCEPTS_PER_EVENT
        share = self.cfg.threads
        shared = self.cfg.workers > 1
        if shared:
            batch = min(batch, share - self.nr_conns if self.nr_conns < share else share)
        for _ in range(batch):
            if self.nr_conns >= self.worker_connections:
                return
            try:
                sock, client = listener.accept()
            except OSError as e:
                if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                    return
                if e.errno == errno.ECONNABORTED:
                    continue
                raise
            self.nr_conns += 1
            # TConn makes the socket non-blocking; gthread's blocking round trip is not needed.
            self.enqueue_req(TConn(self.cfg, sock, client, listener.getsockname()))
        if shared and self.nr_conns >= share:
            self._accept_after = time.monotonic() + ACCEPT_DEFER_SECONDS
            super().set_accept_enabled(False)

    _accept_after = 0.0  # when a worker past its share polls the listener again

    def set_accept_enabled(self, enabled: bool) -> None:
        """gthread's loop turns accepting back on each turn: not while a deferral lasts."""
        if enabled and time.monotonic() < self._accept_after:
            return
        super().set_accept_enabled(enabled)

    # gthread calls enqueue_req for a new connection, a kept-alive one that became readable
    # and a pipelined request already buffered: all of them are read here first.
    def enqueue_req(self, conn: Any) -> None:
        """Start reading the connection's next request in the event loop."""
        if not self._buffering:
            super().enqueue_req(conn)
            return
        held = b""
        if conn.parser is not None:  # kept alive: its parser may hold the next request's bytes
            try:
                conn.sock.setblocking(False)
            except OSError:
                self._close(conn)
                return
            held = conn.parser.unreader.take_buffered()
        # A new connection gets its parser only when its request is whole (_hand_over): an
        # idle one costs a framer, a deadline and a place in the poller.
        framer = RequestFramer(self._max_head, self.buffer_bytes)
        state = Reading(framer, time.monotonic() + self.read_timeout)
        conn.read_state = state
        self._reading[conn] = state
        if held:
            self._buffered += len(held)
            state.result = framer.feed(held)
        if state.result is Framing.PARTIAL:
            # Often the request is here already (always on a kept-alive connection gthread
            # found readable): then it goes to a thread without a trip through the poller.
            self._on_readable(conn, None)
        else:
            self._hand_over(conn, state)

    def _on_readable(self, conn: Any, _sock: object | None) -> None:
        state = self._reading.get(conn)
        if state is None:
            return
        for _ in range(RECVS_PER_EVENT):
            try:
                data = conn.sock.recv(RECV_BYTES)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._drop(conn)
                return
            if not data:  # closed before its request was whole: nothing to answer
                self._drop(conn)
                return
            self._buffered += len(data)
            state.result = state.framer.feed(data)
            if state.result is Framing.PARTIAL and self._buffered > self._buffer_budget():
                # Many large requests arriving at once: refuse this one rather than run out of
                # memory (the client may retry; gthread would have read 4 at a time).
                self._forget(conn)
                self._send_quietly(
                    conn,
                    error_response(503, "SERVICE_UNAVAILABLE", "too many requests arriving; retry"),
                )
                self._close(conn)
                return
            if state.result is not Framing.PARTIAL:
                self._hand_over(conn, state)
                return
        if state.framer.expects_continue and state.framer.head_done and not state.continued:
            # The client waits for this before it sends the body we wait for.
            state.continued = True
            self._send_quietly(conn, b"HTTP/1.1 100 Continue\r\n\r\n")
        if not state.registered:
            state.registered = True
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, conn))

    def _hand_over(self, conn: Any, state: Reading) -> None:
        self._forget(conn)
        try:
            conn.init()  # plain HTTP/1: only creates the parser (once), reads nothing
        except OSError:
            self._close(conn)
            return
        unreader = conn.parser.unreader
        if not isinstance(unreader, DeadlineUnreader):
            conn.parser.unreader = DeadlineUnreader(conn.sock)
            conn.parser.unreader.unread(unreader.take_buffered())
        conn.parser.unreader.unread(bytes(state.framer.buf))
        conn.parser.unreader.deadline = state.deadline
        super().enqueue_req(conn)

    def handle_request(self, req: Any, conn: Any) -> bool:
        """Serve a parsed request (in a thread), without a second "100 Continue"."""
        state = getattr(conn, "read_state", None)
        if state is not None and state.continued:
            req._expected_100_continue = False
        return bool(super().handle_request(req, conn))

    def _keepalive_after(self, conn: Any, keepalive: bool) -> bool:
        state = getattr(conn, "read_state", None)
        if state is not None and state.result is not Framing.COMPLETE:
            # Its body is partly unread on the socket: draining it would hold this thread.
            return False
        return bool(super()._keepalive_after(conn, keepalive))

    # gthread's loop calls this after every turn, also while it shuts down.
    def murder_pending(self) -> None:
        """Close connections whose request did not arrive in time (idle ones when stopping)."""
        super().murder_pending()
        if not self.alive:
            for conn, state in list(self._reading.items()):
                if state.deadline > time.monotonic() and state.framer.buf:
                    continue  # a request on its way still gets its chance
                self._expire(conn, state)
            return
        # Ordered by deadline: the work is the expired connections, never all of them.
        now = time.monotonic()
        for _ in range(EXPIRIES_PER_TURN):
            first = next(iter(self._reading.items()), None)
            if first is None or first[1].deadline > now:
                return
            self._expire(*first)

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        """Wait for events, or only look for them while expired connections remain."""
        first = next(iter(self._reading.values()), None)
        now = time.monotonic()
        if first is not None and first.deadline <= now:
            timeout = 0.0
        if not self._accepting and self._accept_after > now:  # wake to accept again
            timeout = min(timeout, self._accept_after - now)
        super().wait_for_and_dispatch_events(timeout)

    def _expire(self, conn: Any, state: Reading) -> None:
        self._forget(conn)
        if state.framer.buf:
            message = f"the request did not arrive within {self.read_timeout:g} s"
            details = {"timeout": self.read_timeout}
            response = error_response(408, "REQUEST_TIMEOUT", message, details)
            self._send_quietly(conn, response)
        self._close(conn)

    def _buffer_budget(self) -> int:
        return BUFFERED_REQUESTS * (self.buffer_bytes + self._max_head)

    def _forget(self, conn: Any) -> None:
        state = self._reading.pop(conn)
        self._buffered -= len(state.framer.buf)
        if state.registered:
            try:
                self.poller.unregister(conn.sock)
            except (KeyError, ValueError, OSError):
                pass

    def _drop(self, conn: Any) -> None:
        self._forget(conn)
        self._close(conn)

    def _close(self, conn: Any) -> None:
        self.nr_conns -= 1
        conn.close()

    @staticmethod
    def _send_quietly(conn: Any, data: bytes) -> None:
        # Non-blocking and best effort: a few bytes into an empty send buffer, or nothing.
        try:
            conn.sock.send(data)
        except OSError:
            pass


def _can_buffer(cfg: Any) -> bool:
    return not cfg.is_ssl and cfg.http2_cleartext == "off"


def _max_head(cfg: Any) -> int:
    """About the most head bytes gunicorn's parser accepts (more is refused without waiting)."""
    line = cfg.limit_request_line or DEFAULT_LINE
    field = cfg.limit_request_field_size or DEFAULT_FIELD_SIZE
    return int(line + 2 + cfg.limit_request_fields * (field + 2) + 4)

"""Where an HTTP/1.1 request ends, told from the bytes received so far (no I/O, no parsing)."""

from __future__ import annotations

import enum

CRLF = b"\r\n"
HEAD_END = b"\r\n\r\n"
RAW_BODY_FACTOR = 4  # chunked bodies: raw bytes kept at most, as a multiple of max_body


class Framing(enum.Enum):
    """What the bytes received so far amount to."""

    PARTIAL = "partial"  # more bytes are needed before the request is whole
    COMPLETE = "complete"  # the head and the whole body are here
    HEAD_ONLY = "head-only"  # the head is here; the body is larger than we keep in memory
    MALFORMED = "malformed"  # gunicorn's parser will refuse it from the bytes already here


class _State(enum.Enum):
    HEAD = enum.auto()
    LENGTH = enum.auto()
    CHUNK_SIZE = enum.auto()
    CHUNK_DATA = enum.auto()
    TRAILERS = enum.auto()
    DONE = enum.auto()


class RequestFramer:
    """Buffers one request's bytes and says when all of it has arrived.

    Only the framing is judged (end of head, Content-Length, chunked); gunicorn's parser still
    parses and validates the request. Wherever the two could disagree the framer answers
    MALFORMED or HEAD_ONLY, and the request goes to gunicorn at once: gunicorn then refuses it
    from the bytes it already has, or reads the rest under the worker's deadline.
    """

    def __init__(self, max_head: int, max_body: int) -> None:
        self.buf = bytearray()
        self.expects_continue = False  # `Expect: 100-continue` on an HTTP/1.1 request
        self._max_head = max_head
        self._max_body = max_body
        self._state = _State.HEAD
        self._pos = 0  # where framing resumes in `buf`
        self._body_start = 0
        self._remaining = 0  # bytes of the current body or chunk still expected
        self._decoded = 0  # chunked: data bytes of the chunks already complete
        self._result = Framing.PARTIAL

    @property
    def head_done(self) -> bool:
        """Whether the whole head has arrived."""
        return self._state is not _State.HEAD

    def feed(self, data: bytes) -> Framing:
        """Add received bytes; say whether the request is whole yet."""
        self.buf += data
        if self._result is Framing.PARTIAL:
            self._result = self._advance()
        return self._result

    def _advance(self) -> Framing:
        while True:
            if self._state is _State.HEAD:
                step = self._frame_head()
            elif self._state is _State.LENGTH:
                step = self._frame_length()
            elif self._state is _State.CHUNK_SIZE:
                step = self._frame_chunk_size()
            elif self._state is _State.CHUNK_DATA:
                step = self._frame_chunk_data()
            elif self._state is _State.TRAILERS:
                step = self._frame_trailers()
            else:
                return Framing.COMPLETE
            if step is not None:
                return step

    def _frame_head(self) -> Framing | None:
        end = self.buf.find(HEAD_END, max(0, self._pos - 3))
        if end < 0:
            head = bytes(self.buf)
            # gunicorn refuses a bare LF and an oversized head without waiting for more.
            if head.count(b"\n") != head.count(CRLF) or len(head) > self._max_head:
                return Framing.MALFORMED
            self._pos = len(self.buf)
            return Framing.PARTIAL
        head = bytes(self.buf[:end])
        if head.count(b"\n") != head.count(CRLF):
            return Framing.MALFORMED
        self._body_start = self._pos = end + 4
        return self._frame_body_of(head)

    def _frame_body_of(self, head: bytes) -> Framing | None:
        lines = head.split(CRLF)
        if lines[0] == b"":  # RFC 9112 section 2.2: one empty line may precede the request
            lines = lines[1:]
        http11 = lines[0].rstrip().endswith(b"HTTP/1.1") if lines else False
        lengths: list[bytes] = []
        codings: list[bytes] = []
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon:
                return Framing.MALFORMED
            name = name.lower()
            value = value.strip(b" \t")
            if name == b"content-length":
                lengths.append(value)
            elif name == b"transfer-encoding":
                codings += [c.strip(b" \t").lower() for c in value.split(b",")]
            elif name == b"expect" and value.lower() == b"100-continue" and http11:
                self.expects_continue = True
        if codings:
            if lengths or codings[-1] != b"chunked" or not http11:
                return Framing.MALFORMED
            self._state = _State.CHUNK_SIZE
            return None
        if len(lengths) > 1 or (lengths and not lengths[0].isdigit()):
            return Framing.MALFORMED
        self._remaining = int(lengths[0]) if lengths else 0
        if self._remaining > self._max_body:
            return Framing.HEAD_ONLY  # the app refuses it from Content-Length alone (413)
        self._state = _State.LENGTH
        return None

    def _frame_length(self) -> Framing | None:
        if len(self.buf) - self._body_start < self._remaining:
            return Framing.PARTIAL
        self._state = _State.DONE
        return None

    def _frame_chunk_size(self) -> Framing | None:
        if self._decoded > self._max_body:
            return Framing.HEAD_ONLY  # see _frame_chunk_data
        if len(self.buf) - self._body_start > RAW_BODY_FACTOR * self._max_body:
            return Framing.HEAD_ONLY  # chunk framing out of all proportion to the data
        end = self.buf.find(CRLF, self._pos)
        if end < 0:
            return Framing.MALFORMED if len(self.buf) - self._pos > 8190 else Framing.PARTIAL
        size = bytes(self.buf[self._pos : end]).split(b";", 1)[0].strip(b" \t")
        try:
            self._remaining = int(size, 16)
        except ValueError:
            return Framing.MALFORMED
        self._pos = end + 2
        self._state = _State.CHUNK_DATA if self._remaining else _State.TRAILERS
        return None

    def _frame_chunk_data(self) -> Framing | None:
        have = len(self.buf) - self._pos
        if have < self._remaining + 2:
            # Over the limit, the app refuses (413) once it has read max_body + 1 bytes: those
            # are here, it never waits for the rest.
            over = self._decoded + min(have, self._remaining) > self._max_body
            return Framing.HEAD_ONLY if over else Framing.PARTIAL
        self._pos += self._remaining + 2
        self._decoded += self._remaining
        self._state = _State.CHUNK_SIZE
        return None

    def _frame_trailers(self) -> Framing | None:
        if len(self.buf) - self._pos < 2:
            return Framing.PARTIAL
        if self.buf[self._pos : self._pos + 2] == CRLF:
            self._state = _State.DONE
            return None
        end = self.buf.find(HEAD_END, self._pos)
        if end < 0:
            too_long = len(self.buf) - self._pos > self._max_head
            return Framing.MALFORMED if too_long else Framing.PARTIAL
        self._state = _State.DONE
        return None

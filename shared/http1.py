"""An HTTP/1.x response read straight off a socket: the webhook sender's side of the wire."""

from __future__ import annotations

import re
import ssl
import time
from dataclasses import dataclass
from socket import socket

#: Most bytes of a response's head (status line and headers) read before giving up.
MAX_HEAD_BYTES = 64 * 1024
#: Most header lines of one response (http.client's limit).
MAX_HEADERS = 100
#: Most interim (1xx) answers skipped before the answer (a receiver sending them forever
#: would otherwise cost CPU until the deadline).
MAX_INTERIM = 16
#: Bytes asked of the socket per read.
READ_SIZE = 65536

_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
_STATUS = re.compile(rb"HTTP/1\.([0-9]) +([0-9]{3})(?:[ \t].*)?")


class NoAnswer(Exception):
    """The connection was closed (or reset) before a single byte of a response came."""


class Late(Exception):
    """The response did not come whole before the deadline; `answered`: whether it began."""

    def __init__(self, answered: bool) -> None:
        super().__init__("answered late" if answered else "no answer")
        self.answered = answered


class Malformed(Exception):
    """The response is not well-formed HTTP/1.x (the message says where)."""


@dataclass(frozen=True, slots=True)
class Response:
    """A response: its status, the body's first `limit` bytes, whether the connection may serve
    another request (the answer was read whole, nothing follows it, and it is not closing)."""

    status: int
    body: bytes
    reusable: bool


class _Reader:
    """Bytes of one connection, read as the parser needs them, all before one deadline."""

    __slots__ = ("sock", "deadline", "buffer", "started")

    def __init__(self, sock: socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.buffer = bytearray()
        self.started = False  # any byte came

    def fill(self) -> bool:
        """Read what the socket has (waiting until the deadline); False at its end."""
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise Late(self.started)
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(READ_SIZE)
        except TimeoutError:
            raise Late(self.started) from None
        except ConnectionResetError:
            if not self.started:
                raise NoAnswer() from None
            raise
        if not data:
            if not self.started:
                raise NoAnswer()
            return False
        self.started = True
        self.buffer += data
        return True

    def line(self, what: str) -> bytes:
        """The next line (without its CRLF or LF), consumed."""
        start = 0
        while True:
            end = self.buffer.find(b"\n", start)
            if end >= 0:
                line = bytes(self.buffer[:end])
                del self.buffer[: end + 1]
                return line[:-1] if line.endswith(b"\r") else line
            if len(self.buffer) > MAX_HEAD_BYTES:
                raise Malformed(f"{what} longer than {MAX_HEAD_BYTES} bytes")
            start = len(self.buffer)
            if not self.fill():
                raise Malformed(f"closed in the middle of {what}")

    def exactly(self, size: int, what: str) -> bytes:
        """The next `size` bytes, consumed."""
        while len(self.buffer) < size:
            if not self.fill():
                raise Malformed(f"closed in the middle of {what}")
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data


def read_response(sock: socket, deadline: float, limit: int) -> Response:
    """Read the answer to one request (not HEAD) from `sock`, all of it before `deadline`.

    Interim (1xx) answers are skipped; a body is framed by its content-length, as chunks, or by
    the connection's end, and read up to `limit` bytes (the rest is left: the connection is
    then not reusable). Raises NoAnswer, Late, Malformed, or the socket's own OSError.
    """
    reader = _Reader(sock, deadline)
    for _ in range(MAX_INTERIM + 1):
        status, minor, fields = _head(reader)
        if status >= 200 or status == 101:
            break  # 100 Continue, 102 Processing, 103 Early Hints... precede the answer
    else:
        raise Malformed(f"more than {MAX_INTERIM} interim (1xx) answers")
    closing = minor == 0 or status == 101  # HTTP/1.0 closes; 101 switched protocols unasked
    coding = length = None
    for name, value in fields:
        if name == b"connection":
            closing = closing or b"close" in [t.strip().lower() for t in value.split(b",")]
        elif name == b"transfer-encoding":
            coding = value if coding is None else coding + b"," + value
        elif name == b"content-length":
            length = value if length is None else length + b"," + value
    if status < 200 or status in (204, 304):
        body, whole = b"", True
    elif coding is not None:
        last = coding.rsplit(b",", 1)[-1].strip().lower()
        if last == b"chunked":
            body, whole = _chunked(reader, limit)
        else:  # another coding last: the body ends with the connection
            body, whole = _until_closed(reader, limit), False
        # Both framings at once is how responses are smuggled: never reuse such a connection.
        closing = closing or length is not None
    elif length is not None:
        values = {v.strip() for v in length.split(b",")}
        size = values.pop() if len(values) == 1 else b""
        if not size.isdigit():
            raise Malformed(f"an invalid content-length: {length[:40]!r}")
        wanted = int(size) if len(size) <= 18 else limit + 1  # int() refuses 4,300 digits
        body = reader.exactly(min(wanted, limit), "the body")
        whole = wanted <= limit
    else:
        body, whole = _until_closed(reader, limit), False
    reusable = whole and not closing and not reader.buffer
    if reusable and isinstance(sock, ssl.SSLSocket) and sock.pending():
        reusable = False  # bytes after the answer: not a connection to send on again
    return Response(status, body, reusable)


def _head(reader: _Reader) -> tuple[int, int, list[tuple[bytes, bytes]]]:
    """The next status line and its headers (names lowercased, folded values joined)."""
    buffer = reader.buffer
    start = 0  # where the search goes on: a head sent a byte at a time is not read n^2 times
    while True:
        # The head ends with an empty line: a line end, then CRLF or a bare LF.
        crlf = buffer.find(b"\n\r\n", start)
        lf = buffer.find(b"\n\n", start)
        if lf >= 0 and (crlf < 0 or lf < crlf):
            end, skip = lf, 2
        else:
            end, skip = crlf, 3
        if end >= 0:
            break
        start = max(0, len(buffer) - 2)
        if len(buffer) > MAX_HEAD_BYTES:
            raise Malformed(f"a response head longer than {MAX_HEAD_BYTES} bytes")
        if not reader.fill():
            raise Malformed("closed in the middle of the response head")
    if end > MAX_HEAD_BYTES:
        raise Malformed(f"a response head longer than {MAX_HEAD_BYTES} bytes")
    lines = bytes(buffer[:end]).split(b"\n")
    del buffer[: end + skip]
    first = lines[0].rstrip(b"\r")
    matched = _STATUS.fullmatch(first)
    if matched is None or matched.group(2)[:1] == b"0":
        raise Malformed(f"not an HTTP/1.x status line: {first[:80]!r}")
    if len(lines) - 1 > MAX_HEADERS:
        raise Malformed(f"more than {MAX_HEADERS} headers")
    fields: list[tuple[bytes, bytes]] = []
    for raw in lines[1:]:
        line = raw.rstrip(b"\r")
        if line[:1] in (b" ", b"\t"):
            # An obsolete folded line continues the previous value: a space replaces the fold.
            if not fields:
                raise Malformed("a folded line before any header")
            name, value = fields[-1]
            fields[-1] = (name, value + b" " + line.strip())
            continue
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip():
            raise Malformed(f"a malformed header line: {line[:80]!r}")
        fields.append((name.lower(), value.strip()))
    return int(matched.group(2)), int(matched.group(1)), fields


def _chunked(reader: _Reader, limit: int) -> tuple[bytes, bool]:
    """A chunked body up to `limit` bytes, and whether it was read to its end (and trailers)."""
    parts: list[bytes] = []
    got = 0
    while True:
        line = reader.line("a chunk size")
        size_text = line.split(b";", 1)[0].strip()
        if not _CHUNK_SIZE.fullmatch(size_text):
            raise Malformed(f"a malformed chunk size: {line[:40]!r}")
        size = int(size_text, 16)
        if size == 0:
            break
        if got + size > limit:
            parts.append(reader.exactly(limit - got, "a chunk"))
            return b"".join(parts), False
        parts.append(reader.exactly(size, "a chunk"))
        got += size
        if reader.line("a chunk's end"):
            raise Malformed("a chunk longer than its size")
    trailers = 0
    while reader.line("the trailers"):
        trailers += 1
        if trailers > MAX_HEADERS:
            raise Malformed(f"more than {MAX_HEADERS} trailers")
    return b"".join(parts), True


def _until_closed(reader: _Reader, limit: int) -> bytes:
    """A body that ends with the connection, up to `limit` bytes."""
    while len(reader.buffer) < limit and reader.fill():
        pass
    body = bytes(reader.buffer[:limit])
    del reader.buffer[:]
    return body

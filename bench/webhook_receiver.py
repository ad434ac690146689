"""A cheap webhook receiver for bench/webhooks.py: its own process, asyncio, keep-alive, 204.

Run: `python bench/webhook_receiver.py PORT_FILE`; it listens on 127.0.0.1 (a free port,
written to PORT_FILE once it listens). Every POST is answered 204 and recorded as (arrival
time, the body's `timestamp`). Control requests: `GET /stats` -> `{"count": n}`,
`GET /arrivals` -> `[[arrival, timestamp], ...]`, `POST /reset` empties the record.

The HTTP parsing is the least a keep-alive client needs (request line, headers,
content-length), so the receiver's CPU per delivery is small next to the deliverer's: a
production receiver runs on other machines, and here it shares the 2 cores with the service.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

STAMP = b'"timestamp":"'
NO_CONTENT = b"HTTP/1.1 204 No Content\r\n\r\n"
READ_SIZE = 64 * 1024


class Record:
    """What arrived: (arrival time, the event's timestamp) per POST."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[float, str]] = []


class Receiver(asyncio.BufferedProtocol):
    """One connection: parse requests as they come, answer each at once.

    A buffered protocol: the event loop reads into this connection's own buffer
    (`recv_into`). A plain Protocol gets a new bytes object per read, which asyncio
    allocates at its 256 KiB read size: a mmap, a mremap and a munmap per request, about
    a third of this receiver's CPU (strace counted three such calls per delivery).
    """

    def __init__(self, record: Record) -> None:
        self.record = record
        self.buffer = bytearray(READ_SIZE)
        self.filled = 0  # bytes of `buffer` read and not yet parsed
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        if len(self.buffer) - self.filled < READ_SIZE // 2:
            self.buffer.extend(bytes(READ_SIZE))  # a request larger than the buffer
        return memoryview(self.buffer)[self.filled :]

    def buffer_updated(self, nbytes: int) -> None:
        self.filled += nbytes
        data = self.buffer
        start = 0
        while True:
            end = data.find(b"\r\n\r\n", start, self.filled)
            if end < 0:
                break
            head = bytes(data[start:end])
            length = 0
            lower = head.lower()
            at = lower.find(b"\r\ncontent-length:")
            if at >= 0:
                stop = lower.find(b"\r\n", at + 2)
                length = int(lower[at + 17 : stop if stop >= 0 else len(lower)])
            if self.filled < end + 4 + length:
                break
            body = bytes(data[end + 4 : end + 4 + length])
            start = end + 4 + length
            self.answer(head, body)
        if start:
            # Keep only what is not parsed yet, at the buffer's start.
            rest = self.filled - start
            data[:rest] = data[start : self.filled]
            self.filled = rest

    def answer(self, head: bytes, body: bytes) -> None:
        assert self.transport is not None
        line = head.split(b"\r\n", 1)[0]
        method, path = line.split(b" ")[:2]
        if method == b"POST" and path != b"/reset":
            start = body.find(STAMP) + len(STAMP)
            stamp = body[start : body.find(b'"', start)].decode()
            self.record.arrivals.append((time.time(), stamp))
            self.transport.write(NO_CONTENT)
            return
        if path == b"/reset":
            self.record.arrivals = []
            payload = b"{}"
        elif path == b"/stats":
            payload = json.dumps({"count": len(self.record.arrivals)}).encode()
        else:
            payload = json.dumps(self.record.arrivals).encode()
        self.transport.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            b"content-length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload
        )


async def serve(port_file: str) -> None:
    record = Record()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Receiver(record), "127.0.0.1", 0, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    with open(port_file + ".tmp", "w") as out:
        out.write(str(port))
    os.replace(port_file + ".tmp", port_file)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1]))

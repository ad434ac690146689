"""The process supervisor of `taskexec dev`: children with prefixed output, stopped in order."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from types import FrameType
from typing import IO

COLOURS = {
    "api": 36,
    "worker": 33,
    "sweeper": 35,
    "deliverer": 95,
    "flower": 32,
    "redis": 31,
    "postgres": 34,
}
LABEL_WIDTH = 9

#: What stops `taskexec dev`: Ctrl-C, `kill` (and systemd, Docker...), a closed terminal.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Stop(KeyboardInterrupt):
    """A stop signal arrived; raised like Ctrl-C's KeyboardInterrupt so every path unwinds."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signal_name = signal.Signals(signum).name


class StopSignals:
    """Turn the stop signals into one `Stop`, never raised inside a `held()` block.

    Only the first signal raises: a second Ctrl-C must not cut the orderly stop short, which
    is bounded by the children's and servers' timeouts anyway.
    """

    def __init__(self) -> None:
        self._held = False
        self._pending: int | None = None

    def install(self) -> None:
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._handle)

    def ignore(self) -> None:
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.ignore()
        if self._held:
            self._pending = signum
            return
        raise Stop(signum)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Defer a stop to the end of the block (e.g. between starting a child and tracking it)."""
        self._held = True
        try:
            yield
        finally:
            self._held = False
        if self._pending is not None:
            raise Stop(self._pending)


def _pump(name: str, stream: IO[bytes], lock: threading.Lock) -> None:
    colour = COLOURS.get(name, 37) if sys.stdout.isatty() else None
    label = f"{name:>{LABEL_WIDTH}} |"
    label = f"\x1b[{colour}m{label}\x1b[0m " if colour else f"{label} "
    with contextlib.suppress(OSError):  # the terminal went away (SIGHUP): nowhere to write
        for raw in iter(stream.readline, b""):
            with lock:
                sys.stdout.write(label + raw.decode(errors="replace"))
                sys.stdout.flush()


class Supervisor:
    """Starts child processes with prefixed output and stops them all together."""

    def __init__(self, env: dict[str, str], signals: StopSignals) -> None:
        self.env = env
        self.signals = signals
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self._lock = threading.Lock()

    def start(self, name: str, cmd: list[str], extra_env: dict[str, str] | None = None) -> None:
        """Start a child in a session of its own; a stop signal waits until it is tracked."""
        with self.signals.held():
            proc = subprocess.Popen(
                cmd,
                env={**self.env, **(extra_env or {})},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches us only; we stop children in order
            )
            self.children.append((name, proc))
        assert proc.stdout is not None
        threading.Thread(target=_pump, args=(name, proc.stdout, self._lock), daemon=True).start()

    def wait(self) -> str:
        """Block until a child exits and return its name (a stop signal raises `Stop`)."""
        while True:
            for name, proc in self.children:
                if proc.poll() is not None:
                    return name
            time.sleep(0.3)

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM the children, last started first; SIGKILL the groups of those still running."""
        for _, proc in reversed(self.children):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for _, proc in self.children:
            try:
                proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

"""Idle and slow clients against the API: how long other clients' requests take meanwhile.

`python -m bench.slow_clients` starts its own database, Redis and gunicorn (as `taskexec dev`
does: 2 workers x 4 threads, config/gunicorn.py) once per `--worker-class`, and for each
scenario keeps N idle connections (reopened when the server closes them) and M clients that
trickle a request one byte at a time, while it times authenticated `GET /api/v1/tasks`, each
on a new connection. Then it measures submit throughput (`POST /api/v1/tasks`, the Python load
generator of bench/load.py) on the same server. `--url URL --api-key KEY` measures a running
API instead. Loopback only; every loop ends with its scenario.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import math
import multiprocessing
import select
import selectors
import socket
import statistics
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.load import http_load
from bench.report import percentile
from bench.usage import cpu_seconds

WORKER_CLASSES = ("gthread", "config.gunicorn_worker.BufferedThreadWorker")
SCENARIOS = ("0:0", "10:0", "40:3", "50:8", "1000:16")  # idle:slow
PROBE_PATH = "/api/v1/tasks?limit=10"
SUBMIT_BODY = {"taskDefinitionId": "echo", "input": {"message": "hello", "n": 1}}


@dataclass
class Crowd:
    """Idle connections that send nothing, and tricklers; all stop when `stop` is set."""

    host: str
    port: int
    idle: int
    slow: int
    interval: float
    stop: threading.Event = field(default_factory=threading.Event)
    reopened: int = 0
    holds: list[float] = field(default_factory=list)  # how long each trickler was kept
    open_since: dict[int, float] = field(default_factory=dict)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        """Open the connections and start trickling."""
        self._threads.append(threading.Thread(target=self._keep_idle, daemon=True))
        for n in range(self.slow):
            self._threads.append(threading.Thread(target=self._trickle, args=(n,), daemon=True))
        for thread in self._threads:
            thread.start()

    def finish(self) -> None:
        """Stop every client and close its connection."""
        self.stop.set()
        for thread in self._threads:
            thread.join(self.interval + 5)

    def _connect(self) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout=10)

    def _keep_idle(self) -> None:
        # epoll, not select(): thousands of sockets exceed select's FD_SETSIZE.
        with selectors.DefaultSelector() as watch:
            for _ in range(self.idle):
                watch.register(self._connect(), selectors.EVENT_READ)
            try:
                while not self.stop.is_set():
                    for key, _ in watch.select(0.2):  # readable: closed by the server
                        watch.unregister(key.fileobj)
                        key.fileobj.close()  # type: ignore[union-attr]
                        watch.register(self._connect(), selectors.EVENT_READ)
                        self.reopened += 1
            finally:
                for key in list(watch.get_map().values()):
                    key.fileobj.close()  # type: ignore[union-attr]

    def _trickle(self, n: int) -> None:
        # Even ones trickle an endless header, odd ones a body they announced.
        if n % 2 == 0:
            head, drip = f"GET {PROBE_PATH} HTTP/1.1\r\nHost: x\r\nX-Slow: ", b"a"
        else:
            head = "POST /api/v1/tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            head += "Content-Length: 100000\r\n\r\n"
            drip = b" "
        while not self.stop.is_set():
            started = time.monotonic()
            self.open_since[n] = started
            with contextlib.closing(self._connect()) as sock:
                try:
                    sock.sendall(head.encode())
                    while not self.stop.is_set():
                        if select.select([sock], [], [], self.interval)[0]:
                            break  # an answer (408) or the close
                        sock.sendall(drip)
                except OSError:
                    pass
            if not self.stop.is_set():
                self.holds.append(time.monotonic() - started)
        self.open_since.pop(n, None)

    def longest_hold(self) -> float:
        """The longest any trickler was kept, including those still open."""
        now = time.monotonic()
        return max([*self.holds, *(now - t for t in self.open_since.values())], default=0.0)


def probe(host: str, port: int, api_key: str, seconds: float, timeout: float) -> list[float]:
    """Time authenticated GETs, each on a new connection, for about `seconds`."""
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.monotonic()
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            conn.request("GET", PROBE_PATH, headers={"X-API-Key": api_key})
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"probe answered {response.status}")
        except (OSError, http.client.HTTPException):
            pass  # counted at the time it took (a timeout counts as `timeout`)
        finally:
            conn.close()
        latencies.append(time.monotonic() - started)
        time.sleep(0.05)
    return latencies


def scenario(url: str, api_key: str, idle: int, slow: int, args: argparse.Namespace) -> str:
    """Run one idle:slow scenario; return its result line."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    # The crowd runs in its own process: its threads must not hold up the probe's GIL.
    ctx = multiprocessing.get_context("fork")
    stop, results = ctx.Event(), ctx.Queue()
    child = ctx.Process(target=_crowd, args=(host, port, idle, slow, args.interval, stop, results))
    child.start()
    try:
        time.sleep(1.0 + idle / 2000)  # let the server accept them
        lat = probe(host, port, api_key, args.seconds, args.probe_timeout)
    finally:
        stop.set()
        holds, hold, reopened = results.get(timeout=args.interval + 30)
        child.join(10)
    ms = sorted(x * 1000 for x in lat)
    cut = f"{statistics.median(holds):.1f} s" if holds else "never"
    return (
        f"idle={idle:<5} slow={slow:<3} requests={len(ms):<4} p50={percentile(ms, 50):8.1f} ms "
        f"p99={percentile(ms, 99):8.1f} ms max={ms[-1]:8.1f} ms | tricklers cut off after: "
        f"{cut}, longest held {hold:.1f} s; idle reopened {reopened}"
    )


def _crowd(
    host: str, port: int, idle: int, slow: int, interval: float, stop: Any, results: Any
) -> None:
    crowd = Crowd(host, port, idle, slow, interval)
    crowd.start()
    stop.wait()
    hold = crowd.longest_hold()
    crowd.finish()
    results.put((crowd.holds, hold, crowd.reopened))


def measure(url: str, api_key: str, args: argparse.Namespace, pid: int = 0) -> list[str]:
    """Every scenario, then submit throughput (and the server's CPU per request if `pid`)."""
    lines = []
    for spec in args.scenario:
        idle, slow = (int(x) for x in spec.split(":"))
        lines.append(scenario(url, api_key, idle, slow, args))
        print("  " + lines[-1], flush=True)
    for turn in range(args.submit_rounds):
        cpu = cpu_seconds(pid) if pid else 0.0
        load = http_load(
            url + "/api/v1/tasks", SUBMIT_BODY, api_key, 32, args.submit_seconds, use_wrk=False
        )
        cpu_ms = (cpu_seconds(pid) - cpu) * 1000 / max(load.requests, 1) if pid else math.nan
        lines.append(
            f"submit (32 connections, {load.tool}, turn {turn + 1}): {load.rps:.0f} requests/s, "
            f"p50 {load.p50_ms:.1f} ms, p99 {load.p99_ms:.1f} ms, errors {load.errors}, "
            f"server CPU {cpu_ms:.2f} ms/request"
        )
        print("  " + lines[-1], flush=True)
    return lines


def own_stack(args: argparse.Namespace) -> dict[str, list[str]]:
    """Start the backends once and gunicorn once per worker class; measure each in turn."""
    from bench.stack import ROOT, Stack, free_port

    workdir = Path(tempfile.mkdtemp(prefix="taskexec-slow-"))
    stack = Stack(workdir, api_workers=2, api_threads=args.threads)
    results: dict[str, list[str]] = {}
    try:
        stack.start_backends()
        for turn in range(args.rounds):
            for worker_class in args.worker_class:
                port = free_port()
                env = {
                    "GUNICORN_BIND": f"127.0.0.1:{port}",
                    "GUNICORN_WORKER_CLASS": worker_class,
                }
                cmd = ["-m", "gunicorn", "-c", str(ROOT / "config" / "gunicorn.py")]
                proc = stack.spawn("api", [*cmd, "api.wsgi:app"], env)
                url = f"http://127.0.0.1:{port}"
                _wait_healthy(url, proc.log_text)
                print(f"{worker_class} (turn {turn + 1}):", flush=True)
                try:
                    lines = measure(url, stack.api_key, args, proc.pid)
                finally:
                    stack.stop(proc)
                results[f"{worker_class} (turn {turn + 1})"] = lines
    finally:
        stack.close()
    return results


def _wait_healthy(url: str, log: object) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url + "/healthz", timeout=2) as response:
                if response.status == 200:
                    for _ in range(8):  # every worker imports the app before the clock runs
                        urllib.request.urlopen(url + "/healthz", timeout=5).close()
                    return
        time.sleep(0.2)
    raise RuntimeError(f"gunicorn did not come up:\n{log()}")  # type: ignore[operator]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running API (else one is started per worker class)")
    parser.add_argument("--api-key", help="a key with tasks:list and tasks:submit, with --url")
    parser.add_argument(
        "--worker-class", action="append", help=f"default: {', '.join(WORKER_CLASSES)}"
    )
    parser.add_argument(
        "--scenario", action="append", help=f"idle:slow (repeatable); default {SCENARIOS}"
    )
    parser.add_argument("--seconds", type=float, default=15.0, help="probing per scenario")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between drips")
    parser.add_argument("--probe-timeout", type=float, default=30.0)
    parser.add_argument("--submit-seconds", type=float, default=10.0)
    parser.add_argument("--submit-rounds", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=1, help="turns of every worker class")
    parser.add_argument("--threads", type=int, default=4, help="per worker (2 workers)")
    args = parser.parse_args(argv)
    args.worker_class = args.worker_class or list(WORKER_CLASSES)
    args.scenario = args.scenario or list(SCENARIOS)
    return args


def main(argv: list[str] | None = None) -> int:
    """Measure, then print every result again as a summary."""
    args = parse_args(argv)
    if args.url:
        results = {args.url: measure(args.url.rstrip("/"), args.api_key or "", args)}
    else:
        results = own_stack(args)
    print("\nsummary")
    for name, lines in results.items():
        print(name)
        for line in lines:
            print("  " + line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

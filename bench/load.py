"""Load over loopback HTTP (wrk when installed, else Python processes) and fan-out of jobs."""

from __future__ import annotations

import http.client
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.report import percentile

LUA = Path(__file__).resolve().parent / "submit.lua"
_WRK_LINE = re.compile(r"^BENCH (.*)$", re.M)


@dataclass(frozen=True)
class LoadResult:
    """What one load run measured."""

    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    tool: str

    @property
    def rps(self) -> float:
        """Responses per second."""
        return self.requests / self.seconds if self.seconds else 0.0


class Client:
    """One keep-alive HTTP/1.1 connection that sends JSON and reads JSON."""

    def __init__(self, base_url: str, headers: dict[str, str] | None = None) -> None:
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        self._conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """Send one request (reconnecting once if the server closed the connection)."""
        payload = None if body is None else json.dumps(body)
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
            try:
                self._conn.request(method, path, payload, self.headers)
                response = self._conn.getresponse()
                raw = response.read()
            except (http.client.HTTPException, OSError):
                self._conn.close()
                self._conn = None
                if attempt == 2:
                    raise
                continue
            return response.status, (json.loads(raw) if raw else None)
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Close the connection."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def http_load(
    url: str, body: Any, api_key: str, connections: int, seconds: float, use_wrk: bool = True
) -> LoadResult:
    """POST `body` to `url` over `connections` keep-alive connections for `seconds`."""
    if use_wrk and shutil.which("wrk"):
        return _wrk(url, body, api_key, connections, seconds)
    return _python_load(url, body, api_key, connections, seconds)


def _wrk(url: str, body: Any, api_key: str, connections: int, seconds: float) -> LoadResult:
    threads = min(max(os.cpu_count() or 1, 1), connections)
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{int(seconds)}s", "--timeout", "10s"]
    env = dict(os.environ, BENCH_BODY=json.dumps(body), BENCH_API_KEY=api_key)
    out = subprocess.run(
        [*cmd, "-s", str(LUA), url], capture_output=True, text=True, env=env, timeout=seconds + 60
    )
    match = _WRK_LINE.search(out.stdout)
    if match is None:
        raise RuntimeError(f"wrk failed: {out.stdout}\n{out.stderr}")
    f = {k: float(v) for k, v in (item.split("=") for item in match.group(1).split())}
    errors = f["connect"] + f["read"] + f["write"] + f["status"] + f["timeout"]
    return LoadResult(
        requests=int(f["requests"]),
        errors=int(errors),
        seconds=f["duration_us"] / 1e6,
        p50_ms=f["p50_us"] / 1000,
        p90_ms=f["p90_us"] / 1000,
        p99_ms=f["p99_us"] / 1000,
        tool="wrk",
    )


def _python_load(url: str, body: Any, api_key: str, connections: int, seconds: float) -> LoadResult:
    processes = min(os.cpu_count() or 1, connections) * 2
    per_process = [
        connections // processes + (i < connections % processes) for i in range(processes)
    ]
    parts = urlsplit(url)
    base = f"{parts.scheme}://{parts.netloc}"
    args = [(base, parts.path, body, api_key, n, seconds) for n in per_process if n]
    handle = fan_out(_load_process, args)
    results = handle.collect(seconds + 60)
    latencies = sorted(x for lat, _ in results for x in lat)
    errors = sum(err for _, err in results)
    return LoadResult(
        requests=len(latencies) + errors,
        errors=errors,
        seconds=seconds,
        p50_ms=percentile(latencies, 50) * 1000,
        p90_ms=percentile(latencies, 90) * 1000,
        p99_ms=percentile(latencies, 99) * 1000,
        tool="python",
    )


def _load_process(
    base: str, path: str, body: Any, api_key: str, threads: int, seconds: float
) -> Callable[[], tuple[list[float], int]]:
    clients = [Client(base, {"X-API-Key": api_key} if api_key else {}) for _ in range(threads)]

    def run() -> tuple[list[float], int]:
        latencies: list[float] = []
        errors = [0]
        deadline = time.monotonic() + seconds

        def loop(client: Client) -> None:
            while time.monotonic() < deadline:
                started = time.monotonic()
                try:
                    status, _ = client.request("POST", path, body)
                except OSError:
                    status = 0
                if 200 <= status < 400:
                    latencies.append(time.monotonic() - started)
                else:
                    errors[0] += 1

        pool = [threading.Thread(target=loop, args=(c,)) for c in clients]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        return latencies, errors[0]

    return run


class FanOut:
    """Jobs in forked processes that prepare first, then start together on `go`."""

    def __init__(self, target: Callable[..., Callable[[], Any]], arg_list: list[tuple[Any, ...]]):
        ctx = multiprocessing.get_context("fork")
        self._ready = ctx.Queue()
        self._results = ctx.Queue()
        self._go = ctx.Event()
        self._procs = [
            ctx.Process(target=_child, args=(target, a, self._ready, self._go, self._results))
            for a in arg_list
        ]
        self.started_at = 0.0

    def start(self) -> float:
        """Fork, wait until every job is prepared, release them; return the wall-clock start."""
        for proc in self._procs:
            proc.start()
        for _ in self._procs:
            self._ready.get(timeout=120)
        self.started_at = time.time()
        self._go.set()
        return self.started_at

    def collect(self, timeout: float) -> list[Any]:
        """Wait for every job's result; raise if one failed."""
        results = []
        for _ in self._procs:
            kind, value = self._results.get(timeout=timeout)
            if kind == "error":
                raise RuntimeError(f"a load process failed: {value}")
            results.append(value)
        for proc in self._procs:
            proc.join(10)
        return results


def fan_out(target: Callable[..., Callable[[], Any]], arg_list: list[tuple[Any, ...]]) -> FanOut:
    """Start `target(*args)` in one process per args tuple; each returns its run callable."""
    handle = FanOut(target, arg_list)
    handle.start()
    return handle


def _child(target: Any, args: tuple[Any, ...], ready: Any, go: Any, results: Any) -> None:
    try:
        run = target(*args)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        ready.put(None)
        results.put(("error", repr(exc)))
        return
    ready.put(None)
    go.wait()
    try:
        results.put(("ok", run()))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        results.put(("error", repr(exc)))

"""CPU per submit inside one process: POST /api/v1/tasks against the minimal Flask view.

    .venv/bin/python -m bench.hotpath                      # CPU time per request, both targets
    .venv/bin/python -m bench.hotpath --callgrind          # instructions per request (valgrind)
    .venv/bin/python -m bench.hotpath --profile out.txt    # cProfile of the service's requests
    .venv/bin/python -m bench.hotpath service --profile out.txt --wall   # ... on the wall clock

The HTTP figure (`python -m bench --only submit`) moves with whatever else the machine runs.
This one calls each WSGI app directly, one request after another on one thread, against a
fresh database and a private Redis (as the suite's stack makes them), and reads the process's
own CPU time (`time.process_time`), which a busy machine disturbs far less than wall time.
Under `--callgrind` each target runs inside valgrind, whose counters are zeroed after the
warm-up and dumped after the requests: start-up is left out, and the count does not depend on
the load at all (it does include the client side of the Postgres and
Redis round trips, which is in the API process's CPU too; not the servers' work).

Both apps get the same body; the service also reads an API key, counts the rate limit in
Redis and validates the input, which the minimal view does not. No worker runs, and the
dispatch window is set wide so every submission is published (as with workers that keep up);
under callgrind its room is read once (see `child`).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import os
import pstats
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from bench.stack import ROOT, Stack

BODY = json.dumps({"taskDefinitionId": "echo", "input": {"message": "hello", "n": 1}}).encode()
TARGETS = ("service", "flask")
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def environ(path: str, key: str) -> dict[str, Any]:
    """A WSGI environ for one POST of BODY (a fresh input stream each time)."""
    return {
        "REQUEST_METHOD": "POST",
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "REMOTE_ADDR": "127.0.0.1",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(BODY)),
        "HTTP_HOST": "127.0.0.1:8000",
        "HTTP_X_API_KEY": key,
        "HTTP_ACCEPT": "*/*",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(BODY),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }


def load_app(target: str) -> tuple[WSGIApp, str]:
    """Import the app of `target` (after the environment is set) and its submit path."""
    if target == "service":
        from api.app import create_app
        from config.settings import Settings

        return create_app(Settings.from_env()), "/api/v1/tasks"
    from bench.baseline_api import app

    return app, "/tasks"


def drive(app: WSGIApp, path: str, key: str, requests: int) -> None:
    """Send `requests` POSTs and check every answer is a 201."""
    statuses: list[str] = []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> None:
        statuses.append(status)

    for _ in range(requests):
        body = app(environ(path, key), start_response)
        b"".join(body)
        close = getattr(body, "close", None)
        if close is not None:
            close()
    bad = [s for s in statuses if not s.startswith("201")]
    if bad:
        raise SystemExit(f"{len(bad)} of {requests} requests were not 201: {bad[:3]}")


def child(
    target: str, requests: int, warmup: int, profile: str, pause: bool, wall_clock: bool = False
) -> None:
    """Run inside the prepared environment: warm up, then time `requests` submits.

    With `pause` (under callgrind), say READY after the warm-up and DONE after the requests,
    each time waiting for a line on stdin, so the parent can zero and dump the counters.
    """
    key = os.environ["BENCH_API_KEY"]
    app, path = load_app(target)
    services = getattr(app, "extensions", {}).get("taskexec")
    window = services.window if services is not None else None
    if pause and window is not None:
        # The dispatch window's room is read again after 50 ms of wall time: every request
        # under valgrind (~50x slower), once per 15-20 requests at full speed. Read once here,
        # so the count holds what every request does and does not depend on valgrind's pace.
        window.open_ttl = 3600.0
    drive(app, path, key, warmup)
    if pause:
        print("READY", flush=True)
        sys.stdin.readline()
    # The CPU clock by default (waits left out); the wall clock for a one-request latency.
    clock = time.perf_counter if wall_clock else time.process_time
    profiler = cProfile.Profile(clock) if profile else None
    if profiler is not None:
        profiler.enable()
    cpu, wall = time.process_time(), time.perf_counter()
    drive(app, path, key, requests)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    if pause:
        print("DONE", flush=True)
        sys.stdin.readline()
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(profile + ".prof")  # for pstats' callers and callees
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(60)
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(40)
        Path(profile).write_text(out.getvalue())
    print(json.dumps({"cpu_ms": cpu * 1000 / requests, "wall_ms": wall * 1000 / requests}))


def _child_env(stack: Stack) -> dict[str, str]:
    env = stack.env({"BENCH_API_KEY": stack.api_key, "TASKEXEC_DISPATCH_WINDOW_MIN": "100000000"})
    env["TASKEXEC_LOG_LEVEL"] = "WARNING"
    return env


def _run_child(stack: Stack, args: list[str]) -> str:
    cmd = [sys.executable, "-m", "bench.hotpath", "--child", *args]
    done = subprocess.run(
        cmd, cwd=ROOT, env=_child_env(stack), capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}{done.stderr[-4000:]}")
    return done.stdout


def instructions(stack: Stack, target: str, requests: int, workdir: Path) -> int:
    """Instructions of `requests` submits after a warm-up, counted by callgrind.

    The child runs under valgrind and pauses after its warm-up and after the requests; the
    counters are zeroed at the first pause and dumped at the second, so start-up and warm-up
    are not in the count.
    """
    out = workdir / f"callgrind-{target}.out"
    env = _child_env(stack)
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable]
    cmd += ["-m", "bench.hotpath", "--child", target, "--requests", str(requests)]
    cmd += ["--warmup", "20", "--pause"]
    with subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # valgrind's banner
        text=True,
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None

        def until(word: str) -> None:
            for line in proc.stdout:  # type: ignore[union-attr]
                if line.strip() == word:
                    return
            raise SystemExit(f"the callgrind child of {target} exited before {word}")

        until("READY")
        subprocess.run(["callgrind_control", "-z", str(proc.pid)], check=True, capture_output=True)
        proc.stdin.write("\n")
        proc.stdin.flush()
        until("DONE")
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True, capture_output=True)
        proc.stdin.write("\n")
        proc.stdin.flush()
        proc.wait()
    dumps = sorted(workdir.glob(f"callgrind-{target}.out.*"), key=lambda p: p.stat().st_mtime)
    if not dumps:
        raise SystemExit(f"no callgrind dump for {target} in {workdir}")
    text = dumps[0].read_text(errors="replace")
    match = re.search(r"^(?:summary|totals):\s*(\d+)", text, re.MULTILINE)
    if match is None:
        raise SystemExit(f"no totals in {dumps[0]}")
    return int(match.group(1)) // requests


def main(argv: list[str] | None = None) -> None:
    """Parse the command line; run the children against a fresh stack."""
    p = argparse.ArgumentParser(prog="python -m bench.hotpath", description=__doc__)
    p.add_argument("targets", nargs="*", help="service, flask (default: both)")
    p.add_argument("--requests", type=int, default=2000, help="timed requests per round")
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds per target")
    p.add_argument("--callgrind", action="store_true", help="count instructions instead")
    p.add_argument("--profile", default="", help="write a cProfile of the service here")
    p.add_argument("--wall", action="store_true", help="profile on the wall clock (waits included)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--pause", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    targets = args.targets or list(TARGETS)
    if set(targets) - set(TARGETS):
        p.error(f"targets are {', '.join(TARGETS)}")
    if args.child:
        child(targets[0], args.requests, args.warmup, args.profile, args.pause, args.wall)
        return
    with tempfile.TemporaryDirectory(prefix="taskexec-hotpath-") as tmp:
        stack = Stack(Path(tmp), api_workers=1, api_threads=1)
        try:
            stack.start_backends()
            print(f"# load average {_load()}", flush=True)
            if args.callgrind:
                per: dict[str, int] = {}
                for target in targets:
                    per[target] = instructions(stack, target, args.requests, Path(tmp))
                    print(f"{target}: {per[target]:,} instructions per request", flush=True)
                    stack.reset()
                if len(per) == 2:
                    print(f"service / flask: {per['service'] / per['flask']:.2f}x")
                return
            results: dict[str, list[float]] = {t: [] for t in targets}
            for _ in range(args.rounds):
                for target in targets:
                    profiled = args.profile and target == "service"
                    extra = ["--profile", args.profile] if profiled else []
                    extra += ["--wall"] if profiled and args.wall else []
                    line = _run_child(
                        stack,
                        [target, "--requests", str(args.requests), "--warmup", str(args.warmup)]
                        + extra,
                    )
                    results[target].append(json.loads(line.strip().splitlines()[-1])["cpu_ms"])
                    stack.reset()
            for target, values in results.items():
                shown = ", ".join(f"{v:.3f}" for v in values)
                print(f"{target}: {min(values):.3f} ms CPU per request (min of {shown})")
            if len(results) == 2:
                ratio = min(results["service"]) / min(results["flask"])
                print(f"service / flask: {ratio:.2f}x")
            print(f"# load average {_load()}")
        finally:
            with contextlib.suppress(Exception):
                stack.close()


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


if __name__ == "__main__":
    main()

"""The benchmark runner: `python -m bench` starts everything, prints one line per figure."""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench import http_submit, listing, peers, profiler
from bench.http_submit import SubmitSettings
from bench.report import Report
from bench.stack import OPEN_WINDOW, SERVICE_QUEUE, Stack
from bench.usage import Memory

FIGURES = ("submit", "e2e", "latency", "delayed", "listing", "memory")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; --quick shrinks every count."""
    cores = os.cpu_count() or 1
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--only", action="append", choices=FIGURES, help="run only these figures")
    p.add_argument("--skip-listing", action="store_true", help="do not run bench/list_tasks.py")
    p.add_argument("--listing-requests", type=int, default=100, help="per listing figure")
    p.add_argument(
        "--budget", type=float, default=570.0, help="seconds; the listing gets what is left"
    )
    p.add_argument("--quick", action="store_true", help="small counts, for trying the suite")
    p.add_argument("--duration", type=float, default=12.0, help="seconds of load per target")
    p.add_argument("--rounds", type=int, default=3, help="turns the submit targets take")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--python-load", action="store_true", help="use the Python load generator")
    p.add_argument("--tasks", type=int, default=1000, help="tasks per end-to-end variant")
    p.add_argument("--clients", type=int, default=8, help="producer processes end to end")
    p.add_argument("--e2e-timeout", type=float, default=60.0, help="cap per variant and turn")
    p.add_argument("--e2e-rounds", type=int, default=2, help="turns the end-to-end variants take")
    p.add_argument("--concurrency", type=int, default=2 * cores, help="worker pool children")
    p.add_argument("--repetitions", type=int, default=50, help="samples per latency")
    p.add_argument("--delayed-tasks", type=int, default=200, help="delayed tasks timed")
    # config/gunicorn.py's own defaults: one process per core, 8 threads each.
    p.add_argument("--api-workers", type=int, default=cores, help="GUNICORN_WORKERS")
    p.add_argument("--api-threads", type=int, default=8, help="GUNICORN_THREADS")
    p.add_argument("--no-profile", dest="profile", action="store_false")
    p.add_argument("--profile-seconds", type=float, default=6.0)
    p.add_argument("--private-postgres", action="store_true", help="never use 127.0.0.1:5432")
    p.add_argument(
        "--peers",
        type=Path,
        help="a results-*.jsonl of ../shared/peers/run_peers.py: bulk end to end beside its Celery",
    )
    p.add_argument(
        "--run-peers",
        action="store_true",
        help="run the peers' Celery and huey (e2e with a PG update, --tasks jobs) before e2e",
    )
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--keep", action="store_true", help="keep logs and profiles after the run")
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.warmup, args.tasks, args.repetitions = 4.0, 1.0, 300, 10
        args.delayed_tasks = 50
        args.rounds = 2
        args.profile_seconds = 3.0
    return args


def machine(stack: Stack) -> dict[str, str]:
    """What the figures were measured on."""
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    info = {
        "cpus": str(os.cpu_count()),
        "memory": f"{mem_kib / 1024 / 1024:.1f} GiB",
        "python": platform.python_version(),
        "kernel": platform.release(),
        "load_before": _load(),
        "load_generator": "wrk" if shutil.which("wrk") else "python",
        "py-spy": profiler.available() or "absent",
    }
    info.update(stack.versions())
    return info


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main(argv: list[str] | None = None) -> int:
    """Start everything, measure each selected figure, stop everything."""
    args = parse_args(argv)
    selected = set(args.only or FIGURES)
    if args.skip_listing:
        selected.discard("listing")
    workdir = Path(tempfile.mkdtemp(prefix="taskexec-bench-"))
    report = Report()
    memory = Memory()
    stack = Stack(
        workdir,
        api_workers=args.api_workers,
        api_threads=args.api_threads,
        private_postgres=args.private_postgres,
    )
    began = time.monotonic()
    try:
        stack.start_backends()
        # The baseline app reads its settings at import, in this process and in forked producers.
        os.environ.update(
            {
                k: v
                for k, v in stack.env().items()
                if k.startswith(("DATABASE_", "REDIS_", "TASKEXEC_"))
            }
        )
        # Imported only now: the raw-Celery baseline reads DATABASE_URL and REDIS_URL at import.
        from bench import delayed, end_to_end, latency

        report.meta["machine"] = machine(stack)
        for key, value in report.meta["machine"].items():
            report.info(f"{key}: {value}")
        report.info(
            f"api: gunicorn {args.api_workers} workers x {args.api_threads} threads; "
            f"worker: prefork --concurrency {args.concurrency}"
        )
        api, api_url = stack.start_gunicorn("api", "api.wsgi:app")
        mark = time.monotonic()

        def phase(name: str) -> None:
            nonlocal mark
            report.info(f"{name} took {time.monotonic() - mark:.0f}s; load average: {_load()}")
            mark = time.monotonic()

        # The submit figure and the API's profile run no worker: an API whose dispatch window
        # stays open publishes every submission, as the baselines do (stack.OPEN_WINDOW).
        submit_api, submit_url = api, api_url
        if "submit" in selected or args.profile:
            submit_api, submit_url = stack.start_gunicorn("api-submit", "api.wsgi:app", OPEN_WINDOW)
        if "submit" in selected:
            cfg = SubmitSettings(
                args.connections, args.duration, args.warmup, not args.python_load, args.rounds
            )
            http_submit.run(stack, report, submit_api, submit_url, cfg, memory)
            phase("submit")
        if "e2e" in selected:
            e2e = end_to_end.EndToEndSettings(
                args.tasks, args.clients, 100, args.concurrency, args.e2e_timeout, args.e2e_rounds
            )
            if args.run_peers:  # in the same sitting, right before the service's turns
                args.peers = peers.run(workdir / "peers", max(args.tasks, 5000))
                phase("peers")
            end_to_end.run(stack, report, api, api_url, e2e, memory)
            phase("end-to-end")
            if args.peers:
                peers.compare(report, args.peers)
        if "latency" in selected:
            lat = latency.LatencySettings(args.repetitions, args.concurrency)
            latency.run(stack, report, api_url, lat)
            phase("latency")
        if "delayed" in selected:
            late = delayed.DelayedSettings(args.delayed_tasks, concurrency=args.concurrency)
            delayed.run(stack, report, api_url, late)
            phase("delayed")
        if "memory" in selected:
            memory.child("service gunicorn worker", api.pid)
            _memory_figures(report, memory)
        if args.profile and profiler.available():
            _profile(stack, report, submit_api.pid, submit_url, args, workdir)
            phase("profile")
        if "listing" in selected:
            left = args.budget - (time.monotonic() - began)
            listing.run(stack, report, left, args.listing_requests)
            phase("listing")
        report.meta["load_after"] = _load()
        report.meta["seconds"] = round(time.monotonic() - began, 1)
        report.info(f"done in {report.meta['seconds']:.0f}s; load average after: {_load()}")
    finally:
        stack.close()
        report.save(args.json or workdir / "results.json")
        if not args.keep and not args.json:
            shutil.rmtree(workdir, ignore_errors=True)
        elif args.keep:
            print(f"# logs and profiles kept in {workdir}", file=sys.stderr)
    return 0


def _memory_figures(report: Report, memory: Memory) -> None:
    api = memory.get("service gunicorn worker")
    report.figure(
        "baseline.flask.gunicorn_worker.rss", memory.get("flask baseline gunicorn worker"), "MiB"
    )
    report.figure("baseline.flower.process.rss", memory.get("flower"), "MiB")
    report.figure("baseline.raw-celery.pool_child.rss", memory.get("raw Celery pool child"), "MiB")
    report.figure(
        "memory.api_worker.rss",
        api,
        "MiB",
        baselines=[
            ("flask baseline worker", memory.get("flask baseline gunicorn worker")),
            ("flower", memory.get("flower")),
        ],
    )
    report.figure(
        "memory.worker_child.rss",
        memory.get("service worker pool child"),
        "MiB",
        baselines=[("raw celery child", memory.get("raw Celery pool child"))],
    )


def _profile(
    stack: Stack,
    report: Report,
    api_pid: int,
    api_url: str,
    args: argparse.Namespace,
    workdir: Path,
) -> None:
    """Sample the API workers under submit load and the pool children under a bulk run.

    Two passes each with py-spy: wall time (waits included) and GIL-holding time (Python CPU),
    both restricted to the stacks inside a request or a task.
    """
    from bench import end_to_end

    seconds = args.profile_seconds
    lines: list[str] = []
    for mode in ("wall", "gil"):
        out = workdir / f"api-{mode}.txt"
        spy = profiler.start(api_pid, seconds, out, mode=mode, subprocesses=True)
        time.sleep(0.5)
        http_submit.http_load(
            api_url + "/api/v1/tasks",
            http_submit.SERVICE_BODY,
            stack.api_key,
            args.connections,
            seconds,
            not args.python_load,
        )
        spy.wait(seconds + 30)
        lines += profiler.render(
            f"API workers under submit load, {mode} time inside requests",
            profiler.Profile.load(out, ("full_dispatch_request",)),
        )
    stack.reset()
    worker = stack.start_worker("worker", "workers.celery_app", SERVICE_QUEUE, args.concurrency)
    try:
        n = args.tasks
        split = [n // args.clients + (i < n % args.clients) for i in range(args.clients)]
        count = end_to_end.rows_done(stack, end_to_end.COMPLETED_TASKS)
        fan_args = [(api_url, stack.api_key, c, 100) for c in split]
        for mode in ("wall", "gil"):
            out = workdir / f"worker-{mode}.txt"
            spy = profiler.start(worker.pid, seconds, out, mode=mode, subprocesses=True)
            time.sleep(0.5)
            end_to_end.measure(
                end_to_end.bulk_submits, fan_args, lambda _: count(), n, seconds + 0.5
            )
            spy.wait(seconds + 30)
            stack.reset()
            lines += profiler.render(
                f"Celery pool children during bulk end-to-end, {mode} time inside tasks",
                profiler.Profile.load(out, ("trace_task",)),
            )
    finally:
        stack.stop(worker)
        stack.reset()
    report.meta["profile"] = lines
    for line in lines:
        report.info(line)

"""CPU per claim and finish, the worker's two ledger writes per task: its own and Postgres's.

    .venv/bin/python -m bench.claim_finish                # 3000 tasks, 3 rounds
    .venv/bin/python -m bench.claim_finish --plain        # without prepared statements

One process claims and finishes tasks one after another on two autocommit connections, as a
worker child does (the claim's without waiting for the WAL flush), against a fresh database.
It reads its own CPU time and each connection's backend's from /proc: figures the machine's
load changes little, unlike throughput. The first round warms up (connections, caches).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from pathlib import Path

import psycopg2

from bench.stack import Stack
from shared import store
from shared.status import Status
from shared.store import attempts

_TICK = os.sysconf("SC_CLK_TCK")


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _echo() -> store.NewTask:
    """A PENDING echo task as a submission writes it."""
    return store.NewTask(
        id=uuid.uuid4(),
        owner="bench",
        task_definition_id="echo",
        definition_version="1.0.0",
        workflow_instance_id=None,
        type="AUTOMATED",
        priority=1,
        executor="standard-executor",
        input={"message": "hello", "n": 1},
        timeout_ms=60_000,
        retry_policy={},
    )


def _backend(conn: psycopg2.extensions.connection) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        return int(cur.fetchone()[0])  # type: ignore[index]


def main(argv: list[str] | None = None) -> None:
    """Claim and finish `--tasks` tasks per round; print the CPU per task of each side."""
    p = argparse.ArgumentParser(prog="python -m bench.claim_finish", description=__doc__)
    p.add_argument("--tasks", type=int, default=3000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--plain", action="store_true", help="no prepared statements")
    args = p.parse_args(argv)
    attempts._Prepared.plain_only = args.plain
    stack = Stack(Path(tempfile.mkdtemp(prefix="claim-finish-")), api_workers=1, api_threads=1)
    try:
        stack.start_backends()  # a local Postgres must answer (see bench/stack.py)
        claims = psycopg2.connect(stack.database_url, options="-c synchronous_commit=off")
        finishes = psycopg2.connect(stack.database_url)
        claims.autocommit = finishes.autocommit = True
        backends = {"claim": _backend(claims), "finish": _backend(finishes)}
        pid = os.getpid()
        for turn in range(args.rounds):
            stack.reset()
            rows = [_echo() for _ in range(args.tasks)]
            with psycopg2.connect(stack.database_url) as conn:
                store.insert_tasks(conn, rows)
            before = {k: _cpu(b) for k, b in backends.items()}
            mine = time.process_time()
            for row in rows:
                task = store.claim_task(claims, row.id, "bench", pid, 30.0)
                assert task is not None
                done = store.finish_attempt(
                    finishes, row.id, task.attempts, Status.COMPLETED, output=task.input
                )
                assert done
            us = {k: (_cpu(b) - before[k]) * 1e6 / args.tasks for k, b in backends.items()}
            client = (time.process_time() - mine) * 1e6 / args.tasks
            print(
                f"round {turn}{' (warm-up)' if turn == 0 else ''}: CPU per task: client"
                f" {client:.0f} us; Postgres backend: claim {us['claim']:.0f} us,"
                f" finish {us['finish']:.0f} us; load {os.getloadavg()[0]:.1f}",
                flush=True,
            )
        claims.close()
        finishes.close()
    finally:
        stack.close()


if __name__ == "__main__":
    main()

"""How the client commands print: aligned tables for people, JSON for scripts."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import click


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Align `rows` under `headers` in columns separated by two spaces."""
    cells = [[str(h) for h in headers]] + [["-" if v is None else str(v) for v in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in cells
    )


def fields(pairs: Sequence[tuple[str, Any]]) -> str:
    """Print `label  value` lines, labels aligned; None values are skipped."""
    shown = [(k, v) for k, v in pairs if v is not None]
    width = max((len(k) for k, _ in shown), default=0)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in shown)


def compact(value: Any) -> str | None:
    """One-line JSON for a field value (None stays None)."""
    return None if value is None else json.dumps(value, separators=(", ", ": "))


def task_label(task: dict[str, Any]) -> str:
    """A task's live status line: status, attempt, progress."""
    label = str(task.get("status"))
    attempts = (task.get("executionMetadata") or {}).get("attempts") or 0
    if attempts > 1:
        label += f" (attempt {attempts})"
    progress = task.get("progress") or {}
    if task.get("status") == "RUNNING" and progress.get("fraction") is not None:
        label += f" {round(100 * progress['fraction'])}%"
        if progress.get("message"):
            label += f" {progress['message']}"
    return label


def job_label(status: dict[str, Any]) -> str:
    """A Task API job's live status line, in Cortex's words (`status_running` -> running)."""
    return str(status.get("status", "status_unknown")).removeprefix("status_").replace("_", " ")


class Printer:
    """Prints each kind of response as a table or as JSON (`-o json`)."""

    def __init__(self, output: str) -> None:
        self.json = output == "json"

    def _emit(self, doc: Any, text: str) -> None:
        click.echo(json.dumps(doc, indent=2) if self.json else text)

    def submitted(self, created: dict[str, Any]) -> None:
        self._emit(
            created,
            fields(
                [
                    ("ID", created["id"]),
                    ("STATUS", created["status"]),
                    ("CREATED", created.get("createdAt")),
                ]
            ),
        )

    def task(self, task: dict[str, Any]) -> None:
        meta = task.get("executionMetadata") or {}
        error = task.get("error")
        duration = meta.get("duration")
        self._emit(
            task,
            fields(
                [
                    ("ID", task["id"]),
                    ("DEFINITION", task["taskDefinitionId"]),
                    ("VERSION", task.get("definitionVersion")),
                    ("STATUS", task["status"]),
                    ("PRIORITY", task.get("priority")),
                    ("WORKFLOW", task.get("workflowInstanceId")),
                    ("CREATED", task.get("createdAt")),
                    ("STARTED", meta.get("startTime")),
                    ("ENDED", meta.get("endTime")),
                    ("DURATION", None if duration is None else f"{duration} ms"),
                    ("ATTEMPTS", meta.get("attempts")),
                    ("WORKER", meta.get("executionEnvironment")),
                    ("INPUT", compact(task.get("input"))),
                    ("OUTPUT", compact(task.get("output"))),
                    (
                        "ERROR",
                        error
                        and f"{error.get('code')} ({error.get('kind')}): {error.get('message')}",
                    ),
                ]
            ),
        )

    def job(self, doc: dict[str, Any]) -> None:
        status = doc["job_status"]
        self._emit(
            doc,
            fields(
                [
                    ("job id", status["job_id"]),
                    ("api", f"{status['api_name']} ({status['api_id']})"),
                    ("status", job_label(status)),
                    ("config", compact(status.get("config"))),
                    ("created time", status.get("created_time")),
                    ("start time", status.get("start_time")),
                    ("end time", status.get("end_time")),
                    ("job endpoint", f"{doc['endpoint']}/{status['job_id']}"),
                ]
            ),
        )

    def cancelled(self, doc: dict[str, Any]) -> None:
        self._emit(doc, f"{doc['id']} {doc['status']} at {doc.get('updatedAt')}")

    def message(self, doc: dict[str, Any]) -> None:
        self._emit(doc, str(doc.get("message")))

    def tasks(self, doc: dict[str, Any]) -> None:
        rows = [
            (
                t["id"],
                t["taskDefinitionId"],
                t["status"],
                t.get("priority"),
                t.get("workflowInstanceId"),
                t.get("createdAt"),
            )
            for t in doc["items"]
        ]
        headers = ("ID", "DEFINITION", "STATUS", "PRIORITY", "WORKFLOW", "CREATED")
        self._emit(doc, table(headers, rows) + "\n" + _pages(doc["pagination"], "task"))

    def definitions(self, doc: dict[str, Any]) -> None:
        rows = [
            (d["id"], d["type"], d["version"], d["name"], d.get("description"))
            for d in doc["items"]
        ]
        headers = ("ID", "TYPE", "VERSION", "NAME", "DESCRIPTION")
        self._emit(doc, table(headers, rows) + "\n" + _pages(doc["pagination"], "definition"))

    def definition(self, d: dict[str, Any]) -> None:
        config = d.get("executionConfig") or {}
        self._emit(
            d,
            fields(
                [
                    ("ID", d["id"]),
                    ("NAME", d["name"]),
                    ("DESCRIPTION", d.get("description")),
                    ("TYPE", d["type"]),
                    ("VERSION", d["version"]),
                    ("EXECUTOR", config.get("executor")),
                    ("TIMEOUT", f"{d.get('timeout')} ms"),
                    ("RETRY POLICY", compact(d.get("retryPolicy"))),
                    ("RESOURCES", compact(config.get("resourceRequirements"))),
                    ("DEFAULT CONFIG", compact(d.get("defaultConfig"))),
                    ("INPUT SCHEMA", compact(d.get("inputSchema"))),
                    ("OUTPUT SCHEMA", compact(d.get("outputSchema"))),
                ]
            ),
        )


def _pages(pagination: dict[str, Any], noun: str) -> str:
    total = pagination.get("totalItems")
    return (
        f"page {pagination['page']} of {max(pagination.get('totalPages') or 1, 1)}"
        f", {total} {noun}{'' if total == 1 else 's'}"
    )

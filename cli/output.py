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


def waiting_label(task: dict[str, Any]) -> str | None:
    """Why a waiting task waits: its pendingReason, with the limit or its queue position."""
    reason = task.get("pendingReason")
    if reason is None:
        return None
    details = task.get("pendingDetails") or {}
    if reason == "CONCURRENCY_LIMIT" and details:
        named = details.get("key") or details.get("taskDefinitionId")
        limit = details.get("limit", "")
        return f"{reason} ({limit}{' ' + str(named) if named else ''}, max {details.get('max')})"
    if reason == "QUEUED" and task.get("queuePosition") is not None:
        return f"{reason} (position {task['queuePosition']})"
    return str(reason)


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
        duration = meta.get("duration")
        self._emit(
            task,
            fields(
                [
                    ("ID", task["id"]),
                    ("DEFINITION", task["taskDefinitionId"]),
                    ("VERSION", task.get("definitionVersion")),
                    ("STATUS", task["status"]),
                    ("WAITING", waiting_label(task)),
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
                    ("ERROR", _error(task.get("error"))),
                    ("CANCEL", _cancel(task.get("cancellation"))),
                ]
            )
            + _attempts(task.get("attempts") or []),
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

    def task_apis(self, doc: dict[str, Any]) -> None:
        """Every Task API, as `cortex get` lists them."""
        rows = [
            (
                api["api_spec"]["name"],
                len(api["task_job_statuses"]),
                api["task_job_statuses"][0]["job_id"] if api["task_job_statuses"] else None,
                api["endpoint"],
            )
            for api in doc["items"]
        ]
        headers = ("task api", "running jobs", "latest job id", "endpoint")
        self._emit(doc, table(headers, rows) if rows else "no task apis")

    def task_api(self, doc: dict[str, Any]) -> None:
        """One Task API and its jobs, in progress then recently finished (`cortex get NAME`)."""
        jobs = doc["task_job_statuses"] + doc["recent_job_statuses"]
        rows = [(j["job_id"], job_label(j), j.get("start_time"), j.get("end_time")) for j in jobs]
        listed = table(("job id", "status", "start time", "end time"), rows) if rows else "no jobs"
        spec = doc["api_spec"]
        self._emit(
            doc,
            f"task api  {spec['name']} ({spec['id']})\n\n{listed}\n\nendpoint: {doc['endpoint']}",
        )

    def log_line(self, line: dict[str, Any]) -> None:
        """One line of a task's log (with -o json, one JSON object a line)."""
        if self.json:
            click.echo(json.dumps(line))
        else:
            click.echo(
                f"{line['createdAt']} #{line['attempt']} {line['level']:<7} {line['message']}"
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
                t.get("pendingReason"),
                t.get("priority"),
                t.get("workflowInstanceId"),
                t.get("createdAt"),
            )
            for t in doc["items"]
        ]
        headers = ("ID", "DEFINITION", "STATUS", "WAITING", "PRIORITY", "WORKFLOW", "CREATED")
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


def _error(error: dict[str, Any] | None) -> str | None:
    """`CODE (KIND): message`, or None when there is no error."""
    if not error:
        return None
    return f"{error.get('code')} ({error.get('kind')}): {error.get('message')}"


def _cancel(cancellation: dict[str, Any] | None) -> str | None:
    """Who cancelled, when, whether forced, and why."""
    if not cancellation:
        return None
    forced = ", forced" if cancellation.get("force") else ""
    reason = cancellation.get("reason") or "no reason given"
    return f"by {cancellation.get('by')} at {cancellation.get('requestedAt')}{forced}: {reason}"


def _attempts(attempts: list[dict[str, Any]]) -> str:
    """Each attempt's outcome and error, as a table after the task's fields."""
    if not attempts:
        return ""
    rows = [
        (
            a["attempt"],
            a["status"],
            a.get("startTime"),
            a.get("endTime"),
            a.get("executionEnvironment"),
            _error(a.get("error")),
        )
        for a in attempts
    ]
    headers = ("ATTEMPT", "OUTCOME", "STARTED", "ENDED", "WORKER", "ERROR")
    return "\n\n" + table(headers, rows)


def _pages(pagination: dict[str, Any], noun: str) -> str:
    total = pagination.get("totalItems")
    return (
        f"page {pagination['page']} of {max(pagination.get('totalPages') or 1, 1)}"
        f", {total} {noun}{'' if total == 1 else 's'}"
    )

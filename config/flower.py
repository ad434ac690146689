"""Flower settings, read by `taskexec flower` (`--conf=config/flower.py`); credentials come from
TASKEXEC_FLOWER_BASIC_AUTH, never from this file."""

# Flower keeps every worker and task it has seen in memory: bound both.
max_workers = 1000
max_tasks = 20000

# Worker pools scale in and out; forget a worker an hour after it went offline.
purge_offline_workers = 3600

# Tasks show under their Celery name, `taskexec.<definition id>`, and their Celery id, which is
# the service's task id: those two first, so a task found in Flower is found in the API.
tasks_columns = "name,uuid,state,result,received,started,runtime,worker,retries"
natural_time = False

# Watch-only: a revoke or a pool change made in Flower would bypass the ledger. Cancel through
# the API (`POST /api/v1/tasks/{id}/cancel`), which records the cancel and then stops the attempt.
read_only = True

"""prometheus_client's multiprocess directory: made and emptied at start, marked when shared.

Every process that counts into the directory writes files there, and a scrape adds up all of
them, so whoever starts the processes owns the directory: gunicorn's master for the API
(config/gunicorn.py), `taskexec dev` for all its processes at once, each worker for its pool.
"""

from __future__ import annotations

from pathlib import Path

#: A file in a directory that every process of one service counts into (`taskexec dev`): a
#: worker then counts there instead of in a private directory, and gunicorn leaves it be.
SHARED_MARKER = "taskexec-shared"


def empty(directory: str | Path) -> str:
    """Make `directory` if missing and delete the metric files a previous run left in it."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink(missing_ok=True)
    return str(path)


def share(directory: str | Path) -> str:
    """Empty `directory` and mark it as counted into by every process of one service."""
    empty(directory)
    (Path(directory) / SHARED_MARKER).touch()
    return str(directory)


def is_shared(directory: str) -> bool:
    """Say whether `directory` was marked by `share` (an empty string never is)."""
    return bool(directory) and (Path(directory) / SHARED_MARKER).is_file()

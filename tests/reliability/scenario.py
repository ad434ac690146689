"""What the fault suite's tests import: one scenario's system, and the soak-mode scale."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from config.settings import Settings
from tests.reliability.cluster import Cluster, Servers
from tests.reliability.ledger import Ledger

#: TASKEXEC_SOAK=1 multiplies task counts and fault rounds by 5; TASKEXEC_SOAK=N by N.
_SOAK = int(os.environ.get("TASKEXEC_SOAK") or 0)
FACTOR = 1 if _SOAK <= 0 else (5 if _SOAK == 1 else _SOAK)


def scaled(count: int) -> int:
    """Scale a task count or a number of fault rounds for soak mode."""
    return count * FACTOR


@dataclass
class Scenario:
    """One scenario's system: servers, settings, the API app, the worker processes."""

    servers: Servers
    settings: Settings
    app: Any
    cluster: Cluster
    headers: dict[str, str]

    def ledger(self, name: str) -> Ledger:
        return Ledger(name, self.app, self.headers, self.settings)

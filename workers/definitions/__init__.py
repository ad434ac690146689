"""The built-in task definitions, one module per domain, gathered in one registry."""

from __future__ import annotations

import importlib

from shared.definitions import Registry
from workers.definitions import manual, orders, payments, testing


def builtin_registry() -> Registry:
    """Return a fresh registry holding every built-in definition."""
    return Registry(
        [
            orders.CALCULATE_ORDER_TOTAL,
            payments.PROCESS_PAYMENT,
            manual.APPROVE_ORDER,
            *testing.DEFINITIONS,
        ]
    )


def load_registry(modules: str = "") -> Registry:
    """The built-in definitions plus those of the comma-separated `modules`.

    Each module exposes `DEFINITIONS`, an iterable of TaskDefinition (TASKEXEC_DEFINITION_MODULES).
    """
    registry = builtin_registry()
    for name in filter(None, (n.strip() for n in modules.split(","))):
        for definition in importlib.import_module(name).DEFINITIONS:
            registry.add(definition)
    return registry

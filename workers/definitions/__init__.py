"""The built-in task definitions, one module per domain, gathered in one registry."""

from __future__ import annotations

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

"""The built-in task definitions, one module per domain, gathered in one registry."""

from __future__ import annotations

import importlib

from shared.definitions import Registry
from workers.definitions import manual, orders, payments

#: The diagnostic built-ins (echo, sleep, flaky, allocate-memory): loaded only when listed in
#: TASKEXEC_DEFINITION_MODULES, since `sleep` alone lets any tasks:execute principal hold a
#: worker slot for a day. `taskexec dev` and the tests list it.
DIAGNOSTICS = "workers.definitions.diagnostics"


def builtin_registry() -> Registry:
    """Return a fresh registry holding the definitions every deployment serves (the seed's)."""
    return Registry([orders.CALCULATE_ORDER_TOTAL, payments.PROCESS_PAYMENT, manual.APPROVE_ORDER])


def module_names(modules: str) -> list[str]:
    """Split a comma-separated TASKEXEC_DEFINITION_MODULES value, dropping blanks and repeats."""
    return list(dict.fromkeys(filter(None, (n.strip() for n in modules.split(",")))))


def with_diagnostics(modules: str) -> str:
    """Return `modules` with the diagnostic built-ins listed first (dev and tests)."""
    return ",".join(module_names(f"{DIAGNOSTICS},{modules}"))


def load_registry(modules: str = "") -> Registry:
    """The built-in definitions plus those of the comma-separated `modules`.

    Each module exposes `DEFINITIONS`, an iterable of TaskDefinition (TASKEXEC_DEFINITION_MODULES).
    """
    registry = builtin_registry()
    for name in module_names(modules):
        for definition in importlib.import_module(name).DEFINITIONS:
            registry.add(definition)
    return registry

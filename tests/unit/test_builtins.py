"""The built-in definitions' handlers, called directly (no Celery, no database)."""

from __future__ import annotations

import re

import pytest

from shared.errors import PermanentTaskError, RetryableTaskError, TaskCancelled
from shared.validation import check_schema, schema_errors
from workers.definitions import DIAGNOSTICS, builtin_registry, load_registry, with_diagnostics
from workers.definitions.diagnostics import allocate_memory, echo, flaky, sleep
from workers.definitions.orders import CALCULATE_ORDER_TOTAL, calculate_order_total
from workers.definitions.payments import PROCESS_PAYMENT, process_payment

SEED_INPUT = {
    "orderId": "ORD-123",
    "items": [
        {"id": "ITEM-1", "quantity": 2, "price": 10.99},
        {"id": "ITEM-2", "quantity": 1, "price": 24.99},
    ],
}


class FakeContext:
    """Just enough of TaskContext for a handler called directly."""

    def __init__(self, attempt: int = 1, cancelled: bool = False) -> None:
        self.task_id = "00000000-0000-0000-0000-000000000000"
        self.attempt = attempt
        self._cancelled = cancelled

    def cancelled(self) -> bool:
        return self._cancelled

    def check_cancelled(self) -> None:
        if self._cancelled:
            raise TaskCancelled("cancelled")

    def progress(self, fraction: float, message: str = "") -> None:
        pass

    def log(self, message: str, level: str = "INFO") -> None:
        pass


def order(*items: tuple[float, float]) -> dict:
    return {
        "orderId": "o",
        "items": [{"id": f"i{n}", "quantity": q, "price": p} for n, (q, p) in enumerate(items)],
    }


# ---------------------------------------------------------------- calculate-order-total


def test_the_seed_order_gives_exactly_the_seed_figures():
    output = calculate_order_total(SEED_INPUT, FakeContext())
    assert output == {"subtotal": 46.97, "tax": 3.76, "total": 50.73}
    assert all(type(v) is float for v in output.values())
    assert schema_errors(CALCULATE_ORDER_TOTAL.output_schema, output) == []


@pytest.mark.parametrize(
    ("items", "expected"),
    [
        # Half a cent rounds up (banker's rounding would give 0.00 and 1.00).
        (((1, 0.005),), {"subtotal": 0.01, "tax": 0.0, "total": 0.01}),
        (((3, 0.335),), {"subtotal": 1.01, "tax": 0.08, "total": 1.09}),
        # 2.675 is 2.67499999... as a float: the handler must use the decimal text.
        (((1, 2.675),), {"subtotal": 2.68, "tax": 0.21, "total": 2.89}),
        # Tax is rounded on its own: 0.69 * 8 % = 0.0552 -> 0.06.
        (((1, 0.69),), {"subtotal": 0.69, "tax": 0.06, "total": 0.75}),
        # 0.07 * 1e6 is 70000.00000000001 in floats.
        (((1_000_000, 0.07),), {"subtotal": 70000.0, "tax": 5600.0, "total": 75600.0}),
        (((0.5, 3.0), (2, 0.1), (3, 0.1)), {"subtotal": 2.0, "tax": 0.16, "total": 2.16}),
        ((), {"subtotal": 0.0, "tax": 0.0, "total": 0.0}),
    ],
)
def test_money_is_rounded_half_up_to_cents(items, expected):
    assert calculate_order_total(order(*items), FakeContext()) == expected


def test_a_large_order_is_computed_exactly_beyond_decimals_default_precision():
    output = calculate_order_total(order((10, 1e30)), FakeContext())
    assert output == {"subtotal": 1e31, "tax": 8e29, "total": 1.08e31}


@pytest.mark.parametrize("items", [((10, 1.7e308),), ((int("9" * 3000), 1.5),)])
def test_a_total_json_cannot_carry_fails_permanently(items):
    with pytest.raises(PermanentTaskError) as caught:
        calculate_order_total(order(*items), FakeContext())
    assert caught.value.retryable is False


def test_calculate_order_total_metadata_is_the_seeds():
    d = CALCULATE_ORDER_TOTAL
    assert (d.id, d.name, d.version, d.type.value) == (
        "calculate-order-total",
        "Calculate Order Total",
        "1.2.0",
        "AUTOMATED",
    )
    assert d.description == "Calculates the total price of an order including taxes"
    assert d.timeout_ms == 60_000
    assert d.retry_policy.to_json() == {
        "maxRetries": 3,
        "retryInterval": 60000,
        "backoffMultiplier": 2.0,
    }
    assert d.executor == "standard-executor"
    assert d.resource_requirements == {"cpu": "0.1", "memory": "128Mi", "timeoutSeconds": 60}
    assert schema_errors(d.input_schema, SEED_INPUT) == []


# ---------------------------------------------------------------- process-payment


def pay(**fields: object) -> dict:
    data = {"orderId": "ORD-1", "amount": 50.73, "currency": "USD", "latencyMs": 0, **fields}
    return process_payment(data, FakeContext())


def test_payment_is_approved_with_a_deterministic_transaction_id():
    first = pay()
    assert first["status"] == "APPROVED"
    assert re.fullmatch(r"txn_[0-9a-f]{20}", first["transactionId"])
    assert pay() == first
    assert pay(amount=50.74)["transactionId"] != first["transactionId"]
    assert pay(orderId="ORD-2")["transactionId"] != first["transactionId"]
    assert schema_errors(PROCESS_PAYMENT.output_schema, first) == []


def test_the_same_amount_written_differently_is_the_same_payment():
    assert pay(amount=10)["transactionId"] == pay(amount=10.0)["transactionId"]
    assert pay(amount=1e1)["transactionId"] == pay(amount=10)["transactionId"]


def test_an_unsupported_currency_fails_permanently():
    with pytest.raises(PermanentTaskError) as caught:
        pay(currency="XXX")
    assert caught.value.retryable is False
    assert caught.value.details == {"currency": "XXX"}
    assert "XXX" in caught.value.message


def test_a_cancelled_payment_stops_during_the_gateway_call():
    data = {"orderId": "o", "amount": 1, "currency": "USD", "latencyMs": 5000}
    with pytest.raises(TaskCancelled):
        process_payment(data, FakeContext(cancelled=True))


# ---------------------------------------------------------------- the small built-ins


def test_echo_returns_its_input():
    assert echo({"a": [1, {"b": None}]}, FakeContext()) == {"a": [1, {"b": None}]}


def test_sleep_sleeps_and_can_be_cancelled():
    assert sleep({"seconds": 0.01}, FakeContext())["slept"] >= 0.01
    with pytest.raises(TaskCancelled):
        sleep({"seconds": 60}, FakeContext(cancelled=True))


def test_flaky_fails_its_first_attempts_then_succeeds():
    for attempt in (1, 2):
        with pytest.raises(RetryableTaskError):
            flaky({"failTimes": 2}, FakeContext(attempt=attempt))
    assert flaky({"failTimes": 2}, FakeContext(attempt=3)) == {"attempts": 3}
    assert flaky({}, FakeContext(attempt=2)) == {"attempts": 2}  # failTimes defaults to 1


def test_allocate_memory_reports_what_it_allocated():
    assert allocate_memory({"megabytes": 2}, FakeContext()) == {"allocated": 2}


# ---------------------------------------------------------------- the registry


def test_the_six_builtins_of_the_design_exist():
    registry = load_registry(DIAGNOSTICS)
    expected = {
        "calculate-order-total": "AUTOMATED",
        "process-payment": "INTEGRATION",
        "echo": "AUTOMATED",
        "sleep": "AUTOMATED",
        "flaky": "AUTOMATED",
        "allocate-memory": "AUTOMATED",
    }
    for definition_id, kind in expected.items():
        definition = registry.get(definition_id)
        assert definition is not None, definition_id
        assert definition.type.value == kind
        assert definition.handler is not None
    assert registry.get("sleep").timeout_ms == 3_600_000
    assert registry.get("flaky").retry_policy.to_json() == {
        "maxRetries": 3,
        "retryInterval": 200,
        "backoffMultiplier": 2.0,
    }
    assert registry.get("allocate-memory").memory_limit == 128 * 2**20


def test_the_diagnostic_builtins_are_opt_in():
    served = {d.id for d in builtin_registry()}
    assert served == {"calculate-order-total", "process-payment", "approve-order"}
    assert {d.id for d in load_registry("")} == served
    assert {"echo", "sleep", "flaky", "allocate-memory"} <= {
        d.id for d in load_registry(DIAGNOSTICS)
    }


def test_with_diagnostics_lists_the_module_once():
    assert with_diagnostics("") == DIAGNOSTICS
    assert with_diagnostics("a.b, c") == f"{DIAGNOSTICS},a.b,c"
    assert with_diagnostics(f"x,{DIAGNOSTICS}") == f"{DIAGNOSTICS},x"
    assert len(load_registry(f"{DIAGNOSTICS},{DIAGNOSTICS}")) == len(load_registry(DIAGNOSTICS))


@pytest.mark.parametrize("definition", list(load_registry(DIAGNOSTICS)), ids=lambda d: d.id)
def test_every_builtin_has_valid_schemas_and_metadata(definition):
    check_schema(definition.input_schema)
    check_schema(definition.output_schema)
    assert definition.name and definition.description and definition.version
    assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", definition.id)
    assert definition.timeout_ms > 0

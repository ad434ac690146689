"""`calculate-order-total`: the seed's example definition."""

from __future__ import annotations

import math
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation, localcontext
from typing import Any

from shared.definitions import RetryPolicy, TaskContext, TaskDefinition
from shared.errors import PermanentTaskError
from shared.status import TaskType

TAX_RATE = Decimal("0.08")
CENT = Decimal("0.01")


def calculate_order_total(data: dict[str, Any], ctx: TaskContext) -> dict[str, float]:
    """Sum quantity x price, add 8 % tax; every figure rounded half-up to cents."""
    # Enough digits for any JSON number times another, to the cent: the default 28 would
    # make quantize() fail on a large order instead of computing it.
    try:
        with localcontext(prec=1000):
            # str() first: Decimal(10.99) would carry the float's binary error into the sum.
            subtotal = sum(
                (
                    Decimal(str(item["quantity"])) * Decimal(str(item["price"]))
                    for item in data["items"]
                ),
                Decimal(0),
            ).quantize(CENT, rounding=ROUND_HALF_UP)
            tax = (subtotal * TAX_RATE).quantize(CENT, rounding=ROUND_HALF_UP)
            figures = {"subtotal": subtotal, "tax": tax, "total": subtotal + tax}
        result = {name: float(value) for name, value in figures.items()}
    except InvalidOperation:
        result = {"total": math.inf}
    if not all(math.isfinite(value) for value in result.values()):
        # JSON (and Postgres) cannot carry it; retrying will not make it smaller.
        raise PermanentTaskError("the order total is too large to represent", {"field": "items"})
    return result


CALCULATE_ORDER_TOTAL = TaskDefinition(
    id="calculate-order-total",
    name="Calculate Order Total",
    description="Calculates the total price of an order including taxes",
    type=TaskType.AUTOMATED,
    version="1.2.0",
    input_schema={
        "type": "object",
        "properties": {
            "orderId": {"type": "string", "description": "Order identifier"},
            "items": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string"},
                        "quantity": {"type": "number", "minimum": 0},
                        "price": {"type": "number", "minimum": 0},
                    },
                    "required": ["id", "quantity", "price"],
                },
            },
        },
        "required": ["orderId", "items"],
    },
    output_schema={
        "type": "object",
        "properties": {
            "subtotal": {"type": "number"},
            "tax": {"type": "number"},
            "total": {"type": "number"},
        },
        "required": ["subtotal", "tax", "total"],
    },
    handler=calculate_order_total,
    timeout_ms=60_000,
    retry_policy=RetryPolicy(max_retries=3, retry_interval=60_000, backoff_multiplier=2),
    executor="standard-executor",
    security_context={"securityLevel": "LOW"},
    resource_requirements={"cpu": "0.1", "memory": "128Mi", "timeoutSeconds": 60},
)

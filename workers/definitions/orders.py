"""`calculate-order-total`: the seed's example definition."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from shared.definitions import RetryPolicy, TaskContext, TaskDefinition
from shared.status import TaskType

TAX_RATE = Decimal("0.08")
CENT = Decimal("0.01")


def _money(value: Decimal) -> float:
    return float(value.quantize(CENT, rounding=ROUND_HALF_UP))


def calculate_order_total(data: dict[str, Any], ctx: TaskContext) -> dict[str, float]:
    """Sum quantity x price, add 8 % tax; every figure rounded half-up to cents."""
    # str() first: Decimal(10.99) would carry the float's binary error into the sum.
    subtotal = sum(
        (Decimal(str(item["quantity"])) * Decimal(str(item["price"])) for item in data["items"]),
        Decimal(0),
    )
    subtotal = subtotal.quantize(CENT, rounding=ROUND_HALF_UP)
    tax = (subtotal * TAX_RATE).quantize(CENT, rounding=ROUND_HALF_UP)
    return {"subtotal": _money(subtotal), "tax": _money(tax), "total": _money(subtotal + tax)}


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

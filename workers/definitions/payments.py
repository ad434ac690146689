"""`process-payment`: a simulated payment gateway call."""

from __future__ import annotations

import hashlib
import time
from decimal import Decimal
from typing import Any

from shared.definitions import RetryPolicy, TaskContext, TaskDefinition
from shared.errors import PermanentTaskError
from shared.status import TaskType

SUPPORTED_CURRENCIES = frozenset({"USD", "EUR", "GBP", "JPY", "CHF", "CAD", "AUD"})


def process_payment(data: dict[str, Any], ctx: TaskContext) -> dict[str, str]:
    """Authorise a payment; the same order always gets the same transaction id."""
    latency = float(data.get("latencyMs", 50)) / 1000.0
    deadline = time.monotonic() + latency
    while time.monotonic() < deadline:
        ctx.check_cancelled()
        time.sleep(min(0.05, max(deadline - time.monotonic(), 0)))
    if data["currency"] not in SUPPORTED_CURRENCIES:
        # The gateway's answer will not change on a retry.
        raise PermanentTaskError(
            f"currency {data['currency']} is not supported by the gateway",
            {"currency": data["currency"]},
        )
    # 10, 10.0 and 1e1 are one amount in JSON: canonical text so they get one transaction id.
    amount = format(Decimal(str(data["amount"])).normalize(), "f")
    digest = hashlib.sha256(f"{data['orderId']}:{amount}".encode()).hexdigest()
    return {"transactionId": f"txn_{digest[:20]}", "status": "APPROVED"}


PROCESS_PAYMENT = TaskDefinition(
    id="process-payment",
    name="Process Payment",
    description="Processes payment through payment gateway",
    type=TaskType.INTEGRATION,
    version="1.0.5",
    input_schema={
        "type": "object",
        "properties": {
            "orderId": {"type": "string", "minLength": 1},
            "amount": {"type": "number", "exclusiveMinimum": 0},
            "currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
            "latencyMs": {"type": "number", "minimum": 0, "maximum": 60000},
        },
        "required": ["orderId", "amount", "currency"],
    },
    output_schema={
        "type": "object",
        "properties": {
            "transactionId": {"type": "string"},
            "status": {"type": "string", "enum": ["APPROVED", "DECLINED"]},
        },
        "required": ["transactionId", "status"],
    },
    handler=process_payment,
    timeout_ms=30_000,
    retry_policy=RetryPolicy(max_retries=3, retry_interval=1000, backoff_multiplier=2),
    executor="standard-executor",
    security_context={"securityLevel": "HIGH"},
    resource_requirements={"cpu": "0.1", "memory": "128Mi", "timeoutSeconds": 30},
)

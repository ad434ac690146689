"""`approve-order`: a manual task, completed by a person through the API."""

from __future__ import annotations

from shared.definitions import TaskDefinition
from shared.status import TaskType

APPROVE_ORDER = TaskDefinition(
    id="approve-order",
    name="Approve Order",
    description="Waits for a person to approve or reject an order",
    type=TaskType.MANUAL,
    version="1.0.0",
    input_schema={
        "type": "object",
        "properties": {"orderId": {"type": "string"}, "note": {"type": "string"}},
        "required": ["orderId"],
    },
    output_schema={
        "type": "object",
        "properties": {
            "approved": {"type": "boolean"},
            "approver": {"type": "string"},
            "comment": {"type": "string"},
        },
        "required": ["approved"],
    },
    handler=None,
    timeout_ms=7 * 24 * 3600 * 1000,
    executor="manual",
    security_context={"securityLevel": "MEDIUM"},
)

"""Alert delivery (docs/alerts.md): a client of the contract that POSTs the outbox's alerts
to their webhook destinations. `deliver_pending(client, ...)` is the one entry point; the
`control-room alerts deliver` command and any scheduler loop call it."""

from __future__ import annotations

from control_room.alerts.delivery import (
    ALERT_ID_HEADER,
    DeliveryReport,
    DestinationError,
    alert_body,
    deliver_pending,
    policy_from_environment,
    slack_body,
)

__all__ = [
    "ALERT_ID_HEADER",
    "DeliveryReport",
    "DestinationError",
    "alert_body",
    "deliver_pending",
    "policy_from_environment",
    "slack_body",
]

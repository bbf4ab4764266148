"""Operational checks: readiness (the Prometheus metrics are in api/ops/metrics.py)."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.orm import Session

from api.core.broker import broker_reachable


def readiness(session: Session) -> dict[str, str]:
    """{"database": "ok"|"unreachable", "broker": ...}."""
    checks = {}
    try:
        session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception:
        checks["database"] = "unreachable"
    checks["broker"] = "ok" if broker_reachable() else "unreachable"
    return checks

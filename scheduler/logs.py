"""Logging: plain or JSON lines, and secrets scrubbed from every record."""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Iterable

from .config import Settings

REDACTED = "***"


class SecretFilter(logging.Filter):
    """Replaces any known secret that reaches a log record, whatever logged it."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = record.getMessage()
            if any(secret in message for secret in self.secrets):
                for secret in self.secrets:
                    message = message.replace(secret, REDACTED)
                record.msg, record.args = message, None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "time": datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        payload.update(getattr(record, "fields", {}) or {})
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


def configure_logging(settings: Settings, secret_filter: SecretFilter | None = None) -> SecretFilter:
    secret_filter = secret_filter or SecretFilter()
    secret_filter.secrets = [s for s in secrets_of(settings) if s]
    handler = logging.StreamHandler(sys.stderr)
    if settings.logging.format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(secret_filter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.logging.level)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    return secret_filter


def secrets_of(settings: Settings) -> list[str]:
    found = [settings.insight.developer_key.get_secret_value(), settings.callbacks.secret.get_secret_value()]
    from sqlalchemy.engine import make_url

    try:
        password = make_url(settings.database.url).password
    except Exception:  # noqa: BLE001 - an unparseable URL is reported elsewhere
        password = None
    if password:
        found.append(str(password))
    return found

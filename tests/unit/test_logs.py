import json
import logging

from scheduler.config import build_settings
from scheduler.logs import JsonFormatter, SecretFilter, secrets_of


def record(msg, *args, **extra):
    rec = logging.LogRecord("scheduler.submission", logging.INFO, __file__, 1, msg, args, None)
    for k, v in extra.items():
        setattr(rec, k, v)
    return rec


def test_secret_filter_scrubs_any_message():
    settings = build_settings({"insight": {"developer_key": "k-123"},
                               "database": {"url": "postgresql+asyncpg://u:pg-pass@h/db"}})
    filt = SecretFilter(secrets_of(settings))
    rec = record("auth header for %s used %s", "k-123", "postgresql://u:pg-pass@h")
    filt.filter(rec)
    assert "k-123" not in rec.getMessage() and "pg-pass" not in rec.getMessage()
    assert "***" in rec.getMessage()


def test_json_lines_carry_the_submission_fields():
    rec = record("submission ok", fields={"campaign": 1, "chunk": 2, "status_code": 200, "outcome": "accepted"})
    line = json.loads(JsonFormatter().format(rec))
    assert line["campaign"] == 1 and line["outcome"] == "accepted" and line["level"] == "info"

"""Validated settings: config.yaml, then environment overrides, then pydantic.

Every problem is reported at once with its full key path
(``submission.chunk_size: must be >= 1``). The developer key is a ``SecretStr``
so it never shows up in a repr, a log line or an error message.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from . import windows
from .errors import ConfigError

CONFIG_ENV = "INSIGHT_SCHEDULER_CONFIG"
ENV_PREFIX = "INSIGHT_SCHEDULER__"
DEVELOPER_KEY_ENV = "INSIGHT_DEVELOPER_KEY"
CALLBACK_SECRET_ENV = "INSIGHT_CALLBACK_SECRET"
DEFAULT_CONFIG_PATH = "config.yaml"
DEFAULT_PHONE_COLUMNS = ["phone_number", "destination", "phone", "number"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DatabaseSettings(_Section):
    url: str = "sqlite+aiosqlite:///campaigns.db"


class InsightSettings(_Section):
    base_url: str = "https://insight.plumvoice.com/api"
    username: str = "you@yourdomain.com"
    developer_key: SecretStr = SecretStr("")
    timeout_seconds: float = Field(30.0, gt=0)
    connect_timeout_seconds: float = Field(10.0, gt=0)
    phone_column: str = Field("phone_number", min_length=1)
    # How numbers are written in the CSV sent to Plum: +16175551234, tel:+16175551234 or 16175551234.
    number_format: Literal["e164", "tel", "digits"] = "e164"
    reattempt_wait_min_seconds: int = Field(60, ge=0)
    reattempt_wait_max_seconds: int = Field(86400, ge=1)

    @model_validator(mode="after")
    def _wait_bounds(self) -> "InsightSettings":
        if self.reattempt_wait_max_seconds < self.reattempt_wait_min_seconds:
            raise ValueError("reattempt_wait_max_seconds must be >= reattempt_wait_min_seconds")
        return self


class RetrySettings(_Section):
    max_tries: int = Field(5, ge=1)
    initial_backoff_seconds: float = Field(1.0, gt=0)
    max_backoff_seconds: float = Field(60.0, gt=0)
    max_retry_after_seconds: float = Field(300.0, gt=0)

    @model_validator(mode="after")
    def _backoff_bounds(self) -> "RetrySettings":
        if self.max_backoff_seconds < self.initial_backoff_seconds:
            raise ValueError("max_backoff_seconds must be >= initial_backoff_seconds")
        return self


class SubmissionSettings(_Section):
    chunk_size: int = Field(1000, ge=1)
    max_concurrency: int = Field(4, ge=1, le=1000)
    rate_limit_per_second: float = Field(2.0, gt=0)
    # Requests reach Plum a few milliseconds after the limiter lets them go, and
    # that delay varies; spacing grants this much wider keeps every one-second
    # window Plum sees within the limit.
    rate_limit_margin_seconds: float = Field(0.01, ge=0, le=0.5)
    # A campaign whose first this-many requests are all refused (400) is paused instead of
    # split further (0: never); one accepted request disarms it.
    max_rejections_without_success: int = Field(20, ge=0)
    retry: RetrySettings = RetrySettings()


class SchedulerSettings(_Section):
    poll_interval_seconds: float = Field(5.0, gt=0)
    lease_seconds: float = Field(300.0, gt=0)
    shutdown_grace_seconds: float = Field(30.0, ge=0)
    # Names this daemon in lease columns; replicas need distinct ids (default: the host name).
    worker_id: str | None = Field(None, min_length=1, max_length=100)
    # With calling windows: a chunk is sent this long before its window opens (Plum holds
    # the calls until start_timestamp), not earlier, so pause and cancel still act on it.
    lead_seconds: float = Field(300.0, ge=0, le=86400)


class ContactsSettings(_Section):
    phone_columns: list[str] = Field(default_factory=lambda: list(DEFAULT_PHONE_COLUMNS), min_length=1)
    default_region: str = Field("US", min_length=2, max_length=2)
    # A number queued by another campaign less than this many hours ago is not sent (0: off).
    min_hours_between_calls: float = Field(0.0, ge=0)
    # Local hours in which contacts may be called, e.g. "08:00-21:00" (empty: no window;
    # a campaign's calling_window_start/_end columns override it).
    calling_window: str | None = None
    # Whose local time: the recipient's (from the number) or campaign_timezone for everyone.
    timezone_policy: Literal["recipient", "campaign"] = "recipient"
    campaign_timezone: str | None = None
    # Plum advises against batches starting on the hour: a window opening at :00 opens this much later.
    top_of_hour_offset_minutes: float = Field(5.0, ge=0, le=30)

    @field_validator("calling_window")
    @classmethod
    def _window(cls, value: str | None) -> str | None:
        if value and value.strip():
            windows.parse_window(value)
            return value.strip()
        return None

    @field_validator("campaign_timezone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        if value:
            windows.check_zone(value)
        return value or None

    @model_validator(mode="after")
    def _policy(self) -> "ContactsSettings":
        if self.timezone_policy == "campaign" and not self.campaign_timezone:
            raise ValueError("campaign_timezone is required when timezone_policy is campaign")
        return self


class CallbackSettings(_Section):
    # host:port for the daemon's HTTP server (call results, /healthz, /readyz, /metrics); empty: no server
    listen: str | None = None
    # how Plum reaches that server; when set, chunks of campaigns without their own result_url
    # are sent with result_url = {public_url}/callbacks/{campaign}/{chunk}?sig=HMAC
    public_url: str | None = None
    secret: SecretStr = SecretStr("")  # env INSIGHT_CALLBACK_SECRET overrides it
    max_body_bytes: int = Field(65536, ge=256)

    @model_validator(mode="after")
    def _consistent(self) -> "CallbackSettings":
        if self.listen is not None:
            host, _, port = self.listen.rpartition(":")
            if not host or not port.isdigit() or not 0 <= int(port) < 65536:
                raise ValueError("listen must be host:port, e.g. 127.0.0.1:8080 (port 0: any free port)")
        if self.public_url and not self.secret.get_secret_value():
            raise ValueError("secret is required when public_url is set (it signs the callback URLs)")
        return self


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["plain", "json"] = "plain"


class Settings(_Section):
    database: DatabaseSettings = DatabaseSettings()
    insight: InsightSettings = InsightSettings()
    submission: SubmissionSettings = SubmissionSettings()
    scheduler: SchedulerSettings = SchedulerSettings()
    contacts: ContactsSettings = ContactsSettings()
    callbacks: CallbackSettings = CallbackSettings()
    logging: LoggingSettings = LoggingSettings()


def _describe(error: Mapping[str, Any]) -> str:
    kind, ctx = error["type"], error.get("ctx") or {}
    bounds = {
        "greater_than_equal": ("ge", ">="),
        "greater_than": ("gt", ">"),
        "less_than_equal": ("le", "<="),
        "less_than": ("lt", "<"),
    }
    if kind in bounds:
        key, op = bounds[kind]
        return f"must be {op} {ctx[key]}"
    messages = {
        "extra_forbidden": "unknown key",
        "missing": "required",
        "int_parsing": "must be an integer",
        "int_type": "must be an integer",
        "int_from_float": "must be an integer",
        "float_parsing": "must be a number",
        "float_type": "must be a number",
        "bool_parsing": "must be true or false",
        "bool_type": "must be true or false",
        "string_type": "must be a string",
        "model_type": "must be a mapping of keys",
        "model_attributes_type": "must be a mapping of keys",
        "list_type": "must be a list",
        "literal_error": f"must be one of {ctx.get('expected', '')}",
        "string_too_short": "must not be empty" if ctx.get("min_length") == 1 else error["msg"].lower(),
    }
    if kind in messages:
        return messages[kind]
    return str(error["msg"]).removeprefix("Value error, ")


def format_validation_error(exc: ValidationError) -> list[str]:
    problems = []
    for err in exc.errors():
        path = ".".join(str(part) for part in err["loc"]) or "(top level)"
        problems.append(f"{path}: {_describe(err)}")
    return problems


def _set_path(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


def apply_env_overrides(raw: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """INSIGHT_SCHEDULER__SUBMISSION__CHUNK_SIZE=500 sets submission.chunk_size.

    Values are read as YAML scalars so numbers and booleans keep their type.
    """
    merged = dict(raw)
    for name, text in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX):].split("__") if p]
        if path:
            _set_path(merged, path, _env_value(text))
    if environ.get(DEVELOPER_KEY_ENV):
        _set_path(merged, ["insight", "developer_key"], environ[DEVELOPER_KEY_ENV])
    if environ.get(CALLBACK_SECRET_ENV):
        _set_path(merged, ["callbacks", "secret"], environ[CALLBACK_SECRET_ENV])
    return merged


def _env_value(text: str) -> Any:
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    # "0123" or "on" should not silently change meaning: keep non-scalars and
    # empty values as the literal text.
    return text if value is None or isinstance(value, (dict, list)) else value


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"cannot read {path}: {exc.strerror or exc}"], source=str(path)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"not valid YAML: {exc}"], source=str(path)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(["(top level): must be a mapping of keys"], source=str(path))
    return data


def resolve_config_path(cli_path: str | None, environ: Mapping[str, str]) -> tuple[Path, bool]:
    """Return the path and whether the user named it (a named file must exist)."""
    if cli_path:
        return Path(cli_path), True
    if environ.get(CONFIG_ENV):
        return Path(environ[CONFIG_ENV]), True
    return Path(DEFAULT_CONFIG_PATH), False


def build_settings(raw: dict[str, Any], source: str = "config") -> Settings:
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc), source=source) from None


def load_settings(cli_path: str | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    environ = os.environ if environ is None else environ
    path, named = resolve_config_path(cli_path, environ)
    raw: dict[str, Any] = {}
    if path.exists() or named:
        raw = read_yaml(path)
    return build_settings(apply_env_overrides(raw, environ), source=str(path))

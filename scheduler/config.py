"""Validated settings: config.yaml, then environment overrides, then pydantic.

Every problem is reported at once with its full key path, the value and, for
an environment override, the variable (``submission.chunk_size (from
environment variable INSIGHT_SCHEDULER__SUBMISSION__CHUNK_SIZE): must be >= 1
(got '0')``). The developer key is a ``SecretStr``
so it never shows up in a repr, a log line or an error message.
"""

from __future__ import annotations

import difflib
import os
import re
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
_SECRET_VARIABLES = {DEVELOPER_KEY_ENV: ("insight", "developer_key"), CALLBACK_SECRET_ENV: ("callbacks", "secret")}
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
            raise ValueError(
                f"reattempt_wait_max_seconds ({self.reattempt_wait_max_seconds}) must be >= "
                f"reattempt_wait_min_seconds ({self.reattempt_wait_min_seconds}); raise the max or lower the min"
            )
        return self


class RetrySettings(_Section):
    max_tries: int = Field(5, ge=1)
    initial_backoff_seconds: float = Field(1.0, gt=0)
    max_backoff_seconds: float = Field(60.0, gt=0)
    max_retry_after_seconds: float = Field(300.0, gt=0)

    @model_validator(mode="after")
    def _backoff_bounds(self) -> "RetrySettings":
        if self.max_backoff_seconds < self.initial_backoff_seconds:
            raise ValueError(
                f"max_backoff_seconds ({self.max_backoff_seconds}) must be >= initial_backoff_seconds "
                f"({self.initial_backoff_seconds}); raise the max or lower the initial backoff"
            )
        return self


class OutageSettings(_Section):
    """The account-level circuit breaker: Plum down for everyone, not one chunk's bad luck."""

    # This many retryable failures in a row, over all requests to the account, open the breaker.
    failure_threshold: int = Field(5, ge=1)
    # While open: one probe request at a time, the first after this long, then each wait doubled.
    initial_probe_interval_seconds: float = Field(1.0, gt=0)
    max_probe_interval_seconds: float = Field(30.0, gt=0)

    @model_validator(mode="after")
    def _probe_bounds(self) -> "OutageSettings":
        if self.max_probe_interval_seconds < self.initial_probe_interval_seconds:
            raise ValueError(
                f"max_probe_interval_seconds ({self.max_probe_interval_seconds}) must be >= "
                f"initial_probe_interval_seconds ({self.initial_probe_interval_seconds})"
            )
        return self


class SubmissionSettings(_Section):
    chunk_size: int = Field(1000, ge=1)
    max_concurrency: int = Field(4, ge=1, le=1000)
    rate_limit_per_second: float = Field(2.0, gt=0)
    # Requests reach Plum a few milliseconds after the limiter lets them go, and
    # that delay varies; spacing grants this much wider keeps every one-second
    # window Plum sees within the limit.
    # 0.01 (~1% of throughput): a request that leaves more than 2 ms late moves the account's
    # later slots back (dispatcher._push_if_late), so the margin only has to cover arrival jitter.
    rate_limit_margin_seconds: float = Field(0.01, ge=0, le=0.5)
    # A campaign whose first this-many requests are all refused (400) is paused instead of
    # split further (0: never); one accepted request disarms it.
    max_rejections_without_success: int = Field(20, ge=0)
    retry: RetrySettings = RetrySettings()
    outage: OutageSettings = OutageSettings()


class SchedulerSettings(_Section):
    poll_interval_seconds: float = Field(5.0, gt=0)
    lease_seconds: float = Field(300.0, gt=0)
    shutdown_grace_seconds: float = Field(30.0, ge=0)
    # Names this daemon in lease columns; replicas need distinct ids (default: the host name).
    worker_id: str | None = Field(None, min_length=1, max_length=100)
    # With calling windows: a chunk is sent this long before its window opens (Plum holds
    # the calls until start_timestamp), not earlier, so pause and cancel still act on it.
    lead_seconds: float = Field(300.0, ge=0, le=86400)
    # Where answers that cannot be written to the database yet are kept (append-only, fsynced);
    # default: beside the SQLite file, or insight-scheduler.journal in the working directory.
    journal_path: str | None = Field(None, min_length=1)


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
            raise ValueError(
                "campaign_timezone is required when timezone_policy is campaign; "
                "set campaign_timezone (e.g. America/Chicago) or use timezone_policy: recipient"
            )
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
            check_listen(self.listen)
        if self.public_url and not self.secret.get_secret_value():
            raise ValueError(
                "secret is required when public_url is set (it signs the callback URLs); "
                f"set callbacks.secret or {CALLBACK_SECRET_ENV}"
            )
        return self


class ConsoleSettings(_Section):
    """The web console: its own listener, never the callback port Plum reaches."""

    # host:port of the console's own HTTP server (pages under /console/); unset: no console
    listen: str | None = None
    # adds Secure to the session cookie: set it when an https proxy is in front
    secure_cookie: bool = False
    session_hours: float = Field(12.0, gt=0, le=24 * 30)
    # how often the live pages fetch their figures again
    refresh_seconds: float = Field(3.0, ge=0.2, le=3600)
    # largest contacts or do-not-call file an upload may bring (streamed to disk, then stored)
    max_upload_bytes: int = Field(512 * 1024 * 1024, ge=1024)

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str | None) -> str | None:
        if value is not None:
            check_listen(value)
        return value


def check_listen(value: str) -> None:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"listen must be host:port, e.g. 127.0.0.1:8080 (port 0: any free port) (got {value!r})")


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
    console: ConsoleSettings = ConsoleSettings()
    logging: LoggingSettings = LoggingSettings()

    @model_validator(mode="after")
    def _console_port(self) -> "Settings":
        if _same_port(self.console.listen, self.callbacks.listen):
            # The callback port is the one Plum reaches (often from the internet); the console
            # must never be served there.
            raise ValueError(
                f"console.listen: must differ from callbacks.listen ({self.callbacks.listen}): the callback port "
                "is the one Plum reaches and never serves the console; give the console a port of its own"
            )
        return self


def _same_port(console: str | None, callbacks: str | None) -> bool:
    """Equal, or the same fixed port on another address of this host (port 0: each gets its own)."""
    if console is None or callbacks is None:
        return False
    port = console.rpartition(":")[2]
    return console == callbacks or (port != "0" and port == callbacks.rpartition(":")[2])


# Where a key's value came from when it was not the config file: key path -> variable name.
EnvNames = Mapping[tuple[str, ...], str]

_BOUNDS = {
    "greater_than_equal": ("ge", ">="),
    "greater_than": ("gt", ">"),
    "less_than_equal": ("le", "<="),
    "less_than": ("lt", "<"),
}
_TYPE_RULES = {
    "int_parsing": "must be an integer",
    "int_type": "must be an integer",
    "int_from_float": "must be an integer",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "string_type": "must be a string (in YAML, put it in quotes)",
    "model_type": "must be a mapping of keys",
    "model_attributes_type": "must be a mapping of keys",
    "list_type": "must be a list",
}
# Values never echoed in a message: credentials, and a database URL may hold a password.
_SECRET_KEYS = {"developer_key", "secret", "url"}


def _rule(error: Mapping[str, Any]) -> str:
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind in _BOUNDS:
        key, op = _BOUNDS[kind]
        return f"must be {op} {ctx[key]}"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected', '')}"
    if kind == "string_too_short":
        return "must not be empty" if ctx.get("min_length") == 1 else str(error["msg"]).lower()
    if kind == "missing":
        return "required"
    return _TYPE_RULES.get(kind) or str(error["msg"]).removeprefix("Value error, ")


def _describe(error: Mapping[str, Any]) -> str:
    rule = _rule(error)
    value = error.get("input")
    shown = error["type"] in _BOUNDS or error["type"] in _TYPE_RULES or error["type"] == "literal_error"
    secret = any(str(part) in _SECRET_KEYS for part in error["loc"])
    if shown and not secret and isinstance(value, (str, int, float, bool)):
        rule += f" (got {value!r})"
    return rule


def _known_keys(loc: tuple[str, ...]) -> list[str]:
    """The keys a section at ``loc`` accepts (empty when ``loc`` names no section)."""
    model: Any = Settings
    for part in loc:
        field = model.model_fields.get(part)
        model = field.annotation if field else None
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
    return list(model.model_fields)


def _unknown_key(loc: tuple[str, ...], env_names: EnvNames) -> str:
    known = _known_keys(loc[:-1])
    close = difflib.get_close_matches(loc[-1], known, n=1)
    if close and loc in env_names:
        return f"unknown key (did you mean {ENV_PREFIX}{'__'.join(loc[:-1] + tuple(close)).upper()}?)"
    if close:
        return f"unknown key (did you mean {close[0]}?)"
    return f"unknown key; remove it (known keys here: {', '.join(known)})" if known else "unknown key; remove it"


def _origin(loc: tuple[str, ...], env_names: EnvNames) -> str:
    """' (from environment variable X)' when the environment set this key or a section holding it."""
    for depth in range(len(loc), 0, -1):
        if loc[:depth] in env_names:
            return f" (from environment variable {env_names[loc[:depth]]})"
    inside = sorted(name for path, name in env_names.items() if loc and path[: len(loc)] == loc)
    if inside:
        return f" (set partly by environment variable {', '.join(inside)})"
    return ""


_NAMES_ITS_KEY = re.compile(r"^[a-z_]+\.[a-z_.]+: ")


def format_validation_error(exc: ValidationError, env_names: EnvNames | None = None) -> list[str]:
    env_names = env_names or {}
    problems = []
    for err in exc.errors():
        loc = tuple(str(part) for part in err["loc"])
        rule = _unknown_key(loc, env_names) if err["type"] == "extra_forbidden" else _describe(err)
        if err["type"] == "list_type" and loc in env_names:
            rule += "; an environment variable cannot set a list: set it in the config file"
        if not loc and _NAMES_ITS_KEY.match(rule):  # a check across sections names its key itself
            problems.append(rule)
            continue
        problems.append(f"{'.'.join(loc) or '(top level)'}{_origin(loc, env_names)}: {rule}")
    return problems


def _set_path(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


def env_overrides(environ: Mapping[str, str]) -> dict[tuple[str, ...], tuple[str, str]]:
    """Key path -> (variable, text) for every variable that sets a key.

    INSIGHT_SCHEDULER__SUBMISSION__CHUNK_SIZE=500 sets submission.chunk_size. The
    text is passed on as it is: pydantic reads "500" as an integer where one is
    expected, while a region "NO" or a username "007" stay the strings they are.
    """
    found: dict[tuple[str, ...], tuple[str, str]] = {}
    for name, text in sorted(environ.items()):
        if name.startswith(ENV_PREFIX):
            path = tuple(p.lower() for p in name[len(ENV_PREFIX):].split("__") if p)
            if path:
                found[path] = (name, text)
    for name, path in _SECRET_VARIABLES.items():
        if environ.get(name):
            found[path] = (name, environ[name])
    return found


def apply_env_overrides(raw: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    return _merged(raw, env_overrides(environ))


def _merged(raw: dict[str, Any], overrides: Mapping[tuple[str, ...], tuple[str, str]]) -> dict[str, Any]:
    merged = dict(raw)
    for path, (_, text) in overrides.items():
        _set_path(merged, path, text)
    return merged


def read_yaml(path: Path, named_by: str = "") -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        hint = f"; check the path given by {named_by}" if named_by else ""
        raise ConfigError([f"cannot read {path}: {exc.strerror or exc}{hint}"], source=str(path)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"not valid YAML: {exc}"], source=str(path)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(["(top level): must be a mapping of keys, like `submission:` on its own line"],
                          source=str(path))
    return data


def resolve_config_path(cli_path: str | None, environ: Mapping[str, str]) -> tuple[Path, str]:
    """The path, and who named it ("" for the default, which need not exist)."""
    if cli_path:
        return Path(cli_path), "--config"
    if environ.get(CONFIG_ENV):
        return Path(environ[CONFIG_ENV]), CONFIG_ENV
    return Path(DEFAULT_CONFIG_PATH), ""


def build_settings(raw: dict[str, Any], source: str = "config", env_names: EnvNames | None = None) -> Settings:
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        from_env = [_set_by_env(err["loc"], env_names or {}) for err in exc.errors()]
        if all(from_env):
            source = "environment"
        elif any(from_env):
            source += " and environment"
        raise ConfigError(format_validation_error(exc, env_names), source=source) from None


def _set_by_env(loc: tuple[Any, ...], env_names: EnvNames) -> bool:
    path = tuple(str(part) for part in loc)
    return any(path[:depth] in env_names for depth in range(1, len(path) + 1))


def load_settings(cli_path: str | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    environ = os.environ if environ is None else environ
    path, named_by = resolve_config_path(cli_path, environ)
    raw: dict[str, Any] = {}
    if path.exists() or named_by:
        raw = read_yaml(path, named_by)
    overrides = env_overrides(environ)
    env_names = {key: name for key, (name, _) in overrides.items()}
    return build_settings(_merged(raw, overrides), source=str(path), env_names=env_names)

"""One exception root for the whole program.

Library exceptions (aiohttp, SQLAlchemy, drivers) are translated into these at
the module that talks to the library; the CLI turns a ``UserError`` into a
message and exit status 2, never a traceback.
"""


class SchedulerError(Exception):
    """Root of every error this program raises on purpose."""


class UserError(SchedulerError):
    """Something the user can fix: bad config, bad argument, bad database state."""

    exit_status = 2


class ConfigError(UserError):
    """The configuration is invalid; ``problems`` lists every one with its key path."""

    def __init__(self, problems: list[str], source: str = "config") -> None:
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"invalid configuration ({source}):\n{lines}")


class DatabaseError(UserError):
    """The database cannot be reached or is not migrated."""


class NotFound(UserError):
    """A campaign, chunk or other row named by the user does not exist."""


class CampaignGone(SchedulerError):
    """An admin deleted the campaign's row while the daemon worked on it."""


class IngestionLost(SchedulerError):
    """Another daemon took over this campaign's ingestion (this one was thought dead)."""


class LedgerKept(SchedulerError):
    """Ingestion would have to delete submissions of this campaign id: it refuses."""


class InvalidRequest(SchedulerError):
    """A bulk_queue request broke the API's own rules; nothing was sent."""

    def __init__(self, field: str, rule: str) -> None:
        self.field = field
        self.rule = rule
        super().__init__(f"{field}: {rule}")

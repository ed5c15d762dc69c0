"""Engines, SQLite's locking rules, and alembic migrations.

SQLite: WAL so readers never block the writer, a busy timeout, and
``BEGIN IMMEDIATE`` for every write transaction: a deferred transaction that
reads and then writes fails at once with SQLITE_BUSY when another connection
writes, which the daemon's own concurrency would hit constantly.
"""

from __future__ import annotations

import sqlite3
from importlib import resources
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine as sa_create_engine
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from .errors import DatabaseError

SQLITE_BUSY_TIMEOUT_MS = 30_000
READ_ONLY = "insight_read_only"


def safe_url(url: str) -> str:
    """The URL with its password masked, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable database url>"


def create_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise DatabaseError(f"database.url: not a valid SQLAlchemy URL: {url!r}") from None
    if parsed.get_backend_name() == "sqlite":
        # Enough pooled connections for every request in flight: an overflow
        # connection is opened (pragmas and all) and closed for each use.
        engine = create_async_engine(parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
                                     pool_size=pool_size, max_overflow=pool_size)
        _install_sqlite_hooks(engine)
        return engine
    if parsed.get_backend_name() == "postgresql":
        return create_async_engine(parsed, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)
    raise DatabaseError(
        f"database.url: unsupported database {parsed.get_backend_name()!r}; use sqlite+aiosqlite or postgresql+asyncpg"
    )


def create_sync_sqlite_engine(engine: AsyncEngine) -> Engine:
    """A plain pysqlite engine on the same file, same locking rules, for work done
    in one worker thread (see repository.Repository._ledger)."""
    url = engine.url.set(drivername="sqlite+pysqlite")
    sync = sa_create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
                            pool_size=1, max_overflow=1)
    _install_sqlite_hooks(sync)
    return sync


def _install_sqlite_hooks(engine: AsyncEngine | Engine) -> None:
    target = engine.sync_engine if isinstance(engine, AsyncEngine) else engine

    @event.listens_for(target, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let us issue BEGIN ourselves instead of pysqlite's implicit deferred BEGIN.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    raw_begin = not isinstance(engine, AsyncEngine)  # pysqlite: its own cursor, not aiosqlite's proxy

    @event.listens_for(target, "begin")
    def _on_begin(conn: Any) -> None:
        statement = "BEGIN" if conn.get_execution_options().get(READ_ONLY) else "BEGIN IMMEDIATE"
        if not raw_begin:
            conn.exec_driver_sql(statement)
            return
        # On the send path's connections (two transactions per request), SQLAlchemy's statement
        # machinery cost several times SQLite's own BEGIN; its errors are raised as it raises them.
        try:
            conn.connection.driver_connection.execute(statement)
        except sqlite3.Error as exc:
            raise DBAPIError.instance(statement, (), exc, sqlite3.Error, dialect=conn.dialect) from exc


def migrations_path() -> Path:
    """The alembic scripts: the repository's migrations/ or the installed copy."""
    repo_copy = Path(__file__).resolve().parent.parent / "migrations"
    if (repo_copy / "env.py").exists():
        return repo_copy
    return Path(str(resources.files("scheduler._migrations")))


def alembic_config(url: str) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(migrations_path()))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


async def current_revision(conn: AsyncConnection) -> str | None:
    return await conn.run_sync(lambda sync: MigrationContext.configure(sync).get_current_revision())


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    cfg = alembic_config(engine.url.render_as_string(hide_password=False))

    def _run(sync_conn: Any) -> None:
        cfg.attributes["connection"] = sync_conn
        command.upgrade(cfg, revision)

    async with connect_or_explain(engine) as conn:
        await conn.run_sync(_run)


class connect_or_explain:
    """``engine.begin()`` that turns "cannot connect" into a DatabaseError."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._ctx: Any = None

    async def __aenter__(self) -> AsyncConnection:
        self._ctx = self._engine.begin()
        try:
            conn: AsyncConnection = await self._ctx.__aenter__()
            return conn
        except (OSError, DBAPIError, OperationalError) as exc:
            raise DatabaseError(describe_connect_error(self._engine, exc)) from None

    async def __aexit__(self, *exc_info: Any) -> Any:
        return await self._ctx.__aexit__(*exc_info)


def describe_connect_error(engine: AsyncEngine, exc: BaseException) -> str:
    reason = getattr(exc, "orig", None) or exc
    return f"cannot connect to database {safe_url(engine.url.render_as_string(hide_password=False))}: {reason}"


async def ensure_migrated(engine: AsyncEngine) -> None:
    """Refuse to work on a database whose schema is not at this program's head."""
    async with connect_or_explain(engine) as conn:
        current = await current_revision(conn)
    head = head_revision()
    if current != head:
        where = "has no schema" if current is None else f"is at revision {current}, this program needs {head}"
        raise DatabaseError(
            f"database {safe_url(engine.url.render_as_string(hide_password=False))} {where}: "
            "run `insight-scheduler db upgrade`"
        )

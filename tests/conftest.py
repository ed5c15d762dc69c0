"""Shared fixtures: one repository contract, run on a SQLite file and on the real PostgreSQL.

PostgreSQL: a fresh database is created for the test session and dropped at
the end (127.0.0.1:5432, trust auth; override with INSIGHT_TEST_PG_URL).
"""

from __future__ import annotations

import asyncio
import os
from contextlib import asynccontextmanager
from typing import AsyncIterator
import uuid
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from scheduler import db
from scheduler.models import Base
from scheduler.repository import Repository

PG_ADMIN_URL = os.environ.get("INSIGHT_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres")
REPO_ROOT = Path(__file__).resolve().parent.parent


async def _admin(sql: str) -> None:
    engine = create_async_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(sql))
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def pg_url() -> str:
    """URL of a PostgreSQL database made for this test session, migrated to head."""
    name = f"insight_test_{uuid.uuid4().hex[:10]}"
    try:
        asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001 - any failure means no server
        pytest.fail(f"PostgreSQL is required for the test suite and is not reachable at {PG_ADMIN_URL}: {exc}")
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    asyncio.run(_migrate(url))
    yield url
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _migrate(url: str) -> None:
    engine = db.create_engine(url)
    await db.upgrade(engine)
    await engine.dispose()


async def _truncate_pg(url: str) -> None:
    engine = db.create_engine(url)
    tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
    async with engine.begin() as conn:
        await conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    await engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path) -> str:
    """A migrated, empty database of each kind."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"
        asyncio.run(_migrate(url))
        return url
    url = request.getfixturevalue("pg_url")
    asyncio.run(_truncate_pg(url))
    return url


@asynccontextmanager
async def repository_at(url: str) -> AsyncIterator[Repository]:
    """A repository on its own engine, closed (threads and engines) afterwards."""
    repository = Repository(db.create_engine(url))
    try:
        yield repository
    finally:
        await repository.close()


@pytest.fixture
async def repo(db_url):
    async with repository_at(db_url) as repository:
        yield repository

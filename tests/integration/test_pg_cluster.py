"""The throw-away PostgreSQL cluster: start, query, stop (queries then fail), restart on the same port."""

import os
import stat

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from tests.support import pg_cluster
from tests.support.pg_cluster import TempPostgres


def require_binaries() -> None:
    if not pg_cluster.available():
        pytest.fail(f"PostgreSQL server programs ({', '.join(pg_cluster.PROGRAMS)}) are required under "
                    f"{pg_cluster.PG_ROOTS}/*/bin (or INSIGHT_TEST_PG_BIN), with a {pg_cluster.OS_USER!r} "
                    "OS user when running as root")


async def select_one(engine) -> int:
    async with engine.connect() as conn:
        return (await conn.execute(text("SELECT 1"))).scalar_one()


async def test_stop_makes_queries_fail_and_restart_serves_the_same_data(tmp_path):
    require_binaries()
    with TempPostgres(tmp_path) as pg:
        assert pg.running and pg.port is not None
        assert pg.url == f"postgresql+asyncpg://postgres@127.0.0.1:{pg.port}/postgres"
        assert pg.directory.parent == tmp_path.resolve()
        url = pg.create_database("outage_db")
        assert url == f"postgresql+asyncpg://postgres@127.0.0.1:{pg.port}/outage_db"
        engine = create_async_engine(url, poolclass=NullPool)
        try:
            assert await select_one(engine) == 1
            async with engine.begin() as conn:
                await conn.execute(text("CREATE TABLE kept (n int)"))
                await conn.execute(text("INSERT INTO kept VALUES (41), (1)"))

            port = pg.port
            pg.stop()
            assert not pg.running
            with pytest.raises((DBAPIError, OSError)) as refused:
                await select_one(engine)
            assert "refused" in str(refused.value).lower() or "connect" in str(refused.value).lower()

            pg.restart()
            assert pg.running and pg.port == port
            assert await select_one(engine) == 1
            async with engine.connect() as conn:
                assert (await conn.execute(text("SELECT sum(n) FROM kept"))).scalar_one() == 42

            # A crash (immediate stop) loses no committed row either.
            async with engine.begin() as conn:
                await conn.execute(text("INSERT INTO kept VALUES (100)"))
            pg.stop("immediate")
            pg.start()
            assert pg.port == port
            async with engine.connect() as conn:
                assert (await conn.execute(text("SELECT sum(n) FROM kept"))).scalar_one() == 142
        finally:
            await engine.dispose()
        directory = pg.directory
    assert not directory.exists()
    assert not pg.running


def test_close_without_start_and_bad_stop_mode(tmp_path):
    require_binaries()
    pg = TempPostgres(tmp_path)
    with pytest.raises(ValueError, match="stop mode"):
        pg.stop("now")
    if os.geteuid() == 0:
        assert pg.directory.stat().st_uid != 0  # handed to the postgres user
        assert tmp_path.stat().st_mode & stat.S_IXOTH
    pg.close()
    assert not pg.directory.exists()
    with pytest.raises(pg_cluster.PostgresClusterError, match="closed"):
        pg.start()

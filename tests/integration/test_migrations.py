"""The models and the migration history agree, on both databases."""

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from scheduler import db
from scheduler.models import Base


def _diff(sync_conn):
    context = MigrationContext.configure(sync_conn, opts={"compare_type": True, "render_as_batch": True})
    return compare_metadata(context, Base.metadata)


async def test_autogenerate_finds_no_difference(db_url):
    engine = db.create_engine(db_url)
    try:
        async with engine.connect() as conn:
            differences = await conn.run_sync(_diff)
    finally:
        await engine.dispose()
    assert differences == []


async def test_upgrade_twice_is_a_no_op(db_url):
    engine = db.create_engine(db_url)
    try:
        await db.upgrade(engine)
        async with engine.connect() as conn:
            assert await db.current_revision(conn) == db.head_revision()
        await db.ensure_migrated(engine)
    finally:
        await engine.dispose()


async def test_unmigrated_database_is_refused_with_the_fix(tmp_path):
    engine = db.create_engine(f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}")
    try:
        import pytest

        from scheduler.errors import DatabaseError

        with pytest.raises(DatabaseError, match="db upgrade"):
            await db.ensure_migrated(engine)
    finally:
        await engine.dispose()

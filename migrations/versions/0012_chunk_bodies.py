"""chunk_bodies: each chunk's request CSV, built once at ingestion

Sending then reads one value per request instead of every contact of the chunk and
building the CSV (issue 15: the daemon's CPU per request).

Revision ID: 0012
Revises: 0011
"""
from alembic import op
import sqlalchemy as sa


revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'chunk_bodies',
        sa.Column('chunk_id', sa.Integer(), nullable=False),
        sa.Column('campaign_id', sa.Integer(), nullable=False),
        sa.Column('contacts', sa.Integer(), nullable=False),
        sa.Column('format', sa.Text(), nullable=False),
        sa.Column('body', sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(['chunk_id'], ['chunks.id'], name=op.f('fk_chunk_bodies_chunk_id_chunks'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('chunk_id', name=op.f('pk_chunk_bodies')),
    )
    if op.get_bind().dialect.name == "sqlite":
        # An admin's sqlite3 session has foreign keys off: a campaign deleted there (its trigger
        # deletes the chunks) must not leave bodies behind for a later chunk given the same id.
        op.execute("""CREATE TRIGGER chunk_bodies_go_with_chunk AFTER DELETE ON chunks
            BEGIN DELETE FROM chunk_bodies WHERE chunk_id = OLD.id; END""")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS chunk_bodies_go_with_chunk")
    op.drop_table('chunk_bodies')

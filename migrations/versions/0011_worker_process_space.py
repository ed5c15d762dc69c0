"""workers.process_space

The boot id and pid namespace of a daemon's process: a daemon in the same space
whose process is gone (kill -9) is dead at once for the others, not 3 polls later.

Revision ID: 0011
Revises: 0010
"""
from alembic import op
import sqlalchemy as sa


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('workers') as batch:
        batch.add_column(sa.Column('process_space', sa.String(length=128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('workers') as batch:
        batch.drop_column('process_space')

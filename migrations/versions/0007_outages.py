"""outages: the circuit breaker as admins see it, tries not counted during an outage

- ``plum_accounts``: one row per Plum account (base URL + user) with its circuit
  breaker (open since, probes sent, last error, a Retry-After hold), for
  ``campaign list``/``show`` and the daemons.
- ``plum_accounts.rate_next_slot``: the account's rate limit shared by every daemon
  (a GCRA: the next free send slot, Unix seconds on the database's clock).
- ``chunks.outage_tries``: attempts that failed while Plum was down for everyone;
  they are not counted against ``max_tries``.

Revision ID: 0007
Revises: 0006
"""
from alembic import op
import sqlalchemy as sa
import scheduler.models


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'plum_accounts',
        sa.Column('account', sa.String(length=512), nullable=False),
        sa.Column('breaker', sa.String(length=16), server_default=sa.text("'closed'"), nullable=False),
        sa.Column('open_since', scheduler.models.UTCDateTime(), nullable=True),
        sa.Column('probes', sa.Integer(), server_default=sa.text('0'), nullable=False),
        sa.Column('last_error', sa.Text(), nullable=True),
        sa.Column('hold_until', scheduler.models.UTCDateTime(), nullable=True),
        sa.Column('outages', sa.Integer(), server_default=sa.text('0'), nullable=False),
        sa.Column('rate_next_slot', sa.Float(), nullable=True),
        sa.Column('updated_at', scheduler.models.UTCDateTime(), nullable=False),
        sa.Column('updated_by', sa.String(length=128), nullable=True),
        sa.PrimaryKeyConstraint('account', name=op.f('pk_plum_accounts')),
    )
    # A plain ADD COLUMN (SQLite can): a batch copy of chunks would trip the delete triggers of 0006.
    op.add_column('chunks', sa.Column('outage_tries', sa.Integer(), server_default=sa.text('0'), nullable=False))


def downgrade() -> None:
    op.drop_column('chunks', 'outage_tries')  # SQLite 3.35+
    op.drop_table('plum_accounts')

"""an index for claiming in file order

``ix_chunks_campaign_id_status_seq``: a claim finds a running campaign's next
ready chunks by walking its pending chunks in ``seq`` order and stopping at the
first; before, every claim sorted all pending chunks of every campaign.

Revision ID: 0010
Revises: 0009
"""
from alembic import op


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(op.f('ix_chunks_campaign_id_status_seq'), 'chunks', ['campaign_id', 'status', 'seq'])


def downgrade() -> None:
    op.drop_index(op.f('ix_chunks_campaign_id_status_seq'), table_name='chunks')

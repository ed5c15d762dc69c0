"""contacts files in the database

``campaign_files``: the bytes of a campaign's contacts file (zlib-compressed),
stored by ``campaign create --contacts FILE`` so that a daemon on any host can
ingest it; deleted with its campaign.

Revision ID: 0008
Revises: 0007
"""
from alembic import op
import sqlalchemy as sa
import scheduler.models


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'campaign_files',
        sa.Column('campaign_id', sa.Integer(), nullable=False),
        sa.Column('file_name', sa.Text(), nullable=False),
        sa.Column('size_bytes', sa.BigInteger(), nullable=False),
        sa.Column('sha256', sa.String(length=64), nullable=False),
        sa.Column('compression', sa.String(length=16), server_default=sa.text("'zlib'"), nullable=False),
        sa.Column('data', sa.LargeBinary(), nullable=False),
        sa.Column('stored_at', scheduler.models.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(['campaign_id'], ['campaigns.id'], name=op.f('fk_campaign_files_campaign_id_campaigns'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('campaign_id', name=op.f('pk_campaign_files')),
    )


def downgrade() -> None:
    op.drop_table('campaign_files')

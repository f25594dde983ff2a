"""files.provider_expires_at: when the provider deletes a file by itself

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Files recorded before this revision carry no provider expiry: they count against quota until
    # a reconcile sees them gone, as they did.
    with op.batch_alter_table("files", schema=None) as batch_op:
        batch_op.add_column(sa.Column("provider_expires_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("files", schema=None) as batch_op:
        batch_op.drop_column("provider_expires_at")

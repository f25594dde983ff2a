"""files (account_id, bytes): the duplicate probe a check and an upload make before hashing

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 12:00:00
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Without it, "is there an active file of this size?" reads every active row of the account:
    # most of a quota check's time on an account of a thousand files.
    op.create_index("ix_files_account_id_bytes", "files", ["account_id", "bytes"])


def downgrade() -> None:
    op.drop_index("ix_files_account_id_bytes", table_name="files")

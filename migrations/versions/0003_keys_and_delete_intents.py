"""account_keys (the keys each account was used with) and delete_intents (deletes in flight)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "account_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("key_fingerprint", sa.String(length=32), nullable=False),
        sa.Column("first_seen", sa.DateTime(), nullable=False),
        sa.Column("proven_by", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name=op.f("fk_account_keys_account_id_accounts")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_account_keys")),
        sa.UniqueConstraint("account_id", "key_fingerprint", name=op.f("uq_account_keys_account_id_key_fingerprint")),
    )
    # Every account so far was used with the key it records: that key is its first.
    op.execute(
        "INSERT INTO account_keys (account_id, key_fingerprint, first_seen, proven_by) "
        "SELECT id, key_fingerprint, created_at, 'first_use' FROM accounts"
    )
    op.create_table(
        "delete_intents",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("file_id", sa.String(length=128), nullable=False),
        sa.Column("file_pk", sa.Integer(), nullable=True),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("actor", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name=op.f("fk_delete_intents_account_id_accounts")),
        sa.ForeignKeyConstraint(["file_pk"], ["files.id"], name=op.f("fk_delete_intents_file_pk_files")),
        sa.ForeignKeyConstraint(
            ["run_id"], ["reconcile_runs.id"], name=op.f("fk_delete_intents_run_id_reconcile_runs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_delete_intents")),
    )
    with op.batch_alter_table("delete_intents", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_delete_intents_account_id"), ["account_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("delete_intents", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_delete_intents_account_id"))
    op.drop_table("delete_intents")
    op.drop_table("account_keys")

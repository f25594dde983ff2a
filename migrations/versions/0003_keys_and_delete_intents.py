"""account_keys (the identities each account was used with), accounts.baselined_at, delete_intents

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
        sa.Column("base_url", sa.String(length=512), nullable=False),
        sa.Column("first_seen", sa.DateTime(), nullable=False),
        sa.Column("proven_by", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name=op.f("fk_account_keys_account_id_accounts")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_account_keys")),
        sa.UniqueConstraint(
            "account_id",
            "key_fingerprint",
            "base_url",
            name=op.f("uq_account_keys_account_id_key_fingerprint_base_url"),
        ),
    )
    # Every account so far was used through the URL and key it records: they are its first.
    conn = op.get_bind()
    rows = conn.execute(sa.text("SELECT id, key_fingerprint, base_url, created_at FROM accounts")).all()
    for account_id, fp, base_url, created_at in rows:
        conn.execute(
            sa.text(
                "INSERT INTO account_keys (account_id, key_fingerprint, base_url, first_seen, proven_by) "
                "VALUES (:a, :fp, :url, :at, 'first_use')"
            ),
            {"a": account_id, "fp": fp, "url": identity_url(base_url), "at": created_at},
        )
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("baselined_at", sa.DateTime(), nullable=True))
    # An account a reconcile has applied to before was listed then: its baseline is that run.
    op.execute(
        "UPDATE accounts SET baselined_at = (SELECT min(finished_at) FROM reconcile_runs "
        "WHERE reconcile_runs.account_id = accounts.id AND reconcile_runs.status = 'done')"
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


def identity_url(url: str) -> str:
    """filekeeper.config.identity_url as of this revision (a migration does not import the app)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if host in ("localhost", "127.0.0.1", "::1"):
        host = "localhost"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = host if port in (None, {"http": 80, "https": 443}.get(scheme)) else f"{host}:{port}"
    return f"{scheme}://{netloc}{parts.path.rstrip('/')}"


def downgrade() -> None:
    with op.batch_alter_table("delete_intents", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_delete_intents_account_id"))
    op.drop_table("delete_intents")
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.drop_column("baselined_at")
    op.drop_table("account_keys")

"""account_usage: what each account holds, per purpose, kept by the database itself

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 14:00:00

A reservation reads the account's usage inside its lock; summing the account's rows there made
each reservation wait on the one before it for as long as the sum took (on an account of a
thousand files, most of a reservation's time). Triggers on ``files`` now keep the sums, in the
writer's own transaction, whichever transition or statement made the write: +1 file and its bytes
when a row starts holding quota, -1 when it stops. An account's usage is the sum of its rows in
``account_usage``, per purpose:

- SQLite has one writer at a time, so its triggers keep one row per account and purpose, changed
  in place (one page written);
- on PostgreSQL, one row changed in place would make every writer of the account queue on it (and
  two writers each holding a row the other wants could deadlock on it), so its triggers append a
  row per change, which an insert never waits for, and reservations fold an account's rows into
  one per purpose now and then (``Writer.fold_usage``).

Any later migration that rebuilds ``files`` (SQLite's batch mode copies the table and drops the
old one, triggers and all) must call ``create_triggers`` again; ``tests/test_ledger.py`` checks
that the triggers exist at head.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# schema.HELD, frozen here: a migration must not follow the code.
HELD = "('active', 'pending', 'unclaimed', 'generated')"
# An update that moves a row in or out of HELD, or changes what a held row counts as.
CHANGES = (
    f"(OLD.status IN {HELD}) <> (NEW.status IN {HELD}) OR (NEW.status IN {HELD} AND "
    "(OLD.bytes <> NEW.bytes OR OLD.purpose <> NEW.purpose OR OLD.account_id <> NEW.account_id))"
)
ADD = "INSERT INTO account_usage (account_id, purpose, files, bytes) "


def _sqlite_add(row: str, sign: str) -> str:
    """Add ``row`` (NEW or OLD) to its account's sums, as a +1 or -1 (``sign``)."""
    where = f"account_id = {row}.account_id AND purpose = {row}.purpose"
    return f"""
        UPDATE account_usage SET files = files {sign} 1, bytes = bytes {sign} {row}.bytes
        WHERE id = (SELECT min(id) FROM account_usage WHERE {where});
        {ADD} SELECT {row}.account_id, {row}.purpose, {sign}1, {sign}{row}.bytes
        WHERE NOT EXISTS (SELECT 1 FROM account_usage WHERE {where});"""


SQLITE_TRIGGERS = [
    f"""CREATE TRIGGER files_usage_insert AFTER INSERT ON files WHEN NEW.status IN {HELD}
    BEGIN {_sqlite_add("NEW", "+")}
    END""",
    f"""CREATE TRIGGER files_usage_delete AFTER DELETE ON files WHEN OLD.status IN {HELD}
    BEGIN {_sqlite_add("OLD", "-")}
    END""",
    # Two triggers for an update, one per side, because a trigger's statements cannot be skipped
    # one by one: the old row's part comes off if it held quota, the new row's goes on if it does.
    f"""CREATE TRIGGER files_usage_update AFTER UPDATE OF status, bytes, purpose, account_id ON files
    WHEN ({CHANGES}) AND OLD.status IN {HELD}
    BEGIN {_sqlite_add("OLD", "-")}
    END""",
    f"""CREATE TRIGGER files_usage_update_new AFTER UPDATE OF status, bytes, purpose, account_id ON files
    WHEN ({CHANGES}) AND NEW.status IN {HELD}
    BEGIN {_sqlite_add("NEW", "+")}
    END""",
]
POSTGRESQL_FUNCTION = f"""
CREATE FUNCTION filekeeper_account_usage() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' AND OLD.status IN {HELD} THEN
        {ADD} VALUES (OLD.account_id, OLD.purpose, -1, -OLD.bytes);
    END IF;
    IF TG_OP <> 'DELETE' AND NEW.status IN {HELD} THEN
        {ADD} VALUES (NEW.account_id, NEW.purpose, 1, NEW.bytes);
    END IF;
    RETURN NULL;
END
$$
"""
POSTGRESQL_TRIGGERS = [
    f"""CREATE TRIGGER files_usage_insert AFTER INSERT ON files FOR EACH ROW WHEN (NEW.status IN {HELD})
    EXECUTE FUNCTION filekeeper_account_usage()""",
    f"""CREATE TRIGGER files_usage_delete AFTER DELETE ON files FOR EACH ROW WHEN (OLD.status IN {HELD})
    EXECUTE FUNCTION filekeeper_account_usage()""",
    f"""CREATE TRIGGER files_usage_update AFTER UPDATE OF status, bytes, purpose, account_id ON files
    FOR EACH ROW WHEN ({CHANGES}) EXECUTE FUNCTION filekeeper_account_usage()""",
]
TRIGGERS = ("files_usage_insert", "files_usage_delete", "files_usage_update", "files_usage_update_new")


def create_triggers() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute(POSTGRESQL_FUNCTION)
        for statement in POSTGRESQL_TRIGGERS:
            op.execute(statement)
    else:
        for statement in SQLITE_TRIGGERS:
            op.execute(statement)


def upgrade() -> None:
    op.create_table(
        "account_usage",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("purpose", sa.String(length=64), nullable=False),
        sa.Column("files", sa.Integer(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name=op.f("fk_account_usage_account_id_accounts")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_account_usage")),
    )
    # Not covering: an update in place then changes the row alone, not an index entry too.
    op.create_index("ix_account_usage_account_id_purpose", "account_usage", ["account_id", "purpose"])
    # The sums count every held row; what the provider has deleted by itself (past
    # provider_expires_at) is taken off when they are read, over this index's range.
    op.drop_index("ix_files_account_id_status", table_name="files")
    op.create_index(
        "ix_files_account_id_status_provider_expires_at", "files", ["account_id", "status", "provider_expires_at"]
    )
    op.execute(
        f"{ADD} SELECT account_id, purpose, count(*), sum(bytes) FROM files WHERE status IN {HELD} "
        "GROUP BY account_id, purpose"
    )
    create_triggers()


def downgrade() -> None:
    postgresql = op.get_context().dialect.name == "postgresql"
    for name in TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {name}" + (" ON files" if postgresql else ""))
    if postgresql:
        op.execute("DROP FUNCTION IF EXISTS filekeeper_account_usage()")
    op.drop_index("ix_files_account_id_status_provider_expires_at", table_name="files")
    op.create_index("ix_files_account_id_status", "files", ["account_id", "status"])
    op.drop_table("account_usage")  # its index with it

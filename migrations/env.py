"""Alembic environment for the filekeeper ledger.

filekeeper passes an open connection (already inside a locked transaction) through
``config.attributes["connection"]``; run by hand, the URL comes from filekeeper's settings.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from filekeeper.schema import metadata

config = context.config


def run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def main() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        run(connection)
        return
    from filekeeper.config import load_settings
    from filekeeper.engine import make_engine

    settings = load_settings()
    if context.is_offline_mode():
        context.configure(url=settings.database_url, target_metadata=metadata, literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(settings.database_url)
    with engine.connect() as conn:
        run(conn)
        conn.commit()


main()

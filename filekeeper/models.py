"""Typed ORM classes over the ledger's tables, for scripts that query the ledger directly.

    from sqlalchemy import select
    from sqlalchemy.orm import Session
    from filekeeper.models import FileRow

    with Session(keeper.ledger.engine) as s:
        big = s.scalars(select(FileRow).where(FileRow.bytes > 10**8)).all()

filekeeper itself reads and writes through :mod:`filekeeper.ledger` in SQLAlchemy Core, so that
its commands do not pay for importing the ORM. The tables are defined once, in :mod:`.schema`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import DeclarativeBase, Mapped, relationship

from . import schema


class Base(DeclarativeBase):
    metadata = schema.metadata


class AccountRow(Base):
    __table__ = schema.accounts

    id: Mapped[int]
    name: Mapped[str]
    provider: Mapped[str]
    base_url: Mapped[str]
    key_fingerprint: Mapped[str]
    created_at: Mapped[datetime]


class FileRow(Base):
    __table__ = schema.files

    id: Mapped[int]
    account_id: Mapped[int]
    file_id: Mapped[str | None]
    filename: Mapped[str]
    bytes: Mapped[int]
    sha256: Mapped[str | None]
    purpose: Mapped[str]
    status: Mapped[str]
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime | None]
    provider_expires_at: Mapped[datetime | None]
    deleted_at: Mapped[datetime | None]

    account: Mapped[AccountRow] = relationship()


class EventRow(Base):
    __table__ = schema.events

    id: Mapped[int]
    at: Mapped[datetime]
    account_id: Mapped[int | None]
    file_pk: Mapped[int | None]
    file_id: Mapped[str | None]
    action: Mapped[str]
    actor: Mapped[str]
    pid: Mapped[int]
    detail: Mapped[dict[str, Any]]

    account: Mapped[AccountRow | None] = relationship()
    file: Mapped[FileRow | None] = relationship()

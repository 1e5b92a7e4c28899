"""Alembic environment of the pacs-node index.

``storage.migrate()`` passes an open connection in ``config.attributes["connection"]``.
From the command line (``alembic -c alembic.ini ...`` at the repository root) the URL comes
from ``-x url=...``, the ``PACS_NODE_DATABASE_URL`` environment variable, or
``sqlalchemy.url`` in the ini file.
"""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import Connection

from storage.engine import create_engine_for
from storage.schema import Base

config = context.config
target_metadata = Base.metadata


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def _url() -> str:
    url = (context.get_x_argument(as_dictionary=True).get("url")
           or os.environ.get("PACS_NODE_DATABASE_URL")
           or config.get_main_option("sqlalchemy.url"))
    if not url:
        raise RuntimeError("no database URL: pass -x url=... or set PACS_NODE_DATABASE_URL")
    return url


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        return
    if context.is_offline_mode():
        context.configure(url=_url(), target_metadata=target_metadata,
                          literal_binds=True, dialect_opts={"paramstyle": "named"})
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine_for(_url())
    try:
        with engine.connect() as conn:
            _configure(conn)
            conn.commit()
    finally:
        engine.dispose()


run()

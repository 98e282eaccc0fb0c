"""The RAG in a PostgreSQL server, for clusters: many workers on many machines write at once.

The database must exist; the tables are created in the first schema of the connection's
search_path, so several runs can share a database with ``?options=-csearch_path%3Dmy_run`` in the
URL (the schema must exist too).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import psycopg

from neurosam.rag.common import without_password
from neurosam.rag.sql import SqlRag

CONNECT_TIMEOUT_S = 5
# Any fixed number: it names the lock that serializes table creation between processes.
SCHEMA_LOCK_KEY = 0x6E65_7572_6F73_616D


class PostgresRag(SqlRag):
    placeholder = "%s"
    binary_type = "BYTEA"
    database_error = psycopg.Error

    def __init__(self, url: str):
        super().__init__(url, f"PostgreSQL database {without_password(url)}")

    def _connect(self) -> psycopg.Connection:
        return psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)

    @contextmanager
    def _transaction(self) -> Iterator[psycopg.Cursor]:
        with self.connection.transaction(), self.connection.cursor() as cursor:
            yield cursor

    def _table_names(self, cursor: psycopg.Cursor) -> list[str]:
        """Those of the first schema of the search path, where the tables are created."""
        return [name for name, in cursor.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")]

    def _serialize_schema_creation(self, cursor: psycopg.Cursor) -> None:
        """Concurrent CREATE TABLE IF NOT EXISTS can fail on PostgreSQL's catalog; one at a time."""
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))

"""The embedded default: one SQLite file per run, written by many worker processes at once.

WAL mode lets readers go on while one process writes; writers queue on the busy timeout, and
each write starts with BEGIN IMMEDIATE, so a writer waits for the lock up front instead of failing
when it upgrades a read lock (which the busy timeout cannot resolve).
"""

from __future__ import annotations

import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from neurosam.rag.sql import SqlRag

BUSY_TIMEOUT_S = 120


class SqliteRag(SqlRag):
    """``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``; missing folders are made."""

    database_error = sqlite3.Error

    def __init__(self, url: str):
        self.path = Path(url.removeprefix("sqlite:///"))
        super().__init__(url, f"SQLite database {self.path}")

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        _use_wal(connection)
        # Safe with WAL: a killed process loses nothing committed; only a power cut may lose the
        # last transactions, which the done markers then redo.
        connection.execute("PRAGMA synchronous = NORMAL")
        return connection

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Cursor]:
        cursor = self.connection.cursor()
        cursor.execute("BEGIN IMMEDIATE")
        try:
            yield cursor
        except BaseException:
            cursor.execute("ROLLBACK")
            raise
        cursor.execute("COMMIT")

    def _table_names(self, cursor: sqlite3.Cursor) -> list[str]:
        return [name for name, in cursor.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]


def _use_wal(connection: sqlite3.Connection) -> None:
    """Opening a WAL database while other processes open it at the same moment (workers starting
    together) can answer "database is locked" at once, without waiting on the busy timeout (seen
    in CI): so retry until the timeout."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            connection.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)

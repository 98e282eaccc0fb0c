"""The RAG in an SQL database; SQLite and PostgreSQL share all of it but connecting, transactions
and the name of the binary type.

``node_blocks`` and ``edge_blocks`` hold a row per block (block id, count, packed value); reads
walk them in block id order by the primary key, so writes keep no other index up to date. Both
databases speak the same dialect here (ON CONFLICT upserts); the statements are written with
``?`` placeholders and a backend with another placeholder style converts them in ``_sql``.
"""

from __future__ import annotations

from abc import abstractmethod
from contextlib import AbstractContextManager
from typing import Any

from neurosam.rag.base import RagError, RagStore
from neurosam.rag.common import EDGE_BLOCKS, NODE_BLOCKS, WRITE_PROBE_TASK, first_line

COUNT_COLUMN = {NODE_BLOCKS: "node_count", EDGE_BLOCKS: "edge_count"}
INSERT_BLOCK_DONE = "INSERT INTO blocks_done (task, block_id) VALUES (?, ?) ON CONFLICT DO NOTHING"
DELETE_BLOCKS_DONE = "DELETE FROM blocks_done WHERE task = ?"
UPSERT_STAMP = "INSERT INTO task_stamps (task, stamp) VALUES (?, ?) ON CONFLICT (task) DO UPDATE SET stamp = excluded.stamp"


def schema(binary_type: str) -> list[str]:
    tables = [
        f"CREATE TABLE IF NOT EXISTS {table} (block_id BIGINT PRIMARY KEY, {count} BIGINT NOT NULL, packed {binary_type} NOT NULL)"
        for table, count in COUNT_COLUMN.items()
    ]
    return [
        *tables,
        "CREATE TABLE IF NOT EXISTS blocks_done (task TEXT NOT NULL, block_id BIGINT NOT NULL, PRIMARY KEY (task, block_id))",
        "CREATE TABLE IF NOT EXISTS task_stamps (task TEXT PRIMARY KEY, stamp TEXT NOT NULL)",
    ]


class SqlRag(RagStore):
    """One connection per store: open one store per process, never share it across a fork."""

    placeholder = "?"
    binary_type = "BLOB"
    database_error: type[Exception] = Exception

    def __init__(self, url: str, name: str):
        self.url = url
        self.name = name
        try:
            self.connection = self._connect()
            with self._transaction() as cursor:
                self._serialize_schema_creation(cursor)
                self._refuse_legacy(self._table_names(cursor))
                for statement in schema(self.binary_type):
                    cursor.execute(statement)
        except (self.database_error, OSError) as error:
            raise RagError(f"cannot open {self.name}: {first_line(error)}") from error
        except RagError:
            self.connection.close()
            raise

    @abstractmethod
    def _connect(self) -> Any:
        """A DB-API connection in autocommit mode; writes group statements with ``_transaction``."""

    @abstractmethod
    def _transaction(self) -> AbstractContextManager[Any]:
        """A cursor inside a write transaction, committed on success and rolled back on error."""

    @abstractmethod
    def _table_names(self, cursor) -> list[str]:
        """The tables the connection sees without qualifying their names."""

    def _serialize_schema_creation(self, cursor) -> None:
        """Databases whose CREATE ... IF NOT EXISTS can race between processes lock here."""

    def _sql(self, statement: str) -> str:
        return statement.replace("?", self.placeholder)

    def _read(self, statement: str, parameters: tuple = ()) -> list[tuple]:
        return self.connection.execute(self._sql(statement), parameters).fetchall()

    def check_writable(self) -> None:
        try:
            with self._transaction() as cursor:
                cursor.execute(self._sql(INSERT_BLOCK_DONE), (WRITE_PROBE_TASK, 0))
                cursor.execute(self._sql(DELETE_BLOCKS_DONE), (WRITE_PROBE_TASK,))
        except self.database_error as error:
            raise RagError(f"cannot write to {self.name}: {first_line(error)}") from error

    def _put_block(self, table: str, block_id: int, count: int, packed: bytes) -> None:
        column = COUNT_COLUMN[table]
        statement = (
            f"INSERT INTO {table} (block_id, {column}, packed) VALUES (?, ?, ?) "
            f"ON CONFLICT (block_id) DO UPDATE SET {column} = excluded.{column}, packed = excluded.packed"
        )
        with self._transaction() as cursor:
            cursor.execute(self._sql(statement), (block_id, count, packed))

    def _block_counts(self, table: str, after: int, limit: int | None) -> list[tuple[int, int]]:
        statement = f"SELECT block_id, {COUNT_COLUMN[table]} FROM {table} WHERE block_id > ? ORDER BY block_id"
        if limit is None:
            return self._read(statement, (after,))
        return self._read(f"{statement} LIMIT ?", (after, limit))

    def _packed_blocks(self, table: str, after: int, last: int | None) -> list[bytes]:
        statement = f"SELECT packed FROM {table} WHERE block_id > ?"
        if last is None:
            rows = self._read(f"{statement} ORDER BY block_id", (after,))
        else:
            rows = self._read(f"{statement} AND block_id <= ? ORDER BY block_id", (after, last))
        return [bytes(packed) for packed, in rows]

    def delete_graph(self) -> None:
        with self._transaction() as cursor:
            for table in COUNT_COLUMN:
                cursor.execute(f"DELETE FROM {table}")

    def mark_block_done(self, task: str, block_id: int) -> None:
        with self._transaction() as cursor:
            cursor.execute(self._sql(INSERT_BLOCK_DONE), (task, int(block_id)))

    def done_blocks(self, task: str) -> set[int]:
        return {row[0] for row in self._read("SELECT block_id FROM blocks_done WHERE task = ?", (task,))}

    def forget_blocks(self, task: str) -> None:
        with self._transaction() as cursor:
            cursor.execute(self._sql(DELETE_BLOCKS_DONE), (task,))

    def record_stamp(self, task: str, stamp: str) -> None:
        with self._transaction() as cursor:
            cursor.execute(self._sql(UPSERT_STAMP), (task, stamp))

    def task_stamp(self, task: str) -> str | None:
        rows = self._read("SELECT stamp FROM task_stamps WHERE task = ?", (task,))
        return rows[0][0] if rows else None

    def close(self) -> None:
        self.connection.close()

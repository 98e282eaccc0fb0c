"""The RAG in an SQL database; SQLite and PostgreSQL share all of it but connecting and transactions.

Edges are kept long, one row per (u, v, statistic), so a new statistic needs no schema change. Segment reads them in primary-key order, so
every block's writes keep no other index up to date. Both databases speak the same dialect here
(ON CONFLICT upserts, row-value comparisons); the statements are written with ``?`` placeholders
and a backend with another placeholder style converts them in ``_sql``.
"""

from __future__ import annotations

from abc import abstractmethod
from contextlib import AbstractContextManager
from typing import Any, Iterator

import numpy as np
from funlib.geometry import Roi

from neurosam.rag.base import RagError, RagStore
from neurosam.rag.common import WRITE_PROBE_TASK, check_page_size, edge_columns, edge_page, first_line, node_rows, nodes_from_rows, roi_bounds

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS nodes ("
    " id BIGINT PRIMARY KEY, z DOUBLE PRECISION NOT NULL, y DOUBLE PRECISION NOT NULL,"
    " x DOUBLE PRECISION NOT NULL, size BIGINT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS nodes_by_position ON nodes (z, y, x)",
    "CREATE TABLE IF NOT EXISTS edges ("
    " u BIGINT NOT NULL, v BIGINT NOT NULL, statistic TEXT NOT NULL, value DOUBLE PRECISION NOT NULL,"
    " PRIMARY KEY (u, v, statistic))",
    "CREATE TABLE IF NOT EXISTS blocks_done (task TEXT NOT NULL, block_id BIGINT NOT NULL, PRIMARY KEY (task, block_id))",
    "CREATE TABLE IF NOT EXISTS task_stamps (task TEXT PRIMARY KEY, stamp TEXT NOT NULL)",
)

UPSERT_NODE = (
    "INSERT INTO nodes (id, z, y, x, size) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (id) DO UPDATE SET z = excluded.z, y = excluded.y, x = excluded.x, size = excluded.size"
)
UPSERT_EDGE = (
    "INSERT INTO edges (u, v, statistic, value) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (u, v, statistic) DO UPDATE SET value = excluded.value"
)
INSERT_BLOCK_DONE = "INSERT INTO blocks_done (task, block_id) VALUES (?, ?) ON CONFLICT DO NOTHING"
DELETE_BLOCKS_DONE = "DELETE FROM blocks_done WHERE task = ?"
UPSERT_STAMP = "INSERT INTO task_stamps (task, stamp) VALUES (?, ?) ON CONFLICT (task) DO UPDATE SET stamp = excluded.stamp"


class SqlRag(RagStore):
    """One connection per store: open one store per process, never share it across a fork."""

    placeholder = "?"
    database_error: type[Exception] = Exception

    def __init__(self, url: str, name: str):
        self.url = url
        self.name = name
        try:
            self.connection = self._connect()
            with self._transaction() as cursor:
                self._serialize_schema_creation(cursor)
                for statement in SCHEMA:
                    cursor.execute(statement)
        except (self.database_error, OSError) as error:
            raise RagError(f"cannot open {self.name}: {first_line(error)}") from error

    @abstractmethod
    def _connect(self) -> Any:
        """A DB-API connection in autocommit mode; writes group statements with ``_transaction``."""

    @abstractmethod
    def _transaction(self) -> AbstractContextManager[Any]:
        """A cursor inside a write transaction, committed on success and rolled back on error."""

    def _serialize_schema_creation(self, cursor) -> None:
        """Databases whose CREATE ... IF NOT EXISTS can race between processes lock here."""

    def _sql(self, statement: str) -> str:
        return statement.replace("?", self.placeholder)

    def _read(self, statement: str, parameters: tuple = ()) -> list[tuple]:
        return self.connection.execute(self._sql(statement), parameters).fetchall()

    def _roi_filter(self, roi: Roi) -> tuple[str, tuple]:
        """A WHERE clause on the nodes aliased ``n`` that keeps centres inside the half-open ROI."""
        bounds = roi_bounds(roi)
        if not bounds:
            return "", ()
        clause = " AND ".join(f"n.{axis} >= ? AND n.{axis} < ?" for axis, _, _ in bounds)
        return f" WHERE {clause}", tuple(value for _, begin, end in bounds for value in (begin, end))

    def check_writable(self) -> None:
        try:
            with self._transaction() as cursor:
                cursor.execute(self._sql(INSERT_BLOCK_DONE), (WRITE_PROBE_TASK, 0))
                cursor.execute(self._sql(DELETE_BLOCKS_DONE), (WRITE_PROBE_TASK,))
        except self.database_error as error:
            raise RagError(f"cannot write to {self.name}: {first_line(error)}") from error

    def write_nodes(self, ids: np.ndarray, positions: np.ndarray, sizes: np.ndarray) -> None:
        rows = node_rows(ids, positions, sizes)
        if rows:
            with self._transaction() as cursor:
                cursor.executemany(self._sql(UPSERT_NODE), rows)

    def write_edges(self, u: np.ndarray, v: np.ndarray, statistics: dict[str, np.ndarray]) -> None:
        low, high, columns = edge_columns(u, v, statistics)
        rows = [(a, b, name, columns[name][i]) for i, (a, b) in enumerate(zip(low, high)) for name in sorted(columns)]
        if rows:
            with self._transaction() as cursor:
                cursor.executemany(self._sql(UPSERT_EDGE), rows)

    def read_nodes(self) -> dict[str, np.ndarray]:
        return nodes_from_rows(self._read("SELECT id, z, y, x, size FROM nodes ORDER BY id"))

    def iter_edges(self, statistic: str, page_size: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Pages in (u, v) order, which the primary key (u, v, statistic) walks directly."""
        check_page_size(page_size)
        last = (-1, -1)
        statement = "SELECT u, v, value FROM edges WHERE statistic = ? AND (u, v) > (?, ?) ORDER BY u, v LIMIT ?"
        while True:
            rows = self._read(statement, (statistic, *last, page_size))
            if rows:
                yield edge_page(rows)
                last = rows[-1][:2]
            if len(rows) < page_size:
                return

    def delete_in_roi(self, roi: Roi) -> None:
        where, parameters = self._roi_filter(roi)
        nodes_in_roi = f"SELECT n.id FROM nodes n{where}"
        with self._transaction() as cursor:
            cursor.execute(self._sql(f"DELETE FROM edges WHERE u IN ({nodes_in_roi})"), parameters)
            cursor.execute(self._sql(f"DELETE FROM nodes WHERE id IN ({nodes_in_roi})"), parameters)

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

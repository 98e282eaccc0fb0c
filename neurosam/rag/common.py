"""What every RAG backend does the same way: checking and converting arrays, ROI bounds, naming.

Fragment ids are uint64 in the pipeline, but SQLite, PostgreSQL and BSON integers are signed
64-bit. Ids below 2**63 are the same number as int64, so they are stored as plain integers and the
database's ordering is the uint64 ordering. Larger ids are refused rather than reinterpreted as
negative numbers, which would put them first in ascending order. Fragment ids in practice stay far
below 2**63 (block number times voxels per block).
"""

from __future__ import annotations

import re
from typing import Iterable
from urllib.parse import urlsplit, urlunsplit

import numpy as np
from funlib.geometry import Roi

from neurosam.io.volumes import AXES

ID_LIMIT = 2**63
STATISTIC_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
WRITE_PROBE_TASK = "neurosam-check-writable"
"""The task ``check_writable`` records a block of, and forgets again."""


def ids_to_db(ids: np.ndarray) -> np.ndarray:
    """uint64 ids as int64, refusing ids the database cannot store as the same number."""
    ids = np.asarray(ids, dtype=np.uint64)
    if ids.size and ids.max() >= ID_LIMIT:
        raise ValueError(f"fragment id {ids.max()} is too large for the RAG: ids must be below 2**63")
    return ids.astype(np.int64)


def ids_from_db(values: Iterable[int]) -> np.ndarray:
    return np.fromiter(values, dtype=np.int64).astype(np.uint64)


def edge_page(rows: list[tuple]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(u, v, value) rows as three arrays, converted in one pass rather than value by value."""
    table = np.array(rows, dtype=[("u", np.int64), ("v", np.int64), ("value", np.float64)])
    return table["u"].astype(np.uint64), table["v"].astype(np.uint64), np.ascontiguousarray(table["value"])


def node_rows(ids: np.ndarray, positions: np.ndarray, sizes: np.ndarray) -> list[tuple]:
    """(id, z, y, x, size) tuples sorted by id.

    Sorted so that concurrent writers lock rows in the same order and cannot deadlock."""
    ids = ids_to_db(ids)
    positions = np.asarray(positions, dtype=np.float64)
    if positions.shape != (len(ids), 3):
        raise ValueError(f"positions must have shape ({len(ids)}, 3) for {len(ids)} ids, not {positions.shape}")
    sizes = np.asarray(sizes, dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    return [
        (node_id, *position, size)
        for node_id, position, size in zip(ids[order].tolist(), positions[order].tolist(), sizes[order].tolist(), strict=True)
    ]


def edge_columns(u: np.ndarray, v: np.ndarray, statistics: dict[str, np.ndarray]) -> tuple[list[int], list[int], dict[str, list[float]]]:
    """Edges as ``u < v`` (swapping pairs given the other way round), sorted by (u, v)."""
    for name in statistics:
        if not STATISTIC_NAME.match(name):
            raise ValueError(f"statistic name {name!r}: use letters, digits, '_' and '-' only")
    u, v = ids_to_db(u), ids_to_db(v)
    if u.size and not statistics:
        raise ValueError("edges need at least one statistic")
    if u.shape != v.shape or any(np.shape(values) != u.shape for values in statistics.values()):
        raise ValueError("u, v and every statistic's array must have the same length")
    low, high = np.minimum(u, v), np.maximum(u, v)
    order = np.lexsort((high, low))
    columns = {name: np.asarray(values, dtype=np.float64)[order].tolist() for name, values in statistics.items()}
    return low[order].tolist(), high[order].tolist(), columns


def nodes_from_rows(rows: list[tuple]) -> dict[str, np.ndarray]:
    """The arrays ``read_nodes`` returns, from (id, z, y, x, size) rows."""
    ids, z, y, x, sizes = zip(*rows) if rows else ((),) * 5
    return {
        "ids": ids_from_db(ids),
        "positions": np.column_stack([z, y, x]).astype(np.float64),
        "sizes": np.array(sizes, dtype=np.int64),
    }


def check_page_size(page_size: int) -> None:
    if page_size < 1:
        raise ValueError(f"page_size must be at least 1, not {page_size}")


def roi_bounds(roi: Roi) -> list[tuple[str, int, int]]:
    """(axis, begin, end) of each bounded axis of ``roi``; an unbounded axis constrains nothing."""
    return [
        (axis, begin, end)
        for axis, begin, end in zip(AXES, roi.begin, roi.end, strict=True)
        if begin is not None and end is not None
    ]


SECRET_QUERY_KEYS = ("password", "pass", "passwd", "secret", "token")


def without_password(url: str) -> str:
    """The URL to name in messages and logs: a password in the user-info part or in the query
    string (``?password=...``) shows as ***."""
    parts = urlsplit(url)
    if parts.password is not None:
        parts = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1))
    if parts.query:
        pairs = [pair.partition("=") for pair in parts.query.split("&")]
        masked = [f"{key}={'***' if key.lower() in SECRET_QUERY_KEYS else value}" if sep else key for key, sep, value in pairs]
        parts = parts._replace(query="&".join(masked))
    return urlunsplit(parts)


def first_line(error: Exception, limit: int = 200) -> str:
    """A driver's error as one readable line: pymongo's, for one, carries a topology dump."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    text = text.split(", Timeout:")[0].split(", Topology Description:")[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."

"""What every RAG backend does the same way: checking arrays, packing a block's nodes or edges
into one compressed value, naming.

A block's nodes and a block's edges are each stored as one value: named columns, each array's
bytes regrouped by significance (all first bytes, then all second bytes, ...) and the whole
compressed with zstd. Ids are stored as steps from the previous id and ``v`` as ``v - u``, so
the high bytes are nearly all zero and compress to almost nothing; statistics keep the dtype
the caller gives them (``contact_statistics`` gives float32 where the affinities are float32,
integers for counts). On the scale benchmark this takes about 12 bytes an edge, against over
60 for a row per edge in PostgreSQL (tuple header, line pointer and primary key alone). Ids are
uint64 throughout: the databases' signed integers hold only block ids.
"""

from __future__ import annotations

import json
import re
import struct
from urllib.parse import urlsplit, urlunsplit

import numpy as np
from numcodecs import Zstd

STATISTIC_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
WRITE_PROBE_TASK = "neurosam-check-writable"
"""The task ``check_writable`` records a block of, and forgets again."""
NODE_BLOCKS, EDGE_BLOCKS = "node_blocks", "edge_blocks"
"""The tables (collections) of the nodes and of the edges, one row (document) per block."""
LEGACY_TABLES = ("nodes", "edges")
"""The tables of the earlier format, a row per node and a row per edge and statistic."""
EDGE_ENDS = ("u_steps", "v_above_u")
"""The columns of a block's packed edges that are not statistics."""
COMPRESSION = Zstd(level=3)
HEADER_LENGTH = struct.Struct("<I")


def pack_columns(columns: dict[str, np.ndarray]) -> bytes:
    """Named arrays as one compressed value: a JSON header (name, dtype, shape of each), then
    each array's bytes regrouped by significance, which zstd compresses far better than
    interleaved numbers."""
    arrays = {name: np.ascontiguousarray(values) for name, values in columns.items()}
    header = json.dumps([[name, values.dtype.str, values.shape] for name, values in arrays.items()]).encode()
    planes = [values.view(np.uint8).reshape(-1, values.dtype.itemsize).T.tobytes() for values in arrays.values()]
    return bytes(COMPRESSION.encode(b"".join([HEADER_LENGTH.pack(len(header)), header, *planes])))


def unpack_columns(packed: bytes) -> dict[str, np.ndarray]:
    raw = memoryview(COMPRESSION.decode(packed))
    (length,) = HEADER_LENGTH.unpack_from(raw)
    start = HEADER_LENGTH.size + length
    columns = {}
    for name, dtype, shape in json.loads(bytes(raw[HEADER_LENGTH.size : start])):
        dtype = np.dtype(dtype)
        size = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
        planes = np.frombuffer(raw[start : start + size], dtype=np.uint8).reshape(dtype.itemsize, -1)
        columns[name] = np.ascontiguousarray(planes.T).view(dtype).reshape(shape)
        start += size
    return columns


def steps(ids: np.ndarray) -> np.ndarray:
    return np.diff(ids, prepend=np.uint64(0))


def pack_nodes(ids: np.ndarray, positions: np.ndarray, sizes: np.ndarray) -> bytes:
    """Nodes sorted by id; positions at float32 (a nanometre at 16 mm from the origin), which
    only ever locate a fragment."""
    ids = np.asarray(ids, dtype=np.uint64)
    positions = np.asarray(positions, dtype=np.float64)
    if positions.shape != (len(ids), 3):
        raise ValueError(f"positions must have shape ({len(ids)}, 3) for {len(ids)} ids, not {positions.shape}")
    sizes = np.asarray(sizes, dtype=np.int64)
    if sizes.shape != ids.shape:
        raise ValueError("ids and sizes must have the same length")
    order = np.argsort(ids, kind="stable")
    return pack_columns({"id_steps": steps(ids[order]), "positions": positions[order].astype(np.float32), "sizes": sizes[order]})


def unpack_nodes(blocks: list[bytes]) -> dict[str, np.ndarray]:
    """The arrays ``read_nodes`` returns, from packed blocks."""
    columns = [unpack_columns(packed) for packed in blocks]
    return {
        "ids": np.concatenate([np.zeros(0, np.uint64)] + [np.cumsum(c["id_steps"], dtype=np.uint64) for c in columns]),
        "positions": np.concatenate([np.zeros((0, 3))] + [c["positions"] for c in columns]).astype(np.float64),
        "sizes": np.concatenate([np.zeros(0, np.int64)] + [c["sizes"] for c in columns]),
    }


def pack_edges(u: np.ndarray, v: np.ndarray, statistics: dict[str, np.ndarray]) -> bytes:
    """Edges as ``u < v`` (swapping pairs given the other way round), sorted by (u, v)."""
    for name in statistics:
        if not STATISTIC_NAME.match(name) or name in EDGE_ENDS:
            raise ValueError(f"statistic name {name!r}: use letters, digits, '_' and '-' only, and neither of {EDGE_ENDS}")
    u, v = np.asarray(u, dtype=np.uint64), np.asarray(v, dtype=np.uint64)
    statistics = {name: np.asarray(values) for name, values in statistics.items()}
    if u.size and not statistics:
        raise ValueError("edges need at least one statistic")
    if u.shape != v.shape or any(values.shape != u.shape for values in statistics.values()):
        raise ValueError("u, v and every statistic's array must have the same length")
    low, high = np.minimum(u, v), np.maximum(u, v)
    order = np.lexsort((high, low))
    low, high = low[order], high[order]
    if np.any((low[1:] == low[:-1]) & (high[1:] == high[:-1])):
        raise ValueError("an edge (u, v) is given twice: a block's edges must be distinct pairs")
    ends = dict(zip(EDGE_ENDS, (steps(low), high - low)))
    return pack_columns({**ends, **{name: values[order] for name, values in statistics.items()}})


def unpack_edges(blocks: list[bytes]) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """(u, v, statistics) of packed blocks, in block order; a statistic that some block with
    edges lacks is left out."""
    columns = [unpack_columns(packed) for packed in blocks]
    u = [np.cumsum(c.pop(EDGE_ENDS[0]), dtype=np.uint64) for c in columns]
    v = [low + c.pop(EDGE_ENDS[1]) for low, c in zip(u, columns)]
    with_edges = [set(c) for c, low in zip(columns, u) if len(low)]
    names = sorted(set.intersection(*with_edges)) if with_edges else []
    empty = np.zeros(0, dtype=np.uint64)
    statistics = {name: np.concatenate([c[name] for c in columns if name in c]) for name in names}
    return np.concatenate([empty, *u]), np.concatenate([empty, *v]), statistics


def check_page_size(page_size: int) -> None:
    if page_size < 1:
        raise ValueError(f"page_size must be at least 1, not {page_size}")


def blocks_of_a_page(counts: list[tuple[int, int]], page_size: int) -> int:
    """The last block id of the next page: as many of the following blocks (id, count) as hold
    at most ``page_size`` items together, and at least one."""
    total, last = 0, counts[0][0]
    for block_id, count in counts:
        total += count
        if total > page_size and block_id != counts[0][0]:
            break
        last = block_id
    return last




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

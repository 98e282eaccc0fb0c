"""The region adjacency graph store: one interface, one backend per database.

Nodes are fragments (id, centre in nm, size in voxels); edges are fragment pairs ``u < v`` with
the statistics of the affinities over their contact (``neurosam.graph.agglomeration``), one
value per statistic. Both are stored per block: one row (document) holds a block's nodes, one a
block's edges, packed into one compressed value (``neurosam.rag.common``). A block's write
replaces its row in one upsert, so a block retried after a crash duplicates nothing, a
block recomputed leaves nothing stale behind, and a block costs one statement per table.
Blocks record that they finished in the same store (``mark_block_done``), which is how a
resumed run knows what it may skip, and each task's stamp (``record_stamp``), by which it
checks that the outputs still hold what those blocks wrote.

A backend implements the storage of rows (``_put_block``, ``_block_counts``, ``_packed_blocks``)
and of done records; packing, paging and checks are here and in ``common``, the same for all.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Iterable, Iterator, NamedTuple

import numpy as np

from neurosam.rag.common import (
    EDGE_BLOCKS,
    LEGACY_TABLES,
    NODE_BLOCKS,
    blocks_of_a_page,
    check_page_size,
    pack_edges,
    pack_nodes,
    unpack_edges,
    unpack_nodes,
)


class RagError(RuntimeError):
    """The database cannot be used (unreachable, read-only, wrong schema): the message names it."""


class EdgePage(NamedTuple):
    """Edges of whole blocks: ``u``, ``v`` (uint64) and an array per statistic, in the dtype it
    was written in."""

    u: np.ndarray
    v: np.ndarray
    statistics: dict[str, np.ndarray]


class RagStore(ABC):
    """Arrays in, arrays out: ids are uint64, positions float64 (N, 3) in nm (z, y, x), kept at
    float32 precision. ``block_id`` is daisy's block id; the id of the block that owns the
    fragments (and the edges, by ``u``) it writes."""

    name: str

    @abstractmethod
    def check_writable(self) -> None:
        """Raise RagError naming the database when it cannot be reached or written."""

    def write_nodes(self, block_id: int, ids: np.ndarray, positions: np.ndarray, sizes: np.ndarray) -> None:
        """Replace the block's nodes (with none, if ``ids`` is empty)."""
        self._put_block(NODE_BLOCKS, int(block_id), len(ids), pack_nodes(ids, positions, sizes))

    def write_edges(self, block_id: int, u: np.ndarray, v: np.ndarray, statistics: dict[str, np.ndarray]) -> None:
        """Replace the block's edges; ``statistics`` maps a statistic's name to one value per edge."""
        self._put_block(EDGE_BLOCKS, int(block_id), len(u), pack_edges(u, v, statistics))

    def read_nodes(self) -> dict[str, np.ndarray]:
        """Every node: keys ``ids``, ``positions``, ``sizes``."""
        return unpack_nodes(self._packed_blocks(NODE_BLOCKS, -1, None))

    def iter_edges(self, page_size: int) -> Iterator[EdgePage]:
        """Every edge with all its statistics in one pass, in pages of whole blocks in block
        order: each page holds at most ``page_size`` edges, or one block that alone has more.
        Within a block edges are sorted by (u, v)."""
        check_page_size(page_size)
        after = -1
        while counts := self._block_counts(EDGE_BLOCKS, after, page_size):
            last = blocks_of_a_page(counts, page_size)
            yield EdgePage(*unpack_edges(self._packed_blocks(EDGE_BLOCKS, after, last)))
            after = last

    def read_edges(self, block_id: int) -> EdgePage:
        """The edges one block wrote (those whose ``u`` it owns), sorted by (u, v): what a
        super-block of the global agglomeration reads of the graph."""
        return EdgePage(*unpack_edges(self._packed_blocks(EDGE_BLOCKS, int(block_id) - 1, int(block_id))))

    def edge_count(self) -> int:
        return sum(count for _, count in self._block_counts(EDGE_BLOCKS, -1, None))

    @abstractmethod
    def delete_graph(self) -> None:
        """Drop every node and edge: a fragments task starting afresh replaces the whole graph,
        and blocks of another grid or ROI must leave nothing behind."""

    @abstractmethod
    def mark_block_done(self, task: str, block_id: int) -> None: ...

    @abstractmethod
    def done_blocks(self, task: str) -> set[int]: ...

    @abstractmethod
    def forget_blocks(self, task: str) -> None:
        """Drop the record of a task's finished blocks: its output was overwritten since."""

    @abstractmethod
    def record_stamp(self, task: str, stamp: str) -> None:
        """Record the stamp a task's outputs carry (``neurosam.pipeline.stamps``), replacing the last."""

    @abstractmethod
    def task_stamp(self, task: str) -> str | None:
        """The stamp last recorded for the task; None if none was."""

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def _put_block(self, table: str, block_id: int, count: int, packed: bytes) -> None:
        """Upsert the row ``block_id`` of ``table`` in one statement."""

    @abstractmethod
    def _block_counts(self, table: str, after: int, limit: int | None) -> list[tuple[int, int]]:
        """(block id, count) of the rows of ``table`` after block ``after``, in block order; at
        most ``limit`` of them (all if None)."""

    @abstractmethod
    def _packed_blocks(self, table: str, after: int, last: int | None) -> list[bytes]:
        """The packed values of the rows of ``table`` with ``after < block id <= last`` (no upper
        bound if None), in block order."""

    def _refuse_legacy(self, tables: Iterable[str]) -> None:
        """An earlier neurosam's RAG has done records but not the tables this one reads: resumed,
        it would skip every block and find no graph."""
        if set(LEGACY_TABLES) & set(tables):
            raise RagError(
                f"{self.name} holds a RAG in an earlier format (a row per edge and statistic), which cannot be "
                "resumed: rerun into a new RAG (a new rag.url, or delete this one)"
            )

    def __enter__(self) -> "RagStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

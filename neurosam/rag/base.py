"""The region adjacency graph store: one interface, one backend per database.

Nodes are fragments (id, centre in nm, size in voxels); edges are fragment pairs ``u < v`` with
the statistics of the affinities over their contact (``neurosam.graph.agglomeration``), one
value per statistic. Every write is an upsert keyed by id or (u, v), so a block
that is retried after a crash duplicates nothing. Blocks record that they finished in the same
store (``mark_block_done``), which is how a resumed run knows what it may skip, and each task's
stamp (``record_stamp``), by which it checks that the outputs still hold what those blocks wrote.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Iterator

import numpy as np
from funlib.geometry import Roi


class RagError(RuntimeError):
    """The database cannot be used (unreachable, read-only, wrong schema): the message names it."""


class RagStore(ABC):
    """Arrays in, arrays out: ids are uint64, positions float64 (N, 3) in nm (z, y, x)."""

    @abstractmethod
    def check_writable(self) -> None:
        """Raise RagError naming the database when it cannot be reached or written."""

    @abstractmethod
    def write_nodes(self, ids: np.ndarray, positions: np.ndarray, sizes: np.ndarray) -> None: ...

    @abstractmethod
    def write_edges(self, u: np.ndarray, v: np.ndarray, statistics: dict[str, np.ndarray]) -> None:
        """Upsert edges; ``statistics`` maps a statistic's name to one value per edge."""

    @abstractmethod
    def read_nodes(self) -> dict[str, np.ndarray]:
        """Every node: keys ``ids``, ``positions``, ``sizes``."""

    @abstractmethod
    def iter_edges(self, statistic: str, page_size: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(u, v, value) pages of every edge that has ``statistic``, in the order of the
        backend's primary key: one pass serves every threshold, and writes keep no index up to
        date beyond the key's."""

    @abstractmethod
    def delete_in_roi(self, roi: Roi) -> None:
        """Drop the nodes whose centre lies in ``roi`` and the edges whose ``u`` does: a block
        recomputed with other parameters must not leave stale fragments behind."""

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

    def __enter__(self) -> "RagStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

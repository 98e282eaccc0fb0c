"""The RAG in MongoDB, for clusters that already run one.

Collections: ``nodes`` {_id: fragment id, z, y, x, size} indexed on (z, y, x); ``edges``
{u, v, statistics: {name: value}}, one document per edge whatever the number of statistics,
with a unique index on (u, v); ``blocks_done`` {task, block_id}, unique; ``task_stamps``
{_id: task, stamp}. Writes are
unordered bulk upserts; MongoDB retries an upsert that races another on a unique key itself.

``mongomock://host/db`` runs the same code on mongomock, an in-process stand-in the tests use
when no MongoDB server is given.
"""

from __future__ import annotations

import inspect
from typing import Iterator

import numpy as np
import pymongo
from funlib.geometry import Roi
from pymongo import UpdateOne
from pymongo.errors import PyMongoError

from neurosam.rag.base import RagError, RagStore
from neurosam.rag.common import (
    WRITE_PROBE_TASK,
    check_page_size,
    edge_columns,
    edge_page,
    first_line,
    node_rows,
    nodes_from_rows,
    roi_bounds,
    without_password,
)

# pymongo waits 30 s for an unreachable server by default; a worker should fail sooner.
FAST_FAIL_OPTIONS = {"serverSelectionTimeoutMS": 5000, "connectTimeoutMS": 5000}
IDS_PER_QUERY = 10_000


def connect(url: str) -> pymongo.MongoClient:
    """A client for the URL; options the URL sets itself win over the fast-fail defaults
    (pymongo would let keyword arguments override them)."""
    if url.startswith("mongomock://"):
        return mongomock_client(url)
    options = {key: value for key, value in FAST_FAIL_OPTIONS.items() if key.lower() not in url.lower()}
    return pymongo.MongoClient(url, **options)


def mongomock_client(url: str):
    """mongomock 4.3 predates the ``sort`` argument that pymongo >= 4.10 hands to every bulk
    update (mongomock issue #912), so its bulk builder is taught to accept it while unset."""
    import mongomock

    builder = mongomock.collection.BulkOperationBuilder
    if "sort" not in inspect.signature(builder.add_update).parameters:
        add_update = builder.add_update

        def add_update_without_sort(self, *args, sort=None, **kwargs):
            if sort is not None:
                raise NotImplementedError("mongomock cannot sort bulk updates")
            return add_update(self, *args, **kwargs)

        builder.add_update = add_update_without_sort
    return mongomock.MongoClient(url.replace("mongomock://", "mongodb://", 1))


def roi_query(roi: Roi) -> dict:
    return {axis: {"$gte": begin, "$lt": end} for axis, begin, end in roi_bounds(roi)}


def batches(values: list, size: int) -> Iterator[list]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


class MongoRag(RagStore):
    """``client`` replaces the one the URL would give (the URL still names the database)."""

    def __init__(self, url: str, client: pymongo.MongoClient | None = None):
        self.name = f"MongoDB database {without_password(url)}"
        self.owns_client = client is None
        self.client = None
        try:
            self.client = client if client is not None else connect(url)
            self.db = self.client.get_default_database()
            self.db.command("ping")
            self.nodes = self.db["nodes"]
            self.edges = self.db["edges"]
            self.blocks_done = self.db["blocks_done"]
            self.task_stamps = self.db["task_stamps"]
            self.nodes.create_index([("z", 1), ("y", 1), ("x", 1)])
            self.edges.create_index([("u", 1), ("v", 1)], unique=True)
            self.blocks_done.create_index([("task", 1), ("block_id", 1)], unique=True)
        except PyMongoError as error:
            self.close()
            raise RagError(f"cannot open {self.name}: {first_line(error)}") from error

    def _node_ids_in(self, roi: Roi) -> list[int]:
        return [document["_id"] for document in self.nodes.find(roi_query(roi), {"_id": 1})]

    def check_writable(self) -> None:
        try:
            self.mark_block_done(WRITE_PROBE_TASK, 0)
            self.forget_blocks(WRITE_PROBE_TASK)
        except PyMongoError as error:
            raise RagError(f"cannot write to {self.name}: {first_line(error)}") from error

    def write_nodes(self, ids: np.ndarray, positions: np.ndarray, sizes: np.ndarray) -> None:
        updates = [
            UpdateOne({"_id": node_id}, {"$set": {"z": z, "y": y, "x": x, "size": size}}, upsert=True)
            for node_id, z, y, x, size in node_rows(ids, positions, sizes)
        ]
        if updates:
            self.nodes.bulk_write(updates, ordered=False)

    def write_edges(self, u: np.ndarray, v: np.ndarray, statistics: dict[str, np.ndarray]) -> None:
        low, high, columns = edge_columns(u, v, statistics)
        updates = [
            UpdateOne({"u": a, "v": b}, {"$set": {f"statistics.{name}": values[i] for name, values in columns.items()}}, upsert=True)
            for i, (a, b) in enumerate(zip(low, high))
        ]
        if updates:
            self.edges.bulk_write(updates, ordered=False)

    def read_nodes(self) -> dict[str, np.ndarray]:
        documents = self.nodes.find({}).sort("_id", 1)
        return nodes_from_rows([(d["_id"], d["z"], d["y"], d["x"], d["size"]) for d in documents])

    def iter_edges(self, statistic: str, page_size: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Pages in the order of the documents' ``_id``, which every collection has indexed."""
        check_page_size(page_size)
        field = f"statistics.{statistic}"
        last_key: dict = {}
        while True:
            query = {field: {"$exists": True}, **last_key}
            page = list(self.edges.find(query, {"u": 1, "v": 1, field: 1}).sort("_id", 1).limit(page_size))
            if page:
                yield edge_page([(d["u"], d["v"], d["statistics"][statistic]) for d in page])
                last_key = {"_id": {"$gt": page[-1]["_id"]}}
            if len(page) < page_size:
                return

    def delete_in_roi(self, roi: Roi) -> None:
        """Edges first: a crash in between leaves the nodes, so a rerun finds and deletes both."""
        for ids in batches(self._node_ids_in(roi), IDS_PER_QUERY):
            self.edges.delete_many({"u": {"$in": ids}})
            self.nodes.delete_many({"_id": {"$in": ids}})

    def mark_block_done(self, task: str, block_id: int) -> None:
        block = {"task": task, "block_id": int(block_id)}
        self.blocks_done.update_one(block, {"$set": block}, upsert=True)

    def done_blocks(self, task: str) -> set[int]:
        return {d["block_id"] for d in self.blocks_done.find({"task": task}, {"block_id": 1})}

    def forget_blocks(self, task: str) -> None:
        self.blocks_done.delete_many({"task": task})

    def record_stamp(self, task: str, stamp: str) -> None:
        self.task_stamps.update_one({"_id": task}, {"$set": {"stamp": stamp}}, upsert=True)

    def task_stamp(self, task: str) -> str | None:
        document = self.task_stamps.find_one({"_id": task})
        return None if document is None else document["stamp"]

    def close(self) -> None:
        if self.owns_client and self.client is not None:
            self.client.close()

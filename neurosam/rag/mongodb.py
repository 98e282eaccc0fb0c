"""The RAG in MongoDB, for clusters that already run one.

Collections: ``node_blocks`` and ``edge_blocks`` {_id: block id, node_count or edge_count,
packed}, a document per block (``neurosam.rag.base``); ``blocks_done`` {task, block_id}, unique;
``task_stamps`` {_id: task, stamp}. A block's document is replaced in one upsert. A block's packed edges must stay under MongoDB's
16 MiB a document: about a million edges at the scale benchmark's 12 bytes an edge.
"""

from __future__ import annotations

import pymongo
from bson import Binary
from pymongo.errors import PyMongoError

from neurosam.rag.base import RagError, RagStore
from neurosam.rag.common import EDGE_BLOCKS, NODE_BLOCKS, WRITE_PROBE_TASK, first_line, without_password

# pymongo waits 30 s for an unreachable server by default; a worker should fail sooner.
FAST_FAIL_OPTIONS = {"serverSelectionTimeoutMS": 5000, "connectTimeoutMS": 5000}
COUNT_FIELD = {NODE_BLOCKS: "node_count", EDGE_BLOCKS: "edge_count"}


def connect(url: str) -> pymongo.MongoClient:
    """A client for the URL; options the URL sets itself win over the fast-fail defaults
    (pymongo would let keyword arguments override them)."""
    options = {key: value for key, value in FAST_FAIL_OPTIONS.items() if key.lower() not in url.lower()}
    return pymongo.MongoClient(url, **options)


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
            self._refuse_legacy(self.db.list_collection_names())
            self.blocks_done = self.db["blocks_done"]
            self.task_stamps = self.db["task_stamps"]
            self.blocks_done.create_index([("task", 1), ("block_id", 1)], unique=True)
        except PyMongoError as error:
            self.close()
            raise RagError(f"cannot open {self.name}: {first_line(error)}") from error
        except RagError:
            self.close()
            raise

    def check_writable(self) -> None:
        try:
            self.mark_block_done(WRITE_PROBE_TASK, 0)
            self.forget_blocks(WRITE_PROBE_TASK)
        except PyMongoError as error:
            raise RagError(f"cannot write to {self.name}: {first_line(error)}") from error

    def _put_block(self, table: str, block_id: int, count: int, packed: bytes) -> None:
        document = {COUNT_FIELD[table]: count, "packed": Binary(packed)}
        self.db[table].replace_one({"_id": block_id}, document, upsert=True)

    def _block_counts(self, table: str, after: int, limit: int | None) -> list[tuple[int, int]]:
        field = COUNT_FIELD[table]
        documents = self.db[table].find({"_id": {"$gt": after}}, {field: 1}).sort("_id", 1).limit(limit or 0)
        return [(d["_id"], d[field]) for d in documents]

    def _packed_blocks(self, table: str, after: int, last: int | None) -> list[bytes]:
        bounds = {"$gt": after} if last is None else {"$gt": after, "$lte": last}
        return [bytes(d["packed"]) for d in self.db[table].find({"_id": bounds}, {"packed": 1}).sort("_id", 1)]

    def delete_graph(self) -> None:
        for table in COUNT_FIELD:
            self.db[table].delete_many({})

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

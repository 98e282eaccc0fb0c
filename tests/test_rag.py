"""The RAG stores: one suite run against every backend. SQLite gets a file per test; PostgreSQL a
schema per test on NEUROSAM_TEST_POSTGRES_URL or the local server scripts/start_postgres.sh
starts; MongoDB a database per test on NEUROSAM_TEST_MONGODB_URL, or on mongomock (in-process)
when that is unset."""

from __future__ import annotations

import multiprocessing
import os
import pwd
import shutil
import socket
import sqlite3
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import psycopg
import pymongo
import pytest

from neurosam.rag import RagError, open_rag
from neurosam.rag.common import pack_columns, unpack_columns
from neurosam.rag.mongodb import MongoRag
from mongomock_client import mongomock_client

BACKENDS = ["sqlite", "postgresql", "mongodb"]
MONGODB_SERVER_URL = os.environ.get("NEUROSAM_TEST_MONGODB_URL")
STATISTICS = ("quantile_50", "quantile_75")
LARGEST_ID = 2**64 - 1


def unique_name() -> str:
    return f"neurosam_test_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def mongodb_url():
    name = unique_name()
    if MONGODB_SERVER_URL is None:
        yield f"mongomock://localhost/{name}"
        return
    yield urlunsplit(urlsplit(MONGODB_SERVER_URL)._replace(path=f"/{name}"))
    with pymongo.MongoClient(MONGODB_SERVER_URL) as client:
        client.drop_database(name)


@pytest.fixture(params=BACKENDS)
def rag_url(request, tmp_path) -> str:
    """The URL of a store that does not exist yet."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'rag.db'}"
    return request.getfixturevalue(f"{request.param}_url" if request.param == "mongodb" else "postgres_schema_url")


@pytest.fixture
def rag(rag_url):
    """mongomock is handed to MongoDB's store as its client: the package does not know it."""
    if rag_url.startswith("mongomock://"):
        with MongoRag(rag_url, client=mongomock_client(rag_url)) as store:
            yield store
        return
    with open_rag(rag_url) as store:
        yield store


def block_nodes(block_id: int, count: int, seed: int = 0):
    """A block's nodes, ids as fragments has them (block id times a span plus 1..count) but for
    block 0, whose last id is the largest uint64; positions on a 100 nm grid."""
    rng = np.random.default_rng(seed + block_id)
    ids = np.arange(1, count + 1, dtype=np.uint64) + np.uint64(block_id * 1_000_000)
    if block_id == 0:
        ids[-1] = LARGEST_ID
    positions = rng.integers(0, 10, size=(count, 3)) * 100.0
    sizes = rng.integers(1, 10_000, size=count)
    return ids, positions, sizes


def random_edges(ids: np.ndarray, others: np.ndarray, count: int, seed: int = 1):
    """Distinct pairs of an id of ``ids`` and a larger one of both, with a float32 statistic
    and a uint32 one, as contacts writes them."""
    rng = np.random.default_rng(seed)
    ends = np.stack([rng.choice(ids, 20 * count), rng.choice(np.concatenate([ids, others]), 20 * count)], axis=1)
    pairs = np.unique(ends[ends[:, 0] < ends[:, 1]], axis=0)[:count]
    statistics = {STATISTICS[0]: rng.uniform(0, 1, len(pairs)).astype(np.float32), STATISTICS[1]: rng.integers(0, 1000, len(pairs)).astype(np.uint32)}
    return pairs[:, 0], pairs[:, 1], statistics


def write_blocks(rag, counts: dict[int, tuple[int, int]]) -> dict[int, tuple]:
    """Blocks {id: (nodes, edges)}; returns {id: (ids, positions, sizes, u, v, statistics)}."""
    written = {block_id: block_nodes(block_id, nodes) for block_id, (nodes, _) in counts.items()}
    everything = np.concatenate([ids for ids, _, _ in written.values()])
    for block_id, (_, edges) in counts.items():
        ids, positions, sizes = written[block_id]
        u, v, statistics = random_edges(ids[ids != LARGEST_ID], everything, edges, seed=block_id)
        rag.write_nodes(block_id, ids, positions, sizes)
        rag.write_edges(block_id, u, v, statistics)
        written[block_id] = (ids, positions, sizes, u, v, statistics)
    return written


def all_edges(rag) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    pages = list(rag.iter_edges(page_size=1_000_000))
    return (
        np.concatenate([np.zeros(0, np.uint64)] + [page.u for page in pages]),
        np.concatenate([np.zeros(0, np.uint64)] + [page.v for page in pages]),
        {name: np.concatenate([page.statistics[name] for page in pages]) for name in (pages[0].statistics if pages else ())},
    )


def test_empty_store_reads_empty_arrays(rag):
    nodes = rag.read_nodes()
    assert nodes["ids"].dtype == np.uint64 and nodes["ids"].shape == (0,)
    assert nodes["positions"].shape == (0, 3)
    assert list(rag.iter_edges(10)) == [] and rag.edge_count() == 0


def test_round_trip(rag):
    """Blocks written out of order read back in block order; edges given backwards come back
    as u < v, sorted, with each statistic in the dtype it was written in."""
    written = write_blocks(rag, {3: (40, 60), 0: (50, 80), 7: (30, 0)})
    ids, positions, sizes = (np.concatenate([written[b][i] for b in (0, 3, 7)]) for i in range(3))
    nodes = rag.read_nodes()
    assert nodes["ids"].dtype == np.uint64 and nodes["positions"].dtype == np.float64
    np.testing.assert_array_equal(nodes["ids"], ids)
    np.testing.assert_array_equal(nodes["positions"], positions)
    np.testing.assert_array_equal(nodes["sizes"], sizes)

    u, v, statistics = all_edges(rag)
    np.testing.assert_array_equal(u, np.concatenate([written[0][3], written[3][3]]))
    np.testing.assert_array_equal(v, np.concatenate([written[0][4], written[3][4]]))
    for name in STATISTICS:
        expected = np.concatenate([written[0][5][name], written[3][5][name]])
        assert statistics[name].dtype == expected.dtype
        np.testing.assert_array_equal(statistics[name], expected)
    assert rag.edge_count() == 140


def test_edges_given_backwards_are_stored_forwards(rag):
    u, v = np.array([5, 9, 2], dtype=np.uint64), np.array([3, 4, 8], dtype=np.uint64)
    rag.write_edges(0, u, v, {"quantile_50": np.array([0.5, 0.9, 0.2])})
    page = next(rag.iter_edges(10))
    np.testing.assert_array_equal(page.u, [2, 3, 4])
    np.testing.assert_array_equal(page.v, [8, 5, 9])
    np.testing.assert_array_equal(page.statistics["quantile_50"], [0.2, 0.5, 0.9])


def test_a_block_written_again_replaces_its_rows(rag):
    """Retried, a block duplicates nothing; recomputed, it leaves nothing stale, whatever it
    writes (fewer nodes, other statistics, none); other blocks keep theirs."""
    written = write_blocks(rag, {1: (40, 50), 2: (30, 40)})
    write_blocks(rag, {1: (40, 50), 2: (30, 40)})
    assert len(rag.read_nodes()["ids"]) == 70 and rag.edge_count() == 90

    ids, positions, sizes, u, v, statistics = written[1]
    rag.write_nodes(1, ids[:10], positions[:10] + 1, sizes[:10] * 2)
    rag.write_edges(1, u[:5], v[:5], {"quantile_90": statistics[STATISTICS[0]][:5] / 2})
    nodes = rag.read_nodes()
    np.testing.assert_array_equal(nodes["ids"], np.concatenate([ids[:10], written[2][0]]))
    np.testing.assert_array_equal(nodes["positions"][:10], positions[:10] + 1)
    first = next(rag.iter_edges(5))
    assert set(first.statistics) == {"quantile_90"} and len(first.u) == 5
    np.testing.assert_array_equal(first.statistics["quantile_90"], statistics[STATISTICS[0]][:5] / 2)

    rag.write_nodes(1, np.zeros(0), np.zeros((0, 3)), np.zeros(0))
    rag.write_edges(1, np.zeros(0), np.zeros(0), {})
    np.testing.assert_array_equal(rag.read_nodes()["ids"], written[2][0])
    assert rag.edge_count() == 40


def test_edge_pages_are_whole_blocks_and_complete(rag):
    counts = {0: (20, 3), 1: (20, 0), 2: (20, 9), 3: (20, 4), 4: (20, 2), 5: (20, 5)}
    written = write_blocks(rag, counts)
    pages = list(rag.iter_edges(page_size=7))
    sizes = [len(page.u) for page in pages]
    assert sizes == [3, 9, 6, 5], "blocks 0 and 1; 2 alone, over the page size; 3 and 4; 5"
    u = np.concatenate([page.u for page in pages])
    np.testing.assert_array_equal(u, np.concatenate([written[b][3] for b in counts]))


def test_delete_graph_keeps_done_records(rag):
    write_blocks(rag, {0: (10, 10), 1: (10, 10)})
    rag.mark_block_done("fragments", 0)
    rag.delete_graph()
    assert len(rag.read_nodes()["ids"]) == 0 and rag.edge_count() == 0 and list(rag.iter_edges(10)) == []
    assert rag.done_blocks("fragments") == {0}


def test_blocks_done(rag):
    assert rag.done_blocks("fragments") == set()
    for task, block_id in [("fragments", 3), ("fragments", 5), ("fragments", 3), ("contacts", 3)]:
        rag.mark_block_done(task, block_id)
    rag.check_writable()
    assert rag.done_blocks("fragments") == {3, 5}
    assert rag.done_blocks("contacts") == {3}
    rag.forget_blocks("fragments")
    assert rag.done_blocks("fragments") == set() and rag.done_blocks("contacts") == {3}


def test_task_stamps(rag):
    assert rag.task_stamp("fragments") is None
    rag.record_stamp("fragments", "first")
    rag.record_stamp("contacts", "other")
    rag.record_stamp("fragments", "second")
    assert rag.task_stamp("fragments") == "second" and rag.task_stamp("contacts") == "other"


def test_repeated_edges_and_reserved_names_are_refused(rag):
    with pytest.raises(ValueError, match="twice"):
        rag.write_edges(0, np.array([1, 2], dtype=np.uint64), np.array([2, 1], dtype=np.uint64), {"quantile_50": [0.1, 0.2]})
    with pytest.raises(ValueError, match="u_steps"):
        rag.write_edges(0, np.array([1], dtype=np.uint64), np.array([2], dtype=np.uint64), {"u_steps": [0.1]})
    assert rag.edge_count() == 0


def test_packed_columns_keep_dtype_shape_and_values():
    columns = {
        "steps": np.array([2**64 - 1, 0, 7], dtype=np.uint64),
        "positions": np.arange(12, dtype=np.float32).reshape(4, 3) / 3,
        "sum": np.array([np.pi, -1e300]),
        "empty": np.zeros(0, dtype=np.uint32),
    }
    unpacked = unpack_columns(pack_columns(columns))
    assert list(unpacked) == list(columns)
    for name, values in columns.items():
        assert unpacked[name].dtype == values.dtype and unpacked[name].shape == values.shape
        np.testing.assert_array_equal(unpacked[name], values)


def legacy_table(url: str):
    """Make ``url`` look like a RAG of the earlier format: an ``edges`` table, a row per
    statistic. Returns a mongomock client (whose clients share nothing), else None."""
    if url.startswith("sqlite:///"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as connection:
            connection.execute("CREATE TABLE edges (u BIGINT, v BIGINT, statistic TEXT, value DOUBLE PRECISION)")
    elif url.startswith("postgresql://"):
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute("CREATE TABLE edges (u BIGINT, v BIGINT, statistic TEXT, value DOUBLE PRECISION)")
    else:
        client = mongomock_client(url) if url.startswith("mongomock://") else pymongo.MongoClient(url)
        client.get_default_database()["edges"].insert_one({"u": 1, "v": 2, "statistic": "affinity_max", "value": 0.5})
        if url.startswith("mongomock://"):
            return client
        client.close()
    return None


def test_a_rag_of_the_earlier_format_is_refused_in_one_line(rag_url):
    mongomock = legacy_table(rag_url)
    with pytest.raises(RagError) as error:
        MongoRag(rag_url, client=mongomock) if mongomock else open_rag(rag_url)
    message = str(error.value)
    assert "earlier format" in message and "new RAG" in message and len(message.splitlines()) == 1, message


WORKERS = 4


def write_block_repeatedly(url: str, worker: int, start_together) -> None:
    """Each worker writes its block several times, all at once with the others."""
    start_together.wait()
    with open_rag(url) as rag:
        ids = np.arange(worker * 100, worker * 100 + 100, dtype=np.uint64) + 1
        positions = ids[:, None] * np.array([1.0, 2.0, 3.0])
        for _ in range(5):
            rag.write_nodes(worker, ids, positions, ids * 10)
            rag.write_edges(worker, ids, ids + 1, {"quantile_50": ids / 1000})
        rag.mark_block_done("fragments", worker)


def test_concurrent_writers(rag_url):
    """Workers open the fresh store at the same moment (racing to create its tables) and write
    their blocks again and again: every block is there once."""
    if rag_url.startswith("mongomock://"):
        pytest.skip("mongomock lives inside one process; set NEUROSAM_TEST_MONGODB_URL to test a server")
    context = multiprocessing.get_context("spawn")
    start_together = context.Barrier(WORKERS)
    workers = [context.Process(target=write_block_repeatedly, args=(rag_url, worker, start_together)) for worker in range(WORKERS)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=120)
    assert [process.exitcode for process in workers] == [0] * WORKERS

    expected_ids = np.arange(1, 100 * WORKERS + 1, dtype=np.uint64)
    with open_rag(rag_url) as rag:
        np.testing.assert_array_equal(rag.read_nodes()["ids"], expected_ids)
        u, v, statistics = all_edges(rag)
        np.testing.assert_array_equal(u, expected_ids)
        np.testing.assert_array_equal(v, expected_ids + 1)
        np.testing.assert_array_equal(statistics["quantile_50"], expected_ids / 1000)
        assert rag.done_blocks("fragments") == set(range(WORKERS))


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize(
    "url_template",
    [
        "postgresql://neurosam:secret@127.0.0.1:{port}/neurosam",
        "postgresql://neurosam@127.0.0.1:{port}/neurosam?password=secret",
        "mongodb://neurosam:secret@127.0.0.1:{port}/neurosam?serverSelectionTimeoutMS=300",
        "mongodb://127.0.0.1:{port}/neurosam?serverSelectionTimeoutMS=300&password=secret",
    ],
)
def test_unreachable_server_fails_fast_and_is_named(url_template):
    """One readable line naming the server, with no password in it (user-info or query string)."""
    port = closed_port()
    started = time.monotonic()
    with pytest.raises(RagError) as error:
        open_rag(url_template.format(port=port))
    assert time.monotonic() - started < 5
    message = str(error.value)
    assert f"127.0.0.1:{port}" in message and "secret" not in message
    assert len(message.splitlines()) == 1 and len(message) < 400, message


def report_write_check(path: Path, sender) -> None:
    """Runs in a forked child that, under root, becomes the user nobody: root writes through file
    permissions. Forked, not spawned, so that nothing needs importing as nobody."""
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        os.setgroups([])
        os.setgid(nobody.pw_gid)
        os.setuid(nobody.pw_uid)
    path.open("rb").close()  # the file is readable: what fails below is writing
    try:
        open_rag(f"sqlite:///{path}").check_writable()
        sender.send("writable")
    except RagError as error:
        sender.send(f"RagError: {error}")


@pytest.mark.parametrize("read_only", ["file", "folder"])
def test_read_only_sqlite_database_is_reported(read_only):
    """In a folder of its own under /tmp: pytest's tmp_path is private to the user running the tests."""
    folder = Path(tempfile.mkdtemp(prefix="neurosam_rag_"))
    path = folder / "rag.db"
    try:
        with open_rag(f"sqlite:///{path}") as rag:
            rag.write_nodes(0, *block_nodes(0, 10))
        path.chmod(0o444 if read_only == "file" else 0o666)
        folder.chmod(0o777 if read_only == "file" else 0o555)
        context = multiprocessing.get_context("fork")
        receiver, sender = context.Pipe(duplex=False)
        child = context.Process(target=report_write_check, args=(path, sender))
        child.start()
        child.join(timeout=60)
        assert child.exitcode == 0
        report = receiver.recv()
        assert report.startswith("RagError") and str(path) in report
    finally:
        folder.chmod(0o700)
        shutil.rmtree(folder)


def test_mongo_store_takes_a_client_it_does_not_close():
    url = f"mongomock://localhost/{unique_name()}"
    client = mongomock_client(url)
    with MongoRag(url, client=client) as rag:
        rag.write_nodes(0, *block_nodes(0, 20))
    with MongoRag(url, client=client) as rag:
        assert len(rag.read_nodes()["ids"]) == 20


def test_sqlite_retries_a_wal_switch_refused_at_once(monkeypatch):
    """SQLite may refuse the switch without waiting on its busy timeout; opening retries."""
    from neurosam.rag import sqlite as sqlite_rag

    class RefusesTwice:
        def __init__(self):
            self.attempts = 0

        def execute(self, statement):
            self.attempts += 1
            if self.attempts <= 2:
                raise sqlite3.OperationalError("database is locked")

    connection = RefusesTwice()
    monkeypatch.setattr(sqlite_rag.time, "sleep", lambda seconds: None)
    sqlite_rag._use_wal(connection)
    assert connection.attempts == 3

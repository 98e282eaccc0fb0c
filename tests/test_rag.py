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
from funlib.geometry import Roi

from neurosam.rag import RagError, open_rag
from neurosam.rag.mongodb import MongoRag, mongomock_client
from pipeline_support import read_edges

BACKENDS = ["sqlite", "postgresql", "mongodb"]
MONGODB_SERVER_URL = os.environ.get("NEUROSAM_TEST_MONGODB_URL")
STATISTICS = ("quantile_50", "quantile_75")
LARGEST_ID = 2**63 - 1
ROI = Roi((200, 300, 0), (400, 300, 500))


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
    with open_rag(rag_url) as store:
        yield store


def grid_nodes(count: int, seed: int = 0):
    """Nodes on a 100 nm grid, so many centres sit exactly on ROI boundaries; one has the
    largest id the stores accept."""
    rng = np.random.default_rng(seed)
    ids = rng.choice(2**40, size=count, replace=False).astype(np.uint64) + 1
    ids[0] = LARGEST_ID
    positions = rng.integers(0, 10, size=(count, 3)) * 100.0
    sizes = rng.integers(1, 10_000, size=count)
    return ids, positions, sizes


def random_edges(ids: np.ndarray, count: int, seed: int = 1):
    """Distinct pairs with u < v, and a value per statistic."""
    rng = np.random.default_rng(seed)
    ends = ids[rng.integers(0, len(ids), size=(4 * count, 2))]
    ends = ends[ends[:, 0] != ends[:, 1]]
    pairs = np.unique(np.sort(ends, axis=1), axis=0)[:count]
    statistics = {name: rng.uniform(0, 1, len(pairs)) for name in STATISTICS}
    return pairs[:, 0], pairs[:, 1], statistics


def sorted_nodes(nodes: dict) -> dict:
    order = np.argsort(nodes["ids"])
    return {key: values[order] for key, values in nodes.items()}


def inside(positions: np.ndarray, roi: Roi) -> np.ndarray:
    return np.all((positions >= np.array(roi.begin)) & (positions < np.array(roi.end)), axis=1)


def test_empty_store_reads_empty_arrays(rag):
    nodes = rag.read_nodes()
    assert nodes["ids"].dtype == np.uint64 and nodes["ids"].shape == (0,)
    assert nodes["positions"].shape == (0, 3)
    assert len(read_edges(rag, STATISTICS)["u"]) == 0


def test_round_trip(rag):
    ids, positions, sizes = grid_nodes(200)
    u, v, statistics = random_edges(ids, 300)
    given_backwards = np.arange(len(u)) % 2 == 0
    rag.write_nodes(ids, positions, sizes)
    rag.write_edges(np.where(given_backwards, v, u), np.where(given_backwards, u, v), statistics)

    nodes = sorted_nodes(rag.read_nodes())
    order = np.argsort(ids)
    assert nodes["ids"].dtype == np.uint64
    np.testing.assert_array_equal(nodes["ids"], ids[order])
    np.testing.assert_array_equal(nodes["positions"], positions[order])
    np.testing.assert_array_equal(nodes["sizes"], sizes[order])

    edges = read_edges(rag, STATISTICS)
    np.testing.assert_array_equal(edges["u"], u)
    np.testing.assert_array_equal(edges["v"], v)
    for name in STATISTICS:
        np.testing.assert_array_equal(edges[name], statistics[name])
    assert len(rag.read_nodes()["ids"]) == 200 and len(edges["u"]) == 300


def test_writes_are_upserts(rag):
    ids, positions, sizes = grid_nodes(100)
    u, v, statistics = random_edges(ids, 150)
    for _ in range(2):
        rag.write_nodes(ids, positions, sizes)
        rag.write_edges(u, v, statistics)
    assert len(rag.read_nodes()["ids"]) == 100 and len(read_edges(rag, STATISTICS)["u"]) == 150

    rag.write_nodes(ids, positions + 1, sizes * 2)
    rag.write_edges(u, v, {"quantile_50": statistics["quantile_50"] / 2, "quantile_90": statistics["quantile_75"]})
    edges = read_edges(rag, (*STATISTICS, "quantile_90"))
    assert len(rag.read_nodes()["ids"]) == 100 and len(edges["u"]) == 150
    nodes = sorted_nodes(rag.read_nodes())
    np.testing.assert_array_equal(nodes["positions"], positions[np.argsort(ids)] + 1)
    np.testing.assert_array_equal(edges["quantile_50"], statistics["quantile_50"] / 2)
    np.testing.assert_array_equal(edges["quantile_75"], statistics["quantile_75"])
    np.testing.assert_array_equal(edges["quantile_90"], statistics["quantile_75"])


def test_unbounded_roi_axes_constrain_nothing(rag):
    ids, positions, sizes = grid_nodes(300)
    rag.write_nodes(ids, positions, sizes)
    z_slab = Roi((200, None, None), (400, None, None))
    in_slab = (positions[:, 0] >= 200) & (positions[:, 0] < 600)
    rag.delete_in_roi(z_slab)
    assert set(rag.read_nodes()["ids"].tolist()) == set(ids[~in_slab].tolist())


def test_edge_pages_are_small_and_complete(rag):
    ids, positions, sizes = grid_nodes(100)
    u, v, statistics = random_edges(ids, 120)
    rag.write_nodes(ids, positions, sizes)
    rag.write_edges(u, v, statistics)

    pages = list(rag.iter_edges("quantile_50", page_size=7))
    assert all(len(page_u) <= 7 for page_u, _, _ in pages)
    read = {(a, b): value for page in pages for a, b, value in zip(*(column.tolist() for column in page))}
    assert sum(len(page_u) for page_u, _, _ in pages) == len(read) == len(u)
    assert read == dict(zip(zip(u.tolist(), v.tolist()), statistics["quantile_50"].tolist()))


def test_delete_in_roi(rag):
    ids, positions, sizes = grid_nodes(300)
    u, v, statistics = random_edges(ids, 400)
    rag.write_nodes(ids, positions, sizes)
    rag.write_edges(u, v, statistics)
    assert np.any(positions == np.array(ROI.begin)) and np.any(positions == np.array(ROI.end))
    rag.delete_in_roi(ROI)

    kept = ~inside(positions, ROI)
    assert set(rag.read_nodes()["ids"].tolist()) == set(ids[kept].tolist())
    kept_edges = ~np.isin(u, ids[~kept])
    edges = read_edges(rag, STATISTICS)
    assert set(zip(edges["u"].tolist(), edges["v"].tolist())) == set(zip(u[kept_edges].tolist(), v[kept_edges].tolist()))
    assert len(edges["u"]) == kept_edges.sum()


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


def test_ids_from_2_to_the_63_are_refused(rag):
    with pytest.raises(ValueError, match="below 2\\*\\*63"):
        rag.write_nodes(np.array([5, 2**63], dtype=np.uint64), np.zeros((2, 3)), np.ones(2))
    with pytest.raises(ValueError, match="below 2\\*\\*63"):
        rag.write_edges(np.array([1], dtype=np.uint64), np.array([2**64 - 1], dtype=np.uint64), {"quantile_50": [0.1]})
    assert len(rag.read_nodes()["ids"]) == len(read_edges(rag, ["quantile_50"])["u"]) == 0


WORKERS = 4


def write_overlapping_block(url: str, worker: int, start_together) -> None:
    """Each worker's nodes and edges overlap the next worker's, and it writes them several times."""
    start_together.wait()
    with open_rag(url) as rag:
        ids = np.arange(worker * 100, worker * 100 + 200, dtype=np.uint64) + 1
        positions = ids[:, None] * np.array([1.0, 2.0, 3.0])
        for _ in range(5):
            rag.write_nodes(ids, positions, ids * 10)
            rag.write_edges(ids[:-1], ids[1:], {"quantile_50": ids[:-1] / 1000})
        rag.mark_block_done("fragments", worker)


def test_concurrent_writers(rag_url):
    """Workers open the fresh store at the same moment (racing to create its tables) and write
    overlapping rows: every row is there once."""
    if rag_url.startswith("mongomock://"):
        pytest.skip("mongomock lives inside one process; set NEUROSAM_TEST_MONGODB_URL to test a server")
    context = multiprocessing.get_context("spawn")
    start_together = context.Barrier(WORKERS)
    workers = [context.Process(target=write_overlapping_block, args=(rag_url, worker, start_together)) for worker in range(WORKERS)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=120)
    assert [process.exitcode for process in workers] == [0] * WORKERS

    expected_ids = np.arange(1, 100 * (WORKERS - 1) + 200 + 1, dtype=np.uint64)
    with open_rag(rag_url) as rag:
        nodes = rag.read_nodes()
        np.testing.assert_array_equal(np.sort(nodes["ids"]), expected_ids)
        edges = read_edges(rag, ["quantile_50"])
        np.testing.assert_array_equal(edges["u"], expected_ids[:-1])
        np.testing.assert_array_equal(edges["quantile_50"], expected_ids[:-1] / 1000)
        assert len(edges["u"]) == len(expected_ids) - 1
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
            rag.write_nodes(*grid_nodes(10))
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
    ids, positions, sizes = grid_nodes(20)
    with MongoRag(url, client=client) as rag:
        rag.write_nodes(ids, positions, sizes)
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

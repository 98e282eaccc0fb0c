"""mongomock, an in-process stand-in for a MongoDB server, which the RAG tests use when no
server is given (NEUROSAM_TEST_MONGODB_URL unset): only the tests know it."""

from __future__ import annotations


def mongomock_client(url: str):
    """A mongomock client for ``mongomock://host/db``, the tests' name for such a database."""
    import mongomock

    return mongomock.MongoClient(url.replace("mongomock://", "mongodb://", 1))

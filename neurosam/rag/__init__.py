"""RAG stores chosen by URL: sqlite:///path.db (default), postgresql://..., mongodb://..."""

from neurosam.rag.base import RagError, RagStore

__all__ = ["RagError", "RagStore", "open_rag"]


def open_rag(url: str) -> RagStore:
    """Open the store a URL names; the backend module is imported only when used."""
    if url.startswith("sqlite:///"):
        from neurosam.rag.sqlite import SqliteRag

        return SqliteRag(url)
    if url.startswith(("postgresql://", "postgres://")):
        from neurosam.rag.postgresql import PostgresRag

        return PostgresRag(url)
    if url.startswith(("mongodb://", "mongodb+srv://")):
        from neurosam.rag.mongodb import MongoRag

        return MongoRag(url)
    raise RagError(f"unsupported RAG url {url!r}: use sqlite:///path.db, postgresql://user@host/db or mongodb://host:port/db")

# --- Databases for the RAG stores (tests/test_rag.py) ------------------------------------------

import os
import subprocess
import uuid
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """NEUROSAM_TEST_POSTGRES_URL when set, else the local server scripts/start_postgres.sh starts
    (installing it if needed); a failure to start fails the tests that need it, never skips them."""
    url = os.environ.get("NEUROSAM_TEST_POSTGRES_URL")
    if url:
        return url
    script = Path(__file__).resolve().parents[1] / "scripts" / "start_postgres.sh"
    result = subprocess.run([str(script)], capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        pytest.fail(f"{script} failed:\n{result.stderr}")
    return result.stdout.strip().splitlines()[-1]


@pytest.fixture
def postgres_schema_url(postgres_url):
    """A fresh schema, chosen through the URL's search_path."""
    import psycopg

    schema = f"neurosam_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute(f"CREATE SCHEMA {schema}")
    separator = "&" if "?" in postgres_url else "?"
    yield f"{postgres_url}{separator}options=-csearch_path%3D{schema}"
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute(f"DROP SCHEMA {schema} CASCADE")

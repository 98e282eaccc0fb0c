import os
import subprocess
import uuid
from pathlib import Path

import pytest

from neurosam.pipeline import registry
from neurosam.stages.stage import Stage, plain_blocks
from pipeline_support import gala_inputs


@pytest.fixture(scope="module")
def gala(tmp_path_factory):
    """The gala crop written as a run's inputs, once per test module."""
    return gala_inputs(tmp_path_factory.mktemp("gala"))


@pytest.fixture
def register_stage(monkeypatch):
    """``register_stage(name, function)`` puts a block function of tests/sample_stage.py in the
    registry after fragments, for this test only; workers find the module on PYTHONPATH."""
    monkeypatch.setattr(registry, "STAGES", list(registry.STAGES))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))

    def register(name: str, function: str) -> None:
        registry.register(Stage(name, f"sample_stage:{function}", plain_blocks), after="fragments")

    return register


# --- Databases for the RAG stores (tests/test_rag.py) ------------------------------------------


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

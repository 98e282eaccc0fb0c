# --- Databases for the RAG stores (tests/test_rag.py) ------------------------------------------

import os
import subprocess
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

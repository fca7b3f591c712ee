"""Entering ``hold_leadership``: the checks made once per entry, before the campaign.

A task that enters ``hold_leadership(key)`` inside its own ``hold_leadership(key)``
on the same backend would campaign against itself: with ``wait=True`` it waits
forever for a lease that only it can release, with ``wait=False`` it reports its
own lease as "held by another candidate". That is a bug in the caller, so it
raises at once, as :class:`trio.Lock` does for a task that re-acquires it.

The rule is per *task*, not per context: child tasks inherit contextvars, and two
tasks of one process campaigning for one key are two legitimate candidates.
"""

from __future__ import annotations

import weakref
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Generic, TypeVar

import trio

from ._context import require_trio, resolve_backend
from .abc import Backend

__all__ = ["one_per_task"]

T = TypeVar("T")

#: For each task, the ``(id(backend), key)`` pairs it holds or campaigns for now.
_HELD: weakref.WeakKeyDictionary[trio.lowlevel.Task, set[tuple[int, str]]] = (
    weakref.WeakKeyDictionary())


class _OnePerTask(AbstractAsyncContextManager[T], Generic[T]):
    def __init__(self, inner: AbstractAsyncContextManager[T], key: str,
                 backend: Backend | None) -> None:
        self._inner = inner
        self._key = key
        self._backend = backend
        self._claim: tuple[trio.lowlevel.Task, tuple[int, str]] | None = None

    async def __aenter__(self) -> T:
        require_trio("hold_leadership()")
        backend = resolve_backend(self._backend)
        task = trio.lowlevel.current_task()
        ident = (id(backend), self._key)
        held = _HELD.setdefault(task, set())
        if ident in held:
            raise RuntimeError(
                f"hold_leadership({self._key!r}) entered again in a task that already "
                f"holds or campaigns for {self._key!r} on this backend: it would wait "
                "for its own lease forever. Leave the outer block first, or campaign "
                "from another task (each task is a candidate of its own)")
        held.add(ident)
        self._claim = (task, ident)
        try:
            return await self._inner.__aenter__()
        except BaseException:
            self._forget()
            raise

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> bool | None:
        try:
            return await self._inner.__aexit__(exc_type, exc, tb)
        finally:
            self._forget()

    def _forget(self) -> None:
        if self._claim is not None:
            task, ident = self._claim
            self._claim = None
            _HELD.get(task, set()).discard(ident)


def one_per_task(inner: AbstractAsyncContextManager[T], key: str,
                 backend: Backend | None) -> AbstractAsyncContextManager[T]:
    """Wrap *inner* (a ``hold_leadership`` block) with the checks made on entry.

    On entry: the caller runs under trio (:func:`require_trio`), and this task does
    not already hold or campaign for *key* on the same backend.

    Raises:
        RuntimeError: from ``__aenter__`` for either, naming the key.
    """
    return _OnePerTask(inner, key, backend)

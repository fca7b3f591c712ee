"""Keep exceptions bare: our context managers never leak an ExceptionGroup."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import trio


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


@contextmanager
def bare_exceptions() -> Iterator[None]:
    """Re-raise a nursery's ExceptionGroup as its single real exception.

    The nurseries inside our managers are implementation details: a user's body
    exception must come out unchanged (same object, same ``__context__``). A
    ``Cancelled`` next to a real exception is dropped; trio delivers the
    cancellation again at the next checkpoint. A group with several real
    exceptions (a bug of ours beside the body's) is re-raised as it is.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        real = [e for e in leaves if not isinstance(e, trio.Cancelled)]
        if len(real) > 1:
            raise
        exc = real[0] if real else leaves[0]
        context = exc.__context__
        try:
            raise exc
        finally:
            exc.__context__ = context
            del exc, context, group

"""The observer hook: what the election core reports, to whoever listens.

The core builds a :class:`LeadershipEvent` only when someone listens (a check of one
list on the renewal path). Logging is one observer, installed at import; the
metrics of :mod:`trio_noleader.metrics` are another.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["LeadershipEvent", "add_observer", "emit", "log_event", "observers",
           "remove_observer"]

logger = logging.getLogger("trio_noleader")

#: The kinds of :class:`LeadershipEvent`, in the order a term goes through them.
KINDS = ("campaign", "elected", "renewed", "renew_failed", "lost", "released")


@dataclass(frozen=True, slots=True)
class LeadershipEvent:
    """One thing that happened to a campaign or a term, as observers see it.

    Attributes:
        kind (str): ``"campaign"`` (a campaign started), ``"elected"``, ``"renewed"``,
            ``"renew_failed"`` (a renewal got no answer; it is retried), ``"lost"``
            (the term ended without our consent: see *reason*) or ``"released"``
            (the term ended because its block was left). Every elected term ends
            with exactly one ``"lost"`` or ``"released"``.
        key (str): The election key.
        candidate_id (uuid.UUID): The campaign's candidate id.
        name (str | None): The name stored with the lease.
        token (int): The term's fencing token (0 before ``"elected"``).
        revision (int | None): The store revision we last know we wrote.
        time (float): :func:`trio.current_time` when it happened.
        seconds (float | None): ``"elected"``: how long the campaign took;
            ``"renewed"``/``"renew_failed"``: how long the renewal call took.
        deadline (float | None): The lease deadline after the event (trio time).
        reason (str | None): ``"lost"``: ``"deadline"`` (renewals did not succeed in
            time), ``"expired"`` (the store shows the key expired or deleted),
            ``"taken"`` (the store shows another holder) or ``"conflict"``;
            ``"released"``: ``"released"`` (deleted from the store), ``"gone"`` (it
            was not ours any more) or ``"unconfirmed"`` (the store did not answer;
            left to expire or to the janitor).
        error (str | None): ``"renew_failed"``/``"lost"``: what went wrong.
        retry_in (float | None): ``"renew_failed"``: seconds until the next try.
    """

    kind: str
    key: str
    candidate_id: uuid.UUID
    name: str | None
    token: int
    revision: int | None
    time: float
    seconds: float | None = None
    deadline: float | None = None
    reason: str | None = None
    error: str | None = None
    retry_in: float | None = None


Observer = Callable[[LeadershipEvent], None]

#: The observers, in the order they were added. The core tests it for emptiness
#: before it builds an event.
observers: list[Observer] = []


def add_observer(observer: Observer) -> None:
    """Call ``observer(event)`` for every :class:`LeadershipEvent` from now on.

    Observers run synchronously inside the election core, on the renewal path:
    keep them quick and never block. An exception from one is logged and
    otherwise ignored. Adding the same observer twice has no effect.
    """
    if not callable(observer):
        raise TypeError(f"observer must be callable, got {type(observer).__name__}: "
                        f"{observer!r:.80}")
    if observer not in observers:
        observers.append(observer)


def remove_observer(observer: Observer) -> None:
    """Stop calling *observer* (no error if it was not added)."""
    if observer in observers:
        observers.remove(observer)


def renewals_watched() -> bool:
    """Whether a ``"renewed"`` event would reach anyone: an observer besides the
    logging one, or the logging one with DEBUG enabled. The renewal path asks this
    before it builds an event, so that by default a renewal pays only this check."""
    if not observers:
        return False
    return (len(observers) > 1 or observers[0] is not log_event
            or logger.isEnabledFor(logging.DEBUG))


def emit(event: LeadershipEvent) -> None:
    for observer in tuple(observers):
        try:
            observer(event)
        except Exception:
            logger.exception("observer %r failed on a %s event", observer, event.kind)


def log_event(event: LeadershipEvent) -> None:
    """The logging observer: the library's log lines, at their levels, from events."""
    kind = event.kind
    if kind == "renewed":
        logger.debug("renewed %s (token %d, revision %d)", event.key, event.token,
                     event.revision)
    elif kind == "renew_failed":
        logger.warning("renewing %s failed (%s); retrying in %.2g s", event.key,
                       event.error, event.retry_in)
    elif kind == "elected":
        logger.info("elected for %s (candidate %s, token %d)", event.key,
                    event.candidate_id, event.token)
    elif kind == "lost":
        logger.warning("lost leadership of %s (candidate %s, token %d): %s", event.key,
                       event.candidate_id, event.token, event.error)
    elif kind == "released" and event.reason == "released":
        logger.info("released %s (candidate %s, token %d)", event.key,
                    event.candidate_id, event.token)


add_observer(log_event)

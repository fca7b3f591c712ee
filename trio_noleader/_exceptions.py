"""The exceptions of trio-noleader: one class per failure."""

from __future__ import annotations


class NoLeaderError(Exception):
    """Base class of every error trio-noleader raises on purpose.

    Raised as itself when no backend was given and none is open: pass ``backend=``
    or enter ``open_backend(...)`` (or another ``open_*`` manager) first.
    """


class LeadershipLost(NoLeaderError):
    """Raised out of ``hold_leadership`` when the lease was lost mid-body.

    The body had already been cancelled: either its local deadline passed because
    renewals stopped succeeding, or the store showed that someone else holds the
    key. The store may already have handed the lease to another candidate.
    """


class BackendUnavailable(NoLeaderError):
    """The store could not be reached, or answered with a transient error.

    Raised by backends when a call times out, the connection drops, or the store
    refuses to serve for now; the original error is chained as ``__cause__``.
    Raised by the ``open_*`` managers when the store cannot be reached or is not
    usable (for example a NATS server without JetStream or one that is too old).
    Messages name the store's address, never a password or token.
    """


class KeyExists(NoLeaderError):
    """``Backend.create`` found a live entry under the key.

    Part of the backend protocol: a third-party backend raises it.
    """


class RevisionMismatch(NoLeaderError):
    """A compare-and-set write found another revision (or no entry) under the key.

    Raised by ``Backend.update`` and ``Backend.delete`` when the live entry does not
    have exactly the revision the caller named. Part of the backend protocol.
    """


class NewStore(BackendUnavailable):
    """``Backend.create`` on a store younger than the lease's ttl (the new-store grace).

    A leader of the store this one replaced may still be in its term; the create
    may be tried again after :attr:`retry_after` seconds. Raised by the SQLite and
    NATS backends; a campaign waits it out.
    """

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after

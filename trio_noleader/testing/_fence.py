"""FencedResource: a downstream system that rejects writes carrying a stale fencing token."""

from __future__ import annotations

from dataclasses import dataclass

import trio

from .._types import type_error

__all__ = ["FencedResource", "FencedWrite"]


@dataclass(frozen=True, slots=True)
class FencedWrite:
    """One write attempt a :class:`FencedResource` received.

    Attributes:
        time (float): When it arrived (trio time).
        writer (str): Who sent it, as the writer named itself.
        token (int): The fencing token it carried.
        accepted (bool): Whether the resource applied it.
        highest (int): The highest token the resource had accepted before it
            (0 if none).
        data (object): What the writer sent along.
        issued (float | None): When the writer issued it, if it said: earlier than
            ``time`` when the write was held up on the way (for example by a
            process pause).
    """

    time: float
    writer: str
    token: int
    accepted: bool
    highest: int
    data: object = None
    issued: float | None = None

    @property
    def held_for(self) -> float:
        """How long the write took from being issued to arriving (0 if unknown)."""
        return 0.0 if self.issued is None else self.time - self.issued


class FencedResource:
    """A downstream store that applies a write only if its token is not stale.

    This is what the guarantees (docs/guarantees.rst, fencing tokens) asks of the
    systems a leader writes to: a write is accepted only if its token is greater
    than or equal to the highest token accepted so far (so one term may write many
    times), and rejected otherwise.
    Every attempt, accepted or not, is recorded with its arrival time, writer and
    token in :attr:`writes`.

    Example::

        resource = FencedResource()
        async with hold_leadership("job", backend=store) as lead:
            resource.write(lead.token, writer="me", data="hello")

    Give the writes of a simulated candidate to :meth:`FaultyBackend.perform` so
    that a process pause holds them up: ``await faulty.perform(resource.write,
    lead.token, writer="a")``.
    """

    def __init__(self, name: str = "resource") -> None:
        self.name = name
        self.highest = 0
        #: Every write attempt, in arrival order.
        self.writes: list[FencedWrite] = []

    def __repr__(self) -> str:
        return (f"<FencedResource {self.name!r} highest={self.highest} "
                f"accepted={len(self.accepted)} rejected={len(self.rejected)}>")

    @property
    def accepted(self) -> list[FencedWrite]:
        """The writes that were applied, in arrival order."""
        return [w for w in self.writes if w.accepted]

    @property
    def rejected(self) -> list[FencedWrite]:
        """The writes that were refused as stale, in arrival order."""
        return [w for w in self.writes if not w.accepted]

    def write(self, token: int, *, writer: str = "", data: object = None,
              issued: float | None = None) -> bool:
        """Offer a write carrying fencing *token*; return whether it was accepted.

        Synchronous and instantaneous, so that it can be handed to
        :meth:`FaultyBackend.perform`. Must be called inside a trio run (it reads
        :func:`trio.current_time`).

        Args:
            token (int): The writer's fencing token (:attr:`Leadership.token`).
            writer (str): A name for the writer, for the record.
            data (object): Anything, kept in the record.
            issued (float | None): When the writer issued the write, if it was
                held up on the way.

        Returns:
            bool: True if applied; False if *token* is below the highest accepted.

        Raises:
            TypeError: if *token* is not an int.
        """
        if isinstance(token, bool) or not isinstance(token, int):
            raise type_error("token", token, "an int")
        highest = self.highest
        accepted = token >= highest
        if accepted:
            self.highest = token
        self.writes.append(FencedWrite(trio.current_time(), writer, token, accepted, highest,
                                       data, issued))
        return accepted

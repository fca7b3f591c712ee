"""Misuse gets a clear error at once: re-entering a key in one task, calling us outside trio."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from contextlib import aclosing
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trio_noleader
from trio_noleader import (
    MemoryBackend,
    hold_leadership,
    open_backend,
    open_nats_backend,
    open_sqlite_backend,
    run_as_leader,
)

KEY = "misuse/key"


# -- re-entering a key in the same task -------------------------------------------


@pytest.mark.parametrize("wait", [True, False])
async def test_reentering_a_key_in_its_own_task_raises_at_once(wait: bool) -> None:
    async with MemoryBackend(), hold_leadership(KEY) as lead:
        with trio.fail_after(5), pytest.raises(RuntimeError, match=repr(KEY)) as info:
            async with hold_leadership(KEY, wait=wait):
                pytest.fail("entered twice")  # pragma: no cover
        assert "already holds or campaigns for" in str(info.value)
        # The outer term is untouched by the refused entry.
        assert not lead.cancel_scope.cancel_called
        info_now = await trio_noleader.current_leader(KEY)
        assert info_now is not None
        assert info_now.candidate_id == lead.candidate_id


async def test_run_as_leader_inside_its_own_key_raises_at_once() -> None:
    async def job() -> None:
        pytest.fail("ran")  # pragma: no cover

    async with MemoryBackend(), hold_leadership(KEY):
        with trio.fail_after(5), pytest.raises(RuntimeError, match=repr(KEY)):
            await run_as_leader(KEY, job)


async def test_other_keys_other_backends_and_later_entries_are_fine() -> None:
    other = MemoryBackend()
    async with MemoryBackend():
        async with hold_leadership(KEY) as outer:
            async with hold_leadership("misuse/other") as second:
                assert second.token > 0
            async with hold_leadership(KEY, backend=other) as third:
                assert third.candidate_id != outer.candidate_id
        # Left: the same task may campaign for the key again.
        async with hold_leadership(KEY) as again:
            assert again.token > outer.token


async def test_a_refused_or_failed_entry_leaves_no_claim_behind() -> None:
    async with MemoryBackend() as backend:
        await backend.create(KEY, b"someone else", ttl=60)
        with pytest.raises(trio.WouldBlock):
            async with hold_leadership(KEY, wait=False):
                pytest.fail("elected")  # pragma: no cover
        entry = await backend.get(KEY)
        assert entry is not None
        await backend.delete(KEY, revision=entry.revision)
        async with hold_leadership(KEY, wait=False) as lead:
            assert lead.token > entry.revision


async def test_a_child_task_of_the_holder_is_a_candidate_of_its_own(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Child tasks inherit contextvars; a second task on one key stays legitimate:
    # it waits its turn.
    order: list[str] = []
    async with MemoryBackend(), trio.open_nursery() as nursery, hold_leadership(KEY) as first:
        async def second(task_status: trio.TaskStatus[None]) -> None:
            task_status.started()
            async with hold_leadership(KEY) as lead:
                order.append(f"child {lead.token}")

        await nursery.start(second)
        await trio.sleep(60)  # virtual time: the child waits, it is not refused
        order.append(f"parent {first.token}")
    assert order[0] == f"parent {first.token}"
    assert order[1].startswith("child ")
    assert int(order[1].split()[1]) > first.token


# -- outside trio ---------------------------------------------------------------------


def _entry_points(tmp_path: Path) -> dict[str, Callable[[], Coroutine[Any, Any, Any]]]:
    """Each public entry point, called the way a user would (with a backend given)."""
    memory = MemoryBackend()

    async def hold() -> None:
        async with hold_leadership(KEY, backend=memory):
            pytest.fail("elected outside trio")  # pragma: no cover

    async def run() -> None:
        await run_as_leader(KEY, trio.sleep, 0, backend=memory)

    async def leader() -> None:
        await trio_noleader.current_leader(KEY, backend=memory)

    async def watch() -> None:
        async with aclosing(trio_noleader.watch_leader(KEY, backend=memory)) as updates:
            async for _ in updates:
                pytest.fail("watched outside trio")  # pragma: no cover

    def opener(cm: Any) -> Callable[[], Coroutine[Any, Any, None]]:
        async def enter() -> None:
            async with cm:
                pytest.fail("opened outside trio")  # pragma: no cover
        return enter

    return {
        "hold_leadership()": hold,
        "run_as_leader()": run,
        "current_leader()": leader,
        "watch_leader()": watch,
        "MemoryBackend()": opener(MemoryBackend()),
        "open_backend()": opener(open_backend("memory://")),
        "open_backend() sqlite": opener(open_backend(f"sqlite://{tmp_path / 'a.db'}")),
        "open_sqlite_backend()": opener(open_sqlite_backend(tmp_path / "b.db")),
        # Nothing listens on port 9: the error comes before any I/O.
        "open_nats_backend()": opener(open_nats_backend("nats://127.0.0.1:9")),
    }


ENTRY_POINTS = sorted(_entry_points(Path("/nonexistent")))


def _expect_needs_trio(info: pytest.ExceptionInfo[RuntimeError], name: str) -> None:
    message = str(info.value)
    assert f"trio_noleader.{name.split()[0]} needs trio" in message
    assert "called from asyncio code" in message
    assert "trio_asyncio.open_loop()" in message
    assert "trio_as_aio" in message


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_under_asyncio_run_each_entry_point_says_it_needs_trio(
    name: str, tmp_path: Path
) -> None:
    call = _entry_points(tmp_path)[name]
    with pytest.raises(RuntimeError) as info:
        asyncio.run(call())
    _expect_needs_trio(info, name)
    assert list(tmp_path.iterdir()) == []  # no store was created either


@pytest.mark.parametrize("name", ENTRY_POINTS)
async def test_from_the_asyncio_side_of_trio_asyncio_each_says_it_needs_trio(
    name: str, tmp_path: Path
) -> None:
    trio_asyncio = pytest.importorskip("trio_asyncio", reason="the nats extra is not installed")
    call = _entry_points(tmp_path)[name]

    async def asyncio_side() -> None:
        await call()

    async with trio_asyncio.open_loop():
        with pytest.raises(RuntimeError) as info:
            await trio_asyncio.aio_as_trio(asyncio_side)()
    _expect_needs_trio(info, name)


def test_outside_any_event_loop_the_message_says_so() -> None:
    coro = trio_noleader.current_leader(KEY, backend=MemoryBackend())
    with pytest.raises(RuntimeError, match="called outside any event loop"):
        coro.send(None)


async def test_the_trio_asyncio_recipe_works(tmp_path: Path) -> None:
    trio_asyncio = pytest.importorskip("trio_asyncio", reason="the nats extra is not installed")
    # docs/howto/asyncio.rst: the trio part is a trio function, called from the
    # asyncio side through trio_as_aio, inside open_loop().
    url = f"sqlite://{tmp_path / 'leases.db'}"

    async def leader_work(key: str) -> int:  # trio code
        async with open_backend(url), hold_leadership(key, ttl=2) as lead:
            info = await trio_noleader.current_leader(key)
            assert info is not None
            assert info.candidate_id == lead.candidate_id
            await trio.sleep(0.01)
            return lead.token

    async def asyncio_app() -> int:  # asyncio code
        await asyncio.sleep(0)
        token: int = await trio_asyncio.trio_as_aio(leader_work)("asyncio/job")
        return token

    async with trio_asyncio.open_loop():
        token = await trio_asyncio.aio_as_trio(asyncio_app)()
    assert token > 0
    async with open_backend(url):
        assert await trio_noleader.current_leader("asyncio/job") is None  # released

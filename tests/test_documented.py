"""What README.rst says about the API's shape, checked: resign, run_as_leader, logging."""

from __future__ import annotations

import functools
import subprocess
import sys
import textwrap

import pytest
import trio
import trio.testing

import trio_noleader
from trio_noleader import Leadership, MemoryBackend, hold_leadership, run_as_leader


async def test_resign_is_synchronous(autojump_clock: trio.testing.MockClock) -> None:
    async with MemoryBackend():
        async with hold_leadership("k") as lead:
            assert lead.resign() is None  # type: ignore[func-returns-value]
            with pytest.raises(TypeError, match="can't be used in 'await' expression"):
                await lead.resign()  # type: ignore[func-returns-value, misc]
        assert lead.resigned
        assert await trio_noleader.current_leader("k") is None  # released


async def test_run_as_leader_with_nursery_start_and_partial(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[tuple[str, bool]] = []

    async def scheduler(name: str, *, flag: bool = False) -> None:
        seen.append((name, flag))
        await trio.sleep_forever()

    async with MemoryBackend(), trio.open_nursery() as nursery:
        # README: positional arguments only; keywords through functools.partial.
        lead = await nursery.start(run_as_leader, "cron",
                                   functools.partial(scheduler, flag=True), "nightly")
        assert isinstance(lead, Leadership)
        await trio.sleep(1)
        info = await trio_noleader.current_leader("cron")
        assert info is not None
        assert info.candidate_id == lead.candidate_id
        nursery.cancel_scope.cancel()
    assert seen == [("nightly", True)]


def test_an_application_without_logging_set_up_gets_warnings_on_stderr() -> None:
    code = textwrap.dedent("""
        import trio, trio_noleader

        async def main():
            async with trio_noleader.MemoryBackend() as store:
                try:
                    async with trio_noleader.hold_leadership("k", ttl=1) as lead:
                        entry = await store.get("k")
                        await store.delete("k", revision=entry.revision)
                        await trio.sleep(5)
                except trio_noleader.LeadershipLost:
                    print("lost")

        trio.run(main)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=False, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "lost\n"
    # Python's last-resort handler: the bare message, WARNING and above only.
    assert result.stderr.startswith("lost leadership of k (candidate "), result.stderr
    assert "elected" not in result.stderr  # INFO

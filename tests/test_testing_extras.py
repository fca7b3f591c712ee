"""trio_noleader.testing for users: the Hypothesis settings it ships, logs kept in the trace."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings

from trio_noleader.testing import (
    HYPOTHESIS_PROFILE,
    Candidate,
    Outage,
    Schedule,
    Timing,
    run_schedule,
    schedules,
    simulate,
    simulation_settings,
)

#: Two candidates and a store outage long enough to fail renewals and lose a term.
OUTAGE = Schedule(Timing(15.0, 5.0, 1.5), (Candidate("hold"), Candidate("hold")),
                  faults=(Outage(10.0, 30.0),), run_until=60.0)


def test_the_settings_have_no_deadline_and_allow_slow_examples() -> None:
    for ours in (simulation_settings(), settings.get_profile(HYPOTHESIS_PROFILE)):
        assert ours.deadline is None
        assert HealthCheck.too_slow in ours.suppress_health_check
    mine = simulation_settings(max_examples=3)
    assert (mine.deadline, mine.max_examples) == (None, 3)


@simulation_settings(max_examples=3, database=None)
@given(schedules(max_candidates=2, max_faults=1))
def test_the_settings_work_as_a_decorator(schedule: Schedule) -> None:
    simulate(schedule).check_all()


def test_a_simulation_keeps_the_library_log_in_its_trace_not_on_stderr() -> None:
    # A fresh interpreter with no logging set up: Python's last-resort handler
    # would print every WARNING of the library on stderr.
    code = textwrap.dedent(f"""
        from trio_noleader.testing import *
        trace = simulate({OUTAGE!r})
        trace.check_all()
        for record in trace.log:
            print(record.levelname, record.virtual_time, record.getMessage())
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=False, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert any("renewing sim/leader failed" in line for line in lines), lines
    assert any("lost leadership of sim/leader" in line for line in lines), lines
    times = [float(line.split()[1]) for line in lines]
    assert times == sorted(times)
    assert 10.0 <= times[0] < 40.0  # the run's own clock: the outage began at 10


async def test_only_the_simulation_s_tasks_log_into_the_trace(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    logger = logging.getLogger("trio_noleader")
    async with trio.open_nursery() as nursery:
        async def bystander() -> None:
            await trio.sleep(20)
            logger.warning("a bystander's warning")

        nursery.start_soon(bystander)
        trace = await run_schedule(OUTAGE)
    trace.check_all()
    assert any("renewing sim/leader failed" in r.getMessage() for r in trace.log)
    assert all("bystander" not in r.getMessage() for r in trace.log)
    assert [r.getMessage() for r in caplog.records] == ["a bystander's warning"]
    # After the run the library logs as usual again.
    logger.warning("after the run")
    assert caplog.records[-1].getMessage() == "after the run"

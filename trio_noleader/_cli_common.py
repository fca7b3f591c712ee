"""What the ``noleader`` subcommands share: exit codes, messages, the store's URL, signals."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import trio

from ._sharded import MEMBER_INFIX
from ._types import LeaderInfo
from ._unwrap import bare_exceptions

#: Exit codes of ``noleader`` itself (``run`` otherwise exits with the command's code).
EXIT_USAGE = 2
EXIT_NOBODY_LEADS = 3
EXIT_LOST = 120
EXIT_NOT_ELECTED = 121
EXIT_UNAVAILABLE = 122
EXIT_SIGNAL_BASE = 128

EXIT_CODES_HELP = f"""\
exit codes:
  0..255  noleader run: the command's own exit code (128+N if it died of signal N)
  {EXIT_USAGE}       bad usage: unknown option, invalid key, malformed URL
  {EXIT_NOBODY_LEADS}       noleader status KEY...: one of the KEYs has no leader
  {EXIT_LOST}     noleader run: leadership was lost, the command was stopped
  {EXIT_NOT_ELECTED}     noleader run --no-wait: someone else leads; the command did not start
  {EXIT_UNAVAILABLE}     the store could not be reached, refused us, or does not exist
  130/143 noleader got SIGINT/SIGTERM (run: the command was stopped, the lease released)
"""


class Exit(Exception):
    """Leave ``noleader`` with *code*, saying *message* (if any) on stderr."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def say(message: str) -> None:
    """One line of noleader's own on stderr."""
    print(f"noleader: {message}", file=sys.stderr, flush=True)


def show_library_warnings() -> None:
    """The library's warnings on stderr, looking like noleader's own lines.

    Without this, Python's last-resort handler prints them bare. noleader's own
    messages then say what noleader does, never what the library already said.
    """
    logger = logging.getLogger("trio_noleader")
    if logger.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("noleader: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    logger.propagate = False


def state_directory() -> str:
    """``$XDG_STATE_HOME/noleader`` (``~/.local/state/noleader``): the default store's home."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(Path.home(), ".local", "state")
    return os.path.abspath(os.path.join(state, "noleader"))


def default_url() -> tuple[str, bool]:
    """The store's URL when ``--url`` is not given, and whether it is the state directory's.

    ``$NOLEADER_URL``, else an SQLite file in :func:`state_directory`.
    """
    url = os.environ.get("NOLEADER_URL")
    if url:
        return url, False
    return f"sqlite://{os.path.join(state_directory(), 'leases.db')}", True


def describe(info: LeaderInfo | None) -> str:
    if info is None:
        return "no leader"
    holder = str(info.candidate_id) if info.candidate_id is not None else "unknown holder"
    left = "" if info.expires_in is None else f", {info.expires_in:.1f} s left"
    if info.name is not None:
        return f"{info.name} (candidate {holder}, token {info.token}{left})"
    return f"{holder} (token {info.token}{left})"


def info_json(key: str, info: LeaderInfo | None) -> dict[str, Any]:
    return {
        "key": key,
        "leader": None if info is None or info.candidate_id is None
        else str(info.candidate_id),
        "name": None if info is None else info.name,
        "held": info is not None,
        "foreign": info is not None and info.candidate_id is None,
        "token": None if info is None else info.token,
        "revision": None if info is None else info.revision,
        "expires_in": None if info is None else info.expires_in,
        "time": time.time(),
    }


async def with_signals(body: Callable[[], Awaitable[int]]) -> int:
    """Run *body*; SIGINT/SIGTERM cancel it cleanly and give 128 + the signal number."""
    received: list[int] = []
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals, \
            bare_exceptions():
        async with trio.open_nursery() as nursery:
            async def _watch_signals() -> None:
                async for signum in signals:
                    received.append(signum)
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(_watch_signals)
            code = await body()
            nursery.cancel_scope.cancel()
    if received:
        return EXIT_SIGNAL_BASE + received[0]
    return code


# -- sharded groups in ``noleader status`` ---------------------------------------


def _owned_by_name(rows: Sequence[tuple[str, LeaderInfo | None]]) -> dict[str, int]:
    """Leases held per holder name, member slots left out."""
    names: dict[str, int] = {}
    for key, info in rows:
        if info is not None and info.name is not None and MEMBER_INFIX not in key:
            names[info.name] = names.get(info.name, 0) + 1
    return names


def member_slot(key: str) -> str | None:
    """The group whose member slot *key* is (``<group>/member/NN``), else None."""
    group, infix, slot = key.rpartition(MEMBER_INFIX)
    return group if infix and group and slot.isdigit() else None


def sharded_groups(rows: Sequence[tuple[str, LeaderInfo | None]]
                   ) -> dict[str, list[tuple[str, int | None]]]:
    """The sharded groups among *rows* (key, holder): group -> [(member, keys owned)].

    A group shows by its member slots (``<group>/member/NN``, see ``run_sharded``);
    a member is named by its lease's name where the store carries one (else
    ``#NN`` and its candidate id). Keys owned are counted by that name among the
    other leases, None when the store carries no names.
    """
    names = _owned_by_name(rows)
    groups: dict[str, list[tuple[str, int | None]]] = {}
    for key, info in rows:
        group = member_slot(key)
        if group is None or info is None:
            continue
        if info.name is not None:
            groups.setdefault(group, []).append((info.name, names.get(info.name, 0)))
        else:
            slot = key.rpartition(MEMBER_INFIX)[2]
            groups.setdefault(group, []).append(
                (f"#{slot} {info.candidate_id or '(unknown holder)'}", None))
    return groups


def status_json(rows: Sequence[tuple[str, LeaderInfo | None]]) -> list[dict[str, Any]]:
    """``noleader status --json``: :func:`info_json` per key, with its sharded group.

    ``group`` is the sharded group a member slot belongs to (None for other keys);
    ``keys_owned`` the keys its member holds, counted by name as in the text
    output (None for other keys, and where the store carries no names).
    """
    names = _owned_by_name(rows)
    found = []
    for key, info in rows:
        group = member_slot(key)
        owned = None
        if group is not None and info is not None and info.name is not None:
            owned = names.get(info.name, 0)
        found.append({**info_json(key, info), "group": group, "keys_owned": owned})
    return found


def print_groups(rows: Sequence[tuple[str, LeaderInfo | None]]) -> None:
    """Print ``noleader status``'s sharded-groups section (nothing if there is none)."""
    groups = sharded_groups(rows)
    if not groups:
        return
    print()
    for group, members in sorted(groups.items()):
        counts = [c for _, c in members if c is not None]
        owned = f", {sum(counts)} keys owned" if counts else ""
        print(f"sharded group {group}: {len(members)} members{owned}")
        for member, count in members:
            print(f"  {member}" + ("" if count is None else f"  {count} keys"))

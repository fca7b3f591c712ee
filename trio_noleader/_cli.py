"""The ``noleader`` command line: parsing, ``main``, and the commands that only look."""

from __future__ import annotations

import argparse
import difflib
import json
import os
import shlex
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import aclosing
from typing import Any, NoReturn

import trio

from ._cli_common import (
    EXIT_CODES_HELP,
    EXIT_NOBODY_LEADS,
    EXIT_SIGNAL_BASE,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    Exit,
    default_url,
    describe,
    info_json,
    print_groups,
    say,
    show_library_warnings,
    state_directory,
    status_json,
    with_signals,
)
from ._cli_demo import cmd_candidate, cmd_demo
from ._cli_run import check_grace, cmd_run, default_grace
from ._exceptions import BackendUnavailable, NoLeaderError, RevisionMismatch
from ._helpers import current_leader, watch_leader
from ._open import open_backend
from ._types import LeaderInfo, check_key, check_name, check_seconds, check_timing
from ._urls import path_from_url, redact_url, scheme_of
from ._version import __version__

__all__ = ["build_parser", "main"]

#: Commands that only look: they never create a store (a typo must not start one).
READ_ONLY = {"status", "watch", "reset"}


# -- status, watch, reset --------------------------------------------------------


async def cmd_status(args: argparse.Namespace) -> int:
    async with open_backend(args.url, create=False) as backend:
        keys = args.keys or await backend.keys()
        rows = [(key, await current_leader(key)) for key in keys]
    # A health check: exit 3 when a KEY named on the command line has no leader.
    code = EXIT_NOBODY_LEADS if any(info is None for _, info in rows) else 0
    if args.json:
        print(json.dumps(status_json(rows), indent=2))
        return code
    if not rows:
        print(f"no elections in {redact_url(args.url)}")
        return code
    width = max(len(key) for key, _ in rows)
    names = max([4] + [len(info.name) for _, info in rows if info and info.name])
    print(f"{'KEY':<{width}}  {'NAME':<{names}}  {'LEADER':<36}  {'TOKEN':>8}  "
          f"{'TIME LEFT':>9}")
    for key, info in rows:
        if info is None:
            print(f"{key:<{width}}  {'-':<{names}}  {'-':<36}  {'-':>8}  {'-':>9}")
            continue
        holder = str(info.candidate_id) if info.candidate_id else "(unknown holder)"
        left = "?" if info.expires_in is None else f"{info.expires_in:.1f}s"
        print(f"{key:<{width}}  {info.name or '-':<{names}}  {holder:<36}  "
              f"{info.token:>8}  {left:>9}")
    print_groups(rows)
    return code


async def cmd_watch(args: argparse.Namespace) -> int:
    async def body() -> int:
        async with open_backend(args.url, create=False), \
                aclosing(watch_leader(args.key)) as updates:
            async for info in updates:
                if args.json:
                    print(json.dumps(info_json(args.key, info)), flush=True)
                else:
                    stamp = time.strftime("%H:%M:%S")
                    print(f"{stamp}  {args.key}: {describe(info)}", flush=True)
        return 0

    return await with_signals(body)


async def cmd_reset(args: argparse.Namespace) -> int:
    if not args.force:
        raise Exit(EXIT_USAGE, "reset deletes whatever lease is on the key, even a live "
                   "leader's; add --force if that is what you mean")
    async with open_backend(args.url, create=False) as backend:
        entry = await backend.get(args.key)
        if entry is None:
            print(f"{args.key}: no lease to clear")
            return 0
        info = LeaderInfo.from_entry(entry)
        try:
            await backend.delete(args.key, revision=entry.revision)
        except RevisionMismatch:
            raise Exit(1, f"{args.key} changed while clearing it; run reset again") from None
    print(f"{args.key}: cleared the lease of {describe(info)}")
    return 0


# -- parsing ---------------------------------------------------------------------


def _key(text: str) -> str:
    try:
        return check_key(text)
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _name(text: str) -> str:
    try:
        return check_name(text)
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _seconds(text: str) -> float:
    try:
        return check_seconds("seconds", float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: must be a finite number of seconds > 0") from None


KEY_HELP = "the election key: letters, digits and - / _ = . (not starting or ending with .)"
URL_HELP = ("the store: sqlite:///path/to/leases.db, nats://host:4222/bucket, "
            "postgresql://user:pw@host/db "
            "(default: $NOLEADER_URL, else an SQLite file under $XDG_STATE_HOME/noleader)")
RUN_USAGE = ("noleader run [-h] [--url URL] [--ttl SECONDS] [--grace SECONDS] [--no-wait] "
             "[--name NAME] [--metrics-port PORT] KEY -- CMD [ARGS...]")


def _add_url(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument("--url", default=default, help=URL_HELP)


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The ``noleader`` parser and its subcommands' parsers, by name."""
    parser = argparse.ArgumentParser(
        prog="noleader",
        description="Leader election for replicas: run a command on exactly one of them.",
        epilog=EXIT_CODES_HELP + "\nstore: --url (before or after the command), else "
        "$NOLEADER_URL, else an SQLite file under $XDG_STATE_HOME/noleader "
        "(~/.local/state/noleader).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"noleader {__version__}")
    _add_url(parser, None)
    # The subcommand's --url wins; left out, it must not erase the top level's.
    common = argparse.ArgumentParser(add_help=False)
    _add_url(common, argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command_name", required=True, metavar="COMMAND")
    subparsers: dict[str, argparse.ArgumentParser] = {}

    def add(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        sub_parser: argparse.ArgumentParser = sub.add_parser(
            name, parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
            **kwargs)
        subparsers[name] = sub_parser
        return sub_parser

    run = add("run", help="run a command only while leader", usage=RUN_USAGE,
              description="Campaign for KEY; while leader, run CMD with NOLEADER_KEY and "
              "NOLEADER_TOKEN (the fencing token) in its environment, in a process group "
              "of its own. On SIGINT/SIGTERM, on loss of the lease, or when renewals fail "
              "for too long, CMD gets SIGTERM (its whole process group) and SIGKILL after "
              "--grace; the lease is kept, and renewed, until every process of CMD has "
              "exited, then released. No process of CMD outlives noleader, even a "
              "SIGKILLed one (Linux).",
              epilog=EXIT_CODES_HELP)
    run.add_argument("key", type=_key, metavar="KEY", help=KEY_HELP)
    run.add_argument("--ttl", type=_seconds, default=15.0, metavar="SECONDS",
                     help="lease ttl (default 15); renewed every ttl/3")
    run.add_argument("--grace", type=_seconds, default=None, metavar="SECONDS",
                     help="between SIGTERM and SIGKILL when stopping CMD (default ttl/3, "
                     "5 at the default ttl); must be < ttl - ttl/10 - ttl/3")
    run.add_argument("--no-wait", action="store_true",
                     help="exit 121 at once if someone else leads")
    run.add_argument("--name", type=_name, default=None,
                     help="this candidate's name, shown by status and watch (default "
                     "HOSTNAME:PID)")
    run.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                     help="serve Prometheus metrics of the lease at "
                     "http://ADDR:PORT/metrics (0: a free port, said on stderr; needs "
                     "the metrics extra)")
    run.add_argument("--metrics-addr", default="0.0.0.0", metavar="ADDR",
                     help="the address --metrics-port binds (default 0.0.0.0)")

    status = add("status", help="who leads each election",
                 description="Show who holds each election of the store, or the KEYs "
                 "named. Exits 0, or 3 if one of the KEYs named has no leader (a health "
                 "check). Never creates a store: a missing one exits 122.",
                 epilog=EXIT_CODES_HELP)
    status.add_argument("keys", nargs="*", type=_key, metavar="KEY",
                        help=f"{KEY_HELP} (default: every key in the store)")
    status.add_argument("--json", action="store_true", help="machine-readable output")

    watch = add("watch", help="print a line per leader change",
                description="Print who leads KEY now, then one line whenever that changes "
                "(renewals are not changes), until Ctrl-C (exit 130) or SIGTERM (143).",
                epilog=EXIT_CODES_HELP)
    watch.add_argument("key", type=_key, metavar="KEY", help=KEY_HELP)
    watch.add_argument("--json", action="store_true", help="one JSON object per line")

    reset = add("reset", help="clear a stuck or foreign lease (operator command)",
                description="Delete whatever lease is on KEY, even a live leader's, so "
                "that the next candidate can be elected at once. A live leader's noleader "
                "notices within moments (at its next renewal at the latest) and stops its "
                "command; until then two commands may run.",
                epilog=EXIT_CODES_HELP)
    reset.add_argument("key", type=_key, metavar="KEY", help=KEY_HELP)
    reset.add_argument("--force", action="store_true", help="required: yes, clear it")

    demo = add("demo", help="watch candidates elect, hand over and fail over",
               description="Start candidate processes on a fresh store (a temporary "
               "SQLite file unless --url is given), show who leads, stop the leader "
               "gracefully and then kill it, and show how long each takeover took. Ends "
               "by itself unless --forever.")
    demo.add_argument("--candidates", type=int, default=3, help="candidate processes (3)")
    demo.add_argument("--rounds", type=int, default=2,
                      help="graceful + crash rounds before ending (2)")
    demo.add_argument("--forever", action="store_true", help="keep going until Ctrl-C")
    demo.add_argument("--ttl", type=_seconds, default=2.0, metavar="SECONDS",
                      help="lease ttl (2)")
    demo.add_argument("--pause", type=float, default=1.0, metavar="SECONDS",
                      help="how long each leader leads before it is stopped (1)")
    demo.add_argument("--key", type=_key, default="demo", help="election key (demo)")
    return parser, subparsers


def _candidate_parser() -> argparse.ArgumentParser:
    """The demo's own candidate processes: not a command for users, so not listed."""
    parser = argparse.ArgumentParser(prog="noleader _candidate")
    parser.add_argument("key", type=_key)
    parser.add_argument("--url", required=True)
    parser.add_argument("--ttl", type=_seconds, default=2.0)
    parser.add_argument("--name", default="candidate")
    return parser


def _unrecognized(parser: argparse.ArgumentParser, name: str, extras: list[str],
                  has_separator: bool) -> NoReturn:
    message = f"unrecognized arguments: {shlex.join(extras)}"
    known = [option for action in parser._actions for option in action.option_strings]
    for extra in extras:
        if extra.startswith("-"):
            close = difflib.get_close_matches(extra.split("=")[0], known, n=1)
            if close:
                message += f" (did you mean {close[0]}?)"
                break
    if name == "run" and not has_separator and not all(e.startswith("-") for e in extras):
        message += ("; the command goes after --, as in: noleader run KEY -- "
                    f"{shlex.join(e for e in extras if not e.startswith('-'))}")
    parser.error(message)


def parse_args(argv: list[str]) -> argparse.Namespace:
    if argv[:1] == ["_candidate"]:
        args = _candidate_parser().parse_args(argv[1:])
        args.command_name = "_candidate"
        args.default_store = False
        return args
    parser, subparsers = build_parser()
    # Everything after the first "--" is the command of `noleader run`, verbatim.
    command: list[str] | None = None
    if "--" in argv:
        split = argv.index("--")
        argv, command = argv[:split], argv[split + 1:]
    args, extras = parser.parse_known_args(argv)
    name: str = args.command_name
    sub_parser = subparsers[name]
    if extras:
        _unrecognized(sub_parser, name, extras, command is not None)
    if command is not None and name != "run":
        sub_parser.error(f"only `noleader run` takes a command after --, not "
                         f"`noleader {name}`")
    if name == "run":
        if not command:
            sub_parser.error("run needs a command after --, e.g. "
                             "noleader run KEY -- my-scheduler --flag")
        args.command = command
        if args.metrics_port is not None and not 0 <= args.metrics_port <= 65535:
            sub_parser.error(f"--metrics-port {args.metrics_port}: must be 0 to 65535")
        try:
            check_timing(args.ttl, None, None)
            if args.grace is None:
                args.grace = default_grace(args.ttl)
            check_grace(args.ttl, args.grace)
        except ValueError as exc:
            sub_parser.error(str(exc))
    if name == "demo" and (args.candidates < 2 or args.rounds < 1):
        sub_parser.error("demo needs --candidates >= 2 and --rounds >= 1")
    args.default_store = False
    if args.url is None and name != "demo":
        args.url, args.default_store = default_url()
    if args.url is not None:
        try:
            kind = scheme_of(args.url)
        except (TypeError, ValueError) as exc:
            sub_parser.error(str(exc))
        if kind == "memory":
            sub_parser.error(
                "memory:// is a store inside one process, and every noleader command "
                "is a process of its own: no other process would see its elections. "
                "Use sqlite:///path/to/leases.db (one host) or nats://host:4222/bucket")
    return args


COMMANDS: dict[str, Callable[[argparse.Namespace], Awaitable[int]]] = {
    "run": cmd_run,
    "status": cmd_status,
    "watch": cmd_watch,
    "reset": cmd_reset,
    "demo": cmd_demo,
    "_candidate": cmd_candidate,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``noleader`` console script."""
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    show_library_warnings()
    try:
        if args.default_store and args.command_name not in READ_ONLY:
            # The one directory we create: the default store's, on first use.
            os.makedirs(state_directory(), mode=0o700, exist_ok=True)
        elif args.default_store and not os.path.exists(path_from_url(args.url)):
            raise Exit(EXIT_UNAVAILABLE, f"no store yet at {path_from_url(args.url)!r}: "
                       "nothing has run `noleader run` with the default store here (or "
                       "give --url, or set $NOLEADER_URL)")
        return trio.run(COMMANDS[args.command_name], args)
    except Exit as exc:
        if exc.message:
            say(exc.message)
        return exc.code
    except ValueError as exc:  # a malformed URL, a ttl the store refuses
        say(str(exc))
        return EXIT_USAGE
    except BackendUnavailable as exc:
        say(f"store unavailable: {exc}")
        return EXIT_UNAVAILABLE
    except OSError as exc:
        say(f"cannot create the state directory: {exc}")
        return EXIT_UNAVAILABLE
    except NoLeaderError as exc:
        say(str(exc))
        return 1
    except KeyboardInterrupt:
        return EXIT_SIGNAL_BASE + signal.SIGINT

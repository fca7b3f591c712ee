"""What both halves of the NATS backend share: constants, error mapping, the link.

See :mod:`trio_noleader._nats` (the key-value protocol), :mod:`trio_noleader._nats_watch`
(its watch) and :mod:`trio_noleader._nats_setup` (connecting and provisioning).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Mapping
from typing import Any

import nats.errors
import nats.js.errors
from nats.js import api

logger = logging.getLogger("trio_noleader")

#: Seconds the server keeps an expiry marker (the bucket's ``limit_marker_ttl``).
#: Long enough for a watcher whose consumer was reset after missed heartbeats
#: (about 10 s) to still see the marker; short, because a client that does not know
#: markers (nats-py's own ``kv.create``, perhaps the Rust crate's) takes one for a
#: live value until it is gone.
MARKER_TTL = 30.0

#: Seconds for one JetStream API request (nats-py's own default is 5 s too).
REQUEST_TIMEOUT = 5.0

#: Seconds between two checks that the bucket is still the one the backend opened.
IDENTITY_INTERVAL = 1.0

#: How often a waiting watcher checks that the connection is still alive.
WATCH_LIVENESS_INTERVAL = 1.0

#: Seconds the server keeps a watcher's consumer after its subscriber went away. A
#: watch breaks on any disconnect anyway, so the consumer need not outlive an outage.
WATCH_INACTIVE_THRESHOLD = 15.0

#: The longest lease TTL in seconds. nats-server (2.15) drops a message at once when
#: its ``Nats-TTL`` overflows the server's nanosecond clock arithmetic (from about
#: 9.2e9 s less the current Unix time): such a lease would vanish from the store
#: while its holder's deadline lay centuries ahead.
MAX_TTL = 10**9

# JSStreamWrongLastSequenceErrF and JSStreamWrongLastSequenceConstantErr.
_WRONG_LAST_SEQUENCE = frozenset({10071, 10164})
# JSStreamNotFoundErr: the bucket itself is gone, not just the key.
_STREAM_NOT_FOUND = 10059

_EXPECTED_LAST = api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE.value
_KV_OPERATION = "KV-Operation"
_MARKER_REASON = "Nats-Marker-Reason"
_MSG_TTL = api.Header.MSG_TTL.value

# Errors from nats-py that mean "the store did not answer usefully (now)".
_TRANSIENT = (nats.errors.Error, OSError, asyncio.TimeoutError)


# -- small helpers --------------------------------------------------------------


def _describe(exc: BaseException) -> str:
    name = type(exc).__name__
    if isinstance(exc, nats.js.errors.APIError):
        # nats-py's str() of an API error repeats itself and prints "None"s.
        details = [f"{label} {value}" for label, value in
                   (("code", exc.code), ("err_code", exc.err_code)) if value is not None]
        text = f"{name} ({', '.join(details)})" if details else name
        return f"{text}: {exc.description}" if exc.description else text
    text = str(exc).strip()
    return f"{name}: {text}" if text and text != name else name


def _is_absent(headers: Mapping[str, str] | None) -> bool:
    """True for a delete, a purge or a server marker (TTL or max-age expiry)."""
    if not headers:
        return False
    return headers.get(_KV_OPERATION) in ("DEL", "PURGE") or _MARKER_REASON in headers


def _parse_duration(text: str) -> float | None:
    """Seconds in a ``Nats-TTL`` header ("5", "5s", "2m", "1h"), or None."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)?", text.strip())
    if match is None:
        return None
    unit = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[match.group(2) or "s"]
    return float(match.group(1)) * unit


async def _js_api(nc: Any, subject: str, payload: Mapping[str, Any] | None = None
                  ) -> dict[str, Any]:
    """One raw JetStream API request (asyncio side); raises nats-py's APIError."""
    data = json.dumps(payload).encode() if payload is not None else b""
    msg = await nc.request(f"$JS.API.{subject}", data, timeout=REQUEST_TIMEOUT)
    response: dict[str, Any] = json.loads(msg.data)
    if "error" in response:
        nats.js.errors.APIError.from_error(response["error"])  # always raises
    return response


class _Link:
    """Connection state shared by the callbacks, the backend and its watchers."""

    def __init__(self) -> None:
        self.connected = False  # the first connect succeeded
        self.closing = False  # aclose() began: a disconnect now is ours
        self.disconnects = 0  # a watcher opened before a disconnect may have missed news

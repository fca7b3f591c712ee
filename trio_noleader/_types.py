"""Plain data types, argument rules and the stored value format (the bottom layer)."""

from __future__ import annotations

import math
import os
import re
import socket
import time
import uuid
from dataclasses import dataclass
from typing import TypeVar

__all__ = [
    "Entry",
    "LeaderInfo",
    "check_key",
    "check_name",
    "check_seconds",
    "check_timing",
    "check_type",
    "decode_name",
    "decode_value",
    "default_name",
    "encode_value",
    "max_round_trip",
    "new_candidate_id",
    "type_error",
]

_KEY_RE = re.compile(r"[-/_=.a-zA-Z0-9]+")
_KEY_RULE = (
    "keys are 1 or more of the characters A-Z a-z 0-9 - / _ = . "
    "and do not start or end with '.' or hold '..'"
)
MAX_KEY_LENGTH = 1024

_NAME_RE = re.compile(r"[-._:@/+=~a-zA-Z0-9]+")
MAX_NAME_LENGTH = 128
_NAME_RULE = (f"names are 1 to {MAX_NAME_LENGTH} of the characters A-Z a-z 0-9 "
              "- . _ : @ / + = ~")
#: After the 16 UUID bytes and the 8 token bytes, this byte says a name follows.
_NAME_TAG = 1

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Entry:
    """One live entry of a backend.

    Attributes:
        key (str): The key.
        value (bytes): The stored bytes.
        revision (int): The store's revision of the write that produced this value.
        expires_in (float | None): Seconds the entry had left when it was read, if the
            backend knows (used for display only, never for safety decisions).
    """

    key: str
    value: bytes
    revision: int
    expires_in: float | None = None


@dataclass(frozen=True, slots=True)
class LeaderInfo:
    """Who holds a key, as an observer sees it.

    Attributes:
        candidate_id (uuid.UUID | None): The holder's candidate id, or ``None`` when
            the stored value is not one of ours (a foreign or corrupt value).
        token (int): The fencing token of the holder's term (for a foreign value, the
            entry's revision).
        revision (int): The store revision of the entry as last written (it changes
            on every renewal).
        expires_in (float | None): Seconds left on the lease when read, if known.
        name (str | None): The holder's name (``hold_leadership(name=...)``, by
            default ``"<hostname>:<pid>"``), or ``None`` for a foreign value or one
            written without a name (by the Rust crate noleader, or before names).
    """

    candidate_id: uuid.UUID | None
    token: int
    revision: int
    expires_in: float | None = None
    name: str | None = None

    @classmethod
    def from_entry(cls, entry: Entry) -> LeaderInfo:
        cid, token = decode_value(entry.value, entry.revision)
        return cls(cid, token if token is not None else entry.revision, entry.revision,
                   entry.expires_in, decode_name(entry.value))


def check_key(key: object) -> str:
    """Return *key* if it is a valid election key, else raise TypeError/ValueError."""
    if not isinstance(key, str):
        raise type_error("key", key, "a str")
    if len(key) > MAX_KEY_LENGTH:
        raise ValueError(
            f"key {key[:40]!r}... is {len(key)} characters long; "
            f"keys are at most {MAX_KEY_LENGTH} characters"
        )
    # NATS KV's rule, on every backend so that code moves between them unchanged
    # ('..' would make an empty subject token, which NATS never stores).
    if (not _KEY_RE.fullmatch(key) or key.startswith(".") or key.endswith(".")
            or ".." in key):
        raise ValueError(f"invalid key {key!r}: {_KEY_RULE}")
    return key


def check_name(name: object) -> str:
    """Return *name* if it is a valid candidate name, else raise TypeError/ValueError."""
    if not isinstance(name, str):
        raise type_error("name", name, "a str")
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"name {name[:40]!r}... is {len(name)} characters long; "
                         f"{_NAME_RULE}")
    if not name.isascii() or not _NAME_RE.fullmatch(name):
        raise ValueError(f"invalid name {name!r}: {_NAME_RULE}")
    return name


def default_name() -> str:
    """``"<hostname>:<pid>"``, the hostname cut down to what a name may hold."""
    host = re.sub(r"[^-._a-zA-Z0-9]", "_", socket.gethostname()) or "localhost"
    pid = f":{os.getpid()}"
    return host[: MAX_NAME_LENGTH - len(pid)] + pid


def type_error(name: str, value: object, expected: str) -> TypeError:
    """The one shape of our TypeErrors: ``<name> must be <expected>, got <type>: <value>``."""
    return TypeError(f"{name} must be {expected}, got {type(value).__name__}: {value!r:.80}")


def check_type(name: str, value: object, cls: type[T], expected: str) -> T:
    """Return *value* if it is an instance of *cls* (never a bool standing in for an int)."""
    if not isinstance(value, cls) or (isinstance(value, bool) and cls is not bool):
        raise type_error(name, value, expected)
    return value


def check_seconds(name: str, value: object, *, allow_zero: bool = False) -> float:
    """Return *value* as float seconds: a finite real number, > 0 (or >= 0 if *allow_zero*).

    Raises:
        TypeError: if *value* is not an int or float (a bool is neither).
        ValueError: if it is infinite, NaN or out of range, naming *name* and the rule.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise type_error(name, value, "a number of seconds")
    try:
        seconds = float(value)
    except OverflowError:  # an int too large for a float
        seconds = math.inf
    rule = ">= 0" if allow_zero else "> 0"
    if not math.isfinite(seconds):
        raise ValueError(f"{name}={seconds!r}: must be a finite number of seconds {rule}")
    if seconds < 0 or (seconds == 0 and not allow_zero):
        raise ValueError(f"{name}={value!r}: must be a finite number of seconds {rule}")
    return seconds


def check_timing(
    ttl: object, renew_interval: object, guard: object
) -> tuple[float, float, float]:
    """Validate and default the lease timing; return ``(ttl, renew_interval, guard)``.

    Rules: ``ttl`` finite and > 0; ``0 < renew_interval < ttl`` (default ``ttl/3``);
    ``0 <= guard < ttl - renew_interval`` (default ``ttl/10``).
    """
    ttl_f = check_seconds("ttl", ttl)
    renew_f = ttl_f / 3 if renew_interval is None else check_seconds(
        "renew_interval", renew_interval)
    if renew_f >= ttl_f:
        raise ValueError(
            f"renew_interval={renew_f!r} with ttl={ttl_f!r}: renew_interval must be < ttl"
        )
    guard_f = ttl_f / 10 if guard is None else check_seconds("guard", guard, allow_zero=True)
    if guard_f >= ttl_f - renew_f:
        raise ValueError(
            f"guard={guard_f!r} with ttl={ttl_f!r} and renew_interval={renew_f!r}: "
            f"guard must be < ttl - renew_interval ({ttl_f - renew_f!r}), "
            "or the body would be cancelled before the first renewal could land"
        )
    return ttl_f, renew_f, guard_f


def max_round_trip(ttl: float, renew_interval: float, guard: float) -> float:
    """The longest store round trip with which a lease can be kept, in seconds.

    A renewal sent at ``t`` must be answered before the deadline that the previous
    one set, ``t_previous + ttl - guard``, and renewals go out every
    ``max(renew_interval, round trip)``. So a round trip ``X`` works while
    ``X + max(renew_interval, X) < ttl - guard``, that is while
    ``X < min(ttl - guard - renew_interval, (ttl - guard) / 2)``: 0.45 x ttl with
    the default ``renew_interval`` and ``guard``. A create answered later than this
    is no use either, which bounds how long a campaign waits for one.
    """
    return min(ttl - guard - renew_interval, (ttl - guard) / 2)


def new_candidate_id() -> uuid.UUID:
    """A fresh UUIDv7 (RFC 9562): 48-bit Unix milliseconds, then 74 random bits."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76  # version
    value |= ((rand >> 68) & 0xFFF) << 64  # rand_a, 12 bits
    value |= 0b10 << 62  # variant
    value |= rand & ((1 << 62) - 1)  # rand_b, 62 bits
    return uuid.UUID(int=value)


def encode_value(candidate_id: uuid.UUID, token: int | None = None,
                 name: str | None = None) -> bytes:
    """The stored value: 16 raw UUID bytes, then the token (8 bytes, big-endian) if given.

    With a *name*: the UUID, the token (zero when not known yet: the entry's own
    revision is the token), one tag byte (1), then the name in ASCII. Never 16
    bytes long, so the Rust crate noleader reads it as an unknown holder, which it
    never overwrites.
    """
    if name is not None:
        return (candidate_id.bytes + (token or 0).to_bytes(8, "big")
                + bytes((_NAME_TAG,)) + name.encode("ascii"))
    if token is None:
        return candidate_id.bytes
    return candidate_id.bytes + token.to_bytes(8, "big")


def _named(value: bytes) -> bool:
    # The name's rule is checked too: a corrupt value is a foreign holder, left alone.
    if len(value) < 26 or value[24] != _NAME_TAG or len(value) > 25 + MAX_NAME_LENGTH:
        return False
    try:
        name = bytes(value[25:]).decode("ascii")
    except UnicodeDecodeError:
        return False
    return _NAME_RE.fullmatch(name) is not None


def decode_value(value: bytes, revision: int) -> tuple[uuid.UUID | None, int | None]:
    """Split a stored value into ``(candidate_id, token)``.

    A 16-byte value's token is its own *revision*, as is a named value's whose token
    is zero. Any value that is not 16 or 24 bytes or a well-formed named value is a
    foreign holder: ``(None, None)``.
    """
    if len(value) == 16:
        return uuid.UUID(bytes=bytes(value)), revision
    if len(value) == 24:
        return uuid.UUID(bytes=bytes(value[:16])), int.from_bytes(value[16:], "big")
    if _named(value):
        token = int.from_bytes(value[16:24], "big")
        return uuid.UUID(bytes=bytes(value[:16])), token or revision
    return None, None


def decode_name(value: bytes) -> str | None:
    """The name in a stored value, or ``None`` (no name, or not one of our values)."""
    return bytes(value[25:]).decode("ascii") if _named(value) else None

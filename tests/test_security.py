"""Authentication, TLS and secrecy against nats-servers that require them.

Each test starts its own nats-server on 127.0.0.1 (from a config file written to a
tmp dir where it needs one) and stops it by PID. Logins by user and password, token,
nkey (seed string or file) and creds file (operator mode: the operator, account and
user JWTs are made and signed here with the ``nkeys`` package), and TLS with a CA
and certificates made here with trustme (server certificate, client certificates,
a ``tls://`` URL). A wrong credential gives ``BackendUnavailable`` naming the
server within a few seconds; and a secret never shows in an exception (its whole
chain, as a traceback prints it), a repr, a log record of any logger at DEBUG, or
the output of the ``noleader`` command line, whatever fails.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import ssl
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

# Every test here needs the nats extra: without it the module is skipped.
pytest.importorskip("nats", reason="the nats extra is not installed")

import trio
import trustme

from trio_noleader import (
    BackendUnavailable,
    LeadershipLost,
    NatsBackend,
    current_leader,
    hold_leadership,
    open_backend,
    open_nats_backend,
)

from .nats_fixture import delete_bucket, nats_server

pytestmark = pytest.mark.nats

KEY = "jobs/secure"
PASSWORD = "pa55-Secr3t-xyz"
TOKEN = "t0ken-Secr3t-xyz"


def shown(exc: BaseException) -> str:
    """Everything a program might print about *exc*: its traceback with every cause."""
    return "".join(traceback.format_exception(exc)) + repr(exc)


def assert_hidden(secrets: list[str], *texts: str) -> None:
    for secret in secrets:
        for text in texts:
            assert secret not in text, f"secret {secret[:6]}... shown in: {text[-2000:]}"


async def expect_refused(url: str, within: float = 4.0, **options: Any) -> BackendUnavailable:
    """Opening must fail with BackendUnavailable naming the server, within *within* s."""
    started = trio.current_time()
    with trio.fail_after(within + 5), pytest.raises(BackendUnavailable) as raised:
        async with open_nats_backend(url, bucket="secure", **options):
            pytest.fail("a wrong credential was accepted")  # pragma: no cover
    assert trio.current_time() - started <= within
    host = url.rpartition("@")[2].split("://")[-1]
    assert host in str(raised.value), str(raised.value)
    return raised.value


async def use(url: str, **options: Any) -> str:
    """Open, lead once, observe; return the backend's repr."""
    with trio.fail_after(15):
        async with open_nats_backend(url, bucket=f"s{uuid.uuid4().hex[:10]}",
                                     storage="memory", **options) as store:
            try:
                async with hold_leadership(KEY, ttl=1) as lead:
                    info = await current_leader(KEY)
                    assert info is not None
                    assert info.candidate_id == lead.candidate_id
                return repr(store)
            finally:
                await delete_bucket(store)


# -- making credentials --------------------------------------------------------------------


def nkeys() -> Any:
    """The ``nkeys`` package (what nats-py signs nkey and creds logins with)."""
    return pytest.importorskip("nkeys", reason="nkeys (nats-py's nkeys extra) is missing")


def new_nkey(role: str) -> tuple[str, Any]:
    """A fresh nkey of *role* (``USER``, ``ACCOUNT``, ``OPERATOR``): seed, key pair."""
    module = nkeys()
    seed: bytes = module.encode_seed(os.urandom(32), getattr(module, f"PREFIX_BYTE_{role}"))
    return seed.decode(), module.from_seed(bytearray(seed))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def make_jwt(issuer: Any, subject: str, name: str, claims: dict[str, Any]) -> str:
    """A NATS JWT (v2) for *subject*, signed by the key pair *issuer*."""
    body = {"iat": int(time.time()), "iss": issuer.public_key.decode(), "name": name,
            "sub": subject, "nats": {**claims, "version": 2}}
    body["jti"] = base64.b32encode(hashlib.sha256(
        json.dumps(body, sort_keys=True).encode()).digest()).decode().rstrip("=")
    header = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    payload = _b64(json.dumps(body).encode())
    signature = _b64(issuer.sign(f"{header}.{payload}".encode()))
    return f"{header}.{payload}.{signature}"


@dataclass
class Operator:
    """Operator mode: an operator, a system account and an account with JetStream."""

    config: str
    account: Any  # the key pair that signs user JWTs
    seeds: list[str] = field(default_factory=list)

    @classmethod
    def create(cls) -> Operator:
        op_seed, operator = new_nkey("OPERATOR")
        sys_seed, system = new_nkey("ACCOUNT")
        acc_seed, account = new_nkey("ACCOUNT")
        op_pub, sys_pub, acc_pub = (k.public_key.decode() for k in (operator, system, account))
        limits = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                  "wildcards": True, "conn": -1, "leaf": -1}
        jetstream = {**limits, "mem_storage": -1, "disk_storage": -1, "streams": -1,
                     "consumer": -1}
        config = f"""
operator: {make_jwt(operator, op_pub, "op", {"type": "operator", "system_account": sys_pub})}
system_account: {sys_pub}
resolver: MEMORY
resolver_preload: {{
  {sys_pub}: {make_jwt(operator, sys_pub, "SYS", {"type": "account", "limits": limits})}
  {acc_pub}: {make_jwt(operator, acc_pub, "app", {"type": "account", "limits": jetstream})}
}}
"""
        return cls(config, account, [op_seed, sys_seed, acc_seed])

    def creds(self, path: Path, signer: Any = None) -> str:
        """Write a creds file for a new user (signed by *signer*, default the account)."""
        seed, user = new_nkey("USER")
        token = make_jwt(signer or self.account, user.public_key.decode(), "app-user",
                         {"type": "user", "pub": {}, "sub": {}, "subs": -1, "data": -1,
                          "payload": -1})
        path.write_text("-----BEGIN NATS USER JWT-----\n"
                        f"{token}\n"
                        "------END NATS USER JWT------\n\n"
                        "-----BEGIN USER NKEY SEED-----\n"
                        f"{seed}\n"
                        "------END USER NKEY SEED------\n")
        return seed


# -- logins ----------------------------------------------------------------------------------


@dataclass
class Login:
    """How one server wants clients to log in, and a right and a wrong way to."""

    server_args: list[str]
    good: dict[str, Any]
    bad: dict[str, Any]
    secrets: list[str]
    url_user: str = ""  # "user:password@" or "token@" for the URL
    bad_url_user: str = ""


def password_login(tmp_path: Path) -> Login:
    return Login(["--user", "alice", "--pass", PASSWORD], {"user": "alice",
                 "password": PASSWORD}, {"user": "alice", "password": "wr0ng-" + PASSWORD},
                 [PASSWORD, "wr0ng-" + PASSWORD], f"alice:{PASSWORD}@",
                 f"alice:wr0ng-{PASSWORD}@")


def token_login(tmp_path: Path) -> Login:
    return Login(["--auth", TOKEN], {"token": TOKEN}, {"token": "bad-" + TOKEN},
                 [TOKEN, "bad-" + TOKEN], f"{TOKEN}@", f"bad-{TOKEN}@")


def nkey_login(tmp_path: Path) -> Login:
    seed, user = new_nkey("USER")
    wrong, _ = new_nkey("USER")
    config = tmp_path / "nkey.conf"
    config.write_text(
        f"authorization {{ users = [ {{ nkey: {user.public_key.decode()} }} ] }}\n")
    return Login(["-c", str(config)], {"nkeys_seed_str": seed}, {"nkeys_seed_str": wrong},
                 [seed, wrong])


def nkey_file_login(tmp_path: Path) -> Login:
    login = nkey_login(tmp_path)
    good, bad = tmp_path / "user.nk", tmp_path / "wrong.nk"
    good.write_text(login.good["nkeys_seed_str"] + "\n")
    bad.write_text(login.bad["nkeys_seed_str"] + "\n")
    return Login(login.server_args, {"nkeys_seed": str(good)}, {"nkeys_seed": str(bad)},
                 login.secrets)


def creds_login(tmp_path: Path) -> Login:
    operator = Operator.create()
    config = tmp_path / "operator.conf"
    config.write_text(operator.config)
    good, bad = tmp_path / "app.creds", tmp_path / "stranger.creds"
    _, stranger = new_nkey("ACCOUNT")  # an account the server never met
    secrets = [operator.creds(good), operator.creds(bad, signer=stranger), *operator.seeds]
    return Login(["-c", str(config)], {"user_credentials": str(good)},
                 {"user_credentials": str(bad)}, secrets)


LOGINS: dict[str, Callable[[Path], Login]] = {
    "password": password_login,
    "token": token_login,
    "nkey-seed": nkey_login,
    "nkey-seed-file": nkey_file_login,
    "creds-file": creds_login,
}


@pytest.mark.parametrize("kind", LOGINS)
async def test_logins(kind: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # every logger: ours, nats-py's, asyncio's
    login = LOGINS[kind](tmp_path)
    with nats_server(tmp_path / "server", args=login.server_args) as server:
        texts = [await use(server.url, **login.good)]
        if login.url_user:
            url = server.url.replace("://", f"://{login.url_user}")
            texts.append(await use(url))
        # Anonymous, and with a wrong credential: refused at once, and told so.
        anonymous = await expect_refused(server.url)
        assert "authorization failed" in str(anonymous)
        wrong = await expect_refused(server.url, **login.bad)
        assert "authorization failed" in str(wrong), shown(wrong)
        texts += [shown(anonymous), shown(wrong)]
        if login.bad_url_user:
            url = server.url.replace("://", f"://{login.bad_url_user}")
            wrong_url = await expect_refused(url)
            assert "authorization failed" in str(wrong_url)
            with pytest.raises(BackendUnavailable) as raised:  # open_backend as well
                async with open_backend(f"{url}/secure"):
                    pytest.fail("opened")  # pragma: no cover
            texts += [shown(wrong_url), shown(raised.value)]
    assert_hidden(login.secrets, caplog.text, *texts)


# -- TLS ---------------------------------------------------------------------------------------


@dataclass
class Pki:
    ca: trustme.CA
    ca_file: Path
    server_args: list[str]

    def client_context(self, cert: trustme.LeafCert | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        if cert is not None:
            cert.configure_cert(context)
        return context


def make_pki(tmp_path: Path, hostname: str = "127.0.0.1", verify_clients: bool = False
             ) -> Pki:
    ca = trustme.CA()
    issued = ca.issue_cert(hostname)
    cert, key, ca_file = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    args = ["--tlscert", str(cert), "--tlskey", str(key)]
    if verify_clients:
        args += ["--tlsverify", "--tlscacert", str(ca_file)]
    else:
        args += ["--tls"]
    return Pki(ca, ca_file, args)


async def test_tls_with_client_certificates(tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    pki = make_pki(tmp_path, verify_clients=True)
    client = pki.ca.issue_cert("client.example")
    other_ca = trustme.CA()
    with nats_server(tmp_path / "server", args=pki.server_args) as server:
        url = server.url.replace("nats://", "tls://")
        await use(url, tls=pki.client_context(client))
        # No client certificate, or one from a CA the server does not trust.
        for context in (pki.client_context(), pki.client_context(other_ca.issue_cert("x"))):
            refused = await expect_refused(url, tls=context)
            assert isinstance(refused.__cause__, ssl.SSLError | OSError | ConnectionError), \
                shown(refused)
    key_pem = client.private_key_pem.bytes().decode()
    assert_hidden([key_pem.splitlines()[1]], caplog.text)


async def test_tls_url_with_a_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    pki = make_pki(tmp_path)
    # A tls:// URL carries no certificates: Python's default context, which trusts
    # the CA in SSL_CERT_FILE.
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca_file))
    with nats_server(tmp_path / "server",
                     args=[*pki.server_args, "--user", "alice", "--pass", PASSWORD]) as server:
        host = server.url.partition("://")[2]
        async with open_backend(f"tls://alice:{PASSWORD}@{host}/tlsurl") as store:
            assert isinstance(store, NatsBackend)
            async with hold_leadership(KEY, ttl=1) as lead:
                assert lead.token > 0
            texts = [repr(store)]
            await delete_bucket(store)
        wrong = await expect_refused(f"tls://alice:wr0ng-{PASSWORD}@{host}")
        assert "authorization failed" in str(wrong)
        # Plain nats:// to a TLS server: the client follows the server into TLS.
        await use(f"nats://alice:{PASSWORD}@{host}")
        monkeypatch.delenv("SSL_CERT_FILE")
        untrusted = await expect_refused(f"tls://alice:{PASSWORD}@{host}")
        assert isinstance(untrusted.__cause__, ssl.SSLCertVerificationError)
        texts += [shown(wrong), shown(untrusted)]
    assert_hidden([PASSWORD], caplog.text, *texts)


async def test_tls_certificate_for_another_host_is_refused(tmp_path: Path) -> None:
    pki = make_pki(tmp_path, hostname="nats.example")
    with nats_server(tmp_path / "server", args=pki.server_args) as server:
        url = server.url.replace("nats://", "tls://")
        refused = await expect_refused(url, tls=pki.client_context())
        assert isinstance(refused.__cause__, ssl.SSLCertVerificationError), shown(refused)
        # With the name the certificate has, the same server is fine.
        await use(url, tls=pki.client_context(), tls_hostname="nats.example")


# -- secrets through an outage -------------------------------------------------------------


async def test_secrets_stay_hidden_through_an_outage(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    with nats_server(tmp_path / "server", args=["--user", "alice", "--pass", PASSWORD]
                     ) as server:
        url = server.url.replace("://", f"://alice:{PASSWORD}@")
        async with open_nats_backend(url, bucket="outage") as store:
            texts.append(repr(store))
            with trio.fail_after(30):
                with pytest.raises(LeadershipLost) as lost:
                    async with hold_leadership(KEY, ttl=2) as lead:
                        async with store.watch(KEY) as updates:
                            assert await anext(updates) is not None
                            server.stop()
                            with pytest.raises(BackendUnavailable) as broken:
                                await anext(updates)
                        with pytest.raises(BackendUnavailable) as failed:
                            await store.get(KEY)
                        texts += [shown(broken.value), shown(failed.value), repr(lead)]
                        await trio.sleep_forever()  # until the lease deadline
                texts.append(shown(lost.value))
                server.start()
                while True:  # reconnects on its own; the released-late lease goes
                    try:
                        if await store.get(KEY) is None:
                            break
                    except BackendUnavailable as exc:
                        texts.append(shown(exc))
                    await trio.sleep(0.2)
                async with hold_leadership(KEY, ttl=2) as lead:
                    texts.append(repr(lead))
    assert "reconnect" in caplog.text.lower()
    assert_hidden([PASSWORD], caplog.text, *texts)


# -- the command line ----------------------------------------------------------------------


async def noleader(*args: str, env: dict[str, str] | None = None, limit: float = 30
                   ) -> tuple[int, str]:
    with trio.fail_after(limit):
        result = await trio.run_process(
            [sys.executable, "-m", "trio_noleader", *args], capture_stdout=True,
            capture_stderr=True, check=False, stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})})
    return result.returncode, (result.stdout + result.stderr).decode(errors="replace")


async def test_the_command_line_never_prints_a_secret(tmp_path: Path) -> None:
    outputs = []
    auth = ["--user", "alice", "--pass", PASSWORD]
    with nats_server(tmp_path / "js", args=auth) as server, \
            nats_server(tmp_path / "nojs", jetstream=False, args=auth) as plain:
        host, plain_host = (s.url.partition("://")[2] for s in (server, plain))
        good = f"nats://alice:{PASSWORD}@{host}/cli"
        wrong = f"nats://alice:wr0ng-{PASSWORD}@{host}/cli"
        for args, code, words in [
            (["status", "--url", wrong], 122, "authorization failed"),
            (["status", "--url", f"nats://alice:{PASSWORD}@{plain_host}/cli"], 122,
             "JetStream"),
            (["run", "--url", wrong, KEY, "--", "true"], 122, "authorization failed"),
            (["run", "--url", good, KEY, "--", sys.executable, "-c", "raise SystemExit(3)"],
             3, "leader of"),
            (["status", "--url", good], 0, "no elections in nats://alice:***@"),
            (["status", "--url", good, "--json", KEY], 0, '"held": false'),
            (["reset", "--url", good, KEY, "--force"], 0, "no lease to clear"),
        ]:
            got, out = await noleader(*args)
            assert got == code, (args, out)
            assert words in out, (args, out)
            assert "Traceback" not in out
            outputs.append(out)
        # The URL from the environment instead of --url.
        got, out = await noleader("status", env={"NOLEADER_URL": wrong})
        assert got == 122, out
        outputs.append(out)

        # A watch whose server goes away: the watch breaks, noleader says so and exits.
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "trio_noleader", "watch", "--url", good, KEY],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            assert process.stdout is not None
            seen = b""
            with trio.fail_after(20):
                while b"no leader" not in seen:
                    seen += await process.stdout.receive_some()
                server.stop()
                while chunk := await process.stdout.receive_some():
                    seen += chunk
                assert await process.wait() == 122, seen
        finally:
            if process.returncode is None:
                process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()
                await process.stdout.aclose()  # type: ignore[union-attr]
        out = seen.decode(errors="replace")
        assert "store unavailable" in out, out
        assert f"NATS at nats://{host}" in out, out
        outputs.append(out)
    assert_hidden([PASSWORD, "wr0ng-" + PASSWORD], *outputs)

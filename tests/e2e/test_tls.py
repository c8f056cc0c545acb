"""The real SDK over TLS: ``keel serve --tls-cert/--tls-key`` with a CA and
certificates this test makes (Debian's openssl CLI), the SDK trusting that CA through
its ``tls_context``; a client that does not trust it fails; with
``--tls-client-ca`` the SDK must present a client certificate. Passes with and without
KEEL_E2E_TOKEN (tokens are then required on top of TLS)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from durable_workflow import Client, activity, workflow

from keel_harness import E2E_TOKEN, KeelServer, keel_binary, running_worker, unique, wait_for_results

if shutil.which("openssl") is None:  # pragma: no cover - install-deps.sh installs it
    pytest.fail("the openssl CLI is needed to make this test's certificates (scripts/install-deps.sh)", pytrace=False)


# ── certificates ──────────────────────────────────────────────────────────


def _openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise AssertionError(f"openssl {' '.join(args)} failed:\n{done.stderr}")


def make_ca(directory: Path, name: str) -> Path:
    """A self-signed CA (P-256): ``<name>.pem`` and ``<name>.key`` in ``directory``."""
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN=Keel e2e {name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )
    return directory / f"{name}.pem"


def issue(directory: Path, ca: str, name: str, *, usage: str, san: str) -> tuple[Path, Path]:
    """A leaf signed by CA ``ca``: (certificate, key) paths."""
    (directory / f"{name}.ext").write_text(
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        f"extendedKeyUsage={usage}\n"
        f"subjectAltName={san}\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid\n"
    )
    _openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}",
        cwd=directory,
    )
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-days", "2", "-out", f"{name}.pem", "-extfile", f"{name}.ext",
        cwd=directory,
    )
    return directory / f"{name}.pem", directory / f"{name}.key"


class Pki:
    """A server CA with a certificate for 127.0.0.1/localhost, and a client CA with
    one worker certificate."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.ca = make_ca(directory, "server-ca")
        self.cert, self.key = issue(
            directory, "server-ca", "server", usage="serverAuth", san="DNS:localhost,IP:127.0.0.1"
        )
        self.client_ca = make_ca(directory, "client-ca")
        self.client_cert, self.client_key = issue(
            directory, "client-ca", "worker", usage="clientAuth", san="DNS:worker.keel.test"
        )

    def context(self, *, client_cert: bool = False) -> ssl.SSLContext:
        """What a client that trusts the server CA uses (verification and hostname
        checks on, as the SDK requires)."""
        context = ssl.create_default_context(cafile=str(self.ca))
        if client_cert:
            context.load_cert_chain(str(self.client_cert), str(self.client_key))
        return context

    def serve_args(self, *, client_ca: bool = False) -> list[str]:
        args = ["--tls-cert", str(self.cert), "--tls-key", str(self.key)]
        if client_ca:
            args += ["--tls-client-ca", str(self.client_ca)]
        return args


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path / "pki")


# ── workflow and activity (type names unique to this module) ──────────────


@activity.defn(name="e2e.tls.greet")
def greet(name: str) -> str:
    return f"hello over tls, {name}"


@workflow.defn(name="e2e.tls.greeter")
class Greeter:
    def run(self, ctx, name):  # type: ignore[no-untyped-def]
        greeting = yield ctx.schedule_activity("e2e.tls.greet", [name], start_to_close_timeout=30)
        return {"greeting": greeting}


async def _round_trip(client: Client) -> None:
    task_queue = unique("e2e-tls")
    async with running_worker(client, task_queue=task_queue, workflows=[Greeter], activities=[greet]) as worker:
        handle = await client.start_workflow(
            workflow_type="e2e.tls.greeter",
            task_queue=task_queue,
            workflow_id=unique("e2e-tls-wf"),
            input=["world"],
        )
        [result] = await wait_for_results(client, [handle], worker=worker, timeout=60)
    assert result == {"greeting": "hello over tls, world"}


def _chain(error: BaseException) -> str:
    """The error and its causes, as text."""
    parts = []
    seen: BaseException | None = error
    while seen is not None:
        parts.append(f"{type(seen).__name__}: {seen}")
        seen = seen.__cause__ or seen.__context__
    return " <- ".join(parts)


# ── tests ─────────────────────────────────────────────────────────────────


def test_sdk_runs_a_workflow_and_an_activity_over_tls(
    keel_factory: Callable[..., KeelServer], pki: Pki
) -> None:
    keel = keel_factory(extra_args=pki.serve_args(), tls_context=pki.context())
    assert keel.url.startswith("https://")

    async def scenario() -> None:
        async with Client(keel.url, tls_context=pki.context()) as client:
            await _round_trip(client)

    asyncio.run(scenario())


def test_a_client_that_does_not_trust_the_server_ca_fails(
    keel_factory: Callable[..., KeelServer], pki: Pki
) -> None:
    keel = keel_factory(extra_args=pki.serve_args(), tls_context=pki.context())

    # httpx with its default trust (certifi): the certificate does not verify.
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{keel.url}/api/health", timeout=10)

    # The SDK with its default trust: the call fails, on the certificate.
    async def untrusted() -> None:
        async with Client(keel.url) as client:
            await client.start_workflow(
                workflow_type="e2e.tls.greeter",
                task_queue=unique("e2e-tls-untrusted"),
                workflow_id=unique("e2e-tls-untrusted"),
                input=["world"],
            )

    with pytest.raises(Exception) as refused:
        asyncio.run(untrusted())
    assert "CERTIFICATE_VERIFY_FAILED" in _chain(refused.value), _chain(refused.value)

    # Plain HTTP to the TLS port is answered, in plain HTTP, with a named refusal.
    plain = httpx.get(keel.url.replace("https://", "http://") + "/api/health", timeout=10)
    assert plain.status_code == 400, plain.text
    assert plain.json()["reason"] == "tls_required"

    # The server itself is unharmed.
    assert httpx.get(f"{keel.url}/api/health", verify=pki.context(), timeout=10).status_code == 200


def test_with_a_client_ca_the_sdk_needs_a_client_certificate(
    keel_factory: Callable[..., KeelServer], pki: Pki
) -> None:
    keel = keel_factory(
        extra_args=pki.serve_args(client_ca=True), tls_context=pki.context(client_cert=True)
    )

    with pytest.raises(httpx.TransportError):
        # Trusts the server but presents no certificate: the server ends the handshake.
        httpx.get(f"{keel.url}/api/health", verify=pki.context(), timeout=10)

    async def scenario() -> None:
        async with Client(keel.url, tls_context=pki.context(client_cert=True)) as client:
            await _round_trip(client)

    asyncio.run(scenario())


def test_the_keel_cli_reaches_a_tls_server_trusting_its_ca_and_refuses_it_otherwise(
    keel_factory: Callable[..., KeelServer], pki: Pki
) -> None:
    keel = keel_factory(extra_args=pki.serve_args(), tls_context=pki.context())
    env = {k: v for k, v in os.environ.items() if k not in ("KEEL_TOKEN", "KEEL_CA_CERT")}
    if E2E_TOKEN:
        env["KEEL_TOKEN"] = E2E_TOKEN

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(keel_binary()), "--server", keel.url, *args], capture_output=True, text=True, env=env, timeout=60
        )

    trusted = cli("--ca-cert", str(pki.ca), "-o", "json", "namespace", "list")
    assert trusted.returncode == 0, trusted.stderr
    assert "default" in [n["name"] for n in json.loads(trusted.stdout)["namespaces"]]

    untrusted = cli("namespace", "list")
    assert untrusted.returncode == 6, untrusted
    assert "certificate" in untrusted.stderr.lower(), untrusted.stderr
